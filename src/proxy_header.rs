//! The PROXY protocol (v1 text, v2 binary) header a load balancer puts first on a client's
//! socket: which peers may send it, and a sans-IO decision over the bytes read so far.
//!
//! The listener does the IO (`listener.rs`: peek, consume exactly the header, bounded in time);
//! this module only answers, for the bytes seen so far, "need more", "here is the client's
//! address and the header's length", or "refuse, because". Field parsing is the `ppp` crate's;
//! what is ours is the framing around it: which version a mode accepts, where a header ends, the
//! size caps, and the lower bound of the header's length that lets the caller consume what it
//! has read without ever taking a byte that follows the header.
//!
//! Spec: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.

use std::net::{IpAddr, SocketAddr};

/// The v2 signature: the first 12 bytes of every binary header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header starts with these 6 bytes.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header the spec allows, CRLF included.
pub const MAX_V1: usize = 107;
/// The shortest v1 header: `PROXY UNKNOWN\r\n`.
const MIN_V1: usize = 15;
/// The fixed part of a v2 header (signature, version/command, family/protocol, length).
const V2_FIXED: usize = 16;
/// The longest v2 header we accept: the 16 fixed bytes and 520 bytes of addresses and TLVs,
/// room for two Unix socket paths (216) and the TLVs load balancers add (AWS, GCP and Azure
/// endpoint ids, ALPN, authority, TLS details). A longer one is refused as oversized rather
/// than buffered: the length field alone could ask for 64 KiB per connection.
pub const MAX_V2: usize = 536;
/// The most bytes a header can take, either version: the caller's read buffer.
pub const MAX_HEADER: usize = if MAX_V2 > MAX_V1 { MAX_V2 } else { MAX_V1 };

/// `[gatehouse] proxyProtocol`: which headers client listeners expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    /// No header: the socket's peer is the client (the default).
    #[default]
    Off,
    /// Text headers only.
    V1,
    /// Binary headers only.
    V2,
    /// Either version.
    Any,
}

impl ProxyMode {
    /// The mode named by a `proxyProtocol` value (case-insensitive).
    pub fn parse(s: &str) -> Option<ProxyMode> {
        match s.to_ascii_lowercase().as_str() {
            "off" | "" => Some(ProxyMode::Off),
            "v1" => Some(ProxyMode::V1),
            "v2" => Some(ProxyMode::V2),
            "any" => Some(ProxyMode::Any),
            _ => None,
        }
    }

    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Off => "off",
            ProxyMode::V1 => "v1",
            ProxyMode::V2 => "v2",
            ProxyMode::Any => "any",
        }
    }

    fn accepts_v1(self) -> bool {
        matches!(self, ProxyMode::V1 | ProxyMode::Any)
    }

    fn accepts_v2(self) -> bool {
        matches!(self, ProxyMode::V2 | ProxyMode::Any)
    }
}

/// `proxyProtocol` with `proxyTrusted`: what client listeners expect first on a socket, and from
/// whom. With a mode other than off every connection must come from a trusted network and start
/// with a header; anything else is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyPolicy {
    pub mode: ProxyMode,
    /// Networks allowed to connect (and so to name a client address); a bare address is a /32
    /// or /128.
    pub trusted: Vec<ipnet::IpNet>,
}

impl ProxyPolicy {
    /// Whether headers are expected at all.
    pub fn enabled(&self) -> bool {
        self.mode != ProxyMode::Off
    }

    /// Whether a socket peer at `ip` may connect (IPv4-mapped IPv6 counts as its IPv4).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

/// Why a connection was refused before anything else was read. `as_str` is the label of logs
/// (and of the refusal counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyRefusal {
    /// The socket's peer is not in `proxyTrusted`.
    Untrusted,
    /// Not a header the mode accepts: garbage, no header at all, the other version, a bad field.
    Malformed,
    /// The peer closed (or reset) before the header was complete.
    Truncated,
    /// Longer than a header may be (v1: 107 bytes; v2: [`MAX_V2`]).
    Oversized,
    /// The header was not complete within the bound.
    Timeout,
}

impl ProxyRefusal {
    /// Every refusal, in declaration order.
    pub const ALL: [ProxyRefusal; 5] = [
        ProxyRefusal::Untrusted,
        ProxyRefusal::Malformed,
        ProxyRefusal::Truncated,
        ProxyRefusal::Oversized,
        ProxyRefusal::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProxyRefusal::Untrusted => "untrusted",
            ProxyRefusal::Malformed => "malformed",
            ProxyRefusal::Truncated => "truncated",
            ProxyRefusal::Oversized => "oversized",
            ProxyRefusal::Timeout => "timeout",
        }
    }
}

