//! The PROXY protocol header decision (`gatehouse::proxy_header::decide`), every mode.
//!
//! Input: `mode(1) | bytes...`; the same bytes also drive a structure-aware header.
//!
//! Properties (each over every prefix of the input, as the bytes arrive):
//! * `Need { at_least }`: `len < at_least <= MAX_HEADER`;
//! * `Header { len }`: `len <= input`, `len <= MAX_HEADER`, the answer is the same for the header
//!   alone and for any longer input (bytes after the header never matter), and every shorter
//!   prefix answered `Need` with `at_least <= len`;
//! * a refusal is final: once a prefix is refused, every longer input is refused;
//! * structure-aware: a v1 or v2 header built from an arbitrary address, port, command and TLVs,
//!   followed by arbitrary client bytes, decides to that address (canonical: IPv4-mapped IPv6 as
//!   IPv4; none for LOCAL/UNKNOWN) and that length.

use arbitrary::{Arbitrary, Unstructured};
use gatehouse::proxy_header::{decide, Decision, ProxyMode, MAX_HEADER, V2_SIGNATURE};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const MODES: [ProxyMode; 3] = [ProxyMode::V1, ProxyMode::V2, ProxyMode::Any];

fn check_prefixes(mode: ProxyMode, input: &[u8]) -> Decision {
    let mut refused_at = None;
    let mut header: Option<Decision> = None;
    let mut last = None;
    for k in 0..=input.len() {
        let d = decide(mode, &input[..k]);
        match &d {
            Decision::Need { at_least } => {
                assert!(k < *at_least && *at_least <= MAX_HEADER, "k {k}: {d:?}");
                assert!(
                    refused_at.is_none(),
                    "Need after a refusal at {refused_at:?}"
                );
                assert!(header.is_none(), "Need after a complete header");
            }
            Decision::Header { len, .. } => {
                assert!(*len <= k && *len <= MAX_HEADER, "k {k}: {d:?}");
                assert!(
                    refused_at.is_none(),
                    "header after a refusal at {refused_at:?}"
                );
                match &header {
                    Some(h) => assert_eq!(h, &d, "header changed with bytes after it"),
                    None => {
                        assert_eq!(*len, k, "header found late");
                        header = Some(d.clone());
                    }
                }
            }
            Decision::Refuse { .. } => {
                assert!(header.is_none(), "refused after a complete header");
                refused_at.get_or_insert(k);
            }
        }
        last = Some(d);
    }
    last.expect("at least the empty prefix")
}

fn v1(u: &mut Unstructured<'_>) -> arbitrary::Result<(Vec<u8>, Option<SocketAddr>)> {
    let sp = u16::arbitrary(u)?;
    let dp = u16::arbitrary(u)?;
    Ok(match u.int_in_range(0..=2)? {
        0 => {
            let s = Ipv4Addr::from(u32::arbitrary(u)?);
            let d = Ipv4Addr::from(u32::arbitrary(u)?);
            (
                format!("PROXY TCP4 {s} {d} {sp} {dp}\r\n").into_bytes(),
                Some(SocketAddr::new(IpAddr::V4(s), sp)),
            )
        }
        1 => {
            let s = Ipv6Addr::from(u128::arbitrary(u)?);
            let d = Ipv6Addr::from(u128::arbitrary(u)?);
            (
                format!("PROXY TCP6 {s} {d} {sp} {dp}\r\n").into_bytes(),
                Some(SocketAddr::new(IpAddr::V6(s).to_canonical(), sp)),
            )
        }
        _ => (b"PROXY UNKNOWN\r\n".to_vec(), None),
    })
}

fn v2(u: &mut Unstructured<'_>) -> arbitrary::Result<(Vec<u8>, Option<SocketAddr>)> {
    let local = u.ratio(1, 4)?;
    let sp = u16::arbitrary(u)?;
    let dp = u16::arbitrary(u)?;
    let mut body = Vec::new();
    let (fam, source) = match u.int_in_range(0..=2)? {
        0 => {
            let s = Ipv4Addr::from(u32::arbitrary(u)?);
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&u32::arbitrary(u)?.to_be_bytes());
            body.extend_from_slice(&sp.to_be_bytes());
            body.extend_from_slice(&dp.to_be_bytes());
            (0x11u8, Some(SocketAddr::new(IpAddr::V4(s), sp)))
        }
        1 => {
            let s = Ipv6Addr::from(u128::arbitrary(u)?);
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&u128::arbitrary(u)?.to_be_bytes());
            body.extend_from_slice(&sp.to_be_bytes());
            body.extend_from_slice(&dp.to_be_bytes());
            (
                0x21,
                Some(SocketAddr::new(IpAddr::V6(s).to_canonical(), sp)),
            )
        }
        _ => (0x00, None),
    };
    // Well-formed TLVs, within the size cap.
    for _ in 0..u.int_in_range(0..=3)? {
        let kind = u8::arbitrary(u)?;
        let value = <&[u8]>::arbitrary(u)?;
        let value = &value[..value.len().min(100)];
        body.push(kind);
        body.extend_from_slice(&(value.len() as u16).to_be_bytes());
        body.extend_from_slice(value);
    }
    let mut h = V2_SIGNATURE.to_vec();
    h.push(if local { 0x20 } else { 0x21 });
    h.push(fam);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    Ok((h, if local { None } else { source }))
}

fn structured(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let version2 = bool::arbitrary(u)?;
    let (mut input, source) = if version2 { v2(u)? } else { v1(u)? };
    let len = input.len();
    input.extend_from_slice(<&[u8]>::arbitrary(u)?);
    let modes: &[ProxyMode] = if version2 {
        &[ProxyMode::V2, ProxyMode::Any]
    } else {
        &[ProxyMode::V1, ProxyMode::Any]
    };
    for &mode in modes {
        let want = Decision::Header { source, len };
        assert_eq!(
            check_prefixes(mode, &input),
            want,
            "{:?}",
            String::from_utf8_lossy(&input)
        );
    }
    // The other version's mode refuses it.
    let other = if version2 {
        ProxyMode::V1
    } else {
        ProxyMode::V2
    };
    assert!(matches!(decide(other, &input), Decision::Refuse { .. }));
    Ok(())
}

/// The target's properties over one input (the libFuzzer entry and `tests/fuzz_seeds.rs`).
pub fn check_input(data: &[u8]) {
    let [mode_byte, input @ ..] = data else {
        return;
    };
    let input = &input[..input.len().min(MAX_HEADER + 64)];
    check_prefixes(MODES[*mode_byte as usize % 3], input);
    let _ = structured(&mut Unstructured::new(input));
}
