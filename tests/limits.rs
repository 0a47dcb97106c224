//! `[gatehouse]` limits against real sockets (docs/ops/limits.md): a client over its
//! `packetRate` has packets dropped or is closed while another client is served in full;
//! `ipMaxConns` and `ipAcceptRate` refuse connections from one source IP (127.0.0.x on
//! loopback) without a byte while other IPs connect; the PROXY header's address is the one
//! counted. Every wait is bounded.

mod common;

use common::*;
use gatehouse::dispatch::{Delivery, EventKind, Observed};
use gatehouse::session::Transport;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A gate with a TCP and a WS server, `/metrics`, and `keys` under `[gatehouse]`.
fn gate(keys: &str) -> (TestGate, SocketAddr) {
    let g = TestGate::start(&format!(
        "[network.tcp.server]\naddr = \"127.0.0.1:0\"\n\
         [network.ws.server]\naddr = \"127.0.0.1:0\"\n\
         [gatehouse]\nmetricsAddr = \"127.0.0.1:0\"\n{keys}\n"
    ));
    let addr = g.gate().metrics_addr().expect("metrics served");
    (g, addr)
}

/// Every delivery observed until `done` says the collection is complete (bounded).
fn deliveries_until(g: &TestGate, mut done: impl FnMut(&[Delivery]) -> bool) -> Vec<Delivery> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while !done(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match g.observed.recv_timeout(left) {
            Ok(Observed::Delivery(d)) => got.push(d),
            Ok(_) => {}
            Err(_) => panic!("timed out; {} deliveries so far", got.len()),
        }
    }
    got
}

const FLOOD: i32 = 500;

/// A flooder and a well-behaved client on one gate: the flooder's packets beyond its bucket
/// are dropped (counted), the other's all arrive.
#[test]
fn a_client_over_its_rate_has_packets_dropped_and_others_are_served() {
    let (rate, burst) = (20.0, 10.0);
    let (g, maddr) = gate("packetRate = 20\npacketBurst = 10");
    let started = Instant::now();
    let (mut flooder, fc) = g.connect_with_cid();
    let (mut calm, cc) = g.connect_with_cid();

    let flood: Vec<u8> = (1..=FLOOD)
        .flat_map(|seq| g.packet.encode(1, seq, b"flood").unwrap().to_vec())
        .collect();
    flooder.send(&flood);
    // Ten packets at 60 ms intervals: under 20 a second, and no more than the burst anyway.
    for seq in 1..=10 {
        calm.data(1, seq, b"calm");
        std::thread::sleep(ms(60));
    }
    // Every packet was read once the counter says so; the rest of the flood was dropped.
    let text = await_sample(
        maddr,
        "gatehouse_client_packets_received_total",
        f64::from(FLOOD + 10),
    );
    let elapsed = started.elapsed().as_secs_f64();
    let got = deliveries_until(&g, |d| d.iter().filter(|d| d.cid == cc).count() == 10);
    // Deliveries of the flooder already observed are all there is (the counter above was read
    // after every packet was handled).
    let mut flooder_seqs: Vec<i32> = got.iter().filter(|d| d.cid == fc).map(|d| d.seq).collect();
    while let Ok(o) = g.observed.try_recv() {
        if let Observed::Delivery(d) = o {
            assert_eq!(d.cid, fc, "only the flooder's can be late");
            flooder_seqs.push(d.seq);
        }
    }
    let calm_seqs: Vec<i32> = got.iter().filter(|d| d.cid == cc).map(|d| d.seq).collect();
    assert_eq!(
        calm_seqs,
        (1..=10).collect::<Vec<_>>(),
        "the calm client is unaffected"
    );

    let passed = flooder_seqs.len() as f64;
    let most = burst + rate * elapsed + 1.0;
    assert!(
        passed >= burst && passed <= most,
        "flooder: {passed} delivered, expected {burst} to {most:.1} ({elapsed:.2} s)"
    );
    assert_eq!(
        &flooder_seqs[..10],
        &(1..=10).collect::<Vec<_>>()[..],
        "the burst goes first, in order"
    );
    assert!(flooder_seqs.windows(2).all(|w| w[0] < w[1]), "in order");
    let dropped = f64::from(FLOOD) - passed;
    let text = if sample(
        &text,
        "gatehouse_node_deliveries_dropped_total{reason=\"rate_limited\"}",
    ) == Some(dropped)
    {
        text
    } else {
        await_sample(
            maddr,
            "gatehouse_node_deliveries_dropped_total{reason=\"rate_limited\"}",
            dropped,
        )
    };
    assert_eq!(
        sample(&text, "gatehouse_connections_open{transport=\"tcp\"}"),
        Some(2.0),
        "drop mode closes nobody"
    );
    // Both are still served.
    flooder.heartbeat();
    assert_eq!(flooder.frame(), g.packet.heartbeat(0).to_vec());
    calm.heartbeat();
    assert_eq!(calm.frame(), g.packet.heartbeat(0).to_vec());
}

