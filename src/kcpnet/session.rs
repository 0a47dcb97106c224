//! One KCP session of a client, sans-IO: the `kcp` crate's engine run with kcp-go v5.6.20's
//! parameters and write/flush habits as due runs them (spec kcp.md §4), and a byte-stream view.
//!
//! The driver feeds it datagrams (`input`), writes (`write`) and the clock (`update`, in ms of
//! its own u32 clock), reads the stream (`read`) and sends what [`Session::drain`] hands out.
//! Nothing here owns a socket or a timer.

use kcp::Kcp;
use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;

/// KCP parameters of every session of a server: kcp-go's defaults, then due's
/// `[network.kcp.server]` keys (`mtu`, `noDelay`, `windowSize`, `ackNoDelay`, `writeDelay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Datagram size (MSS = mtu − 24); kcp-go's default 1400.
    pub mtu: usize,
    /// `noDelay[0] != 0`: minimum RTO 30 ms instead of 100, RTO grows by halves.
    pub nodelay: bool,
    /// Periodic flush interval in ms (10..=5000; 100).
    pub interval: u32,
    /// Fast resend after this many later ACKs; 0 = off.
    pub resend: u32,
    /// `noDelay[3] != 0`: no congestion window.
    pub no_cwnd: bool,
    /// Send and receive windows in segments (32/32). The engine keeps a receive window of at
    /// least 128 (its floor); the send window is honoured as given.
    pub snd_wnd: u16,
    pub rcv_wnd: u16,
    /// Flush ACKs at every input instead of at the next periodic flush.
    pub ack_nodelay: bool,
    /// Writes wait for the next periodic flush instead of flushing at once.
    pub write_delay: bool,
    /// gatehouse (`[gatehouse] kcpLinger`, ms): a closed connection's session keeps
    /// retransmitting what its client has not acknowledged this long.
    pub linger_ms: u64,
    /// gatehouse (`[gatehouse] kcpClosedMemory`, ms): a closed conversation's datagrams are
    /// dropped this long instead of opening a zombie connection.
    pub closed_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            mtu: 1400,
            nodelay: false,
            interval: 100,
            resend: 0,
            no_cwnd: false,
            snd_wnd: 32,
            rcv_wnd: 32,
            ack_nodelay: false,
            write_delay: false,
            linger_ms: 2_000,
            closed_ms: 60_000,
        }
    }
}

/// Where sessions put the datagrams their flushes produce, each behind its u16 LE length, until
/// the owner drains them to the socket. One outbox serves every session of a shard: the owner
/// drains it after each call on a session, so what is inside is always that session's.
#[derive(Clone, Default)]
pub struct Outbox(Rc<RefCell<Vec<u8>>>);

impl Outbox {
    /// Hands each datagram produced so far to `send`, oldest first, and empties the outbox.
    pub fn drain(&self, mut send: impl FnMut(&[u8])) {
        let mut out = self.0.borrow_mut();
        let mut at = 0;
        while at + 2 <= out.len() {
            let len = usize::from(u16::from_le_bytes([out[at], out[at + 1]]));
            send(&out[at + 2..at + 2 + len]);
            at += 2 + len;
        }
        out.clear();
        if out.capacity() > 64 * 1024 {
            *out = Vec::new();
        }
    }

    /// Whether nothing waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }
}

