//! Unit tests of the connection machine over an in-memory stream and a virtual clock: no socket,
//! no executor, no sleeping. `Pipe` plays the driver's part with a write size of our choosing.

use bytes::Bytes;
use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::framing::{Framing, FramingRecord, TcpFraming, WsFraming, WsOptions};
use super::machine::{CloseStatus, Connection, Ending, MachineRules};
use super::record::{ConnRecord, RecordError};
use super::{CloseReason, Host, ServerCtx, WRITE_BATCH};
use crate::dispatch::Delivery;
use crate::liveness::LivenessRules;
use crate::packet::PacketConfig;
use crate::session::{Conn, ConnState, SessionError, Transport};

const I: Duration = Duration::from_secs(10);
const EPS: Duration = Duration::from_millis(1);
const QUEUE: usize = 8;
const CAP: u32 = 1024;

/// Records what the machine hands to its shard.
struct TestHost {
    packet: PacketConfig,
    delivered: RefCell<Vec<Delivery>>,
}

impl TestHost {
    fn new() -> Self {
        TestHost {
            packet: PacketConfig::default(),
            delivered: RefCell::default(),
        }
    }

    fn frames(&self) -> Vec<Bytes> {
        self.delivered
            .borrow()
            .iter()
            .map(|d| d.frame.clone())
            .collect()
    }
}

impl Host for TestHost {
    fn packet(&self) -> &PacketConfig {
        &self.packet
    }
    fn heartbeat(&self) -> Bytes {
        self.packet.heartbeat(0)
    }
    fn deliver(&self, d: Delivery) {
        self.delivered.borrow_mut().push(d);
    }
    fn admit(&self, _: &ServerCtx, _: IpAddr) -> Option<Rc<Conn>> {
        None
    }
    fn release(&self, _: &ServerCtx, _: &Conn) {}
    fn spawn(&self, _: impl std::future::Future<Output = ()> + 'static) {
        unreachable!("the machine spawns nothing")
    }
}

fn rules(interval: Duration, tick: bool, authorize: Duration) -> MachineRules {
    MachineRules {
        liveness: LivenessRules {
            interval,
            tick_mode: tick,
            authorize,
        },
        reply_heartbeats: !tick,
        packet_rate: None,
        rate_action: Default::default(),
    }
}

fn conn(transport: Transport) -> Rc<Conn> {
    Rc::new(Conn::new(
        1,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        transport,
        QUEUE,
    ))
}

fn data(route: i32, seq: i32, payload: &[u8]) -> Bytes {
    let unlimited = PacketConfig {
        buffer_bytes: u32::MAX,
        ..PacketConfig::default()
    };
    unlimited.encode(route, seq, payload).unwrap()
}

/// The driver's part, in memory: feeds input, writes `write_size` bytes per write, moves a
/// virtual clock.
struct Pipe<F> {
    m: Connection<F>,
    host: TestHost,
    now: Instant,
    wire: Vec<u8>,
    write_size: usize,
    ended: Option<Result<Ending, CloseReason>>,
}

impl<F: Framing> Pipe<F> {
    fn new(m: Connection<F>, now: Instant) -> Self {
        Pipe {
            m,
            host: TestHost::new(),
            now,
            wire: Vec::new(),
            write_size: usize::MAX,
            ended: None,
        }
    }

    /// One round of the driver: timers, writes, close check. Bounded.
    fn step(&mut self) {
        if self.ended.is_some() {
            return;
        }
        for _ in 0..1000 {
            if let Err(r) = self.m.handle_timeout(self.now) {
                if let Some(bye) = self.m.farewell() {
                    self.wire.extend_from_slice(&bye);
                }
                self.ended = Some(Err(r));
                return;
            }
            while let Some(buf) = self.m.poll_transmit(&self.host) {
                let n = buf.len().min(self.write_size);
                self.wire.extend_from_slice(&buf[..n]);
                self.m.transmitted(n);
            }
            match self.m.poll_close() {
                CloseStatus::Open => return,
                CloseStatus::Goodbye => continue,
                CloseStatus::Done(end) => {
                    self.ended = Some(Ok(end));
                    return;
                }
            }
        }
        panic!("the machine did not settle");
    }

