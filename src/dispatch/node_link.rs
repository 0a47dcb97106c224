//! The gate's outbound link to nodes: per shard, one connection to each node's link server,
//! carrying deliver and trigger frames (seq 0), handshaken as kind 1 with the gate's id.
//!
//! Because a client connection is used only by the shard that owns it, and a cid's packets are
//! all read on the cid's shard, per-client order is kept without pinning tables: one shard, one
//! connection, one FIFO. Frames are appended to a byte queue and written in batches. A node that
//! cannot be reached is marked faulty for 3 s (due's window) and frames for it are dropped.

use ahash::AHashMap;
use bytes::BytesMut;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use std::cell::{Cell, RefCell};
use std::os::fd::OwnedFd;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::drpc::{self, Head, LINK_HEARTBEAT};
use crate::handoff::{Collector, Lent, Member, Phase, Stage};
use crate::net::HostPort;

/// due's dial rules: 500 ms per attempt, 3 attempts, 5 ms then 10 ms between them.
const DIAL_TIMEOUT: Duration = Duration::from_millis(500);
const DIAL_ATTEMPTS: u32 = 3;
/// How long a node that failed every dial is skipped.
const FAULT_WINDOW: Duration = Duration::from_secs(3);
/// How long the handshake answer may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Queued bytes beyond which a client whose packet went to this node stops being read until the
/// node catches up (due's gate blocks that client's reader on a slow node; this is the same
/// back-pressure, per client: the shard's other clients are read on).
const HIGH_WATER: usize = 4 << 20;
/// Queued bytes beyond which frames are dropped: a node that does not read at all must not
/// grow the gate's memory without bound (reached only by traffic already read, e.g. events).
const MAX_QUEUED: usize = 64 << 20;
/// Instance kind "gate" in the handshake.
const KIND_GATE: u8 = 1;

/// How long a freeze waits for connected links to finish the write in progress and park.
const FREEZE_LIMIT: Duration = Duration::from_secs(1);

/// The link connections of one shard, by node link address.
pub struct NodeLinks {
    gid: Rc<str>,
    /// Each node's connections from this shard (`linkConns` of them).
    nodes: RefCell<AHashMap<String, Vec<Rc<NodeLink>>>>,
    conns_per_node: usize,
    pressure: Rc<Pressure>,
    /// The connection tasks, waited for by [`NodeLinks::close`].
    tasks: glommio::sync::Gate,
    /// Connected links in an upgrade hand-off, and the parcels of a freeze.
    stage: Rc<Stage>,
    parcels: Rc<Collector<NodeLinkParcel<Lent>>>,
}

/// An outbound node connection on its way to the next process (`--upgrade`): which node, which
/// of this shard's connections to it, the socket (lent by the parked task in the old process,
/// owned in the new one), and the frames queued and not yet written.
#[derive(Debug)]
pub struct NodeLinkParcel<S = OwnedFd> {
    pub addr: String,
    pub slot: usize,
    pub fd: S,
    pub queued: Vec<u8>,
}

/// How many of this shard's node queues are over the high-water mark, and which client
/// connections are held back by one (the connection's last packet went to that queue).
#[derive(Default)]
struct Pressure {
    congested: Cell<usize>,
    /// cid → the congested link it waits for. Weak: a link forgotten meanwhile frees its cids.
    /// Emptied whenever no queue is congested.
    held: RefCell<AHashMap<i64, Weak<NodeLink>>>,
}

impl Pressure {
    fn relieve(&self) {
        self.congested.set(self.congested.get() - 1);
        if self.congested.get() == 0 {
            self.held.borrow_mut().clear();
        }
    }
}

impl NodeLinks {
    pub fn new(gid: &str, conns_per_node: usize) -> Self {
        NodeLinks {
            gid: gid.into(),
            nodes: RefCell::new(AHashMap::new()),
            conns_per_node: conns_per_node.max(1),
            pressure: Rc::default(),
            tasks: glommio::sync::Gate::new(),
            stage: Rc::default(),
            parcels: Rc::default(),
        }
    }

    fn start(&self, link: Rc<NodeLink>, stream: Option<glommio::net::TcpStream>) {
        let task = run(
            link,
            self.gid.clone(),
            self.stage.clone(),
            self.parcels.clone(),
            stream,
        );
        // In the default queue, beside the client connections that feed them.
        if let Ok(t) = self
            .tasks
            .spawn_into(task, glommio::TaskQueueHandle::default())
        {
            t.detach();
        }
    }

    /// Parks every connected link after the write in progress (bounded) and returns their
    /// sockets and queued frames. Links not connected keep their queue and dial later.
    pub async fn freeze(&self) -> Vec<NodeLinkParcel<Lent>> {
        self.parcels.open(self.stage.live());
        self.stage.set(Phase::Frozen);
        for l in self.nodes.borrow().values().flatten() {
            l.wake();
        }
        self.stage.await_parked(FREEZE_LIMIT, "node link").await;
        self.parcels.close()
    }

