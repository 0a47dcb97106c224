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
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::connection::framing::{FramingRecord, TcpFraming, WsFraming};
use crate::connection::machine::Connection;
use crate::connection::record::{ConnParcel, RecordError};
use crate::connection::ws::WsRules;
use crate::connection::{driver, Host, ServerCtx};
use crate::dispatch::{Delivery, EventKind, NodeLinkParcel, Upstream};
use crate::handoff::{Collector, Lent, Phase, Stage};
use crate::listener;
use crate::node_api::{self, LinkParcel, LinkShared, LocalSessions};
use crate::packet::PacketConfig;
use crate::registry::ServiceInstance;
use crate::session::{
    event, home_of_uid, shard_of_cid, Command, Conn, ConnState, Kind, Mailbox, SessionError,
    SessionRecord, Sessions, Table,
};

/// How long a stopping shard waits for its connection tasks and for queued frames to reach the
/// nodes (an unreachable node must not hold the exit).
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// How soon the shard's control tasks (inbox, accept loops, hand-off steps) get the CPU when
/// connections keep it busy: they run in a task queue of their own with this latency, and the
/// executor preempts a busy queue at least this often. Connections (clients and links) stay in
/// the default queue: a latency queue that is always busy would cut every batch of IO short.
pub const CONTROL_LATENCY: Duration = Duration::from_millis(20);

/// An inherited connection whose client sent a frame within this long is started before the
/// idle ones.
const BUSY_WITHIN: Duration = Duration::from_millis(500);

/// After an upgrade, idle connections start this long after the busy ones, this many at a
/// time with this pause between batches (9,500 take about 150 ms; their clients are quiet).
const IDLE_START_AFTER: Duration = Duration::from_millis(30);
const IDLE_START_BATCH: usize = 64;
const IDLE_START_PAUSE: Duration = Duration::from_millis(1);

/// How long skimming waits for every connection to decide whether it is quiet (the rest are
/// frozen with the busy ones).
const SKIM_LIMIT: Duration = Duration::from_millis(500);

/// How long a freeze waits for the shard's connections to park (a WS handshake that finishes
/// later stays here and is drained the old way).
const FREEZE_LIMIT: Duration = Duration::from_secs(1);

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
    /// Upgrade, step 0: every quiet client connection parks with its state exported while the
    /// others serve on; answers their sockets and state. The freeze (steps 1 and 2) follows,
    /// or a thaw.
    Skim(flume::Sender<Vec<ConnParcel<Lent>>>),
    /// Upgrade, step 1: stop accepting node links and park the link connections between two
    /// frames; answers their sockets and state.
    FreezeLinks(flume::Sender<Vec<LinkParcel<Lent>>>),
    /// Upgrade, between the steps: answered once every message queued before it was applied. A
    /// node command a parked link already handed on may take a second hop (a push by uid goes
    /// to the uid's home, then to the connection's shard); after one such round on every shard,
    /// every second hop is queued ahead of the client freeze.
    Quiesce(flume::Sender<()>),
    /// Upgrade, step 2 (after every shard's links are parked and one `Quiesce` round, so every
    /// node command has reached its connection): stop accepting clients, park every
    /// connection, then the node links.
    FreezeClients(flume::Sender<ShardParcel>),
    /// The upgrade failed: everything parked carries on, the listeners accept again.
    Thaw,
    /// The next process took the parcels: parked tasks end without a byte. Answered once done.
    Commit(flume::Sender<()>),
}

/// What one shard hands to the next process (sockets lent by its parked tasks).
pub struct ShardParcel {
    pub conns: Vec<ConnParcel<Lent>>,
    /// The session state of skimmed connections that changed since they were skimmed (a node
    /// pushed, bound or closed meanwhile); it replaces the state sent with their parcels.
    pub sessions: Vec<SessionRecord>,
    pub node_links: Vec<NodeLinkParcel<Lent>>,
    /// This shard's next cid sequence number (every cid it made is below it).
    pub next_seq: i64,
}

