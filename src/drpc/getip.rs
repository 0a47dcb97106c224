//! The getip command (4): a node asks for a client's remote IP address.
//! Owns its request `kind(1) | target(8)`, its `code | [ipv4(4)]` answer, and their vectors.

use bytes::{BufMut, BytesMut};
use std::net::IpAddr;

use super::{bad_length, put_code, put_head, Cmd, LinkError, Reader, Request, Response};

/// Getip request: `kind | target` (23 bytes).
pub fn put_getip(out: &mut BytesMut, seq: u64, kind: u8, target: i64) {
    put_head(out, 0, Cmd::GetIp, seq, 9);
    out.put_u8(kind);
    out.put_i64(target);
}

/// Getip response: `code | [ipv4(4)]`. The IP is present (20 bytes) only for code 0 with an
/// address; IPv4 and IPv4-mapped IPv6 are written as the 4 address bytes, any other IPv6 as
/// `0.0.0.0` (Go's `To4()` fails, the field stays zero). Otherwise 16 bytes.
pub fn put_getip_res(out: &mut BytesMut, seq: u64, code: u16, ip: Option<IpAddr>) {
    match ip {
        Some(ip) if code == 0 => {
            let v4 = match ip {
                IpAddr::V4(v4) => v4.octets(),
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or([0; 4], |v4| v4.octets()),
            };
            put_head(out, 0, Cmd::GetIp, seq, 6);
            out.put_u16(code);
            out.put_slice(&v4);
        }
        _ => put_code(out, Cmd::GetIp, seq, code),
    }
}

pub(super) fn decode(r: &mut Reader<'_>) -> Result<Request, LinkError> {
    Ok(Request::GetIp {
        kind: r.u8()?,
        target: r.i64()?,
    })
}

/// The answer body: 16 bytes (code) or 20 (code and IPv4 address).
pub(super) fn read_res(r: &mut Reader<'_>, res: &mut Response) -> Result<(), LinkError> {
    let len = r.buf.len();
    if len != 16 && len != 20 {
        return Err(bad_length(r));
    }
    res.code = Some(r.u16()?);
    if len == 20 {
        res.ip = Some(r.array()?);
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testing::*;
    use super::super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    pub(in crate::drpc) fn request_vectors() -> Vec<ReqVec> {
        vec![req(
            "getip",
            "00000013 00 04 0000000000000001 02 0000000000000003",
            0,
            1,
            Request::GetIp { kind: 2, target: 3 },
            23,
        )]
    }

    pub(in crate::drpc) fn response_vectors() -> Vec<ResVec> {
        vec![
            ResVec {
                hex: "00000010 00 04 0000000000000001 0000 7f000001",
                cmd: Cmd::GetIp,
                res: Response {
                    ip: Some([127, 0, 0, 1]),
                    ..code(1, 0)
                },
                put: |o| put_getip_res(o, 1, 0, Some(IpAddr::V4(Ipv4Addr::LOCALHOST))),
            },
            ResVec {
                hex: "0000000c 00 04 0000000000000001 0001",
                cmd: Cmd::GetIp,
                res: code(1, 1),
                put: |o| put_getip_res(o, 1, 1, None),
            },
            ResVec {
                hex: "00000010 00 04 0000000000000001 0000 00000000",
                cmd: Cmd::GetIp,
                res: Response {
                    ip: Some([0; 4]),
                    ..code(1, 0)
                },
                put: |o| put_getip_res(o, 1, 0, Some(IpAddr::V6(Ipv6Addr::LOCALHOST))),
            },
        ]
    }

    #[test]
    fn encoder_exact_hex() {
        assert_frames(vec![(
            "00000013 00 04 0000000000000001 02 0000000000000003",
            encode(|o| put_getip(o, 1, 2, 3)),
        )]);
    }

    #[test]
    fn response_encoder_variants() {
        // getip: IPv4-mapped IPv6 is written as its IPv4 address.
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        assert_eq!(
            encode(|o| put_getip_res(o, 1, 0, Some(mapped))),
            hex("00000010 00 04 0000000000000001 0000 0a000005")
        );
        // A non-zero code never carries the IP, nor a missing address.
        let v4 = Some(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(
            encode(|o| put_getip_res(o, 1, 2, v4)),
            hex("0000000c 00 04 0000000000000001 0002")
        );
        assert_eq!(
            encode(|o| put_getip_res(o, 1, 0, None)),
            hex("0000000c 00 04 0000000000000001 0000")
        );
    }

    #[test]
    fn kind_bytes_pass_unvalidated_and_negative_ids_survive() {
        let mut out = BytesMut::new();
        put_getip(&mut out, 1, 9, -1);
        assert_eq!(
            decode(out.freeze()),
            Ok(Frame::Request {
                header: 0,
                seq: 1,
                req: Request::GetIp {
                    kind: 9,
                    target: -1
                }
            })
        );
    }
}
