//! The due client packet format as a sans-IO codec: framing, heartbeat classification, encoding.
//! Owns `[packet]` semantics (byte order, route/seq widths, bufferBytes) and the inbound size cap.
//!
//! Nothing here touches a socket or a clock: callers pass bytes in and get frames out, and pass the
//! current time in when a heartbeat must carry one. That keeps every rule testable with vectors.

use bytes::{BufMut, Bytes, BytesMut};

/// Byte order of the size field, route, seq and heartbeat time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    Big,
    Little,
}

/// The `[packet]` section: must match the clients and nodes of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketConfig {
    pub byte_order: ByteOrder,
    /// 1, 2 or 4.
    pub route_bytes: u8,
    /// 0, 1, 2 or 4.
    pub seq_bytes: u8,
    /// Largest payload an encoder may produce.
    pub buffer_bytes: u32,
    /// Whether heartbeats this process sends carry an 8-byte nanosecond Unix time.
    pub heartbeat_time: bool,
}

impl Default for PacketConfig {
    fn default() -> Self {
        PacketConfig {
            byte_order: ByteOrder::Big,
            route_bytes: 2,
            seq_bytes: 2,
            buffer_bytes: 5000,
            heartbeat_time: false,
        }
    }
}

/// Errors of the encoder, named as due names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    RouteOverflow,
    SeqOverflow,
    MessageTooLarge,
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EncodeError::RouteOverflow => "route overflow",
            EncodeError::SeqOverflow => "seq overflow",
            EncodeError::MessageTooLarge => "message too large",
        })
    }
}

impl std::error::Error for EncodeError {}

/// A decoded data packet (route/seq sign-extended, payload borrowed from the frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub header: u8,
    pub route: i32,
    pub seq: i32,
    pub payload: &'a [u8],
}

/// What one complete frame is, from the gate's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// `size == 0`: ignored (v2.5.8 behaviour), counts as liveness.
    Empty,
    /// header bit 7 set: never forwarded.
    Heartbeat,
    /// header bit 7 clear: forwarded verbatim when long enough to carry route and seq.
    Data,
}

/// Reasons a frame or message is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The size field claims more than the inbound cap: the connection must be closed.
    TooLarge { size: u32, cap: u32 },
    /// A WS message whose size field does not match its length, or shorter than 5 bytes.
    Invalid,
    /// A data frame too short to hold header, route and seq ("unpack message failed").
    TooShort,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { size, cap } => {
                write!(f, "frame size {size} exceeds inbound cap {cap}")
            }
            FrameError::Invalid => f.write_str("invalid message"),
            FrameError::TooShort => f.write_str("unpack message failed: invalid message"),
        }
    }
}

impl PacketConfig {
    /// The smallest complete data frame (size field included).
    pub fn min_data_frame(&self) -> usize {
        4 + 1 + self.route_bytes as usize + self.seq_bytes as usize
    }

    /// The strict inbound cap: the largest `size` any due encoder with this config can emit,
    /// but never below the 9 of a heartbeat carrying a time.
    pub fn strict_inbound_cap(&self) -> u32 {
        let data =
            1u64 + self.route_bytes as u64 + self.seq_bytes as u64 + self.buffer_bytes as u64;
        data.clamp(9, u32::MAX as u64) as u32
    }

    /// Reads a `u32` size field in the configured order.
    #[inline]
    pub fn read_size(&self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        match self.byte_order {
            ByteOrder::Big => u32::from_be_bytes(a),
            ByteOrder::Little => u32::from_le_bytes(a),
        }
    }

    fn read_signed(&self, b: &[u8]) -> i32 {
        match (b.len(), self.byte_order) {
            (0, _) => 0,
            (1, _) => b[0] as i8 as i32,
            (2, ByteOrder::Big) => i16::from_be_bytes([b[0], b[1]]) as i32,
            (2, ByteOrder::Little) => i16::from_le_bytes([b[0], b[1]]) as i32,
            (_, ByteOrder::Big) => i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            (_, ByteOrder::Little) => i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        }
    }

