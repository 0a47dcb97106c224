//! The gate's link server: nodes and meshes dial it to bind users and push to clients.
//! Owns each inbound link connection's socket loop: read, frame, plan, run, answer, idle cut.
//!
//! Every shard accepts on its own SO_REUSEPORT socket. Frames of one connection are handled
//! strictly in order; a request with seq ≠ 0 is answered on the same connection before the next
//! frame is looked at (due's server does the same). Fire-and-forget pushes are posted to the
//! owning shard without waiting, so a node streaming pushes is not slowed by round trips, and a
//! graceful disconnect with seq 0 is not awaited. What each command does and answers is decided
//! by [`super::command`]; this file only runs those plans.

use bytes::BytesMut;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::command::{self, Effect, Outcome, Peer, Rules};
use super::LocalSessions;
use crate::drpc::{self, Frame, LINK_HEARTBEAT, MAX_LINK_FRAME};
use crate::instance::StateCell;
use crate::session::Kind;

/// What the link server shares across shards.
pub struct LinkShared {
    /// The gate's instance state (due's shut/work/busy/hang as 0..3), for getstate/setstate;
    /// the same cell the registrar registers from.
    pub state: StateCell,
    /// Publish responses: v2.4.1 (`total` only) or v2.5.5+ (`code` + `total`).
    pub publish_v25: bool,
}

/// Accepts node connections on one shard until `stop` is dropped; then every link connection
/// of this shard ends too, and this returns once they have.
pub async fn accept_loop<L: LocalSessions + 'static>(
    local: Rc<L>,
    link: Arc<LinkShared>,
    fd: OwnedFd,
    stop: flume::Receiver<()>,
) {
    let connections = glommio::sync::Gate::new();
    crate::net::accept_each(fd, stop.clone(), "link", |stream| {
        let (local, link, stop) = (local.clone(), link.clone(), stop.clone());
        if let Ok(task) = connections.spawn(serve(local, link, stream, stop)) {
            task.detach();
        }
    })
    .await;
    let _ = connections.close().await;
}

async fn serve<L: LocalSessions>(
    local: Rc<L>,
    link: Arc<LinkShared>,
    mut stream: glommio::net::TcpStream,
    stop: flume::Receiver<()>,
) {
    let remote = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let rules = Rules {
        publish_v25: link.publish_v25,
    };
    let mut inbuf = BytesMut::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut out = BytesMut::new();
    let mut peer = Peer::default();
    let mut last_seen = Instant::now();
    let reason = loop {
        let read = futures_lite::future::or(
            async {
                Some(
                    glommio::timer::timeout(LINK_HEARTBEAT, async {
                        Ok(stream.read(&mut chunk).await)
                    })
                    .await,
                )
            },
            async {
                let _ = stop.recv_async().await;
                None
            },
        )
        .await;
        let Some(read) = read else {
            break "gate stopping".to_string();
        };
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
            let len = match drpc::frame_len(&inbuf, MAX_LINK_FRAME) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            };
            let frame = inbuf.split_to(len).freeze();
            match drpc::decode(frame) {
                Ok(Frame::Heartbeat) => drpc::put_heartbeat(&mut out),
                Ok(Frame::Unknown { cmd, seq }) => {
                    tracing::debug!(cmd, seq, %remote, "unknown link command ignored")
                }
                Ok(Frame::Request { header, seq, req }) => {
                    let plan = command::plan(&mut peer, rules, header, seq, req);
                    let outcome = run(&*local, &link, &peer, plan.effect).await;
                    command::respond(plan.reply, &outcome, &mut out);
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

/// Runs one planned effect against the sessions and the shared instance state.
async fn run<L: LocalSessions>(
    local: &L,
    link: &LinkShared,
    peer: &Peer,
    effect: Effect,
) -> Outcome {
    let s = local.sessions();
    match effect {
        Effect::AnswerNow => Outcome::Unit(Ok(())),
        Effect::Refuse(e) => Outcome::Unit(Err(e)),
        Effect::Bind { cid, uid } => {
            let r = s.bind(cid, uid).await;
            if let Err(e) = &r {
                tracing::debug!(cid, uid, error = %e, "bind refused");
            }
            Outcome::Unit(r)
        }
        Effect::Unbind { uid } => Outcome::Unit(s.unbind(uid).await),
        Effect::GetIp { kind, target } => Outcome::Ip(s.get_ip(kind, target).await),
        Effect::Stat { kind } => Outcome::Count(s.stat(kind).await),
        Effect::IsOnline { kind, target } => Outcome::Online(s.is_online(kind, target).await),
        Effect::Disconnect {
            kind,
            target,
            force,
        } => Outcome::Unit(s.disconnect(kind, target, force).await),
        Effect::DisconnectDetached {
            kind,
            target,
            force,
        } => {
            let s = s.clone();
            local.spawn(async move {
                if let Err(e) = s.disconnect(kind, target, force).await {
                    tracing::debug!(target, error = %e, "disconnect refused");
                }
            });
            Outcome::Unit(Ok(()))
        }
        Effect::PushNowait {
            kind,
            target,
            message,
        } => Outcome::Unit(local.push_nowait(kind, target, message)),
        Effect::Push {
            kind,
            target,
            message,
            close_after,
        } => {
            let r = s.push(kind, target, message).await;
            if r.is_ok() && close_after {
                close_each(local, kind, &[target]);
            }
            Outcome::Unit(r)
        }
        Effect::Multicast {
            kind,
            targets,
            message,
            close_after,
        } => {
            let r = s.multicast(kind, &targets, message).await;
            if close_after {
                close_each(local, kind, &targets);
            }
            Outcome::Count(r)
        }
        Effect::Broadcast {
            kind,
            message,
            close_flag_ignored,
        } => {
            let r = s.broadcast(kind, message).await;
            if close_flag_ignored {
                tracing::warn!("broadcast with disconnect flag: closing every target is not supported, flag ignored");
            }
            Outcome::Count(r)
        }
        Effect::Publish { channel, message } => {
            Outcome::Count(s.publish(&String::from_utf8_lossy(&channel), message).await)
        }
        Effect::Subscribe {
            kind,
            targets,
            channel,
        } => Outcome::Count(
            s.subscribe(kind, &targets, &String::from_utf8_lossy(&channel))
                .await,
        ),
        Effect::Unsubscribe {
            kind,
            targets,
            channel,
        } => Outcome::Count(
            s.unsubscribe(kind, &targets, &String::from_utf8_lossy(&channel))
                .await,
        ),
        Effect::GetState => Outcome::State(link.state.byte()),
        Effect::SetState(state) => {
            link.state.set_byte(state);
            Outcome::Unit(Ok(()))
        }
        Effect::Ignore(cmd) => {
            tracing::debug!(id = %peer.id, %cmd, "node-bound command sent to the gate, ignored");
            Outcome::Unit(Ok(()))
        }
    }
}

/// v2.5.3+ "disconnect after push": close each target gracefully once its message is queued.
fn close_each<L: LocalSessions>(local: &L, kind: Kind, targets: &[i64]) {
    for &t in targets {
        let s = local.sessions().clone();
        local.spawn(async move {
            let _ = s.disconnect(kind, t, false).await;
        });
    }
}
