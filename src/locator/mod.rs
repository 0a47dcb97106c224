//! The user locator (due's `locate`): where each user is connected (gate) and which node of each
//! name serves them (stateful routes). Owns the trait and the embedded in-memory locator.
//!
//! Locators are driven only by the control thread: their calls may block on the network.

pub mod redis;

use std::collections::HashMap;

/// Where users are located in the cluster (due's locator, gate side).
pub trait Locator: Send {
    /// Name shown in the banner (`redis`, `memory`).
    fn name(&self) -> &'static str;
    /// Records that `uid` is connected through gate `gid` (and tells the cluster).
    fn bind_gate(&mut self, uid: i64, gid: &str) -> Result<(), String>;
    /// Removes the record only if it still names `gid` (and tells the cluster if it did).
    fn unbind_gate(&mut self, uid: i64, gid: &str) -> Result<(), String>;
    /// The node of name `name` bound to `uid`, if any (stateful routes).
    fn locate_node(&mut self, uid: i64, name: &str) -> Result<Option<String>, String>;
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

    fn bind_gate(&mut self, uid: i64, gid: &str) -> Result<(), String> {
        self.users.insert(uid, gid.to_string());
        Ok(())
    }

    fn unbind_gate(&mut self, uid: i64, gid: &str) -> Result<(), String> {
        if self.users.get(&uid).is_some_and(|g| g == gid) {
            self.users.remove(&uid);
        }
        Ok(())
    }

    fn locate_node(&mut self, _uid: i64, _name: &str) -> Result<Option<String>, String> {
        Ok(None)
    }
}
