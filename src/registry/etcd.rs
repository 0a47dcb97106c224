//! The etcd registry of the gate (etcd-registry.md): the client of etcd's v3 JSON gateway, the
//! lease keep-alive thread (re-registering without a limit) and the prefix watch of `node`.
//!
//! Like the Consul registrar, everything here blocks and runs on plain std threads of the
//! control plane (`etcd-lease`, `etcd-watch`), never on a shard. The wire is etcd's own
//! gRPC-gateway (`POST /v3/...`, JSON, bytes as base64, int64 as strings), served by etcd 3.4
//! and 3.5 on the client port; the HTTP client is the `ureq` the Consul registrar uses, so etcd
//! adds no crate (a gRPC client would bring tonic, prost, hyper and a tokio runtime into a
//! build for five calls).
//!
//! What a due node or operator sees is due's (etcd-registry.md §3–§5, §8): the key
//! `/<namespace>/gate/<gid>`, the JSON value of `etcd_value`, a new lease of TTL
//! `⌊retryInterval⌋ + 1` per registration (also the `hang` one), keep-alives every TTL/3, the
//! key deleted on shutdown and the lease left to expire. Where due is fragile this differs, on
//! purpose: after losing its lease due re-puts at most `retryTimes` times and then gives up for
//! good; here the keep-alive thread keeps trying (backoff 1 s doubling to `retryInterval`) and
//! re-registers as soon as etcd says the lease is gone. The watch covers `/<ns>/node/` (with the
//! slash), starts right after the list's revision (no gap), skips undecodable values, and
//! re-lists when its history is gone (compaction, an etcd that came back empty).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use crossbeam_channel::Receiver;
use serde_json::{json, Value};

use super::etcd_value::{self, range_end};
use super::worker::{self, stopped_within, CallError, Stop};
#[cfg(test)]
use super::InstanceState;
use super::{RegistryError, ServiceInstance};
use crate::config::EtcdConfig;
use crate::instance::StateCell;
use crate::metrics::ControlMetrics;

/// The backend's name in errors.
const BACKEND: &str = "etcd";
/// The service the gate watches.
const NODE_SERVICE: &str = "node";
/// Each watch request is cut after this long and opened again from the next revision (nothing
/// is missed). It bounds how long a dead connection (no FIN, e.g. a partition) goes unnoticed
/// and how long the watch thread takes to see a stop.
const WATCH_WINDOW: Duration = Duration::from_secs(5);
/// Pause after a failed list or watch before the next attempt.
const WATCH_RETRY: Duration = Duration::from_secs(1);
/// First pause after a failed keep-alive or re-registration; doubles up to `retryInterval`.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Upper bound on an answer's body (a range over every node: a few KiB each).
const MAX_BODY: u64 = 64 << 20;

impl CallError {
    /// etcd refused the token (expired after a restart, or none sent): authenticate again.
    fn is_auth(&self) -> bool {
        match self {
            CallError::Status(_, m) => {
                m.contains("invalid auth token") || m.contains("user name is empty")
            }
            CallError::Transport(_) => false,
        }
    }
}

/// A blocking client of an etcd cluster's v3 JSON gateway, failing over between members.
pub struct EtcdClient {
    agent: ureq::Agent,
    /// `http://host:port` of every member, in configuration order.
    endpoints: Vec<String>,
    /// The member that answered last; calls start there.
    current: AtomicUsize,
    /// `username`/`password` when both are set (v2.5.8's rule).
    credentials: Option<(String, String)>,
    token: Mutex<Option<String>>,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient")
            .field("endpoints", &self.endpoints)
            .field("auth", &self.credentials.as_ref().map(|(u, _)| u))
            .finish()
    }
}

/// A key and its value, as etcd returned them.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// One event of a watch response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub delete: bool,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// One response of a watch stream.
#[derive(Debug, Default)]
pub struct WatchResponse {
    /// The store's revision when the response was sent.
    pub revision: i64,
    pub created: bool,
    pub canceled: bool,
    pub compact_revision: i64,
    pub events: Vec<WatchEvent>,
}

/// An open watch: responses as they come, until the window ends or the stream breaks.
pub struct WatchStream {
    responses: serde_json::StreamDeserializer<
        'static,
        serde_json::de::IoRead<ureq::BodyReader<'static>>,
        Value,
    >,
}

