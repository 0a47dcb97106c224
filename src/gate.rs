//! The gate as a whole, wiring only: binds every socket, starts the control thread, one pinned
//! executor per shard (`Shard::run`) and the registry; then drives the shutdown phases.
//!
//! `Gate` is what `main` and the integration tests hold. Everything it does to the shards goes
//! through their inboxes (`shard::fan_out`); it never touches shard state directly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use crate::claim::PortClaims;
use crate::config::Config;
use crate::config::LocatorConfig;
use crate::connection::framing::WsOptions;
use crate::connection::ws::WsRules;
use crate::connection::ServerCtx;
use crate::control::Control;
use crate::dispatch::cluster::ClusterUpstream;
use crate::dispatch::routes::Strategy;
use crate::dispatch::UpstreamFactory;
use crate::instance::StateCell;
use crate::locator::redis::RedisLocator;
use crate::locator::{Locator, LocatorError, MemoryLocator};
use crate::net;
use crate::node_api::LinkShared;
use crate::registry::{
    self, endpoint_url, Discovery, InstanceState, RegistryError, ServiceInstance,
};
use crate::session::{Sessions, Transport};
use crate::shard::{fan_out, ClientListener, Shard, ShardInbox, ShardMsg, ShardSpec};

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
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Tls(e) | StartError::Listen(e) => f.write_str(e),
            StartError::Locator(e) => write!(f, "locator: {e}"),
            StartError::Registry(e) => write!(f, "registry: {e}"),
            StartError::Shard { index, reason } => write!(f, "start shard {index}: {reason}"),
        }
    }
}

