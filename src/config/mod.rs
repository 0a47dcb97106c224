//! Configuration: due's `etc.toml` layout, key names and value syntax, turned into typed settings.
//! Owns loading (file or directory, toml/yaml/json/xml), value conversion and start-up validation.

mod convert;
mod load;

pub use convert::{parse_bool, parse_duration, parse_size};
pub use load::{load, resolve_etc_path, ConfigError};

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
    pub log: LogConfig,
    pub gatehouse: GatehouseConfig,
}

/// `[cluster.gate]` (v2.4.1 keys, v2.5.8 keys accepted too).
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// `id`; a time-based UUID (v1) is generated when empty.
    pub id: String,
    pub name: String,
    /// internal link listen address (cluster side).
    pub addr: String,
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
    /// v2.5.8 `writeTimeout`; parsed, zero = block (we never block: see README deviations).
    pub write_timeout: Duration,
}

impl ServerConfig {
    pub fn tls(&self) -> bool {
        !self.cert_file.is_empty() && !self.key_file.is_empty()
    }
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
    /// `lenientInbound`: accept frames up to `lenientInboundLimit` instead of the strict cap.
    pub lenient_inbound: bool,
    /// `wsCloseFrame`: send a Close(1000) frame before a server-initiated WS close.
    pub ws_close_frame: bool,
    /// `wsLittleEndianTsHeartbeat`: in little-endian mode answer due-client-ts's big-endian heartbeat.
    pub ws_le_ts_heartbeat: bool,
    /// `ioMemory`: bytes of io_uring buffers pinned per shard.
    pub io_memory: usize,
    /// `listenBacklog`.
    pub listen_backlog: i32,
}
