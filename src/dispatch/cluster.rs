//! The cluster upstream of one shard: routes client packets to nodes and fans events out,
//! over this shard's link connections. Owns the shard's copy of the route table.
//!
//! Each shard keeps its own `RouteTable` (rebuilt when the registry view changes) so routing a
//! packet touches only shard-local state. Stateful routes need the user's node from the locator;
//! that lookup goes to the control thread and the packet follows when the answer comes back.

use ahash::AHashMap;
use bytes::Bytes;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use super::node_link::{NodeLinkParcel, NodeLinks};

/// How long a freeze waits for locator lookups in flight.
const LOOKUP_LIMIT: std::time::Duration = std::time::Duration::from_millis(500);
use super::routes::{RouteTable, Strategy};
use super::{Delivery, EventKind, GateEvent, Upstream};
use crate::control::Control;
use crate::drpc;
use crate::registry::ServiceInstance;

/// Routes client packets to nodes through this shard's link connections.
pub struct ClusterUpstream {
    inner: Rc<Inner>,
}

struct Inner {
    table: RefCell<RouteTable>,
    strategy: Strategy,
    links: NodeLinks,
    /// Asks the locator for a user's node on stateful routes; `None` without a locator that
    /// knows node bindings.
    control: Option<Control>,
    /// Connections waiting for a locator answer, with the packets that arrived meanwhile: they
    /// are routed in arrival order once the answer is in.
    waiting: RefCell<AHashMap<i64, VecDeque<Delivery>>>,
    /// xorshift state for the `random` strategy (no lock, no syscall per pick).
    rng: Cell<u64>,
    /// The stateful-route lookups in flight, waited for by `close`.
    lookups: glommio::sync::Gate,
}

impl ClusterUpstream {
    pub fn new(
        gid: &str,
        strategy: Strategy,
        shard: usize,
        conns_per_node: usize,
        control: Option<Control>,
    ) -> Self {
        ClusterUpstream {
            inner: Rc::new(Inner {
                table: RefCell::new(RouteTable::build(&[], strategy)),
                strategy,
                links: NodeLinks::new(gid, conns_per_node),
                control,
                waiting: RefCell::new(AHashMap::new()),
                rng: Cell::new(0x9e37_79b9_7f4a_7c15 ^ ((shard as u64 + 1) << 32) ^ seed()),
                lookups: glommio::sync::Gate::new(),
            }),
        }
    }
}

impl Inner {
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
        let m = crate::metrics::shard();
        if self
            .links
            .send_holding(addr, cid, |out| drpc::put_deliver(out, 0, cid, uid, frame))
        {
            m.delivered.inc();
        } else {
            m.dropped_no_endpoint.inc();
            tracing::warn!(
                addr,
                cid,
                route = d.route,
                "node unavailable, packet dropped"
            );
        }
    }

    /// Routes one packet. `Some(group)` = a stateful route whose node must be looked up first.
    fn route(&self, d: &Delivery) -> Option<String> {
        let table = self.table.borrow();
        let Some(entry) = table.route(d.route) else {
            crate::metrics::shard().dropped_no_route.inc();
            tracing::debug!(
                route = d.route,
                cid = d.cid,
                "not found route, packet dropped"
            );
            return None;
        };
        if entry.internal() {
            crate::metrics::shard().dropped_no_route.inc();
            tracing::warn!(
                route = d.route,
                cid = d.cid,
                "illegal request: internal route"
            );
            return None;
        }
        if d.uid == 0 && (entry.stateful() || entry.authorized()) {
            crate::metrics::shard().dropped_no_route.inc();
            tracing::warn!(
                route = d.route,
                cid = d.cid,
                "illegal request: route needs a bound user"
            );
            return None;
        }
        if entry.stateful() {
            if self.control.is_none() {
                crate::metrics::shard().dropped_no_endpoint.inc();
                tracing::debug!(
                    route = d.route,
                    uid = d.uid,
                    "no user location, packet dropped"
                );
                return None;
            }
            return Some(entry.group().to_string());
        }
        match table.pick_stateless(d.route, self.next_rand()) {
            Some(ep) => {
                drop(table);
                self.send_deliver(&ep.address, d);
            }
            None => {
                crate::metrics::shard().dropped_no_endpoint.inc();
                tracing::warn!(route = d.route, "not found endpoint, packet dropped")
            }
        }
        None
    }

    /// Sends a stateful packet to the node the locator named, if it serves the route.
    fn deliver_located(&self, d: &Delivery, nid: Option<String>) {
        let Some(nid) = nid else {
            crate::metrics::shard().dropped_no_endpoint.inc();
            tracing::debug!(
                route = d.route,
                uid = d.uid,
                "not found user location, packet dropped"
            );
            return;
        };
        let ep = self.table.borrow().find_in_route(d.route, &nid);
        match ep {
            Some(ep) => self.send_deliver(&ep.address, d),
            None => {
                crate::metrics::shard().dropped_no_endpoint.inc();
                tracing::warn!(route = d.route, nid, "not found endpoint, packet dropped")
            }
        }
    }
}

