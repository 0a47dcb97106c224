//! The multicast command (9): a node writes one client packet to a list of targets.
//! Owns its request `kind(1) | count(2) | targets | message(rest)`, its limits and vectors.

use bytes::{BufMut, Bytes, BytesMut};

use super::{check_targets, put_head, put_targets, Cmd, LinkError, Reader, Request};

/// Multicast request: `kind | count(2) | targets | message` (17 + 8n + m bytes).
/// More than 65535 targets is refused (`out` untouched): the count would wrap.
pub fn put_multicast(
    out: &mut BytesMut,
    header: u8,
    seq: u64,
    kind: u8,
    targets: &[i64],
    message: &[u8],
) -> Result<(), LinkError> {
    check_targets(targets)?;
    put_head(
        out,
        header,
        Cmd::Multicast,
        seq,
        3 + 8 * targets.len() + message.len(),
    );
    out.put_u8(kind);
    put_targets(out, targets);
    out.put_slice(message);
    Ok(())
}

pub(super) fn decode(r: &mut Reader<'_>, frame: &Bytes) -> Result<Request, LinkError> {
    Ok(Request::Multicast {
        kind: r.u8()?,
        targets: r.targets()?,
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
                "multicast",
                "00000039 00 09 0000000000000000 02 0003 0000000000000001 0000000000000002 0000000000000003 <P>",
                0,
                0,
                Request::Multicast {
                    kind: 2,
                    targets: vec![1, 2, 3],
                    message: p(),
                },
                41,
            ),
            req(
                "v2.5 multicast disconnect ack",
                "00000031 40 09 0000000000000006 02 0002 0000000000000001 0000000000000002 <P>",
                0x40,
                6,
                Request::Multicast {
                    kind: 2,
                    targets: vec![1, 2],
                    message: p(),
                },
                33,
            ),
        ]
    }

    pub(in crate::drpc) fn response_vectors() -> Vec<ResVec> {
        vec![ResVec {
            hex: "00000014 00 09 0000000000000004 0000 0000000000000003",
            cmd: Cmd::Multicast,
            res: Response {
                total: Some(3),
                ..code(4, 0)
            },
            put: |o| put_total_res(o, Cmd::Multicast, 4, 0, 3),
        }]
    }

    #[test]
    fn encoder_exact_hex() {
        let pk = hex(P);
        assert_frames(vec![
            (
                "00000039 00 09 0000000000000000 02 0003 0000000000000001 0000000000000002 0000000000000003 <P>",
                encode(|o| put_multicast(o, 0, 0, 2, &[1, 2, 3], &pk).unwrap()),
            ),
            // v2.5.3+ disconnect bit.
            (
                "00000031 40 09 0000000000000006 02 0002 0000000000000001 0000000000000002 <P>",
                encode(|o| put_multicast(o, HEADER_DISCONNECT, 6, 2, &[1, 2], &pk).unwrap()),
            ),
        ]);
    }

    #[test]
    fn response_encoder_variants() {
        // Totals are omitted for non-zero codes.
        assert_eq!(
            encode(|o| put_total_res(o, Cmd::Multicast, 2, 2, 5)),
            hex("0000000c 00 09 0000000000000002 0002")
        );
    }

    #[test]
    fn huge_count_without_targets_fails_before_allocating() {
        assert_eq!(
            decode(Bytes::from(hex("0000000d 00 09 0000000000000000 02 ffff"))),
            Err(LinkError::Short { cmd: 9, len: 17 })
        );
    }

    #[test]
    fn encoder_limits_leave_the_buffer_untouched() {
        let mut out = BytesMut::from(&b"keep"[..]);
        let many = vec![1i64; 65536];
        assert_eq!(
            put_multicast(&mut out, 0, 0, 1, &many, b"m"),
            Err(LinkError::TooManyTargets { count: 65536 })
        );
        assert_eq!(&out[..], b"keep");

        // The limit itself is fine.
        let mut out = BytesMut::new();
        put_multicast(&mut out, 0, 0, 1, &many[..65535], b"m").unwrap();
        assert_eq!(out.len(), 17 + 8 * 65535 + 1);
        let Ok(Frame::Request {
            req: Request::Multicast {
                targets, message, ..
            },
            ..
        }) = decode(out.freeze())
        else {
            panic!("multicast")
        };
        assert_eq!((targets.len(), &message[..]), (65535, &b"m"[..]));
    }
}
