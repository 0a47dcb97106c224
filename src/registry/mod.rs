//! The registry's abstract instance record (due's `registry.ServiceInstance`), independent of backend.
//! Owns instance states and their text/byte forms, route flags, and the `drpc://` endpoint string.
//!
//! Every backend (Consul, etcd) stores and returns this same record; the dispatcher builds its
//! route table from a list of them (see [`crate::dispatch::routes`]). Keeping the record free of
//! any backend detail lets the codecs and the dispatcher be tested without a registry running.

use std::collections::BTreeMap;
use std::fmt;

pub mod consul;
pub mod consul_meta;

/// One registered instance — a gate, a node or a mesh — as the registry publishes it.
///
/// All fields are plain data so that codecs can build and take apart the record freely; the
/// meaning of each field is that of cluster-protocol.md §5.1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceInstance {
    /// The instance ID (gid / nid). Also the ID the instance uses in link handshakes.
    pub id: String,
    /// The service name the instance registers under: `gate`, `node` or `mesh`.
    pub name: String,
    /// The instance kind text: `gate`, `node` or `mesh`.
    pub kind: String,
    /// The configured instance name. For nodes it is the "group" of stateful routes and the
    /// field under which Redis stores a user's node.
    pub alias: String,
    pub state: InstanceState,
    /// Event numbers the instance has handlers for (1 connect, 2 reconnect, 3 disconnect).
    pub events: Vec<i32>,
    /// Message routes the instance serves, in registration order.
    pub routes: Vec<RouteInfo>,
    /// Mesh instances only: RPC service names.
    pub services: Vec<String>,
    /// `drpc://host:port?is_secure=false`; only its host:port part is ever used.
    pub endpoint: String,
    /// Dispatch weight for `wrr`; 0 means "not set" (gates never set it).
    pub weight: i32,
    /// Free-form string metadata published with the instance.
    pub metadata: BTreeMap<String, String>,
}

/// One message route an instance serves, with the three flags the gate acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RouteInfo {
    pub id: i32,
    /// Only reachable from other nodes: the gate drops client packets for it.
    pub internal: bool,
    /// Delivered to the node the user is bound to (located through Redis), not balanced.
    pub stateful: bool,
    /// Needs a bound user (uid ≠ 0); anonymous packets for it are dropped.
    pub authorized: bool,
}

/// An instance's life-cycle state (due's `cluster.State`).
///
/// The registry carries it as text, the link's getstate/setstate commands as one byte. The order
/// of the variants is the byte value, so `Shut` (0) is also the natural default: a record that
/// says nothing about its state is treated as not serving.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum InstanceState {
    /// Closed: not reachable for new work. Also what an unknown state text means (see
    /// [`InstanceState::from_text`]).
    #[default]
    Shut = 0,
    /// Serving normally: preferred by stateless dispatch.
    Work = 1,
    /// Serving but loaded: used by stateless dispatch only when no instance is in `Work`.
    Busy = 2,
    /// Shutting down: never picked for stateless routes, still reached by stateful routes and
    /// events.
    Hang = 3,
}