    fn put_signed(&self, out: &mut BytesMut, v: i32, width: u8) {
        match (width, self.byte_order) {
            (0, _) => {}
            (1, _) => out.put_i8(v as i8),
            (2, ByteOrder::Big) => out.put_i16(v as i16),
            (2, ByteOrder::Little) => out.put_i16_le(v as i16),
            (_, ByteOrder::Big) => out.put_i32(v),
            (_, ByteOrder::Little) => out.put_i32_le(v),
        }
    }

    fn put_u32(&self, out: &mut BytesMut, v: u32) {
        match self.byte_order {
            ByteOrder::Big => out.put_u32(v),
            ByteOrder::Little => out.put_u32_le(v),
        }
    }

    /// Classifies a complete frame (size prefix included) read from a TCP stream.
    pub fn classify(&self, frame: &[u8]) -> FrameKind {
        if frame.len() <= 4 {
            FrameKind::Empty
        } else if frame[4] & 0x80 != 0 {
            FrameKind::Heartbeat
        } else {
            FrameKind::Data
        }
    }

    /// Validates one WS binary message as exactly one packet (due's CheckHeartbeat rule):
    /// empty messages are `Empty`, shorter than 5 bytes or a size field that disagrees with the
    /// length is `Invalid`.
    pub fn check_message(&self, msg: &[u8]) -> Result<FrameKind, FrameError> {
        if msg.is_empty() {
            return Ok(FrameKind::Empty);
        }
        if msg.len() < 5 || self.read_size(msg) as usize != msg.len() - 4 {
            return Err(FrameError::Invalid);
        }
        Ok(self.classify(msg))
    }

    /// Decodes route, seq and payload of a data frame (size prefix included).
    pub fn unpack<'a>(&self, frame: &'a [u8]) -> Result<Message<'a>, FrameError> {
        if frame.len() < self.min_data_frame() {
            return Err(FrameError::TooShort);
        }
        if self.read_size(frame) as usize != frame.len() - 4 {
            return Err(FrameError::Invalid);
        }
        let r = 5 + self.route_bytes as usize;
        let s = r + self.seq_bytes as usize;
        Ok(Message {
            header: frame[4],
            route: self.read_signed(&frame[5..r]),
            seq: self.read_signed(&frame[r..s]),
            payload: &frame[s..],
        })
    }

    /// Encodes a data packet exactly as due's packer does (range and bufferBytes checks).
    pub fn encode(&self, route: i32, seq: i32, payload: &[u8]) -> Result<Bytes, EncodeError> {
        if !fits(route, self.route_bytes) {
            return Err(EncodeError::RouteOverflow);
        }
        if self.seq_bytes > 0 && !fits(seq, self.seq_bytes) {
            return Err(EncodeError::SeqOverflow);
        }
        if payload.len() > self.buffer_bytes as usize {
            return Err(EncodeError::MessageTooLarge);
        }
        let body = 1 + self.route_bytes as usize + self.seq_bytes as usize + payload.len();
        let mut out = BytesMut::with_capacity(4 + body);
        self.put_u32(&mut out, body as u32);
        out.put_u8(0);
        self.put_signed(&mut out, route, self.route_bytes);
        self.put_signed(&mut out, seq, self.seq_bytes);
        out.put_slice(payload);
        Ok(out.freeze())
    }

    /// Writes this process's heartbeat into `out`: 5 bytes, or 13 with `now_unix_nanos` when
    /// `heartbeatTime` is on. Returns the bytes written.
    pub fn write_heartbeat(&self, now_unix_nanos: i64, out: &mut [u8; 13]) -> usize {
        let (size, n) = if self.heartbeat_time {
            (9u32, 13)
        } else {
            (1u32, 5)
        };
        let sz = match self.byte_order {
            ByteOrder::Big => size.to_be_bytes(),
            ByteOrder::Little => size.to_le_bytes(),
        };
        out[..4].copy_from_slice(&sz);
        out[4] = 0x80;
        if self.heartbeat_time {
            let t = match self.byte_order {
                ByteOrder::Big => now_unix_nanos.to_be_bytes(),
                ByteOrder::Little => now_unix_nanos.to_le_bytes(),
            };
            out[5..13].copy_from_slice(&t);
        }
        n
    }

    /// This process's heartbeat as owned bytes.
    pub fn heartbeat(&self, now_unix_nanos: i64) -> Bytes {
        let mut b = [0u8; 13];
        let n = self.write_heartbeat(now_unix_nanos, &mut b);
        Bytes::copy_from_slice(&b[..n])
    }
}