impl Iterator for WatchStream {
    type Item = Result<WatchResponse, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let v = match self.responses.next()? {
            Ok(v) => v,
            Err(e) => return Some(Err(e.to_string())),
        };
        if let Some(e) = v.get("error") {
            return Some(Err(error_message(e)));
        }
        let r = &v["result"];
        let events = match r["events"].as_array() {
            None => Vec::new(),
            Some(events) => match events.iter().map(watch_event).collect() {
                Ok(events) => events,
                Err(e) => return Some(Err(e)),
            },
        };
        Some(Ok(WatchResponse {
            revision: int(&r["header"]["revision"]),
            created: r["created"].as_bool().unwrap_or(false),
            canceled: r["canceled"].as_bool().unwrap_or(false),
            compact_revision: int(&r["compact_revision"]),
            events,
        }))
    }
}

fn watch_event(e: &Value) -> Result<WatchEvent, String> {
    let kv = &e["kv"];
    Ok(WatchEvent {
        // PUT is the enum's default and has no `type` member on the gateway.
        delete: e["type"].as_str() == Some("DELETE"),
        key: bytes(&kv["key"])?,
        value: bytes(&kv["value"])?,
        mod_revision: int(&kv["mod_revision"]),
    })
}

/// An int64 of the gateway: a JSON string (or number); absent is 0.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// A bytes field of the gateway (base64); absent is empty.
fn bytes(v: &Value) -> Result<Vec<u8>, String> {
    match v.as_str() {
        None => Ok(Vec::new()),
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| format!("bad base64 from etcd: {e}")),
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// etcd's explanation in an error body (`{"error":…,"code":…,"message":…}`, or a stream's
/// `{"error":{"grpc_code":…,"message":…}}`), else the body itself.
fn error_message(v: &Value) -> String {
    for m in [&v["message"], &v["error"], &v["error"]["message"]] {
        if let Some(s) = m.as_str() {
            return s.to_string();
        }
    }
    v.to_string()
}

impl EtcdClient {
    /// A client of the members `addrs` (`host:port`, plain HTTP, as due's client: no TLS).
    /// With both `username` and `password` set it authenticates at once (a wrong password fails
    /// here, like due v2.5.8's client creation).
    pub fn new(settings: &EtcdConfig) -> Result<EtcdClient, RegistryError> {
        if settings.addrs.is_empty() {
            return Err(RegistryError::Address {
                backend: BACKEND,
                addr: String::new(),
                reason: "no member address".into(),
            });
        }
        let config = ureq::Agent::config_builder()
            // Errors are read, not turned into ureq errors: their body says what is wrong.
            .http_status_as_error(false)
            // Members are local or on the LAN; an http_proxy for the outside must not apply.
            .proxy(None)
            .timeout_connect(Some(settings.dial_timeout))
            .timeout_global(Some(settings.timeout))
            .build();
        let client = EtcdClient {
            agent: config.into(),
            endpoints: settings
                .addrs
                .iter()
                .map(|a| format!("http://{a}"))
                .collect(),
            current: AtomicUsize::new(0),
            credentials: (!settings.username.is_empty() && !settings.password.is_empty())
                .then(|| (settings.username.clone(), settings.password.clone())),
            token: Mutex::new(None),
        };
        if client.credentials.is_some() {
            client.authenticate()?;
        }
        Ok(client)
    }

    fn authenticate(&self) -> Result<(), RegistryError> {
        let Some((name, password)) = &self.credentials else {
            return Ok(());
        };
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let body = json!({"name": name, "password": password}).to_string();
        let answer = self
            .post_once("/v3/auth/authenticate", &body)
            .map_err(|e| e.describe(BACKEND, &format!("authenticate as {name:?}")))?;
        let token = answer["token"]
            .as_str()
            .ok_or_else(|| RegistryError::Decode {
                backend: BACKEND,
                call: format!("authenticate as {name:?}"),
                reason: "no token in the answer".into(),
            })?;
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.to_string());
        Ok(())
    }

    /// `POST path` with a JSON body to the members in turn (starting with the last one that
    /// answered) until one answers; an etcd error is returned as is. With credentials, a
    /// refused token is renewed once.
    fn post(&self, what: &str, path: &str, body: &Value) -> Result<Value, RegistryError> {
        let text = body.to_string();
        match self.post_once(path, &text) {
            Err(e) if e.is_auth() && self.credentials.is_some() => {
                self.authenticate()?;
                self.post_once(path, &text)
            }
            other => other,
        }
        .map_err(|e| e.describe(BACKEND, what))
    }

    fn post_once(&self, path: &str, text: &str) -> Result<Value, CallError> {
        let mut response = self.open(path, text, None)?;
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| CallError::Transport(e.to_string()))?;
        // Streaming calls (keep-alive) answer a sequence of objects: the first is ours.
        let first = serde_json::Deserializer::from_str(&body)
            .into_iter::<Value>()
            .next()
            .unwrap_or(Ok(Value::Null))
            .map_err(|e| CallError::Transport(format!("bad answer {body:?}: {e}")))?;
        if let Some(e) = first.get("error") {
            return Err(CallError::Status(200, error_message(e)));
        }
        Ok(first)
    }

    /// Sends the request to the members in turn; `Ok` only for HTTP 200.
    fn open(
        &self,
        path: &str,
        text: &str,
        timeout: Option<Duration>,
    ) -> Result<ureq::http::Response<ureq::Body>, CallError> {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for k in 0..n {
            let i = (start + k) % n;
            let mut request = self.agent.post(format!("{}{path}", self.endpoints[i]));
            if let Some(t) = timeout {
                request = request.config().timeout_global(Some(t)).build();
            }
            let token = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(token) = token {
                request = request.header("Authorization", token);
            }
            match request.content_type("application/json").send(text) {
                Err(e) => {
                    last = format!("{}: {e}", self.endpoints[i]);
                    continue;
                }
                Ok(mut response) => {
                    self.current.store(i, Ordering::Relaxed);
                    let status = response.status().as_u16();
                    if status == 200 {
                        return Ok(response);
                    }
                    let body = response
                        .body_mut()
                        .with_config()
                        .limit(MAX_BODY)
                        .read_to_string()
                        .unwrap_or_default();
                    let message = serde_json::from_str::<Value>(&body)
                        .map(|v| error_message(&v))
                        .unwrap_or(body);
                    return Err(CallError::Status(status, message));
                }
            }
        }
        Err(CallError::Transport(last))
    }

    /// `LeaseGrant {TTL}` → the lease ID etcd chose.
    pub fn grant(&self, ttl: i64) -> Result<i64, RegistryError> {
        let what = format!("grant of a {ttl} s lease");
        let answer = self.post(&what, "/v3/lease/grant", &json!({"TTL": ttl.to_string()}))?;
        match int(&answer["ID"]) {
            0 => Err(RegistryError::Decode {
                backend: BACKEND,
                call: what,
                reason: format!("no lease ID in {answer}"),
            }),
            id => Ok(id),
        }
    }

    /// `Put {key, value, lease}`.
    pub fn put(&self, key: &str, value: &str, lease: i64) -> Result<(), RegistryError> {
        let body = json!({
            "key": b64(key.as_bytes()),
            "value": b64(value.as_bytes()),
            "lease": lease.to_string(),
        });
        self.post(&format!("put {key}"), "/v3/kv/put", &body)
            .map(drop)
    }

    /// `DeleteRange {key}` (one key); the number of keys deleted.
    pub fn delete(&self, key: &str) -> Result<i64, RegistryError> {
        let body = json!({"key": b64(key.as_bytes())});
        self.post(&format!("delete {key}"), "/v3/kv/deleterange", &body)
            .map(|a| int(&a["deleted"]))
    }

    /// One `LeaseKeepAlive` round: the lease's new TTL, 0 when etcd no longer has the lease.
    pub fn keep_alive(&self, lease: i64) -> Result<i64, RegistryError> {
        let what = format!("keep-alive of lease {lease}");
        match self.post(
            &what,
            "/v3/lease/keepalive",
            &json!({"ID": lease.to_string()}),
        ) {
            Ok(answer) => Ok(int(&answer["result"]["TTL"])),
            Err(RegistryError::Status { body, .. }) if body.contains("lease not found") => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// `Range` over every key starting with `prefix`: the store's revision and the pairs.
    pub fn list(&self, prefix: &str) -> Result<(i64, Vec<KeyValue>), RegistryError> {
        let what = format!("list of {prefix}");
        let body = json!({
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&range_end(prefix.as_bytes())),
        });
        let answer = self.post(&what, "/v3/kv/range", &body)?;
        let decode = |reason: String| RegistryError::Decode {
            backend: BACKEND,
            call: what.clone(),
            reason,
        };
        let mut pairs = Vec::new();
        for kv in answer["kvs"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            pairs.push((
                bytes(&kv["key"]).map_err(decode)?,
                bytes(&kv["value"]).map_err(decode)?,
            ));
        }
        Ok((int(&answer["header"]["revision"]), pairs))
    }

    /// Opens a watch of every key starting with `prefix`, from `start_revision` on; the stream
    /// ends after `window`.
    pub fn watch(
        &self,
        prefix: &str,
        start_revision: i64,
        window: Duration,
    ) -> Result<WatchStream, RegistryError> {
        let body = json!({"create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&range_end(prefix.as_bytes())),
            "start_revision": start_revision.to_string(),
        }})
        .to_string();
        let what = format!("watch of {prefix}");
        let open = |client: &EtcdClient| client.open("/v3/watch", &body, Some(window));
        let response = match open(self) {
            Err(e) if e.is_auth() && self.credentials.is_some() => {
                self.authenticate()?;
                open(self)
            }
            other => other,
        }
        .map_err(|e| e.describe(BACKEND, &what))?;
        let reader = response
            .into_body()
            .into_with_config()
            .limit(u64::MAX)
            .reader();
        Ok(WatchStream {
            responses: serde_json::Deserializer::from_reader(reader).into_iter(),
        })
    }
}