impl std::fmt::Display for ProxyRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the bytes seen so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not complete yet. Every byte given is part of the header, and the header is at least
    /// `at_least` bytes long (`input.len() < at_least <= MAX_HEADER`): the caller may consume
    /// all of the input and wait for more.
    Need { at_least: usize },
    /// A complete header of `len` bytes (the bytes after it belong to the client). `source` is
    /// the client's address, `None` when the header names none (v2 LOCAL, v1 UNKNOWN, an
    /// unspecified or Unix family): the socket's peer is then the client.
    Header {
        source: Option<SocketAddr>,
        len: usize,
    },
    /// Refuse the connection; `detail` says why, for the log.
    Refuse {
        reason: ProxyRefusal,
        detail: String,
    },
}

fn refuse(reason: ProxyRefusal, detail: impl Into<String>) -> Decision {
    Decision::Refuse {
        reason,
        detail: detail.into(),
    }
}

/// Decides on the first bytes of a connection under `mode` (not `Off`).
pub fn decide(mode: ProxyMode, input: &[u8]) -> Decision {
    let Some(&first) = input.first() else {
        return Decision::Need {
            at_least: if mode.accepts_v1() { MIN_V1 } else { V2_FIXED },
        };
    };
    match first {
        b'P' if mode.accepts_v1() => decide_v1(input),
        b'\r' if mode.accepts_v2() => decide_v2(input),
        b'P' => refuse(ProxyRefusal::Malformed, "a v1 header where v2 is expected"),
        b'\r' => refuse(ProxyRefusal::Malformed, "a v2 header where v1 is expected"),
        _ => refuse(ProxyRefusal::Malformed, "no PROXY header"),
    }
}

fn decide_v1(input: &[u8]) -> Decision {
    let prefix = input.len().min(V1_PREFIX.len());
    if input[..prefix] != V1_PREFIX[..prefix] {
        return refuse(ProxyRefusal::Malformed, "no PROXY header");
    }
    let window = &input[..input.len().min(MAX_V1)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if input.len() >= MAX_V1 {
            return refuse(
                ProxyRefusal::Oversized,
                format!("v1 header without CRLF in its first {MAX_V1} bytes"),
            );
        }
        return Decision::Need {
            at_least: (input.len() + 1).max(MIN_V1),
        };
    };
    let line = &input[..=lf];
    // ppp reads up to the first CR; a line must end in CRLF and hold no other CR.
    if lf == 0 || line[lf - 1] != b'\r' {
        return refuse(ProxyRefusal::Malformed, "v1 header not ended by CRLF");
    }
    match ppp::v1::Header::try_from(line) {
        Ok(h) if h.header.len() == line.len() => {
            let source = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            Decision::Header {
                source: source.map(canonical),
                len: line.len(),
            }
        }
        Ok(_) => refuse(ProxyRefusal::Malformed, "v1 header with a stray CR"),
        Err(e) => refuse(ProxyRefusal::Malformed, format!("v1: {e}")),
    }
}

fn decide_v2(input: &[u8]) -> Decision {
    let sig = input.len().min(V2_SIGNATURE.len());
    if input[..sig] != V2_SIGNATURE[..sig] {
        return refuse(ProxyRefusal::Malformed, "no PROXY header");
    }
    if input.len() < V2_FIXED {
        return Decision::Need { at_least: V2_FIXED };
    }
    let len = V2_FIXED + usize::from(u16::from_be_bytes([input[14], input[15]]));
    if len > MAX_V2 {
        return refuse(
            ProxyRefusal::Oversized,
            format!("v2 header of {len} bytes (at most {MAX_V2})"),
        );
    }
    if input.len() < len {
        return Decision::Need { at_least: len };
    }
    let header = match ppp::v2::Header::try_from(&input[..len]) {
        Ok(h) => h,
        Err(e) => return refuse(ProxyRefusal::Malformed, format!("v2: {e}")),
    };
    // ppp leaves TLVs to the reader: a TLV running past the header is a broken header.
    if let Some(Err(e)) = header.tlvs().find(Result::is_err) {
        return refuse(ProxyRefusal::Malformed, format!("v2: {e}"));
    }
    let source = match (header.command, header.addresses) {
        (ppp::v2::Command::Local, _) => None,
        (_, ppp::v2::Addresses::IPv4(a)) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        (_, ppp::v2::Addresses::IPv6(a)) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        // The spec lets a receiver use the real endpoints for families it cannot represent.
        (_, ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_)) => None,
    };
    Decision::Header {
        source: source.map(canonical),
        len,
    }
}

