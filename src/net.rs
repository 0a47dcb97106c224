//! Sockets shared by every listener, and the one `host:port` parser of the crate.
//!
//! - [`HostPort`]: due's address syntax (`:3553`, `0.0.0.0:3553`, `[::]:3553`, `[fd00::5]:3553`,
//!   `name:3553`, `10.0.0.5:3553`), parsed once, printed back with IPv6 brackets, and resolved
//!   for listening ([`HostPort::listen_addr`]) or dialling ([`HostPort::lookup`]). Every module
//!   that reads an address (configuration, listeners, the node link, the locator, the registry)
//!   uses it, so they all agree on what an address is.
//! - [`bind_shared`]: one SO_REUSEPORT listening socket per shard on one port, made with socket2
//!   on the starting thread (a busy port fails start-up before anything runs; `:0` resolves to
//!   one port shared by all shards) with a 4096 backlog — glommio's own `bind` fixes it at 1024,
//!   which a connect burst overflows.
//! - [`advertised`]: the link address the gate publishes for its listener.
//! - [`accept_each`]: the accept loop client listeners and the node link server both run.

use glommio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::time::Duration;

/// The host part of a [`HostPort`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An empty host (`:3553`): every interface when listening.
    Wildcard,
    /// An IP literal; IPv6 is written in brackets in the address (`[fd00::5]:3553`).
    Ip(IpAddr),
    /// A host name, resolved when used. A bracketed host that is not an IP literal (a scoped
    /// IPv6 address such as `[fe80::1%eth0]`) is kept here too.
    Name(String),
}

impl fmt::Display for Host {
    /// The bare host, without brackets (what a resolver or Consul's `Address` field takes).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Wildcard => Ok(()),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// A parsed `host:port` address.
///
/// The syntax is Go's `net.SplitHostPort` as due uses it, with a numeric port: a host with a
/// colon must be in brackets (`[fd00::5]:3553`; `fd00::5:3553` is refused, as in Go), brackets
/// may only enclose the whole host, the port is decimal digits up to 65535, and the host may
/// be empty (`:3553`, every interface). Whitespace and control characters are refused anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: Host,
    pub port: u16,
}

/// Why an address could not be parsed or resolved; each names the address as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrError {
    /// No `:port` (`10.0.0.5`, `[fd00::5]`).
    MissingPort(String),
    /// The port is empty, not decimal digits, or above 65535.
    BadPort(String),
    /// The host is empty where one is needed (an address to dial), or `[]`.
    MissingHost(String),
    /// Misplaced brackets, an unbracketed IPv6 address, whitespace or control characters.
    BadHost(String),
    /// The host name did not resolve (the resolver's message).
    Lookup(String, String),
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrError::MissingPort(a) => write!(f, "invalid address {a:?}: missing port"),
            AddrError::BadPort(a) => write!(f, "invalid address {a:?}: bad port"),
            AddrError::MissingHost(a) => write!(f, "invalid address {a:?}: missing host"),
            AddrError::BadHost(a) => write!(
                f,
                "invalid address {a:?}: bad host (an IPv6 host goes in brackets: \"[fd00::5]:3553\")"
            ),
            AddrError::Lookup(a, e) => write!(f, "invalid address {a:?}: {e}"),
        }
    }
}

impl std::error::Error for AddrError {}

