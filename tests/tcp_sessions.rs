//! Connection management (items 21, 22, 24–28) and the gate's session operations (the gate side
//! of items 38–49) over real TCP connections, driven through the in-gate session API.

mod common;

use bytes::Bytes;
use common::*;
use gatehouse::dispatch::EventKind;
use gatehouse::session::{Kind, SessionError};
use std::time::Instant;

fn packet(g: &TestGate, route: i32, seq: i32, payload: &[u8]) -> Bytes {
    g.packet.encode(route, seq, payload).unwrap()
}

/// Item 21 (relaxed, see README): with one shard cids are 1, 2, 3…; rejected connections
/// consume none; with two shards cids stay unique and positive.
#[test]
fn cid_allocation() {
    let g = TestGate::start(
        "[network.tcp.server]\naddr = \"127.0.0.1:0\"\nmaxConnNum = 2\n[gatehouse]\nshards = 1\n",
    );
    let (_a, c1) = g.connect_with_cid();
    let (b, c2) = g.connect_with_cid();
    assert_eq!((c1, c2), (1, 2));
    let mut rejected = g.connect();
    rejected.wait_closed(ms(2000));
    b.stream.shutdown(std::net::Shutdown::Both).unwrap();
    g.event_of(EventKind::Disconnect, 2);
    let (_c, c3) = g.connect_with_cid();
    assert_eq!(c3, 3, "the rejected connection consumed no cid");

    let g = TestGate::tcp("");
    let mut seen = std::collections::HashSet::new();
    let mut clients = vec![];
    for _ in 0..40 {
        let (c, cid) = g.connect_with_cid();
        assert!(cid > 0 && seen.insert(cid), "cid {cid} positive and unique");
        clients.push(c);
    }
}

/// Item 22: the (N+1)-th connection is closed at once with no bytes; after a disconnect a new
/// connection is admitted.
#[test]
fn max_conn_num() {
    let g = TestGate::tcp("maxConnNum = 3");
    let mut held: Vec<_> = (0..3).map(|_| g.connect_with_cid()).collect();
    let mut extra = g.connect();
    let t = Instant::now();
    assert_eq!(extra.read(ms(2000)), Read1::Closed, "no bytes, just EOF");
    assert!(t.elapsed() < ms(500));
    let (first, cid) = held.remove(0);
    first.stream.shutdown(std::net::Shutdown::Both).unwrap();
    g.event_of(EventKind::Disconnect, cid);
    let (mut fresh, _) = g.connect_with_cid();
    fresh.heartbeat();
    assert_eq!(fresh.frame(), hex("0000000180"));
}

/// Item 24: graceful disconnect flushes everything pushed before it, then closes; pushes after
/// the request fail.
#[test]
fn graceful_disconnect_flushes_queue() {
    let g = TestGate::tcp("");
    let (mut c, cid) = g.connect_with_cid();
    let s = g.sessions();
    let frames: Vec<Bytes> = (0..500)
        .map(|i| packet(&g, 7, i, &[i as u8; 600]))
        .collect();
    g.run(async {
        for f in &frames {
            s.push(Kind::Conn, cid, f.clone()).await.unwrap();
        }
    });
    let s2 = s.clone();
    let closer = std::thread::spawn(move || {
        futures_lite::future::block_on(s2.disconnect(Kind::Conn, cid, false))
    });
    for f in &frames {
        assert_eq!(c.frame(), f.to_vec());
    }
    assert_eq!(c.read(ms(2000)), Read1::Closed);
    assert_eq!(closer.join().unwrap(), Ok(()));
    let after = g.run(s.push(Kind::Conn, cid, frames[0].clone()));
    assert!(matches!(
        after,
        Err(SessionError::NotFoundSession | SessionError::Hanged | SessionError::Closed)
    ));
    assert_eq!(g.event_of(EventKind::Disconnect, cid).uid, 0);
}