/// The record as registered, with the lease it is on.
pub(super) struct Registration {
    instance: ServiceInstance,
    lease: i64,
}

/// State shared by the registrar's handle and its threads.
pub(super) struct Shared {
    client: EtcdClient,
    settings: EtcdConfig,
    /// `/<namespace>/gate/<gid>`.
    key: String,
    /// Held for the whole of every registration (and of the final deletion), so registrations
    /// never interleave and none can follow the deletion.
    registration: Mutex<Registration>,
    /// The instance state, owned with the node API: every registration carries its value.
    state: StateCell,
    /// The stop flag (checked under `registration` before every registration) and the
    /// delivery lock.
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

    /// Grants a new lease and puts the record on it (etcd-registry.md §5.1: every registration,
    /// a state change too, is on a new lease; the old one expires with no key). Caller holds
    /// the registration lock.
    fn register_locked(&self, reg: &mut Registration) -> Result<(), RegistryError> {
        reg.instance.state = self.state.get();
        let lease = self.client.grant(self.settings.lease_ttl())?;
        self.client
            .put(&self.key, &etcd_value::encode(&reg.instance), lease)?;
        reg.lease = lease;
        Ok(())
    }
}

/// The gate's registration in etcd plus the node watch: registers on start, keeps the lease
/// alive (re-registering whenever etcd lost it, without a limit), pushes every new `node` list,
/// and deletes the key on stop.
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
        delete_quietly(self)
    }
}

