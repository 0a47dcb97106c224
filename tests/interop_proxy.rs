//! PROXY protocol in a real cluster: clients behind a (simulated) load balancer reach a real
//! due v2.4.1 Go node through gatehouse, and the node's `GetIP` answers the address the PROXY
//! header named, not the balancer's. Every combination: TCP and WS, plain and TLS, v1 and v2.
//! Real Redis, Consul agent and Go node (tests/interop_support); the clients are Rust, since
//! due's Go clients cannot send a PROXY header.
//!
//! due's getip answer carries an IPv4 address only (an IPv6 one reads as 0.0.0.0 at the node,
//! `drpc/getip.rs`), so the headers here name IPv4 clients; IPv6 headers are covered in-process
//! by tests/proxy_protocol.rs.
//!
//! Skipped (with a message) when the Go peers, redis-server or consul are missing, unless
//! `GATEHOUSE_REQUIRE_SERVICES=1` (then it fails).

mod interop_support;

use interop_support::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn v1(client: SocketAddr) -> Vec<u8> {
    format!(
        "PROXY TCP4 {} 10.0.0.1 {} 3553\r\n",
        client.ip(),
        client.port()
    )
    .into_bytes()
}

fn v2(client: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(c) = client else {
        panic!("IPv4 only")
    };
    let mut body = c.ip().octets().to_vec();
    body.extend_from_slice(&[10, 0, 0, 1]);
    body.extend_from_slice(&c.port().to_be_bytes());
    body.extend_from_slice(&3553u16.to_be_bytes());
    // An ALPN TLV ("h2") and a NOOP TLV of one byte.
    body.extend_from_slice(&[0x01, 0, 2, b'h', b'2', 0x04, 0, 1, 0]);
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11]);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

