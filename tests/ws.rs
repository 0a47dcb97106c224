//! The WebSocket server over real sockets: conformance items 29–37 of client-protocol.md §10, the
//! WS side of items 1, 3, 10, 12, 17, 20, 22 and 34, and hostile input (slowloris upgrades, bad
//! origins, text frames, garbage, oversize and unmasked frames, bytes before the 101).
//!
//! Exact wire checks use a raw socket (`Raw`): the HTTP response bytes and the server's frames
//! are parsed by hand, client frames are built and masked by hand. Everything else uses the
//! tungstenite client of the harness (`WsClient`).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use gatehouse::dispatch::{EventKind, Observed};
use gatehouse::session::{shard_of_cid, Kind, Transport};
use tungstenite::Message;

/// Heartbeat interval of the timing tests.
const I: Duration = Duration::from_millis(400);
const H1: &str = "00 00 00 01 80";
const H2: &str = "01 00 00 00 80";
const D7: &str = "00 00 00 07 00 00 01 00 02 68 69";
/// RFC 6455's sample key and its accept value.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// The exact 101 gorilla (and the gate) sends for `KEY`.
const SWITCHING: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

fn ws_addr(g: &TestGate) -> SocketAddr {
    g.addr(Transport::Ws)
}

fn interval(extra: &str) -> TestGate {
    TestGate::ws(&format!("heartbeatInterval = \"400ms\"\n{extra}"))
}

fn assert_window(what: &str, at: Duration, lo: Duration, hi: Duration) {
    assert!(
        at >= lo && at <= hi,
        "{what}: at {at:?}, expected within [{lo:?}, {hi:?}]"
    );
}

/// Window for "closed at the first tick more than 2·I after the last frame": 2·I − 50 ms to
/// 3·I + 300 ms.
fn assert_timeout_window(what: &str, at: Duration) {
    assert_window(what, at, I * 2 - ms(50), I * 3 + ms(300));
}

// ---------------------------------------------------------------------------------------------
// Raw socket helpers
// ---------------------------------------------------------------------------------------------

/// A GET upgrade request for `path` with `KEY`, plus `extra` header lines (each ending in CRLF).
fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    )
}

