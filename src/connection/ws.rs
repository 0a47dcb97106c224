//! The WebSocket connection driver: the upgrade handshake, then one due packet per binary message.
//! Owns one WS connection's socket from accept to close; works on plain TCP or TLS streams.
//!
//! The handshake is ours (see `upgrade`), so status codes and check order match due exactly; only
//! framing after the 101 is delegated to tungstenite, configured with small buffers so an idle
//! connection stays cheap.

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::WebSocketStream;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_util::{Sink, Stream};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::upgrade::{self, Decision, UpgradeRules};
use super::{CloseReason, DeadlineTimer, Inbound, IO_BUDGET};
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
    mut stream: S,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = match glommio::timer::timeout(rules.handshake_timeout, async {
        Ok(read_head(&mut stream).await)
    })
    .await
    {
        Ok(h) => h,
        Err(_) => {
            tracing::debug!(ip = %peer_ip, "websocket handshake timed out");
            return;
        }
    };
    let head = match head {
        Head::Complete(h) => h,
        Head::TrailingBytes | Head::Closed => return,
        Head::TooLarge => {
            if let Decision::Reject { response, .. } = upgrade::too_large() {
                let _ = stream.write_all(&response).await;
            }
            return;
        }
    };
    match upgrade::decide(&head, &rules.upgrade) {
        Decision::Reject { status, response } => {
            tracing::debug!(ip = %peer_ip, status, "websocket upgrade refused");
            let _ = stream.write_all(&response).await;
            let _ = stream.flush().await;
        }
        Decision::Accept { response } => {
            if stream.write_all(&response).await.is_err() || stream.flush().await.is_err() {
                return;
            }
            let Some(conn) = shard.admit(server, peer_ip) else {
                tracing::warn!(ip = %peer_ip, "connection allocate error: too many connection");
                return;
            };
            serve(shard, server, rules, &conn, stream).await;
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

async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Head {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(len) = upgrade::head_len(&buf) {
            if len != buf.len() {
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
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(server.inbound_cap as usize + 4))
        .max_frame_size(Some(server.inbound_cap as usize + 4));
    let ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;
    let mut d = WsDriver {
        ws,
        live: Liveness::new(server.rules, Instant::now()),
        timer: DeadlineTimer::new(),
        needs_flush: false,
        peer_closed: false,
        le_ts_heartbeat: rules.le_ts_heartbeat && shard.packet.byte_order == ByteOrder::Little,
        close_frame: rules.close_frame,
        closing: false,
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
    ws: WebSocketStream<S>,
    live: Liveness,
    timer: DeadlineTimer,
    /// Messages (or an automatic pong/close reply) were handed to tungstenite but not flushed.
    needs_flush: bool,
    /// The client sent Close: flush tungstenite's echo, then end.
    peer_closed: bool,
    le_ts_heartbeat: bool,
    close_frame: bool,
    /// Our own Close(1000) is being sent.
    closing: bool,
}

/// Classifies a read error: a client vanishing without a Close frame is an ordinary close, not
/// a protocol violation worth an INFO line per connection.
fn read_error(e: WsError) -> CloseReason {
    use async_tungstenite::tungstenite::error::ProtocolError;
    match e {
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => CloseReason::PeerClosed,
        WsError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionReset => {
            CloseReason::PeerClosed
        }
        WsError::Io(io) => CloseReason::Io(io.to_string()),
        other => CloseReason::Protocol(other.to_string()),
    }
}

/// The heartbeat due-client-ts always sends, whatever the configured byte order.
const TS_HEARTBEAT: [u8; 5] = [0, 0, 0, 1, 0x80];

impl<S: AsyncRead + AsyncWrite + Unpin> WsDriver<S> {
    fn poll(&mut self, io: &Inbound<'_>, cx: &mut Context<'_>) -> Poll<CloseReason> {
        io.conn.register_waker(cx.waker());
        for _ in 0..IO_BUDGET {
            let now = Instant::now();
            if let Err(r) = io.housekeeping(&mut self.live, now) {
                return self.end(r, cx);
            }
            if self.closing {
                return self.end(CloseReason::Graceful, cx);
            }
            if self
                .timer
                .poll(self.live.next_deadline(), now, cx)
                .is_ready()
            {
                continue;
            }
            let mut progress = false;
            match self.poll_write(io.conn, cx) {
                Poll::Ready(Err(r)) => return Poll::Ready(r),
                Poll::Ready(Ok(p)) => progress |= p,
                Poll::Pending => {}
            }
            let flushed = !self.needs_flush;
            if self.peer_closed && flushed {
                return Poll::Ready(CloseReason::PeerClosed);
            }
            if io.conn.state() == ConnState::Hanged && flushed && io.conn.outbox().is_empty() {
                return self.end(CloseReason::Graceful, cx);
            }
            // Back-pressure: while a node is not keeping up, leave client bytes in the kernel.
            if !self.peer_closed && io.shard.upstream.poll_ready(cx).is_pending() {
                if progress {
                    continue;
                }
                return Poll::Pending;
            }
            if !self.peer_closed {
                match Pin::new(&mut self.ws).poll_next(cx) {
                    Poll::Ready(Some(Ok(msg))) => {
                        progress = true;
                        self.on_message(io, msg, now);
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(read_error(e)),
                    Poll::Ready(None) => return Poll::Ready(CloseReason::PeerClosed),
                    Poll::Pending => {}
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn on_message(&mut self, io: &Inbound<'_>, msg: Message, now: Instant) {
        match msg {
            Message::Binary(data) => {
                // Every binary message is liveness, even an empty or malformed one.
                self.live.on_frame(now);
                match io.shard.packet.check_message(&data) {
                    Ok(kind) => io.frame(kind, &data),
                    Err(_) if self.le_ts_heartbeat && data[..] == TS_HEARTBEAT => {
                        io.frame(FrameKind::Heartbeat, &data)
                    }
                    Err(e) => {
                        tracing::debug!(
                            cid = io.conn.cid,
                            len = data.len(),
                            "check heartbeat message error: {e}"
                        )
                    }
                }
            }
            // Text is ignored entirely and is not liveness; pings are answered by tungstenite.
            Message::Ping(_) => self.needs_flush = true,
            Message::Close(_) => {
                self.peer_closed = true;
                self.needs_flush = true;
            }
            Message::Text(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }

    /// Hands queued packets to tungstenite (one binary message each) and flushes.
    fn poll_write(&mut self, conn: &Conn, cx: &mut Context<'_>) -> Poll<Result<bool, CloseReason>> {
        let mut sent = false;
        loop {
            if conn.outbox().is_empty() {
                break;
            }
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(CloseReason::Io(e.to_string()))),
                Poll::Pending => break,
            }
            let Some(bytes) = conn.outbox().pop_front() else {
                break;
            };
            if let Err(e) = Pin::new(&mut self.ws).start_send(Message::Binary(bytes)) {
                return Poll::Ready(Err(CloseReason::Io(e.to_string())));
            }
            sent = true;
            self.needs_flush = true;
        }
        if self.needs_flush {
            match Pin::new(&mut self.ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(CloseReason::Io(e.to_string()))),
                Poll::Pending => {}
            }
        }
        if sent {
            Poll::Ready(Ok(true))
        } else if self.needs_flush {
            Poll::Pending
        } else {
            Poll::Ready(Ok(false))
        }
    }

    /// A server-initiated close: due just closes the socket; optionally send Close(1000) first.
    fn end(&mut self, reason: CloseReason, cx: &mut Context<'_>) -> Poll<CloseReason> {
        if !self.close_frame {
            return Poll::Ready(reason);
        }
        if !self.closing {
            self.closing = true;
            let bye = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            if Pin::new(&mut self.ws)
                .start_send(Message::Close(Some(bye)))
                .is_err()
            {
                return Poll::Ready(reason);
            }
        }
        match Pin::new(&mut self.ws).poll_flush(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(reason),
        }
    }
}
