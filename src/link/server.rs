//! The gate's link server: nodes and meshes dial it to bind users and push to clients.
//! Owns each inbound link connection: handshake, heartbeat echo, idle cut, and the commands.
//!
//! Every shard accepts on its own SO_REUSEPORT socket. Frames of one connection are handled
//! strictly in order; a request with seq ≠ 0 is answered on the same connection before the next
//! frame is looked at (due's server does the same). Fire-and-forget pushes are posted to the
//! owning shard without waiting, so a node streaming pushes is not slowed by round trips.

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::drpc::{self as codec, Cmd, Frame, Request, LINK_HEARTBEAT, MAX_LINK_FRAME};
use crate::session::{Kind, SessionError, Sessions};
use crate::shard::Shard;

/// What the link server shares across shards.
pub struct LinkShared {
    /// Instance state (due's shut/work/busy/hang as 0..3), for getstate/setstate.
    pub state: AtomicU8,
    /// Publish responses: v2.4.1 (`total` only) or v2.5.5+ (`code` + `total`).
    pub publish_v25: bool,
}

/// Accepts node connections on one shard until `stop` is dropped.
pub async fn accept_loop(
    shard: Rc<Shard>,
    link: Arc<LinkShared>,
    fd: OwnedFd,
    stop: flume::Receiver<()>,
) {
    crate::listener::accept_each(fd, stop, "link", |stream| {
        let (shard, link) = (shard.clone(), link.clone());
        glommio::spawn_local(serve(shard, link, stream)).detach();
    })
    .await
}

/// The peer as its handshake described it.
#[derive(Default)]
struct Peer {
    kind: u8,
    id: String,
}

async fn serve(shard: Rc<Shard>, link: Arc<LinkShared>, mut stream: glommio::net::TcpStream) {
    let remote = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut inbuf = BytesMut::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut out = BytesMut::new();
    let mut peer = Peer::default();
    let mut last_seen = Instant::now();
    let reason = loop {
        let read =
            glommio::timer::timeout(LINK_HEARTBEAT, async { Ok(stream.read(&mut chunk).await) })
                .await;
        match read {
            Err(_) => {
                if last_seen.elapsed() > LINK_HEARTBEAT * 2 {
                    break "no frame for 20 s".to_string();
                }
                continue;
            }
            Ok(Ok(0)) => break "closed by peer".to_string(),
            Ok(Ok(n)) => {
                inbuf.extend_from_slice(&chunk[..n]);
                last_seen = Instant::now();
            }
            Ok(Err(e)) => break e.to_string(),
        }
        let mut failed = None;
        loop {
            let len = match codec::frame_len(&inbuf, MAX_LINK_FRAME) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            };
            let frame = inbuf.split_to(len).freeze();
            match codec::decode(frame) {
                Ok(Frame::Heartbeat) => codec::put_heartbeat(&mut out),
                Ok(Frame::Unknown { cmd, seq }) => {
                    tracing::debug!(cmd, seq, %remote, "unknown link command ignored")
                }
                Ok(Frame::Request { header, seq, req }) => {
                    handle(&shard, &link, &mut peer, header, seq, req, &mut out).await
                }
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out).await {
                break e.to_string();
            }
            out.clear();
        }
        if let Some(e) = failed {
            break e;
        }
    };
    tracing::debug!(%remote, kind = peer.kind, id = %peer.id, %reason, "link connection closed");
}

fn kind_of(k: u8) -> Result<Kind, SessionError> {
    Kind::from_wire(k)
}

fn code_of<T>(r: &Result<T, SessionError>) -> u16 {
    match r {
        Ok(_) => 0,
        Err(e) => e.code(),
    }
}

