//! The session-visible half of one client connection: cid, uid, state, outbound queue, channels.
//! Owned by the shard that accepted the connection; the IO driver and session operations share it.
//!
//! Session operations never touch the socket: they push bytes or requests here and wake the
//! driver task, which does all IO. Everything is `Cell`/`RefCell` because a connection never
//! leaves its shard's thread.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::metrics::CloseLabel;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::task::Waker;

use super::SessionError;

thread_local! {
    /// The queue-full warning's throttle (one per shard thread).
    static QUEUE_FULL_LOG: crate::logging::Throttle =
        const { crate::logging::Throttle::new(std::time::Duration::from_secs(1)) };
}

/// due's connection states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnState {
    Opened,
    /// Graceful close in progress: queued data is flushed, new pushes fail, input is ignored.
    Hanged,
    Closed,
}

/// Which server accepted the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    Tcp,
    Ws,
    Kcp,
}

/// The driver's pending orders, set by session operations.
#[derive(Debug, Default)]
pub(crate) struct Orders {
    /// Close without flushing.
    pub forced_close: bool,
    /// The forced close is single login's: the uid went to a newer connection.
    pub replaced: bool,
    /// The authorization deadline must be re-evaluated (uid bound or cleared).
    pub auth_changed: bool,
    /// Waiters of a graceful close, answered once the socket is closed.
    pub graceful_waiters: Vec<flume::Sender<Result<(), SessionError>>>,
    /// Why a forced close was ordered, when it was not a plain order (counted by reason).
    pub forced_as: Option<CloseLabel>,
}

/// The session half of a connection as plain data (see `connection::record`). The waiters of a
/// graceful close are not part of it: they belong to requests of the process that exported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub cid: i64,
    pub uid: i64,
    pub ip: IpAddr,
    pub transport: Transport,
    pub state: ConnState,
    /// Channels the connection is subscribed to, in subscription order.
    pub channels: Vec<String>,
    /// Packets queued for the client and not yet taken for writing, in order.
    pub outbox: Vec<Vec<u8>>,
    pub heartbeats_owed: u32,
    /// A forced close was ordered and not yet carried out.
    pub forced_close: bool,
    /// The uid changed since the driver last looked (the authorization deadline is re-checked).
    pub auth_changed: bool,
}

/// The packets queued for one client, oldest first.
///
/// Every packet in or out moves this shard's `queued_packets` gauge (a relaxed load and store of
/// a shard-local cell, see `metrics::Gauge`), and what is still queued when the connection is
/// dropped is taken off then: the gauge is the sum of the shard's queues, read by `/metrics`
/// without visiting a connection. Reads go through `Deref`; changes only through the methods.
#[derive(Debug, Default)]
pub(crate) struct Outbox(VecDeque<Bytes>);

impl Outbox {
    fn from_packets(packets: impl Iterator<Item = Bytes>) -> Self {
        let q: VecDeque<Bytes> = packets.collect();
        crate::metrics::shard().queued_packets.add(q.len() as i64);
        Outbox(q)
    }

    fn push_back(&mut self, p: Bytes) {
        self.0.push_back(p);
        crate::metrics::shard().queued_packets.inc();
    }

    pub(crate) fn pop_front(&mut self) -> Option<Bytes> {
        let p = self.0.pop_front();
        if p.is_some() {
            crate::metrics::shard().queued_packets.dec();
        }
        p
    }

    /// Takes the `n` oldest packets out (`n` at most the length).
    pub(crate) fn drain_front(
        &mut self,
        n: usize,
    ) -> std::collections::vec_deque::Drain<'_, Bytes> {
        let n = n.min(self.0.len());
        crate::metrics::shard().queued_packets.add(-(n as i64));
        self.0.drain(..n)
    }
}

impl std::ops::Deref for Outbox {
    type Target = VecDeque<Bytes>;

    fn deref(&self) -> &VecDeque<Bytes> {
        &self.0
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            crate::metrics::shard()
                .queued_packets
                .add(-(self.0.len() as i64));
        }
    }
}

/// One admitted client connection as the session table sees it.
pub struct Conn {
    pub cid: i64,
    pub ip: IpAddr,
    pub transport: Transport,
    state: Cell<ConnState>,
    uid: Cell<i64>,
    /// The locator names this gate for `uid`: its bind completed (Reconnect was emitted). Until
    /// then another gate's bind event is older than ours and must not close it.
    located: Cell<bool>,
    /// Its driver parked and its parcel went to the next process (`--upgrade`): it closes
    /// there, or here after a thaw, never while parked.
    handed: Cell<bool>,
    outbox: RefCell<Outbox>,
    /// Heartbeat replies owed to the client. A count, not queue entries: an idle connection's
    /// only traffic is heartbeats, and queueing them would keep a queue allocation alive on
    /// every idle connection (the write path builds the bytes when it writes them).
    heartbeats_owed: Cell<u32>,
    queue_limit: usize,
    waker: RefCell<Option<Waker>>,
    pub(crate) orders: RefCell<Orders>,
    channels: RefCell<Vec<Box<str>>>,
}