impl HostPort {
    /// Parses `host:port`; the host may be empty (see [`HostPort`] for the syntax).
    pub fn parse(addr: &str) -> Result<HostPort, AddrError> {
        let err = |make: fn(String) -> AddrError| make(addr.to_string());
        if addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err(AddrError::BadHost));
        }
        let (host, port, bracketed) = if let Some(rest) = addr.strip_prefix('[') {
            let Some((inner, after)) = rest.split_once(']') else {
                return Err(err(AddrError::BadHost));
            };
            if after.is_empty() {
                return Err(err(AddrError::MissingPort));
            }
            let Some(port) = after.strip_prefix(':') else {
                return Err(err(AddrError::BadHost));
            };
            (inner, port, true)
        } else {
            let Some((host, port)) = addr.rsplit_once(':') else {
                return Err(err(AddrError::MissingPort));
            };
            if host.contains(':') {
                return Err(err(AddrError::BadHost));
            }
            (host, port, false)
        };
        if host.contains(['[', ']']) || port.contains(['[', ']']) {
            return Err(err(AddrError::BadHost));
        }
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err(AddrError::BadPort));
        }
        let port: u16 = port.parse().map_err(|_| err(AddrError::BadPort))?;
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) if host.is_empty() && bracketed => return Err(err(AddrError::MissingHost)),
            Err(_) if host.is_empty() => Host::Wildcard,
            Err(_) => Host::Name(host.to_string()),
        };
        Ok(HostPort { host, port })
    }

    /// Parses an address to connect to: like [`HostPort::parse`], but the host must not be
    /// empty (`:6379` is refused; `0.0.0.0:6379` is an IP like any other).
    pub fn parse_remote(addr: &str) -> Result<HostPort, AddrError> {
        let hp = HostPort::parse(addr)?;
        if hp.host == Host::Wildcard {
            return Err(AddrError::MissingHost(addr.to_string()));
        }
        Ok(hp)
    }

    /// Whether a listener on this address listens on every interface: an empty host,
    /// `0.0.0.0` or `::` (due's rule; Go listens dual-stack on all three).
    pub fn is_wildcard(&self) -> bool {
        match &self.host {
            Host::Wildcard => true,
            Host::Ip(ip) => ip.is_unspecified(),
            Host::Name(_) => false,
        }
    }

    /// The socket address to listen on, and whether it is the dual-stack wildcard (`[::]`
    /// with IPv4 mapped, as Go listens for every wildcard spelling). A host name is resolved
    /// and its first address used.
    pub fn listen_addr(&self) -> Result<(SocketAddr, bool), AddrError> {
        if self.is_wildcard() {
            let any = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), self.port);
            return Ok((any, true));
        }
        self.lookup().map(|a| (a, false))
    }

    /// The socket address to connect to: an IP as is, a host name resolved (first address).
    /// An empty host has nothing to dial.
    pub fn lookup(&self) -> Result<SocketAddr, AddrError> {
        match &self.host {
            Host::Ip(ip) => Ok(SocketAddr::new(*ip, self.port)),
            Host::Wildcard => Err(AddrError::MissingHost(self.to_string())),
            Host::Name(name) => (name.as_str(), self.port)
                .to_socket_addrs()
                .map_err(|e| AddrError::Lookup(self.to_string(), e.to_string()))?
                .next()
                .ok_or_else(|| AddrError::Lookup(self.to_string(), "no address found".into())),
        }
    }
}

impl fmt::Display for HostPort {
    /// `host:port`, with brackets around a host that has a colon (`[fd00::5]:3553`); an empty
    /// host prints as `:3553`. Parsing the output gives the same value back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bracket = match &self.host {
            Host::Ip(ip) => ip.is_ipv6(),
            Host::Name(name) => name.contains(':'),
            Host::Wildcard => false,
        };
        if bracket {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for HostPort {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<HostPort, AddrError> {
        HostPort::parse(s)
    }
}

fn bind_one(addr: SocketAddr, dual: bool, backlog: Option<i32>) -> std::io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if dual {
        sock.set_only_v6(false)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.set_tcp_nodelay(true)?;
    sock.bind(&addr.into())?;
    if let Some(backlog) = backlog {
        sock.listen(backlog)?;
    }
    Ok(sock)
}

/// Makes a bound socket listen (again: on one that listens already it only sets the backlog).
pub fn listen(fd: &OwnedFd, backlog: i32) -> std::io::Result<()> {
    socket2::SockRef::from(fd).listen(backlog)
}

/// Opens `count` listening sockets on `addr` sharing one port; returns them and the bound
/// address. A wildcard address listens dual-stack, or on the IPv4 wildcard on a host without
/// IPv6.
pub fn bind_shared(
    addr: &str,
    count: usize,
    backlog: i32,
) -> Result<(Vec<OwnedFd>, SocketAddr), String> {
    let (mut sa, dual) = HostPort::parse(addr)
        .and_then(|hp| hp.listen_addr())
        .map_err(|e| e.to_string())?;
    let first = match bind_one(sa, dual, Some(backlog)) {
        Ok(s) => s,
        // A host without IPv6: fall back to the IPv4 wildcard.
        Err(_) if dual => {
            sa = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), sa.port());
            bind_one(sa, false, Some(backlog)).map_err(|e| format!("listen on {addr}: {e}"))?
        }
        Err(e) => return Err(format!("listen on {addr}: {e}")),
    };
    let bound = first
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or("listener has no address")?;
    let dual = dual && sa.is_ipv6();
    let mut fds = vec![OwnedFd::from(first)];
    for _ in 1..count {
        let s =
            bind_one(bound, dual, Some(backlog)).map_err(|e| format!("listen on {bound}: {e}"))?;
        fds.push(OwnedFd::from(s));
    }
    Ok((fds, bound))
}

