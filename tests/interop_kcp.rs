//! KCP interop: the Go client of tests/interop (kcp-go v5.6.20 itself, dialled as due v2.4.1's
//! KCP client dials it: FEC 10 data + 3 parity shards, and also plain; due's own packet package)
//! against gatehouse's `[network.kcp.server]`. The client conformance items that apply to KCP
//! (spec kcp.md §11, client-protocol.md): framing, heartbeats resp and tick, the silent-client
//! timeout, authorizeTimeout, maxConnNum, sessions (bind, push by uid, graceful close), push,
//! multicast and broadcast.
//!
//! The gate runs in this process with its upstream captured (tests/common), so deliveries and
//! events are observed directly; the Go client is a real process. Skipped (with a message) when
//! tests/interop/bin/client is missing, unless `GATEHOUSE_REQUIRE_SERVICES=1`.

mod common;
mod interop_support;

use common::{ms, TempDir, TestGate};
use gatehouse::dispatch::{EventKind, Observed};
use gatehouse::session::{Kind, Transport};
use interop_support::{go_bin, Proc};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(8);

/// Whether the Go client is there (else skip, or fail under GATEHOUSE_REQUIRE_SERVICES).
fn available() -> bool {
    if go_bin("client").is_file() {
        return true;
    }
    let required = std::env::var_os("GATEHOUSE_REQUIRE_SERVICES").is_some_and(|v| !v.is_empty());
    assert!(
        !required,
        "GATEHOUSE_REQUIRE_SERVICES is set but tests/interop/bin/client is missing \
         (scripts/build-interop.sh)"
    );
    eprintln!("KCP interop SKIPPED: tests/interop/bin/client missing (scripts/build-interop.sh)");
    false
}

fn kcp_gate(extra: &str) -> TestGate {
    TestGate::start(&format!(
        "[network.kcp.server]\naddr = \"127.0.0.1:0\"\n{extra}\n"
    ))
}

/// FEC settings of the Go client: due's own (10 data, 3 parity shards) and a plain session.
const DUE_FEC: &str = "10,3";
const PLAIN: &str = "0,0";

struct GoClient {
    proc: Proc,
    _etc: TempDir,
}

impl GoClient {
    /// A Go KCP client on `g`, sending a heartbeat every `heartbeat` ("0s" = never).
    fn spawn(g: &TestGate, fec: &str, heartbeat: &str) -> GoClient {
        let etc = TempDir::new("kcp-client");
        // due's default packet layout, as the test gate's.
        std::fs::write(etc.0.join("etc.toml"), "[packet]\nbyteOrder = \"big\"\n").unwrap();
        let mut cmd = Command::new(go_bin("client"));
        cmd.arg(format!("--etc={}", etc.0.display()))
            .arg("--proto=kcp")
            .arg(format!("--addr={}", g.addr(Transport::Kcp)))
            .arg(format!("--fec={fec}"))
            .arg(format!("--heartbeat={heartbeat}"));
        let proc = Proc::spawn(&format!("kcp client fec {fec}"), cmd, true);
        proc.wait_event("connected", WAIT, |v| v["event"] == "connected");
        GoClient { proc, _etc: etc }
    }

    fn send(&mut self, route: i32, seq: i32, payload: &str) {
        self.proc
            .write_line(&format!("send {route} {seq} {payload}"));
    }

    fn messages(&self, route: i64) -> Vec<Value> {
        self.proc
            .events()
            .into_iter()
            .filter(|v| v["event"] == "message" && v["route"] == route)
            .collect()
    }

    fn wait_message(&self, route: i64, payload: &str) -> Value {
        self.proc
            .wait_event(&format!("message {payload}"), WAIT, |v| {
                v["event"] == "message" && v["route"] == route && v["payload"] == payload
            })
    }

    fn heartbeats(&self) -> usize {
        self.proc.count_events(|v| v["event"] == "heartbeat")
    }
}

/// The Connect event of the next connection, and the cid of a client that sent `payload` on
/// route 1 (KCP has no handshake: the first datagram is the first packet).
fn open(g: &TestGate, c: &mut GoClient, payload: &str) -> i64 {
    c.send(1, 1, payload);
    let cid = g.event(EventKind::Connect).cid;
    let d = g.delivery();
    assert_eq!((d.cid, d.route, d.seq), (cid, 1, 1));
    assert_eq!(
        &d.frame[d.frame.len() - payload.len()..],
        payload.as_bytes()
    );
    cid
}

