//! PROXY protocol v1 and v2 on real gates (in-process, real sockets): the header's address is
//! the connection's IP (`getIP`) on TCP, TLS, WS and WSS listeners; the bytes sent with the
//! header (first packet, ClientHello, upgrade request) are kept; untrusted peers, garbage, the
//! other version, oversized, truncated and stalled headers are closed while others are served.

mod common;

use common::*;
use gatehouse::dispatch::{EventKind, Observed};
use gatehouse::session::{Kind, Transport};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The gate's bound on a header (`listener::PROXY_HEADER_TIMEOUT`).
const HEADER_BOUND: Duration = gatehouse::listener::PROXY_HEADER_TIMEOUT;

fn v1(client: SocketAddr) -> Vec<u8> {
    let fam = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    let dst = if client.is_ipv4() {
        "10.0.0.1"
    } else {
        "fd00::1"
    };
    format!(
        "PROXY {fam} {} {dst} {} 3553\r\n",
        client.ip(),
        client.port()
    )
    .into_bytes()
}

/// A v2 PROXY header naming `client`, with an ALPN and an authority TLV.
fn v2(client: SocketAddr) -> Vec<u8> {
    let mut body = Vec::new();
    let fam = match client.ip() {
        IpAddr::V4(ip) => {
            body.extend_from_slice(&ip.octets());
            body.extend_from_slice(&[10, 0, 0, 1]);
            0x11
        }
        IpAddr::V6(ip) => {
            body.extend_from_slice(&ip.octets());
            body.extend_from_slice(&"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
            0x21
        }
    };
    body.extend_from_slice(&client.port().to_be_bytes());
    body.extend_from_slice(&3553u16.to_be_bytes());
    body.extend_from_slice(&[0x01, 0, 2, b'h', b'2', 0x02, 0, 4, b'g', b'a', b't', b'e']);
    v2_raw(0x21, fam, &body)
}

fn v2_raw(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[cmd, fam]);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(body);
    h
}

/// A socket whose first write carries the PROXY header in front of the client's first bytes,
/// in one `write`: what follows the header arrives with it and must not be lost.
struct Proxied {
    sock: TcpStream,
    header: Option<Vec<u8>>,
}

impl Proxied {
    fn connect(addr: SocketAddr, header: Vec<u8>) -> Proxied {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_nodelay(true).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Proxied {
            sock,
            header: Some(header),
        }
    }
}

impl Read for Proxied {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.sock.read(buf)
    }
}

impl Write for Proxied {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.header.take() {
            Some(mut first) => {
                first.extend_from_slice(buf);
                self.sock.write_all(&first)?;
                Ok(buf.len())
            }
            None => self.sock.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sock.flush()
    }
}

trait Duplex: Read + Write {}
impl<T: Read + Write> Duplex for T {}

/// A due client over any of the four paths, behind a PROXY header.
enum Client {
    Tcp(Box<dyn Duplex>),
    Ws(Box<tungstenite::WebSocket<Box<dyn Duplex>>>),
}

impl Client {
    fn open(g: &TestGate, t: Transport, cert: Option<&TestCert>, header: Vec<u8>) -> Client {
        let sock = Proxied::connect(g.addr(t), header);
        let stream: Box<dyn Duplex> = match cert {
            None => Box::new(sock),
            Some(cert) => Box::new(tls(cert, sock)),
        };
        match t {
            Transport::Tcp => Client::Tcp(stream),
            Transport::Kcp => unreachable!("no PROXY header on UDP"),
            Transport::Ws => {
                let url = format!("ws://{}/", g.addr(t));
                let (ws, _) = tungstenite::client::client(url, stream).expect("ws upgrade");
                Client::Ws(Box::new(ws))
            }
        }
    }

    fn send(&mut self, frame: &[u8]) {
        match self {
            Client::Tcp(s) => s.write_all(frame).and_then(|_| s.flush()).unwrap(),
            Client::Ws(ws) => ws
                .send(tungstenite::Message::binary(frame.to_vec()))
                .unwrap(),
        }
    }

    /// A heartbeat and its answer: the connection is served.
    fn heartbeat(&mut self) {
        self.send(&hex("0000000180"));
        let reply = match self {
            Client::Tcp(s) => {
                let mut r = [0u8; 5];
                s.read_exact(&mut r).expect("heartbeat answer");
                r.to_vec()
            }
            Client::Ws(ws) => match ws.read().expect("heartbeat answer") {
                tungstenite::Message::Binary(b) => b.to_vec(),
                other => panic!("expected a binary message, got {other:?}"),
            },
        };
        assert_eq!(reply, hex("0000000180"));
    }
}

