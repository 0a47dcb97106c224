//! The Nacos registry of the gate (docs/ops/nacos.md): Nacos's HTTP open API (v1), the beat
//! thread that keeps the ephemeral instance alive (re-registering without a limit) and the poll
//! of the `node` service.
//!
//! Like the Consul and etcd registrars, everything here blocks and runs on plain std threads of
//! the control plane (`nacos-beat`, `nacos-watch`), never on a shard, over the `ureq` client the
//! others use. due's own registry speaks Nacos's gRPC protocol (nacos-sdk-go v2), which would
//! bring tonic, prost, hyper and a tokio runtime into the build for four calls; the v1 open API
//! that every Nacos 1.x and 2.x server serves writes the same instance, which due's nodes see
//! through their gRPC subscriptions like any other (tests/interop/nacos, docs/ops/nacos.md).
//!
//! What a due node or an operator sees is due's: service `gate`, the configured group and
//! cluster, the link's ip and port, weight 1, ephemeral, healthy, enabled, the metadata of
//! `nacos_meta`; a state change registers again with the new state; shutdown deregisters.
//! What differs, on purpose: the instance lives by beats every 5 s (the server marks it
//! unhealthy 15 s after the last one and deletes it after 30 s) rather than by one gRPC
//! connection (gone ~1 s after a crash); a first register the server refuses is retried, where
//! due's gate exits; a lost instance (server restarted, beats refused) is registered again
//! without a limit; `timeout` is the duration it names (due hands the SDK 1000× that); the node
//! list is polled every second (due's watcher is pushed, 136–390 ms here).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use serde::Deserialize;

use super::nacos_meta::{self, Host};
use super::worker::{self, stopped_within, CallError, Stop};
#[cfg(test)]
use super::InstanceState;
use super::{endpoint_host_port, RegistryError, ServiceInstance};
use crate::config::NacosConfig;
use crate::instance::StateCell;
use crate::metrics::ControlMetrics;

/// The backend's name in errors.
const BACKEND: &str = "nacos";
/// The service the gate watches.
const NODE_SERVICE: &str = "node";
/// Beat period (Nacos's default `instanceHeartBeatInterval`; the server may ask for another).
const BEAT: Duration = Duration::from_secs(5);
/// How often the node list is read.
const POLL: Duration = Duration::from_secs(1);
/// First pause after a failed beat or registration; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How many times start-up registers before it gives up (a server that has just started can
/// refuse the first calls).
const START_TRIES: u32 = 5;
/// Nacos's answer code to a beat for an instance it does not have.
const NOT_FOUND: i64 = 20404;
/// Upper bound on an answer's body.
const MAX_BODY: u64 = 16 << 20;

/// A blocking client of a Nacos server's open API, failing over between the configured URLs.
pub struct NacosClient {
    agent: ureq::Agent,
    /// `scheme://host:port/contextPath` of every server, in configuration order.
    bases: Vec<String>,
    /// The server that answered last; calls start there.
    current: AtomicUsize,
    namespace: String,
    group: String,
    cluster: String,
    credentials: Option<(String, String)>,
    token: Mutex<Option<String>>,
}

impl std::fmt::Debug for NacosClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NacosClient")
            .field("bases", &self.bases)
            .field("group", &self.group)
            .field("cluster", &self.cluster)
            .finish()
    }
}

/// Where an instance lives in Nacos: its ip (no brackets) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub ip: String,
    pub port: u16,
}

impl Address {
    /// The ip and port of an instance's `drpc://host:port` endpoint, as due's registrar takes
    /// them.
    pub fn of(inst: &ServiceInstance) -> Result<Address, RegistryError> {
        let hp = endpoint_host_port(&inst.endpoint).ok_or_else(|| RegistryError::Record {
            backend: BACKEND,
            reason: format!("endpoint {:?} has no host:port", inst.endpoint),
        })?;
        // The bare host: Nacos takes IPv6 without brackets.
        Ok(Address {
            ip: hp.host.to_string(),
            port: hp.port,
        })
    }
}

