//! RFC 6455 framing for the server side, sans IO: client frames are decoded from a byte slice,
//! server frames are encoded into a `Vec`. Owns the exact control-frame and protocol-error
//! behaviour of gorilla/websocket v1.5.3 as due v2.4.1 uses it (default handlers, no read limit,
//! no compression, no subprotocol).
//!
//! * Client frames must be masked; reserved bits, unknown opcodes, oversized or fragmented control
//!   frames and broken fragmentation are protocol errors, answered by Close(1002) carrying
//!   gorilla's error text (e.g. `bad MASK`), then the connection ends.
//! * Ping → Pong with the same payload; Pong is ignored; Close → Close with the same code and an
//!   **empty** reason (no code → empty Close), then the connection ends. A Close with a code
//!   gorilla considers invalid, or a reason that is not UTF-8, is a protocol error.
//! * Text messages are skipped as their bytes arrive: never buffered, never checked for UTF-8,
//!   never delivered (due ignores them, and gorilla does not validate text).
//! * Binary messages are handed on whole. Fragments are reassembled in a buffer that exists only
//!   while a message is incomplete; a message above the cap is refused with Close(1009) as soon
//!   as a frame header announces it, before any of its payload is buffered.
//!
//! The decoder needs a complete frame (header and payload) in the slice before it yields a
//! binary or control frame; the caller keeps the undecoded tail. Payloads are unmasked in place.

