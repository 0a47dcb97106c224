//! The push command (8): a node writes one client packet to one connection or user.
//! Owns its request layout `kind(1) | target(8) | message(rest)` and vectors (v2.5.3 bit too).

use bytes::{BufMut, Bytes, BytesMut};

use super::{put_head, Cmd, LinkError, Reader, Request};

/// Push request: `kind | target | message` (23 + m bytes).
pub fn put_push(out: &mut BytesMut, header: u8, seq: u64, kind: u8, target: i64, message: &[u8]) {
    put_head(out, header, Cmd::Push, seq, 9 + message.len());
    out.put_u8(kind);
    out.put_i64(target);
    out.put_slice(message);
}

pub(super) fn decode(r: &mut Reader<'_>, frame: &Bytes) -> Result<Request, LinkError> {
    Ok(Request::Push {
        kind: r.u8()?,
        target: r.i64()?,
        message: frame.slice(r.rest()),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testing::*;
    use super::super::*;

    pub(in crate::drpc) fn request_vectors() -> Vec<ReqVec> {
        vec![
            req(
                "push",
                "00000027 00 08 0000000000000000 02 0000000000000003 <P>",
                0,
                0,
                Request::Push {
                    kind: 2,
                    target: 3,
                    message: p(),
                },
                23,
            ),
            // v2.5.3+: header bit 0x40 "disconnect after push".
            req(
                "v2.5 push disconnect",
                "00000027 40 08 0000000000000000 01 0000000000000009 <P>",
                0x40,
                0,
                Request::Push {
                    kind: 1,
                    target: 9,
                    message: p(),
                },
                23,
            ),
        ]
    }

    #[test]
    fn encoder_exact_hex() {
        let pk = hex(P);
        assert_frames(vec![
            (
                "00000027 00 08 0000000000000000 02 0000000000000003 <P>",
                encode(|o| put_push(o, 0, 0, 2, 3, &pk)),
            ),
            // v2.5.3+ disconnect bit.
            (
                "00000027 40 08 0000000000000000 01 0000000000000009 <P>",
                encode(|o| put_push(o, HEADER_DISCONNECT, 0, 1, 9, &pk)),
            ),
        ]);
    }
}
