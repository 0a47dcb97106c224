//! `[registry.nacos]` against a real Nacos 2.3.1 server (scripts/nacos.sh) and due's own Nacos
//! registry (`registry/nacos`, nacos-sdk-go v2 over gRPC) in the probe of tests/interop/nacos:
//! a due node registered through due's registry is discovered by gatehouse (client packets on
//! route 1 reach the Rust echo node behind it and come back), and the due node's watch of the
//! `gate` service sees gatehouse's instance as due would have written it — then `hang` when
//! gatehouse shuts down, then nothing once it deregistered.
//!
//! Skipped (with a message) when Nacos (scripts/install-nacos.sh), java or the probe
//! (scripts/build-interop.sh) is missing, unless `GATEHOUSE_REQUIRE_SERVICES=1`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse::packet::PacketConfig;
use serde_json::Value;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const GATEHOUSE: &str = env!("CARGO_BIN_EXE_gatehouse");
const ECHO: &str = env!("CARGO_BIN_EXE_echo-node");
const WAIT: Duration = Duration::from_secs(15);

fn probe_bin() -> PathBuf {
    Path::new(REPO).join("tests/interop/nacos/bin/nacosprobe")
}

fn available() -> bool {
    let mut missing = Vec::new();
    if !Path::new(REPO)
        .join(".tools/nacos/nacos-standalone.jar")
        .is_file()
    {
        missing.push("nacos (scripts/install-nacos.sh)");
    }
    if !probe_bin().is_file() {
        missing.push("tests/interop/nacos/bin/nacosprobe (scripts/build-interop.sh)");
    }
    if missing.is_empty() {
        return true;
    }
    let required = std::env::var_os("GATEHOUSE_REQUIRE_SERVICES").is_some_and(|v| !v.is_empty());
    assert!(
        !required,
        "GATEHOUSE_REQUIRE_SERVICES is set but missing: {}",
        missing.join(", ")
    );
    eprintln!("nacos test SKIPPED: missing {}", missing.join(", "));
    false
}