use bytes::BufMut;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Largest payload of a control frame (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Close code: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: protocol error.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code: message too big.
pub const CLOSE_TOO_BIG: u16 = 1009;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xa;
const FIN: u8 = 0x80;

/// Something the client said that the connection must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete binary message: borrowed from the input when it came in one frame, owned
    /// (the reassembly buffer, freed when dropped) when it was fragmented.
    Binary(Cow<'a, [u8]>),
    /// A ping: answer with [`encode_pong`] of the same payload.
    Ping(&'a [u8]),
    /// The client's Close with its status code, if any: answer with [`encode_close_reply`], then
    /// end the connection.
    Close(Option<u16>),
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// The slice does not hold enough of the next frame; call again with more bytes appended.
    Incomplete,
    /// `used` bytes of the slice were consumed (a frame, a text frame's header, or skipped text
    /// payload), producing `event` if it completed something to act on.
    Consumed {
        used: usize,
        event: Option<Event<'a>>,
    },
}

/// A client frame the connection cannot go on after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A protocol violation, with gorilla's text (`RSV1 set, bad MASK`, `bad opcode 3`, ...).
    Protocol(String),
    /// A binary message (or a frame length) larger than the cap.
    TooBig { size: u64, cap: usize },
}

impl FrameError {
    /// Appends the Close frame to send before closing: 1002 with the error text (truncated to
    /// fit a control frame, as gorilla does), or 1009 without a reason.
    pub fn encode_close(&self, out: &mut Vec<u8>) {
        match self {
            FrameError::Protocol(text) => encode_close(Some(CLOSE_PROTOCOL_ERROR), text, out),
            FrameError::TooBig { .. } => encode_close(Some(CLOSE_TOO_BIG), "", out),
        }
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Protocol(text) => write!(f, "websocket: {text}"),
            FrameError::TooBig { size, cap } => {
                write!(
                    f,
                    "websocket: message of {size} bytes exceeds inbound cap {cap}"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// The data message in progress, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    None,
    Binary,
    Text,
}

/// Per-connection decoding state: a few integers, plus the reassembly buffer of a fragmented
/// binary message while it is incomplete (no allocation otherwise).
#[derive(Debug)]
pub struct Decoder {
    /// Largest binary message accepted, in bytes.
    max_message: usize,
    message: Message,
    /// Text payload bytes still to skip.
    skip: u64,
    /// Fragments of the binary message in progress.
    partial: Vec<u8>,
}

/// A [`Decoder`]'s state between two reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecoderRecord {
    /// The data message in progress.
    pub message: Message,
    /// Text payload bytes still to skip.
    pub skip: u64,
    /// Fragments of the binary message in progress.
    pub partial: Vec<u8>,
}

impl Decoder {
    /// A decoder accepting binary messages of up to `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            message: Message::None,
            skip: 0,
            partial: Vec::new(),
        }
    }

    /// The cap this decoder was built with.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// The decoding state as plain data (for a connection hand-off).
    pub fn export(&self) -> DecoderRecord {
        DecoderRecord {
            message: self.message,
            skip: self.skip,
            partial: self.partial.clone(),
        }
    }

    /// A decoder in the state `record` describes, with cap `max_message`.
    pub fn import(max_message: usize, record: DecoderRecord) -> Self {
        Decoder {
            max_message,
            message: record.message,
            skip: record.skip,
            partial: record.partial,
        }
    }

    /// Bytes held for an incomplete fragmented message (capacity, not length).
    pub fn buffered(&self) -> usize {
        self.partial.capacity()
    }

    /// Decodes the next frame at the start of `buf`, unmasking its payload in place.
    pub fn decode<'a>(&mut self, buf: &'a mut [u8]) -> Result<Decoded<'a>, FrameError> {
        if self.skip > 0 {
            if buf.is_empty() {
                return Ok(Decoded::Incomplete);
            }
            let n = self.skip.min(buf.len() as u64);
            self.skip -= n;
            return Ok(Decoded::Consumed {
                used: n as usize,
                event: None,
            });
        }
        let [b0, b1, ..] = *buf else {
            return Ok(Decoded::Incomplete);
        };
        let fin = b0 & FIN != 0;
        let opcode = b0 & 0x0f;
        let len7 = b1 & 0x7f;
        self.check_first_bytes(b0, b1)?;

        let (len, mut header) = match len7 {
            126 => {
                let Some(b) = buf.get(2..4) else {
                    return Ok(Decoded::Incomplete);
                };
                (u16::from_be_bytes([b[0], b[1]]) as u64, 4)
            }
            127 => {
                let Some(b) = buf.get(2..10) else {
                    return Ok(Decoded::Incomplete);
                };
                (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10)
            }
            n => (n as u64, 2),
        };
        let text =
            opcode == OP_TEXT || (opcode == OP_CONTINUATION && self.message == Message::Text);
        if !text && opcode < OP_CLOSE {
            // A binary message: refuse it from the header alone, before buffering anything.
            let size = (self.partial.len() as u64).saturating_add(len);
            if size > self.max_message as u64 {
                return Err(FrameError::TooBig {
                    size,
                    cap: self.max_message,
                });
            }
        }
        let Some(mask) = buf.get(header..header + 4) else {
            return Ok(Decoded::Incomplete);
        };
        let mask: [u8; 4] = mask.try_into().expect("4 bytes");
        header += 4;

        if text {
            // Skipped as it arrives, whatever its size: nothing of a text message is kept.
            self.message = if fin { Message::None } else { Message::Text };
            let here = len.min((buf.len() - header) as u64);
            self.skip = len - here;
            return Ok(Decoded::Consumed {
                used: header + here as usize,
                event: None,
            });
        }
        // Bounded by the cap or by the control-frame limit.
        let len = len as usize;
        if buf.len() - header < len {
            return Ok(Decoded::Incomplete);
        }
        let used = header + len;
        let payload: &'a mut [u8] = &mut buf[header..used];
        unmask(payload, mask);
        let event = match opcode {
            OP_PING => Some(Event::Ping(payload)),
            OP_PONG => None,
            OP_CLOSE => Some(Event::Close(close_code(payload)?)),
            OP_BINARY if fin => Some(Event::Binary(Cow::Borrowed(payload))),
            OP_BINARY => {
                self.message = Message::Binary;
                self.partial = payload.to_vec();
                None
            }
            _ => {
                // A continuation of the binary message (checked in `check_first_bytes`).
                self.partial.extend_from_slice(payload);
                if fin {
                    self.message = Message::None;
                    Some(Event::Binary(Cow::Owned(std::mem::take(&mut self.partial))))
                } else {
                    None
                }
            }
        };
        Ok(Decoded::Consumed { used, event })
    }

    /// gorilla's checks on the first two bytes of a frame, with its messages joined by ", ".
    fn check_first_bytes(&self, b0: u8, b1: u8) -> Result<(), FrameError> {
        let fin = b0 & FIN != 0;
        let opcode = b0 & 0x0f;
        let len7 = b1 & 0x7f;
        let mut errors: Vec<Cow<'static, str>> = Vec::new();
        for (bit, text) in [(0x40, "RSV1 set"), (0x20, "RSV2 set"), (0x10, "RSV3 set")] {
            if b0 & bit != 0 {
                errors.push(text.into());
            }
        }
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if len7 as usize > MAX_CONTROL_PAYLOAD {
                    errors.push("len > 125 for control".into());
                }
                if !fin {
                    errors.push("FIN not set on control".into());
                }
            }
            OP_TEXT | OP_BINARY => {
                if self.message != Message::None {
                    errors.push("data before FIN".into());
                }
            }
            OP_CONTINUATION => {
                if self.message == Message::None {
                    errors.push("continuation after FIN".into());
                }
            }
            other => errors.push(format!("bad opcode {other}").into()),
        }
        if b1 & 0x80 == 0 {
            errors.push("bad MASK".into());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Protocol(errors.join(", ")))
        }
    }
}

