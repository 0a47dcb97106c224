//! Heartbeats: the one 5-byte frame (`size 1 | header 0x80`) every due version writes, and
//! how a frame is recognised as one (the header bit alone decides).

use bytes::BytesMut;

/// The one heartbeat frame every due version writes: size 1, header 0x80.
pub const HEARTBEAT: [u8; 5] = [0, 0, 0, 1, 0x80];

/// `00 00 00 01 80`.
pub fn put_heartbeat(out: &mut BytesMut) {
    out.extend_from_slice(&HEARTBEAT);
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn encoder_exact_hex() {
        assert_frames(vec![("00000001 80", encode(put_heartbeat))]);
    }

    #[test]
    fn heartbeat_is_decided_by_the_header_bit_alone() {
        for h in [
            "00000001 80",
            "00000003 80 0102",
            "00000001 c0",
            "00000001 ff",
            // A data-looking frame with the heartbeat bit is still a heartbeat.
            "0000001a 80 02 0000000000000001 0000000000000002 0000000000000003",
        ] {
            let f = hex(h);
            assert_eq!(decode(Bytes::from(f.clone())), Ok(Frame::Heartbeat), "{h}");
            assert_eq!(peek(&f), Ok(Head::Heartbeat), "{h}");
            assert_eq!(
                decode_response(Cmd::Bind, &f),
                Err(LinkError::UnexpectedHeartbeat)
            );
        }
    }
}
