//! The KCP client server (`[network.kcp.server]`, spec kcp.md) over real UDP on loopback, with a
//! KCP client built on the same engine crate (plain, or with due's Go client's FEC header on
//! every datagram): intake and sessions, framing, heartbeats, timeouts, maxConnNum, pushes,
//! graceful close and the no-zombie rule. The due/kcp-go client itself is in tests/interop.rs.

mod common;

use bytes::Bytes;
use common::*;
use gatehouse::dispatch::{EventKind, Observed};
use gatehouse::session::{Kind, Transport};
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Datagrams a test client sends: plain, or each behind an FEC data-shard header (seqid, f1 00,
/// size) with three junk parity shards after every ten, as due's Go client sends them.
struct Out {
    sock: UdpSocket,
    fec: bool,
    seqid: u32,
}

impl Write for Out {
    fn write(&mut self, d: &[u8]) -> std::io::Result<usize> {
        if !self.fec {
            self.sock.send(d)?;
            return Ok(d.len());
        }
        let mut shard = Vec::with_capacity(d.len() + 8);
        shard.extend_from_slice(&self.seqid.to_le_bytes());
        shard.extend_from_slice(&[0xf1, 0x00]);
        shard.extend_from_slice(&((d.len() + 2) as u16).to_le_bytes());
        shard.extend_from_slice(d);
        self.sock.send(&shard)?;
        self.seqid += 1;
        if self.seqid % 13 == 10 {
            for _ in 0..3 {
                let mut parity = vec![0x5a; shard.len()];
                parity[..4].copy_from_slice(&self.seqid.to_le_bytes());
                parity[4..6].copy_from_slice(&[0xf2, 0x00]);
                self.sock.send(&parity)?;
                self.seqid += 1;
            }
        }
        Ok(d.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A KCP client with due's framing on top.
struct KcpClient {
    sock: UdpSocket,
    kcp: kcp::Kcp<Out>,
    epoch: Instant,
    stream: Vec<u8>,
}

impl KcpClient {
    fn connect(addr: SocketAddr, conv: u32, fec: bool) -> KcpClient {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(addr).unwrap();
        sock.set_read_timeout(Some(ms(5))).unwrap();
        let out = Out {
            sock: sock.try_clone().unwrap(),
            fec,
            seqid: 0,
        };
        let mut kcp = kcp::Kcp::new(conv, out);
        kcp.set_wndsize(32, 128);
        kcp.update(0).unwrap();
        KcpClient {
            sock,
            kcp,
            epoch: Instant::now(),
            stream: Vec::new(),
        }
    }

    fn now(&self) -> u32 {
        self.epoch.elapsed().as_millis() as u32 + 1
    }

    /// Writes bytes as one KCP message and flushes at once (as kcp-go does).
    fn send(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(self.kcp.mss()) {
            self.kcp.send(chunk).unwrap();
        }
        let now = self.now();
        self.kcp.update(now).unwrap();
        self.kcp.flush().unwrap();
    }

    fn heartbeat(&mut self) {
        self.send(&hex("0000000180"));
    }

    fn data(&mut self, route: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = ((5 + payload.len()) as u32).to_be_bytes().to_vec();
        p.push(0);
        p.extend_from_slice(&route.to_be_bytes());
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(payload);
        self.send(&p);
        p
    }

    /// Receives and acknowledges for a little while (≤ 5 ms), collecting the stream.
    fn pump(&mut self) {
        let mut buf = [0u8; 2048];
        if let Ok(n) = self.sock.recv(&mut buf) {
            let d = &buf[..n];
            assert!((81..=84).contains(&d[4]), "server datagrams are plain KCP");
            assert!(n <= 1400, "no datagram above the MTU: {n}");
            let _ = self.kcp.input(d);
        }
        let now = self.now();
        self.kcp.update(now).unwrap();
        let mut m = vec![0u8; 256 * 1024];
        while let Ok(n) = self.kcp.recv(&mut m) {
            self.stream.extend_from_slice(&m[..n]);
        }
    }

    /// The next due frame within `timeout`.
    fn frame_within(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stream.len() >= 4 {
                let size = u32::from_be_bytes(self.stream[..4].try_into().unwrap()) as usize;
                if self.stream.len() >= 4 + size {
                    return Some(self.stream.drain(..4 + size).collect());
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            self.pump();
        }
    }

    fn frame(&mut self) -> Vec<u8> {
        self.frame_within(ms(3000)).expect("a frame within 3 s")
    }

    fn silent_for(&mut self, d: Duration) {
        if let Some(f) = self.frame_within(d) {
            panic!("unexpected frame {f:02x?}");
        }
    }

    /// A raw datagram from this client's address.
    fn raw(&self, d: &[u8]) {
        self.sock.send(d).unwrap();
    }
}

fn kcp_gate(extra: &str) -> TestGate {
    TestGate::start(&format!(
        "[network.kcp.server]\naddr = \"127.0.0.1:0\"\n{extra}\n"
    ))
}

fn connect(g: &TestGate, conv: u32, fec: bool) -> (KcpClient, i64) {
    let mut c = KcpClient::connect(g.addr(Transport::Kcp), conv, fec);
    // KCP has no handshake: the first datagram opens the session.
    c.heartbeat();
    let cid = g.event(EventKind::Connect).cid;
    assert_eq!(c.frame(), hex("0000000180"));
    (c, cid)
}

/// Items 1, 2, 18, 21, 27: heartbeat answered (resp), data delivered to the node with the cid,
/// pushes reach the client; with and without due's FEC framing.
#[test]
fn heartbeats_data_and_pushes_plain_and_fec() {
    let g = kcp_gate("");
    for (conv, fec) in [(0x1122_3344, false), (0x11d6_1646, true)] {
        let (mut c, cid) = connect(&g, conv, fec);
        let sent = c.data(1, 1, b"hi");
        let d = g.delivery();
        assert_eq!((d.cid, d.route), (cid, 1));
        assert_eq!(d.frame.to_vec(), sent);
        let s = g.sessions();
        let p = g.packet.encode(2, 2, b"ok").unwrap();
        g.run(s.push(Kind::Conn, cid, p.clone())).unwrap();
        assert_eq!(c.frame(), p.to_vec());
        // Two packets in one KCP message and one packet over two messages (V15, V16).
        let mut two = hex("0000000180");
        two.extend(hex("0000000700000100016869"));
        c.send(&two);
        assert_eq!(c.frame(), hex("0000000180"));
        assert_eq!(g.delivery().frame.to_vec(), hex("0000000700000100016869"));
        c.send(&hex("000000"));
        c.pump();
        c.send(&hex("0700000100016869"));
        assert_eq!(g.delivery().frame.to_vec(), hex("0000000700000100016869"));
        // A burst from the client: every packet delivered once, in order.
        for i in 0..60u16 {
            c.data(2, i, format!("burst-{i}").as_bytes());
        }
        for i in 0..60 {
            let deadline = Instant::now() + ms(5000);
            let d = loop {
                c.pump();
                if let Ok(Observed::Delivery(d)) = g.observed.try_recv() {
                    break d;
                }
                assert!(Instant::now() < deadline, "burst packet {i} not delivered");
            };
            assert_eq!((d.cid, d.route, d.seq), (cid, 2, i));
        }
        // A long push leaves as MSS-sized segments and arrives as one frame (item 12).
        let big = g.packet.encode(3, 0, &vec![9u8; 3000]).unwrap();
        g.run(s.push(Kind::Conn, cid, big.clone())).unwrap();
        assert_eq!(c.frame(), big.to_vec());
        // Many pushes at once: the send window and congestion control pace them, all arrive.
        let frames: Vec<Bytes> = (0..200)
            .map(|i| g.packet.encode(4, i, &[i as u8; 500]).unwrap())
            .collect();
        g.run(async {
            for f in &frames {
                s.push(Kind::Conn, cid, f.clone()).await.unwrap();
            }
        });
        for f in &frames {
            assert_eq!(c.frame(), f.to_vec());
        }
    }
}

/// Items 3, 4, 5, 7, 30 and V2: what opens a session and what does not.
#[test]
fn intake_opens_sessions_only_for_real_conversations() {
    let g = kcp_gate("");
    let addr = g.addr(Transport::Kcp);
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    junk.connect(addr).unwrap();
    // V1 (23 bytes), V2 (24 zero bytes: cmd 0), a parity shard: no connection.
    junk.send(&[0u8; 23]).unwrap();
    junk.send(&[0u8; 24]).unwrap();
    let mut parity = vec![0u8; 40];
    parity[4] = 0xf2;
    junk.send(&parity).unwrap();
    // Two clients on two ports get their own connections.
    let (mut a, cid_a) = connect(&g, 0xaaaa_aaaa, false);
    let (mut b, cid_b) = connect(&g, 0xbbbb_bbbb, false);
    assert_ne!(cid_a, cid_b);
    // From a's address: another conv with sn ≠ 0 is ignored (V3) …
    let mut v3 = hex("cccccccc 51 00 2000 00000000 01000000 00000000 05000000 0000000180");
    a.raw(&v3);
    a.heartbeat();
    assert_eq!(a.frame(), hex("0000000180"), "a keeps working");
    // … with sn 0 it replaces a's session: a's connection ends, a new one starts.
    v3[12] = 0;
    a.raw(&v3);
    // The new connection is admitted at once; the old one's Disconnect follows its release.
    let (mut cid_c, mut gone) = (None, false);
    while cid_c.is_none() || !gone {
        match g.wait_for("Connect and Disconnect", ms(3000), |o| {
            matches!(o, Observed::Event(_))
        }) {
            Observed::Event(e) if e.kind == EventKind::Connect => cid_c = Some(e.cid),
            Observed::Event(e) if e.kind == EventKind::Disconnect => {
                assert_eq!(e.cid, cid_a);
                gone = true;
            }
            _ => {}
        }
    }
    let cid_c = cid_c.unwrap();
    assert!(cid_c != cid_a && cid_c != cid_b);
    b.heartbeat();
    assert_eq!(b.frame(), hex("0000000180"));
    // No other connection was opened by the junk.
    let s = g.sessions();
    assert_eq!(g.run(s.stat(Kind::Conn)), Ok(2));
    // Item 30: after a server-side close, the client's later datagrams open nothing.
    g.run(s.disconnect(Kind::Conn, cid_b, true)).unwrap();
    g.event_of(EventKind::Disconnect, cid_b);
    for _ in 0..3 {
        b.heartbeat();
        b.pump();
    }
    b.silent_for(ms(300));
    assert_eq!(g.run(s.stat(Kind::Conn)), Ok(1), "no zombie connection");
}

/// Items 21, 22, 24: tick heartbeats every I; a silent client is closed after 2–3 I; KCP
/// acknowledgements alone are no liveness (V12).
#[test]
fn tick_heartbeats_and_timeout() {
    const I: u64 = 400;
    let g = kcp_gate(&format!(
        "heartbeatInterval = \"{I}ms\"\nheartbeatMechanism = \"tick\""
    ));
    let mut c = KcpClient::connect(g.addr(Transport::Kcp), 0x0e0e_0e0e, false);
    c.heartbeat();
    let t0 = Instant::now();
    let cid = g.event(EventKind::Connect).cid;
    // The client's heartbeat is not answered; the gate's own comes at ≈ I.
    assert_eq!(c.frame(), hex("0000000180"));
    let first = t0.elapsed();
    assert!(first >= ms(I - 50) && first <= ms(I + 300), "{first:?}");
    // Only KCP ACKs from here on (pump acknowledges): closed at 2–3 I.
    let deadline = Instant::now() + ms(4 * I);
    while Instant::now() < deadline {
        let _ = c.frame_within(ms(20));
        if g.observed.try_iter().any(
            |o| matches!(o, Observed::Event(e) if e.kind == EventKind::Disconnect && e.cid == cid),
        ) {
            let closed = t0.elapsed();
            assert!(
                closed >= ms(2 * I - 50) && closed <= ms(3 * I + 300),
                "{closed:?}"
            );
            return;
        }
    }
    panic!("not closed within 4 I");
}

/// Items 25, 26: authorizeTimeout closes an unbound connection; maxConnNum refuses the next
/// client (no Connect, no due packet) until a place is free.
#[test]
fn authorize_timeout_and_max_conn_num() {
    let g = kcp_gate("maxConnNum = 1\nauthorizeTimeout = \"500ms\"");
    let (mut a, cid_a) = connect(&g, 0x0101_0101, false);
    let t0 = Instant::now();
    let mut b = KcpClient::connect(g.addr(Transport::Kcp), 0x0202_0202, false);
    b.heartbeat();
    b.silent_for(ms(200));
    // a keeps sending heartbeats, but is not bound: closed at ≈ 500 ms.
    while t0.elapsed() < ms(300) {
        a.heartbeat();
        a.pump();
    }
    g.event_of(EventKind::Disconnect, cid_a);
    let closed = t0.elapsed();
    assert!(closed >= ms(400) && closed <= ms(1000), "{closed:?}");
    // A new client is admitted now (b's conversation was never a connection; a new one).
    let (mut c, _) = connect(&g, 0x0303_0303, false);
    c.heartbeat();
    assert_eq!(c.frame(), hex("0000000180"));
    let s = g.sessions();
    assert_eq!(g.run(s.stat(Kind::Conn)), Ok(1));
}

/// Item 29 (gatehouse: stricter than the reference, V13): a graceful close after pushes
/// delivers every push first.
#[test]
fn graceful_close_delivers_everything_pushed_before_it() {
    let g = kcp_gate("");
    let (mut c, cid) = connect(&g, 0x0d0d_0d0d, false);
    let s = g.sessions();
    let frames: Vec<Bytes> = (0..10)
        .map(|i| g.packet.encode(5, i, &[i as u8; 900]).unwrap())
        .collect();
    let s2 = s.clone();
    let fr = frames.clone();
    let closer = std::thread::spawn(move || {
        futures_lite::future::block_on(async {
            for f in &fr {
                s2.push(Kind::Conn, cid, f.clone()).await.unwrap();
            }
            s2.disconnect(Kind::Conn, cid, false).await
        })
    });
    for f in &frames {
        assert_eq!(c.frame(), f.to_vec());
    }
    assert_eq!(closer.join().unwrap(), Ok(()));
    g.event_of(EventKind::Disconnect, cid);
}

/// TCP and KCP side by side in one gate, on the same port number (due's defaults share 3553).
#[test]
fn tcp_and_kcp_in_one_gate() {
    let port = free_port();
    let g = TestGate::start(&format!(
        "[network.tcp.server]\naddr = \"127.0.0.1:{port}\"\n\
         [network.kcp.server]\naddr = \"127.0.0.1:{port}\"\n"
    ));
    assert_eq!(g.addr(Transport::Kcp).port(), port);
    let mut t = g.connect();
    t.heartbeat();
    assert_eq!(t.frame(), hex("0000000180"));
    let (mut k, _) = connect(&g, 0x0707_0707, true);
    k.data(1, 1, b"k");
    assert_eq!(g.delivery().frame.to_vec(), hex("0000000600000100016b"));
}

/// Items 19, 20, 28: a size-0 frame before a heartbeat is ignored (V7); getIP is the client's
/// dotted IPv4 address; a declared size over the inbound cap closes the connection (the
/// reference's reader dies or allocates, V8).
#[test]
fn empty_frames_ip_and_oversized_frames() {
    let g = kcp_gate("");
    let (mut c, cid) = connect(&g, 0x1313_1313, false);
    c.send(&hex("000000000000000180"));
    assert_eq!(c.frame(), hex("0000000180"));
    let s = g.sessions();
    assert_eq!(
        g.run(s.get_ip(Kind::Conn, cid)),
        Ok("127.0.0.1".parse().unwrap())
    );
    c.send(&hex("ffffffff"));
    g.event_of(EventKind::Disconnect, cid);
    // Closed means closed: nothing answers the client's next heartbeat.
    c.heartbeat();
    c.silent_for(ms(300));
}