/// `packetRateAction = "close"`: the flooder is closed (counted as rate_limited), the other
/// client on the same gate (here over WS as well as TCP) carries on.
#[test]
fn a_client_over_its_rate_is_closed_in_close_mode_and_others_are_served() {
    let (g, maddr) = gate("packetRate = 20\npacketBurst = 5\npacketRateAction = \"close\"");
    let (mut flooder, fc) = g.connect_with_cid();
    let (mut calm, cc) = g.connect_with_cid();
    let (mut calm_ws, wc) = g.connect_ws_with_cid();

    let flood: Vec<u8> = (1..=100)
        .flat_map(|seq| g.packet.encode(1, seq, b"flood").unwrap().to_vec())
        .collect();
    flooder.send(&flood);
    flooder.wait_closed(Duration::from_secs(5));
    g.event_of(EventKind::Disconnect, fc);
    let text = await_sample(
        maddr,
        "gatehouse_connections_closed_total{reason=\"rate_limited\"}",
        1.0,
    );
    assert_eq!(
        sample(&text, "gatehouse_connections_open{transport=\"tcp\"}"),
        Some(1.0)
    );

    for seq in 1..=5 {
        calm.data(1, seq, b"calm");
        calm_ws.data(1, seq, b"calm");
        std::thread::sleep(ms(60));
    }
    let got = deliveries_until(&g, |d| d.iter().filter(|d| d.cid != fc).count() == 10);
    for cid in [cc, wc] {
        let seqs: Vec<i32> = got.iter().filter(|d| d.cid == cid).map(|d| d.seq).collect();
        assert_eq!(seqs, (1..=5).collect::<Vec<_>>(), "cid {cid} unaffected");
    }
    let flooded = got.iter().filter(|d| d.cid == fc).count();
    assert!(
        flooded <= 6,
        "the flooder got {flooded} through before it was closed"
    );
    calm.heartbeat();
    assert_eq!(calm.frame(), g.packet.heartbeat(0).to_vec());
}

/// A raw TCP socket from `source` (any 127.0.0.0/8 address works on loopback).
fn raw_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_nodelay(true).unwrap();
    s
}

/// Waits (bounded) until the gate closes `s` without sending a byte.
fn closed_without_a_byte(s: &mut TcpStream, what: &str) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 256];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(n) => panic!(
            "{what}: the gate answered {:?}",
            String::from_utf8_lossy(&b[..n])
        ),
        Err(e) => panic!("{what}: still open after 5 s ({e})"),
    }
}

