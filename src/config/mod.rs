//! Configuration: due's `etc.toml` layout, key names and value syntax, turned into typed settings.
//! Owns loading (file or directory, toml/yaml/json/xml), value conversion and start-up validation.

mod convert;
mod load;

pub use convert::{parse_bool, parse_duration, parse_size};
pub use load::{load, load_bytes, resolve_etc_path, ConfigError};

use crate::instance::{InstanceState, RouteInfo};
use crate::packet::PacketConfig;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Run mode (`mode` key, `DUE_MODE`, `--mode`). Only gates extra debug logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Debug,
    Test,
    Release,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Debug => "debug",
            Mode::Test => "test",
            Mode::Release => "release",
        }
    }
}

/// Everything the gate reads from `etc.*`.
#[derive(Debug, Clone)]
pub struct Config {
    /// `pid`: where to write the process id; `None` = no file.
    pub pid: Option<PathBuf>,
    pub mode: Mode,
    /// `timezone`: IANA name or `Local`.
    pub timezone: String,
    /// `shutdownMaxWaitTime`; zero means "wait without limit".
    pub shutdown_max_wait: Duration,
    pub gate: GateConfig,
    pub packet: PacketConfig,
    /// `[network.tcp.server]`; `None` when the section is absent and `[network.ws.server]` is
    /// present (with neither, the TCP server runs on its defaults).
    pub tcp: Option<ServerConfig>,
    /// `[network.ws.server]`; `None` when the section is absent.
    pub ws: Option<WsConfig>,
    /// `[network.kcp.server]`; `None` when the section is absent.
    pub kcp: Option<KcpConfig>,
    pub log: LogConfig,
    pub gatehouse: GatehouseConfig,
    /// Where user locations live: `[locate.redis]` when that section exists, else in memory.
    pub locator: LocatorConfig,
    /// How instances find each other: `[registry.consul]` when that section exists, else the
    /// static node list `[[gatehouse.nodes]]`.
    pub registry: RegistryConfig,
}

/// The locator backend (user → gate / node bindings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocatorConfig {
    /// No `[locate.redis]`: bindings live in this process only (a gate with no external service).
    Memory,
    /// `[locate.redis]` (cluster-protocol.md §6.5). Other `[locate.*]` sections (etcd, …) are not
    /// read.
    Redis(RedisConfig),
}

/// `[locate.redis]`, due's keys and defaults (cluster-protocol.md §6.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `addrs`: `host:port` list, default `["127.0.0.1:6379"]` (an empty list means the default,
    /// as in go-redis); several addresses mean a cluster client in due.
    pub addrs: Vec<String>,
    /// `db`, default 0.
    pub db: i64,
    /// `username`, default empty (no ACL user).
    pub username: String,
    /// `password`, default empty.
    pub password: String,
    /// `maxRetries`, default 3 (go-redis: 0 = its default 3, -1 = no retries).
    pub max_retries: i64,
    /// `prefix`, default `due:locate`; keys then read `<prefix>:locate:user:<uid>:gate`. Kept as
    /// given, even empty (due does the same).
    pub prefix: String,
    /// `certFile`, `keyFile`, `caFile`: TLS only when all three are set (see [`RedisConfig::tls`]).
    pub cert_file: String,
    pub key_file: String,
    pub ca_file: String,
}

impl RedisConfig {
    /// due connects with TLS only when cert, key and CA files are all set.
    pub fn tls(&self) -> bool {
        !self.cert_file.is_empty() && !self.key_file.is_empty() && !self.ca_file.is_empty()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            addrs: vec!["127.0.0.1:6379".to_string()],
            db: 0,
            username: String::new(),
            password: String::new(),
            max_retries: 3,
            prefix: "due:locate".to_string(),
            cert_file: String::new(),
            key_file: String::new(),
            ca_file: String::new(),
        }
    }
}

/// The registry backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryConfig {
    /// No `[registry.consul]`: the nodes are the static list `gatehouse.nodes` and the gate
    /// registers nowhere.
    Static,
    /// `[registry.consul]` (cluster-protocol.md §5.6); `gatehouse.nodes` is then ignored.
    Consul(ConsulConfig),
    /// `[registry.etcd]` (etcd-registry.md §1); `gatehouse.nodes` is then ignored.
    Etcd(EtcdConfig),
    /// `[registry.nacos]` (docs/ops/nacos.md); `gatehouse.nodes` is then ignored.
    Nacos(NacosConfig),
}

