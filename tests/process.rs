//! The `gatehouse` binary as an operator runs it: config discovery, mode overrides, start-up
//! errors, the banner, the pid file and signal-driven shutdown (items 50–56).

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn etc_toml(name: &str, extra: &str) -> String {
    format!(
        "mode = \"release\"\n[cluster.gate]\nname = \"{name}\"\n[network.tcp.server]\naddr = \"127.0.0.1:0\"\nheartbeatInterval = \"10s\"\n[log]\nlevel = \"info\"\nterminals = [\"console\"]\n[gatehouse]\nshards = 2\npin = false\n{extra}"
    )
}

/// A running gate process with its stdout lines collected.
struct Proc {
    child: Child,
    lines: flume::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(cwd)
            .args(args)
            .env_remove("DUE_ETC")
            .env_remove("DUE_MODE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn gatehouse");
        let (tx, rx) = flume::unbounded();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("[stderr] {l}"));
            }
        });
        Proc {
            child,
            lines: rx,
            seen: vec![],
        }
    }

    /// Waits for a stdout line containing `needle`; returns it.
    fn line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        loop {
            match self.lines.recv_deadline(deadline) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; saw:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// The TCP port from the banner's Server row (printed once the listener is up).
    fn port(&mut self) -> u16 {
        let l = self.line("Server: [tcp]");
        let addr = l
            .trim_matches('|')
            .split_whitespace()
            .nth(2)
            .unwrap()
            .to_string();
        addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety implications.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    fn wait_exit(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st.code(), t.elapsed());
            }
            std::thread::sleep(ms(20));
        }
        panic!("process still running after {limit:?}");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(port: u16) -> Client {
    Client::connect(
        ([127, 0, 0, 1], port).into(),
        gatehouse::packet::PacketConfig::default(),
    )
}

/// Item 50: ./etc, then DUE_ETC, then --etc (the flag wins); a directory or one etc.<ext> file.
#[test]
fn config_discovery_precedence() {
    let dir = TempDir::new("discover");
    for sub in ["etc", "envdir", "flagdir"] {
        std::fs::create_dir_all(dir.0.join(sub)).unwrap();
        std::fs::write(dir.0.join(sub).join("etc.toml"), etc_toml(sub, "")).unwrap();
    }
    let mut p = Proc::spawn(&dir.0, &[], &[]);
    p.line("Name: etc ");
    drop(p);
    let mut p = Proc::spawn(&dir.0, &[], &[("DUE_ETC", "envdir")]);
    p.line("Name: envdir ");
    drop(p);
    let mut p = Proc::spawn(&dir.0, &["--etc", "flagdir"], &[("DUE_ETC", "envdir")]);
    p.line("Name: flagdir ");
    drop(p);
    let mut p = Proc::spawn(&dir.0, &["-etc=flagdir/etc.toml"], &[]);
    p.line("Name: flagdir ");
}