/// What a shard of the next process is handed during an upgrade, in this order: connections
/// (as they arrive, skimmed ones first), session updates, the rest, then `Commit`. Nothing runs
/// before `Commit`; a feed that closes first means the upgrade failed and the shard ends.
pub enum Feed {
    /// Connections whose cid maps to this shard: rebuilt and put in the table at once, their
    /// drivers started after `Commit`.
    Conns(Vec<ConnParcel>),
    /// The session of a connection handed over earlier changed before the freeze.
    Session(SessionRecord),
    /// Links, node links, home index entries and the cid floor (`conns` is empty).
    Rest(Inherited),
    /// The running gate let go: start.
    Commit,
}

/// How a shard starts: afresh, or fed by an upgrade.
#[derive(Default)]
pub enum Inheritance {
    #[default]
    Fresh,
    Upgrade(flume::Receiver<Feed>),
}

/// What a shard of the next process starts with, from the previous one (`--upgrade`).
#[derive(Default)]
pub struct Inherited {
    /// Connections whose cid maps to this shard.
    pub conns: Vec<ConnParcel>,
    pub links: Vec<LinkParcel>,
    pub node_links: Vec<NodeLinkParcel>,
    /// cids are made from this sequence number on (lower ones may be taken).
    pub next_seq: i64,
    /// This shard's home index entries (`uid → cid`).
    pub users: Vec<(i64, i64)>,
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
    /// A KCP server's session parameters; its `fd` is then this shard's UDP socket.
    pub kcp: Option<crate::kcpnet::Params>,
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
    /// This shard's sockets of the link listener (nodes dial it); one unless an upgrade
    /// inherited more listeners than this process has shards.
    pub link_fds: Vec<OwnedFd>,
    pub link: Arc<LinkShared>,
    pub inherited: Inheritance,
    /// `listenBacklog`: sockets an upgrade bound beside the inherited ones listen when the
    /// shard starts accepting.
    pub backlog: i32,
    /// The gate's numbers; this shard counts into its own cells.
    pub metrics: Arc<crate::metrics::GateMetrics>,
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
    /// The task queue of control work (see [`CONTROL_LATENCY`]); client connections run in the
    /// executor's default queue.
    control: glommio::TaskQueueHandle,
    /// The task queue of inbound link connections.
    links_queue: glommio::TaskQueueHandle,
    /// The client servers this shard accepts on, and its link sockets: kept so that the accept
    /// loops can stop for an upgrade and start again when it fails.
    listeners: Vec<ClientListener>,
    link_fds: Vec<OwnedFd>,
    /// `listenBacklog`, for the sockets an upgrade bound without listening yet.
    backlog: i32,
    link: Arc<LinkShared>,
    /// The running accept loops of clients and of the link; `None` while stopped.
    accepting: RefCell<Option<Accepting>>,
    link_accepting: RefCell<Option<Accepting>>,
    /// Whether the shard should accept clients (false after `StopAccepting`).
    accept_wanted: std::cell::Cell<bool>,
    /// The KCP servers' tasks (receive and update loops), dropped when the shard exits.
    kcp_serving: RefCell<Vec<glommio::Task<()>>>,
    /// Link connections end when this is dropped (the shard exits).
    link_closing: RefCell<Option<flume::Sender<()>>>,
    link_closing_rx: flume::Receiver<()>,
    /// Upgrade hand-off: the stages of client connections and link connections, and what a
    /// freeze collects from them.
    clients_stage: Rc<Stage>,
    links_stage: Rc<Stage>,
    conn_parcels: Collector<ConnParcel<Lent>>,
    link_parcels: Collector<LinkParcel<Lent>>,
    /// The session state of each connection skimmed in this hand-off, as it was sent.
    skimmed: RefCell<HashMap<i64, SessionRecord>>,
    /// Inherited idle connections whose drivers have not started yet (after an upgrade).
    idle_pending: RefCell<Vec<Adopted>>,
}

/// A handed-over connection rebuilt and in the table, its driver not started yet.
struct Adopted {
    conn: AdoptedConn,
    /// It has bytes to write or its client sent a frame lately: started first.
    busy: bool,
}

enum AdoptedConn {
    Tcp(Arc<ServerCtx>, Connection<TcpFraming>, OwnedFd),
    Ws(Arc<ServerCtx>, Connection<WsFraming>, OwnedFd),
}

