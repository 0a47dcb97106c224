//! One shard's slice of the session tables and the commands other threads send to it.
//! Owns cid allocation, the local connection map, the home uid index and local channel members.

use ahash::{AHashMap, AHashSet};
use bytes::Bytes;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use super::{event, home_of_uid, shard_of_cid, Conn, ConnState, Reply, SessionError, Sessions};
use crate::dispatch::{EventKind, Upstream};

/// A request to the shard that owns the data. Built by [`Sessions`]; applied by [`Table::apply`].
pub enum Command {
    /// Queues a packet for a local connection; `reply` is `None` for fire-and-forget pushes.
    Push {
        cid: i64,
        bytes: Bytes,
        reply: Option<Reply<Result<(), SessionError>>>,
    },
    /// At the uid's home: resolves the uid and forwards a `Push` to the owning shard, so pushes
    /// to one uid keep their order and cost one hop more than pushes by cid.
    PushUser {
        uid: i64,
        bytes: Bytes,
        reply: Option<Reply<Result<(), SessionError>>>,
    },
    /// `close_after` (here and in Broadcast, Publish): v2.5.3's "disconnect after push", each
    /// connection that got the packet is closed gracefully behind it.
    PushMany {
        cids: Vec<i64>,
        bytes: Bytes,
        close_after: bool,
        reply: Reply<usize>,
    },
    Broadcast {
        users_only: bool,
        bytes: Bytes,
        close_after: bool,
        reply: Reply<usize>,
    },
    /// Sets the uid of a local connection; answers the previous uid.
    SetUid {
        cid: i64,
        uid: i64,
        reply: Reply<Result<i64, SessionError>>,
    },
    /// Clears the uid of a local connection if it is still `uid`.
    ClearUidIf {
        cid: i64,
        uid: i64,
        /// Answered once applied (the caller then knows no later packet of `cid` carries `uid`).
        reply: Reply<()>,
    },
    /// Home index: `uid → cid`; answers the previous cid.
    DirSet {
        uid: i64,
        cid: i64,
        reply: Reply<Option<i64>>,
    },
    /// Home index: removes `uid` only if it still maps to `cid`.
    DirRemoveIf {
        uid: i64,
        cid: i64,
    },
    DirRemove {
        uid: i64,
        reply: Reply<Option<i64>>,
    },
    DirGet {
        uid: i64,
        reply: Reply<Option<i64>>,
    },
    DirGetMany {
        uids: Vec<i64>,
        reply: Reply<Vec<i64>>,
    },
    /// Fires an event for a local connection; answers whether it still exists.
    Emit {
        cid: i64,
        uid: i64,
        kind: EventKind,
        reply: Reply<bool>,
    },
    Membership {
        cids: Vec<i64>,
        channel: Arc<str>,
        join: bool,
        reply: Reply<usize>,
    },
    Publish {
        channel: Arc<str>,
        bytes: Bytes,
        close_after: bool,
        reply: Reply<usize>,
    },
    Stat {
        users_only: bool,
        reply: Reply<usize>,
    },
    IsOnline {
        cid: i64,
        reply: Reply<bool>,
    },
    GetIp {
        cid: i64,
        reply: Reply<Result<IpAddr, SessionError>>,
    },
    Disconnect {
        cid: i64,
        force: bool,
        reply: Reply<Result<(), SessionError>>,
    },
    /// Single login on this gate: closes local connection `cid`, whose `uid` a newer
    /// connection's bind just took, if it is still unbound.
    CloseReplaced {
        cid: i64,
        uid: i64,
    },
    /// Single login across gates, at the uid's home: gate `gid` bound `uid` (the locator's
    /// BindGate event). The connection bound here, if any, is asked to close.
    BoundElsewhere {
        uid: i64,
        gid: Arc<str>,
    },
    /// Closes local connection `cid` if it still carries `uid` with its bind completed, once
    /// the locator confirmed (`confirmed`) that it no longer names this gate.
    ReplaceMoved {
        cid: i64,
        uid: i64,
        gid: Arc<str>,
        confirmed: bool,
    },
}

