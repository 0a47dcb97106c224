//! Client connections: the per-connection IO drivers (TCP, WebSocket) and what they share —
//! inbound frame handling, close reasons and the per-shard read scratch buffer.
//!
//! One task per connection does all of its IO: it reads, writes queued packets in batches and
//! runs its heartbeat/authorization timer. Session operations reach it only through [`Conn`].

pub mod tcp;
pub mod upgrade;
pub mod ws;
pub mod ws_frame;

use bytes::Bytes;
use std::cell::RefCell;
use std::time::Instant;

use crate::dispatch::Delivery;
use crate::liveness::{Liveness, Verdict};
use crate::packet::FrameKind;
use crate::session::{Conn, ConnState};
use crate::shard::{ServerCtx, Shard};

/// Bytes read per `recv` into the shard's scratch buffer.
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// Largest batch of queued packets coalesced into one write.
pub(crate) const WRITE_BATCH: usize = 64 * 1024;
/// Reads or writes one connection may do before yielding to the others on its shard.
pub(crate) const IO_BUDGET: usize = 16;

thread_local! {
    /// Reads land here first, so an idle connection holds no read buffer of its own: only the
    /// tail of a partial frame is copied into the connection.
    pub(crate) static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed or reset the connection.
    PeerClosed,
    Io(String),
    HeartbeatTimeout,
    AuthorizeTimeout,
    /// Forced close requested by a session operation (or shutdown).
    Forced,
    /// Graceful close: queued packets were written first.
    Graceful,
    /// The client broke the protocol (oversize frame, bad WS frame).
    Protocol(String),
}

/// The undecoded tail of a connection's input. Reads land in the shard's scratch buffer; only
/// bytes of an incomplete frame are kept here, and the allocation is given back once it drains,
/// so an idle connection holds no input buffer.
#[derive(Default)]
pub(crate) struct InputTail(bytes::BytesMut);

impl InputTail {
    /// Hands `parse` the tail followed by `fresh` (which it may modify, e.g. to unmask);
    /// `parse` returns how many bytes it consumed and its result. The rest is kept.
    pub fn feed<R>(&mut self, fresh: &mut [u8], parse: impl FnOnce(&mut [u8]) -> (usize, R)) -> R {
        use bytes::Buf;
        if self.0.is_empty() {
            let (used, r) = parse(fresh);
            if used < fresh.len() {
                self.0.extend_from_slice(&fresh[used..]);
            }
            return r;
        }
        self.0.extend_from_slice(fresh);
        let (used, r) = parse(&mut self.0[..]);
        self.0.advance(used);
        if self.0.is_empty() {
            self.0 = bytes::BytesMut::new();
        } else if used > 0 && self.0.capacity() > 2 * self.0.len() + 4096 {
            // Do not let a short tail pin a large buffer.
            self.0 = bytes::BytesMut::from(&self.0[..]);
        }
        r
    }

    /// Drops whatever is buffered (input after a Close is never read).
    pub fn clear(&mut self) {
        self.0 = bytes::BytesMut::new();
    }
}

/// One read into `buf`; end of stream and resets are the peer closing, other errors are IO.
pub(crate) fn poll_read_into<S: futures_lite::io::AsyncRead + Unpin>(
    stream: &mut S,
    cx: &mut std::task::Context<'_>,
    buf: &mut [u8],
) -> std::task::Poll<Result<usize, CloseReason>> {
    use std::task::Poll;
    match std::pin::Pin::new(stream).poll_read(cx, buf) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Ok(0)) => Poll::Ready(Err(CloseReason::PeerClosed)),
        Poll::Ready(Ok(n)) => Poll::Ready(Ok(n)),
        Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Poll::Ready(Err(CloseReason::PeerClosed))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(CloseReason::Io(e.to_string()))),
    }
}

/// Frame handling shared by both transports.
pub(crate) struct Inbound<'a> {
    pub shard: &'a Shard,
    pub server: &'a ServerCtx,
    pub conn: &'a Conn,
}

impl Inbound<'_> {
    /// Handles one complete frame (or WS message) of kind `kind`; `frame` includes the size
    /// prefix. Liveness is refreshed by the caller.
    pub fn frame(&self, kind: FrameKind, frame: &[u8]) {
        if self.conn.state() != ConnState::Opened {
            return;
        }
        match kind {
            FrameKind::Empty => {}
            FrameKind::Heartbeat => {
                if self.server.reply_heartbeats {
                    self.conn.owe_heartbeat();
                }
            }
            FrameKind::Data => match self.shard.packet.unpack(frame) {
                Ok(m) => self.shard.upstream.deliver(Delivery {
                    cid: self.conn.cid,
                    uid: self.conn.uid(),
                    route: m.route,
                    seq: m.seq,
                    frame: Bytes::copy_from_slice(frame),
                }),
                Err(e) => {
                    tracing::warn!(cid = self.conn.cid, len = frame.len(), "{e}, frame dropped")
                }
            },
        }
    }

    /// Applies the session's orders and due timers. `Err` = close now for that reason.
    pub fn housekeeping(&self, live: &mut Liveness, now: Instant) -> Result<(), CloseReason> {
        {
            let mut orders = self.conn.orders.borrow_mut();
            if orders.forced_close {
                return Err(CloseReason::Forced);
            }
            if std::mem::take(&mut orders.auth_changed) {
                if self.conn.uid() == 0 {
                    live.on_unbound(now);
                } else {
                    live.on_bound();
                }
            }
        }
        loop {
            match live.check(now) {
                Verdict::Idle => return Ok(()),
                Verdict::SendHeartbeat => self.conn.owe_heartbeat(),
                Verdict::HeartbeatTimeout => {
                    tracing::debug!(cid = self.conn.cid, "connection heartbeat timeout");
                    return Err(CloseReason::HeartbeatTimeout);
                }
                Verdict::AuthorizeTimeout => {
                    if self.conn.uid() == 0 {
                        tracing::debug!(cid = self.conn.cid, "connection authorize timeout");
                        return Err(CloseReason::AuthorizeTimeout);
                    }
                }
            }
        }
    }
}

/// A glommio timer that follows the liveness deadline.
pub(crate) struct DeadlineTimer {
    timer: Option<glommio::timer::Timer>,
    armed_for: Option<Instant>,
}

impl DeadlineTimer {
    pub fn new() -> Self {
        DeadlineTimer {
            timer: None,
            armed_for: None,
        }
    }

    /// Re-arms for `deadline` if it changed; returns `Ready` when the armed deadline passed.
    pub fn poll(
        &mut self,
        deadline: Option<Instant>,
        now: Instant,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::future::Future;
        if deadline != self.armed_for {
            self.armed_for = deadline;
            match deadline {
                None => self.timer = None,
                Some(d) => {
                    let dur = d.saturating_duration_since(now);
                    match &mut self.timer {
                        Some(t) => t.reset(dur),
                        None => self.timer = Some(glommio::timer::Timer::new(dur)),
                    }
                }
            }
        }
        match &mut self.timer {
            Some(t) => match std::pin::Pin::new(t).poll(cx) {
                std::task::Poll::Ready(_) => {
                    self.timer = None;
                    self.armed_for = None;
                    std::task::Poll::Ready(())
                }
                p => p.map(|_| ()),
            },
            None => std::task::Poll::Pending,
        }
    }
}

/// Normalises a peer address as due reports it: IPv4-mapped IPv6 becomes dotted IPv4.
pub fn client_ip(addr: std::net::SocketAddr) -> std::net::IpAddr {
    match addr.ip() {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(v6),
        },
        ip => ip,
    }
}
