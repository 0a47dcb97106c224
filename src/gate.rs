//! The gate as a whole, wiring only: binds every socket, starts the control thread, one pinned
//! executor per shard (`Shard::run`) and the registry; then drives the shutdown phases.
//!
//! `Gate` is what `main` and the integration tests hold. Everything it does to the shards goes
//! through their inboxes (`shard::fan_out`); it never touches shard state directly.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use crate::claim::PortClaims;
use crate::config::Config;
use crate::config::{LocatorConfig, SingleLogin};
use crate::connection::framing::WsOptions;
use crate::connection::ws::WsRules;
use crate::connection::ServerCtx;
use crate::control::Control;
use crate::dispatch::cluster::ClusterUpstream;
use crate::dispatch::routes::Strategy;
use crate::dispatch::UpstreamFactory;
use crate::instance::StateCell;
use crate::locator::redis::{GateBindSink, RedisLocator};
use crate::locator::{Locator, LocatorError, MemoryLocator};
use crate::metrics::http::MetricsServer;
use crate::metrics::GateMetrics;
use crate::net;
use crate::node_api::LinkShared;
use crate::registry::{
    self, endpoint_url, Discovery, InstanceState, RegistryError, ServiceInstance,
};
use crate::session::{bound_elsewhere, Sessions, Transport};
use crate::shard::{
    fan_out, ClientListener, Feed, Inheritance, Shard, ShardInbox, ShardMsg, ShardSpec,
};
use crate::upgrade::take::{Head, Parcels, Spreader, Taking};
use crate::upgrade::{self, give, ListenerKind, UpgradeError};

