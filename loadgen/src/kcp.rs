//! `--kcp`: KCP clients (modes idle and flood), as due's KCP client speaks: one UDP socket per
//! session from 127.0.0.x, a random-looking conv, kcp-go's default parameters (windows 32/32,
//! interval 100 ms, no nodelay: what due runs), the due packet stream on top. One thread drives
//! them all (non-blocking sockets swept in turn: each session's input, ACKs, heartbeats,
//! retransmissions and requests), which keeps one fd per session under the 20,000-fd limit.
//!
//! - idle: every session sends a heartbeat every `--heartbeat` and must get answers; held for
//!   `--duration` after the ramp.
//! - flood: `--requests` echo requests of `--size` bytes shared by the sessions, at most
//!   [`FLOOD_WINDOW`] in flight per session; TPS from the first request to the last reply. With
//!   due's KCP parameters a session's throughput is bound by its window and the gate's 100 ms
//!   flush interval (ACKs wait for it), so TPS grows with the number of sessions.
//!
//! Progress lines go to stderr (`t=… open=… connect_errors=…`, scripts read them), the summary to
//! stdout (one JSON object with `--json`).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::{is_heartbeat, Run};

/// flood: requests in flight per session (as the TCP flood writes 16 per batch).
const FLOOD_WINDOW: u32 = 16;

/// Datagrams of a client's engine leave straight through its socket (a full socket buffer
/// drops one; KCP retransmits).
struct Out(UdpSocket);