/// Item 24: a push arriving while the graceful close is in progress fails.
#[test]
fn push_to_hanged_connection_fails() {
    let g = TestGate::tcp("");
    let (c, cid) = g.connect_with_cid();
    let s = g.sessions();
    // The client does not read, so a large backlog keeps the connection Hanged for a while.
    let big = packet(&g, 1, 1, &[0u8; 5000]);
    g.run(async {
        for _ in 0..3000 {
            s.push(Kind::Conn, cid, big.clone()).await.unwrap();
        }
    });
    let s2 = s.clone();
    let closer = std::thread::spawn(move || {
        futures_lite::future::block_on(s2.disconnect(Kind::Conn, cid, false))
    });
    std::thread::sleep(ms(100));
    assert_eq!(
        g.run(s.push(Kind::Conn, cid, big.clone())),
        Err(SessionError::Hanged)
    );
    assert_eq!(
        g.run(s.disconnect(Kind::Conn, cid, false)),
        Err(SessionError::NotOpened),
        "graceful close of a Hanged connection"
    );
    drop(c);
    let _ = closer.join();
}

/// Item 25: forced disconnect closes at once.
#[test]
fn forced_disconnect() {
    let g = TestGate::tcp("");
    let (mut c, cid) = g.connect_with_cid();
    let t = Instant::now();
    g.run(g.sessions().disconnect(Kind::Conn, cid, true))
        .unwrap();
    c.wait_closed(ms(1000));
    assert!(t.elapsed() < ms(500));
    assert_eq!(
        g.run(g.sessions().disconnect(Kind::Conn, cid, true)),
        Err(SessionError::NotFoundSession)
    );
}

/// Item 26: client EOF → Disconnect(cid, current uid).
#[test]
fn client_close_emits_disconnect_with_uid() {
    let g = TestGate::tcp("");
    let (c, cid) = g.connect_with_cid();
    g.run(g.sessions().bind(cid, 77)).unwrap();
    assert_eq!(g.event(EventKind::Reconnect).uid, 77);
    drop(c);
    let e = g.event_of(EventKind::Disconnect, cid);
    assert_eq!(e.uid, 77);
    assert_eq!(g.run(g.sessions().is_online(Kind::User, 77)), Ok(false));
}

/// Item 27: getIP gives the bare address; IPv4 on a dual-stack listener is dotted IPv4.
#[test]
fn get_ip() {
    let g = TestGate::start("[network.tcp.server]\naddr = \":0\"\n");
    let port = g.addr(gatehouse::session::Transport::Tcp).port();
    let _c = Client::connect(([127, 0, 0, 1], port).into(), g.packet);
    let cid = g.event(EventKind::Connect).cid;
    let ip = g.run(g.sessions().get_ip(Kind::Conn, cid)).unwrap();
    assert_eq!(ip.to_string(), "127.0.0.1");
    if let Ok(s6) = std::net::TcpStream::connect(("::1", port)) {
        let cid = g.event(EventKind::Connect).cid;
        assert_eq!(
            g.run(g.sessions().get_ip(Kind::Conn, cid))
                .unwrap()
                .to_string(),
            "::1"
        );
        drop(s6);
    }
    assert_eq!(
        g.run(g.sessions().get_ip(Kind::Conn, 9999)),
        Err(SessionError::NotFoundSession)
    );
}

/// Item 28: with certFile/keyFile the same framing works over TLS; a plain client gets nothing.
#[test]
fn tls() {
    let dir = TempDir::new("tls");
    let cert = TestCert::new(&dir);
    let g = TestGate::tcp(&cert.server_keys);
    let addr = g.addr(gatehouse::session::Transport::Tcp);
    let mut tls = cert.connect(addr);
    use std::io::{Read, Write};
    tls.write_all(&hex("00000001 80 00000007 00 0001 0002 6869"))
        .unwrap();
    let mut reply = [0u8; 5];
    tls.read_exact(&mut reply).unwrap();
    assert_eq!(reply.to_vec(), hex("0000000180"));
    assert_eq!(
        g.delivery().frame.as_ref(),
        &hex("0000000700000100026869")[..]
    );

    let mut plain = g.connect();
    plain.heartbeat();
    match plain.read(ms(3000)) {
        Read1::Frame(f) => assert_ne!(f, hex("0000000180"), "plain TCP must not be served"),
        Read1::Closed => {}
        Read1::Timeout => panic!("plain client neither refused nor closed"),
    }
}