/// Item 50: toml, yaml, yml, json and xml files all load.
#[test]
fn every_format_loads() {
    let dir = TempDir::new("formats");
    let files = [
        ("etc.yaml", "cluster:\n  gate:\n    name: fromyaml\nnetwork:\n  tcp:\n    server:\n      addr: 127.0.0.1:0\ngatehouse:\n  shards: 1\n  pin: false\nlog:\n  terminals: [console]\n", "fromyaml"),
        ("etc.yml", "cluster:\n  gate:\n    name: fromyml\nnetwork:\n  tcp:\n    server:\n      addr: 127.0.0.1:0\ngatehouse:\n  shards: 1\n  pin: false\nlog:\n  terminals: [console]\n", "fromyml"),
        ("etc.json", r#"{"cluster":{"gate":{"name":"fromjson"}},"network":{"tcp":{"server":{"addr":"127.0.0.1:0"}}},"gatehouse":{"shards":1,"pin":false},"log":{"terminals":["console"]}}"#, "fromjson"),
        ("etc.xml", "<etc><cluster><gate><name>fromxml</name></gate></cluster><network><tcp><server><addr>127.0.0.1:0</addr></server></tcp></network><gatehouse><shards>1</shards><pin>false</pin></gatehouse><log><terminals>console</terminals></log></etc>", "fromxml"),
    ];
    for (file, body, name) in files {
        let f = dir.0.join(file);
        std::fs::write(&f, body).unwrap();
        let mut p = Proc::spawn(&dir.0, &["--etc", f.to_str().unwrap()], &[]);
        p.line(&format!("Name: {name} "));
    }
}

/// Item 51: DUE_MODE and --mode override the file; the flag wins.
#[test]
fn mode_overrides() {
    let dir = TempDir::new("mode");
    std::fs::create_dir_all(dir.0.join("etc")).unwrap();
    std::fs::write(dir.0.join("etc/etc.toml"), etc_toml("m", "")).unwrap();
    Proc::spawn(&dir.0, &[], &[]).line("Mode: release ");
    Proc::spawn(&dir.0, &[], &[("DUE_MODE", "test")]).line("Mode: test ");
    Proc::spawn(&dir.0, &["--mode", "debug"], &[("DUE_MODE", "test")]).line("Mode: debug ");
}

/// Items 9, 52: invalid values stop start-up with exit 1 and a message naming the key.
/// Deviation: due reads `"10"` as 0 (heartbeats off); gatehouse refuses to start.
#[test]
fn invalid_values_fail_start_naming_the_key() {
    let dir = TempDir::new("invalid");
    for (extra, key) in [
        ("[packet]\nrouteBytes = 3\n", "etc.packet.routeBytes"),
        ("[packet]\nseqBytes = 3\n", "etc.packet.seqBytes"),
        ("[packet]\nbufferBytes = -1\n", "etc.packet.bufferBytes"),
        (
            "[network.ws.server]\nheartbeatInterval = \"10\"\n",
            "etc.network.ws.server.heartbeatInterval",
        ),
        (
            "[network.ws.server]\nheartbeatMechanism = \"ping\"\n",
            "etc.network.ws.server.heartbeatMechanism",
        ),
        (
            "[network.ws.server]\nnoSuchKey = 1\n",
            "etc.network.ws.server.noSuchKey",
        ),
        // `extra` lands in [gatehouse], the last section.
        ("proxyProtocol = \"v3\"\n", "etc.gatehouse.proxyProtocol"),
        ("proxyProtocol = \"v2\"\n", "etc.gatehouse.proxyTrusted"),
        (
            "proxyProtocol = \"any\"\nproxyTrusted = [\"10.0.0.0/33\"]\n",
            "etc.gatehouse.proxyTrusted",
        ),
        // etc_toml ends inside [gatehouse]: no [locate.redis], so "cluster" cannot work.
        ("singleLogin = \"cluster\"\n", "etc.gatehouse.singleLogin"),
        ("singleLogin = \"on\"\n", "etc.gatehouse.singleLogin"),
        // due's KCP server would refuse every client.
        (
            "[network.kcp.server]\nmaxConnNum = 0\n",
            "etc.network.kcp.server.maxConnNum",
        ),
    ] {
        let f = dir.0.join("etc.toml");
        std::fs::write(&f, etc_toml("bad", extra)).unwrap();
        let out = Command::new(BIN).arg("--etc").arg(&f).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{extra}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{key} not named in: {err}");
    }
    let out = Command::new(BIN).arg("---x").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "bad flag syntax ends, it does not loop"
    );
}

