//! Faults on the wire (issue 11, item 4): between gatehouse and a due v2.4.1 Go node, and between
//! gatehouse and Redis / Consul — latency, a bandwidth cap, a black hole (bytes accepted, nothing
//! delivered), resets, a slow close, and a hard partition that heals. Real Redis, a real Consul
//! agent, the real Go node and Go clients (harness: tests/interop_support), with Toxiproxy in the
//! path (the kernel has no netem qdisc) and, for the partition, a network namespace whose veth
//! link is taken down and up (tests/fault_support). Gatehouse only: these are the gate's own
//! guarantees, not a comparison with due's gate.
//!
//! What every test holds the gate to: it never exits, and every shard keeps answering its own
//! clients during the fault (a heartbeat probe per shard, [`Probes`], and `/metrics`); a push the
//! node made and saw succeed while the path still delivers bytes reaches the client, in order;
//! after the fault heals, a request/reply flows again within a bound derived from the link's
//! settings (docs/ops/faults.md lists them and the figures measured here):
//! - a connection that survives the fault (latency, bandwidth, a stall): at once — the bound is
//!   the proxy's added delay plus [`SETTLE`];
//! - a connection that breaks (resets; a black hole, whose removal makes Toxiproxy close the
//!   connection; a node that leaves): the gate re-dials at once and, when the handshake fails,
//!   again every 100 ms (src/dispatch/node_link.rs), so within [`SETTLE`] of the heal;
//! - a silent dead link (the node's answers lost, the node still healthy in Consul): the gate's
//!   heartbeat rule gives it up 20–30 s after the last echo; the re-dialled handshake times out
//!   (3 s) and is retried after 100 ms, so replies flow within 3.1 s (+ [`SETTLE`]) of the heal;
//! - Redis: the next call after the heal reconnects (one `[cluster.gate] timeout`, 3 s);
//! - a hard partition shorter than the link heartbeat rule (20 s): TCP retransmits (backoff
//!   doubling from 200 ms), so the first retransmission after the heal comes at most the
//!   partition's length later; for a node, Consul's TCP check may flap meanwhile (its 5 s check
//!   timeout, then the 1 s interval and the gate's 1 s watch pace).
//!
//! How the link goes through the proxy: the node's link server listens on a chosen port and the
//! gate's on another; the Go node's registrar (tests/interop/internal/consulreg) is told by
//! `INTEROP_ENDPOINT_MAP` to register its endpoint as the node-link proxy's address and to dial
//! the gate's endpoint through the gate-link proxy. Both paths are checked to pass through the
//! proxies (the processes' established connections) before any fault.
//!
//! Skipped (with a message) when the Go peers, redis-server, consul or toxiproxy-server are
//! missing, or (the partition) where network namespaces are not permitted — failing instead under
//! `GATEHOUSE_REQUIRE_SERVICES=1`.

mod fault_support;
mod interop_support;

use fault_support::*;
use interop_support::*;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Scheduling slack on this 2-CPU machine shared with other work: a round trip through gate,
/// node and proxies that should take milliseconds is allowed this long.
const SETTLE: Duration = Duration::from_secs(2);
/// Added latency of the latency phase, each way.
const LATENCY: Duration = Duration::from_millis(300);

/// Everything a link-fault test needs: one gatehouse, one Go node, both link directions through
/// Toxiproxy, `/metrics`, and heartbeat probes on every shard.
struct LinkFixture {
    c: Cluster,
    /// Gate → node (the gate dials the node's link server through it: deliver, trigger).
    to_node: Proxy,
    /// Node → gate (the node dials the gate's link server through it: push, bind, replies).
    to_gate: Proxy,
    metrics: SocketAddr,
    probes: Probes,
    /// By when the gate's link to the node was up (the cluster's readiness probe dialled it).
    linked: Instant,
    _toxi: Toxiproxy,
}

/// [`LinkFixture`] and an identified client whose echo came back through both proxies.
fn link_fixture(tag: &str) -> Option<(LinkFixture, Client)> {
    if !available() || !toxiproxy_available() {
        return None;
    }
    let env = Env::start(tag);
    let toxi = Toxiproxy::start();
    let (gate_link, node_link, metrics_port) =
        (free_port(false), free_port(false), free_port(false));
    let to_gate = toxi.proxy("to-gate", &format!("127.0.0.1:{gate_link}"));
    let to_node = toxi.proxy("to-node", &format!("127.0.0.1:{node_link}"));
    let gate = start_gate(
        tag,
        &env,
        metrics_port,
        &[(
            "addr = \"127.0.0.1:0\"",
            &format!("addr = \"127.0.0.1:{gate_link}\""),
        )],
    );
    let map = format!(
        "127.0.0.1:{node_link}={},127.0.0.1:{gate_link}={}",
        to_node.listen, to_gate.listen
    );
    let node = Node::start_with(
        &env,
        1,
        0,
        &[(
            "addr = \"127.0.0.1:0\"",
            &format!("addr = \"127.0.0.1:{node_link}\""),
        )],
        &[("INTEROP_ENDPOINT_MAP", &map)],
        &[],
    );
    let c = Cluster::assemble(tag, env, vec![gate], vec![node]);
    let linked = Instant::now();
    // Both directions really pass through the proxies.
    let (gate_pid, node_pid) = (c.gate().proc.pid(), c.node().proc.pid());
    wait_until("the gate's link to the node via the proxy", WAIT, || {
        !established_to(gate_pid, to_node.port()).is_empty()
    });
    wait_until("the node's link to the gate via the proxy", WAIT, || {
        !established_to(node_pid, to_gate.port()).is_empty()
    });
    assert!(
        established_to(gate_pid, node_link).is_empty(),
        "no direct gate→node link"
    );
    assert!(
        established_to(node_pid, gate_link).is_empty(),
        "no direct node→gate link"
    );
    let metrics: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    let probes = Probes::open(c.gate().tcp, metrics);
    let mut cl = c.connect(0, Proto::Tcp);
    echo(&c, &mut cl, WAIT).expect("echo before the fault");
    let f = LinkFixture {
        c,
        to_node,
        to_gate,
        metrics,
        probes,
        linked,
        _toxi: toxi,
    };
    Some((f, cl))
}

