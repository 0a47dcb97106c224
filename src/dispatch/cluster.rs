//! The cluster upstream of one shard: routes client packets to nodes and fans events out,
//! over this shard's link connections. Owns the shard's copy of the route table.
//!
//! Each shard keeps its own `RouteTable` (rebuilt when the registry view changes) so routing a
//! packet touches only shard-local state. Stateful routes need the user's node from the locator;
//! that lookup goes to the control thread and the packet follows when the answer comes back.

use bytes::Bytes;
use std::cell::{Cell, RefCell};
use std::sync::Arc;

use super::routes::{RouteTable, Strategy};
use super::{Delivery, EventKind, GateEvent, Upstream};
use crate::link::client::NodeLinks;
use crate::link::codec;
use crate::registry::ServiceInstance;

/// Routes client packets to nodes through this shard's link connections.
pub struct ClusterUpstream {
    table: RefCell<RouteTable>,
    strategy: Strategy,
    links: NodeLinks,
    /// xorshift state for the `random` strategy (no lock, no syscall per pick).
    rng: Cell<u64>,
}

impl ClusterUpstream {
    pub fn new(gid: &str, strategy: Strategy, shard: usize) -> Self {
        ClusterUpstream {
            table: RefCell::new(RouteTable::build(&[], strategy)),
            strategy,
            links: NodeLinks::new(gid),
            rng: Cell::new(0x9e37_79b9_7f4a_7c15 ^ ((shard as u64 + 1) << 32) ^ seed()),
        }
    }

    fn next_rand(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x
    }

    fn send_deliver(&self, addr: &str, d: &Delivery) {
        let (cid, uid, frame): (i64, i64, &Bytes) = (d.cid, d.uid, &d.frame);
        if !self
            .links
            .send(addr, |out| codec::put_deliver(out, 0, cid, uid, frame))
        {
            tracing::warn!(
                addr,
                cid,
                route = d.route,
                "node unavailable, packet dropped"
            );
        }
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1
}

impl Upstream for ClusterUpstream {
    fn deliver(&self, d: Delivery) {
        let table = self.table.borrow();
        let Some(entry) = table.route(d.route) else {
            tracing::debug!(
                route = d.route,
                cid = d.cid,
                "not found route, packet dropped"
            );
            return;
        };
        if entry.internal() {
            tracing::warn!(
                route = d.route,
                cid = d.cid,
                "illegal request: internal route"
            );
            return;
        }
        if d.uid == 0 && (entry.stateful() || entry.authorized()) {
            tracing::warn!(
                route = d.route,
                cid = d.cid,
                "illegal request: route needs a bound user"
            );
            return;
        }
        if entry.stateful() {
            // The user's node comes from the locator; without one (embedded default) there is
            // no binding to follow, and due drops such packets silently.
            tracing::debug!(
                route = d.route,
                uid = d.uid,
                "no user location, packet dropped"
            );
            return;
        }
        let rand = self.next_rand();
        match table.pick_stateless(d.route, rand) {
            Some(ep) => {
                let addr = ep.address.clone();
                drop(table);
                self.send_deliver(&addr, &d);
            }
            None => tracing::warn!(route = d.route, "not found endpoint, packet dropped"),
        }
    }

    fn event(&self, e: GateEvent) {
        let table = self.table.borrow();
        let targets = table.event_targets(e.kind as u8);
        if targets.is_empty() {
            tracing::debug!(kind = ?e.kind, "not found event");
            return;
        }
        for ep in targets {
            let uid = if e.kind == EventKind::Connect {
                0
            } else {
                e.uid
            };
            if !self.links.send(&ep.address, |out| {
                codec::put_trigger(out, 0, e.kind as u8, e.cid, uid)
            }) {
                tracing::warn!(addr = %ep.address, kind = ?e.kind, cid = e.cid, "node unavailable, event dropped");
            }
        }
    }

    fn update_nodes(&self, nodes: &Arc<Vec<ServiceInstance>>) {
        let table = RouteTable::build(nodes, self.strategy);
        let keep: std::collections::HashSet<String> = nodes
            .iter()
            .filter_map(|n| crate::registry::endpoint_address(&n.endpoint))
            .collect();
        self.links.retain(|addr| keep.contains(addr));
        *self.table.borrow_mut() = table;
    }
}
