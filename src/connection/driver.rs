//! The one IO driver of client connections: moves bytes between a socket and a [`Connection`]
//! machine, runs its timer, and releases the connection when the machine is done.
//!
//! Works on any futures-io stream (plain TCP or TLS) and any [`Framing`] (TCP or WebSocket).
//! Reads land in the shard's scratch buffer; queued packets leave in batches of up to 64 KiB, so
//! a burst of pushes to one client costs one syscall, not one per packet.

use futures_lite::io::{AsyncRead, AsyncWrite};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use super::framing::Framing;
use super::machine::{CloseStatus, Connection};
use super::record::{ConnParcel, SKIM_QUIET};
use super::{CloseReason, DeadlineTimer, Host, ServerCtx, Transferable, IO_BUDGET, SCRATCH};
use crate::handoff::{Member, Phase};

/// How a connection's task ends.
enum End {
    Closed(CloseReason),
    /// The next process took the socket and the state (`--upgrade`).
    HandedOff,
}

/// Serves one admitted connection until it closes, then releases it through `host`.
///
/// The driver is built before the returned future rather than inside an `async fn`: an async
/// fn keeps its moved-from arguments (the stream) in its state beside the driver for the
/// connection's whole life, and every idle connection would pay for that copy.
pub fn serve<H, F, S>(
    host: Rc<H>,
    server: Arc<ServerCtx>,
    machine: Connection<F>,
    stream: S,
) -> impl Future<Output = ()>
where
    H: Host + ?Sized,
    F: Framing,
    S: AsyncRead + AsyncWrite + Transferable + Unpin,
{
    let mut d = Driver {
        stream,
        machine,
        timer: DeadlineTimer::new(),
        member: host.stage().map(|s| s.enter()),
        parked: None,
        last_out: Instant::now(),
    };
    async move {
        let end = std::future::poll_fn(|cx| d.poll(&*host, cx)).await;
        let conn = d.machine.conn().clone();
        let reason = match end {
            End::Closed(reason) => reason,
            End::HandedOff => {
                tracing::debug!(cid = conn.cid, "connection handed over");
                drop(d);
                host.forget(&server, &conn);
                return;
            }
        };
        crate::metrics::shard().close(reason.label(&conn));
        match &reason {
            CloseReason::Protocol(e) | CloseReason::Io(e) => {
                tracing::info!(cid = conn.cid, reason = %e, "connection closed")
            }
            r => tracing::debug!(cid = conn.cid, reason = ?r, "connection closed"),
        }
        drop(d);
        host.release(&server, &conn);
    }
}

struct Driver<F, S> {
    stream: S,
    machine: Connection<F>,
    timer: DeadlineTimer,
    /// Membership of the shard's client stage (upgrades); `None` where none can happen.
    member: Option<Member>,
    /// Parked by a freeze: whether the parcel was taken (`true`) or stays here (`false`).
    parked: Option<bool>,
    /// When bytes were last written to the client (a client that is pushed to is not quiet).
    last_out: Instant,
}

impl<F: Framing, S: AsyncRead + AsyncWrite + Transferable + Unpin> Driver<F, S> {
    fn poll<H: Host + ?Sized>(&mut self, host: &H, cx: &mut Context<'_>) -> Poll<End> {
        self.machine.conn().register_waker(cx.waker());
        if let Some(parked) = self.poll_stage(host, cx) {
            return parked;
        }
        self.poll_serve(host, cx).map(End::Closed)
    }

    /// Parks the connection while its shard hands its connections over (`--upgrade`): the
    /// first time, its socket and state are offered to the hand-off; nothing is read or written
    /// until the hand-off ends. While skimming, only a quiet connection parks (nothing in or out
    /// for [`SKIM_QUIET`]), and only if its parcel is taken; the others serve on until the
    /// freeze. `None` = serve as usual (not in a hand-off, or it was called off, or the
    /// connection was not taken and stays here).
    fn poll_stage<H: Host + ?Sized>(
        &mut self,
        host: &H,
        cx: &mut Context<'_>,
    ) -> Option<Poll<End>> {
        let member = self.member.as_ref()?;
        let phase = member.stage().phase();
        if self.parked.is_some() && phase != Phase::Committed && !member.parked_now() {
            // Parked in an earlier hand-off that was thawed before this task ran again.
            self.parked = None;
            self.machine.conn().set_handed(false);
        }
        match phase {
            Phase::Serving => {
                if self.parked.take() == Some(true) {
                    self.machine.conn().set_handed(false);
                }
                return None;
            }
            Phase::Committed => {
                return match self.parked {
                    Some(true) => Some(Poll::Ready(End::HandedOff)),
                    _ => None,
                };
            }
            Phase::Skimming if self.parked.is_none() => {
                if member.decided() {
                    return None;
                }
                let now = Instant::now();
                let quiet = now.saturating_duration_since(self.last_out) >= SKIM_QUIET
                    && self.machine.is_quiet(now, SKIM_QUIET);
                let taken = quiet
                    && match self.stream.socket() {
                        Some(fd) => {
                            let record = self.machine.export(now);
                            host.hand_over(ConnParcel { record, fd })
                        }
                        None => false,
                    };
                if !taken {
                    member.decline();
                    return None;
                }
                self.parked = Some(true);
                self.machine.conn().set_handed(true);
                member.park();
            }
            Phase::Skimming => {}
            Phase::Frozen => {
                if self.parked.is_none() {
                    // The socket is lent: this task keeps it open while parked.
                    let taken = match self.stream.socket() {
                        Some(fd) => {
                            let record = self.machine.export(Instant::now());
                            host.hand_over(ConnParcel { record, fd })
                        }
                        None => false,
                    };
                    self.parked = Some(taken);
                    self.machine.conn().set_handed(taken);
                }
                member.park();
            }
        }
        match member.poll_leave(phase, cx) {
            Poll::Pending => Some(Poll::Pending),
            // Re-enter: the phase decides again.
            Poll::Ready(_) => self.poll_stage(host, cx),
        }
    }