/// A TCP client from `source`, admitted: its Connect event's cid.
fn admitted(g: &TestGate, source: [u8; 4]) -> (TcpStream, i64) {
    let mut s = raw_from(source, g.addr(Transport::Tcp));
    let cid = g.event(EventKind::Connect).cid;
    // Served: a heartbeat is answered.
    s.write_all(&g.packet.heartbeat(0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hb = [0u8; 5];
    s.read_exact(&mut hb).expect("heartbeat answer");
    (s, cid)
}

/// A WS client from `source` through the upgrade (panics if it fails).
fn ws_from(g: &TestGate, source: [u8; 4]) -> tungstenite::WebSocket<TcpStream> {
    let s = raw_from(source, g.addr(Transport::Ws));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let url = format!("ws://{}/", g.addr(Transport::Ws));
    match tungstenite::client::client(url, s) {
        Ok((ws, _)) => ws,
        Err(e) => panic!("websocket upgrade: {e}"),
    }
}

/// `ipMaxConns = 3`, counted over both servers: the fourth connection from one IP is closed
/// without a byte (a WS one before its upgrade is answered), another IP still connects, and
/// once one of the three leaves another is admitted.
#[test]
fn open_connections_per_ip_are_capped() {
    let (g, maddr) = gate("ipMaxConns = 3");
    let a = [127, 0, 0, 2];
    let (first, first_cid) = admitted(&g, a);
    let (_second, _) = admitted(&g, a);
    let _third = ws_from(&g, a);
    g.event(EventKind::Connect);

    let mut fourth = raw_from(a, g.addr(Transport::Tcp));
    closed_without_a_byte(&mut fourth, "a fourth TCP connection");
    let mut fourth_ws = raw_from(a, g.addr(Transport::Ws));
    write!(
        fourth_ws,
        "GET / HTTP/1.1\r\nHost: gate\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    closed_without_a_byte(&mut fourth_ws, "a fourth WS connection");
    let text = await_sample(
        maddr,
        "gatehouse_connections_refused_total{reason=\"ip_conns\"}",
        2.0,
    );
    assert_eq!(
        sample(
            &text,
            "gatehouse_connections_refused_total{reason=\"ip_rate\"}"
        ),
        Some(0.0)
    );

    // Another IP is not affected.
    let (_other, _) = admitted(&g, [127, 0, 0, 3]);

    // One of the three leaves: its place is free again.
    drop(first);
    g.event_of(EventKind::Disconnect, first_cid);
    let (_again, _) = admitted(&g, a);
    let mut over = raw_from(a, g.addr(Transport::Tcp));
    closed_without_a_byte(&mut over, "over the limit again");
    await_sample(
        maddr,
        "gatehouse_connections_refused_total{reason=\"ip_conns\"}",
        3.0,
    );
}

/// `ipAcceptRate = 1`, `ipAcceptBurst = 3`: a burst of connects from one IP gets three in,
/// the rest are closed without a byte (they take no token); another IP has its own bucket.
#[test]
fn accepts_per_ip_are_rate_limited() {
    let (g, maddr) = gate("ipAcceptRate = 1\nipAcceptBurst = 3");
    let a = [127, 0, 0, 4];
    let start = Instant::now();
    // Connected and closed at once: the rate counts connects, not open connections.
    for _ in 0..3 {
        let (s, cid) = admitted(&g, a);
        drop(s);
        g.event_of(EventKind::Disconnect, cid);
    }
    let mut refused = 0;
    for _ in 0..3 {
        let mut s = raw_from(a, g.addr(Transport::Tcp));
        closed_without_a_byte(&mut s, "a connect over the burst");
        refused += 1;
    }
    // All of this within the first token's refill, or the test proves nothing.
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "too slow a machine for this test"
    );
    await_sample(
        maddr,
        "gatehouse_connections_refused_total{reason=\"ip_rate\"}",
        f64::from(refused),
    );
    for _ in 0..3 {
        admitted(&g, [127, 0, 0, 5]);
    }
    // A second later one token is back.
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(start.elapsed()));
    admitted(&g, a);
}

/// With PROXY protocol the address in the header is the one counted, not the proxy's.
#[test]
fn the_proxy_header_address_is_the_one_limited() {
    let (g, maddr) = gate("ipMaxConns = 1\nproxyProtocol = \"v1\"\nproxyTrusted = [\"127.0.0.1\"]");
    let via_proxy = |client: &str| {
        let mut s = TcpStream::connect(g.addr(Transport::Tcp)).unwrap();
        write!(s, "PROXY TCP4 {client} 127.0.0.1 40000 3553\r\n").unwrap();
        s.write_all(&g.packet.heartbeat(0)).unwrap();
        s
    };
    let mut one = via_proxy("198.51.100.1");
    g.event(EventKind::Connect);
    let mut hb = [0u8; 5];
    one.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    one.read_exact(&mut hb).expect("served");
    let mut two = via_proxy("198.51.100.1");
    closed_without_a_byte(&mut two, "a second connection of the same client");
    let mut other = via_proxy("198.51.100.2");
    g.event(EventKind::Connect);
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    other
        .read_exact(&mut hb)
        .expect("another client through the same proxy is served");
    await_sample(
        maddr,
        "gatehouse_connections_refused_total{reason=\"ip_conns\"}",
        1.0,
    );
}
