//! The registry as the gate uses it, behind one interface: register this gate, report the node
//! list, re-register on a state change, leave. Four implementations: static list, Consul, etcd,
//! Nacos.
//!
//! Whatever the backend, node lists reach the gate through one [`NodeSink`]; the wiring turns that
//! into the one fan-out to the shards. Adding a backend means one more `start` arm.

use super::consul::{ConsulClient, Registrar};
use super::worker::{self, Backend};
use super::{endpoint_url, InstanceState, RegistryError, ServiceInstance};
use super::{etcd, nacos};
use crate::config::{RegistryConfig, StaticNode};
use crate::instance::StateCell;

/// Receives every new node list (the complete list, in registry order).
pub type NodeSink = Box<dyn Fn(Vec<ServiceInstance>) + Send + 'static>;

/// A running registration and node discovery.
pub trait Discovery: Send {
    /// The backend's name for the banner (`static`, `consul`, `etcd`, `nacos`).
    fn name(&self) -> &'static str;
    /// Makes `state` the shared state and registers it (the gate does it once: `hang` when
    /// shutdown begins). A no-op where nothing is registered.
    fn set_state(&self, state: InstanceState) -> Result<(), RegistryError>;
    /// Stops watching and deregisters.
    fn stop(self: Box<Self>);
    /// Stops watching and leaves the registration to the next process (`--upgrade`), which
    /// registered the same record.
    fn abandon(self: Box<Self>);
}

/// Starts the configured backend: registers `instance` (its state read from `state`) and hands
/// the first node list to `nodes` before returning, later ones as they change.
pub fn start(
    cfg: &RegistryConfig,
    static_nodes: &[StaticNode],
    instance: ServiceInstance,
    state: StateCell,
    nodes: NodeSink,
    metrics: std::sync::Arc<crate::metrics::ControlMetrics>,
) -> Result<Box<dyn Discovery>, RegistryError> {
    match cfg {
        RegistryConfig::Static => {
            nodes(static_nodes.iter().map(static_instance).collect());
            Ok(Box::new(StaticNodes))
        }
        RegistryConfig::Consul(c) => {
            let client = ConsulClient::new(&c.addr)?;
            let registrar =
                Registrar::start_counted(client, instance, state, c.clone(), nodes, metrics)?;
            Ok(Box::new(registrar))
        }
        RegistryConfig::Etcd(e) => {
            let registrar = etcd::Registrar::start(e.clone(), instance, state, nodes, metrics)?;
            Ok(Box::new(registrar))
        }
        RegistryConfig::Nacos(n) => {
            let registrar = nacos::Registrar::start(n.clone(), instance, state, nodes, metrics)?;
            Ok(Box::new(registrar))
        }
    }
}

/// `[[gatehouse.nodes]]`: a fixed node list, and no registration.
struct StaticNodes;

impl Discovery for StaticNodes {
    fn name(&self) -> &'static str {
        "static"
    }

    fn set_state(&self, _: InstanceState) -> Result<(), RegistryError> {
        Ok(())
    }

    fn stop(self: Box<Self>) {}

    fn abandon(self: Box<Self>) {}
}

impl<B: Backend> Discovery for worker::Registrar<B> {
    fn name(&self) -> &'static str {
        B::NAME
    }

    fn set_state(&self, state: InstanceState) -> Result<(), RegistryError> {
        worker::Registrar::set_state(self, state)
    }

    fn stop(self: Box<Self>) {
        worker::Registrar::stop(*self)
    }

    fn abandon(self: Box<Self>) {
        worker::Registrar::abandon(*self)
    }
}

/// The record a static `[[gatehouse.nodes]]` entry stands for.
pub fn static_instance(n: &StaticNode) -> ServiceInstance {
    ServiceInstance {
        id: n.id.clone(),
        name: "node".into(),
        kind: "node".into(),
        alias: n.name.clone(),
        state: n.state,
        events: n.events.clone(),
        routes: n.routes.clone(),
        endpoint: endpoint_url(&n.addr),
        weight: n.weight,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn the_static_list_is_delivered_once_before_start_returns() {
        let node = StaticNode {
            id: "n1".into(),
            name: "mahjong".into(),
            addr: "10.0.0.5:4000".into(),
            routes: vec![],
            events: vec![1, 3],
            weight: 2,
            state: InstanceState::Busy,
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let d = start(
            &RegistryConfig::Static,
            std::slice::from_ref(&node),
            ServiceInstance::default(),
            StateCell::new(InstanceState::Work),
            Box::new(move |n| sink.lock().unwrap().push(n)),
            Arc::default(),
        )
        .unwrap();
        assert_eq!(d.name(), "static");
        let lists = seen.lock().unwrap().clone();
        assert_eq!(lists.len(), 1);
        let n = &lists[0][0];
        assert_eq!(
            (n.id.as_str(), n.alias.as_str(), n.kind.as_str()),
            ("n1", "mahjong", "node")
        );
        assert_eq!(n.endpoint, "drpc://10.0.0.5:4000?is_secure=false");
        assert_eq!(
            (n.state, n.weight, n.events.clone()),
            (InstanceState::Busy, 2, vec![1, 3])
        );
        assert!(d.set_state(InstanceState::Hang).is_ok());
        d.stop();
    }
}