fn tls(cert: &TestCert, sock: Proxied) -> rustls::StreamOwned<rustls::ClientConnection, Proxied> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// A gate with TCP and WS servers (both TLS when `keys` is not empty) under `[gatehouse]`
/// lines `proxy`.
fn gate(proxy: &str, keys: &str) -> TestGate {
    TestGate::start(&format!(
        "[network.tcp.server]\naddr = \"127.0.0.1:0\"\n{keys}\n\
         [network.ws.server]\naddr = \"127.0.0.1:0\"\n{keys}\n\
         [gatehouse]\n{proxy}\n"
    ))
}

/// The IP the gate holds for `cid` (what getIP answers).
fn ip_of(g: &TestGate, cid: i64) -> IpAddr {
    g.run(g.sessions().get_ip(Kind::Conn, cid)).expect("getIP")
}

/// Asserts nothing was admitted since the last look (no Connect event waiting).
fn no_connect(g: &TestGate) {
    while let Ok(o) = g.observed.try_recv() {
        assert!(
            !matches!(o, Observed::Event(ref e) if e.kind == EventKind::Connect),
            "a refused connection was admitted: {o:?}"
        );
    }
}

/// Both versions on every path: getIP answers the header's address, the packet sent in the
/// same write as the header (TCP) or after the handshakes it carried (TLS, WS, WSS) arrives.
fn header_names_the_client(tls_on: bool) {
    let dir = TempDir::new("proxy-paths");
    let cert = TestCert::new(&dir);
    let keys = if tls_on {
        cert.server_keys.as_str()
    } else {
        ""
    };
    let g = gate(
        "proxyProtocol = \"any\"\nproxyTrusted = [\"127.0.0.1\", \"::1\"]",
        keys,
    );
    let cert = tls_on.then_some(&cert);
    let mut n = 0u16;
    for t in [Transport::Tcp, Transport::Ws] {
        for (version, header) in [("v1", v1 as fn(SocketAddr) -> Vec<u8>), ("v2", v2)] {
            for client in ["203.0.113.7", "2001:db8::42"] {
                n += 1;
                let client = SocketAddr::new(client.parse().unwrap(), 40000 + n);
                let what = format!("{t:?} {version} tls={tls_on} {client}");
                let mut c = Client::open(&g, t, cert, header(client));
                // TCP without TLS: the first packet rides in the header's segment.
                let first = g.packet.encode(1, i32::from(n), what.as_bytes()).unwrap();
                c.send(&first);
                let cid = g.event(EventKind::Connect).cid;
                assert_eq!(ip_of(&g, cid), client.ip(), "{what}");
                let d = g.delivery();
                assert_eq!((d.cid, d.frame.as_ref()), (cid, &first[..]), "{what}");
                c.heartbeat();
            }
        }
    }
}

#[test]
fn header_names_the_client_tcp_and_ws() {
    header_names_the_client(false)
}

#[test]
fn header_names_the_client_tls_and_wss() {
    header_names_the_client(true)
}

/// v2 LOCAL (a proxy's health check) and v1 UNKNOWN: the socket's own peer is the client.
#[test]
fn local_and_unknown_use_the_socket_peer() {
    let g = gate(
        "proxyProtocol = \"any\"\nproxyTrusted = [\"127.0.0.0/8\"]",
        "",
    );
    for (what, header) in [
        ("v2 LOCAL", v2_raw(0x20, 0x00, &[])),
        ("v2 UNSPEC", v2_raw(0x21, 0x00, &[])),
        ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n".to_vec()),
    ] {
        let mut c = Client::open(&g, Transport::Tcp, None, header);
        c.heartbeat();
        let cid = g.event(EventKind::Connect).cid;
        assert_eq!(ip_of(&g, cid), IpAddr::from([127, 0, 0, 1]), "{what}");
    }
}

/// A raw socket from `source` (any 127.0.0.0/8 address works on loopback).
fn raw_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_nodelay(true).unwrap();
    s
}

/// Waits (bounded) until the gate closes `s` without sending a byte; returns when it did.
fn closed_by_gate(s: &mut TcpStream, bound: Duration, what: &str) -> Instant {
    s.set_read_timeout(Some(bound)).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => Instant::now(),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Instant::now(),
        Ok(n) => panic!("{what}: the gate answered {:?}", &b[..n]),
        Err(e) => panic!("{what}: still open after {bound:?} ({e})"),
    }
}