impl Write for Outbox {
    fn write(&mut self, d: &[u8]) -> std::io::Result<usize> {
        // The engine writes one datagram (≤ mtu ≤ 1500 bytes) per call.
        let len = u16::try_from(d.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let mut out = self.0.borrow_mut();
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(d);
        Ok(d.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One client's KCP session.
pub struct Session {
    kcp: Kcp<Outbox>,
    ack_nodelay: bool,
    write_delay: bool,
    /// The part of a received message the reader had no room for (a message of several
    /// fragments can exceed its buffer); empty with no allocation most of the time.
    leftover: Vec<u8>,
    left_at: usize,
    /// Input arrived since the last flush: ACKs are waiting for one.
    acks_owed: bool,
}

impl Session {
    /// A session for conversation `conv` (the client's choice), created at `now_ms`, writing
    /// its datagrams to `outbox`.
    pub fn new(conv: u32, p: &Params, now_ms: u32, outbox: Outbox) -> Self {
        let mut kcp = Kcp::new(conv, outbox);
        // kcp-go ignores an mtu above 1500 or below 50 (keeps 1400); so do we.
        if (50..=1500).contains(&p.mtu) {
            let _ = kcp.set_mtu(p.mtu);
        }
        kcp.set_nodelay(p.nodelay, p.interval as i32, p.resend as i32, p.no_cwnd);
        kcp.set_wndsize(p.snd_wnd, p.rcv_wnd);
        // The first update only starts the clock; nothing is queued yet.
        let _ = kcp.update(now_ms);
        Session {
            kcp,
            ack_nodelay: p.ack_nodelay,
            write_delay: p.write_delay,
            leftover: Vec::new(),
            left_at: 0,
            acks_owed: false,
        }
    }

    pub fn conv(&self) -> u32 {
        self.kcp.conv()
    }

    /// Feeds checked segments (`intake::sanitise`'s prefix) received at `now_ms`. ACKs go out
    /// at once when `ackNoDelay` is set, when the peer's ACKs made room for queued segments
    /// (kcp-go flushes then too), or when `first` (a new session's first update runs at once);
    /// otherwise with the next periodic flush. `Err` = the engine refused the datagram (the
    /// segments before the refused one were taken).
    pub fn input(&mut self, segs: &[u8], now_ms: u32, first: bool) -> Result<(), kcp::Error> {
        let waiting = self.kcp.wait_snd();
        let _ = self.kcp.update(now_ms);
        let r = self.kcp.input(segs).map(|_| ());
        self.acks_owed = true;
        if first || self.ack_nodelay || self.kcp.wait_snd() < waiting {
            self.flush(now_ms);
        }
        r
    }

    /// Whether [`Session::read`] would return bytes.
    pub fn readable(&self) -> bool {
        self.left_at < self.leftover.len() || self.kcp.peeksize().is_ok()
    }

    /// Reads received bytes as a stream into `buf` (due parses its frames across segment
    /// boundaries, §5). 0 = nothing to read now.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        if self.left_at < self.leftover.len() {
            let n = buf.len().min(self.leftover.len() - self.left_at);
            buf[..n].copy_from_slice(&self.leftover[self.left_at..self.left_at + n]);
            self.left_at += n;
            if self.left_at == self.leftover.len() {
                self.leftover = Vec::new();
                self.left_at = 0;
            }
            return n;
        }
        let Ok(size) = self.kcp.peeksize() else {
            return 0;
        };
        // Reading may reopen a full window: the next update tells the peer (WINS).
        self.acks_owed = true;
        if size <= buf.len() {
            return self.kcp.recv(buf).unwrap_or(0);
        }
        let mut whole = vec![0; size];
        let got = self.kcp.recv(&mut whole).unwrap_or(0);
        whole.truncate(got);
        self.leftover = whole;
        self.left_at = 0;
        self.read(buf)
    }

    /// Segments queued or in flight.
    pub fn unacked(&self) -> usize {
        self.kcp.wait_snd()
    }

    /// Takes as much of `data` as the send window allows (kcp-go blocks a writer while the
    /// queued and unacknowledged segments fill its send window or the peer's window), cut into
    /// MSS-sized messages of their own, so every PUSH has `frg = 0` as kcp-go's are (§4.2).
    /// Flushes at once unless `writeDelay`. Returns the bytes taken; 0 = the window is full.
    pub fn write(&mut self, data: &[u8], now_ms: u32) -> usize {
        let limit = usize::from(self.kcp.snd_wnd().min(self.kcp.rmt_wnd().max(1)));
        let mss = self.kcp.mss();
        let mut taken = 0;
        for chunk in data.chunks(mss) {
            if self.kcp.wait_snd() >= limit {
                break;
            }
            match self.kcp.send(chunk) {
                Ok(n) => taken += n,
                Err(_) => break,
            }
        }
        if taken > 0 && !self.write_delay {
            self.flush(now_ms);
        }
        taken
    }

    /// Sends what is due now: queued segments the windows allow, ACKs, probes.
    pub fn flush(&mut self, now_ms: u32) {
        let _ = self.kcp.update(now_ms);
        let _ = self.kcp.flush();
        self.acks_owed = false;
    }

    /// The periodic update at `now_ms`: owed ACKs (and a window update after reads) go out
    /// now; otherwise the engine flushes once per interval and retransmits what timed out.
    pub fn update(&mut self, now_ms: u32) {
        if self.acks_owed {
            self.flush(now_ms);
        } else {
            let _ = self.kcp.update(now_ms);
        }
    }

    /// Milliseconds until the next [`Session::update`] is needed, or `None` while the session
    /// has nothing to send, acknowledge or probe (an idle session costs no timer).
    pub fn next_update(&self, now_ms: u32) -> Option<u32> {
        let busy = self.acks_owed || self.kcp.wait_snd() > 0 || self.kcp.rmt_wnd() == 0;
        busy.then(|| self.kcp.check(now_ms))
    }
}
