//! The `gatehouse` binary: flags and config, logging, pid file, banner, the gate, and the
//! signal-driven shutdown (close phase bounded by shutdownMaxWaitTime, then destroy phase).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use gatehouse::banner;
use gatehouse::config::{self, Config};
use gatehouse::gate::Gate;
use gatehouse::session::Transport;

/// due's version this gate is compatible with, shown in the banner.
const DUE_VERSION: &str = "v2.4.1";
/// due bounds the destroy phase by a fixed 5 s.
const DESTROY_LIMIT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    presize_fd_table();
    let flags = match gatehouse::cli::parse_flags(std::env::args().skip(1)) {
        Ok(f) => f,
        Err(e) => return fatal(&e),
    };
    if flags.help {
        println!("usage: gatehouse [--etc PATH] [--mode debug|test|release] [--upgrade]\n\nPATH is an etc directory or file (default ./etc, or $DUE_ETC).\n--upgrade takes over, without dropping a client, from the gatehouse running with the\nsame configuration (see docs/upgrade.md).");
        return ExitCode::SUCCESS;
    }
    if flags.version {
        println!(
            "gatehouse {} (due {DUE_VERSION} compatible)",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    let env_etc = std::env::var("DUE_ETC").ok();
    let etc = config::resolve_etc_path(flags.etc.as_deref(), env_etc.as_deref());
    let env_mode = std::env::var("DUE_MODE").ok();
    let mode = flags.mode.clone().or(env_mode);
    let cfg = match config::load(&etc, mode.as_deref()) {
        Ok(c) => c,
        Err(e) => return fatal(&format!("configuration: {e}")),
    };
    let _log = match gatehouse::logging::init(&cfg.log, cfg.mode) {
        Ok(g) => g,
        Err(e) => return fatal(&format!("logging: {e}")),
    };
    // Handlers go in before anything is printed: a supervisor that signals as soon as it sees the
    // banner must get the graceful shutdown, not the default action.
    use signal_hook::consts::{SIGABRT, SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let signals =
        match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGQUIT, SIGABRT, SIGHUP]) {
            Ok(s) => s,
            Err(e) => return fatal(&format!("cannot install signal handlers: {e}")),
        };
    print_lines(&[banner::logo()]);
    print_lines(&banner::website_box(DUE_VERSION));
    let now = banner::format_time(banner::now_in(&cfg.timezone));
    print_lines(&banner::global_box(
        std::process::id(),
        cfg.mode.as_str(),
        &now,
    ));

    let started = if flags.upgrade {
        Gate::start_upgrade(&cfg)
    } else {
        Gate::start(&cfg)
    };
    let mut gate = match started {
        Ok(g) => g,
        Err(e) => return fatal(&format!("network server start failed: {e}")),
    };
    // Written once the gate runs: a start that fails (a second gatehouse, a refused upgrade)
    // leaves the running gate's pid in place.
    if let Some(pid) = &cfg.pid {
        if let Err(e) = write_pid(pid) {
            gate.join();
            return fatal(&format!("pid file {}: {e}", pid.display()));
        }
    }
    let handed = match gate.serve_upgrades(&cfg) {
        Ok(rx) => rx,
        Err(e) => {
            gate.join();
            return fatal(&e.to_string());
        }
    };
    print_lines(&banner::gate_box(&gate_info(&cfg, &gate)));
    tracing::info!(shards = gate.shard_count, "gate started");

    match wait(signals, handed, gate.tls_reloader()) {
        Wake::Signal(sig, wakes) => drain(sig, wakes, &cfg, &mut gate),
        Wake::HandedOver(pid) => close_after_hand_off(pid, &mut gate),
    }
    gate.join();
    ExitCode::SUCCESS
}

/// What ends a gate's serving.
enum Wake {
    /// A shutdown signal, and where later ones arrive.
    Signal(i32, flume::Receiver<Wake>),
    /// `gatehouse --upgrade` (that pid) took the gate over.
    HandedOver(u32),
}

/// Blocks until SIGINT/SIGTERM/SIGQUIT/SIGABRT or a hand-off. SIGHUP, now and later (while
/// draining too), reloads the TLS certificates and changes nothing else.
fn wait(
    mut signals: signal_hook::iterator::Signals,
    handed: flume::Receiver<u32>,
    tls: gatehouse::tls::Reloader,
) -> Wake {
    let (tx, rx) = flume::unbounded();
    let signal_tx = tx.clone();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                tracing::info!("process got signal hangup, reloading TLS certificates");
                tls.reload_all();
                continue;
            }
            let (_, none) = flume::unbounded();
            if signal_tx.send(Wake::Signal(sig, none)).is_err() {
                return;
            }
        }
    });
    std::thread::spawn(move || {
        if let Ok(pid) = handed.recv() {
            let _ = tx.send(Wake::HandedOver(pid));
        }
    });
    match rx.recv() {
        Ok(Wake::Signal(sig, _)) => Wake::Signal(sig, rx),
        Ok(w) => w,
        Err(_) => Wake::Signal(signal_hook::consts::SIGTERM, rx),
    }
}

