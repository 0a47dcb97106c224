//! The Prometheus text exposition of a gate's numbers: shards summed at scrape time, names and
//! help texts in one place. The format itself is the `prometheus` crate's `TextEncoder`.

use prometheus::proto::{
    Bucket, Counter as PCounter, Gauge as PGauge, Histogram as PHistogram, LabelPair, Metric,
    MetricFamily, MetricType,
};
use prometheus::Encoder;

use super::{CloseLabel, GateMetrics, Histogram, RefuseLabel, ShardMetrics, TRANSPORTS};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exposition of every number of `m`, in the Prometheus text format.
pub fn render(m: &GateMetrics) -> String {
    let shards = m.shards();
    let sum = |f: &dyn Fn(&ShardMetrics) -> u64| shards.iter().map(f).sum::<u64>() as f64;
    let gsum = |f: &dyn Fn(&ShardMetrics) -> i64| shards.iter().map(f).sum::<i64>() as f64;
    let mut out = Vec::new();

    // Connections.
    out.push(family(
        "gatehouse_connections_open",
        "Client connections open now, by transport.",
        MetricType::GAUGE,
        TRANSPORTS
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (
                    vec![("transport", t.to_string())],
                    gsum(&|s| s.open[i].get()),
                )
            })
            .collect(),
    ));
    out.push(family(
        "gatehouse_connections_accepted_total",
        "Client connections accepted and admitted, by transport.",
        MetricType::COUNTER,
        TRANSPORTS
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (
                    vec![("transport", t.to_string())],
                    sum(&|s| s.accepted[i].get()),
                )
            })
            .collect(),
    ));
    out.push(family(
        "gatehouse_connections_closed_total",
        "Client connections closed, by reason.",
        MetricType::COUNTER,
        CloseLabel::ALL
            .iter()
            .map(|&r| {
                (
                    vec![("reason", r.as_str().to_string())],
                    sum(&|s| s.closed[r as usize].get()),
                )
            })
            .collect(),
    ));
    out.push(family(
        "gatehouse_connections_refused_total",
        "Client connections refused before being served, by reason.",
        MetricType::COUNTER,
        RefuseLabel::ALL
            .iter()
            .map(|&r| {
                (
                    vec![("reason", r.as_str().to_string())],
                    sum(&|s| s.refused[r as usize].get()),
                )
            })
            .collect(),
    ));
    out.push(family(
        "gatehouse_proxy_refused_total",
        "Connections refused for their PROXY protocol header, by reason.",
        MetricType::COUNTER,
        super::PROXY_REFUSALS
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    vec![("reason", r.to_string())],
                    sum(&|s| s.proxy_refused[i].get()),
                )
            })
            .collect(),
    ));
    out.push(family(
        "gatehouse_shard_connections",
        "Client connections open now, by shard.",
        MetricType::GAUGE,
        shards
            .iter()
            .enumerate()
            .map(|(i, s)| (vec![("shard", i.to_string())], s.open_total() as f64))
            .collect(),
    ));

    // Traffic.
    for (name, help, f) in [
        (
            "gatehouse_client_packets_received_total",
            "Packets received from clients (heartbeats included).",
            (|s: &ShardMetrics| s.packets_in.get()) as fn(&ShardMetrics) -> u64,
        ),
        (
            "gatehouse_client_received_bytes_total",
            "Bytes received from clients.",
            |s| s.bytes_in.get(),
        ),
        (
            "gatehouse_client_packets_sent_total",
            "Packets queued to clients (heartbeats included).",
            |s| s.packets_out.get(),
        ),
        (
            "gatehouse_client_sent_bytes_total",
            "Bytes written to clients.",
            |s| s.bytes_out.get(),
        ),
        (
            "gatehouse_write_queue_full_total",
            "Packets refused because a client's write queue was full (writeQueueSize).",
            |s| s.queue_full.get(),
        ),
        (
            "gatehouse_node_deliveries_total",
            "Client packets handed to a node link.",
            |s| s.delivered.get(),
        ),
    ] {
        out.push(family(
            name,
            help,
            MetricType::COUNTER,
            vec![(vec![], sum(&f))],
        ));
    }
    out.push(family(
        "gatehouse_node_deliveries_dropped_total",
        "Client packets dropped on their way to a node, by reason.",
        MetricType::COUNTER,
        vec![
            (
                vec![("reason", "no_route".into())],
                sum(&|s| s.dropped_no_route.get()),
            ),
            (
                vec![("reason", "no_endpoint".into())],
                sum(&|s| s.dropped_no_endpoint.get()),
            ),
            (
                vec![("reason", "rate_limited".into())],
                sum(&|s| s.dropped_rate_limited.get()),
            ),
        ],
    ));
    out.push(family(
        "gatehouse_users_bound",
        "Users bound to a connection of this gate.",
        MetricType::GAUGE,
        vec![(vec![], gsum(&|s| s.users_bound.get()))],
    ));

    // Per-shard queues and timers (what a soak watches for leaks).
    for (name, help, f) in [
        (
            "gatehouse_shard_queued_packets",
            "Packets queued to clients and not yet taken for writing, by shard.",
            (|s: &ShardMetrics| s.queued_packets.get()) as fn(&ShardMetrics) -> i64,
        ),
        (
            "gatehouse_shard_deadline_timers",
            "Client connections with an armed deadline (heartbeat or authorization) timer, by shard.",
            |s| s.deadline_timers.get(),
        ),
    ] {
        out.push(family(
            name,
            help,
            MetricType::GAUGE,
            shards
                .iter()
                .enumerate()
                .map(|(i, s)| (vec![("shard", i.to_string())], f(s) as f64))
                .collect(),
        ));
    }

    // Distributions.
    out.push(histogram(
        "gatehouse_write_batch_bytes",
        "Bytes per write to a client (queued packets are coalesced into one write).",
        shards.iter().map(|s| &s.write_batch),
        1.0,
    ));
    out.push(histogram(
        "gatehouse_broadcast_duration_seconds",
        "Time one shard took to queue a broadcast to all its connections.",
        shards.iter().map(|s| &s.broadcast),
        1e-9,
    ));
    out.push(histogram(
        "gatehouse_locator_lookup_duration_seconds",
        "Round trip of a stateful route's node lookup (shard to locator and back).",
        shards.iter().map(|s| &s.lookup),
        1e-9,
    ));

    // Control plane.
    let links = m.control.links();
    out.push(family(
        "gatehouse_node_link_connections",
        "Link connections to each node that are up now.",
        MetricType::GAUGE,
        links
            .iter()
            .map(|(n, c)| (vec![("node", n.clone())], c.up as f64))
            .collect(),
    ));
    out.push(family(
        "gatehouse_node_link_reconnects_total",
        "Link connections to each node re-established after a loss.",
        MetricType::COUNTER,
        links
            .iter()
            .map(|(n, c)| (vec![("node", n.clone())], c.reconnects as f64))
            .collect(),
    ));
    out.push(family(
        "gatehouse_locator_errors_total",
        "Failed locator (Redis) calls.",
        MetricType::COUNTER,
        vec![(vec![], m.control.locator_errors.get() as f64)],
    ));
    out.push(family(
        "gatehouse_locator_up",
        "1 while the locator answers, 0 after a failed call.",
        MetricType::GAUGE,
        vec![(vec![], m.control.locator_up.get() as f64)],
    ));
    out.push(family(
        "gatehouse_registry_errors_total",
        "Failed registry (Consul, etcd) calls after start-up: TTL check updates or lease keep-alives, and node watch queries.",
        MetricType::COUNTER,
        vec![(vec![], m.control.registry_errors.get() as f64)],
    ));
    if let Some(registered) = m.health.registered() {
        out.push(family(
            "gatehouse_registry_registered",
            "1 once the gate's record is registered (absent without a registry).",
            MetricType::GAUGE,
            vec![(vec![], registered as u8 as f64)],
        ));
    }
    out.push(family(
        "gatehouse_ready",
        "1 when /readyz answers 200 (listening, registered, not shutting down).",
        MetricType::GAUGE,
        vec![(vec![], m.health.ready().is_ok() as u8 as f64)],
    ));
    out.push(family(
        "gatehouse_shards",
        "Shards (executors) this gate runs.",
        MetricType::GAUGE,
        vec![(vec![], shards.len() as f64)],
    ));
    if let Some((rss, fds)) = process_numbers() {
        out.push(family(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            MetricType::GAUGE,
            vec![(vec![], rss)],
        ));
        out.push(family(
            "process_open_fds",
            "Number of open file descriptors.",
            MetricType::GAUGE,
            vec![(vec![], fds)],
        ));
    }

    // The encoder refuses a family without samples (no node link yet, for example).
    out.retain(|f| !f.get_metric().is_empty());
    let mut buf = Vec::with_capacity(8 << 10);
    if let Err(e) = prometheus::TextEncoder::new().encode(&out, &mut buf) {
        tracing::error!(error = %e, "metrics: exposition failed");
    }
    String::from_utf8(buf).unwrap_or_default()
}

fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    samples: Vec<(Vec<(&str, String)>, f64)>,
) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(kind);
    for (labels, v) in samples {
        let mut m = Metric::from_label(labels.into_iter().map(label).collect());
        match kind {
            MetricType::COUNTER => {
                let mut c = PCounter::default();
                c.set_value(v);
                m.set_counter(c);
            }
            _ => {
                let mut g = PGauge::default();
                g.set_value(v);
                m.set_gauge(g);
            }
        }
        f.mut_metric().push(m);
    }
    f
}

/// One histogram summed over shards; `scale` turns the observed unit into the base unit.
fn histogram<'a>(
    name: &str,
    help: &str,
    parts: impl Iterator<Item = &'a Histogram>,
    scale: f64,
) -> MetricFamily {
    let mut per_bucket: Vec<(u64, u64)> = Vec::new();
    let (mut count, mut sum) = (0u64, 0u64);
    for h in parts {
        let (b, c, s) = h.snapshot();
        if per_bucket.is_empty() {
            per_bucket = b;
        } else {
            for (acc, (_, n)) in per_bucket.iter_mut().zip(b) {
                acc.1 += n;
            }
        }
        count += c;
        sum = sum.wrapping_add(s);
    }
    let mut cumulative = 0;
    let buckets = per_bucket
        .into_iter()
        .map(|(bound, n)| {
            cumulative += n;
            let mut b = Bucket::default();
            b.set_upper_bound(bound as f64 * scale);
            // A value read a moment after the count can make a bucket exceed it; never let the
            // exposition contradict itself.
            b.set_cumulative_count(cumulative.min(count));
            b
        })
        .collect();
    let mut h = PHistogram::default();
    h.set_sample_count(count);
    h.set_sample_sum(sum as f64 * scale);
    h.set_bucket(buckets);
    let mut m = Metric::default();
    m.set_histogram(h);
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(MetricType::HISTOGRAM);
    f.mut_metric().push(m);
    f
}

