//! The subscribe (12) and unsubscribe (13) commands: a node adds targets to, or removes them
//! from, a channel. Owns their layout `kind | count(2) | targets | channel`, limits, vectors.

use bytes::{BufMut, Bytes, BytesMut};

use super::{check_targets, put_head, put_targets, Cmd, LinkError, Reader, Request};

fn put_sub(
    out: &mut BytesMut,
    cmd: Cmd,
    seq: u64,
    kind: u8,
    targets: &[i64],
    channel: &[u8],
) -> Result<(), LinkError> {
    check_targets(targets)?;
    put_head(out, 0, cmd, seq, 3 + 8 * targets.len() + channel.len());
    out.put_u8(kind);
    put_targets(out, targets);
    out.put_slice(channel);
    Ok(())
}

/// Subscribe request: `kind | count(2) | targets | channel` (17 + 8n + c bytes).
pub fn put_subscribe(
    out: &mut BytesMut,
    seq: u64,
    kind: u8,
    targets: &[i64],
    channel: &[u8],
) -> Result<(), LinkError> {
    put_sub(out, Cmd::Subscribe, seq, kind, targets, channel)
}

/// Unsubscribe request: same layout as subscribe.
pub fn put_unsubscribe(
    out: &mut BytesMut,
    seq: u64,
    kind: u8,
    targets: &[i64],
    channel: &[u8],
) -> Result<(), LinkError> {
    put_sub(out, Cmd::Unsubscribe, seq, kind, targets, channel)
}

pub(super) fn decode_subscribe(r: &mut Reader<'_>, frame: &Bytes) -> Result<Request, LinkError> {
    Ok(Request::Subscribe {
        kind: r.u8()?,
        targets: r.targets()?,
        channel: frame.slice(r.rest()),
    })
}

pub(super) fn decode_unsubscribe(r: &mut Reader<'_>, frame: &Bytes) -> Result<Request, LinkError> {
    Ok(Request::Unsubscribe {
        kind: r.u8()?,
        targets: r.targets()?,
        channel: frame.slice(r.rest()),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testing::*;
    use super::super::*;

    pub(in crate::drpc) fn request_vectors() -> Vec<ReqVec> {
        vec![
            req(
                "subscribe",
                "00000019 00 0c 0000000000000009 02 0001 0000000000000001 726f6f6d",
                0,
                9,
                Request::Subscribe {
                    kind: 2,
                    targets: vec![1],
                    channel: b("room"),
                },
                25,
            ),
            req(
                "unsubscribe",
                "00000021 00 0d 000000000000000a 01 0002 0000000000000005 0000000000000006 726f6f6d",
                0,
                10,
                Request::Unsubscribe {
                    kind: 1,
                    targets: vec![5, 6],
                    channel: b("room"),
                },
                33,
            ),
        ]
    }

    pub(in crate::drpc) fn response_vectors() -> Vec<ResVec> {
        vec![ResVec {
            hex: "0000000c 00 0c 0000000000000009 0000",
            cmd: Cmd::Subscribe,
            res: code(9, 0),
            put: |o| put_code(o, Cmd::Subscribe, 9, 0),
        }]
    }

    #[test]
    fn encoder_exact_hex() {
        assert_frames(vec![
            (
                "00000019 00 0c 0000000000000009 02 0001 0000000000000001 726f6f6d",
                encode(|o| put_subscribe(o, 9, 2, &[1], b"room").unwrap()),
            ),
            (
                "00000021 00 0d 000000000000000a 01 0002 0000000000000005 0000000000000006 726f6f6d",
                encode(|o| put_unsubscribe(o, 10, 1, &[5, 6], b"room").unwrap()),
            ),
        ]);
    }

    #[test]
    fn empty_channel_and_no_targets_are_fine() {
        assert_eq!(
            decode(Bytes::from(hex("0000000d 00 0c 0000000000000001 01 0000"))),
            Ok(Frame::Request {
                header: 0,
                seq: 1,
                req: Request::Subscribe {
                    kind: 1,
                    targets: vec![],
                    channel: Bytes::new()
                }
            })
        );
    }

    #[test]
    fn encoder_limits_leave_the_buffer_untouched() {
        let mut out = BytesMut::from(&b"keep"[..]);
        let many = vec![1i64; 65536];
        assert_eq!(
            put_subscribe(&mut out, 1, 1, &many, b"c"),
            Err(LinkError::TooManyTargets { count: 65536 })
        );
        assert_eq!(
            put_unsubscribe(&mut out, 1, 1, &many, b"c"),
            Err(LinkError::TooManyTargets { count: 65536 })
        );
        assert_eq!(&out[..], b"keep");
    }
}
