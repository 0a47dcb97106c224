//! Conformance items 1–9 over real TCP sockets: framing, heartbeat classification, the inbound
//! cap and the packer-config start-up checks.

mod common;

use common::*;
use gatehouse::packet::{ByteOrder, PacketConfig};

fn packet_toml(order: &str, r: u8, s: u8) -> String {
    format!("[packet]\nbyteOrder = \"{order}\"\nrouteBytes = {r}\nseqBytes = {s}\n")
}

/// Item 1: D1–D24 (route 1, seq 2, "hi") reach the upstream decoded and byte-identical.
#[test]
fn data_vectors_are_delivered_verbatim() {
    for order in ["big", "little"] {
        for r in [1u8, 2, 4] {
            for s in [0u8, 1, 2, 4] {
                let g = TestGate::start(&format!(
                    "{}[network.tcp.server]\naddr = \"127.0.0.1:0\"\n",
                    packet_toml(order, r, s)
                ));
                let (mut c, cid) = g.connect_with_cid();
                let sent = c.data(1, 2, b"hi");
                let d = g.delivery();
                assert_eq!(d.frame.as_ref(), &sent[..], "{order} r{r} s{s}");
                assert_eq!((d.cid, d.uid, d.route), (cid, 0, 1));
                assert_eq!(d.seq, if s == 0 { 0 } else { 2 });
            }
        }
    }
}

/// Item 1: S1–S3, S6, S7 decode to the stated route/seq/payload.
#[test]
fn signed_and_edge_vectors() {
    let cases: &[(&str, &str, i32, i32, usize)] = &[
        (
            &packet_toml("big", 2, 2),
            "00000005 00 fffe ffff",
            -2,
            -1,
            0,
        ),
        (
            &packet_toml("little", 4, 4),
            "0a000000 00 04030201 feffffff aa",
            16909060,
            -2,
            1,
        ),
        (&packet_toml("big", 1, 1), "00000003 00 7f 80", 127, -128, 0),
        (&packet_toml("big", 2, 0), "00000004 00 0007 78", 7, 0, 1),
    ];
    for (p, bytes, route, seq, plen) in cases {
        let g = TestGate::start(&format!(
            "{p}[network.tcp.server]\naddr = \"127.0.0.1:0\"\n"
        ));
        let mut c = g.connect();
        c.send(&hex(bytes));
        let d = g.delivery();
        assert_eq!(d.frame.as_ref(), &hex(bytes)[..]);
        let m = g.packet.unpack(&d.frame).unwrap();
        assert_eq!((d.route, d.seq, m.payload.len()), (*route, *seq, *plen));
    }
    // S7: the largest frame the default config can encode (5009 bytes) is accepted.
    let g = TestGate::tcp("");
    let mut c = g.connect();
    let sent = c.data(1, 1, &[0u8; 5000]);
    assert_eq!(sent.len(), 5009);
    assert_eq!(g.delivery().frame.as_ref(), &sent[..]);
}

