//! The disconnect command (7): a node closes a client connection, forced or graceful.
//! Owns its request layout `kind(1) | target(8) | force(1)` and vectors; the answer is code-only.

use bytes::{BufMut, BytesMut};

use super::{put_head, Cmd, LinkError, Reader, Request};

/// Disconnect request: `kind | target | force` (24 bytes).
pub fn put_disconnect(out: &mut BytesMut, seq: u64, kind: u8, target: i64, force: bool) {
    put_head(out, 0, Cmd::Disconnect, seq, 10);
    out.put_u8(kind);
    out.put_i64(target);
    out.put_u8(force as u8);
}

pub(super) fn decode(r: &mut Reader<'_>) -> Result<Request, LinkError> {
    Ok(Request::Disconnect {
        kind: r.u8()?,
        target: r.i64()?,
        force: r.u8()? == 1,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testing::*;
    use super::super::*;

    pub(in crate::drpc) fn request_vectors() -> Vec<ReqVec> {
        vec![req(
            "disconnect",
            "00000014 00 07 0000000000000000 02 0000000000000003 01",
            0,
            0,
            Request::Disconnect {
                kind: 2,
                target: 3,
                force: true,
            },
            24,
        )]
    }

    #[test]
    fn encoder_exact_hex() {
        assert_frames(vec![(
            "00000014 00 07 0000000000000000 02 0000000000000003 01",
            encode(|o| put_disconnect(o, 0, 2, 3, true)),
        )]);
    }

    #[test]
    fn force_is_true_only_for_byte_1() {
        for (byte, force) in [(0u8, false), (1, true), (2, false), (0xff, false)] {
            let mut f = hex("00000014 00 07 0000000000000000 02 0000000000000003 01");
            f[23] = byte;
            let Ok(Frame::Request {
                req: Request::Disconnect { force: got, .. },
                ..
            }) = decode(Bytes::from(f))
            else {
                panic!("disconnect")
            };
            assert_eq!(got, force, "force byte {byte}");
        }
    }
}
