//! The intake, routing and engine together against the vectors captured from due v2.4.1's KCP
//! server (spec kcp.md §10): what a gatehouse session answers to the same client datagrams.

use super::intake::{CMD_ACK, CMD_PUSH, CMD_WINS};
use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A decoded segment of server output.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seg {
    conv: u32,
    cmd: u8,
    frg: u8,
    wnd: u16,
    ts: u32,
    sn: u32,
    una: u32,
    data: Vec<u8>,
}

fn segments(datagram: &[u8]) -> Vec<Seg> {
    let u32le = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let mut out = Vec::new();
    let mut at = 0;
    while datagram.len() - at >= 24 {
        let s = &datagram[at..];
        let len = u32le(s, 20) as usize;
        out.push(Seg {
            conv: u32le(s, 0),
            cmd: s[4],
            frg: s[5],
            wnd: u16::from_le_bytes([s[6], s[7]]),
            ts: u32le(s, 8),
            sn: u32le(s, 12),
            una: u32le(s, 16),
            data: s[24..24 + len].to_vec(),
        });
        at += 24 + len;
    }
    assert_eq!(at, datagram.len(), "whole segments only");
    out
}

/// A server-side session as the shard runs it: intake, then the engine; every datagram sent.
struct Server {
    s: Session,
    out: Outbox,
    sent: Vec<Vec<u8>>,
}

impl Server {
    /// Creates the session from a client's first datagram, as the shard does.
    fn accept(first: &[u8], p: &Params, now: u32) -> Server {
        let Intake::Segments { conv, .. } = classify(first) else {
            panic!("no segments")
        };
        let out = Outbox::default();
        let mut srv = Server {
            s: Session::new(conv, p, now, out.clone()),
            out,
            sent: Vec::new(),
        };
        srv.input_first(first, now, true);
        srv
    }

    fn input_first(&mut self, d: &[u8], now: u32, first: bool) {
        let Intake::Segments { offset, conv, .. } = classify(d) else {
            return;
        };
        let mut d = d[offset..].to_vec();
        let n = sanitise(&mut d, conv, now);
        if n > 0 {
            let _ = self.s.input(&d[..n], now, first);
        }
        self.collect();
    }

    fn input(&mut self, d: &[u8], now: u32) {
        self.input_first(d, now, false)
    }

    fn collect(&mut self) {
        let sent = &mut self.sent;
        self.out.drain(|d| sent.push(d.to_vec()));
    }

