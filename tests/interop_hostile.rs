//! Hostile TCP input and authorizeTimeout against both gates of the interop cluster (real Redis,
//! Consul and the due v2.4.1 Go node): gatehouse, and the reference gate, whose TCP server is the
//! stand-in of tests/interop/internal/tcpnet (due's network/tcp module is not downloadable here;
//! tests/interop/README.md). The clients are raw sockets of this test, so nothing depends on a Go
//! client's heartbeat handling. The expectations are client-protocol.md's:
//!
//! * a size field the reader cannot honour (`FF FF FF FF`, 4 + size wraps around 32 bits, §1.8):
//!   due v2.4.1 stops reading that connection and keeps it open — no heartbeat answered, its slot
//!   taken — until the heartbeat timeout closes it (2–3 intervals after its last complete frame);
//!   gatehouse refuses it at once (the inbound cap, [RUST] of §1.5). Either way the process stays
//!   up and serves other clients. Same for a size-0 frame in due v2.4.1 (§1.8); gatehouse ignores
//!   it (v2.5.8 behaviour, checklist item 6);
//! * `authorizeTimeout` (§2.6): an unbound connection is closed that long after connecting even
//!   while it sends heartbeats; a bound one stays.
//!
//! Skipped (with a message) when the Go peers, redis-server or consul are missing, unless
//! `GATEHOUSE_REQUIRE_SERVICES=1`.

mod interop_support;

use interop_support::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

per_gate! {
    unreadable_size_fields => unreadable_size;
    authorize_timeout => authorize_timeout;
}

/// What a raw read saw.
#[derive(Debug, PartialEq)]
enum Got {
    Frame(Vec<u8>),
    Closed,
    Nothing,
}

struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
        s.set_nodelay(true).unwrap();
        Raw { s, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        // A write to a socket the gate already closed may fail: what matters is what is read.
        let _ = self.s.write_all(bytes);
    }

    /// The next whole frame (big endian size field), EOF/reset, or nothing within `bound`.
    fn read(&mut self, bound: Duration) -> Got {
        let deadline = Instant::now() + bound;
        loop {
            if self.buf.len() >= 4 {
                let size = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if self.buf.len() >= 4 + size {
                    return Got::Frame(self.buf.drain(..4 + size).collect());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Nothing;
            }
            self.s.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => return Got::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Got::Nothing
                }
                Err(_) => return Got::Closed,
            }
        }
    }

    /// Sends a heartbeat and expects the gate's (resp mode).
    fn heartbeat_answered(&mut self, what: &str) {
        self.send(&HEARTBEAT);
        assert_eq!(self.read(WAIT), Got::Frame(HEARTBEAT.to_vec()), "{what}");
    }

    /// Sends a route-1 packet and waits for the node's echo through the gate.
    fn echoed(&mut self, payload: &str, what: &str) {
        self.send(&client_packet(1, 7, payload.as_bytes()));
        let t = Instant::now();
        while t.elapsed() < WAIT {
            match self.read(WAIT) {
                Got::Frame(f) if f.ends_with(payload.as_bytes()) => return,
                Got::Frame(_) => continue,
                other => panic!("{what}: no echo of {payload}: {other:?}"),
            }
        }
        panic!("{what}: no echo of {payload}");
    }

    /// Waits for EOF/reset, skipping frames; returns when it came.
    fn closed_within(&mut self, bound: Duration, what: &str) -> Instant {
        let deadline = Instant::now() + bound;
        loop {
            match self.read(deadline.saturating_duration_since(Instant::now())) {
                Got::Closed => return Instant::now(),
                Got::Frame(_) => continue,
                Got::Nothing => panic!("{what}: still open after {bound:?}"),
            }
        }
    }
}

fn gate_alive(c: &mut Cluster) -> bool {
    !c.gates[0].proc.exited()
}

// ---------------------------------------------------------------------------------------------

const INTERVAL: Duration = Duration::from_secs(1);