/// A socket whose first write sends the PROXY header and the client's first bytes together.
struct Proxied {
    sock: TcpStream,
    header: Option<Vec<u8>>,
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

enum Client {
    Tcp(Box<dyn Duplex>, Vec<u8>),
    Ws(Box<tungstenite::WebSocket<Box<dyn Duplex>>>),
}

/// A due data frame with the interop `[packet]` layout: size, header 0, route and seq (2 bytes
/// each, big-endian), payload.
fn frame(route: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = ((5 + payload.len()) as u32).to_be_bytes().to_vec();
    f.push(0);
    f.extend_from_slice(&route.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

impl Client {
    fn open(
        addr: SocketAddr,
        ws: bool,
        tls: Option<&Arc<rustls::ClientConfig>>,
        header: Vec<u8>,
    ) -> Client {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_nodelay(true).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let sock = Proxied {
            sock,
            header: Some(header),
        };
        let stream: Box<dyn Duplex> = match tls {
            None => Box::new(sock),
            Some(config) => {
                let conn =
                    rustls::ClientConnection::new(config.clone(), "localhost".try_into().unwrap())
                        .unwrap();
                Box::new(rustls::StreamOwned::new(conn, sock))
            }
        };
        if ws {
            let (ws, _) =
                tungstenite::client::client(format!("ws://{addr}/"), stream).expect("ws upgrade");
            Client::Ws(Box::new(ws))
        } else {
            Client::Tcp(stream, Vec::new())
        }
    }

    fn send(&mut self, f: &[u8]) {
        match self {
            Client::Tcp(s, _) => s.write_all(f).and_then(|_| s.flush()).unwrap(),
            Client::Ws(ws) => ws.send(tungstenite::Message::binary(f.to_vec())).unwrap(),
        }
    }

    /// The next frame, `None` after 5 s.
    fn read(&mut self) -> Option<Vec<u8>> {
        match self {
            Client::Tcp(s, buf) => loop {
                if buf.len() >= 4 {
                    let size = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                    if buf.len() >= 4 + size {
                        let rest = buf.split_off(4 + size);
                        return Some(std::mem::replace(buf, rest));
                    }
                }
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            },
            Client::Ws(ws) => match ws.read() {
                Ok(tungstenite::Message::Binary(b)) => Some(b.to_vec()),
                _ => None,
            },
        }
    }
}

/// A self-signed `localhost` certificate: the gate's `certFile`/`keyFile` lines and a client
/// configuration trusting only it.
fn certificate(dir: &std::path::Path) -> (String, Arc<rustls::ClientConfig>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.join("proxy-cert.pem"), dir.join("proxy-key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let lines = format!(
        "certFile = {:?}\nkeyFile = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    (lines, Arc::new(config))
}

#[test]
fn due_node_getip_answers_the_header_address() {
    if !available() {
        return;
    }
    let t0 = Instant::now();
    let env = Env::start("proxy-gh");
    let (keys, tls_client) = certificate(&env.dir.0);
    let proxy = (
        "[log]\n",
        "[gatehouse]\nproxyProtocol = \"any\"\nproxyTrusted = [\"127.0.0.1/32\"]\n\n[log]\n",
    );
    let tls_keys = format!("maxConnNum = 5000\n{keys}");
    let tls_edit = ("maxConnNum = 5000\n", tls_keys.as_str());
    let plain = Gate::start_with(
        GateKind::Gatehouse,
        Proto::Tcp,
        "gh-proxy-plain",
        "rr",
        &env,
        &[proxy],
    );
    let tls = Gate::start_with(
        GateKind::Gatehouse,
        Proto::Tcp,
        "gh-proxy-tls",
        "rr",
        &env,
        &[proxy, tls_edit],
    );
    let node = Node::start(&env, 1, 0);
    for g in [&plain, &tls] {
        wait_until(&format!("node sees gate {}", g.gid), START, || {
            node.has_gate(&g.gid)
        });
    }

    // One client: its header names `client`; the node's getip must answer `client`'s address.
    // Returns the cid.
    let check = |g: &Gate, ws: bool, tls_on: bool, header: Vec<u8>, client: SocketAddr, n: u16| {
        let what = format!("{} ws={ws} tls={tls_on} {client}", g.gid);
        let addr = if ws { g.ws } else { g.tcp };
        let mut c = Client::open(addr, ws, tls_on.then_some(&tls_client), header);
        // The gate routes once its registry watch has seen the node: resend until the echo
        // comes back (bounded).
        let start = Instant::now();
        let payload = loop {
            let p = format!("proxy-{n}-{}", start.elapsed().as_millis());
            let f = frame(1, n, p.as_bytes());
            c.send(&f);
            if c.read().as_deref() == Some(&f[..]) {
                break p;
            }
            assert!(start.elapsed() < START, "{what}: no echo from the node");
        };
        let m = node
            .proc
            .wait_event(&format!("message {payload}"), WAIT, |v| {
                v["event"] == "message" && v["payload"] == payload.as_str()
            });
        assert_eq!(m["gid"], g.gid.as_str(), "{what}: {m}");
        let cid = m["cid"].as_i64().unwrap();
        let target = cid.to_string();
        let q = [
            ("kind", "conn"),
            ("gid", g.gid.as_str()),
            ("target", &target),
        ];
        assert_eq!(
            node.ok("/getip", &q, ""),
            json!(client.ip().to_string()),
            "{what}"
        );
        (c, cid)
    };

    let mut n = 0u16;
    let mut clients = Vec::new();
    for (g, tls_on) in [(&plain, false), (&tls, true)] {
        for ws in [false, true] {
            for header in [v1 as fn(SocketAddr) -> Vec<u8>, v2] {
                n += 1;
                let client = SocketAddr::from((Ipv4Addr::new(203, 0, 113, n as u8), 50000 + n));
                clients.push(check(g, ws, tls_on, header(client), client, n));
            }
        }
    }

    // A peer that is not the trusted balancer, with a valid header: closed, never admitted
    // (no Connect reaches the node), and the gate goes on admitting and serving others.
    let connects = |gid: &str| {
        node.proc
            .count_events(|v| v["event"] == "connect" && v["gid"] == gid)
    };
    let before = connects(&plain.gid);
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .unwrap();
    s.connect(&plain.tcp.into()).unwrap();
    let mut s: TcpStream = s.into();
    let _ = s.write_all(&v1(SocketAddr::from(([192, 0, 2, 1], 1))));
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("untrusted peer: {other:?}"),
    }
    let client = SocketAddr::from(([198, 51, 100, 1], 1));
    let (_after, cid) = check(&plain, false, false, v2(client), client, 99);
    node.proc
        .wait_event("connect of the client after", WAIT, |v| {
            v["event"] == "connect" && v["cid"] == cid && v["gid"] == plain.gid.as_str()
        });
    assert_eq!(
        connects(&plain.gid),
        before + 1,
        "only the trusted client was admitted"
    );
    eprintln!("[proxy] {} clients checked in {:.1?}", n + 1, t0.elapsed());
}
