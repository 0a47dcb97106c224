//! `[gatehouse] singleLogin` with real sockets: binds sent by a node over the link close the
//! older connection of the uid on this gate (`gate`), or leave it open and unbound (`off`,
//! due's behaviour); with `cluster`, two gates sharing a real redis-server close each other's
//! older connection through the locator's BindGate events. The Redis test is skipped with a
//! message when redis-server is not installed (unless GATEHOUSE_REQUIRE_SERVICES is set).

mod common;

use bytes::BytesMut;
use common::*;
use gatehouse::dispatch::EventKind;
use gatehouse::drpc;
use gatehouse::session::{shard_of_cid, Kind};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// A node's link connection to a gate (handshake done), sending bind requests.
struct Node {
    s: TcpStream,
    seq: u64,
}

impl Node {
    fn connect(link: &str) -> Node {
        let s = TcpStream::connect(link).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut n = Node { s, seq: 0 };
        let hs = n.call(|o, seq| drpc::put_handshake(o, seq, 2, b"node-x"));
        assert_eq!(&hs[14..], [0, 0], "handshake accepted");
        n
    }

    /// Sends one request and returns its 16-byte code-only answer.
    fn call(&mut self, build: impl Fn(&mut BytesMut, u64)) -> Vec<u8> {
        self.seq += 1;
        let mut out = BytesMut::new();
        build(&mut out, self.seq);
        self.s.write_all(&out).unwrap();
        let mut buf = vec![0u8; 16];
        self.s.read_exact(&mut buf).unwrap();
        buf
    }

    /// due's bind (cluster §2.6.1); returns the code.
    fn bind(&mut self, cid: i64, uid: i64) -> u16 {
        let r = self.call(|o, seq| drpc::put_bind(o, seq, cid, uid));
        u16::from_be_bytes([r[14], r[15]])
    }
}

/// A gate with a link server; `gate_keys` go to `[cluster.gate]`, `extra` after the servers.
fn gate_with(gate_keys: &str, extra: &str) -> TestGate {
    TestGate::start(&format!(
        "[cluster.gate]\naddr = \"127.0.0.1:0\"\n{gate_keys}\n[network.tcp.server]\naddr = \"127.0.0.1:0\"\n{extra}"
    ))
}

fn gate(extra: &str) -> TestGate {
    gate_with("", extra)
}

/// Two clients, on two different shards when the kernel spreads them so (it usually does
/// within a few connections), with their cids.
fn two_clients(g: &TestGate) -> ((Client, i64), (Client, i64)) {
    let first = g.connect_with_cid();
    let mut spare = Vec::new();
    for _ in 0..8 {
        let next = g.connect_with_cid();
        if shard_of_cid(next.1, 2) != shard_of_cid(first.1, 2) {
            return (first, next);
        }
        spare.push(next);
    }
    (first, spare.remove(0))
}

fn heartbeat_answered(c: &mut Client) {
    c.heartbeat();
    assert_eq!(c.frame(), hex("0000000180"), "the connection is served");
}

