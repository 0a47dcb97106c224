//! The Consul agent client and the registrar/watcher threads of the gate (cluster-protocol.md §5.2,
//! §5.4, §7). Owns the exact HTTP requests due v2.4.1 sends to the agent, the TTL heartbeat loop
//! (with re-registration when the agent has lost the service) and the blocking-query watch of
//! `node`.
//!
//! Everything here blocks and runs on plain std threads: it is the gate's control plane and must
//! never run on a shard thread. The HTTP client is `ureq` without TLS (the agent speaks plain HTTP,
//! as the Go client is configured by due).
//!
//! Consul 1.8.7 (the agent used in tests) rejects unknown JSON fields in a registration, so the
//! body carries exactly the fields the Go client sends: the optional ones only when set, and the
//! two fields without `omitempty` in the Go struct (`Check`, `Checks`) always, `null` when empty.
//! The agent accepts that body unchanged (verified against 1.8.7).

use std::collections::BTreeMap;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde::{Deserialize, Serialize};

use super::consul_meta::{decode_meta, encode_meta};
use super::worker::{self, stopped_within, CallError, Stop};
#[cfg(test)]
use super::InstanceState;
use super::{endpoint_host_port, RegistryError, ServiceInstance};
use crate::config::ConsulConfig;
use crate::instance::StateCell;
use crate::metrics::ControlMetrics;

/// The backend's name in errors.
const BACKEND: &str = "consul";
/// Timeout of every non-blocking request (register, TTL update, deregister, first query).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Added to a blocking query's `wait` (plus Consul's jitter of up to wait/16) for its timeout.
const BLOCKING_GRACE: Duration = Duration::from_secs(10);
/// Pause after a failed watch query before the next one (as due's watcher).
const WATCH_RETRY: Duration = Duration::from_secs(1);
/// Minimum time between the starts of two watch queries: due's watcher is driven by a 1 s
/// ticker. It bounds the query rate if the index keeps changing, and does not delay the first
/// notice of a change (a blocking query returns as soon as its index moves).
const WATCH_PACE: Duration = Duration::from_secs(1);
/// Upper bound on a health response body (a few KiB per node; generous).
const MAX_BODY: u64 = 64 << 20;
/// The service the gate watches.
const NODE_SERVICE: &str = "node";

/// `wait` of the watch's blocking queries. due sends 60 s; 5 s here so that the watch thread
/// notices a stop within ~5 s and exits on its own (its only cost: one cheap agent query per 5 s
/// when nothing changes; nothing in the cluster can observe the value). `Registrar::stop` does
/// not wait for it either way (it detaches a thread still blocked).
const WATCH_WAIT: Duration = Duration::from_secs(5);

/// A blocking client of one Consul agent's HTTP API. Cheap to clone; shares its connections.
#[derive(Clone)]
pub struct ConsulClient {
    agent: ureq::Agent,
    /// `http://host:port`, without a trailing slash.
    base: String,
    /// `X-Consul-Token`, from `CONSUL_HTTP_TOKEN` when set and non-empty (as the Go client).
    token: Option<String>,
}

impl std::fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl CallError {
    /// The agent does not know the TTL check: it lost the service (it restarted, or someone
    /// deregistered it). 1.8.7 answers 500 "CheckID … does not have associated TTL"; newer
    /// agents 404 "Unknown check ID …".
    fn is_unknown_check(&self) -> bool {
        match self {
            CallError::Transport(_) => false,
            CallError::Status(404, _) => true,
            CallError::Status(_, body) => {
                body.contains("does not have associated TTL")
                    || body.to_ascii_lowercase().contains("unknown check")
            }
        }
    }
}

impl ConsulClient {
    /// A client for the agent at `addr` (`host:port`, as `etc.registry.consul.addr`; an
    /// `http://` prefix is accepted, `https://` and `unix://` are not supported).
    pub fn new(addr: &str) -> Result<ConsulClient, RegistryError> {
        let addr = addr.trim();
        let host_port = match addr.split_once("://") {
            None => addr,
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return Err(RegistryError::Address {
                    backend: BACKEND,
                    addr: addr.to_string(),
                    reason: format!("scheme {scheme:?} is not supported (plain HTTP only)"),
                })
            }
        };
        let host_port = host_port.trim_end_matches('/');
        if host_port.is_empty() || host_port.contains(['/', '?', '#', ' ']) {
            return Err(RegistryError::Address {
                backend: BACKEND,
                addr: addr.to_string(),
                reason: "not host:port".into(),
            });
        }
        let token = std::env::var("CONSUL_HTTP_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        let config = ureq::Agent::config_builder()
            // Non-2xx answers are read, not turned into errors: their body says what is wrong.
            .http_status_as_error(false)
            // The agent is local (or on the LAN); an http_proxy meant for the outside world must
            // not capture these requests.
            .proxy(None)
            .timeout_global(Some(WRITE_TIMEOUT))
            .build();
        Ok(ConsulClient {
            agent: config.into(),
            base: format!("http://{host_port}"),
            token,
        })
    }

    /// `PUT /v1/agent/service/register` with the registration of `inst` (cluster-protocol.md §5.2).
    pub fn register(
        &self,
        inst: &ServiceInstance,
        settings: &ConsulConfig,
    ) -> Result<(), RegistryError> {
        let body = registration_body(inst, settings)?;
        self.put("/v1/agent/service/register", Some(body))
            .map(drop)
            .map_err(|e| e.describe(BACKEND, &format!("register {}", service_id(inst))))
    }

