//! One UDP datagram from a KCP client, classified as kcp-go v5.6.20's listener does (spec kcp.md
//! §2.2, §3): plain KCP segments, an FEC data shard (its 8-byte header stripped) or an FEC parity
//! shard; then checked and made safe before any KCP engine sees it.
//!
//! Everything here is pure: bytes in, a verdict out (the only write is [`sanitise`]'s rewrite of
//! an impossible ACK timestamp in place).

/// Bytes of a KCP segment header (conv, cmd, frg, wnd, ts, sn, una, len).
pub const SEGMENT_HEADER: usize = 24;
/// Bytes of the FEC header due's Go client puts before each datagram (seqid u32, flag u16,
/// size u16).
pub const FEC_HEADER: usize = 8;
/// FEC flags (bytes 4–5, little endian).
const FEC_DATA: u16 = 0x00F1;
const FEC_PARITY: u16 = 0x00F2;

pub const CMD_PUSH: u8 = 81;
pub const CMD_ACK: u8 = 82;
pub const CMD_WASK: u8 = 83;
pub const CMD_WINS: u8 = 84;

/// The largest `frg` a PUSH may carry: a message of more fragments could never be read (the
/// receive window is smaller), and the engine's fragment count is a `u8` that must not wrap.
pub const MAX_FRG: u8 = 127;

/// How far back an ACK's echoed timestamp may lie (ms). Our own PUSH timestamps are what a
/// client echoes, so a real echo is at most one retransmission timeout old (≤ 60 s).
const MAX_ECHO_AGE: u32 = 60_000;

/// What one datagram is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// Shorter than a segment header (or an FEC data shard too short to hold one): dropped
    /// without a trace, as kcp-go does (V1).
    TooShort,
    /// An FEC parity shard (`f2 00`): never data and never a session. gatehouse does no
    /// Reed-Solomon recovery; KCP retransmission covers a lost data shard.
    Parity,
    /// KCP segments starting at `offset` (8 for an FEC data shard, else 0); `conv` and `sn` of
    /// the first segment, as kcp-go reads them to pick or replace a session.
    Segments { offset: usize, conv: u32, sn: u32 },
}

fn u16le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Classifies a datagram by its bytes 4–5, per datagram (a client may mix FEC and plain).
pub fn classify(d: &[u8]) -> Intake {
    if d.len() < SEGMENT_HEADER {
        return Intake::TooShort;
    }
    match u16le(d, 4) {
        FEC_PARITY => Intake::Parity,
        FEC_DATA if d.len() < FEC_HEADER + SEGMENT_HEADER => Intake::TooShort,
        FEC_DATA => Intake::Segments {
            offset: FEC_HEADER,
            conv: u32le(d, FEC_HEADER),
            sn: u32le(d, FEC_HEADER + 12),
        },
        // A plain segment: byte 4 is cmd (81..84), byte 5 frg; never 0xF1/0xF2 with frg 0.
        _ => Intake::Segments {
            offset: 0,
            conv: u32le(d, 0),
            sn: u32le(d, 12),
        },
    }
}

/// Walks the segments of `segs` (the datagram from [`Intake::Segments`]'s offset) and returns
/// how many leading bytes form acceptable segments of conversation `conv`: parsing stops at the
/// first segment with another conv, an unknown cmd, a `len` beyond the datagram or (gatehouse)
/// a PUSH `frg` above [`MAX_FRG`]; earlier segments count, trailing bytes shorter than a header
/// are ignored (kcp-go §3.2). 0 = nothing usable.
///
/// An ACK whose echoed `ts` is in the future of `now_ms` or older than 60 s cannot be the echo
/// of one of our PUSHes; its `ts` is rewritten to `now_ms` (an RTT sample of 0) so that a
/// hostile value cannot overflow the engine's RTT arithmetic.
pub fn sanitise(segs: &mut [u8], conv: u32, now_ms: u32) -> usize {
    let mut at = 0;
    while segs.len() - at >= SEGMENT_HEADER {
        let s = &segs[at..];
        let cmd = s[4];
        let frg = s[5];
        let len = u32le(s, 20) as usize;
        if u32le(s, 0) != conv
            || !(CMD_PUSH..=CMD_WINS).contains(&cmd)
            || len > s.len() - SEGMENT_HEADER
            || (cmd == CMD_PUSH && frg > MAX_FRG)
        {
            break;
        }
        if cmd == CMD_ACK {
            let age = now_ms.wrapping_sub(u32le(s, 8));
            if age > MAX_ECHO_AGE {
                segs[at + 8..at + 12].copy_from_slice(&now_ms.to_le_bytes());
            }
        }
        at += SEGMENT_HEADER + len;
    }
    at
}

