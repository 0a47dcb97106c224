//! One shard: a pinned executor's state (session slice, upstream, timers) and its life — the
//! inbox, the listeners and the tasks it owns, from start to the end of shutdown.
//!
//! [`Shard::run`] is the whole life of a shard: it opens the shard's listeners, applies every
//! [`ShardMsg`] from its inbox in order, and at `Exit` joins its accept loops, waits (bounded) for
//! its connection tasks and lets queued frames reach the nodes. A connection is admitted, served
//! and released on one shard; admission registers the session and emits Connect before the first
//! byte is read, so a node always hears Connect first. Connections and node commands see the
//! shard only through the narrow traits [`Host`] and [`LocalSessions`].

use bytes::Bytes;
use std::cell::RefCell;
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::connection::ws::WsRules;
use crate::connection::{Host, ServerCtx};
use crate::dispatch::{Delivery, EventKind, Upstream};
use crate::listener;
use crate::node_api::{self, LinkShared, LocalSessions};
use crate::packet::PacketConfig;
use crate::registry::ServiceInstance;
use crate::session::{
    event, home_of_uid, shard_of_cid, Command, Conn, ConnState, Kind, Mailbox, SessionError,
    Sessions, Table,
};

/// How long a stopping shard waits for its connection tasks and for queued frames to reach the
/// nodes (an unreachable node must not hold the exit).
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// Everything that reaches a shard from outside its thread, applied in arrival order.
pub enum ShardMsg {
    /// A session operation on data this shard owns (from any shard, the node API or the wiring).
    Session(Command),
    /// The registry's view of the nodes changed (the full list, in registry order).
    Nodes(Arc<Vec<ServiceInstance>>),
    /// Close the client listeners; connected clients keep being served.
    StopAccepting,
    /// Close every client connection, gracefully (queued packets first) or at once.
    CloseAll { graceful: bool },
    /// Stop: close the link listener and its connections, let queued frames reach the nodes
    /// (bounded), and end the shard.
    Exit,
}

/// The sending side of a shard's inbox (what the wiring and other shards hold).
#[derive(Clone)]
pub struct ShardInbox(flume::Sender<ShardMsg>);

impl ShardInbox {
    /// A new inbox: the handle to post to and the receiver [`Shard::run`] takes.
    pub fn new() -> (ShardInbox, flume::Receiver<ShardMsg>) {
        let (tx, rx) = flume::unbounded();
        (ShardInbox(tx), rx)
    }

    /// Queues `msg`; ignored once the shard has stopped.
    pub fn post(&self, msg: ShardMsg) {
        let _ = self.0.send(msg);
    }
}

impl Mailbox for ShardInbox {
    fn post(&self, cmd: Command) -> Result<(), SessionError> {
        self.0
            .send(ShardMsg::Session(cmd))
            .map_err(|_| SessionError::Unavailable)
    }
}

/// Sends one message to every shard (registry updates, shutdown steps): the one fan-out.
pub fn fan_out(inboxes: &[ShardInbox], msg: impl Fn() -> ShardMsg) {
    for inbox in inboxes {
        inbox.post(msg());
    }
}

/// One client server as handed to a shard: its settings, WS rules and this shard's socket.
pub struct ClientListener {
    pub server: Arc<ServerCtx>,
    pub ws: Option<Arc<WsRules>>,
    pub fd: OwnedFd,
}

/// What a shard is started with: built on the wiring thread, moved into the executor.
pub struct ShardSpec {
    pub index: usize,
    pub count: usize,
    pub packet: PacketConfig,
    pub sessions: Sessions,
    pub inbox: flume::Receiver<ShardMsg>,
    pub clients: Vec<ClientListener>,
    /// This shard's socket of the link listener (nodes dial it).
    pub link_fd: OwnedFd,
    pub link: Arc<LinkShared>,
}