/// The session data one shard owns.
pub struct Table {
    shard: usize,
    shards: usize,
    next_seq: i64,
    conns: AHashMap<i64, Rc<Conn>>,
    /// Home slice of the uid index: uids with `uid mod shards == shard`.
    users: AHashMap<i64, i64>,
    /// Local members of each channel.
    channels: AHashMap<Box<str>, AHashSet<i64>>,
}

/// Queues `bytes` on `c`; with `close_after`, a graceful close follows (behind the packet).
fn deliver(c: &Conn, bytes: &Bytes, close_after: bool) -> bool {
    let ok = c.push(bytes.clone()).is_ok();
    if ok && close_after {
        c.close_graceful(None);
    }
    ok
}

impl Table {
    pub fn new(shard: usize, shards: usize) -> Self {
        Table {
            shard,
            shards,
            next_seq: 0,
            conns: AHashMap::new(),
            users: AHashMap::new(),
            channels: AHashMap::new(),
        }
    }

    /// A new cid, unique across all shards for the life of the process; its owner is derivable
    /// (`(cid - 1) mod shards`). With one shard this is due's own sequence 1, 2, 3, …
    pub fn allocate_cid(&mut self) -> i64 {
        let cid = self.next_seq * self.shards as i64 + self.shard as i64 + 1;
        self.next_seq += 1;
        cid
    }