/// Items 2, 10, 19: the gate's heartbeat is H1/H2 without time, 13 bytes of ns with time.
#[test]
fn heartbeat_replies_use_gate_byte_order_and_time() {
    for (order, want) in [("big", "0000000180"), ("little", "0100000080")] {
        let g = TestGate::start(&format!(
            "{}[network.tcp.server]\naddr = \"127.0.0.1:0\"\n",
            packet_toml(order, 2, 2)
        ));
        let mut c = g.connect();
        c.heartbeat();
        assert_eq!(c.frame(), hex(want));
        c.heartbeat();
        c.heartbeat();
        assert_eq!(c.frame(), hex(want));
        assert_eq!(c.frame(), hex(want), "one reply per heartbeat");
        c.silent_for(ms(200));
    }
    for order in ["big", "little"] {
        let g = TestGate::start(&format!(
            "{}heartbeatTime = true\n[network.tcp.server]\naddr = \"127.0.0.1:0\"\n",
            packet_toml(order, 2, 2)
        ));
        let mut c = g.connect();
        let before = now_ns();
        c.send(&hex(if order == "big" {
            "0000000180"
        } else {
            "0100000080"
        }));
        let f = c.frame();
        let after = now_ns();
        assert_eq!(f.len(), 13);
        assert_eq!(f[4], 0x80);
        let t: [u8; 8] = f[5..13].try_into().unwrap();
        let (size, t) = if order == "big" {
            (
                u32::from_be_bytes(f[..4].try_into().unwrap()),
                i64::from_be_bytes(t),
            )
        } else {
            (
                u32::from_le_bytes(f[..4].try_into().unwrap()),
                i64::from_le_bytes(t),
            )
        };
        assert_eq!(size, 9);
        assert!(t >= before && t <= after, "{before} <= {t} <= {after}");
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// Items 3, 4, 5: bit 7 = heartbeat (never forwarded); extcode data forwarded verbatim; a
/// too-short data frame is dropped and the connection keeps working.
#[test]
fn classification() {
    let g = TestGate::tcp("");
    let mut c = g.connect();
    for hb in [
        "00000001 80",
        "00000001 ff",
        "00000001 8f",
        "00000009 80 00000000000000ff",
    ] {
        c.send(&hex(hb));
        assert_eq!(c.frame(), hex("0000000180"), "{hb}");
    }
    c.send(&hex("00000001 00"));
    let c6 = hex("00000007 7f 0001 0002 6869");
    c.send(&c6);
    let d = g.delivery();
    assert_eq!(d.frame.as_ref(), &c6[..]);
    assert_eq!((d.route, d.seq), (1, 2));
    g.no_delivery_within(ms(100));
    c.heartbeat();
    assert_eq!(c.frame(), hex("0000000180"));
}

/// Items 6, 7: a size-0 frame is ignored; coalesced and split frames parse (client-protocol.md
/// §9.6).
#[test]
fn zero_size_coalesced_and_split_frames() {
    let g = TestGate::tcp("");
    let mut c = g.connect();
    c.send(&hex("00000000"));
    c.send(&hex("00000007 00 0001 0002 6869 00000001 80"));
    assert_eq!(
        g.delivery().frame.as_ref(),
        &hex("0000000700000100026869")[..]
    );
    assert_eq!(c.frame(), hex("0000000180"));
    c.silent_for(ms(100));
    for part in ["0000", "00070000", "0100026869"] {
        c.send(&hex(part));
        std::thread::sleep(ms(30));
    }
    assert_eq!(
        g.delivery().frame.as_ref(),
        &hex("0000000700000100026869")[..]
    );
    g.no_delivery_within(ms(100));
}

/// Item 8: strict cap — 5009 bytes in, 5010 closes; a 13-byte heartbeat passes even with the
/// smallest config; lenient mode forwards the oversize frame.
#[test]
fn inbound_cap() {
    let g = TestGate::tcp("");
    let mut c = g.connect();
    let mut big = hex("0000138e 00 0001 0001");
    big.extend(std::iter::repeat_n(0u8, 5001));
    c.send(&big);
    c.wait_closed(ms(2000));
    g.no_delivery_within(ms(100));
    let mut c2 = g.connect();
    c2.heartbeat();
    assert_eq!(c2.frame(), hex("0000000180"), "the gate still serves");

    let g = TestGate::start(
        "[packet]\nrouteBytes = 1\nseqBytes = 0\nbufferBytes = 0\n[network.tcp.server]\naddr = \"127.0.0.1:0\"\n",
    );
    let mut c = g.connect();
    c.send(&hex("00000009 80 0000000000000000"));
    assert_eq!(c.frame(), hex("0000000180"));

    let g = TestGate::start(
        "[network.tcp.server]\naddr = \"127.0.0.1:0\"\n[gatehouse]\nlenientInbound = true\n",
    );
    let mut c = g.connect();
    c.send(&big);
    assert_eq!(g.delivery().frame.len(), big.len());
}

/// Item 9: invalid packer settings refuse to load (the binary exits non-zero on this error);
/// an unknown byte order means big.
#[test]
fn packer_config_validation() {
    let dir = TempDir::new("packer");
    for bad in ["routeBytes = 3", "seqBytes = 3", "bufferBytes = -1"] {
        let f = dir.0.join("etc.toml");
        std::fs::write(&f, format!("[packet]\n{bad}\n")).unwrap();
        let err = gatehouse::config::load(&f, None).unwrap_err().to_string();
        let key = bad.split(' ').next().unwrap();
        assert!(err.contains(&format!("etc.packet.{key}")), "{err}");
    }
    let f = dir.0.join("etc.toml");
    std::fs::write(&f, "[packet]\nbyteOrder = \"middle\"\n").unwrap();
    let cfg = gatehouse::config::load(&f, None).unwrap();
    assert_eq!(cfg.packet.byte_order, ByteOrder::Big);
    assert_eq!(cfg.packet, PacketConfig::default());
}
