//! Test harness: starts a real gate in-process (real sockets, real shards) with a config written
//! as TOML, observes what reaches its upstream, and speaks the due client protocol over TCP.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::config;
use gatehouse::dispatch::{
    ChannelUpstream, Delivery, EventKind, GateEvent, Observed, UpstreamFactory,
};
use gatehouse::gate::Gate;
use gatehouse::packet::PacketConfig;
use gatehouse::session::{Sessions, Transport};

/// A unique scratch directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("gatehouse-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A gate running in this test process, with everything its shards send upstream captured.
pub struct TestGate {
    pub gate: Option<Gate>,
    pub observed: flume::Receiver<Observed>,
    pub packet: PacketConfig,
    _dir: TempDir,
}

/// The settings every test gate shares: loopback, random ports, two unpinned shards.
pub const BASE: &str = "[log]\nlevel = \"warn\"\nterminals = [\"console\"]\n";
const SHARDS: &str = "shards = 2\npin = false\n";

impl TestGate {
    /// Starts a gate from `toml` (appended to [`BASE`]); servers should use `127.0.0.1:0`.
    pub fn start(toml: &str) -> TestGate {
        Self::start_inner(toml, None)
    }

    /// Like [`TestGate::start`] with the shards' upstream built by `upstream` (deliveries and
    /// events then go there instead of to `observed`).
    pub fn start_with(toml: &str, upstream: UpstreamFactory) -> TestGate {
        Self::start_inner(toml, Some(upstream))
    }

    fn start_inner(toml: &str, custom: Option<UpstreamFactory>) -> TestGate {
        gatehouse::logging::init_for_tests();
        let dir = TempDir::new("gate");
        let file = dir.0.join("etc.toml");
        // Two unpinned shards unless the test says otherwise.
        let defaults: String = SHARDS
            .lines()
            .filter(|l| !toml.contains(l.split(' ').next().unwrap_or_default()))
            .map(|l| format!("{l}\n"))
            .collect();
        let toml = if toml.contains("[gatehouse]") {
            toml.replace("[gatehouse]\n", &format!("[gatehouse]\n{defaults}"))
        } else {
            format!("{toml}\n[gatehouse]\n{defaults}")
        };
        std::fs::write(&file, format!("{BASE}\n{toml}")).unwrap();
        let cfg = config::load(&file, None).expect("test config loads");
        let (tx, rx) = flume::unbounded();
        let upstream: UpstreamFactory =
            custom.unwrap_or_else(|| Arc::new(move |_| Box::new(ChannelUpstream(tx.clone()))));
        let gate = Gate::start_with(&cfg, Some(upstream)).expect("gate starts");
        TestGate {
            gate: Some(gate),
            observed: rx,
            packet: cfg.packet,
            _dir: dir,
        }
    }

    /// A TCP gate with the given `[network.tcp.server]` extra lines.
    pub fn tcp(server_extra: &str) -> TestGate {
        Self::start(&format!(
            "[network.tcp.server]\naddr = \"127.0.0.1:0\"\n{server_extra}\n"
        ))
    }

    pub fn gate(&self) -> &Gate {
        self.gate.as_ref().unwrap()
    }

    pub fn sessions(&self) -> Sessions {
        self.gate().sessions.clone()
    }

