//! Test support shared by the drpc command modules: hex vectors, the §10.2 client packet, and
//! the vector record types each command module fills with its own frames.

use bytes::{Bytes, BytesMut};

use super::{Cmd, Request, Response};

/// The client packet of §10.2: route 1, seq 2, body "hello world" (20 bytes).
pub const P: &str = "00000010 00 0001 0002 68656c6c6f20776f726c64";

/// Hex with spaces allowed and `<P>` standing for the client packet.
pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s
        .replace("<P>", P)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    assert!(s.len() % 2 == 0, "odd hex: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// The client packet as bytes.
pub fn p() -> Bytes {
    Bytes::from(hex(P))
}

pub fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// `part` points into `frame`'s memory: the decoder sliced instead of copying.
pub fn within(frame: &Bytes, part: &Bytes) -> bool {
    let f = frame.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    part.is_empty() || (p >= f && p + part.len() <= f + frame.len())
}

/// What an encoder appends to an empty buffer.
pub fn encode(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut out = BytesMut::new();
    f(&mut out);
    out.to_vec()
}

/// Asserts each encoded frame equals its hex and that its size field is its length - 4.
pub fn assert_frames(cases: Vec<(&str, Vec<u8>)>) {
    for (want, got) in cases {
        assert_eq!(got, hex(want), "{want}");
        // Every size field = total length - 4.
        assert_eq!(
            u32::from_be_bytes(got[..4].try_into().unwrap()) as usize,
            got.len() - 4
        );
    }
}

/// One request vector of §10.2.
pub struct ReqVec {
    pub name: &'static str,
    pub hex: &'static str,
    pub header: u8,
    pub seq: u64,
    pub req: Request,
    /// Smallest frame length that still holds every required field.
    pub min: usize,
}

/// A [`ReqVec`] from its fields in declaration order.
pub fn req(
    name: &'static str,
    hex: &'static str,
    header: u8,
    seq: u64,
    req: Request,
    min: usize,
) -> ReqVec {
    ReqVec {
        name,
        hex,
        header,
        seq,
        req,
        min,
    }
}

/// One response vector of §10.2 with the encoder that must produce it.
pub struct ResVec {
    pub hex: &'static str,
    pub cmd: Cmd,
    pub res: Response,
    pub put: fn(&mut BytesMut),
}

/// A response carrying only `seq` and `code`.
pub fn code(seq: u64, code: u16) -> Response {
    Response {
        seq,
        code: Some(code),
        ..Response::default()
    }
}

/// Copy of `frame[..len]` with its size field rewritten to `len - 4`.
pub fn cut(frame: &[u8], len: usize) -> Vec<u8> {
    let mut c = frame[..len].to_vec();
    if len >= 4 {
        c[..4].copy_from_slice(&((len - 4) as u32).to_be_bytes());
    }
    c
}