impl AdoptedConn {
    /// Back to a parcel (its driver never ran), with its server and session half.
    fn into_parcel(self) -> (Arc<ServerCtx>, Rc<Conn>, ConnParcel) {
        let now = Instant::now();
        match self {
            AdoptedConn::Tcp(server, machine, fd) => {
                let record = machine.export(now);
                (server, machine.conn().clone(), ConnParcel { record, fd })
            }
            AdoptedConn::Ws(server, machine, fd) => {
                let record = machine.export(now);
                (server, machine.conn().clone(), ConnParcel { record, fd })
            }
        }
    }
}

/// The accept loops of one start: they stop when `stop` is dropped.
struct Accepting {
    stop: flume::Sender<()>,
    loops: Vec<glommio::Task<()>>,
}

impl Shard {
    /// The whole life of a shard, on its executor: serves until `Exit`, then stops what it owns.
    pub fn run(spec: ShardSpec, upstream: Box<dyn Upstream>) -> impl Future<Output = ()> {
        crate::metrics::enter_shard(&spec.metrics, spec.index);
        let (link_closing, link_closing_rx) = flume::bounded::<()>(1);
        let control = glommio::executor().create_task_queue(
            glommio::Shares::default(),
            glommio::Latency::Matters(CONTROL_LATENCY),
            "shard-control",
        );
        let links_queue = glommio::executor().create_task_queue(
            glommio::Shares::default(),
            glommio::Latency::NotImportant,
            "links",
        );
        let shard = Rc::new(Shard {
            control,
            links_queue,
            index: spec.index,
            count: spec.count,
            packet: spec.packet,
            table: RefCell::new(Table::new(spec.index, spec.count)),
            upstream: Rc::from(upstream),
            sessions: spec.sessions,
            heartbeat: spec.packet.heartbeat(0),
            tasks: glommio::sync::Gate::new(),
            listeners: spec.clients,
            link_fds: spec.link_fds,
            backlog: spec.backlog,
            link: spec.link,
            accepting: RefCell::new(None),
            link_accepting: RefCell::new(None),
            accept_wanted: std::cell::Cell::new(true),
            kcp_serving: RefCell::default(),
            link_closing: RefCell::new(Some(link_closing)),
            link_closing_rx,
            clients_stage: Rc::default(),
            links_stage: Rc::default(),
            conn_parcels: Collector::default(),
            link_parcels: Collector::default(),
            skimmed: RefCell::default(),
            idle_pending: RefCell::default(),
        });
        let inbox = spec.inbox;
        let inherited = spec.inherited;
        let life = async move {
            let (adopted, rest) = match inherited {
                Inheritance::Fresh => (Vec::new(), Inherited::default()),
                Inheritance::Upgrade(feed) => match shard.receive(feed).await {
                    Some(got) => got,
                    // The upgrade failed: nothing ran, nothing is touched.
                    None => return,
                },
            };
            // The home index first: another shard may already forward a node's command by
            // uid here (it waits in the inbox).
            shard.index_inherited(&rest);
            // What reached the inbox before the start (the registry's first node list) is
            // applied before any inherited connection runs: its packets need the routes.
            while let Ok(msg) = inbox.try_recv() {
                if !shard.handle(msg) {
                    return;
                }
            }
            shard.take_over(adopted, rest).await;
            shard.start_kcp();
            shard.start_accepting();
            shard.start_link_accepting();
            while let Ok(msg) = inbox.recv_async().await {
                if !shard.handle(msg) {
                    break;
                }
            }
            Shard::stop_loops(&shard.accepting).await;
            Shard::stop_loops(&shard.link_accepting).await;
            drop(shard.link_closing.borrow_mut().take());
            // Bounded: an unreachable node must not hold the exit.
            let deadline = Instant::now() + EXIT_GRACE;
            let left = || deadline.saturating_duration_since(Instant::now());
            let _ = glommio::timer::timeout(left(), async {
                let _ = shard.tasks.close().await;
                Ok(())
            })
            .await;
            // KCP sessions end with the shard: nothing is sent to their clients (as in due).
            shard.kcp_serving.borrow_mut().clear();
            // Let queued events and packets reach the nodes, then stop the node links.
            while !shard.upstream.idle() && !left().is_zero() {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            let _ = glommio::timer::timeout(left().max(Duration::from_millis(50)), async {
                shard.upstream.close().await;
                Ok(())
            })
            .await;
        };
        async move {
            match glommio::spawn_local_into(life, control) {
                Ok(task) => task.await,
                Err(e) => tracing::error!(error = %e, "shard: cannot start its control queue"),
            }
        }
    }

    /// Runs `task` in `queue` as a task the shard waits for (bounded) when it stops. A closed
    /// gate means the shard is stopping: the task is dropped (its socket closes).
    fn spawn_gated(
        &self,
        task: impl Future<Output = ()> + 'static,
        queue: glommio::TaskQueueHandle,
    ) {
        if let Ok(pass) = self.tasks.enter() {
            if let Ok(t) = glommio::spawn_local_into(Gated { task, pass }, queue) {
                t.detach();
            }
        }
    }

    /// Runs `task` in the shard's control queue.
    fn spawn_control<T: 'static>(
        &self,
        task: impl Future<Output = T> + 'static,
    ) -> glommio::Task<T> {
        glommio::spawn_local_into(task, self.control).expect("the shard's control queue exists")
    }