/// Framing, resp heartbeats, data and pushes — with due's FEC 10+3 (bursts that produce parity
/// shards) and with a plain session.
fn framing_and_resp(fec: &str) {
    if !available() {
        return;
    }
    let g = kcp_gate("heartbeatInterval = \"1s\"\nheartbeatMechanism = \"resp\"");
    // due's client gives up after 2 intervals without a packet, and its heartbeat waits behind
    // whatever it queued before (a burst leaves at the pace of KCP's congestion window, a few
    // segments per 100 ms flush, as against due's own server): 1 s, not shorter.
    let mut c = GoClient::spawn(&g, fec, "1s");
    let cid = open(&g, &mut c, "hello");
    // resp: the client's heartbeats are answered.
    c.proc
        .wait_event("a heartbeat reply", WAIT, |v| v["event"] == "heartbeat");
    // A burst of 40 packets (FEC: groups of 10 data shards followed by 3 parity shards):
    // every one delivered once, in order.
    for i in 0..40 {
        c.send(2, i, &format!("burst-{i}"));
    }
    for i in 0..40 {
        let d = g.delivery();
        assert_eq!((d.cid, d.route, d.seq), (cid, 2, i));
        assert!(d.frame.ends_with(format!("burst-{i}").as_bytes()));
    }
    // Pushes reach the client through due's packet reader: a small one, a 3000-byte one (three
    // KCP segments) and 100 in a row.
    let s = g.sessions();
    let p = g.packet.encode(9, 0, b"pushed").unwrap();
    g.run(s.push(Kind::Conn, cid, p)).unwrap();
    c.wait_message(9, "pushed");
    let big = "x".repeat(3000);
    let p = g.packet.encode(9, 0, big.as_bytes()).unwrap();
    g.run(s.push(Kind::Conn, cid, p)).unwrap();
    c.wait_message(9, &big);
    g.run(async {
        for i in 0..100 {
            let p = g.packet.encode(8, i, format!("n{i}").as_bytes()).unwrap();
            s.push(Kind::Conn, cid, p).await.unwrap();
        }
    });
    c.wait_message(8, "n99");
    let got: Vec<String> = c
        .messages(8)
        .iter()
        .map(|v| v["payload"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
    assert_eq!(got, want, "every push once, in order");
    // The client goes: the gate hears nothing (KCP sends no close), its heartbeat timeout ends
    // the connection at 2–3 I.
    c.proc.write_line("close");
    let t0 = Instant::now();
    g.event_of(EventKind::Disconnect, cid);
    assert!(t0.elapsed() <= ms(3_500), "{:?}", t0.elapsed());
}

#[test]
fn framing_heartbeats_pushes_due_fec() {
    framing_and_resp(DUE_FEC);
}

#[test]
fn framing_heartbeats_pushes_plain() {
    framing_and_resp(PLAIN);
}

/// tick: the gate's heartbeat every I (first at ≈ I), the client's own are not answered; a
/// client that only sends heartbeats stays, one that sends nothing is closed at 2–3 I.
#[test]
fn tick_heartbeats_and_timeout() {
    if !available() {
        return;
    }
    const I: u64 = 400;
    let g = kcp_gate(&format!(
        "heartbeatInterval = \"{I}ms\"\nheartbeatMechanism = \"tick\""
    ));
    // Sends nothing after its first packet (no heartbeats of its own).
    let mut quiet = GoClient::spawn(&g, DUE_FEC, "0s");
    let t0 = Instant::now();
    let cid = open(&g, &mut quiet, "quiet");
    let (_, first) = quiet
        .proc
        .wait_event_at("a tick heartbeat", WAIT, |v| v["event"] == "heartbeat");
    let at = first - t0;
    assert!(
        at >= ms(I - 100) && at <= ms(I + 400),
        "first tick at {at:?}"
    );
    g.event_of(EventKind::Disconnect, cid);
    let closed = t0.elapsed();
    assert!(
        closed >= ms(2 * I - 100) && closed <= ms(3 * I + 500),
        "{closed:?}"
    );
    // Heartbeats every I keep a client for 8 I; it gets one tick per I.
    let mut live = GoClient::spawn(&g, PLAIN, &format!("{I}ms"));
    let cid = open(&g, &mut live, "live");
    let t1 = Instant::now();
    std::thread::sleep(ms(8 * I));
    let ticks = live.heartbeats();
    assert!((6..=10).contains(&ticks), "{ticks} ticks in 8 I");
    while let Ok(o) = g.observed.try_recv() {
        if let Observed::Event(e) = o {
            assert!(
                !(e.kind == EventKind::Disconnect && e.cid == cid),
                "closed after {:?}",
                t1.elapsed()
            );
        }
    }
}

/// authorizeTimeout closes an unbound connection even while it sends heartbeats; a bound one
/// stays. maxConnNum refuses the next client (no Connect, no packet), and admits one again
/// once a place is free. The Go client notices a silent gate itself (2 intervals, as due's).
#[test]
fn authorize_timeout_max_conn_num_and_bind() {
    if !available() {
        return;
    }
    let g = kcp_gate("maxConnNum = 2\nauthorizeTimeout = \"1500ms\"\nheartbeatInterval = \"1s\"");
    let s = g.sessions();
    let mut bound = GoClient::spawn(&g, DUE_FEC, "200ms");
    let cid_bound = open(&g, &mut bound, "bound");
    g.run(s.bind(cid_bound, 4242)).unwrap();
    let mut anon = GoClient::spawn(&g, DUE_FEC, "200ms");
    let t0 = Instant::now();
    let cid_anon = open(&g, &mut anon, "anon");
    // Full: a third client gets no Connect and no due packet.
    let mut third = GoClient::spawn(&g, PLAIN, "0s");
    third.send(1, 1, "third");
    let window = Instant::now() + ms(300);
    while let Ok(o) = g.observed.recv_deadline(window) {
        if let Observed::Event(e) = o {
            assert!(
                e.kind != EventKind::Connect,
                "refused client admitted: {e:?}"
            );
        }
    }
    assert!(
        third
            .proc
            .find_event(|v| v["event"] == "message" || v["event"] == "heartbeat")
            .is_none(),
        "a refused client gets no due packet"
    );
    drop(third);
    // The unbound one is closed at ≈ 1500 ms, heartbeats notwithstanding.
    g.event_of(EventKind::Disconnect, cid_anon);
    let closed = t0.elapsed();
    assert!(closed >= ms(1_400) && closed <= ms(2_300), "{closed:?}");
    // Its client hears no more replies and gives up after 2 of its intervals.
    anon.proc
        .wait_event("client gives up", WAIT, |v| v["event"] == "disconnected");
    // Push by uid reaches the bound client.
    let p = g.packet.encode(7, 0, b"for-4242").unwrap();
    g.run(s.push(Kind::User, 4242, p)).unwrap();
    bound.wait_message(7, "for-4242");
    // A new client is admitted now that a place is free.
    let mut fresh = GoClient::spawn(&g, PLAIN, "200ms");
    let cid_fresh = open(&g, &mut fresh, "fresh");
    assert!(cid_fresh != cid_bound && cid_fresh != cid_anon);
    assert!(bound
        .proc
        .find_event(|v| v["event"] == "disconnected")
        .is_none());
}

/// Multicast and broadcast reach KCP clients; a graceful disconnect delivers every push queued
/// before it, then the client gives up by itself (nothing announces the close).
#[test]
fn multicast_broadcast_and_graceful_close() {
    if !available() {
        return;
    }
    let g = kcp_gate("heartbeatInterval = \"1s\"");
    let s = g.sessions();
    let mut a = GoClient::spawn(&g, DUE_FEC, "300ms");
    let cid_a = open(&g, &mut a, "a");
    let mut b = GoClient::spawn(&g, PLAIN, "300ms");
    let cid_b = open(&g, &mut b, "b");
    let m = g.packet.encode(5, 0, b"multi").unwrap();
    assert_eq!(g.run(s.multicast(Kind::Conn, &[cid_a, cid_b], m)), Ok(2));
    let all = g.packet.encode(6, 0, b"all").unwrap();
    assert_eq!(g.run(s.broadcast(Kind::Conn, all)), Ok(2));
    for c in [&a, &b] {
        c.wait_message(5, "multi");
        c.wait_message(6, "all");
    }
    // 30 pushes of 1 KiB, then a graceful close: all 30 arrive (due's server would lose what
    // its congestion window held back).
    let payloads: Vec<String> = (0..30)
        .map(|i| format!("{i:04}{}", "y".repeat(1020)))
        .collect();
    let s2 = s.clone();
    let packets: Vec<_> = payloads
        .iter()
        .map(|p| g.packet.encode(4, 0, p.as_bytes()).unwrap())
        .collect();
    let closer = std::thread::spawn(move || {
        futures_lite::future::block_on(async {
            for p in packets {
                s2.push(Kind::Conn, cid_a, p).await.unwrap();
            }
            s2.disconnect(Kind::Conn, cid_a, false).await
        })
    });
    assert_eq!(closer.join().unwrap(), Ok(()));
    g.event_of(EventKind::Disconnect, cid_a);
    a.wait_message(4, &payloads[29]);
    let got: Vec<Value> = a.messages(4);
    assert_eq!(got.len(), 30);
    a.proc
        .wait_event("client gives up", WAIT, |v| v["event"] == "disconnected");
    // b is untouched.
    b.send(1, 2, "still");
    let d = g.delivery();
    assert_eq!((d.cid, d.seq), (cid_b, 2));
}
