//! The Consul `Meta` encoding of a [`ServiceInstance`] (cluster-protocol.md §5.2): what we
//! register, what we read back. Owns the Meta keys, the `routes-N` chunk format and due's tolerant
//! decoding rules.
//!
//! Consul only stores flat string→string Meta (values ≤ 512 characters, ≤ 64 keys), so due
//! flattens the instance record into it: scalar fields under fixed keys, lists as compact JSON or
//! as the `<id>-<flags>` route format, and user metadata under `_`-prefixed keys so it can never
//! collide with the fixed ones. Decoding never fails — a malformed field just decodes as empty or
//! 0, exactly like the Go watcher — because one bad node must not stop the gate from routing to
//! all the others.

use std::collections::BTreeMap;

use super::{InstanceState, RouteInfo, ServiceInstance};

/// Consul's limit on one Meta value; route chunks are packed up to it.
pub const META_VALUE_LIMIT: usize = 512;

/// Route flag bits in a `<id>-<flags>` item.
const FLAG_INTERNAL: i64 = 1;
const FLAG_STATEFUL: i64 = 2;
const FLAG_AUTHORIZED: i64 = 4;

/// Prefix that marks a Meta key as user metadata.
const METADATA_PREFIX: char = '_';

/// The Meta map due registers for `inst`.
///
/// Always present: `id`, `kind`, `alias`, `state`, `endpoint`. Only when meaningful: `weight`
/// (> 0), `events` and `services` (non-empty, compact JSON), `routes-0`, `routes-1`, … (non-empty
/// route list). Every metadata entry `k=v` becomes `_k=v`. A gate therefore registers exactly the
/// five fixed keys plus its `_` metadata.
pub fn encode_meta(inst: &ServiceInstance) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::new();
    meta.insert("id".to_string(), inst.id.clone());
    meta.insert("kind".to_string(), inst.kind.clone());
    meta.insert("alias".to_string(), inst.alias.clone());
    meta.insert("state".to_string(), inst.state.as_str().to_string());
    meta.insert("endpoint".to_string(), inst.endpoint.clone());
    if inst.weight > 0 {
        meta.insert("weight".to_string(), inst.weight.to_string());
    }
    if !inst.events.is_empty() {
        // Serialising a list of integers cannot fail.
        let json = serde_json::to_string(&inst.events).expect("events serialise");
        meta.insert("events".to_string(), json);
    }
    if !inst.services.is_empty() {
        // serde_json, like due's encoder, writes compact JSON without HTML escaping.
        let json = serde_json::to_string(&inst.services).expect("services serialise");
        meta.insert("services".to_string(), json);
    }
    for (n, chunk) in route_chunks(&inst.routes).into_iter().enumerate() {
        meta.insert(format!("routes-{n}"), chunk);
    }
    for (key, value) in &inst.metadata {
        meta.insert(format!("{METADATA_PREFIX}{key}"), value.clone());
    }
    meta
}