impl InstanceState {
    /// The registry text: `shut`, `work`, `busy` or `hang`.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Shut => "shut",
            InstanceState::Work => "work",
            InstanceState::Busy => "busy",
            InstanceState::Hang => "hang",
        }
    }

    /// Reads the registry text (exact, case-sensitive match as in Go).
    ///
    /// The spec does not say what an unknown text means, so it maps to `Shut`. That is not an
    /// arbitrary choice: due's dispatcher files an instance with an unknown state in no state
    /// bucket but still in the route's ID map and event lists — which is exactly how a `shut`
    /// instance is treated (never picked by stateless dispatch, still found by stateful routes,
    /// still sent events). So the mapping changes nothing observable for routing.
    pub fn from_text(text: &str) -> InstanceState {
        match text {
            "work" => InstanceState::Work,
            "busy" => InstanceState::Busy,
            "hang" => InstanceState::Hang,
            _ => InstanceState::Shut,
        }
    }

    /// The one-byte form used by getstate/setstate: 0 shut, 1 work, 2 busy, 3 hang.
    pub fn as_byte(self) -> u8 {
        self as u8
    }

    /// Reads the one-byte form; `None` for values above 3.
    ///
    /// Returning `None` (rather than guessing) matters because a v2.4.1 gate stores a setstate
    /// byte unvalidated and getstate echoes it back raw; the link layer decides whether to keep
    /// the raw byte. Go renders such a value as the text `shut`, i.e.
    /// `from_byte(b).unwrap_or(InstanceState::Shut)` gives Go's text.
    pub fn from_byte(byte: u8) -> Option<InstanceState> {
        match byte {
            0 => Some(InstanceState::Shut),
            1 => Some(InstanceState::Work),
            2 => Some(InstanceState::Busy),
            3 => Some(InstanceState::Hang),
            _ => None,
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `host:port` a link client must dial for an endpoint string such as
/// `drpc://10.0.0.5:40123?is_secure=false` (→ `10.0.0.5:40123`).
///
/// Go parses the endpoint as a URL and uses only its host (authority) part; the scheme is never
/// checked, so neither is it here. IPv6 hosts keep their brackets (`[fd00::5]:40123`), which is
/// the form socket-address parsers expect. User info before `@` is dropped, as a URL parser would.
///
/// Returns `None` when there is nothing dialable: no `scheme://`, an invalid scheme, an empty
/// host, an unclosed IPv6 bracket, or a missing or non-numeric port. (Go's URL parser accepts a
/// few of these — e.g. a missing port — and only fails later when dialling; rejecting them here
/// keeps such an instance out of the route table instead of making every pick on it fail.)
pub fn endpoint_address(endpoint: &str) -> Option<String> {
    let (scheme, rest) = endpoint.split_once("://")?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) {
        return None;
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host_port = match authority.rfind('@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    if host_port
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return None;
    }
    let port = if let Some(bracketed) = host_port.strip_prefix('[') {
        // IPv6 literal: everything up to the first `]` is the address, then `:port`.
        let (inner, after) = bracketed.split_once(']')?;
        if inner.is_empty() || inner.contains('[') {
            return None;
        }
        after.strip_prefix(':')?
    } else {
        // A bare host must not contain colons or brackets: `fd00::5:1` cannot be dialled.
        let (host, port) = host_port.split_once(':')?;
        if host.is_empty() || host.contains(['[', ']']) {
            return None;
        }
        port
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(host_port.to_string())
}

/// The endpoint string an instance publishes for its advertised link `host:port`.
///
/// The query is always `is_secure=false`: the link has no TLS, and consumers ignore it anyway.
/// IPv6 hosts must already be bracketed in `host_port` (`[fd00::5]:40123`).
pub fn endpoint_url(host_port: &str) -> String {
    format!("drpc://{host_port}?is_secure=false")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_text_round_trips() {
        for state in [
            InstanceState::Shut,
            InstanceState::Work,
            InstanceState::Busy,
            InstanceState::Hang,
        ] {
            assert_eq!(InstanceState::from_text(state.as_str()), state);
            assert_eq!(state.to_string(), state.as_str());
        }
        assert_eq!(InstanceState::Work.as_str(), "work");
        assert_eq!(InstanceState::Shut.as_str(), "shut");
        assert_eq!(InstanceState::Busy.as_str(), "busy");
        assert_eq!(InstanceState::Hang.as_str(), "hang");
    }

    #[test]
    fn unknown_state_text_is_shut() {
        for text in ["", "WORK", "Work", "working", " work", "idle", "1"] {
            assert_eq!(
                InstanceState::from_text(text),
                InstanceState::Shut,
                "{text:?}"
            );
        }
    }

    #[test]
    fn state_bytes() {
        assert_eq!(InstanceState::Shut.as_byte(), 0);
        assert_eq!(InstanceState::Work.as_byte(), 1);
        assert_eq!(InstanceState::Busy.as_byte(), 2);
        assert_eq!(InstanceState::Hang.as_byte(), 3);
        for b in 0..=3u8 {
            assert_eq!(InstanceState::from_byte(b).unwrap().as_byte(), b);
        }
        for b in [4u8, 7, 255] {
            assert_eq!(InstanceState::from_byte(b), None);
        }
    }

    #[test]
    fn default_state_is_shut() {
        assert_eq!(InstanceState::default(), InstanceState::Shut);
        assert_eq!(ServiceInstance::default().state, InstanceState::Shut);
    }

    #[test]
    fn endpoint_vectors() {
        assert_eq!(
            endpoint_address("drpc://10.0.0.5:40123?is_secure=false").as_deref(),
            Some("10.0.0.5:40123")
        );
        assert_eq!(
            endpoint_address("drpc://[fd00::5]:40123?is_secure=false").as_deref(),
            Some("[fd00::5]:40123")
        );
    }

    #[test]
    fn endpoint_url_forms() {
        assert_eq!(
            endpoint_url("10.0.0.5:40123"),
            "drpc://10.0.0.5:40123?is_secure=false"
        );
        assert_eq!(
            endpoint_url("[fd00::5]:40123"),
            "drpc://[fd00::5]:40123?is_secure=false"
        );
    }

    #[test]
    fn endpoint_url_and_address_round_trip() {
        for hp in [
            "10.0.0.5:40123",
            "[fd00::5]:1",
            "node-1.local:8080",
            "[::1]:65535",
        ] {
            assert_eq!(endpoint_address(&endpoint_url(hp)).as_deref(), Some(hp));
        }
    }

    #[test]
    fn endpoint_scheme_is_not_checked() {
        assert_eq!(
            endpoint_address("grpc://127.0.0.1:8080").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(
            endpoint_address("drpc://10.0.0.5:40123").as_deref(),
            Some("10.0.0.5:40123")
        );
    }

    #[test]
    fn endpoint_path_fragment_and_userinfo_are_ignored() {
        assert_eq!(
            endpoint_address("drpc://10.0.0.5:1/x/y?a=b").as_deref(),
            Some("10.0.0.5:1")
        );
        assert_eq!(
            endpoint_address("drpc://10.0.0.5:1#frag").as_deref(),
            Some("10.0.0.5:1")
        );
        assert_eq!(
            endpoint_address("drpc://user:pw@10.0.0.5:1?is_secure=false").as_deref(),
            Some("10.0.0.5:1")
        );
    }

    #[test]
    fn unparsable_endpoints() {
        for bad in [
            "",
            "10.0.0.5:40123",
            "drpc:/10.0.0.5:40123",
            "://10.0.0.5:1",
            "1drpc://10.0.0.5:1",
            "dr pc://10.0.0.5:1",
            "drpc://",
            "drpc://10.0.0.5",
            "drpc://10.0.0.5:",
            "drpc://:40123",
            "drpc://10.0.0.5:port",
            "drpc://10.0.0.5:-1",
            "drpc://[fd00::5:40123",
            "drpc://[fd00::5]",
            "drpc://[fd00::5]40123",
            "drpc://[]:1",
            "drpc://a]b:1",
            "drpc://a b:1",
            "drpc://fd00::5:1",
            "drpc://[fd00::5]:1]",
            "drpc://[[fd00::5]:1",
            "drpc://?is_secure=false",
        ] {
            assert_eq!(endpoint_address(bad), None, "{bad:?}");
        }
    }
}