impl Registrar {
    /// Registers `instance` (normally state `work`), lists the nodes and hands them to
    /// `on_nodes` before returning (due: both fatal when they fail; an error here ends the
    /// gate's start-up), then starts the `etcd-lease` and `etcd-watch` threads.
    ///
    /// `on_nodes` runs on the calling thread for the first list, then on the watch thread.
    pub fn start(
        settings: EtcdConfig,
        instance: ServiceInstance,
        state: StateCell,
        on_nodes: impl Fn(Vec<ServiceInstance>) + Send + 'static,
        metrics: Arc<ControlMetrics>,
    ) -> Result<Registrar, RegistryError> {
        let client = EtcdClient::new(&settings)?;
        let key = etcd_value::key(&settings.namespace, &instance.name, &instance.id);
        let shared = Arc::new(Shared {
            client,
            key,
            settings,
            registration: Mutex::new(Registration { instance, lease: 0 }),
            state,
            stop: Stop::default(),
            metrics,
        });
        {
            let mut reg = shared.lock();
            shared.register_locked(&mut reg)?;
        }
        let mut view = NodeView::new(&shared.settings.namespace);
        if let Err(e) = view.relist(&shared.client) {
            delete_quietly(&shared);
            return Err(e);
        }
        on_nodes(view.list());

        let s = shared.clone();
        let w = shared.clone();
        worker::Registrar::spawn(
            shared,
            vec![
                ("etcd-lease", Box::new(move |stop| lease_loop(&s, &stop))),
                (
                    "etcd-watch",
                    Box::new(move |stop| watch_loop(&w, &stop, view, on_nodes)),
                ),
            ],
        )
    }

    /// The key the gate is registered under.
    #[cfg(test)]
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// The lease the record is on now.
    #[cfg(test)]
    pub fn lease(&self) -> i64 {
        self.shared.lock().lease
    }
}

