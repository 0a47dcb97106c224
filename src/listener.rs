//! The client accept loop of one shard: picks each new socket's path (TCP, TLS, WS, WSS), admits
//! it through the shard's [`Host`] and spawns its connection task on the accepting shard.
//!
//! The listening sockets themselves (one SO_REUSEPORT socket per shard per server, made on the
//! starting thread) come from `net::bind_shared`; TLS handshakes are bounded here.

use glommio::net::TcpStream;
use std::net::IpAddr;
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
                    let machine = tcp_machine(&*host, &server, conn);
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

/// The machine of a TCP (or TLS) connection admitted now.
fn tcp_machine<H: Host + ?Sized>(
    host: &H,
    server: &ServerCtx,
    conn: Rc<crate::session::Conn>,
) -> Connection<TcpFraming> {
    let framing = TcpFraming::new(*host.packet(), server.inbound_cap);
    Connection::new(conn, framing, server.rules, Instant::now())
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
            let machine = tcp_machine(&*host, &server, conn);
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
            crate::metrics::shard().refuse(crate::metrics::RefuseLabel::Handshake);
            None
        }
        Err(_) => {
            tracing::debug!(%ip, "tls handshake timed out");
            crate::metrics::shard().refuse(crate::metrics::RefuseLabel::Handshake);
            None
        }
    }
}
