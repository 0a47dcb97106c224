//! due's Redis locator, gate side: the same keys (with the doubled `locate`), scripts, KEEPTTL,
//! event channels and JSON payloads, and a watcher of the node channel that keeps a cache.
//!
//! Calls run on the control thread with 3 s socket timeouts (`[cluster.gate] timeout`); a lost
//! connection is retried on a fresh one as go-redis does (`[locate.redis] maxRetries`, within
//! the timeout), and a call that still fails is the caller's to log; the next call reconnects.
//! The watcher runs on its own thread with its own connection and re-subscribes after a
//! reconnect; events missed meanwhile are lost, as in due. With single login across gates it
//! also follows the gate channel and hands each BindGate event to a [`GateBindSink`].

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Locator, LocatorError};
use crate::config::RedisConfig;
use crate::net::HostPort;

/// Deletes the gate key only if it still names this gate.
const UNBIND_GATE: &str = r#"
local current = redis.call('GET', KEYS[1])
if current == false or current == '' or current ~= ARGV[1] then
  return {'NO'}
end
redis.call('DEL', KEYS[1])
return {'OK'}
"#;

/// Event types on the locator channels.
const BIND_GATE: u8 = 1;
const BIND_NODE: u8 = 2;
const UNBIND_GATE_EVENT: u8 = 3;
const UNBIND_NODE: u8 = 4;

/// The key and channel names under a `prefix` (`[locate.redis] prefix`, default `due:locate`;
/// keys then read `due:locate:locate:user:<uid>:gate`).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn gate_key(&self, uid: i64) -> String {
        format!("{}:locate:user:{uid}:gate", self.prefix)
    }

    pub fn node_key(&self, uid: i64) -> String {
        format!("{}:locate:user:{uid}:node", self.prefix)
    }

    pub fn gate_channel(&self) -> String {
        format!("{}:locate:cluster:gate:event", self.prefix)
    }

    pub fn node_channel(&self) -> String {
        format!("{}:locate:cluster:node:event", self.prefix)
    }
}

/// Where to connect: the first of `addrs` (clusters are not supported), with `db`, `username`
/// and `password`.
fn connection_info(config: &RedisConfig) -> Result<(String, redis::ConnectionInfo), LocatorError> {
    let addr = config
        .addrs
        .first()
        .map_or("127.0.0.1:6379", String::as_str);
    let hp = HostPort::parse_remote(addr).map_err(|e| LocatorError::Config(e.to_string()))?;
    let mut redis = redis::RedisConnectionInfo::default().set_db(config.db);
    if !config.username.is_empty() {
        redis = redis.set_username(&config.username);
    }
    if !config.password.is_empty() {
        redis = redis.set_password(&config.password);
    }
    let info = redis::IntoConnectionInfo::into_connection_info((hp.host.to_string(), hp.port))
        .map_err(|e| LocatorError::Config(e.to_string()))?;
    Ok((hp.to_string(), info.set_redis_settings(redis)))
}

/// due's event payload; fields in due's order.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LocationEvent {
    pub uid: i64,
    #[serde(rename = "type")]
    pub kind: u8,
    #[serde(rename = "insID")]
    pub ins_id: String,
    #[serde(rename = "insKind")]
    pub ins_kind: String,
    #[serde(rename = "insName")]
    pub ins_name: String,
}

/// Called by the watcher thread with `(uid, gid)` of each BindGate event on the gate channel
/// (this gate's own included). Must not block: the watcher reads the node channel too.
pub type GateBindSink = Box<dyn Fn(i64, &str) + Send>;

/// uid → node name → node id, filled by lookups and the node-channel watcher.
type NodeCache = Arc<Mutex<HashMap<i64, HashMap<String, String>>>>;

/// The Redis locator.
pub struct RedisLocator {
    /// The address connected to (for messages).
    addr: String,
    keys: Keys,
    /// Connect, read and write timeout of every call (`[cluster.gate] timeout`, due's 3 s), and
    /// the time all attempts of one call may take together.
    timeout: Duration,
    /// Retries of a failed call (`[locate.redis] maxRetries`, see [`retries_of`]).
    retries: u32,
    client: redis::Client,
    conn: Option<redis::Connection>,
    unbind_gate: redis::Script,
    cache: NodeCache,
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

impl RedisLocator {
    /// Connects to the first of `config.addrs` (failure is a start-up error, as in due) and
    /// starts the node-channel watcher. `timeout` bounds connect, read and write of every call
    /// (`[cluster.gate] timeout`). Several addresses (due: a cluster client) or TLS files are
    /// not supported: only the first address is used, in plain text, with a warning.
    pub fn start(config: &RedisConfig, timeout: Duration) -> Result<RedisLocator, LocatorError> {
        Self::start_with(config, timeout, None)
    }