/// Deletes the key under the registration lock (after any registration in flight).
fn delete_quietly(shared: &Shared) {
    let _reg = shared.lock();
    if let Err(e) = shared.client.delete(&shared.key) {
        tracing::warn!(error = %e, "etcd: deregistration failed; the key goes with its lease");
    }
}

/// The keep-alive thread: one keep-alive every TTL/3; when etcd says the lease is gone,
/// register again at once; when etcd cannot be reached, retry with a backoff of 1 s doubling
/// to `retryInterval`, without a limit (due gives up after `retryTimes` attempts).
fn lease_loop(shared: &Shared, stop: &Receiver<()>) {
    let ttl = shared.settings.lease_ttl();
    let period = Duration::from_millis(u64::try_from(ttl).unwrap_or(u64::MAX / 1000) * 1000 / 3)
        .max(Duration::from_millis(300));
    let ceiling = shared.settings.retry_interval.max(RETRY_FIRST);
    let mut backoff = RETRY_FIRST;
    let mut failing_since: Option<Instant> = None;
    let mut wait = period;
    loop {
        if stopped_within(stop, wait) || shared.stopped() {
            return;
        }
        let lease = shared.lock().lease;
        let result = match shared.client.keep_alive(lease) {
            Ok(left) if left > 0 => Ok(()),
            Ok(_) => {
                let mut reg = shared.lock();
                if shared.stopped() {
                    return;
                }
                tracing::warn!(
                    lease,
                    key = %shared.key,
                    "etcd: the lease is gone (expired, or etcd lost it); registering again"
                );
                shared.register_locked(&mut reg)
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                if let Some(since) = failing_since.take() {
                    tracing::info!(
                        after = ?since.elapsed(),
                        lease = shared.lock().lease,
                        "etcd: registration kept alive again"
                    );
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
                    "etcd: keep-alive failed; retrying without a limit (due v2.4.1 gives up after \
                     retryTimes attempts)"
                );
                wait = backoff;
                backoff = (backoff * 2).min(ceiling);
            }
        }
    }
}

/// The node list as the watch sees it: decoded records by key.
struct NodeView {
    prefix: String,
    nodes: BTreeMap<Vec<u8>, ServiceInstance>,
    /// The first revision the next watch must report.
    next: i64,
}

impl NodeView {
    fn new(namespace: &str) -> NodeView {
        NodeView {
            prefix: etcd_value::prefix(namespace, NODE_SERVICE),
            nodes: BTreeMap::new(),
            next: 0,
        }
    }

    /// Replaces the view with a fresh list; the watch continues right after its revision.
    fn relist(&mut self, client: &EtcdClient) -> Result<(), RegistryError> {
        let (revision, pairs) = client.list(&self.prefix)?;
        self.nodes.clear();
        for (key, value) in pairs {
            self.put(key, &value);
        }
        self.next = revision + 1;
        Ok(())
    }

    /// Stores a decoded value; an undecodable one is logged and ignored (due ignores it in a
    /// watch event, and fails its whole start-up on it in the first list).
    fn put(&mut self, key: Vec<u8>, value: &[u8]) {
        match etcd_value::decode(value) {
            Ok(inst) => {
                self.nodes.insert(key, inst);
            }
            Err(e) => tracing::warn!(
                key = %String::from_utf8_lossy(&key),
                error = %e,
                "etcd: undecodable node record ignored"
            ),
        }
    }

    fn apply(&mut self, events: Vec<WatchEvent>) {
        for e in events {
            self.next = self.next.max(e.mod_revision + 1);
            if e.delete {
                self.nodes.remove(&e.key);
            } else {
                self.put(e.key, &e.value);
            }
        }
    }

    fn list(&self) -> Vec<ServiceInstance> {
        self.nodes.values().cloned().collect()
    }
}

