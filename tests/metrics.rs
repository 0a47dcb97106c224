//! `/metrics`, `/healthz` and `/readyz` (`[gatehouse] metricsAddr`): values follow what clients
//! do, the exposition passes `promtool check metrics`, a real Prometheus server scrapes it, and
//! readiness flips when shutdown begins.

mod common;

use common::*;
use gatehouse::dispatch::EventKind;
use gatehouse::session::{Kind, SessionError};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn metrics_gate(server: &str) -> (TestGate, SocketAddr) {
    let g = TestGate::start(&format!(
        "[network.tcp.server]\naddr = \"127.0.0.1:0\"\n{server}\n[gatehouse]\nmetricsAddr = \"127.0.0.1:0\"\n"
    ));
    let addr = g.gate().metrics_addr().expect("metrics served");
    (g, addr)
}

#[test]
fn connection_numbers_follow_clients() {
    let (g, addr) = metrics_gate("heartbeatInterval = \"300ms\"");
    let (status, _) = http_get(addr, "/readyz");
    assert_eq!(status, 200, "a started gate without registry is ready");

    let mut clients: Vec<Client> = (0..100).map(|_| g.connect()).collect();
    let text = await_sample(addr, "gatehouse_connections_open{transport=\"tcp\"}", 100.0);
    assert_eq!(
        sample(
            &text,
            "gatehouse_connections_accepted_total{transport=\"tcp\"}"
        ),
        Some(100.0)
    );
    let per_shard: f64 = (0..2)
        .map(|i| {
            sample(
                &text,
                &format!("gatehouse_shard_connections{{shard=\"{i}\"}}"),
            )
            .unwrap()
        })
        .sum();
    assert_eq!(per_shard, 100.0, "shards add up to the total");

    // One heartbeat each: 100 packets in and 100 out (the answers), 5 bytes each way.
    for c in &mut clients {
        c.heartbeat();
        assert_eq!(c.frame(), hex("0000000180"));
    }
    let text = await_sample(addr, "gatehouse_client_packets_received_total", 100.0);
    assert_eq!(
        sample(&text, "gatehouse_client_received_bytes_total"),
        Some(500.0)
    );
    await_at_least(addr, "gatehouse_client_sent_bytes_total", 500.0);
    await_at_least(addr, "gatehouse_write_batch_bytes_count", 100.0);

    drop(clients);
    await_sample(
        addr,
        "gatehouse_connections_closed_total{reason=\"peer\"}",
        100.0,
    );
    await_sample(addr, "gatehouse_connections_open{transport=\"tcp\"}", 0.0);

    // A client that says nothing is closed for it (after two to three intervals).
    let mut silent = g.connect();
    silent.wait_closed(Duration::from_secs(5));
    await_sample(
        addr,
        "gatehouse_connections_closed_total{reason=\"heartbeat_timeout\"}",
        1.0,
    );
}

#[test]
fn a_full_write_queue_is_counted_by_its_reason() {
    let (g, addr) = metrics_gate("writeQueueSize = 64");
    let (slow, cid) = g.connect_with_cid();
    let s = g.sessions();
    let big = g.packet.encode(1, 1, &[7u8; 5000]).expect("packet");
    let mut refused = None;
    g.run(async {
        for i in 0..10_000 {
            if let Err(e) = s.push(Kind::Conn, cid, big.clone()).await {
                refused = Some((i, e));
                break;
            }
        }
    });
    let (i, e) = refused.expect("pushes eventually fail");
    assert!(i >= 64, "refused after {i} pushes");
    assert!(
        matches!(
            e,
            SessionError::QueueFull | SessionError::NotFoundSession | SessionError::Closed
        ),
        "{e:?}"
    );
    g.event_of(EventKind::Disconnect, cid);
    let text = await_sample(
        addr,
        "gatehouse_connections_closed_total{reason=\"queue_full\"}",
        1.0,
    );
    assert!(sample(&text, "gatehouse_write_queue_full_total").unwrap() >= 1.0);
    assert_eq!(
        sample(
            &text,
            "gatehouse_connections_closed_total{reason=\"forced\"}"
        ),
        Some(0.0),
        "counted once, under its own reason"
    );
    drop(slow);
}

