//! Slow consumers (issue 11, point 3), with the real gate binary and the Rust echo node: clients
//! that stop reading while a node broadcasts are closed once their write queue holds
//! `writeQueueSize` packets (reason `queue_full`), the gate's RSS stays under the bound of
//! docs/ops/slow-consumers.md, and clients that do read get every broadcast, in order.
//!
//! Shape: [`SLOW`] clients that never read (a 4 KiB receive buffer, set before connecting, so
//! the kernel absorbs little before the gate's queue starts to fill) and [`READERS`] clients that
//! read and check the number the echo node puts in each broadcast (payload bytes 8..16). Every
//! client, reader or not, writes a heartbeat every 500 ms (heartbeatInterval is 5 s), so no
//! close is a liveness close. The slow clients also advertise a small MSS ([`SLOW_MSS`]): the
//! gate's kernel sizes its send buffer from the MSS, so a few hundred broadcasts fill the kernel
//! buffers instead of ~20,000, and the test reaches the gate's queue within CI time. One more
//! reading client triggers broadcasts on route 20 as fast as they arrive (at most [`WINDOW`]
//! ahead of its own reader) until `/metrics` counts every slow client closed as `queue_full`,
//! then [`TAIL`] more, so readers are shown to be served after the closes too.
//!
//! The benchmark (`bench/slow_consumers.sh`) runs the same shape with 19,000 slow clients; this
//! test uses 1,000 to fit CI (a debug gate: every broadcast is a write to each connection until the
//! slow ones stall, ~25 s in all here), asserting the same per-connection bound.

mod common;

use common::TempDir;
use gatehouse::packet::PacketConfig;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const GATE: &str = env!("CARGO_BIN_EXE_gatehouse");
const ECHO: &str = env!("CARGO_BIN_EXE_echo-node");

/// Clients that never read.
const SLOW: usize = 1000;
/// Clients that read every broadcast (the trigger's own connection reads too).
const READERS: usize = 16;
/// `writeQueueSize` (due's default, written out so the bound below uses the same number).
const QUEUE: usize = 4096;
/// Triggers per write, broadcasts in flight at most, and broadcasts after every slow client
/// was closed.
const PER_WRITE: u64 = 16;
const WINDOW: u64 = 256;
const TAIL: u64 = 512;
/// The MSS slow clients advertise, and their receive buffer.
const SLOW_MSS: u32 = 88;
const SLOW_RCVBUF: usize = 4096;
const BROADCAST_ROUTE: i32 = 20;
const ECHO_ROUTE: i32 = 1;
/// How long the slow clients may take to fill their queues (kernel buffers first).
const FILL_LIMIT: Duration = Duration::from_secs(40);
const DRAIN_LIMIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// The bound (docs/ops/slow-consumers.md)
// ---------------------------------------------------------------------------------------------

/// Size of a `bytes::Bytes` handle, one write-queue slot.
const SLOT: usize = 32;
/// The largest coalesced batch a connection copies its queued packets into (`WRITE_BATCH`).
const BATCH: usize = 64 * 1024;
/// A broadcast on the link: drpc head (14) + kind (1) + client packet (4 + 1 + 2 + 2 + 64).
const LINK_FRAME: usize = 88;
/// The link read buffer a queued broadcast is a slice of (16 KiB, grown up to twice).
const LINK_CHUNK: usize = 32 * 1024;
/// Allocator slack: glibc arenas (one per shard thread) and their free lists.
const ALLOCATOR: usize = 16 << 20;

