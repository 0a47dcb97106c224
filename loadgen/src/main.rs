//! loadgen: drives many due-protocol connections (TCP, WebSocket or KCP) at a gate (gatehouse or due's
//! Go gate). Owns the client side of load: connection ramp, source addresses, traffic, reports.
//!
//! Modes:
//! - `idle`: hold N connections, a heartbeat per connection every interval.
//! - `flood`: open loop, due's benchmark shape — C connections drain a shared count of N
//!   requests without waiting for replies; TPS = N / time until the last reply.
//! - `closed`: at most K requests in flight per connection (`--inflight`), optionally paced to a
//!   total rate (`--target-rate`). Paced, each connection follows a fixed schedule of intended
//!   send times and writes every request that is due in one write (several per system call when
//!   a connection's share of the rate is above one per `--tick`); a reply's latency is measured
//!   from its request's intended send time, so a stall (of the gate, or of loadgen) counts
//!   against every request it delayed instead of pausing the schedule (no coordinated omission).
//!   Also recorded: latency from the actual write, and how late the writes were (`lag_us`,
//!   loadgen's own share). Unpaced, each connection keeps K in flight.
//! - `pingpong`: one connection, a plain blocking client: one request, wait for its reply, the
//!   next (paced to `--target-rate` when given, by sleeping until the next send time). The
//!   reference for what loadgen's closed mode adds to latency at low load.
//! - `fanout`: N connections wait; one more connection sends a trigger on the broadcast route,
//!   the node broadcasts a packet stamped with its wall clock, and every connection records
//!   how long it took to arrive. A round is complete when every connection has it.
//! - `steady`: N connections send heartbeats; K of them also send a numbered request every
//!   interval and check the echoes (missing, duplicated, reordered), the longest gap between
//!   two replies and the round trips — what a client sees while the gate is upgraded.
//! - `soak`: N connections held for `--duration` with churn (`--churn` % reconnect per second),
//!   heartbeats, echoes, binds and unbinds through the node (routes 21/22) and broadcasts
//!   (route 20) that every connection counts; reports unexpected closes and anything missing
//!   (see `soak.rs`).
//! - `slow`: slow consumers. N connections never read (a small receive buffer, `--rcvbuf`, set
//!   before connecting) but write a heartbeat every `--heartbeat`, so the gate keeps them alive
//!   until their write queue fills and it closes them (a heartbeat write failing tells us it
//!   did). K more connections (`--readers`) read and check every broadcast's number (missing,
//!   reordered). With `--target-rate R` one more reading connection triggers R broadcasts per
//!   second on the broadcast route for `--duration`, then every reader must get all of them.
//!   The node must number its broadcasts (echo-node: payload bytes 8..16).
//!
//! In flood and closed mode each connection's socket is duplicated so one task writes while
//! another reads: requests and replies flow independently, as with due's own clients. Idle,
//! fanout and steady connections use one fd and one task (timers raced against the read), so one
//! process can hold ~19,900 of them under the 20,000-fd limit. The backend must echo route and
//! seq (steady: the payload too).
//! Request payloads are JSON (`{"message":"aaa…"}` of exactly `--size` bytes) so that due's own
//! benchmark handler (JSON in, JSON out) can serve them as well as a byte-echoing node.

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

mod kcp;
mod soak;

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
    /// Connect over WebSocket, upgrading on this path (None = plain TCP).
    ws: Option<String>,
    /// Connect over KCP (UDP) instead of TCP; mode idle only.
    kcp: bool,
    /// closed: pace requests to this many per second over all connections (0 = as fast as
    /// the in-flight window allows).
    target_rate: u64,
    /// closed (paced): the shortest period between two writes of one connection; requests due
    /// within it go in one write, stamped with the write's intended time.
    tick: Duration,
    /// fanout: broadcast rounds, and the pause between them.
    rounds: u32,
    pause: Duration,
    /// steady: connections that send requests, and the period of each one's requests.
    active: usize,
    interval: Duration,
    /// soak: share of the connections that close and reopen per second (%), and the periods of
    /// each connection's echoes, binds/unbinds, and of the broadcasts.
    churn: f64,
    echo_every: Duration,
    bind_every: Duration,
    broadcast_every: Duration,
    /// slow: connections that read and check every broadcast, and the non-readers' SO_RCVBUF.
    readers: usize,
    rcvbuf: usize,
    /// slow: the MSS the non-readers advertise (0 = the kernel's).
    mss: u32,
    json: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen MODE [flags]\n\
         MODE: idle | flood | closed | pingpong | fanout | steady | soak | slow\n\
         --addr HOST:PORT   gate address (127.0.0.1:3553)\n\
         --conns N          connections (1000)\n\
         --rate N           connects per second (5000)\n\
         --sources K        spread source addresses over 127.0.0.1..127.0.0.K (8)\n\
         --duration SECS    idle: how long to hold; closed/steady: how long to run (30)\n\
         --heartbeat SECS   idle/fanout/steady: heartbeat period per connection (10)\n\
         --requests N       flood: total requests shared by all connections (100000)\n\
         --inflight K       closed: requests in flight per connection (1)\n\
         --target-rate R    closed, pingpong: pace to R requests/s over all connections (0 = unpaced);\n\
                            slow: trigger R broadcasts/s for --duration (0 = trigger none)\n\
         --tick SECS        closed: shortest period between two writes of a connection (0.001)\n\
         --rounds N         fanout: broadcast rounds (10)\n\
         --pause SECS       fanout: pause between rounds (0.5)\n\
         --active K         steady: connections that send numbered requests (100)\n\
         --interval SECS    steady: period of each active connection's requests (0.02)\n\
         --churn PCT        soak: % of the connections that close and reopen per second (1)\n\
         --echo-every SECS  soak: period of each connection's echo request (10)\n\
         --bind-every SECS  soak: period of each connection's bind or unbind (30)\n\
         --broadcast-every SECS  soak: period of the broadcasts (5)\n\
         --readers K        slow: connections that read and check every broadcast (10)\n\
         --rcvbuf BYTES     slow: SO_RCVBUF of the connections that never read (4096)\n\
         --mss BYTES        slow: TCP_MAXSEG they advertise (0 = default; small = the gate's\n\
                            kernel send buffer for them is small and their queue fills sooner)\n\
         --size BYTES       payload size (1024)\n\
         --route R          route of the requests (1; fanout: the broadcast route, 20)\n\
         --route-bytes N    [packet] routeBytes of the cluster (2)\n\
         --seq-bytes N      [packet] seqBytes of the cluster (2)\n\
         --ws PATH          connect over WebSocket (upgrade on PATH) instead of plain TCP\n\
         --kcp              connect over KCP (UDP; modes idle and flood)\n\
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
        kcp: false,
        target_rate: 0,
        tick: Duration::from_millis(1),
        rounds: 10,
        pause: Duration::from_millis(500),
        active: 100,
        interval: Duration::from_millis(20),
        churn: 1.0,
        echo_every: Duration::from_secs(10),
        bind_every: Duration::from_secs(30),
        broadcast_every: Duration::from_secs(5),
        readers: 10,
        rcvbuf: 4096,
        mss: 0,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    a.mode = it.next().unwrap_or_else(|| usage());
    while let Some(flag) = it.next() {
        if flag == "--json" {
            a.json = true;
            continue;
        }
        if flag == "--kcp" {
            a.kcp = true;
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
            "--target-rate" => a.target_rate = num(&v),
            "--tick" => a.tick = Duration::from_secs_f64(num::<f64>(&v)),
            "--rounds" => a.rounds = num(&v),
            "--pause" => a.pause = Duration::from_secs_f64(num::<f64>(&v)),
            "--active" => a.active = num(&v),
            "--interval" => a.interval = Duration::from_secs_f64(num::<f64>(&v)),
            "--churn" => a.churn = num::<f64>(&v).clamp(0.0, 100.0),
            "--echo-every" => a.echo_every = Duration::from_secs_f64(num::<f64>(&v)),
            "--bind-every" => a.bind_every = Duration::from_secs_f64(num::<f64>(&v)),
            "--broadcast-every" => a.broadcast_every = Duration::from_secs_f64(num::<f64>(&v)),
            "--readers" => a.readers = num(&v),
            "--rcvbuf" => a.rcvbuf = num(&v),
            "--mss" => a.mss = num(&v),
            _ => usage(),
        }
    }
    if !matches!(
        a.mode.as_str(),
        "idle" | "flood" | "closed" | "pingpong" | "fanout" | "steady" | "soak" | "slow"
    ) {
        usage();
    }
    if a.mode == "pingpong" {
        // One connection, one request at a time.
        a.conns = 1;
        a.inflight = 1;
    }
    if a.mode == "steady" && (a.size < COUNTER_AT + COUNTER_DIGITS + 2 || a.interval.is_zero()) {
        eprintln!(
            "steady: --size must be at least {} (the request number travels in the payload) \
             and --interval above 0",
            COUNTER_AT + COUNTER_DIGITS + 2
        );
        std::process::exit(2);
    }
    if a.mode == "soak"
        && [a.heartbeat, a.echo_every, a.bind_every, a.broadcast_every]
            .iter()
            .any(|d| d.is_zero())
    {
        eprintln!("soak: every period (--heartbeat, --echo-every, --bind-every, --broadcast-every) must be above 0");
        std::process::exit(2);
    }
    if matches!(a.mode.as_str(), "fanout" | "slow")
        && !route_given(&std::env::args().collect::<Vec<_>>())
    {
        a.route = 20;
    }
    a
}