#[derive(Debug)]
struct HttpResponse {
    status: u16,
    /// The head through the blank line.
    head: String,
    body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A frame the server sent.
#[derive(Debug, PartialEq, Eq)]
enum RawRead {
    /// First byte (FIN, RSV, opcode) and the payload.
    Frame(u8, Vec<u8>),
    Closed,
    Timeout,
}

/// A raw client socket: hand-written HTTP, hand-built masked frames.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

enum Fill {
    Data,
    Eof,
    Timeout,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).unwrap();
        Raw { s, buf: Vec::new() }
    }

    /// Connects, upgrades on `path` and checks the exact 101.
    fn upgrade(addr: SocketAddr, path: &str) -> Raw {
        let mut r = Raw::connect(addr);
        r.send(upgrade_request(path, "").as_bytes());
        let resp = r.response(ms(5000)).expect("an HTTP response");
        assert_eq!(resp.head, SWITCHING);
        r
    }

    /// Writes `b`; `false` if the connection is gone.
    fn send(&mut self, b: &[u8]) -> bool {
        self.s.write_all(b).is_ok()
    }

    fn fill(&mut self, deadline: Instant) -> Fill {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Fill::Timeout;
        }
        self.s.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 16384];
        match self.s.read(&mut chunk) {
            Ok(0) => Fill::Eof,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Fill::Data
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Fill::Timeout
            }
            Err(_) => Fill::Eof,
        }
    }

    /// Reads one HTTP response (head, then `Content-Length` bytes of body). `None` if the
    /// connection closed before a complete head; panics on timeout. Bytes after the response
    /// stay buffered (WebSocket frames after a 101).
    fn response(&mut self, timeout: Duration) -> Option<HttpResponse> {
        let deadline = Instant::now() + timeout;
        for _ in 0..10_000 {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.buf[..p + 4].to_vec()).expect("ASCII head");
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .expect("status code");
                let mut resp = HttpResponse {
                    status,
                    head,
                    body: Vec::new(),
                };
                let len: usize = resp
                    .header("content-length")
                    .map(|v| v.parse().expect("content-length"))
                    .unwrap_or(0);
                for _ in 0..10_000 {
                    if self.buf.len() >= p + 4 + len {
                        break;
                    }
                    match self.fill(deadline) {
                        Fill::Data => {}
                        Fill::Eof => break,
                        Fill::Timeout => panic!("timed out reading the body"),
                    }
                }
                let end = (p + 4 + len).min(self.buf.len());
                resp.body = self.buf[p + 4..end].to_vec();
                self.buf.drain(..end);
                return Some(resp);
            }
            match self.fill(deadline) {
                Fill::Data => {}
                Fill::Eof => return None,
                Fill::Timeout => panic!(
                    "no HTTP response within {timeout:?}; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
        unreachable!()
    }

    /// Reads one server frame; server frames must not be masked.
    fn read_frame(&mut self, timeout: Duration) -> RawRead {
        let deadline = Instant::now() + timeout;
        for _ in 0..10_000 {
            if let Some((b0, payload, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return RawRead::Frame(b0, payload);
            }
            match self.fill(deadline) {
                Fill::Data => {}
                Fill::Eof if self.buf.is_empty() => return RawRead::Closed,
                Fill::Eof => panic!("EOF inside a frame: {:02x?}", self.buf),
                Fill::Timeout => return RawRead::Timeout,
            }
        }
        unreachable!()
    }

    /// Everything still to come until the server closes; panics if it stays open.
    fn rest_until_eof(&mut self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        for _ in 0..10_000 {
            match self.fill(deadline) {
                Fill::Data => {}
                Fill::Eof => return std::mem::take(&mut self.buf),
                Fill::Timeout => panic!(
                    "connection still open after {timeout:?}; got {:02x?}",
                    self.buf
                ),
            }
        }
        unreachable!()
    }

    /// Sends a due heartbeat as a masked binary frame and expects `reply` as one binary frame.
    fn heartbeat_roundtrip(&mut self, hb: &[u8], reply: &[u8]) {
        assert!(self.send(&client_frame(0x82, hb)));
        assert_eq!(
            self.read_frame(ms(5000)),
            RawRead::Frame(0x82, reply.to_vec())
        );
    }
}

/// `(first byte, payload, frame length)` of a complete server frame at the start of `b`.
fn parse_server_frame(b: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if b.len() < 2 {
        return None;
    }
    assert_eq!(b[1] & 0x80, 0, "server frames must not be masked");
    let (len, hdr) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => (
            u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if b.len() < hdr + len {
        return None;
    }
    Some((b[0], b[hdr..hdr + len].to_vec(), hdr + len))
}

/// A masked client frame with first byte `b0` (FIN | opcode).
fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = frame_header(b0, payload.len() as u64, true);
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn frame_header(b0: u8, len: u64, masked: bool) -> Vec<u8> {
    let m = if masked { 0x80 } else { 0 };
    let mut f = vec![b0];
    if len < 126 {
        f.push(m | len as u8);
    } else if len <= 0xffff {
        f.push(m | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(m | 127);
        f.extend_from_slice(&len.to_be_bytes());
    }
    f
}

/// Sends `request` on a fresh socket and reads the response (`None` = closed without one).
fn http(addr: SocketAddr, request: &[u8]) -> Option<HttpResponse> {
    let mut r = Raw::connect(addr);
    r.send(request);
    r.response(ms(5000))
}

/// The status the gate answers `request` with, checking gorilla's error shape for 400/403/405.
fn status_of(addr: SocketAddr, request: &str) -> u16 {
    let resp = http(addr, request.as_bytes()).expect("an HTTP response");
    let text = match resp.status {
        400 => Some("Bad Request\n"),
        403 => Some("Forbidden\n"),
        405 => Some("Method Not Allowed\n"),
        _ => None,
    };
    if let Some(text) = text {
        assert_eq!(resp.body, text.as_bytes(), "{request:?}");
        assert_eq!(resp.header("sec-websocket-version"), Some("13"));
        assert_eq!(
            resp.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
    }
    resp.status
}

// ---------------------------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------------------------

/// Proves the gate still serves NEW WebSocket connections on every shard: connects (sending
/// `headers`) until clients on both shards had their heartbeat answered.
fn assert_served_with(g: &TestGate, headers: &[(&str, &str)]) {
    // Events of earlier (hostile) connections must not be taken for the new clients'.
    while g.observed.try_recv().is_ok() {}
    let mut seen = [false; 2];
    for _ in 0..48 {
        let mut c = WsClient::connect_with(ws_addr(g), "/", headers, g.packet)
            .expect("a new connection is upgraded");
        let cid = g.event(EventKind::Connect).cid;
        c.heartbeat();
        assert_eq!(c.binary(), g.packet.heartbeat(0).to_vec(), "cid {cid}");
        seen[shard_of_cid(cid, 2)] = true;
        if seen == [true, true] {
            return;
        }
    }
    panic!("no new connection was served on one of the shards: {seen:?}");
}

fn assert_served(g: &TestGate) {
    assert_served_with(g, &[]);
}

/// Every `period` calls `send` (false = the connection is gone); between sends reads and hands
/// each message to `on_msg`. Returns when the socket closed (time since `t0`), or `None` if it is
/// still open at `t0 + until`.
fn drive(
    c: &mut WsClient,
    t0: Instant,
    period: Duration,
    until: Duration,
    mut send: impl FnMut(&mut WsClient) -> bool,
    mut on_msg: impl FnMut(WsRead),
) -> Option<Duration> {
    let end = t0 + until;
    let mut next = t0 + period;
    for _ in 0..100_000 {
        let now = Instant::now();
        if now >= end {
            return None;
        }
        if now >= next {
            if !send(c) {
                return Some(t0.elapsed());
            }
            next += period;
            continue;
        }
        match c.read_message(next.min(end) - now) {
            WsRead::Timeout => {}
            WsRead::Closed => return Some(t0.elapsed()),
            m => on_msg(m),
        }
    }
    panic!("drive: loop bound reached");
}

fn packet_toml(order: &str, r: u8, s: u8) -> String {
    format!("[packet]\nbyteOrder = \"{order}\"\nrouteBytes = {r}\nseqBytes = {s}\n")
}

fn ws_gate_with_packet(packet: &str) -> TestGate {
    TestGate::start(&format!(
        "{packet}[network.ws.server]\naddr = \"127.0.0.1:0\"\n"
    ))
}

/// Route 1, seq 2, "hi" encoded by hand (client-protocol.md §9.2), independently of the gate's
/// packer.
fn d_vector(little: bool, r: u8, s: u8) -> Vec<u8> {
    let int = |v: u32, n: u8| -> Vec<u8> {
        let b = if little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        };
        if little {
            b[..n as usize].to_vec()
        } else {
            b[4 - n as usize..].to_vec()
        }
    };
    let mut f = int(1 + r as u32 + s as u32 + 2, 4);
    f.push(0);
    f.extend(int(1, r));
    f.extend(int(2, s));
    f.extend_from_slice(b"hi");
    f
}

// ---------------------------------------------------------------------------------------------
// Item 1, 3, 4, 34: packets over WS
// ---------------------------------------------------------------------------------------------

/// Item 1 (WS): D1–D24 as one binary message each reach the upstream decoded and byte-identical.
#[test]
fn data_vectors_are_delivered_verbatim() {
    assert_eq!(d_vector(false, 2, 2), hex(D7));
    assert_eq!(
        d_vector(true, 4, 4),
        hex("0b00 0000 00 01000000 02000000 6869")
    );
    for (order, little) in [("big", false), ("little", true)] {
        for r in [1u8, 2, 4] {
            for s in [0u8, 1, 2, 4] {
                let g = ws_gate_with_packet(&packet_toml(order, r, s));
                let (mut c, cid) = g.connect_ws_with_cid();
                let v = d_vector(little, r, s);
                c.send_binary(&v);
                let d = g.delivery();
                assert_eq!(d.frame.as_ref(), &v[..], "{order} r{r} s{s}");
                assert_eq!((d.cid, d.uid, d.route), (cid, 0, 1), "{order} r{r} s{s}");
                assert_eq!(d.seq, if s == 0 { 0 } else { 2 }, "{order} r{r} s{s}");
            }
        }
    }
}

/// Item 1 (WS): S1–S3, S6 decode to the stated route/seq/payload; S7 (5009 bytes) is delivered.
#[test]
fn signed_and_edge_vectors() {
    let cases: &[(String, &str, i32, i32, usize)] = &[
        (packet_toml("big", 2, 2), "00000005 00 fffe ffff", -2, -1, 0),
        (
            packet_toml("little", 4, 4),
            "0a000000 00 04030201 feffffff aa",
            16909060,
            -2,
            1,
        ),
        (packet_toml("big", 1, 1), "00000003 00 7f 80", 127, -128, 0),
        (packet_toml("big", 2, 0), "00000004 00 0007 78", 7, 0, 1),
    ];
    for (p, bytes, route, seq, plen) in cases {
        let g = ws_gate_with_packet(p);
        let mut c = g.connect_ws();
        c.send_binary(&hex(bytes));
        let d = g.delivery();
        assert_eq!(d.frame.as_ref(), &hex(bytes)[..]);
        let m = g.packet.unpack(&d.frame).unwrap();
        assert_eq!((d.route, d.seq, m.payload.len()), (*route, *seq, *plen));
    }
    let g = TestGate::ws("");
    let mut c = g.connect_ws();
    let mut s7 = hex("00 00 13 8d 00 00 01 00 01");
    s7.extend(std::iter::repeat_n(0u8, 5000));
    c.send_binary(&s7);
    let d = g.delivery();
    assert_eq!(d.frame.as_ref(), &s7[..]);
    assert_eq!((d.route, d.seq), (1, 1));
}

/// Items 3, 4 (WS): bit 7 = heartbeat (answered with H1, never forwarded); extcode data (C6)
/// forwarded verbatim; a too-short data message (C5) dropped with the connection kept.
#[test]
fn classification() {
    let g = TestGate::ws("");
    let mut c = g.connect_ws();
    for hb in [
        "00000001 80",
        "00000001 ff",
        "00000001 8f",
        "00000009 80 00000000000000ff",
    ] {
        c.send_binary(&hex(hb));
        assert_eq!(c.binary(), hex(H1), "{hb}");
    }
    g.no_delivery_within(ms(100));
    c.send_binary(&hex("00000001 00"));
    let c6 = hex("00000007 7f 0001 0002 6869");
    c.send_binary(&c6);
    let d = g.delivery();
    assert_eq!(d.frame.as_ref(), &c6[..]);
    assert_eq!((d.route, d.seq), (1, 2));
    g.no_delivery_within(ms(100));
    c.silent_for(ms(100));
    c.heartbeat();
    assert_eq!(c.binary(), hex(H1));
}

/// Item 34 (C7–C10): a message with two packets, a wrong size field, fewer than 5 bytes, or one
/// packet split over two messages is dropped (no delivery, no reply); the connection stays.
#[test]
fn malformed_messages_are_dropped() {
    let g = TestGate::ws("");
    let (mut c, cid) = g.connect_ws_with_cid();
    let two = [hex(D7), hex(H1)].concat();
    for bad in [
        two.clone(),
        [hex(H1), hex(H1)].concat(),
        hex("00 00 00 02 80"),
        hex("00 00 00"),
        hex("01 00 00 00 80"),
        hex("00 00 00 05 00 00 01 00 01 68"),
        hex("00 00 00 07 00 00"),
        hex("01 00 02 68 69"),
    ] {
        c.send_binary(&bad);
    }
    g.no_delivery_within(ms(200));
    c.silent_for(ms(100));
    c.heartbeat();
    assert_eq!(c.binary(), hex(H1));
    c.send_binary(&hex(D7));
    let d = g.delivery();
    assert_eq!((d.cid, d.frame.as_ref()), (cid, &hex(D7)[..]));
    c.silent_for(ms(100));
}

// ---------------------------------------------------------------------------------------------
// Items 10, 11, 12, 17, 20: heartbeats and liveness over WS
// ---------------------------------------------------------------------------------------------

/// Items 10, 11 (WS): each heartbeat message gets exactly one H1, well under I; the server sends
/// none on its own while the client sends only data for 3·I.
#[test]
fn resp_mode_answers_each_heartbeat() {
    let g = interval("");
    let mut c = g.connect_ws();
    for _ in 0..3 {
        let t = Instant::now();
        c.heartbeat();
        assert_eq!(c.binary(), hex(H1));
        assert!(t.elapsed() < ms(100), "reply took {:?}", t.elapsed());
    }
    for _ in 0..3 {
        c.heartbeat();
    }
    for _ in 0..3 {
        assert_eq!(c.binary(), hex(H1));
    }
    c.silent_for(ms(150));
    let t0 = Instant::now();
    let mut sent = 0;
    let closed = drive(
        &mut c,
        t0,
        I / 2,
        I * 3,
        |c| {
            sent += 1;
            c.try_send(Message::binary(hex(D7))).is_ok()
        },
        |m| panic!("unexpected message in resp mode: {m:?}"),
    );
    assert_eq!(closed, None, "data keeps the connection alive");
    assert!(sent >= 5, "{sent}");
    for _ in 0..sent {
        assert_eq!(g.delivery().frame.as_ref(), &hex(D7)[..]);
    }
}

/// Item 12 (WS): tick mode never answers heartbeats; it sends H1 every I, the first at ≈ I.
#[test]
fn tick_mode_sends_every_interval() {
    let g = interval("heartbeatMechanism = \"tick\"\n");
    let mut c = g.connect_ws();
    let t0 = Instant::now();
    let mut arrivals = vec![];
    let closed = drive(
        &mut c,
        t0,
        I / 2,
        I * 9 / 2,
        |c| c.try_send(Message::binary(hex(H1))).is_ok(),
        |m| {
            assert_eq!(m, WsRead::Binary(hex(H1)));
            arrivals.push(t0.elapsed());
        },
    );
    assert_eq!(
        closed, None,
        "client heartbeats keep a tick connection alive"
    );
    assert_eq!(
        arrivals.len(),
        4,
        "one per tick, none per client heartbeat: {arrivals:?}"
    );
    for (k, at) in arrivals.iter().enumerate() {
        let want = I * (k as u32 + 1);
        assert_window(
            &format!("tick {}", k + 1),
            *at,
            want - ms(50),
            want + ms(150),
        );
    }
}

/// Item 17: pings alone, or text alone, do not keep a connection alive (closed at 2–3·I from
/// the connect); empty and malformed binary messages do (open after 4·I, nothing sent back).
#[test]
fn liveness_counts_binary_messages_only() {
    let g = interval("");
    let mut c = g.connect_ws();
    let t0 = Instant::now();
    let mut pongs = 0;
    let closed = drive(
        &mut c,
        t0,
        I / 2,
        I * 5,
        |c| c.try_send(Message::Ping(b"p".to_vec().into())).is_ok(),
        |m| {
            assert_eq!(m, WsRead::Pong(b"p".to_vec()));
            pongs += 1;
        },
    );
    assert!(pongs >= 1, "pings are answered");
    assert_timeout_window("ping-only client", closed.expect("ping-only client closed"));

    let mut c = g.connect_ws();
    let t0 = Instant::now();
    let closed = drive(
        &mut c,
        t0,
        I / 2,
        I * 5,
        |c| c.try_send(Message::text("hb")).is_ok(),
        |m| panic!("unexpected message: {m:?}"),
    );
    assert_timeout_window("text-only client", closed.expect("text-only client closed"));

    for (what, msg) in [
        ("empty", vec![]),
        ("size 2 != 1 (C7)", hex("00 00 00 02 80")),
        ("3 bytes (C8)", hex("00 00 00")),
    ] {
        let mut c = g.connect_ws();
        let t0 = Instant::now();
        let closed = drive(
            &mut c,
            t0,
            I / 2,
            I * 4,
            |c| c.try_send(Message::binary(msg.clone())).is_ok(),
            |m| panic!("{what}: unexpected message {m:?}"),
        );
        assert_eq!(closed, None, "{what} binary messages are liveness");
        c.heartbeat();
        assert_eq!(c.binary(), hex(H1), "{what}");
    }
    g.no_delivery_within(ms(50));
}

/// Item 20: little endian, due-client-ts's `00 00 00 01 80`. Default: dropped without reply but
/// liveness (open after 4·I sending only that every I/2). With `wsLittleEndianTsHeartbeat`: H2.
#[test]
fn little_endian_ts_heartbeat() {
    let g = TestGate::start(
        "[packet]\nbyteOrder = \"little\"\n[network.ws.server]\naddr = \"127.0.0.1:0\"\nheartbeatInterval = \"400ms\"\n",
    );
    let mut c = g.connect_ws();
    let t0 = Instant::now();
    let closed = drive(
        &mut c,
        t0,
        I / 2,
        I * 4,
        |c| c.try_send(Message::binary(hex(H1))).is_ok(),
        |m| panic!("the TS heartbeat must not be answered: {m:?}"),
    );
    assert_eq!(closed, None, "the TS heartbeat refreshes liveness");
    c.send_binary(&hex(H2));
    assert_eq!(c.binary(), hex(H2));
    g.no_delivery_within(ms(50));

    let g = TestGate::start(
        "[packet]\nbyteOrder = \"little\"\n[network.ws.server]\naddr = \"127.0.0.1:0\"\n[gatehouse]\nwsLittleEndianTsHeartbeat = true\n",
    );
    let mut c = g.connect_ws();
    for _ in 0..2 {
        c.send_binary(&hex(H1));
        assert_eq!(c.binary(), hex(H2));
    }
    c.send_binary(&hex(H2));
    assert_eq!(c.binary(), hex(H2));
    // Only the exact 5 bytes are recognised: a 13-byte BE heartbeat is still invalid in LE.
    c.send_binary(&hex("00 00 00 09 80 00 00 00 00 00 00 00 00"));
    c.silent_for(ms(150));
    g.no_delivery_within(ms(50));
}

// ---------------------------------------------------------------------------------------------
// Item 22: maxConnNum
// ---------------------------------------------------------------------------------------------

/// Item 22 (WS): with maxConnNum 2 the third connection gets a 101, then the socket closes with
/// no bytes (no Close frame) and no Connect event; after one client leaves a new one is admitted.
#[test]
fn max_conn_num_closes_after_upgrade() {
    let g = TestGate::ws("maxConnNum = 2");
    let (c1, cid1) = g.connect_ws_with_cid();
    let (mut c2, _) = g.connect_ws_with_cid();
    for _ in 0..3 {
        let mut r = Raw::upgrade(ws_addr(&g), "/");
        assert_eq!(
            r.rest_until_eof(ms(2000)),
            b"",
            "closed without a Close frame"
        );
    }
    std::thread::sleep(ms(100));
    let extra: Vec<Observed> = g.observed.try_iter().collect();
    assert!(
        extra.is_empty(),
        "rejected connections emit nothing: {extra:?}"
    );
    c2.heartbeat();
    assert_eq!(c2.binary(), hex(H1));
    drop(c1);
    let e = g.event(EventKind::Disconnect);
    assert_eq!((e.cid, e.uid), (cid1, 0));
    let (mut c3, _) = g.connect_ws_with_cid();
    c3.heartbeat();
    assert_eq!(c3.binary(), hex(H1));
    let mut r = Raw::upgrade(ws_addr(&g), "/");
    assert_eq!(r.rest_until_eof(ms(2000)), b"", "full again");
}

// ---------------------------------------------------------------------------------------------
// Items 29–32: the upgrade handshake
// ---------------------------------------------------------------------------------------------

fn upgrades_on(g: &TestGate, path: &str) {
    let mut c = WsClient::connect_with(ws_addr(g), path, &[], g.packet)
        .unwrap_or_else(|e| panic!("upgrade on {path}: {e}"));
    c.heartbeat();
    assert_eq!(c.binary(), hex(H1), "{path}");
}

/// Item 29: `/` matches every path; `/ws` exactly `/ws` (404 elsewhere); `/ws/` the subtree,
/// with `/ws` redirected (301) to `/ws/`.
#[test]
fn path_matching() {
    let g = TestGate::ws("");
    for p in ["/", "/ws", "/x/y", "/a?b=1"] {
        upgrades_on(&g, p);
    }

    let g = TestGate::ws("path = \"/ws\"");
    upgrades_on(&g, "/ws");
    upgrades_on(&g, "/ws?token=1");
    for p in ["/", "/ws/", "/wss", "/x"] {
        let resp = http(ws_addr(&g), upgrade_request(p, "").as_bytes()).unwrap();
        assert_eq!(resp.status, 404, "{p}");
        assert_eq!(resp.body, b"404 page not found\n", "{p}");
        assert_eq!(
            resp.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
    }

    let g = TestGate::ws("path = \"/ws/\"");
    upgrades_on(&g, "/ws/");
    upgrades_on(&g, "/ws/a/b");
    let resp = http(ws_addr(&g), upgrade_request("/ws", "").as_bytes()).unwrap();
    assert_eq!(resp.status, 301);
    assert_eq!(resp.header("location"), Some("/ws/"));
    let resp = http(ws_addr(&g), upgrade_request("/", "").as_bytes()).unwrap();
    assert_eq!(resp.status, 404);
}

/// Item 30: non-GET → 405; missing/invalid upgrade headers, bad key, version ≠ 13 → 400, all
/// with `Sec-Websocket-Version: 13` and gorilla's bodies. Token matching is case-insensitive.
#[test]
fn handshake_checks() {
    let g = TestGate::ws("");
    let a = ws_addr(&g);
    let good = upgrade_request("/", "");
    let with = |from: &str, to: &str| {
        assert!(good.contains(from), "{from}");
        good.replace(from, to)
    };
    assert_eq!(status_of(a, &good.replacen("GET", "POST", 1)), 405);
    assert_eq!(status_of(a, &good.replacen("GET", "PUT", 1)), 405);
    for (what, req) in [
        ("no Connection", with("Connection: Upgrade\r\n", "")),
        (
            "Connection without upgrade",
            with("Connection: Upgrade", "Connection: keep-alive"),
        ),
        ("no Upgrade", with("Upgrade: websocket\r\n", "")),
        ("Upgrade h2c", with("Upgrade: websocket", "Upgrade: h2c")),
        ("no version", with("Sec-WebSocket-Version: 13\r\n", "")),
        (
            "version 12",
            with("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 12"),
        ),
        ("no key", with(&format!("Sec-WebSocket-Key: {KEY}\r\n"), "")),
        ("short key", with(KEY, "AAAA")),
        ("24 chars, 18 bytes", with(KEY, "AAAAAAAAAAAAAAAAAAAAAAAA")),
        ("15-byte key", with(KEY, "AAAAAAAAAAAAAAAAAAAA")),
        ("not base64", with(KEY, "dGhlIHNhbXBsZSBub25jZ!==")),
    ] {
        assert_eq!(status_of(a, &req), 400, "{what}");
    }
    for (what, req) in [
        (
            "Connection token list",
            with("Connection: Upgrade", "Connection: keep-alive, Upgrade"),
        ),
        (
            "case-insensitive tokens",
            with("Upgrade: websocket", "Upgrade: WebSocket")
                .replace("Connection: Upgrade", "connection: UPGRADE"),
        ),
        (
            "version list",
            with("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8, 13"),
        ),
    ] {
        let resp = http(a, req.as_bytes()).expect("response");
        assert_eq!(resp.head, SWITCHING, "{what}");
    }
    assert_served(&g);
}

/// Item 31 (and hostile origins): default accepts any/no Origin; `[]` refuses all; a list
/// accepts exactly its entries (case-sensitive, full origin); the gate keeps serving.
#[test]
fn origins() {
    let evil = "Origin: https://evil.example\r\n";
    let g = TestGate::ws("");
    for o in [evil, ""] {
        let resp = http(ws_addr(&g), upgrade_request("/", o).as_bytes()).unwrap();
        assert_eq!(resp.head, SWITCHING, "{o:?}");
    }
    assert_served_with(&g, &[("Origin", "https://evil.example")]);

    let g = TestGate::ws("origins = []");
    for o in [evil, "Origin: https://a.example\r\n", ""] {
        assert_eq!(
            status_of(ws_addr(&g), &upgrade_request("/", o)),
            403,
            "{o:?}"
        );
    }
    assert_eq!(g.observed.try_iter().count(), 0);

    let g = TestGate::ws("origins = [\"https://a.example\"]");
    let resp = http(
        ws_addr(&g),
        upgrade_request("/", "Origin: https://a.example\r\n").as_bytes(),
    )
    .unwrap();
    assert_eq!(resp.head, SWITCHING);
    for o in [
        "Origin: https://b.example\r\n",
        "Origin: https://A.example\r\n",
        "Origin: https://a.example:443\r\n",
        "Origin: http://a.example\r\n",
        "Origin: https://a.example/\r\n",
        "",
    ] {
        assert_eq!(
            status_of(ws_addr(&g), &upgrade_request("/", o)),
            403,
            "{o:?}"
        );
    }
    assert_served_with(&g, &[("Origin", "https://a.example")]);
    let err = WsClient::connect_with(ws_addr(&g), "/", &[], g.packet)
        .err()
        .expect("no Origin is refused");
    match err {
        tungstenite::Error::Http(r) => assert_eq!(r.status(), 403),
        e => panic!("expected HTTP 403, got {e}"),
    }

    let g = TestGate::ws("origins = [\"\", \"https://a.example\"]");
    assert_served(&g);
}

/// Item 32: the 101 is exactly gorilla's, with no subprotocol and no extension, even when the
/// client asks for both; the connection then speaks uncompressed frames.
#[test]
fn switching_protocols_response_is_exact() {
    let g = TestGate::ws("");
    let mut r = Raw::connect(ws_addr(&g));
    r.send(
        upgrade_request(
            "/",
            "Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        )
        .as_bytes(),
    );
    let resp = r.response(ms(5000)).unwrap();
    assert_eq!(resp.head, SWITCHING);
    assert!(resp.head.contains(ACCEPT));
    assert!(r.buf.is_empty(), "nothing after the 101: {:02x?}", r.buf);
    r.heartbeat_roundtrip(&hex(H1), &hex(H1));
}

// ---------------------------------------------------------------------------------------------
// Items 33, 35, 36, 37: message mapping and control frames
// ---------------------------------------------------------------------------------------------

/// Item 33: pushes arrive as single unfragmented binary frames (a 5009-byte one too); a
/// 5009-byte client packet in two frames (4096 + 913), even with a ping between them, is one
/// packet; a heartbeat in three fragments is one heartbeat.
#[test]
fn one_packet_per_message() {
    let g = TestGate::ws("");
    let mut r = Raw::upgrade(ws_addr(&g), "/");
    let cid = g.event(EventKind::Connect).cid;

    let push = |bytes: &[u8]| {
        g.run(
            g.sessions()
                .push(Kind::Conn, cid, bytes::Bytes::copy_from_slice(bytes)),
        )
        .expect("push")
    };
    push(&hex(D7));
    assert_eq!(r.read_frame(ms(5000)), RawRead::Frame(0x82, hex(D7)));
    let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let big = g.packet.encode(1, 1, &payload).unwrap().to_vec();
    assert_eq!(big.len(), 5009);
    assert_eq!(big[..9], hex("00 00 13 8d 00 00 01 00 01")[..]);
    push(&big);
    // One FIN binary frame with a 16-bit length: 82 7e 13 91.
    for _ in 0..1000 {
        if r.buf.len() >= 4 {
            break;
        }
        r.fill(Instant::now() + ms(5000));
    }
    assert_eq!(r.buf[..4], hex("82 7e 13 91")[..]);
    assert_eq!(r.read_frame(ms(5000)), RawRead::Frame(0x82, big.clone()));

    let pkt = g.packet.encode(1, 2, &payload).unwrap().to_vec();
    assert!(r.send(&client_frame(0x02, &pkt[..4096])));
    std::thread::sleep(ms(50));
    assert!(r.send(&client_frame(0x80, &pkt[4096..])));
    let d = g.delivery();
    assert_eq!((d.cid, d.route, d.seq), (cid, 1, 2));
    assert_eq!(d.frame.as_ref(), &pkt[..]);

    assert!(r.send(&client_frame(0x02, &pkt[..2000])));
    assert!(r.send(&client_frame(0x89, b"mid")));
    assert!(r.send(&client_frame(0x80, &pkt[2000..])));
    assert_eq!(
        r.read_frame(ms(5000)),
        RawRead::Frame(0x8a, b"mid".to_vec())
    );
    assert_eq!(g.delivery().frame.as_ref(), &pkt[..]);

    let h = hex(H1);
    assert!(r.send(&client_frame(0x02, &h[..2])));
    assert!(r.send(&client_frame(0x00, &h[2..4])));
    assert!(r.send(&client_frame(0x80, &h[4..])));
    assert_eq!(r.read_frame(ms(5000)), RawRead::Frame(0x82, h.clone()));
    g.no_delivery_within(ms(100));
    assert_eq!(r.read_frame(ms(100)), RawRead::Timeout);
}

/// Item 35: a client Close(4001) is answered by Close(4001) with an empty reason, then the
/// socket closes and Disconnect follows; an empty Close is answered by an empty Close.
#[test]
fn client_close_is_echoed() {
    let g = TestGate::ws("");
    let mut r = Raw::upgrade(ws_addr(&g), "/");
    let cid = g.event(EventKind::Connect).cid;
    assert!(r.send(&client_frame(0x88, &hex("0f a1"))));
    assert_eq!(r.read_frame(ms(5000)), RawRead::Frame(0x88, hex("0f a1")));
    assert_eq!(r.rest_until_eof(ms(2000)), b"");
    let e = g.event(EventKind::Disconnect);
    assert_eq!((e.cid, e.uid), (cid, 0));

    let mut r = Raw::upgrade(ws_addr(&g), "/");
    let cid = g.event(EventKind::Connect).cid;
    assert!(r.send(&client_frame(0x88, b"")));
    assert_eq!(r.read_frame(ms(5000)), RawRead::Frame(0x88, vec![]));
    assert_eq!(r.rest_until_eof(ms(2000)), b"");
    assert_eq!(g.event(EventKind::Disconnect).cid, cid);

    // Through tungstenite: the code comes back as the peer's Close.
    let mut c = g.connect_ws();
    c.ws.close(Some(tungstenite::protocol::CloseFrame {
        code: 4001.into(),
        reason: "".into(),
    }))
    .unwrap();
    assert_eq!(
        c.read_message(ms(5000)),
        WsRead::Close(Some((4001, String::new())))
    );
    assert_eq!(c.read_message(ms(2000)), WsRead::Closed);
    assert_served(&g);
}

/// Item 35, reason: gorilla echoes only the code (`FormatCloseMessage(code, "")`).
#[test]
fn client_close_reason_is_not_echoed() {
    let g = TestGate::ws("");
    let mut r = Raw::upgrade(ws_addr(&g), "/");
    let cid = g.event(EventKind::Connect).cid;
    assert!(r.send(&client_frame(
        0x88,
        &[hex("0f a1"), b"bye".to_vec()].concat()
    )));
    assert_eq!(r.read_frame(ms(5000)), RawRead::Frame(0x88, hex("0f a1")));
    assert_eq!(r.rest_until_eof(ms(2000)), b"");
    assert_eq!(g.event(EventKind::Disconnect).cid, cid);
}

/// Item 36, default: heartbeat timeout, forced and graceful node disconnects close the socket
/// without a Close frame (graceful still flushes queued pushes first).
#[test]
fn server_close_sends_no_close_frame_by_default() {
    server_close(false);
}

/// Item 36, `wsCloseFrame = true`: the same closes send Close(1000) (`88 02 03 e8`) first.
#[test]
fn server_close_sends_close_1000_when_enabled() {
    server_close(true);
}

fn server_close(close_frame: bool) {
    let g = TestGate::start(&format!(
        "[network.ws.server]\naddr = \"127.0.0.1:0\"\nheartbeatInterval = \"400ms\"\n[gatehouse]\nwsCloseFrame = {close_frame}\n"
    ));
    let bye = if close_frame {
        hex("88 02 03 e8")
    } else {
        vec![]
    };

    // Heartbeat timeout of a silent client: at 2·I.
    let t0 = Instant::now();
    let mut r = Raw::upgrade(ws_addr(&g), "/");
    let cid = g.event(EventKind::Connect).cid;
    assert_eq!(r.rest_until_eof(ms(3000)), bye, "heartbeat timeout");
    assert_timeout_window("silent client", t0.elapsed());
    assert_eq!(g.event(EventKind::Disconnect).cid, cid);

    // Forced disconnect by a node.
    let mut r = Raw::upgrade(ws_addr(&g), "/");
    let cid = g.event(EventKind::Connect).cid;
    r.heartbeat_roundtrip(&hex(H1), &hex(H1));
    g.run(g.sessions().disconnect(Kind::Conn, cid, true))
        .expect("forced disconnect");
    assert_eq!(r.rest_until_eof(ms(2000)), bye, "forced");
    assert_eq!(g.event(EventKind::Disconnect).cid, cid);

    // Graceful disconnect: queued pushes first, then the close.
    let mut r = Raw::upgrade(ws_addr(&g), "/");
    let cid = g.event(EventKind::Connect).cid;
    for seq in 1..=3 {
        let p = g.packet.encode(1, seq, b"x").unwrap();
        g.run(g.sessions().push(Kind::Conn, cid, p)).expect("push");
    }
    g.run(g.sessions().disconnect(Kind::Conn, cid, false))
        .expect("graceful disconnect");
    for seq in 1..=3 {
        let p = g.packet.encode(1, seq, b"x").unwrap().to_vec();
        assert_eq!(r.read_frame(ms(2000)), RawRead::Frame(0x82, p));
    }
    assert_eq!(r.rest_until_eof(ms(2000)), bye, "graceful");
    assert_eq!(g.event(EventKind::Disconnect).cid, cid);
    assert_served(&g);
}

/// Item 37: Ping → Pong with the same payload (empty, short, 125 bytes); no due heartbeat.
#[test]
fn ping_is_answered_with_pong() {
    let g = TestGate::ws("");
    let mut r = Raw::upgrade(ws_addr(&g), "/");
    let long: Vec<u8> = (0..125u8).collect();
    for p in [b"".to_vec(), b"hello-ping".to_vec(), long] {
        assert!(r.send(&client_frame(0x89, &p)));
        assert_eq!(r.read_frame(ms(5000)), RawRead::Frame(0x8a, p));
    }
    assert_eq!(r.read_frame(ms(150)), RawRead::Timeout);
    // An unsolicited pong is ignored.
    assert!(r.send(&client_frame(0x8a, b"x")));
    assert_eq!(r.read_frame(ms(150)), RawRead::Timeout);
    r.heartbeat_roundtrip(&hex(H1), &hex(H1));
    g.no_delivery_within(ms(50));
}

// ---------------------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------------------

/// Slowloris: partial request heads (stalled, or trickled a byte at a time) are closed after
/// `handshakeTimeout` without a response, while new connections are served meanwhile; a slow
/// but complete head within the timeout is upgraded; the timeout ends at the 101.
#[test]
fn slowloris_upgrade_is_cut_at_handshake_timeout() {
    let g = TestGate::ws("handshakeTimeout = \"500ms\"");
    let timeout = ms(500);
    let t0 = Instant::now();
    // Partial heads, and connections that never send a byte.
    let mut stalled: Vec<Raw> = (0..10)
        .map(|i| {
            let mut r = Raw::connect(ws_addr(&g));
            if i % 5 != 0 {
                assert!(r.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"));
            }
            r
        })
        .collect();
    assert_served(&g);
    assert!(
        t0.elapsed() < timeout - ms(100),
        "served while the slowloris connections were pending ({:?})",
        t0.elapsed()
    );
    for r in &mut stalled {
        assert_eq!(
            r.rest_until_eof(ms(3000)),
            b"",
            "no response to a partial head"
        );
    }
    assert_window(
        "stalled heads closed",
        t0.elapsed(),
        timeout - ms(50),
        timeout + ms(300),
    );

    // Trickle: one byte every 50 ms never completes a head.
    let mut r = Raw::connect(ws_addr(&g));
    let t0 = Instant::now();
    let head = upgrade_request("/", "");
    let mut closed_at = None;
    for b in head.as_bytes().iter().take(60) {
        if !r.send(&[*b]) {
            closed_at = Some(t0.elapsed());
            break;
        }
        match r.fill(Instant::now() + ms(50)) {
            Fill::Eof => {
                closed_at = Some(t0.elapsed());
                break;
            }
            Fill::Data => panic!("unexpected response: {:?}", String::from_utf8_lossy(&r.buf)),
            Fill::Timeout => {}
        }
    }
    assert_window(
        "trickled head closed",
        closed_at.expect("trickled head closed"),
        timeout - ms(50),
        timeout + ms(300),
    );
    assert!(r.buf.is_empty());

    // A complete head sent in three parts within the timeout is upgraded.
    let mut r = Raw::connect(ws_addr(&g));
    let head = upgrade_request("/", "");
    for part in [&head[..10], &head[10..40], &head[40..]] {
        assert!(r.send(part.as_bytes()));
        std::thread::sleep(ms(60));
    }
    assert_eq!(r.response(ms(2000)).unwrap().head, SWITCHING);
    // The handshake timeout no longer applies once upgraded.
    std::thread::sleep(ms(800));
    r.heartbeat_roundtrip(&hex(H1), &hex(H1));
    assert_served(&g);
}

/// Text messages are ignored — even one whose bytes form a valid data packet — and do not
/// disturb the connection.
#[test]
fn text_messages_are_ignored() {
    let g = TestGate::ws("");
    let (mut c, cid) = g.connect_ws_with_cid();
    let d7 = String::from_utf8(hex(D7)).unwrap();
    c.send_text(&d7);
    c.send_text("hello");
    c.send_text("");
    g.no_delivery_within(ms(150));
    c.silent_for(ms(50));
    c.heartbeat();
    assert_eq!(c.binary(), hex(H1));
    c.send_binary(&hex(D7));
    let d = g.delivery();
    assert_eq!((d.cid, d.frame.as_ref()), (cid, &hex(D7)[..]));
    assert_served(&g);
}

/// A text message that is not UTF-8: gorilla does not validate text, so due ignores it like any
/// text message and keeps the connection.
#[test]
fn invalid_utf8_text_is_ignored() {
    let g = TestGate::ws("");
    let mut r = Raw::upgrade(ws_addr(&g), "/");
    assert!(r.send(&client_frame(0x81, &hex(H1))));
    assert_eq!(r.read_frame(ms(150)), RawRead::Timeout);
    r.heartbeat_roundtrip(&hex(H1), &hex(H1));
}

/// Garbage instead of an HTTP request: a malformed head gets 400; a head over the limit gets
/// 431; bytes that never form a head are cut at the handshake timeout. The gate keeps serving.
#[test]
fn garbage_instead_of_http() {
    let g = TestGate::ws("handshakeTimeout = \"500ms\"");
    for junk in [
        b"HELLO WORLD\r\n\r\n".to_vec(),
        b"\x00\xff\xfe\x01junk\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(),
    ] {
        let resp = http(ws_addr(&g), &junk).expect("a response");
        assert_eq!(resp.status, 400, "{:?}", String::from_utf8_lossy(&junk));
    }
    assert_served(&g);

    let mut r = Raw::connect(ws_addr(&g));
    let mut big = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20_000));
    r.send(&big);
    let resp = r.response(ms(2000)).expect("a response");
    assert_eq!(resp.status, 431);
    assert_eq!(r.rest_until_eof(ms(2000)), b"");
    assert_served(&g);

    let mut r = Raw::connect(ws_addr(&g));
    let t0 = Instant::now();
    r.send(&hex("16 03 01 02 00 01 00 01 fc 03 03 00 11 22 33"));
    assert_eq!(r.rest_until_eof(ms(3000)), b"");
    assert_window("TLS hello on ws://", t0.elapsed(), ms(450), ms(800));
    assert_served(&g);
}

/// Oversize input is refused with a close: a 5010-byte message (one over the default cap), a
/// frame header announcing 2^40 bytes, and a message over the cap in small fragments. 5009 bytes
/// and a 13-byte heartbeat on the smallest config pass; `lenientInbound` forwards 5010 bytes.
#[test]
fn oversize_messages_close_the_connection() {
    let g = TestGate::ws("");
    let mut over = hex("00 00 13 8e 00 00 01 00 01");
    over.extend(std::iter::repeat_n(0u8, 5001));
    assert_eq!(over.len(), 5010);

    let mut c = g.connect_ws();
    let t0 = Instant::now();
    c.send_binary(&over);
    assert_oversize_close(&mut c);
    assert!(t0.elapsed() < ms(1000));
    g.no_delivery_within(ms(100));
    assert_served(&g);

    let mut r = Raw::upgrade(ws_addr(&g), "/");
    let mut f = frame_header(0x82, 1 << 40, true);
    f.extend_from_slice(&[1, 2, 3, 4]);
    f.extend_from_slice(&[0u8; 64]);
    let t0 = Instant::now();
    r.send(&f);
    let rest = r.rest_until_eof(ms(2000));
    assert!(rest.is_empty() || rest == hex("88 02 03 f1"), "{rest:02x?}");
    assert!(t0.elapsed() < ms(1000));
    assert_served(&g);

    let mut r = Raw::upgrade(ws_addr(&g), "/");
    r.send(&client_frame(0x02, &over[..2000]));
    r.send(&client_frame(0x00, &over[2000..4000]));
    r.send(&client_frame(0x80, &over[4000..]));
    let rest = r.rest_until_eof(ms(2000));
    assert!(rest.is_empty() || rest == hex("88 02 03 f1"), "{rest:02x?}");
    g.no_delivery_within(ms(100));
    assert_served(&g);

    let mut c = g.connect_ws();
    c.send_binary(&over[..5009]);
    c.heartbeat();
    assert_eq!(c.binary(), hex(H1));

    let g = TestGate::start(
        "[packet]\nrouteBytes = 1\nseqBytes = 0\nbufferBytes = 0\n[network.ws.server]\naddr = \"127.0.0.1:0\"\n",
    );
    let mut c = g.connect_ws();
    c.send_binary(&hex("00000009 80 0000000000000000"));
    assert_eq!(c.binary(), hex(H1));

    let g = TestGate::start(
        "[network.ws.server]\naddr = \"127.0.0.1:0\"\n[gatehouse]\nlenientInbound = true\n",
    );
    let mut c = g.connect_ws();
    c.send_binary(&over);
    assert_eq!(g.delivery().frame.as_ref(), &over[..]);
}

/// Closed either plainly or with Close(1009) first (client-protocol.md §3.4 allows both); nothing
/// else.
fn assert_oversize_close(c: &mut WsClient) {
    match c.read_message(ms(2000)) {
        WsRead::Closed => {}
        WsRead::Close(Some((1009, _))) => {
            assert_eq!(c.read_message(ms(2000)), WsRead::Closed)
        }
        other => panic!("expected the connection to close, got {other:?}"),
    }
}

/// An unmasked client frame is a protocol error: gorilla's Close(1002, "bad MASK"), then the
/// connection is closed, and the frame is not processed. Reserved bits likewise.
#[test]
fn unmasked_client_frame_closes_the_connection() {
    let g = TestGate::ws("");
    let mut r = Raw::upgrade(ws_addr(&g), "/");
    let cid = g.event(EventKind::Connect).cid;
    let mut f = frame_header(0x82, 5, false);
    f.extend_from_slice(&hex(H1));
    r.send(&f);
    let rest = r.rest_until_eof(ms(2000));
    assert_eq!(
        rest,
        [&hex("88 0a 03 ea")[..], b"bad MASK"].concat(),
        "{rest:02x?}"
    );
    assert_eq!(g.event(EventKind::Disconnect).cid, cid);

    let mut r = Raw::upgrade(ws_addr(&g), "/");
    let cid = g.event(EventKind::Connect).cid;
    r.send(&client_frame(0xc2, &hex(H1)));
    let rest = r.rest_until_eof(ms(2000));
    assert_eq!(
        rest,
        [&hex("88 0a 03 ea")[..], b"RSV1 set"].concat(),
        "{rest:02x?}"
    );
    assert_eq!(g.event(EventKind::Disconnect).cid, cid);
    g.no_delivery_within(ms(50));
    assert_served(&g);
}

/// Bytes sent after the request head, before the 101: gorilla drops the connection without a
/// response; so does the gate. No session is created.
#[test]
fn bytes_before_the_101_drop_the_connection() {
    let g = TestGate::ws("");
    for extra in [client_frame(0x82, &hex(H1)), b"x".to_vec()] {
        let mut r = Raw::connect(ws_addr(&g));
        let mut b = upgrade_request("/", "").into_bytes();
        b.extend_from_slice(&extra);
        r.send(&b);
        assert_eq!(r.rest_until_eof(ms(2000)), b"");
    }
    std::thread::sleep(ms(50));
    assert_eq!(g.observed.try_iter().count(), 0, "no Connect event");
    assert_served(&g);
}

/// WSS: with certFile/keyFile the upgrade and the framing run over TLS — heartbeat, a 5009-byte
/// push as one frame, a fragmented client packet, ping/pong, and the Close echo.
#[test]
fn wss_over_tls() {
    let dir = TempDir::new("wss");
    let cert = TestCert::new(&dir);
    let g = TestGate::ws(&cert.server_keys);
    let mut tls = cert.connect(ws_addr(&g));
    let mut buf = Vec::new();
    let fill = |tls: &mut rustls::StreamOwned<_, TcpStream>, buf: &mut Vec<u8>| {
        let mut chunk = [0u8; 16384];
        match tls.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    };
    tls.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        assert!(fill(&mut tls, &mut buf), "no 101");
    }
    assert_eq!(buf, SWITCHING.as_bytes());
    buf.clear();
    let cid = g.event(EventKind::Connect).cid;
    let mut next_frame = |tls: &mut rustls::StreamOwned<_, TcpStream>| loop {
        if let Some((b0, p, used)) = parse_server_frame(&buf) {
            buf.drain(..used);
            return Some((b0, p));
        }
        if !fill(tls, &mut buf) {
            assert!(buf.is_empty(), "EOF inside a frame");
            return None;
        }
    };

    tls.write_all(&client_frame(0x82, &hex(H1))).unwrap();
    assert_eq!(next_frame(&mut tls), Some((0x82, hex(H1))));

    let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let big = g.packet.encode(1, 1, &payload).unwrap();
    g.run(g.sessions().push(Kind::Conn, cid, big.clone()))
        .expect("push");
    assert_eq!(next_frame(&mut tls), Some((0x82, big.to_vec())));

    let pkt = g.packet.encode(1, 2, &payload).unwrap().to_vec();
    let mut two = client_frame(0x02, &pkt[..4096]);
    two.extend(client_frame(0x89, b"mid"));
    two.extend(client_frame(0x80, &pkt[4096..]));
    tls.write_all(&two).unwrap();
    assert_eq!(next_frame(&mut tls), Some((0x8a, b"mid".to_vec())));
    assert_eq!(g.delivery().frame.as_ref(), &pkt[..]);

    tls.write_all(&client_frame(0x88, &hex("0f a1 62 79 65")))
        .unwrap();
    assert_eq!(next_frame(&mut tls), Some((0x88, hex("0f a1"))));
    assert_eq!(next_frame(&mut tls), None);
    assert_eq!(g.event(EventKind::Disconnect).cid, cid);
}
