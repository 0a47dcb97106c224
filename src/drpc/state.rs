//! The getstate (16) and setstate (17) commands: anyone reads or sets the instance state
//! (0 shut, 1 work, 2 busy, 3 hang). Owns their layouts, the `code | state(1)` answer, vectors.

use bytes::{BufMut, BytesMut};

use super::{bad_length, put_head, Cmd, LinkError, Reader, Request, Response};

/// Getstate request: no body (14 bytes).
pub fn put_getstate(out: &mut BytesMut, seq: u64) {
    put_head(out, 0, Cmd::GetState, seq, 0);
}

/// Setstate request: `state` (15 bytes).
pub fn put_setstate(out: &mut BytesMut, seq: u64, state: u8) {
    put_head(out, 0, Cmd::SetState, seq, 1);
    out.put_u8(state);
}

/// Getstate response: `code | state(1)`, always 17 bytes.
pub fn put_getstate_res(out: &mut BytesMut, seq: u64, code: u16, state: u8) {
    put_head(out, 0, Cmd::GetState, seq, 3);
    out.put_u16(code);
    out.put_u8(state);
}

pub(super) fn decode_setstate(r: &mut Reader<'_>) -> Result<Request, LinkError> {
    Ok(Request::SetState { state: r.u8()? })
}

/// The getstate answer body: exactly 17 bytes.
pub(super) fn read_getstate_res(r: &mut Reader<'_>, res: &mut Response) -> Result<(), LinkError> {
    if r.buf.len() != 17 {
        return Err(bad_length(r));
    }
    res.code = Some(r.u16()?);
    res.state = Some(r.u8()?);
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testing::*;
    use super::super::*;

    pub(in crate::drpc) fn request_vectors() -> Vec<ReqVec> {
        vec![
            req(
                "getstate",
                "0000000a 00 10 0000000000000003",
                0,
                3,
                Request::GetState,
                14,
            ),
            req(
                "setstate",
                "0000000b 00 11 0000000000000004 02",
                0,
                4,
                Request::SetState { state: 2 },
                15,
            ),
        ]
    }

    pub(in crate::drpc) fn response_vectors() -> Vec<ResVec> {
        vec![
            ResVec {
                hex: "0000000d 00 10 0000000000000003 0000 01",
                cmd: Cmd::GetState,
                res: Response {
                    state: Some(1),
                    ..code(3, 0)
                },
                put: |o| put_getstate_res(o, 3, 0, 1),
            },
            ResVec {
                hex: "0000000c 00 11 0000000000000004 0000",
                cmd: Cmd::SetState,
                res: code(4, 0),
                put: |o| put_code(o, Cmd::SetState, 4, 0),
            },
        ]
    }

    #[test]
    fn encoder_exact_hex() {
        assert_frames(vec![
            (
                "0000000a 00 10 0000000000000003",
                encode(|o| put_getstate(o, 3)),
            ),
            (
                "0000000b 00 11 0000000000000004 02",
                encode(|o| put_setstate(o, 4, 2)),
            ),
        ]);
    }

    #[test]
    fn response_encoder_variants() {
        assert_eq!(
            encode(|o| put_getstate_res(o, 1, 0, 3)),
            hex("0000000d 00 10 0000000000000001 0000 03")
        );
    }
}