/// Two listeners of one gate on one port fail start-up naming the key (due: address in use);
/// SO_REUSEPORT would otherwise let them bind and split the clients.
#[test]
fn two_listeners_on_one_port_fail_start_naming_the_key() {
    let dir = TempDir::new("sameport");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tcp_at_port = |cfg: String| {
        cfg.replace(
            "addr = \"127.0.0.1:0\"\nheartbeat",
            &format!("addr = \"127.0.0.1:{port}\"\nheartbeat"),
        )
    };
    let ws_too = tcp_at_port(etc_toml(
        "same",
        &format!("[network.ws.server]\naddr = \"127.0.0.1:{port}\"\n"),
    ));
    let link_too = tcp_at_port(etc_toml("same", "")).replace(
        "name = \"same\"\n",
        &format!("name = \"same\"\naddr = \":{port}\"\n"),
    );
    for (cfg, key) in [
        (ws_too, "etc.network.ws.server.addr"),
        (link_too, "etc.cluster.gate.addr"),
    ] {
        let f = dir.0.join("etc.toml");
        std::fs::write(&f, &cfg).unwrap();
        // Spawned and bounded: a gate that wrongly starts must fail the test, not hang it.
        let mut p = Proc::spawn(&dir.0, &["--etc", f.to_str().unwrap()], &[]);
        let line = p.line(key);
        // Either the kernel refuses the bind (a wildcard beside a concrete address, on some
        // kernels) or the gate's own check does; both name the key.
        assert!(
            line.contains("already used") || line.contains("already in use"),
            "{line}"
        );
        assert_eq!(p.wait_exit(Duration::from_secs(5)).0, Some(1), "{cfg}");
    }
}

/// A second gatehouse with the same configuration refuses to start, naming the running one's
/// pid, and the running one keeps its clients (issue 9, item 5). Its ports are SO_REUSEPORT, so
/// without the check the second would bind them and take part of the new connections.
#[test]
fn a_second_gatehouse_on_the_same_ports_refuses_to_start() {
    let dir = TempDir::new("second");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, link) = (free(), free());
    let cfg = etc_toml("first", "")
        .replace(
            "addr = \"127.0.0.1:0\"\nheartbeat",
            &format!("addr = \"127.0.0.1:{port}\"\nheartbeat"),
        )
        .replace(
            "name = \"first\"\n",
            &format!("name = \"first\"\naddr = \"127.0.0.1:{link}\"\n"),
        );
    let f = dir.0.join("etc.toml");
    std::fs::write(&f, &cfg).unwrap();
    let mut first = Proc::spawn(&dir.0, &["--etc", f.to_str().unwrap()], &[]);
    assert_eq!(first.port(), port);
    let mut c = client(port);
    c.heartbeat();
    assert_eq!(c.frame(), hex("0000000180"));

    let mut second = Proc::spawn(&dir.0, &["--etc", f.to_str().unwrap()], &[]);
    let line = second.line("etc.network.tcp.server.addr");
    assert!(
        line.contains(&format!(
            "already served by gatehouse pid {}",
            first.child.id()
        )),
        "{line}"
    );
    assert_eq!(second.wait_exit(Duration::from_secs(5)).0, Some(1));

    // The first gate is untouched: its client and new clients are served.
    c.heartbeat();
    assert_eq!(c.frame(), hex("0000000180"));
    for _ in 0..20 {
        let mut n = client(port);
        n.heartbeat();
        assert_eq!(n.frame(), hex("0000000180"));
    }
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "first still running"
    );
}