/// `[registry.nacos]`, due's keys and defaults (docs/ops/nacos.md). Read: `urls`, `clusterName`,
/// `groupName`, `timeout`, `namespaceId`, `username`, `password`. `cacheDir`, `logDir` and
/// `logLevel` configure the Go SDK's own files and are accepted and unused; `endpoint`,
/// `regionId`, `accessKey`, `secretKey` and `openKMS` (Alibaba Cloud's address server and KMS)
/// stop start-up when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NacosConfig {
    /// `urls`: `scheme://host:port/contextPath` of each server, default
    /// `["http://127.0.0.1:8848/nacos"]`.
    pub urls: Vec<String>,
    /// `clusterName`, default `DEFAULT`.
    pub cluster_name: String,
    /// `groupName`, default `DEFAULT_GROUP`.
    pub group_name: String,
    /// `timeout`, default 3 s: bounds each call (due hands the SDK 1000× its value).
    pub timeout: Duration,
    /// `namespaceId`, default empty (Nacos's `public`).
    pub namespace_id: String,
    /// `username` / `password`: log in only when both are set.
    pub username: String,
    pub password: String,
}

impl Default for NacosConfig {
    fn default() -> Self {
        NacosConfig {
            urls: vec!["http://127.0.0.1:8848/nacos".to_string()],
            cluster_name: "DEFAULT".to_string(),
            group_name: "DEFAULT_GROUP".to_string(),
            timeout: Duration::from_secs(3),
            namespace_id: String::new(),
            username: String::new(),
            password: String::new(),
        }
    }
}

/// `[registry.etcd]`, due's keys and defaults (etcd-registry.md §1; `username`/`password` are
/// v2.5.8's). Durations are due durations (`"10s"`; a bare integer is nanoseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `addrs`: the members' client `host:port`s (plain HTTP), default `["127.0.0.1:2379"]`.
    pub addrs: Vec<String>,
    /// `dialTimeout`, default 5 s: bounds connecting to a member.
    pub dial_timeout: Duration,
    /// `namespace`, default `services`: the first key segment (`/services/gate/<gid>`).
    pub namespace: String,
    /// `timeout`, default 3 s: bounds each call (grant, put, keep-alive, delete, range).
    pub timeout: Duration,
    /// `retryTimes`, default 3. due gives up re-registering after this many failed attempts;
    /// gatehouse keeps trying (read for compatibility, only logged).
    pub retry_times: i64,
    /// `retryInterval`, default 10 s: the lease TTL is its whole seconds + 1 (11 s), and the
    /// longest pause between two re-registration attempts.
    pub retry_interval: Duration,
    /// `username` / `password` (v2.5.8): authenticate only when both are set.
    pub username: String,
    pub password: String,
}

impl EtcdConfig {
    /// The lease TTL in seconds: `⌊retryInterval⌋ + 1` (etcd-registry.md §5.1).
    pub fn lease_ttl(&self) -> i64 {
        i64::try_from(self.retry_interval.as_secs())
            .unwrap_or(i64::MAX - 1)
            .saturating_add(1)
    }
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            addrs: vec!["127.0.0.1:2379".to_string()],
            dial_timeout: Duration::from_secs(5),
            namespace: "services".to_string(),
            timeout: Duration::from_secs(3),
            retry_times: 3,
            retry_interval: Duration::from_secs(10),
            username: String::new(),
            password: String::new(),
        }
    }
}

/// `[registry.consul]`, due's keys and defaults (cluster-protocol.md §5.6). Integers are seconds,
/// as in due; duration strings (`"10s"`, `"1m"`) are accepted too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulConfig {
    /// `addr`: the agent's `host:port`, default `127.0.0.1:8500`.
    pub addr: String,
    /// `healthCheck`: register a TCP check on the link address, default true.
    pub health_check: bool,
    /// `healthCheckInterval`, default 10 s (positive when `health_check`).
    pub health_check_interval: Duration,
    /// `healthCheckTimeout`, default 5 s.
    pub health_check_timeout: Duration,
    /// `heartbeatCheck`: register a TTL check kept passing by the gate, default true.
    pub heartbeat_check: bool,
    /// `heartbeatCheckInterval`: the TTL, default 10 s (positive when `heartbeat_check`); the
    /// check is updated every half of it.
    pub heartbeat_check_interval: Duration,
    /// `deregisterCriticalServiceAfter`, default 30 s (Consul enforces at least a minute).
    pub deregister_critical_service_after: Duration,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            addr: "127.0.0.1:8500".to_string(),
            health_check: true,
            health_check_interval: Duration::from_secs(10),
            health_check_timeout: Duration::from_secs(5),
            heartbeat_check: true,
            heartbeat_check_interval: Duration::from_secs(10),
            deregister_critical_service_after: Duration::from_secs(30),
        }
    }
}

