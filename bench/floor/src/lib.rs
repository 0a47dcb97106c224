//! floor: shared pieces of the benchmark's floor programs (flags, listeners, client packet reads).
//! Owns nothing of gatehouse's semantics: a floor does the least a gate must do on this kernel.
//!
//! The programs (`src/bin/`): `floor-broadcast` sends loadgen's fanout broadcast to every client,
//! `floor-forward` relays client packets to the Rust echo node over the link's deliver framing
//! and its pushes back. Both print `{"listening":"ADDR",...}` on stdout once they accept clients.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gatehouse::packet::{FrameDecoder, PacketConfig};

/// `--flag value` pairs after the program name, plus bare `--flag`s listed in `switches`.
pub struct Flags {
    map: HashMap<String, String>,
    usage: &'static str,
}

impl Flags {
    /// Parses the process arguments; exits with `usage` on a malformed line.
    pub fn parse(usage: &'static str, switches: &[&str]) -> Flags {
        let mut map = HashMap::new();
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if !flag.starts_with("--") {
                Flags::fail(usage);
            }
            if switches.contains(&flag.as_str()) {
                map.insert(flag, String::new());
                continue;
            }
            let v = it.next().unwrap_or_else(|| Flags::fail(usage));
            map.insert(flag, v);
        }
        Flags { map, usage }
    }

    fn fail(usage: &str) -> ! {
        eprintln!("usage: {usage}");
        std::process::exit(2)
    }

    /// The value of `--name` parsed as T, or `default` when absent.
    pub fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.map.get(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| Flags::fail(self.usage)),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// The packet settings of the cluster (`--route-bytes`, `--seq-bytes`; due's defaults 2, 2).
    pub fn packet(&self) -> PacketConfig {
        PacketConfig {
            route_bytes: self.get("--route-bytes", 2),
            seq_bytes: self.get("--seq-bytes", 2),
            buffer_bytes: 1 << 20,
            ..PacketConfig::default()
        }
    }
}

/// A non-blocking listener with a deep backlog (glommio's fixed 1024 overflows on a 19,000
/// connection ramp; see the machine notes).
pub fn listen(addr: SocketAddr) -> std::io::Result<mio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    s.set_nonblocking(true)?;
    Ok(mio::net::TcpListener::from_std(s.into()))
}

/// An epoll instance watching `listener` under `token`, for a program's accept-and-read loop.
pub fn poll_on(listener: &mut mio::net::TcpListener, token: mio::Token) -> mio::Poll {
    let poll = mio::Poll::new().expect("epoll");
    poll.registry()
        .register(listener, token, mio::Interest::READABLE)
        .expect("register listener");
    poll
}

/// One client connection's read side: the undecoded tail of its byte stream.
pub struct Packets {
    dec: FrameDecoder,
    buf: BytesMut,
}

/// What a read round found.
pub enum ReadEnd {
    /// Drained until the kernel had no more: the connection stays.
    Drained,
    /// End of stream, an error or an oversized frame: close the connection.
    Closed,
}

impl Packets {
    pub fn new(packet: &PacketConfig) -> Self {
        Packets {
            dec: FrameDecoder::new(packet, 1 << 20),
            buf: BytesMut::new(),
        }
    }

    /// Reads `s` until it would block (edge-triggered readiness), calling `on_packet` with each
    /// whole client packet (size prefix included; heartbeats too). `chunk` is a reused buffer.
    pub fn read_all(
        &mut self,
        mut s: &mio::net::TcpStream,
        chunk: &mut [u8],
        mut on_packet: impl FnMut(&[u8]),
    ) -> ReadEnd {
        loop {
            let n = match s.read(chunk) {
                Ok(0) => return ReadEnd::Closed,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return ReadEnd::Drained,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return ReadEnd::Closed,
            };
            // Whole packets straight from the chunk when nothing is pending (the usual case):
            // no copy into `buf`.
            let ok = if self.buf.is_empty() {
                match frames(&self.dec, &chunk[..n], &mut on_packet) {
                    Some(at) => {
                        self.buf.extend_from_slice(&chunk[at..n]);
                        true
                    }
                    None => false,
                }
            } else {
                self.buf.extend_from_slice(&chunk[..n]);
                match frames(&self.dec, &self.buf, &mut on_packet) {
                    Some(at) => {
                        let _ = self.buf.split_to(at);
                        true
                    }
                    None => false,
                }
            };
            if !ok {
                return ReadEnd::Closed;
            }
        }
    }
}

/// Calls `on_packet` with each whole packet at the front of `src`; the bytes consumed, or None
/// for a frame over the cap.
fn frames(dec: &FrameDecoder, src: &[u8], on_packet: &mut impl FnMut(&[u8])) -> Option<usize> {
    let mut at = 0;
    loop {
        match dec.next_frame_len(&src[at..]) {
            Ok(Some(len)) => {
                on_packet(&src[at..at + len]);
                at += len;
            }
            Ok(None) => return Some(at),
            Err(_) => return None,
        }
    }
}

/// Whether a client packet is a heartbeat (header bit 0x80).
pub fn is_heartbeat(packet: &[u8]) -> bool {
    packet.len() > 4 && packet[4] & 0x80 != 0
}

/// Writes all of `data` to a non-blocking socket: a send per call, and when the kernel's buffer
/// is full, short sleeps until it drains (bounded by `patience`). False: the socket failed or
/// never drained. A floor's clients read as fast as they can, so the wait is the rare path.
pub fn send_all(mut s: &mio::net::TcpStream, mut data: &[u8], patience: Duration) -> bool {
    let mut deadline: Option<Instant> = None;
    while !data.is_empty() {
        match s.write(data) {
            Ok(0) => return false,
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let d = *deadline.get_or_insert_with(|| Instant::now() + patience);
                if Instant::now() > d {
                    return false;
                }
                std::thread::sleep(Duration::from_micros(20));
            }
            Err(_) => return false,
        }
    }
    true
}

/// Unix time in nanoseconds (the broadcast stamp; loadgen reads it with the same clock).
pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