    /// The freeze is called off: parked links carry on.
    pub fn thaw(&self) {
        self.stage.set(Phase::Serving);
    }

    /// The next process took the parked links: they end without a byte, and are forgotten
    /// (a later frame for their node dials anew).
    pub fn commit(&self) {
        self.stage.set(Phase::Committed);
        self.nodes.borrow_mut().retain(|_, links| {
            links.retain(|l| !l.handed.get());
            !links.is_empty()
        });
    }

    /// Carries on the links the previous process handed over, in their slot order.
    pub fn adopt(&self, mut parcels: Vec<NodeLinkParcel>) {
        parcels.sort_by_key(|p| p.slot);
        for p in parcels {
            let mut nodes = self.nodes.borrow_mut();
            let links = nodes.entry(p.addr.clone()).or_default();
            let link = Rc::new(NodeLink::new(&p.addr, links.len(), self.pressure.clone()));
            link.queue.borrow_mut().extend_from_slice(&p.queued);
            links.push(link.clone());
            drop(nodes);
            self.start(link, Some(crate::net::stream_from(p.fd)));
        }
    }

    /// `Pending` while the queue that connection `cid`'s last packet went to is over the
    /// high-water mark: that client's driver stops reading until it drains (it is woken). Every
    /// other connection is `Ready`. No lookup at all while no queue of this shard is congested.
    pub fn poll_ready(&self, cid: i64, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.pressure.congested.get() == 0 {
            return Poll::Ready(());
        }
        let mut held = self.pressure.held.borrow_mut();
        let Some(link) = held.get(&cid).and_then(Weak::upgrade) else {
            held.remove(&cid);
            return Poll::Ready(());
        };
        if !link.congested.get() {
            held.remove(&cid);
            return Poll::Ready(());
        }
        let mut w = link.held_wakers.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// [`NodeLinks::send`] of a client's packet (`pin` = its cid): when the node's queue is now
    /// over the high-water mark, that client is held back ([`NodeLinks::poll_ready`]).
    pub fn send_holding(&self, addr: &str, cid: i64, write: impl FnOnce(&mut BytesMut)) -> bool {
        let link = self.link(addr, cid);
        let queued = link.enqueue(write);
        if link.congested.get() {
            self.pressure
                .held
                .borrow_mut()
                .insert(cid, Rc::downgrade(&link));
        }
        queued
    }

    /// Queues a frame for the node at `addr`, connecting on first use. Returns false (and drops
    /// the frame) while the node is in its fault window or its queue is full.
    pub fn send(&self, addr: &str, pin: i64, write: impl FnOnce(&mut BytesMut)) -> bool {
        self.link(addr, pin).enqueue(write)
    }

    /// The connection to the node at `addr` that `pin`'s frames take, created (with its
    /// connection task) on first use.
    fn link(&self, addr: &str, pin: i64) -> Rc<NodeLink> {
        // A client's frames always take the same connection: their order is kept.
        let pick =
            |links: &Vec<Rc<NodeLink>>| links[(pin as u64 % links.len() as u64) as usize].clone();
        if let Some(links) = self.nodes.borrow().get(addr) {
            return pick(links);
        }
        let mut nodes = self.nodes.borrow_mut();
        let links = nodes.entry(addr.to_string()).or_insert_with(|| {
            (0..self.conns_per_node)
                .map(|slot| {
                    let l = Rc::new(NodeLink::new(addr, slot, self.pressure.clone()));
                    self.start(l.clone(), None);
                    l
                })
                .collect()
        });
        pick(links)
    }

    /// Whether every queued frame has been written (or dropped with its unreachable node).
    pub fn idle(&self) -> bool {
        self.nodes
            .borrow()
            .values()
            .flatten()
            .all(|l| l.queue.borrow().is_empty() && !l.writing.get())
    }

    /// Closes every node connection of this shard and resolves once their tasks have ended.
    pub async fn close(&self) {
        self.retain(|_| false);
        let _ = self.tasks.close().await;
    }

    /// Forgets nodes no longer in the registry view; their connections close.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.nodes.borrow_mut().retain(|addr, links| {
            let k = keep(addr);
            if !k {
                for l in links {
                    l.closed.set(true);
                    l.set_congested(false);
                    l.wake();
                }
            }
            k
        });
    }
}

/// One node's connection state on this shard.
struct NodeLink {
    addr: String,
    /// Which of this shard's connections to the node it is.
    slot: usize,
    pressure: Rc<Pressure>,
    congested: Cell<bool>,
    /// Drivers of the client connections held back by this queue, woken when it drains.
    held_wakers: RefCell<Vec<Waker>>,
    /// A batch taken from `queue` is being written.
    writing: Cell<bool>,
    queue: RefCell<BytesMut>,
    waker: RefCell<Option<Waker>>,
    faulty_until: Cell<Option<Instant>>,
    closed: Cell<bool>,
    /// Parked with its parcel taken by a freeze.
    handed: Cell<bool>,
}