    /// Passes any TTL check by its CheckID (`service:<kind>-<id>` for due instances).
    pub fn pass_ttl_check(&self, check_id: &str) -> Result<(), RegistryError> {
        self.update_ttl(check_id)
            .map_err(|e| e.describe(BACKEND, &format!("update check {check_id}")))
    }

    /// Deregisters the gate: `PUT /v1/agent/service/deregister/gate-<gid>` (no body).
    pub fn deregister(&self, gid: &str) -> Result<(), RegistryError> {
        self.deregister_service(&format!("gate-{gid}"))
    }

    /// Deregisters any service by its Consul service ID (`<kind>-<id>` for due instances).
    /// Consul 1.8.7 answers 200 for an unknown ID too.
    pub fn deregister_service(&self, service_id: &str) -> Result<(), RegistryError> {
        self.put(&format!("/v1/agent/service/deregister/{service_id}"), None)
            .map(drop)
            .map_err(|e| e.describe(BACKEND, &format!("deregister {service_id}")))
    }

    /// The passing instances of service `name`:
    /// `GET /v1/health/service/<name>?[index=N&]passing=1&wait=<ms>ms`.
    ///
    /// Without `index` the agent answers at once; with one it blocks until the index moves past
    /// it or `wait` (plus Consul's jitter of up to wait/16) elapses. Returns the new
    /// `X-Consul-Index` and every instance, decoded from its `Service.Service` and `Service.Meta`.
    pub fn health_service(
        &self,
        name: &str,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<(u64, Vec<ServiceInstance>), RegistryError> {
        let what = format!("health of {name}");
        let wait_ms = wait.as_millis();
        // Query keys sorted, as Go's url.Values.Encode writes them.
        let (path, timeout) = match index {
            None => (
                format!("/v1/health/service/{name}?passing=1&wait={wait_ms}ms"),
                WRITE_TIMEOUT,
            ),
            Some(index) => (
                format!("/v1/health/service/{name}?index={index}&passing=1&wait={wait_ms}ms"),
                wait + wait / 16 + BLOCKING_GRACE,
            ),
        };
        let mut request = self
            .agent
            .get(format!("{}{path}", self.base))
            .config()
            .timeout_global(Some(timeout))
            .build();
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token);
        }
        let mut response = request
            .call()
            .map_err(|e| CallError::Transport(e.to_string()).describe(BACKEND, &what))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| CallError::Transport(e.to_string()).describe(BACKEND, &what))?;
        if status != 200 {
            return Err(CallError::Status(status, body).describe(BACKEND, &what));
        }
        let new_index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| RegistryError::Decode {
                backend: BACKEND,
                call: what.clone(),
                reason: "no valid X-Consul-Index header".into(),
            })?;
        let instances = decode_health(&body).map_err(|reason| RegistryError::Decode {
            backend: BACKEND,
            call: what.clone(),
            reason,
        })?;
        Ok((new_index, instances))
    }

    fn update_ttl(&self, check_id: &str) -> Result<(), CallError> {
        self.put(
            &format!("/v1/agent/check/update/{check_id}"),
            Some(TTL_PASS_BODY.to_string()),
        )
        .map(drop)
    }

    /// A PUT with the write timeout; `Ok(body)` only for HTTP 200.
    fn put(&self, path: &str, body: Option<String>) -> Result<String, CallError> {
        let mut request = self.agent.put(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token);
        }
        let result = match body {
            Some(body) => request.content_type("application/json").send(body),
            None => request.send_empty(),
        };
        let mut response = result.map_err(|e| CallError::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| CallError::Transport(e.to_string()))?;
        if status == 200 {
            Ok(text)
        } else {
            Err(CallError::Status(status, text))
        }
    }
}

/// The TTL update body, as the Go client writes it (`encoding/json` adds the newline).
const TTL_PASS_BODY: &str = "{\"Status\":\"passing\",\"Output\":\"passed\"}\n";

/// The Consul service ID of an instance: `<kind>-<id>` (`gate-<gid>`).
pub fn service_id(inst: &ServiceInstance) -> String {
    format!("{}-{}", inst.kind, inst.id)
}

/// The CheckID of an instance's TTL check: `service:<kind>-<id>`.
pub fn ttl_check_id(inst: &ServiceInstance) -> String {
    format!("service:{}", service_id(inst))
}

/// Go's `AgentServiceRegistration`, restricted to the fields due sets, in Go's declaration order
/// and with Go's `omitempty` behaviour (`Check` and `Checks` have no `omitempty`).
#[derive(Serialize)]
struct Registration<'a> {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Name", skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(rename = "Port", skip_serializing_if = "is_zero")]
    port: u16,
    #[serde(rename = "Address", skip_serializing_if = "str::is_empty")]
    address: &'a str,
    #[serde(rename = "TaggedAddresses")]
    tagged_addresses: BTreeMap<&'a str, TaggedAddress<'a>>,
    #[serde(rename = "Meta", skip_serializing_if = "BTreeMap::is_empty")]
    meta: BTreeMap<String, String>,
    /// Always `null`: due never sets the single check.
    #[serde(rename = "Check")]
    check: (),
    /// `null` when both checks are disabled, as Go writes a nil slice.
    #[serde(rename = "Checks")]
    checks: Option<Vec<Check>>,
}