/// The gate was handed over: the registration and every handed-over connection are the new
/// process's now. What stayed here (TLS connections, which cannot move) closes the old way:
/// queued packets first, then the socket.
fn close_after_hand_off(pid: u32, gate: &mut Gate) {
    tracing::info!(
        pid,
        "upgrade: handed over to pid {pid}, closing what stays here"
    );
    gate.abandon_registry();
    // The next process answers /metrics and /readyz now.
    gate.stop_metrics();
    gate.stop_accepting();
    gate.close_all(true);
    if !gate.wait_idle(Some(DESTROY_LIMIT)) {
        gate.close_all(false);
        gate.wait_idle(Some(Duration::from_secs(1)));
    }
}

/// Runs due's two shutdown phases after signal `sig`. A second signal terminates the process at
/// once.
fn drain(sig: i32, wakes: flume::Receiver<Wake>, cfg: &Config, gate: &mut Gate) {
    tracing::warn!("process got signal {}, gate will close", signal_name(sig));
    gate.hang();
    std::thread::spawn(move || {
        while let Ok(w) = wakes.recv() {
            if let Wake::Signal(sig, _) = w {
                eprintln!("gatehouse: second signal {}, exiting now", signal_name(sig));
                std::process::exit(128 + sig);
            }
        }
    });
    // Close phase: state hang; keep serving (and accepting) until every client left.
    let limit = (!cfg.shutdown_max_wait.is_zero()).then_some(cfg.shutdown_max_wait);
    if !gate.wait_idle(limit) {
        tracing::warn!(
            connections = gate.connections(),
            "shutdownMaxWaitTime reached, closing remaining connections"
        );
    }
    // Destroy phase: deregister, stop accepting, close the rest gracefully (queued data first).
    gate.deregister();
    gate.stop_accepting();
    gate.close_all(true);
    if !gate.wait_idle(Some(DESTROY_LIMIT)) {
        tracing::warn!(
            connections = gate.connections(),
            "connections still open after the destroy limit, forcing close"
        );
        gate.close_all(false);
        gate.wait_idle(Some(Duration::from_secs(1)));
    }
    tracing::info!("gate closed");
}

fn signal_name(sig: i32) -> &'static str {
    use signal_hook::consts::*;
    match sig {
        SIGINT => "interrupt",
        SIGTERM => "terminated",
        SIGQUIT => "quit",
        SIGABRT => "aborted",
        _ => "signal",
    }
}

fn gate_info(cfg: &Config, gate: &Gate) -> banner::GateInfo {
    let servers = gate
        .servers
        .iter()
        .map(|(s, bound)| {
            let name = match s.transport {
                Transport::Tcp => "tcp",
                Transport::Ws => "ws",
                Transport::Kcp => "kcp",
            };
            // A configured port 0 is shown as the port actually bound.
            let addr = match s.config.addr.strip_suffix(":0") {
                Some(host) => format!("{host}:{}", bound.port()),
                None => s.config.addr.clone(),
            };
            (name.to_string(), addr)
        })
        .collect();
    banner::GateInfo {
        id: cfg.gate.id.clone(),
        name: cfg.gate.name.clone(),
        link: gate.link_addr.clone(),
        servers,
        locator: gate.locator_name.into(),
        registry: match cfg.registry {
            gatehouse::config::RegistryConfig::Static => "static".into(),
            gatehouse::config::RegistryConfig::Consul(_) => "consul".into(),
            gatehouse::config::RegistryConfig::Etcd(_) => "etcd".into(),
            gatehouse::config::RegistryConfig::Nacos(_) => "nacos".into(),
        },
    }
}

/// Grows the descriptor table to the process's limit while the process has one thread. An
/// upgrade receives thousands of sockets at once, and each doubling of the table in a process
/// with threads waits for an RCU grace period: 6 such waits cost 77 ms of a 19,000-connection
/// hand-off (bench/RESULTS.md). Best effort: nothing fails if it cannot.
fn presize_fd_table() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the valid, writable `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let top = match libc::c_int::try_from(lim.rlim_cur.min(1 << 17)) {
        Ok(n) if n > 3 => n - 1,
        _ => return,
    };
    // SAFETY: dup2 makes `top` a second descriptor of stdin (0), an index no one uses yet (the
    // process has just started, single-threaded); it is closed right away, so no descriptor of
    // ours changes meaning. A failure changes nothing.
    unsafe {
        if libc::dup2(0, top) == top {
            libc::close(top);
        }
    }
}

fn write_pid(path: &std::path::Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, std::process::id().to_string())
}

fn print_lines(lines: &[String]) {
    let mut out = std::io::stdout().lock();
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    let _ = out.flush();
}

fn fatal(msg: &str) -> ExitCode {
    eprintln!("gatehouse: {msg}");
    ExitCode::from(1)
}
