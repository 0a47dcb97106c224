//! The registry's abstract instance record (due's `registry.ServiceInstance`), independent of backend.
//! Owns the record and the `drpc://` endpoint string; states and route flags are `crate::instance`.
//!
//! Every backend (Consul, etcd, Nacos) stores and returns this same record; the dispatcher builds its
//! route table from a list of them (see [`crate::dispatch::routes`]). Keeping the record free of
//! any backend detail lets the codecs and the dispatcher be tested without a registry running.

use std::collections::BTreeMap;

use crate::net::HostPort;

pub use crate::instance::{InstanceState, RouteInfo};

pub mod consul;
pub mod consul_meta;
pub mod discovery;
pub mod etcd;
pub mod etcd_value;
pub mod nacos;
pub mod nacos_meta;
#[cfg(test)]
mod real_server;
mod worker;

pub use discovery::{Discovery, NodeSink};

/// Why a registry call failed, saying where: the backend (`consul`, `etcd`), its address or
/// the call (`register gate-1`, `update check service:gate-1`, `keep-alive of lease 7`) and what
/// went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryError {
    /// `[registry.<backend>]`'s address cannot be used.
    Address {
        backend: &'static str,
        addr: String,
        reason: String,
    },
    /// The request did not complete: connect, send, read or timeout.
    Transport {
        backend: &'static str,
        call: String,
        reason: String,
    },
    /// The server answered with an HTTP status other than 200; `body` is its explanation.
    Status {
        backend: &'static str,
        call: String,
        status: u16,
        body: String,
    },
    /// The answer could not be decoded.
    Decode {
        backend: &'static str,
        call: String,
        reason: String,
    },
    /// The instance record cannot be registered (an endpoint without a host:port).
    Record {
        backend: &'static str,
        reason: String,
    },
    /// The registrar was stopped.
    Stopped { backend: &'static str },
    /// A registrar thread could not be started.
    Thread { name: String, reason: String },
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::Address {
                backend,
                addr,
                reason,
            } => write!(f, "{backend} address {addr:?}: {reason}"),
            RegistryError::Transport {
                backend,
                call,
                reason,
            } => write!(f, "{backend} {call}: {reason}"),
            RegistryError::Status {
                backend,
                call,
                status,
                body,
            } => write!(f, "{backend} {call}: HTTP {status}: {}", body.trim()),
            RegistryError::Decode {
                backend,
                call,
                reason,
            } => write!(f, "{backend} {call}: {reason}"),
            RegistryError::Record { backend, reason } => {
                write!(f, "{backend} registration: {reason}")
            }
            RegistryError::Stopped { backend } => write!(f, "{backend} registrar is stopped"),
            RegistryError::Thread { name, reason } => {
                write!(f, "cannot start thread {name}: {reason}")
            }
        }
    }
}

impl std::error::Error for RegistryError {}

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

/// The `host:port` a link client must dial for an endpoint string such as
/// `drpc://10.0.0.5:40123?is_secure=false` (→ `10.0.0.5:40123`), in the canonical form of
/// [`HostPort`]'s `Display` (IPv6 in brackets, compressed: `[fd00::5]:40123`).
///
/// Go parses the endpoint as a URL and uses only its host (authority) part; the scheme is never
/// checked, so neither is it here. User info before `@` is dropped, as a URL parser would.
///
/// Returns `None` when there is nothing dialable: no `scheme://`, an invalid scheme, or an
/// authority that is not a `host:port` to connect to ([`HostPort::parse_remote`]: an empty host,
/// an unclosed or misplaced bracket, an unbracketed IPv6 address, a missing, non-numeric or
/// out-of-range port). (Go's URL parser accepts a few of these — e.g. a missing port — and only
/// fails later when dialling; rejecting them here keeps such an instance out of the route table
/// instead of making every pick on it fail.)
pub fn endpoint_address(endpoint: &str) -> Option<String> {
    endpoint_host_port(endpoint).map(|hp| hp.to_string())
}

/// [`endpoint_address`], parsed.
pub fn endpoint_host_port(endpoint: &str) -> Option<HostPort> {
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
    HostPort::parse_remote(host_port).ok()
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
            "drpc://10.0.0.5:65536",
            "drpc://10.0.0.5:99999?is_secure=false",
            "drpc://10.0.0.5:\t1",
        ] {
            assert_eq!(endpoint_address(bad), None, "{bad:?}");
        }
    }
}
