//! due's Redis locator, gate side: the same keys (with the doubled `locate`), scripts, KEEPTTL,
//! event channels and JSON payloads, and a watcher of the node channel that keeps a cache.
//!
//! Calls run on the control thread with 3 s socket timeouts; a lost Redis fails the call (the
//! caller logs it) and the next call reconnects. The watcher runs on its own thread with its own
//! connection and re-subscribes after a reconnect; events missed meanwhile are lost, as in due.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

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

/// uid → node name → node id, filled by lookups and the node-channel watcher.
type NodeCache = Arc<Mutex<HashMap<i64, HashMap<String, String>>>>;

/// The Redis locator.
pub struct RedisLocator {
    /// The address connected to (for messages).
    addr: String,
    keys: Keys,
    /// Connect, read and write timeout of every call (`[cluster.gate] timeout`, due's 3 s).
    timeout: Duration,
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
        };
        me.conn = Some(me.connect().map_err(|e| me.connect_error(&e))?);
        let (client, channel, cache, stop, timeout) = (
            me.client.clone(),
            me.keys.node_channel(),
            me.cache.clone(),
            me.stop.clone(),
            me.timeout,
        );
        me.watcher = Some(
            std::thread::Builder::new()
                .name("gatehouse-locator-watch".into())
                .spawn(move || watch(client, channel, cache, stop, timeout))
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

    /// Runs `f` on the call connection (connecting first if there is none); on a
    /// connection-level failure drops it and retries once on a fresh one (Redis restarted), so
    /// one lost connection costs one call at most. `call` names the call in errors.
    fn with_conn<T>(
        &mut self,
        call: Call<'_>,
        f: impl Fn(&mut redis::Connection, &redis::Script) -> redis::RedisResult<T>,
    ) -> Result<T, LocatorError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.conn.is_none() {
                self.conn = Some(self.connect().map_err(|e| self.connect_error(&e))?);
            }
            let conn = self.conn.as_mut().expect("connected above");
            match f(conn, &self.unbind_gate) {
                Ok(v) => return Ok(v),
                Err(e) if attempt == 1 && (e.is_io_error() || e.is_connection_dropped()) => {
                    self.conn = None;
                }
                Err(e) => {
                    self.conn = None;
                    return Err(call.error(&e));
                }
            }
        }
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

/// Follows the node channel: BindNode fills the cache, UnbindNode removes the entry if it still
/// names that node. Reconnects (every second) until `stop`.
fn watch(
    client: redis::Client,
    channel: String,
    cache: NodeCache,
    stop: Arc<AtomicBool>,
    timeout: Duration,
) {
    while !stop.load(Ordering::Relaxed) {
        let mut conn = match client.get_connection_with_timeout(timeout) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "locator watcher: redis unavailable, retrying");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
        let mut pubsub = conn.as_pubsub();
        if let Err(e) = pubsub.subscribe(&channel) {
            tracing::warn!(error = %e, "locator watcher: subscribe failed");
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        while !stop.load(Ordering::Relaxed) {
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
            let mut cache = cache.lock().expect("cache lock");
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