/// Items 53, 54, 56: v2.4.1 and v2.5.8 keys together; the banner's boxes, widths and order
/// (the Gate box only once the listener accepts); the pid file.
#[test]
fn banner_keys_and_pid_file() {
    let dir = TempDir::new("banner");
    let body = format!(
        "pid = \"run/gate.pid\"\n{}[network.ws.server]\naddr = \"127.0.0.1:0\"\nhandshakeTimeout = \"10s\"\nwriteQueueSize = 1024\nwriteTimeout = \"0s\"\n[network.kcp.server]\naddr = \"127.0.0.1:0\"\n",
        etc_toml("banner", "").replace(
            "[cluster.gate]\n",
            "[cluster.gate]\ntimeout = \"2s\"\ncallTimeout = \"2s\"\nconnNum = 5\ndialTimeout = \"3s\"\n",
        )
    );
    std::fs::create_dir_all(dir.0.join("etc")).unwrap();
    std::fs::write(dir.0.join("etc/etc.toml"), body).unwrap();
    let mut p = Proc::spawn(&dir.0, &[], &[]);
    let port = p.port();
    let mut c = client(port);
    c.heartbeat();
    assert_eq!(
        c.frame(),
        hex("0000000180"),
        "listener is up when the Gate box is printed"
    );
    p.line("Server: [ws] 127.0.0.1:");
    // Checklist item 32 (kcp.md): the KCP server's row, its bound port for a configured 0.
    p.line("Server: [kcp] 127.0.0.1:");
    p.line("Registry:");
    // The banner is stdout; log lines (stderr) may interleave with it in `seen`, as on a
    // machine without a private IPv4 address, where a warning about the link address comes
    // while the banner prints.
    let lines: Vec<String> = p
        .seen
        .iter()
        .filter(|l| !l.starts_with("[stderr] "))
        .cloned()
        .collect();
    let first = lines
        .iter()
        .position(|l| l.starts_with("                    ____"))
        .unwrap();
    assert_eq!(
        lines[first + 1],
        "                   / __ \\/ / / / ____/\t"
    );
    let boxes: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with(['┌', '|', '└']))
        .collect();
    for l in &boxes {
        assert_eq!(l.chars().count(), 56, "{l:?}");
    }
    let titles: Vec<&&String> = boxes.iter().filter(|l| l.starts_with('┌')).collect();
    assert_eq!(titles.len(), 3);
    assert!(!titles[0].contains(|c: char| c.is_alphabetic()));
    assert_eq!(
        *titles[1],
        &format!("┌{}Global{}┐", "─".repeat(24), "─".repeat(24))
    );
    assert_eq!(
        *titles[2],
        &format!("┌{}Gate{}┐", "─".repeat(25), "─".repeat(25))
    );
    let text = boxes
        .iter()
        .map(|l| l.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "| [Website] https://github.com/dobyte/due",
        "| [Version] v2.4.1",
        "| PID: ",
        "| Mode: release",
        "| Time: ",
        "| ID: ",
        "| Name: banner",
        "| Link: ",
        "| Locator: ",
        "| Registry: ",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    let pid = std::fs::read_to_string(dir.0.join("run/gate.pid")).unwrap();
    assert_eq!(pid, p.child.id().to_string());
}

/// `metricsAddr` is claimed like the client ports: a second gate with other client ports but
/// the same metrics address refuses to start (two gates answering one scrape address in turns
/// would each report half the truth), naming the key and the running gate.
#[test]
fn a_second_gatehouse_on_the_same_metrics_address_refuses_to_start() {
    let dir = TempDir::new("second-metrics");
    let metrics = free_port();
    let cfg = etc_toml("first", &format!("metricsAddr = \"127.0.0.1:{metrics}\"\n"));
    let f = dir.0.join("etc.toml");
    std::fs::write(&f, &cfg).unwrap();
    let mut first = Proc::spawn(&dir.0, &["--etc", f.to_str().unwrap()], &[]);
    first.port();
    let mut second = Proc::spawn(&dir.0, &["--etc", f.to_str().unwrap()], &[]);
    let line = second.line("etc.gatehouse.metricsAddr");
    assert!(
        line.contains(&format!(
            "already served by gatehouse pid {}",
            first.child.id()
        )),
        "{line}"
    );
    assert_eq!(second.wait_exit(Duration::from_secs(5)).0, Some(1));
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "first still running"
    );
}

/// Item 55: after SIGTERM connected clients keep being served; the process exits once they left.
#[test]
fn sigterm_waits_for_clients_to_leave() {
    let dir = TempDir::new("drain");
    let f = dir.0.join("etc.toml");
    std::fs::write(&f, etc_toml("drain", "")).unwrap();
    let mut p = Proc::spawn(&dir.0, &["--etc", f.to_str().unwrap()], &[]);
    let port = p.port();
    let mut c = client(port);
    c.heartbeat();
    c.frame();
    p.signal(libc::SIGTERM);
    p.line("got signal");
    for _ in 0..5 {
        std::thread::sleep(ms(100));
        c.heartbeat();
        assert_eq!(c.frame(), hex("0000000180"), "still served while closing");
    }
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "waits for the client"
    );
    drop(c);
    let (code, took) = p.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0));
    assert!(
        took < Duration::from_secs(2),
        "exited {took:?} after the last client left"
    );
}