impl NodeLink {
    fn new(addr: &str, slot: usize, pressure: Rc<Pressure>) -> Self {
        NodeLink {
            addr: addr.to_string(),
            slot,
            pressure,
            congested: Cell::new(false),
            held_wakers: RefCell::new(Vec::new()),
            writing: Cell::new(false),
            queue: RefCell::new(BytesMut::new()),
            waker: RefCell::new(None),
            faulty_until: Cell::new(None),
            closed: Cell::new(false),
            handed: Cell::new(false),
        }
    }

    fn enqueue(&self, write: impl FnOnce(&mut BytesMut)) -> bool {
        if self.faulty_until.get().is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let mut q = self.queue.borrow_mut();
        if q.len() > MAX_QUEUED {
            return false;
        }
        let was_empty = q.is_empty();
        write(&mut q);
        let over = q.len() > HIGH_WATER;
        drop(q);
        if over {
            self.set_congested(true);
        }
        if was_empty {
            self.wake();
        }
        true
    }

    fn set_congested(&self, on: bool) {
        if self.congested.replace(on) != on {
            if on {
                self.pressure
                    .congested
                    .set(self.pressure.congested.get() + 1);
            } else {
                for w in self.held_wakers.borrow_mut().drain(..) {
                    w.wake();
                }
                self.pressure.relieve();
            }
        }
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves when frames are queued or the link is closed.
    async fn wait_work(&self) {
        std::future::poll_fn(|cx| {
            if !self.queue.borrow().is_empty() || self.closed.get() {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

async fn dial(addr: &str) -> Option<glommio::net::TcpStream> {
    // Host names are resolved once per dial (rare; registries publish IPs).
    let sa = match HostPort::parse_remote(addr).and_then(|hp| hp.lookup()) {
        Ok(sa) => sa,
        Err(e) => {
            tracing::debug!(addr, error = %e, "link dial failed");
            return None;
        }
    };
    let mut pause = Duration::from_millis(5);
    for attempt in 1..=DIAL_ATTEMPTS {
        match glommio::net::TcpStream::connect_timeout(sa, DIAL_TIMEOUT).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Some(s);
            }
            Err(e) => {
                tracing::debug!(addr, attempt, error = %e, "link dial failed");
                if attempt < DIAL_ATTEMPTS {
                    glommio::timer::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
    }
    None
}

/// Sends the handshake and waits for its answer (any frame with seq 1; the code is not checked,
/// as in due).
async fn handshake(stream: &mut glommio::net::TcpStream, gid: &str) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    drpc::put_handshake(&mut out, 1, KIND_GATE, gid.as_bytes());
    stream.write_all(&out).await?;
    let mut buf = BytesMut::new();
    let r = glommio::timer::timeout(HANDSHAKE_TIMEOUT, async {
        loop {
            let mut chunk = [0u8; 256];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(glommio::GlommioError::IoError(
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Ok(Some(len)) = drpc::frame_len(&buf, 1 << 20) {
                let frame = buf.split_to(len);
                if let Ok(Head::Data { seq: 1, .. }) = drpc::peek(&frame) {
                    return Ok(());
                }
            }
        }
    })
    .await;
    r.map_err(|e| std::io::Error::other(e.to_string()))
}

/// The connection task of one node on one shard: dial, handshake, then write queued frames and
/// heartbeats until the connection fails; re-dial; after failing every attempt, sit out the
/// fault window with the queue dropped. A connection handed over by the previous process
/// (`adopted`) starts pumping at once. While connected, the link is a member of the shard's
/// hand-off stage: a freeze parks it between two writes.
async fn run(
    link: Rc<NodeLink>,
    gid: Rc<str>,
    stage: Rc<Stage>,
    parcels: Rc<Collector<NodeLinkParcel<Lent>>>,
    mut adopted: Option<glommio::net::TcpStream>,
) {
    // Whether this task's connection is counted as up, and whether one was lost before.
    let (mut counted, mut lost_before) = (false, false);
    while !link.closed.get() {
        let mut stream = match adopted.take() {
            Some(s) => s,
            None => {
                let Some(mut stream) = dial(&link.addr).await else {
                    let dropped = std::mem::take(&mut *link.queue.borrow_mut()).len();
                    link.set_congested(false);
                    tracing::warn!(addr = %link.addr, dropped_bytes = dropped, "node unreachable, skipping it for 3 s");
                    link.faulty_until.set(Some(Instant::now() + FAULT_WINDOW));
                    glommio::timer::sleep(FAULT_WINDOW).await;
                    link.faulty_until.set(None);
                    // Dial again only when there is something to send.
                    link.wait_work().await;
                    continue;
                };
                if let Err(e) = handshake(&mut stream, &gid).await {
                    tracing::warn!(addr = %link.addr, error = %e, "link handshake failed");
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                tracing::debug!(addr = %link.addr, "link connected");
                stream
            }
        };
        if !counted {
            crate::metrics::with_control(|m| m.link_up(&link.addr, lost_before));
            counted = true;
        }
        let member = stage.enter();
        match pump(&link, &mut stream, &member).await {
            Pumped::Lost(reason) => {
                crate::metrics::with_control(|m| m.link_down(&link.addr));
                (counted, lost_before) = (false, true);
                tracing::info!(addr = %link.addr, %reason, "link connection lost, re-dialling")
            }
            Pumped::Frozen => {
                if park(&link, &member, &stream, &parcels).await {
                    tracing::debug!(addr = %link.addr, "link connection handed over");
                    return;
                }
                adopted = Some(stream);
            }
        }
    }
    if counted {
        crate::metrics::with_control(|m| m.link_down(&link.addr));
    }
}

/// Parks a connected link for a freeze: offers its socket and a copy of its queue, then waits
/// for the freeze to end. `true` = the next process took it (end without a byte).
async fn park(
    link: &NodeLink,
    member: &Member,
    stream: &glommio::net::TcpStream,
    parcels: &Collector<NodeLinkParcel<Lent>>,
) -> bool {
    // The socket is lent: this task keeps it open while parked.
    let parcel = NodeLinkParcel {
        addr: link.addr.clone(),
        slot: link.slot,
        fd: std::os::fd::AsRawFd::as_raw_fd(stream),
        queued: link.queue.borrow().to_vec(),
    };
    let taken = parcels.offer(parcel).is_ok();
    link.handed.set(taken);
    member.park();
    let phase = std::future::poll_fn(|cx| member.poll_leave(Phase::Frozen, cx)).await;
    let handed = phase == Phase::Committed && taken;
    link.handed.set(handed);
    handed
}

/// Why [`pump`] returned.
enum Pumped {
    Lost(String),
    /// A freeze began: nothing is being written, the queue holds what is left.
    Frozen,
}

/// Writes queued frames in batches, heartbeats every 10 s, and reads (and discards) whatever the
/// node sends back. Returns why the connection ended.
async fn pump(link: &NodeLink, stream: &mut glommio::net::TcpStream, member: &Member) -> Pumped {
    let mut next_heartbeat = Instant::now() + LINK_HEARTBEAT;
    let mut last_recv = Instant::now();
    let mut echoes_seen = false;
    let mut chunk = vec![0u8; 4096];
    let mut out = BytesMut::new();
    loop {
        if link.closed.get() {
            return Pumped::Lost("node left the registry".into());
        }
        if member.stage().phase() == Phase::Frozen {
            return Pumped::Frozen;
        }
        enum Event {
            Work,
            Read(std::io::Result<usize>),
            Tick,
            Freeze,
        }
        let until_tick = next_heartbeat.saturating_duration_since(Instant::now());
        let ev = futures_lite::future::or(
            async {
                link.wait_work().await;
                Event::Work
            },
            futures_lite::future::or(
                async { Event::Read(stream.read(&mut chunk).await) },
                futures_lite::future::or(
                    async {
                        glommio::timer::sleep(until_tick).await;
                        Event::Tick
                    },
                    async {
                        member.stage().freeze_begins().await;
                        Event::Freeze
                    },
                ),
            ),
        )
        .await;
        match ev {
            Event::Freeze => continue,
            Event::Read(Ok(0)) => return Pumped::Lost("closed by node".into()),
            Event::Read(Err(e)) => return Pumped::Lost(e.to_string()),
            Event::Read(Ok(_)) => {
                // Heartbeat echoes (v2.4.1 nodes) or answers we did not ask for: liveness only.
                last_recv = Instant::now();
                echoes_seen = true;
            }
            Event::Tick => {
                // v2.5.3+ nodes never echo: only hold a node to the 20 s rule once it has.
                if echoes_seen && last_recv.elapsed() > LINK_HEARTBEAT * 2 {
                    return Pumped::Lost("no frame from node for 20 s".into());
                }
                drpc::put_heartbeat(&mut link.queue.borrow_mut());
                next_heartbeat = Instant::now() + LINK_HEARTBEAT;
            }
            Event::Work => {}
        }
        std::mem::swap(&mut out, &mut *link.queue.borrow_mut());
        link.set_congested(false);
        if !out.is_empty() {
            link.writing.set(true);
            let r = stream.write_all(&out).await;
            link.writing.set(false);
            if let Err(e) = r {
                return Pumped::Lost(e.to_string());
            }
            out.clear();
        }
    }
}