/// A gatehouse gate with `/metrics` on `metrics_port` and extra config edits.
fn start_gate(tag: &str, env: &Env, metrics_port: u16, edits: &[(&str, &str)]) -> Gate {
    let section =
        format!("[gatehouse]\nmetricsAddr = \"127.0.0.1:{metrics_port}\"\n\n[locate.redis]");
    let mut all = vec![("[locate.redis]", section.as_str())];
    all.extend_from_slice(edits);
    Gate::start_with(
        GateKind::Gatehouse,
        Proto::Tcp,
        &format!("gh-{tag}"),
        "rr",
        env,
        &all,
    )
}

impl LinkFixture {
    /// The gate process is alive, every shard answers a heartbeat within `bound`, and `/metrics`
    /// answers.
    fn serving(&mut self, bound: Duration, when: &str) -> Duration {
        assert!(!self.c.gates[0].proc.exited(), "{when}: the gate exited");
        let slowest = self.probes.check(bound, when);
        scrape(self.metrics);
        slowest
    }
}

/// Sends one route-1 echo and waits up to `bound` for it; `Some(round trip)` or `None`.
fn echo(c: &Cluster, cl: &mut Client, bound: Duration) -> Option<Duration> {
    let p = c.unique("echo");
    let t = Instant::now();
    cl.send(1, 1, &p);
    cl.proc
        .try_wait_event(bound, |v| {
            v["event"] == "message" && v["route"] == 1 && v["payload"] == p
        })
        .map(|_| t.elapsed())
}

/// Sends route-1 echoes (a fresh payload each, 250 ms apart) until one comes back; returns the
/// time from `since` to the first answer. Panics after `bound` (from `since`).
fn echo_flows(
    c: &Cluster,
    cl: &mut Client,
    since: Instant,
    bound: Duration,
    what: &str,
) -> Duration {
    loop {
        if echo(c, cl, Duration::from_millis(250)).is_some() {
            return since.elapsed();
        }
        assert!(!cl.disconnected(), "{what}: the gate closed the client");
        assert!(since.elapsed() < bound, "{what}: no echo within {bound:?}");
    }
}

/// The node pushes `n` messages (route 9, `tag-i`) to the client (kind conn, the client's gid
/// and cid); returns the payloads of the pushes the node saw succeed, in order.
fn push_n(c: &Cluster, cl: &Client, tag: &str, n: usize) -> Vec<String> {
    let cid = cl.cid.to_string();
    let mut ok = Vec::new();
    for i in 0..n {
        let p = format!("{tag}-{i}");
        let r = c.node().call(
            "/push",
            &[
                ("kind", "conn"),
                ("gid", &cl.gid),
                ("target", &cid),
                ("route", "9"),
            ],
            &p,
        );
        if r.is_ok() {
            ok.push(p);
        }
    }
    ok
}