    /// Applies one inbox message. `false` = the shard must stop.
    fn handle(self: &Rc<Self>, msg: ShardMsg) -> bool {
        match msg {
            ShardMsg::Session(cmd) => self.apply(cmd),
            ShardMsg::Nodes(nodes) => self.upstream.update_nodes(&nodes),
            ShardMsg::StopAccepting => {
                self.accept_wanted.set(false);
                let shard = self.clone();
                self.spawn_control(async move { Shard::stop_loops(&shard.accepting).await })
                    .detach();
            }
            ShardMsg::CloseAll { graceful } => {
                self.start_idle_now();
                self.table.borrow().close_all(graceful)
            }
            ShardMsg::Exit => {
                self.start_idle_now();
                return false;
            }
            ShardMsg::Skim(reply) => {
                self.start_idle_now();
                // Begun here, not in the task: a thaw handled next must find it begun.
                self.begin_skim();
                let shard = self.clone();
                self.spawn_control(async move {
                    let _ = reply.send(shard.skim().await);
                })
                .detach();
            }
            ShardMsg::FreezeLinks(reply) => {
                let shard = self.clone();
                self.spawn_control(async move {
                    let _ = reply.send(shard.freeze_links().await);
                })
                .detach();
            }
            ShardMsg::FreezeClients(reply) => {
                self.start_idle_now();
                let shard = self.clone();
                self.spawn_control(async move {
                    let _ = reply.send(shard.freeze_clients().await);
                })
                .detach();
            }
            ShardMsg::Quiesce(reply) => {
                let _ = reply.send(());
            }
            ShardMsg::Thaw => self.thaw(),
            ShardMsg::Commit(reply) => {
                self.skimmed.borrow_mut().clear();
                self.clients_stage.set(Phase::Committed);
                self.links_stage.set(Phase::Committed);
                self.upstream.commit();
                let _ = reply.send(());
            }
        }
        true
    }

    /// Starts the client accept loops on duplicates of the kept sockets.
    fn start_accepting(self: &Rc<Self>) {
        if !self.accept_wanted.get() || self.accepting.borrow().is_some() {
            return;
        }
        let (stop, accepting) = flume::bounded::<()>(1);
        let mut loops = Vec::new();
        // KCP's UDP sockets are served for the shard's whole life (`start_kcp`).
        for l in self.listeners.iter().filter(|l| l.kcp.is_none()) {
            if let Err(e) = crate::net::listen(&l.fd, self.backlog) {
                tracing::error!(error = %e, "cannot listen on a client socket");
                continue;
            }
            match l.fd.try_clone() {
                Ok(fd) => loops.push(self.spawn_control(listener::accept_loop(
                    self.clone(),
                    l.server.clone(),
                    l.ws.clone(),
                    fd,
                    accepting.clone(),
                ))),
                Err(e) => tracing::error!(error = %e, "cannot start a client accept loop"),
            }
        }
        *self.accepting.borrow_mut() = Some(Accepting { stop, loops });
    }

