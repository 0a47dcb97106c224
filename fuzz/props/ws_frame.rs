//! The server-side WebSocket frame decoder and encoders (`gatehouse::connection::ws_frame`).
//!
//! Input: `cap(1) | cuts(1) | client bytes...`, and the same bytes read as a structure
//! (messages to frame) for the round trip.
//!
//! Properties:
//! * decoding is independent of how the bytes arrive (one slice, pieces, byte by byte) and of a
//!   hand-off between reads (`export` / `import` into a fresh decoder): same events, same error;
//! * every step consumes at least one byte and never more than it was given; an error ends the
//!   connection; a binary message is never above the cap; a ping at most 125 bytes;
//! * round trip: masked client frames built from arbitrary messages (binary, fragmented binary,
//!   text, ping, pong, close with a valid code) decode to exactly those events;
//! * the server encoders' frames (binary, pong, close), masked as a client would, decode back to
//!   their payload / code.

use arbitrary::{Arbitrary, Unstructured};
use gatehouse::connection::ws_frame::{
    encode_binary, encode_close, encode_pong, frame_len, Decoded, Decoder, Event, FrameError,
    MAX_CONTROL_PAYLOAD,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Close(Option<u16>),
}

fn own(e: Event<'_>) -> Got {
    match e {
        Event::Binary(b) => Got::Binary(b.into_owned()),
        Event::Ping(p) => Got::Ping(p.to_vec()),
        Event::Close(c) => Got::Close(c),
    }
}

/// Feeds `input` in pieces of the sizes `cuts` cycles through (0 = all that is left), as the
/// connection does; with `handoff`, the decoder is exported and re-imported at every read.
fn run(cap: usize, input: &[u8], cuts: &[usize], handoff: bool) -> (Vec<Got>, Option<FrameError>) {
    let mut d = Decoder::new(cap);
    let mut buf: Vec<u8> = Vec::new();
    let mut got = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    loop {
        // Decode everything the buffer holds.
        let mut off = 0;
        loop {
            let before = buf.len() - off;
            match d.decode(&mut buf[off..]) {
                Ok(Decoded::Incomplete) => break,
                Ok(Decoded::Consumed { used, event }) => {
                    assert!(used > 0 && used <= before, "used {used} of {before}");
                    if let Some(e) = event {
                        let e = own(e);
                        match &e {
                            Got::Binary(b) => assert!(b.len() <= cap),
                            Got::Ping(p) => assert!(p.len() <= MAX_CONTROL_PAYLOAD),
                            Got::Close(_) => {}
                        }
                        let close = matches!(e, Got::Close(_));
                        got.push(e);
                        if close {
                            return (got, None);
                        }
                    }
                    off += used;
                }
                Err(e) => return (got, Some(e)),
            }
        }
        buf.drain(..off);
        if pos == input.len() {
            return (got, None);
        }
        if handoff {
            d = Decoder::import(cap, d.export());
        }
        let step = match cuts[i % cuts.len()] {
            0 => input.len() - pos,
            n => n.min(input.len() - pos),
        };
        i += 1;
        buf.extend_from_slice(&input[pos..pos + step]);
        pos += step;
    }
}

/// One masked client frame.
fn client_frame(b0: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(b0);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// A server frame (unmasked, as the encoders write it) turned into the client frame a peer
/// would send with the same header: mask bit set, key inserted, payload masked.
fn mask_server_frame(frame: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let hlen = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let mut out = frame[..hlen].to_vec();
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    out.extend(
        frame[hlen..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4]),
    );
    out
}