/// Waits until the client received every payload of `pushed` (route 9), then checks they came
/// in the order pushed.
fn received_in_order(cl: &Client, pushed: &[String], bound: Duration, what: &str) {
    let t = Instant::now();
    let got = |cl: &Client| -> Vec<String> {
        cl.messages()
            .iter()
            .filter(|v| v["route"] == 9)
            .filter_map(|v| v["payload"].as_str().map(str::to_string))
            .filter(|p| pushed.contains(p))
            .collect()
    };
    loop {
        let seen = got(cl);
        if seen.len() >= pushed.len() {
            assert_eq!(seen, pushed, "{what}: pushes arrived in the order made");
            return;
        }
        assert!(
            t.elapsed() < bound,
            "{what}: {} of {} acknowledged pushes reached the client within {bound:?}",
            seen.len(),
            pushed.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Latency and a bandwidth cap on both link directions: everything still flows, in order, only
// slower; no shard waits for the slow node; the latency is gone when the toxic is.

#[test]
fn node_link_latency_and_bandwidth_cap() {
    let tag = "lat";
    let Some((mut f, mut cl)) = link_fixture(tag) else {
        return;
    };
    let base = echo(&f.c, &mut cl, WAIT).expect("echo on the healthy path");

    // Latency: each direction's bytes wait LATENCY; an echo crosses both (gate→node deliver,
    // node→gate push of the reply).
    let ms = LATENCY.as_millis() as u64;
    f.to_node
        .add("lat", "latency", Stream::Up, json!({"latency": ms}));
    f.to_gate
        .add("lat", "latency", Stream::Up, json!({"latency": ms}));
    let rtt = echo(&f.c, &mut cl, WAIT).expect("echo under latency");
    assert!(rtt >= LATENCY * 2, "the latency applies: {rtt:?}");
    assert!(
        rtt < LATENCY * 2 + SETTLE,
        "no more than the latency: {rtt:?}"
    );
    // Shards answer their own clients without waiting for the slow link.
    let slowest = f.serving(SETTLE, "under latency");
    let pushed = push_n(&f.c, &cl, "lat", 10);
    assert_eq!(pushed.len(), 10, "the node's pushes succeed under latency");
    received_in_order(&cl, &pushed, LATENCY + SETTLE * 2, "under latency");
    f.to_node.heal();
    f.to_gate.heal();
    let healed = echo(&f.c, &mut cl, WAIT).expect("echo after the latency");
    assert!(
        healed < LATENCY * 2,
        "the latency is gone with the toxic: {healed:?}"
    );
    eprintln!("[{tag}] echo {base:?} before, {rtt:?} under +{LATENCY:?} each way, {healed:?} after; slowest probe {slowest:?}");

    // Bandwidth: 8 KB/s each way, 16 echoes of 1000 bytes (16 KB each way: about 2 s).
    f.to_node
        .add("bw", "bandwidth", Stream::Up, json!({"rate": 8}));
    f.to_gate
        .add("bw", "bandwidth", Stream::Up, json!({"rate": 8}));
    let t = Instant::now();
    let payloads: Vec<String> = (0..16)
        .map(|i| format!("bw{i:02}-{}", "x".repeat(995)))
        .collect();
    let script: String = payloads.iter().map(|p| format!("send 1 1 {p}\n")).collect();
    cl.send_script(&script);
    // While the capped link drains, every shard keeps answering promptly.
    let during = f.serving(SETTLE, "under the bandwidth cap");
    let echoed = |cl: &Client| {
        cl.messages()
            .iter()
            .filter_map(|v| v["payload"].as_str().map(str::to_string))
            .filter(|p| p.starts_with("bw"))
            .collect::<Vec<_>>()
    };
    wait_until("every capped echo", Duration::from_secs(20), || {
        echoed(&cl).len() == payloads.len()
    });
    let took = t.elapsed();
    assert_eq!(
        echoed(&cl),
        payloads,
        "capped echoes arrive complete and in order"
    );
    assert!(
        took >= Duration::from_millis(1500),
        "the cap applies: {took:?}"
    );
    f.to_node.heal();
    f.to_gate.heal();
    let after = echo(&f.c, &mut cl, WAIT).expect("echo after the cap");
    eprintln!("[{tag}] 16 KB each way under 8 KB/s took {took:?}; slowest probe meanwhile {during:?}; echo after {after:?}");
    assert!(!f.c.gates[0].proc.exited());
}

// ---------------------------------------------------------------------------------------------
// A black hole on the gate→node direction (bytes accepted by the proxy, nothing delivered), then
// resets on each direction: the gate neither exits nor stalls a shard; pushes on the intact
// direction keep reaching the client; traffic flows again right after each heal.

#[test]
fn node_link_black_hole_and_resets() {
    let tag = "hole";
    let Some((mut f, mut cl)) = link_fixture(tag) else {
        return;
    };

    // Black hole: the gate's frames vanish.
    f.to_node
        .add("hole", "timeout", Stream::Up, json!({"timeout": 0}));
    let lost = f.c.unique("lost");
    cl.send(1, 1, &lost);
    f.serving(SETTLE, "black hole");
    // The other direction still delivers: pushes the node saw succeed reach the client.
    let pushed = push_n(&f.c, &cl, "hole", 10);
    assert_eq!(pushed.len(), 10, "the node's pushes succeed");
    received_in_order(&cl, &pushed, SETTLE, "while gate→node is a black hole");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        f.c.node().messages(|v| v["payload"] == lost).is_empty(),
        "the black hole delivered nothing"
    );
    f.serving(SETTLE, "black hole, 2 s on");
    let healed = Instant::now();
    f.to_node.heal();
    let took = echo_flows(&f.c, &mut cl, healed, SETTLE, "after the black hole");
    eprintln!("[{tag}] echo flows {took:?} after the black hole healed");

    // Resets on gate→node: the proxy resets the connection on its first bytes, and every new
    // one at its handshake. The gate re-dials (100 ms apart after a failed handshake), keeps
    // the frames queued meanwhile, and serves everyone else.
    let text = scrape(f.metrics);
    let reconnects = sum(&text, "gatehouse_node_link_reconnects_total");
    f.to_node
        .add("reset", "reset_peer", Stream::Up, json!({"timeout": 0}));
    let during = f.c.unique("during-reset");
    cl.send(1, 1, &during);
    std::thread::sleep(Duration::from_millis(1500));
    f.serving(SETTLE, "resets gate→node");
    assert!(!cl.disconnected(), "the client stays connected");
    let healed = Instant::now();
    f.to_node.heal();
    let took = echo_flows(&f.c, &mut cl, healed, SETTLE, "after the gate→node resets");
    let text = await_metrics(f.metrics, "a link reconnect counted", WAIT, |t| {
        sum(t, "gatehouse_node_link_reconnects_total") > reconnects
    });
    eprintln!(
        "[{tag}] echo flows {took:?} after the resets healed; reconnects {} → {}; the message sent during the resets was {}",
        reconnects,
        sum(&text, "gatehouse_node_link_reconnects_total"),
        if f.c.node().messages(|v| v["payload"] == during).is_empty() { "lost" } else { "delivered after the heal" }
    );

    // Resets on node→gate: the node's link to the gate breaks; the gate serves on, accepts the
    // node's new connection after the heal (the re-dial is due's own link client's), and
    // replies flow again.
    f.to_gate
        .add("reset", "reset_peer", Stream::Up, json!({"timeout": 0}));
    let _ = push_n(&f.c, &cl, "reset", 3);
    std::thread::sleep(Duration::from_millis(500));
    f.serving(SETTLE, "resets node→gate");
    let healed = Instant::now();
    f.to_gate.heal();
    let took = echo_flows(
        &f.c,
        &mut cl,
        healed,
        Duration::from_secs(15),
        "after the node→gate resets",
    );
    eprintln!("[{tag}] echo flows {took:?} after the node→gate resets healed");
    let pushed = push_n(&f.c, &cl, "after", 5);
    assert_eq!(pushed.len(), 5, "pushes succeed after the heal");
    received_in_order(&cl, &pushed, SETTLE, "after the node→gate resets");
    f.serving(SETTLE, "after every heal");
}

// ---------------------------------------------------------------------------------------------
// A silent dead link: what the node sends back on the gate's link (heartbeat echoes, handshake
// answers) vanishes, while Consul still sees the node healthy (its TCP check reaches the proxy)
// and the node still gets the gate's frames and heartbeats (so it has no reason to close). Only
// the gate's link heartbeat rule can tell: one heartbeat every 10 s, which a v2.4.1 node echoes;
// no frame for 20 s closes the link (checked at each heartbeat: 20–30 s after the last echo).
// The re-dialled link's handshake answer then never comes (3 s timeout, retried after 100 ms),
// frames wait queued. Healed, the next handshake succeeds: replies flow within the handshake
// timeout plus the retry pause (and SETTLE). (Black-holed both ways, due's node closes its end
// after 20 s without a heartbeat, and Toxiproxy passes that close on.)

#[test]
fn dead_node_link_found_by_heartbeats_then_heals() {
    let tag = "dead";
    let Some((mut f, mut cl)) = link_fixture(tag) else {
        return;
    };
    // The rule holds a node to it only once it has echoed a heartbeat (v2.5.3+ nodes never do):
    // the first goes out 10 s after the link came up.
    std::thread::sleep(
        (f.linked + Duration::from_secs(11)).saturating_duration_since(Instant::now()),
    );
    let lost_before = gate_link_losses(&f.c);
    f.to_node
        .add("hole", "timeout", Stream::Down, json!({"timeout": 0}));
    let cut = Instant::now();
    // The gate's frames still reach the node (replies come back on the node's own link).
    echo(&f.c, &mut cl, SETTLE).expect("deliveries flow while only the echoes vanish");
    // Until the gate gives the link up: every shard answers meanwhile.
    let found = loop {
        f.serving(SETTLE, "dead link");
        if gate_link_losses(&f.c) > lost_before {
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < Duration::from_secs(35),
            "the dead link was not found within 35 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    f.c.gate()
        .proc
        .wait_line("reason=no frame from node for 20 s", WAIT);
    assert!(
        found >= Duration::from_secs(15),
        "found by the heartbeat rule, not sooner: {found:?}"
    );
    // The re-dialled link cannot complete its handshake: a request now waits in the queue.
    let queued = f.c.unique("queued");
    cl.send(1, 1, &queued);
    std::thread::sleep(Duration::from_secs(1));
    f.serving(SETTLE, "re-dialling a dead node");
    let healed = Instant::now();
    f.to_node.heal();
    let bound = Duration::from_millis(3100) + SETTLE;
    let took = echo_flows(&f.c, &mut cl, healed, bound, "after the dead link healed");
    eprintln!(
        "[{tag}] dead link found {found:?} after its return path went silent; replies flow {took:?} after the heal (bound {bound:?}); the request queued while re-dialling was {}",
        if cl.got(1, &queued) { "delivered after the heal" } else { "lost" }
    );
}

/// How many times the gate logged a node link lost (each shard has its own link).
fn gate_link_losses(c: &Cluster) -> usize {
    c.gate()
        .proc
        .lines()
        .iter()
        .filter(|l| l.contains("link connection lost"))
        .count()
}

// ---------------------------------------------------------------------------------------------
// A stalled node link: the proxy passes the gate's bytes at 1 KB/s (a node that has all but
// stopped reading, or a path that holds packets while Consul still sees the node healthy).
// One client floods packets towards that node: its connection is held back once the node's
// queue passes the high-water mark (due holds back the reader of a client whose node does not
// take more), so the gate does not read its bytes into memory; every other client on every shard
// keeps being answered. Healed, the held packets flow to the node again.

#[test]
fn node_link_stall_holds_back_only_its_senders() {
    let tag = "stall";
    let Some((mut f, _cl)) = link_fixture(tag) else {
        return;
    };
    // The bandwidth toxic holds a chunk at a time (no buffer of its own, unlike latency's 1024
    // chunks): after the kernel's buffers, the gate's writes to the node block.
    f.to_node
        .add("stall", "bandwidth", Stream::Up, json!({"rate": 1}));
    let flood = Flood::start(f.c.gate().tcp);
    let t = Instant::now();
    let mut slowest = Duration::ZERO;
    while t.elapsed() < Duration::from_secs(8) {
        slowest = slowest.max(f.serving(SETTLE, "node link stalled, one client flooding"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent = flood.stop();
    eprintln!(
        "[{tag}] {} MiB flooded in 8 s into a link taking 1 KB/s; slowest probe {slowest:?}",
        sent >> 20
    );
    // Held back: what the flooder got in is the socket buffers on the way plus the 4 MiB
    // high-water mark, not the 64 MiB queue bound a gate reading on would reach.
    assert!(
        sent < 40 << 20,
        "the flooder was held back (it wrote {sent} bytes)"
    );
    // Healed: the held packets flow to the node again (the gate's blocked write resumes as soon
    // as the proxy reads again). The whole backlog — thousands of echoes, each printed by the
    // node — is not waited for.
    let messages = |f: &LinkFixture| f.c.node().proc.count_events(|v| v["event"] == "message");
    let before = messages(&f);
    let healed = Instant::now();
    f.to_node.heal();
    wait_until("the held packets reach the node", SETTLE * 2, || {
        messages(&f) > before
    });
    let took = healed.elapsed();
    f.serving(SETTLE, "after the stall");
    eprintln!("[{tag}] packets reach the node {took:?} after the stall healed");
}

/// A raw client writing route-1 packets (4000-byte payloads) as fast as the gate takes them,
/// from a thread, until stopped (then it closes).
struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Flood {
    fn start(tcp: SocketAddr) -> Flood {
        use std::io::Write;
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(tcp).expect("flood connect");
            s.set_write_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let packet = client_packet(1, 1, &[b'f'; 4000]);
            let (mut sent, mut at) = (0u64, 0usize);
            while !s2.load(Ordering::Relaxed) {
                match s.write(&packet[at..]) {
                    Ok(n) => {
                        sent += n as u64;
                        at = (at + n) % packet.len();
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => panic!("flood write: {e}"),
                }
            }
            sent
        });
        Flood { stop, thread }
    }

    /// Stops the flood; the bytes written.
    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("flood thread")
    }
}

// ---------------------------------------------------------------------------------------------
// Slow close: the proxy holds each side open 3 s after the other closed. The node pushes and
// then shuts down: every push it saw succeed reaches the client before the link closes; the gate
// is not held up by the lingering socket, and a replacement node is routed to.

#[test]
fn node_link_slow_close() {
    let tag = "close";
    let Some((mut f, mut cl)) = link_fixture(tag) else {
        return;
    };
    f.to_node
        .add_both("slow", "slow_close", json!({"delay": 3000}));
    f.to_gate
        .add_both("slow", "slow_close", json!({"delay": 3000}));

    let pushed = push_n(&f.c, &cl, "close", 20);
    assert_eq!(pushed.len(), 20, "the node's pushes succeed");
    let stopped = Instant::now();
    f.c.nodes[0].proc.signal(libc::SIGTERM);
    received_in_order(
        &cl,
        &pushed,
        SETTLE,
        "node shutting down behind a slow close",
    );
    // While the closed node's sockets linger in the proxy, every shard answers.
    while stopped.elapsed() < Duration::from_secs(3) {
        f.serving(SETTLE, "slow close");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        f.c.nodes[0].proc.wait_exit(Duration::from_secs(10)),
        "the node exited"
    );
    // A replacement node (direct path) is found through Consul and answers.
    let started = Instant::now();
    f.c.nodes.push(Node::start(&f.c.env, 1, 1));
    let took = echo_flows(
        &f.c,
        &mut cl,
        started,
        Duration::from_secs(30),
        "replacement node",
    );
    eprintln!("[{tag}] replacement node answers {took:?} after its start");
    f.serving(SETTLE, "after the slow close");
}

// ---------------------------------------------------------------------------------------------
// Redis behind Toxiproxy (the gate's locator only; the node talks to Redis directly): latency
// under the call timeout is absorbed; a black hole and resets fail binds within the timeout,
// turn gatehouse_locator_up to 0 and count errors, while stateless routes keep flowing; after
// each heal the next bind succeeds and gatehouse_locator_up is 1 again.

#[test]
fn redis_latency_black_hole_and_resets() {
    let tag = "redis";
    if !available() || !toxiproxy_available() {
        return;
    }
    let (mut c, to_redis, metrics, mut probes, _toxi) =
        behind_proxy(tag, "127.0.0.1:6379", |env| env.redis.addr());
    let mut cl = c.connect(0, Proto::Tcp);
    let gid = cl.gid.clone();
    c.bind(&mut cl, 101);
    assert_eq!(
        c.env.redis.get(&gate_key(101)).as_deref(),
        Some(gid.as_str())
    );

    // Latency below the 3 s call timeout: binds still succeed.
    to_redis.add_both("lat", "latency", json!({"latency": 300}));
    let mut seq = 10;
    let t = Instant::now();
    assert!(bind_once(&c, &mut cl, &mut seq, 102), "bind under latency");
    eprintln!("[{tag}] bind under +300 ms each way took {:?}", t.elapsed());
    to_redis.heal();

    for (fault, kind, attrs, uid) in [
        ("black hole", "timeout", json!({"timeout": 0}), 103),
        ("resets", "reset_peer", json!({"timeout": 0}), 104),
    ] {
        let errors = sum(&scrape(metrics), "gatehouse_locator_errors_total");
        to_redis.add_both("fault", kind, attrs);
        let t = Instant::now();
        let bound = bind_once(&c, &mut cl, &mut seq, uid);
        eprintln!(
            "[{tag}] {fault}: the node's bind call returned after {:?}",
            t.elapsed()
        );
        await_metrics(
            metrics,
            &format!("{fault}: locator down"),
            Duration::from_secs(10),
            |m| {
                sample(m, "gatehouse_locator_up") == Some(0.0)
                    && sum(m, "gatehouse_locator_errors_total") > errors
            },
        );
        assert!(
            !bound && c.env.redis.get(&gate_key(uid)).is_none(),
            "{fault}: a bind cannot reach Redis"
        );
        c.gate().proc.wait_line(
            &format!(
                "locator bind failed, binding undone cid={} uid={uid}",
                cl.cid
            ),
            WAIT,
        );
        // The gate keeps serving: every shard, and stateless routes through the node.
        probes.check(SETTLE, fault);
        let rtt = echo(&c, &mut cl, SETTLE).unwrap_or_else(|| panic!("{fault}: no echo"));
        assert!(!c.gates[0].proc.exited());
        let healed = Instant::now();
        to_redis.heal();
        // The next call reconnects: within one call timeout (3 s) of the heal, plus slack.
        let took = binds_again(
            &c,
            &mut cl,
            &mut seq,
            healed,
            Duration::from_secs(3) + SETTLE * 2,
            fault,
        );
        await_metrics(metrics, &format!("{fault}: locator up"), WAIT, |m| {
            sample(m, "gatehouse_locator_up") == Some(1.0)
        });
        eprintln!(
            "[{tag}] {fault}: echo {rtt:?} during; a bind reaches Redis {took:?} after the heal"
        );
    }
}

/// A cluster (one gatehouse, one node) whose gate reaches a service — the one the sample config
/// names at `sample_addr`, really at `addr(env)` — through a proxy; the node reaches it directly.
/// Returns the cluster, the proxy, the gate's `/metrics` address, probes on every shard, and the
/// Toxiproxy server (keep it alive).
fn behind_proxy(
    tag: &str,
    sample_addr: &str,
    addr: impl Fn(&Env) -> String,
) -> (Cluster, Proxy, SocketAddr, Probes, Toxiproxy) {
    let env = Env::start(tag);
    let toxi = Toxiproxy::start();
    let proxy = toxi.proxy(tag, &addr(&env));
    let metrics_port = free_port(false);
    let gate = start_gate(tag, &env, metrics_port, &[(sample_addr, &proxy.listen)]);
    let node = Node::start(&env, 1, 0);
    let c = Cluster::assemble(tag, env, vec![gate], vec![node]);
    let metrics: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    let probes = Probes::open(c.gate().tcp, metrics);
    (c, proxy, metrics, probes, toxi)
}

/// Route 5: the node calls `BindGate(uid)` for the client; waits for the node's reply, then
/// tells whether Redis maps `uid` to the client's gate. (The reply cannot tell: a v2.4.1 node
/// answers `ok` whatever code the gate returned — only v2.5.0 nodes turn the code into an error,
/// cluster-protocol.md §9 — or the node's own 3 s timeout.)
fn bind_once(c: &Cluster, cl: &mut Client, seq: &mut i32, uid: i64) -> bool {
    *seq += 1;
    let s = *seq;
    cl.send(5, s, &uid.to_string());
    cl.wait_message(&format!("the node's reply to bind {uid}"), |v| {
        v["route"] == 5 && v["seq"] == s
    });
    c.env.redis.get(&gate_key(uid)).as_deref() == Some(cl.gid.as_str())
}

/// Binds fresh uids until one reaches Redis; returns the time since `since`. Panics once
/// `bound` has passed since `since`.
fn binds_again(
    c: &Cluster,
    cl: &mut Client,
    seq: &mut i32,
    since: Instant,
    bound: Duration,
    what: &str,
) -> Duration {
    loop {
        let uid = 1000 + *seq as i64;
        if bind_once(c, cl, seq, uid) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < bound,
            "{what}: binds still fail {:?} after the heal",
            since.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// Consul behind Toxiproxy (the gate's registrar and watch only): resets, then a black hole.
// The gate counts the failures (gatehouse_registry_errors_total), keeps its node list and keeps
// routing; after the heal it is passing in Consul again and the errors stop.

#[test]
fn consul_resets_and_black_hole() {
    let tag = "consul";
    if !available() || !toxiproxy_available() {
        return;
    }
    let (mut c, to_consul, metrics, mut probes, _toxi) =
        behind_proxy(tag, "127.0.0.1:8500", |env| env.consul().addr());
    let sid = c.gate().service_id();
    let mut cl = c.connect(0, Proto::Tcp);

    // Resets fail the watch's query at once (retried every second) and the TTL update (every
    // heartbeatCheckInterval / 2 = 5 s); a black hole holds a TTL update for its 5 s timeout and
    // the watch for its blocking wait. Each fault lasts until an error is counted. Meanwhile the
    // gate keeps routing client messages to the node from the node list it has (checked at the
    // node: the replies come back through the node's view of the gate, which a fault long
    // enough to expire the gate's TTL check takes away — Consul's doing, not the gate's).
    for (fault, kind, attrs, bound) in [
        (
            "resets",
            "reset_peer",
            json!({"timeout": 0}),
            Duration::from_secs(10),
        ),
        (
            "black hole",
            "timeout",
            json!({"timeout": 0}),
            Duration::from_secs(15),
        ),
    ] {
        let errors = sum(&scrape(metrics), "gatehouse_registry_errors_total");
        let t = Instant::now();
        to_consul.add_both("fault", kind, attrs);
        await_metrics(
            metrics,
            &format!("{fault}: registry errors counted"),
            bound,
            |m| sum(m, "gatehouse_registry_errors_total") > errors,
        );
        eprintln!(
            "[{tag}] {fault}: first registry error counted after {:?}",
            t.elapsed()
        );
        probes.check(SETTLE, fault);
        let p = c.unique("routed");
        cl.send(1, 1, &p);
        c.wait_message(
            &format!("{fault}: the gate still routes to the node"),
            |v| v["payload"] == p,
        );
        assert!(!c.gates[0].proc.exited(), "{fault}: the gate exited");
        let healed = Instant::now();
        to_consul.heal();
        // Passing again: the TTL loop updates within half a TTL (5 s) and re-registers if the
        // agent dropped the check; the TCP check (1 s interval) never failed.
        wait_until(
            &format!("{fault}: {sid} passing again"),
            Duration::from_secs(15),
            || c.env.consul().is_passing("gate", &sid),
        );
        let took = echo_flows(&c, &mut cl, healed, Duration::from_secs(20), fault);
        eprintln!("[{tag}] {fault}: passing and replies flow {took:?} after the heal");
    }
    // The errors stop: over a TTL period and several watch rounds after the heal, the count
    // holds still.
    let settled = sum(&scrape(metrics), "gatehouse_registry_errors_total");
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        sum(&scrape(metrics), "gatehouse_registry_errors_total"),
        settled,
        "no registry errors once Consul is reachable again"
    );
}

// ---------------------------------------------------------------------------------------------
// A hard partition that heals: Redis runs in a network namespace joined by a veth pair, and the
// namespace's end of the pair goes down for 4 s (packets vanish both ways: no reset, no
// unreachable answer). Binds fail within the call timeout, gatehouse_locator_up turns 0, the
// gate keeps serving; after the link comes back up a bind succeeds again.

#[test]
fn hard_partition_of_redis_heals() {
    let tag = "part";
    if !available() {
        return;
    }
    let Some(ns) = Netns::create() else { return };
    let dir = TempDir::new(tag);
    let redis = Redis::start_at(&dir.0, &ns.ns_ip, &ns.exec_prefix());
    let consul = Consul::start(&dir.0);
    let env = Env {
        registry: Registry::Consul(consul),
        redis,
        dir,
    };
    let metrics_port = free_port(false);
    let gate = start_gate(tag, &env, metrics_port, &[]);
    let node = Node::start(&env, 1, 0);
    let mut c = Cluster::assemble(tag, env, vec![gate], vec![node]);
    let metrics: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    let mut probes = Probes::open(c.gate().tcp, metrics);
    let mut cl = c.connect(0, Proto::Tcp);
    c.bind(&mut cl, 301);

    ns.partition();
    let cut = Instant::now();
    // No reading Redis from here during the partition: only the gate's view counts.
    cl.send(5, 31, "302");
    cl.wait_message("the node's reply to a bind during the partition", |v| {
        v["route"] == 5 && v["seq"] == 31
    });
    await_metrics(metrics, "locator down", Duration::from_secs(10), |m| {
        sample(m, "gatehouse_locator_up") == Some(0.0)
    });
    c.gate()
        .proc
        .wait_line("locator bind failed, binding undone", WAIT);
    let slowest = probes.check(SETTLE, "partition");
    echo(&c, &mut cl, SETTLE).expect("stateless routes flow during the partition");
    let remaining = Duration::from_secs(4).saturating_sub(cut.elapsed());
    std::thread::sleep(remaining);
    let partition = cut.elapsed();
    ns.heal();
    let healed = Instant::now();
    // Bound: a broken connection is replaced on the next call (3 s timeout), and a kept one
    // resumes on the next TCP retransmission, at most the partition's length after the heal.
    let bound = partition + Duration::from_secs(3) + SETTLE * 2;
    let mut seq = 40;
    let took = binds_again(&c, &mut cl, &mut seq, healed, bound, "after the partition");
    // The SET of the failed bind may still sit in the dropped socket's send buffer and reach
    // Redis after the heal (at-least-once: the gate cannot know): reported, not asserted.
    let late = c.env.redis.get(&gate_key(302)).is_some();
    await_metrics(metrics, "locator up", WAIT, |m| {
        sample(m, "gatehouse_locator_up") == Some(1.0)
    });
    probes.check(SETTLE, "after the partition");
    assert!(!c.gates[0].proc.exited());
    eprintln!(
        "[{tag}] partition {partition:?}; a bind reaches Redis {took:?} after the heal (bound {bound:?}); the failed bind's SET {} Redis later; slowest probe during the partition {slowest:?}",
        if late { "reached" } else { "never reached" }
    );
}

// ---------------------------------------------------------------------------------------------
// A hard partition between the gate and a node: the node runs in a network namespace (its link
// server, its control server, and its way to Redis and Consul all cross the veth pair), and the
// namespace's end of the pair goes down for 4 s. Every shard keeps answering; after the heal,
// the node's pushes reach the client and request/replies flow again, within the partition's
// length (TCP retransmission backoff) plus Consul's health-check round (the agent's TCP check of
// the node may time out during the partition: critical for a moment, then passing again).

#[test]
fn hard_partition_of_a_node_heals() {
    let tag = "npart";
    if !available() || !toxiproxy_available() {
        return;
    }
    let Some(ns) = Netns::create() else { return };
    let dir = TempDir::new(tag);
    // Redis listens on the host's end of the pair (reachable from both sides); Consul stays on
    // loopback, and the node reaches it through a plain proxy on the host's end.
    let redis = Redis::start_at(&dir.0, &ns.host_ip, &[]);
    let consul = Consul::start(&dir.0);
    let toxi = Toxiproxy::start();
    let consul_for_ns = toxi.proxy_at(
        "consul",
        &format!("{}:{}", ns.host_ip, free_port(false)),
        &consul.addr(),
    );
    let env = Env {
        registry: Registry::Consul(consul),
        redis,
        dir,
    };
    let metrics_port = free_port(false);
    let gate_link = format!("addr = \"{}:0\"", ns.host_ip);
    let gate = start_gate(
        tag,
        &env,
        metrics_port,
        &[("addr = \"127.0.0.1:0\"", &gate_link)],
    );
    let (node_link, node_ctl) = (
        format!("addr = \"{}:0\"", ns.ns_ip),
        format!("ctl = \"{}:0\"", ns.ns_ip),
    );
    let node = Node::start_with(
        &env,
        1,
        0,
        &[
            ("127.0.0.1:8500", &consul_for_ns.listen),
            ("addr = \"127.0.0.1:0\"", &node_link),
            ("ctl = \"127.0.0.1:0\"", &node_ctl),
        ],
        &[],
        &ns.exec_prefix(),
    );
    let mut c = Cluster::assemble(tag, env, vec![gate], vec![node]);
    let metrics: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    let mut probes = Probes::open(c.gate().tcp, metrics);
    let mut cl = c.connect(0, Proto::Tcp);
    let pushed = push_n(&c, &cl, "before", 10);
    assert_eq!(pushed.len(), 10, "the node's pushes succeed");
    received_in_order(&cl, &pushed, SETTLE, "before the partition");

    ns.partition();
    let cut = Instant::now();
    let during = c.unique("during");
    cl.send(1, 1, &during);
    let mut slowest = Duration::ZERO;
    while cut.elapsed() < Duration::from_secs(4) {
        slowest = slowest.max(probes.check(SETTLE, "node partitioned"));
        scrape(metrics);
        assert!(!c.gates[0].proc.exited(), "the gate exited");
        assert!(!cl.disconnected(), "the gate closed the client");
        std::thread::sleep(Duration::from_millis(300));
    }
    let partition = cut.elapsed();
    ns.heal();
    let healed = Instant::now();
    let bound = partition + Duration::from_secs(10);
    let took = echo_flows(&c, &mut cl, healed, bound, "after the node partition");
    let pushed = push_n(&c, &cl, "after", 10);
    assert_eq!(pushed.len(), 10, "the node's pushes succeed after the heal");
    received_in_order(&cl, &pushed, SETTLE, "after the partition");
    probes.check(SETTLE, "after the partition");
    eprintln!(
        "[{tag}] partition {partition:?}; replies flow {took:?} after the heal (bound {bound:?}); the request sent during it was {}; slowest probe {slowest:?}",
        if cl.got(1, &during) { "answered after the heal" } else { "lost" }
    );
}