/// A Nacos HTTP port P with P, P+1000, P+1001 and P-1000 free (Nacos takes all four).
fn nacos_port() -> u16 {
    let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    let seed = std::process::id() as u16;
    (0..200u16)
        .map(|i| 21000 + (seed.wrapping_add(i * 37)) % 6000)
        .find(|&p| [p, p + 1000, p + 1001, p - 1000].into_iter().all(free))
        .expect("four free ports for Nacos")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed on drop, its stdout lines collected.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: flume::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let (tx, lines) = flume::unbounded();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Proc {
            name: name.into(),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line (already seen or next) for which `f` says yes, within `bound`.
    fn line_where<T>(&mut self, what: &str, bound: Duration, f: impl Fn(&str) -> Option<T>) -> T {
        if let Some(t) = self.seen.iter().find_map(|l| f(l)) {
            return t;
        }
        let deadline = Instant::now() + bound;
        loop {
            match self.lines.recv_deadline(deadline) {
                Ok(l) => {
                    let hit = f(&l);
                    self.seen.push(l);
                    if let Some(t) = hit {
                        return t;
                    }
                }
                Err(_) => panic!(
                    "{}: no line for {what} within {bound:?}; lines:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Nacos server: the one `GATEHOUSE_NACOS_ADDR` names (scripts/test.sh starts one for the
/// whole run), else one of its own, stopped on drop.
struct Nacos {
    port: u16,
    dir: Option<PathBuf>,
}

impl Nacos {
    fn start(dir: &Path) -> Nacos {
        if let Some(port) = std::env::var("GATEHOUSE_NACOS_ADDR")
            .ok()
            .and_then(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
        {
            return Nacos { port, dir: None };
        }
        let port = nacos_port();
        let out = Command::new(Path::new(REPO).join("scripts/nacos.sh"))
            .args(["start", &port.to_string()])
            .arg(dir)
            .output()
            .expect("scripts/nacos.sh");
        assert!(
            out.status.success(),
            "nacos did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Nacos {
            port,
            dir: Some(dir.to_path_buf()),
        }
    }
}

impl Drop for Nacos {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = Command::new(Path::new(REPO).join("scripts/nacos.sh"))
                .args(["stop", &self.port.to_string()])
                .arg(dir)
                .output();
        }
    }
}

/// The gates a `gates` line of the probe lists, as (id, state, endpoint).
fn gates(line: &str) -> Option<Vec<(String, String, String)>> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v["event"] != "gates" {
        return None;
    }
    Some(
        v["gates"]
            .as_array()?
            .iter()
            .map(|g| {
                let s = |k: &str| g[k].as_str().unwrap_or_default().to_string();
                (s("id"), s("state"), s("endpoint"))
            })
            .collect(),
    )
}

#[test]
fn due_node_and_gatehouse_find_each_other_through_nacos() {
    if !available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("gatehouse-nacos-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let nacos = Nacos::start(&dir.join("nacos"));
    let t0 = Instant::now();

    // The Rust echo node (its link server), registered in Nacos by due's own registry.
    let (link, tcp) = (free_port(), free_port());
    let mut echo = Command::new(ECHO);
    echo.args(["--gate", &format!("127.0.0.1:{link}"), "--id", "echo-1"]);
    let mut echo = Proc::spawn("echo-node", echo);
    let echo_addr = echo.line_where("listening", WAIT, |l| {
        l.contains("listening")
            .then(|| l.split('"').nth(3).unwrap().to_string())
    });
    let mut probe = Command::new(probe_bin());
    probe
        .arg(format!("-addr=127.0.0.1:{}", nacos.port))
        .arg(format!("-dir={}", dir.join("probe").display()))
        .args(["-mode=node", "-id=echo-1"])
        .arg(format!("-endpoint=drpc://{echo_addr}?is_secure=false"));
    let mut probe = Proc::spawn("nacosprobe", probe);
    probe.line_where("the node registered", WAIT, |l| {
        l.contains(r#""event":"registered""#).then_some(())
    });

    // gatehouse on [registry.nacos].
    let gid = "gh-nacos-1";
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("etc.toml"),
        format!(
            "[cluster.gate]\nid = \"{gid}\"\nname = \"gate\"\naddr = \"127.0.0.1:{link}\"\n\n\
             [network.tcp.server]\naddr = \"127.0.0.1:{tcp}\"\n\n\
             [registry.nacos]\nurls = [\"http://127.0.0.1:{}/nacos\"]\n\n\
             [log]\nlevel = \"info\"\nterminals = [\"console\"]\n",
            nacos.port
        ),
    )
    .unwrap();
    let mut gate = Command::new(GATEHOUSE);
    gate.arg("--etc").arg(&etc);
    let mut gate = Proc::spawn("gatehouse", gate);

    // The due node's watch sees gatehouse as due writes a gate: id, state work, its link.
    let endpoint = format!("drpc://127.0.0.1:{link}?is_secure=false");
    probe.line_where("gatehouse listed as work", WAIT, |l| {
        gates(l).filter(|g| *g == [(gid.into(), "work".into(), endpoint.clone())])
    });
    eprintln!(
        "gate listed by the due node's watch {:?} after Nacos was up",
        t0.elapsed()
    );

    // Client → gatehouse → (node found in Nacos) → echo node → back.
    let packet = PacketConfig::default();
    let request = packet.encode(1, 7, b"through nacos").unwrap();
    let start = Instant::now();
    let reply = loop {
        let mut c =
            TcpStream::connect(("127.0.0.1", tcp)).unwrap_or_else(|e| panic!("gatehouse TCP: {e}"));
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        c.write_all(&request).unwrap();
        let mut got = vec![0u8; request.len()];
        if c.read_exact(&mut got).is_ok() {
            break got;
        }
        assert!(
            start.elapsed() < WAIT,
            "no echo through the node discovered in Nacos within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        reply, request,
        "the echo node pushes the packet back unchanged"
    );

    // Shutdown: hang first (a re-registration), then deregistered.
    let pid = gate.child.id() as i32;
    // SAFETY: plain kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    probe.line_where("gatehouse gone from the watch", WAIT, |l| {
        gates(l).filter(|g| g.is_empty())
    });
    let hang = probe
        .seen
        .iter()
        .filter_map(|l| gates(l))
        .any(|g| g == [(gid.into(), "hang".into(), endpoint.clone())]);
    // The hang registration precedes the deregistration by shutdownMaxWaitTime at most; a watch
    // push can merge the two, so hang is reported, not required.
    eprintln!("the due node's watch saw state hang before the gate left: {hang}");
    let status = gate.child.wait().unwrap();
    assert!(
        status.success(),
        "gatehouse exits 0 after SIGTERM: {status}"
    );

    drop(probe.stdin.take());
    probe.line_where("the node deregistered", WAIT, |l| {
        l.contains(r#""event":"deregistered""#).then_some(())
    });
    drop(echo);
    drop(nacos);
    let _ = std::fs::remove_dir_all(&dir);
}
