//! The bind command (2): a node binds a user ID to a client connection ID.
//! Owns its request layout `cid(8) | uid(8)` and vectors; the answer is a code-only frame.

use bytes::{BufMut, BytesMut};

use super::{put_head, Cmd, LinkError, Reader, Request};

/// Bind request: `cid | uid` (30 bytes).
pub fn put_bind(out: &mut BytesMut, seq: u64, cid: i64, uid: i64) {
    put_head(out, 0, Cmd::Bind, seq, 16);
    out.put_i64(cid);
    out.put_i64(uid);
}

pub(super) fn decode(r: &mut Reader<'_>) -> Result<Request, LinkError> {
    Ok(Request::Bind {
        cid: r.i64()?,
        uid: r.i64()?,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testing::*;
    use super::super::*;

    pub(in crate::drpc) fn request_vectors() -> Vec<ReqVec> {
        vec![req(
            "bind",
            "0000001a 00 02 0000000000000001 0000000000000002 0000000000000003",
            0,
            1,
            Request::Bind { cid: 2, uid: 3 },
            30,
        )]
    }

    pub(in crate::drpc) fn response_vectors() -> Vec<ResVec> {
        vec![
            ResVec {
                hex: "0000000c 00 02 0000000000000001 0000",
                cmd: Cmd::Bind,
                res: code(1, 0),
                put: |o| put_code(o, Cmd::Bind, 1, 0),
            },
            ResVec {
                hex: "0000000c 00 02 0000000000000007 0001",
                cmd: Cmd::Bind,
                res: code(7, 1),
                put: |o| put_code(o, Cmd::Bind, 7, 1),
            },
        ]
    }

    #[test]
    fn encoder_exact_hex() {
        assert_frames(vec![(
            "0000001a 00 02 0000000000000001 0000000000000002 0000000000000003",
            encode(|o| put_bind(o, 1, 2, 3)),
        )]);
    }

    #[test]
    fn fixed_layout_ignores_trailing_bytes() {
        assert_eq!(
            decode(Bytes::from(hex(
                "0000001c 00 02 0000000000000001 0000000000000002 0000000000000003 abcd"
            ))),
            Ok(Frame::Request {
                header: 0,
                seq: 1,
                req: Request::Bind { cid: 2, uid: 3 }
            })
        );
    }
}