/// One `[[gatehouse.nodes]]` entry: a node the gate links to when no registry is configured,
/// standing in for the instance record the node would have registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNode {
    /// `id`: the node id (nid) used in link handshakes; default `static-<index>` (0-based).
    /// Unique within the list.
    pub id: String,
    /// `name`: the node alias (the group of its stateful routes), default `node`.
    pub name: String,
    /// `addr`: the node's link address `host:port` (required).
    pub addr: String,
    /// From `routes` (plain), `stateful`, `authorized` and `internal` (route id lists): one entry
    /// per id, in order of first mention, with the flags of every list naming it.
    pub routes: Vec<RouteInfo>,
    /// `events`: 1 connect, 2 reconnect, 3 disconnect (numbers or names), without duplicates.
    pub events: Vec<i32>,
    /// `weight` for `wrr` dispatch, default 1.
    pub weight: i32,
    /// `state`: `work` (default), `busy`, `hang` or `shut`.
    pub state: InstanceState,
}

/// `[cluster.gate]` (v2.4.1 keys, v2.5.8 keys accepted too).
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// `id`; a time-based UUID (v1) is generated when empty.
    pub id: String,
    pub name: String,
    /// internal link listen address (cluster side).
    pub addr: String,
    /// `expose`: due advertises the machine's public IP, asked of public web services, for a
    /// wildcard `addr`. Accepted and ignored: gatehouse calls nothing outside the cluster.
    pub expose: bool,
    /// v2.4.1 `timeout`, or v2.5.8 `callTimeout` when given; ≤0 → 3s.
    pub timeout: Duration,
    pub dispatch: String,
    pub metadata: BTreeMap<String, String>,
}

/// How a server answers heartbeats (`heartbeatMechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatMechanism {
    /// answer every client heartbeat
    Resp,
    /// send one every interval, never answer
    Tick,
}

/// Keys shared by `[network.tcp.server]` and `[network.ws.server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub addr: String,
    pub cert_file: String,
    pub key_file: String,
    /// `maxConnNum`; ≤0 becomes 5000 (v2.5.8 rule).
    pub max_conn_num: usize,
    /// zero disables timeouts and tick heartbeats.
    pub heartbeat_interval: Duration,
    pub heartbeat_mechanism: HeartbeatMechanism,
    /// zero disables.
    pub authorize_timeout: Duration,
    /// v2.5.8 `writeQueueSize` (entries); defaults 4096 (TCP) / 4096 (WS low queue) as v2.4.1.
    pub write_queue_size: usize,
    /// v2.5.8 `writeTimeout`; accepted and ignored: a write never blocks on a slow client, a full
    /// queue closes it (README deviation 6).
    pub write_timeout: Duration,
}

impl ServerConfig {
    pub fn tls(&self) -> bool {
        !self.cert_file.is_empty() && !self.key_file.is_empty()
    }
}

/// `[network.kcp.server]` (spec kcp.md §1.1): the common server keys and the KCP session
/// parameters (`mtu`, `noDelay`, `windowSize`, `ackNoDelay`, `writeDelay`) over kcp-go's defaults.
/// `readBuffer`/`writeBuffer` are type-checked and ignored, as they are by due's server.
#[derive(Debug, Clone)]
pub struct KcpConfig {
    /// `cert_file`/`key_file` stay empty; `write_queue_size` is v2.4.1's 4096.
    pub server: ServerConfig,
    pub params: crate::kcpnet::Params,
}

/// `[network.ws.server]`.
#[derive(Debug, Clone)]
pub struct WsConfig {
    pub server: ServerConfig,
    /// `path`: Go ServeMux pattern.
    pub path: String,
    /// `origins`; `["*"]` when absent.
    pub origins: Vec<String>,
    /// `handshakeTimeout` (default 10s). The reference ignores it; we use it to bound upgrades.
    pub handshake_timeout: Duration,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Log levels in due's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
    Panic,
}

/// `[log.file] rotate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotate {
    None,
    Year,
    Month,
    Week,
    Day,
    Hour,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: LogLevel,
    /// console terminal enabled, with its allowed levels (`None` = all at or above `level`).
    pub console: Option<Option<Vec<LogLevel>>>,
    /// file terminal enabled, with its allowed levels.
    pub file: Option<Option<Vec<LogLevel>>>,
    pub console_format: LogFormat,
    pub file_path: PathBuf,
    pub file_format: LogFormat,
    pub file_max_age: Duration,
    /// bytes; 0 = unlimited.
    pub file_max_size: u64,
    pub file_rotate: Rotate,
    pub file_compress: bool,
}

