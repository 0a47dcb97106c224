//! Where client data packets and session events leave the gate: the seam the cluster plugs into.
//! Owns the `Upstream` trait and the event types; `cluster` routes to nodes, `routes` decides where.
//!
//! Each shard holds its own `Upstream` (built by a factory on the shard's thread), so forwarding a
//! packet is a plain method call on shard-local state — no lock, no cross-thread hop.

pub mod cluster;
pub mod node_link;
pub mod routes;

use bytes::Bytes;

pub use node_link::NodeLinkParcel;

/// due's cluster event numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Connect = 1,
    Reconnect = 2,
    Disconnect = 3,
}

/// One session event, as nodes receive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateEvent {
    pub kind: EventKind,
    pub cid: i64,
    pub uid: i64,
}

/// One client data packet on its way to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub cid: i64,
    /// The uid bound when the frame was read (0 = anonymous).
    pub uid: i64,
    pub route: i32,
    pub seq: i32,
    /// The whole frame, size prefix included, exactly as the client sent it.
    pub frame: Bytes,
}

/// The receiver of everything a shard sends towards nodes. Called on the shard's thread.
pub trait Upstream {
    /// A data packet from a client, in per-connection arrival order.
    fn deliver(&self, d: Delivery);
    /// A session event. Connect of a connection comes before any of its deliveries.
    fn event(&self, e: GateEvent);
    /// `Pending` while the node that connection `cid`'s last packet went to cannot take more
    /// (its queue is over the high-water mark): that connection's driver stops reading its
    /// client and is woken when the queue drains. Other connections read on (due holds back the
    /// reader of the one client whose send blocks, not every client).
    fn poll_ready(&self, _cid: i64, _cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::task::Poll::Ready(())
    }

    /// Whether everything handed over so far has been written (used before a shard exits).
    fn idle(&self) -> bool {
        true
    }

    /// Stops the upstream's own tasks (node links, locator lookups) and resolves once they have
    /// ended. Called last, when the shard stops.
    fn close(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
        Box::pin(std::future::ready(()))
    }

    /// The registry's view of the nodes changed (the full list, in registry order).
    fn update_nodes(&self, _nodes: &std::sync::Arc<Vec<crate::registry::ServiceInstance>>) {}

    /// An upgrade hand-off: once the locator lookups in flight are answered (bounded), parks the
    /// connected node links and returns their sockets and queued frames.
    fn freeze(
        &self,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Vec<NodeLinkParcel<crate::handoff::Lent>>>>,
    > {
        Box::pin(std::future::ready(Vec::new()))
    }
    /// The hand-off was called off: parked links carry on.
    fn thaw(&self) {}
    /// The next process took the parked links.
    fn commit(&self) {}
    /// Carries on node links the previous process handed over.
    fn adopt(&self, _links: Vec<NodeLinkParcel>) {}
}

/// Builds one `Upstream` per shard, on that shard's thread.
pub type UpstreamFactory = std::sync::Arc<dyn Fn(usize) -> Box<dyn Upstream> + Send + Sync>;

/// An `Upstream` that forwards everything to a channel: for tests and tools that observe the gate
/// from outside its shards.
pub struct ChannelUpstream(pub flume::Sender<Observed>);

/// What a `ChannelUpstream` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    Delivery(Delivery),
    Event(GateEvent),
}

impl Upstream for ChannelUpstream {
    fn deliver(&self, d: Delivery) {
        let _ = self.0.send(Observed::Delivery(d));
    }

    fn event(&self, e: GateEvent) {
        let _ = self.0.send(Observed::Event(e));
    }
}