    /// Like [`RedisLocator::start`]; with `gate_binds`, the watcher also subscribes to the gate
    /// channel and calls it with every BindGate event (single login across gates).
    pub fn start_with(
        config: &RedisConfig,
        timeout: Duration,
        gate_binds: Option<GateBindSink>,
    ) -> Result<RedisLocator, LocatorError> {
        if config.addrs.len() > 1 || config.tls() {
            tracing::warn!("locate.redis: only the first address is used, without TLS");
        }
        let (addr, info) = connection_info(config)?;
        let client = redis::Client::open(info).map_err(|e| LocatorError::Config(e.to_string()))?;
        let mut me = RedisLocator {
            client,
            conn: None,
            unbind_gate: redis::Script::new(UNBIND_GATE),
            cache: NodeCache::default(),
            stop: Arc::new(AtomicBool::new(false)),
            watcher: None,
            addr,
            keys: Keys::new(&config.prefix),
            timeout,
            retries: retries_of(config.max_retries),
        };
        me.conn = Some(me.connect().map_err(|e| me.connect_error(&e))?);
        let watcher = Watcher {
            client: me.client.clone(),
            node_channel: me.keys.node_channel(),
            gate: gate_binds.map(|sink| (me.keys.gate_channel(), sink)),
            cache: me.cache.clone(),
            stop: me.stop.clone(),
            timeout: me.timeout,
        };
        me.watcher = Some(
            std::thread::Builder::new()
                .name("gatehouse-locator-watch".into())
                .spawn(move || watcher.run())
                .map_err(|e| LocatorError::Thread(e.to_string()))?,
        );
        Ok(me)
    }

    /// A new call connection with the call timeouts set.
    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let c = self.client.get_connection_with_timeout(self.timeout)?;
        c.set_read_timeout(Some(self.timeout))?;
        c.set_write_timeout(Some(self.timeout))?;
        Ok(c)
    }

    fn connect_error(&self, e: &redis::RedisError) -> LocatorError {
        LocatorError::Connect {
            addr: self.addr.clone(),
            reason: e.to_string(),
        }
    }

    /// Runs `f` on the call connection (connecting first if there is none) with go-redis's
    /// retry rule ([`with_retries`]): a failure that [`retryable`] accepts (the connection was
    /// lost or refused, a timeout, a transient server state) drops the connection and tries
    /// again on a fresh one, up to `[locate.redis] maxRetries` times, within one
    /// `[cluster.gate] timeout` in all. Any other error fails the call at once (and drops the
    /// connection too). `call` names the call in errors.
    fn with_conn<T>(
        &mut self,
        call: Call<'_>,
        f: impl Fn(&mut redis::Connection, &redis::Script) -> redis::RedisResult<T>,
    ) -> Result<T, LocatorError> {
        let (retries, budget) = (self.retries, self.timeout);
        let result = with_retries(retries, budget, std::thread::sleep, retryable, || {
            if self.conn.is_none() {
                self.conn = Some(self.connect().map_err(Failure::Connect)?);
            }
            let conn = self.conn.as_mut().expect("connected above");
            f(conn, &self.unbind_gate).map_err(|e| {
                self.conn = None;
                Failure::Call(e)
            })
        });
        result.map_err(|failure| match failure {
            Failure::Connect(e) => self.connect_error(&e),
            Failure::Call(e) => call.error(&e),
        })
    }

    fn publish(&mut self, channel: &str, ev: &LocationEvent) -> Result<(), LocatorError> {
        let payload = serde_json::to_string(ev).map_err(|e| LocatorError::Command {
            op: format!("PUBLISH {channel}"),
            reason: e.to_string(),
        })?;
        self.with_conn(Call::Command("PUBLISH", channel), |c, _| {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(&payload)
                .query::<i64>(c)
        })
        .map(|_| ())
    }
}

/// How an attempt of a call failed: while connecting, or in the call itself.
#[derive(Debug)]
enum Failure {
    Connect(redis::RedisError),
    Call(redis::RedisError),
}