fn bind_udp(addr: SocketAddr, dual: bool) -> std::io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if dual {
        sock.set_only_v6(false)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock)
}

/// Opens `count` UDP sockets on `addr` sharing one port (SO_REUSEPORT: the kernel hashes each
/// client's address and port to one of them, so all of a client's datagrams reach one shard);
/// returns them and the bound address. A wildcard address is dual-stack, as for TCP.
pub fn bind_udp_shared(addr: &str, count: usize) -> Result<(Vec<OwnedFd>, SocketAddr), String> {
    let (mut sa, dual) = HostPort::parse(addr)
        .and_then(|hp| hp.listen_addr())
        .map_err(|e| e.to_string())?;
    let first = match bind_udp(sa, dual) {
        Ok(s) => s,
        Err(_) if dual => {
            sa = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), sa.port());
            bind_udp(sa, false).map_err(|e| format!("listen on udp {addr}: {e}"))?
        }
        Err(e) => return Err(format!("listen on udp {addr}: {e}")),
    };
    let bound = first
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or("socket has no address")?;
    let dual = dual && sa.is_ipv6();
    let mut fds = vec![OwnedFd::from(first)];
    for _ in 1..count {
        let s = bind_udp(bound, dual).map_err(|e| format!("listen on udp {bound}: {e}"))?;
        fds.push(OwnedFd::from(s));
    }
    Ok((fds, bound))
}

/// The address of a listening socket, e.g. one inherited from the previous process.
pub fn listening_addr(fd: &OwnedFd) -> Result<SocketAddr, String> {
    socket2::SockRef::from(fd)
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| "an inherited listener has no address".to_string())
}

/// Binds `count` more sockets beside `existing`, on its address and port (an upgrade to a
/// process with more shards than the one it took the listeners from). They do not listen yet:
/// the kernel would queue connections on them before the new process may accept, and reset
/// those if the upgrade failed; [`listen`] them once they should take connections.
pub fn bind_alongside(existing: &OwnedFd, count: usize) -> Result<Vec<OwnedFd>, String> {
    let bound = listening_addr(existing)?;
    let dual = bound.is_ipv6() && !socket2::SockRef::from(existing).only_v6().unwrap_or(true);
    (0..count)
        .map(|_| {
            bind_one(bound, dual, None)
                .map(OwnedFd::from)
                .map_err(|e| format!("bind {bound}: {e}"))
        })
        .collect()
}

/// The address a listener on `configured` advertises to the cluster (due's rule): a concrete
/// host as given; for a wildcard host, the first private 192.168.x.x address of an interface
/// that is up, else the first other RFC 1918 address. due refuses to start without one; we fall
/// back to 127.0.0.1 (a single-machine cluster) and log it.
pub fn advertised(configured: &str, bound: SocketAddr) -> String {
    let port = bound.port();
    if let Ok(hp) = HostPort::parse(configured) {
        if !hp.is_wildcard() {
            return HostPort {
                host: hp.host,
                port,
            }
            .to_string();
        }
    }
    let private: Vec<Ipv4Addr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !i.is_loopback())
        .filter_map(|i| match i.ip() {
            IpAddr::V4(v4) if v4.is_private() => Some(v4),
            _ => None,
        })
        .collect();
    let pick = private
        .iter()
        .find(|ip| ip.octets()[..2] == [192, 168])
        .or(private.first());
    match pick {
        Some(ip) => format!("{ip}:{port}"),
        None => {
            tracing::warn!("no private IPv4 address found for the link; advertising 127.0.0.1");
            format!("127.0.0.1:{port}")
        }
    }
}