/// Go's `ServiceAddress` (no `omitempty`).
#[derive(Serialize)]
struct TaggedAddress<'a> {
    #[serde(rename = "Address")]
    address: &'a str,
    #[serde(rename = "Port")]
    port: u16,
}

/// Go's `AgentServiceCheck`, restricted to the fields due sets, in declaration order.
#[derive(Serialize, Default)]
struct Check {
    #[serde(rename = "CheckID", skip_serializing_if = "Option::is_none")]
    check_id: Option<String>,
    #[serde(rename = "Interval", skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(rename = "Timeout", skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    tcp: Option<String>,
    #[serde(rename = "DeregisterCriticalServiceAfter")]
    deregister_critical_service_after: String,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

/// Durations as due formats them: whole seconds, `"<n>s"`.
fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// The exact JSON body of the registration of `inst` (one line plus `\n`, as Go's encoder).
///
/// Address and port come from the endpoint (`drpc://host:port?…`); an IPv6 host is written
/// without brackets in `Address`/`TaggedAddresses`, with them in the TCP check. Fails when the
/// endpoint has no dialable host:port (due fails the registration the same way).
fn registration_body(
    inst: &ServiceInstance,
    settings: &ConsulConfig,
) -> Result<String, RegistryError> {
    let address = endpoint_host_port(&inst.endpoint).ok_or_else(|| RegistryError::Record {
        backend: BACKEND,
        reason: format!("endpoint {:?} has no host:port", inst.endpoint),
    })?;
    let host = address.host.to_string();
    let (host, port, host_port) = (host.as_str(), address.port, address.to_string());
    let scheme = inst.endpoint.split_once("://").map_or("", |(s, _)| s);

    let deregister_after = seconds(settings.deregister_critical_service_after);
    let mut checks = Vec::new();
    if settings.health_check {
        checks.push(Check {
            interval: Some(seconds(settings.health_check_interval)),
            timeout: Some(seconds(settings.health_check_timeout)),
            tcp: Some(host_port.clone()),
            deregister_critical_service_after: deregister_after.clone(),
            ..Check::default()
        });
    }
    if settings.heartbeat_check {
        checks.push(Check {
            check_id: Some(ttl_check_id(inst)),
            ttl: Some(seconds(settings.heartbeat_check_interval)),
            deregister_critical_service_after: deregister_after,
            ..Check::default()
        });
    }
    let registration = Registration {
        id: service_id(inst),
        name: &inst.name,
        port,
        address: host,
        tagged_addresses: BTreeMap::from([(
            scheme,
            TaggedAddress {
                address: host,
                port,
            },
        )]),
        meta: encode_meta(inst),
        check: (),
        checks: (!checks.is_empty()).then_some(checks),
    };
    let mut body = serde_json::to_string(&registration).map_err(|e| RegistryError::Record {
        backend: BACKEND,
        reason: e.to_string(),
    })?;
    body.push('\n');
    Ok(body)
}

/// One element of a `/v1/health/service` answer; only `Service.Service` and `Service.Meta` are
/// read (unknown fields are ignored).
#[derive(Deserialize)]
struct HealthEntry {
    #[serde(rename = "Service")]
    service: HealthService,
}

#[derive(Deserialize)]
struct HealthService {
    #[serde(rename = "Service", default)]
    service: String,
    #[serde(rename = "Meta", default)]
    meta: Option<BTreeMap<String, String>>,
}

fn decode_health(body: &str) -> Result<Vec<ServiceInstance>, String> {
    let entries: Option<Vec<HealthEntry>> =
        serde_json::from_str(body).map_err(|e| format!("bad health response: {e}"))?;
    Ok(entries
        .unwrap_or_default()
        .iter()
        .map(|e| {
            decode_meta(
                &e.service.service,
                &e.service.meta.clone().unwrap_or_default(),
            )
        })
        .collect())
}

/// State shared by the registrar's handle and its threads.
pub(super) struct Shared {
    client: ConsulClient,
    settings: ConsulConfig,
    /// The record as registered. Held for the whole of every registration (and of the final
    /// deregistration), so registrations never interleave and none can follow the deregister.
    instance: Mutex<ServiceInstance>,
    /// The instance state, owned with the node API: every registration carries its value.
    state: StateCell,
    /// The stop flag (checked under `instance` before every registration) and the delivery lock.
    stop: Stop,
    /// Where failed calls are counted.
    metrics: Arc<ControlMetrics>,
}

impl Shared {
    fn lock_instance(&self) -> MutexGuard<'_, ServiceInstance> {
        self.instance.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stopped(&self) -> bool {
        self.stop.stopped()
    }

    /// Registers `inst` and, with a heartbeat check, passes its TTL at once (as due does after
    /// every registration: Consul starts checks as critical). Caller holds the instance lock.
    fn register_locked(&self, inst: &mut ServiceInstance) -> Result<(), RegistryError> {
        inst.state = self.state.get();
        self.client.register(inst, &self.settings)?;
        if self.settings.heartbeat_check {
            if let Err(e) = self.client.pass_ttl_check(&ttl_check_id(inst)) {
                tracing::warn!(error = %e, "consul: TTL update after registration failed");
            }
        }
        Ok(())
    }
}

/// The gate's registration in Consul plus the node watch: registers on start, keeps the TTL
/// check passing (re-registering if the agent lost the service), pushes every new `node` list,
/// and deregisters on stop.
///
/// Its threads: `consul-ttl` (with a heartbeat check) and `consul-watch`.
pub(super) type Registrar = worker::Registrar<Shared>;

impl worker::Backend for Shared {
    const NAME: &'static str = BACKEND;
    type Registration = ServiceInstance;