/// Every refusal closes the socket before anything is admitted, while a client on each
/// listener keeps being served between them.
#[test]
fn refusals_close_the_socket_and_others_are_served() {
    let g = gate(
        "proxyProtocol = \"any\"\nproxyTrusted = [\"127.0.0.1/32\"]",
        "",
    );
    let good = |t, n: u8| {
        let mut c = Client::open(&g, t, None, v1(SocketAddr::from(([198, 51, 100, n], 1000))));
        // (Plain TCP: the header goes out with this first write.)
        c.heartbeat();
        let cid = g.event(EventKind::Connect).cid;
        assert_eq!(ip_of(&g, cid), IpAddr::from([198, 51, 100, n]));
        c
    };
    let mut tcp = good(Transport::Tcp, 1);
    let mut ws = good(Transport::Ws, 2);
    let mut oversized_v2 = v2_raw(0x21, 0x11, &[0; 12]);
    oversized_v2[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    let mut oversized_v1 = b"PROXY TCP4 ".to_vec();
    oversized_v1.resize(300, b'1');
    let valid = v1(SocketAddr::from(([192, 0, 2, 1], 1)));
    let cases: Vec<(&str, [u8; 4], Vec<u8>)> = vec![
        (
            "untrusted peer with a valid header",
            [127, 0, 0, 2],
            valid.clone(),
        ),
        (
            "no header: a due heartbeat",
            [127, 0, 0, 1],
            hex("0000000180"),
        ),
        (
            "garbage",
            [127, 0, 0, 1],
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "v1 with a bad address",
            [127, 0, 0, 1],
            b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n".to_vec(),
        ),
        ("oversized v1", [127, 0, 0, 1], oversized_v1),
        ("oversized v2 (length 65535)", [127, 0, 0, 1], oversized_v2),
    ];
    for t in [Transport::Tcp, Transport::Ws] {
        for (what, source, bytes) in &cases {
            let what = format!("{t:?}: {what}");
            let mut s = raw_from(*source, g.addr(t));
            // An untrusted peer may be closed before its bytes arrive.
            let _ = s.write_all(bytes);
            closed_by_gate(&mut s, Duration::from_secs(2), &what);
            tcp.heartbeat();
            ws.heartbeat();
            no_connect(&g);
        }
        // Truncated: part of a header, then the peer closes its side.
        let mut s = raw_from([127, 0, 0, 1], g.addr(t));
        s.write_all(&valid[..10]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        closed_by_gate(&mut s, Duration::from_secs(2), "truncated");
        // Untrusted and silent: closed before it sends anything.
        let mut s = raw_from([127, 0, 0, 3], g.addr(t));
        closed_by_gate(&mut s, Duration::from_secs(2), "untrusted, silent");
        tcp.heartbeat();
        ws.heartbeat();
        no_connect(&g);
    }

    // Stalled: half a header, then nothing. Closed once the bound passes, not before; the
    // others are served meanwhile.
    let start = Instant::now();
    let mut stalled: Vec<TcpStream> = [Transport::Tcp, Transport::Ws]
        .into_iter()
        .map(|t| {
            let mut s = raw_from([127, 0, 0, 1], g.addr(t));
            s.write_all(&valid[..12]).unwrap();
            s
        })
        .collect();
    tcp.heartbeat();
    ws.heartbeat();
    for s in &mut stalled {
        let at = closed_by_gate(s, HEADER_BOUND * 2, "stalled header");
        let waited = at - start;
        assert!(
            waited >= HEADER_BOUND - Duration::from_millis(100),
            "closed after {waited:?}, before the {HEADER_BOUND:?} bound"
        );
    }
    tcp.heartbeat();
    ws.heartbeat();
    no_connect(&g);
}

/// `v1` and `v2` accept only their own version; the other is refused as malformed.
#[test]
fn each_mode_takes_its_own_version() {
    let client = SocketAddr::from(([203, 0, 113, 9], 5000));
    for (mode, good, bad) in [
        ("v1", v1(client), v2(client)),
        ("v2", v2(client), v1(client)),
    ] {
        let g = gate(
            &format!("proxyProtocol = {mode:?}\nproxyTrusted = [\"127.0.0.1\"]"),
            "",
        );
        let mut s = raw_from([127, 0, 0, 1], g.addr(Transport::Tcp));
        s.write_all(&bad).unwrap();
        closed_by_gate(&mut s, Duration::from_secs(2), mode);
        let mut c = Client::open(&g, Transport::Tcp, None, good);
        c.heartbeat();
        let cid = g.event(EventKind::Connect).cid;
        assert_eq!(ip_of(&g, cid), client.ip(), "{mode}");
    }
}

/// With proxyProtocol off (the default) a header is not special: a client that sends one is
/// served as before, from its socket address, and the header bytes are client input.
#[test]
fn off_by_default() {
    let g = gate("", "");
    let mut c = Client::open(&g, Transport::Tcp, None, Vec::new());
    c.heartbeat();
    let cid = g.event(EventKind::Connect).cid;
    assert_eq!(ip_of(&g, cid), IpAddr::from([127, 0, 0, 1]));
}