    fn input(&mut self, bytes: &[u8]) -> Result<(), CloseReason> {
        let mut copy = bytes.to_vec();
        let r = self.m.handle_input(&mut copy, self.now, &self.host);
        if let Err(e) = &r {
            self.ended = Some(Err(e.clone()));
        } else {
            self.step();
        }
        r
    }

    /// Moves the clock to `t` past the start, waking at every deadline on the way.
    fn run_until(&mut self, start: Instant, t: Duration) {
        for _ in 0..10_000 {
            match self.m.poll_timeout() {
                Some(d) if d <= start + t && self.ended.is_none() => {
                    self.now = self.now.max(d);
                    self.step();
                }
                _ => break,
            }
        }
        self.now = self.now.max(start + t);
        self.step();
    }

    fn take_wire(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.wire)
    }
}

fn tcp_pipe(r: MachineRules) -> (Pipe<TcpFraming>, Instant) {
    let t0 = Instant::now();
    let m = Connection::new(
        conn(Transport::Tcp),
        TcpFraming::new(PacketConfig::default(), CAP),
        r,
        t0,
    );
    (Pipe::new(m, t0), t0)
}

fn ws_options() -> WsOptions {
    WsOptions {
        close_frame: true,
        le_ts_heartbeat: false,
    }
}

fn ws_pipe(r: MachineRules) -> (Pipe<WsFraming>, Instant) {
    let t0 = Instant::now();
    let m = Connection::new(
        conn(Transport::Ws),
        WsFraming::new(PacketConfig::default(), CAP, ws_options()),
        r,
        t0,
    );
    (Pipe::new(m, t0), t0)
}

/// A masked client frame.
fn ws_client(b0: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![b0];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&MASK);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    f
}

/// An unmasked server binary frame, as the gate writes it.
fn ws_server_binary(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    super::ws_frame::encode_binary(payload, &mut f);
    f
}

const NO_TIMERS: Duration = Duration::ZERO;

#[test]
fn tcp_frames_split_anywhere_are_delivered_whole_and_in_order() {
    let packets = [data(1, 1, b"one"), data(2, 2, b""), data(3, 3, &[7; 300])];
    let stream: Vec<u8> = packets.iter().flat_map(|p| p.to_vec()).collect();
    for cut in 0..stream.len() {
        let (mut p, _) = tcp_pipe(rules(NO_TIMERS, false, NO_TIMERS));
        p.input(&stream[..cut]).unwrap();
        p.input(&stream[cut..]).unwrap();
        assert_eq!(p.host.frames(), packets.to_vec(), "cut at {cut}");
        let routes: Vec<i32> = p.host.delivered.borrow().iter().map(|d| d.route).collect();
        assert_eq!(routes, [1, 2, 3]);
    }
    // Byte by byte.
    let (mut p, _) = tcp_pipe(rules(NO_TIMERS, false, NO_TIMERS));
    for b in &stream {
        p.input(&[*b]).unwrap();
    }
    assert_eq!(p.host.frames(), packets.to_vec());
}

#[test]
fn tcp_frame_over_the_cap_closes_without_a_byte_written() {
    let (mut p, _) = tcp_pipe(rules(I, false, NO_TIMERS));
    p.m.conn().push(data(1, 1, b"queued")).unwrap();
    let mut claim = (CAP + 1).to_be_bytes().to_vec();
    claim.push(0);
    let r = p.m.handle_input(&mut claim, p.now, &p.host);
    assert!(matches!(r, Err(CloseReason::Protocol(_))), "{r:?}");
    assert!(p.host.frames().is_empty());
}