/// Whether `--route` was given (fanout defaults to the benchmark's broadcast route 20).
fn route_given(args: &[String]) -> bool {
    args.iter().any(|x| x == "--route")
}

#[derive(Default)]
struct Stats {
    open: Cell<usize>,
    connect_errors: Cell<usize>,
    closed_by_gate: Cell<usize>,
    heartbeats: Cell<u64>,
    sent: Cell<u64>,
    received: Cell<u64>,
    /// fanout: rounds in which some connection never got the broadcast.
    incomplete_rounds: Cell<usize>,
    /// steady: requests never answered, answers duplicated or out of order, and the
    /// connections that saw either.
    missing: Cell<u64>,
    disordered: Cell<u64>,
    faulty: Cell<usize>,
    /// slow: connections that never read, and those of them the gate closed.
    slow_open: Cell<usize>,
    slow_closed: Cell<usize>,
}

impl Stats {
    fn bump(c: &Cell<u64>) {
        c.set(c.get() + 1);
    }

    fn bump_usize(c: &Cell<usize>) {
        c.set(c.get() + 1);
    }
}

type Stream = glommio::net::TcpStream;

/// Connects from `source` (blocking, bounded by 5 s; the ramp paces connects anyway).
fn connect(addr: SocketAddr, source: Ipv4Addr) -> std::io::Result<Stream> {
    connect_with(addr, source, None)
}

/// [`connect`], with the receive buffer and the MSS (0 = the kernel's) set before connecting:
/// the client's window is sized from the first, the gate's send buffer for it from the second.
fn connect_with(
    addr: SocketAddr,
    source: Ipv4Addr,
    rcvbuf: Option<(usize, u32)>,
) -> std::io::Result<Stream> {
    let s = dial(addr, source, rcvbuf)?;
    s.set_nonblocking(true)?;
    // SAFETY: the fd is a connected TCP socket we own; the glommio stream takes ownership of
    // it and closes it once when dropped.
    Ok(unsafe { Stream::from_raw_fd(s.into_raw_fd()) })
}

/// A connected, blocking TCP socket with TCP_NODELAY (see [`connect_with`]).
fn dial(
    addr: SocketAddr,
    source: Ipv4Addr,
    rcvbuf: Option<(usize, u32)>,
) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    if let Some((n, mss)) = rcvbuf {
        s.set_recv_buffer_size(n)?;
        if mss > 0 {
            s.set_tcp_mss(mss)?;
        }
    }
    if addr.ip().is_loopback() {
        s.bind(&SocketAddr::new(source.into(), 0).into())?;
    }
    s.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    s.set_tcp_nodelay(true)?;
    Ok(s)
}

/// A second handle on the same socket, for a reader task beside a writer task.
fn duplicate(s: &Stream) -> std::io::Result<Stream> {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: `s` owns this fd and outlives the borrow, which only lives for the dup(2) call.
    let dup = unsafe { BorrowedFd::borrow_raw(s.as_raw_fd()) }.try_clone_to_owned()?;
    // SAFETY: `dup` is a fresh fd of a connected TCP socket; the new stream owns it and closes
    // it once, independently of the original's fd.
    Ok(unsafe { Stream::from_raw_fd(dup.into_raw_fd()) })
}

struct Run {
    a: Args,
    packet: PacketConfig,
    stats: Stats,
    /// Round trips (µs); closed paced: from each request's intended send time.
    hist: RefCell<Histogram<u64>>,
    /// closed, paced: round trips from the actual write, and how late each write was (µs).
    hist_sent: RefCell<Histogram<u64>>,
    lag: RefCell<Histogram<u64>>,
    payload: Vec<u8>,
    /// flood: requests not yet taken by any connection.
    budget: Cell<u64>,
    /// fanout: arrivals of the current round, its latest arrival, and per-arrival latencies.
    fanout: Fanout,
    /// steady: reply gaps.
    gaps: Gaps,
    /// soak: its figures.
    soak: soak::Soak,
    /// slow: every reader's view of the broadcasts.
    slow: RefCell<Vec<Rc<Numbered>>>,
    /// The main task, waiting for replies (flood: all of them; fanout: a round's).
    waiter: RefCell<Option<std::task::Waker>>,
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

    /// Appends one request as it goes on the wire (a WS frame around the packet over WS).
    fn put_request(&self, seq: u32, out: &mut BytesMut) {
        let packet = self
            .packet
            .encode(self.a.route, self.seq_value(seq), &self.payload)
            .expect("request fits the packet settings");
        self.put_wire(&packet, out);
    }

    fn put_wire(&self, packet: &[u8], out: &mut BytesMut) {
        if self.a.ws.is_some() {
            put_ws_frame(packet, out);
        } else {
            out.extend_from_slice(packet);
        }
    }

    /// The route of a received packet, if it is not a heartbeat.
    fn route_of(&self, frame: &[u8]) -> Option<i32> {
        if is_heartbeat(frame) {
            return None;
        }
        self.packet.unpack(frame).ok().map(|m| m.route)
    }
}

