//! The publish command (11): a node writes one client packet to a channel's subscribers.
//! Owns its request `chanLen | channel | message`, both answer layouts (v2.4.1, v2.5.5+), vectors.

use bytes::{BufMut, Bytes, BytesMut};

use super::{bad_length, put_head, put_total_res, Cmd, LinkError, Reader, Request, Response};

/// Publish request: `chanLen(1) | channel | message` (15 + c + m bytes).
/// A channel over 255 bytes is refused (`out` untouched), as due nodes refuse it.
pub fn put_publish(
    out: &mut BytesMut,
    header: u8,
    seq: u64,
    channel: &[u8],
    message: &[u8],
) -> Result<(), LinkError> {
    let clen = u8::try_from(channel.len())
        .map_err(|_| LinkError::ChannelTooLong { len: channel.len() })?;
    put_head(
        out,
        header,
        Cmd::Publish,
        seq,
        1 + channel.len() + message.len(),
    );
    out.put_u8(clen);
    out.put_slice(channel);
    out.put_slice(message);
    Ok(())
}

/// v2.4.1 publish response: `total(8)`, 22 bytes, **no code**. A v2.5.5+ node cannot decode it.
pub fn put_publish_res_v24(out: &mut BytesMut, seq: u64, total: u64) {
    put_head(out, 0, Cmd::Publish, seq, 8);
    out.put_u64(total);
}

/// v2.5.5+ publish response: `code | [total(8)]`, 24 bytes when code 0 and total ≠ 0, else the
/// well-formed 16 bytes (size 12, unlike the Go v2.5.5–v2.5.8 gate which says 20).
/// A v2.4.1 node cannot decode it.
pub fn put_publish_res_v25(out: &mut BytesMut, seq: u64, code: u16, total: u64) {
    put_total_res(out, Cmd::Publish, seq, code, total);
}

pub(super) fn decode(r: &mut Reader<'_>, frame: &Bytes) -> Result<Request, LinkError> {
    let clen = r.u8()? as usize;
    let channel = frame.slice(r.take(clen)?);
    Ok(Request::Publish {
        channel,
        message: frame.slice(r.rest()),
    })
}

/// The answer body: exactly 16 or 24 bytes is v2.5.5+ `code [total]`; any other length ≥ 22
/// is v2.4.1 `total` (Go reads it at offset 14 and ignores the rest).
pub(super) fn read_res(r: &mut Reader<'_>, res: &mut Response) -> Result<(), LinkError> {
    match r.buf.len() {
        16 => res.code = Some(r.u16()?),
        24 => {
            res.code = Some(r.u16()?);
            res.total = Some(r.u64()?);
        }
        len if len >= 22 => res.total = Some(r.u64()?),
        _ => return Err(bad_length(r)),
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testing::*;
    use super::super::*;

    pub(in crate::drpc) fn request_vectors() -> Vec<ReqVec> {
        vec![
            req(
                "publish",
                "00000026 00 0b 0000000000000000 07 6368616e6e656c <P>",
                0,
                0,
                Request::Publish {
                    channel: b("channel"),
                    message: p(),
                },
                22,
            ),
            req(
                "v2.5 publish disconnect",
                "00000023 40 0b 0000000000000000 04 726f6f6d <P>",
                0x40,
                0,
                Request::Publish {
                    channel: b("room"),
                    message: p(),
                },
                19,
            ),
        ]
    }

    pub(in crate::drpc) fn response_vectors() -> Vec<ResVec> {
        vec![
            ResVec {
                hex: "00000012 00 0b 0000000000000001 000000000000000a",
                cmd: Cmd::Publish,
                res: Response {
                    seq: 1,
                    total: Some(10),
                    ..Response::default()
                },
                put: |o| put_publish_res_v24(o, 1, 10),
            },
            // v2.5.5+ publish responses.
            ResVec {
                hex: "00000014 00 0b 0000000000000001 0000 000000000000000a",
                cmd: Cmd::Publish,
                res: Response {
                    total: Some(10),
                    ..code(1, 0)
                },
                put: |o| put_publish_res_v25(o, 1, 0, 10),
            },
            ResVec {
                hex: "0000000c 00 0b 0000000000000001 0000",
                cmd: Cmd::Publish,
                res: code(1, 0),
                put: |o| put_publish_res_v25(o, 1, 0, 0),
            },
        ]
    }

    #[test]
    fn encoder_exact_hex() {
        let pk = hex(P);
        assert_frames(vec![
            (
                "00000026 00 0b 0000000000000000 07 6368616e6e656c <P>",
                encode(|o| put_publish(o, 0, 0, b"channel", &pk).unwrap()),
            ),
            // v2.5.3+ disconnect bit.
            (
                "00000023 40 0b 0000000000000000 04 726f6f6d <P>",
                encode(|o| put_publish(o, HEADER_DISCONNECT, 0, b"room", &pk).unwrap()),
            ),
        ]);
    }

    #[test]
    fn go_v25_publish_size_bug_is_refused() {
        let bug = hex("00000014 00 0b 0000000000000001 0000");
        assert_eq!(
            decode_response(Cmd::Publish, &bug),
            Err(LinkError::SizeMismatch { size: 20, len: 16 })
        );
        // In a stream the bogus size swallows 8 bytes of the next frame.
        let mut stream = bug.clone();
        stream.extend_from_slice(&HEARTBEAT);
        assert_eq!(frame_len(&stream, 1 << 20), Ok(None));
    }

    #[test]
    fn response_encoder_variants() {
        // Totals are omitted for non-zero codes.
        assert_eq!(
            encode(|o| put_publish_res_v25(o, 3, 1, 10)),
            hex("0000000c 00 0b 0000000000000003 0001")
        );
        // v2.4.1 always carries the total, even 0.
        assert_eq!(
            encode(|o| put_publish_res_v24(o, 3, 0)),
            hex("00000012 00 0b 0000000000000003 0000000000000000")
        );
    }

    #[test]
    fn v24_response_of_any_length_from_22_reads_the_total() {
        // v2.4.1 publish: any length >= 22 (other than 24) reads the total at offset 14.
        let v24_long = hex("00000013 00 0b 0000000000000001 000000000000000a ff");
        assert_eq!(
            decode_response(Cmd::Publish, &v24_long),
            Ok(Response {
                seq: 1,
                total: Some(10),
                ..Response::default()
            })
        );
    }

    #[test]
    fn channel_length_running_past_the_frame() {
        assert_eq!(
            decode(Bytes::from(hex("0000000d 00 0b 0000000000000000 05 6162"))),
            Err(LinkError::Short { cmd: 11, len: 17 })
        );
    }

    #[test]
    fn encoder_limits_leave_the_buffer_untouched() {
        let mut out = BytesMut::from(&b"keep"[..]);
        assert_eq!(
            put_publish(&mut out, 0, 0, &[b'c'; 256], b"m"),
            Err(LinkError::ChannelTooLong { len: 256 })
        );
        assert_eq!(&out[..], b"keep");

        // The limit itself is fine.
        let mut out = BytesMut::new();
        put_publish(&mut out, 0, 0, &[b'c'; 255], b"").unwrap();
        assert_eq!(out.len(), 15 + 255);
    }
}
