//! due's etcd records as bytes: the key layout `/<namespace>/<name>/<id>` and the compact JSON
//! value of an instance (etcd-registry.md §3, §4). Pure functions; the client is `etcd.rs`.
//!
//! The value is what due's sonic encoder writes: members in struct order (id, name, kind, alias,
//! state, events, routes, services, endpoint, weight, metadata), each omitted when empty, zero
//! or false (route members too: route 0 is `{"s":true}`), no HTML escaping, raw UTF-8. Go writes
//! metadata keys in random order; here they are sorted (a `BTreeMap`), so values compare as bytes.
//! Decoding is lenient like Go's: member order is free, unknown members are ignored, missing
//! ones are zero.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{InstanceState, RouteInfo, ServiceInstance};

/// `/<namespace>/<name>/<id>`: `/services/gate/<gid>`.
pub fn key(namespace: &str, name: &str, id: &str) -> String {
    format!("/{namespace}/{name}/{id}")
}

/// The discovery prefix of service `name`: `/<namespace>/<name>/`, **with** the trailing slash
/// (due watches `/<namespace>/<name>` and so also lists `/services/node2/…`; a deliberate
/// deviation, etcd-registry.md §7.2).
pub fn prefix(namespace: &str, name: &str) -> String {
    format!("/{namespace}/{name}/")
}

/// The `range_end` that makes a range or watch cover every key starting with `prefix`: the
/// prefix with its last byte incremented (bytes 0xff are dropped first, as etcd's clients do;
/// an all-0xff or empty prefix means "to the end": `[0]`).
pub fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The JSON value of `inst` (etcd-registry.md §4.1).
pub fn encode(inst: &ServiceInstance) -> String {
    let value = Value {
        id: &inst.id,
        name: &inst.name,
        kind: &inst.kind,
        alias: &inst.alias,
        state: inst.state.as_str(),
        events: &inst.events,
        routes: inst.routes.iter().map(Route::from).collect(),
        services: &inst.services,
        endpoint: &inst.endpoint,
        weight: inst.weight,
        metadata: &inst.metadata,
    };
    // Serialising plain strings, integers and maps cannot fail.
    serde_json::to_string(&value).unwrap_or_default()
}

/// Decodes a value written by any due instance. Fails only when it is not a JSON object of the
/// record's shape (a member of the wrong type included, as in Go).
pub fn decode(bytes: &[u8]) -> Result<ServiceInstance, String> {
    // Through a `Value`: serde would also read a struct from a JSON array, Go does not.
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if !v.is_object() {
        return Err(format!("expected a JSON object, found {v}"));
    }
    let v: Decoded = serde_json::from_value(v).map_err(|e| e.to_string())?;
    Ok(ServiceInstance {
        id: v.id,
        name: v.name,
        kind: v.kind,
        alias: v.alias,
        state: InstanceState::from_text(&v.state),
        events: v.events.unwrap_or_default(),
        routes: v
            .routes
            .unwrap_or_default()
            .into_iter()
            .map(RouteInfo::from)
            .collect(),
        services: v.services.unwrap_or_default(),
        endpoint: v.endpoint,
        weight: v.weight,
        metadata: v.metadata.unwrap_or_default(),
    })
}

#[derive(Serialize)]
struct Value<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    kind: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    alias: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    state: &'a str,
    #[serde(skip_serializing_if = "<[i32]>::is_empty")]
    events: &'a [i32],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routes: Vec<Route>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    services: &'a [String],
    #[serde(skip_serializing_if = "str::is_empty")]
    endpoint: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    weight: i32,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: &'a BTreeMap<String, String>,
}

/// due's `registry.Route`: `{"i":id,"n":internal,"s":stateful,"a":authorized}`.
#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct Route {
    #[serde(skip_serializing_if = "is_zero")]
    i: i32,
    #[serde(skip_serializing_if = "is_false")]
    n: bool,
    #[serde(skip_serializing_if = "is_false")]
    s: bool,
    #[serde(skip_serializing_if = "is_false")]
    a: bool,
}

