//! The gate's numbers: counters, gauges and histograms kept per shard without locks, the
//! control plane's counters, the health flags, and their Prometheus exposition at scrape time.
//!
//! # How a number gets counted
//! Each shard owns one [`ShardMetrics`]; its thread installs it with [`enter_shard`] and code on
//! that thread reaches it with [`shard`] (a thread-local read, no lock, no atomic
//! read-modify-write: one writer per cell, see [`Counter`]). Threads that are not shards
//! (tests, the control thread) count into a sink that is never exposed. The control plane counts
//! into [`ControlMetrics`], written from a few threads with atomic adds (none of it is per
//! message). [`GateMetrics::render`] sums the shards when Prometheus scrapes; [`http`] serves it.

pub mod http;
mod render;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

pub use render::{render, CONTENT_TYPE};

/// A monotonic count written by one thread only (its shard), read by the scraper.
///
/// `add` is a relaxed load and store, not an atomic add: with one writer no increment is lost,
/// and the hot path pays no locked instruction. The scraper may read a value one add behind.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    /// Adds `n`; only the owning thread may call it (see the type's note).
    #[inline]
    pub fn add(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }

    /// Adds `n` from any thread (an atomic add), for counters several threads share.
    pub fn add_shared(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down, written by one thread only (like [`Counter`]).
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub const fn new() -> Self {
        Gauge(AtomicI64::new(0))
    }

    #[inline]
    pub fn add(&self, n: i64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }

    #[inline]
    pub fn dec(&self) {
        self.add(-1)
    }

    /// Sets the value from any thread.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram with fixed upper bounds (in the unit the caller observes: bytes, nanoseconds),
/// written by one thread only. The `+Inf` bucket is the count.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    buckets: [Counter; MAX_BUCKETS],
    count: Counter,
    sum: Counter,
}

const MAX_BUCKETS: usize = 16;

impl Histogram {
    pub const fn new(bounds: &'static [u64]) -> Self {
        assert!(bounds.len() <= MAX_BUCKETS);
        Histogram {
            bounds,
            buckets: [const { Counter::new() }; MAX_BUCKETS],
            count: Counter::new(),
            sum: Counter::new(),
        }
    }

    /// Records one value (owning thread only).
    #[inline]
    pub fn observe(&self, v: u64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.buckets[i].inc();
        }
        self.count.inc();
        self.sum.add(v);
    }

    /// Records a duration in nanoseconds.
    #[inline]
    pub fn observe_since(&self, start: std::time::Instant) {
        self.observe(start.elapsed().as_nanos().min(u64::MAX as u128) as u64)
    }

    /// (upper bound, count in that bucket alone) pairs, the count and the sum.
    pub fn snapshot(&self) -> (Vec<(u64, u64)>, u64, u64) {
        let buckets = self
            .bounds
            .iter()
            .zip(&self.buckets)
            .map(|(&b, c)| (b, c.get()))
            .collect();
        (buckets, self.count.get(), self.sum.get())
    }
}

/// Why a client connection was closed, as counted (`reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseLabel {
    Peer,
    Io,
    HeartbeatTimeout,
    AuthorizeTimeout,
    Forced,
    Graceful,
    Protocol,
    QueueFull,
    RateLimited,
    Replaced,
    /// A TLS handshake failed after the connection was admitted (plain TLS servers admit on
    /// accept, as due does; WSS refuses before admitting instead).
    Handshake,
}

impl CloseLabel {
    pub const ALL: [CloseLabel; 11] = [
        CloseLabel::Peer,
        CloseLabel::Io,
        CloseLabel::HeartbeatTimeout,
        CloseLabel::AuthorizeTimeout,
        CloseLabel::Forced,
        CloseLabel::Graceful,
        CloseLabel::Protocol,
        CloseLabel::QueueFull,
        CloseLabel::RateLimited,
        CloseLabel::Replaced,
        CloseLabel::Handshake,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseLabel::Peer => "peer",
            CloseLabel::Io => "io",
            CloseLabel::HeartbeatTimeout => "heartbeat_timeout",
            CloseLabel::AuthorizeTimeout => "authorize_timeout",
            CloseLabel::Forced => "forced",
            CloseLabel::Graceful => "graceful",
            CloseLabel::Protocol => "protocol",
            CloseLabel::QueueFull => "queue_full",
            CloseLabel::RateLimited => "rate_limited",
            CloseLabel::Replaced => "replaced",
            CloseLabel::Handshake => "handshake",
        }
    }
}