/// How much the gate's memory can grow above its baseline (`conns` connections open, idle) while
/// none of them reads and the node only broadcasts.
fn bound(conns: usize, queue: usize) -> usize {
    let slots = queue.next_power_of_two().max(4);
    let per_conn = SLOT * slots + BATCH;
    let shared = 2 * (queue + 1) * LINK_FRAME + 2 * LINK_CHUNK;
    conns * per_conn + shared + ALLOCATOR
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A child with its output lines collected, killed on drop.
struct Proc {
    child: Child,
    lines: flume::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(program: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(program)
            .args(args)
            .env_remove("DUE_ETC")
            .env_remove("DUE_MODE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
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

    fn line(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            match self.lines.recv_deadline(deadline) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} within {limit:?}; output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn tail(&mut self, n: usize) -> String {
        self.seen.extend(self.lines.try_iter());
        let from = self.seen.len().saturating_sub(n);
        self.seen[from..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kB figure of /proc/PID/status (`VmRSS`, `VmHWM`), in bytes.
fn proc_status(pid: u32, key: &str) -> usize {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<usize>().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
        * 1024
}

/// `GET /metrics`: the exposition.
fn metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: gate\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn closed(text: &str, reason: &str) -> f64 {
    sample(
        text,
        &format!("gatehouse_connections_closed_total{{reason=\"{reason}\"}}"),
    )
}

/// Polls `/metrics` until `ready` holds for it (at most `limit`); the last exposition.
fn await_metrics(
    addr: SocketAddr,
    limit: Duration,
    what: &str,
    ready: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = metrics(addr);
        if ready(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}; exposition:\n{}",
            text.lines()
                .filter(|l| l.starts_with("gatehouse_connections"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_ports<const N: usize>() -> [u16; N] {
    let ls: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| ls[i].local_addr().unwrap().port())
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// A client that never reads: SO_RCVBUF and TCP_MAXSEG set before connecting, so its window
/// and the gate's send buffer for it stay small.
fn connect_slow(addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(SLOW_RCVBUF).unwrap();
    s.set_tcp_mss(SLOW_MSS).unwrap();
    s.connect_timeout(&addr.into(), Duration::from_secs(5))
        .expect("connect");
    s.set_tcp_nodelay(true).unwrap();
    let s: TcpStream = s.into();
    s.set_nonblocking(true).unwrap();
    s
}

/// What one reader saw of the numbered broadcasts.
#[derive(Default, Debug, Clone)]
struct Seen {
    received: u64,
    first: u64,
    last: u64,
    missing: u64,
    disordered: u64,
    echoes: u64,
    closed: bool,
}

/// Reads packets until `stop`, filing every broadcast's number (and echoes) in `seen`.
fn read_loop(
    mut s: TcpStream,
    packet: PacketConfig,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let n = match s.read(&mut chunk) {
            Ok(0) => {
                seen.lock().unwrap().closed = true;
                return;
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => {
                seen.lock().unwrap().closed = true;
                return;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        let mut g = seen.lock().unwrap();
        while buf.len() - at >= 4 {
            let len = u32::from_be_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            if buf.len() - at < 4 + len {
                break;
            }
            let frame = &buf[at..at + 4 + len];
            at += 4 + len;
            if frame.len() > 4 && frame[4] & 0x80 != 0 {
                continue; // heartbeat
            }
            let m = packet.unpack(frame).expect("a due packet");
            if m.route == ECHO_ROUTE {
                g.echoes += 1;
                continue;
            }
            assert_eq!(
                m.route, BROADCAST_ROUTE,
                "only broadcasts and echoes come back"
            );
            let n = u64::from_be_bytes(m.payload[8..16].try_into().unwrap());
            g.received += 1;
            if g.first == 0 {
                g.first = n;
            } else if n <= g.last {
                g.disordered += 1;
                continue;
            } else {
                g.missing += n - g.last - 1;
            }
            g.last = n;
        }
        drop(g);
        buf.drain(..at);
    }
}

#[test]
fn slow_consumers_are_closed_and_readers_get_every_broadcast() {
    let started = Instant::now();
    let dir = TempDir::new("slow-consumers");
    let [tcp, link, node, metrics_port] = free_ports::<4>();
    let etc = dir.0.join("etc.toml");
    std::fs::write(
        &etc,
        format!(
            r#"[cluster.gate]
id = "gate-slow-test"
name = "gate"
addr = "127.0.0.1:{link}"

[network.tcp.server]
addr = "127.0.0.1:{tcp}"
maxConnNum = 10000
heartbeatInterval = "5s"
heartbeatMechanism = "resp"
writeQueueSize = {QUEUE}

[log]
level = "error"
terminals = ["console"]

[gatehouse]
shards = 2
pin = false
metricsAddr = "127.0.0.1:{metrics_port}"

[[gatehouse.nodes]]
id = "echo-1"
addr = "127.0.0.1:{node}"
routes = [{ECHO_ROUTE}, {BROADCAST_ROUTE}]
"#
        ),
    )
    .unwrap();
    let mut echo = Proc::spawn(
        ECHO,
        &[
            "--listen",
            &format!("127.0.0.1:{node}"),
            "--gate",
            &format!("127.0.0.1:{link}"),
            "--quiet",
        ],
    );
    echo.line("\"listening\"", Duration::from_secs(10));
    let mut gate = Proc::spawn(GATE, &["--etc", etc.to_str().unwrap()]);
    let pid = gate.child.id();
    let addr: SocketAddr = format!("127.0.0.1:{tcp}").parse().unwrap();
    let maddr: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let packet = PacketConfig::default();
    let heartbeat = packet.heartbeat(0);

    // The trigger's connection; an echo round trip shows the node link is up both ways.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut trigger = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("gate never listened: {e}\n{}", gate.tail(20)),
        }
    };
    trigger.set_nodelay(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut seen: Vec<Arc<Mutex<Seen>>> = Vec::new();
    let mut threads = Vec::new();
    let mut spawn_reader = |s: TcpStream, seen: &mut Vec<Arc<Mutex<Seen>>>| {
        let st = Arc::new(Mutex::new(Seen::default()));
        seen.push(st.clone());
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || read_loop(s, packet, st, stop)));
    };
    spawn_reader(trigger.try_clone().unwrap(), &mut seen);
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen[0].lock().unwrap().echoes == 0 {
        assert!(
            Instant::now() < deadline,
            "no echo through the node within 15 s:\n{}\n{}",
            gate.tail(20),
            echo.tail(20)
        );
        trigger
            .write_all(&packet.encode(ECHO_ROUTE, 1, b"up?").unwrap())
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }

    // Readers, then the clients that never read. The heartbeat thread writes to the readers
    // through blocking clones (O_NONBLOCK would be shared with the reading thread's fd); the
    // trigger connection gets its heartbeats from the main thread, which alone writes to it.
    let mut hb_targets: Vec<TcpStream> = Vec::new();
    for _ in 0..READERS {
        let s = TcpStream::connect(addr).expect("reader connect");
        s.set_nodelay(true).unwrap();
        hb_targets.push(s.try_clone().unwrap());
        spawn_reader(s, &mut seen);
    }
    let slow: Vec<TcpStream> = (0..SLOW).map(|_| connect_slow(addr)).collect();
    let total = SLOW + READERS + 1;
    await_metrics(
        maddr,
        Duration::from_secs(20),
        "every client admitted",
        |t| sample(t, "gatehouse_connections_open{transport=\"tcp\"}") == total as f64,
    );
    let baseline = proc_status(pid, "VmRSS");

    // Heartbeats from every client every 500 ms; a failed write to a slow client means the gate
    // closed it (its kernel resets the connection on the first heartbeat after the close).
    let slow_reset = Arc::new(AtomicU64::new(0));
    // The trigger connection, once the main thread stopped writing to it.
    let trigger_done: Arc<Mutex<Option<TcpStream>>> = Arc::default();
    let hb_thread = {
        let (stop, slow_reset, late) = (stop.clone(), slow_reset.clone(), trigger_done.clone());
        let heartbeat = heartbeat.clone();
        std::thread::spawn(move || {
            let mut slow: Vec<Option<TcpStream>> = slow.into_iter().map(Some).collect();
            while !stop.load(Ordering::Relaxed) {
                for s in &mut hb_targets {
                    let _ = s.write(&heartbeat);
                }
                if let Some(s) = late.lock().unwrap().as_mut() {
                    let _ = s.write(&heartbeat);
                }
                for slot in &mut slow {
                    if let Some(s) = slot {
                        match s.write(&heartbeat) {
                            Err(e) if e.kind() != ErrorKind::WouldBlock => {
                                *slot = None;
                                slow_reset.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };

    // Broadcasts as fast as the gate delivers them (at most WINDOW in flight), PER_WRITE
    // triggers a write, until every slow client is closed as queue_full, then TAIL more.
    let per_tick = PER_WRITE;
    let mut sent = 0u64;
    let mut trigger_batch = Vec::new();
    for i in 0..per_tick {
        trigger_batch
            .extend_from_slice(&packet.encode(BROADCAST_ROUTE, (i + 1) as i32, b"").unwrap());
    }
    let fill_deadline = Instant::now() + FILL_LIMIT;
    let mut last_poll = Instant::now();
    let mut progress = Instant::now();
    let mut tail_left: Option<u64> = None;
    let start = Instant::now();
    loop {
        if let Some(left) = tail_left {
            if left == 0 {
                break;
            }
        }
        trigger.write_all(&trigger_batch).expect("trigger write");
        sent += per_tick;
        if let Some(left) = tail_left.as_mut() {
            *left = left.saturating_sub(per_tick);
        } else if last_poll.elapsed() >= Duration::from_millis(250) {
            last_poll = Instant::now();
            let t = metrics(maddr);
            if progress.elapsed() >= Duration::from_secs(2) {
                progress = Instant::now();
                eprintln!(
                    "t={:.1}s triggered={sent} reader got={} queue_full={} rss={:.1}MB",
                    start.elapsed().as_secs_f64(),
                    seen[1].lock().unwrap().received,
                    closed(&t, "queue_full"),
                    proc_status(pid, "VmRSS") as f64 / 1e6
                );
            }
            if closed(&t, "queue_full") >= SLOW as f64 {
                tail_left = Some(TAIL);
            } else {
                assert!(
                    Instant::now() < fill_deadline,
                    "after {sent} broadcasts in {FILL_LIMIT:?}, {} of {SLOW} slow clients closed as queue_full",
                    closed(&t, "queue_full")
                );
            }
        }
        // Closed loop: never more than WINDOW broadcasts ahead of the trigger's own reader.
        while sent > seen[0].lock().unwrap().received + WINDOW && Instant::now() < fill_deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let fill_secs = start.elapsed().as_secs_f64();

    // Every reader gets every broadcast, in order.
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut beat = Instant::now();
    while seen.iter().any(|s| s.lock().unwrap().received < sent) {
        if Instant::now() >= deadline {
            break;
        }
        if beat.elapsed() >= Duration::from_millis(500) {
            trigger.write_all(&heartbeat).expect("trigger heartbeat");
            beat = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    *trigger_done.lock().unwrap() = Some(trigger.try_clone().unwrap());
    let views: Vec<Seen> = seen.iter().map(|s| s.lock().unwrap().clone()).collect();
    let first = views[0].first;
    for (i, v) in views.iter().enumerate() {
        assert!(
            v.received == sent
                && v.first == first
                && v.last == first + sent - 1
                && v.missing == 0
                && v.disordered == 0
                && !v.closed,
            "reader {i} of {}: {v:?}, {sent} broadcasts sent (first {first})",
            views.len()
        );
    }

    // The gate's view: exactly the slow clients closed, all as queue_full; the readers open.
    let text = await_metrics(maddr, Duration::from_secs(5), "readers still open", |t| {
        sample(t, "gatehouse_connections_open{transport=\"tcp\"}") == (READERS + 1) as f64
    });
    assert_eq!(closed(&text, "queue_full"), SLOW as f64);
    for reason in ["heartbeat_timeout", "peer", "io", "forced", "protocol"] {
        assert_eq!(closed(&text, reason), 0.0, "closes as {reason}");
    }
    // The slow clients see the close too, most of them on their next heartbeat (500 ms).
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow_reset.load(Ordering::Relaxed) < SLOW as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let resets = slow_reset.load(Ordering::Relaxed);

    // RSS: the peak stays under baseline + bound.
    let peak = proc_status(pid, "VmHWM");
    let limit = bound(total, QUEUE);
    let grew = peak.saturating_sub(baseline);
    eprintln!(
        "slow consumers: {SLOW} closed as queue_full after {sent} broadcasts in {fill_secs:.1} s; \
         {} readers got all; slow clients that saw the reset: {resets}; RSS baseline {:.1} MB, \
         peak {:.1} MB (+{:.1} MB, {:.1} KiB per connection), bound +{:.1} MB; test {:.1} s",
        views.len(),
        baseline as f64 / 1e6,
        peak as f64 / 1e6,
        grew as f64 / 1e6,
        grew as f64 / total as f64 / 1024.0,
        limit as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    assert!(
        grew <= limit,
        "gate RSS grew by {grew} bytes (baseline {baseline}, peak {peak}), over the bound {limit}"
    );
    // Not asserted: a client whose receive window is shut may ignore the gate's reset (its
    // sequence number is outside the window) until a later write draws another one.
    assert!(resets > 0, "no slow client saw its connection closed");

    stop.store(true, Ordering::Relaxed);
    let _ = hb_thread.join();
    for t in threads {
        let _ = t.join();
    }
    drop(gate);
    drop(echo);
}
