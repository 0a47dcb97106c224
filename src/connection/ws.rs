//! The WebSocket connection driver: the upgrade handshake, then one due packet per binary message.
//! Owns one WS connection's socket from accept to close; works on plain TCP or TLS streams.
//!
//! The handshake is ours (see `upgrade`), so status codes and check order match due exactly. So is
//! the framing after the 101 (see `ws_frame`), built like the TCP driver: reads go into the
//! shard's scratch buffer, only the tail of a partial frame is kept per connection, and queued
//! packets are written as binary frames coalesced into one write per batch. Pongs and Close
//! replies go out ahead of queued packets, as gorilla's `WriteControl` bypasses due's queue.

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::upgrade::{self, Decision, UpgradeRules};
use super::ws_frame::{self, Decoded, Decoder, Event};
use super::{CloseReason, DeadlineTimer, Inbound, InputTail, IO_BUDGET, SCRATCH, WRITE_BATCH};
use crate::liveness::Liveness;
use crate::packet::{ByteOrder, FrameKind};
use crate::session::{Conn, ConnState};
use crate::shard::{ServerCtx, Shard};

/// WS-only settings, shared by all shards.
pub struct WsRules {
    pub upgrade: UpgradeRules,
    pub handshake_timeout: Duration,
    /// Send Close(1000) before a server-initiated close (due sends none).
    pub close_frame: bool,
    /// Little-endian deployments: answer due-client-ts's fixed `00 00 00 01 80` heartbeat.
    pub le_ts_heartbeat: bool,
}

/// Runs the upgrade handshake on a fresh connection, then admits and serves it.
pub async fn accept<S>(
    shard: &Shard,
    server: &ServerCtx,
    rules: &WsRules,
    peer_ip: std::net::IpAddr,
    stream: S,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Boxed so that this future's states do not each hold a copy of the stream (1.3 KiB for
    // TLS); the listener's future for every WS connection is sized for the TLS case.
    let mut stream = Box::new(stream);
    // Everything the handshake allocated (request head, response) is gone once it returns.
    if !handshake(rules, peer_ip, &mut *stream).await {
        return;
    }
    let Some(conn) = shard.admit(server, peer_ip) else {
        tracing::warn!(ip = %peer_ip, "connection allocate error: too many connection");
        return;
    };
    serve(shard, server, rules, &conn, stream).await;
}

/// Reads the request head and answers it. `true` = the 101 was sent.
async fn handshake<S>(rules: &WsRules, peer_ip: std::net::IpAddr, stream: &mut S) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = match glommio::timer::timeout(rules.handshake_timeout, async {
        Ok(read_head(stream).await)
    })
    .await
    {
        Ok(h) => h,
        Err(_) => {
            tracing::debug!(ip = %peer_ip, "websocket handshake timed out");
            return false;
        }
    };
    let head = match head {
        Head::Complete(h) => h,
        Head::TrailingBytes | Head::Closed => return false,
        Head::TooLarge => {
            if let Decision::Reject { response, .. } = upgrade::too_large() {
                let _ = stream.write_all(&response).await;
            }
            return false;
        }
    };
    match upgrade::decide(&head, &rules.upgrade) {
        Decision::Reject { status, response } => {
            tracing::debug!(ip = %peer_ip, status, "websocket upgrade refused");
            let _ = stream.write_all(&response).await;
            let _ = stream.flush().await;
            false
        }
        Decision::Accept { response } => {
            stream.write_all(&response).await.is_ok() && stream.flush().await.is_ok()
        }
    }
}

enum Head {
    Complete(Vec<u8>),
    /// Bytes after the head before our answer: gorilla drops such connections.
    TrailingBytes,
    TooLarge,
    Closed,
}

/// Reads until the blank line, straight into the head buffer (no stack buffer kept in the
/// connection's future).
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Head {
    const CHUNK: usize = 1024;
    let mut buf = Vec::new();
    loop {
        let len = buf.len();
        buf.resize(len + CHUNK, 0);
        let n = match stream.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(n) => n,
        };
        buf.truncate(len + n);
        if let Some(head) = upgrade::head_len(&buf) {
            if head != buf.len() {
                return Head::TrailingBytes;
            }
            return Head::Complete(buf);
        }
        if buf.len() > upgrade::MAX_HEAD {
            return Head::TooLarge;
        }
    }
}