    fn read_all(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let n = self.s.read(&mut buf);
            if n == 0 {
                return got;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }

    fn write(&mut self, data: &[u8], now: u32) -> usize {
        let n = self.s.write(data, now);
        self.collect();
        n
    }

    fn update(&mut self, now: u32) {
        self.s.update(now);
        self.collect();
    }

    fn take(&mut self) -> Vec<Vec<Seg>> {
        std::mem::take(&mut self.sent)
            .iter()
            .map(|d| segments(d))
            .collect()
    }
}

const HEARTBEAT: [u8; 5] = [0, 0, 0, 1, 0x80];
const K1: &str = "443322115100200064000000000000000000000005000000 0000000180";
const K5: &str = "4433221151002000f50100000100000001000000 0b000000 0000000700000100016869";
const CONV: u32 = 0x1122_3344;

#[test]
fn k1_to_k7_first_datagram_reply_and_delayed_ack() {
    let p = Params::default();
    // K1 at our clock 1000: the first update runs at once → the ACK (K2) leaves now.
    let mut srv = Server::accept(&hex(K1), &p, 1000);
    let out = srv.take();
    assert_eq!(out.len(), 1, "one datagram: {out:?}");
    let ack = &out[0][0];
    assert_eq!(
        (ack.conv, ack.cmd, ack.ts, ack.sn, ack.una, ack.data.len()),
        (CONV, CMD_ACK, 100, 0, 1, 0),
        "K2: ACK of sn 0 echoing ts 100, una 1"
    );
    assert!(ack.wnd > 0);
    // due reads the heartbeat and answers it (K3): a PUSH sn 0 with exactly the heartbeat.
    assert_eq!(srv.read_all(), HEARTBEAT);
    assert_eq!(srv.write(&HEARTBEAT, 1001), 5);
    let out = srv.take();
    assert_eq!(out.len(), 1);
    let push = &out[0][0];
    assert_eq!(
        (push.conv, push.cmd, push.frg, push.sn, push.una, push.ts),
        (CONV, CMD_PUSH, 0, 0, 1, 1001)
    );
    assert_eq!(push.data, HEARTBEAT);
    // K4: the client ACKs it; K5: a data packet the gate does not answer. Its ACK waits for
    // the periodic flush (≤ 100 ms; K6) …
    srv.input(
        &hex("443322115200200065000000000000000100000000000000"),
        1050,
    );
    assert_eq!(srv.s.unacked(), 0, "K4 acknowledged our PUSH");
    srv.take();
    srv.input(&hex(K5), 1060);
    assert!(srv.take().is_empty(), "no ACK before the periodic flush");
    assert_eq!(srv.read_all(), hex("0000000700000100016869"));
    let wait = srv.s.next_update(1060).expect("ACK owed: a timer");
    assert!(wait <= 100, "{wait}");
    srv.update(1060 + wait);
    let out = srv.take();
    let ack = &out[0][0];
    assert_eq!(
        (ack.cmd, ack.ts, ack.sn, ack.una),
        (CMD_ACK, 0x1f5, 1, 2),
        "K6"
    );
    // Idle: nothing owed, no timer.
    assert_eq!(srv.s.next_update(1200), None);
    // K7: a request answered at once shares one datagram: ACK sn 2 then PUSH sn 1.
    srv.input(
        &hex("4433221151002000 86030000 02000000 01000000 0c000000 00000008000002000 26f6b3f"),
        1300,
    );
    assert_eq!(srv.read_all(), hex("00000008000002000 26f6b3f"));
    srv.write(&hex("0000000700000200026f6b"), 1301);
    let out = srv.take();
    assert_eq!(out.len(), 1, "{out:?}");
    let [a, p] = &out[0][..] else {
        panic!("{out:?}")
    };
    assert_eq!((a.cmd, a.sn, a.una, a.ts), (CMD_ACK, 2, 3, 0x386));
    assert_eq!((p.cmd, p.sn, p.una), (CMD_PUSH, 1, 3));
    assert_eq!(p.data, hex("0000000700000200026f6b"));
}

#[test]
fn k8_due_go_client_fec_shards_are_stripped_and_answered_plain() {
    let k8 = hex("00000000f1001f00 4616d6115100200026140000000000000000000005000000 0000000180");
    let mut srv = Server::accept(&k8, &Params::default(), 7);
    assert_eq!(srv.s.conv(), 0x11d6_1646);
    let out = srv.take();
    let ack = &out[0][0];
    assert_eq!(
        (ack.conv, ack.cmd, ack.ts, ack.una),
        (0x11d6_1646, CMD_ACK, 0x1426, 1)
    );
    assert_eq!(&srv.sent.len(), &0);
    assert_eq!(srv.read_all(), HEARTBEAT);
    srv.write(&HEARTBEAT, 8);
    // No FEC header on anything the server sends: byte 4 is a KCP cmd.
    let raw = std::mem::take(&mut srv.sent);
    assert!(raw.iter().all(|d| (81..=84).contains(&d[4])), "{raw:?}");
    // K9: the client's ACK in an FEC data shard; a parity shard changes nothing.
    srv.input(
        &hex("01000000f1001a00 4616d61152002000271400000000000001000000 00000000"),
        20,
    );
    assert_eq!(srv.s.unacked(), 0);
    let mut parity = vec![0u8; 40];
    parity[0] = 10;
    parity[4] = 0xf2;
    assert_eq!(classify(&parity), Intake::Parity);
}

#[test]
fn v4_v5_v6_batches_gaps_and_fragments() {
    let p = Params::default();
    // V4: two PUSHes in one datagram: both delivered in order.
    let v4 = hex(
        "04030201 51 00 2000 e8030000 00000000 00000000 05000000 0000000180
         04030201 51 00 2000 e8030000 01000000 00000000 0b000000 0000000700000100016869",
    );
    let mut srv = Server::accept(&v4, &p, 0);
    let mut want = HEARTBEAT.to_vec();
    want.extend(hex("0000000700000100016869"));
    assert_eq!(srv.read_all(), want);
    let acks: Vec<_> = srv.take().concat();
    assert!(
        acks.iter().all(|a| a.cmd == CMD_ACK && a.una == 2),
        "{acks:?}"
    );
    // V5: a gap (sn 1 first) is ACKed, not delivered until sn 0 arrives.
    let v5 = hex("05050505 51 00 2000 07000000 01000000 00000000 0b000000 0000000700000100016869");
    let mut srv = Server::accept(&v5, &p, 0);
    let ack = &srv.take()[0][0];
    assert_eq!((ack.sn, ack.una), (1, 0));
    assert!(!srv.s.readable());
    srv.input(
        &hex("05050505 51 00 2000 07000000 00000000 00000000 05000000 0000000180"),
        10,
    );
    let mut want = HEARTBEAT.to_vec();
    want.extend(hex("0000000700000100016869"));
    assert_eq!(srv.read_all(), want, "filled gap delivers both, in order");
    // V6: frg 1 then frg 0: one message once both are in.
    let first = hex("06060606 51 01 2000 07000000 00000000 00000000 04000000 00000007");
    let mut srv = Server::accept(&first, &p, 0);
    assert!(!srv.s.readable(), "half a message");
    srv.input(
        &hex("06060606 51 00 2000 07000000 01000000 00000000 07000000 00000100016869"),
        5,
    );
    assert_eq!(srv.read_all(), hex("0000000700000100016869"));
}

#[test]
fn k10_wask_is_answered_with_wins() {
    let k10 = hex("070707075300200007000000000000000000000000000000");
    let mut srv = Server::accept(&k10, &Params::default(), 0);
    let out = srv.take().concat();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].conv, out[0].cmd), (0x0707_0707, CMD_WINS));
    assert!(out[0].wnd > 0);
}