/// The status code of a client Close payload (`None` without one), validated as gorilla does.
fn close_code(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    let [hi, lo, reason @ ..] = payload else {
        return Ok(None);
    };
    let code = u16::from_be_bytes([*hi, *lo]);
    if !valid_received_close_code(code) {
        return Err(FrameError::Protocol(format!("bad close code {code}")));
    }
    if std::str::from_utf8(reason).is_err() {
        return Err(FrameError::Protocol(
            "invalid utf8 payload in close frame".into(),
        ));
    }
    Ok(Some(code))
}

/// gorilla's `isValidReceivedCloseCode`.
fn valid_received_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

/// XORs `payload` with the masking key, eight bytes at a time.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().expect("8 bytes")) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    // The tail starts at a multiple of 8, so the key restarts at index 0.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Length of a server frame header for a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=0xffff => 4,
        _ => 10,
    }
}

/// Length of a whole server frame carrying `len` payload bytes.
pub fn frame_len(len: usize) -> usize {
    header_len(len) + len
}

/// Appends an unmasked FIN frame header.
fn encode_header(b0: u8, len: usize, out: &mut impl BufMut) {
    out.put_u8(b0);
    match len {
        0..=125 => out.put_u8(len as u8),
        126..=0xffff => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
}

/// Appends one binary message as a single unfragmented frame, as gorilla writes every message.
pub fn encode_binary(payload: &[u8], out: &mut impl BufMut) {
    encode_header(FIN | OP_BINARY, payload.len(), out);
    out.put_slice(payload);
}

/// Appends the Pong answering a Ping with `payload` (at most 125 bytes, as decoded).
pub fn encode_pong(payload: &[u8], out: &mut Vec<u8>) {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    encode_header(FIN | OP_PONG, payload.len(), out);
    out.extend_from_slice(payload);
}

/// Appends a Close frame: empty without a code, else the code and `reason`, cut to fit the 125
/// bytes of a control frame (gorilla cuts the same way).
pub fn encode_close(code: Option<u16>, reason: &str, out: &mut Vec<u8>) {
    let Some(code) = code else {
        encode_header(FIN | OP_CLOSE, 0, out);
        return;
    };
    let reason = &reason.as_bytes()[..reason.len().min(MAX_CONTROL_PAYLOAD - 2)];
    encode_header(FIN | OP_CLOSE, 2 + reason.len(), out);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
}

/// Appends gorilla's answer to a client Close: the same code with an empty reason (an empty
/// Close when the client sent no code).
pub fn encode_close_reply(code: Option<u16>, out: &mut Vec<u8>) {
    encode_close(code, "", out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const CAP: usize = 5009;

    /// A client frame: first byte `b0`, masked with `MASK` unless `masked` is false.
    fn frame(b0: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut f = vec![b0];
        let m = if masked { 0x80 } else { 0 };
        let len = payload.len();
        if len < 126 {
            f.push(m | len as u8);
        } else if len <= 0xffff {
            f.push(m | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(m | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if masked {
            f.extend_from_slice(&MASK);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        f
    }

    fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
        frame(b0, payload, true)
    }

    /// A header announcing `len` bytes (masked), without payload.
    fn header_only(b0: u8, len: u64) -> Vec<u8> {
        let mut f = vec![b0];
        if len < 126 {
            f.push(0x80 | len as u8);
        } else if len <= 0xffff {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&len.to_be_bytes());
        }
        f.extend_from_slice(&MASK);
        f
    }

    /// What a decoder makes of `input`, with owned events; stops at the first error.
    #[derive(Debug, PartialEq, Eq)]
    enum Got {
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Close(Option<u16>),
        Error(FrameError),
    }

    /// Decodes all of `input` (as one slice), returning events and the bytes left undecoded.
    fn run(d: &mut Decoder, input: &[u8]) -> (Vec<Got>, usize) {
        let mut buf = input.to_vec();
        let mut off = 0;
        let mut got = vec![];
        loop {
            match d.decode(&mut buf[off..]) {
                Ok(Decoded::Incomplete) => return (got, buf.len() - off),
                Ok(Decoded::Consumed { used, event }) => {
                    assert!(used > 0, "progress");
                    off += used;
                    match event {
                        None => {}
                        Some(Event::Binary(b)) => got.push(Got::Binary(b.into_owned())),
                        Some(Event::Ping(p)) => got.push(Got::Ping(p.to_vec())),
                        Some(Event::Close(c)) => got.push(Got::Close(c)),
                    }
                }
                Err(e) => {
                    got.push(Got::Error(e));
                    return (got, buf.len() - off);
                }
            }
        }
    }

    /// Decodes `input` fed in pieces of `step` bytes, keeping the undecoded tail between
    /// pieces as the driver does.
    fn run_fed(d: &mut Decoder, input: &[u8], step: usize) -> Vec<Got> {
        let mut tail: Vec<u8> = vec![];
        let mut got = vec![];
        for piece in input.chunks(step) {
            tail.extend_from_slice(piece);
            let (g, left) = run(d, &tail);
            let errored = matches!(g.last(), Some(Got::Error(_)));
            got.extend(g);
            if errored {
                return got;
            }
            tail.drain(..tail.len() - left);
        }
        assert!(tail.is_empty(), "undecoded: {tail:02x?}");
        got
    }

    fn proto(text: &str) -> Got {
        Got::Error(FrameError::Protocol(text.into()))
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + 3) as u8).collect()
    }

    // -- header parsing -----------------------------------------------------------------------

    #[test]
    fn lengths_7_16_64_bit() {
        let mut d = Decoder::new(1 << 20);
        for n in [0, 1, 125, 126, 127, 0xffff, 0x10000, 70_000] {
            let f = masked(0x82, &payload(n));
            let hdr = match n {
                0..=125 => 2,
                126..=0xffff => 4,
                _ => 10,
            };
            assert_eq!(f.len(), hdr + 4 + n, "{n}");
            assert_eq!(run(&mut d, &f), (vec![Got::Binary(payload(n))], 0), "{n}");
        }
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for n in [0, 5, 125, 126, 300, 0x10000] {
            let mut d = Decoder::new(1 << 20);
            let f = masked(0x82, &payload(n));
            let cuts = [0, 1, 2, 3, 4, 5, 9, 10, 13, f.len() / 2, f.len() - 1];
            for cut in cuts.into_iter().filter(|&c| c < f.len()) {
                let mut b = f[..cut].to_vec();
                assert_eq!(d.decode(&mut b), Ok(Decoded::Incomplete), "{n} cut {cut}");
            }
            assert_eq!(run(&mut d, &f).0, vec![Got::Binary(payload(n))]);
        }
    }

    #[test]
    fn byte_by_byte_and_odd_pieces() {
        let mut input = masked(0x82, &payload(300));
        input.extend(masked(0x89, b"ping"));
        input.extend(masked(0x02, &payload(10)));
        input.extend(masked(0x8a, b"pong"));
        input.extend(masked(0x80, &payload(130)));
        input.extend(masked(0x81, b"text is skipped"));
        input.extend(masked(0x82, &payload(0)));
        let mut whole = payload(10);
        whole.extend(payload(130));
        let want = vec![
            Got::Binary(payload(300)),
            Got::Ping(b"ping".to_vec()),
            Got::Binary(whole),
            Got::Binary(vec![]),
        ];
        for step in [1, 2, 3, 7, 64, 1000] {
            let mut d = Decoder::new(CAP);
            assert_eq!(run_fed(&mut d, &input, step), want, "step {step}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn frames_back_to_back_in_one_slice() {
        let mut d = Decoder::new(CAP);
        let mut input = masked(0x82, b"one");
        input.extend(masked(0x82, b"two"));
        input.extend(&masked(0x82, b"three")[..5]);
        let (got, left) = run(&mut d, &input);
        assert_eq!(
            got,
            vec![Got::Binary(b"one".to_vec()), Got::Binary(b"two".to_vec())]
        );
        assert_eq!(left, 5);
    }

    #[test]
    fn unmasking_matches_the_definition() {
        for n in 0..40 {
            for mask in [[0, 0, 0, 0], MASK, [0xff, 1, 0x80, 0x7f]] {
                let plain = payload(n);
                let mut b: Vec<u8> = plain
                    .iter()
                    .enumerate()
                    .map(|(i, x)| x ^ mask[i % 4])
                    .collect();
                unmask(&mut b, mask);
                assert_eq!(b, plain, "{n} {mask:?}");
            }
        }
    }

    #[test]
    fn payload_is_unmasked_in_place_and_borrowed() {
        let mut d = Decoder::new(CAP);
        let mut f = masked(0x82, b"hello");
        match d.decode(&mut f) {
            Ok(Decoded::Consumed {
                used: 11,
                event: Some(Event::Binary(Cow::Borrowed(b))),
            }) => assert_eq!(b, b"hello"),
            other => panic!("{other:?}"),
        }
        assert_eq!(&f[6..], b"hello");
    }

    // -- fragmentation -------------------------------------------------------------------------

    #[test]
    fn fragments_are_reassembled_and_the_buffer_freed() {
        let mut d = Decoder::new(CAP);
        let p = payload(5009);
        let (got, left) = run(&mut d, &masked(0x02, &p[..4096]));
        assert_eq!((got, left), (vec![], 0));
        assert!(d.buffered() >= 4096);
        let (got, _) = run(&mut d, &masked(0x00, &p[4096..5000]));
        assert_eq!(got, vec![]);
        let (got, _) = run(&mut d, &masked(0x80, &p[5000..]));
        assert_eq!(got, vec![Got::Binary(p)]);
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.message, Message::None);
    }

    #[test]
    fn reassembled_message_is_owned() {
        let mut d = Decoder::new(CAP);
        let mut a = masked(0x02, b"ab");
        assert!(matches!(
            d.decode(&mut a),
            Ok(Decoded::Consumed { event: None, .. })
        ));
        let mut b = masked(0x80, b"cd");
        match d.decode(&mut b) {
            Ok(Decoded::Consumed {
                event: Some(Event::Binary(Cow::Owned(v))),
                ..
            }) => assert_eq!(v, b"abcd"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn control_frames_interleave_with_fragments() {
        let mut d = Decoder::new(CAP);
        let mut input = masked(0x02, b"ab");
        input.extend(masked(0x89, b"p1"));
        input.extend(masked(0x00, b"cd"));
        input.extend(masked(0x8a, b"ignored pong"));
        input.extend(masked(0x89, b""));
        input.extend(masked(0x80, b"ef"));
        assert_eq!(
            run(&mut d, &input),
            (
                vec![
                    Got::Ping(b"p1".to_vec()),
                    Got::Ping(vec![]),
                    Got::Binary(b"abcdef".to_vec())
                ],
                0
            )
        );
        // A Close in the middle of a message is acted on at once.
        let mut d = Decoder::new(CAP);
        let mut input = masked(0x02, b"ab");
        input.extend(masked(0x88, &[0x03, 0xe8]));
        assert_eq!(run(&mut d, &input).0, vec![Got::Close(Some(1000))]);
    }

    #[test]
    fn empty_fragments_make_an_empty_message() {
        let mut d = Decoder::new(CAP);
        let mut input = masked(0x02, b"");
        input.extend(masked(0x00, b""));
        input.extend(masked(0x80, b""));
        assert_eq!(run(&mut d, &input), (vec![Got::Binary(vec![])], 0));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn broken_fragmentation_is_a_protocol_error() {
        // Continuation with no message started.
        let mut d = Decoder::new(CAP);
        assert_eq!(
            run(&mut d, &masked(0x80, b"x")).0,
            vec![proto("continuation after FIN")]
        );
        let mut d = Decoder::new(CAP);
        assert_eq!(
            run(&mut d, &masked(0x00, b"x")).0,
            vec![proto("continuation after FIN")]
        );
        // A new data message before the previous one finished.
        for b0 in [0x82, 0x02, 0x81, 0x01] {
            let mut d = Decoder::new(CAP);
            let mut input = masked(0x02, b"ab");
            input.extend(masked(b0, b"cd"));
            assert_eq!(run(&mut d, &input).0, vec![proto("data before FIN")]);
            let mut d = Decoder::new(CAP);
            let mut input = masked(0x01, b"ab");
            input.extend(masked(b0, b"cd"));
            assert_eq!(run(&mut d, &input).0, vec![proto("data before FIN")]);
        }
    }

    // -- control frames ------------------------------------------------------------------------

    #[test]
    fn ping_pong() {
        let mut d = Decoder::new(CAP);
        for p in [vec![], b"hello-ping".to_vec(), payload(125)] {
            assert_eq!(run(&mut d, &masked(0x89, &p)), (vec![Got::Ping(p)], 0));
        }
        assert_eq!(run(&mut d, &masked(0x8a, b"x")), (vec![], 0));
        assert_eq!(run(&mut d, &masked(0x8a, &payload(125))), (vec![], 0));
    }

    #[test]
    fn close_codes() {
        let close = |p: &[u8]| run(&mut Decoder::new(CAP), &masked(0x88, p)).0;
        assert_eq!(close(b""), vec![Got::Close(None)]);
        // One byte: no code, as gorilla reads it.
        assert_eq!(close(&[0x03]), vec![Got::Close(None)]);
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1011, 1013, 3000, 4001, 4999,
        ] {
            assert_eq!(
                close(&code.to_be_bytes()),
                vec![Got::Close(Some(code))],
                "{code}"
            );
        }
        let mut with_reason = 4001u16.to_be_bytes().to_vec();
        with_reason.extend_from_slice("bye ✓".as_bytes());
        assert_eq!(close(&with_reason), vec![Got::Close(Some(4001))]);
        for code in [0u16, 999, 1004, 1005, 1006, 1014, 1015, 2999, 5000, 65535] {
            assert_eq!(
                close(&code.to_be_bytes()),
                vec![proto(&format!("bad close code {code}"))],
                "{code}"
            );
        }
        assert_eq!(
            close(&[0x03, 0xe8, 0xff, 0xfe]),
            vec![proto("invalid utf8 payload in close frame")]
        );
    }

    #[test]
    fn control_frame_rules() {
        let one = |f: &[u8]| run(&mut Decoder::new(1 << 20), f).0;
        for op in [0x88, 0x89, 0x8a] {
            assert_eq!(
                one(&masked(op, &payload(126))),
                vec![proto("len > 125 for control")]
            );
            assert_eq!(
                one(&masked(op & 0x0f, b"x")),
                vec![proto("FIN not set on control")]
            );
            assert_eq!(
                one(&masked(op & 0x0f, &payload(200))),
                vec![proto("len > 125 for control, FIN not set on control")]
            );
        }
        // Refused from the first two bytes: no need to wait for a claimed 64-bit length.
        let mut b = vec![0x89, 0xff];
        assert_eq!(
            Decoder::new(CAP).decode(&mut b),
            Err(FrameError::Protocol("len > 125 for control".into()))
        );
    }

    // -- protocol errors -----------------------------------------------------------------------

    #[test]
    fn unmasked_frames_are_refused_from_two_bytes() {
        for b0 in [0x82, 0x81, 0x89, 0x8a, 0x88] {
            let f = frame(b0, b"hello", false);
            assert_eq!(run(&mut Decoder::new(CAP), &f).0, vec![proto("bad MASK")]);
            let mut two = f[..2].to_vec();
            assert_eq!(
                Decoder::new(CAP).decode(&mut two),
                Err(FrameError::Protocol("bad MASK".into()))
            );
        }
    }

    #[test]
    fn reserved_bits_and_opcodes() {
        let one = |f: &[u8]| run(&mut Decoder::new(CAP), f).0;
        assert_eq!(one(&masked(0xc2, b"x")), vec![proto("RSV1 set")]);
        assert_eq!(one(&masked(0xa2, b"x")), vec![proto("RSV2 set")]);
        assert_eq!(one(&masked(0x92, b"x")), vec![proto("RSV3 set")]);
        for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
            assert_eq!(
                one(&masked(0x80 | op, b"x")),
                vec![proto(&format!("bad opcode {op}"))]
            );
        }
        // gorilla reports every problem of the first two bytes, in its order.
        assert_eq!(
            one(&frame(0xf3, b"x", false)),
            vec![proto(
                "RSV1 set, RSV2 set, RSV3 set, bad opcode 3, bad MASK"
            )]
        );
    }

    #[test]
    fn error_close_frames() {
        let mut out = vec![];
        FrameError::Protocol("bad MASK".into()).encode_close(&mut out);
        assert_eq!(out, [&[0x88, 0x0a, 0x03, 0xea][..], b"bad MASK"].concat());
        let mut out = vec![];
        FrameError::TooBig { size: 1, cap: 0 }.encode_close(&mut out);
        assert_eq!(out, [0x88, 0x02, 0x03, 0xf1]);
        let mut out = vec![];
        FrameError::Protocol("x".repeat(300)).encode_close(&mut out);
        assert_eq!(out.len(), 2 + 125);
        assert_eq!(out[..4], [0x88, 125, 0x03, 0xea]);
    }

    // -- the inbound cap -----------------------------------------------------------------------

    #[test]
    fn cap_is_inclusive() {
        let mut d = Decoder::new(CAP);
        assert_eq!(
            run(&mut d, &masked(0x82, &payload(CAP))).0,
            vec![Got::Binary(payload(CAP))]
        );
        assert_eq!(
            run(&mut d, &masked(0x82, &payload(CAP + 1))).0,
            vec![Got::Error(FrameError::TooBig {
                size: CAP as u64 + 1,
                cap: CAP
            })]
        );
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        for len in [CAP as u64 + 1, 0xffff, 1 << 40, u64::MAX] {
            let h = header_only(0x82, len);
            // Without the masking key yet: the length is enough.
            let upto = if len < 126 {
                2
            } else if len <= 0xffff {
                4
            } else {
                10
            };
            let mut b = h[..upto].to_vec();
            let mut d = Decoder::new(CAP);
            assert_eq!(
                d.decode(&mut b),
                Err(FrameError::TooBig {
                    size: len,
                    cap: CAP
                }),
                "{len}"
            );
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn oversize_across_fragments() {
        let mut d = Decoder::new(CAP);
        let p = payload(CAP + 1);
        assert_eq!(run(&mut d, &masked(0x02, &p[..2000])).0, vec![]);
        assert_eq!(run(&mut d, &masked(0x00, &p[2000..4000])).0, vec![]);
        // The header of the frame that crosses the cap is enough.
        let mut h = header_only(0x80, (CAP + 1 - 4000) as u64)[..4].to_vec();
        assert_eq!(
            d.decode(&mut h),
            Err(FrameError::TooBig {
                size: CAP as u64 + 1,
                cap: CAP
            })
        );
        assert!(d.buffered() < CAP);
        // Exactly the cap in fragments passes.
        let mut d = Decoder::new(CAP);
        let mut input = masked(0x02, &p[..2000]);
        input.extend(masked(0x80, &p[2000..CAP]));
        assert_eq!(run(&mut d, &input).0, vec![Got::Binary(p[..CAP].to_vec())]);
    }

    // -- text ----------------------------------------------------------------------------------

    #[test]
    fn text_is_skipped_without_utf8_check() {
        let mut d = Decoder::new(CAP);
        let mut input = masked(0x81, b"hello");
        input.extend(masked(0x81, &[0xff, 0xfe, 0x00, 0x00, 0x00, 0x01, 0x80]));
        input.extend(masked(0x81, b""));
        input.extend(masked(0x82, b"bin"));
        assert_eq!(run(&mut d, &input), (vec![Got::Binary(b"bin".to_vec())], 0));
    }

    #[test]
    fn fragmented_text_is_skipped_with_interleaved_control() {
        for step in [1, 5, 1000] {
            let mut d = Decoder::new(CAP);
            let mut input = masked(0x01, &[0xc3]);
            input.extend(masked(0x89, b"p"));
            input.extend(masked(0x00, &payload(200)));
            input.extend(masked(0x80, &[0x28]));
            input.extend(masked(0x82, b"after"));
            assert_eq!(
                run_fed(&mut d, &input, step),
                vec![Got::Ping(b"p".to_vec()), Got::Binary(b"after".to_vec())],
                "step {step}"
            );
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn text_has_no_cap_and_is_never_buffered() {
        let mut d = Decoder::new(CAP);
        // A text frame announcing 2^40 bytes: its bytes are consumed as they come.
        let mut b = header_only(0x81, 1 << 40);
        b.extend_from_slice(&[0u8; 100]);
        assert_eq!(
            d.decode(&mut b),
            Ok(Decoded::Consumed {
                used: 114,
                event: None
            })
        );
        let mut more = vec![0u8; 64 * 1024];
        assert_eq!(
            d.decode(&mut more),
            Ok(Decoded::Consumed {
                used: 64 * 1024,
                event: None
            })
        );
        assert_eq!(d.decode(&mut []), Ok(Decoded::Incomplete));
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.skip, (1 << 40) - 100 - 64 * 1024);
        // Bigger than the cap and split: skipped, then framing resumes.
        let mut d = Decoder::new(16);
        let mut input = masked(0x81, &payload(1000));
        input.extend(masked(0x82, b"ok"));
        assert_eq!(
            run_fed(&mut d, &input, 7),
            vec![Got::Binary(b"ok".to_vec())]
        );
    }

    // -- encoding ------------------------------------------------------------------------------

    #[test]
    fn binary_frames_are_single_unmasked_fin_frames() {
        for (n, head) in [
            (0usize, vec![0x82, 0x00]),
            (5, vec![0x82, 0x05]),
            (125, vec![0x82, 0x7d]),
            (126, vec![0x82, 0x7e, 0x00, 0x7e]),
            (5009, vec![0x82, 0x7e, 0x13, 0x91]),
            (0xffff, vec![0x82, 0x7e, 0xff, 0xff]),
            (0x10000, vec![0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let p = payload(n);
            let mut out = vec![];
            encode_binary(&p, &mut out);
            assert_eq!(out[..head.len()], head[..], "{n}");
            assert_eq!(out[head.len()..], p[..], "{n}");
            assert_eq!(out.len(), frame_len(n));
            assert_eq!(header_len(n), head.len());
        }
    }

    #[test]
    fn control_encodings() {
        let mut out = vec![];
        encode_pong(b"abc", &mut out);
        assert_eq!(out, [0x8a, 0x03, b'a', b'b', b'c']);
        let mut out = vec![];
        encode_pong(b"", &mut out);
        assert_eq!(out, [0x8a, 0x00]);
        let mut out = vec![];
        encode_close_reply(Some(4001), &mut out);
        assert_eq!(out, [0x88, 0x02, 0x0f, 0xa1]);
        let mut out = vec![];
        encode_close_reply(None, &mut out);
        assert_eq!(out, [0x88, 0x00]);
        let mut out = vec![];
        encode_close(Some(CLOSE_NORMAL), "", &mut out);
        assert_eq!(out, [0x88, 0x02, 0x03, 0xe8]);
        // Frames queue in order in one buffer.
        let mut out = vec![];
        encode_pong(b"p", &mut out);
        encode_close_reply(Some(1000), &mut out);
        assert_eq!(out, [0x8a, 0x01, b'p', 0x88, 0x02, 0x03, 0xe8]);
    }

    #[test]
    fn state_is_small() {
        assert!(std::mem::size_of::<Decoder>() <= 48);
        assert_eq!(Decoder::new(CAP).buffered(), 0);
    }
}
