//! loadgen: drives many due-protocol TCP connections at a gate (gatehouse or due's Go gate).
//! Owns the client side of load: connection ramp, source-address spreading, traffic, reports.
//!
//! Modes:
//! - `idle`: hold N connections, a heartbeat per connection every interval.
//! - `flood`: open loop, due's benchmark shape — C connections drain a shared count of N
//!   requests without waiting for replies; TPS = N / time until the last reply.
//! - `closed`: K requests in flight per connection; round-trip times into an HDR histogram.
//!
//! Every connection's socket is duplicated so one task writes while another reads: requests and
//! replies flow independently, as with due's own clients. The backend must echo route and seq.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use gatehouse::packet::{FrameDecoder, PacketConfig};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;

struct Args {
    mode: String,
    addr: SocketAddr,
    conns: usize,
    rate: u64,
    heartbeat: Duration,
    duration: Duration,
    sources: u8,
    requests: u64,
    inflight: usize,
    size: usize,
    route: i32,
    route_bytes: u8,
    seq_bytes: u8,
    /// idle over WebSocket: the upgrade path (None = plain TCP).
    ws: Option<String>,
    json: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen MODE [flags]\n\
         MODE: idle | flood | closed\n\
         --addr HOST:PORT   gate address (127.0.0.1:3553)\n\
         --conns N          connections (1000)\n\
         --rate N           connects per second (5000)\n\
         --sources K        spread source addresses over 127.0.0.1..127.0.0.K (8)\n\
         --duration SECS    idle: how long to hold; closed: how long to run (30)\n\
         --heartbeat SECS   idle: heartbeat period per connection (10)\n\
         --requests N       flood: total requests shared by all connections (100000)\n\
         --inflight K       closed: requests in flight per connection (1)\n\
         --size BYTES       payload size (1024)\n\
         --route R          route of the requests (1)\n\
         --route-bytes N    [packet] routeBytes of the cluster (2)\n\
         --seq-bytes N      [packet] seqBytes of the cluster (2)\n\
         --ws PATH          idle only: connect over WebSocket (upgrade on PATH)\n\
         --json             print the summary as one JSON object"
    );
    std::process::exit(2)
}

fn num<T: std::str::FromStr>(v: &str) -> T {
    v.parse().unwrap_or_else(|_| usage())
}

fn parse_args() -> Args {
    let mut a = Args {
        mode: String::new(),
        addr: "127.0.0.1:3553".parse().unwrap(),
        conns: 1000,
        rate: 5000,
        heartbeat: Duration::from_secs(10),
        duration: Duration::from_secs(30),
        sources: 8,
        requests: 100_000,
        inflight: 1,
        size: 1024,
        route: 1,
        route_bytes: 2,
        seq_bytes: 2,
        ws: None,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    a.mode = it.next().unwrap_or_else(|| usage());
    while let Some(flag) = it.next() {
        if flag == "--json" {
            a.json = true;
            continue;
        }
        let v = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--addr" => a.addr = num(&v),
            "--conns" => a.conns = num(&v),
            "--rate" => a.rate = num(&v),
            "--heartbeat" => a.heartbeat = Duration::from_secs_f64(num::<f64>(&v)),
            "--duration" => a.duration = Duration::from_secs_f64(num::<f64>(&v)),
            "--sources" => a.sources = num(&v),
            "--requests" => a.requests = num(&v),
            "--inflight" => a.inflight = num(&v),
            "--size" => a.size = num(&v),
            "--route" => a.route = num(&v),
            "--route-bytes" => a.route_bytes = num(&v),
            "--seq-bytes" => a.seq_bytes = num(&v),
            "--ws" => a.ws = Some(v),
            _ => usage(),
        }
    }
    if !matches!(a.mode.as_str(), "idle" | "flood" | "closed") {
        usage();
    }
    a
}

#[derive(Default)]
struct Stats {
    open: Cell<usize>,
    connect_errors: Cell<usize>,
    closed_by_gate: Cell<usize>,
    heartbeats: Cell<u64>,
    sent: Cell<u64>,
    received: Cell<u64>,
}

impl Stats {
    fn bump(c: &Cell<u64>) {
        c.set(c.get() + 1);
    }
}

type Stream = glommio::net::TcpStream;