#[test]
fn v9_v17_long_packets_leave_as_mss_segments_with_frg_0() {
    // V17's settings: mtu 500, noDelay [1, 10, 2, 1], windowSize [128, 128].
    let p = Params {
        mtu: 500,
        nodelay: true,
        interval: 10,
        resend: 2,
        no_cwnd: true,
        snd_wnd: 128,
        rcv_wnd: 128,
        ..Params::default()
    };
    let mut srv = Server::accept(&hex(K1), &p, 0);
    srv.take();
    let packet = vec![7u8; 1209];
    assert_eq!(srv.write(&packet, 1), 1209);
    let out = srv.take();
    let pushes: Vec<&Seg> = out.iter().flatten().filter(|s| s.cmd == CMD_PUSH).collect();
    let lens: Vec<usize> = pushes.iter().map(|s| s.data.len()).collect();
    assert_eq!(lens, [476, 476, 257], "sent at once: no congestion window");
    assert!(pushes.iter().all(|s| s.frg == 0));
    assert!(out
        .iter()
        .all(|d| d.iter().map(|s| 24 + s.data.len()).sum::<usize>() <= 500));
    assert_eq!(
        pushes[0].wnd,
        128 - 1,
        "the configured window, less the unread heartbeat"
    );
    // Defaults (V9 reversed): MSS 1376, congestion window 1 at first.
    let mut srv = Server::accept(&hex(K1), &Params::default(), 0);
    srv.take();
    assert_eq!(srv.write(&vec![1u8; 3009], 1), 3009);
    let first: Vec<Seg> = srv.take().concat();
    let lens: Vec<usize> = first
        .iter()
        .filter(|s| s.cmd == CMD_PUSH)
        .map(|s| s.data.len())
        .collect();
    assert_eq!(lens, [1376], "slow start: one segment in flight");
    // The client ACKs sn 0: the window opens and the rest follows.
    srv.input(&hex("443322115200200001000000000000000100000000000000"), 20);
    let rest: Vec<usize> = srv
        .take()
        .concat()
        .iter()
        .filter(|s| s.cmd == CMD_PUSH)
        .map(|s| s.data.len())
        .collect();
    assert_eq!(rest, [1376, 257]);
}

#[test]
fn v3_unacknowledged_pushes_are_retransmitted_with_growing_gaps() {
    let mut srv = Server::accept(&hex(K1), &Params::default(), 0);
    srv.take();
    srv.write(&HEARTBEAT, 0);
    srv.take();
    let mut sends = Vec::new();
    let mut now = 0;
    while now < 2000 {
        now += srv.s.next_update(now).expect("unacked: a timer").max(1);
        srv.update(now);
        if srv.take().concat().iter().any(|s| s.cmd == CMD_PUSH) {
            sends.push(now);
        }
    }
    assert!(sends.len() >= 3, "{sends:?}");
    // First after ≈ 200 ms; each gap longer than the one before (linear growth, nodelay 0).
    assert!((200..=300).contains(&sends[0]), "{sends:?}");
    let gaps: Vec<u32> = sends.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.windows(2).all(|g| g[1] > g[0]), "{sends:?}");
}

#[test]
fn the_send_window_bounds_what_a_writer_may_queue() {
    let mut srv = Server::accept(&hex(K1), &Params::default(), 0);
    // 32 segments of MSS fit; the rest waits for ACKs (the driver keeps it queued).
    let big = vec![0u8; 40 * 1376];
    assert_eq!(srv.write(&big, 1), 32 * 1376);
    assert_eq!(srv.write(&big, 2), 0);
    assert_eq!(srv.s.unacked(), 32);
}

#[test]
fn hostile_values_never_reach_the_engine_raw() {
    let p = Params::default();
    let mut srv = Server::accept(&hex(K1), &p, 1000);
    assert_eq!(srv.read_all(), HEARTBEAT);
    srv.write(&HEARTBEAT, 1000);
    srv.take();
    // An ACK echoing a timestamp from the far future would overflow the RTT estimate.
    srv.input(
        &hex("4433221152002000 ffffff7f 00000000 01000000 00000000"),
        1010,
    );
    assert_eq!(srv.s.unacked(), 0, "the ACK itself still counts");
    // A PUSH claiming 255 fragments is cut off by the intake.
    let mut frg = hex(K1);
    frg[5] = 255;
    frg[12] = 1;
    srv.input(&frg, 1020);
    assert!(!srv.s.readable());
    assert!(srv.take().is_empty(), "not even acknowledged");
}
