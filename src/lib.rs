//! gatehouse: a thread-per-core io_uring gate that speaks due v2.4.1's client protocol.
//! The tree follows a packet: listener → connection → session → dispatch (→ drpc → node) and back
//! (node → node_api → session → connection).

pub mod banner;
pub mod cli;
pub mod config;
pub mod connection;
pub mod control;
pub mod dispatch;
pub mod drpc;
pub mod gate;
pub mod instance;
pub mod listener;
pub mod liveness;
pub mod locator;
pub mod logging;
pub mod net;
pub mod node_api;
pub mod packet;
pub mod registry;
pub mod session;
pub mod shard;
pub mod tls;
