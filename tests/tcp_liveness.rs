//! Conformance items 10–19 and 23 over real TCP: heartbeat replies and ticks, the 2–3 interval
//! timeout rule, and the authorization deadline. Intervals are shortened; windows scale.

mod common;

use common::*;
use gatehouse::dispatch::EventKind;
use gatehouse::session::Kind;
use std::time::{Duration, Instant};

const I: u64 = 400;

fn gate(mechanism: &str, extra: &str) -> TestGate {
    TestGate::tcp(&format!(
        "heartbeatInterval = \"{I}ms\"\nheartbeatMechanism = \"{mechanism}\"\n{extra}"
    ))
}

/// Asserts `elapsed` lies in [lo·I − 50 ms, hi·I + 300 ms].
fn within(elapsed: Duration, lo: u64, hi: u64) {
    assert!(
        elapsed >= ms(lo * I - 50) && elapsed <= ms(hi * I + 300),
        "closed after {elapsed:?}, expected between {lo}·I and {hi}·I (I = {I} ms)"
    );
}

/// Item 10: each heartbeat answered promptly, exactly once.
#[test]
fn resp_answers_each_heartbeat_promptly() {
    let g = gate("resp", "");
    let mut c = g.connect();
    for _ in 0..5 {
        let t = Instant::now();
        c.heartbeat();
        assert_eq!(c.frame(), hex("0000000180"));
        assert!(t.elapsed() < ms(I / 4), "reply took {:?}", t.elapsed());
    }
    c.silent_for(ms(100));
}

/// Items 11, 16: resp mode never sends on its own; data alone keeps the connection alive.
#[test]
fn resp_sends_nothing_unprompted_and_data_is_liveness() {
    let g = gate("resp", "");
    let mut c = g.connect();
    let start = Instant::now();
    while start.elapsed() < ms(4 * I) {
        c.data(1, 1, b"x");
        c.silent_for(ms(I / 2));
    }
}

/// Item 12: tick mode does not answer; it sends one heartbeat every I, the first at ≈ I.
#[test]
fn tick_sends_every_interval_and_never_answers() {
    let g = gate("tick", "");
    let mut c = g.connect();
    let t0 = Instant::now();
    c.heartbeat();
    let mut arrivals = vec![];
    for _ in 0..3 {
        assert_eq!(c.frame(), hex("0000000180"));
        arrivals.push(t0.elapsed());
        c.heartbeat();
    }
    for (k, at) in arrivals.iter().enumerate() {
        let want = ms(I * (k as u64 + 1));
        assert!(
            *at >= want - ms(30) && *at <= want + ms(200),
            "tick {k} at {at:?}"
        );
    }
}

/// Item 13: a client that never sends is closed at ≈ 2·I.
#[test]
fn silent_client_closed_at_two_intervals() {
    for mech in ["resp", "tick"] {
        let g = gate(mech, "");
        let mut c = g.connect();
        let t0 = Instant::now();
        c.wait_closed(ms(5 * I));
        within(t0.elapsed(), 2, 2);
    }
}

/// Item 14: silence after traffic closes after more than 2·I and at most 3·I.
#[test]
fn silence_after_traffic_closes_between_two_and_three_intervals() {
    for mech in ["resp", "tick"] {
        let g = gate(mech, "");
        let mut c = g.connect();
        std::thread::sleep(ms(I + I / 3));
        c.heartbeat();
        let last = Instant::now();
        c.wait_closed(ms(5 * I));
        within(last.elapsed(), 2, 3);
    }
}

/// Item 15: a heartbeat every I (and every 0.9·I) keeps the connection for 10·I.
#[test]
fn heartbeat_every_interval_is_never_closed() {
    for period in [I, I * 9 / 10] {
        let g = gate("resp", "");
        let mut c = g.connect();
        let start = Instant::now();
        while start.elapsed() < ms(10 * I) {
            std::thread::sleep(ms(period));
            c.heartbeat();
            assert_eq!(c.frame(), hex("0000000180"), "period {period} ms");
        }
    }
}

/// Item 18: interval 0 — no timeout, resp still answers, tick sends nothing.
#[test]
fn zero_interval_disables_timeouts() {
    let g = TestGate::tcp("heartbeatInterval = 0\nheartbeatMechanism = \"resp\"");
    let mut c = g.connect();
    c.silent_for(ms(1500));
    c.heartbeat();
    assert_eq!(c.frame(), hex("0000000180"));

    let g = TestGate::tcp("heartbeatInterval = \"0s\"\nheartbeatMechanism = \"tick\"");
    let mut c = g.connect();
    c.heartbeat();
    c.silent_for(ms(1500));
    c.heartbeat();
    c.silent_for(ms(100));
}

/// Item 23: an unbound connection is closed at ≈ A even while it sends heartbeats; a bound one
/// stays; after an unbind it is closed ≈ A later.
#[test]
fn authorize_timeout() {
    const A: u64 = 600;
    let g = TestGate::tcp(&format!(
        "heartbeatInterval = \"{I}ms\"\nauthorizeTimeout = \"{A}ms\""
    ));
    let (mut anon, _) = g.connect_with_cid();
    let (mut bound, cid) = g.connect_with_cid();
    let t0 = Instant::now();
    g.run(g.sessions().bind(cid, 42)).unwrap();
    let mut anon_closed = None;
    while t0.elapsed() < ms(3 * A) {
        if anon_closed.is_none() {
            anon.heartbeat();
            if matches!(anon.read(ms(100)), Read1::Closed) {
                anon_closed = Some(t0.elapsed());
            }
        } else {
            std::thread::sleep(ms(100));
        }
        bound.heartbeat();
        assert_eq!(bound.frame(), hex("0000000180"), "bound connection stays");
    }
    let at = anon_closed.expect("unbound connection closed");
    assert!(at >= ms(A - 50) && at <= ms(A + 250), "closed after {at:?}");

    g.run(g.sessions().unbind(42)).unwrap();
    let t1 = Instant::now();
    let mut closed = None;
    while t1.elapsed() < ms(3 * A) {
        bound.heartbeat();
        match bound.read(ms(100)) {
            Read1::Closed => {
                closed = Some(t1.elapsed());
                break;
            }
            _ => std::thread::sleep(ms(50)),
        }
    }
    let at = closed.expect("closed after unbind");
    assert!(
        at >= ms(A - 50) && at <= ms(A + 250),
        "closed {at:?} after unbind"
    );
    let e = g.event_of(EventKind::Disconnect, cid);
    assert_eq!(e.uid, 0);
    assert_eq!(g.run(g.sessions().stat(Kind::User)).unwrap(), 0);
}