#[test]
fn resp_mode_answers_each_client_heartbeat_before_queued_packets() {
    let (mut p, _) = tcp_pipe(rules(I, false, NO_TIMERS));
    let hb = PacketConfig::default().heartbeat(0);
    // Queued while the client's heartbeats arrive in the same read.
    p.m.conn().push(data(5, 0, b"push")).unwrap();
    let mut two = hb.to_vec();
    two.extend_from_slice(&hb);
    let mut input = two.clone();
    p.m.handle_input(&mut input, p.now, &p.host).unwrap();
    p.step();
    let mut want = two;
    want.extend_from_slice(&data(5, 0, b"push"));
    assert_eq!(p.take_wire(), want);
    assert!(p.host.frames().is_empty(), "heartbeats are never forwarded");
}

#[test]
fn tick_mode_sends_a_heartbeat_every_interval_and_never_answers() {
    let (mut p, t0) = tcp_pipe(rules(I, true, NO_TIMERS));
    let hb = PacketConfig::default().heartbeat(0);
    p.input(&hb).unwrap();
    assert!(p.take_wire().is_empty());
    for k in 1..=3u32 {
        // The client keeps talking, so it is never timed out.
        p.run_until(t0, I * k - EPS);
        p.input(&hb).unwrap();
        assert_eq!(p.wire.len(), (k as usize - 1) * hb.len());
        p.run_until(t0, I * k);
        assert_eq!(p.wire.len(), k as usize * hb.len(), "tick {k}");
    }
    assert!(p.ended.is_none());
}

#[test]
fn silent_client_is_closed_at_the_first_tick_after_two_silent_intervals() {
    // due's rule, checked at each tick: close when the last frame is older than two intervals.
    // With wake-ups exactly on the ticks, the tick at 2I sees exactly two intervals (kept).
    let (mut p, t0) = tcp_pipe(rules(I, false, NO_TIMERS));
    p.run_until(t0, I * 3 - EPS);
    assert!(p.ended.is_none());
    p.run_until(t0, I * 3);
    assert_eq!(p.ended, Some(Err(CloseReason::HeartbeatTimeout)));
    // A real timer fires late: the tick handled just after 2I closes.
    let (mut p, t0) = tcp_pipe(rules(I, false, NO_TIMERS));
    p.run_until(t0, I);
    p.now = t0 + I * 2 + EPS;
    p.step();
    assert_eq!(p.ended, Some(Err(CloseReason::HeartbeatTimeout)));
}

#[test]
fn unbound_connection_is_closed_at_the_authorize_deadline_and_binding_cancels_it() {
    let auth = Duration::from_secs(3);
    let (mut p, t0) = tcp_pipe(rules(I, false, auth));
    p.run_until(t0, auth - EPS);
    assert!(p.ended.is_none());
    p.run_until(t0, auth);
    assert_eq!(p.ended, Some(Err(CloseReason::AuthorizeTimeout)));

    let (mut p, t0) = tcp_pipe(rules(I, false, auth));
    p.run_until(t0, Duration::from_secs(1));
    p.m.conn().set_uid(42);
    p.step();
    let hb = PacketConfig::default().heartbeat(0);
    for k in 1..=5 {
        p.run_until(t0, Duration::from_secs(k * 2));
        p.input(&hb).unwrap();
    }
    assert!(p.ended.is_none(), "{:?}", p.ended);
    // Unbinding starts the full timeout again.
    let unbound_at = p.now;
    p.m.conn().set_uid(0);
    p.step();
    p.run_until(unbound_at, auth - EPS);
    assert!(p.ended.is_none());
    p.run_until(unbound_at, auth);
    assert_eq!(p.ended, Some(Err(CloseReason::AuthorizeTimeout)));
}

#[test]
fn a_client_that_stops_reading_is_closed_when_its_queue_is_full() {
    let (mut p, _) = tcp_pipe(rules(NO_TIMERS, false, NO_TIMERS));
    let conn = p.m.conn().clone();
    for i in 0..QUEUE {
        conn.push(data(1, i as i32, b"x")).unwrap();
    }
    assert_eq!(
        conn.push(data(1, 99, b"x")),
        Err(SessionError::QueueFull),
        "the push over writeQueueSize fails"
    );
    p.step();
    assert_eq!(p.ended, Some(Err(CloseReason::Forced)));
    assert!(p.wire.is_empty(), "a forced close writes nothing");
}

