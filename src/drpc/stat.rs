//! The stat command (5): a node asks how many connections (kind 1) or bound users (kind 2).
//! Owns its request layout `kind(1)` and vectors; the answer is the shared `code | [total]`.

use bytes::{BufMut, BytesMut};

use super::{put_head, Cmd, LinkError, Reader, Request};

/// Stat request: `kind` (15 bytes).
pub fn put_stat(out: &mut BytesMut, seq: u64, kind: u8) {
    put_head(out, 0, Cmd::Stat, seq, 1);
    out.put_u8(kind);
}

pub(super) fn decode(r: &mut Reader<'_>) -> Result<Request, LinkError> {
    Ok(Request::Stat { kind: r.u8()? })
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testing::*;
    use super::super::*;

    pub(in crate::drpc) fn request_vectors() -> Vec<ReqVec> {
        vec![req(
            "stat",
            "0000000b 00 05 0000000000000005 01",
            0,
            5,
            Request::Stat { kind: 1 },
            15,
        )]
    }

    pub(in crate::drpc) fn response_vectors() -> Vec<ResVec> {
        vec![
            ResVec {
                hex: "00000014 00 05 0000000000000005 0000 0000000000000014",
                cmd: Cmd::Stat,
                res: Response {
                    total: Some(20),
                    ..code(5, 0)
                },
                put: |o| put_total_res(o, Cmd::Stat, 5, 0, 20),
            },
            ResVec {
                hex: "0000000c 00 05 0000000000000005 0000",
                cmd: Cmd::Stat,
                res: code(5, 0),
                put: |o| put_total_res(o, Cmd::Stat, 5, 0, 0),
            },
        ]
    }

    #[test]
    fn encoder_exact_hex() {
        assert_frames(vec![(
            "0000000b 00 05 0000000000000005 01",
            encode(|o| put_stat(o, 5, 1)),
        )]);
    }
}
