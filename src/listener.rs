//! Client listeners: one SO_REUSEPORT socket per shard per server, and the accept loop that
//! admits connections and hands each to its driver task on the accepting shard.
//!
//! Sockets are created with socket2 on the starting thread (so a busy port fails start-up before
//! anything runs, and `:0` resolves to one port shared by all shards) with a 4096 backlog —
//! glommio's own `bind` fixes it at 1024, which a connect burst overflows.

use glommio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connection::framing::TcpFraming;
use crate::connection::machine::Connection;
use crate::connection::ws::WsRules;
use crate::connection::{client_ip, driver, ws, Host, ServerCtx};
use crate::net::accept_each;

/// TLS handshakes that take longer than this are dropped (due has no limit; a client that never
/// finishes one would hold a connection slot until its heartbeat timeout).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves due's address syntax: an empty host, `0.0.0.0` or `::` mean every interface,
/// IPv4 and IPv6 (Go's dual-stack wildcard).
pub fn resolve(addr: &str) -> Result<(SocketAddr, bool), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("invalid address {addr:?}: missing port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("invalid address {addr:?}: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host == "0.0.0.0" || host == "::" {
        return Ok((
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            true,
        ));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((SocketAddr::new(ip, port), false));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("invalid address {addr:?}: {e}"))?
        .next()
        .map(|a| (a, false))
        .ok_or_else(|| format!("invalid address {addr:?}: no address found"))
}

fn bind_one(addr: SocketAddr, dual: bool, backlog: i32) -> std::io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if dual {
        sock.set_only_v6(false)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.set_tcp_nodelay(true)?;
    sock.bind(&addr.into())?;
    sock.listen(backlog)?;
    Ok(sock)
}

/// Opens `count` listening sockets on `addr` sharing one port; returns them and the bound address.
pub fn bind_shared(
    addr: &str,
    count: usize,
    backlog: i32,
) -> Result<(Vec<OwnedFd>, SocketAddr), String> {
    let (mut sa, dual) = resolve(addr)?;
    let first = match bind_one(sa, dual, backlog) {
        Ok(s) => s,
        // A host without IPv6: fall back to the IPv4 wildcard.
        Err(_) if dual => {
            sa = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), sa.port());
            bind_one(sa, false, backlog).map_err(|e| format!("listen on {addr}: {e}"))?
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
        let s = bind_one(bound, dual, backlog).map_err(|e| format!("listen on {bound}: {e}"))?;
        fds.push(OwnedFd::from(s));
    }
    Ok((fds, bound))
}

/// Accepts client connections on one shard until `stop` is dropped.
pub async fn accept_loop<H: Host + 'static>(
    host: Rc<H>,
    server: Arc<ServerCtx>,
    ws_rules: Option<Arc<WsRules>>,
    fd: OwnedFd,
    stop: flume::Receiver<()>,
) {
    accept_each(fd, stop, "client", |stream| {
        let Ok(ip) = stream.peer_addr().map(client_ip) else {
            return;
        };
        // One spawn per path, so each task's future is only as large as its own path needs: a
        // plain TCP connection must not pay for TLS or WebSocket handshake state.
        let server = server.clone();
        match (ws_rules.clone(), server.tls.is_some()) {
            (None, false) => {
                // Admitted before the spawn, so the task's future holds the driver only.
                if let Some(conn) = admit(&*host, &server, ip) {
                    let framing = TcpFraming::new(*host.packet(), server.inbound_cap);
                    let machine = Connection::new(conn, framing, server.rules, Instant::now());
                    host.spawn(driver::serve(host.clone(), server, machine, stream));
                }
            }
            (None, true) => {
                host.spawn(Box::pin(serve_tls(host.clone(), server, ip, stream)));
            }
            (Some(rules), false) => {
                host.spawn(serve_ws_plain(host.clone(), server, rules, ip, stream));
            }
            (Some(rules), true) => {
                host.spawn(Box::pin(serve_wss(host.clone(), server, rules, ip, stream)));
            }
        }
    })
    .await
}

/// A session slot for a new connection from `ip`, or `None` (logged as due logs it) when the
/// server is full; the caller then drops the stream, which closes it.
fn admit<H: Host + ?Sized>(
    host: &H,
    server: &ServerCtx,
    ip: IpAddr,
) -> Option<Rc<crate::session::Conn>> {
    let conn = host.admit(server, ip);
    if conn.is_none() {
        tracing::warn!(%ip, "connection allocate error: too many connection");
    }
    conn
}

async fn serve_tls<H: Host>(host: Rc<H>, server: Arc<ServerCtx>, ip: IpAddr, stream: TcpStream) {
    let Some(conn) = admit(&*host, &server, ip) else {
        return;
    };
    let tls = server.tls.as_ref().expect("TLS server");
    match tls_handshake(tls, stream, ip).await {
        Some(s) => {
            let framing = TcpFraming::new(*host.packet(), server.inbound_cap);
            let machine = Connection::new(conn, framing, server.rules, Instant::now());
            driver::serve(host, server, machine, s).await
        }
        None => host.release(&server, &conn),
    }
}

async fn serve_ws_plain<H: Host>(
    host: Rc<H>,
    server: Arc<ServerCtx>,
    rules: Arc<WsRules>,
    ip: IpAddr,
    stream: TcpStream,
) {
    ws::accept(host, server, &rules, ip, stream).await
}

async fn serve_wss<H: Host>(
    host: Rc<H>,
    server: Arc<ServerCtx>,
    rules: Arc<WsRules>,
    ip: IpAddr,
    stream: TcpStream,
) {
    let tls = server.tls.as_ref().expect("TLS server");
    let Some(s) = tls_handshake(tls, stream, ip).await else {
        return;
    };
    ws::accept(host, server, &rules, ip, s).await
}

async fn tls_handshake(
    tls: &futures_rustls::TlsAcceptor,
    stream: TcpStream,
    ip: IpAddr,
) -> Option<futures_rustls::server::TlsStream<TcpStream>> {
    let r = glommio::timer::timeout(TLS_HANDSHAKE_TIMEOUT, async {
        Ok(tls.accept(stream).await)
    })
    .await;
    match r {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(%ip, error = %e, "tls handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%ip, "tls handshake timed out");
            None
        }
    }
}

/// The address a listener on `configured` advertises to the cluster (due's rule): a concrete
/// host as given; for a wildcard host, the first private 192.168.x.x address of an interface
/// that is up, else the first other RFC 1918 address. due refuses to start without one; we fall
/// back to 127.0.0.1 (a single-machine cluster) and log it.
pub fn advertised(configured: &str, bound: SocketAddr) -> String {
    let host = configured
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or("");
    let port = bound.port();
    if !(host.is_empty() || host == "0.0.0.0" || host == "::") {
        return match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
            _ => format!("{host}:{port}"),
        };
    }
    let private: Vec<std::net::Ipv4Addr> = if_addrs::get_if_addrs()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_spellings_are_dual_stack() {
        for a in [":3553", "0.0.0.0:3553", "[::]:3553"] {
            let (sa, dual) = resolve(a).unwrap();
            assert!(dual, "{a}");
            assert_eq!(sa.port(), 3553);
        }
        let (sa, dual) = resolve("127.0.0.1:80").unwrap();
        assert!(!dual);
        assert_eq!(sa, "127.0.0.1:80".parse().unwrap());
        assert!(resolve("nonsense").is_err());
        assert!(resolve(":99999").is_err());
    }
}