/// IPv4-mapped IPv6 becomes dotted IPv4, as the gate reports socket peers.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_labels_match_the_metrics_order() {
        for (i, r) in ProxyRefusal::ALL.iter().enumerate() {
            assert_eq!(
                (*r as usize, r.as_str()),
                (i, crate::metrics::PROXY_REFUSALS[i])
            );
        }
    }
    use std::net::{Ipv4Addr, Ipv6Addr};

    const ALL_MODES: [ProxyMode; 3] = [ProxyMode::V1, ProxyMode::V2, ProxyMode::Any];

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(cmd);
        h.push(fam);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn v2_ipv4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, tlvs: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&src);
        body.extend_from_slice(&dst);
        body.extend_from_slice(&sport.to_be_bytes());
        body.extend_from_slice(&dport.to_be_bytes());
        body.extend_from_slice(tlvs);
        v2(0x21, 0x11, &body)
    }

    fn header(source: Option<&str>, len: usize) -> Decision {
        Decision::Header {
            source: source.map(|s| s.parse().unwrap()),
            len,
        }
    }

    fn reason(d: &Decision) -> Option<ProxyRefusal> {
        match d {
            Decision::Refuse { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// Every cut of a complete header asks for more (never refuses, never claims a byte past
    /// the cut as known), and the whole header followed by client bytes gives `want`.
    fn check_every_cut(mode: ProxyMode, h: &[u8], want: Decision) {
        for cut in 0..h.len() {
            match decide(mode, &h[..cut]) {
                Decision::Need { at_least } => {
                    assert!(
                        at_least > cut && at_least <= h.len() && at_least <= MAX_HEADER,
                        "cut {cut}: at_least {at_least}, header {}",
                        h.len()
                    )
                }
                other => panic!("cut {cut} of {:?}: {other:?}", String::from_utf8_lossy(h)),
            }
        }
        let mut with_rest = h.to_vec();
        with_rest.extend_from_slice(b"\x16\x03\x01 GET / HTTP/1.1\r\n\r\n");
        assert_eq!(decide(mode, h), want);
        assert_eq!(decide(mode, &with_rest), want, "bytes after the header");
    }

    // Vectors of the spec's section 2.1 (v1).
    #[test]
    fn v1_tcp4() {
        let h = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        for mode in [ProxyMode::V1, ProxyMode::Any] {
            check_every_cut(mode, h, header(Some("192.168.0.1:56324"), h.len()));
        }
    }

    #[test]
    fn v1_tcp6() {
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 3553\r\n";
        check_every_cut(
            ProxyMode::Any,
            h,
            header(Some("[2001:db8::1]:40000"), h.len()),
        );
        let mapped = b"PROXY TCP6 ::ffff:203.0.113.9 ::1 7 8\r\n";
        check_every_cut(
            ProxyMode::V1,
            mapped,
            header(Some("203.0.113.9:7"), mapped.len()),
        );
    }

    #[test]
    fn v1_longest_headers() {
        let h = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        check_every_cut(
            ProxyMode::V1,
            h,
            header(
                Some("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
                h.len(),
            ),
        );
        // The spec's cap, 107 bytes with the CRLF, is a header still.
        let mut unknown = b"PROXY UNKNOWN ".to_vec();
        unknown.resize(MAX_V1 - 2, b'f');
        unknown.extend_from_slice(b"\r\n");
        check_every_cut(ProxyMode::Any, &unknown, header(None, MAX_V1));
    }

    #[test]
    fn v1_unknown_uses_the_socket() {
        let h = b"PROXY UNKNOWN\r\n";
        check_every_cut(ProxyMode::V1, h, header(None, h.len()));
        // "the receiver must ignore anything presented before the CRLF is found"
        let h = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
        check_every_cut(ProxyMode::Any, h, header(None, h.len()));
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n"[..],
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 \r\n",
            b"PROXY TCP4 2001:db8::1 192.168.0.11 56324 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",
            b"PROXY TCP4 192.168.0.1\r192.168.0.11 1 2\r\n",
            b"PROXY UDP4 192.168.0.1 192.168.0.11 1 2\r\n",
            b"PROXY  TCP4 192.168.0.1 192.168.0.11 1 2\r\n",
            b"proxy TCP4 192.168.0.1 192.168.0.11 1 2\r\n",
            b"PROXY\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x00\x00\x00\x05\x02hello",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert_eq!(
                reason(&decide(ProxyMode::Any, bad)),
                Some(ProxyRefusal::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Refused as soon as a byte tells: no waiting for a CRLF that may never come.
        assert_eq!(
            reason(&decide(ProxyMode::V1, b"PRO")),
            None,
            "a prefix of PROXY waits"
        );
        assert_eq!(
            reason(&decide(ProxyMode::V1, b"PROD")),
            Some(ProxyRefusal::Malformed)
        );
        assert_eq!(
            reason(&decide(ProxyMode::V1, b"G")),
            Some(ProxyRefusal::Malformed)
        );
    }

    #[test]
    fn v1_oversized() {
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(MAX_V1, b'1');
        assert_eq!(
            reason(&decide(ProxyMode::V1, &long)),
            Some(ProxyRefusal::Oversized)
        );
        assert!(matches!(
            decide(ProxyMode::V1, &long[..MAX_V1 - 1]),
            Decision::Need { at_least: MAX_V1 }
        ));
        // A line break past 107 bytes does not make it a header.
        long.extend_from_slice(b"\r\n");
        assert_eq!(
            reason(&decide(ProxyMode::Any, &long)),
            Some(ProxyRefusal::Oversized)
        );
    }

    // Section 2.2 (v2): PROXY over IPv4 and IPv6, LOCAL, UNSPEC, Unix, TLVs.
    #[test]
    fn v2_proxy_ipv4() {
        let h = v2_ipv4([192, 0, 2, 10], 51234, [10, 0, 0, 1], 3553, &[]);
        assert_eq!(h.len(), 28);
        for mode in [ProxyMode::V2, ProxyMode::Any] {
            check_every_cut(mode, &h, header(Some("192.0.2.10:51234"), 28));
        }
    }

    #[test]
    fn v2_proxy_ipv6() {
        let mut body = Vec::new();
        body.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        body.extend_from_slice(&40001u16.to_be_bytes());
        body.extend_from_slice(&3554u16.to_be_bytes());
        let h = v2(0x21, 0x21, &body);
        assert_eq!(h.len(), 52);
        check_every_cut(ProxyMode::V2, &h, header(Some("[2001:db8::7]:40001"), 52));
    }

    #[test]
    fn v2_with_tlvs() {
        // ALPN "h2", authority "example.com", a NOOP with 3 bytes, an AWS-style custom TLV.
        let mut tlvs = vec![0x01, 0, 2, b'h', b'2'];
        tlvs.extend_from_slice(&[0x02, 0, 11]);
        tlvs.extend_from_slice(b"example.com");
        tlvs.extend_from_slice(&[0x04, 0, 3, 0, 0, 0]);
        tlvs.extend_from_slice(&[0xEA, 0, 9, 0x01]);
        tlvs.extend_from_slice(b"vpce-123");
        let h = v2_ipv4([198, 51, 100, 3], 1, [10, 0, 0, 1], 2, &tlvs);
        check_every_cut(ProxyMode::Any, &h, header(Some("198.51.100.3:1"), h.len()));
    }

    #[test]
    fn v2_local_and_unrepresentable_families_use_the_socket() {
        // LOCAL with no address (a health check), LOCAL with an address that must be ignored.
        check_every_cut(ProxyMode::V2, &v2(0x20, 0x00, &[]), header(None, 16));
        let local = v2(0x20, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        check_every_cut(ProxyMode::V2, &local, header(None, 28));
        // PROXY with AF_UNSPEC, and with AF_UNIX (two 108-byte paths).
        check_every_cut(ProxyMode::V2, &v2(0x21, 0x00, &[]), header(None, 16));
        let unix = v2(0x21, 0x31, &[0; 216]);
        check_every_cut(ProxyMode::V2, &unix, header(None, 232));
    }

    #[test]
    fn v2_malformed() {
        let good = v2_ipv4([1, 2, 3, 4], 5, [6, 7, 8, 9], 10, &[]);
        let mut version1 = good.clone();
        version1[12] = 0x11;
        let mut command = good.clone();
        command[12] = 0x22;
        let mut family = good.clone();
        family[13] = 0x41;
        let short_body = v2(0x21, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let broken_tlv = v2_ipv4([1, 2, 3, 4], 5, [6, 7, 8, 9], 10, &[0x01, 0, 9, b'x']);
        let leftover = v2_ipv4([1, 2, 3, 4], 5, [6, 7, 8, 9], 10, &[0x01]);
        let mut sig = good.clone();
        sig[7] = b'q';
        for (name, bad) in [
            ("version 1 in the v2 layout", version1),
            ("command 2", command),
            ("family 4", family),
            ("addresses longer than the length", short_body),
            ("TLV past the end", broken_tlv),
            ("TLV leftovers", leftover),
            ("signature", sig),
        ] {
            assert_eq!(
                reason(&decide(ProxyMode::V2, &bad)),
                Some(ProxyRefusal::Malformed),
                "{name}"
            );
        }
    }

    #[test]
    fn v2_oversized_is_refused_from_the_length_field() {
        let body = vec![0u8; MAX_V2 - 16 + 1];
        let h = v2(0x21, 0x11, &body);
        // The 16 fixed bytes are enough: nothing more is read.
        assert_eq!(
            reason(&decide(ProxyMode::V2, &h[..16])),
            Some(ProxyRefusal::Oversized)
        );
        let mut max = v2_ipv4([1, 2, 3, 4], 5, [6, 7, 8, 9], 10, &[]);
        let pad = MAX_V2 - max.len() - 3;
        max.extend_from_slice(&[0x04, (pad >> 8) as u8, pad as u8]);
        max.resize(MAX_V2, 0);
        let len = (MAX_V2 - 16) as u16;
        max[14..16].copy_from_slice(&len.to_be_bytes());
        check_every_cut(ProxyMode::V2, &max, header(Some("1.2.3.4:5"), MAX_V2));
    }

    #[test]
    fn mode_decides_the_version() {
        let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec();
        let v2h = v2_ipv4([1, 2, 3, 4], 1, [5, 6, 7, 8], 2, &[]);
        assert_eq!(
            reason(&decide(ProxyMode::V2, &v1)),
            Some(ProxyRefusal::Malformed)
        );
        assert_eq!(
            reason(&decide(ProxyMode::V1, &v2h)),
            Some(ProxyRefusal::Malformed)
        );
        // Already from the first byte.
        assert_eq!(
            reason(&decide(ProxyMode::V2, b"P")),
            Some(ProxyRefusal::Malformed)
        );
        assert_eq!(
            reason(&decide(ProxyMode::V1, b"\r")),
            Some(ProxyRefusal::Malformed)
        );
        for mode in ALL_MODES {
            assert!(matches!(decide(mode, b""), Decision::Need { .. }));
            assert_eq!(
                reason(&decide(mode, b"\x00\x00\x00\x01\x80")),
                Some(ProxyRefusal::Malformed),
                "a due heartbeat without a header"
            );
        }
    }

    #[test]
    fn trust() {
        let policy = ProxyPolicy {
            mode: ProxyMode::Any,
            trusted: vec![
                "10.0.0.0/8".parse().unwrap(),
                "127.0.0.1/32".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
        };
        assert!(policy.trusts(Ipv4Addr::new(10, 200, 0, 1).into()));
        assert!(policy.trusts(Ipv4Addr::LOCALHOST.into()));
        assert!(!policy.trusts(Ipv4Addr::new(127, 0, 0, 2).into()));
        assert!(!policy.trusts(Ipv4Addr::new(11, 0, 0, 1).into()));
        assert!(policy.trusts("fd12::1".parse().unwrap()));
        assert!(!policy.trusts(Ipv6Addr::LOCALHOST.into()));
        // A v4 peer on a dual-stack socket.
        assert!(policy.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!ProxyPolicy::default().enabled());
    }

    #[test]
    fn labels() {
        let labels: Vec<_> = ProxyRefusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "untrusted",
                "malformed",
                "truncated",
                "oversized",
                "timeout"
            ]
        );
        for m in [ProxyMode::Off, ProxyMode::V1, ProxyMode::V2, ProxyMode::Any] {
            assert_eq!(ProxyMode::parse(m.as_str()), Some(m));
        }
        assert_eq!(ProxyMode::parse("V2"), Some(ProxyMode::V2));
        assert_eq!(ProxyMode::parse("on"), None);
    }
}