/// Takes ownership of an accepted or inherited TCP socket as a glommio stream of this executor.
pub fn stream_from(fd: OwnedFd) -> glommio::net::TcpStream {
    // SAFETY: `fd` is an owned, open TCP socket; its ownership moves into the stream, which
    // closes it exactly once when dropped.
    unsafe { glommio::net::TcpStream::from_raw_fd(fd.into_raw_fd()) }
}

/// A glommio UDP socket over `fd` (one of `bind_udp_shared`'s sockets).
pub fn udp_from(fd: OwnedFd) -> glommio::net::UdpSocket {
    // SAFETY: `fd` is an owned, open UDP socket; its ownership moves into the glommio socket,
    // which closes it exactly once when dropped.
    unsafe { glommio::net::UdpSocket::from_raw_fd(fd.into_raw_fd()) }
}

/// Accepts on `fd` until `stop` is dropped, handing each connection to `on_accept`. Accept
/// errors (EMFILE/ENFILE when the fd limit is reached, …) back off from 5 ms doubling to 1 s:
/// the shard keeps serving its connections and tries again later, never spinning.
pub async fn accept_each(
    fd: OwnedFd,
    stop: flume::Receiver<()>,
    what: &'static str,
    mut on_accept: impl FnMut(TcpStream),
) {
    // SAFETY: `fd` is a listening TCP socket we own (created by `bind_shared`);
    // ownership moves into the glommio listener, which closes it exactly once when dropped.
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd.into_raw_fd()) };
    let mut backoff = Duration::from_millis(5);
    loop {
        let next = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            let _ = stop.recv_async().await;
            None
        })
        .await;
        match next {
            None => break,
            Some(Ok(stream)) => {
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                on_accept(stream);
            }
            Some(Err(e)) => {
                tracing::warn!(listener = what, error = %e, delay = ?backoff, "accept failed, backing off");
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> HostPort {
        HostPort::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn wildcard_spellings_are_dual_stack() {
        for a in [":3553", "0.0.0.0:3553", "[::]:3553"] {
            let (sa, dual) = hp(a).listen_addr().unwrap();
            assert!(dual, "{a}");
            assert!(hp(a).is_wildcard(), "{a}");
            assert_eq!(sa, "[::]:3553".parse().unwrap());
        }
        let (sa, dual) = hp("127.0.0.1:80").listen_addr().unwrap();
        assert!(!dual);
        assert_eq!(sa, "127.0.0.1:80".parse().unwrap());
        assert!(HostPort::parse("nonsense").is_err());
        assert!(HostPort::parse(":99999").is_err());
    }

    #[test]
    fn due_syntax_parses() {
        assert_eq!(hp(":3553").host, Host::Wildcard);
        assert_eq!(hp(":0").port, 0);
        assert_eq!(
            hp("0.0.0.0:1").host,
            Host::Ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        );
        assert_eq!(
            hp("[::]:1").host,
            Host::Ip(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
        );
        assert_eq!(
            hp("[fd00::5]:40123"),
            HostPort {
                host: Host::Ip("fd00::5".parse().unwrap()),
                port: 40123
            }
        );
        assert_eq!(
            hp("10.0.0.5:40123").host,
            Host::Ip("10.0.0.5".parse().unwrap())
        );
        assert_eq!(
            hp("node-1.local:8080").host,
            Host::Name("node-1.local".into())
        );
        assert_eq!(
            hp("[127.0.0.1]:80").host,
            Host::Ip("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            hp("[fe80::1%eth0]:80").host,
            Host::Name("fe80::1%eth0".into())
        );
        assert_eq!(hp("localhost:65535").port, 65535);
        assert_eq!(hp("h:0080").port, 80);
        assert!(!hp("127.0.0.1:80").is_wildcard());
        assert!(!hp("localhost:80").is_wildcard());
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for (bad, why) in [
            ("", "missing port"),
            ("nonsense", "missing port"),
            ("10.0.0.5", "missing port"),
            ("[fd00::5]", "missing port"),
            ("10.0.0.5:", "bad port"),
            ("10.0.0.5:port", "bad port"),
            ("10.0.0.5:-1", "bad port"),
            ("10.0.0.5:+80", "bad port"),
            ("10.0.0.5:65536", "bad port"),
            (":99999", "bad port"),
            ("[]:1", "missing host"),
            ("fd00::5:1", "bad host"),
            ("::1:80", "bad host"),
            ("[fd00::5:40123", "bad host"),
            ("[fd00::5]40123", "bad host"),
            ("a]b:1", "bad host"),
            ("a[b:1", "bad host"),
            ("[fd00::5]:1]", "bad host"),
            ("[[fd00::5]:1", "bad host"),
            ("a b:1", "bad host"),
            (" 10.0.0.5:1", "bad host"),
            ("10.0.0.5:1\n", "bad host"),
        ] {
            let e = HostPort::parse(bad).expect_err(bad);
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{bad:?}: {e}");
        }
    }

    #[test]
    fn remote_addresses_need_a_host() {
        assert!(matches!(
            HostPort::parse_remote(":6379"),
            Err(AddrError::MissingHost(_))
        ));
        for ok in [
            "0.0.0.0:6379",
            "redis:6379",
            "[fd00::5]:6379",
            "127.0.0.1:6379",
        ] {
            assert!(HostPort::parse_remote(ok).is_ok(), "{ok}");
        }
        assert!(HostPort::parse_remote("fd00::5:6379").is_err());
    }

    #[test]
    fn display_brackets_ipv6_and_round_trips() {
        for s in [
            ":3553",
            "0.0.0.0:3553",
            "[::]:3553",
            "10.0.0.5:40123",
            "[fd00::5]:1",
            "node-1.local:8080",
            "[::1]:65535",
            "[fe80::1%eth0]:80",
        ] {
            assert_eq!(hp(s).to_string(), s);
            assert_eq!(hp(&hp(s).to_string()), hp(s));
        }
        // Canonical forms: bracketed IPv4 loses its brackets, IPv6 is compressed.
        assert_eq!(hp("[127.0.0.1]:80").to_string(), "127.0.0.1:80");
        assert_eq!(hp("[fd00:0:0::5]:1").to_string(), "[fd00::5]:1");
        assert_eq!(hp("h:0080").to_string(), "h:80");
        // The bare host has no brackets (Consul's Address, a resolver's input).
        assert_eq!(hp("[fd00::5]:1").host.to_string(), "fd00::5");
        assert_eq!("10.0.0.5:1".parse::<HostPort>().unwrap().port, 1);
    }

    #[test]
    fn lookup_for_dialling() {
        assert_eq!(
            hp("127.0.0.1:80").lookup().unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(
            hp("[::1]:80").lookup().unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert_eq!(hp("localhost:80").lookup().unwrap().port(), 80);
        assert!(matches!(hp(":80").lookup(), Err(AddrError::MissingHost(_))));
        assert!(matches!(
            hp("no-such-host.invalid:80").lookup(),
            Err(AddrError::Lookup(..))
        ));
    }

    #[test]
    fn advertised_keeps_a_concrete_host() {
        let bound: SocketAddr = "0.0.0.0:40123".parse().unwrap();
        assert_eq!(advertised("10.0.0.5:0", bound), "10.0.0.5:40123");
        assert_eq!(advertised("[fd00::5]:0", bound), "[fd00::5]:40123");
        assert_eq!(advertised("gate-1.local:0", bound), "gate-1.local:40123");
        // A wildcard advertises some IPv4 address of this machine.
        for wild in [":0", "0.0.0.0:0", "[::]:0"] {
            let a = advertised(wild, bound);
            let parsed = hp(&a);
            assert!(matches!(parsed.host, Host::Ip(IpAddr::V4(_))), "{a}");
            assert_eq!(parsed.port, 40123);
        }
    }
}