async fn serve<S>(shard: &Shard, server: &ServerCtx, rules: &WsRules, conn: &Rc<Conn>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut d = WsDriver {
        stream,
        decoder: Decoder::new((server.inbound_cap as usize).saturating_add(4)),
        pending_in: InputTail::default(),
        writing: None,
        control: Vec::new(),
        closing: None,
        live: Liveness::new(server.rules, Instant::now()),
        timer: DeadlineTimer::new(),
        le_ts_heartbeat: rules.le_ts_heartbeat && shard.packet.byte_order == ByteOrder::Little,
        close_frame: rules.close_frame,
    };
    let io = Inbound {
        shard,
        server,
        conn,
    };
    let reason = std::future::poll_fn(|cx| d.poll(&io, cx)).await;
    match &reason {
        CloseReason::Protocol(e) | CloseReason::Io(e) => {
            tracing::info!(cid = conn.cid, reason = %e, "connection closed")
        }
        r => tracing::debug!(cid = conn.cid, reason = ?r, "connection closed"),
    }
    drop(d);
    shard.release(server, conn);
}

struct WsDriver<S> {
    stream: S,
    decoder: Decoder,
    /// The undecoded tail of a partial frame (empty, with no allocation, most of the time).
    pending_in: InputTail,
    /// The batch being written and how much of it is done.
    writing: Option<(Vec<u8>, usize)>,
    /// Encoded Pongs and Close frames, written before further queued packets.
    control: Vec<u8>,
    /// A Close frame is queued in `control`: end with this reason once it is written. Nothing
    /// is read or taken from the outbox any more.
    closing: Option<CloseReason>,
    live: Liveness,
    timer: DeadlineTimer,
    le_ts_heartbeat: bool,
    close_frame: bool,
}

/// The heartbeat due-client-ts always sends, whatever the configured byte order.
const TS_HEARTBEAT: [u8; 5] = [0, 0, 0, 1, 0x80];

