//! The isonline command (6): a node asks whether a connection or user is connected here.
//! Owns its request `kind(1) | target(8)`, its `code | online(1)` answer, and their vectors.

use bytes::{BufMut, BytesMut};

use super::{bad_length, put_head, Cmd, LinkError, Reader, Request, Response};

/// Isonline request: `kind | target` (23 bytes).
pub fn put_isonline(out: &mut BytesMut, seq: u64, kind: u8, target: i64) {
    put_head(out, 0, Cmd::IsOnline, seq, 9);
    out.put_u8(kind);
    out.put_i64(target);
}

/// Isonline response: `code | online(1)`, always 17 bytes.
pub fn put_isonline_res(out: &mut BytesMut, seq: u64, code: u16, online: bool) {
    put_head(out, 0, Cmd::IsOnline, seq, 3);
    out.put_u16(code);
    out.put_u8(online as u8);
}

pub(super) fn decode(r: &mut Reader<'_>) -> Result<Request, LinkError> {
    Ok(Request::IsOnline {
        kind: r.u8()?,
        target: r.i64()?,
    })
}

/// The answer body: exactly 17 bytes; online is true only for the byte 1.
pub(super) fn read_res(r: &mut Reader<'_>, res: &mut Response) -> Result<(), LinkError> {
    if r.buf.len() != 17 {
        return Err(bad_length(r));
    }
    res.code = Some(r.u16()?);
    res.online = Some(r.u8()? == 1);
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testing::*;
    use super::super::*;

    pub(in crate::drpc) fn request_vectors() -> Vec<ReqVec> {
        vec![req(
            "isonline",
            "00000013 00 06 0000000000000001 02 0000000000000001",
            0,
            1,
            Request::IsOnline { kind: 2, target: 1 },
            23,
        )]
    }

    pub(in crate::drpc) fn response_vectors() -> Vec<ResVec> {
        vec![ResVec {
            hex: "0000000d 00 06 0000000000000001 0000 01",
            cmd: Cmd::IsOnline,
            res: Response {
                online: Some(true),
                ..code(1, 0)
            },
            put: |o| put_isonline_res(o, 1, 0, true),
        }]
    }

    #[test]
    fn encoder_exact_hex() {
        assert_frames(vec![(
            "00000013 00 06 0000000000000001 02 0000000000000001",
            encode(|o| put_isonline(o, 1, 2, 1)),
        )]);
    }

    #[test]
    fn response_encoder_variants() {
        assert_eq!(
            encode(|o| put_isonline_res(o, 1, 2, false)),
            hex("0000000d 00 06 0000000000000001 0002 00")
        );
    }

    #[test]
    fn online_is_true_only_for_byte_1() {
        for (byte, online) in [(0u8, false), (1, true), (2, false), (0xff, false)] {
            let mut r = hex("0000000d 00 06 0000000000000001 0000 01");
            r[16] = byte;
            assert_eq!(
                decode_response(Cmd::IsOnline, &r).unwrap().online,
                Some(online)
            );
        }
    }
}