#[test]
fn queued_packets_are_coalesced_into_batches_and_partial_writes_keep_the_stream() {
    let (mut p, _) = tcp_pipe(rules(NO_TIMERS, false, NO_TIMERS));
    let small: Vec<Bytes> = (0..5).map(|i| data(1, i, b"abc")).collect();
    for s in &small {
        p.m.conn().push(s.clone()).unwrap();
    }
    // All five in one batch.
    let batch = p.m.poll_transmit(&p.host).unwrap().to_vec();
    assert_eq!(batch, small.concat());
    assert!(p.m.transmitted(batch.len()));
    assert!(p.m.poll_transmit(&p.host).is_none());

    // A packet larger than a batch goes alone; then the rest; three bytes per write.
    let big = data(2, 0, &vec![1; WRITE_BATCH]);
    p.m.conn().push(big.clone()).unwrap();
    p.m.conn().push(small[0].clone()).unwrap();
    assert_eq!(p.m.poll_transmit(&p.host).unwrap().len(), big.len());
    p.write_size = 3;
    p.step();
    let mut want = big.to_vec();
    want.extend_from_slice(&small[0]);
    assert_eq!(p.take_wire(), want);
}

#[test]
fn graceful_close_flushes_what_was_queued_then_shuts_the_socket_down() {
    let (mut p, _) = tcp_pipe(rules(I, false, NO_TIMERS));
    let conn = p.m.conn().clone();
    conn.push(data(1, 1, b"first")).unwrap();
    conn.push(data(1, 2, b"second")).unwrap();
    conn.close_graceful(None);
    assert_eq!(conn.state(), ConnState::Hanged);
    assert_eq!(conn.push(data(1, 3, b"late")), Err(SessionError::Hanged));
    // Input after the close began is not handled.
    p.m.handle_input(&mut data(9, 9, b"ignored").to_vec(), p.now, &p.host)
        .unwrap();
    p.write_size = 4;
    p.step();
    assert_eq!(
        p.take_wire(),
        [data(1, 1, b"first"), data(1, 2, b"second")].concat()
    );
    assert_eq!(
        p.ended,
        Some(Ok(Ending {
            reason: CloseReason::Graceful,
            shutdown: true
        }))
    );
    assert!(p.host.frames().is_empty());
}

#[test]
fn ws_binary_messages_are_delivered_across_reads_and_fragments() {
    let (mut p, _) = ws_pipe(rules(I, false, NO_TIMERS));
    let a = data(1, 1, b"whole");
    let b = data(2, 2, b"in two fragments");
    let mut stream = ws_client(0x82, &a);
    stream.extend(ws_client(0x02, &b[..7]));
    stream.extend(ws_client(0x80, &b[7..]));
    let cut = stream.len() / 2 + 3;
    p.input(&stream[..cut]).unwrap();
    p.input(&stream[cut..]).unwrap();
    assert_eq!(p.host.frames(), vec![a, b]);
}

#[test]
fn ws_ping_is_answered_ahead_of_queued_packets_and_heartbeats_are_binary_frames() {
    let (mut p, _) = ws_pipe(rules(I, false, NO_TIMERS));
    let pushed = data(3, 0, b"push");
    p.m.conn().push(pushed.clone()).unwrap();
    let hb = PacketConfig::default().heartbeat(0);
    let mut input = ws_client(0x89, b"ping!");
    input.extend(ws_client(0x82, &hb));
    p.input(&input).unwrap();
    let mut want = vec![0x8a, 5];
    want.extend_from_slice(b"ping!");
    want.extend(ws_server_binary(&hb));
    want.extend(ws_server_binary(&pushed));
    assert_eq!(p.take_wire(), want);
}

