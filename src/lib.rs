//! gatehouse: a thread-per-core io_uring gate that speaks due v2.4.1's client protocol.
//! The tree follows a packet: listener → connection → session → dispatch (→ drpc → node) and back
//! (node → node_api → session → connection).
//!
//! # Layout
//!
//! Highest layer first; a module uses only modules below it (checked by `tests/layering.rs`, see
//! `docs/layering.md`). `docs/lifetime-of-a-packet.md` walks a packet through these modules.
//!
//! **Wiring**
//! - [`gate`]: start-up and shutdown of the whole gate: binds sockets, starts the control thread,
//!   one executor per shard, the registrar; holds the shards' inboxes.
//!
//! **Shard**
//! - [`shard`]: one pinned executor's life (`Shard::run`): its inbox (`ShardMsg`), listeners and
//!   tasks; admission and release of its connections (`connection::Host`); the one fan-out.
//!
//! **Edge** (sockets facing clients and nodes)
//! - [`listener`]: the client accept loop: TCP, TLS, WS and WSS paths to a connection task.
//! - [`connection`]: a client connection as a sans-IO machine (`machine`, over `framing`: TCP or
//!   WS), its exportable `record`, the one IO `driver`, the WS `upgrade` and `ws_frame` codec.
//! - [`node_api`]: the link server nodes dial: node commands as pure plans (`command`) run by a
//!   thin socket loop (`server`).
//!
//! **Sessions**
//! - [`session`]: per-shard tables (cid → connection, uid home index, channels) and the
//!   cross-shard session API (`Sessions`: bind, push, multicast, broadcast, …) by message.
//!
//! **Dispatch**
//! - [`dispatch`]: where client packets and events leave the gate (`Upstream`): route table and
//!   strategies (`routes`), the cluster upstream (`cluster`), the outbound node link
//!   (`node_link`).
//! - [`drpc`]: the gate↔node link protocol, sans-IO, one module per command.
//!
//! **Control plane** (std threads; shards reach them by channel)
//! - [`control`]: the control thread that owns the locator.
//! - [`locator`]: user → gate / node locations (memory or Redis).
//! - [`registry`]: the instance record; Consul, etcd and Nacos registration and node watch.
//!
//! **Configuration and leaves**
//! - [`config`]: due's `etc` files into typed settings, with errors that name the key.
//! - [`net`]: listening sockets and the accept loop every listener shares. [`claim`]: the
//!   claims on configured ports that refuse a second gatehouse on them.
//! - [`proxy_header`]: the PROXY protocol (v1/v2) header before a client's first byte: trusted
//!   peers and a sans-IO decision over the bytes read so far.
//! - [`limits`]: the packet-rate bucket of a connection and the shared per-source-IP table
//!   (accept rate, open connections), sans-IO.
//! - [`kcpnet`]: KCP over UDP as due's KCP server speaks it, sans-IO: datagram intake (plain
//!   and FEC-framed), which session a datagram belongs to, one session's KCP engine.
//! - [`packet`]: the client packet codec, sans-IO. [`liveness`]: heartbeat and authorize rules,
//!   clock-free. [`instance`]: instance states and route flags.
//! - [`tls`], [`logging`], [`banner`], [`cli`]: TLS acceptor (its certificate reloaded on
//!   SIGHUP), logging, the banner, flags.
//! - [`metrics`]: per-shard counters without locks, summed for Prometheus at scrape time; the
//!   health flags; the `/metrics`, `/healthz`, `/readyz` listener (`metricsAddr`).

pub mod banner;
pub mod claim;
pub mod cli;
pub mod config;
pub mod connection;
pub mod control;
pub mod dispatch;
pub mod drpc;
pub mod gate;
pub mod handoff;
pub mod instance;
pub mod kcpnet;
pub mod limits;
pub mod listener;
pub mod liveness;
pub mod locator;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod node_api;
pub mod packet;
pub mod proxy_header;
pub mod registry;
pub mod session;
pub mod shard;
pub mod tls;
pub mod upgrade;