fn unreadable_size(kind: GateKind, tag: &str) {
    let mut c = Cluster::start_with(
        tag,
        Spec::one(kind, Proto::Tcp),
        &[("heartbeatInterval = \"10s\"", "heartbeatInterval = \"1s\"")],
    );
    let addr = c.gate().tcp;

    for (claim, what) in [("ffffffff", "size FFFFFFFF"), ("00000000", "size 0")] {
        let mut z = Raw::connect(addr);
        z.heartbeat_answered(&format!("{what}: admitted and served first"));
        let last_frame = Instant::now();
        let mut bytes = u32::from_str_radix(claim, 16)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        bytes.extend_from_slice(&HEARTBEAT);
        z.send(&bytes);
        match (kind, claim) {
            (GateKind::Gatehouse, "ffffffff") => {
                // The inbound cap: refused at once (hostile_tcp.rs has the finer cases).
                z.closed_within(Duration::from_millis(1500), what);
            }
            (GateKind::Gatehouse, _) => {
                // Ignored (v2.5.8 behaviour): the heartbeat behind it is answered.
                assert_eq!(z.read(WAIT), Got::Frame(HEARTBEAT.to_vec()), "{what}");
            }
            (GateKind::DueReference, _) => {
                // due v2.4.1: the reader is gone, the socket stays open and nothing more is
                // answered (the heartbeat behind the size field is never read)...
                assert_eq!(
                    z.read(Duration::from_millis(1500)),
                    Got::Nothing,
                    "{what}: a zombie, open and unanswered"
                );
                // ...while the gate serves other clients, through the cluster too.
                let mut other = Raw::connect(addr);
                other.heartbeat_answered(&format!("{what}: another client served"));
                other.echoed(&c.unique("after-zombie"), what);
                drop(other);
                // ...until the heartbeat timeout: more than 2 and at most 3 intervals after the
                // last complete frame (spec §2.5; the unreadable one does not count).
                let closed = z.closed_within(5 * INTERVAL, what) - last_frame;
                eprintln!("[{tag}] {what}: zombie closed {closed:?} after its last frame");
                assert!(
                    closed >= 2 * INTERVAL - Duration::from_millis(100)
                        && closed <= 3 * INTERVAL + Duration::from_millis(700),
                    "{what}: closed {closed:?} after the last frame, not within 2–3 intervals"
                );
            }
        }
        assert!(gate_alive(&mut c), "{what}: the gate process stays up");
        let mut next = Raw::connect(addr);
        next.heartbeat_answered(&format!("{what}: a new client is served"));
        next.echoed(&c.unique("after"), what);
    }
    assert!(gate_alive(&mut c));
}

// ---------------------------------------------------------------------------------------------

const AUTHORIZE: Duration = Duration::from_secs(3);

fn authorize_timeout(kind: GateKind, tag: &str) {
    let c = Cluster::start_with(
        tag,
        Spec::one(kind, Proto::Tcp),
        &[(
            "heartbeatMechanism = \"resp\"",
            "heartbeatMechanism = \"resp\"\nauthorizeTimeout = \"3s\"",
        )],
    );
    let addr = c.gate().tcp;

    // A bound client (a Go client bound through the node) outlives the timeout.
    let mut bound = c.connect(0, Proto::Tcp);
    c.bind(&mut bound, 4711);

    // An unbound client is closed at ≈ A even though it keeps sending heartbeats.
    let mut raw = Raw::connect(addr);
    let t0 = Instant::now();
    let closed = loop {
        raw.send(&HEARTBEAT);
        match raw.read(Duration::from_millis(250)) {
            Got::Closed => break t0.elapsed(),
            _ => assert!(
                t0.elapsed() < AUTHORIZE + Duration::from_secs(3),
                "unbound client still open after {:?}",
                t0.elapsed()
            ),
        }
    };
    eprintln!("[{tag}] unbound client closed {closed:?} after connecting");
    assert!(
        closed >= AUTHORIZE - Duration::from_millis(200)
            && closed <= AUTHORIZE + Duration::from_millis(1500),
        "closed {closed:?} after connecting, authorizeTimeout is {AUTHORIZE:?}"
    );

    // The bound client, connected before the raw one, is still open and served.
    assert!(!bound.disconnected(), "the bound client was closed");
    bound.barrier();
    assert!(!bound.disconnected(), "the bound client was closed");
}
