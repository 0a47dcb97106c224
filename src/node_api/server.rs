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

use serde::{Deserialize, Serialize};

use super::command::{self, Effect, Outcome, Peer, Rules};
use super::LocalSessions;
use crate::drpc::{self, Frame, LINK_HEARTBEAT, MAX_LINK_FRAME};
use crate::handoff::{Member, Phase};
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

/// A link connection's state apart from its socket: the peer its handshake named and the input
/// read but not yet decoded. Frozen between two reads, so nothing else is in flight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub peer: Peer,
    pub input_tail: Vec<u8>,
}

/// A frozen link connection on its way to the next process; its socket lent by the parked task
/// in the old process ([`crate::handoff::Lent`]), owned in the new one.
#[derive(Debug)]
pub struct LinkParcel<S = OwnedFd> {
    pub record: LinkRecord,
    pub fd: S,
}

/// Accepts node connections on one shard until `stop` is dropped. Each connection runs as a task
/// of the shard until it ends or `closing` is dropped (the gate stops).
pub async fn accept_loop<L: LocalSessions + 'static>(
    local: Rc<L>,
    link: Arc<LinkShared>,
    fd: OwnedFd,
    stop: flume::Receiver<()>,
    closing: flume::Receiver<()>,
) {
    crate::net::accept_each(fd, stop, "link", |stream| {
        let task = serve(
            local.clone(),
            link.clone(),
            stream,
            closing.clone(),
            LinkRecord::default(),
        );
        local.spawn(task);
    })
    .await;
}

/// Carries on a link connection the previous process handed over (`--upgrade`).
pub fn adopt<L: LocalSessions + 'static>(
    local: &Rc<L>,
    link: Arc<LinkShared>,
    parcel: LinkParcel,
    closing: flume::Receiver<()>,
) {
    let stream = crate::net::stream_from(parcel.fd);
    local.spawn(serve(local.clone(), link, stream, closing, parcel.record));
}

/// How a parked link connection goes on.
enum Parked {
    Resume,
    HandedOff,
}

/// Parks a link connection for a freeze: offers its socket and state to the hand-off, then waits
/// for the freeze to end.
async fn park<L: LocalSessions>(
    local: &L,
    member: &Member,
    stream: &glommio::net::TcpStream,
    record: LinkRecord,
) -> Parked {
    // The socket is lent: this task keeps it open while parked.
    let fd = std::os::fd::AsRawFd::as_raw_fd(stream);
    let taken = local.hand_over_link(LinkParcel { record, fd });
    member.park();
    let phase = std::future::poll_fn(|cx| member.poll_leave(Phase::Frozen, cx)).await;
    match phase {
        Phase::Committed if taken => Parked::HandedOff,
        _ => Parked::Resume,
    }
}

async fn serve<L: LocalSessions>(
    local: Rc<L>,
    link: Arc<LinkShared>,
    mut stream: glommio::net::TcpStream,
    closing: flume::Receiver<()>,
    record: LinkRecord,
) {
    let member = local.link_stage().map(|s| s.enter());
    let remote = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let rules = Rules {
        publish_v25: link.publish_v25,
    };
    let mut inbuf = BytesMut::with_capacity(16 * 1024);
    inbuf.extend_from_slice(&record.input_tail);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut out = BytesMut::new();
    let mut peer = record.peer;
    let mut last_seen = Instant::now();
    let reason = loop {
        // A freeze parks the connection between two reads: every frame read so far has been
        // handled and answered.
        if let Some(m) = member
            .as_ref()
            .filter(|m| m.stage().phase() == Phase::Frozen)
        {
            let record = LinkRecord {
                peer: peer.clone(),
                input_tail: inbuf.to_vec(),
            };
            match park(&*local, m, &stream, record).await {
                Parked::Resume => {}
                Parked::HandedOff => {
                    tracing::debug!(%remote, id = %peer.id, "link connection handed over");
                    return;
                }
            }
        }
        enum Next {
            Read(Result<std::io::Result<usize>, glommio::GlommioError<()>>),
            Stop,
            Freeze,
        }
        // What the previous process left in `inbuf` is never a whole frame (every whole frame is
        // handled before the next read), so reading comes first.
        let next = futures_lite::future::or(
            async {
                Next::Read(
                    glommio::timer::timeout(LINK_HEARTBEAT, async {
                        Ok(stream.read(&mut chunk).await)
                    })
                    .await,
                )
            },
            futures_lite::future::or(
                async {
                    let _ = closing.recv_async().await;
                    Next::Stop
                },
                async {
                    freeze_begins(member.as_ref()).await;
                    Next::Freeze
                },
            ),
        )
        .await;
        let fresh = match next {
            Next::Stop => break "gate stopping".to_string(),
            Next::Freeze => continue,
            Next::Read(read) => read,
        };
        match fresh {
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

/// Resolves when a freeze begins for a member; never for a non-member.
async fn freeze_begins(member: Option<&Member>) {
    match member {
        Some(m) => m.stage().freeze_begins().await,
        None => std::future::pending::<()>().await,
    }
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
                close_later(local, kind, target);
            }
            Outcome::Unit(r)
        }
        Effect::Multicast {
            kind,
            targets,
            message,
            close_after,
        } => Outcome::Count(s.multicast_with(kind, &targets, message, close_after).await),
        Effect::Broadcast {
            kind,
            message,
            close_after,
        } => Outcome::Count(s.broadcast_with(kind, message, close_after).await),
        Effect::Publish {
            channel,
            message,
            close_after,
        } => {
            let channel = String::from_utf8_lossy(&channel);
            Outcome::Count(s.publish_with(&channel, message, close_after).await)
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

/// v2.5.3+ "disconnect after push" for a single push: close the target gracefully once its
/// message is queued (multicast, broadcast and publish close on the target's shard instead).
fn close_later<L: LocalSessions>(local: &L, kind: Kind, target: i64) {
    let s = local.sessions().clone();
    local.spawn(async move {
        let _ = s.disconnect(kind, target, false).await;
    });
}