#[test]
fn maxconnnum_refusals_are_counted() {
    let (g, addr) = metrics_gate("maxConnNum = 1");
    let _first = g.connect();
    await_sample(addr, "gatehouse_connections_open{transport=\"tcp\"}", 1.0);
    let mut second = g.connect();
    second.wait_closed(Duration::from_secs(5));
    await_sample(
        addr,
        "gatehouse_connections_refused_total{reason=\"max_conn\"}",
        1.0,
    );
}

#[test]
fn exposition_passes_promtool() {
    if !have_tool("promtool", "scripts/install-prometheus.sh") {
        return;
    }
    let (g, addr) = metrics_gate("");
    let mut c = g.connect();
    c.heartbeat();
    c.frame();
    let (status, text) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A child process killed when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_real_prometheus_scrapes_the_gate() {
    if !have_tool("prometheus", "scripts/install-prometheus.sh") {
        return;
    }
    let (g, addr) = metrics_gate("");
    let _clients: Vec<Client> = (0..7).map(|_| g.connect()).collect();
    await_sample(addr, "gatehouse_connections_open{transport=\"tcp\"}", 7.0);

    let dir = TempDir::new("prometheus");
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: gatehouse\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let web = format!("127.0.0.1:{port}");
    let _prom = Kill(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let web: SocketAddr = web.parse().unwrap();
    let query = "/api/v1/query?query=sum(gatehouse_connections_open)";
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        if let Ok(mut s) = TcpStream::connect_timeout(&web, Duration::from_secs(1)) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = write!(s, "GET {query} HTTP/1.0\r\nHost: p\r\n\r\n");
            let mut lines = BufReader::new(s).lines().map_while(Result::ok);
            last = lines.by_ref().last().unwrap_or_default();
            // {"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[t,"7"]}]}}
            if last.contains("\"status\":\"success\"") && last.ends_with(",\"7\"]}]}}") {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never answered 7 open connections; last answer: {last}"
        );
        std::thread::sleep(ms(250));
    }
}

/// `/readyz` answers 200 while the gate serves and 503 once shutdown began (state hang), while
/// `/healthz` stays 200: a load balancer stops sending new players, the old ones stay.
#[test]
fn readyz_flips_when_shutdown_begins() {
    let dir = TempDir::new("readyz");
    let port = free_port();
    let f = dir.0.join("etc.toml");
    std::fs::write(
        &f,
        format!(
            "[network.tcp.server]\naddr = \"127.0.0.1:0\"\nheartbeatInterval = \"10s\"\n[log]\nlevel = \"info\"\nterminals = [\"console\"]\n[gatehouse]\nshards = 2\npin = false\nmetricsAddr = \"127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["--etc", f.to_str().unwrap()])
        .env_remove("DUE_ETC")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let proc = Kill(child);
    let (tx, lines) = flume::unbounded();
    std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // The banner's Server row names the client port; the banner is printed once the gate
    // (metrics included) runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut tcp_port = None;
    while tcp_port.is_none() {
        let l = lines
            .recv_deadline(deadline)
            .expect("the banner within 10 s");
        if l.contains("Server: [tcp]") {
            let a = l
                .trim_matches('|')
                .split_whitespace()
                .nth(2)
                .unwrap()
                .to_string();
            tcp_port = a.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        }
    }
    let tcp_port = tcp_port.expect("banner names the TCP server");
    let metrics: SocketAddr = ([127, 0, 0, 1], port).into();
    assert_eq!(http_get(metrics, "/readyz"), (200, "ready\n".to_string()));
    let mut c = Client::connect(([127, 0, 0, 1], tcp_port).into(), Default::default());
    c.heartbeat();
    c.frame();
    // SAFETY: kill(2) on our own child's pid has no memory-safety implications.
    assert_eq!(unsafe { libc::kill(proc.0.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(metrics, "/readyz");
        if status == 503 {
            assert!(body.contains("shutting down"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "readyz still {status} {body}");
        std::thread::sleep(ms(20));
    }
    assert_eq!(http_get(metrics, "/healthz").0, 200, "alive while draining");
    c.heartbeat();
    assert_eq!(c.frame(), hex("0000000180"), "the client is still served");
}