/// Why a client connection was refused before it was served (`reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseLabel {
    /// The server holds `maxConnNum` connections.
    MaxConn,
    /// `ipAcceptRate`: the source IP connected too often.
    IpRate,
    /// `ipMaxConns`: the source IP has as many connections open as it may.
    IpConns,
    /// A PROXY protocol header was missing, malformed or from an untrusted peer.
    Proxy,
    /// The WS upgrade or TLS handshake failed or timed out.
    Handshake,
}

impl RefuseLabel {
    pub const ALL: [RefuseLabel; 5] = [
        RefuseLabel::MaxConn,
        RefuseLabel::IpRate,
        RefuseLabel::IpConns,
        RefuseLabel::Proxy,
        RefuseLabel::Handshake,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefuseLabel::MaxConn => "max_conn",
            RefuseLabel::IpRate => "ip_rate",
            RefuseLabel::IpConns => "ip_conns",
            RefuseLabel::Proxy => "proxy_protocol",
            RefuseLabel::Handshake => "handshake",
        }
    }
}

/// Why a PROXY protocol header was refused (`reason` label of `gatehouse_proxy_refused_total`),
/// in the order of `proxy_header::ProxyRefusal::ALL`.
pub const PROXY_REFUSALS: [&str; 5] = [
    "untrusted",
    "malformed",
    "truncated",
    "oversized",
    "timeout",
];

/// The client transports, as counted (`transport` label).
pub const TRANSPORTS: [&str; 3] = ["tcp", "ws", "kcp"];

/// Write batch sizes in bytes (one write system call each).
pub const BATCH_BOUNDS: [u64; 9] = [64, 256, 1024, 4096, 8192, 16384, 32768, 49152, 65536];
/// Durations in nanoseconds: 50 µs to 2.5 s.
pub const DURATION_BOUNDS: [u64; 12] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    100_000_000,
    500_000_000,
    2_500_000_000,
];

/// One shard's numbers. Only that shard's thread writes them.
#[derive(Debug)]
pub struct ShardMetrics {
    /// Connections accepted and admitted, by transport.
    pub accepted: [Counter; TRANSPORTS.len()],
    /// Connections open now, by transport (admitted or adopted, not yet released).
    pub open: [Gauge; TRANSPORTS.len()],
    /// Closes by [`CloseLabel`] (index = position in `CloseLabel::ALL`).
    pub closed: [Counter; CloseLabel::ALL.len()],
    /// Refusals by [`RefuseLabel`].
    pub refused: [Counter; 5],
    /// PROXY protocol refusals by [`PROXY_REFUSALS`] index.
    pub proxy_refused: [Counter; 5],
    pub packets_in: Counter,
    pub bytes_in: Counter,
    pub packets_out: Counter,
    pub bytes_out: Counter,
    /// Pushes refused because a connection's write queue was full.
    pub queue_full: Counter,
    /// Users bound on this shard's home index.
    pub users_bound: Gauge,
    /// Packets queued to this shard's clients and not yet taken for writing (the sum of their
    /// write queues; heartbeats owed are not queue entries and not counted).
    pub queued_packets: Gauge,
    /// Connections of this shard with an armed deadline timer (heartbeat or authorization):
    /// glommio does not expose its timer count, and these are the timers that grow with the
    /// number of clients.
    pub deadline_timers: Gauge,
    /// Client packets handed to a node link.
    pub delivered: Counter,
    /// Client packets dropped: no route for them.
    pub dropped_no_route: Counter,
    /// Client packets dropped: a route but no endpoint (node, location or link).
    pub dropped_no_endpoint: Counter,
    /// Client packets dropped: over the connection's `packetRate`.
    pub dropped_rate_limited: Counter,
    /// Bytes per client write.
    pub write_batch: Histogram,
    /// One broadcast's fan-out on this shard, in ns.
    pub broadcast: Histogram,
    /// A stateful route's locator lookup, request to answer, in ns.
    pub lookup: Histogram,
}