impl Failure {
    fn error(&self) -> &redis::RedisError {
        match self {
            Failure::Connect(e) | Failure::Call(e) => e,
        }
    }
}

fn retryable(failure: &Failure) -> bool {
    retryable_error(failure.error())
}

/// Whether go-redis would try a command again after `e`: a lost, refused or timed-out
/// connection, or a server that is only briefly unable to answer (`LOADING`, `READONLY`,
/// `MASTERDOWN`, `TRYAGAIN`, `CLUSTERDOWN`, too many clients). Command errors (a wrong type, a
/// script error) are final.
fn retryable_error(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
            )
        )
        || e.to_string().contains("max number of clients reached")
}

/// The number of retries `[locate.redis] maxRetries` asks for, with go-redis's meaning: 0 is
/// the default 3, -1 (or less) none, any other value itself.
pub fn retries_of(max_retries: i64) -> u32 {
    match max_retries {
        0 => 3,
        n if n < 0 => 0,
        n => u32::try_from(n).unwrap_or(u32::MAX),
    }
}

/// The pause before retry `n` (1-based): 8 ms, doubling, at most 512 ms (go-redis's
/// `MinRetryBackoff` and `MaxRetryBackoff`, without its random jitter: one control thread has
/// nobody to desynchronise from).
fn backoff(n: u32) -> Duration {
    const MIN: Duration = Duration::from_millis(8);
    const MAX: Duration = Duration::from_millis(512);
    MIN.saturating_mul(1u32 << n.saturating_sub(1).min(7))
        .min(MAX)
}

/// Runs `attempt` until it succeeds, fails with an error `retryable` refuses, has been retried
/// `retries` times, or `budget` has passed since it started (due runs each call under a
/// context with `[cluster.gate] timeout`, which ends go-redis's retries too). Sleeps with
/// `sleep` for [`backoff`] before each retry, never past the budget.
fn with_retries<T, E>(
    retries: u32,
    budget: Duration,
    mut sleep: impl FnMut(Duration),
    retryable: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let start = Instant::now();
    let mut retry = 0;
    loop {
        let e = match attempt() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        retry += 1;
        let pause = backoff(retry);
        if retry > retries || !retryable(&e) || start.elapsed() + pause >= budget {
            return Err(e);
        }
        sleep(pause);
    }
}

/// What a Redis call does, for its error.
#[derive(Clone, Copy)]
enum Call<'a> {
    /// A command and its key or channel.
    Command(&'static str, &'a str),
    /// The unbind script on a key.
    Script(&'a str),
}

impl Call<'_> {
    fn error(self, e: &redis::RedisError) -> LocatorError {
        match self {
            Call::Command(cmd, key) if e.is_timeout() => LocatorError::Timeout {
                op: format!("{cmd} {key}"),
            },
            Call::Script(key) if e.is_timeout() => LocatorError::Timeout {
                op: format!("unbind script on {key}"),
            },
            Call::Command(cmd, key) => LocatorError::Command {
                op: format!("{cmd} {key}"),
                reason: e.to_string(),
            },
            Call::Script(key) => LocatorError::Script {
                key: key.to_string(),
                reason: e.to_string(),
            },
        }
    }
}

impl Drop for RedisLocator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
    }
}

impl Locator for RedisLocator {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn bind_gate(&mut self, uid: i64, gid: &str) -> Result<(), LocatorError> {
        let key = self.keys.gate_key(uid);
        self.with_conn(Call::Command("SET", &key), |c, _| {
            redis::cmd("SET")
                .arg(&key)
                .arg(gid)
                .arg("KEEPTTL")
                .query::<()>(c)
        })?;
        let ev = LocationEvent {
            uid,
            kind: BIND_GATE,
            ins_id: gid.into(),
            ins_kind: "gate".into(),
            ins_name: String::new(),
        };
        if let Err(e) = self.publish(&self.keys.gate_channel(), &ev) {
            tracing::warn!(uid, error = %e, "locator: bind event not published");
        }
        Ok(())
    }

    fn unbind_gate(&mut self, uid: i64, gid: &str) -> Result<(), LocatorError> {
        let key = self.keys.gate_key(uid);
        let reply: Vec<String> = self.with_conn(Call::Script(&key), |c, script| {
            script.key(&key).arg(gid).invoke(c)
        })?;
        if reply.first().map(String::as_str) == Some("OK") {
            let ev = LocationEvent {
                uid,
                kind: UNBIND_GATE_EVENT,
                ins_id: gid.into(),
                ins_kind: "gate".into(),
                ins_name: String::new(),
            };
            if let Err(e) = self.publish(&self.keys.gate_channel(), &ev) {
                tracing::warn!(uid, error = %e, "locator: unbind event not published");
            }
        }
        Ok(())
    }

