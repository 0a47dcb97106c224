//! soak: N connections held for `--duration` with churn, binds, echoes and broadcasts — what a
//! long run at full size needs to find leaks and unexpected closes.
//!
//! Each of the N slots keeps one connection open (one fd, one task, timers raced against the
//! read, as in steady mode) and reopens it when it ends:
//! - churn: each connection lives an exponentially distributed time of mean `100 / --churn`
//!   seconds (counted from the end of the ramp), so about `--churn` % of the connections close
//!   and reopen every second, at random moments, from their own source address;
//! - a heartbeat every `--heartbeat` seconds;
//! - an echo request (route `--route`, 1) every `--echo-every` seconds, numbered in its payload;
//!   every echo must come back, in order;
//! - every `--bind-every` seconds it binds a user ID of its own through the node (route 21, the
//!   echo node sends the link's `bind` and echoes the packet as the acknowledgement) or unbinds
//!   it again (route 22, `unbind`); each acknowledgement must come back;
//! - one more connection (not churned) triggers a broadcast (route 20) every
//!   `--broadcast-every` seconds; every connection counts the broadcasts it got, and a
//!   connection served from 1 s before a broadcast until 5 s after it must have got it.
//!   "Served" starts at the gate's first answer (each connection sends a heartbeat as soon as
//!   it is open): a client's connect can complete while the gate has not accepted it yet (a
//!   full accept queue holds the handshake's last ACK), so the client's own open time is not
//!   proof that the gate knew the connection when a broadcast passed.
//!
//! A connection the gate closes (EOF or an error while the client did not close it) is an
//! unexpected close; the slot reconnects. Before a client closes (churn or the end of the run)
//! it stops sending and waits up to [`DRAIN`] (10 s) for the replies still due; an echo skipped
//! (a later one came back first) is lost, one still due at the close is unanswered. A progress line per
//! second goes to stderr (`t=… open=… bound=… …`, scripts read it), the summary to stdout.

use std::cell::{Cell, RefCell};
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::{
    connect, counter_of, is_heartbeat, json_payload, open_session, unix_nanos, FrameReader, Run,
    Stats, Stream, COUNTER_AT, COUNTER_DIGITS,
};

/// The echo node's broadcast, bind and unbind routes.
const BROADCAST_ROUTE: i32 = 20;
const BIND_ROUTE: i32 = 21;
const UNBIND_ROUTE: i32 = 22;
/// Echo request payload size (the request number sits inside, see steady mode).
const ECHO_BYTES: usize = 64;
/// Before closing, how long a connection waits for the replies still due: long enough that a
/// reply delayed by a busy machine still comes back, so what stays due is lost, not late.
const DRAIN: Duration = Duration::from_secs(10);
/// A broadcast counts for a connection opened this long before it …
const OPEN_MARGIN_NS: u64 = 1_000_000_000;
/// … and closed this long after it.
const CLOSE_MARGIN_NS: u64 = 5_000_000_000;

/// soak figures, shared by every connection (one thread).
#[derive(Default)]
pub(crate) struct Soak {
    open_now: Cell<usize>,
    bound_now: Cell<usize>,
    /// Client closes by churn (each followed by a reconnect), and reconnects after any close.
    churned: Cell<u64>,
    reconnects: Cell<u64>,
    /// Connections the gate closed while the client had not closed them.
    unexpected: Cell<u64>,
    echo_sent: Cell<u64>,
    echo_received: Cell<u64>,
    /// Echoes skipped: a later one came back first (the path keeps each client's order, so
    /// the skipped one is lost).
    echo_lost: Cell<u64>,
    /// Echoes still due when the connection closed, [`DRAIN`] after it stopped sending.
    echo_unanswered: Cell<u64>,
    echo_disordered: Cell<u64>,
    binds: Cell<u64>,
    unbinds: Cell<u64>,
    acks: Cell<u64>,
    /// Bind and unbind acknowledgements still due at the close, [`DRAIN`] after the last send.
    acks_unanswered: Cell<u64>,
    next_uid: Cell<i64>,
    /// Broadcasts triggered, and the node's stamps of those the trigger connection got back.
    triggers: Cell<u64>,
    stamps: RefCell<Vec<u64>>,
    /// Over closed connections: broadcasts due (see the module note), got, and missed.
    arrivals_due: Cell<u64>,
    arrivals: Cell<u64>,
    missed: Cell<u64>,
}

