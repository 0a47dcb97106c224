//! Sessions: the per-shard table of connections, users and channels, and the cross-shard API
//! (bind, push, multicast, broadcast, channels, stat, isOnline, getIP, disconnect).
//!
//! Ownership: a connection lives in the table of the shard that accepted it; its cid says which
//! shard that is. The uid → cid index is partitioned by uid (`uid mod shards` is the uid's home),
//! so every uid has exactly one place that serialises its binds. Operations reach other shards
//! by message, never by lock.

mod conn;
mod table;

pub use conn::{Conn, ConnState, SessionRecord, Transport};
pub use table::{Command, Table};

use bytes::Bytes;
use std::net::IpAddr;

use crate::config::SingleLogin;
use crate::control::{Control, ControlError};
use crate::dispatch::{EventKind, GateEvent};

/// due's session kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// target is a cid
    Conn,
    /// target is a uid
    User,
}

impl Kind {
    /// Parses due's wire value (1 = conn, 2 = user).
    pub fn from_wire(v: u8) -> Result<Kind, SessionError> {
        match v {
            1 => Ok(Kind::Conn),
            2 => Ok(Kind::User),
            _ => Err(SessionError::InvalidKind),
        }
    }
}

/// Why a session operation failed. `code()` maps it to due's cluster codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    InvalidArgument,
    NotFoundSession,
    InvalidKind,
    /// the connection is closing gracefully
    Hanged,
    Closed,
    /// graceful close of a connection that is not Opened
    NotOpened,
    /// the client stopped reading; the connection was closed
    QueueFull,
    /// The locator (or the control thread that runs it) failed.
    Locator(ControlError),
    /// the gate is stopping
    Unavailable,
}

impl SessionError {
    /// OK = 0, NotFoundSession = 1, anything else = 2 (InternalError).
    pub fn code(&self) -> u16 {
        match self {
            SessionError::NotFoundSession => 1,
            _ => 2,
        }
    }
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::InvalidArgument => f.write_str("invalid argument"),
            SessionError::NotFoundSession => f.write_str("not found session"),
            SessionError::InvalidKind => f.write_str("invalid session kind"),
            SessionError::Hanged => f.write_str("connection is hanged"),
            SessionError::Closed => f.write_str("connection is closed"),
            SessionError::NotOpened => f.write_str("connection is not opened"),
            SessionError::QueueFull => f.write_str("connection write queue is full"),
            SessionError::Locator(e) => write!(f, "locator: {e}"),
            SessionError::Unavailable => f.write_str("gate is stopping"),
        }
    }
}

impl std::error::Error for SessionError {}

/// Which shard owns connection `cid` (cids are `seq * shards + shard + 1`).
#[inline]
pub fn shard_of_cid(cid: i64, shards: usize) -> usize {
    ((cid - 1) as u64 % shards as u64) as usize
}

/// Which shard keeps the index entry of `uid`.
#[inline]
pub fn home_of_uid(uid: i64, shards: usize) -> usize {
    (uid as u64 % shards as u64) as usize
}

type Reply<T> = flume::Sender<T>;

/// A shard's inbox as the session layer sees it: where commands about that shard's data go.
/// The shard implements it over its own message type, so sessions know nothing of the shard.
pub trait Mailbox: Send + Sync {
    /// Queues `cmd` for the shard; `Err` when the shard has stopped.
    fn post(&self, cmd: Command) -> Result<(), SessionError>;
}

fn reply<T>() -> (Reply<T>, flume::Receiver<T>) {
    flume::bounded(1)
}

/// The session API of the whole gate. Cheap to clone, usable from any thread: shard tasks,
/// the control thread, tests. Every method is answered by the shards that own the data.
#[derive(Clone)]
pub struct Sessions {
    shards: std::sync::Arc<[Box<dyn Mailbox>]>,
    control: Control,
    single_login: SingleLogin,
}

impl Sessions {
    pub fn new(shards: Vec<Box<dyn Mailbox>>, control: Control) -> Self {
        Sessions {
            shards: shards.into(),
            control,
            single_login: SingleLogin::Off,
        }
    }

    /// The same sessions with `[gatehouse] singleLogin` = `mode` (default off: due's bind).
    pub fn with_single_login(mut self, mode: SingleLogin) -> Self {
        self.single_login = mode;
        self
    }

    fn send(&self, shard: usize, cmd: Command) -> Result<(), SessionError> {
        self.shards[shard].post(cmd)
    }