#[test]
fn ws_client_close_is_echoed_with_its_code_and_ends_the_connection() {
    let (mut p, _) = ws_pipe(rules(I, false, NO_TIMERS));
    p.m.conn().push(data(3, 0, b"dropped")).unwrap();
    let mut input = ws_client(0x88, &1001u16.to_be_bytes());
    input.extend(ws_client(0x82, &data(1, 1, b"after close")));
    p.input(&input).unwrap();
    assert_eq!(p.take_wire(), vec![0x88, 2, 0x03, 0xe9]);
    assert_eq!(
        p.ended,
        Some(Ok(Ending {
            reason: CloseReason::PeerClosed,
            shutdown: false
        }))
    );
    assert!(p.host.frames().is_empty(), "nothing after a Close is read");
    assert!(!p.m.wants_read());
}

#[test]
fn ws_protocol_error_is_answered_with_close_1002_and_its_text() {
    let (mut p, _) = ws_pipe(rules(I, false, NO_TIMERS));
    // Unmasked client frame.
    p.input(&[0x82, 0x01, 0x00]).unwrap();
    let mut want = vec![0x88, 2 + 8, 0x03, 0xea];
    want.extend_from_slice(b"bad MASK");
    assert_eq!(p.take_wire(), want);
    assert!(matches!(
        p.ended,
        Some(Ok(Ending {
            reason: CloseReason::Protocol(_),
            shutdown: false
        }))
    ));
}

#[test]
fn ws_graceful_close_sends_close_1000_after_the_queue_when_configured() {
    let (mut p, _) = ws_pipe(rules(I, false, NO_TIMERS));
    let pushed = data(3, 0, b"last words");
    p.m.conn().push(pushed.clone()).unwrap();
    p.m.conn().close_graceful(None);
    p.step();
    let mut want = ws_server_binary(&pushed);
    want.extend_from_slice(&[0x88, 2, 0x03, 0xe8]);
    assert_eq!(p.take_wire(), want);
    assert_eq!(
        p.ended,
        Some(Ok(Ending {
            reason: CloseReason::Graceful,
            shutdown: true
        }))
    );
}

#[test]
fn ws_forced_close_tries_close_1000_once_and_tcp_sends_nothing() {
    let (mut p, _) = ws_pipe(rules(I, false, NO_TIMERS));
    p.m.conn().close_forced();
    p.step();
    assert_eq!(p.take_wire(), vec![0x88, 2, 0x03, 0xe8]);
    assert_eq!(p.ended, Some(Err(CloseReason::Forced)));

    let (mut p, _) = tcp_pipe(rules(I, false, NO_TIMERS));
    p.m.conn().close_forced();
    p.step();
    assert!(p.wire.is_empty());
    assert_eq!(p.ended, Some(Err(CloseReason::Forced)));
}

/// One step of a test script.
type Step<'a, F> = &'a dyn Fn(&mut Pipe<F>, Instant);