/// Item 55: with shutdownMaxWaitTime the remaining clients are closed after it (graceful, in
/// the ≤ 5 s destroy phase), and the process exits 0.
#[test]
fn sigterm_with_max_wait_closes_remaining_clients() {
    let dir = TempDir::new("maxwait");
    let f = dir.0.join("etc.toml");
    std::fs::write(
        &f,
        etc_toml("maxwait", "").replace(
            "mode = \"release\"\n",
            "mode = \"release\"\nshutdownMaxWaitTime = \"600ms\"\n",
        ),
    )
    .unwrap();
    let mut p = Proc::spawn(&dir.0, &["--etc", f.to_str().unwrap()], &[]);
    let port = p.port();
    let mut c = client(port);
    c.heartbeat();
    c.frame();
    let t = Instant::now();
    p.signal(libc::SIGTERM);
    let closed = c.wait_closed(Duration::from_secs(8));
    let after = closed - t;
    assert!(
        after >= ms(550) && after < ms(600) + Duration::from_secs(5),
        "closed {after:?} after SIGTERM"
    );
    let (code, _) = p.wait_exit(Duration::from_secs(6));
    assert_eq!(code, Some(0));
}

/// Item 55: a second signal terminates at once.
#[test]
fn second_signal_exits_immediately() {
    let dir = TempDir::new("twice");
    let f = dir.0.join("etc.toml");
    std::fs::write(&f, etc_toml("twice", "")).unwrap();
    let mut p = Proc::spawn(&dir.0, &["--etc", f.to_str().unwrap()], &[]);
    let port = p.port();
    let mut c = client(port);
    c.heartbeat();
    c.frame();
    p.signal(libc::SIGINT);
    p.line("got signal");
    p.signal(libc::SIGINT);
    let (code, took) = p.wait_exit(Duration::from_secs(3));
    assert_ne!(code, Some(0));
    assert!(took < Duration::from_secs(1));
}

/// The example due gate files load unchanged (TCP and WS variants) and start.
#[test]
fn example_files_load_unchanged() {
    for (file, row) in [
        ("tcp.toml", "Server: [tcp] 0.0.0.0:"),
        ("ws.toml", "Server: [ws] 0.0.0.0:"),
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("etc/examples")
            .join(file);
        let cfg = gatehouse::config::load(&path, None).unwrap_or_else(|e| panic!("{file}: {e}"));
        // Start it on a free port: same file, only the listen address and logging swapped.
        let dir = TempDir::new("examples");
        // Without a Redis or Consul here, the start drops those two sections (the cluster
        // tests run them for real).
        let body: String = std::fs::read_to_string(&path)
            .unwrap()
            .split("\n[")
            .filter(|sec| !sec.starts_with("locate.redis]") && !sec.starts_with("registry.consul]"))
            .collect::<Vec<_>>()
            .join("\n[");
        let body = body
            .replace("addr = \":3553\"", "addr = \":0\"")
            .replace(
                "terminals = [\"console\", \"file\"]",
                "terminals = [\"console\"]",
            )
            .replace("pid = \"./run/gate.pid\"", "pid = \"\"");
        std::fs::write(dir.0.join("etc.toml"), body).unwrap();
        let mut p = Proc::spawn(&dir.0, &["--etc", "etc.toml"], &[]);
        p.line(row);
        p.line(&format!("Name: {}", cfg.gate.name));
    }
}

/// A config on fixed free ports (client TCP, link) with a pid file in `dir`: the upgrade socket
/// is `<dir>/gate.pid.upgrade`.
fn fixed_ports(dir: &Path, name: &str) -> (std::path::PathBuf, u16) {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, link) = (free(), free());
    let cfg = format!(
        "pid = \"{}/gate.pid\"\n{}",
        dir.display(),
        etc_toml(name, "")
            .replace(
                "addr = \"127.0.0.1:0\"\nheartbeat",
                &format!("addr = \"127.0.0.1:{port}\"\nheartbeat"),
            )
            .replace(
                &format!("name = \"{name}\"\n"),
                &format!("name = \"{name}\"\naddr = \"127.0.0.1:{link}\"\n"),
            )
    );
    let f = dir.join("etc.toml");
    std::fs::write(&f, &cfg).unwrap();
    (f, port)
}