    fn locate_gate(&mut self, uid: i64) -> Result<Option<String>, LocatorError> {
        let key = self.keys.gate_key(uid);
        let gid: Option<String> = self.with_conn(Call::Command("GET", &key), |c, _| {
            redis::cmd("GET").arg(&key).query(c)
        })?;
        Ok(gid.filter(|g| !g.is_empty()))
    }

    fn locate_node(&mut self, uid: i64, name: &str) -> Result<Option<String>, LocatorError> {
        if let Some(nid) = self
            .cache
            .lock()
            .expect("cache lock")
            .get(&uid)
            .and_then(|m| m.get(name))
        {
            return Ok(Some(nid.clone()));
        }
        let key = self.keys.node_key(uid);
        let nid: Option<String> = self.with_conn(Call::Command("HGET", &key), |c, _| {
            redis::cmd("HGET").arg(&key).arg(name).query(c)
        })?;
        let nid = nid.filter(|n| !n.is_empty());
        if let Some(n) = &nid {
            self.cache
                .lock()
                .expect("cache lock")
                .entry(uid)
                .or_default()
                .insert(name.to_string(), n.clone());
        }
        Ok(nid)
    }
}

/// The watcher thread's state: what it subscribes to and where events go.
struct Watcher {
    client: redis::Client,
    node_channel: String,
    /// The gate channel and where its BindGate events go (single login across gates).
    gate: Option<(String, GateBindSink)>,
    cache: NodeCache,
    stop: Arc<AtomicBool>,
    timeout: Duration,
}

