//! Hostile TCP input never takes the gate down: each case gets its defined outcome (close or
//! drop) and a fresh connection is served afterwards.

mod common;

use common::*;
use std::time::Instant;

/// Proves the gate still serves a new client.
fn still_serving(g: &TestGate) {
    let mut c = g.connect();
    c.heartbeat();
    assert_eq!(c.frame(), hex("0000000180"), "a new connection is served");
}

/// A 4 GiB size claim closes the connection at once, before any body byte is buffered.
#[test]
fn four_gib_claim_is_refused() {
    let g = TestGate::tcp("");
    for claim in ["ffffffff", "fffffffc", "80000000", "0000138e"] {
        let mut c = g.connect();
        let t = Instant::now();
        c.send(&hex(claim));
        c.wait_closed(ms(2000));
        assert!(
            t.elapsed() < ms(500),
            "{claim}: closed after {:?}",
            t.elapsed()
        );
    }
    g.no_delivery_within(ms(50));
    still_serving(&g);
}

/// Zero-size frames are ignored (even thousands of them) and the connection keeps working.
#[test]
fn zero_size_frames_do_not_wedge() {
    let g = TestGate::tcp("");
    let mut c = g.connect();
    c.send(&vec![0u8; 4 * 10_000]);
    c.heartbeat();
    assert_eq!(c.frame(), hex("0000000180"));
    still_serving(&g);
}

/// A truncated frame followed by EOF: nothing is delivered, the connection is released.
#[test]
fn truncated_frame_then_eof() {
    let g = TestGate::tcp("");
    let (mut c, cid) = g.connect_with_cid();
    c.send(&hex("00000007 00 0001"));
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(c.read(ms(2000)), Read1::Closed);
    g.event_of(gatehouse::dispatch::EventKind::Disconnect, cid);
    g.no_delivery_within(ms(50));
    still_serving(&g);
}

/// A truncated frame that never completes only holds its own connection, until the heartbeat
/// timeout closes it.
#[test]
fn stalled_partial_frame_times_out() {
    let g = TestGate::tcp("heartbeatInterval = \"300ms\"");
    let mut c = g.connect();
    c.send(&hex("00001000 00 0001 0001 4142"));
    still_serving(&g);
    let t = Instant::now();
    c.wait_closed(ms(2000));
    assert!(t.elapsed() <= ms(1200), "closed after {:?}", t.elapsed());
}

/// Garbage (HTTP, random bytes): either parsed as frames within the cap or refused; never a
/// crash, and never a delivery of bytes that do not form a valid data frame.
#[test]
fn garbage() {
    let g = TestGate::tcp("");
    let mut c = g.connect();
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    c.wait_closed(ms(2000));
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20 {
        let mut c = g.connect();
        let junk: Vec<u8> = (0..4096)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = std::io::Write::write_all(&mut c.stream, &junk);
        drop(c);
    }
    still_serving(&g);
}

/// Many connections opening and vanishing mid-frame leave no slot behind.
#[test]
fn churn_releases_every_slot() {
    let g = TestGate::tcp("maxConnNum = 50");
    for round in 0..4 {
        let clients: Vec<_> = (0..50).map(|_| g.connect()).collect();
        for mut c in clients {
            c.send(&hex("00000007 00"));
        }
        // Every one of them is admitted and released (counting Disconnect events: the
        // connection counter alone can read 0 while closed sockets still wait in the backlog).
        for k in 0..50 {
            g.wait_for(&format!("round {round}: disconnect {k}"), ms(3000), |o| {
                matches!(o, gatehouse::dispatch::Observed::Event(e) if e.kind == gatehouse::dispatch::EventKind::Disconnect)
            });
        }
        assert_eq!(g.gate().connections(), 0, "round {round}: slots still held");
    }
    still_serving(&g);
}