/// Issue 9 items 4 and 6 and a failed hand-off: a request the gate cannot honour (another
/// record version, garbage, another user, a new process that vanishes after the freeze) is
/// refused with a logged reason and the gate serves on as before; a real upgrade afterwards
/// still works, and a plain start then names the new pid.
#[test]
fn upgrade_requests_that_cannot_be_honoured_change_nothing() {
    use gatehouse::connection::record::RECORD_VERSION;
    use gatehouse::upgrade::wire::{Channel, SocketName};
    use gatehouse::upgrade::{Msg, PROTOCOL};

    let dir = TempDir::new("upgrade-refusals");
    let (etc, port) = fixed_ports(&dir.0, "refusals");
    let etc = etc.to_str().unwrap().to_string();
    let mut gate = Proc::spawn(&dir.0, &["--etc", &etc], &[]);
    assert_eq!(gate.port(), port);
    let mut c = client(port);
    c.heartbeat();
    assert_eq!(c.frame(), hex("0000000180"));
    // Half a heartbeat waits in the gate while everything below happens.
    c.send(&hex("0000"));
    let socket = SocketName::Path(dir.0.join("gate.pid.upgrade"));
    let connect = || Channel::connect(&socket, Duration::from_secs(5)).expect("upgrade socket");

    // Another record version: refused by the running gate, naming both versions.
    let ch = connect();
    let hello = Msg::Hello {
        protocol: PROTOCOL,
        record_version: RECORD_VERSION + 1,
        pid: 1,
    };
    ch.send(&hello, &[]).unwrap();
    match ch.recv::<Msg>().unwrap().0 {
        Msg::Refuse(r) => assert!(
            r.contains(&format!("v{RECORD_VERSION} "))
                && r.contains(&format!("v{} ", RECORD_VERSION + 1)),
            "{r}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    gate.line("upgrade: not handed over, serving on");

    // Garbage: the conversation is dropped with a logged reason.
    let raw = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap();
    raw.connect(&socket2::SockAddr::unix(dir.0.join("gate.pid.upgrade")).unwrap())
        .unwrap();
    raw.send(b"\x07\xff\xffnot a hand-off message").unwrap();
    let mut buf = [std::mem::MaybeUninit::new(0u8); 64];
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(raw.recv(&mut buf).unwrap(), 0, "the gate hangs up");
    gate.line("receiving:");

    // Another user (only when the test can become one).
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        let path = dir.0.join("gate.pid.upgrade");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let script = format!(
            "import socket\ns=socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\ns.settimeout(5)\ns.connect({:?})\ntry:\n    s.send(b'\\x00hello')\n    r=s.recv(64)\nexcept (ConnectionResetError, BrokenPipeError):\n    r=b''\nassert r == b''\n",
            path.to_str().unwrap()
        );
        let st = Command::new("python3")
            .args(["-c", &script])
            .uid(65534)
            .gid(65534)
            .status()
            .unwrap();
        assert!(st.success(), "another user is hung up on");
        gate.line("refused a request from another user");
    } else {
        eprintln!("not root: the other-user case is skipped");
    }

    // A new process that takes everything and vanishes before confirming: the gate thaws.
    let ch = connect();
    let hello = Msg::Hello {
        protocol: PROTOCOL,
        record_version: RECORD_VERSION,
        pid: 1,
    };
    ch.send(&hello, &[]).unwrap();
    assert!(matches!(ch.recv::<Msg>().unwrap().0, Msg::Offer { .. }));
    ch.send(&Msg::Go, &[]).unwrap();
    let mut conns = 0;
    loop {
        let (msg, fds) = ch.recv::<Msg>().unwrap();
        match msg {
            Msg::Conns(records) => {
                assert_eq!(records.len(), fds.len());
                assert_eq!(records[0].input_tail, hex("0000"), "the half heartbeat");
                conns += records.len();
            }
            Msg::Done { .. } => break,
            _ => {}
        }
    }
    assert_eq!(conns, 1);
    drop(ch);
    gate.line("upgrade: not handed over, serving on: the new process (pid 1) failed");
    // The client carries on: the rest of its heartbeat completes the one the gate holds.
    c.send(&hex("000180"));
    assert_eq!(c.frame(), hex("0000000180"));
    let mut n = client(port);
    n.heartbeat();
    assert_eq!(n.frame(), hex("0000000180"), "the gate accepts again");

    // A real upgrade still works, and the new gate keeps both clients.
    let mut new = Proc::spawn(&dir.0, &["--upgrade", "--etc", &etc], &[]);
    new.line("gate started");
    assert_eq!(gate.wait_exit(Duration::from_secs(10)).0, Some(0));
    for cl in [&mut c, &mut n] {
        cl.heartbeat();
        assert_eq!(cl.frame(), hex("0000000180"));
    }
    let pid = std::fs::read_to_string(dir.0.join("gate.pid")).unwrap();
    assert_eq!(pid, new.child.id().to_string());
    let mut plain = Proc::spawn(&dir.0, &["--etc", &etc], &[]);
    let line = plain.line("already served by gatehouse pid");
    assert!(line.contains(&format!("pid {}", new.child.id())), "{line}");
    assert_eq!(plain.wait_exit(Duration::from_secs(5)).0, Some(1));
    c.heartbeat();
    assert_eq!(c.frame(), hex("0000000180"));
}

/// Issue 9 item 3: TLS connections are not handed over. At the hand-off they are closed the old
/// way (an orderly end of stream) and a new TLS connection reaches the new process, while a
/// plain WebSocket connection on the same gate moves without a break.
#[test]
fn upgrade_moves_plain_connections_and_closes_tls_ones() {
    use std::io::{Read, Write};
    let dir = TempDir::new("upgrade-tls");
    let cert = TestCert::new(&dir);
    let (etc, port) = fixed_ports(&dir.0, "tls");
    let ws_port = free_port();
    let cfg = std::fs::read_to_string(&etc).unwrap().replace(
        "heartbeatInterval = \"10s\"\n",
        &format!(
            "heartbeatInterval = \"10s\"\n{}\n[network.ws.server]\naddr = \"127.0.0.1:{ws_port}\"\nheartbeatInterval = \"10s\"\n",
            cert.server_keys
        ),
    );
    std::fs::write(&etc, cfg).unwrap();
    let etc = etc.to_str().unwrap().to_string();
    let mut gate = Proc::spawn(&dir.0, &["--etc", &etc], &[]);
    assert_eq!(gate.port(), port);
    let heartbeat = hex("0000000180");
    let mut tls = cert.connect(([127, 0, 0, 1], port).into());
    tls.write_all(&heartbeat).unwrap();
    let mut reply = [0u8; 5];
    tls.read_exact(&mut reply).unwrap();
    assert_eq!(reply.to_vec(), heartbeat);
    let packet = gatehouse::packet::PacketConfig::default();
    let mut ws = WsClient::connect(([127, 0, 0, 1], ws_port).into(), packet);
    ws.heartbeat();
    assert_eq!(ws.binary(), heartbeat);

    let mut new = Proc::spawn(&dir.0, &["--upgrade", "--etc", &etc], &[]);
    new.line("gate started");
    assert_eq!(gate.wait_exit(Duration::from_secs(10)).0, Some(0));
    let mut rest = Vec::new();
    match tls.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "nothing was queued: {rest:?}"),
        Err(e) => panic!("the TLS client was not closed in order: {e}"),
    }
    let mut again = cert.connect(([127, 0, 0, 1], port).into());
    again.write_all(&heartbeat).unwrap();
    again.read_exact(&mut reply).unwrap();
    assert_eq!(reply.to_vec(), heartbeat, "the new process serves TLS");
    ws.heartbeat();
    assert_eq!(ws.binary(), heartbeat, "the WebSocket client moved");
}
