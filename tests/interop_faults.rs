//! Faults in a real cluster (gatehouse binary, due v2.4.1 Go node, real Redis and Consul):
//! node SIGKILL and restart on a new port, Redis restart, Consul agent restart, and gate SIGTERM
//! with clients connected. The gate must never crash and must recover on its own.
//!
//! Needs the Go peers (scripts/build-interop.sh), redis-server and consul (scripts/install-*.sh);
//! skipped with a message when missing, unless GATEHOUSE_REQUIRE_SERVICES is set (CI).

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const GATE: &str = env!("CARGO_BIN_EXE_gatehouse");

fn node_bin() -> PathBuf {
    Path::new(REPO).join("tests/interop/bin/node")
}

/// Whether the environment has everything; panics in CI if not.
fn available() -> bool {
    let ok = node_bin().exists()
        && Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok()
        && (Path::new(REPO)
            .join(".tools/consul/usr/bin/consul")
            .exists()
            || Command::new("consul").arg("version").output().is_ok());
    if !ok {
        assert!(
            std::env::var_os("GATEHOUSE_REQUIRE_SERVICES").is_none(),
            "interop prerequisites missing (scripts/install-redis.sh, install-consul.sh, build-interop.sh)"
        );
        eprintln!("interop prerequisites missing: skipping");
    }
    ok
}

fn script(name: &str, args: &[&str]) {
    let st = Command::new("bash")
        .arg(Path::new(REPO).join("scripts").join(name))
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "{name} {args:?}");
}

/// A process whose output lines are collected.
struct Proc {
    child: Child,
    lines: flume::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let (tx, rx) = flume::unbounded();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
        }
        Proc {
            child,
            lines: rx,
            seen: vec![],
        }
    }

    fn line(&mut self, needle: &str, within: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + within;
        loop {
            match self.lines.recv_deadline(deadline) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} within {within:?}; last lines:\n{}",
                    self.seen[self.seen.len().saturating_sub(30)..].join("\n")
                ),
            }
        }
    }

    fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety implications.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Redis + Consul + config files for one test.