#[derive(Deserialize)]
struct InstanceList {
    #[serde(default)]
    hosts: Vec<Host>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BeatAnswer {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    client_beat_interval: u64,
}

impl NacosClient {
    /// A client of `settings.urls`. With both `username` and `password` set it logs in at once
    /// (a refused login fails here).
    pub fn new(settings: &NacosConfig) -> Result<NacosClient, RegistryError> {
        if settings.urls.is_empty() {
            return Err(RegistryError::Address {
                backend: BACKEND,
                addr: String::new(),
                reason: "no server URL".into(),
            });
        }
        let config = ureq::Agent::config_builder()
            // Errors are read, not turned into ureq errors: their body says what is wrong.
            .http_status_as_error(false)
            // Servers are local or on the LAN; an http_proxy for the outside must not apply.
            .proxy(None)
            .timeout_global(Some(settings.timeout))
            .build();
        let client = NacosClient {
            agent: config.into(),
            bases: settings
                .urls
                .iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            current: AtomicUsize::new(0),
            namespace: settings.namespace_id.clone(),
            group: settings.group_name.clone(),
            cluster: settings.cluster_name.clone(),
            credentials: (!settings.username.is_empty() && !settings.password.is_empty())
                .then(|| (settings.username.clone(), settings.password.clone())),
            token: Mutex::new(None),
        };
        if client.credentials.is_some() {
            client.login()?;
        }
        Ok(client)
    }