impl Watcher {
    /// Follows the node channel (BindNode fills the cache, UnbindNode removes the entry if it
    /// still names that node) and, when asked, the gate channel (BindGate goes to the sink).
    /// Reconnects and re-subscribes both (every second) until `stop`.
    fn run(self) {
        while !self.stop.load(Ordering::Relaxed) {
            let mut conn = match self.client.get_connection_with_timeout(self.timeout) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "locator watcher: redis unavailable, retrying");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
            let mut pubsub = conn.as_pubsub();
            let gate = self.gate.as_ref().map(|(c, _)| c.as_str());
            // One channel per SUBSCRIBE: each call waits for its own confirmation.
            let subscribed = std::iter::once(self.node_channel.as_str())
                .chain(gate)
                .try_for_each(|channel| pubsub.subscribe(channel));
            if let Err(e) = subscribed {
                tracing::warn!(error = %e, "locator watcher: subscribe failed");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            while !self.stop.load(Ordering::Relaxed) {
                let msg = match pubsub.get_message() {
                    Ok(m) => m,
                    Err(e) if e.is_timeout() => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "locator watcher: connection lost, re-subscribing");
                        break;
                    }
                };
                let payload: String = match msg.get_payload() {
                    Ok(p) => p,
                    Err(_) => continue,
                };
                let ev: LocationEvent = match serde_json::from_str(&payload) {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::warn!(error = %e, payload, "locator watcher: bad event skipped");
                        continue;
                    }
                };
                self.apply(msg.get_channel_name(), ev);
            }
        }
    }

    fn apply(&self, channel: &str, ev: LocationEvent) {
        if let Some((gate, sink)) = &self.gate {
            if channel == gate {
                if ev.kind == BIND_GATE {
                    sink(ev.uid, &ev.ins_id);
                }
                return;
            }
        }
        let mut cache = self.cache.lock().expect("cache lock");
        match ev.kind {
            BIND_NODE => {
                cache
                    .entry(ev.uid)
                    .or_default()
                    .insert(ev.ins_name, ev.ins_id);
            }
            UNBIND_NODE => {
                if let Some(m) = cache.get_mut(&ev.uid) {
                    if m.get(&ev.ins_name) == Some(&ev.ins_id) {
                        m.remove(&ev.ins_name);
                    }
                    if m.is_empty() {
                        cache.remove(&ev.uid);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_retries_follows_go_redis() {
        assert_eq!(retries_of(0), 3);
        assert_eq!(retries_of(-1), 0);
        assert_eq!(retries_of(1), 1);
        assert_eq!(retries_of(10), 10);
        assert_eq!(retries_of(i64::MAX), u32::MAX);
    }

    #[test]
    fn backoff_doubles_from_8ms_to_512ms() {
        let ms: Vec<u128> = (1..=9).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(ms, [8, 16, 32, 64, 128, 256, 512, 512, 512]);
        assert_eq!(backoff(u32::MAX), Duration::from_millis(512));
    }

    /// Counts attempts of a call failing `fail` times with `error` before it succeeds.
    fn run(
        retries: u32,
        fail: u32,
        retryable: bool,
    ) -> (Result<u32, &'static str>, u32, Vec<u128>) {
        let mut attempts = 0;
        let mut pauses = Vec::new();
        let r = with_retries(
            retries,
            Duration::from_secs(3),
            |d| pauses.push(d.as_millis()),
            |_: &&str| retryable,
            || {
                attempts += 1;
                if attempts <= fail {
                    Err("down")
                } else {
                    Ok(attempts)
                }
            },
        );
        (r, attempts, pauses)
    }

    #[test]
    fn retries_transient_failures_up_to_max_retries() {
        // The default 3 retries: four attempts in all.
        assert_eq!(run(3, 3, true), (Ok(4), 4, vec![8, 16, 32]));
        assert_eq!(run(3, 4, true), (Err("down"), 4, vec![8, 16, 32]));
        assert_eq!(run(3, 0, true), (Ok(1), 1, vec![]));
        // maxRetries = -1: one attempt.
        assert_eq!(run(0, 1, true), (Err("down"), 1, vec![]));
        // A final error is not retried.
        assert_eq!(run(3, 1, false), (Err("down"), 1, vec![]));
    }

    #[test]
    fn retries_stop_at_the_call_budget() {
        let mut attempts = 0;
        let r: Result<(), ()> = with_retries(
            3,
            Duration::from_millis(20),
            |_| {},
            |_| true,
            || {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(15));
                Err(())
            },
        );
        assert!(r.is_err());
        assert_eq!(
            attempts, 1,
            "15 ms spent + an 8 ms pause would pass the 20 ms budget"
        );
    }

    #[test]
    fn which_redis_errors_are_retried() {
        let io = |kind| redis::RedisError::from(std::io::Error::new(kind, "x"));
        assert!(retryable_error(&io(std::io::ErrorKind::ConnectionRefused)));
        assert!(retryable_error(&io(std::io::ErrorKind::BrokenPipe)));
        assert!(retryable_error(&io(std::io::ErrorKind::TimedOut)));
        let server = |kind| redis::RedisError::from((kind, "x"));
        use redis::{ErrorKind, ServerErrorKind};
        assert!(retryable_error(&server(ErrorKind::Server(
            ServerErrorKind::BusyLoading
        ))));
        assert!(retryable_error(&server(ErrorKind::Server(
            ServerErrorKind::ReadOnly
        ))));
        assert!(!retryable_error(&server(ErrorKind::Server(
            ServerErrorKind::ResponseError
        ))));
        assert!(!retryable_error(&server(ErrorKind::UnexpectedReturnType)));
    }

    #[test]
    fn keys_and_channels_have_the_doubled_locate() {
        let s = Keys::new("due:locate");
        assert_eq!(s.gate_key(3), "due:locate:locate:user:3:gate");
        assert_eq!(s.node_key(3), "due:locate:locate:user:3:node");
        assert_eq!(s.gate_channel(), "due:locate:locate:cluster:gate:event");
        assert_eq!(s.node_channel(), "due:locate:locate:cluster:node:event");
    }

    #[test]
    fn event_json_matches_due() {
        let ev = LocationEvent {
            uid: 3,
            kind: 1,
            ins_id: "3f9e5c1a-8b2d-11f0-a1b2-0242ac110002".into(),
            ins_kind: "gate".into(),
            ins_name: String::new(),
        };
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"uid":3,"type":1,"insID":"3f9e5c1a-8b2d-11f0-a1b2-0242ac110002","insKind":"gate","insName":""}"#
        );
        let back: LocationEvent = serde_json::from_str(
            r#"{"insName":"mahjong","type":2,"uid":3,"insKind":"node","insID":"n1","extra":1}"#,
        )
        .unwrap();
        assert_eq!((back.kind, back.ins_name.as_str()), (2, "mahjong"));
    }
}
