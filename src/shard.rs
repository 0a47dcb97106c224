//! One shard: the state a pinned executor owns (session slice, upstream, command inbox) and the
//! admission and release of the connections it accepts.
//!
//! A connection is admitted, served and released on one shard. Admission registers the session
//! and emits Connect before the first byte is read, so a node always hears Connect first.

use bytes::Bytes;
use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::connection::{Host, ServerCtx};
use crate::dispatch::{Delivery, EventKind, Upstream};
use crate::node_api::LocalSessions;
use crate::packet::PacketConfig;
use crate::session::{
    event, home_of_uid, shard_of_cid, Command, Conn, ConnState, Kind, SessionError, Sessions, Table,
};

/// The state owned by one shard's executor thread.
pub struct Shard {
    pub index: usize,
    pub count: usize,
    pub packet: PacketConfig,
    pub table: RefCell<Table>,
    pub upstream: Rc<dyn Upstream>,
    pub sessions: Sessions,
    /// The heartbeat without time, built once (heartbeatTime = false).
    heartbeat: Bytes,
}

impl Shard {
    pub fn new(
        index: usize,
        count: usize,
        packet: PacketConfig,
        upstream: Box<dyn Upstream>,
        sessions: Sessions,
    ) -> Self {
        Shard {
            index,
            count,
            packet,
            table: RefCell::new(Table::new(index, count)),
            upstream: Rc::from(upstream),
            sessions,
            heartbeat: packet.heartbeat(0),
        }
    }

    /// This process's heartbeat packet, with the current Unix time in ns when configured.
    pub fn heartbeat(&self) -> Bytes {
        if self.packet.heartbeat_time {
            let ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_nanos() as i64;
            self.packet.heartbeat(ns)
        } else {
            self.heartbeat.clone()
        }
    }

    /// Applies a command from another thread (or from this one).
    pub fn apply(&self, cmd: Command) {
        self.table
            .borrow_mut()
            .apply(cmd, &self.sessions, &*self.upstream);
    }

    /// A fire-and-forget push; applied here directly when this shard owns the connection (no
    /// channel hop), otherwise posted to the owner like [`Sessions::push_nowait`].
    pub fn push_nowait(&self, kind: Kind, target: i64, bytes: Bytes) -> Result<(), SessionError> {
        if kind == Kind::Conn && target > 0 && shard_of_cid(target, self.count) == self.index {
            if let Some(conn) = self.table.borrow().get(target) {
                return conn.push(bytes);
            }
            return Err(SessionError::NotFoundSession);
        }
        self.sessions.push_nowait(kind, target, bytes)
    }
}

impl Host for Shard {
    fn packet(&self) -> &PacketConfig {
        &self.packet
    }

    fn heartbeat(&self) -> Bytes {
        Shard::heartbeat(self)
    }

    fn deliver(&self, d: Delivery) {
        self.upstream.deliver(d)
    }

    fn poll_ready(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.upstream.poll_ready(cx)
    }

    /// Admits a new connection if `server` has room: allocates its cid, registers the session and
    /// emits Connect. `None` means the server is full (the caller closes the socket, no bytes).
    fn admit(&self, server: &ServerCtx, ip: IpAddr) -> Option<Rc<Conn>> {
        if !server.try_admit() {
            return None;
        }
        let mut table = self.table.borrow_mut();
        let cid = table.allocate_cid();
        let conn = Rc::new(Conn::new(
            cid,
            ip,
            server.transport,
            server.config.write_queue_size,
        ));
        table.insert(conn.clone());
        drop(table);
        self.upstream.event(event(EventKind::Connect, cid, 0));
        Some(conn)
    }

    /// Releases a connection whose socket is closed: removes it from the tables, unbinds its
    /// user, emits Disconnect with the uid bound at this moment and frees its server slot.
    fn release(&self, server: &ServerCtx, conn: &Conn) {
        conn.set_state(ConnState::Closed);
        let uid = self.table.borrow_mut().remove(conn);
        let slot = server.slot();
        let disconnect = event(EventKind::Disconnect, conn.cid, uid);
        if uid == 0 {
            // Free the slot first: whoever hears Disconnect may reconnect at once.
            slot.fetch_sub(1, Ordering::AcqRel);
            self.upstream.event(disconnect);
        } else {
            self.sessions.post(
                home_of_uid(uid, self.count),
                Command::DirRemoveIf { uid, cid: conn.cid },
            );
            // due: the locator forgets the user before nodes hear Disconnect. The slot is held
            // until then, so a draining gate does not exit with the event still unsent.
            let (control, upstream) = (self.sessions.control().clone(), self.upstream.clone());
            glommio::spawn_local(async move {
                let _ = control.unbind_user_wait(uid).await;
                upstream.event(disconnect);
                slot.fetch_sub(1, Ordering::AcqRel);
            })
            .detach();
        }
        for w in conn.orders.borrow_mut().graceful_waiters.drain(..) {
            let _ = w.send(Ok(()));
        }
    }
}

/// The node API runs its commands against the shard it was accepted on.
impl LocalSessions for Shard {
    fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    fn push_nowait(&self, kind: Kind, target: i64, bytes: Bytes) -> Result<(), SessionError> {
        Shard::push_nowait(self, kind, target, bytes)
    }
}