/// Why the gate could not start. Each says which part failed; the text is what `main` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// A certificate or key of a TLS server could not be loaded.
    Tls(String),
    /// A listening socket could not be opened (busy port, bad address).
    Listen(String),
    Locator(LocatorError),
    Registry(RegistryError),
    /// A shard's executor could not be started.
    Shard {
        index: usize,
        reason: String,
    },
    /// `--upgrade` did not take over (the running gate serves on), or the upgrade socket could
    /// not be served.
    Upgrade(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Tls(e) | StartError::Listen(e) => f.write_str(e),
            StartError::Locator(e) => write!(f, "locator: {e}"),
            StartError::Registry(e) => write!(f, "registry: {e}"),
            StartError::Shard { index, reason } => write!(f, "start shard {index}: {reason}"),
            StartError::Upgrade(e) => write!(f, "upgrade: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// io_uring entries per shard ring. The kernel sizes the ring's table of pending polls from it
/// (8 buckets at glommio's default of 128), and holds one poll per idle connection: every reactor
/// turn cancels a timer, which walks a bucket. At 19,000 idle connections that walk was 63 % of
/// the gate's CPU with 128 entries, 29 % with 4,096 (bench/RESULTS.md, "Upgrade hand-off").
const RING_DEPTH: usize = 4096;

/// Frames larger than this are refused even in lenient mode.
const LENIENT_INBOUND_CAP: u32 = 16 << 20;

/// A running gate.
pub struct Gate {
    pub id: String,
    pub sessions: Sessions,
    /// The client servers with their bound addresses.
    pub servers: Vec<(Arc<ServerCtx>, SocketAddr)>,
    pub shard_count: usize,
    pub locator_name: &'static str,
    /// The link address nodes dial (`host:port`), as advertised to the registry.
    pub link_addr: String,
    pub link: Arc<LinkShared>,
    name: String,
    metadata: std::collections::BTreeMap<String, String>,
    /// Registration and node discovery (static list or Consul); `None` once deregistered.
    discovery: Option<Box<dyn Discovery>>,
    /// Each shard's inbox, by shard index.
    inboxes: Vec<ShardInbox>,
    /// This gate's claims on its configured ports (released with the gate).
    _claims: PortClaims,
    /// Duplicates of every listening socket, by listener in shard order: what an upgrade
    /// hands to the next process.
    listening: Vec<(ListenerKind, Vec<OwnedFd>)>,
    /// The upgrade socket inherited from the previous process, until served.
    upgrade_socket: Option<socket2::Socket>,
    shards: Vec<glommio::ExecutorJoinHandle<()>>,
    control: Control,
    control_thread: Option<std::thread::JoinHandle<()>>,
    /// This gate's numbers and health flags (see `metrics`).
    pub metrics: Arc<GateMetrics>,
    /// `metricsAddr`'s socket, bound at start-up and served once the gate runs.
    metrics_listener: Option<std::net::TcpListener>,
    metrics_server: Option<MetricsServer>,
    /// The TLS servers' certificates (SIGHUP reloads them).
    tls: crate::tls::Reloader,
}

/// Where a starting gate's listening sockets come from.
enum Sockets {
    /// Claim the ports and bind the configured addresses (a plain start).
    Bind,
    /// Later, from the running gate (`--upgrade`, see `take_listeners`).
    Inherit,
}

/// Everything a gate is made of before its shards run: built by [`Gate::prepare`], started by
/// [`Gate::launch`].
struct Prepared {
    gate: Gate,
    per_shard: Vec<ShardInputs>,
    upstream: UpstreamFactory,
    cpus: Vec<usize>,
    /// Client servers whose sockets come with the hand-off.
    pending: Vec<(Arc<ServerCtx>, Option<Arc<WsRules>>)>,
}

/// What one shard is started with, apart from what every shard shares.
struct ShardInputs {
    clients: Vec<ClientListener>,
    link_fds: Vec<OwnedFd>,
    inbox: flume::Receiver<ShardMsg>,
    inherited: Inheritance,
}

impl Gate {
    /// Starts everything as configured. Errors are start-up failures (bad certificate, busy
    /// port, unreachable Redis, …).
    pub fn start(cfg: &Config) -> Result<Gate, StartError> {
        Self::start_with(cfg, None)
    }

    /// Like [`Gate::start`], with the shards' upstream built by `upstream` instead of the
    /// cluster upstream (tests observe the gate this way).
    pub fn start_with(cfg: &Config, upstream: Option<UpstreamFactory>) -> Result<Gate, StartError> {
        let prepared = Self::prepare(cfg, upstream, Sockets::Bind, None)?;
        Self::launch(cfg, prepared)
    }

    /// Takes over from the gate running with this configuration (`--upgrade`): its listening
    /// sockets, connections, node links and identity. Until the running gate has let go of
    /// them, nothing here runs; any failure before that leaves it serving as before.
    pub fn start_upgrade(cfg: &Config) -> Result<Gate, StartError> {
        if cfg.kcp.is_some() {
            // Refused before the running gate is asked: it keeps serving.
            return Err(StartError::Upgrade(
                "etc.network.kcp.server: KCP sessions cannot be handed over (restart instead)"
                    .into(),
            ));
        }
        let socket = upgrade::socket_name(cfg)
            .ok_or_else(|| StartError::Upgrade(UpgradeError::NoSocket.to_string()))?;
        let taking = Taking::begin(&socket).map_err(|e| StartError::Upgrade(e.to_string()))?;
        let offer = taking.offer.clone();
        tracing::info!(pid = offer.pid, gid = %offer.gid, shards = offer.shards, "upgrade: taking over");
        // The identity is the running gate's: its Consul record and Redis bindings stay valid.
        let mut cfg = cfg.clone();
        cfg.gate.id = offer.gid.clone();
        // Everything slow (the locator, the registry and its first node list) happens before
        // the running gate freezes.
        let mut prepared = match Self::prepare(&cfg, None, Sockets::Inherit, Some(&offer.link_addr))
        {
            Ok(p) => p,
            Err(e) => {
                taking.refuse(&e.to_string());
                return Err(e);
            }
        };
        if let Err(e) = Self::register(&cfg, &mut prepared.gate) {
            taking.refuse(&e.to_string());
            return Err(e);
        }
        let go = Instant::now();
        // From here a failure refuses (the running gate thaws and serves on) and leaves the
        // registration to the running gate.
        let fail = |taking: &Taking, gate: &mut Gate, e: String| {
            taking.refuse(&e);
            gate.abandon_registry();
            StartError::Upgrade(e)
        };
        let head = match taking.receive_head() {
            Ok(h) => h,
            Err(e) => return Err(fail(&taking, &mut prepared.gate, e.to_string())),
        };
        let feeds = match Self::take_listeners(&cfg, &mut prepared, head) {
            Ok(f) => f,
            Err(e) => return Err(fail(&taking, &mut prepared.gate, e.to_string())),
        };
        let plain: Vec<Transport> = prepared
            .gate
            .servers
            .iter()
            .filter(|(s, _)| s.tls.is_none())
            .map(|(s, _)| s.transport)
            .collect();
        // The shards start now and rebuild each connection as it arrives; none runs before
        // the running gate has committed.
        let mut gate = match Self::run_shards(&cfg, prepared) {
            Ok(g) => g,
            Err(e) => {
                taking.refuse(&e.to_string());
                return Err(e);
            }
        };
        let mut spreader = Spreader::new(feeds, plain);
        let mut conns = 0;
        let got = taking.receive_parcels(|p| {
            if let Parcels::Conns(c) = &p {
                conns += c.len();
            }
            spreader.take(p)
        });
        let received_in = go.elapsed();
        let feeds = match got.and_then(|cid_bound| spreader.finish(cid_bound)) {
            Ok(f) => f,
            Err(e) => return Err(fail(&taking, &mut gate, e.to_string())),
        };
        let upgrade_socket = gate.upgrade_socket.is_some();
        if std::env::var_os("GATEHOUSE_TEST_UPGRADE_PAUSE").is_some() {
            // Test hook: a window in which a test kills this process mid-hand-off.
            println!("upgrade: paused before ready");
            std::thread::sleep(Duration::from_secs(60));
        }
        let taken_up_in = go.elapsed();
        if let Err(e) = taking.confirm() {
            return Err(StartError::Upgrade(e.to_string()));
        }
        let committed_in = go.elapsed();
        for i in 0..feeds.len() {
            if let Err(e) = upgrade::take::feed(&feeds, i, Feed::Commit) {
                tracing::error!("upgrade: {e}");
            }
        }
        gate._claims.take_holder();
        gate.serve_metrics()?;
        // From asking for the freeze to this process's shards starting: the hand-off time.
        tracing::info!(
            connections = conns,
            upgrade_socket,
            received = ?received_in,
            taken_up = ?taken_up_in,
            committed = ?committed_in,
            took = ?go.elapsed(),
            "upgrade: serving"
        );
        Ok(gate)
    }

    /// Builds the gate up to its shards: claims and binds (or takes over) the listeners, starts
    /// the locator and the control thread, makes the inboxes.
    fn prepare(
        cfg: &Config,
        upstream: Option<UpstreamFactory>,
        sockets: Sockets,
        link_addr: Option<&str>,
    ) -> Result<Prepared, StartError> {
        let shard_count = match cfg.gatehouse.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let cpus: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        let packet = cfg.packet;
        let cap = match (
            cfg.gatehouse.max_inbound_frame,
            cfg.gatehouse.lenient_inbound,
        ) {
            (0, false) => packet.strict_inbound_cap(),
            (0, true) => LENIENT_INBOUND_CAP,
            (n, _) => n,
        };
        let link_cfg = if cfg.gate.addr.is_empty() {
            ":0"
        } else {
            cfg.gate.addr.as_str()
        };
        let mut claims = PortClaims::default();
        if let Sockets::Bind = sockets {
            // Claim the configured ports before binding: the sockets are SO_REUSEPORT, so
            // binding next to a running gatehouse would already steal some of its connections.
            let configured = cfg
                .tcp
                .iter()
                .map(|s| (addr_key(Some(Transport::Tcp)), s.addr.as_str()))
                .chain(
                    cfg.ws
                        .iter()
                        .map(|w| (addr_key(Some(Transport::Ws)), w.server.addr.as_str())),
                )
                .chain(
                    cfg.kcp
                        .iter()
                        .map(|k| (addr_key(Some(Transport::Kcp)), k.server.addr.as_str())),
                )
                .chain([(addr_key(None), link_cfg)])
                // The metrics port too: two gates answering one scrape address in turns would
                // each report half the truth.
                .chain(
                    cfg.gatehouse
                        .metrics_addr
                        .iter()
                        .map(|a| ("etc.gatehouse.metricsAddr", a.as_str())),
                );
            for (key, addr) in configured {
                // An address that does not parse is reported by the bind below, with its key.
                let port = net::HostPort::parse(addr).map_or(0, |a| a.port);
                claims
                    .claim(port)
                    .map_err(|e| StartError::Listen(format!("{key}: {e}")))?;
            }
        }

        // SO_REUSEPORT, like the client listeners: during an upgrade both processes hold it
        // until the old one exits; a second plain start was refused by the claims above.
        let metrics_listener = match &cfg.gatehouse.metrics_addr {
            Some(addr) => {
                let (mut fds, _) = net::bind_shared(addr, 1, 128)
                    .map_err(|e| StartError::Listen(format!("etc.gatehouse.metricsAddr: {e}")))?;
                fds.pop().map(std::net::TcpListener::from)
            }
            None => None,
        };

        // Bind every listener first: a busy port must fail start-up before anything runs.
        let backlog = cfg.gatehouse.listen_backlog;
        let mut per_shard: Vec<Vec<ClientListener>> =
            (0..shard_count).map(|_| Vec::new()).collect();
        let mut servers = Vec::new();
        let mut listening = Vec::new();
        let tcp = cfg.tcp.clone().map(|s| (Transport::Tcp, s, None));
        let ws = cfg.ws.clone().map(|w| {
            let options = WsOptions {
                close_frame: cfg.gatehouse.ws_close_frame,
                le_ts_heartbeat: cfg.gatehouse.ws_le_ts_heartbeat,
            };
            let rules = WsRules::new(&w, options);
            (Transport::Ws, w.server, Some(Arc::new(rules)))
        });
        let mut unbound = Vec::new();
        let mut pending = Vec::new();
        let mut cert_stores = Vec::new();
        // One table of source IPs for every client server (docs/ops/limits.md).
        let limits = &cfg.gatehouse.limits;
        let ip_limits = crate::limits::IpLimits::new(
            limits.ip_max_conns,
            crate::limits::Rate::new(limits.ip_accept_rate, limits.ip_accept_burst),
        )
        .map(Arc::new);
        for (transport, sc, ws_rules) in tcp.into_iter().chain(ws) {
            let tls = if sc.tls() {
                let (acceptor, store) =
                    crate::tls::acceptor(&sc.cert_file, &sc.key_file).map_err(StartError::Tls)?;
                cert_stores.push(store);
                Some(acceptor)
            } else {
                None
            };
            let server = Arc::new(
                ServerCtx::new(transport, sc, cap, tls)
                    .with_proxy(cfg.gatehouse.proxy.clone())
                    .with_limits(&cfg.gatehouse.limits, ip_limits.clone()),
            );
            unbound.push((server, ws_rules));
        }
        let mut link_fds: Vec<Vec<OwnedFd>> = (0..shard_count).map(|_| Vec::new()).collect();
        let mut link_bound = None;
        let mut kcp_bound = None;
        if let Sockets::Bind = sockets {
            for (server, ws_rules) in unbound {
                let key = addr_key(Some(server.transport));
                let (fds, bound) = net::bind_shared(&server.config.addr, shard_count, backlog)
                    .map_err(|e| StartError::Listen(format!("{key}: {e}")))?;
                listening.push((kind_of(server.transport), dup_all(&fds)?));
                for (i, fd) in fds.into_iter().enumerate() {
                    per_shard[i].push(ClientListener {
                        server: server.clone(),
                        ws: ws_rules.clone(),
                        kcp: None,
                        fd,
                    });
                }
                servers.push((server, bound));
            }
            // KCP: one UDP socket per shard. Its port is apart from the TCP ports (due's TCP
            // and KCP servers both default to 3553), so it is not in the one-port check below.
            if let Some(k) = &cfg.kcp {
                let key = addr_key(Some(Transport::Kcp));
                let (fds, bound) = net::bind_udp_shared(&k.server.addr, shard_count)
                    .map_err(|e| StartError::Listen(format!("{key}: {e}")))?;
                let server = Arc::new(
                    ServerCtx::new(Transport::Kcp, k.server.clone(), cap, None)
                        .with_limits(&cfg.gatehouse.limits, ip_limits.clone()),
                );
                for (i, fd) in fds.into_iter().enumerate() {
                    per_shard[i].push(ClientListener {
                        server: server.clone(),
                        ws: None,
                        kcp: Some(k.params),
                        fd,
                    });
                }
                kcp_bound = Some((server, bound));
            }
            // The link listener: one socket per shard on the gate's `addr` (":0" = a free port).
            let (fds, bound) = net::bind_shared(link_cfg, shard_count, backlog)
                .map_err(|e| StartError::Listen(format!("{}: {e}", addr_key(None))))?;
            listening.push((ListenerKind::Link, dup_all(&fds)?));
            for (i, fd) in fds.into_iter().enumerate() {
                link_fds[i].push(fd);
            }
            link_bound = Some(bound);
            let mut addrs: Vec<(&str, SocketAddr)> = servers
                .iter()
                .map(|(server, bound)| (addr_key(Some(server.transport)), *bound))
                .collect();
            addrs.push((addr_key(None), bound));
            shared_port(&addrs).map_err(StartError::Listen)?;
            servers.extend(kcp_bound.take());
        } else {
            // The listeners come with the hand-off (`take_listeners`).
            pending = unbound;
        }
        let link_addr = match (link_addr, link_bound) {
            (Some(a), _) => a.to_string(),
            (None, Some(bound)) => net::advertised(&cfg.gate.addr, bound),
            (None, None) => String::new(),
        };
        // The one instance state: the node API and the registrar share it.
        let state = StateCell::new(InstanceState::Work);
        let link = Arc::new(LinkShared {
            state: state.clone(),
            publish_v25: cfg.gatehouse.publish_v25,
        });

        let (inboxes, inbox_rxs): (Vec<_>, Vec<_>) =
            (0..shard_count).map(|_| ShardInbox::new()).unzip();
        let mailboxes = |inboxes: &[ShardInbox]| {
            inboxes
                .iter()
                .map(|i| Box::new(i.clone()) as Box<dyn crate::session::Mailbox>)
                .collect::<Vec<_>>()
        };
        let locator: Box<dyn Locator> = match &cfg.locator {
            LocatorConfig::Memory => Box::new(MemoryLocator::default()),
            LocatorConfig::Redis(r) => {
                // Single login across gates hears of other gates' binds from the locator.
                let gate_binds = (cfg.gatehouse.single_login == SingleLogin::Cluster).then(|| {
                    let sink = bound_elsewhere(mailboxes(&inboxes), cfg.gate.id.clone());
                    Box::new(sink) as GateBindSink
                });
                Box::new(
                    RedisLocator::start_with(r, cfg.gate.timeout, gate_binds)
                        .map_err(StartError::Locator)?,
                )
            }
        };
        let locator_name = locator.name();
        let metrics = GateMetrics::new(shard_count);
        let (control, control_thread) =
            Control::start(cfg.gate.id.clone(), locator, metrics.control.clone());
        if !matches!(cfg.registry, crate::config::RegistryConfig::Static) {
            metrics.health.expect_registration();
        }
        let upstream = upstream.unwrap_or_else(|| {
            let gid = cfg.gate.id.clone();
            let strategy = Strategy::parse(&cfg.gate.dispatch);
            // Only a locator that knows node bindings can serve stateful routes.
            let lookups = matches!(cfg.locator, LocatorConfig::Redis(_)).then(|| control.clone());
            let conns = cfg.gatehouse.link_conns;
            Arc::new(move |shard| {
                Box::new(ClusterUpstream::new(
                    &gid,
                    strategy,
                    shard,
                    conns,
                    lookups.clone(),
                ))
            })
        });
        let sessions = Sessions::new(mailboxes(&inboxes), control.clone())
            .with_single_login(cfg.gatehouse.single_login);
        let per_shard = per_shard
            .into_iter()
            .zip(link_fds)
            .zip(inbox_rxs)
            .map(|((clients, link_fds), inbox)| ShardInputs {
                clients,
                link_fds,
                inbox,
                inherited: Inheritance::Fresh,
            })
            .collect();
        let gate = Gate {
            discovery: None,
            id: cfg.gate.id.clone(),
            sessions,
            servers,
            shard_count,
            locator_name,
            link_addr,
            link,
            inboxes,
            _claims: claims,
            listening,
            upgrade_socket: None,
            shards: Vec::new(),
            control,
            control_thread: Some(control_thread),
            tls: crate::tls::Reloader::new(cert_stores),
            name: cfg.gate.name.clone(),
            metadata: cfg.gate.metadata.clone(),
            metrics,
            metrics_listener,
            metrics_server: None,
        };
        Ok(Prepared {
            gate,
            per_shard,
            upstream,
            cpus,
            pending,
        })
    }

    /// Spreads the running gate's listening sockets onto this gate's shards (more are bound when
    /// this process has more shards) and takes its claims and upgrade socket; each shard is
    /// then fed by an upgrade (the senders returned). Refuses listeners this configuration
    /// cannot carry on.
    fn take_listeners(
        cfg: &Config,
        p: &mut Prepared,
        mut got: Head,
    ) -> Result<Vec<flume::Sender<Feed>>, StartError> {
        Self::spread_listeners(cfg, p, &mut got)?;
        p.gate._claims = PortClaims::inherit(std::mem::take(&mut got.claims));
        p.gate.upgrade_socket = got.upgrade_socket.take();
        let mut feeds = Vec::with_capacity(p.per_shard.len());
        for s in &mut p.per_shard {
            let (tx, rx) = flume::unbounded();
            s.inherited = Inheritance::Upgrade(rx);
            feeds.push(tx);
        }
        Ok(feeds)
    }

    fn spread_listeners(cfg: &Config, p: &mut Prepared, got: &mut Head) -> Result<(), StartError> {
        let count = p.gate.shard_count;
        let refuse = |reason: String| StartError::Upgrade(format!("refused: {reason}"));
        for (server, ws_rules) in std::mem::take(&mut p.pending) {
            let kind = kind_of(server.transport);
            let key = addr_key(Some(server.transport));
            let fds = got.take_listeners(kind);
            let spread = spread(fds, count).map_err(|e| refuse(format!("{key}: {e}")))?;
            let bound = same_port(&server.config.addr, &spread, key).map_err(refuse)?;
            p.gate
                .listening
                .push((kind, dup_all(spread.iter().flatten())?));
            for (i, fds) in spread.into_iter().enumerate() {
                for fd in fds {
                    p.per_shard[i].clients.push(ClientListener {
                        server: server.clone(),
                        ws: ws_rules.clone(),
                        kcp: None,
                        fd,
                    });
                }
            }
            p.gate.servers.push((server, bound));
        }
        let link_cfg = if cfg.gate.addr.is_empty() {
            ":0"
        } else {
            cfg.gate.addr.as_str()
        };
        let fds = got.take_listeners(ListenerKind::Link);
        let spread = spread(fds, count).map_err(|e| refuse(format!("{}: {e}", addr_key(None))))?;
        same_port(link_cfg, &spread, addr_key(None)).map_err(refuse)?;
        p.gate
            .listening
            .push((ListenerKind::Link, dup_all(spread.iter().flatten())?));
        for (i, fds) in spread.into_iter().enumerate() {
            p.per_shard[i].link_fds = fds;
        }
        for (kind, fds) in &got.listeners {
            if !fds.is_empty() {
                return Err(refuse(format!(
                    "the running gate has a {kind:?} listener this configuration does not"
                )));
            }
        }
        Ok(())
    }

    /// Starts the shards, then registers (a plain start).
    fn launch(cfg: &Config, prepared: Prepared) -> Result<Gate, StartError> {
        let mut gate = Self::run_shards(cfg, prepared)?;
        Self::register(cfg, &mut gate)?;
        gate.serve_metrics()?;
        Ok(gate)
    }

    /// Registers the gate and starts node discovery; node lists go to the shards' inboxes
    /// (a shard not running yet applies them before anything else).
    fn register(cfg: &Config, gate: &mut Gate) -> Result<(), StartError> {
        let inboxes = gate.inboxes.clone();
        let on_nodes = move |nodes: Vec<ServiceInstance>| {
            tracing::info!(nodes = nodes.len(), "registry: node list changed");
            let nodes = Arc::new(nodes);
            fan_out(&inboxes, || ShardMsg::Nodes(nodes.clone()));
        };
        let discovery = registry::discovery::start(
            &cfg.registry,
            &cfg.gatehouse.nodes,
            gate.instance(InstanceState::Work),
            gate.link.state.clone(),
            Box::new(on_nodes),
            gate.metrics.control.clone(),
        )
        .map_err(StartError::Registry)?;
        gate.discovery = Some(discovery);
        gate.metrics.health.set_registered(true);
        Ok(())
    }

    /// Spawns one pinned executor per shard with its inputs.
    fn run_shards(cfg: &Config, prepared: Prepared) -> Result<Gate, StartError> {
        let Prepared {
            mut gate,
            per_shard,
            upstream,
            cpus,
            pending: _,
        } = prepared;
        for (index, inputs) in per_shard.into_iter().enumerate() {
            let placement = match (cfg.gatehouse.pin, cpus.get(index % cpus.len().max(1))) {
                (true, Some(&cpu)) => Placement::Fixed(cpu),
                _ => Placement::Unbound,
            };
            let spec = ShardSpec {
                index,
                count: gate.shard_count,
                packet: cfg.packet,
                sessions: gate.sessions.clone(),
                inbox: inputs.inbox,
                clients: inputs.clients,
                link_fds: inputs.link_fds,
                link: gate.link.clone(),
                inherited: inputs.inherited,
                backlog: cfg.gatehouse.listen_backlog,
                metrics: gate.metrics.clone(),
            };
            let upstream = upstream.clone();
            let handle = LocalExecutorBuilder::new(placement)
                .name(&format!("shard-{index}"))
                .io_memory(cfg.gatehouse.io_memory)
                .ring_depth(RING_DEPTH)
                // Control tasks (see shard::CONTROL_LATENCY) wait at most this long for a busy
                // queue to yield.
                .preempt_timer(crate::shard::CONTROL_LATENCY)
                .spawn(move || Shard::run(spec, upstream(index)))
                .map_err(|e| StartError::Shard {
                    index,
                    reason: e.to_string(),
                })?;
            gate.shards.push(handle);
        }
        gate.metrics.health.set_listening(true);
        Ok(gate)
    }

    /// This gate's registry record in `state` (due: name and kind `gate`, alias = its name).
    pub fn instance(&self, state: InstanceState) -> ServiceInstance {
        ServiceInstance {
            id: self.id.clone(),
            name: "gate".into(),
            kind: "gate".into(),
            alias: self.name.clone(),
            state,
            endpoint: endpoint_url(&self.link_addr),
            metadata: self.metadata.clone(),
            ..Default::default()
        }
    }

    /// Starts serving `metricsAddr` (bound by `prepare`), if configured.
    fn serve_metrics(&mut self) -> Result<(), StartError> {
        if let Some(l) = self.metrics_listener.take() {
            let server = MetricsServer::serve(l, self.metrics.clone()).map_err(|e| {
                StartError::Listen(format!("etc.gatehouse.metricsAddr: cannot serve: {e}"))
            })?;
            tracing::info!(addr = %server.addr(), "metrics: serving /metrics, /healthz, /readyz");
            self.metrics_server = Some(server);
        }
        Ok(())
    }

    /// The address `/metrics` is served on, once the gate runs.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().map(|s| s.addr())
    }

    /// Stops serving `/metrics` (a handed-over gate lets the next process answer alone).
    pub fn stop_metrics(&mut self) {
        self.metrics_server = None;
    }

    /// What reloads every TLS server's certificate and key from its files (SIGHUP).
    pub fn tls_reloader(&self) -> crate::tls::Reloader {
        self.tls.clone()
    }

    /// Connections currently admitted on all servers.
    pub fn connections(&self) -> usize {
        self.servers.iter().map(|(s, _)| s.live()).sum()
    }

    /// The bound address of the first server of `transport`.
    pub fn addr(&self, transport: Transport) -> Option<SocketAddr> {
        self.servers
            .iter()
            .find(|(s, _)| s.transport == transport)
            .map(|(_, a)| *a)
    }

    /// Shutdown begins: state `hang` (link getstate and the registry record), so new users can be
    /// steered elsewhere; everything keeps being served.
    pub fn hang(&self) {
        self.link.state.set(InstanceState::Hang);
        self.metrics.health.set_hanging(true);
        if let Some(r) = &self.discovery {
            if let Err(e) = r.set_state(InstanceState::Hang) {
                tracing::error!(error = %e, "registry: could not register state hang");
            }
        }
    }

    /// Serves `gatehouse --upgrade` requests on this gate's upgrade socket (the one inherited
    /// from the previous process, else a new one). The receiver yields the new process's pid
    /// once the gate was handed over; it never yields when there is no upgrade socket.
    pub fn serve_upgrades(&mut self, cfg: &Config) -> Result<flume::Receiver<u32>, StartError> {
        let (tx, rx) = flume::bounded(1);
        let socket = match self.upgrade_socket.take() {
            Some(s) => s,
            None => {
                let Some(name) = upgrade::socket_name(cfg) else {
                    tracing::info!("upgrade: no upgrade socket ({})", UpgradeError::NoSocket);
                    std::mem::forget(tx);
                    return Ok(rx);
                };
                name.listen().map_err(|e| {
                    StartError::Upgrade(format!(
                        "etc.gatehouse.upgradeSocket: cannot listen on {name}: {e}"
                    ))
                })?
            }
        };
        let giver = give::Giver {
            inboxes: self.inboxes.clone(),
            listeners: self
                .listening
                .iter()
                .map(|(k, fds)| Ok((*k, dup_all(fds)?)))
                .collect::<Result<_, StartError>>()?,
            claims: self
                ._claims
                .duplicate()
                .map_err(|e| StartError::Upgrade(format!("port claims: {e}")))?,
            gid: self.id.clone(),
            link_addr: self.link_addr.clone(),
        };
        std::thread::Builder::new()
            .name("upgrade".into())
            .spawn(move || {
                let pid = give::serve(socket, giver);
                let _ = tx.send(pid);
            })
            .map_err(|e| StartError::Upgrade(format!("cannot start the upgrade thread: {e}")))?;
        Ok(rx)
    }

    /// Stops the registry threads and leaves the registration to the process that took over.
    pub fn abandon_registry(&mut self) {
        if let Some(r) = self.discovery.take() {
            r.abandon();
        }
    }

    /// Leaves the registry (due's destroy phase starts with it, before clients are dropped).
    pub fn deregister(&mut self) {
        if let Some(r) = self.discovery.take() {
            r.stop();
        }
    }

    /// Closes the listeners; connected clients keep being served.
    pub fn stop_accepting(&mut self) {
        self.metrics.health.set_listening(false);
        fan_out(&self.inboxes, || ShardMsg::StopAccepting);
    }

    /// Asks every shard to close all its connections (graceful: after their queues flush).
    pub fn close_all(&self, graceful: bool) {
        fan_out(&self.inboxes, || ShardMsg::CloseAll { graceful });
    }

    /// Replaces every shard's view of the nodes (registry watch or static list).
    pub fn set_nodes(&self, nodes: Vec<crate::registry::ServiceInstance>) {
        let nodes = Arc::new(nodes);
        fan_out(&self.inboxes, || ShardMsg::Nodes(nodes.clone()));
    }

    /// Waits until no connection is left, or `limit` passed (`None` = no limit).
    /// Returns whether the gate is empty.
    pub fn wait_idle(&self, limit: Option<Duration>) -> bool {
        let start = Instant::now();
        loop {
            if self.connections() == 0 {
                return true;
            }
            if limit.is_some_and(|l| start.elapsed() >= l) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Deregisters, then stops the shards and the control thread and waits for them.
    pub fn join(mut self) {
        self.deregister();
        fan_out(&self.inboxes, || ShardMsg::Exit);
        for h in self.shards.drain(..) {
            let _ = h.join();
        }
        self.control.stop();
        if let Some(t) = self.control_thread.take() {
            let _ = t.join();
        }
    }
}

/// The hand-off's name for the listener of `transport`.
fn kind_of(transport: Transport) -> ListenerKind {
    match transport {
        Transport::Tcp => ListenerKind::Tcp,
        Transport::Ws => ListenerKind::Ws,
        Transport::Kcp => ListenerKind::Kcp,
    }
}

/// Duplicates of `fds` (kept for a later hand-off while the originals serve).
fn dup_all<'a>(fds: impl IntoIterator<Item = &'a OwnedFd>) -> Result<Vec<OwnedFd>, StartError> {
    fds.into_iter()
        .map(|fd| {
            fd.try_clone()
                .map_err(|e| StartError::Listen(format!("duplicate a listening socket: {e}")))
        })
        .collect()
}

/// Spreads a listener's inherited sockets over `count` shards: one each while they last (a
/// process with fewer shards accepts on several), then new sockets bound beside them.
fn spread(fds: Vec<OwnedFd>, count: usize) -> Result<Vec<Vec<OwnedFd>>, String> {
    let Some(first) = fds.first() else {
        return Err("the running gate handed over no listening socket".into());
    };
    let extra = count.saturating_sub(fds.len());
    let more = net::bind_alongside(first, extra)?;
    let mut out: Vec<Vec<OwnedFd>> = (0..count).map(|_| Vec::new()).collect();
    for (i, fd) in fds.into_iter().chain(more).enumerate() {
        out[i % count].push(fd);
    }
    Ok(out)
}

/// The address the inherited sockets listen on, if it is the configured one (a configured
/// port 0 takes any).
fn same_port(configured: &str, spread: &[Vec<OwnedFd>], key: &str) -> Result<SocketAddr, String> {
    let fd = spread
        .iter()
        .flatten()
        .next()
        .ok_or("no listening socket")?;
    let bound = net::listening_addr(fd)?;
    let want = net::HostPort::parse(configured).map_err(|e| format!("{key}: {e}"))?;
    if want.port != 0 && want.port != bound.port() {
        return Err(format!(
            "{key} is {configured}, the running gate listens on {bound}: an upgrade keeps the \
             configuration"
        ));
    }
    Ok(bound)
}

/// The configuration key of a client server's address (`None`: the link's).
fn addr_key(transport: Option<Transport>) -> &'static str {
    match transport {
        Some(Transport::Tcp) => "etc.network.tcp.server.addr",
        Some(Transport::Ws) => "etc.network.ws.server.addr",
        Some(Transport::Kcp) => "etc.network.kcp.server.addr",
        None => "etc.cluster.gate.addr",
    }
}

/// Refuses two of this gate's listeners on one port. Each listener's sockets are SO_REUSEPORT
/// (one per shard), so the kernel would let a second listener bind the same port and split the
/// connections between them without a word; due's gate fails with "address already in use".
fn shared_port(listening: &[(&str, SocketAddr)]) -> Result<(), String> {
    for (i, (key, a)) in listening.iter().enumerate() {
        for (other, b) in &listening[..i] {
            let overlap = a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
            if a.port() == b.port() && overlap {
                return Err(format!(
                    "{key}: port {} is already used by {other} (address already in use)",
                    a.port()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{shared_port, spread};

    #[test]
    fn inherited_listeners_spread_over_any_shard_count() {
        let (fds, _) = crate::net::bind_shared("127.0.0.1:0", 3, 16).unwrap();
        let port = crate::net::listening_addr(&fds[0]).unwrap().port();
        let raw = |v: &Vec<std::os::fd::OwnedFd>| -> Vec<i32> {
            v.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect()
        };
        let ids: Vec<i32> = fds.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
        // Fewer shards: one accepts on two inherited sockets.
        let two = spread(fds, 2).unwrap();
        assert_eq!(raw(&two[0]), vec![ids[0], ids[2]]);
        assert_eq!(raw(&two[1]), vec![ids[1]]);
        // More shards: new sockets are bound beside the inherited ones, on the same port, and
        // listen only once their shard starts accepting (after commit).
        let fds: Vec<_> = two.into_iter().flatten().collect();
        let five = spread(fds, 5).unwrap();
        assert!(five.iter().all(|s| s.len() == 1), "one socket per shard");
        let listening =
            |fd: &std::os::fd::OwnedFd| socket2::SockRef::from(fd).is_listener().unwrap();
        for (i, s) in five.iter().enumerate() {
            assert_eq!(crate::net::listening_addr(&s[0]).unwrap().port(), port);
            assert_eq!(listening(&s[0]), i < 3, "socket {i}");
        }
        crate::net::listen(&five[4][0], 16).unwrap();
        assert!(listening(&five[4][0]));
        assert!(spread(Vec::new(), 2).is_err(), "nothing inherited");
    }

    #[test]
    fn listeners_may_not_share_a_port() {
        let at = |s: &str| s.parse().unwrap();
        let tcp = ("etc.network.tcp.server.addr", at("127.0.0.1:3553"));
        let err = shared_port(&[tcp, ("etc.network.ws.server.addr", at("127.0.0.1:3553"))]);
        assert_eq!(
            err.unwrap_err(),
            "etc.network.ws.server.addr: port 3553 is already used by \
             etc.network.tcp.server.addr (address already in use)"
        );
        let wildcard = ("etc.cluster.gate.addr", at("[::]:3553"));
        assert!(
            shared_port(&[tcp, wildcard]).is_err(),
            "a wildcard overlaps"
        );
        let other_ip = ("etc.network.ws.server.addr", at("127.0.0.2:3553"));
        assert!(shared_port(&[tcp, other_ip]).is_ok(), "two addresses");
        let other_port = ("etc.network.ws.server.addr", at("127.0.0.1:3554"));
        assert!(shared_port(&[tcp, other_port]).is_ok());
    }
}