impl ShardMetrics {
    pub const fn new() -> Self {
        ShardMetrics {
            accepted: [const { Counter::new() }; TRANSPORTS.len()],
            open: [const { Gauge::new() }; TRANSPORTS.len()],
            closed: [const { Counter::new() }; CloseLabel::ALL.len()],
            refused: [const { Counter::new() }; 5],
            proxy_refused: [const { Counter::new() }; 5],
            packets_in: Counter::new(),
            bytes_in: Counter::new(),
            packets_out: Counter::new(),
            bytes_out: Counter::new(),
            queue_full: Counter::new(),
            users_bound: Gauge::new(),
            queued_packets: Gauge::new(),
            deadline_timers: Gauge::new(),
            delivered: Counter::new(),
            dropped_no_route: Counter::new(),
            dropped_no_endpoint: Counter::new(),
            dropped_rate_limited: Counter::new(),
            write_batch: Histogram::new(&BATCH_BOUNDS),
            broadcast: Histogram::new(&DURATION_BOUNDS),
            lookup: Histogram::new(&DURATION_BOUNDS),
        }
    }

    #[inline]
    pub fn close(&self, label: CloseLabel) {
        self.closed[label as usize].inc();
    }

    #[inline]
    pub fn refuse(&self, label: RefuseLabel) {
        self.refused[label as usize].inc();
    }

    /// Open connections on this shard, all transports.
    pub fn open_total(&self) -> i64 {
        self.open.iter().map(Gauge::get).sum()
    }
}

impl Default for ShardMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The link to one node, as counted (`node` label: the node's link address, `host:port`).
#[derive(Debug, Default, Clone, Copy)]
pub struct LinkCount {
    /// Link connections up now.
    pub up: i64,
    /// Link connections re-established after a loss.
    pub reconnects: u64,
}

/// Numbers of the control plane (locator, registry, node links). Written from several threads
/// with atomic adds or under a lock; none of it is per message.
#[derive(Debug, Default)]
pub struct ControlMetrics {
    pub locator_errors: Counter,
    /// 1 while the locator answers, 0 after a failed call (until one succeeds).
    pub locator_up: Gauge,
    pub registry_errors: Counter,
    /// Link connections by node: changed when a link comes up or goes down.
    links: Mutex<BTreeMap<String, LinkCount>>,
}

impl ControlMetrics {
    /// A node link connection came up; `again` = it replaces one that was lost.
    pub fn link_up(&self, node: &str, again: bool) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let c = links.entry(node.to_string()).or_default();
        c.up += 1;
        if again {
            c.reconnects += 1;
        }
    }

    /// A node link connection went down.
    pub fn link_down(&self, node: &str) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = links.get_mut(node) {
            c.up -= 1;
        }
    }

    pub fn links(&self) -> BTreeMap<String, LinkCount> {
        self.links.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What `/readyz` answers from.
#[derive(Debug, Default)]
pub struct Health {
    /// The client listeners accept.
    listening: AtomicBool,
    /// Registration: 0 = no registry configured, 1 = pending or failed, 2 = registered.
    registry: AtomicU8,
    /// The gate is in state hang or shut (shutdown began) rather than work or busy.
    hanging: AtomicBool,
}

impl Health {
    pub fn set_listening(&self, on: bool) {
        self.listening.store(on, Ordering::Release)
    }

    /// A registry is configured; not registered yet.
    pub fn expect_registration(&self) {
        self.registry.store(1, Ordering::Release)
    }

    pub fn set_registered(&self, registered: bool) {
        self.registry
            .store(if registered { 2 } else { 1 }, Ordering::Release)
    }

    pub fn set_hanging(&self, hanging: bool) {
        self.hanging.store(hanging, Ordering::Release)
    }

    /// Whether the gate is registered; `None` when no registry is configured.
    pub fn registered(&self) -> Option<bool> {
        match self.registry.load(Ordering::Acquire) {
            0 => None,
            s => Some(s == 2),
        }
    }

    /// `Ok` when ready for new players, else the reasons it is not.
    pub fn ready(&self) -> Result<(), Vec<&'static str>> {
        let mut why = Vec::new();
        if !self.listening.load(Ordering::Acquire) {
            why.push("listeners are not accepting");
        }
        if self.registry.load(Ordering::Acquire) == 1 {
            why.push("not registered");
        }
        if self.hanging.load(Ordering::Acquire) {
            why.push("shutting down (state hang)");
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }
}

/// Every number of one gate: its shards', the control plane's, and its health.
#[derive(Debug)]
pub struct GateMetrics {
    shards: &'static [ShardMetrics],
    pub control: Arc<ControlMetrics>,
    pub health: Health,
}

impl GateMetrics {
    /// Numbers for a gate of `shards` shards.
    ///
    /// The shards' cells live as long as the process: a shard's thread keeps a plain `'static`
    /// reference to its own (no reference count on the hot path). A gate is started once per
    /// process outside tests, so this is one small allocation (`size_of::<ShardMetrics>()` per
    /// shard) that is never given back.
    pub fn new(shards: usize) -> Arc<GateMetrics> {
        let cells: Vec<ShardMetrics> = (0..shards).map(|_| ShardMetrics::new()).collect();
        Arc::new(GateMetrics {
            shards: Box::leak(cells.into_boxed_slice()),
            control: Arc::default(),
            health: Health::default(),
        })
    }

    pub fn shards(&self) -> &'static [ShardMetrics] {
        self.shards
    }
}