    pub fn addr(&self, t: Transport) -> SocketAddr {
        self.gate().addr(t).expect("server configured")
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr(Transport::Tcp), self.packet)
    }

    /// A WS gate with the given `[network.ws.server]` extra lines.
    pub fn ws(server_extra: &str) -> TestGate {
        Self::start(&format!(
            "[network.ws.server]\naddr = \"127.0.0.1:0\"\n{server_extra}\n"
        ))
    }

    /// A WebSocket client on `/` of the WS server.
    pub fn connect_ws(&self) -> WsClient {
        WsClient::connect(self.addr(Transport::Ws), self.packet)
    }

    /// Connects over WS and returns the client with its cid (from the Connect event).
    pub fn connect_ws_with_cid(&self) -> (WsClient, i64) {
        let c = self.connect_ws();
        let e = self.event(EventKind::Connect);
        (c, e.cid)
    }

    /// Waits for the next observation matching `pred`, skipping others.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Observed) -> bool,
    ) -> Observed {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.observed.recv_timeout(left) {
                Ok(o) if pred(&o) => return o,
                Ok(_) => continue,
                Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
            }
        }
    }

    /// The next event of `kind` (skipping deliveries and other events).
    pub fn event(&self, kind: EventKind) -> GateEvent {
        match self.wait_for(
            &format!("{kind:?} event"),
            Duration::from_secs(5),
            |o| matches!(o, Observed::Event(e) if e.kind == kind),
        ) {
            Observed::Event(e) => e,
            _ => unreachable!(),
        }
    }

    /// The next event of `kind` for connection `cid`.
    pub fn event_of(&self, kind: EventKind, cid: i64) -> GateEvent {
        match self.wait_for(
            &format!("{kind:?} event of cid {cid}"),
            Duration::from_secs(5),
            |o| matches!(o, Observed::Event(e) if e.kind == kind && e.cid == cid),
        ) {
            Observed::Event(e) => e,
            _ => unreachable!(),
        }
    }

    /// The next delivery (skipping events).
    pub fn delivery(&self) -> Delivery {
        match self.wait_for("delivery", Duration::from_secs(5), |o| {
            matches!(o, Observed::Delivery(_))
        }) {
            Observed::Delivery(d) => d,
            _ => unreachable!(),
        }
    }

    /// Asserts that no delivery arrives within `d`.
    pub fn no_delivery_within(&self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Ok(o) = self.observed.recv_deadline(deadline) {
            assert!(
                !matches!(o, Observed::Delivery(_)),
                "unexpected delivery: {o:?}"
            );
        }
    }

    /// Connects and returns the client with its cid (from the Connect event).
    pub fn connect_with_cid(&self) -> (Client, i64) {
        let c = self.connect();
        let e = self.event(EventKind::Connect);
        (c, e.cid)
    }

    /// Runs a session operation from the test thread.
    pub fn run<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        futures_lite::future::block_on(f)
    }
}

impl Drop for TestGate {
    fn drop(&mut self) {
        if let Some(g) = self.gate.take() {
            g.join();
        }
    }
}

/// A blocking due TCP client.
pub struct Client {
    pub stream: TcpStream,
    pub packet: PacketConfig,
    buf: Vec<u8>,
}

/// What a client read.
#[derive(Debug, PartialEq, Eq)]
pub enum Read1 {
    Frame(Vec<u8>),
    Closed,
    Timeout,
}

impl Client {
    pub fn connect(addr: SocketAddr, packet: PacketConfig) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            packet,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub fn heartbeat(&mut self) {
        let hb = self.packet.heartbeat(0);
        self.send(&hb);
    }

    pub fn data(&mut self, route: i32, seq: i32, payload: &[u8]) -> Vec<u8> {
        let f = self.packet.encode(route, seq, payload).unwrap().to_vec();
        self.send(&f);
        f
    }

    /// Reads one frame, waiting at most `timeout`.
    pub fn read(&mut self, timeout: Duration) -> Read1 {
        let deadline = Instant::now() + timeout;
        loop {
            if self.buf.len() >= 4 {
                let size = self.packet.read_size(&self.buf) as usize;
                if self.buf.len() >= 4 + size {
                    let rest = self.buf.split_off(4 + size);
                    let frame = std::mem::replace(&mut self.buf, rest);
                    return Read1::Frame(frame);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Read1::Timeout;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Read1::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Read1::Timeout
                }
                Err(_) => return Read1::Closed,
            }
        }
    }