#[derive(Debug, Arbitrary)]
enum Msg<'a> {
    Binary(&'a [u8]),
    /// A binary message in fragments of these sizes (the rest in the last one).
    Fragmented(&'a [u8], Vec<u8>),
    Text(&'a [u8], u8),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    Close(Option<u16>, String),
}

fn valid_close(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

fn round_trip(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let cap = 4096usize;
    let msgs: Vec<Msg<'_>> = Vec::arbitrary(u)?;
    let mut wire = Vec::new();
    let mut want = Vec::new();
    for m in msgs {
        let mask = <[u8; 4]>::arbitrary(u)?;
        match m {
            Msg::Binary(p) => {
                let p = &p[..p.len().min(cap)];
                client_frame(0x82, p, mask, &mut wire);
                want.push(Got::Binary(p.to_vec()));
            }
            Msg::Fragmented(p, sizes) => {
                let p = &p[..p.len().min(cap)];
                let mut rest = p;
                let mut first = true;
                for s in sizes {
                    let n = (s as usize).min(rest.len());
                    let op = if first { 0x2 } else { 0x0 };
                    client_frame(op, &rest[..n], mask, &mut wire);
                    rest = &rest[n..];
                    first = false;
                }
                client_frame(if first { 0x82 } else { 0x80 }, rest, mask, &mut wire);
                want.push(Got::Binary(p.to_vec()));
            }
            Msg::Text(p, parts) => {
                // Text is skipped whatever it holds, fragmented or not.
                let half = p.len() / 2;
                if parts & 1 == 0 {
                    client_frame(0x81, p, mask, &mut wire);
                } else {
                    client_frame(0x01, &p[..half], mask, &mut wire);
                    client_frame(0x80, &p[half..], mask, &mut wire);
                }
            }
            Msg::Ping(p) => {
                let p = &p[..p.len().min(MAX_CONTROL_PAYLOAD)];
                client_frame(0x89, p, mask, &mut wire);
                want.push(Got::Ping(p.to_vec()));
            }
            Msg::Pong(p) => {
                let p = &p[..p.len().min(MAX_CONTROL_PAYLOAD)];
                client_frame(0x8a, p, mask, &mut wire);
            }
            Msg::Close(code, reason) => {
                let code = code.filter(|c| valid_close(*c));
                // The encoder cuts the reason to 123 bytes: keep to whole characters.
                let mut reason = reason.as_str();
                while reason.len() > MAX_CONTROL_PAYLOAD - 2 {
                    let mut end = reason.len() - 1;
                    while !reason.is_char_boundary(end) {
                        end -= 1;
                    }
                    reason = &reason[..end];
                }
                let mut server = Vec::new();
                encode_close(code, reason, &mut server);
                wire.extend_from_slice(&mask_server_frame(&server, mask));
                want.push(Got::Close(code));
                break;
            }
        }
    }
    let cuts = [usize::from(u8::arbitrary(u)?) + 1];
    assert_eq!(run(cap, &wire, &[0], false), (want.clone(), None));
    assert_eq!(run(cap, &wire, &cuts, true), (want, None));

    // The server's own frames, masked, decode back to what was encoded.
    let payload = <&[u8]>::arbitrary(u)?;
    let mask = <[u8; 4]>::arbitrary(u)?;
    let mut server = Vec::new();
    encode_binary(payload, &mut server);
    assert_eq!(server.len(), frame_len(payload.len()));
    let client = mask_server_frame(&server, mask);
    let (got, err) = run(payload.len(), &client, &[0], false);
    assert_eq!((got, err), (vec![Got::Binary(payload.to_vec())], None));
    let mut pong = Vec::new();
    encode_pong(payload, &mut pong);
    let n = payload.len().min(MAX_CONTROL_PAYLOAD);
    assert_eq!(pong.len(), frame_len(n));
    // A pong decodes to no event: the decoder consumes it whole.
    let mut client = mask_server_frame(&pong, mask);
    let len = client.len();
    assert_eq!(
        Decoder::new(0).decode(&mut client),
        Ok(Decoded::Consumed {
            used: len,
            event: None
        })
    );
    Ok(())
}

/// The target's properties over one input (the libFuzzer entry and `tests/fuzz_seeds.rs`).
pub fn check_input(data: &[u8]) {
    let [cap_byte, cut_byte, input @ ..] = data else {
        return;
    };
    let cap = [0usize, 1, 125, 126, 300, 5009, 65536, 1 << 20][*cap_byte as usize & 7];
    let whole = run(cap, input, &[0], false);
    let cuts: Vec<usize> = [1, 2, 5, 9, 3, 14, 130]
        .iter()
        .map(|n| n + (*cut_byte as usize >> 3))
        .collect();
    assert_eq!(
        whole,
        run(cap, input, &cuts, *cut_byte & 1 == 1),
        "depends on reads"
    );
    if input.len() <= 512 {
        assert_eq!(whole, run(cap, input, &[1], true), "byte by byte differs");
    }
    if let Some(e) = &whole.1 {
        // The Close to send is a well-formed server frame.
        let mut close = Vec::new();
        e.encode_close(&mut close);
        assert_eq!(close[0], 0x88);
        assert_eq!(close[1] as usize, close.len() - 2);
        assert!(close.len() - 2 <= MAX_CONTROL_PAYLOAD);
    }

    let _ = round_trip(&mut Unstructured::new(data));
}