/// The watch thread: watch windows from the view's next revision; every response with events
/// delivers the whole list (as due does). Re-lists after a failure, a compaction or a store
/// whose revision went back (an etcd restarted empty).
fn watch_loop(
    shared: &Shared,
    stop: &Receiver<()>,
    mut view: NodeView,
    on_nodes: impl Fn(Vec<ServiceInstance>),
) {
    let deliver = |view: &NodeView| shared.stop.deliver(|| on_nodes(view.list()));
    let mut need_list = false;
    let mut failing = false;
    let fail = |failing: &mut bool, e: &RegistryError| {
        shared.metrics.registry_errors.add_shared(1);
        if !*failing {
            tracing::warn!(error = %e, "etcd: node watch failed; retrying every 1 s");
        }
        *failing = true;
    };
    loop {
        if shared.stopped() {
            return;
        }
        if need_list {
            match view.relist(&shared.client) {
                Ok(()) => {
                    need_list = false;
                    deliver(&view);
                }
                Err(e) => {
                    fail(&mut failing, &e);
                    if stopped_within(stop, WATCH_RETRY) {
                        return;
                    }
                    continue;
                }
            }
        }
        let stream = match shared.client.watch(&view.prefix, view.next, WATCH_WINDOW) {
            Ok(stream) => stream,
            Err(e) => {
                if shared.stopped() {
                    return;
                }
                fail(&mut failing, &e);
                // What happened meanwhile is unknown (etcd may even come back empty).
                need_list = true;
                if stopped_within(stop, WATCH_RETRY) {
                    return;
                }
                continue;
            }
        };
        if failing {
            failing = false;
            tracing::info!("etcd: node watch recovered");
        }
        for response in stream {
            let Ok(r) = response else {
                // The window ended (or the connection broke): open the next one.
                break;
            };
            if r.canceled || r.compact_revision > 0 {
                tracing::info!(
                    compact_revision = r.compact_revision,
                    "etcd: node watch history gone; listing again"
                );
                need_list = true;
                break;
            }
            if r.created && r.revision < view.next - 1 {
                tracing::info!(
                    revision = r.revision,
                    expected = view.next - 1,
                    "etcd: the store's revision went back (etcd restarted empty?); listing again"
                );
                need_list = true;
                break;
            }
            if !r.events.is_empty() {
                view.apply(r.events);
                deliver(&view);
            }
            if shared.stopped() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(addr: &str) -> EtcdConfig {
        EtcdConfig {
            addrs: vec![addr.to_string()],
            timeout: Duration::from_secs(2),
            ..EtcdConfig::default()
        }
    }

    #[test]
    fn gateway_integers_and_bytes() {
        assert_eq!(int(&json!("7587880958046390586")), 7587880958046390586);
        assert_eq!(int(&json!(11)), 11);
        assert_eq!(int(&Value::Null), 0);
        assert_eq!(int(&json!("x")), 0);
        assert_eq!(bytes(&json!("L3NlcnZpY2Vz")).unwrap(), b"/services");
        assert_eq!(bytes(&Value::Null).unwrap(), b"");
        assert!(bytes(&json!("***")).is_err());
    }

    #[test]
    fn watch_events_decode() {
        // A PUT has no `type` member on the gateway; a DELETE has no value.
        let put = watch_event(&json!({"kv": {"key": b64(b"/services/node/n1"),
            "value": b64(b"{}"), "mod_revision": "12"}}))
        .unwrap();
        assert!(!put.delete);
        assert_eq!(
            (put.key.as_slice(), put.mod_revision),
            (&b"/services/node/n1"[..], 12)
        );
        let del = watch_event(
            &json!({"type": "DELETE", "kv": {"key": b64(b"/services/node/n1"),
            "mod_revision": "13"}}),
        )
        .unwrap();
        assert!(del.delete && del.value.is_empty());
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            error_message(&json!({"error": "etcdserver: requested lease not found",
                "code": 5, "message": "etcdserver: requested lease not found"})),
            "etcdserver: requested lease not found"
        );
        assert_eq!(
            error_message(&json!({"grpc_code": 5, "message": "gone"})),
            "gone"
        );
        assert_eq!(error_message(&json!({"code": 1})), r#"{"code":1}"#);
    }

    #[test]
    fn node_view_applies_events_by_key() {
        let mut view = NodeView::new("services");
        view.next = 5;
        let node = |id: &str, state: &str| {
            format!(r#"{{"id":"{id}","name":"node","kind":"node","state":"{state}"}}"#).into_bytes()
        };
        let put = |key: &str, value: Vec<u8>, rev| WatchEvent {
            delete: false,
            key: key.as_bytes().to_vec(),
            value,
            mod_revision: rev,
        };
        view.apply(vec![
            put("/services/node/a", node("a", "work"), 5),
            put("/services/node/b", node("b", "work"), 6),
        ]);
        assert_eq!(view.list().len(), 2);
        assert_eq!(view.next, 7);
        // A state change is one PUT; an undecodable PUT leaves the last good record.
        view.apply(vec![put("/services/node/a", node("a", "busy"), 7)]);
        view.apply(vec![put("/services/node/b", b"not json".to_vec(), 8)]);
        let list = view.list();
        assert_eq!(list[0].state, InstanceState::Busy);
        assert_eq!(list[1].state, InstanceState::Work);
        view.apply(vec![WatchEvent {
            delete: true,
            key: b"/services/node/a".to_vec(),
            value: vec![],
            mod_revision: 9,
        }]);
        assert_eq!(
            view.list()
                .iter()
                .map(|n| n.id.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(view.next, 10);
    }

    #[test]
    fn unreachable_etcd_fails_start_quickly() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = Instant::now();
        let result = Registrar::start(
            settings(&format!("127.0.0.1:{port}")),
            ServiceInstance::default(),
            StateCell::new(InstanceState::Work),
            |_| {},
            Arc::default(),
        );
        let err = result.err().expect("no etcd: start fails");
        assert!(matches!(err, RegistryError::Transport { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with("etcd grant of a 11 s lease"),
            "{err}"
        );
        assert!(t.elapsed() < Duration::from_secs(3));
    }
}

/// Tests against a real etcd; they run only when `GATEHOUSE_ETCD_ADDR` names a member
/// (`scripts/etcd.sh start 23790 /tmp/etcd && GATEHOUSE_ETCD_ADDR=127.0.0.1:23790 cargo test
/// registry::etcd`; scripts/test.sh does it when etcd is installed).
#[cfg(test)]
mod real_etcd {
    use super::*;
    use crate::registry::real_server::{gate_record, server_addr, unique, wait_until};

    fn member() -> Option<String> {
        server_addr("GATEHOUSE_ETCD_ADDR")
    }

    /// A namespace of its own per test and run: tests share the member.
    fn namespace(tag: &str) -> String {
        unique(tag)
    }

    fn settings(addr: &str, namespace: &str) -> EtcdConfig {
        EtcdConfig {
            addrs: vec![addr.to_string()],
            namespace: namespace.to_string(),
            // TTL 3: keep-alive every second, so the tests are quick.
            retry_interval: Duration::from_secs(2),
            ..EtcdConfig::default()
        }
    }

    fn gate(gid: &str) -> ServiceInstance {
        gate_record(gid, 40000)
    }

    /// The key's value and lease, as another client reads them.
    fn read(client: &EtcdClient, key: &str) -> Option<(String, i64)> {
        let answer = client
            .post("read", "/v3/kv/range", &json!({"key": b64(key.as_bytes())}))
            .unwrap();
        let kv = answer["kvs"].as_array()?.first()?.clone();
        let value = String::from_utf8(bytes(&kv["value"]).unwrap()).unwrap();
        Some((value, int(&kv["lease"])))
    }

    fn granted_ttl(client: &EtcdClient, lease: i64) -> i64 {
        let a = client
            .post(
                "ttl",
                "/v3/lease/timetolive",
                &json!({"ID": lease.to_string()}),
            )
            .unwrap();
        int(&a["grantedTTL"])
    }

    #[test]
    fn lifecycle_and_lost_lease() {
        let Some(addr) = member() else {
            eprintln!("GATEHOUSE_ETCD_ADDR not set: skipped");
            return;
        };
        let ns = namespace("life");
        let cfg = settings(&addr, &ns);
        let other = EtcdClient::new(&cfg).unwrap();
        let key = format!("/{ns}/gate/g1");
        let state = StateCell::new(InstanceState::Work);
        let registrar =
            Registrar::start(cfg, gate("g1"), state.clone(), |_| {}, Arc::default()).unwrap();
        assert_eq!(registrar.key(), key);
        let (value, lease) = read(&other, &key).expect("registered");
        assert_eq!(value, etcd_value::encode(&gate("g1")));
        assert_eq!(lease, registrar.lease());
        assert_eq!(granted_ttl(&other, lease), 3);
        // Kept alive past three TTLs.
        std::thread::sleep(Duration::from_secs(4));
        assert_eq!(read(&other, &key).map(|(_, l)| l), Some(lease));

        // The lease revoked behind the gate's back (the key goes with it): re-registered at
        // once on a new lease, with the current state.
        state.set(InstanceState::Busy);
        other
            .post(
                "revoke",
                "/v3/lease/revoke",
                &json!({"ID": lease.to_string()}),
            )
            .unwrap();
        assert!(read(&other, &key).is_none());
        wait_until("re-registered", Duration::from_secs(3), || {
            read(&other, &key).is_some()
        });
        let (value, renewed) = read(&other, &key).unwrap();
        assert_ne!(renewed, lease);
        assert!(value.contains(r#""state":"busy""#), "{value}");

        // hang: a new lease again; the old one is left to expire.
        registrar.set_state(InstanceState::Hang).unwrap();
        let (value, hang) = read(&other, &key).unwrap();
        assert_ne!(hang, renewed);
        assert!(value.contains(r#""state":"hang""#), "{value}");
        registrar.stop();
        assert!(read(&other, &key).is_none(), "deleted at stop");
    }

    /// What the watch thread re-lists on: a watch from a compacted revision is cancelled with
    /// the compaction revision.
    #[test]
    fn compacted_history_is_reported() {
        let Some(addr) = member() else {
            eprintln!("GATEHOUSE_ETCD_ADDR not set: skipped");
            return;
        };
        let ns = namespace("compact");
        let client = EtcdClient::new(&settings(&addr, &ns)).unwrap();
        let key = format!("/{ns}/node/a");
        client.put(&key, "{}", 0).unwrap();
        let (old, _) = client.list(&format!("/{ns}/node/")).unwrap();
        client.put(&key, r#"{"id":"a"}"#, 0).unwrap();
        let (now, _) = client.list(&format!("/{ns}/node/")).unwrap();
        client
            .post(
                "compact",
                "/v3/kv/compaction",
                &json!({"revision": now.to_string()}),
            )
            .unwrap();
        let mut stream = client
            .watch(&format!("/{ns}/node/"), old, Duration::from_secs(2))
            .unwrap();
        let r = stream
            .find_map(|r| r.ok().filter(|r| r.canceled || r.compact_revision > 0))
            .expect("a cancelled watch");
        assert_eq!(r.compact_revision, now);
    }

    #[test]
    fn watch_delivers_node_lists() {
        let Some(addr) = member() else {
            eprintln!("GATEHOUSE_ETCD_ADDR not set: skipped");
            return;
        };
        let ns = namespace("watch");
        let cfg = settings(&addr, &ns);
        let other = EtcdClient::new(&cfg).unwrap();
        let node = |id: &str, state: &str| {
            format!(
                r#"{{"id":"{id}","name":"node","kind":"node","state":"{state}","routes":[{{"i":-5}},{{"s":true}}],"endpoint":"drpc://127.0.0.1:1?is_secure=false","weight":1}}"#
            )
        };
        let put = |key: &str, value: &str| other.put(key, value, 0).unwrap();
        put(&format!("/{ns}/node/a"), &node("a", "work"));
        // Not ours: another service whose name starts with "node", and a broken record.
        put(&format!("/{ns}/node2/x"), &node("x", "work"));
        put(&format!("/{ns}/node/broken"), "not json");
        let (tx, rx) = crossbeam_channel::unbounded::<Vec<ServiceInstance>>();
        let registrar = Registrar::start(
            cfg,
            gate("g2"),
            StateCell::new(InstanceState::Work),
            move |nodes| {
                let _ = tx.send(nodes);
            },
            Arc::default(),
        )
        .unwrap();
        let ids = |list: &[ServiceInstance]| list.iter().map(|n| n.id.clone()).collect::<Vec<_>>();
        let first = rx.try_recv().expect("first list before start returned");
        assert_eq!(ids(&first), ["a"]);
        assert_eq!(first[0].routes[0].id, -5);
        assert!(first[0].routes[1].stateful);
        let next = |want: &[&str]| {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let list = rx
                    .recv_timeout(left)
                    .unwrap_or_else(|_| panic!("no list {want:?} in 5 s"));
                if ids(&list) == want {
                    return list;
                }
            }
        };
        put(&format!("/{ns}/node/b"), &node("b", "work"));
        next(&["a", "b"]);
        put(&format!("/{ns}/node/a"), &node("a", "busy"));
        let list = next(&["a", "b"]);
        assert_eq!(list[0].state, InstanceState::Busy);
        other.delete(&format!("/{ns}/node/b")).unwrap();
        next(&["a"]);

        // Still watching after a window ended (5 s).
        std::thread::sleep(WATCH_WINDOW + Duration::from_millis(500));
        put(&format!("/{ns}/node/c"), &node("c", "work"));
        next(&["a", "c"]);
        registrar.stop();
        std::thread::sleep(Duration::from_millis(300));
        while rx.try_recv().is_ok() {}
        put(&format!("/{ns}/node/e"), &node("e", "work"));
        assert!(
            rx.recv_timeout(Duration::from_secs(1)).is_err(),
            "nothing after stop"
        );
    }
}
