//! Fault injection of the wire-fault suite (`tests/wire_faults.rs`): a Toxiproxy server per test
//! driven through its HTTP API, a network namespace joined by a veth pair whose link is taken
//! down and up, and probes that prove every shard of the gate still answers.
//!
//! Toxiproxy (`tests/interop/bin/toxiproxy-server`, built by scripts/install-toxiproxy.sh) sits
//! in a path as a TCP proxy; toxics added to a proxy act on its connections at once, in one
//! direction: `upstream` is what the dialling side writes (for a gate→node proxy: the gate's
//! frames), `downstream` what comes back. The kernel here has no netem qdisc, hence the proxy.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::interop_support::{free_port, http, wait_until, Proc, HEARTBEAT, REPO};

fn required() -> bool {
    std::env::var_os("GATEHOUSE_REQUIRE_SERVICES").is_some_and(|v| !v.is_empty())
}

/// Skips (with a message) unless `GATEHOUSE_REQUIRE_SERVICES` is set, then it fails.
fn missing(what: &str) -> bool {
    assert!(
        !required(),
        "wire-fault suite: GATEHOUSE_REQUIRE_SERVICES is set but {what}"
    );
    eprintln!(
        "wire-fault test SKIPPED: {what} (set GATEHOUSE_REQUIRE_SERVICES=1 to make this an error)"
    );
    false
}

// ---------------------------------------------------------------------------------------------
// Toxiproxy

pub fn toxiproxy_bin() -> PathBuf {
    Path::new(REPO).join("tests/interop/bin/toxiproxy-server")
}

/// Whether toxiproxy-server is built (else skip, or fail under GATEHOUSE_REQUIRE_SERVICES).
pub fn toxiproxy_available() -> bool {
    toxiproxy_bin().is_file()
        || missing("tests/interop/bin/toxiproxy-server is missing (scripts/install-toxiproxy.sh)")
}

/// One toxiproxy-server of a test, on its own API port; killed on drop.
pub struct Toxiproxy {
    proc: Proc,
    pub api: String,
}

/// Which direction a toxic acts on.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    /// Bytes the dialling side writes.
    Up,
    /// Bytes coming back to the dialling side.
    Down,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Up => "upstream",
            Stream::Down => "downstream",
        }
    }
}