/// xorshift64*: per-slot randomness, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

/// Runs the soak: the ramp, the slots, the trigger, progress lines; prints the summary and
/// returns the number of failures.
pub(crate) async fn run(run: Rc<Run>) -> usize {
    let a = &run.a;
    let ramp = Duration::from_secs_f64(a.conns as f64 / a.rate.max(1) as f64);
    let ramp_start = Instant::now();
    run.start.set(ramp_start + ramp);
    run.end.set(ramp_start + ramp + a.duration);
    let slots: Vec<_> = (0..a.conns)
        .map(|i| glommio::spawn_local(slot(run.clone(), i, ramp_start)))
        .collect();
    let trigger = glommio::spawn_local(trigger(run.clone()));
    let progress = glommio::spawn_local(progress(run.clone()));
    for s in slots {
        s.await;
    }
    // Every slot has drained; the trigger has nothing left to count.
    drop(trigger);
    drop(progress);
    summary(&run)
}

/// One slot: connects (after its place in the ramp) and reconnects until the run is over.
async fn slot(run: Rc<Run>, index: usize, ramp_start: Instant) {
    let a = &run.a;
    let at = ramp_start + Duration::from_secs_f64(index as f64 / a.rate.max(1) as f64);
    glommio::timer::sleep(at.saturating_duration_since(Instant::now())).await;
    let source = Ipv4Addr::new(127, 0, 0, 1 + (index % a.sources.max(1) as usize) as u8);
    let mut rng = Rng::new(index as u64 + 1);
    let mut first = true;
    while run.running() {
        let s = match connect(a.addr, source) {
            Ok(s) => s,
            Err(e) => {
                if run.stats.connect_errors.get() == 0 {
                    eprintln!("connect error: {e}");
                }
                Stats::bump_usize(&run.stats.connect_errors);
                glommio::timer::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if !first {
            bump(&run.soak.reconnects);
        }
        first = false;
        if !conn(&run, s, &mut rng).await {
            // The upgrade was refused (counted): do not spin.
            glommio::timer::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// One connection's life; false if the WS upgrade was refused.
async fn conn(run: &Run, mut s: Stream, rng: &mut Rng) -> bool {
    if !open_session(run, &mut s).await {
        return false;
    }
    let (a, soak) = (&run.a, &run.soak);
    soak.open_now.set(soak.open_now.get() + 1);
    // Set at the gate's first answer: from then on the gate holds this connection's session.
    let mut served_ns: Option<u64> = None;
    let now = Instant::now();
    let close_at = if a.churn > 0.0 {
        let mean = 100.0 / a.churn;
        // Capped so that the Instant cannot overflow; past the end of the run anyway.
        let life = (-(1.0 - rng.unit()).ln() * mean).min(1e7);
        now.max(run.start.get()) + Duration::from_secs_f64(life)
    } else {
        run.end.get()
    }
    .min(run.end.get());
    // The first heartbeat at once (its answer starts the broadcast window), then staggered:
    // heartbeats, echoes and binds spread over their periods.
    let mut next_heartbeat = now;
    let mut heartbeat_gap = a.heartbeat.mul_f64(rng.unit());
    let mut next_echo = now + a.echo_every.mul_f64(rng.unit());
    let mut next_bind = now + a.bind_every.mul_f64(rng.unit());
    let uid = soak.next_uid.get() + 1;
    soak.next_uid.set(uid);
    let uid_payload = uid.to_string();
    let mut hb = BytesMut::new();
    run.put_wire(&run.packet.heartbeat(0), &mut hb);
    let mut payload = json_payload(ECHO_BYTES);
    let mut fr = FrameReader::new(run);
    let mut out = BytesMut::new();
    // Echoes: numbered 1..=sent, the next one expected back, and how many are due.
    let (mut sent, mut expect, mut due) = (0u64, 1u64, 0u64);
    // Bind state: acknowledged bound, acknowledgements due.
    let (mut bound, mut acks_due) = (false, 0u64);
    // Broadcasts got with a stamp after opened + OPEN_MARGIN, and the last few stamps.
    let (mut got, mut tail) = (0u64, [0u64; 4]);
    let mut drain_until: Option<Instant> = None;
    let mut by_gate = false;
    enum Event {
        Read(std::io::Result<usize>),
        Tick,
    }
    loop {
        let now = Instant::now();
        if drain_until.is_none() && (now >= close_at || !run.running()) {
            drain_until = Some(now + DRAIN);
        }
        let wake = match drain_until {
            Some(d) if (due == 0 && acks_due == 0) || now >= d => break,
            Some(d) => d,
            None => next_heartbeat.min(next_echo).min(next_bind).min(close_at),
        };
        let read = async { Event::Read(s.read(&mut fr.chunk).await) };
        let tick = async {
            glommio::timer::sleep(wake.saturating_duration_since(Instant::now())).await;
            Event::Tick
        };
        match futures_lite::future::or(read, tick).await {
            Event::Read(Ok(0)) | Event::Read(Err(_)) => {
                by_gate = true;
                break;
            }
            Event::Read(Ok(n)) => {
                let served = *served_ns.get_or_insert_with(unix_nanos);
                fr.take(n, |frame| {
                    if is_heartbeat(frame) {
                        Stats::bump(&run.stats.heartbeats);
                        return true;
                    }
                    let Ok(m) = run.packet.unpack(frame) else {
                        bump(&soak.echo_disordered);
                        return true;
                    };
                    match m.route {
                        BROADCAST_ROUTE => {
                            let stamp = m
                                .payload
                                .get(..8)
                                .map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8")));
                            if stamp >= served + OPEN_MARGIN_NS {
                                got += 1;
                                tail.rotate_left(1);
                                tail[3] = stamp;
                            }
                        }
                        BIND_ROUTE | UNBIND_ROUTE => {
                            bump(&soak.acks);
                            acks_due = acks_due.saturating_sub(1);
                            let now_bound = m.route == BIND_ROUTE;
                            if now_bound != bound {
                                bound = now_bound;
                                let b = soak.bound_now.get();
                                soak.bound_now.set(if bound { b + 1 } else { b - 1 });
                            }
                        }
                        r if r == a.route => match counter_of(m.payload) {
                            Some(n) if n >= expect => {
                                bump(&soak.echo_received);
                                soak.echo_lost.set(soak.echo_lost.get() + (n - expect));
                                due = due.saturating_sub(n - expect + 1);
                                expect = n + 1;
                            }
                            _ => bump(&soak.echo_disordered),
                        },
                        _ => bump(&soak.echo_disordered),
                    }
                    true
                });
            }
            Event::Tick => {
                let now = Instant::now();
                if drain_until.is_some() {
                    continue;
                }
                out.clear();
                if now >= next_heartbeat {
                    out.extend_from_slice(&hb);
                    // After the first one (sent at open) the next lands at the staggered phase.
                    next_heartbeat = (next_heartbeat + heartbeat_gap).max(now);
                    heartbeat_gap = a.heartbeat;
                }
                if now >= next_echo {
                    sent += 1;
                    due += 1;
                    let digits = format!("{:0w$}", sent, w = COUNTER_DIGITS);
                    payload[COUNTER_AT..COUNTER_AT + COUNTER_DIGITS]
                        .copy_from_slice(digits.as_bytes());
                    let p = run
                        .packet
                        .encode(a.route, run.seq_value(sent as u32), &payload)
                        .expect("echo fits the packet settings");
                    run.put_wire(&p, &mut out);
                    bump(&soak.echo_sent);
                    next_echo = (next_echo + a.echo_every).max(now);
                }
                if now >= next_bind {
                    // One bind or unbind at a time; a late acknowledgement delays the next.
                    if acks_due == 0 {
                        let route = if bound { UNBIND_ROUTE } else { BIND_ROUTE };
                        bump(if bound { &soak.unbinds } else { &soak.binds });
                        let p = run
                            .packet
                            .encode(route, 0, uid_payload.as_bytes())
                            .expect("bind fits the packet settings");
                        run.put_wire(&p, &mut out);
                        acks_due += 1;
                    }
                    next_bind = (next_bind + a.bind_every).max(now);
                }
                if !out.is_empty() && s.write_all(&out).await.is_err() {
                    by_gate = true;
                    break;
                }
            }
        }
    }
    // Accounting: what is still due is unanswered; broadcasts due in the window
    // [served + 1 s, closed - 5 s] against those got in it.
    soak.echo_unanswered.set(soak.echo_unanswered.get() + due);
    soak.acks_unanswered
        .set(soak.acks_unanswered.get() + acks_due);
    let closed_ns = unix_nanos();
    if let (Some(last), Some(served)) = (closed_ns.checked_sub(CLOSE_MARGIN_NS), served_ns) {
        let first = served + OPEN_MARGIN_NS;
        if first <= last {
            let expected = soak
                .stamps
                .borrow()
                .iter()
                .filter(|&&t| t >= first && t <= last)
                .count() as u64;
            let late = tail.iter().filter(|&&t| t > last).count() as u64;
            let got = got.saturating_sub(late).min(expected);
            soak.arrivals_due.set(soak.arrivals_due.get() + expected);
            soak.arrivals.set(soak.arrivals.get() + got);
            soak.missed.set(soak.missed.get() + (expected - got));
        }
    }
    if bound {
        // The gate unbinds a connection's user when it closes.
        soak.bound_now.set(soak.bound_now.get() - 1);
    }
    soak.open_now.set(soak.open_now.get() - 1);
    if by_gate {
        bump(&soak.unexpected);
    } else if run.running() {
        bump(&soak.churned);
    }
    true
}

/// The extra connection that triggers the broadcasts and records their stamps; reconnects if
/// the gate closes it (counted as unexpected). Dropped once every slot is done.
async fn trigger(run: Rc<Run>) {
    let (a, soak) = (&run.a, &run.soak);
    glommio::timer::sleep(run.start.get().saturating_duration_since(Instant::now())).await;
    let mut hb = BytesMut::new();
    run.put_wire(&run.packet.heartbeat(0), &mut hb);
    let mut round = 0u32;
    loop {
        let mut s = match connect(a.addr, Ipv4Addr::LOCALHOST) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("soak: trigger connection: {e}");
                Stats::bump_usize(&run.stats.connect_errors);
                glommio::timer::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if !open_session(&run, &mut s).await {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let mut fr = FrameReader::new(&run);
        let now = Instant::now();
        let (mut next_heartbeat, mut next_trigger) = (now + a.heartbeat, now + a.broadcast_every);
        enum Event {
            Read(std::io::Result<usize>),
            Tick,
        }
        loop {
            let wake = if run.running() {
                next_heartbeat.min(next_trigger)
            } else {
                next_heartbeat
            };
            let read = async { Event::Read(s.read(&mut fr.chunk).await) };
            let tick = async {
                glommio::timer::sleep(wake.saturating_duration_since(Instant::now())).await;
                Event::Tick
            };
            match futures_lite::future::or(read, tick).await {
                Event::Read(Ok(0)) | Event::Read(Err(_)) => break,
                Event::Read(Ok(n)) => {
                    fr.take(n, |frame| {
                        if let Ok(m) = run.packet.unpack(frame) {
                            if !is_heartbeat(frame) && m.route == BROADCAST_ROUTE {
                                if let Some(b) = m.payload.get(..8) {
                                    let t = u64::from_be_bytes(b.try_into().expect("8"));
                                    soak.stamps.borrow_mut().push(t);
                                }
                            }
                        }
                        true
                    });
                }
                Event::Tick => {
                    let now = Instant::now();
                    let mut out = BytesMut::new();
                    if now >= next_heartbeat {
                        out.extend_from_slice(&hb);
                        next_heartbeat = (next_heartbeat + a.heartbeat).max(now);
                    }
                    if run.running() && now >= next_trigger {
                        round += 1;
                        let p = run
                            .packet
                            .encode(BROADCAST_ROUTE, run.seq_value(round), b"")
                            .expect("trigger fits");
                        run.put_wire(&p, &mut out);
                        bump(&soak.triggers);
                        next_trigger = (next_trigger + a.broadcast_every).max(now);
                    }
                    if !out.is_empty() && s.write_all(&out).await.is_err() {
                        break;
                    }
                }
            }
        }
        bump(&soak.unexpected);
        eprintln!("soak: the gate closed the trigger connection; reconnecting");
    }
}

/// One line per second on stderr.
async fn progress(run: Rc<Run>) {
    let soak = &run.soak;
    let t0 = Instant::now();
    loop {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        eprintln!(
            "t={:.0}s phase={} open={} bound={} churned={} reconnects={} unexpected={} echo_sent={} echo_received={} echo_lost={} echo_unanswered={} acks={} acks_unanswered={} broadcasts={} connect_errors={}",
            t0.elapsed().as_secs_f64(),
            if Instant::now() < run.start.get() {
                "ramp"
            } else if run.running() {
                "run"
            } else {
                "drain"
            },
            soak.open_now.get(),
            soak.bound_now.get(),
            soak.churned.get(),
            soak.reconnects.get(),
            soak.unexpected.get(),
            soak.echo_sent.get(),
            soak.echo_received.get(),
            soak.echo_lost.get(),
            soak.echo_unanswered.get(),
            soak.acks.get(),
            soak.acks_unanswered.get(),
            soak.stamps.borrow().len(),
            run.stats.connect_errors.get(),
        );
    }
}

fn summary(run: &Run) -> usize {
    let (a, s) = (&run.a, &run.soak);
    let stamps = s.stamps.borrow().len() as u64;
    let lost = s.triggers.get().saturating_sub(stamps);
    let failures = run.stats.connect_errors.get() as u64
        + s.unexpected.get()
        + s.echo_lost.get()
        + s.echo_unanswered.get()
        + s.echo_disordered.get()
        + s.acks_unanswered.get()
        + s.missed.get()
        + lost;
    let json = serde_json::json!({
        "mode": "soak", "conns": a.conns, "seconds": a.duration.as_secs_f64(),
        "churn_pct_per_s": a.churn,
        "churned": s.churned.get(), "reconnects": s.reconnects.get(),
        "connect_errors": run.stats.connect_errors.get(),
        "unexpected_closes": s.unexpected.get(),
        "heartbeats": run.stats.heartbeats.get(),
        "echo": {"sent": s.echo_sent.get(), "received": s.echo_received.get(),
                 "lost": s.echo_lost.get(), "unanswered": s.echo_unanswered.get(),
                 "disordered": s.echo_disordered.get()},
        "binds": {"binds": s.binds.get(), "unbinds": s.unbinds.get(), "acks": s.acks.get(),
                  "unanswered": s.acks_unanswered.get()},
        "broadcasts": {"triggered": s.triggers.get(), "seen_by_trigger": stamps,
                       "lost": lost, "due": s.arrivals_due.get(), "got": s.arrivals.get(),
                       "missed": s.missed.get()},
        "failures": failures,
    });
    if a.json {
        println!("{json}");
    } else {
        println!("soak {json}");
    }
    failures as usize
}