impl Write for Out {
    fn write(&mut self, d: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(d);
        Ok(d.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Client {
    sock: UdpSocket,
    kcp: kcp::Kcp<Out>,
    next_heartbeat: Instant,
    /// Received stream bytes not yet framed.
    stream: Vec<u8>,
    /// flood: requests sent and not answered yet, and requests sent in all.
    inflight: u32,
    seq: u32,
    /// Whether anything (a heartbeat answer, a reply) came back.
    answered: bool,
}

fn open(addr: SocketAddr, source: Ipv4Addr, conv: u32, now_ms: u32) -> std::io::Result<Client> {
    let sock = UdpSocket::bind((source, 0))?;
    sock.connect(addr)?;
    sock.set_nonblocking(true)?;
    let mut kcp = kcp::Kcp::new(conv, Out(sock.try_clone()?));
    kcp.set_wndsize(32, 32);
    let _ = kcp.update(now_ms);
    Ok(Client {
        sock,
        kcp,
        next_heartbeat: Instant::now(),
        stream: Vec::new(),
        inflight: 0,
        seq: 0,
        answered: false,
    })
}

impl Client {
    /// Feeds what arrived into the engine; returns the non-heartbeat packets completed.
    fn take_input(&mut self, buf: &mut [u8], msg: &mut [u8]) -> u64 {
        while let Ok(n) = self.sock.recv(buf) {
            let _ = self.kcp.input(&buf[..n]);
        }
        while let Ok(n) = self.kcp.recv(msg) {
            self.stream.extend_from_slice(&msg[..n]);
        }
        let (mut at, mut replies) = (0, 0);
        while self.stream.len() >= at + 4 {
            let size = u32::from_be_bytes(self.stream[at..at + 4].try_into().expect("4")) as usize;
            if self.stream.len() < at + 4 + size {
                break;
            }
            self.answered = true;
            if !is_heartbeat(&self.stream[at..at + 4 + size]) {
                replies += 1;
            }
            at += 4 + size;
        }
        self.stream.drain(..at);
        replies
    }
}

/// Runs `--kcp` idle or flood; prints the summary and returns the number of failures.
pub(crate) fn run(run: &Run) -> usize {
    let a = &run.a;
    let flood = a.mode == "flood";
    let start = Instant::now();
    let ms = || start.elapsed().as_millis() as u32;
    let gap = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
    let mut heartbeat = BytesMut::new();
    run.put_wire(&run.packet.heartbeat(0), &mut heartbeat);
    let mut clients: Vec<Client> = Vec::with_capacity(a.conns);
    let (mut heartbeats, mut connect_errors) = (0u64, 0usize);
    let (mut budget, mut sent, mut received) = (a.requests, 0u64, 0u64);
    let (mut first_send, mut last_reply): (Option<Instant>, Option<Instant>) = (None, None);
    let mut buf = vec![0u8; 2048];
    let mut msg = vec![0u8; 64 * 1024];
    let mut request = BytesMut::new();
    let mut ramp_done: Option<Instant> = None;
    let mut last_report = Instant::now();
    loop {
        let now = Instant::now();
        // Ramp: open what is due by now.
        while clients.len() + connect_errors < a.conns
            && start + gap * (clients.len() + connect_errors) as u32 <= now
        {
            let i = clients.len() + connect_errors;
            let source = Ipv4Addr::new(127, 0, 0, 1 + (i % a.sources.max(1) as usize) as u8);
            let conv = (i as u32 + 1).wrapping_mul(0x9E37_79B9);
            match open(a.addr, source, conv, ms()) {
                Ok(c) => clients.push(c),
                Err(e) => {
                    if connect_errors == 0 {
                        eprintln!("kcp open error: {e}");
                    }
                    connect_errors += 1;
                }
            }
        }
        if ramp_done.is_none() && clients.len() + connect_errors == a.conns {
            ramp_done = Some(now);
        }
        let done = match ramp_done {
            Some(t) if flood => received >= a.requests || now >= t + a.duration,
            Some(t) => now >= t + a.duration,
            None => false,
        };
        if done {
            break;
        }
        let t = ms();
        let mut busy = false;
        for c in clients.iter_mut() {
            let replies = c.take_input(&mut buf, &mut msg);
            if replies > 0 {
                received += replies;
                c.inflight = c.inflight.saturating_sub(replies as u32);
                last_reply = Some(now);
            }
            let mut wrote = false;
            if now >= c.next_heartbeat {
                let _ = c.kcp.send(&heartbeat);
                heartbeats += 1;
                c.next_heartbeat = now + a.heartbeat;
                wrote = true;
            }
            // flood: requests once every session is open, up to the window.
            while flood && ramp_done.is_some() && budget > 0 && c.inflight < FLOOD_WINDOW {
                c.seq = c.seq.wrapping_add(1);
                request.clear();
                run.put_request(c.seq, &mut request);
                let _ = c.kcp.send(&request);
                c.inflight += 1;
                budget -= 1;
                sent += 1;
                first_send.get_or_insert(now);
                wrote = true;
            }
            if wrote || c.kcp.check(t) == 0 {
                let _ = c.kcp.update(t);
                let _ = c.kcp.flush();
            }
            busy |= wrote || replies > 0 || c.inflight > 0;
        }
        if now >= last_report + Duration::from_secs(1) {
            last_report = now;
            eprintln!(
                "t={:.0}s open={} connect_errors={connect_errors} heartbeats={heartbeats} sent={sent} received={received}",
                start.elapsed().as_secs_f64(),
                clients.len()
            );
        }
        // Idle sessions are swept every 10 ms; a flood sweeps again at once while work is due.
        if !(flood && busy) {
            std::thread::sleep(Duration::from_millis(if flood { 1 } else { 10 }));
        }
    }
    let silent = clients.iter().filter(|c| !c.answered).count();
    let seconds = match (first_send, last_reply) {
        (Some(f), Some(l)) => l.saturating_duration_since(f).as_secs_f64().max(1e-9),
        _ => 0.0,
    };
    let tps = if seconds > 0.0 {
        received as f64 / seconds
    } else {
        0.0
    };
    let failures = silent + connect_errors + usize::from(flood && received < a.requests);
    let summary = serde_json::json!({
        "mode": a.mode, "transport": "kcp", "conns": a.conns, "size": a.size,
        "requests": if flood { a.requests } else { 0 }, "sent": sent, "received": received,
        "seconds": seconds, "tps": tps, "heartbeats": heartbeats,
        "connect_errors": connect_errors, "no_answer": silent, "failures": failures,
    });
    if a.json {
        println!("{summary}");
    } else {
        println!("kcp {}: {summary:#}", a.mode);
    }
    failures
}