struct Cluster {
    dir: TempDir,
    redis: u16,
    consul: u16,
    tcp: u16,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = TempDir::new("faults");
        let c = Cluster {
            redis: free_port(),
            consul: free_port(),
            tcp: free_port(),
            dir,
        };
        c.redis_ctl("start");
        c.consul_ctl("start");
        for k in ["gate", "node"] {
            let src = std::fs::read_to_string(
                Path::new(REPO).join(format!("tests/interop/etc/{k}/etc.toml")),
            )
            .unwrap();
            let body = src
                .replace("127.0.0.1:6379", &format!("127.0.0.1:{}", c.redis))
                .replace("127.0.0.1:8500", &format!("127.0.0.1:{}", c.consul))
                .replace("127.0.0.1:3553", &format!("127.0.0.1:{}", c.tcp))
                .replace("127.0.0.1:3554", &format!("127.0.0.1:{}", free_port()))
                .replace(
                    "shutdownMaxWaitTime = \"5s\"",
                    "shutdownMaxWaitTime = \"2s\"",
                );
            std::fs::create_dir_all(c.dir.0.join(k)).unwrap();
            std::fs::write(c.dir.0.join(k).join("etc.toml"), body).unwrap();
        }
        c
    }

    fn redis_ctl(&self, cmd: &str) {
        script(
            "redis.sh",
            &[
                cmd,
                &self.redis.to_string(),
                self.dir.0.join("redis").to_str().unwrap(),
            ],
        );
    }

    fn consul_ctl(&self, cmd: &str) {
        script(
            "consul.sh",
            &[
                cmd,
                &self.consul.to_string(),
                self.dir.0.join("consul").to_str().unwrap(),
            ],
        );
    }

    fn gate(&self) -> Proc {
        let mut p = Proc::spawn(Command::new(GATE).arg("--etc").arg(self.dir.0.join("gate")));
        p.line("Registry: consul", Duration::from_secs(15));
        p
    }

    fn node(&self) -> (Proc, String) {
        let mut p = Proc::spawn(
            Command::new(node_bin()).arg(format!("--etc={}", self.dir.0.join("node").display())),
        );
        let ready = p.line("\"event\":\"ready\"", Duration::from_secs(15));
        let ctl = ready
            .split("\"ctl\":\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_string();
        (p, ctl)
    }

    fn consul_get(&self, path: &str) -> String {
        http_get(&format!("127.0.0.1:{}", self.consul), path)
    }

    fn redis_cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.redis.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn client(&self) -> Client {
        Client::connect(
            ([127, 0, 0, 1], self.tcp).into(),
            gatehouse::packet::PacketConfig::default(),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.consul_ctl("stop");
        self.redis_ctl("stop");
    }
}

fn http_get(host: &str, path: &str) -> String {
    ureq::get(&format!("http://{host}{path}"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default()
}

/// Sends route-1 requests until one is echoed (the node is routable again), bounded.
fn echo_within(c: &mut Client, within: Duration) -> Duration {
    let t = Instant::now();
    let mut seq = 1;
    while t.elapsed() < within {
        let sent = c.data(1, seq, b"ping");
        seq += 1;
        match c.read(Duration::from_millis(500)) {
            Read1::Frame(f) if f == sent => return t.elapsed(),
            Read1::Frame(_) | Read1::Timeout => continue,
            Read1::Closed => panic!("the gate closed the client"),
        }
    }
    panic!("no echo within {within:?}");
}

#[test]
fn node_killed_and_restarted_on_a_new_port() {
    if !available() {
        return;
    }
    let cl = Cluster::start();
    let mut gate = cl.gate();
    let (mut node, _) = cl.node();
    let mut c = cl.client();
    echo_within(&mut c, Duration::from_secs(30));

    node.signal(libc::SIGKILL);
    let _ = node.child.wait();
    // Packets for the dead node are dropped; the client stays connected and served.
    std::thread::sleep(Duration::from_millis(300));
    c.data(1, 999, b"lost");
    c.heartbeat();
    loop {
        match c.read(Duration::from_secs(2)) {
            Read1::Frame(f) if f == hex("0000000180") => break,
            Read1::Frame(_) => continue,
            other => panic!("client not served after the node died: {other:?}"),
        }
    }
    assert!(gate.alive(), "the gate survived the node's death");

    // A new node (new id, new port) is found through Consul and routed to.
    let (_node2, _) = cl.node();
    let took = echo_within(&mut c, Duration::from_secs(40));
    eprintln!("routing recovered {took:?} after the new node started");
    assert!(gate.alive());
    gate.drain();
}

#[test]
fn redis_restart() {
    if !available() {
        return;
    }
    let cl = Cluster::start();
    let mut gate = cl.gate();
    let (_node, _) = cl.node();
    let mut c = cl.client();
    echo_within(&mut c, Duration::from_secs(30));
    // Route 5 makes the Go node bind the uid in the payload (through the gate's bind command).
    let bind = |c: &mut Client, uid: &str, seq: i32| {
        c.data(5, seq, uid.as_bytes());
        loop {
            match c.read(Duration::from_secs(5)) {
                Read1::Frame(f) if f.len() > 9 && f[4] & 0x80 == 0 => return f[9..].to_vec(),
                Read1::Frame(_) => continue,
                other => panic!("no bind reply: {other:?}"),
            }
        }
    };
    assert_eq!(bind(&mut c, "42", 50), b"ok");
    assert_eq!(
        cl.redis_cli(&["GET", "due:locate:locate:user:42:gate"])
            .len(),
        36,
        "gid stored"
    );

    cl.redis_ctl("stop");
    let mut c2 = cl.client();
    // The node's own Redis calls fail too; what matters: the gate neither hangs nor crashes.
    let _ = c2.data(5, 51, b"43");
    std::thread::sleep(Duration::from_secs(1));
    c2.heartbeat();
    loop {
        match c2.read(Duration::from_secs(5)) {
            Read1::Frame(f) if f == hex("0000000180") => break,
            Read1::Frame(_) => continue,
            other => panic!("gate not serving while Redis is down: {other:?}"),
        }
    }
    assert!(gate.alive());

    cl.redis_ctl("start");
    let t = Instant::now();
    let mut seq = 60;
    loop {
        let _ = bind(&mut c2, "44", seq);
        seq += 1;
        if cl.redis_cli(&["EXISTS", "due:locate:locate:user:44:gate"]) == "1" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "binds never reached the restarted Redis"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    gate.drain();
    assert!(
        gate.seen.iter().any(|l| l.contains("locator")),
        "the failure was logged"
    );
}

#[test]
fn consul_agent_restart() {
    if !available() {
        return;
    }
    let cl = Cluster::start();
    let mut gate = cl.gate();
    let gid = gate.line("| ID: ", Duration::from_secs(1));
    let gid = gid
        .trim_matches('|')
        .trim()
        .trim_start_matches("ID: ")
        .trim()
        .to_string();
    let registered = |cl: &Cluster| {
        cl.consul_get("/v1/agent/services")
            .contains(&format!("gate-{gid}"))
    };
    assert!(registered(&cl));

    cl.consul_ctl("stop");
    std::thread::sleep(Duration::from_secs(1));
    assert!(gate.alive(), "the gate survives a lost agent");
    cl.consul_ctl("start");
    let t = Instant::now();
    while !registered(&cl) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the gate did not register again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("re-registered {:?} after the agent came back", t.elapsed());
    // And it becomes passing again (TTL updated, TCP check reaches the link port).
    let t = Instant::now();
    while !cl
        .consul_get("/v1/health/service/gate?passing=1")
        .contains(&gid)
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the gate never became passing again"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(gate.alive());
}

#[test]
fn sigterm_hangs_drains_and_deregisters() {
    if !available() {
        return;
    }
    let cl = Cluster::start();
    let mut gate = cl.gate();
    let gid_line = gate.line("| ID: ", Duration::from_secs(1));
    let gid = gid_line
        .trim_matches('|')
        .trim()
        .trim_start_matches("ID: ")
        .trim()
        .to_string();
    let (mut node, ctl) = cl.node();
    let mut c = cl.client();
    echo_within(&mut c, Duration::from_secs(30));
    c.data(5, 70, b"77");
    loop {
        match c.read(Duration::from_secs(5)) {
            Read1::Frame(f) if f.len() > 9 && f[4] & 0x80 == 0 && f[9..] == *b"ok" => break,
            Read1::Frame(_) => continue,
            other => panic!("no bind reply: {other:?}"),
        }
    }

    gate.signal(libc::SIGTERM);
    // Close phase: state hang in Consul, clients still served, pushes still delivered.
    let t = Instant::now();
    while !cl
        .consul_get(&format!("/v1/agent/service/gate-{gid}"))
        .contains("\"hang\"")
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "state hang never registered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut pushed = 0;
    for i in 0..20 {
        let body = format!("push-{i}");
        let r = ureq::post(&format!("http://{ctl}/push?kind=user&target=77"))
            .send(body.as_bytes())
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        if r.contains("\"ok\":true") {
            pushed += 1;
        }
    }
    assert_eq!(pushed, 20, "the node could push during the close phase");
    let mut received = 0;
    let closed_at;
    loop {
        match c.read(Duration::from_secs(10)) {
            Read1::Frame(f) if f.len() > 9 && f[4] & 0x80 == 0 && f[9..].starts_with(b"push-") => {
                received += 1
            }
            Read1::Frame(_) => continue,
            Read1::Closed => {
                closed_at = t.elapsed();
                break;
            }
            Read1::Timeout => panic!("the gate never closed the client"),
        }
    }
    assert_eq!(
        received, 20,
        "every push acknowledged by the node reached the client before it was closed"
    );
    assert!(
        closed_at >= Duration::from_millis(1500),
        "closed only after shutdownMaxWaitTime ({closed_at:?})"
    );
    // Destroy phase: the node hears Disconnect with the uid, Redis forgets the user, Consul the gate.
    node.line("\"event\":\"disconnect\"", Duration::from_secs(5));
    let t = Instant::now();
    while gate.alive() {
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "the gate did not exit"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(gate.child.wait().unwrap().code(), Some(0));
    assert_eq!(
        cl.redis_cli(&["EXISTS", "due:locate:locate:user:77:gate"]),
        "0"
    );
    assert!(
        !cl.consul_get("/v1/agent/services")
            .contains(&format!("gate-{gid}")),
        "deregistered"
    );
}