    /// Reads one frame or panics.
    pub fn frame(&mut self) -> Vec<u8> {
        match self.read(Duration::from_secs(5)) {
            Read1::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Waits until the gate closes the connection, discarding frames; returns when it happened.
    pub fn wait_closed(&mut self, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read(deadline.saturating_duration_since(Instant::now())) {
                Read1::Closed => return Instant::now(),
                Read1::Frame(_) => continue,
                Read1::Timeout => panic!("connection still open after {timeout:?}"),
            }
        }
    }

    /// Asserts the connection stays open and silent for `d`.
    pub fn silent_for(&mut self, d: Duration) {
        match self.read(d) {
            Read1::Timeout => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }
}

/// What a WebSocket client read.
#[derive(Debug, PartialEq, Eq)]
pub enum WsRead {
    Binary(Vec<u8>),
    Text(String),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A Close frame: `(code, reason)`, `None` when it had no payload.
    Close(Option<(u16, String)>),
    /// The socket closed (EOF/reset) without a Close frame, or after one was read.
    Closed,
    Timeout,
}

/// A blocking due WebSocket client (tungstenite over a std `TcpStream`).
pub struct WsClient {
    pub ws: tungstenite::WebSocket<TcpStream>,
    pub packet: PacketConfig,
}

impl WsClient {
    /// Connects to `ws://addr/` and completes the upgrade; panics on failure.
    pub fn connect(addr: SocketAddr, packet: PacketConfig) -> WsClient {
        Self::connect_with(addr, "/", &[], packet).expect("websocket upgrade")
    }

    /// Connects to `ws://addr{path}` sending the extra request headers; returns the handshake
    /// error (e.g. an HTTP status) instead of panicking.
    pub fn connect_with(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        packet: PacketConfig,
    ) -> Result<WsClient, tungstenite::Error> {
        use tungstenite::client::IntoClientRequest;
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut req = format!("ws://{addr}{path}").into_client_request()?;
        for (k, v) in headers {
            req.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                tungstenite::http::HeaderValue::from_str(v).unwrap(),
            );
        }
        match tungstenite::client::client(req, stream) {
            Ok((ws, _)) => Ok(WsClient { ws, packet }),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
            Err(tungstenite::HandshakeError::Interrupted(_)) => {
                panic!("websocket handshake timed out")
            }
        }
    }

    /// Sends one message; `Err` when the connection is gone.
    pub fn try_send(&mut self, m: tungstenite::Message) -> Result<(), tungstenite::Error> {
        self.ws.send(m)
    }

    /// Sends one binary message or panics.
    pub fn send_binary(&mut self, bytes: &[u8]) {
        self.try_send(tungstenite::Message::binary(bytes.to_vec()))
            .expect("send binary");
    }

    pub fn send_text(&mut self, text: &str) {
        self.try_send(tungstenite::Message::text(text))
            .expect("send text");
    }

    pub fn heartbeat(&mut self) {
        let hb = self.packet.heartbeat(0);
        self.send_binary(&hb);
    }

    /// Sends one data packet as one binary message and returns its bytes.
    pub fn data(&mut self, route: i32, seq: i32, payload: &[u8]) -> Vec<u8> {
        let f = self.packet.encode(route, seq, payload).unwrap().to_vec();
        self.send_binary(&f);
        f
    }

    /// Reads one message (data or control), waiting at most `timeout`.
    pub fn read_message(&mut self, timeout: Duration) -> WsRead {
        use tungstenite::{Error, Message};
        let timeout = timeout.max(Duration::from_millis(1));
        self.ws.get_mut().set_read_timeout(Some(timeout)).unwrap();
        match self.ws.read() {
            Ok(Message::Binary(b)) => WsRead::Binary(b.to_vec()),
            Ok(Message::Text(t)) => WsRead::Text(t.as_str().to_owned()),
            Ok(Message::Ping(p)) => WsRead::Ping(p.to_vec()),
            Ok(Message::Pong(p)) => WsRead::Pong(p.to_vec()),
            Ok(Message::Close(c)) => {
                WsRead::Close(c.map(|c| (u16::from(c.code), c.reason.as_str().to_owned())))
            }
            Ok(Message::Frame(_)) => unreachable!("tungstenite never reads raw frames"),
            Err(Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                WsRead::Timeout
            }
            Err(_) => WsRead::Closed,
        }
    }

    /// Reads one binary message or panics.
    pub fn binary(&mut self) -> Vec<u8> {
        match self.read_message(Duration::from_secs(5)) {
            WsRead::Binary(b) => b,
            other => panic!("expected a binary message, got {other:?}"),
        }
    }

    /// Waits until the socket closes, discarding binary messages; panics on a Close frame or
    /// anything else. Returns when it happened.
    pub fn wait_closed(&mut self, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("connection still open after {timeout:?}");
            }
            match self.read_message(left) {
                WsRead::Closed => return Instant::now(),
                WsRead::Binary(_) => continue,
                WsRead::Timeout => panic!("connection still open after {timeout:?}"),
                other => panic!("expected the socket to close, got {other:?}"),
            }
        }
    }

    /// Asserts the connection stays open and silent for `d`.
    pub fn silent_for(&mut self, d: Duration) {
        match self.read_message(d) {
            WsRead::Timeout => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }
}

pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A loopback port nobody listens on right now (the kernel picks it; racy only in theory).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A self-signed certificate for `localhost` written into `dir`, with the lines that point a
/// server section at it (`certFile = …`, `keyFile = …`).
pub struct TestCert {
    pub der: rustls::pki_types::CertificateDer<'static>,
    pub server_keys: String,
}

impl TestCert {
    pub fn new(dir: &TempDir) -> TestCert {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        TestCert {
            der: ck.cert.der().clone(),
            server_keys: format!(
                "certFile = {:?}\nkeyFile = {:?}",
                cert.display().to_string(),
                key.display().to_string()
            ),
        }
    }

    /// A TLS client to `addr` that trusts only this certificate (3 s read timeout).
    pub fn connect(
        &self,
        addr: SocketAddr,
    ) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(ms(3000))).unwrap();
        rustls::StreamOwned::new(conn, sock)
    }
}

// ---------------------------------------------------------------------------------------------
// The gate's `/metrics` listener (`[gatehouse] metricsAddr`)

/// `GET path` on `addr`: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: gate\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {out:?}"));
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// `GET /metrics`: the exposition (the answer must be 200).
pub fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample `series` (name with labels, as exposed) in `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `/metrics` until `done` holds for the exposition (bounded: 10 s); returns it.
pub fn await_metrics(addr: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(addr);
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never held; last exposition:\n{text}"
        );
        std::thread::sleep(ms(20));
    }
}

/// Polls `/metrics` until `series` reads `want`.
pub fn await_sample(addr: SocketAddr, series: &str, want: f64) -> String {
    await_metrics(addr, &format!("{series} = {want}"), |t| {
        sample(t, series) == Some(want)
    })
}

/// Polls `/metrics` until `series` reads at least `min`. For counts that follow an event the
/// client saw: the gate counts a write right after the system call, so a client may read the
/// bytes a moment before they are counted.
pub fn await_at_least(addr: SocketAddr, series: &str, min: f64) -> String {
    await_metrics(addr, &format!("{series} >= {min}"), |t| {
        sample(t, series).is_some_and(|v| v >= min)
    })
}

/// Whether `tool` is installed (`tool --version` succeeds). Without it the caller skips,
/// unless `GATEHOUSE_REQUIRE_SERVICES` says every service must be there (CI); `install` names
/// the script that installs it.
pub fn have_tool(tool: &str, install: &str) -> bool {
    use std::process::{Command, Stdio};
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("GATEHOUSE_REQUIRE_SERVICES").is_none(),
            "{tool} is required ({install})"
        );
        eprintln!("skipped: {tool} is not installed ({install})");
    }
    found
}