/// What threads that are not shards count into: never exposed.
static SINK: ShardMetrics = ShardMetrics::new();

thread_local! {
    static CURRENT: Cell<&'static ShardMetrics> = const { Cell::new(&SINK) };
    /// The control-plane numbers of the gate this shard belongs to (rare events only).
    static CONTROL: std::cell::RefCell<Option<Arc<ControlMetrics>>> =
        const { std::cell::RefCell::new(None) };
}

/// Makes shard `index` of `gate` this thread's metrics (called once by the shard's thread).
pub fn enter_shard(gate: &GateMetrics, index: usize) {
    if let Some(m) = gate.shards.get(index) {
        CURRENT.with(|c| c.set(m));
    }
    CONTROL.with(|c| *c.borrow_mut() = Some(gate.control.clone()));
}

/// Runs `f` on the control-plane numbers of this shard's gate (nothing on other threads).
pub fn with_control(f: impl FnOnce(&ControlMetrics)) {
    CONTROL.with(|c| {
        if let Some(m) = &*c.borrow() {
            f(m)
        }
    })
}

/// This thread's shard metrics (a sink on threads that are not shards).
#[inline]
pub fn shard() -> &'static ShardMetrics {
    CURRENT.with(|c| c.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_puts_values_in_the_first_bucket_that_holds_them() {
        static B: [u64; 3] = [10, 100, 1000];
        let h = Histogram::new(&B);
        for v in [0, 10, 11, 100, 5000] {
            h.observe(v);
        }
        let (buckets, count, sum) = h.snapshot();
        assert_eq!(buckets, vec![(10, 2), (100, 2), (1000, 0)]);
        assert_eq!((count, sum), (5, 5121));
    }

    #[test]
    fn readiness_names_every_reason() {
        let h = Health::default();
        assert_eq!(h.ready(), Err(vec!["listeners are not accepting"]));
        h.set_listening(true);
        assert_eq!(h.ready(), Ok(()));
        h.expect_registration();
        h.set_hanging(true);
        assert_eq!(
            h.ready(),
            Err(vec!["not registered", "shutting down (state hang)"])
        );
        h.set_registered(true);
        h.set_hanging(false);
        assert_eq!(h.ready(), Ok(()));
    }

    #[test]
    fn a_thread_counts_into_its_shard_only() {
        let gate = GateMetrics::new(2);
        let g = gate.clone();
        std::thread::spawn(move || {
            enter_shard(&g, 1);
            shard().packets_in.add(3);
        })
        .join()
        .unwrap();
        shard().packets_in.add(100); // the sink
        assert_eq!(gate.shards()[1].packets_in.get(), 3);
        assert_eq!(gate.shards()[0].packets_in.get(), 0);
    }

    #[test]
    fn links_count_up_and_reconnects_per_node() {
        let c = ControlMetrics::default();
        c.link_up("n1", false);
        c.link_up("n1", false);
        c.link_down("n1");
        c.link_up("n1", true);
        let l = c.links()["n1"];
        assert_eq!((l.up, l.reconnects), (2, 1));
    }
}
