//! The handshake command (1): who the dialler is (kind, instance ID), sent once with seq 1.
//! Owns its request layout `kind(1) | id(rest)` and vectors; the answer is a code-only frame.

use bytes::{BufMut, Bytes, BytesMut};

use super::{put_head, Cmd, LinkError, Reader, Request};

/// Handshake request: `kind(1) | id`. A gate always sends seq 1 and kind 1 with its registered
/// instance ID: nodes use that ID as the gate ID when they answer clients.
pub fn put_handshake(out: &mut BytesMut, seq: u64, kind: u8, id: &[u8]) {
    put_head(out, 0, Cmd::Handshake, seq, 1 + id.len());
    out.put_u8(kind);
    out.put_slice(id);
}

pub(super) fn decode(r: &mut Reader<'_>, frame: &Bytes) -> Result<Request, LinkError> {
    Ok(Request::Handshake {
        kind: r.u8()?,
        id: frame.slice(r.rest()),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testing::*;
    use super::super::*;

    pub(in crate::drpc) fn request_vectors() -> Vec<ReqVec> {
        vec![req(
            "handshake",
            "00000011 00 01 0000000000000001 01 676174652d31",
            0,
            1,
            Request::Handshake {
                kind: 1,
                id: b("gate-1"),
            },
            15,
        )]
    }

    pub(in crate::drpc) fn response_vectors() -> Vec<ResVec> {
        vec![ResVec {
            hex: "0000000c 00 01 0000000000000001 0000",
            cmd: Cmd::Handshake,
            res: code(1, 0),
            put: |o| put_code(o, Cmd::Handshake, 1, 0),
        }]
    }

    #[test]
    fn encoder_exact_hex() {
        assert_frames(vec![(
            "00000011 00 01 0000000000000001 01 676174652d31",
            encode(|o| put_handshake(o, 1, 1, b"gate-1")),
        )]);
    }

    #[test]
    fn empty_id_is_fine() {
        assert_eq!(
            decode(Bytes::from(hex("0000000b 00 01 0000000000000001 02"))),
            Ok(Frame::Request {
                header: 0,
                seq: 1,
                req: Request::Handshake {
                    kind: 2,
                    id: Bytes::new()
                }
            })
        );
    }
}