    fn registration(&self) -> MutexGuard<'_, ServiceInstance> {
        self.lock_instance()
    }

    fn stop_flag(&self) -> &Stop {
        &self.stop
    }

    fn state(&self) -> &StateCell {
        &self.state
    }

    fn register_locked(&self, inst: &mut ServiceInstance) -> Result<(), RegistryError> {
        Shared::register_locked(self, inst)
    }

    fn deregister_quietly(&self) {
        deregister_quietly(self)
    }
}

impl Registrar {
    /// Registers `instance` (normally state `work`), fetches the current passing `node` list and
    /// hands it to `on_nodes` before returning (cluster-protocol.md §7 start-up steps 3–4: both are
    /// fatal in due when they fail — an error here should end the gate), then starts the threads:
    ///
    /// * `consul-ttl` (only with `heartbeat_check`): passes the TTL check every
    ///   `heartbeat_check_interval / 2`; if the agent no longer knows the check (it restarted, or
    ///   the service was removed) it registers the instance again. Failures are logged only.
    /// * `consul-watch`: blocking queries on `node` (`wait` = [`WATCH_WAIT`]) from the
    ///   index of the first answer on; whenever `X-Consul-Index` changes, `on_nodes` gets the
    ///   complete list. Errors are logged and retried after 1 s.
    ///
    /// `on_nodes` runs on the calling thread for the first list, then on the watch thread.
    #[cfg(test)]
    pub fn start(
        client: ConsulClient,
        instance: ServiceInstance,
        state: StateCell,
        settings: ConsulConfig,
        on_nodes: impl Fn(Vec<ServiceInstance>) + Send + 'static,
    ) -> Result<Registrar, RegistryError> {
        Self::start_counted(client, instance, state, settings, on_nodes, Arc::default())
    }

    /// [`Registrar::start`], counting failed calls in `metrics`.
    pub fn start_counted(
        client: ConsulClient,
        instance: ServiceInstance,
        state: StateCell,
        settings: ConsulConfig,
        on_nodes: impl Fn(Vec<ServiceInstance>) + Send + 'static,
        metrics: Arc<ControlMetrics>,
    ) -> Result<Registrar, RegistryError> {
        let shared = Arc::new(Shared {
            metrics,
            client,
            settings,
            instance: Mutex::new(instance),
            state,
            stop: Stop::default(),
        });
        {
            let mut inst = shared.lock_instance();
            shared.register_locked(&mut inst)?;
        }
        let first = shared.client.health_service(NODE_SERVICE, None, WATCH_WAIT);
        let (index, nodes) = match first {
            Ok(answer) => answer,
            Err(e) => {
                deregister_quietly(&shared);
                return Err(e);
            }
        };
        on_nodes(nodes);

        let mut loops: Vec<worker::Loop> = Vec::new();
        if shared.settings.heartbeat_check {
            let s = shared.clone();
            loops.push(("consul-ttl", Box::new(move |stop| ttl_loop(&s, &stop))));
        }
        let s = shared.clone();
        loops.push((
            "consul-watch",
            Box::new(move |stop| watch_loop(&s, &stop, index, on_nodes)),
        ));
        worker::Registrar::spawn(shared, loops)
    }

    /// A copy of the record as last registered.
    #[cfg(test)]
    pub fn instance(&self) -> ServiceInstance {
        self.shared.lock_instance().clone()
    }
}

/// Deregisters under the instance lock (after any registration in flight), logging failures.
fn deregister_quietly(shared: &Shared) {
    let inst = shared.lock_instance();
    if let Err(e) = shared.client.deregister_service(&service_id(&inst)) {
        tracing::warn!(error = %e, "consul: deregistration failed");
    }
}

/// The TTL heartbeat: pass every half TTL; re-register when the agent lost the check.
fn ttl_loop(shared: &Shared, stop: &Receiver<()>) {
    // due: `heartbeatCheckInterval * time.Second / 2`. A floor keeps a zero setting from spinning.
    let period = (shared.settings.heartbeat_check_interval / 2).max(Duration::from_millis(100));
    let mut failing = false;
    loop {
        match stop.recv_timeout(period) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        if shared.stopped() {
            return;
        }
        let check_id = ttl_check_id(&shared.lock_instance());
        let result = match shared.client.update_ttl(&check_id) {
            Ok(()) => Ok(()),
            Err(e) if e.is_unknown_check() => {
                let mut inst = shared.lock_instance();
                if shared.stopped() {
                    return;
                }
                tracing::warn!(
                    error = %e.describe(BACKEND, "TTL update"),
                    "consul: the agent lost the registration; registering again"
                );
                shared.register_locked(&mut inst)
            }
            Err(e) => Err(e.describe(BACKEND, &format!("update check {check_id}"))),
        };
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("consul: TTL heartbeat recovered");
            }
            Ok(()) => {}
            Err(e) => {
                if shared.stopped() {
                    return;
                }
                failing = true;
                shared.metrics.registry_errors.add_shared(1);
                tracing::warn!(error = %e, "consul: TTL heartbeat failed");
            }
        }
    }
}

