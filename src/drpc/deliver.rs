//! The deliver command (15): the gate hands a node one client packet with its cid and uid.
//! Owns its layout `cid(8) | uid(8) | message(rest)`, the split-head encoder, and vectors.

use bytes::{BufMut, Bytes, BytesMut};

use super::{put_head, Cmd, LinkError, Reader, Request};

/// Deliver request: `cid | uid | message` (30 + m bytes). The gate sends it with seq 0.
pub fn put_deliver(out: &mut BytesMut, seq: u64, cid: i64, uid: i64, message: &[u8]) {
    put_deliver_head(out, seq, cid, uid, message.len());
    out.put_slice(message);
}

/// The first 30 bytes of a deliver frame whose `message_len`-byte message the caller writes
/// itself, e.g. as a separate [`Bytes`] in a vectored write, to skip copying large packets.
pub fn put_deliver_head(out: &mut BytesMut, seq: u64, cid: i64, uid: i64, message_len: usize) {
    put_head(out, 0, Cmd::Deliver, seq, 16 + message_len);
    out.put_i64(cid);
    out.put_i64(uid);
}

pub(super) fn decode(r: &mut Reader<'_>, frame: &Bytes) -> Result<Request, LinkError> {
    Ok(Request::Deliver {
        cid: r.i64()?,
        uid: r.i64()?,
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
                "deliver",
                "0000002e 00 0f 0000000000000000 0000000000000002 0000000000000003 <P>",
                0,
                0,
                Request::Deliver {
                    cid: 2,
                    uid: 3,
                    message: p(),
                },
                30,
            ),
            req(
                "deliver uid 0",
                "0000002e 00 0f 0000000000000000 0000000000000002 0000000000000000 <P>",
                0,
                0,
                Request::Deliver {
                    cid: 2,
                    uid: 0,
                    message: p(),
                },
                30,
            ),
        ]
    }

    #[test]
    fn encoder_exact_hex() {
        let pk = hex(P);
        assert_frames(vec![
            (
                "0000002e 00 0f 0000000000000000 0000000000000002 0000000000000003 <P>",
                encode(|o| put_deliver(o, 0, 2, 3, &pk)),
            ),
            (
                "0000002e 00 0f 0000000000000000 0000000000000002 0000000000000000 <P>",
                encode(|o| put_deliver(o, 0, 2, 0, &pk)),
            ),
        ]);
    }

    #[test]
    fn head_plus_separate_message_is_the_same_frame() {
        let mut head = BytesMut::new();
        put_deliver_head(&mut head, 0, 2, 3, 20);
        head.extend_from_slice(&hex(P));
        assert_eq!(head.to_vec(), encode(|o| put_deliver(o, 0, 2, 3, &hex(P))));
    }
}
