//! The broadcast command (10): a node writes one client packet to every connection or user.
//! Owns its request layout `kind(1) | message(rest)` and vectors; the answer is `code | [total]`.

use bytes::{BufMut, Bytes, BytesMut};

use super::{put_head, Cmd, LinkError, Reader, Request};

/// Broadcast request: `kind | message` (15 + m bytes).
pub fn put_broadcast(out: &mut BytesMut, header: u8, seq: u64, kind: u8, message: &[u8]) {
    put_head(out, header, Cmd::Broadcast, seq, 1 + message.len());
    out.put_u8(kind);
    out.put_slice(message);
}

pub(super) fn decode(r: &mut Reader<'_>, frame: &Bytes) -> Result<Request, LinkError> {
    Ok(Request::Broadcast {
        kind: r.u8()?,
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
                "broadcast",
                "0000001f 00 0a 0000000000000000 01 <P>",
                0,
                0,
                Request::Broadcast {
                    kind: 1,
                    message: p(),
                },
                15,
            ),
            req(
                "v2.5 broadcast disconnect",
                "0000001f 40 0a 0000000000000000 02 <P>",
                0x40,
                0,
                Request::Broadcast {
                    kind: 2,
                    message: p(),
                },
                15,
            ),
        ]
    }

    pub(in crate::drpc) fn response_vectors() -> Vec<ResVec> {
        vec![ResVec {
            hex: "00000014 00 0a 0000000000000001 0000 0000000000000014",
            cmd: Cmd::Broadcast,
            res: Response {
                total: Some(20),
                ..code(1, 0)
            },
            put: |o| put_total_res(o, Cmd::Broadcast, 1, 0, 20),
        }]
    }

    #[test]
    fn encoder_exact_hex() {
        let pk = hex(P);
        assert_frames(vec![
            (
                "0000001f 00 0a 0000000000000000 01 <P>",
                encode(|o| put_broadcast(o, 0, 0, 1, &pk)),
            ),
            // v2.5.3+ disconnect bit.
            (
                "0000001f 40 0a 0000000000000000 02 <P>",
                encode(|o| put_broadcast(o, HEADER_DISCONNECT, 0, 2, &pk)),
            ),
        ]);
    }
}