/// The blocking-query watch of `node`, starting from the index of the first (synchronous) answer.
fn watch_loop(
    shared: &Shared,
    stop: &Receiver<()>,
    first_index: u64,
    on_nodes: impl Fn(Vec<ServiceInstance>),
) {
    let wait = WATCH_WAIT;
    let mut delivered = first_index;
    // Index 0 would make the query return at once (Consul's advice: use at least 1). A smaller
    // index than the last one (the servers' state was reset) is simply used as returned.
    let mut index = first_index.max(1);
    let mut failing = false;
    loop {
        let started = Instant::now();
        if shared.stopped() {
            return;
        }
        match shared
            .client
            .health_service(NODE_SERVICE, Some(index), wait)
        {
            Ok((new_index, nodes)) => {
                if failing {
                    failing = false;
                    tracing::info!("consul: node watch recovered");
                }
                if new_index != delivered {
                    if !shared.stop.deliver(|| on_nodes(nodes)) {
                        return;
                    }
                    delivered = new_index;
                }
                index = new_index.max(1);
                let pause = WATCH_PACE.saturating_sub(started.elapsed());
                if !pause.is_zero() && stopped_within(stop, pause) {
                    return;
                }
            }
            Err(e) => {
                if shared.stopped() {
                    return;
                }
                shared.metrics.registry_errors.add_shared(1);
                if !failing {
                    tracing::warn!(error = %e, "consul: node watch failed; retrying every 1 s");
                }
                failing = true;
                if stopped_within(stop, WATCH_RETRY) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn work() -> StateCell {
        StateCell::new(InstanceState::Work)
    }

    fn gate() -> ServiceInstance {
        ServiceInstance {
            id: "g1".into(),
            name: "gate".into(),
            kind: "gate".into(),
            alias: "gate".into(),
            state: InstanceState::Work,
            endpoint: "drpc://10.0.0.5:40123?is_secure=false".into(),
            metadata: BTreeMap::from([("region".to_string(), "eu".to_string())]),
            ..ServiceInstance::default()
        }
    }

    /// Both as exact text and field by field.
    fn assert_body(body: &str, exact: &str) {
        assert_eq!(body, exact);
        let got: Value = serde_json::from_str(body).unwrap();
        let want: Value = serde_json::from_str(exact).unwrap();
        let (got, want) = (got.as_object().unwrap(), want.as_object().unwrap());
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (key, value) in want {
            assert_eq!(&got[key], value, "field {key}");
        }
    }

    #[test]
    fn registration_is_the_spec_body() {
        let body = registration_body(&gate(), &ConsulConfig::default()).unwrap();
        let exact = concat!(
            r#"{"ID":"gate-g1","Name":"gate","Port":40123,"Address":"10.0.0.5","#,
            r#""TaggedAddresses":{"drpc":{"Address":"10.0.0.5","Port":40123}},"#,
            r#""Meta":{"_region":"eu","alias":"gate","endpoint":"drpc://10.0.0.5:40123?is_secure=false","#,
            r#""id":"g1","kind":"gate","state":"work"},"#,
            r#""Check":null,"#,
            r#""Checks":[{"Interval":"10s","Timeout":"5s","TCP":"10.0.0.5:40123","DeregisterCriticalServiceAfter":"30s"},"#,
            r#"{"CheckID":"service:gate-g1","TTL":"10s","DeregisterCriticalServiceAfter":"30s"}]}"#,
            "\n"
        );
        assert_body(&body, exact);
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["Check"], Value::Null);
        assert_eq!(
            parsed["Checks"][1],
            json!({"CheckID":"service:gate-g1","TTL":"10s","DeregisterCriticalServiceAfter":"30s"})
        );
    }

    #[test]
    fn hang_registration_differs_only_in_state() {
        let mut inst = gate();
        let work = registration_body(&inst, &ConsulConfig::default()).unwrap();
        inst.state = InstanceState::Hang;
        let hang = registration_body(&inst, &ConsulConfig::default()).unwrap();
        assert_eq!(
            work.replace("\"state\":\"work\"", "\"state\":\"hang\""),
            hang
        );
    }

    #[test]
    fn check_settings_and_flags() {
        let settings = ConsulConfig {
            health_check_interval: Duration::from_secs(3),
            health_check_timeout: Duration::from_millis(2500),
            heartbeat_check_interval: Duration::from_secs(20),
            deregister_critical_service_after: Duration::from_secs(90),
            ..ConsulConfig::default()
        };
        let body: Value =
            serde_json::from_str(&registration_body(&gate(), &settings).unwrap()).unwrap();
        assert_eq!(
            body["Checks"],
            json!([
                {"Interval":"3s","Timeout":"2s","TCP":"10.0.0.5:40123","DeregisterCriticalServiceAfter":"90s"},
                {"CheckID":"service:gate-g1","TTL":"20s","DeregisterCriticalServiceAfter":"90s"}
            ])
        );

        let only_ttl = ConsulConfig {
            health_check: false,
            ..ConsulConfig::default()
        };
        let body = registration_body(&gate(), &only_ttl).unwrap();
        assert!(body.ends_with(
            r#""Check":null,"Checks":[{"CheckID":"service:gate-g1","TTL":"10s","DeregisterCriticalServiceAfter":"30s"}]}
"#
        ));

        let only_tcp = ConsulConfig {
            heartbeat_check: false,
            ..ConsulConfig::default()
        };
        let body = registration_body(&gate(), &only_tcp).unwrap();
        assert!(body.ends_with(
            r#""Check":null,"Checks":[{"Interval":"10s","Timeout":"5s","TCP":"10.0.0.5:40123","DeregisterCriticalServiceAfter":"30s"}]}
"#
        ));

        let none = ConsulConfig {
            health_check: false,
            heartbeat_check: false,
            ..ConsulConfig::default()
        };
        let body = registration_body(&gate(), &none).unwrap();
        assert!(
            body.ends_with("\"Check\":null,\"Checks\":null}\n"),
            "{body}"
        );
    }

    #[test]
    fn ipv6_endpoint() {
        let mut inst = gate();
        inst.metadata.clear();
        inst.endpoint = "drpc://[fd00::5]:40123?is_secure=false".into();
        let body: Value =
            serde_json::from_str(&registration_body(&inst, &ConsulConfig::default()).unwrap())
                .unwrap();
        assert_eq!(body["Address"], "fd00::5");
        assert_eq!(
            body["TaggedAddresses"],
            json!({"drpc":{"Address":"fd00::5","Port":40123}})
        );
        assert_eq!(body["Checks"][0]["TCP"], "[fd00::5]:40123");
        assert_eq!(
            body["Meta"]["endpoint"],
            "drpc://[fd00::5]:40123?is_secure=false"
        );
    }

    #[test]
    fn node_registration_uses_kind_in_ids() {
        let node = ServiceInstance {
            id: "n1".into(),
            name: "node".into(),
            kind: "node".into(),
            alias: "mahjong".into(),
            state: InstanceState::Busy,
            events: vec![1, 3],
            weight: 2,
            endpoint: "drpc://10.0.0.7:5000?is_secure=false".into(),
            ..ServiceInstance::default()
        };
        let body: Value =
            serde_json::from_str(&registration_body(&node, &ConsulConfig::default()).unwrap())
                .unwrap();
        assert_eq!(body["ID"], "node-n1");
        assert_eq!(body["Name"], "node");
        assert_eq!(body["Checks"][1]["CheckID"], "service:node-n1");
        assert_eq!(body["Meta"]["events"], "[1,3]");
        assert_eq!(body["Meta"]["weight"], "2");
    }

    #[test]
    fn bad_endpoints_fail() {
        for endpoint in ["", "10.0.0.5:1", "drpc://10.0.0.5", "drpc://10.0.0.5:70000"] {
            let mut inst = gate();
            inst.endpoint = endpoint.into();
            assert!(
                registration_body(&inst, &ConsulConfig::default()).is_err(),
                "{endpoint:?}"
            );
        }
    }

    #[test]
    fn ttl_pass_body() {
        assert_body(
            TTL_PASS_BODY,
            "{\"Status\":\"passing\",\"Output\":\"passed\"}\n",
        );
    }

    #[test]
    fn unknown_check_detection() {
        let lost = [
            CallError::Status(
                500,
                "CheckID \"service:gate-g1\" does not have associated TTL".into(),
            ),
            CallError::Status(404, "Unknown check ID \"service:gate-g1\"".into()),
            CallError::Status(500, "Unknown check \"service:gate-g1\"".into()),
        ];
        for e in &lost {
            assert!(e.is_unknown_check(), "{e:?}");
        }
        let other = [
            CallError::Status(500, "rpc error: No cluster leader".into()),
            CallError::Status(403, "Permission denied".into()),
            CallError::Transport("connection refused".into()),
        ];
        for e in &other {
            assert!(!e.is_unknown_check(), "{e:?}");
        }
    }

    #[test]
    fn health_decoding() {
        let body = r#"[
          {"Node":{"Node":"a","Address":"127.0.0.1"},
           "Service":{"ID":"node-n1","Service":"node","Tags":[],"Address":"10.0.0.7","Port":5000,
                      "Meta":{"id":"n1","kind":"node","alias":"mahjong","state":"busy",
                              "endpoint":"drpc://10.0.0.7:5000?is_secure=false","weight":"2",
                              "events":"[1,3]","routes-0":"1-0,2-2","_zone":"a"}},
           "Checks":[]},
          {"Service":{"ID":"node-n2","Service":"node","Meta":null}}
        ]"#;
        let nodes = decode_health(body).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].id, "n1");
        assert_eq!(nodes[0].name, "node");
        assert_eq!(nodes[0].state, InstanceState::Busy);
        assert_eq!(nodes[0].weight, 2);
        assert_eq!(nodes[0].events, [1, 3]);
        assert_eq!(nodes[0].routes.len(), 2);
        assert_eq!(nodes[0].metadata["zone"], "a");
        assert_eq!(nodes[1].name, "node");
        assert_eq!(nodes[1].id, "");
        assert!(decode_health("[]").unwrap().is_empty());
        assert!(decode_health("null").unwrap().is_empty());
        assert!(decode_health("{").is_err());
    }

    #[test]
    fn client_addresses() {
        let c = ConsulClient::new("127.0.0.1:8500").unwrap();
        assert_eq!(c.base, "http://127.0.0.1:8500");
        let c = ConsulClient::new("http://consul.local:8500/").unwrap();
        assert_eq!(c.base, "http://consul.local:8500");
        assert!(ConsulClient::new("https://consul.local:8501").is_err());
        assert!(ConsulClient::new("unix:///tmp/consul.sock").is_err());
        assert!(ConsulClient::new("").is_err());
    }

    #[test]
    fn unreachable_agent_fails_start() {
        // A port nobody listens on: bind, read the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = ConsulClient::new(&format!("127.0.0.1:{port}")).unwrap();
        let result = Registrar::start(client, gate(), work(), ConsulConfig::default(), |_| {});
        assert!(result.is_err());
    }
}