    /// Starts serving this shard's KCP sockets: they carry the datagrams of open sessions as
    /// well as new ones, so they run until the shard exits (new sessions only while
    /// accepting, `Host::accepting`).
    fn start_kcp(self: &Rc<Self>) {
        for l in &self.listeners {
            let Some(params) = l.kcp else {
                continue;
            };
            match l.fd.try_clone() {
                Ok(fd) => {
                    let task =
                        crate::connection::kcp::serve(self.clone(), l.server.clone(), params, fd);
                    match glommio::spawn_local_into(task, glommio::executor().current_task_queue())
                    {
                        Ok(t) => self.kcp_serving.borrow_mut().push(t),
                        Err(e) => tracing::error!(error = %e, "cannot start the KCP server"),
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot start the KCP server"),
            }
        }
    }

    /// Starts the link accept loops on duplicates of the kept sockets.
    fn start_link_accepting(self: &Rc<Self>) {
        if self.link_accepting.borrow().is_some() {
            return;
        }
        let (stop, accepting) = flume::bounded::<()>(1);
        let mut loops = Vec::new();
        for fd in &self.link_fds {
            if let Err(e) = crate::net::listen(fd, self.backlog) {
                tracing::error!(error = %e, "cannot listen on a link socket");
                continue;
            }
            match fd.try_clone() {
                Ok(fd) => loops.push(self.spawn_control(node_api::accept_loop(
                    self.clone(),
                    self.link.clone(),
                    fd,
                    accepting.clone(),
                    self.link_closing_rx.clone(),
                ))),
                Err(e) => tracing::error!(error = %e, "cannot start a link accept loop"),
            }
        }
        *self.link_accepting.borrow_mut() = Some(Accepting { stop, loops });
    }

    /// Stops some accept loops and waits until they have ended (the kept sockets stay open, so
    /// connections arriving meanwhile wait in the kernel's queue).
    async fn stop_loops(loops: &RefCell<Option<Accepting>>) {
        let Some(a) = loops.borrow_mut().take() else {
            return;
        };
        drop(a.stop);
        for l in a.loops {
            l.await;
        }
    }

    /// Upgrade step 0: every quiet connection parks and exports itself (each decides once;
    /// bounded by [`SKIM_LIMIT`]); the busy ones serve on. New clients are still accepted.
    fn begin_skim(&self) {
        self.conn_parcels.open(self.clients_stage.live());
        self.clients_stage.set(Phase::Skimming);
        for c in self.table.borrow().conns() {
            c.wake();
        }
    }

    /// Awaits the skim's decisions and collects the parcels ([`Shard::begin_skim`] began it).
    async fn skim(self: Rc<Self>) -> Vec<ConnParcel<Lent>> {
        let started = Instant::now();
        let decided = glommio::timer::timeout(SKIM_LIMIT, async {
            self.clients_stage.all_decided().await;
            Ok(())
        })
        .await
        .is_ok();
        let conns = self.conn_parcels.close();
        *self.skimmed.borrow_mut() = conns
            .iter()
            .map(|p| (p.record.session.cid, p.record.session.clone()))
            .collect();
        tracing::info!(
            shard = self.index,
            skimmed = conns.len(),
            serving_on = self.clients_stage.declined(),
            decided,
            took = ?started.elapsed(),
            "upgrade: quiet connections skimmed"
        );
        conns
    }

    /// Upgrade step 1: no new node link; every link connection parks between two frames.
    async fn freeze_links(self: Rc<Self>) -> Vec<LinkParcel<Lent>> {
        Shard::stop_loops(&self.link_accepting).await;
        self.link_parcels.open(self.links_stage.live());
        self.links_stage.set(Phase::Frozen);
        self.links_stage
            .await_parked(FREEZE_LIMIT, "link connection")
            .await;
        self.link_parcels.close()
    }

    /// Upgrade step 2: every client connection parks and exports itself, then the node links.
    async fn freeze_clients(self: Rc<Self>) -> ShardParcel {
        let started = Instant::now();
        Shard::stop_loops(&self.accepting).await;
        let stopped = started.elapsed();
        self.conn_parcels.open(self.clients_stage.live());
        self.clients_stage.set(Phase::Frozen);
        // Skimmed connections stay parked (not woken); what a node changed in their sessions
        // since then goes along as an update.
        let mut sessions = Vec::new();
        {
            let skimmed = self.skimmed.borrow();
            for c in self.table.borrow().conns() {
                match skimmed.get(&c.cid) {
                    None => c.wake(),
                    Some(sent) => {
                        let now = c.export();
                        if now != *sent {
                            sessions.push(now);
                        }
                    }
                }
            }
        }
        self.clients_stage
            .await_parked(FREEZE_LIMIT, "client connection")
            .await;
        let conns = self.conn_parcels.close();
        let parked = started.elapsed();
        let node_links = self.upstream.freeze().await;
        tracing::info!(
            shard = self.index,
            connections = conns.len(),
            accept_stopped = ?stopped,
            parked = ?parked,
            node_links_parked = ?started.elapsed(),
            "upgrade: shard frozen"
        );
        ShardParcel {
            conns,
            sessions,
            node_links,
            next_seq: self.table.borrow().next_seq(),
        }
    }

    /// The upgrade failed: what was collected is dropped (our sockets stay), everything parked
    /// carries on, and the listeners accept again.
    fn thaw(self: &Rc<Self>) {
        drop(self.conn_parcels.close());
        self.skimmed.borrow_mut().clear();
        drop(self.link_parcels.close());
        self.clients_stage.set(Phase::Serving);
        self.links_stage.set(Phase::Serving);
        self.upstream.thaw();
        self.start_accepting();
        self.start_link_accepting();
    }

    /// Takes up what the running gate hands this shard during an upgrade, until `Commit`:
    /// each connection is rebuilt and put in the table as it arrives (the quiet ones while the
    /// old process still serves the busy ones), a session update rebuilds its connection.
    /// `None` = the feed closed first (the upgrade failed).
    async fn receive(
        self: &Rc<Self>,
        feed: flume::Receiver<Feed>,
    ) -> Option<(Vec<Adopted>, Inherited)> {
        let started = Instant::now();
        let mut adopted: Vec<Option<Adopted>> = Vec::new();
        let mut at: HashMap<i64, usize> = HashMap::new();
        let mut rest = Inherited::default();
        let mut updated = 0;
        loop {
            match feed.recv_async().await.ok()? {
                Feed::Conns(conns) => {
                    self.table.borrow_mut().reserve(conns.len());
                    for parcel in conns {
                        let cid = parcel.record.session.cid;
                        if let Some(a) = self.adopt(parcel) {
                            at.insert(cid, adopted.len());
                            adopted.push(Some(a));
                        }
                    }
                }
                Feed::Session(session) => {
                    let Some(slot) = at.get(&session.cid).and_then(|&i| adopted.get_mut(i)) else {
                        continue;
                    };
                    if let Some(a) = slot.take() {
                        updated += 1;
                        let (server, conn, mut parcel) = a.conn.into_parcel();
                        Host::forget(&**self, &server, &conn);
                        parcel.record.session = session;
                        *slot = self.adopt(parcel);
                    }
                }
                Feed::Rest(r) => rest = r,
                Feed::Commit => break,
            }
        }
        let adopted: Vec<Adopted> = adopted.into_iter().flatten().collect();
        tracing::info!(
            shard = self.index,
            connections = adopted.len(),
            updated,
            took = ?started.elapsed(),
            "upgrade: connections taken up"
        );
        Some((adopted, rest))
    }

    /// Rebuilds one connection; one that cannot be is logged and closed (its socket dropped).
    fn adopt(&self, parcel: ConnParcel) -> Option<Adopted> {
        let r = &parcel.record;
        let cid = r.session.cid;
        let busy = !r.transmit.is_empty()
            || !r.session.outbox.is_empty()
            || r.liveness.since_last_receive < BUSY_WITHIN;
        match self.adopt_conn(parcel) {
            Ok(conn) => Some(Adopted { conn, busy }),
            Err(e) => {
                tracing::error!(cid, error = %e, "upgrade: connection not taken up, closed");
                None
            }
        }
    }

    /// The cid floor and home index entries the previous process handed to this shard.
    fn index_inherited(&self, rest: &Inherited) {
        let mut table = self.table.borrow_mut();
        table.reserve_below(rest.next_seq);
        for &(uid, cid) in &rest.users {
            table.insert_user(uid, cid);
        }
    }

    /// Starts what the previous process handed to this shard (`--upgrade`), its connections
    /// and home index already in the table: node links, link connections, then the
    /// connections, busy ones first, each carrying on where it stopped.
    async fn take_over(self: &Rc<Self>, adopted: Vec<Adopted>, rest: Inherited) {
        if !rest.node_links.is_empty() {
            self.upstream.adopt(rest.node_links);
        }
        // Every connection is in the table before anything else runs: a node command arriving
        // on an inherited link finds its target, even if that target's driver has not started
        // (a push just waits in its queue).
        for parcel in rest.links {
            node_api::adopt(
                self,
                self.link.clone(),
                parcel,
                self.link_closing_rx.clone(),
            );
        }
        let started = Instant::now();
        let count = adopted.len();
        // Busy connections start first (bytes to write, or a frame within BUSY_WITHIN): a
        // client that only heartbeats every few seconds does not notice waiting for the rest.
        let (busy, idle): (Vec<Adopted>, Vec<Adopted>) = adopted.into_iter().partition(|a| a.busy);
        let busy_count = busy.len();
        for a in busy {
            self.start_adopted(a);
        }
        if busy_count > 0 {
            tracing::info!(
                shard = self.index,
                busy = busy_count,
                took = ?started.elapsed(),
                "upgrade: busy connections started"
            );
        }
        // The idle ones in a task of their own, so that this shard's inbox (the second hop of
        // node commands) is served from now on: after the busy ones have worked off what
        // queued up during the hand-off, a batch at a time, with a pause between batches in
        // which the busy ones, the links and IO run.
        // Another hand-off, a shutdown or a close of everything starts the rest at once
        // (`start_idle_now`): a connection without a driver could not take part.
        if idle.is_empty() {
            return;
        }
        *self.idle_pending.borrow_mut() = idle;
        let shard = self.clone();
        self.spawn_control(async move {
            glommio::timer::sleep(IDLE_START_AFTER).await;
            loop {
                let batch: Vec<Adopted> = {
                    let mut pending = shard.idle_pending.borrow_mut();
                    let n = pending.len().min(IDLE_START_BATCH);
                    pending.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                for a in batch {
                    shard.start_adopted(a);
                }
                glommio::timer::sleep(IDLE_START_PAUSE).await;
            }
            tracing::info!(
                shard = shard.index,
                connections = count,
                took = ?started.elapsed(),
                "upgrade: idle connections started"
            );
        })
        .detach();
    }

    /// Starts every inherited idle connection not started yet.
    fn start_idle_now(self: &Rc<Self>) {
        let pending = std::mem::take(&mut *self.idle_pending.borrow_mut());
        for a in pending {
            self.start_adopted(a);
        }
    }

    /// Starts the driver of an adopted connection on its inherited socket.
    fn start_adopted(self: &Rc<Self>, a: Adopted) {
        match a.conn {
            AdoptedConn::Tcp(server, machine, fd) => {
                let stream = crate::net::stream_from(fd);
                Host::spawn(
                    &**self,
                    driver::serve(self.clone(), server, machine, stream),
                );
            }
            AdoptedConn::Ws(server, machine, fd) => {
                let stream = crate::net::stream_from(fd);
                Host::spawn(
                    &**self,
                    driver::serve(self.clone(), server, machine, stream),
                );
            }
        }
    }

    /// Rebuilds one handed-over connection and puts it in the table; its driver starts later.
    fn adopt_conn(&self, parcel: ConnParcel) -> Result<AdoptedConn, RecordError> {
        let record = parcel.record;
        let transport = record.session.transport;
        let Some(l) = self
            .listeners
            .iter()
            .find(|l| l.server.transport == transport && l.server.tls.is_none())
        else {
            return Err(RecordError::Transport);
        };
        let server = l.server.clone();
        let (packet, cap) = (self.packet, server.inbound_cap);
        let now = Instant::now();
        let queue = server.config.write_queue_size;
        match (&l.ws, transport) {
            (None, crate::session::Transport::Tcp) => {
                let machine = Connection::import(record, server.rules, queue, now, |f| match f {
                    FramingRecord::Tcp => Ok(TcpFraming::new(packet, cap)),
                    FramingRecord::Ws(_) => Err(RecordError::Transport),
                })?;
                self.insert_adopted(&server, machine.conn());
                Ok(AdoptedConn::Tcp(server, machine, parcel.fd))
            }
            (Some(rules), crate::session::Transport::Ws) => {
                let options = rules.options;
                let machine = Connection::import(record, server.rules, queue, now, |f| match f {
                    FramingRecord::Ws(w) => Ok(WsFraming::import(packet, cap, options, w)),
                    FramingRecord::Tcp => Err(RecordError::Transport),
                })?;
                self.insert_adopted(&server, machine.conn());
                Ok(AdoptedConn::Ws(server, machine, parcel.fd))
            }
            _ => Err(RecordError::Transport),
        }
    }

    /// Registers an adopted connection: table, channels, server slot, its source IP's count
    /// (no Connect: the nodes know it already).
    fn insert_adopted(&self, server: &ServerCtx, conn: &Rc<Conn>) {
        crate::metrics::shard().open[server.transport as usize].inc();
        server.ip_adopt(conn.ip);
        server.slot().fetch_add(1, Ordering::AcqRel);
        self.table.borrow_mut().insert_imported(conn.clone());
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
    /// Client connections run in the default queue, whoever spawns them.
    fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        self.spawn_gated(task, glommio::TaskQueueHandle::default())
    }

    fn packet(&self) -> &PacketConfig {
        &self.packet
    }

    fn heartbeat(&self) -> Bytes {
        Shard::heartbeat(self)
    }

    fn stage(&self) -> Option<&Rc<Stage>> {
        Some(&self.clients_stage)
    }

    fn hand_over(&self, parcel: ConnParcel<Lent>) -> bool {
        self.conn_parcels.offer(parcel).is_ok()
    }

    fn forget(&self, server: &ServerCtx, conn: &Conn) {
        crate::metrics::shard().open[server.transport as usize].dec();
        server.ip_leave(conn.ip);
        conn.set_state(ConnState::Closed);
        self.table.borrow_mut().remove(conn);
        server.slot().fetch_sub(1, Ordering::AcqRel);
    }

    fn deliver(&self, d: Delivery) {
        self.upstream.deliver(d)
    }

    fn poll_ready(&self, cid: i64, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.upstream.poll_ready(cid, cx)
    }

    fn accepting(&self) -> bool {
        self.accept_wanted.get()
    }

    /// Admits a new connection if `server` has room: allocates its cid, registers the session and
    /// emits Connect. `None` means the server is full (the caller closes the socket, no bytes).
    fn admit(&self, server: &ServerCtx, ip: IpAddr) -> Option<Rc<Conn>> {
        let m = crate::metrics::shard();
        if !server.try_admit() {
            m.refuse(crate::metrics::RefuseLabel::MaxConn);
            return None;
        }
        m.accepted[server.transport as usize].inc();
        m.open[server.transport as usize].inc();
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
        crate::metrics::shard().open[server.transport as usize].dec();
        // Its source IP's place (per-IP limits) is free at once; the server slot may wait.
        server.ip_leave(conn.ip);
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

    /// Link connections and command follow-ups run in the shard's link queue: beside the
    /// client connections (same shares, no latency demand), but not behind all of them.
    fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        self.spawn_gated(task, self.links_queue)
    }

    fn link_stage(&self) -> Option<&Rc<Stage>> {
        Some(&self.links_stage)
    }

    fn hand_over_link(&self, parcel: LinkParcel<Lent>) -> bool {
        self.link_parcels.offer(parcel).is_ok()
    }
}