/// The route list as `routes-N` values: items `<id>-<flags>` (flags = internal·1 + stateful·2 +
/// authorized·4) joined by `,`, packed greedily so that no value exceeds [`META_VALUE_LIMIT`].
///
/// Greedy means: an item goes into the current chunk unless `,item` would push it past the limit,
/// in which case a new chunk starts — the same packing as the Go encoder, so our Meta is
/// byte-identical to a Go instance with the same routes. Empty input gives no chunks.
pub fn route_chunks(routes: &[RouteInfo]) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    for route in routes {
        let flags = i64::from(route.internal) * FLAG_INTERNAL
            + i64::from(route.stateful) * FLAG_STATEFUL
            + i64::from(route.authorized) * FLAG_AUTHORIZED;
        let item = format!("{}-{}", route.id, flags);
        if !current.is_empty() && current.len() + 1 + item.len() > META_VALUE_LIMIT {
            chunks.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(&item);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Rebuilds an instance from the `Service.Service` name and `Service.Meta` of one Consul health
/// entry, with the Go watcher's tolerant rules:
///
/// * `id`, `kind`, `alias`, `endpoint` are copied; `state` is read with
///   [`InstanceState::from_text`] (unknown text → `Shut`).
/// * `weight` is parsed as a decimal integer; anything invalid → 0.
/// * `events` / `services` are JSON arrays; a parse error leaves the list empty.
/// * Every key that splits on `-` into exactly `routes` and one more part is a route chunk. Each
///   `,`-separated item is kept only if it splits on `-` into exactly two parts — so an item for
///   a negative route ID (`-5-2`) is lost, as with Go — and both parts are parsed as integers
///   (invalid → 0, so `x-y` becomes route 0 with no flags).
/// * Keys starting with `_` become metadata with that one underscore removed.
/// * Everything else — including Consul's own Address/Port, which due never uses — is ignored.
///
/// Chunks are decoded in ascending chunk number (`routes-2` before `routes-10`). Go iterates a
/// map there, so its order is random; the order only affects the order of the route list, not
/// any routing decision, and a fixed order keeps our view deterministic.
pub fn decode_meta(service_name: &str, meta: &BTreeMap<String, String>) -> ServiceInstance {
    let mut inst = ServiceInstance {
        name: service_name.to_string(),
        ..ServiceInstance::default()
    };
    let mut chunks: Vec<(i64, &str)> = Vec::new();
    for (key, value) in meta {
        match key.as_str() {
            "id" => inst.id = value.clone(),
            "kind" => inst.kind = value.clone(),
            "alias" => inst.alias = value.clone(),
            "state" => inst.state = InstanceState::from_text(value),
            "endpoint" => inst.endpoint = value.clone(),
            "weight" => inst.weight = saturate_i32(go_parse_int(value)),
            "events" => inst.events = decode_events(value),
            "services" => inst.services = serde_json::from_str(value).unwrap_or_default(),
            _ => {
                if let Some(name) = key.strip_prefix(METADATA_PREFIX) {
                    inst.metadata.insert(name.to_string(), value.clone());
                } else if let Some(n) = route_chunk_number(key) {
                    chunks.push((n, value));
                }
            }
        }
    }
    // Stable: equal numbers (`routes-1`, `routes-01`) keep the map's key order.
    chunks.sort_by_key(|&(n, _)| n);
    for (_, value) in chunks {
        inst.routes
            .extend(value.split(',').filter_map(decode_route_item));
    }
    inst
}

/// `Some(n)` when `key` is `routes-<n>` (exactly two `-`-separated parts, the first `routes`).
/// Like Go, the second part need not be a number: `routes-x` is a chunk numbered 0.
fn route_chunk_number(key: &str) -> Option<i64> {
    let mut parts = key.split('-');
    let (Some("routes"), Some(n), None) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    Some(go_parse_int(n))
}

/// One `<id>-<flags>` item; `None` unless it has exactly two `-`-separated parts.
fn decode_route_item(item: &str) -> Option<RouteInfo> {
    let mut parts = item.split('-');
    let (Some(id), Some(flags), None) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let flags = go_parse_int(flags);
    Some(RouteInfo {
        // Go converts with int32(int64): out-of-range IDs wrap rather than saturate.
        id: go_parse_int(id) as i32,
        internal: flags & FLAG_INTERNAL != 0,
        stateful: flags & FLAG_STATEFUL != 0,
        authorized: flags & FLAG_AUTHORIZED != 0,
    })
}

/// The `events` JSON array. Go decodes into `[]int` (64-bit); values outside `i32` can never
/// name a real event (1..3), so they are dropped instead of failing the whole list.
fn decode_events(json: &str) -> Vec<i32> {
    serde_json::from_str::<Vec<i64>>(json)
        .map(|all| {
            all.into_iter()
                .filter_map(|e| i32::try_from(e).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// due's string→int conversion (`xconv.Int64`, i.e. Go `strconv.ParseInt(s, 10, 64)` with the
/// error ignored): an optional `+`/`-` and at least one ASCII digit, nothing else (no spaces,
/// no `_`); a syntax error gives 0, an out-of-range value the nearest `i64` bound.
fn go_parse_int(text: &str) -> i64 {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    // All digits: the only possible parse error left is overflow.
    match text.parse::<i64>() {
        Ok(n) => n,
        Err(_) if negative => i64::MIN,
        Err(_) => i64::MAX,
    }
}

/// Our `weight` is an `i32` where Go's is a 64-bit `int`; saturating keeps a huge weight huge
/// (and positive) rather than wrapping it into a negative one.
fn saturate_i32(n: i64) -> i32 {
    n.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn route(id: i32, internal: bool, stateful: bool, authorized: bool) -> RouteInfo {
        RouteInfo {
            id,
            internal,
            stateful,
            authorized,
        }
    }

    fn gate(metadata: &[(&str, &str)]) -> ServiceInstance {
        ServiceInstance {
            id: "g1".into(),
            name: "gate".into(),
            kind: "gate".into(),
            alias: "gate".into(),
            state: InstanceState::Work,
            endpoint: "drpc://10.0.0.5:40123?is_secure=false".into(),
            metadata: meta(metadata),
            ..ServiceInstance::default()
        }
    }

    /// Routes 0..99 internal+stateful, 1000 authorized, −5 stateful (cluster-protocol.md §10.4).
    fn vector_routes() -> Vec<RouteInfo> {
        let mut routes: Vec<_> = (0..100).map(|id| route(id, true, true, false)).collect();
        routes.push(route(1000, false, false, true));
        routes.push(route(-5, false, true, false));
        routes
    }

    #[test]
    fn gate_meta_is_exactly_the_spec_example() {
        let encoded = encode_meta(&gate(&[("region", "eu")]));
        assert_eq!(
            encoded,
            meta(&[
                ("_region", "eu"),
                ("alias", "gate"),
                ("endpoint", "drpc://10.0.0.5:40123?is_secure=false"),
                ("id", "g1"),
                ("kind", "gate"),
                ("state", "work"),
            ])
        );
    }

    #[test]
    fn state_text_is_written() {
        let mut inst = gate(&[]);
        inst.state = InstanceState::Hang;
        assert_eq!(encode_meta(&inst)["state"], "hang");
        inst.state = InstanceState::Shut;
        assert_eq!(encode_meta(&inst)["state"], "shut");
    }

    #[test]
    fn fixed_keys_are_written_even_when_empty() {
        let encoded = encode_meta(&ServiceInstance::default());
        assert_eq!(
            encoded,
            meta(&[
                ("alias", ""),
                ("endpoint", ""),
                ("id", ""),
                ("kind", ""),
                ("state", "shut"),
            ])
        );
    }

    #[test]
    fn weight_only_when_positive() {
        let mut inst = gate(&[]);
        for (weight, expected) in [(0, None), (-3, None), (1, Some("1")), (250, Some("250"))] {
            inst.weight = weight;
            assert_eq!(
                encode_meta(&inst).get("weight").map(String::as_str),
                expected,
                "{weight}"
            );
        }
    }

    #[test]
    fn events_and_services_compact_json_only_when_non_empty() {
        let mut inst = gate(&[]);
        let encoded = encode_meta(&inst);
        assert!(!encoded.contains_key("events"));
        assert!(!encoded.contains_key("services"));

        inst.events = vec![1, 3];
        inst.services = vec!["mail".into(), "say \"hi\" <b>".into()];
        let encoded = encode_meta(&inst);
        assert_eq!(encoded["events"], "[1,3]");
        assert_eq!(encoded["services"], r#"["mail","say \"hi\" <b>"]"#);
    }

    #[test]
    fn metadata_keys_get_one_underscore() {
        let encoded = encode_meta(&gate(&[("id", "x"), ("_a", "y"), ("", "z")]));
        assert_eq!(encoded["id"], "g1");
        assert_eq!(encoded["_id"], "x");
        assert_eq!(encoded["__a"], "y");
        assert_eq!(encoded["_"], "z");
    }

    #[test]
    fn no_routes_no_route_keys() {
        assert!(route_chunks(&[]).is_empty());
        assert!(!encode_meta(&gate(&[]))
            .keys()
            .any(|k| k.starts_with("routes")));
    }

    #[test]
    fn route_vector_small() {
        let routes = [
            route(1, false, false, false),
            route(2, false, true, false),
            route(3, true, false, true),
        ];
        let mut inst = gate(&[]);
        inst.routes = routes.to_vec();
        let encoded = encode_meta(&inst);
        assert_eq!(encoded["routes-0"], "1-0,2-2,3-5");
        assert!(!encoded.contains_key("routes-1"));
        assert_eq!(decode_meta("node", &encoded).routes, routes);
    }

    #[test]
    fn route_flag_values() {
        let cases = [
            (route(7, false, false, false), "7-0"),
            (route(7, true, false, false), "7-1"),
            (route(7, false, true, false), "7-2"),
            (route(7, true, true, false), "7-3"),
            (route(7, false, false, true), "7-4"),
            (route(7, true, false, true), "7-5"),
            (route(7, false, true, true), "7-6"),
            (route(7, true, true, true), "7-7"),
            (route(0, false, false, false), "0-0"),
            (route(i32::MAX, true, true, true), "2147483647-7"),
        ];
        for (r, text) in cases {
            assert_eq!(route_chunks(&[r]), vec![text.to_string()]);
            assert_eq!(decode_route_item(text), Some(r));
        }
    }

    #[test]
    fn route_vector_501_characters() {
        let mut inst = gate(&[]);
        inst.routes = vector_routes();
        let encoded = encode_meta(&inst);
        let chunk = &encoded["routes-0"];
        assert_eq!(chunk.len(), 501);
        assert!(chunk.starts_with("0-3,1-3,2-3,"));
        assert!(chunk.ends_with(",98-3,99-3,1000-4,-5-2"));
        assert!(!encoded.contains_key("routes-1"));

        let decoded = decode_meta("node", &encoded);
        assert_eq!(decoded.routes.len(), 101);
        assert_eq!(decoded.routes[..], vector_routes()[..101]);
        assert!(decoded.routes.iter().all(|r| r.id >= 0));
    }

    #[test]
    fn long_route_list_needs_routes_1() {
        let routes: Vec<_> = (0..200).map(|id| route(id, false, true, true)).collect();
        let chunks = route_chunks(&routes);
        assert!(chunks.len() >= 2, "{} chunks", chunks.len());
        for chunk in &chunks {
            assert!(chunk.len() <= META_VALUE_LIMIT);
        }
        // Greedy: each chunk is full — the next item would not have fitted.
        for pair in chunks.windows(2) {
            let next_item = pair[1].split(',').next().unwrap();
            assert!(pair[0].len() + 1 + next_item.len() > META_VALUE_LIMIT);
        }
        // Items are never split across chunks and keep their order.
        let rejoined = chunks.join(",");
        let expected: Vec<String> = (0..200).map(|id| format!("{id}-6")).collect();
        assert_eq!(rejoined, expected.join(","));

        let mut inst = gate(&[]);
        inst.routes = routes.clone();
        let encoded = encode_meta(&inst);
        assert_eq!(encoded["routes-0"], chunks[0]);
        assert_eq!(encoded["routes-1"], chunks[1]);
        assert_eq!(decode_meta("node", &encoded).routes, routes);
    }

    #[test]
    fn chunk_limit_boundaries() {
        // 101 × "10-0" = 404 characters + 100 commas = 504; ",10000-0" adds 8 → exactly 512,
        // which is still allowed.
        let mut routes: Vec<_> = (0..101).map(|_| route(10, false, false, false)).collect();
        routes.push(route(10000, false, false, false));
        let chunks = route_chunks(&routes);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].len(), 512);

        // 102 × "10-0" = 408 + 101 commas = 509; ",7-0" adds 4 → 513: a new chunk starts.
        let mut routes: Vec<_> = (0..102).map(|_| route(10, false, false, false)).collect();
        routes.push(route(7, false, false, false));
        let chunks = route_chunks(&routes);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].len(), 509);
        assert_eq!(chunks[1], "7-0");
    }

    #[test]
    fn decode_gate_record() {
        let decoded = decode_meta("gate", &encode_meta(&gate(&[("region", "eu")])));
        assert_eq!(decoded, gate(&[("region", "eu")]));
    }

    #[test]
    fn node_record_round_trips() {
        let node = ServiceInstance {
            id: "n1".into(),
            name: "node".into(),
            kind: "node".into(),
            alias: "mahjong".into(),
            state: InstanceState::Busy,
            events: vec![1, 2, 3],
            routes: (0..300)
                .map(|id| route(id * 7, id % 2 == 0, id % 3 == 0, id % 5 == 0))
                .collect(),
            services: vec![],
            endpoint: "drpc://[fd00::5]:40123?is_secure=false".into(),
            weight: 3,
            metadata: meta(&[("zone", "a"), ("ver", "1.2")]),
        };
        let encoded = encode_meta(&node);
        assert!(encoded.contains_key("routes-2"), "{:?}", encoded.keys());
        assert_eq!(decode_meta("node", &encoded), node);

        let mesh = ServiceInstance {
            name: "mesh".into(),
            kind: "mesh".into(),
            services: vec!["wallet".into(), "mail".into()],
            routes: vec![],
            events: vec![],
            weight: 0,
            ..node
        };
        assert_eq!(decode_meta("mesh", &encode_meta(&mesh)), mesh);
    }

    #[test]
    fn decode_takes_name_from_the_service_not_meta() {
        let decoded = decode_meta("node", &meta(&[("name", "x"), ("kind", "node")]));
        assert_eq!(decoded.name, "node");
        assert_eq!(decoded.kind, "node");
        assert!(decoded.metadata.is_empty());
    }

    #[test]
    fn decode_empty_meta() {
        let decoded = decode_meta("node", &BTreeMap::new());
        assert_eq!(
            decoded,
            ServiceInstance {
                name: "node".into(),
                ..ServiceInstance::default()
            }
        );
    }

    #[test]
    fn decode_unknown_state_is_shut() {
        for text in ["", "Work", "down"] {
            assert_eq!(
                decode_meta("node", &meta(&[("state", text)])).state,
                InstanceState::Shut
            );
        }
        assert_eq!(
            decode_meta("node", &meta(&[("state", "busy")])).state,
            InstanceState::Busy
        );
    }

    #[test]
    fn decode_weight() {
        let cases = [
            ("1", 1),
            ("250", 250),
            ("+7", 7),
            ("-3", -3),
            ("007", 7),
            ("", 0),
            ("abc", 0),
            (" 7", 0),
            ("7 ", 0),
            ("1.5", 0),
            ("1_000", 0),
            ("+", 0),
            ("-", 0),
            ("0x10", 0),
            ("99999999999", i32::MAX),
            ("-99999999999", i32::MIN),
            ("99999999999999999999999", i32::MAX),
        ];
        for (text, weight) in cases {
            assert_eq!(
                decode_meta("node", &meta(&[("weight", text)])).weight,
                weight,
                "{text:?}"
            );
        }
    }

    #[test]
    fn decode_events() {
        let cases: [(&str, &[i32]); 9] = [
            ("[1,3]", &[1, 3]),
            ("[ 1 , 2 ]", &[1, 2]),
            ("[]", &[]),
            ("null", &[]),
            ("[1,", &[]),
            ("1", &[]),
            ("[1,\"2\"]", &[]),
            ("[1.5]", &[]),
            ("[1,99999999999,3]", &[1, 3]),
        ];
        for (text, events) in cases {
            assert_eq!(
                decode_meta("node", &meta(&[("events", text)])).events,
                events,
                "{text:?}"
            );
        }
    }

    #[test]
    fn decode_services() {
        let decoded = decode_meta("mesh", &meta(&[("services", r#"["a","b\"c"]"#)]));
        assert_eq!(decoded.services, ["a", "b\"c"]);
        for bad in ["[\"a\",", "[1]", "\"a\"", "{}"] {
            assert!(
                decode_meta("mesh", &meta(&[("services", bad)]))
                    .services
                    .is_empty(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn decode_metadata_strips_one_underscore() {
        let decoded = decode_meta(
            "node",
            &meta(&[("_zone", "a"), ("__b", "c"), ("_", "e"), ("_id", "f")]),
        );
        assert_eq!(
            decoded.metadata,
            meta(&[("zone", "a"), ("_b", "c"), ("", "e"), ("id", "f")])
        );
        assert_eq!(decoded.id, "");
    }

    #[test]
    fn decode_ignores_unknown_keys() {
        let decoded = decode_meta(
            "node",
            &meta(&[
                ("Address", "10.0.0.9"),
                ("ID", "x"),
                ("Weight", "3"),
                ("routes", "1-0"),
                ("Routes-0", "1-0"),
                ("routes-0-1", "1-0"),
                ("route-0", "1-0"),
                ("xroutes-0", "1-0"),
            ]),
        );
        assert_eq!(
            decoded,
            ServiceInstance {
                name: "node".into(),
                ..ServiceInstance::default()
            }
        );
    }

    #[test]
    fn decode_route_items_tolerantly() {
        let decoded = decode_meta(
            "node",
            &meta(&[(
                "routes-0",
                "1-0,-5-2,5,1-2-3,,x-y,6-z,q-3,7-8,8-15,9--1,+10-+2,4294967297-0",
            )]),
        );
        assert_eq!(
            decoded.routes,
            [
                route(1, false, false, false),
                route(0, false, false, false), // x-y
                route(6, false, false, false), // 6-z
                route(0, true, true, false),   // q-3
                route(7, false, false, false), // flag 8 is no known bit
                route(8, true, true, true),    // 15 → all three bits
                route(10, false, true, false), // +10-+2
                route(1, false, false, false), // int32(4294967297) wraps to 1
            ]
        );
    }

    #[test]
    fn decode_empty_route_chunk() {
        let decoded = decode_meta("node", &meta(&[("routes-0", "")]));
        assert!(decoded.routes.is_empty());
    }

    #[test]
    fn decode_chunks_in_numeric_order() {
        let decoded = decode_meta(
            "node",
            &meta(&[
                ("routes-10", "10-0"),
                ("routes-2", "2-0"),
                ("routes-0", "0-0"),
                ("routes-1", "1-0"),
                ("routes-x", "99-0"), // non-numeric index counts as 0
                ("routes-", "98-0"),  // empty index too
            ]),
        );
        let ids: Vec<i32> = decoded.routes.iter().map(|r| r.id).collect();
        // Index 0 entries in key order: "routes-", "routes-0", "routes-x".
        assert_eq!(ids, [98, 0, 99, 1, 2, 10]);
    }

    #[test]
    fn go_parse_int_rules() {
        assert_eq!(go_parse_int("0"), 0);
        assert_eq!(go_parse_int("-0"), 0);
        assert_eq!(go_parse_int("42"), 42);
        assert_eq!(go_parse_int("-42"), -42);
        assert_eq!(go_parse_int("+42"), 42);
        assert_eq!(go_parse_int("9223372036854775807"), i64::MAX);
        assert_eq!(go_parse_int("9223372036854775808"), i64::MAX);
        assert_eq!(go_parse_int("-9223372036854775808"), i64::MIN);
        assert_eq!(go_parse_int("-9223372036854775809"), i64::MIN);
        for bad in ["", "+", "-", "--1", "+-1", "1e3", "٣", " 1", "1\n"] {
            assert_eq!(go_parse_int(bad), 0, "{bad:?}");
        }
    }
}