/// Connects from `source` and returns two handles on the same socket: (reader, writer).
fn connect(addr: SocketAddr, source: Ipv4Addr) -> std::io::Result<(Stream, Stream)> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    if addr.ip().is_loopback() {
        s.bind(&SocketAddr::new(source.into(), 0).into())?;
    }
    s.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    s.set_tcp_nodelay(true)?;
    s.set_nonblocking(true)?;
    let dup = s.try_clone()?;
    // SAFETY: both fds are connected TCP sockets we own (the second is a dup of the first);
    // each glommio stream takes ownership of one fd and closes it once when dropped.
    unsafe {
        Ok((
            Stream::from_raw_fd(s.into_raw_fd()),
            Stream::from_raw_fd(dup.into_raw_fd()),
        ))
    }
}

struct Run {
    a: Args,
    packet: PacketConfig,
    stats: Stats,
    hist: RefCell<Histogram<u64>>,
    payload: Vec<u8>,
    /// flood: requests not yet taken by any connection.
    budget: Cell<u64>,
    start: Cell<Instant>,
    last_reply: Cell<Instant>,
    end: Cell<Instant>,
}

impl Run {
    fn running(&self) -> bool {
        Instant::now() < self.end.get()
    }

    /// A seq that fits the configured width (never 0: due uses 0 for pushes).
    fn seq_value(&self, seq: u32) -> i32 {
        match self.a.seq_bytes {
            1 => (seq % 127 + 1) as i32,
            2 => (seq % 32767 + 1) as i32,
            _ => (seq % (i32::MAX as u32) + 1) as i32,
        }
    }

    fn request(&self, seq: u32) -> bytes::Bytes {
        self.packet
            .encode(self.a.route, self.seq_value(seq), &self.payload)
            .expect("request fits the packet settings")
    }
}

/// Reads frames until the connection ends, calling `on_frame(is_heartbeat)` for each.
async fn read_frames(run: &Run, mut r: Stream, mut on_frame: impl FnMut(bool) -> bool) {
    let dec = FrameDecoder::new(&run.packet, u32::MAX);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                if run.running() {
                    run.stats
                        .closed_by_gate
                        .set(run.stats.closed_by_gate.get() + 1);
                }
                return;
            }
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Ok(Some(len)) = dec.next_frame_len(&buf) {
            let frame = buf.split_to(len);
            let hb = frame.len() > 4 && frame[4] & 0x80 != 0;
            if !on_frame(hb) {
                return;
            }
        }
    }
}