/// Runs `script` on a fresh pipe; at step `cut` the machine is exported to JSON and rebuilt,
/// and the script goes on with the rebuilt one. Returns the wire bytes and deliveries.
fn run_with_handoff<F: Framing>(
    make: &dyn Fn() -> (Pipe<F>, Instant),
    rebuild: &dyn Fn(ConnRecord, Instant) -> Connection<F>,
    script: &[Step<'_, F>],
    cut: Option<usize>,
) -> (Vec<u8>, Vec<Bytes>, Option<Result<Ending, CloseReason>>) {
    let (mut p, t0) = make();
    for (i, step) in script.iter().enumerate() {
        if cut == Some(i) {
            let json = serde_json::to_string(&p.m.export(p.now)).unwrap();
            let record: ConnRecord = serde_json::from_str(&json).unwrap();
            p.m = rebuild(record, p.now);
        }
        step(&mut p, t0);
    }
    let frames = p.host.frames();
    (p.wire, frames, p.ended)
}

#[test]
fn tcp_connection_carries_on_byte_for_byte_after_export_and_import() {
    let stream: Vec<u8> = [data(1, 1, b"alpha"), data(2, 2, &[9; 200])].concat();
    let (head, tail) = stream.split_at(11);
    let make = || tcp_pipe(rules(I, true, Duration::from_secs(30)));
    let rebuild = |r: ConnRecord, now| {
        Connection::import(
            r,
            rules(I, true, Duration::from_secs(30)),
            QUEUE,
            now,
            |f| match f {
                FramingRecord::Tcp => Ok(TcpFraming::new(PacketConfig::default(), CAP)),
                _ => Err(RecordError::Transport),
            },
        )
        .unwrap()
    };
    let script: [Step<'_, TcpFraming>; 6] = [
        &|p, _| p.input(head).unwrap(),
        &|p, _| {
            p.m.conn().set_uid(77);
            for i in 0..3 {
                p.m.conn().push(data(4, i, &[i as u8; 40])).unwrap();
            }
            // Half of the first batch goes out.
            let n = p.m.poll_transmit(&p.host).unwrap().len() / 2;
            let part = p.m.poll_transmit(&p.host).unwrap()[..n].to_vec();
            p.wire.extend_from_slice(&part);
            p.m.transmitted(n);
            p.m.conn().push(data(4, 9, b"after")).unwrap();
        },
        &|p, _| p.input(tail).unwrap(),
        &|p, t0| p.run_until(t0, I + EPS),
        &|p, t0| p.run_until(t0, I * 2 + EPS),
        &|p, t0| p.run_until(t0, I * 3 + EPS),
    ];
    let whole = run_with_handoff(&make, &rebuild, &script, None);
    assert_eq!(whole.1.len(), 2);
    assert_eq!(whole.2, Some(Err(CloseReason::HeartbeatTimeout)));
    for cut in 1..script.len() {
        let handed = run_with_handoff(&make, &rebuild, &script, Some(cut));
        assert_eq!(handed.0, whole.0, "wire bytes, hand-off before step {cut}");
        assert_eq!(handed.1, whole.1, "deliveries, hand-off before step {cut}");
        assert_eq!(handed.2, whole.2, "ending, hand-off before step {cut}");
    }
}

#[test]
fn ws_connection_carries_on_mid_fragment_after_export_and_import() {
    let msg = data(2, 2, b"a message in three fragments");
    let f1 = ws_client(0x02, &msg[..5]);
    let f2 = ws_client(0x00, &msg[5..12]);
    let f3 = ws_client(0x80, &msg[12..]);
    let ping = ws_client(0x89, b"p");
    let make = || ws_pipe(rules(I, false, NO_TIMERS));
    let rebuild = |r: ConnRecord, now| {
        Connection::import(r, rules(I, false, NO_TIMERS), QUEUE, now, |f| match f {
            FramingRecord::Ws(w) => Ok(WsFraming::import(
                PacketConfig::default(),
                CAP,
                ws_options(),
                w,
            )),
            FramingRecord::Tcp => Err(RecordError::Transport),
        })
        .unwrap()
    };
    let script: [Step<'_, WsFraming>; 5] = [
        &|p, _| p.input(&f1).unwrap(),
        &|p, _| {
            // A partial frame stays in the input tail.
            p.input(&f2).unwrap();
            p.input(&f3[..4]).unwrap();
        },
        &|p, _| {
            p.m.conn().push(data(7, 0, b"queued")).unwrap();
            p.input(&f3[4..]).unwrap();
        },
        &|p, _| p.input(&ping).unwrap(),
        &|p, _| {
            p.m.conn().close_graceful(None);
            p.step();
        },
    ];
    let whole = run_with_handoff(&make, &rebuild, &script, None);
    assert_eq!(whole.1, vec![msg]);
    for cut in 1..script.len() {
        let handed = run_with_handoff(&make, &rebuild, &script, Some(cut));
        assert_eq!(handed, whole, "hand-off before step {cut}");
    }
}

#[test]
fn a_record_of_another_version_or_transport_is_refused() {
    let (p, t0) = tcp_pipe(rules(I, false, NO_TIMERS));
    let mut record = p.m.export(t0);
    let tcp = |f| match f {
        FramingRecord::Tcp => Ok(TcpFraming::new(PacketConfig::default(), CAP)),
        _ => Err(RecordError::Transport),
    };
    let ws = |f| match f {
        FramingRecord::Ws(w) => Ok(WsFraming::import(
            PacketConfig::default(),
            CAP,
            ws_options(),
            w,
        )),
        FramingRecord::Tcp => Err(RecordError::Transport),
    };
    let r = rules(I, false, NO_TIMERS);
    assert_eq!(
        Connection::import(record.clone(), r, QUEUE, t0, ws).err(),
        Some(RecordError::Transport)
    );
    record.version += 1;
    assert_eq!(
        Connection::import(record, r, QUEUE, t0, tcp).err(),
        Some(RecordError::Version(super::record::RECORD_VERSION + 1))
    );
}

fn rate_rules(rate: u32, burst: u32, action: crate::config::RateAction) -> MachineRules {
    MachineRules {
        packet_rate: crate::limits::Rate::new(rate, burst),
        rate_action: action,
        ..rules(NO_TIMERS, false, NO_TIMERS)
    }
}

#[test]
fn packets_over_the_rate_are_dropped_and_heartbeats_still_answered() {
    use crate::config::RateAction;
    let (mut p, t0) = tcp_pipe(rate_rules(10, 3, RateAction::Drop));
    // Five data packets and a heartbeat in one read: the burst (3) is delivered, in order.
    let mut input: Vec<u8> = (1..=5).flat_map(|i| data(1, i, b"x").to_vec()).collect();
    input.extend_from_slice(&PacketConfig::default().heartbeat(0));
    p.input(&input).unwrap();
    let seqs: Vec<i32> = p.host.delivered.borrow().iter().map(|d| d.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(p.take_wire(), PacketConfig::default().heartbeat(0).to_vec());
    // 100 ms later one more token; then the stream goes on.
    p.now = t0 + Duration::from_millis(100);
    p.input(&[data(1, 6, b"x"), data(1, 7, b"x")].concat())
        .unwrap();
    let seqs: Vec<i32> = p.host.delivered.borrow().iter().map(|d| d.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 6]);
    assert!(p.ended.is_none(), "drop mode keeps the connection");
}

#[test]
fn packets_over_the_rate_close_in_close_mode() {
    use crate::config::RateAction;
    let (mut p, _) = ws_pipe(rate_rules(10, 2, RateAction::Close));
    let input: Vec<u8> = (1..=4)
        .flat_map(|i| ws_client(0x82, &data(1, i, b"x")))
        .collect();
    assert_eq!(p.input(&input), Err(CloseReason::RateLimited));
    let seqs: Vec<i32> = p.host.delivered.borrow().iter().map(|d| d.seq).collect();
    assert_eq!(seqs, [1, 2], "nothing after the packet over the rate");
    assert_eq!(
        CloseReason::RateLimited.label(p.m.conn()),
        crate::metrics::CloseLabel::RateLimited
    );
}

#[test]
fn without_a_rate_nothing_is_limited() {
    let (mut p, _) = tcp_pipe(rules(NO_TIMERS, false, NO_TIMERS));
    let input: Vec<u8> = (1..=1000).flat_map(|i| data(1, i, b"x").to_vec()).collect();
    p.input(&input).unwrap();
    assert_eq!(p.host.delivered.borrow().len(), 1000);
}

#[test]
fn an_imported_connection_starts_with_a_full_bucket() {
    use crate::config::RateAction;
    let r = rate_rules(1, 2, RateAction::Drop);
    let (mut p, t0) = tcp_pipe(r);
    p.input(&[data(1, 1, b"x"), data(1, 2, b"x")].concat())
        .unwrap();
    let record = p.m.export(t0);
    let mut m = Connection::import(record, r, QUEUE, t0, |_| {
        Ok(TcpFraming::new(PacketConfig::default(), CAP))
    })
    .unwrap();
    let host = TestHost::new();
    let mut input = [data(1, 3, b"x"), data(1, 4, b"x"), data(1, 5, b"x")].concat();
    m.handle_input(&mut input, t0, &host).unwrap();
    assert_eq!(host.delivered.borrow().len(), 2, "full again: the burst");
}