    async fn ask<T>(
        &self,
        shard: usize,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, SessionError> {
        let (tx, rx) = reply();
        self.send(shard, make(tx))?;
        rx.recv_async().await.map_err(|_| SessionError::Unavailable)
    }

    fn cid_shard(&self, cid: i64) -> usize {
        shard_of_cid(cid, self.shards.len())
    }

    fn uid_home(&self, uid: i64) -> usize {
        home_of_uid(uid, self.shards.len())
    }

    /// The cid currently bound to `uid`, if any.
    pub async fn cid_of(&self, uid: i64) -> Result<Option<i64>, SessionError> {
        if uid <= 0 {
            return Ok(None);
        }
        self.ask(self.uid_home(uid), |r| Command::DirGet { uid, reply: r })
            .await
    }

    async fn target_cid(&self, kind: Kind, target: i64) -> Result<i64, SessionError> {
        match kind {
            Kind::Conn if target > 0 => Ok(target),
            Kind::User => self
                .cid_of(target)
                .await?
                .ok_or(SessionError::NotFoundSession),
            Kind::Conn => Err(SessionError::NotFoundSession),
        }
    }

    /// Binds `uid` to connection `cid` (due's bind, spec §4.3): a uid bound elsewhere is
    /// silently taken from its old connection; every success fires Reconnect(cid, uid).
    ///
    /// With single login (`gate` or `cluster`) the old connection is then closed (forced,
    /// reason `Replaced`); it was unbound first, as in due, so its Disconnect carries uid 0 and
    /// its release leaves the locator (which names this gate for the new one) alone. A bind the
    /// locator refused closes nothing.
    pub async fn bind(&self, cid: i64, uid: i64) -> Result<(), SessionError> {
        if cid <= 0 || uid <= 0 {
            return Err(SessionError::InvalidArgument);
        }
        let cs = self.cid_shard(cid);
        let old = self
            .ask(cs, |r| Command::SetUid { cid, uid, reply: r })
            .await??;
        if old != 0 && old != uid {
            self.send(self.uid_home(old), Command::DirRemoveIf { uid: old, cid })?;
        }
        let prev = self
            .ask(self.uid_home(uid), |r| Command::DirSet {
                uid,
                cid,
                reply: r,
            })
            .await?;
        let prev = prev.filter(|p| *p != cid);
        if let Some(prev) = prev {
            // Awaited: once bind returns, no packet read from the old connection carries `uid`.
            self.ask(self.cid_shard(prev), |r| Command::ClearUidIf {
                cid: prev,
                uid,
                reply: r,
            })
            .await?;
        }
        if let Err(e) = self.control.bind_user(uid).await {
            tracing::error!(cid, uid, error = %e, "locator bind failed, binding undone");
            self.send(self.uid_home(uid), Command::DirRemoveIf { uid, cid })?;
            self.ask(cs, |r| Command::ClearUidIf { cid, uid, reply: r })
                .await?;
            return Err(SessionError::Locator(e));
        }
        // The connection may have closed meanwhile: its disconnect removed the index entry
        // before ours was written. Confirm, and drop the stale entry if so.
        let still = self
            .ask(cs, |r| Command::Emit {
                cid,
                uid,
                kind: EventKind::Reconnect,
                reply: r,
            })
            .await?;
        if !still {
            self.send(self.uid_home(uid), Command::DirRemoveIf { uid, cid })?;
        }
        // The new connection holds the uid now (unless it closed meanwhile): close the old one.
        if let Some(prev) = prev.filter(|_| still && self.single_login != SingleLogin::Off) {
            // The bind stands whatever happens to this post (a stopping shard closes it anyway).
            self.post(
                self.cid_shard(prev),
                Command::CloseReplaced { cid: prev, uid },
            );
        }
        Ok(())
    }

    /// Unbinds `uid` (no event; the connection stays open and anonymous).
    pub async fn unbind(&self, uid: i64) -> Result<(), SessionError> {
        if uid == 0 {
            return Err(SessionError::InvalidArgument);
        }
        if uid < 0 {
            return Err(SessionError::NotFoundSession);
        }
        let cid = self
            .ask(self.uid_home(uid), |r| Command::DirRemove { uid, reply: r })
            .await?
            .ok_or(SessionError::NotFoundSession)?;
        // Awaited: once unbind returns, no packet read from the connection carries `uid`.
        self.ask(self.cid_shard(cid), |r| Command::ClearUidIf {
            cid,
            uid,
            reply: r,
        })
        .await?;
        // A locator failure is reported (code 2); the local unbind stands, as in due.
        self.control
            .unbind_user_wait(uid)
            .await
            .map_err(SessionError::Locator)
    }

    /// Queues `bytes` (a complete packet) for one connection. A push to a uid that is not
    /// connected here also clears a stale locator entry naming this gate.
    pub async fn push(&self, kind: Kind, target: i64, bytes: Bytes) -> Result<(), SessionError> {
        let (tx, rx) = reply();
        self.push_with(kind, target, bytes, Some(tx))?;
        rx.recv_async()
            .await
            .map_err(|_| SessionError::Unavailable)?
    }

    /// Fire-and-forget push (the link's seq-0 pushes): same path and order as [`Self::push`].
    pub fn push_nowait(&self, kind: Kind, target: i64, bytes: Bytes) -> Result<(), SessionError> {
        self.push_with(kind, target, bytes, None)
    }

    fn push_with(
        &self,
        kind: Kind,
        target: i64,
        bytes: Bytes,
        reply: Option<Reply<Result<(), SessionError>>>,
    ) -> Result<(), SessionError> {
        let fail = |reply: Option<Reply<Result<(), SessionError>>>| {
            if let Some(r) = reply {
                let _ = r.send(Err(SessionError::NotFoundSession));
            }
            Ok(())
        };
        match kind {
            Kind::Conn if target > 0 => self.send(
                self.cid_shard(target),
                Command::Push {
                    cid: target,
                    bytes,
                    reply,
                },
            ),
            Kind::User if target > 0 => self.send(
                self.uid_home(target),
                Command::PushUser {
                    uid: target,
                    bytes,
                    reply,
                },
            ),
            _ => fail(reply),
        }
    }

    async fn resolve(&self, kind: Kind, targets: &[i64]) -> Result<Vec<i64>, SessionError> {
        match kind {
            Kind::Conn => Ok(targets.iter().copied().filter(|c| *c > 0).collect()),
            Kind::User => {
                let n = self.shards.len();
                let mut groups = vec![Vec::new(); n];
                for &uid in targets.iter().filter(|u| **u > 0) {
                    groups[home_of_uid(uid, n)].push(uid);
                }
                let mut cids = Vec::with_capacity(targets.len());
                for (shard, uids) in groups.into_iter().enumerate() {
                    if !uids.is_empty() {
                        let found = self
                            .ask(shard, |r| Command::DirGetMany { uids, reply: r })
                            .await?;
                        cids.extend(found);
                    }
                }
                Ok(cids)
            }
        }
    }

    fn by_shard(&self, cids: Vec<i64>) -> Vec<Vec<i64>> {
        let n = self.shards.len();
        let mut groups = vec![Vec::new(); n];
        for cid in cids {
            groups[shard_of_cid(cid, n)].push(cid);
        }
        groups
    }

    /// Sends one reply-bearing command to each listed shard and sums the answers.
    async fn sum_over(
        &self,
        groups: Vec<Vec<i64>>,
        make: impl Fn(Vec<i64>, Reply<usize>) -> Command,
    ) -> Result<usize, SessionError> {
        let mut waits = Vec::new();
        for (shard, cids) in groups.into_iter().enumerate() {
            if !cids.is_empty() {
                let (tx, rx) = reply();
                self.send(shard, make(cids, tx))?;
                waits.push(rx);
            }
        }
        let mut total = 0;
        for rx in waits {
            total += rx
                .recv_async()
                .await
                .map_err(|_| SessionError::Unavailable)?;
        }
        Ok(total)
    }

    /// Queues `bytes` for every listed target that exists; returns how many were queued.
    pub async fn multicast(
        &self,
        kind: Kind,
        targets: &[i64],
        bytes: Bytes,
    ) -> Result<usize, SessionError> {
        self.multicast_with(kind, targets, bytes, false).await
    }

    /// [`Self::multicast`]; with `close_after` (v2.5.3's "disconnect after push") each target
    /// that got the packet is then closed gracefully, the packet flushed first.
    pub async fn multicast_with(
        &self,
        kind: Kind,
        targets: &[i64],
        bytes: Bytes,
        close_after: bool,
    ) -> Result<usize, SessionError> {
        let cids = self.resolve(kind, targets).await?;
        self.sum_over(self.by_shard(cids), |cids, r| Command::PushMany {
            cids,
            bytes: bytes.clone(),
            close_after,
            reply: r,
        })
        .await
    }

    async fn sum_all(&self, make: impl Fn(Reply<usize>) -> Command) -> Result<usize, SessionError> {
        let all = (0..self.shards.len()).map(|_| vec![0]).collect();
        self.sum_over(all, |_, r| make(r)).await
    }

    /// Queues `bytes` for every connection (Conn) or every bound connection (User).
    pub async fn broadcast(&self, kind: Kind, bytes: Bytes) -> Result<usize, SessionError> {
        self.broadcast_with(kind, bytes, false).await
    }

    /// [`Self::broadcast`]; `close_after` as in [`Self::multicast_with`].
    pub async fn broadcast_with(
        &self,
        kind: Kind,
        bytes: Bytes,
        close_after: bool,
    ) -> Result<usize, SessionError> {
        self.sum_all(|r| Command::Broadcast {
            users_only: kind == Kind::User,
            bytes: bytes.clone(),
            close_after,
            reply: r,
        })
        .await
    }

    /// Adds existing targets to `channel`; returns how many were added.
    pub async fn subscribe(
        &self,
        kind: Kind,
        targets: &[i64],
        channel: &str,
    ) -> Result<usize, SessionError> {
        self.membership(kind, targets, channel, true).await
    }

    /// Removes targets from `channel`; returns how many were removed.
    pub async fn unsubscribe(
        &self,
        kind: Kind,
        targets: &[i64],
        channel: &str,
    ) -> Result<usize, SessionError> {
        self.membership(kind, targets, channel, false).await
    }

    async fn membership(
        &self,
        kind: Kind,
        targets: &[i64],
        channel: &str,
        join: bool,
    ) -> Result<usize, SessionError> {
        let cids = self.resolve(kind, targets).await?;
        let channel: std::sync::Arc<str> = channel.into();
        self.sum_over(self.by_shard(cids), |cids, r| Command::Membership {
            cids,
            channel: channel.clone(),
            join,
            reply: r,
        })
        .await
    }

    /// Queues `bytes` for every member of `channel`; returns how many were queued.
    pub async fn publish(&self, channel: &str, bytes: Bytes) -> Result<usize, SessionError> {
        self.publish_with(channel, bytes, false).await
    }

    /// [`Self::publish`]; `close_after` as in [`Self::multicast_with`].
    pub async fn publish_with(
        &self,
        channel: &str,
        bytes: Bytes,
        close_after: bool,
    ) -> Result<usize, SessionError> {
        let channel: std::sync::Arc<str> = channel.into();
        self.sum_all(|r| Command::Publish {
            channel: channel.clone(),
            bytes: bytes.clone(),
            close_after,
            reply: r,
        })
        .await
    }

    /// Conn: open connections; User: connections with a bound uid.
    pub async fn stat(&self, kind: Kind) -> Result<usize, SessionError> {
        self.sum_all(|r| Command::Stat {
            users_only: kind == Kind::User,
            reply: r,
        })
        .await
    }

    /// Whether the target is in the tables (a Hanged connection still counts).
    pub async fn is_online(&self, kind: Kind, target: i64) -> Result<bool, SessionError> {
        match self.target_cid(kind, target).await {
            Ok(cid) => {
                self.ask(self.cid_shard(cid), |r| Command::IsOnline { cid, reply: r })
                    .await
            }
            Err(SessionError::NotFoundSession) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The client's IP address.
    pub async fn get_ip(&self, kind: Kind, target: i64) -> Result<IpAddr, SessionError> {
        let cid = self.target_cid(kind, target).await?;
        self.ask(self.cid_shard(cid), |r| Command::GetIp { cid, reply: r })
            .await?
    }

    /// Closes the target: `force` drops queued packets; otherwise they are flushed first and the
    /// call returns once the socket is closed.
    pub async fn disconnect(
        &self,
        kind: Kind,
        target: i64,
        force: bool,
    ) -> Result<(), SessionError> {
        let cid = self.target_cid(kind, target).await?;
        // A graceful close is answered by the connection itself, once its queue is flushed.
        self.ask(self.cid_shard(cid), |r| Command::Disconnect {
            cid,
            force,
            reply: r,
        })
        .await?
    }

    /// Internal: sends a command without waiting (used by the shards' own cleanup).
    pub(crate) fn post(&self, shard: usize, cmd: Command) {
        let _ = self.send(shard, cmd);
    }

    pub(crate) fn control(&self) -> &Control {
        &self.control
    }
}

/// Single login across gates: the function the locator's watcher calls with each BindGate
/// event `(uid, gid)`. An event of another gate goes to the uid's home shard here
/// (`Command::BoundElsewhere`), which closes the connection bound here, if any; this gate's own
/// events (`own_gid`) are ignored. Never blocks.
pub fn bound_elsewhere(
    shards: Vec<Box<dyn Mailbox>>,
    own_gid: String,
) -> impl Fn(i64, &str) + Send + 'static {
    move |uid, gid| {
        if uid <= 0 || gid == own_gid || shards.is_empty() {
            return;
        }
        let home = home_of_uid(uid, shards.len());
        let _ = shards[home].post(Command::BoundElsewhere {
            uid,
            gid: gid.into(),
        });
    }
}

/// Makes an event value.
pub(crate) fn event(kind: EventKind, cid: i64, uid: i64) -> GateEvent {
    GateEvent { kind, cid, uid }
}