    /// `POST /v1/auth/login` (Nacos's auth plugin): the access token sent with every call.
    fn login(&self) -> Result<(), RegistryError> {
        let Some((name, password)) = &self.credentials else {
            return Ok(());
        };
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let what = format!("login as {name:?}");
        let body = self
            .send(
                "POST",
                "/v1/auth/login",
                &[("username", name.clone()), ("password", password.clone())],
            )
            .map_err(|e| e.describe(BACKEND, &what))?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| RegistryError::Decode {
                backend: BACKEND,
                call: what.clone(),
                reason: e.to_string(),
            })?;
        let token = v["accessToken"]
            .as_str()
            .ok_or_else(|| RegistryError::Decode {
                backend: BACKEND,
                call: what,
                reason: "no accessToken in the answer".into(),
            })?;
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.to_string());
        Ok(())
    }

    /// The service's parameters: name, group, namespace (when set).
    fn service(&self, name: &str) -> Vec<(&'static str, String)> {
        let mut p = vec![
            ("serviceName", name.to_string()),
            ("groupName", self.group.clone()),
        ];
        if !self.namespace.is_empty() {
            p.push(("namespaceId", self.namespace.clone()));
        }
        p
    }

    /// The instance's identity in the service: cluster, ip, port, ephemeral.
    fn instance(&self, name: &str, at: &Address) -> Vec<(&'static str, String)> {
        let mut p = self.service(name);
        p.extend([
            ("clusterName", self.cluster.clone()),
            ("ip", at.ip.clone()),
            ("port", at.port.to_string()),
            ("ephemeral", "true".to_string()),
        ]);
        p
    }

    /// Registers (or overwrites) `inst` at `at`: ephemeral, weight 1, enabled and healthy, due's
    /// metadata.
    pub fn register(&self, inst: &ServiceInstance, at: &Address) -> Result<(), RegistryError> {
        let mut p = self.instance(&inst.name, at);
        let metadata = serde_json::to_string(&nacos_meta::encode(inst)).unwrap_or_default();
        p.extend([
            ("weight", "1".to_string()),
            ("enabled", "true".to_string()),
            ("healthy", "true".to_string()),
            ("metadata", metadata),
        ]);
        let what = format!("register {} {}:{}", inst.name, at.ip, at.port);
        self.expect_ok(&what, "POST", "/v1/ns/instance", &p)
    }

    /// One beat; `Ok(Some(period))` (the server's wish) when it knows the instance, `Ok(None)`
    /// when it does not (register again).
    pub fn beat(&self, name: &str, at: &Address) -> Result<Option<Duration>, RegistryError> {
        let what = format!("beat {name} {}:{}", at.ip, at.port);
        let body = self.call(
            &what,
            "PUT",
            "/v1/ns/instance/beat",
            &self.instance(name, at),
        )?;
        let answer: BeatAnswer =
            serde_json::from_str(&body).map_err(|e| RegistryError::Decode {
                backend: BACKEND,
                call: what,
                reason: format!("{e}: {body:?}"),
            })?;
        if answer.code == NOT_FOUND {
            return Ok(None);
        }
        let period = match answer.client_beat_interval {
            0 => BEAT,
            ms => Duration::from_millis(ms).clamp(Duration::from_millis(500), BEAT * 6),
        };
        Ok(Some(period))
    }

    /// Removes the instance at `at` from service `name`.
    pub fn deregister(&self, name: &str, at: &Address) -> Result<(), RegistryError> {
        let what = format!("deregister {name} {}:{}", at.ip, at.port);
        self.expect_ok(&what, "DELETE", "/v1/ns/instance", &self.instance(name, at))
    }

    /// The healthy instances of service `name` in the configured cluster.
    pub fn list(&self, name: &str) -> Result<Vec<Host>, RegistryError> {
        let mut p = self.service(name);
        p.extend([
            ("clusters", self.cluster.clone()),
            ("healthyOnly", "true".to_string()),
        ]);
        let what = format!("list {name}");
        let body = self.call(&what, "GET", "/v1/ns/instance/list", &p)?;
        let list: InstanceList =
            serde_json::from_str(&body).map_err(|e| RegistryError::Decode {
                backend: BACKEND,
                call: what,
                reason: e.to_string(),
            })?;
        Ok(list.hosts)
    }

    fn expect_ok(
        &self,
        what: &str,
        method: &str,
        path: &str,
        params: &[(&'static str, String)],
    ) -> Result<(), RegistryError> {
        let body = self.call(what, method, path, params)?;
        if body.trim() == "ok" {
            Ok(())
        } else {
            Err(RegistryError::Decode {
                backend: BACKEND,
                call: what.to_string(),
                reason: format!("answer {:?} instead of \"ok\"", body.trim()),
            })
        }
    }

    /// A call with a new login after a 403 when credentials are configured.
    fn call(
        &self,
        what: &str,
        method: &str,
        path: &str,
        params: &[(&'static str, String)],
    ) -> Result<String, RegistryError> {
        match self.send(method, path, params) {
            Err(CallError::Status(403, _)) if self.credentials.is_some() => {
                self.login()?;
                self.send(method, path, params)
            }
            other => other,
        }
        .map_err(|e| e.describe(BACKEND, what))
    }

    /// Sends the request (parameters in the query, as the open API reads them for every
    /// method) to the servers in turn until one answers; `Ok` only for HTTP 200.
    fn send(
        &self,
        method: &str,
        path: &str,
        params: &[(&'static str, String)],
    ) -> Result<String, CallError> {
        let n = self.bases.len();
        let start = self.current.load(Ordering::Relaxed);
        let token = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut last = String::new();
        for k in 0..n {
            let i = (start + k) % n;
            let url = format!("{}{path}", self.bases[i]);
            let mut query: Vec<(&str, &str)> =
                params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            if let Some(t) = &token {
                query.push(("accessToken", t));
            }
            let sent = match method {
                "GET" => self.agent.get(&url).query_pairs(query).call(),
                "DELETE" => self.agent.delete(&url).query_pairs(query).call(),
                "PUT" => self.agent.put(&url).query_pairs(query).send_empty(),
                _ => self.agent.post(&url).query_pairs(query).send_empty(),
            };
            match sent {
                Ok(mut response) => {
                    self.current.store(i, Ordering::Relaxed);
                    let status = response.status().as_u16();
                    let body = response
                        .body_mut()
                        .with_config()
                        .limit(MAX_BODY)
                        .read_to_string()
                        .map_err(|e| CallError::Transport(e.to_string()))?;
                    if status != 200 {
                        return Err(CallError::Status(status, body));
                    }
                    return Ok(body);
                }
                Err(e) => last = format!("{}: {e}", self.bases[i]),
            }
        }
        Err(CallError::Transport(last))
    }
}

/// What is registered: the record and where.
pub(super) struct Registration {
    instance: ServiceInstance,
    at: Address,
}

/// State shared by the registrar's handle and its threads.
pub(super) struct Shared {
    client: NacosClient,
    /// Held for the whole of every registration (and of the final deregistration), so
    /// registrations never interleave and none can follow the deregistration.
    registration: Mutex<Registration>,
    /// The instance state, owned with the node API: every registration carries its value.
    state: StateCell,
    stop: Stop,
    metrics: Arc<ControlMetrics>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Registration> {
        self.registration.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stopped(&self) -> bool {
        self.stop.stopped()
    }

    /// Registers the record with the current state. Caller holds the registration lock.
    fn register_locked(&self, reg: &mut Registration) -> Result<(), RegistryError> {
        reg.instance.state = self.state.get();
        self.client.register(&reg.instance, &reg.at)
    }
}

/// The gate's ephemeral instance in Nacos plus the node poll: registers on start, beats (and
/// registers again whenever Nacos lost it, without a limit), pushes every new `node` list,
/// deregisters on stop.
pub(super) type Registrar = worker::Registrar<Shared>;

impl worker::Backend for Shared {
    const NAME: &'static str = BACKEND;
    type Registration = Registration;

    fn registration(&self) -> MutexGuard<'_, Registration> {
        self.lock()
    }

    fn stop_flag(&self) -> &Stop {
        &self.stop
    }

    fn state(&self) -> &StateCell {
        &self.state
    }

    fn register_locked(&self, reg: &mut Registration) -> Result<(), RegistryError> {
        Shared::register_locked(self, reg)
    }

    fn deregister_quietly(&self) {
        deregister_quietly(self)
    }
}

impl Registrar {
    /// Registers `instance` (retrying a refused first call a few times, which due does not),
    /// lists the nodes and hands them to `on_nodes` before returning (an error here ends the
    /// gate's start-up), then starts the `nacos-beat` and `nacos-watch` threads.
    ///
    /// `on_nodes` runs on the calling thread for the first list, then on the watch thread.
    pub fn start(
        settings: NacosConfig,
        instance: ServiceInstance,
        state: StateCell,
        on_nodes: impl Fn(Vec<ServiceInstance>) + Send + 'static,
        metrics: Arc<ControlMetrics>,
    ) -> Result<Registrar, RegistryError> {
        let client = NacosClient::new(&settings)?;
        let at = Address::of(&instance)?;
        let shared = Arc::new(Shared {
            client,
            registration: Mutex::new(Registration { instance, at }),
            state,
            stop: Stop::default(),
            metrics,
        });
        {
            let mut reg = shared.lock();
            let mut pause = RETRY_FIRST;
            let mut tries = 1;
            while let Err(e) = shared.register_locked(&mut reg) {
                if tries == START_TRIES {
                    return Err(e);
                }
                tracing::warn!(error = %e, retry_in = ?pause, "nacos: register failed; retrying");
                std::thread::sleep(pause);
                pause = (pause * 2).min(RETRY_MAX);
                tries += 1;
            }
        }
        let mut view = NodeView::default();
        match shared.client.list(NODE_SERVICE) {
            Ok(hosts) => {
                view.replace(hosts);
            }
            Err(e) => {
                deregister_quietly(&shared);
                return Err(e);
            }
        }
        on_nodes(view.list());

        let s = shared.clone();
        let w = shared.clone();
        worker::Registrar::spawn(
            shared,
            vec![
                ("nacos-beat", Box::new(move |stop| beat_loop(&s, &stop))),
                (
                    "nacos-watch",
                    Box::new(move |stop| watch_loop(&w, &stop, view, on_nodes)),
                ),
            ],
        )
    }

    /// Where the instance is registered.
    #[cfg(test)]
    pub fn address(&self) -> Address {
        self.shared.lock().at.clone()
    }
}

/// Deregisters under the registration lock (after any registration in flight).
fn deregister_quietly(shared: &Shared) {
    let reg = shared.lock();
    if let Err(e) = shared.client.deregister(&reg.instance.name, &reg.at) {
        tracing::warn!(error = %e, "nacos: deregistration failed; the instance goes 30 s after its last beat");
    }
}

/// The beat thread: a beat every period the server asks for (5 s); when Nacos does not know
/// the instance (restarted, or it expired it), register again at once; when Nacos cannot be
/// reached, retry with a backoff of 0.5 s doubling to 5 s, without a limit.
fn beat_loop(shared: &Shared, stop: &Receiver<()>) {
    let mut backoff = RETRY_FIRST;
    let mut failing_since: Option<Instant> = None;
    let mut wait = BEAT;
    loop {
        if stopped_within(stop, wait) || shared.stopped() {
            return;
        }
        let (name, at) = {
            let reg = shared.lock();
            (reg.instance.name.clone(), reg.at.clone())
        };
        let result = match shared.client.beat(&name, &at) {
            Ok(Some(period)) => Ok(period),
            Ok(None) => {
                let mut reg = shared.lock();
                if shared.stopped() {
                    return;
                }
                tracing::warn!(
                    service = %name,
                    ip = %at.ip,
                    port = at.port,
                    "nacos: the server does not know the instance (restarted, or it expired it); \
                     registering again"
                );
                shared.register_locked(&mut reg).map(|()| BEAT)
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(period) => {
                if let Some(since) = failing_since.take() {
                    tracing::info!(after = ?since.elapsed(), "nacos: beats accepted again");
                }
                backoff = RETRY_FIRST;
                wait = period;
            }
            Err(e) => {
                if shared.stopped() {
                    return;
                }
                shared.metrics.registry_errors.add_shared(1);
                let since = *failing_since.get_or_insert_with(Instant::now);
                tracing::warn!(
                    error = %e,
                    failing_for = ?since.elapsed(),
                    retry_in = ?backoff,
                    "nacos: beat failed; retrying without a limit"
                );
                wait = backoff;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

/// The node list as last read: decoded instances by Nacos address, and the raw hosts they came
/// from (a list is delivered only when those changed).
#[derive(Default)]
struct NodeView {
    hosts: Vec<Host>,
    nodes: BTreeMap<(String, u16), ServiceInstance>,
}

impl NodeView {
    /// Replaces the view; true when it changed. An undecodable host is logged and left out.
    fn replace(&mut self, mut hosts: Vec<Host>) -> bool {
        hosts.sort_by(|a, b| (&a.ip, a.port).cmp(&(&b.ip, b.port)));
        if hosts == self.hosts {
            return false;
        }
        self.nodes.clear();
        for h in &hosts {
            match nacos_meta::decode(h) {
                Ok(Some(inst)) => {
                    self.nodes.insert((h.ip.clone(), h.port), inst);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    ip = %h.ip,
                    port = h.port,
                    error = %e,
                    "nacos: undecodable node instance ignored"
                ),
            }
        }
        self.hosts = hosts;
        true
    }

    fn list(&self) -> Vec<ServiceInstance> {
        self.nodes.values().cloned().collect()
    }
}

/// The watch thread: reads the node list every second and delivers it when it changed.
fn watch_loop(
    shared: &Shared,
    stop: &Receiver<()>,
    mut view: NodeView,
    on_nodes: impl Fn(Vec<ServiceInstance>),
) {
    let mut failing = false;
    loop {
        if stopped_within(stop, POLL) || shared.stopped() {
            return;
        }
        match shared.client.list(NODE_SERVICE) {
            Ok(hosts) => {
                if failing {
                    failing = false;
                    tracing::info!("nacos: node list readable again");
                }
                if view.replace(hosts) && !shared.stop.deliver(|| on_nodes(view.list())) {
                    return;
                }
            }
            Err(e) => {
                shared.metrics.registry_errors.add_shared(1);
                if !failing {
                    tracing::warn!(error = %e, "nacos: reading the node list failed; retrying every 1 s");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_endpoints() {
        let mut inst = ServiceInstance {
            endpoint: "drpc://127.0.0.1:40000?is_secure=false".into(),
            ..ServiceInstance::default()
        };
        assert_eq!(
            Address::of(&inst).unwrap(),
            Address {
                ip: "127.0.0.1".into(),
                port: 40000
            }
        );
        inst.endpoint = "drpc://[fd00::5]:1?is_secure=false".into();
        assert_eq!(Address::of(&inst).unwrap().ip, "fd00::5");
        inst.endpoint = "nowhere".into();
        assert!(matches!(
            Address::of(&inst),
            Err(RegistryError::Record { .. })
        ));
    }

    #[test]
    fn node_view_delivers_changes_only() {
        let host = |port: u16, state: &str| Host {
            ip: "127.0.0.1".into(),
            port,
            healthy: true,
            enabled: true,
            metadata: [
                ("id", format!("n{port}")),
                ("name", "node".into()),
                ("kind", "node".into()),
                ("state", state.into()),
                (
                    "endpoint",
                    format!("drpc://127.0.0.1:{port}?is_secure=false"),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        };
        let mut v = NodeView::default();
        assert!(v.replace(vec![host(2, "work"), host(1, "work")]));
        assert_eq!(
            v.list().iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            ["n1", "n2"]
        );
        assert!(
            !v.replace(vec![host(1, "work"), host(2, "work")]),
            "same set"
        );
        assert!(v.replace(vec![host(1, "busy"), host(2, "work")]));
        assert_eq!(v.list()[0].state, InstanceState::Busy);
        let mut broken = host(3, "work");
        broken.metadata.insert("events".into(), "{".into());
        assert!(v.replace(vec![host(1, "busy"), broken]));
        assert_eq!(v.list().len(), 1, "the undecodable one is left out");
    }

    #[test]
    fn unreachable_nacos_fails_start() {
        let settings = NacosConfig {
            urls: vec!["http://127.0.0.1:9/nacos".into()],
            timeout: Duration::from_millis(300),
            ..NacosConfig::default()
        };
        let inst = crate::registry::real_server::gate_record("g-unreachable", 40000);
        let started = Instant::now();
        let r = Registrar::start(
            settings,
            inst,
            StateCell::new(InstanceState::Work),
            |_| {},
            Arc::default(),
        );
        assert!(
            matches!(r, Err(RegistryError::Transport { .. })),
            "{:?}",
            r.err()
        );
        // Five tries, pauses 0.5 + 1 + 2 + 4 s.
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

/// Tests against a real Nacos; they run only when `GATEHOUSE_NACOS_ADDR` names its HTTP
/// `host:port` (`scripts/nacos.sh start 18848 /tmp/nacos && GATEHOUSE_NACOS_ADDR=127.0.0.1:18848
/// cargo test registry::nacos`).
#[cfg(test)]
mod real_nacos {
    use super::*;
    use crate::registry::real_server::{gate_record, server_addr, unique, wait_until};

    fn settings(addr: &str, group: &str) -> NacosConfig {
        NacosConfig {
            urls: vec![format!("http://{addr}/nacos")],
            // A group of its own per test and run: tests share the server.
            group_name: group.to_string(),
            ..NacosConfig::default()
        }
    }

    fn node(id: &str, port: u16, state: &str) -> ServiceInstance {
        let mut n = gate_record(id, port);
        n.name = "node".into();
        n.kind = "node".into();
        n.alias = "game".into();
        n.state = InstanceState::from_text(state);
        n.routes = vec![crate::registry::RouteInfo {
            id: 1,
            ..Default::default()
        }];
        n
    }

    #[test]
    fn lifecycle_metadata_state_and_nodes() {
        let Some(addr) = server_addr("GATEHOUSE_NACOS_ADDR") else {
            eprintln!("GATEHOUSE_NACOS_ADDR not set: skipped");
            return;
        };
        let group = unique("life");
        let cfg = settings(&addr, &group);
        let other = NacosClient::new(&cfg).unwrap();
        // A node is there first (as a due node registers it), then one more, then one leaves.
        other
            .register(
                &node("n1", 41001, "work"),
                &Address::of(&node("n1", 41001, "work")).unwrap(),
            )
            .unwrap();
        let lists: Arc<Mutex<Vec<Vec<ServiceInstance>>>> = Arc::default();
        let seen = lists.clone();
        let state = StateCell::new(InstanceState::Work);
        let registrar = Registrar::start(
            cfg.clone(),
            gate_record("g1", 40100),
            state.clone(),
            move |l| seen.lock().unwrap().push(l),
            Arc::default(),
        )
        .unwrap();
        assert_eq!(lists.lock().unwrap()[0], vec![node("n1", 41001, "work")]);

        // What another client reads: the gate, with due's metadata.
        let hosts = other.list("gate").unwrap();
        assert_eq!(hosts.len(), 1, "{hosts:?}");
        assert_eq!((hosts[0].ip.as_str(), hosts[0].port), ("127.0.0.1", 40100));
        assert_eq!(
            hosts[0].metadata,
            nacos_meta::encode(&gate_record("g1", 40100))
        );

        let n2 = node("n2", 41002, "busy");
        other.register(&n2, &Address::of(&n2).unwrap()).unwrap();
        wait_until("the second node delivered", Duration::from_secs(5), || {
            lists.lock().unwrap().last().is_some_and(|l| l.len() == 2)
        });
        other
            .deregister("node", &Address::of(&node("n1", 41001, "work")).unwrap())
            .unwrap();
        wait_until(
            "the first node's leaving delivered",
            Duration::from_secs(5),
            || lists.lock().unwrap().last() == Some(&vec![n2.clone()]),
        );

        // A state change is a registration with the new state.
        registrar.set_state(InstanceState::Hang).unwrap();
        wait_until("state hang visible", Duration::from_secs(5), || {
            other
                .list("gate")
                .is_ok_and(|h| h.len() == 1 && h[0].metadata["state"] == "hang")
        });

        // Lost instance (deleted behind the gate's back): the next beat registers it again.
        other.deregister("gate", &registrar.address()).unwrap();
        wait_until(
            "gone behind the gate's back",
            Duration::from_secs(5),
            || other.list("gate").is_ok_and(|h| h.is_empty()),
        );
        wait_until(
            "registered again after a beat",
            Duration::from_secs(12),
            || {
                other
                    .list("gate")
                    .is_ok_and(|h| h.len() == 1 && h[0].metadata["state"] == "hang")
            },
        );

        // Stop deregisters.
        registrar.stop();
        wait_until("deregistered", Duration::from_secs(5), || {
            other.list("gate").is_ok_and(|h| h.is_empty())
        });
        other
            .deregister("node", &Address::of(&n2).unwrap())
            .unwrap();
    }
}