/// Items 39–42 (gate side): bind fires Reconnect, deliveries carry the uid, rebinding a uid
/// leaves the old connection open and anonymous; argument errors and unbind.
#[test]
fn bind_and_unbind() {
    let g = TestGate::tcp("");
    let s = g.sessions();
    let (mut a, cid_a) = g.connect_with_cid();
    let (mut b, cid_b) = g.connect_with_cid();
    assert_eq!(g.run(s.bind(0, 5)), Err(SessionError::InvalidArgument));
    assert_eq!(g.run(s.bind(cid_a, 0)), Err(SessionError::InvalidArgument));
    assert_eq!(g.run(s.bind(cid_a, 5)).map_err(|e| e.code()), Ok(()));
    assert_eq!(g.run(s.bind(123_456, 5)).unwrap_err().code(), 1);
    let e = g.event(EventKind::Reconnect);
    assert_eq!((e.cid, e.uid), (cid_a, 5));
    assert_eq!(g.run(s.stat(Kind::User)), Ok(1));
    a.data(3, 1, b"a");
    assert_eq!(g.delivery().uid, 5);

    // Rebind uid 5 to b: a stays open with uid 0.
    g.run(s.bind(cid_b, 5)).unwrap();
    let e = g.event(EventKind::Reconnect);
    assert_eq!((e.cid, e.uid), (cid_b, 5));
    a.data(3, 2, b"a");
    let d = g.delivery();
    assert_eq!((d.cid, d.uid), (cid_a, 0));
    b.data(3, 3, b"b");
    assert_eq!(g.delivery().uid, 5);
    assert_eq!(g.run(s.stat(Kind::User)), Ok(1));
    assert_eq!(g.run(s.is_online(Kind::User, 5)), Ok(true));

    // Unbind: no event, connection stays, uid 0 again.
    assert_eq!(g.run(s.unbind(5)), Ok(()));
    assert_eq!(g.run(s.unbind(5)), Err(SessionError::NotFoundSession));
    assert_eq!(g.run(s.unbind(0)), Err(SessionError::InvalidArgument));
    b.data(3, 4, b"b");
    assert_eq!(g.delivery().uid, 0);
    assert_eq!(g.run(s.stat(Kind::User)), Ok(0));
    assert_eq!(g.run(s.stat(Kind::Conn)), Ok(2));
    drop(a);
    assert_eq!(g.event_of(EventKind::Disconnect, cid_a).uid, 0);
}