impl<S: AsyncRead + AsyncWrite + Unpin> WsDriver<S> {
    fn poll(&mut self, io: &Inbound<'_>, cx: &mut Context<'_>) -> Poll<CloseReason> {
        io.conn.register_waker(cx.waker());
        for _ in 0..IO_BUDGET {
            let now = Instant::now();
            if let Err(r) = io.housekeeping(&mut self.live, now) {
                return self.abort(r, cx);
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
            if self.writing.is_none() && self.control.is_empty() {
                if let Some(reason) = &self.closing {
                    // Our Close (echo, error or 1000) is out.
                    if *reason == CloseReason::Graceful
                        && Pin::new(&mut self.stream).poll_close(cx).is_pending()
                    {
                        return Poll::Pending;
                    }
                    return Poll::Ready(self.closing.take().expect("checked"));
                }
                // Graceful close completes once everything queued before it was written.
                if io.conn.state() == ConnState::Hanged && io.conn.nothing_queued() {
                    if self.close_frame {
                        ws_frame::encode_close(Some(ws_frame::CLOSE_NORMAL), "", &mut self.control);
                        self.closing = Some(CloseReason::Graceful);
                        continue;
                    }
                    return match Pin::new(&mut self.stream).poll_close(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(_) => Poll::Ready(CloseReason::Graceful),
                    };
                }
            }
            // Closing, or a client sending pings faster than it reads the pongs: read no more.
            let read_paused = self.closing.is_some() || self.control.len() >= WRITE_BATCH;
            // Back-pressure: while a node is not keeping up, leave client bytes in the kernel.
            if read_paused || io.shard.upstream.poll_ready(cx).is_pending() {
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

    /// The next batch: queued control frames first, then owed heartbeats and queued packets
    /// as binary frames, up to [`WRITE_BATCH`] bytes (a single larger packet goes alone).
    /// Empty = nothing to write.
    fn next_batch(&mut self, io: &Inbound<'_>) -> Vec<u8> {
        let mut batch = std::mem::take(&mut self.control);
        if self.closing.is_some() {
            // Nothing may follow a Close frame.
            return batch;
        }
        for _ in 0..io.conn.take_heartbeats_owed() {
            ws_frame::encode_binary(&io.shard.heartbeat(), &mut batch);
        }
        let mut q = io.conn.outbox();
        let mut total = batch.len();
        let mut count = 0;
        for p in q.iter() {
            let len = ws_frame::frame_len(p.len());
            if total > 0 && total + len > WRITE_BATCH {
                break;
            }
            total += len;
            count += 1;
        }
        batch.reserve_exact(total - batch.len());
        for p in q.drain(..count) {
            ws_frame::encode_binary(&p, &mut batch);
        }
        batch
    }

    /// Writes queued control frames and packets. `Ok(true)` = something was written.
    fn poll_write(
        &mut self,
        io: &Inbound<'_>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<bool, CloseReason>> {
        let mut wrote = false;
        loop {
            if self.writing.is_none() {
                let batch = self.next_batch(io);
                if batch.is_empty() {
                    return Poll::Ready(Ok(wrote));
                }
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
                Poll::Ready(Err(e)) => return Poll::Ready(Err(write_error(e))),
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
                    return Poll::Ready(Err(write_error(e)));
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
            let (decoder, live, control, closing, le_ts) = (
                &mut self.decoder,
                &mut self.live,
                &mut self.control,
                &mut self.closing,
                self.le_ts_heartbeat,
            );
            self.pending_in.feed(&mut scratch[..n], |data| {
                let mut off = 0;
                while closing.is_none() {
                    match decoder.decode(&mut data[off..]) {
                        Ok(Decoded::Incomplete) => break,
                        Ok(Decoded::Consumed { used, event }) => {
                            off += used;
                            let Some(event) = event else { continue };
                            match event {
                                Event::Binary(msg) => {
                                    // Every binary message is liveness, even an empty or malformed one.
                                    live.on_frame(now);
                                    on_binary(io, &msg, le_ts);
                                }
                                // Answered, but not liveness.
                                Event::Ping(p) => ws_frame::encode_pong(p, control),
                                Event::Close(code) => {
                                    ws_frame::encode_close_reply(code, control);
                                    *closing = Some(CloseReason::PeerClosed);
                                }
                            }
                        }
                        Err(e) => {
                            e.encode_close(control);
                            *closing = Some(CloseReason::Protocol(e.to_string()));
                        }
                    }
                }
                (off, ())
            });
            if self.closing.is_some() {
                // Whatever follows a Close (ours or the client's) is never read.
                self.pending_in.clear();
            }
            Poll::Ready(Ok(()))
        })
    }

    /// A server-initiated close other than graceful (forced, heartbeat or authorize timeout):
    /// due just closes the socket. With `wsCloseFrame`, Close(1000) is attempted first, without
    /// waiting for a client that does not read (and not in the middle of a frame).
    fn abort(&mut self, reason: CloseReason, cx: &mut Context<'_>) -> Poll<CloseReason> {
        if !self.close_frame || self.closing.is_some() || self.writing.is_some() {
            return Poll::Ready(reason);
        }
        ws_frame::encode_close(Some(ws_frame::CLOSE_NORMAL), "", &mut self.control);
        let bye = std::mem::take(&mut self.control);
        if let Poll::Ready(Ok(_)) = Pin::new(&mut self.stream).poll_write(cx, &bye) {
            let _ = Pin::new(&mut self.stream).poll_flush(cx);
        }
        Poll::Ready(reason)
    }
}

/// Handles one binary message by due's rules: exactly one packet, size field included.
fn on_binary(io: &Inbound<'_>, msg: &[u8], le_ts_heartbeat: bool) {
    match io.shard.packet.check_message(msg) {
        Ok(kind) => io.frame(kind, msg),
        Err(_) if le_ts_heartbeat && msg == TS_HEARTBEAT => io.frame(FrameKind::Heartbeat, msg),
        Err(e) => {
            tracing::debug!(
                cid = io.conn.cid,
                len = msg.len(),
                "check heartbeat message error: {e}"
            )
        }
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
