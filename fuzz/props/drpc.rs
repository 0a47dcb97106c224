//! The gate↔node link protocol (`gatehouse::drpc`): stream splitting, the request decoder, the
//! response decoders, and the encoders.
//!
//! Input: `max(1) | cuts(1) | stream...`; the same bytes also drive arbitrary requests and
//! responses for the encode → decode round trip.
//!
//! Properties:
//! * `frame_len` splitting is independent of read boundaries; a size of 0 or above the cap is
//!   refused as soon as the size field is in;
//! * `decode` and `peek` agree (heartbeat, header, command, seq) on every split frame;
//! * a decoded request re-encodes (`put_request`) to a frame no longer than the original that
//!   decodes to the same request (the codec drops trailing bytes and normalises force/uid);
//! * `decode_response` for every command never panics, and its seq is the frame's;
//! * structure-aware: any request encoded with `put_request` is one frame and decodes to itself;
//!   every response encoder's frame decodes to the values encoded.

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use gatehouse::drpc::{
    self, decode, decode_response, frame_len, peek, put_code, put_getip_res, put_getstate_res,
    put_isonline_res, put_publish_res_v24, put_publish_res_v25, put_request, put_total_res, Cmd,
    Frame, Head, LinkError, Request, HEADER_HEARTBEAT,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn split(stream: &[u8], max: u32, cuts: &[usize]) -> (Vec<Vec<u8>>, Option<LinkError>) {
    let mut frames = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    loop {
        loop {
            match frame_len(&buf, max) {
                Ok(Some(n)) => {
                    assert!(n > 4 && n <= buf.len());
                    frames.push(buf.drain(..n).collect());
                }
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
        if pos == stream.len() {
            return (frames, None);
        }
        let step = match cuts[i % cuts.len()] {
            0 => stream.len() - pos,
            n => n.min(stream.len() - pos),
        };
        i += 1;
        buf.extend_from_slice(&stream[pos..pos + step]);
        pos += step;
    }
}

fn bytes(u: &mut Unstructured<'_>) -> arbitrary::Result<Bytes> {
    Ok(Bytes::copy_from_slice(<&[u8]>::arbitrary(u)?))
}

fn targets(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<i64>> {
    Vec::<i64>::arbitrary(u)
}

fn request(u: &mut Unstructured<'_>) -> arbitrary::Result<Request> {
    let a = |u: &mut Unstructured<'_>| u8::arbitrary(u);
    let i = |u: &mut Unstructured<'_>| i64::arbitrary(u);
    Ok(match u.int_in_range(0..=16)? {
        0 => Request::Handshake {
            kind: a(u)?,
            id: bytes(u)?,
        },
        1 => Request::Bind {
            cid: i(u)?,
            uid: i(u)?,
        },
        2 => Request::Unbind { uid: i(u)? },
        3 => Request::GetIp {
            kind: a(u)?,
            target: i(u)?,
        },
        4 => Request::Stat { kind: a(u)? },
        5 => Request::IsOnline {
            kind: a(u)?,
            target: i(u)?,
        },
        6 => Request::Disconnect {
            kind: a(u)?,
            target: i(u)?,
            force: bool::arbitrary(u)?,
        },
        7 => Request::Push {
            kind: a(u)?,
            target: i(u)?,
            message: bytes(u)?,
        },
        8 => Request::Multicast {
            kind: a(u)?,
            targets: targets(u)?,
            message: bytes(u)?,
        },
        9 => Request::Broadcast {
            kind: a(u)?,
            message: bytes(u)?,
        },
        10 => Request::Publish {
            channel: bytes(u)?,
            message: bytes(u)?,
        },
        11 => Request::Subscribe {
            kind: a(u)?,
            targets: targets(u)?,
            channel: bytes(u)?,
        },
        12 => Request::Unsubscribe {
            kind: a(u)?,
            targets: targets(u)?,
            channel: bytes(u)?,
        },
        13 => Request::Trigger {
            event: a(u)?,
            cid: i(u)?,
            uid: i(u)?,
        },
        14 => Request::Deliver {
            cid: i(u)?,
            uid: i(u)?,
            message: bytes(u)?,
        },
        15 => Request::GetState,
        _ => Request::SetState { state: a(u)? },
    })
}

fn check_frame(frame: &[u8]) {
    let decoded = decode(Bytes::copy_from_slice(frame));
    let peeked = peek(frame);
    match (&decoded, &peeked) {
        (Ok(Frame::Heartbeat), Ok(Head::Heartbeat)) => {}
        (Ok(Frame::Unknown { cmd, seq }), Ok(Head::Data { cmd: c, seq: s, .. })) => {
            assert_eq!((cmd, seq), (c, s));
            assert!(Cmd::from_u8(*cmd).is_none());
        }
        (
            Ok(Frame::Request { header, seq, req }),
            Ok(Head::Data {
                header: h,
                cmd,
                seq: s,
            }),
        ) => {
            assert_eq!((header, seq, req.cmd() as u8), (h, s, *cmd));
            let mut out = BytesMut::new();
            put_request(&mut out, *header, *seq, req).expect("a decoded request re-encodes");
            assert!(out.len() <= frame.len(), "re-encoded frame grew");
            assert_eq!(frame_len(&out, u32::MAX), Ok(Some(out.len())));
            let again = decode(out.freeze()).expect("re-encoded request decodes");
            assert_eq!(
                &again,
                decoded.as_ref().unwrap(),
                "re-encoding changed the request"
            );
        }
        (Err(_), Ok(Head::Data { cmd, .. })) => {
            // Only a known command's body can be refused once the head is fine.
            assert!(Cmd::from_u8(*cmd).is_some());
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (d, p) => panic!("decode {d:?} but peek {p:?}"),
    }
    for cmd in Cmd::ALL {
        if let Ok(res) = decode_response(cmd, frame) {
            let Ok(Head::Data { seq, cmd: c, .. }) = peeked else {
                panic!("response decoded from a frame peek refuses: {peeked:?}");
            };
            assert_eq!((res.seq, c), (seq, cmd as u8));
        }
    }
}

fn structured(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let header = u8::arbitrary(u)? & !HEADER_HEARTBEAT;
    let seq = u64::arbitrary(u)?;
    let req = request(u)?;
    let mut out = BytesMut::new();
    match put_request(&mut out, header, seq, &req) {
        Ok(()) => {
            assert_eq!(frame_len(&out, drpc::MAX_LINK_FRAME), Ok(Some(out.len())));
            let got = decode(out.clone().freeze()).expect("decode what was encoded");
            assert_eq!(got, Frame::Request { header, seq, req });
        }
        Err(LinkError::ChannelTooLong { len }) => {
            assert!(len > 255);
            assert!(out.is_empty(), "a refused request left bytes behind");
        }
        Err(LinkError::TooManyTargets { count }) => assert!(count > 65535),
        Err(e) => panic!("unexpected encode error {e}"),
    }

    // Responses.
    let cmd = *u.choose(&Cmd::ALL)?;
    let code = u16::arbitrary(u)?;
    let total = u64::arbitrary(u)?;
    let mut out = BytesMut::new();
    put_code(&mut out, cmd, seq, code);
    let code_only = matches!(
        cmd,
        Cmd::Handshake
            | Cmd::Bind
            | Cmd::Unbind
            | Cmd::Disconnect
            | Cmd::Push
            | Cmd::Subscribe
            | Cmd::Unsubscribe
            | Cmd::Trigger
            | Cmd::Deliver
            | Cmd::SetState
            | Cmd::Stat
            | Cmd::Multicast
            | Cmd::Broadcast
            | Cmd::Publish
            | Cmd::GetIp
    );
    if code_only {
        let r = decode_response(cmd, &out).expect("code response");
        assert_eq!((r.seq, r.code, r.total), (seq, Some(code), None));
    }
    if matches!(cmd, Cmd::Stat | Cmd::Multicast | Cmd::Broadcast) {
        let mut out = BytesMut::new();
        put_total_res(&mut out, cmd, seq, code, total);
        let r = decode_response(cmd, &out).expect("total response");
        assert_eq!((r.seq, r.code), (seq, Some(code)));
        assert_eq!(r.total.unwrap_or(0), if code == 0 { total } else { 0 });
    }
    let mut out = BytesMut::new();
    put_publish_res_v25(&mut out, seq, code, total);
    let r = decode_response(Cmd::Publish, &out).expect("v2.5 publish response");
    assert_eq!((r.seq, r.code), (seq, Some(code)));
    assert_eq!(r.total.unwrap_or(0), if code == 0 { total } else { 0 });
    let mut out = BytesMut::new();
    put_publish_res_v24(&mut out, seq, total);
    let r = decode_response(Cmd::Publish, &out).expect("v2.4 publish response");
    assert_eq!((r.seq, r.code, r.total), (seq, None, Some(total)));

    let online = bool::arbitrary(u)?;
    let mut out = BytesMut::new();
    put_isonline_res(&mut out, seq, code, online);
    let r = decode_response(Cmd::IsOnline, &out).expect("isonline response");
    assert_eq!((r.seq, r.code, r.online), (seq, Some(code), Some(online)));

    let state = u8::arbitrary(u)?;
    let mut out = BytesMut::new();
    put_getstate_res(&mut out, seq, code, state);
    let r = decode_response(Cmd::GetState, &out).expect("getstate response");
    assert_eq!((r.seq, r.code, r.state), (seq, Some(code), Some(state)));

    let ip = match u.int_in_range(0..=2)? {
        0 => None,
        1 => Some(IpAddr::V4(Ipv4Addr::from(u32::arbitrary(u)?))),
        _ => Some(IpAddr::V6(Ipv6Addr::from(u128::arbitrary(u)?))),
    };
    let mut out = BytesMut::new();
    put_getip_res(&mut out, seq, code, ip);
    let r = decode_response(Cmd::GetIp, &out).expect("getip response");
    assert_eq!((r.seq, r.code), (seq, Some(code)));
    let want_ip = match ip {
        Some(IpAddr::V4(v4)) if code == 0 => Some(v4.octets()),
        Some(IpAddr::V6(v6)) if code == 0 => {
            Some(v6.to_ipv4_mapped().map_or([0; 4], |v4| v4.octets()))
        }
        _ => None,
    };
    assert_eq!(r.ip, want_ip);
    Ok(())
}

/// The target's properties over one input (the libFuzzer entry and `tests/fuzz_seeds.rs`).
pub fn check_input(data: &[u8]) {
    let [max_byte, cut_byte, stream @ ..] = data else {
        return;
    };
    let max = match max_byte & 3 {
        0 => drpc::MAX_LINK_FRAME,
        1 => 10,
        2 => 64,
        _ => u32::from(*max_byte),
    };
    let whole = split(stream, max, &[0]);
    let cuts: Vec<usize> = [1, 4, 2, 13, 5, 14, 31]
        .iter()
        .map(|n| n + (*cut_byte as usize & 7))
        .collect();
    assert_eq!(whole, split(stream, max, &cuts), "depends on reads");
    assert_eq!(whole, split(stream, max, &[1]), "byte by byte differs");
    match &whole.1 {
        None | Some(LinkError::ZeroSize) => {}
        Some(LinkError::TooLarge { size, max: m }) => assert!(*size > *m && *m == max),
        Some(e) => panic!("splitter error {e}"),
    }
    for frame in &whole.0 {
        check_frame(frame);
    }
    // A frame the splitter would never cut (truncated, size field wrong) is refused, not read.
    check_frame(stream);
    let _ = structured(&mut Unstructured::new(stream));
}