/// Items 43–46 (gate side): push, multicast, broadcast, channels, stat, isOnline.
#[test]
fn push_multicast_broadcast_channels() {
    let g = TestGate::tcp("");
    let s = g.sessions();
    let mut clients: Vec<_> = (0..4).map(|_| g.connect_with_cid()).collect();
    let cids: Vec<i64> = clients.iter().map(|(_, c)| *c).collect();
    g.run(s.bind(cids[0], 100)).unwrap();
    g.run(s.bind(cids[1], 101)).unwrap();

    let p = packet(&g, 9, 0, b"push");
    g.run(s.push(Kind::User, 101, p.clone())).unwrap();
    assert_eq!(clients[1].0.frame(), p.to_vec());
    assert_eq!(
        g.run(s.push(Kind::User, 999, p.clone())),
        Err(SessionError::NotFoundSession)
    );
    assert_eq!(
        g.run(s.push(Kind::Conn, 999, p.clone())),
        Err(SessionError::NotFoundSession)
    );

    let m = packet(&g, 9, 0, b"multi");
    assert_eq!(
        g.run(s.multicast(Kind::Conn, &[cids[2], cids[3], 999], m.clone())),
        Ok(2)
    );
    assert_eq!(
        g.run(s.multicast(Kind::User, &[100, 555], m.clone())),
        Ok(1)
    );
    assert_eq!(g.run(s.multicast(Kind::Conn, &[], m.clone())), Ok(0));
    for i in [2, 3, 0] {
        assert_eq!(clients[i].0.frame(), m.to_vec());
    }

    let b = packet(&g, 9, 0, b"all");
    assert_eq!(g.run(s.broadcast(Kind::Conn, b.clone())), Ok(4));
    assert_eq!(g.run(s.broadcast(Kind::User, b.clone())), Ok(2));
    for (i, (c, _)) in clients.iter_mut().enumerate() {
        assert_eq!(c.frame(), b.to_vec());
        if i < 2 {
            assert_eq!(c.frame(), b.to_vec());
        }
        c.silent_for(ms(50));
    }

    assert_eq!(
        g.run(s.subscribe(Kind::Conn, &[cids[2], cids[3], 999], "room")),
        Ok(2)
    );
    assert_eq!(g.run(s.subscribe(Kind::User, &[100], "room")), Ok(1));
    let r = packet(&g, 9, 0, b"room");
    assert_eq!(g.run(s.publish("room", r.clone())), Ok(3));
    assert_eq!(g.run(s.publish("nobody", r.clone())), Ok(0));
    assert_eq!(g.run(s.unsubscribe(Kind::Conn, &[cids[3]], "room")), Ok(1));
    let (gone, gone_cid) = clients.remove(2);
    drop(gone);
    g.event_of(EventKind::Disconnect, gone_cid);
    assert_eq!(
        g.run(s.publish("room", r.clone())),
        Ok(1),
        "only cid 0 is left in the room"
    );
    assert_eq!(g.run(s.stat(Kind::Conn)), Ok(3));
    assert_eq!(g.run(s.is_online(Kind::Conn, gone_cid)), Ok(false));
    assert_eq!(g.run(s.is_online(Kind::Conn, cids[0])), Ok(true));
    assert_eq!(
        gatehouse::session::Kind::from_wire(3),
        Err(SessionError::InvalidKind)
    );
    assert_eq!(SessionError::InvalidKind.code(), 2);
}

/// Items 48, 49: 1000 numbered packets keep their order both ways.
#[test]
fn per_connection_order() {
    let g = TestGate::tcp("");
    let (mut c, cid) = g.connect_with_cid();
    for i in 0..1000 {
        c.data(1, i, &(i as u32).to_be_bytes());
    }
    for i in 0..1000 {
        assert_eq!(g.delivery().seq, i);
    }
    let s = g.sessions();
    let frames: Vec<Bytes> = (0..1000).map(|i| packet(&g, 2, i, b"n")).collect();
    g.run(async {
        for f in &frames {
            s.push(Kind::Conn, cid, f.clone()).await.unwrap();
        }
    });
    for f in &frames {
        assert_eq!(c.frame(), f.to_vec());
    }
}

/// A client that stops reading cannot grow the gate's memory: its queue is bounded and the
/// connection is closed when it overflows; other clients keep being served.
#[test]
fn write_queue_overflow_closes_slow_reader() {
    let g = TestGate::tcp("writeQueueSize = 64");
    let (slow, cid) = g.connect_with_cid();
    let s = g.sessions();
    let big = packet(&g, 1, 1, &[1u8; 5000]);
    let mut failed = None;
    g.run(async {
        for i in 0..10_000 {
            if let Err(e) = s.push(Kind::Conn, cid, big.clone()).await {
                failed = Some((i, e));
                break;
            }
        }
    });
    let (i, e) = failed.expect("pushes eventually fail");
    assert!(i >= 64, "failed after {i} pushes");
    assert!(
        matches!(
            e,
            SessionError::QueueFull | SessionError::NotFoundSession | SessionError::Closed
        ),
        "{e:?}"
    );
    g.event_of(EventKind::Disconnect, cid);
    drop(slow);
    let mut ok = g.connect();
    ok.heartbeat();
    assert_eq!(ok.frame(), hex("0000000180"));
}
