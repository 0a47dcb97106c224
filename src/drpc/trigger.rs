//! The trigger command (14): the gate tells a node a client connected, bound or disconnected.
//! Owns its layout `event(1) | cid(8) | [uid(8)]` (uid omitted when 0) and vectors.

use bytes::{BufMut, BytesMut};

use super::{put_head, Cmd, LinkError, Reader, Request};

/// Trigger request: `event | cid | [uid]`; the uid is omitted when 0 (23 or 31 bytes), exactly
/// as the Go gate does. The gate sends it with seq 0.
pub fn put_trigger(out: &mut BytesMut, seq: u64, event: u8, cid: i64, uid: i64) {
    let body = if uid == 0 { 9 } else { 17 };
    put_head(out, 0, Cmd::Trigger, seq, body);
    out.put_u8(event);
    out.put_i64(cid);
    if uid != 0 {
        out.put_i64(uid);
    }
}

pub(super) fn decode(r: &mut Reader<'_>) -> Result<Request, LinkError> {
    let event = r.u8()?;
    let cid = r.i64()?;
    // Absent (23-byte frame) or whole: a partial uid is a torn frame, not "uid 0".
    let uid = if r.remaining() == 0 { 0 } else { r.i64()? };
    Ok(Request::Trigger { event, cid, uid })
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testing::*;
    use super::super::*;

    pub(in crate::drpc) fn request_vectors() -> Vec<ReqVec> {
        vec![
            req(
                "trigger without uid",
                "00000013 00 0e 0000000000000000 01 0000000000000001",
                0,
                0,
                Request::Trigger {
                    event: 1,
                    cid: 1,
                    uid: 0,
                },
                23,
            ),
            req(
                "trigger with uid",
                "0000001b 00 0e 0000000000000000 03 0000000000000001 0000000000000003",
                0,
                0,
                Request::Trigger {
                    event: 3,
                    cid: 1,
                    uid: 3,
                },
                23,
            ),
        ]
    }

    #[test]
    fn encoder_exact_hex() {
        assert_frames(vec![
            (
                "00000013 00 0e 0000000000000000 01 0000000000000001",
                encode(|o| put_trigger(o, 0, 1, 1, 0)),
            ),
            (
                "0000001b 00 0e 0000000000000000 03 0000000000000001 0000000000000003",
                encode(|o| put_trigger(o, 0, 3, 1, 3)),
            ),
        ]);
    }
}