impl Conn {
    pub fn new(cid: i64, ip: IpAddr, transport: Transport, queue_limit: usize) -> Self {
        Conn {
            cid,
            ip,
            transport,
            state: Cell::new(ConnState::Opened),
            uid: Cell::new(0),
            located: Cell::new(false),
            handed: Cell::new(false),
            outbox: RefCell::new(Outbox::default()),
            heartbeats_owed: Cell::new(0),
            queue_limit: queue_limit.max(1),
            waker: RefCell::new(None),
            orders: RefCell::new(Orders::default()),
            channels: RefCell::new(Vec::new()),
        }
    }

    /// The session state as plain data.
    pub fn export(&self) -> SessionRecord {
        let orders = self.orders.borrow();
        SessionRecord {
            cid: self.cid,
            uid: self.uid.get(),
            ip: self.ip,
            transport: self.transport,
            state: self.state.get(),
            channels: self
                .channels
                .borrow()
                .iter()
                .map(|c| c.to_string())
                .collect(),
            outbox: self.outbox.borrow().iter().map(|b| b.to_vec()).collect(),
            heartbeats_owed: self.heartbeats_owed.get(),
            forced_close: orders.forced_close,
            auth_changed: orders.auth_changed,
        }
    }

    /// The connection `record` describes, with queue limit `queue_limit`.
    pub fn import(record: SessionRecord, queue_limit: usize) -> Self {
        let conn = Conn::new(record.cid, record.ip, record.transport, queue_limit);
        conn.state.set(record.state);
        conn.uid.set(record.uid);
        // A bound connection handed over was bound in the previous process.
        conn.located.set(record.uid != 0);
        *conn.outbox.borrow_mut() =
            Outbox::from_packets(record.outbox.into_iter().map(Bytes::from));
        conn.heartbeats_owed.set(record.heartbeats_owed);
        *conn.channels.borrow_mut() = record.channels.into_iter().map(Into::into).collect();
        let mut orders = conn.orders.borrow_mut();
        orders.forced_close = record.forced_close;
        orders.auth_changed = record.auth_changed;
        drop(orders);
        conn
    }

    pub fn state(&self) -> ConnState {
        self.state.get()
    }

    pub(crate) fn set_state(&self, s: ConnState) {
        self.state.set(s);
    }

    pub fn uid(&self) -> i64 {
        self.uid.get()
    }

    /// Sets the uid and tells the driver to re-evaluate the authorization deadline.
    pub(crate) fn set_uid(&self, uid: i64) {
        let was = self.uid.replace(uid);
        self.located.set(false);
        if (was == 0) != (uid == 0) {
            self.orders.borrow_mut().auth_changed = true;
            self.wake();
        }
    }

    /// Whether the locator names this gate for the connection's uid (its bind completed).
    pub(crate) fn located(&self) -> bool {
        self.located.get() && self.uid.get() != 0
    }

    /// Records that the bind of `uid` completed (the locator was written).
    pub(crate) fn set_located(&self, uid: i64) {
        if uid != 0 && self.uid.get() == uid {
            self.located.set(true);
        }
    }

    /// Queues one complete packet for the client, in order.
    ///
    /// A client that stopped reading until `writeQueueSize` packets piled up is closed (forced)
    /// and the push fails: the reference would block the node's RPC instead, which a shard
    /// serving thousands of other clients must never do.
    pub fn push(&self, bytes: Bytes) -> Result<(), SessionError> {
        match self.state.get() {
            ConnState::Opened => {}
            ConnState::Hanged => return Err(SessionError::Hanged),
            ConnState::Closed => return Err(SessionError::Closed),
        }
        let mut q = self.outbox.borrow_mut();
        if q.len() >= self.queue_limit {
            drop(q);
            // A slow client can trigger this at will: at most one line a second per shard.
            if let Some(suppressed) = QUEUE_FULL_LOG.with(|t| t.allow(std::time::Instant::now())) {
                tracing::warn!(
                    cid = self.cid,
                    limit = self.queue_limit,
                    suppressed,
                    "write queue full, closing connection"
                );
            }
            crate::metrics::shard().queue_full.inc();
            self.close_forced_as(CloseLabel::QueueFull);
            return Err(SessionError::QueueFull);
        }
        q.push_back(bytes);
        crate::metrics::shard().packets_out.inc();
        let first = q.len() == 1;
        drop(q);
        if first {
            self.wake();
        }
        Ok(())
    }

    /// Owes the client a heartbeat, regardless of state and queue limit. The driver writes it
    /// before the packets queued so far (due allows heartbeats anywhere between whole frames).
    pub(crate) fn owe_heartbeat(&self) {
        crate::metrics::shard().packets_out.inc();
        self.heartbeats_owed
            .set(self.heartbeats_owed.get().saturating_add(1));
    }

