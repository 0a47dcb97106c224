//! due's Nacos records as data: the instance metadata map due's `registry/nacos` writes, and the
//! instance read back from a Nacos host entry (docs/ops/nacos.md). Pure functions; the client is
//! `nacos.rs`.
//!
//! A Nacos instance carries its own `ip`, `port`, `weight` (always 1: due's weight travels in the
//! metadata), `healthy`, `enabled`, `ephemeral`, `clusterName`; everything else of due's record is
//! in string metadata: `id`, `name`, `kind`, `alias`, `state`, `endpoint` always; `weight` in
//! decimal when positive; `routes`, `events`, `services` as compact JSON when non-empty (routes
//! in etcd's form, `[{"i":1},{"i":2,"s":true}]`); `metadata` as a JSON object text when non-empty.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::etcd_value::{routes_from_json, routes_json};
use super::{InstanceState, ServiceInstance};

/// The metadata map of `inst`, as due's Nacos registrar writes it.
pub fn encode(inst: &ServiceInstance) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for (k, v) in [
        ("id", &inst.id),
        ("name", &inst.name),
        ("kind", &inst.kind),
        ("alias", &inst.alias),
        ("endpoint", &inst.endpoint),
    ] {
        m.insert(k.to_string(), v.clone());
    }
    m.insert("state".into(), inst.state.as_str().to_string());
    if inst.weight > 0 {
        m.insert("weight".into(), inst.weight.to_string());
    }
    if !inst.routes.is_empty() {
        m.insert("routes".into(), routes_json(&inst.routes));
    }
    // Plain integers and strings: serialising cannot fail.
    if !inst.events.is_empty() {
        m.insert(
            "events".into(),
            serde_json::to_string(&inst.events).unwrap_or_default(),
        );
    }
    if !inst.services.is_empty() {
        m.insert(
            "services".into(),
            serde_json::to_string(&inst.services).unwrap_or_default(),
        );
    }
    if !inst.metadata.is_empty() {
        m.insert(
            "metadata".into(),
            serde_json::to_string(&inst.metadata).unwrap_or_default(),
        );
    }
    m
}

/// One entry of `hosts` in Nacos's instance list (`GET /v1/ns/instance/list`), the members read.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    #[serde(default)]
    pub ip: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub healthy: bool,
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// The instance a host entry stands for; `None` for a host due's watcher drops (not healthy or
/// not enabled). A member that does not decode (routes that are not JSON, …) is an error, as in
/// due, where it fails the whole list.
pub fn decode(host: &Host) -> Result<Option<ServiceInstance>, String> {
    if !host.healthy || !host.enabled {
        return Ok(None);
    }
    let m = &host.metadata;
    let text = |k: &str| m.get(k).cloned().unwrap_or_default();
    let json = |k: &str| m.get(k).filter(|v| !v.is_empty());
    let mut inst = ServiceInstance {
        id: text("id"),
        name: text("name"),
        kind: text("kind"),
        alias: text("alias"),
        state: InstanceState::from_text(&text("state")),
        endpoint: text("endpoint"),
        // Go's lenient conversion: anything that is not an integer reads as 0.
        weight: m.get("weight").and_then(|w| w.parse().ok()).unwrap_or(0),
        ..ServiceInstance::default()
    };
    if let Some(v) = json("routes") {
        inst.routes = routes_from_json(v).map_err(|e| format!("routes {v:?}: {e}"))?;
    }
    if let Some(v) = json("events") {
        inst.events = serde_json::from_str(v).map_err(|e| format!("events {v:?}: {e}"))?;
    }
    if let Some(v) = json("services") {
        inst.services = serde_json::from_str(v).map_err(|e| format!("services {v:?}: {e}"))?;
    }
    if let Some(v) = json("metadata") {
        inst.metadata = serde_json::from_str(v).map_err(|e| format!("metadata {v:?}: {e}"))?;
    }
    Ok(Some(inst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RouteInfo;

    fn node() -> ServiceInstance {
        ServiceInstance {
            id: "n1".into(),
            name: "node".into(),
            kind: "node".into(),
            alias: "game".into(),
            state: InstanceState::Busy,
            events: vec![1, 3],
            routes: vec![
                RouteInfo {
                    id: 1,
                    ..RouteInfo::default()
                },
                RouteInfo {
                    id: 2,
                    stateful: true,
                    ..RouteInfo::default()
                },
                RouteInfo {
                    id: 3,
                    internal: true,
                    authorized: true,
                    ..RouteInfo::default()
                },
            ],
            endpoint: "drpc://127.0.0.1:40001?is_secure=false".into(),
            weight: 5,
            metadata: [("region".to_string(), "eu".to_string())].into(),
            ..ServiceInstance::default()
        }
    }

    #[test]
    fn encodes_as_due_does() {
        let m = encode(&node());
        let want: BTreeMap<String, String> = [
            ("id", "n1"),
            ("name", "node"),
            ("kind", "node"),
            ("alias", "game"),
            ("state", "busy"),
            ("endpoint", "drpc://127.0.0.1:40001?is_secure=false"),
            ("weight", "5"),
            (
                "routes",
                r#"[{"i":1},{"i":2,"s":true},{"i":3,"n":true,"a":true}]"#,
            ),
            ("events", "[1,3]"),
            ("metadata", r#"{"region":"eu"}"#),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(m, want);
    }

    #[test]
    fn a_gate_has_only_the_six_members() {
        let gate = ServiceInstance {
            id: "g1".into(),
            name: "gate".into(),
            kind: "gate".into(),
            alias: "gate".into(),
            state: InstanceState::Work,
            endpoint: "drpc://127.0.0.1:40000?is_secure=false".into(),
            ..ServiceInstance::default()
        };
        let keys: Vec<_> = encode(&gate).into_keys().collect();
        assert_eq!(keys, ["alias", "endpoint", "id", "kind", "name", "state"]);
    }

    #[test]
    fn decode_round_trips_and_drops_what_due_drops() {
        let host = Host {
            ip: "127.0.0.1".into(),
            port: 40001,
            healthy: true,
            enabled: true,
            metadata: encode(&node()),
        };
        assert_eq!(decode(&host), Ok(Some(node())));
        for (healthy, enabled) in [(false, true), (true, false)] {
            let h = Host {
                healthy,
                enabled,
                ..host.clone()
            };
            assert_eq!(decode(&h), Ok(None));
        }
        let mut bad = host.clone();
        bad.metadata.insert("routes".into(), "[1".into());
        assert!(decode(&bad).unwrap_err().starts_with("routes"));
        let mut lenient = host;
        lenient.metadata.insert("weight".into(), "x".into());
        assert_eq!(decode(&lenient).unwrap().unwrap().weight, 0);
    }
}
