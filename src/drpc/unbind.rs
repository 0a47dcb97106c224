//! The unbind command (3): a node unbinds a user ID (the connection stays open, anonymous).
//! Owns its request layout `uid(8)` and vectors; the answer is a code-only frame.

use bytes::{BufMut, BytesMut};

use super::{put_head, Cmd, LinkError, Reader, Request};

/// Unbind request: `uid` (22 bytes).
pub fn put_unbind(out: &mut BytesMut, seq: u64, uid: i64) {
    put_head(out, 0, Cmd::Unbind, seq, 8);
    out.put_i64(uid);
}

pub(super) fn decode(r: &mut Reader<'_>) -> Result<Request, LinkError> {
    Ok(Request::Unbind { uid: r.i64()? })
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testing::*;
    use super::super::*;

    pub(in crate::drpc) fn request_vectors() -> Vec<ReqVec> {
        vec![req(
            "unbind",
            "00000012 00 03 0000000000000002 0000000000000003",
            0,
            2,
            Request::Unbind { uid: 3 },
            22,
        )]
    }

    #[test]
    fn encoder_exact_hex() {
        assert_frames(vec![(
            "00000012 00 03 0000000000000002 0000000000000003",
            encode(|o| put_unbind(o, 2, 3)),
        )]);
    }
}
