//! The WebSocket way in: the upgrade handshake on a fresh socket, then the connection is admitted
//! and served by the common driver with [`WsFraming`] (one due packet per binary message).
//!
//! The handshake is ours (see `upgrade`), so status codes and check order match due exactly. So is
//! the framing after the 101 (see `framing` and `ws_frame`). Pongs and Close replies go out ahead
//! of queued packets, as gorilla's `WriteControl` bypasses due's queue.

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::framing::{WsFraming, WsOptions};
use super::machine::Connection;
use super::upgrade::{self, Decision, UpgradeRules};
use super::{driver, Host, ServerCtx};
use crate::config::WsConfig;

/// What a WS server needs beyond its `ServerCtx`: the upgrade's rules and the handshake bound
/// from `[network.ws.server]`, the framing options from `[gatehouse]`. Shared by all shards.
pub struct WsRules {
    pub upgrade: UpgradeRules,
    pub handshake_timeout: Duration,
    pub options: WsOptions,
}

impl WsRules {
    /// The rules of the `[network.ws.server]` section `section`, with `[gatehouse]`'s options.
    pub fn new(section: &WsConfig, options: WsOptions) -> Self {
        WsRules {
            upgrade: UpgradeRules {
                path: section.path.clone(),
                origins: section.origins.clone(),
            },
            handshake_timeout: section.handshake_timeout,
            options,
        }
    }
}

/// Runs the upgrade handshake on a fresh connection, then admits and serves it. `pass` is its
/// place under the per-IP limits, given back if it is not admitted.
pub async fn accept<H, S>(
    host: Rc<H>,
    server: Arc<ServerCtx>,
    rules: &WsRules,
    peer_ip: std::net::IpAddr,
    pass: super::IpPass,
    stream: S,
) where
    H: Host + ?Sized,
    S: AsyncRead + AsyncWrite + super::Transferable + Unpin,
{
    // Boxed so that this future's states do not each hold a copy of the stream (1.3 KiB for
    // TLS); the listener's future for every WS connection is sized for the TLS case.
    let mut stream = Box::new(stream);
    // Everything the handshake allocated (request head, response) is gone once it returns.
    if !handshake(rules, peer_ip, &mut *stream).await {
        crate::metrics::shard().refuse(crate::metrics::RefuseLabel::Handshake);
        return;
    }
    let Some(conn) = host.admit(&server, peer_ip) else {
        tracing::warn!(ip = %peer_ip, "connection allocate error: too many connection");
        return;
    };
    pass.admitted();
    let framing = WsFraming::new(*host.packet(), server.inbound_cap, rules.options);
    let machine = Connection::new(conn, framing, server.rules, Instant::now());
    driver::serve(host, server, machine, stream).await;
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