/// Handles one request; appends the response (if any) to `out`.
async fn handle(
    shard: &Shard,
    link: &LinkShared,
    peer: &mut Peer,
    header: u8,
    seq: u64,
    req: Request,
    out: &mut BytesMut,
) {
    let s: &Sessions = &shard.sessions;
    let disconnect_after = header & codec::HEADER_DISCONNECT != 0;
    match req {
        Request::Handshake { kind, id } => {
            peer.kind = kind;
            peer.id = String::from_utf8_lossy(&id).into_owned();
            codec::put_code(out, Cmd::Handshake, seq, 0);
        }
        Request::Bind { cid, uid } => {
            let r = s.bind(cid, uid).await;
            if let Err(e) = &r {
                tracing::debug!(cid, uid, error = %e, "bind refused");
            }
            if seq != 0 {
                codec::put_code(out, Cmd::Bind, seq, code_of(&r));
            }
        }
        Request::Unbind { uid } => {
            let r = s.unbind(uid).await;
            if seq != 0 {
                codec::put_code(out, Cmd::Unbind, seq, code_of(&r));
            }
        }
        Request::GetIp { kind, target } => {
            let r = match kind_of(kind) {
                Ok(k) => s.get_ip(k, target).await,
                Err(e) => Err(e),
            };
            if seq != 0 {
                codec::put_getip_res(out, seq, code_of(&r), r.ok());
            }
        }
        Request::Stat { kind } => {
            let r = match kind_of(kind) {
                Ok(k) => s.stat(k).await,
                Err(e) => Err(e),
            };
            if seq != 0 {
                codec::put_total_res(out, Cmd::Stat, seq, code_of(&r), r.unwrap_or(0) as u64);
            }
        }
        Request::IsOnline { kind, target } => {
            let r = match kind_of(kind) {
                Ok(k) => s.is_online(k, target).await,
                Err(e) => Err(e),
            };
            if seq != 0 {
                codec::put_isonline_res(out, seq, code_of(&r), r.unwrap_or(false));
            }
        }
        Request::Disconnect {
            kind,
            target,
            force,
        } => {
            let r = match kind_of(kind) {
                Ok(k) if seq == 0 => {
                    // Not awaited: a graceful close waits for the client's queue to drain, and
                    // the link must keep reading meanwhile.
                    let s = s.clone();
                    glommio::spawn_local(async move {
                        if let Err(e) = s.disconnect(k, target, force).await {
                            tracing::debug!(target, error = %e, "disconnect refused");
                        }
                    })
                    .detach();
                    Ok(())
                }
                Ok(k) => s.disconnect(k, target, force).await,
                Err(e) => Err(e),
            };
            if seq != 0 {
                codec::put_code(out, Cmd::Disconnect, seq, code_of(&r));
            }
        }
        Request::Push {
            kind,
            target,
            message,
        } => {
            let r = match kind_of(kind) {
                Ok(k) if seq == 0 && !disconnect_after => shard.push_nowait(k, target, message),
                Ok(k) => {
                    let r = s.push(k, target, message).await;
                    if r.is_ok() && disconnect_after {
                        close_after(s, k, &[target]);
                    }
                    r
                }
                Err(e) => Err(e),
            };
            if seq != 0 {
                codec::put_code(out, Cmd::Push, seq, code_of(&r));
            }
        }
        Request::Multicast {
            kind,
            targets,
            message,
        } => {
            let r = match kind_of(kind) {
                Ok(k) => {
                    let r = s.multicast(k, &targets, message).await;
                    if disconnect_after {
                        close_after(s, k, &targets);
                    }
                    r
                }
                Err(e) => Err(e),
            };
            if seq != 0 {
                codec::put_total_res(out, Cmd::Multicast, seq, code_of(&r), r.unwrap_or(0) as u64);
            }
        }
        Request::Broadcast { kind, message } => {
            let r = match kind_of(kind) {
                Ok(k) => s.broadcast(k, message).await,
                Err(e) => Err(e),
            };
            if disconnect_after {
                tracing::warn!("broadcast with disconnect flag: closing every target is not supported, flag ignored");
            }
            if seq != 0 {
                codec::put_total_res(out, Cmd::Broadcast, seq, code_of(&r), r.unwrap_or(0) as u64);
            }
        }
        Request::Publish { channel, message } => {
            let r = s.publish(&String::from_utf8_lossy(&channel), message).await;
            if seq != 0 {
                let total = *r.as_ref().unwrap_or(&0) as u64;
                if link.publish_v25 {
                    codec::put_publish_res_v25(out, seq, code_of(&r), total);
                } else {
                    codec::put_publish_res_v24(out, seq, total);
                }
            }
        }
        Request::Subscribe {
            kind,
            targets,
            channel,
        } => membership(s, Cmd::Subscribe, seq, kind, &targets, &channel, out).await,
        Request::Unsubscribe {
            kind,
            targets,
            channel,
        } => membership(s, Cmd::Unsubscribe, seq, kind, &targets, &channel, out).await,
        Request::GetState => {
            codec::put_getstate_res(out, seq, 0, link.state.load(Ordering::Relaxed));
        }
        Request::SetState { state } => {
            link.state.store(state, Ordering::Relaxed);
            if seq != 0 {
                codec::put_code(out, Cmd::SetState, seq, 0);
            }
        }
        Request::Trigger { .. } | Request::Deliver { .. } => {
            tracing::debug!(id = %peer.id, "node-bound command sent to the gate, ignored");
        }
    }
}

async fn membership(
    s: &Sessions,
    cmd: Cmd,
    seq: u64,
    kind: u8,
    targets: &[i64],
    channel: &Bytes,
    out: &mut BytesMut,
) {
    let channel = String::from_utf8_lossy(channel);
    let r = match kind_of(kind) {
        Ok(k) if cmd == Cmd::Subscribe => s.subscribe(k, targets, &channel).await,
        Ok(k) => s.unsubscribe(k, targets, &channel).await,
        Err(e) => Err(e),
    };
    if seq != 0 {
        codec::put_code(out, cmd, seq, code_of(&r));
    }
}

/// v2.5.3+ "disconnect after push": close each target gracefully once its message is queued.
fn close_after(s: &Sessions, kind: Kind, targets: &[i64]) {
    for &t in targets {
        let s = s.clone();
        glommio::spawn_local(async move {
            let _ = s.disconnect(kind, t, false).await;
        })
        .detach();
    }
}