/// `[gatehouse]`: settings of our own that due does not have.
#[derive(Debug, Clone)]
pub struct GatehouseConfig {
    /// `shards`: executors to run; 0 = one per CPU.
    pub shards: usize,
    /// `pin`: pin each shard to its CPU.
    pub pin: bool,
    /// `maxInboundFrame`: largest accepted `size` field; 0 = derived strict cap
    /// `max(9, 1 + routeBytes + seqBytes + bufferBytes)`.
    pub max_inbound_frame: u32,
    /// `lenientInbound`: accept frames up to a fixed 16 MiB (`gate.rs` LENIENT_INBOUND_CAP)
    /// instead of the strict cap.
    pub lenient_inbound: bool,
    /// `wsCloseFrame`: send a Close(1000) frame before a server-initiated WS close.
    pub ws_close_frame: bool,
    /// `wsLittleEndianTsHeartbeat`: in little-endian mode answer due-client-ts's big-endian heartbeat.
    pub ws_le_ts_heartbeat: bool,
    /// `ioMemory`: bytes of io_uring buffers pinned per shard.
    pub io_memory: usize,
    /// `listenBacklog`.
    pub listen_backlog: i32,
    /// `proxyProtocol` (off, v1, v2, any) and `proxyTrusted` (CIDRs): PROXY protocol headers
    /// on every client listener, and who may send them.
    pub proxy: crate::proxy_header::ProxyPolicy,
    /// `[[gatehouse.nodes]]`: the static node list, used when no registry is configured.
    pub nodes: Vec<StaticNode>,
    /// `linkConns`: link connections per shard to each node, 1 to 20 (default 1).
    pub link_conns: usize,
    /// `publishResponseV25`: answer node publish requests in the v2.5.5+ form (with a code);
    /// false (default) = the v2.4.1 form.
    pub publish_v25: bool,
    /// `upgradeSocket`: the Unix socket where `gatehouse --upgrade` finds the running gate.
    /// `None` = next to `pid` (`<pid>.upgrade`), or an abstract socket named after the first
    /// fixed port when there is no pid file.
    pub upgrade_socket: Option<PathBuf>,
    /// `metricsAddr`: the HTTP listener of `/metrics`, `/healthz` and `/readyz` (`host:port`);
    /// `None` (empty, the default) = off.
    pub metrics_addr: Option<String>,
    /// `singleLogin`: what binding a uid that is bound to another connection does to that one.
    pub single_login: SingleLogin,
    /// `packetRate`, `packetBurst`, `packetRateAction`, `ipAcceptRate`, `ipAcceptBurst`,
    /// `ipMaxConns` (docs/ops/limits.md).
    pub limits: LimitsConfig,
    /// `kcpLinger` (2s): how long a closed KCP connection's session keeps retransmitting what
    /// its client has not acknowledged (0 = drop it at once, as due does).
    pub kcp_linger: Duration,
    /// `kcpClosedMemory` (60s): how long a closed KCP conversation's datagrams are dropped
    /// instead of opening a new (zombie) connection (0 = never remembered, as due).
    pub kcp_closed_memory: Duration,
}

/// What happens to a data packet over a connection's rate (`packetRateAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateAction {
    /// Not delivered; the connection stays.
    #[default]
    Drop,
    /// The connection is closed (`CloseReason::RateLimited`).
    Close,
}

/// `[gatehouse]` limits on what one client may take (docs/ops/limits.md). 0 = off throughout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitsConfig {
    /// `packetRate`: data packets per second per connection.
    pub packet_rate: u32,
    /// `packetBurst`: packets a connection may send at once (default `packetRate`).
    pub packet_burst: u32,
    /// `packetRateAction`: `drop` (default) or `close`.
    pub packet_action: RateAction,
    /// `ipAcceptRate`: new connections per second per source IP.
    pub ip_accept_rate: u32,
    /// `ipAcceptBurst`: new connections at once per source IP (default `ipAcceptRate`).
    pub ip_accept_burst: u32,
    /// `ipMaxConns`: open connections per source IP.
    pub ip_max_conns: u32,
}

/// `[gatehouse] singleLogin`: whether a uid may stay on an older connection once it is bound to
/// a newer one (docs/ops/single-login.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SingleLogin {
    /// due's behaviour: the older connection stays open, unbound.
    #[default]
    Off,
    /// The older connection on this gate is closed.
    Gate,
    /// As `Gate`, and a connection here is closed when another gate binds its uid (needs the
    /// Redis locator: its BindGate events say so).
    Cluster,
}