/// `gate`: binding the uid of connection A to connection B closes A (forced); the nodes see A's
/// Disconnect with uid 0 (the uid was B's by then, as due's step 4 clears it) after B's
/// Reconnect; B keeps the uid and is served.
#[test]
fn gate_mode_closes_the_older_connection() {
    let g = gate("[gatehouse]\nsingleLogin = \"gate\"\n");
    let mut node = Node::connect(&g.gate().link_addr);
    let ((mut a, cid_a), (mut b, cid_b)) = two_clients(&g);
    assert_eq!(node.bind(cid_a, 42), 0);
    assert_eq!(g.event_of(EventKind::Reconnect, cid_a).uid, 42);
    heartbeat_answered(&mut a);

    assert_eq!(node.bind(cid_b, 42), 0);
    assert_eq!(g.event_of(EventKind::Reconnect, cid_b).uid, 42);
    a.wait_closed(Duration::from_secs(5));
    let gone = g.event_of(EventKind::Disconnect, cid_a);
    assert_eq!(gone.uid, 0, "A's uid was taken before it closed");

    heartbeat_answered(&mut b);
    b.data(3, 1, b"b");
    let d = g.delivery();
    assert_eq!((d.cid, d.uid), (cid_b, 42));
    let s = g.sessions();
    assert_eq!(g.run(s.stat(Kind::User)), Ok(1));
    assert_eq!(g.run(s.cid_of(42)), Ok(Some(cid_b)));
    g.run(s.push(Kind::User, 42, g.packet.encode(5, 0, b"to b").unwrap()))
        .unwrap();
    assert_eq!(b.frame(), g.packet.encode(5, 0, b"to b").unwrap().to_vec());

    // Binding the uid again to the connection that holds it closes nothing.
    assert_eq!(node.bind(cid_b, 42), 0);
    assert_eq!(g.event_of(EventKind::Reconnect, cid_b).uid, 42);
    heartbeat_answered(&mut b);
}

/// `off` (the default): due's bind; the older connection stays open, unbound.
#[test]
fn off_mode_keeps_the_older_connection_open_and_unbound() {
    let g = gate("");
    let mut node = Node::connect(&g.gate().link_addr);
    let ((mut a, cid_a), (mut b, cid_b)) = two_clients(&g);
    assert_eq!(node.bind(cid_a, 42), 0);
    assert_eq!(g.event_of(EventKind::Reconnect, cid_a).uid, 42);
    assert_eq!(node.bind(cid_b, 42), 0);
    assert_eq!(g.event_of(EventKind::Reconnect, cid_b).uid, 42);
    a.silent_for(ms(300));
    heartbeat_answered(&mut a);
    a.data(3, 1, b"a");
    let d = g.delivery();
    assert_eq!((d.cid, d.uid), (cid_a, 0));
    b.data(3, 2, b"b");
    let d = g.delivery();
    assert_eq!((d.cid, d.uid), (cid_b, 42));
    drop(a);
    assert_eq!(g.event_of(EventKind::Disconnect, cid_a).uid, 0);
}

struct Redis {
    port: u16,
    dir: TempDir,
}

