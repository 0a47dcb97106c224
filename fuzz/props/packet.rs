//! The client packet codec and the TCP stream splitter (`gatehouse::packet`).
//!
//! Input: `config(1) | cuts(1) | stream...`. The config byte picks byte order, route and seq
//! widths and bufferBytes; the cuts byte how the stream is delivered in pieces.
//!
//! Properties:
//! * splitting is independent of how the stream is cut into reads (same frames, same error);
//! * every frame's size field is its length - 4 and within the cap; a size above the cap is
//!   refused as soon as the 4 size bytes are in;
//! * `check_message` agrees with `classify` on every frame split from a stream;
//! * `unpack` refuses exactly the frames shorter than the smallest data frame; a data frame that
//!   unpacks, with header 0 and a payload within bufferBytes, re-encodes to the same bytes;
//! * structure-aware: an encoded (route, seq, payload) unpacks to the same values (seq 0 without
//!   a seq field), is one frame for the splitter, and the encoder's errors are the right ones;
//!   a heartbeat is classified as one.

use arbitrary::{Arbitrary, Unstructured};
use gatehouse::packet::{
    ByteOrder, EncodeError, FrameDecoder, FrameError, FrameKind, PacketConfig,
};

fn config(b: u8) -> PacketConfig {
    PacketConfig {
        byte_order: if b & 1 == 0 {
            ByteOrder::Big
        } else {
            ByteOrder::Little
        },
        route_bytes: [1, 2, 4, 2][(b >> 1) as usize & 3],
        seq_bytes: [0, 1, 2, 4][(b >> 3) as usize & 3],
        buffer_bytes: [0, 2, 16, 5000][(b >> 5) as usize & 3],
        heartbeat_time: b & 0x80 != 0,
    }
}

/// Splits `stream` read in pieces of the sizes `cuts` cycles through (0 = everything left),
/// the way a connection does: append, take every complete frame, keep the tail.
fn split(d: &FrameDecoder, stream: &[u8], cuts: &[usize]) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut frames = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    loop {
        loop {
            match d.next_frame_len(&buf) {
                Ok(Some(n)) => {
                    assert!(n >= 4 && n <= buf.len());
                    frames.push(buf.drain(..n).collect());
                }
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
        if pos == stream.len() {
            return (frames, None);
        }
        let step = match cuts[i % cuts.len()] {
            0 => stream.len() - pos,
            n => n.min(stream.len() - pos),
        };
        i += 1;
        buf.extend_from_slice(&stream[pos..pos + step]);
        pos += step;
    }
}

/// The target's properties over one input (the libFuzzer entry and `tests/fuzz_seeds.rs`).
pub fn check_input(data: &[u8]) {
    let [cfg_byte, cut_byte, stream @ ..] = data else {
        return;
    };
    let cfg = config(*cfg_byte);
    let cap = cfg.strict_inbound_cap();
    let d = FrameDecoder::new(&cfg, cap);

    let whole = split(&d, stream, &[0]);
    let cuts: Vec<usize> = [1, 3, 4, 7, 2, 5, 11, 64]
        .iter()
        .map(|n| n * (1 + (*cut_byte as usize & 3)) + (*cut_byte as usize >> 2))
        .collect();
    let pieces = split(&d, stream, &cuts);
    assert_eq!(whole, pieces, "splitting depends on read boundaries");
    let bytewise = split(&d, stream, &[1]);
    assert_eq!(whole, bytewise, "splitting byte by byte differs");

    for frame in &whole.0 {
        let size = cfg.read_size(frame);
        assert_eq!(size as usize, frame.len() - 4);
        assert!(size <= cap);
        let kind = cfg.classify(frame);
        if frame.len() == 4 {
            assert_eq!(kind, FrameKind::Empty);
        } else {
            assert_eq!(cfg.check_message(frame), Ok(kind));
        }
        if kind != FrameKind::Data {
            continue;
        }
        match cfg.unpack(frame) {
            Err(FrameError::TooShort) => assert!(frame.len() < cfg.min_data_frame()),
            Err(e) => panic!("split frame refused by unpack: {e}"),
            Ok(m) => {
                assert!(frame.len() >= cfg.min_data_frame());
                assert_eq!(m.header, frame[4]);
                if cfg.seq_bytes == 0 {
                    assert_eq!(m.seq, 0);
                }
                if m.header == 0 && m.payload.len() <= cfg.buffer_bytes as usize {
                    let again = cfg.encode(m.route, m.seq, m.payload).expect("re-encode");
                    assert_eq!(&again[..], &frame[..], "decode/encode not canonical");
                }
            }
        }
    }
    if let Some(FrameError::TooLarge { size, cap: c }) = whole.1 {
        assert!(size > c && c == cap);
    } else {
        assert!(whole.1.is_none(), "splitter error other than TooLarge");
    }

    // Structure-aware: encode values taken from the same bytes, then decode them.
    let mut u = Unstructured::new(stream);
    let (Ok(route), Ok(seq), Ok(payload), Ok(now)) = (
        i32::arbitrary(&mut u),
        i32::arbitrary(&mut u),
        <&[u8]>::arbitrary(&mut u),
        i64::arbitrary(&mut u),
    ) else {
        return;
    };
    let fits = |v: i32, w: u8| match w {
        1 => i8::try_from(v).is_ok(),
        2 => i16::try_from(v).is_ok(),
        _ => true,
    };
    match cfg.encode(route, seq, payload) {
        Ok(frame) => {
            assert!(fits(route, cfg.route_bytes));
            assert!(cfg.seq_bytes == 0 || fits(seq, cfg.seq_bytes));
            assert!(payload.len() <= cfg.buffer_bytes as usize);
            assert_eq!(d.next_frame_len(&frame), Ok(Some(frame.len())));
            assert_eq!(d.next_frame_len(&frame[..frame.len() - 1]), Ok(None));
            assert_eq!(cfg.check_message(&frame), Ok(FrameKind::Data));
            let m = cfg.unpack(&frame).expect("unpack what was encoded");
            let want_seq = if cfg.seq_bytes == 0 { 0 } else { seq };
            assert_eq!(
                (m.header, m.route, m.seq, m.payload),
                (0, route, want_seq, payload)
            );
        }
        Err(EncodeError::RouteOverflow) => assert!(!fits(route, cfg.route_bytes)),
        Err(EncodeError::SeqOverflow) => {
            assert!(fits(route, cfg.route_bytes));
            assert!(cfg.seq_bytes > 0 && !fits(seq, cfg.seq_bytes));
        }
        Err(EncodeError::MessageTooLarge) => {
            assert!(payload.len() > cfg.buffer_bytes as usize)
        }
    }
    let hb = cfg.heartbeat(now);
    assert_eq!(cfg.check_message(&hb), Ok(FrameKind::Heartbeat));
    assert_eq!(d.next_frame_len(&hb), Ok(Some(hb.len())));
    assert_eq!(hb.len(), if cfg.heartbeat_time { 13 } else { 5 });
}
