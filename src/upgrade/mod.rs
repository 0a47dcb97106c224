//! `gatehouse --upgrade`: the running gate hands its listening sockets, client connections, node
//! links and identity to a new process over a Unix socket, and exits once the new one has them.
//!
//! The running gate serves its upgrade socket ([`give`]); the new process connects to it
//! ([`take`]). The conversation, one message at a time over [`wire`]:
//!
//! 1. new → `Hello` (hand-off protocol and connection record versions it reads);
//!    old → `Offer` (its versions, gid, link address) or `Refuse`.
//! 2. new → `Go` (it has loaded its configuration and started its control plane).
//!    The old gate skims: every quiet client connection parks with its state exported, and old →
//!    `Conns` carries them over while the busy ones serve on. Then it freezes: node link
//!    connections park between two frames, then every other client connection parks with its
//!    state exported, then the outbound node links.
//! 3. old → `Listeners`, `Claims`, `UpgradeSocket`, `Conns`, `Sessions` (what changed in a
//!    skimmed connection's session since), `Links`, `NodeLinks`, `Done`, the sockets attached.
//! 4. new → `Ready` once everything is taken up (nothing runs yet); old → `Committed`: its parked
//!    tasks end without a byte. Only then does the new process start serving.
//!
//! Until `Committed`, the old gate can resume as if nothing happened (`Thaw`): the new process
//! refused, failed or vanished. See docs/upgrade.md for the procedure and its failure modes.

pub mod give;
pub mod take;
pub mod wire;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::config::Config;
use crate::connection::record::ConnRecord;
use crate::node_api::LinkRecord;
use crate::session::SessionRecord;
pub use wire::SocketName;

/// The version of this conversation (message layout and order). Both sides must speak it.
/// 2: quiet connections are skimmed before the freeze (`Sessions` updates them).
pub const PROTOCOL: u32 = 2;

/// Which listener a set of listening sockets is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListenerKind {
    Tcp,
    Ws,
    Link,
    /// Never handed over: `--upgrade` is refused with a KCP server (its sessions live in this
    /// process's memory, and its UDP socket would split their datagrams between two processes).
    Kcp,
}

/// An outbound node link as sent: which node, which old shard and slot, its queued frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLinkHead {
    pub addr: String,
    pub shard: u32,
    pub slot: u32,
    pub queued: Vec<u8>,
}

/// One message of the conversation. `Hello`, `Offer` and `Refuse` keep their place and layout
/// in every version, so two builds can always tell each other why they disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Hello {
        protocol: u32,
        record_version: u32,
        pid: u32,
    },
    Offer {
        protocol: u32,
        record_version: u32,
        pid: u32,
        gid: String,
        link_addr: String,
        shards: u32,
    },
    Refuse(String),
    Go,
    /// Listening sockets of one listener (attached), in the old process's shard order.
    Listeners(ListenerKind),
    /// The port claims (attached, one per port).
    Claims(Vec<u16>),
    /// The upgrade socket itself (attached), for the next upgrade.
    UpgradeSocket,
    /// Client connections (attached in the same order).
    Conns(Vec<ConnRecord>),
    /// Inbound node link connections (attached in the same order).
    Links(Vec<LinkRecord>),
    /// Outbound node links (attached in the same order).
    NodeLinks(Vec<NodeLinkHead>),
    /// Everything was sent. Every cid the old gate made is below `cid_bound`.
    Done {
        cid_bound: i64,
    },
    Ready,
    Committed,
    /// The session state of skimmed connections that changed after they were sent: replaces
    /// the state in their earlier `Conns` record (matched by cid).
    Sessions(Vec<SessionRecord>),
}

/// Why an upgrade did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeError {
    /// No gate answers on the upgrade socket.
    NoGate { socket: String, reason: String },
    /// One side refused (versions, configuration); the running gate keeps serving.
    Refused(String),
    /// The conversation broke off.
    Broken(String),
    /// No upgrade socket can be named for this configuration.
    NoSocket,
}

impl std::fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpgradeError::NoGate { socket, reason } => {
                write!(f, "no running gatehouse answers on {socket}: {reason}")
            }
            UpgradeError::Refused(r) => write!(f, "refused: {r}"),
            UpgradeError::Broken(r) => write!(f, "hand-off broken off: {r}"),
            UpgradeError::NoSocket => f.write_str(
                "etc.gatehouse.upgradeSocket: not set, and neither a pid file nor a fixed port to \
                 name the upgrade socket after",
            ),
        }
    }
}

impl std::error::Error for UpgradeError {}

/// Where the upgrade socket of a gate with this configuration lives: `[gatehouse]
/// upgradeSocket`, else `<pid>.upgrade` beside the pid file, else the abstract name
/// `gatehouse/upgrade/<port>` after the first fixed port (client TCP, WS, then the link).
pub fn socket_name(cfg: &Config) -> Option<SocketName> {
    if let Some(p) = &cfg.gatehouse.upgrade_socket {
        return Some(SocketName::Path(p.clone()));
    }
    if let Some(pid) = &cfg.pid {
        let mut p = pid.clone().into_os_string();
        p.push(".upgrade");
        return Some(SocketName::Path(PathBuf::from(p)));
    }
    let addrs = cfg
        .tcp
        .iter()
        .map(|s| s.addr.as_str())
        .chain(cfg.ws.iter().map(|w| w.server.addr.as_str()))
        .chain([cfg.gate.addr.as_str()]);
    addrs
        .filter_map(|a| crate::net::HostPort::parse(a).ok())
        .map(|a| a.port)
        .find(|&p| p != 0)
        .map(|p| SocketName::Abstract(format!("gatehouse/upgrade/{p}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml: &str) -> Config {
        let dir =
            std::env::temp_dir().join(format!("gatehouse-upgrade-name-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("etc.toml");
        std::fs::write(&f, toml).unwrap();
        let c = crate::config::load(&f, None).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        c
    }

    #[test]
    fn the_upgrade_socket_is_named_by_key_then_pid_then_first_fixed_port() {
        let c = cfg("pid = \"run/gate.pid\"\n[gatehouse]\nupgradeSocket = \"/tmp/up.sock\"\n");
        assert_eq!(
            socket_name(&c),
            Some(SocketName::Path("/tmp/up.sock".into()))
        );
        let c = cfg("pid = \"run/gate.pid\"\n");
        assert_eq!(
            socket_name(&c),
            Some(SocketName::Path("run/gate.pid.upgrade".into()))
        );
        let c = cfg(
            "[network.tcp.server]\naddr = \":0\"\n[network.ws.server]\naddr = \"127.0.0.1:4444\"\n",
        );
        assert_eq!(
            socket_name(&c),
            Some(SocketName::Abstract("gatehouse/upgrade/4444".into()))
        );
        let c = cfg("[network.tcp.server]\naddr = \":0\"\n[cluster.gate]\naddr = \":0\"\n");
        assert_eq!(socket_name(&c), None);
    }
}