impl std::error::Error for StartError {}

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
    shards: Vec<glommio::ExecutorJoinHandle<()>>,
    control: Control,
    control_thread: Option<std::thread::JoinHandle<()>>,
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

        // Claim the configured ports before binding: the sockets are SO_REUSEPORT, so binding
        // next to a running gatehouse would already steal some of its new connections.
        let link_cfg = if cfg.gate.addr.is_empty() {
            ":0"
        } else {
            cfg.gate.addr.as_str()
        };
        let configured = cfg
            .tcp
            .iter()
            .map(|s| (addr_key(Some(Transport::Tcp)), s.addr.as_str()))
            .chain(
                cfg.ws
                    .iter()
                    .map(|w| (addr_key(Some(Transport::Ws)), w.server.addr.as_str())),
            )
            .chain([(addr_key(None), link_cfg)]);
        let mut claims = PortClaims::default();
        for (key, addr) in configured {
            // An address that does not parse is reported by the bind below, with its key.
            let port = net::HostPort::parse(addr).map_or(0, |a| a.port);
            claims
                .claim(port)
                .map_err(|e| StartError::Listen(format!("{key}: {e}")))?;
        }

        // Bind every listener first: a busy port must fail start-up before anything runs.
        let mut per_shard: Vec<Vec<ClientListener>> =
            (0..shard_count).map(|_| Vec::new()).collect();
        let mut servers = Vec::new();
        let tcp = cfg.tcp.clone().map(|s| (Transport::Tcp, s, None));
        let ws = cfg.ws.clone().map(|w| {
            let options = WsOptions {
                close_frame: cfg.gatehouse.ws_close_frame,
                le_ts_heartbeat: cfg.gatehouse.ws_le_ts_heartbeat,
            };
            let rules = WsRules::new(&w, options);
            (Transport::Ws, w.server, Some(Arc::new(rules)))
        });
        for (transport, sc, ws_rules) in tcp.into_iter().chain(ws) {
            let tls = if sc.tls() {
                Some(crate::tls::acceptor(&sc.cert_file, &sc.key_file).map_err(StartError::Tls)?)
            } else {
                None
            };
            let (fds, bound) =
                net::bind_shared(&sc.addr, shard_count, cfg.gatehouse.listen_backlog)
                    .map_err(StartError::Listen)?;
            let server = Arc::new(ServerCtx::new(transport, sc, cap, tls));
            for (i, fd) in fds.into_iter().enumerate() {
                per_shard[i].push(ClientListener {
                    server: server.clone(),
                    ws: ws_rules.clone(),
                    fd,
                });
            }
            servers.push((server, bound));
        }

        // The link listener: one socket per shard on the gate's `addr` (":0" = a free port).
        let (link_fds, link_bound) =
            net::bind_shared(link_cfg, shard_count, cfg.gatehouse.listen_backlog)
                .map_err(StartError::Listen)?;
        let mut listening: Vec<(&str, SocketAddr)> = servers
            .iter()
            .map(|(server, bound)| (addr_key(Some(server.transport)), *bound))
            .collect();
        listening.push((addr_key(None), link_bound));
        shared_port(&listening).map_err(StartError::Listen)?;
        let link_addr = net::advertised(&cfg.gate.addr, link_bound);
        // The one instance state: the node API and the registrar share it.
        let state = StateCell::new(InstanceState::Work);
        let link = Arc::new(LinkShared {
            state: state.clone(),
            publish_v25: cfg.gatehouse.publish_v25,
        });

        let locator: Box<dyn Locator> = match &cfg.locator {
            LocatorConfig::Memory => Box::new(MemoryLocator::default()),
            LocatorConfig::Redis(r) => {
                Box::new(RedisLocator::start(r, cfg.gate.timeout).map_err(StartError::Locator)?)
            }
        };
        let locator_name = locator.name();
        let (control, control_thread) = Control::start(cfg.gate.id.clone(), locator);
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
        let (inboxes, inbox_rxs): (Vec<_>, Vec<_>) =
            (0..shard_count).map(|_| ShardInbox::new()).unzip();
        let mailboxes = inboxes
            .iter()
            .map(|i| Box::new(i.clone()) as Box<dyn crate::session::Mailbox>)
            .collect();
        let sessions = Sessions::new(mailboxes, control.clone());

        let mut shards = Vec::with_capacity(shard_count);
        let shard_inputs = per_shard.into_iter().zip(inbox_rxs).zip(link_fds);
        for (index, ((clients, inbox), link_fd)) in shard_inputs.enumerate() {
            let placement = match (cfg.gatehouse.pin, cpus.get(index % cpus.len().max(1))) {
                (true, Some(&cpu)) => Placement::Fixed(cpu),
                _ => Placement::Unbound,
            };
            let spec = ShardSpec {
                index,
                count: shard_count,
                packet,
                sessions: sessions.clone(),
                inbox,
                clients,
                link_fds: vec![link_fd],
                link: link.clone(),
                inherited: Default::default(),
            };
            let upstream = upstream.clone();
            let handle = LocalExecutorBuilder::new(placement)
                .name(&format!("shard-{index}"))
                .io_memory(cfg.gatehouse.io_memory)
                .spawn(move || Shard::run(spec, upstream(index)))
                .map_err(|e| StartError::Shard {
                    index,
                    reason: e.to_string(),
                })?;
            shards.push(handle);
        }
        let mut gate = Gate {
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
            shards,
            control,
            control_thread: Some(control_thread),
            name: cfg.gate.name.clone(),
            metadata: cfg.gate.metadata.clone(),
        };
        // One path for every backend, one fan-out to the shards.
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
        )
        .map_err(StartError::Registry)?;
        gate.discovery = Some(discovery);
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
        if let Some(r) = &self.discovery {
            if let Err(e) = r.set_state(InstanceState::Hang) {
                tracing::error!(error = %e, "registry: could not register state hang");
            }
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

/// The configuration key of a client server's address (`None`: the link's).
fn addr_key(transport: Option<Transport>) -> &'static str {
    match transport {
        Some(Transport::Tcp) => "etc.network.tcp.server.addr",
        Some(Transport::Ws) => "etc.network.ws.server.addr",
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
    use super::shared_port;

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