/// Tests against a real agent; they run only when `GATEHOUSE_CONSUL_ADDR` names one
/// (`scripts/consul.sh start 18500 /tmp/consul && GATEHOUSE_CONSUL_ADDR=127.0.0.1:18500 cargo test
/// registry::consul`).
#[cfg(test)]
mod real_agent {
    use super::*;
    use serde_json::Value;

    fn work() -> StateCell {
        StateCell::new(InstanceState::Work)
    }
    use crate::registry::real_server::{gate_record, server_addr, unique, wait_until};
    use std::net::TcpListener;

    fn agent_addr() -> Option<String> {
        server_addr("GATEHOUSE_CONSUL_ADDR")
    }

    fn get_json(addr: &str, path: &str) -> Value {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let body = agent
            .get(format!("http://{addr}{path}"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        serde_json::from_str(&body).unwrap()
    }

    /// A link port the agent's TCP check can connect to (the backlog accepts without `accept`).
    fn link_listener() -> (TcpListener, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    }

    fn gate_instance(gid: &str, port: u16) -> ServiceInstance {
        ServiceInstance {
            metadata: BTreeMap::from([("region".to_string(), "eu".to_string())]),
            ..gate_record(gid, port)
        }
    }

    fn meta_of(service: &Value) -> BTreeMap<String, String> {
        serde_json::from_value(service["Meta"].clone()).unwrap()
    }

    #[test]
    fn gate_lifecycle() {
        let Some(addr) = agent_addr() else {
            eprintln!("GATEHOUSE_CONSUL_ADDR not set: skipped");
            return;
        };
        let (_listener, port) = link_listener();
        let gid = unique("life");
        let sid = format!("gate-{gid}");
        let inst = gate_instance(&gid, port);
        let client = ConsulClient::new(&addr).unwrap();
        let registrar = Registrar::start(
            client,
            inst.clone(),
            work(),
            ConsulConfig::default(),
            |_| {},
        )
        .unwrap();

        // The agent's view of the registration (cluster-protocol.md §11 item 1).
        let services = get_json(&addr, "/v1/agent/services");
        let service = &services[&sid];
        assert_eq!(service["ID"], sid.as_str());
        assert_eq!(service["Service"], "gate");
        assert_eq!(service["Address"], "127.0.0.1");
        assert_eq!(service["Port"], port);
        assert_eq!(service["TaggedAddresses"]["drpc"]["Address"], "127.0.0.1");
        assert_eq!(service["TaggedAddresses"]["drpc"]["Port"], port);
        let expected_meta: BTreeMap<String, String> = [
            ("_region", "eu"),
            ("alias", "gate"),
            ("endpoint", inst.endpoint.as_str()),
            ("id", gid.as_str()),
            ("kind", "gate"),
            ("state", "work"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(meta_of(service), expected_meta);

        let checks = get_json(&addr, "/v1/agent/checks");
        let ttl = &checks[&format!("service:{sid}")];
        assert_eq!(ttl["Type"], "ttl");
        assert_eq!(ttl["ServiceID"], sid.as_str());
        // Passed right after registration.
        assert_eq!(ttl["Status"], "passing");
        assert_eq!(ttl["Output"], "passed");
        let tcp = &checks[&format!("service:{sid}:1")];
        assert_eq!(tcp["Type"], "tcp");
        assert_eq!(tcp["ServiceID"], sid.as_str());

        // Listed as passing within 15 s (the TCP check first runs within its 10 s interval).
        let health_path = "/v1/health/service/gate?passing=1";
        let listed = |addr: &str| {
            get_json(addr, health_path)
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["Service"]["ID"] == sid.as_str())
        };
        wait_until("gate passing", Duration::from_secs(15), || listed(&addr));
        // The TTL stays passing past one TTL (10 s) thanks to the 5 s updates.
        std::thread::sleep(Duration::from_secs(11));
        assert!(listed(&addr), "gate no longer passing after 11 s");

        // Shutdown begins: Meta.state becomes hang, nothing else changes; still passing.
        registrar.set_state(InstanceState::Hang).unwrap();
        let service = get_json(&addr, "/v1/agent/services")[&sid].clone();
        let mut hang_meta = expected_meta.clone();
        hang_meta.insert("state".into(), "hang".into());
        assert_eq!(meta_of(&service), hang_meta);
        assert!(listed(&addr));
        assert_eq!(registrar.instance().state, InstanceState::Hang);

        registrar.stop();
        let services = get_json(&addr, "/v1/agent/services");
        assert!(services.get(&sid).is_none(), "{sid} still registered");
        let checks = get_json(&addr, "/v1/agent/checks");
        assert!(checks.get(format!("service:{sid}")).is_none());
        assert!(!listed(&addr));
    }

    #[test]
    fn watch_delivers_node_lists() {
        let Some(addr) = agent_addr() else {
            eprintln!("GATEHOUSE_CONSUL_ADDR not set: skipped");
            return;
        };
        let (_listener, port) = link_listener();
        let gid = unique("watch");
        let nid = unique("node");
        let client = ConsulClient::new(&addr).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded::<Vec<ServiceInstance>>();
        let registrar = Registrar::start(
            client.clone(),
            gate_instance(&gid, port),
            work(),
            ConsulConfig::default(),
            move |nodes| {
                let _ = tx.send(nodes);
            },
        )
        .unwrap();
        // The first list is delivered before start returns.
        let first = rx.try_recv().expect("first list delivered by start");
        assert!(!first.iter().any(|n| n.id == nid));

        // A node (TTL check only, so it passes at once) appears in a later list.
        let node = ServiceInstance {
            id: nid.clone(),
            name: "node".into(),
            kind: "node".into(),
            alias: "mahjong".into(),
            state: InstanceState::Work,
            events: vec![1, 3],
            routes: vec![super::super::RouteInfo {
                id: 7,
                internal: false,
                stateful: true,
                authorized: false,
            }],
            endpoint: format!("drpc://127.0.0.1:{port}?is_secure=false"),
            weight: 1,
            ..ServiceInstance::default()
        };
        let ttl_only = ConsulConfig {
            health_check: false,
            ..ConsulConfig::default()
        };
        client.register(&node, &ttl_only).unwrap();
        client.pass_ttl_check(&ttl_check_id(&node)).unwrap();
        let seen = |present: bool| {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let list = rx
                    .recv_timeout(left)
                    .unwrap_or_else(|_| panic!("no list with node present={present} in 5 s"));
                if let Some(found) = list.iter().find(|n| n.id == nid) {
                    if present {
                        return Some(found.clone());
                    }
                } else if !present {
                    return None;
                }
            }
        };
        assert_eq!(seen(true), Some(node.clone()));

        // Gone from the next list once deregistered (cluster-protocol.md §11 item 4: within ~2 s).
        let start = Instant::now();
        client.deregister_service(&service_id(&node)).unwrap();
        assert_eq!(seen(false), None);
        assert!(start.elapsed() < Duration::from_secs(3));

        registrar.stop();
        // No delivery after stop returned.
        std::thread::sleep(Duration::from_millis(300));
        while rx.try_recv().is_ok() {}
        client.register(&node, &ttl_only).unwrap();
        client.pass_ttl_check(&ttl_check_id(&node)).unwrap();
        assert!(rx.recv_timeout(Duration::from_secs(2)).is_err());
        client.deregister_service(&service_id(&node)).unwrap();
    }

    #[test]
    fn reregisters_when_the_agent_lost_the_service() {
        let Some(addr) = agent_addr() else {
            eprintln!("GATEHOUSE_CONSUL_ADDR not set: skipped");
            return;
        };
        let (_listener, port) = link_listener();
        let gid = unique("lost");
        let sid = format!("gate-{gid}");
        let client = ConsulClient::new(&addr).unwrap();
        let settings = ConsulConfig {
            heartbeat_check_interval: Duration::from_secs(2),
            ..ConsulConfig::default()
        };
        let state = work();
        let instance = gate_instance(&gid, port);
        let registrar =
            Registrar::start(client.clone(), instance, state.clone(), settings, |_| {}).unwrap();
        registrar.set_state(InstanceState::Hang).unwrap();
        // A node's setstate (through the node API) changes the one shared state without
        // registering; the next registration carries it.
        state.set_byte(InstanceState::Busy.as_byte());
        // What an agent restart looks like to the registrar: the service and its checks are gone.
        client.deregister(&gid).unwrap();
        assert!(get_json(&addr, "/v1/agent/services").get(&sid).is_none());
        wait_until("re-registration", Duration::from_secs(5), || {
            let services = get_json(&addr, "/v1/agent/services");
            services
                .get(&sid)
                .is_some_and(|s| s["Meta"]["state"] == "busy")
        });
        wait_until("TTL passing again", Duration::from_secs(3), || {
            get_json(&addr, "/v1/agent/checks")[&format!("service:{sid}")]["Status"] == "passing"
        });
        registrar.stop();
        assert!(get_json(&addr, "/v1/agent/services").get(&sid).is_none());
    }

    #[test]
    fn agent_refusals_fail_start() {
        let Some(addr) = agent_addr() else {
            eprintln!("GATEHOUSE_CONSUL_ADDR not set: skipped");
            return;
        };
        let (_listener, port) = link_listener();
        let gid = unique("bad");
        let mut inst = gate_instance(&gid, port);
        inst.metadata.insert("bad key!".into(), "x".into());
        let client = ConsulClient::new(&addr).unwrap();
        let err = Registrar::start(
            client.clone(),
            inst,
            work(),
            ConsulConfig::default(),
            |_| {},
        )
        .err()
        .expect("invalid meta key must fail registration");
        assert!(err.to_string().contains("400"), "{err}");
        assert!(
            matches!(err, RegistryError::Status { status: 400, .. }),
            "{err:?}"
        );
        assert!(get_json(&addr, "/v1/agent/services")
            .get(format!("gate-{gid}"))
            .is_none());

        // Both checks off: `"Check":null,"Checks":null` is accepted and the service passes.
        let none = ConsulConfig {
            health_check: false,
            heartbeat_check: false,
            ..ConsulConfig::default()
        };
        let gid = unique("nochecks");
        let registrar =
            Registrar::start(client, gate_instance(&gid, port), work(), none, |_| {}).unwrap();
        let health = get_json(&addr, "/v1/health/service/gate?passing=1");
        assert!(health
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["Service"]["ID"] == format!("gate-{gid}").as_str()));
        registrar.stop();
    }
}