fn label((name, value): (&str, String)) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.into());
    l.set_value(value);
    l
}

/// Resident memory in bytes and open descriptors of this process, from /proc.
fn process_numbers() -> Option<(f64, f64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
    Some((pages * page.max(1) as f64, fds as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_summed_and_histograms_are_cumulative() {
        let m = GateMetrics::new(2);
        m.shards()[0].open[0].add(3);
        m.shards()[1].open[0].add(4);
        m.shards()[1].open[1].add(1);
        m.shards()[0].close(CloseLabel::HeartbeatTimeout);
        m.shards()[1].close(CloseLabel::HeartbeatTimeout);
        m.shards()[1].queued_packets.add(5);
        m.shards()[0].deadline_timers.add(3);
        m.shards()[0].write_batch.observe(100);
        m.shards()[1].write_batch.observe(60);
        m.shards()[1].write_batch.observe(1 << 20);
        let text = render(&m);
        for line in [
            "gatehouse_connections_open{transport=\"tcp\"} 7",
            "gatehouse_connections_open{transport=\"ws\"} 1",
            "gatehouse_shard_connections{shard=\"0\"} 3",
            "gatehouse_shard_connections{shard=\"1\"} 5",
            "gatehouse_shard_queued_packets{shard=\"0\"} 0",
            "gatehouse_shard_queued_packets{shard=\"1\"} 5",
            "gatehouse_shard_deadline_timers{shard=\"0\"} 3",
            "gatehouse_connections_closed_total{reason=\"heartbeat_timeout\"} 2",
            "gatehouse_write_batch_bytes_bucket{le=\"64\"} 1",
            "gatehouse_write_batch_bytes_bucket{le=\"256\"} 2",
            "gatehouse_write_batch_bytes_bucket{le=\"65536\"} 2",
            "gatehouse_write_batch_bytes_bucket{le=\"+Inf\"} 3",
            "gatehouse_write_batch_bytes_count 3",
            "# TYPE gatehouse_connections_closed_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn names_follow_the_conventions() {
        let text = render(&GateMetrics::new(1));
        let mut kinds = std::collections::HashMap::new();
        for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut w = l[7..].split(' ');
            kinds.insert(w.next().unwrap().to_string(), w.next().unwrap().to_string());
        }
        assert!(kinds.len() > 20, "{text}");
        for (name, kind) in kinds {
            assert!(
                name.starts_with("gatehouse_") || name.starts_with("process_"),
                "{name}"
            );
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name}: {kind}"
            );
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
        }
    }
}