fn fits(v: i32, width: u8) -> bool {
    match width {
        1 => i8::try_from(v).is_ok(),
        2 => i16::try_from(v).is_ok(),
        _ => true,
    }
}

/// Splits a TCP byte stream into frames. Holds only the undecoded tail between reads.
///
/// The cap is checked as soon as a size field is complete, before any body byte is buffered,
/// so a client claiming 4 GiB costs nothing but its connection.
#[derive(Debug)]
pub struct FrameDecoder {
    order: ByteOrder,
    cap: u32,
}

impl FrameDecoder {
    pub fn new(cfg: &PacketConfig, cap: u32) -> Self {
        FrameDecoder {
            order: cfg.byte_order,
            cap,
        }
    }

    /// Returns the length of the first complete frame in `buf` (size prefix included),
    /// `Ok(None)` when more bytes are needed, or an error when the size exceeds the cap.
    #[inline]
    pub fn next_frame_len(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let a = [buf[0], buf[1], buf[2], buf[3]];
        let size = match self.order {
            ByteOrder::Big => u32::from_be_bytes(a),
            ByteOrder::Little => u32::from_le_bytes(a),
        };
        if size > self.cap {
            return Err(FrameError::TooLarge {
                size,
                cap: self.cap,
            });
        }
        let total = 4 + size as usize;
        Ok((buf.len() >= total).then_some(total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn cfg(order: ByteOrder, r: u8, s: u8) -> PacketConfig {
        PacketConfig {
            byte_order: order,
            route_bytes: r,
            seq_bytes: s,
            ..PacketConfig::default()
        }
    }

    /// client-protocol.md §9.2 D1–D24: route 1, seq 2, payload "hi".
    const DATA_VECTORS: &[(ByteOrder, u8, u8, &str)] = &[
        (ByteOrder::Big, 1, 0, "00000004 00 01 6869"),
        (ByteOrder::Big, 1, 1, "00000005 00 01 02 6869"),
        (ByteOrder::Big, 1, 2, "00000006 00 01 0002 6869"),
        (ByteOrder::Big, 1, 4, "00000008 00 01 00000002 6869"),
        (ByteOrder::Big, 2, 0, "00000005 00 0001 6869"),
        (ByteOrder::Big, 2, 1, "00000006 00 0001 02 6869"),
        (ByteOrder::Big, 2, 2, "00000007 00 0001 0002 6869"),
        (ByteOrder::Big, 2, 4, "00000009 00 0001 00000002 6869"),
        (ByteOrder::Big, 4, 0, "00000007 00 00000001 6869"),
        (ByteOrder::Big, 4, 1, "00000008 00 00000001 02 6869"),
        (ByteOrder::Big, 4, 2, "00000009 00 00000001 0002 6869"),
        (ByteOrder::Big, 4, 4, "0000000b 00 00000001 00000002 6869"),
        (ByteOrder::Little, 1, 0, "04000000 00 01 6869"),
        (ByteOrder::Little, 1, 1, "05000000 00 01 02 6869"),
        (ByteOrder::Little, 1, 2, "06000000 00 01 0200 6869"),
        (ByteOrder::Little, 1, 4, "08000000 00 01 02000000 6869"),
        (ByteOrder::Little, 2, 0, "05000000 00 0100 6869"),
        (ByteOrder::Little, 2, 1, "06000000 00 0100 02 6869"),
        (ByteOrder::Little, 2, 2, "07000000 00 0100 0200 6869"),
        (ByteOrder::Little, 2, 4, "09000000 00 0100 02000000 6869"),
        (ByteOrder::Little, 4, 0, "07000000 00 01000000 6869"),
        (ByteOrder::Little, 4, 1, "08000000 00 01000000 02 6869"),
        (ByteOrder::Little, 4, 2, "09000000 00 01000000 0200 6869"),
        (
            ByteOrder::Little,
            4,
            4,
            "0b000000 00 01000000 02000000 6869",
        ),
    ];

    #[test]
    fn data_vectors_encode_and_decode() {
        for (i, (order, r, s, bytes)) in DATA_VECTORS.iter().enumerate() {
            let c = cfg(*order, *r, *s);
            let want = hex(bytes);
            assert_eq!(c.encode(1, 2, b"hi").unwrap()[..], want[..], "D{}", i + 1);
            let m = c.unpack(&want).unwrap();
            let seq = if *s == 0 { 0 } else { 2 };
            assert_eq!(
                (m.route, m.seq, m.payload),
                (1, seq, &b"hi"[..]),
                "D{}",
                i + 1
            );
            assert_eq!(c.classify(&want), FrameKind::Data);
            assert_eq!(c.check_message(&want), Ok(FrameKind::Data));
        }
    }

    #[test]
    fn signedness_and_limits() {
        let c = cfg(ByteOrder::Big, 2, 2);
        let s1 = c.encode(-2, -1, b"").unwrap();
        assert_eq!(&s1[..], &hex("00000005 00 fffe ffff")[..]);
        let m = c.unpack(&s1).unwrap();
        assert_eq!((m.route, m.seq, m.payload.len()), (-2, -1, 0));

        let c = cfg(ByteOrder::Little, 4, 4);
        let s2 = c.encode(0x01020304, -2, &[0xaa]).unwrap();
        assert_eq!(&s2[..], &hex("0a000000 00 04030201 feffffff aa")[..]);
        assert_eq!(c.unpack(&s2).unwrap().route, 16909060);

        let c = cfg(ByteOrder::Big, 1, 1);
        assert_eq!(
            &c.encode(127, -128, b"").unwrap()[..],
            &hex("00000003 00 7f 80")[..]
        );
        assert_eq!(c.encode(1, 128, b""), Err(EncodeError::SeqOverflow));
        assert_eq!(c.unpack(&hex("00000003 00 7f 80")).unwrap().seq, -128);

        let c = cfg(ByteOrder::Big, 2, 2);
        assert_eq!(c.encode(32768, 0, b""), Err(EncodeError::RouteOverflow));

        let c = cfg(ByteOrder::Big, 2, 0);
        assert_eq!(
            &c.encode(7, 99999, b"x").unwrap()[..],
            &hex("00000004 00 0007 78")[..]
        );

        let c = cfg(ByteOrder::Big, 2, 2);
        let s7 = c.encode(1, 1, &[0u8; 5000]).unwrap();
        assert_eq!(s7.len(), 5009);
        assert_eq!(&s7[..9], &hex("0000138d 00 0001 0001")[..]);
        assert_eq!(c.unpack(&s7).unwrap().payload.len(), 5000);
        assert_eq!(
            c.encode(1, 1, &[0u8; 5001]),
            Err(EncodeError::MessageTooLarge)
        );

        let c0 = PacketConfig {
            buffer_bytes: 0,
            ..c
        };
        assert_eq!(
            &c0.encode(1, 1, b"").unwrap()[..],
            &hex("00000005 00 0001 0001")[..]
        );
        assert_eq!(c0.encode(1, 1, b"x"), Err(EncodeError::MessageTooLarge));
    }

    #[test]
    fn heartbeat_vectors() {
        let t = 1_735_689_600_000_000_000i64;
        let mut c = cfg(ByteOrder::Big, 2, 2);
        assert_eq!(&c.heartbeat(t)[..], &hex("00000001 80")[..]);
        c.byte_order = ByteOrder::Little;
        assert_eq!(&c.heartbeat(t)[..], &hex("01000000 80")[..]);
        c.heartbeat_time = true;
        assert_eq!(
            &c.heartbeat(t)[..],
            &hex("09000000 80 0000 57c0 7e68 1618")[..]
        );
        c.byte_order = ByteOrder::Big;
        assert_eq!(
            &c.heartbeat(t)[..],
            &hex("00000009 80 1816 687e c057 0000")[..]
        );
    }

    #[test]
    fn classification_vectors() {
        let c = cfg(ByteOrder::Big, 2, 2);
        for v in [
            "00000001 80",
            "00000001 ff",
            "00000001 8f",
            "00000009 80 00000000000000ff",
        ] {
            assert_eq!(c.classify(&hex(v)), FrameKind::Heartbeat, "{v}");
            assert_eq!(c.check_message(&hex(v)), Ok(FrameKind::Heartbeat), "{v}");
        }
        let c5 = hex("00000001 00");
        assert_eq!(c.classify(&c5), FrameKind::Data);
        assert_eq!(c.unpack(&c5), Err(FrameError::TooShort));
        let c6 = hex("00000007 7f 0001 0002 6869");
        let m = c.unpack(&c6).unwrap();
        assert_eq!(
            (m.header, m.route, m.seq, m.payload),
            (0x7f, 1, 2, &b"hi"[..])
        );
        // WS-only message checks C7–C10 and C11.
        assert_eq!(
            c.check_message(&hex("00000002 80")),
            Err(FrameError::Invalid)
        );
        assert_eq!(c.check_message(&hex("000000")), Err(FrameError::Invalid));
        assert_eq!(
            c.check_message(&hex("01000000 80")),
            Err(FrameError::Invalid)
        );
        assert_eq!(
            c.check_message(&hex("00000005 00 0001 0001 68")),
            Err(FrameError::Invalid)
        );
        assert_eq!(c.check_message(&[]), Ok(FrameKind::Empty));
        assert_eq!(c.classify(&hex("00000000")), FrameKind::Empty);
    }

    #[test]
    fn decoder_splits_coalesced_and_partial_frames() {
        let c = cfg(ByteOrder::Big, 2, 2);
        let d = FrameDecoder::new(&c, c.strict_inbound_cap());
        let two = hex("00000007 00 0001 0002 6869 00000001 80");
        assert_eq!(d.next_frame_len(&two), Ok(Some(11)));
        assert_eq!(d.next_frame_len(&two[11..]), Ok(Some(5)));
        for cut in 0..11 {
            assert_eq!(d.next_frame_len(&two[..cut]), Ok(None), "cut {cut}");
        }
        assert_eq!(d.next_frame_len(&hex("00000000")), Ok(Some(4)));
    }

    #[test]
    fn inbound_cap() {
        let c = cfg(ByteOrder::Big, 2, 2);
        assert_eq!(c.strict_inbound_cap(), 5005);
        let d = FrameDecoder::new(&c, c.strict_inbound_cap());
        assert_eq!(d.next_frame_len(&hex("0000138d")), Ok(None));
        assert_eq!(
            d.next_frame_len(&hex("0000138e")),
            Err(FrameError::TooLarge {
                size: 5006,
                cap: 5005
            })
        );
        assert!(d.next_frame_len(&hex("ffffffff")).is_err());
        let tiny = PacketConfig {
            route_bytes: 1,
            seq_bytes: 0,
            buffer_bytes: 0,
            ..c
        };
        assert_eq!(tiny.strict_inbound_cap(), 9);
        let d = FrameDecoder::new(&tiny, tiny.strict_inbound_cap());
        assert_eq!(
            d.next_frame_len(&hex("00000009 80 0000000000000000")),
            Ok(Some(13))
        );
    }
}