    /// Heartbeats owed to the client.
    pub(crate) fn heartbeats_owed(&self) -> u32 {
        self.heartbeats_owed.get()
    }

    /// Takes the count of heartbeats owed (the caller writes them).
    pub(crate) fn take_heartbeats_owed(&self) -> u32 {
        self.heartbeats_owed.replace(0)
    }

    /// Nothing waits to be written: no packet queued, no heartbeat owed.
    pub(crate) fn nothing_queued(&self) -> bool {
        self.heartbeats_owed.get() == 0 && self.outbox.borrow().is_empty()
    }

    pub(crate) fn outbox(&self) -> std::cell::RefMut<'_, Outbox> {
        self.outbox.borrow_mut()
    }

    /// Starts a graceful close: pushes fail from now on; `done` is answered once every queued
    /// packet was written and the socket closed.
    pub fn close_graceful(&self, done: Option<flume::Sender<Result<(), SessionError>>>) {
        if self.state.get() != ConnState::Opened {
            if let Some(d) = done {
                let _ = d.send(Err(SessionError::NotOpened));
            }
            return;
        }
        self.state.set(ConnState::Hanged);
        if let Some(d) = done {
            if self.handed.get() {
                // Parked for a hand-off: the close is carried out by the next process (or by
                // this one after a thaw), and the node must not wait for it meanwhile.
                let _ = d.send(Ok(()));
            } else {
                self.orders.borrow_mut().graceful_waiters.push(d);
            }
        }
        self.wake();
    }

    /// Its driver parked with its parcel taken (`true`), or serves again (`false`).
    pub(crate) fn set_handed(&self, handed: bool) {
        self.handed.set(handed);
    }

    /// Closes now; queued packets are dropped.
    pub fn close_forced(&self) {
        if self.state.get() == ConnState::Closed {
            return;
        }
        self.orders.borrow_mut().forced_close = true;
        self.wake();
    }

    /// Closes now like [`Conn::close_forced`], counted under `why` rather than `forced`.
    pub fn close_forced_as(&self, why: CloseLabel) {
        if self.state.get() == ConnState::Closed {
            return;
        }
        {
            let mut orders = self.orders.borrow_mut();
            orders.forced_close = true;
            orders.forced_as.get_or_insert(why);
        }
        self.wake();
    }

    /// The counted reason of a forced close (`Forced` unless another was given).
    pub fn forced_label(&self) -> CloseLabel {
        self.orders.borrow().forced_as.unwrap_or(CloseLabel::Forced)
    }

    /// Closes now because the uid went to a newer connection (single login); queued packets are
    /// dropped, as in any forced close.
    pub(crate) fn close_replaced(&self) {
        if self.state.get() == ConnState::Closed {
            return;
        }
        let mut orders = self.orders.borrow_mut();
        orders.forced_close = true;
        orders.replaced = true;
        drop(orders);
        self.wake();
    }

    pub(crate) fn register_waker(&self, w: &Waker) {
        let mut slot = self.waker.borrow_mut();
        match &*slot {
            Some(old) if old.will_wake(w) => {}
            _ => *slot = Some(w.clone()),
        }
    }

    /// Wakes the connection's driver (a freeze must reach it even while it waits for input).
    pub(crate) fn wake(&self) {
        if let Some(w) = self.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    pub(crate) fn add_channel(&self, name: &str) -> bool {
        let mut ch = self.channels.borrow_mut();
        if ch.iter().any(|c| &**c == name) {
            return false;
        }
        ch.push(name.into());
        true
    }

    pub(crate) fn remove_channel(&self, name: &str) -> bool {
        let mut ch = self.channels.borrow_mut();
        let before = ch.len();
        ch.retain(|c| &**c != name);
        ch.len() != before
    }

    /// The channels the connection is subscribed to.
    pub(crate) fn channel_names(&self) -> Vec<Box<str>> {
        self.channels.borrow().clone()
    }

    pub(crate) fn take_channels(&self) -> Vec<Box<str>> {
        std::mem::take(&mut *self.channels.borrow_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_graceful_close_of_a_handed_connection_is_answered_at_once() {
        let conn = Conn::new(1, [127, 0, 0, 1].into(), Transport::Tcp, 8);
        let (tx, rx) = flume::bounded(1);
        conn.close_graceful(Some(tx));
        assert!(
            rx.try_recv().is_err(),
            "a serving connection answers once closed"
        );
        assert_eq!(conn.state(), ConnState::Hanged);

        // Parked for a hand-off: the node is answered now; the state travels with the session.
        let parked = Conn::new(2, [127, 0, 0, 1].into(), Transport::Tcp, 8);
        parked.set_handed(true);
        let (tx, rx) = flume::bounded(1);
        parked.close_graceful(Some(tx));
        assert_eq!(rx.try_recv(), Ok(Ok(())));
        assert_eq!(parked.export().state, ConnState::Hanged);
        assert!(parked.orders.borrow().graceful_waiters.is_empty());
    }
}