    fn poll_serve<H: Host + ?Sized>(
        &mut self,
        host: &H,
        cx: &mut Context<'_>,
    ) -> Poll<CloseReason> {
        for _ in 0..IO_BUDGET {
            let now = Instant::now();
            if let Err(r) = self.machine.handle_timeout(now) {
                // A client is silent only if nothing waits in the socket either: after a stall
                // of the shard (or a hand-off) its heartbeat may be there, unread.
                if r == CloseReason::HeartbeatTimeout && self.machine.wants_read() {
                    match self.poll_read(host, cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(e),
                        Poll::Pending => {}
                    }
                }
                return Poll::Ready(self.abort(r, cx));
            }
            if self
                .timer
                .poll(self.machine.poll_timeout(), now, cx)
                .is_ready()
            {
                continue;
            }
            let mut progress = false;
            match self.poll_write(host, cx) {
                Poll::Ready(Err(r)) => return Poll::Ready(r),
                Poll::Ready(Ok(wrote)) => {
                    if wrote {
                        self.last_out = now;
                    }
                    progress |= wrote;
                }
                Poll::Pending => {}
            }
            match self.machine.poll_close() {
                CloseStatus::Open => {}
                // A goodbye was queued: write it.
                CloseStatus::Goodbye => continue,
                CloseStatus::Done(end) => {
                    if end.shutdown && Pin::new(&mut self.stream).poll_close(cx).is_pending() {
                        return Poll::Pending;
                    }
                    return Poll::Ready(end.reason);
                }
            }
            // Back-pressure: while the node this client's last packet went to is not keeping
            // up, leave this client's bytes in the kernel (other clients read on).
            if !self.machine.wants_read()
                || host.poll_ready(self.machine.conn().cid, cx).is_pending()
            {
                if progress {
                    continue;
                }
                return Poll::Pending;
            }
            match self.poll_read(host, cx) {
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

    /// Writes what the machine has to send. `Ok(true)` = something was written.
    fn poll_write<H: Host + ?Sized>(
        &mut self,
        host: &H,
        cx: &mut Context<'_>,
    ) -> Poll<Result<bool, CloseReason>> {
        let mut wrote = false;
        loop {
            let Some(buf) = self.machine.poll_transmit(host) else {
                return Poll::Ready(Ok(wrote));
            };
            match Pin::new(&mut self.stream).poll_write(cx, buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(CloseReason::PeerClosed)),
                Poll::Ready(Ok(n)) => {
                    wrote = true;
                    let m = crate::metrics::shard();
                    m.bytes_out.add(n as u64);
                    m.write_batch.observe(n as u64);
                    // TLS buffers records: push them out once the batch is handed over.
                    if self.machine.transmitted(n) {
                        if let Poll::Ready(Err(e)) = Pin::new(&mut self.stream).poll_flush(cx) {
                            return Poll::Ready(Err(write_error(e)));
                        }
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(write_error(e))),
                Poll::Pending => {
                    return if wrote {
                        Poll::Ready(Ok(true))
                    } else {
                        Poll::Pending
                    }
                }
            }
        }
    }

    /// Reads once and hands the bytes to the machine. `Ok(())` = bytes were read.
    fn poll_read<H: Host + ?Sized>(
        &mut self,
        host: &H,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), CloseReason>> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let n = match super::poll_read_into(&mut self.stream, cx, &mut scratch[..]) {
                Poll::Ready(Ok(n)) => n,
                other => return other.map(|r| r.map(|_| ())),
            };
            crate::metrics::shard().bytes_in.add(n as u64);
            Poll::Ready(
                self.machine
                    .handle_input(&mut scratch[..n], Instant::now(), host),
            )
        })
    }

    /// A close other than graceful: the machine's farewell is tried once, without waiting for a
    /// client that does not read.
    fn abort(&mut self, reason: CloseReason, cx: &mut Context<'_>) -> CloseReason {
        if let Some(bye) = self.machine.farewell() {
            if let Poll::Ready(Ok(_)) = Pin::new(&mut self.stream).poll_write(cx, &bye) {
                let _ = Pin::new(&mut self.stream).poll_flush(cx);
            }
        }
        reason
    }
}

/// A client that vanished while we wrote is an ordinary close.
fn write_error(e: std::io::Error) -> CloseReason {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
            CloseReason::PeerClosed
        }
        _ => CloseReason::Io(e.to_string()),
    }
}