    /// The sequence number the next cid of this shard is made from.
    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }

    /// Makes cids from sequence `seq` on (an upgrade: lower ones may belong to connections the
    /// previous process handed over). Never goes back.
    pub fn reserve_below(&mut self, seq: i64) {
        self.next_seq = self.next_seq.max(seq);
    }

    /// Makes room for `n` more connections (an upgrade's take-over).
    pub fn reserve(&mut self, n: usize) {
        self.conns.reserve(n);
    }

    /// Adds a connection the previous process handed over, with its channel memberships.
    pub fn insert_imported(&mut self, conn: Rc<Conn>) {
        for ch in conn.channel_names() {
            self.channels.entry(ch).or_default().insert(conn.cid);
        }
        self.conns.insert(conn.cid, conn);
    }

    /// Home index entry `uid → cid` carried over by an upgrade.
    pub fn insert_user(&mut self, uid: i64, cid: i64) {
        debug_assert_eq!(home_of_uid(uid, self.shards), self.shard);
        self.users.insert(uid, cid);
        self.count_users();
    }

    /// Publishes the size of the home index (the `users_bound` gauge).
    fn count_users(&self) {
        crate::metrics::shard()
            .users_bound
            .set(self.users.len() as i64);
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Every local connection.
    pub fn conns(&self) -> impl Iterator<Item = &Rc<Conn>> {
        self.conns.values()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn get(&self, cid: i64) -> Option<&Rc<Conn>> {
        self.conns.get(&cid)
    }

    /// Adds an admitted connection. The caller emits Connect before reading from it.
    pub fn insert(&mut self, conn: Rc<Conn>) {
        self.conns.insert(conn.cid, conn);
    }

    /// Removes a closed connection and its channel memberships; returns its last uid.
    pub fn remove(&mut self, conn: &Conn) -> i64 {
        self.conns.remove(&conn.cid);
        for ch in conn.take_channels() {
            if let Some(members) = self.channels.get_mut(&ch) {
                members.remove(&conn.cid);
                if members.is_empty() {
                    self.channels.remove(&ch);
                }
            }
        }
        conn.uid()
    }

    fn push_to(&self, cid: i64, bytes: &Bytes, close_after: bool) -> bool {
        self.conns
            .get(&cid)
            .is_some_and(|c| deliver(c, bytes, close_after))
    }

    /// Closes every local connection (shutdown's destroy phase): gracefully (queued packets
    /// first) or at once.
    pub fn close_all(&self, graceful: bool) {
        for c in self.conns.values() {
            if graceful {
                c.close_graceful(None);
            } else {
                c.close_forced();
            }
        }
    }

    /// Applies one command; `sessions` reaches other shards, `upstream` receives events.
    pub fn apply(&mut self, cmd: Command, sessions: &Sessions, upstream: &dyn Upstream) {
        match cmd {
            Command::Push { cid, bytes, reply } => {
                let r = match self.conns.get(&cid) {
                    Some(c) => c.push(bytes),
                    None => Err(SessionError::NotFoundSession),
                };
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            Command::PushUser { uid, bytes, reply } => match self.users.get(&uid) {
                Some(&cid) => sessions.post(
                    shard_of_cid(cid, self.shards),
                    Command::Push { cid, bytes, reply },
                ),
                None => {
                    // A stale location may still name this gate: clean it up (due does too).
                    sessions.control().unbind_user(uid);
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(SessionError::NotFoundSession));
                    }
                }
            },
            Command::PushMany {
                cids,
                bytes,
                close_after,
                reply,
            } => {
                let n = cids
                    .iter()
                    .filter(|c| self.push_to(**c, &bytes, close_after))
                    .count();
                let _ = reply.send(n);
            }
            Command::Broadcast {
                users_only,
                bytes,
                close_after,
                reply,
            } => {
                let started = std::time::Instant::now();
                let n = self
                    .conns
                    .values()
                    .filter(|c| !users_only || c.uid() != 0)
                    .filter(|c| deliver(c, &bytes, close_after))
                    .count();
                crate::metrics::shard().broadcast.observe_since(started);
                let _ = reply.send(n);
            }
            Command::SetUid { cid, uid, reply } => {
                let r = match self.conns.get(&cid) {
                    Some(c) => {
                        let old = c.uid();
                        c.set_uid(uid);
                        Ok(old)
                    }
                    None => Err(SessionError::NotFoundSession),
                };
                let _ = reply.send(r);
            }
            Command::ClearUidIf { cid, uid, reply } => {
                if let Some(c) = self.conns.get(&cid).filter(|c| c.uid() == uid) {
                    c.set_uid(0);
                }
                let _ = reply.send(());
            }
            Command::DirSet { uid, cid, reply } => {
                debug_assert_eq!(home_of_uid(uid, self.shards), self.shard);
                let _ = reply.send(self.users.insert(uid, cid));
                self.count_users();
            }
            Command::DirRemoveIf { uid, cid } => {
                if self.users.get(&uid) == Some(&cid) {
                    self.users.remove(&uid);
                    self.count_users();
                }
            }
            Command::DirRemove { uid, reply } => {
                let _ = reply.send(self.users.remove(&uid));
                self.count_users();
            }
            Command::DirGet { uid, reply } => {
                let _ = reply.send(self.users.get(&uid).copied());
            }
            Command::DirGetMany { uids, reply } => {
                let cids = uids
                    .iter()
                    .filter_map(|u| self.users.get(u).copied())
                    .collect();
                let _ = reply.send(cids);
            }
            Command::Emit {
                cid,
                uid,
                kind,
                reply,
            } => {
                let conn = self.conns.get(&cid);
                if let Some(c) = conn {
                    if kind == EventKind::Reconnect {
                        c.set_located(uid);
                    }
                    upstream.event(event(kind, cid, uid));
                }
                let _ = reply.send(conn.is_some());
            }
            Command::Membership {
                cids,
                channel,
                join,
                reply,
            } => {
                let mut n = 0;
                for cid in cids {
                    let Some(c) = self.conns.get(&cid) else {
                        continue;
                    };
                    if join && c.add_channel(&channel) {
                        self.channels
                            .entry(Box::from(&*channel))
                            .or_default()
                            .insert(cid);
                        n += 1;
                    } else if !join && c.remove_channel(&channel) {
                        if let Some(m) = self.channels.get_mut(&*channel) {
                            m.remove(&cid);
                            if m.is_empty() {
                                self.channels.remove(&*channel);
                            }
                        }
                        n += 1;
                    }
                }
                let _ = reply.send(n);
            }
            Command::Publish {
                channel,
                bytes,
                close_after,
                reply,
            } => {
                let n = self
                    .channels
                    .get(&*channel)
                    .map(|m| {
                        m.iter()
                            .filter(|c| self.push_to(**c, &bytes, close_after))
                            .count()
                    })
                    .unwrap_or(0);
                let _ = reply.send(n);
            }
            Command::Stat { users_only, reply } => {
                let n = if users_only {
                    self.conns.values().filter(|c| c.uid() != 0).count()
                } else {
                    self.conns.len()
                };
                let _ = reply.send(n);
            }
            Command::IsOnline { cid, reply } => {
                let _ = reply.send(self.conns.contains_key(&cid));
            }
            Command::GetIp { cid, reply } => {
                let r = match self.conns.get(&cid).map(|c| (c.state(), c.ip)) {
                    Some((ConnState::Opened, ip)) => Ok(ip),
                    Some((ConnState::Hanged, _)) => Err(SessionError::Hanged),
                    Some((ConnState::Closed, _)) => Err(SessionError::Closed),
                    None => Err(SessionError::NotFoundSession),
                };
                let _ = reply.send(r);
            }
            Command::Disconnect { cid, force, reply } => match self.conns.get(&cid) {
                None => {
                    let _ = reply.send(Err(SessionError::NotFoundSession));
                }
                Some(c) if force => {
                    c.close_forced();
                    let _ = reply.send(Ok(()));
                }
                Some(c) => c.close_graceful(Some(reply)),
            },
            Command::CloseReplaced { cid, uid } => {
                if let Some(c) = self.conns.get(&cid).filter(|c| c.uid() == 0) {
                    tracing::info!(cid, uid, "single login: uid bound to a newer connection");
                    c.close_replaced();
                }
            }
            Command::BoundElsewhere { uid, gid } => {
                if let Some(&cid) = self.users.get(&uid) {
                    let cmd = Command::ReplaceMoved {
                        cid,
                        uid,
                        gid,
                        confirmed: false,
                    };
                    sessions.post(shard_of_cid(cid, self.shards), cmd);
                }
            }
            Command::ReplaceMoved {
                cid,
                uid,
                gid,
                confirmed,
            } => self.replace_moved(cid, uid, gid, confirmed, sessions),
        }
    }

    /// Another gate bound `uid`, bound here to `cid`. A bind still in progress here is newer
    /// than that event (its SET comes later and wins), so only a completed one is considered;
    /// the locator then confirms that it names another gate, so an event that arrives after our
    /// own later bind does not close the connection that now holds the uid.
    fn replace_moved(
        &self,
        cid: i64,
        uid: i64,
        gid: Arc<str>,
        confirmed: bool,
        sessions: &Sessions,
    ) {
        let Some(c) = self
            .conns
            .get(&cid)
            .filter(|c| c.uid() == uid && c.located())
        else {
            return;
        };
        if !confirmed {
            let (again, shard) = (sessions.clone(), self.shard);
            sessions.control().if_moved(
                uid,
                Box::new(move || {
                    let cmd = Command::ReplaceMoved {
                        cid,
                        uid,
                        gid,
                        confirmed: true,
                    };
                    again.post(shard, cmd);
                }),
            );
            return;
        }
        tracing::info!(cid, uid, gate = %gid, "single login: uid bound on another gate");
        // The uid is the other gate's now: this connection's Disconnect carries uid 0 and its
        // release leaves the locator alone, as for a uid taken on this gate.
        c.set_uid(0);
        sessions.post(
            home_of_uid(uid, self.shards),
            Command::DirRemoveIf { uid, cid },
        );
        c.close_replaced();
    }
}