/// The state owned by one shard's executor thread.
pub struct Shard {
    index: usize,
    count: usize,
    packet: PacketConfig,
    table: RefCell<Table>,
    upstream: Rc<dyn Upstream>,
    sessions: Sessions,
    /// The heartbeat without time, built once (heartbeatTime = false).
    heartbeat: Bytes,
    /// Every connection task of this shard, waited for (bounded) when it stops.
    tasks: glommio::sync::Gate,
}

impl Shard {
    /// The whole life of a shard, on its executor: serves until `Exit`, then stops what it owns.
    pub fn run(spec: ShardSpec, upstream: Box<dyn Upstream>) -> impl Future<Output = ()> {
        let shard = Rc::new(Shard::new(
            spec.index,
            spec.count,
            spec.packet,
            upstream,
            spec.sessions,
        ));
        async move {
            // Listeners stop when their stop channel's sender is dropped.
            let (stop_accepting, accepting) = flume::bounded::<()>(1);
            let mut stop_accepting = Some(stop_accepting);
            let (stop_link, linking) = flume::bounded::<()>(1);
            let mut loops: Vec<glommio::Task<()>> = spec
                .clients
                .into_iter()
                .map(|l| {
                    glommio::spawn_local(listener::accept_loop(
                        shard.clone(),
                        l.server,
                        l.ws,
                        l.fd,
                        accepting.clone(),
                    ))
                })
                .collect();
            drop(accepting);
            let link = glommio::spawn_local(node_api::accept_loop(
                shard.clone(),
                spec.link,
                spec.link_fd,
                linking,
            ));
            while let Ok(msg) = spec.inbox.recv_async().await {
                if !shard.handle(msg, &mut stop_accepting) {
                    break;
                }
            }
            drop(stop_accepting);
            for l in loops.drain(..) {
                l.await;
            }
            drop(stop_link);
            link.await;
            // Bounded: an unreachable node must not hold the exit.
            let deadline = Instant::now() + EXIT_GRACE;
            let left = || deadline.saturating_duration_since(Instant::now());
            let _ = glommio::timer::timeout(left(), async {
                let _ = shard.tasks.close().await;
                Ok(())
            })
            .await;
            // Let queued events and packets reach the nodes, then stop the node links.
            while !shard.upstream.idle() && !left().is_zero() {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            let _ = glommio::timer::timeout(left().max(Duration::from_millis(50)), async {
                shard.upstream.close().await;
                Ok(())
            })
            .await;
        }
    }

    /// Applies one inbox message. `false` = the shard must stop.
    fn handle(&self, msg: ShardMsg, stop_accepting: &mut Option<flume::Sender<()>>) -> bool {
        match msg {
            ShardMsg::Session(cmd) => self.apply(cmd),
            ShardMsg::Nodes(nodes) => self.upstream.update_nodes(&nodes),
            ShardMsg::StopAccepting => drop(stop_accepting.take()),
            ShardMsg::CloseAll { graceful } => self.table.borrow().close_all(graceful),
            ShardMsg::Exit => return false,
        }
        true
    }

    fn new(
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
            tasks: glommio::sync::Gate::new(),
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

    /// Applies a session command from another thread (or from this one).
    fn apply(&self, cmd: Command) {
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

pin_project_lite::pin_project! {
    /// A task holding a pass of the shard's gate, so the shard can wait for it at exit. A plain
    /// struct rather than glommio's `Gate::spawn`, whose async wrapper stores the task's future
    /// twice: every idle connection would pay for the copy.
    struct Gated<F> {
        #[pin]
        task: F,
        pass: glommio::sync::Pass,
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.project().task.poll(cx)
    }
}

impl Host for Shard {
    fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        // A closed gate means the shard is stopping: the task is dropped (its socket closes).
        if let Ok(pass) = self.tasks.enter() {
            glommio::spawn_local(Gated { task, pass }).detach();
        }
    }

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
            Host::spawn(self, async move {
                let _ = control.unbind_user_wait(uid).await;
                upstream.event(disconnect);
                slot.fetch_sub(1, Ordering::AcqRel);
            });
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

    fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        Host::spawn(self, task)
    }
}
