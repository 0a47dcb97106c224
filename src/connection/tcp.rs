//! The TCP (and TLS-over-TCP) connection driver: stream framing in, batched writes out.
//! Owns one connection's socket from admission to close; works on any futures-io stream.
//!
//! Reads go into the shard's scratch buffer and are framed there; only the tail of a partial
//! frame is kept per connection. Queued packets are coalesced into one write of up to 64 KiB, so
//! a burst of pushes to one client costs one syscall, not one per packet.

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncRead, AsyncWrite};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use super::{CloseReason, DeadlineTimer, Inbound, InputTail, IO_BUDGET, SCRATCH, WRITE_BATCH};
use crate::liveness::Liveness;
use crate::packet::FrameDecoder;
use crate::session::{Conn, ConnState};
use crate::shard::{ServerCtx, Shard};

/// Serves one admitted TCP connection until it closes, then releases it.
///
/// The driver is built before the returned future rather than inside an `async fn`: an async
/// fn keeps its moved-from arguments (the stream) in its state beside the driver for the
/// connection's whole life, and every idle connection would pay for that copy.
pub fn serve<S>(
    shard: Rc<Shard>,
    server: Arc<ServerCtx>,
    conn: Rc<Conn>,
    stream: S,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut d = TcpDriver {
        stream,
        decoder: FrameDecoder::new(&shard.packet, server.inbound_cap),
        pending_in: InputTail::default(),
        writing: None,
        live: Liveness::new(server.rules, Instant::now()),
        timer: DeadlineTimer::new(),
    };
    async move {
        let io = Inbound {
            shard: &shard,
            server: &server,
            conn: &conn,
        };
        let reason = std::future::poll_fn(|cx| d.poll(&io, cx)).await;
        match &reason {
            CloseReason::Protocol(e) | CloseReason::Io(e) => {
                tracing::info!(cid = conn.cid, reason = %e, "connection closed")
            }
            r => tracing::debug!(cid = conn.cid, reason = ?r, "connection closed"),
        }
        drop(d);
        shard.release(&server, &conn);
    }
}

struct TcpDriver<S> {
    stream: S,
    decoder: FrameDecoder,
    /// The undecoded tail of a partial frame (empty, with no allocation, most of the time).
    pending_in: InputTail,
    /// The batch being written and how much of it is done.
    writing: Option<(Bytes, usize)>,
    live: Liveness,
    timer: DeadlineTimer,
}

impl<S: AsyncRead + AsyncWrite + Unpin> TcpDriver<S> {
    fn poll(&mut self, io: &Inbound<'_>, cx: &mut Context<'_>) -> Poll<CloseReason> {
        io.conn.register_waker(cx.waker());
        for _ in 0..IO_BUDGET {
            let now = Instant::now();
            if let Err(r) = io.housekeeping(&mut self.live, now) {
                return Poll::Ready(r);
            }
            if self
                .timer
                .poll(self.live.next_deadline(), now, cx)
                .is_ready()
            {
                continue;
            }
            let mut progress = false;
            match self.poll_write(io, cx) {
                Poll::Ready(Err(r)) => return Poll::Ready(r),
                Poll::Ready(Ok(wrote)) => progress |= wrote,
                Poll::Pending => {}
            }
            // Graceful close completes once everything queued before it was written.
            if io.conn.state() == ConnState::Hanged
                && self.writing.is_none()
                && io.conn.nothing_queued()
            {
                return match Pin::new(&mut self.stream).poll_close(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(_) => Poll::Ready(CloseReason::Graceful),
                };
            }
            // Back-pressure: while a node is not keeping up, leave client bytes in the kernel.
            if io.shard.upstream.poll_ready(cx).is_pending() {
                if progress {
                    continue;
                }
                return Poll::Pending;
            }
            match self.poll_read(io, cx) {
                Poll::Ready(Err(r)) => return Poll::Ready(r),
                Poll::Ready(Ok(())) => progress = true,
                Poll::Pending => {}
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Budget spent: let the shard's other connections run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes queued packets. `Ok(true)` = something was written.
    fn poll_write(
        &mut self,
        io: &Inbound<'_>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<bool, CloseReason>> {
        let conn = io.conn;
        let mut wrote = false;
        loop {
            if self.writing.is_none() {
                self.writing = owed_heartbeats(io).map(|hb| (hb, 0));
            }
            if self.writing.is_none() {
                let mut q = conn.outbox();
                let Some(first) = q.pop_front() else {
                    return Poll::Ready(Ok(wrote));
                };
                let batch = if q
                    .front()
                    .is_some_and(|b| first.len() + b.len() <= WRITE_BATCH)
                {
                    let mut buf = BytesMut::with_capacity(
                        WRITE_BATCH.min(first.len() + q.iter().map(Bytes::len).sum::<usize>()),
                    );
                    buf.extend_from_slice(&first);
                    while let Some(b) = q.front() {
                        if buf.len() + b.len() > WRITE_BATCH {
                            break;
                        }
                        buf.extend_from_slice(b);
                        q.pop_front();
                    }
                    buf.freeze()
                } else {
                    first
                };
                self.writing = Some((batch, 0));
            }
            let (buf, off) = self.writing.as_mut().expect("set above");
            match Pin::new(&mut self.stream).poll_write(cx, &buf[*off..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(CloseReason::PeerClosed)),
                Poll::Ready(Ok(n)) => {
                    wrote = true;
                    *off += n;
                    if *off == buf.len() {
                        self.writing = None;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(CloseReason::Io(e.to_string()))),
                Poll::Pending => {
                    return if wrote {
                        Poll::Ready(Ok(true))
                    } else {
                        Poll::Pending
                    }
                }
            }
            // TLS buffers records: push them out once the batch is handed over.
            if self.writing.is_none() {
                if let Poll::Ready(Err(e)) = Pin::new(&mut self.stream).poll_flush(cx) {
                    return Poll::Ready(Err(CloseReason::Io(e.to_string())));
                }
            }
        }
    }

    /// Reads once and handles every complete frame. `Ok(())` = bytes were read.
    fn poll_read(
        &mut self,
        io: &Inbound<'_>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), CloseReason>> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let n = match super::poll_read_into(&mut self.stream, cx, &mut scratch[..]) {
                Poll::Ready(Ok(n)) => n,
                other => return other.map(|r| r.map(|_| ())),
            };
            let now = Instant::now();
            let (decoder, live) = (&self.decoder, &mut self.live);
            self.pending_in.feed(&mut scratch[..n], |data| {
                let mut off = 0;
                loop {
                    match decoder.next_frame_len(&data[off..]) {
                        Ok(Some(len)) => {
                            let frame = &data[off..off + len];
                            off += len;
                            live.on_frame(now);
                            io.frame(io.shard.packet.classify(frame), frame);
                        }
                        Ok(None) => return (off, Poll::Ready(Ok(()))),
                        Err(e) => {
                            tracing::warn!(cid = io.conn.cid, "{e}, closing connection");
                            return (off, Poll::Ready(Err(CloseReason::Protocol(e.to_string()))));
                        }
                    }
                }
            })
        })
    }
}

/// The heartbeats the connection owes, as one write (`None` when it owes none). One heartbeat
/// without a timestamp is the shard's shared copy: no allocation.
fn owed_heartbeats(io: &Inbound<'_>) -> Option<Bytes> {
    match io.conn.take_heartbeats_owed() {
        0 => None,
        1 => Some(io.shard.heartbeat()),
        n => {
            let mut buf = BytesMut::new();
            for _ in 0..n {
                buf.extend_from_slice(&io.shard.heartbeat());
            }
            Some(buf.freeze())
        }
    }
}
