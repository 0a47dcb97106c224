//! The user locator (due's `locate`): where each user is connected (gate) and which node of each
//! name serves them (stateful routes). Owns the trait and the embedded in-memory locator.
//!
//! Locators are driven only by the control thread: their calls may block on the network.

pub mod redis;

use std::collections::HashMap;
use std::fmt;

/// Why a locator call failed, saying where: the Redis address, or the command and its key.
/// Messages are kept as text so the error can be cloned to every waiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocatorError {
    /// The `[locate.redis]` settings cannot be used (an address that does not parse).
    Config(String),
    /// No connection to the Redis server at `addr`.
    Connect { addr: String, reason: String },
    /// A command failed; `op` is the command and its key or channel (`SET <key>`).
    Command { op: String, reason: String },
    /// The compare-and-delete script of an unbind failed on `key`.
    Script { key: String, reason: String },
    /// `op` got no answer within `[cluster.gate] timeout`.
    Timeout { op: String },
    /// The node-channel watcher thread could not be started.
    Thread(String),
}

impl fmt::Display for LocatorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocatorError::Config(reason) => write!(f, "redis: {reason}"),
            LocatorError::Connect { addr, reason } => write!(f, "redis {addr}: {reason}"),
            LocatorError::Command { op, reason } => write!(f, "redis {op}: {reason}"),
            LocatorError::Script { key, reason } => {
                write!(f, "redis unbind script on {key}: {reason}")
            }
            LocatorError::Timeout { op } => write!(f, "redis {op}: timed out"),
            LocatorError::Thread(reason) => {
                write!(f, "cannot start the locator watcher thread: {reason}")
            }
        }
    }
}

impl std::error::Error for LocatorError {}

/// Where users are located in the cluster (due's locator, gate side).
pub trait Locator: Send {
    /// Name shown in the banner (`redis`, `memory`).
    fn name(&self) -> &'static str;
    /// Records that `uid` is connected through gate `gid` (and tells the cluster).
    fn bind_gate(&mut self, uid: i64, gid: &str) -> Result<(), LocatorError>;
    /// Removes the record only if it still names `gid` (and tells the cluster if it did).
    fn unbind_gate(&mut self, uid: i64, gid: &str) -> Result<(), LocatorError>;
    /// The gate `uid` is bound to, if any (single login checks an event against it).
    fn locate_gate(&mut self, uid: i64) -> Result<Option<String>, LocatorError>;
    /// The node of name `name` bound to `uid`, if any (stateful routes).
    fn locate_node(&mut self, uid: i64, name: &str) -> Result<Option<String>, LocatorError>;
}

/// The embedded locator: a map in the control thread. Enough for one gate without Redis; nodes
/// cannot bind users to themselves through it, so stateful routes find no node.
#[derive(Default)]
pub struct MemoryLocator {
    users: HashMap<i64, String>,
}

impl Locator for MemoryLocator {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn bind_gate(&mut self, uid: i64, gid: &str) -> Result<(), LocatorError> {
        self.users.insert(uid, gid.to_string());
        Ok(())
    }

    fn unbind_gate(&mut self, uid: i64, gid: &str) -> Result<(), LocatorError> {
        if self.users.get(&uid).is_some_and(|g| g == gid) {
            self.users.remove(&uid);
        }
        Ok(())
    }

    fn locate_gate(&mut self, uid: i64) -> Result<Option<String>, LocatorError> {
        Ok(self.users.get(&uid).cloned())
    }

    fn locate_node(&mut self, _uid: i64, _name: &str) -> Result<Option<String>, LocatorError> {
        Ok(None)
    }
}