impl From<&RouteInfo> for Route {
    fn from(r: &RouteInfo) -> Route {
        Route {
            i: r.id,
            n: r.internal,
            s: r.stateful,
            a: r.authorized,
        }
    }
}

impl From<Route> for RouteInfo {
    fn from(r: Route) -> RouteInfo {
        RouteInfo {
            id: r.i,
            internal: r.n,
            stateful: r.s,
            authorized: r.a,
        }
    }
}

/// due's compact JSON of a route list, `[{"i":1},{"i":2,"s":true}]`: the `routes` member here,
/// and the `routes` metadata value of due's Nacos registry (`nacos_meta`).
pub(super) fn routes_json(routes: &[RouteInfo]) -> String {
    let routes: Vec<Route> = routes.iter().map(Route::from).collect();
    serde_json::to_string(&routes).unwrap_or_default()
}

/// Reads [`routes_json`]'s form back (lenient like [`decode`]).
pub(super) fn routes_from_json(text: &str) -> Result<Vec<RouteInfo>, String> {
    let routes: Vec<Route> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(routes.into_iter().map(RouteInfo::from).collect())
}

/// The lenient reading: every member optional; `null` reads as empty, as in Go.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Decoded {
    #[serde(deserialize_with = "null_as_default")]
    id: String,
    #[serde(deserialize_with = "null_as_default")]
    name: String,
    #[serde(deserialize_with = "null_as_default")]
    kind: String,
    #[serde(deserialize_with = "null_as_default")]
    alias: String,
    #[serde(deserialize_with = "null_as_default")]
    state: String,
    events: Option<Vec<i32>>,
    routes: Option<Vec<Route>>,
    services: Option<Vec<String>>,
    #[serde(deserialize_with = "null_as_default")]
    endpoint: String,
    #[serde(deserialize_with = "null_as_default")]
    weight: i32,
    metadata: Option<BTreeMap<String, String>>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(metadata: &[(&str, &str)]) -> ServiceInstance {
        ServiceInstance {
            id: "3f9e5c1a-8b2d-11f0-a1b2-0242ac110002".into(),
            name: "gate".into(),
            kind: "gate".into(),
            alias: "gate".into(),
            state: InstanceState::Work,
            endpoint: "drpc://10.0.0.5:40123?is_secure=false".into(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ServiceInstance::default()
        }
    }

    #[test]
    fn keys_and_prefixes() {
        assert_eq!(key("services", "gate", "g1"), "/services/gate/g1");
        assert_eq!(key("svc", "node", "n1"), "/svc/node/n1");
        assert_eq!(prefix("services", "node"), "/services/node/");
        assert_eq!(range_end(b"/services/node/"), b"/services/node0");
        assert_eq!(range_end(b"/services/node"), b"/services/nodf");
        assert_eq!(range_end(b"a\xff\xff"), b"b");
        assert_eq!(range_end(b"\xff"), b"\0");
        assert_eq!(range_end(b""), b"\0");
    }

    /// The values of etcd-registry.md §4.2, written by due v2.4.1 and read back from etcd.
    #[test]
    fn gate_values_are_the_spec_bytes() {
        let mut g = gate(&[("region", "eu")]);
        assert_eq!(
            encode(&g),
            r#"{"id":"3f9e5c1a-8b2d-11f0-a1b2-0242ac110002","name":"gate","kind":"gate","alias":"gate","state":"work","endpoint":"drpc://10.0.0.5:40123?is_secure=false","metadata":{"region":"eu"}}"#
        );
        g.state = InstanceState::Hang;
        assert_eq!(
            encode(&g),
            r#"{"id":"3f9e5c1a-8b2d-11f0-a1b2-0242ac110002","name":"gate","kind":"gate","alias":"gate","state":"hang","endpoint":"drpc://10.0.0.5:40123?is_secure=false","metadata":{"region":"eu"}}"#
        );
        let bare = ServiceInstance {
            id: "cfg-gate-1".into(),
            endpoint: "drpc://127.0.0.1:40000?is_secure=false".into(),
            ..gate(&[])
        };
        assert_eq!(
            encode(&bare),
            r#"{"id":"cfg-gate-1","name":"gate","kind":"gate","alias":"gate","state":"work","endpoint":"drpc://127.0.0.1:40000?is_secure=false"}"#
        );
    }

    fn spec_node() -> ServiceInstance {
        let route = |id, internal, stateful, authorized| RouteInfo {
            id,
            internal,
            stateful,
            authorized,
        };
        ServiceInstance {
            id: "6b1f9e2a-8b2d-11f0-a1b2-0242ac110003".into(),
            name: "node".into(),
            kind: "node".into(),
            alias: "mahjong".into(),
            state: InstanceState::Work,
            events: vec![1, 3],
            routes: vec![
                route(1, false, false, false),
                route(2, false, true, false),
                route(3, true, false, true),
                route(0, false, true, false),
                route(-5, true, false, false),
            ],
            endpoint: "drpc://10.0.0.6:40124?is_secure=false".into(),
            weight: 1,
            metadata: [("zone", "a<b>&c"), ("lang", "中文")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ServiceInstance::default()
        }
    }

    /// The node value of §4.2 exactly as due wrote it (metadata in Go's random order): decoded
    /// member by member, and re-encoded with the metadata sorted.
    #[test]
    fn node_value_round_trip() {
        let go = r#"{"id":"6b1f9e2a-8b2d-11f0-a1b2-0242ac110003","name":"node","kind":"node","alias":"mahjong","state":"work","events":[1,3],"routes":[{"i":1},{"i":2,"s":true},{"i":3,"n":true,"a":true},{"s":true},{"i":-5,"n":true}],"endpoint":"drpc://10.0.0.6:40124?is_secure=false","weight":1,"metadata":{"zone":"a<b>&c","lang":"中文"}}"#;
        let node = decode(go.as_bytes()).unwrap();
        assert_eq!(node, spec_node());
        assert_eq!(
            encode(&node),
            go.replace(
                r#"{"zone":"a<b>&c","lang":"中文"}"#,
                r#"{"lang":"中文","zone":"a<b>&c"}"#
            )
        );
    }

    #[test]
    fn mesh_value() {
        let go = r#"{"id":"6b1f9e2a-8b2d-11f0-a1b2-0242ac110003","name":"mesh","kind":"mesh","alias":"mahjong","state":"work","services":["greeter.Greeter"],"endpoint":"grpc://10.0.0.6:40125","weight":1}"#;
        let mesh = decode(go.as_bytes()).unwrap();
        assert_eq!(mesh.services, ["greeter.Greeter"]);
        assert_eq!(encode(&mesh), go);
    }

    #[test]
    fn decoding_is_lenient_like_go() {
        // Any member order, unknown members, nulls, missing members.
        let v = decode(
            br#"{"weight":2,"extra":{"x":[1]},"state":"busy","id":"n1","routes":null,"metadata":null,"alias":null}"#,
        )
        .unwrap();
        assert_eq!((v.id.as_str(), v.weight), ("n1", 2));
        assert_eq!(v.state, InstanceState::Busy);
        assert!(v.routes.is_empty() && v.metadata.is_empty() && v.alias.is_empty());
        let v = decode(b"{}").unwrap();
        assert_eq!(v, ServiceInstance::default());
        // An unknown state text is `shut` (see InstanceState::from_text).
        assert_eq!(
            decode(br#"{"state":"weird"}"#).unwrap().state,
            InstanceState::Shut
        );
    }

    #[test]
    fn undecodable_values() {
        for bad in [
            &b"not json"[..],
            b"",
            b"[]",
            b"\"x\"",
            br#"{"weight":"1"}"#,
            br#"{"events":[1.5]}"#,
            br#"{"routes":[{"i":"1"}]}"#,
            br#"{"metadata":{"a":1}}"#,
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