fn call(method: &str, url: &str, body: Option<&Value>) -> (u16, String) {
    let agent = http();
    let r = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("DELETE", _) => agent.delete(url).call(),
        ("POST", Some(b)) => agent.post(url).send(b.to_string()),
        _ => unreachable!("{method}"),
    };
    let mut r = r.unwrap_or_else(|e| panic!("toxiproxy {method} {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap_or_default())
}

impl Toxiproxy {
    pub fn start() -> Toxiproxy {
        let port = free_port(false);
        let mut cmd = Command::new(toxiproxy_bin());
        cmd.args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .env("LOG_LEVEL", "warn");
        let t = Toxiproxy {
            proc: Proc::spawn("toxiproxy", cmd, false),
            api: format!("http://127.0.0.1:{port}"),
        };
        wait_until("toxiproxy API", Duration::from_secs(10), || {
            super::interop_support::http_get(&format!("{}/version", t.api))
                .is_some_and(|(s, _)| s == 200)
        });
        t
    }

    /// A proxy listening on a free loopback port in front of `upstream` (`host:port`).
    pub fn proxy(&self, name: &str, upstream: &str) -> Proxy {
        self.proxy_at(name, &format!("127.0.0.1:{}", free_port(false)), upstream)
    }

    /// A proxy listening on `listen` in front of `upstream`.
    pub fn proxy_at(&self, name: &str, listen: &str, upstream: &str) -> Proxy {
        let body = json!({"name": name, "listen": listen, "upstream": upstream, "enabled": true});
        let (status, text) = call("POST", &format!("{}/proxies", self.api), Some(&body));
        assert_eq!(status, 201, "create proxy {name}: {text}");
        Proxy {
            name: name.to_string(),
            listen: listen.to_string(),
            api: self.api.clone(),
        }
    }
}

/// A proxy of a [`Toxiproxy`]: `listen` is where the faulty path starts.
pub struct Proxy {
    pub name: String,
    pub listen: String,
    api: String,
}

impl Proxy {
    pub fn port(&self) -> u16 {
        self.listen.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Adds toxic `kind` (latency, bandwidth, timeout, reset_peer, slow_close, slicer,
    /// limit_data) named `name` on `stream`, with its attributes.
    pub fn add(&self, name: &str, kind: &str, stream: Stream, attributes: Value) {
        let body = json!({
            "name": name, "type": kind, "stream": stream.name(), "toxicity": 1.0,
            "attributes": attributes,
        });
        let url = format!("{}/proxies/{}/toxics", self.api, self.name);
        let (status, text) = call("POST", &url, Some(&body));
        assert_eq!(status, 200, "add toxic {name} to {}: {text}", self.name);
    }

    /// Adds the same toxic on both streams (`<name>-up`, `<name>-down`).
    pub fn add_both(&self, name: &str, kind: &str, attributes: Value) {
        self.add(&format!("{name}-up"), kind, Stream::Up, attributes.clone());
        self.add(&format!("{name}-down"), kind, Stream::Down, attributes);
    }

    /// Removes every toxic of this proxy: the path heals.
    pub fn heal(&self) {
        let url = format!("{}/proxies/{}/toxics", self.api, self.name);
        let (status, text) = call("GET", &url, None);
        assert_eq!(status, 200, "list toxics of {}: {text}", self.name);
        let toxics: Vec<Value> = serde_json::from_str(&text).unwrap();
        for t in toxics {
            let name = t["name"].as_str().unwrap();
            let (status, text) = call("DELETE", &format!("{url}/{name}"), None);
            assert_eq!(status, 204, "remove toxic {name}: {text}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Network namespace and veth pair (the hard partition)

/// A network namespace joined to this one by a veth pair (`/30`: `host_ip` here, `ns_ip`
/// inside). [`Netns::partition`] takes the namespace's end down (packets both ways are then
/// dropped silently: no reset, no unreachable), [`Netns::heal`] brings it up. Deleted on drop
/// (the veth pair goes with it), also when the test fails.
pub struct Netns {
    pub name: String,
    pub host_if: String,
    pub ns_if: String,
    pub host_ip: String,
    pub ns_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates the namespace and the pair, addresses and links up; `None` (with a message) where
    /// namespaces are not permitted — a failure under GATEHOUSE_REQUIRE_SERVICES.
    pub fn create() -> Option<Netns> {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names are at most 15 bytes; pid and counter keep parallel tests apart.
        let id = format!("{}{n}", pid % 100_000);
        let (a, b) = (200 + pid % 50, n % 256);
        let ns = Netns {
            name: format!("gh-wire-{id}"),
            host_if: format!("ghw{id}h"),
            ns_if: format!("ghw{id}n"),
            host_ip: format!("10.{a}.{b}.1"),
            ns_ip: format!("10.{a}.{b}.2"),
        };
        let _ = ip(&["netns", "del", &ns.name]);
        let _ = ip(&["link", "del", &ns.host_if]);
        let steps: [&[&str]; 8] = [
            &["netns", "add", &ns.name],
            &[
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &ns.ns_if,
            ],
            &["link", "set", &ns.ns_if, "netns", &ns.name],
            &[
                "addr",
                "add",
                &format!("{}/30", ns.host_ip),
                "dev",
                &ns.host_if,
            ],
            &["link", "set", &ns.host_if, "up"],
            &[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{}/30", ns.ns_ip),
                "dev",
                &ns.ns_if,
            ],
            &["-n", &ns.name, "link", "set", &ns.ns_if, "up"],
            &["-n", &ns.name, "link", "set", "lo", "up"],
        ];
        let failed = steps.into_iter().find_map(|step| ip(step).err());
        match failed {
            None => Some(ns),
            Some(e) => {
                drop(ns);
                missing(&format!("network namespaces are not permitted here ({e})"));
                None
            }
        }
    }

    /// `ip netns exec <name>`: the words to put before a program to run it inside.
    pub fn exec_prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }

    /// Cuts the link: the namespace's end goes down.
    pub fn partition(&self) {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "down"]).unwrap();
    }

    /// Heals the link.
    pub fn heal(&self) {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "up"]).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

// ---------------------------------------------------------------------------------------------
// Probes: one raw TCP client per shard, answered by the gate itself (heartbeats)

/// Raw TCP clients of the gate spread over every shard. A heartbeat is answered by the shard
/// that owns the connection, with no node involved: an answer from each proves no shard is
/// wedged.
pub struct Probes {
    conns: Vec<TcpStream>,
}

/// `gatehouse_shard_connections{shard="i"}` for every shard.
fn shard_connections(metrics: SocketAddr) -> Vec<f64> {
    let text = scrape(metrics);
    let shards = sample(&text, "gatehouse_shards").expect("gatehouse_shards") as usize;
    (0..shards)
        .map(|i| {
            sample(
                &text,
                &format!("gatehouse_shard_connections{{shard=\"{i}\"}}"),
            )
            .unwrap_or(0.0)
        })
        .collect()
}

impl Probes {
    /// Opens connections to `tcp` until every shard holds at least one more than before
    /// (bounded: 64 connections), as `/metrics` on `metrics` counts them.
    pub fn open(tcp: SocketAddr, metrics: SocketAddr) -> Probes {
        let before = shard_connections(metrics);
        let mut conns = Vec::new();
        loop {
            let s =
                TcpStream::connect_timeout(&tcp, Duration::from_secs(2)).expect("probe connect");
            s.set_nodelay(true).unwrap();
            conns.push(s);
            if conns.len() % 4 == 0 || conns.len() >= 64 {
                let mut spread = false;
                for _ in 0..40 {
                    let now = shard_connections(metrics);
                    if now.iter().zip(&before).all(|(n, b)| n > b) {
                        spread = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(25));
                }
                if spread {
                    break;
                }
                assert!(conns.len() < 64, "probes never reached every shard");
            }
        }
        let mut p = Probes { conns };
        p.check(Duration::from_secs(5), "when opened");
        p
    }

    /// Sends a heartbeat on every probe and waits for each answer; panics (naming `when`) if one
    /// is missing after `bound`. Returns the slowest answer.
    pub fn check(&mut self, bound: Duration, when: &str) -> Duration {
        let mut slowest = Duration::ZERO;
        for (i, s) in self.conns.iter_mut().enumerate() {
            let t = Instant::now();
            s.write_all(&HEARTBEAT)
                .unwrap_or_else(|e| panic!("probe {i} {when}: write: {e}"));
            s.set_read_timeout(Some(bound)).unwrap();
            let mut got = [0u8; 5];
            s.read_exact(&mut got).unwrap_or_else(|e| {
                panic!("probe {i} {when}: no heartbeat answer within {bound:?}: {e}")
            });
            assert_eq!(got, HEARTBEAT, "probe {i} {when}: heartbeat answer");
            slowest = slowest.max(t.elapsed());
        }
        slowest
    }
}

// ---------------------------------------------------------------------------------------------
// /metrics

/// `GET /metrics` of the gate (must answer 200 within 5 s).
pub fn scrape(metrics: SocketAddr) -> String {
    let url = format!("http://{metrics}/metrics");
    let t = Instant::now();
    let (status, body) =
        super::interop_support::http_get(&url).unwrap_or_else(|| panic!("{url} unreachable"));
    assert_eq!(status, 200, "{body}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "/metrics took {:?}",
        t.elapsed()
    );
    body
}

/// The value of the sample `series` (name with labels, as exposed).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Sum of every sample of metric `name` (all label sets).
pub fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `/metrics` until `done` holds (bounded by `bound`); returns the exposition.
pub fn await_metrics(
    metrics: SocketAddr,
    what: &str,
    bound: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let t = Instant::now();
    loop {
        let text = scrape(metrics);
        if done(&text) {
            return text;
        }
        assert!(
            t.elapsed() < bound,
            "{what} never held within {bound:?}; last exposition:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