impl Redis {
    fn start() -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("GATEHOUSE_REQUIRE_SERVICES").is_none(),
                "redis-server is required (scripts/install-redis.sh)"
            );
            eprintln!(
                "redis-server not installed: skipping (scripts/install-redis.sh installs it)"
            );
            return None;
        }
        let r = Redis {
            port: free_port(),
            dir: TempDir::new("redis-login"),
        };
        r.run("start");
        Some(r)
    }

    fn run(&self, cmd: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/redis.sh");
        let port = self.port.to_string();
        let st = Command::new("bash")
            .args([script, cmd, &port, self.dir.0.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success(), "redis.sh {cmd}");
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Waits (bounded) until `n` clients subscribe to `channel`.
    fn wait_subscribers(&self, channel: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.cli(&["PUBSUB", "NUMSUB", channel]);
            if out.lines().nth(1).and_then(|l| l.trim().parse().ok()) == Some(n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{channel}: {n} subscribers expected, redis says {out:?}"
            );
            std::thread::sleep(ms(20));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.run("stop");
    }
}

const GATE_KEY: &str = "due:locate:locate:user:7:gate";
const GATE_CHANNEL: &str = "due:locate:locate:cluster:gate:event";

/// `cluster`: two gates, one Redis. A bind on gate 2 closes the connection bound on gate 1
/// (Disconnect with uid 0 to gate 1's nodes), and gate 1's release leaves Redis naming gate 2.
/// A replacement on gate 1 itself leaves the key naming gate 1. A BindGate event that Redis
/// contradicts (a stale one) closes nothing; one it confirms does. After a Redis restart the
/// watchers subscribe again and it works on.
#[test]
fn cluster_mode_closes_the_connection_on_the_other_gate() {
    let Some(r) = Redis::start() else { return };
    let clustered = |id: &str| {
        gate_with(
            &format!("id = \"{id}\""),
            &format!(
                "[locate.redis]\naddrs = [\"127.0.0.1:{}\"]\n[gatehouse]\nsingleLogin = \"cluster\"\n",
                r.port
            ),
        )
    };
    let g1 = clustered("gate-one");
    let g2 = clustered("gate-two");
    // Both gates' watchers follow the gate channel before anyone binds.
    r.wait_subscribers(GATE_CHANNEL, 2);
    let (s1, s2) = (g1.sessions(), g2.sessions());

    // On gate 1: A, then B takes the uid; A closes, the key still names gate 1.
    let (mut a, cid_a) = g1.connect_with_cid();
    g1.run(s1.bind(cid_a, 7)).unwrap();
    assert_eq!(g1.event_of(EventKind::Reconnect, cid_a).uid, 7);
    assert_eq!(r.cli(&["GET", GATE_KEY]), "gate-one");
    let (mut b, cid_b) = g1.connect_with_cid();
    g1.run(s1.bind(cid_b, 7)).unwrap();
    a.wait_closed(Duration::from_secs(5));
    assert_eq!(g1.event_of(EventKind::Disconnect, cid_a).uid, 0);
    assert_eq!(
        r.cli(&["GET", GATE_KEY]),
        "gate-one",
        "A's release kept B's binding"
    );
    heartbeat_answered(&mut b);

    // On gate 2: C takes the uid; B on gate 1 closes, Redis names gate 2.
    let (mut c, cid_c) = g2.connect_with_cid();
    g2.run(s2.bind(cid_c, 7)).unwrap();
    assert_eq!(g2.event_of(EventKind::Reconnect, cid_c).uid, 7);
    b.wait_closed(Duration::from_secs(5));
    assert_eq!(g1.event_of(EventKind::Disconnect, cid_b).uid, 0);
    assert_eq!(r.cli(&["GET", GATE_KEY]), "gate-two");
    assert_eq!(g1.run(s1.stat(Kind::User)), Ok(0));
    assert_eq!(g1.run(s1.cid_of(7)), Ok(None));
    heartbeat_answered(&mut c);
    c.data(3, 1, b"c");
    let d = g2.delivery();
    assert_eq!((d.cid, d.uid), (cid_c, 7));

    // A stale event (Redis names gate 2) closes nothing on gate 2.
    let event = r#"{"uid":7,"type":1,"insID":"gate-ghost","insKind":"gate","insName":""}"#;
    assert_eq!(r.cli(&["PUBLISH", GATE_CHANNEL, event]), "2");
    c.silent_for(ms(500));
    heartbeat_answered(&mut c);
    // Once Redis confirms the uid is elsewhere, the same event closes C.
    assert_eq!(r.cli(&["SET", GATE_KEY, "gate-ghost"]), "OK");
    assert_eq!(r.cli(&["PUBLISH", GATE_CHANNEL, event]), "2");
    c.wait_closed(Duration::from_secs(5));
    assert_eq!(g2.event_of(EventKind::Disconnect, cid_c).uid, 0);
    assert_eq!(r.cli(&["GET", GATE_KEY]), "gate-ghost");

    // Redis restarts: both watchers subscribe again, and single login works on.
    r.run("stop");
    r.run("start");
    r.wait_subscribers(GATE_CHANNEL, 2);
    let (mut d, cid_d) = g2.connect_with_cid();
    g2.run(s2.bind(cid_d, 8)).unwrap();
    assert_eq!(g2.event_of(EventKind::Reconnect, cid_d).uid, 8);
    let (mut e, cid_e) = g1.connect_with_cid();
    g1.run(s1.bind(cid_e, 8)).unwrap();
    d.wait_closed(Duration::from_secs(5));
    assert_eq!(g2.event_of(EventKind::Disconnect, cid_d).uid, 0);
    assert_eq!(r.cli(&["GET", "due:locate:locate:user:8:gate"]), "gate-one");
    heartbeat_answered(&mut e);
}