/// The command of the first segment, when `segs` holds at least one header.
pub fn first_cmd(segs: &[u8]) -> Option<u8> {
    (segs.len() >= SEGMENT_HEADER).then(|| segs[4])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// K1 (spec §10.2): a plain client's first datagram, PUSH sn 0 with a due heartbeat.
    pub(crate) const K1: &str = "443322115100200064000000000000000000000005000000 0000000180";
    /// K8: due's Go client's first datagram: FEC data shard seqid 0, then PUSH sn 0.
    pub(crate) const K8: &str =
        "00000000f1001f00 4616d6115100200026140000000000000000000005000000 0000000180";

    #[test]
    fn plain_and_fec_data_shards_name_conv_and_sn() {
        assert_eq!(
            classify(&hex(K1)),
            Intake::Segments {
                offset: 0,
                conv: 0x1122_3344,
                sn: 0
            }
        );
        assert_eq!(
            classify(&hex(K8)),
            Intake::Segments {
                offset: 8,
                conv: 0x11d6_1646,
                sn: 0
            }
        );
        // K9: the Go client's ACK in an FEC data shard (seqid 1, size 26).
        let k9 = hex("01000000f1001a00 4616d61152002000271400000000000001000000 00000000");
        assert_eq!(
            classify(&k9),
            Intake::Segments {
                offset: 8,
                conv: 0x11d6_1646,
                sn: 0
            }
        );
    }

    #[test]
    fn short_datagrams_and_parity_shards_are_no_segments() {
        // V1: 23 zero bytes.
        assert_eq!(classify(&[0; 23]), Intake::TooShort);
        // V2's 24 zero bytes classify as a segment of conv 0 …
        assert_eq!(
            classify(&[0; 24]),
            Intake::Segments {
                offset: 0,
                conv: 0,
                sn: 0
            }
        );
        // … whose cmd 0 is not acceptable (gatehouse: no session from it).
        assert_eq!(sanitise(&mut [0; 24], 0, 0), 0);
        // A parity shard (V10: seqids 10–12 `f2 00`), any length from 24 on.
        let mut parity = vec![0u8; 148];
        parity[0] = 10;
        parity[4] = 0xf2;
        assert_eq!(classify(&parity), Intake::Parity);
        // An FEC data shard without room for a segment.
        let mut short = hex(K8);
        short.truncate(31);
        assert_eq!(classify(&short), Intake::TooShort);
    }

    #[test]
    fn sanitise_keeps_the_valid_prefix() {
        let k1 = hex(K1);
        let mut d = k1.clone();
        assert_eq!(sanitise(&mut d, 0x1122_3344, 100), k1.len());
        // Another conv: nothing.
        assert_eq!(sanitise(&mut d, 7, 100), 0);
        // A second segment with a bad cmd is cut off; the first stays.
        let mut two = k1.clone();
        let mut bad = k1.clone();
        bad[4] = 0x99;
        two.extend_from_slice(&bad);
        assert_eq!(sanitise(&mut two, 0x1122_3344, 100), k1.len());
        // A len beyond the datagram.
        let mut long = k1.clone();
        long[20] = 6;
        assert_eq!(sanitise(&mut long, 0x1122_3344, 100), 0);
        // Trailing bytes shorter than a header are ignored.
        let mut tail = k1.clone();
        tail.extend_from_slice(&[1, 2, 3]);
        assert_eq!(sanitise(&mut tail, 0x1122_3344, 100), k1.len());
        // V4: two PUSHes in one datagram.
        let v4 = hex(
            "04030201 51 00 2000 e8030000 00000000 00000000 05000000 0000000180
             04030201 51 00 2000 e8030000 01000000 00000000 0b000000 0000000700000100016869",
        );
        let mut v = v4.clone();
        assert_eq!(sanitise(&mut v, 0x0102_0304, 0), 64);
        // A PUSH with a fragment count the engine cannot hold.
        let mut frg = k1.clone();
        frg[5] = 200;
        assert_eq!(sanitise(&mut frg, 0x1122_3344, 100), 0);
        frg[5] = MAX_FRG;
        assert_eq!(sanitise(&mut frg, 0x1122_3344, 100), k1.len());
    }

    #[test]
    fn impossible_ack_echoes_are_clamped() {
        // K4: the client's ACK echoing ts 101.
        let k4 = hex("443322115200200065000000000000000100000000000000");
        let mut d = k4.clone();
        assert_eq!(sanitise(&mut d, 0x1122_3344, 150), 24);
        assert_eq!(d, k4, "a real echo is left alone");
        // Echo from the future (ts 101 seen at 50): rewritten to now.
        let mut d = k4.clone();
        sanitise(&mut d, 0x1122_3344, 50);
        assert_eq!(u32le(&d, 8), 50);
        // Echo older than 60 s.
        let mut d = k4.clone();
        sanitise(&mut d, 0x1122_3344, 101 + 60_001);
        assert_eq!(u32le(&d, 8), 101 + 60_001);
        // Across the clock's wrap, a fresh echo stays.
        let mut d = k4.clone();
        d[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        sanitise(&mut d, 0x1122_3344, 5);
        assert_eq!(u32le(&d, 8), u32::MAX);
    }
}