impl Run {
    /// fanout: a broadcast packet arrived; its payload starts with the node's clock at the
    /// broadcast (Unix nanoseconds, big-endian). Same machine, same clock.
    fn fanout_arrival(&self, frame: &[u8]) {
        let Some(stamp) = self
            .packet
            .unpack(frame)
            .ok()
            .and_then(|m| m.payload.get(..8))
        else {
            return;
        };
        let sent = u64::from_be_bytes(stamp.try_into().expect("8 bytes"));
        let us = (unix_nanos().saturating_sub(sent) / 1000).max(1);
        let f = &self.fanout;
        if let Some(h) = f.arrivals.borrow_mut().as_mut() {
            let _ = h.record(us);
        }
        f.round_max_us.set(f.round_max_us.get().max(us));
        f.arrived.set(f.arrived.get() + 1);
        Stats::bump(&self.stats.received);
        self.wake_waiter();
    }

    fn wake_waiter(&self) {
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves once `ready()` holds; every reply wakes the check.
    async fn until(&self, ready: impl Fn() -> bool) {
        std::future::poll_fn(|cx| {
            if ready() {
                std::task::Poll::Ready(())
            } else {
                *self.waiter.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// fanout: the rounds, driven over one extra connection that sends the trigger packets (it is a
/// connection of the gate too, so it receives each broadcast like the others).
async fn run_fanout(run: &Rc<Run>) {
    let a = &run.a;
    let f = &run.fanout;
    *f.arrivals.borrow_mut() = Some(Histogram::new_with_bounds(1, 60_000_000, 3).expect("hist"));
    *f.rounds.borrow_mut() = Some(Histogram::new_with_bounds(1, 60_000_000, 3).expect("hist"));
    let mut w = match connect(a.addr, Ipv4Addr::LOCALHOST) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fanout: trigger connection: {e}");
            Stats::bump_usize(&run.stats.connect_errors);
            return;
        }
    };
    if !open_session(run, &mut w).await {
        return;
    }
    let Some(r) = reader_of(run, &w) else {
        return;
    };
    let reader = {
        let run = run.clone();
        glommio::spawn_local(async move {
            read_frames(&run, r, |frame| {
                if run.route_of(frame) == Some(run.a.route) {
                    run.fanout_arrival(frame);
                }
                true
            })
            .await
        })
    };
    let mut trigger = BytesMut::new();
    for round in 0..a.rounds {
        let expected = run.stats.open.get() + 1 - run.stats.closed_by_gate.get();
        f.arrived.set(0);
        f.round_max_us.set(0);
        trigger.clear();
        let packet = run
            .packet
            .encode(a.route, run.seq_value(round), b"")
            .expect("trigger fits");
        run.put_wire(&packet, &mut trigger);
        if w.write_all(&trigger).await.is_err() {
            break;
        }
        let done = glommio::timer::timeout(Duration::from_secs(10), async {
            run.until(|| f.arrived.get() >= expected).await;
            Ok(())
        })
        .await
        .is_ok();
        if done {
            if let Some(h) = f.rounds.borrow_mut().as_mut() {
                let _ = h.record(f.round_max_us.get());
            }
        } else {
            eprintln!(
                "fanout: round {round} incomplete: {} of {expected} arrived in 10 s",
                f.arrived.get()
            );
            Stats::bump_usize(&run.stats.incomplete_rounds);
        }
        glommio::timer::sleep(a.pause).await;
    }
    drop(reader);
}

/// A JSON object of exactly `size` bytes when `size` allows one (`{"message":"aaa…"}`, 14 bytes
/// of framing), else `size` bytes of `a`.
fn json_payload(size: usize) -> Vec<u8> {
    if size < 14 {
        return vec![b'a'; size];
    }
    let mut p = b"{\"message\":\"".to_vec();
    p.resize(size - 2, b'a');
    p.extend_from_slice(b"\"}");
    p
}

/// fanout bookkeeping, shared by every connection's reader.
#[derive(Default)]
struct Fanout {
    /// Broadcast packets received in the current round.
    arrived: Cell<usize>,
    /// The largest latency (µs) seen in the current round: when the last connection got it.
    round_max_us: Cell<u64>,
    /// Latency of every arrival (µs), all rounds.
    arrivals: RefCell<Option<Histogram<u64>>>,
    /// The round's completion time (µs from broadcast to the last arrival), one per round.
    rounds: RefCell<Option<Histogram<u64>>>,
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Turns bytes read from one connection into whole packets (over WS: the packets carried in
/// the binary frames).
struct FrameReader {
    dec: FrameDecoder,
    /// Packet bytes not yet consumed.
    buf: BytesMut,
    /// WS only: frame bytes not yet unwrapped.
    raw: BytesMut,
    /// Where reads land.
    chunk: Vec<u8>,
    ws: bool,
}

impl FrameReader {
    fn new(run: &Run) -> Self {
        // Idle connections read heartbeats and small broadcasts only (steady: small echoes too):
        // small buffers keep 19,000 of them cheap.
        let size = if matches!(run.a.mode.as_str(), "idle" | "fanout" | "steady" | "soak") {
            256
        } else {
            64 * 1024
        };
        FrameReader {
            dec: FrameDecoder::new(&run.packet, u32::MAX),
            buf: BytesMut::with_capacity(size),
            raw: BytesMut::new(),
            chunk: vec![0u8; size],
            ws: run.a.ws.is_some(),
        }
    }

    /// Takes the `n` bytes just read into `chunk`, calling `on_frame` with each whole packet;
    /// false = stop reading (a WS close frame, or `on_frame` said so).
    fn take(&mut self, n: usize, mut on_frame: impl FnMut(&[u8]) -> bool) -> bool {
        if self.ws {
            self.raw.extend_from_slice(&self.chunk[..n]);
            if !unwrap_ws_frames(&mut self.raw, &mut self.buf) {
                return false;
            }
        } else {
            self.buf.extend_from_slice(&self.chunk[..n]);
        }
        while let Ok(Some(len)) = self.dec.next_frame_len(&self.buf) {
            let frame = self.buf.split_to(len);
            if !on_frame(&frame) {
                return false;
            }
        }
        true
    }
}

/// Reads packets until the connection ends (or `on_frame` says stop), calling `on_frame` with
/// each whole packet.
async fn read_frames(run: &Run, mut r: Stream, mut on_frame: impl FnMut(&[u8]) -> bool) {
    let mut fr = FrameReader::new(run);
    loop {
        let n = match r.read(&mut fr.chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !fr.take(n, &mut on_frame) {
            return;
        }
    }
    run.count_closed_by_gate();
}

impl Run {
    /// A connection ended: the gate's doing unless the run is over.
    fn count_closed_by_gate(&self) {
        if self.running() {
            Stats::bump_usize(&self.stats.closed_by_gate);
        }
    }
}

fn is_heartbeat(frame: &[u8]) -> bool {
    frame.len() > 4 && frame[4] & 0x80 != 0
}

/// Moves the payloads of the complete server WS frames at the front of `raw` into `out`;
/// returns false on a close frame. Data frames (binary, text, continuation) carry packet bytes;
/// pings and pongs are skipped.
fn unwrap_ws_frames(raw: &mut BytesMut, out: &mut BytesMut) -> bool {
    loop {
        if raw.len() < 2 {
            return true;
        }
        let (opcode, masked) = (raw[0] & 0x0f, raw[1] & 0x80 != 0);
        let (mut len, mut off) = ((raw[1] & 0x7f) as usize, 2);
        if len == 126 {
            if raw.len() < 4 {
                return true;
            }
            len = u16::from_be_bytes([raw[2], raw[3]]) as usize;
            off = 4;
        } else if len == 127 {
            if raw.len() < 10 {
                return true;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[2..10]);
            len = u64::from_be_bytes(b) as usize;
            off = 10;
        }
        let mask_at = off;
        if masked {
            off += 4;
        }
        if raw.len() < off + len {
            return true;
        }
        let frame = raw.split_to(off + len);
        match opcode {
            0x0..=0x2 => {
                let start = out.len();
                out.extend_from_slice(&frame[off..]);
                if masked {
                    let mask = &frame[mask_at..mask_at + 4];
                    for (i, b) in out[start..].iter_mut().enumerate() {
                        *b ^= mask[i % 4];
                    }
                }
            }
            0x8 => return false,
            _ => {}
        }
    }
}

/// Upgrades to WebSocket; returns false if the gate refused.
async fn ws_upgrade(s: &mut Stream, path: &str, host: SocketAddr) -> bool {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = Vec::new();
    let mut b = [0u8; 512];
    while !head.windows(4).any(|x| x == b"\r\n\r\n") && head.len() < 4096 {
        match s.read(&mut b).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    head.starts_with(b"HTTP/1.1 101")
}

/// Appends one masked binary WebSocket frame carrying `payload` (client frames must be masked).
fn put_ws_frame(payload: &[u8], out: &mut BytesMut) {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    out.extend_from_slice(&[0x82]);
    match payload.len() {
        n @ 0..=125 => out.extend_from_slice(&[0x80 | n as u8]),
        n @ 126..=0xffff => {
            out.extend_from_slice(&[0x80 | 126]);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.extend_from_slice(&[0x80 | 127]);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// Upgrades the connection to WebSocket when `--ws` is set; false (counted as a connect error)
/// if the gate refused.
async fn open_session(run: &Run, s: &mut Stream) -> bool {
    let Some(path) = &run.a.ws else {
        return true;
    };
    if ws_upgrade(s, path, run.a.addr).await {
        return true;
    }
    run.stats
        .connect_errors
        .set(run.stats.connect_errors.get() + 1);
    false
}

/// idle and fanout: heartbeats out, heartbeats (and in fanout, broadcasts) in. One fd, one
/// task: the read is raced against the next heartbeat's timer.
async fn idle_conn(run: Rc<Run>, mut s: Stream) {
    if !open_session(&run, &mut s).await {
        return;
    }
    let mut hb = BytesMut::new();
    run.put_wire(&run.packet.heartbeat(0), &mut hb);
    let mut fr = FrameReader::new(&run);
    let mut next_heartbeat = Instant::now() + run.a.heartbeat;
    enum Event {
        Read(std::io::Result<usize>),
        Tick,
    }
    while run.running() {
        let wake = next_heartbeat.min(run.end.get());
        let read = async { Event::Read(s.read(&mut fr.chunk).await) };
        let tick = async {
            glommio::timer::sleep(wake.saturating_duration_since(Instant::now())).await;
            Event::Tick
        };
        match futures_lite::future::or(read, tick).await {
            Event::Read(Ok(0)) | Event::Read(Err(_)) => {
                run.count_closed_by_gate();
                return;
            }
            Event::Read(Ok(n)) => {
                fr.take(n, |frame| {
                    if is_heartbeat(frame) {
                        Stats::bump(&run.stats.heartbeats);
                    } else if run.route_of(frame) == Some(run.a.route) {
                        run.fanout_arrival(frame);
                    }
                    true
                });
            }
            Event::Tick => {
                if Instant::now() >= next_heartbeat && run.running() {
                    if s.write_all(&hb).await.is_err() {
                        run.count_closed_by_gate();
                        return;
                    }
                    next_heartbeat += run.a.heartbeat;
                }
            }
        }
    }
}

/// steady: where a request's number sits in its payload (inside the JSON string, so due's JSON
/// echo handler answers it too), as fixed-width decimal digits.
const COUNTER_AT: usize = 12;
const COUNTER_DIGITS: usize = 16;
/// steady: after the run, how long connections wait for the replies still due.
const DRAIN: Duration = Duration::from_secs(3);

/// steady: reply gaps over all connections.
struct Gaps {
    /// Each active connection's longest gap between two replies (µs), recorded when it ends.
    per_client: RefCell<Histogram<u64>>,
    /// The longest gap of any connection (µs), and the longest that ended since the last
    /// progress line.
    max_us: Cell<u64>,
    window_us: Cell<u64>,
    /// When the longest gap ended (ms since the Unix epoch), to line it up with a gate's log.
    max_end_unix_ms: Cell<u64>,
    max_end_bucket: Cell<usize>,
    /// Replies per 5 ms since the start (where a stall shows as a run of low counts).
    timeline: RefCell<Vec<u32>>,
}

impl Default for Gaps {
    fn default() -> Self {
        Gaps {
            per_client: RefCell::new(Histogram::new_with_bounds(1, 600_000_000, 3).expect("hist")),
            max_us: Cell::new(0),
            window_us: Cell::new(0),
            max_end_unix_ms: Cell::new(0),
            max_end_bucket: Cell::new(0),
            timeline: RefCell::default(),
        }
    }
}

/// steady: the width of one bucket of the reply timeline.
const TIMELINE_MS: usize = 5;

/// steady: one active connection's view of its echoes.
struct Echoes {
    /// Requests sent (numbered 1..=sent) and the next number expected back.
    sent: u64,
    expect: u64,
    /// Requests not answered yet, oldest first, with when they were sent.
    in_flight: VecDeque<(u64, Instant)>,
    last_reply: Option<Instant>,
    max_gap: Duration,
    missing: u64,
    disordered: u64,
}

impl Echoes {
    fn new() -> Self {
        Echoes {
            sent: 0,
            expect: 1,
            in_flight: VecDeque::new(),
            last_reply: None,
            max_gap: Duration::ZERO,
            missing: 0,
            disordered: 0,
        }
    }

    /// An echo numbered `n` arrived now.
    fn reply(&mut self, run: &Run, n: u64) {
        let now = Instant::now();
        if let Some(last) = self.last_reply {
            let gap = now - last;
            self.max_gap = self.max_gap.max(gap);
            let us = gap.as_micros() as u64;
            let g = &run.gaps;
            if us > g.max_us.get() {
                g.max_us.set(us);
                let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                g.max_end_unix_ms
                    .set(unix.map_or(0, |d| d.as_millis() as u64));
                g.max_end_bucket
                    .set((now - run.start.get()).as_millis() as usize / TIMELINE_MS);
            }
            g.window_us.set(g.window_us.get().max(us));
        }
        {
            let bucket = (now - run.start.get()).as_millis() as usize / TIMELINE_MS;
            let mut t = run.gaps.timeline.borrow_mut();
            if t.len() <= bucket {
                t.resize(bucket + 1, 0);
            }
            t[bucket] += 1;
        }
        self.last_reply = Some(now);
        Stats::bump(&run.stats.received);
        if n < self.expect {
            // Already answered, or given up as missing: duplicated or reordered.
            self.disordered += 1;
            return;
        }
        self.missing += n - self.expect;
        self.expect = n + 1;
        while let Some(&(m, at)) = self.in_flight.front() {
            if m > n {
                break;
            }
            self.in_flight.pop_front();
            if m == n {
                let us = (now - at).as_micros() as u64;
                let _ = run.hist.borrow_mut().record(us.max(1));
            }
        }
    }

    /// The connection is done: what never came back is missing; adds this one to the totals.
    fn finish(mut self, run: &Run) {
        self.missing += self.sent + 1 - self.expect.min(self.sent + 1);
        let s = &run.stats;
        s.missing.set(s.missing.get() + self.missing);
        s.disordered.set(s.disordered.get() + self.disordered);
        if self.missing + self.disordered > 0 {
            Stats::bump_usize(&s.faulty);
        }
        let us = (self.max_gap.as_micros() as u64).max(1);
        let _ = run.gaps.per_client.borrow_mut().record(us);
    }
}

/// The request number in an echoed payload.
fn counter_of(payload: &[u8]) -> Option<u64> {
    let digits = payload.get(COUNTER_AT..COUNTER_AT + COUNTER_DIGITS)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// steady: one fd, one task. A heartbeat every `--heartbeat`; an active connection also sends a
/// numbered request every `--interval` (behind schedule it sends late, never in a burst) and
/// checks every echo. Sends and heartbeats start staggered by the connection's index so they
/// spread evenly over their periods. After `--duration` an active connection stops sending and
/// waits (up to [`DRAIN`]) for the replies still due.
async fn steady_conn(run: Rc<Run>, mut s: Stream, index: usize, active: bool) {
    if !open_session(&run, &mut s).await {
        return;
    }
    let a = &run.a;
    let mut hb = BytesMut::new();
    run.put_wire(&run.packet.heartbeat(0), &mut hb);
    let mut fr = FrameReader::new(&run);
    let phase = index as f64 / a.conns.max(1) as f64;
    let start = run.start.get();
    let mut next_heartbeat = start + a.heartbeat.mul_f64(phase);
    let mut next_send = start + a.interval.mul_f64(phase);
    let mut echoes = active.then(Echoes::new);
    let mut payload = run.payload.clone();
    let mut out = BytesMut::new();
    let (end, drain_end) = (run.end.get(), run.end.get() + DRAIN);
    enum Event {
        Read(std::io::Result<usize>),
        Tick,
    }
    loop {
        let now = Instant::now();
        let due = echoes.as_ref().map_or(0, |e| e.in_flight.len());
        if now >= drain_end || (now >= end && due == 0) {
            break;
        }
        let mut wake = if now < end {
            next_heartbeat.min(end)
        } else {
            drain_end
        };
        if echoes.is_some() && now < end {
            wake = wake.min(next_send);
        }
        let read = async { Event::Read(s.read(&mut fr.chunk).await) };
        let tick = async {
            glommio::timer::sleep(wake.saturating_duration_since(Instant::now())).await;
            Event::Tick
        };
        match futures_lite::future::or(read, tick).await {
            Event::Read(Ok(0)) | Event::Read(Err(_)) => {
                Stats::bump_usize(&run.stats.closed_by_gate);
                break;
            }
            Event::Read(Ok(n)) => {
                fr.take(n, |frame| {
                    if is_heartbeat(frame) {
                        Stats::bump(&run.stats.heartbeats);
                    } else if let Some(e) = echoes.as_mut() {
                        match run
                            .packet
                            .unpack(frame)
                            .ok()
                            .and_then(|m| counter_of(m.payload))
                        {
                            Some(n) => e.reply(&run, n),
                            None => e.disordered += 1,
                        }
                    }
                    true
                });
            }
            Event::Tick => {
                let now = Instant::now();
                if now >= end {
                    continue;
                }
                out.clear();
                if now >= next_heartbeat {
                    out.extend_from_slice(&hb);
                    next_heartbeat = (next_heartbeat + a.heartbeat).max(now);
                }
                if let Some(e) = echoes.as_mut().filter(|_| now >= next_send) {
                    e.sent += 1;
                    let digits = format!("{:0w$}", e.sent, w = COUNTER_DIGITS);
                    payload[COUNTER_AT..COUNTER_AT + COUNTER_DIGITS]
                        .copy_from_slice(digits.as_bytes());
                    let packet = run
                        .packet
                        .encode(a.route, run.seq_value(e.sent as u32), &payload)
                        .expect("request fits the packet settings");
                    run.put_wire(&packet, &mut out);
                    e.in_flight.push_back((e.sent, Instant::now()));
                    Stats::bump(&run.stats.sent);
                    next_send = (next_send + a.interval).max(now);
                }
                if !out.is_empty() && s.write_all(&out).await.is_err() {
                    Stats::bump_usize(&run.stats.closed_by_gate);
                    break;
                }
            }
        }
    }
    if let Some(e) = echoes {
        e.finish(&run);
    }
}

/// The reader half for a writer task: a duplicate of the connection's fd (counted as a
/// connect error when the process is out of fds).
fn reader_of(run: &Run, s: &Stream) -> Option<Stream> {
    match duplicate(s) {
        Ok(r) => Some(r),
        Err(e) => {
            if run.stats.connect_errors.get() == 0 {
                eprintln!("dup: {e}");
            }
            Stats::bump_usize(&run.stats.connect_errors);
            None
        }
    }
}

async fn flood_conn(run: Rc<Run>, mut w: Stream) {
    if !open_session(&run, &mut w).await {
        return;
    }
    let Some(r) = reader_of(&run, &w) else {
        return;
    };
    let reader = {
        let run = run.clone();
        glommio::spawn_local(async move {
            read_frames(&run, r, |frame| {
                if !is_heartbeat(frame) {
                    Stats::bump(&run.stats.received);
                    run.last_reply.set(Instant::now());
                    if run.stats.received.get() >= run.a.requests {
                        run.wake_waiter();
                    }
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
            run.put_request(seq, &mut batch);
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

/// closed: one request's times, kept until its reply: when it was meant to go out (the schedule,
/// or the write when unpaced) and when it was written.
type Sent = (Instant, Instant);

async fn closed_conn(run: Rc<Run>, mut w: Stream, index: usize) {
    if !open_session(&run, &mut w).await {
        return;
    }
    let Some(r) = reader_of(&run, &w) else {
        return;
    };
    let sent_at: Rc<RefCell<VecDeque<Sent>>> = Rc::default();
    let permits = Rc::new(Cell::new(run.a.inflight.max(1)));
    let waker: Rc<RefCell<Option<std::task::Waker>>> = Rc::default();
    let reader = {
        let (run, sent_at, permits, waker) =
            (run.clone(), sent_at.clone(), permits.clone(), waker.clone());
        glommio::spawn_local(async move {
            read_frames(&run, r, |frame| {
                if is_heartbeat(frame) {
                    return true;
                }
                if let Some((intended, written)) = sent_at.borrow_mut().pop_front() {
                    let now = Instant::now();
                    let us =
                        |t: Instant| (now.saturating_duration_since(t).as_micros() as u64).max(1);
                    let _ = run.hist.borrow_mut().record(us(intended));
                    let _ = run.hist_sent.borrow_mut().record(us(written));
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
    let schedule = Schedule::new(&run, index);
    let mut seq = 0u32;
    // Requests given an intended time so far (paced: request j's is `schedule.at(j)`).
    let mut scheduled = 0u64;
    let mut out = BytesMut::new();
    while run.running() {
        if let Some(sch) = &schedule {
            if let Some(wait) = sch.at(scheduled).checked_duration_since(Instant::now()) {
                glommio::timer::sleep(wait).await;
            }
        }
        // A full window holds back what is due; their intended times stay as they were.
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
        let now = Instant::now();
        out.clear();
        let mut n = 0;
        {
            let mut q = sent_at.borrow_mut();
            while n < permits.get() {
                let intended = match &schedule {
                    Some(sch) => {
                        let t = sch.at(scheduled);
                        if t > now && n > 0 {
                            break;
                        }
                        t.min(now)
                    }
                    None => now,
                };
                seq = seq.wrapping_add(1);
                run.put_request(seq, &mut out);
                q.push_back((intended, now));
                let _ = run
                    .lag
                    .borrow_mut()
                    .record(now.saturating_duration_since(intended).as_micros() as u64);
                scheduled += 1;
                n += 1;
            }
        }
        permits.set(permits.get() - n);
        if w.write_all(&out).await.is_err() {
            break;
        }
        run.stats.sent.set(run.stats.sent.get() + n as u64);
    }
    drop(reader);
}

/// closed, paced: one connection's send times. Request j is due at `start + j × gap` (gap: the
/// connection's share of `--target-rate`; connections are phased evenly over one gap), rounded up
/// to the connection's next write slot (every `max(gap, --tick)`), so at high rates several
/// requests share one write and one intended time.
struct Schedule {
    start: Instant,
    gap: f64,
    slot: f64,
}

impl Schedule {
    fn new(run: &Run, index: usize) -> Option<Schedule> {
        let a = &run.a;
        if a.target_rate == 0 {
            return None;
        }
        let gap = a.conns.max(1) as f64 / a.target_rate as f64;
        let phase = gap * index as f64 / a.conns.max(1) as f64;
        Some(Schedule {
            start: run.start.get() + Duration::from_secs_f64(phase),
            gap,
            slot: gap.max(a.tick.as_secs_f64()),
        })
    }

    /// When request `j` (0-based) is meant to be written.
    fn at(&self, j: u64) -> Instant {
        let t = j as f64 * self.gap;
        let slotted = (t / self.slot).ceil() * self.slot;
        self.start + Duration::from_secs_f64(slotted)
    }
}

impl Run {
    fn new(a: Args) -> Run {
        let now = Instant::now();
        let hist =
            || RefCell::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"));
        Run {
            budget: Cell::new(a.requests),
            fanout: Fanout::default(),
            gaps: Gaps::default(),
            soak: soak::Soak::default(),
            slow: RefCell::default(),
            waiter: RefCell::default(),
            payload: json_payload(a.size),
            packet: PacketConfig {
                route_bytes: a.route_bytes,
                seq_bytes: a.seq_bytes,
                buffer_bytes: 1 << 20,
                ..PacketConfig::default()
            },
            a,
            stats: Stats::default(),
            hist: hist(),
            hist_sent: hist(),
            lag: hist(),
            start: Cell::new(now),
            last_reply: Cell::new(now),
            end: Cell::new(now + Duration::from_secs(3600)),
        }
    }
}

fn main() {
    let a = parse_args();
    if a.kcp {
        if a.mode != "idle" && a.mode != "flood" {
            eprintln!("--kcp: modes idle and flood only");
            std::process::exit(2);
        }
        std::process::exit(if kcp::run(&Run::new(a)) == 0 { 0 } else { 1 });
    }
    if a.mode == "pingpong" {
        let failures = pingpong(Run::new(a));
        std::process::exit(if failures == 0 { 0 } else { 1 });
    }
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("loadgen")
        // Deep rings: every reactor turn cancels glommio's preemption timer, and the kernel's
        // cancel looks through a hash table of the ring's pending polls (one per connection)
        // that has cq_entries/32 buckets, at most 256; the default depth (128) gives 8.
        .ring_depth(4096)
        .spawn(move || async move { report_and_run(Rc::new(Run::new(a))).await })
        .expect("start executor");
    let failures = handle.join().expect("executor");
    std::process::exit(if failures == 0 { 0 } else { 1 });
}

/// pingpong: one blocking connection, one request at a time (paced by sleeping until the next
/// send time when `--target-rate` is set), the round trip from the write to the whole reply.
fn pingpong(run: Run) -> usize {
    let a = &run.a;
    if a.ws.is_some() {
        eprintln!("pingpong: TCP only");
        return 1;
    }
    let mut s: std::net::TcpStream = match dial(a.addr, Ipv4Addr::LOCALHOST, None) {
        Ok(s) => s.into(),
        Err(e) => {
            eprintln!("pingpong: connect: {e}");
            Stats::bump_usize(&run.stats.connect_errors);
            return summary(&run);
        }
    };
    use std::io::{Read, Write};
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    run.stats.open.set(1);
    let start = Instant::now();
    run.start.set(start);
    run.end.set(start + a.duration);
    let gap = (a.target_rate > 0).then(|| Duration::from_secs_f64(1.0 / a.target_rate as f64));
    let mut fr = FrameReader::new(&run);
    let mut out = BytesMut::new();
    let mut seq = 0u32;
    'run: while run.running() {
        if let Some(gap) = gap {
            let intended = start + gap * seq;
            if let Some(wait) = intended.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let late = Instant::now().saturating_duration_since(intended);
            let _ = run.lag.borrow_mut().record(late.as_micros() as u64);
        }
        seq = seq.wrapping_add(1);
        out.clear();
        run.put_request(seq, &mut out);
        let t = Instant::now();
        if s.write_all(&out).is_err() {
            Stats::bump_usize(&run.stats.closed_by_gate);
            break;
        }
        Stats::bump(&run.stats.sent);
        let mut got = false;
        while !got {
            let n = match s.read(&mut fr.chunk) {
                Ok(0) | Err(_) => {
                    Stats::bump_usize(&run.stats.closed_by_gate);
                    break 'run;
                }
                Ok(n) => n,
            };
            fr.take(n, |frame| {
                got |= !is_heartbeat(frame);
                true
            });
        }
        let us = (t.elapsed().as_micros() as u64).max(1);
        let _ = run.hist.borrow_mut().record(us);
        Stats::bump(&run.stats.received);
    }
    run.end.set(Instant::now());
    summary(&run)
}

/// Opens the connections at the configured rate, starts each connection's traffic, prints a
/// progress line per second and the summary; returns the number of failures.
async fn report_and_run(run: Rc<Run>) -> usize {
    let a = &run.a;
    if a.mode == "soak" {
        return soak::run(run).await;
    }
    let ramp_start = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
    // slow: the readers first, then the connections that never read.
    let readers = if a.mode == "slow" { a.readers } else { 0 };
    let total = a.conns + readers;
    let mut streams = Vec::with_capacity(total);
    for i in 0..total {
        if let Some(wait) = (ramp_start + gap * i as u32).checked_duration_since(Instant::now()) {
            glommio::timer::sleep(wait).await;
        }
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % a.sources.max(1) as usize) as u8);
        let rcvbuf = (i >= readers && a.mode == "slow").then_some((a.rcvbuf, a.mss));
        match connect_with(a.addr, source, rcvbuf) {
            Ok(s) => {
                run.stats.open.set(run.stats.open.get() + 1);
                streams.push(s);
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
    // idle, closed and steady run for --duration once every connection is open.
    if matches!(a.mode.as_str(), "idle" | "closed" | "steady") {
        run.end.set(run.start.get() + a.duration);
    }
    // steady: every stride-th connection is active, so active ones spread over the ramp.
    let stride = (a.conns / a.active.max(1)).max(1);
    let mut tasks = Vec::new();
    for (i, s) in streams.into_iter().enumerate() {
        let task = match a.mode.as_str() {
            "idle" | "fanout" => glommio::spawn_local(idle_conn(run.clone(), s)),
            "slow" if i < readers => {
                glommio::spawn_local(slow_reader(run.clone(), s, true, Rc::default()))
            }
            "slow" => glommio::spawn_local(never_read(run.clone(), s)),
            "steady" => glommio::spawn_local(steady_conn(
                run.clone(),
                s,
                i,
                i % stride == 0 && i / stride < a.active,
            )),
            "flood" => glommio::spawn_local(flood_conn(run.clone(), s)),
            _ => glommio::spawn_local(closed_conn(run.clone(), s, i)),
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
                // steady: the longest reply gap that ended since the last line.
                let gap = if run.a.mode == "steady" {
                    format!(
                        " max_gap_ms={:.1}",
                        run.gaps.window_us.replace(0) as f64 / 1e3
                    )
                } else {
                    String::new()
                };
                eprintln!(
                    "t={:>4.0}s open={} sent={} received={} (+{}/s) heartbeats={} connect_errors={} closed_by_gate={}{gap}",
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
        let _ = glommio::timer::timeout(a.duration, async {
            run.until(|| run.stats.received.get() >= a.requests).await;
            Ok(())
        })
        .await;
        run.end.set(Instant::now());
        drop(tasks);
    } else if a.mode == "fanout" {
        run_fanout(&run).await;
        run.end.set(Instant::now());
        drop(tasks);
    } else if a.mode == "slow" {
        run_slow(&run).await;
        run.end.set(Instant::now());
        drop(tasks);
    } else if a.mode == "steady" {
        // Each connection ends by itself, at most DRAIN after the end.
        for t in tasks {
            t.await;
        }
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
        + s.incomplete_rounds.get()
        + s.faulty.get()
        + slow_faults(run)
        + usize::from(a.mode == "flood" && s.received.get() < a.requests);
    let mut json = serde_json::json!({
        "mode": a.mode, "conns": a.conns, "size": a.size, "inflight": a.inflight,
        "requests": a.requests, "sent": s.sent.get(), "received": s.received.get(),
        "seconds": elapsed, "tps": tps, "connect_errors": s.connect_errors.get(),
        "closed_by_gate": s.closed_by_gate.get(), "heartbeats": s.heartbeats.get(),
        "rtt_us": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "p999": pct(0.999),
                   "max": if h.is_empty() { 0 } else { h.max() }},
        "failures": failures,
    });
    let quantiles = |h: &Histogram<u64>| {
        let q = |q: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            }
        };
        serde_json::json!({"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
                           "max": if h.is_empty() { 0 } else { h.max() }})
    };
    if matches!(a.mode.as_str(), "closed" | "pingpong") {
        json["offered"] = a.target_rate.into();
        json["lag_us"] = quantiles(&run.lag.borrow());
        if a.mode == "closed" {
            json["rtt_from_write_us"] = quantiles(&run.hist_sent.borrow());
        }
    }
    let fanout = fanout_summary(run);
    if let Some(f) = &fanout {
        json["fanout"] = f.clone();
    }
    let steady = (a.mode == "steady").then(|| steady_summary(run));
    if let Some(st) = &steady {
        json["steady"] = st.clone();
    }
    let slow = (a.mode == "slow").then(|| slow_summary(run));
    if let Some(sl) = &slow {
        json["slow"] = sl.clone();
    }
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
        if let Some(lag) = json.get("lag_us") {
            println!("lag_us {lag}");
        }
        if let Some(w) = json.get("rtt_from_write_us") {
            println!("rtt_from_write_us {w}");
        }
        if let Some(f) = fanout {
            println!("fanout {f}");
        }
        if let Some(st) = steady {
            println!("steady {st}");
        }
        if let Some(sl) = slow {
            println!("slow {sl}");
        }
    }
    failures
}

/// steady figures: faults, and the gaps between two replies of one connection (ms).
fn steady_summary(run: &Run) -> serde_json::Value {
    let s = &run.stats;
    let g = &run.gaps;
    let per = g.per_client.borrow();
    let ms = |us: u64| us as f64 / 1e3;
    let q = |q: f64| {
        if per.is_empty() {
            0.0
        } else {
            ms(per.value_at_quantile(q))
        }
    };
    // Replies per 5 ms over the 300 ms up to the end of the longest gap.
    let before_max_gap = {
        let t = g.timeline.borrow();
        let end = (g.max_end_bucket.get() + 1).min(t.len());
        t[end.saturating_sub(60)..end].to_vec()
    };
    serde_json::json!({
        "active": per.len(), "interval_ms": run.a.interval.as_secs_f64() * 1e3,
        "replies": s.received.get(), "closed": s.closed_by_gate.get(), "faulty": s.faulty.get(),
        "missing": s.missing.get(), "disordered": s.disordered.get(),
        "max_gap_ms": ms(g.max_us.get()),
        "max_gap_end_unix_ms": g.max_end_unix_ms.get(),
        "replies_per_5ms_before_max_gap_end": before_max_gap,
        "client_max_gap_ms": {"p50": q(0.5), "p99": q(0.99), "max": q(1.0)},
        "max_rtt_ms": ms(run.hist.borrow().max()),
    })
}

/// fanout figures: per round, broadcast → last arrival; per arrival, broadcast → arrival (µs).
fn fanout_summary(run: &Run) -> Option<serde_json::Value> {
    let f = &run.fanout;
    let rounds = f.rounds.borrow();
    let arrivals = f.arrivals.borrow();
    let (rounds, arrivals) = (rounds.as_ref()?, arrivals.as_ref()?);
    let q = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    Some(serde_json::json!({
        "rounds": run.a.rounds,
        "complete_rounds": rounds.len(),
        "incomplete_rounds": run.stats.incomplete_rounds.get(),
        "connections": run.stats.open.get() + 1,
        "complete_us": {"p50": q(rounds, 0.5), "max": q(rounds, 1.0)},
        "arrival_us": {"p50": q(arrivals, 0.5), "p99": q(arrivals, 0.99), "max": q(arrivals, 1.0)},
    }))
}

/// slow: one reader's view of the numbered broadcasts (payload bytes 8..16, see echo-node).
#[derive(Default)]
struct Numbered {
    received: Cell<u64>,
    /// The last number seen (0 = none yet).
    last: Cell<u64>,
    /// Numbers skipped, and numbers not above the last one (duplicated or reordered).
    missing: Cell<u64>,
    disordered: Cell<u64>,
}

impl Numbered {
    fn arrived(&self, n: u64) {
        self.received.set(self.received.get() + 1);
        let last = self.last.get();
        if last != 0 && n <= last {
            self.disordered.set(self.disordered.get() + 1);
            return;
        }
        if last != 0 {
            self.missing.set(self.missing.get() + (n - last - 1));
        }
        self.last.set(n);
    }
}

/// slow: the number of a broadcast packet (None: not a numbered broadcast).
fn broadcast_number(run: &Run, frame: &[u8]) -> Option<u64> {
    let m = run.packet.unpack(frame).ok()?;
    if m.route != run.a.route {
        return None;
    }
    let n = m.payload.get(8..16)?;
    Some(u64::from_be_bytes(n.try_into().ok()?))
}

/// slow: a connection that never reads. It writes a heartbeat every `--heartbeat` (the gate must
/// not close it for silence); the gate closing it shows as a failed heartbeat write (its kernel
/// answers the first write after the close with a reset).
async fn never_read(run: Rc<Run>, mut s: Stream) {
    let s_ = &run.stats;
    s_.slow_open.set(s_.slow_open.get() + 1);
    let mut hb = BytesMut::new();
    run.put_wire(&run.packet.heartbeat(0), &mut hb);
    while run.running() {
        glommio::timer::sleep(run.a.heartbeat).await;
        if !run.running() {
            break;
        }
        if s.write_all(&hb).await.is_err() {
            s_.slow_closed.set(s_.slow_closed.get() + 1);
            return;
        }
    }
}

/// slow: a reading connection that checks every broadcast's number; heartbeats as in idle unless
/// another task writes to the connection (`beats` false: writes of two tasks could interleave).
async fn slow_reader(run: Rc<Run>, mut s: Stream, beats: bool, seen: Rc<Numbered>) {
    run.slow.borrow_mut().push(seen.clone());
    let mut hb = BytesMut::new();
    run.put_wire(&run.packet.heartbeat(0), &mut hb);
    let mut fr = FrameReader::new(&run);
    // Broadcasts arrive in bursts here: a larger read buffer than idle's.
    fr.chunk.resize(16 * 1024, 0);
    let mut next_heartbeat = Instant::now() + run.a.heartbeat;
    enum Event {
        Read(std::io::Result<usize>),
        Tick,
    }
    while run.running() {
        let wake = next_heartbeat.min(run.end.get());
        let read = async { Event::Read(s.read(&mut fr.chunk).await) };
        let tick = async {
            glommio::timer::sleep(wake.saturating_duration_since(Instant::now())).await;
            Event::Tick
        };
        match futures_lite::future::or(read, tick).await {
            Event::Read(Ok(0)) | Event::Read(Err(_)) => {
                run.count_closed_by_gate();
                return;
            }
            Event::Tick if !beats => next_heartbeat += run.a.heartbeat,
            Event::Read(Ok(n)) => {
                fr.take(n, |frame| {
                    if is_heartbeat(frame) {
                        Stats::bump(&run.stats.heartbeats);
                    } else if let Some(n) = broadcast_number(&run, frame) {
                        seen.arrived(n);
                        Stats::bump(&run.stats.received);
                        run.wake_waiter();
                    }
                    true
                });
                // A steady stream of broadcasts keeps the read ready, so the tick may never win
                // the race: heartbeats are due whatever woke us.
                if beats && Instant::now() >= next_heartbeat {
                    if s.write_all(&hb).await.is_err() {
                        run.count_closed_by_gate();
                        return;
                    }
                    next_heartbeat += run.a.heartbeat;
                }
            }
            Event::Tick => {
                if Instant::now() >= next_heartbeat && run.running() {
                    if s.write_all(&hb).await.is_err() {
                        run.count_closed_by_gate();
                        return;
                    }
                    next_heartbeat += run.a.heartbeat;
                }
            }
        }
    }
}

/// slow: broadcasts triggered and not yet received by the trigger's own connection, at most.
const SLOW_WINDOW: u64 = 512;

/// slow: how long readers may take to get the last broadcasts once triggering stopped, beyond
/// `--duration` (a gate broadcasting to 19,000 clients may lag the triggers).
const SLOW_DRAIN: Duration = Duration::from_secs(15);

/// slow: triggers `--target-rate` broadcasts per second for `--duration` over one more reading
/// connection (behind schedule it sends the triggers due in one write), then waits until every
/// reader got every broadcast (at most [`SLOW_DRAIN`] + `--duration`). Without a rate it just holds the
/// connections for `--duration`.
async fn run_slow(run: &Rc<Run>) {
    let a = &run.a;
    let until = Instant::now() + a.duration;
    if a.target_rate == 0 {
        glommio::timer::sleep(a.duration).await;
        return;
    }
    let mut w = match connect(a.addr, Ipv4Addr::LOCALHOST) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("slow: trigger connection: {e}");
            Stats::bump_usize(&run.stats.connect_errors);
            return;
        }
    };
    if !open_session(run, &mut w).await {
        return;
    }
    let Some(r) = reader_of(run, &w) else {
        return;
    };
    let mine = Rc::new(Numbered::default());
    let reader = glommio::spawn_local(slow_reader(run.clone(), r, false, mine.clone()));
    // This task alone writes to the trigger connection: its heartbeats while it waits.
    let mut hb = BytesMut::new();
    run.put_wire(&run.packet.heartbeat(0), &mut hb);
    let gap = Duration::from_secs_f64(1.0 / a.target_rate as f64);
    let start = Instant::now();
    let mut out = BytesMut::new();
    let mut sent = 0u64;
    while Instant::now() < until {
        let due = ((start.elapsed().as_secs_f64() / gap.as_secs_f64()) as u64 + 1).max(sent + 1);
        out.clear();
        while sent < due && out.len() < 64 * 1024 {
            sent += 1;
            let packet = run
                .packet
                .encode(a.route, run.seq_value(sent as u32), b"")
                .expect("trigger fits");
            run.put_wire(&packet, &mut out);
        }
        if w.write_all(&out).await.is_err() {
            eprintln!("slow: the trigger connection was closed");
            break;
        }
        run.stats.sent.set(sent);
        let next = start + gap.mul_f64(sent as f64);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            glommio::timer::sleep(wait).await;
        }
        // Never more than SLOW_WINDOW ahead of what this connection received: the rate is then
        // what the gate delivers, and no backlog builds up in the node. A heartbeat every
        // `--heartbeat` meanwhile: the gate may take long to broadcast to every client.
        while sent > mine.received.get() + SLOW_WINDOW && Instant::now() < until {
            let beat = a
                .heartbeat
                .min(until.saturating_duration_since(Instant::now()));
            let caught_up = glommio::timer::timeout(beat, async {
                run.until(|| sent <= mine.received.get() + SLOW_WINDOW)
                    .await;
                Ok(())
            })
            .await
            .is_ok();
            if !caught_up && w.write_all(&hb).await.is_err() {
                break;
            }
        }
    }
    let all = || {
        let r = run.slow.borrow();
        !r.is_empty() && r.iter().all(|n| n.received.get() >= sent)
    };
    let drain_end = Instant::now() + SLOW_DRAIN + a.duration;
    while !all() && Instant::now() < drain_end {
        let beat = a
            .heartbeat
            .min(drain_end.saturating_duration_since(Instant::now()));
        let caught_up = glommio::timer::timeout(beat, async {
            run.until(all).await;
            Ok(())
        })
        .await
        .is_ok();
        if !caught_up && w.write_all(&hb).await.is_err() {
            break;
        }
    }
    drop(reader);
}

/// slow: readers that did not get every triggered broadcast once, in order.
fn slow_faults(run: &Run) -> usize {
    if run.a.mode != "slow" || run.a.target_rate == 0 {
        return 0;
    }
    let sent = run.stats.sent.get();
    run.slow
        .borrow()
        .iter()
        .filter(|n| n.received.get() != sent || n.missing.get() + n.disordered.get() > 0)
        .count()
}

/// slow figures: non-readers closed by the gate; readers' broadcasts.
fn slow_summary(run: &Run) -> serde_json::Value {
    let s = &run.stats;
    let r = run.slow.borrow();
    let got: Vec<u64> = r.iter().map(|n| n.received.get()).collect();
    serde_json::json!({
        "non_readers": s.slow_open.get(), "non_readers_closed": s.slow_closed.get(),
        "readers": r.len(), "broadcasts": s.sent.get(),
        "readers_received": {"min": got.iter().min().copied().unwrap_or(0),
                             "max": got.iter().max().copied().unwrap_or(0)},
        "missing": r.iter().map(|n| n.missing.get()).sum::<u64>(),
        "disordered": r.iter().map(|n| n.disordered.get()).sum::<u64>(),
        "faulty_readers": slow_faults(run),
    })
}