/// Upgrades to WebSocket; returns false if the gate refused.
async fn ws_upgrade(w: &mut Stream, r: &mut Stream, path: &str, host: SocketAddr) -> bool {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    if w.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = Vec::new();
    let mut b = [0u8; 512];
    while !head.windows(4).any(|x| x == b"\r\n\r\n") && head.len() < 4096 {
        match r.read(&mut b).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    head.starts_with(b"HTTP/1.1 101")
}

/// One masked binary WebSocket frame carrying `payload` (client frames must be masked).
fn ws_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x82, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

async fn idle_conn(run: Rc<Run>, mut r: Stream, mut w: Stream) {
    let mut hb = run.packet.heartbeat(0).to_vec();
    if let Some(path) = &run.a.ws {
        if !ws_upgrade(&mut w, &mut r, path, run.a.addr).await {
            run.stats
                .connect_errors
                .set(run.stats.connect_errors.get() + 1);
            return;
        }
        hb = ws_frame(&hb);
    }
    let reader = {
        let run = run.clone();
        glommio::spawn_local(async move {
            if run.a.ws.is_some() {
                // WS frames around the packets: count reads, not frames.
                let mut r = r;
                let mut b = [0u8; 256];
                while let Ok(n) = r.read(&mut b).await {
                    if n == 0 {
                        if run.running() {
                            run.stats
                                .closed_by_gate
                                .set(run.stats.closed_by_gate.get() + 1);
                        }
                        break;
                    }
                    Stats::bump(&run.stats.heartbeats);
                }
            } else {
                read_frames(&run, r, |_| {
                    Stats::bump(&run.stats.heartbeats);
                    true
                })
                .await
            }
        })
    };
    while run.running() {
        let left = run.end.get().saturating_duration_since(Instant::now());
        glommio::timer::sleep(run.a.heartbeat.min(left)).await;
        if !run.running() || w.write_all(&hb).await.is_err() {
            break;
        }
    }
    drop(reader);
}

async fn flood_conn(run: Rc<Run>, r: Stream, mut w: Stream) {
    let reader = {
        let run = run.clone();
        glommio::spawn_local(async move {
            read_frames(&run, r, |hb| {
                if !hb {
                    Stats::bump(&run.stats.received);
                    run.last_reply.set(Instant::now());
                }
                run.stats.received.get() < run.a.requests
            })
            .await
        })
    };
    let mut seq = 0u32;
    let mut batch = BytesMut::new();
    loop {
        // Take up to 16 requests from the shared budget and send them in one write.
        let take = run.budget.get().min(16);
        if take == 0 {
            break;
        }
        run.budget.set(run.budget.get() - take);
        batch.clear();
        for _ in 0..take {
            seq = seq.wrapping_add(1);
            batch.extend_from_slice(&run.request(seq));
        }
        if w.write_all(&batch).await.is_err() {
            break;
        }
        run.stats.sent.set(run.stats.sent.get() + take);
        // Let the other connections take their share, like goroutines draining one counter.
        futures_lite::future::yield_now().await;
    }
    reader.await;
}

async fn closed_conn(run: Rc<Run>, r: Stream, mut w: Stream) {
    let sent_at: Rc<RefCell<VecDeque<Instant>>> = Rc::default();
    let permits = Rc::new(Cell::new(run.a.inflight.max(1)));
    let waker: Rc<RefCell<Option<std::task::Waker>>> = Rc::default();
    let reader = {
        let (run, sent_at, permits, waker) =
            (run.clone(), sent_at.clone(), permits.clone(), waker.clone());
        glommio::spawn_local(async move {
            read_frames(&run, r, |hb| {
                if hb {
                    return true;
                }
                if let Some(t) = sent_at.borrow_mut().pop_front() {
                    let us = t.elapsed().as_micros() as u64;
                    let _ = run.hist.borrow_mut().record(us.max(1));
                }
                Stats::bump(&run.stats.received);
                permits.set(permits.get() + 1);
                if let Some(w) = waker.borrow_mut().take() {
                    w.wake();
                }
                run.running()
            })
            .await
        })
    };
    let mut seq = 0u32;
    while run.running() {
        std::future::poll_fn(|cx| {
            if permits.get() > 0 || !run.running() {
                std::task::Poll::Ready(())
            } else {
                *waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await;
        if !run.running() {
            break;
        }
        permits.set(permits.get() - 1);
        seq = seq.wrapping_add(1);
        sent_at.borrow_mut().push_back(Instant::now());
        if w.write_all(&run.request(seq)).await.is_err() {
            break;
        }
        Stats::bump(&run.stats.sent);
    }
    drop(reader);
}

fn main() {
    let a = parse_args();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("loadgen")
        .spawn(move || async move {
            let now = Instant::now();
            let run = Rc::new(Run {
                budget: Cell::new(a.requests),
                payload: vec![b'a'; a.size],
                packet: PacketConfig {
                    route_bytes: a.route_bytes,
                    seq_bytes: a.seq_bytes,
                    buffer_bytes: 1 << 20,
                    ..PacketConfig::default()
                },
                a,
                stats: Stats::default(),
                hist: RefCell::new(
                    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
                ),
                start: Cell::new(now),
                last_reply: Cell::new(now),
                end: Cell::new(now + Duration::from_secs(3600)),
            });
            report_and_run(run).await
        })
        .expect("start executor");
    let failures = handle.join().expect("executor");
    std::process::exit(if failures == 0 { 0 } else { 1 });
}

/// Opens the connections at the configured rate, starts each connection's traffic, prints a
/// progress line per second and the summary; returns the number of failures.
async fn report_and_run(run: Rc<Run>) -> usize {
    let a = &run.a;
    let ramp_start = Instant::now();
    if a.mode != "flood" {
        run.end.set(ramp_start + a.duration);
    }
    let gap = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
    let mut streams = Vec::with_capacity(a.conns);
    for i in 0..a.conns {
        if let Some(wait) = (ramp_start + gap * i as u32).checked_duration_since(Instant::now()) {
            glommio::timer::sleep(wait).await;
        }
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % a.sources.max(1) as usize) as u8);
        match connect(a.addr, source) {
            Ok(pair) => {
                run.stats.open.set(run.stats.open.get() + 1);
                streams.push(pair);
            }
            Err(e) => {
                if run.stats.connect_errors.get() == 0 {
                    eprintln!("connect error: {e}");
                }
                run.stats
                    .connect_errors
                    .set(run.stats.connect_errors.get() + 1);
            }
        }
    }
    run.start.set(Instant::now());
    let mut tasks = Vec::new();
    for (r, w) in streams {
        let task = match a.mode.as_str() {
            "idle" => glommio::spawn_local(idle_conn(run.clone(), r, w)),
            "flood" => glommio::spawn_local(flood_conn(run.clone(), r, w)),
            _ => glommio::spawn_local(closed_conn(run.clone(), r, w)),
        };
        tasks.push(task);
    }
    let progress = {
        let run = run.clone();
        glommio::spawn_local(async move {
            let mut last = 0;
            loop {
                glommio::timer::sleep(Duration::from_secs(1)).await;
                let got = run.stats.received.get();
                eprintln!(
                    "t={:>4.0}s open={} sent={} received={} (+{}/s) heartbeats={} connect_errors={} closed_by_gate={}",
                    run.start.get().elapsed().as_secs_f64(),
                    run.stats.open.get(),
                    run.stats.sent.get(),
                    got,
                    got - last,
                    run.stats.heartbeats.get(),
                    run.stats.connect_errors.get(),
                    run.stats.closed_by_gate.get()
                );
                last = got;
            }
        })
    };
    if a.mode == "flood" {
        // Bounded: give up `duration` after the start if replies stop coming.
        let limit = run.start.get() + a.duration;
        for t in tasks {
            let left = limit.saturating_duration_since(Instant::now());
            let _ = glommio::timer::timeout(left, async {
                t.await;
                Ok(())
            })
            .await;
        }
        run.end.set(Instant::now());
    } else {
        let left = run.end.get().saturating_duration_since(Instant::now());
        glommio::timer::sleep(left).await;
        glommio::timer::sleep(Duration::from_millis(200)).await;
        drop(tasks);
    }
    drop(progress);
    summary(&run)
}

fn summary(run: &Run) -> usize {
    let a = &run.a;
    let s = &run.stats;
    let elapsed = match a.mode.as_str() {
        "flood" => run
            .last_reply
            .get()
            .saturating_duration_since(run.start.get()),
        _ => run.end.get().saturating_duration_since(run.start.get()),
    }
    .as_secs_f64()
    .max(1e-9);
    let tps = s.received.get() as f64 / elapsed;
    let h = run.hist.borrow();
    let pct = |q: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    let failures = s.connect_errors.get()
        + s.closed_by_gate.get()
        + usize::from(a.mode == "flood" && s.received.get() < a.requests);
    let json = serde_json::json!({
        "mode": a.mode, "conns": a.conns, "size": a.size, "inflight": a.inflight,
        "requests": a.requests, "sent": s.sent.get(), "received": s.received.get(),
        "seconds": elapsed, "tps": tps, "connect_errors": s.connect_errors.get(),
        "closed_by_gate": s.closed_by_gate.get(), "heartbeats": s.heartbeats.get(),
        "rtt_us": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "p999": pct(0.999),
                   "max": if h.is_empty() { 0 } else { h.max() }},
        "failures": failures,
    });
    if a.json {
        println!("{json}");
    } else {
        println!(
            "summary mode={} conns={} sent={} received={} seconds={:.3} tps={:.0} connect_errors={} closed_by_gate={} heartbeats={}",
            a.mode, a.conns, s.sent.get(), s.received.get(), elapsed, tps,
            s.connect_errors.get(), s.closed_by_gate.get(), s.heartbeats.get()
        );
        if !h.is_empty() {
            println!(
                "rtt_us p50={} p90={} p99={} p99.9={} max={}",
                pct(0.5),
                pct(0.9),
                pct(0.99),
                pct(0.999),
                h.max()
            );
        }
    }
    failures
}