/// Looks up the node of a stateful packet, sends it, then routes the packets of the same
/// connection that queued up meanwhile (looking up again when one of them is stateful too).
async fn locate_then_drain(inner: Rc<Inner>, first: Delivery, group: String) {
    let mut next = Some((first, group));
    while let Some((d, group)) = next.take() {
        let control = inner
            .control
            .as_ref()
            .expect("stateful lookups need a locator");
        let asked = std::time::Instant::now();
        let answer = control.locate_node(d.uid, &group).await;
        crate::metrics::shard().lookup.observe_since(asked);
        match answer {
            Ok(nid) => inner.deliver_located(&d, nid),
            Err(e) => {
                crate::metrics::shard().dropped_no_endpoint.inc();
                tracing::error!(uid = d.uid, error = %e, "locate node failed, packet dropped")
            }
        }
        loop {
            let queued = inner
                .waiting
                .borrow_mut()
                .get_mut(&d.cid)
                .and_then(VecDeque::pop_front);
            let Some(q) = queued else {
                inner.waiting.borrow_mut().remove(&d.cid);
                break;
            };
            if let Some(g) = inner.route(&q) {
                next = Some((q, g));
                break;
            }
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
        let inner = &self.inner;
        if let Some(q) = inner.waiting.borrow_mut().get_mut(&d.cid) {
            q.push_back(d);
            return;
        }
        if let Some(group) = inner.route(&d) {
            inner.waiting.borrow_mut().insert(d.cid, VecDeque::new());
            if let Ok(t) = inner
                .lookups
                .spawn(locate_then_drain(inner.clone(), d, group))
            {
                t.detach();
            }
        }
    }

    fn event(&self, e: GateEvent) {
        let inner = &self.inner;
        let table = inner.table.borrow();
        let targets = table.event_targets(e.kind as u8);
        if targets.is_empty() {
            tracing::debug!(kind = ?e.kind, "not found event");
            return;
        }
        let uid = if e.kind == EventKind::Connect {
            0
        } else {
            e.uid
        };
        for ep in targets {
            if !inner.links.send(&ep.address, e.cid, |out| {
                drpc::put_trigger(out, 0, e.kind as u8, e.cid, uid)
            }) {
                tracing::warn!(addr = %ep.address, kind = ?e.kind, cid = e.cid, "node unavailable, event dropped");
            }
        }
    }

    fn poll_ready(&self, cid: i64, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.inner.links.poll_ready(cid, cx)
    }

    fn idle(&self) -> bool {
        self.inner.waiting.borrow().is_empty() && self.inner.links.idle()
    }

    fn close(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let _ = inner.lookups.close().await;
            inner.links.close().await;
        })
    }

    fn freeze(
        &self,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Vec<NodeLinkParcel<crate::handoff::Lent>>>>,
    > {
        let inner = self.inner.clone();
        Box::pin(async move {
            // Packets waiting for a locator answer are sent first: they were read before the
            // freeze, so they belong to this process's queues.
            let deadline = std::time::Instant::now() + LOOKUP_LIMIT;
            while !inner.waiting.borrow().is_empty() && std::time::Instant::now() < deadline {
                glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
            }
            if !inner.waiting.borrow().is_empty() {
                tracing::warn!(
                    connections = inner.waiting.borrow().len(),
                    "upgrade: locator lookups still in flight, their packets follow on this process's links"
                );
            }
            inner.links.freeze().await
        })
    }

    fn thaw(&self) {
        self.inner.links.thaw()
    }

    fn commit(&self) {
        self.inner.links.commit()
    }

    fn adopt(&self, links: Vec<NodeLinkParcel>) {
        self.inner.links.adopt(links)
    }

    fn update_nodes(&self, nodes: &Arc<Vec<ServiceInstance>>) {
        let inner = &self.inner;
        let table = RouteTable::build(nodes, inner.strategy);
        let keep: std::collections::HashSet<String> = nodes
            .iter()
            .filter_map(|n| crate::registry::endpoint_address(&n.endpoint))
            .collect();
        inner.links.retain(|addr| keep.contains(addr));
        *inner.table.borrow_mut() = table;
    }
}
