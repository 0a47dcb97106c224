//! `--kcp`: KCP clients (mode idle), as due's KCP client speaks: one UDP socket per session from
//! 127.0.0.x, a random-looking conv, kcp-go's default parameters, a due heartbeat every
//! `--heartbeat`. One thread drives them all (non-blocking sockets swept every 10 ms: each
//! session's ACKs, the gate's heartbeat replies and retransmissions), which is plenty for idle
//! sessions and keeps one fd per session under the 20,000-fd limit.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::Args;

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
}

const HEARTBEAT: [u8; 5] = [0, 0, 0, 1, 0x80];

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
    })
}

/// Holds `--conns` idle KCP sessions for `--duration` after the ramp; prints a line per second
/// and a summary. Returns the number of failures (sessions that got no heartbeat reply).
pub fn idle(a: &Args) -> usize {
    let start = Instant::now();
    let ms = || start.elapsed().as_millis() as u32;
    let gap = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
    let mut clients: Vec<Client> = Vec::with_capacity(a.conns);
    let mut replied = vec![false; a.conns];
    let (mut sent, mut replies, mut errors) = (0u64, 0u64, 0usize);
    let mut buf = vec![0u8; 2048];
    let mut msg = vec![0u8; 64 * 1024];
    let mut ramp_done: Option<Instant> = None;
    let mut last_report = Instant::now();
    loop {
        let now = Instant::now();
        // Ramp: open what is due by now.
        while clients.len() + errors < a.conns
            && start + gap * (clients.len() + errors) as u32 <= now
        {
            let i = clients.len() + errors;
            let source = Ipv4Addr::new(127, 0, 0, 1 + (i % a.sources.max(1) as usize) as u8);
            let conv = (i as u32 + 1).wrapping_mul(0x9E37_79B9);
            match open(a.addr, source, conv, ms()) {
                Ok(c) => clients.push(c),
                Err(e) => {
                    if errors == 0 {
                        eprintln!("kcp open error: {e}");
                    }
                    errors += 1;
                }
            }
        }
        if ramp_done.is_none() && clients.len() + errors == a.conns {
            ramp_done = Some(now);
        }
        if ramp_done.is_some_and(|t| now >= t + a.duration) {
            break;
        }
        let t = ms();
        for (i, c) in clients.iter_mut().enumerate() {
            while let Ok(n) = c.sock.recv(&mut buf) {
                let _ = c.kcp.input(&buf[..n]);
            }
            while let Ok(n) = c.kcp.recv(&mut msg) {
                c.stream.extend_from_slice(&msg[..n]);
            }
            while c.stream.len() >= 4 {
                let size = u32::from_be_bytes(c.stream[..4].try_into().unwrap()) as usize;
                if c.stream.len() < 4 + size {
                    break;
                }
                c.stream.drain(..4 + size);
                replies += 1;
                replied[i] = true;
            }
            if now >= c.next_heartbeat {
                let _ = c.kcp.send(&HEARTBEAT);
                let _ = c.kcp.update(t);
                let _ = c.kcp.flush();
                sent += 1;
                c.next_heartbeat = now + a.heartbeat;
            } else if c.kcp.check(t) == 0 {
                let _ = c.kcp.update(t);
            }
        }
        if now >= last_report + Duration::from_secs(1) {
            last_report = now;
            println!(
                "t={:.0}s open={} heartbeats={sent} replies={replies} errors={errors}",
                start.elapsed().as_secs_f64(),
                clients.len()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let silent = replied.iter().take(clients.len()).filter(|r| !**r).count();
    println!(
        "kcp idle: sessions={} heartbeats={sent} replies={replies} no_reply={silent} errors={errors}",
        clients.len()
    );
    silent + errors
}
