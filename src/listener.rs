//! The client accept loop of one shard: picks each new socket's path (TCP, TLS, WS, WSS), admits
//! it through the shard's [`Host`] and spawns its connection task on the accepting shard.
//!
//! The listening sockets themselves (one SO_REUSEPORT socket per shard per server, made on the
//! starting thread) come from `net::bind_shared`; TLS handshakes are bounded here, and so is the
//! PROXY protocol header that comes first on every socket when `proxyProtocol` is on (the
//! decision is `proxy_header`'s; the peek-then-consume IO is here).

use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connection::framing::TcpFraming;
use crate::connection::machine::Connection;
use crate::connection::ws::WsRules;
use crate::connection::{client_ip, driver, ws, Host, IpPass, ServerCtx};
use crate::net::accept_each;
use crate::proxy_header::{self, Decision, ProxyMode, ProxyRefusal};

/// TLS handshakes that take longer than this are dropped (due has no limit; a client that never
/// finishes one would hold a connection slot until its heartbeat timeout).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a trusted peer has to deliver its whole PROXY header. A fixed bound, the same for
/// TCP and WS servers (a TCP server has no handshake timeout, and `authorizeTimeout` may be
/// off): proxies write the header at once when they connect (the spec asks them to), so only a
/// stalled or hostile peer ever waits on it. 3 s leaves room for two lost segments (TCP's
/// retransmission timeout starts at 1 s) while a waiting socket holds no session slot.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(3);

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
        let server = server.clone();
        if server.proxy.enabled() {
            // Nothing is read from a peer that may not speak for others.
            if !server.proxy.trusts(ip) {
                refused(ip, ProxyRefusal::Untrusted, "not in proxyTrusted");
                return;
            }
            let rules = ws_rules.clone();
            host.spawn(serve_proxied(host.clone(), server, rules, ip, stream));
            return;
        }
        // Per-IP limits before any handshake work: a refused socket closes without a byte.
        let Some(pass) = server.ip_enter(ip) else {
            return;
        };
        // One spawn per path, so each task's future is only as large as its own path needs: a
        // plain TCP connection must not pay for TLS or WebSocket handshake state.
        match (ws_rules.clone(), server.tls.is_some()) {
            (None, false) => {
                // Admitted before the spawn, so the task's future holds the driver only.
                if let Some(conn) = admit(&*host, &server, ip, pass) {
                    let machine = tcp_machine(&*host, &server, conn);
                    host.spawn(driver::serve(host.clone(), server, machine, stream));
                }
            }
            (None, true) => {
                host.spawn(Box::pin(serve_tls(host.clone(), server, ip, pass, stream)));
            }
            (Some(rules), false) => {
                host.spawn(serve_ws_plain(
                    host.clone(),
                    server,
                    rules,
                    ip,
                    pass,
                    stream,
                ));
            }
            (Some(rules), true) => {
                let task = serve_wss(host.clone(), server, rules, ip, pass, stream);
                host.spawn(Box::pin(task));
            }
        }
    })
    .await
}

/// A connection from a trusted proxy: its PROXY header first, then the listener's path (TCP,
/// TLS, WS, WSS) as for any connection, with the client address the header names.
async fn serve_proxied<H: Host + 'static>(
    host: Rc<H>,
    server: Arc<ServerCtx>,
    ws_rules: Option<Arc<WsRules>>,
    peer: IpAddr,
    mut stream: TcpStream,
) {
    let ip = match read_proxy_header(&mut stream, server.proxy.mode).await {
        Ok(Some(client)) => {
            let ip = client.ip();
            tracing::debug!(%ip, port = client.port(), %peer, "PROXY header");
            ip
        }
        // LOCAL, UNKNOWN: the proxy speaks for itself.
        Ok(None) => peer,
        Err((reason, detail)) => return refused(peer, reason, &detail),
    };
    // The per-IP limits apply to the client the header names.
    let Some(pass) = server.ip_enter(ip) else {
        return;
    };
    // The connection goes on in a task of its own and this one ends: an async fn keeps its
    // moved-from arguments (the stream) in its state for as long as it runs.
    let h = host.clone();
    match (ws_rules, server.tls.is_some()) {
        (None, false) => {
            if let Some(conn) = admit(&*host, &server, ip, pass) {
                let machine = tcp_machine(&*host, &server, conn);
                h.spawn(driver::serve(host, server, machine, stream));
            }
        }
        (None, true) => h.spawn(Box::pin(serve_tls(host, server, ip, pass, stream))),
        (Some(rules), false) => h.spawn(Box::pin(serve_ws_plain(
            host, server, rules, ip, pass, stream,
        ))),
        (Some(rules), true) => h.spawn(Box::pin(serve_wss(host, server, rules, ip, pass, stream))),
    }
}

/// Reads the PROXY header off a new socket and returns the client address it names (`None`:
/// the socket's peer). Takes exactly the header's bytes: it peeks, and consumes only what
/// `proxy_header::decide` says belongs to the header, so whatever came with it (a TLS
/// ClientHello, the WS upgrade request, a first due packet) stays in the socket for the next
/// stage. Bounded by [`PROXY_HEADER_TIMEOUT`] and by `proxy_header::MAX_HEADER` bytes.
async fn read_proxy_header(
    stream: &mut TcpStream,
    mode: ProxyMode,
) -> Result<Option<SocketAddr>, (ProxyRefusal, String)> {
    let read = async {
        // On the heap, and only until the header is read.
        let mut buf = vec![0u8; proxy_header::MAX_HEADER];
        let mut have = 0;
        loop {
            // `have < MAX_HEADER`: `decide` asks for more only below its caps.
            let n = match stream.peek(&mut buf[have..]).await {
                Ok(0) => {
                    let detail = format!("closed after {have} bytes of the header");
                    return Err((ProxyRefusal::Truncated, detail));
                }
                Ok(n) => n,
                Err(e) => return Err((ProxyRefusal::Truncated, e.to_string())),
            };
            let (take, header) = match proxy_header::decide(mode, &buf[..have + n]) {
                // All of it is header: consume it, so the next peek waits for new bytes.
                Decision::Need { .. } => (n, None),
                Decision::Header { source, len } => (len - have, Some(source)),
                Decision::Refuse { reason, detail } => return Err((reason, detail)),
            };
            if let Err(e) = stream.read_exact(&mut buf[have..have + take]).await {
                return Err((ProxyRefusal::Truncated, e.to_string()));
            }
            have += take;
            if let Some(source) = header {
                return Ok(source);
            }
        }
    };
    match glommio::timer::timeout(PROXY_HEADER_TIMEOUT, async { Ok(read.await) }).await {
        Ok(r) => r,
        Err(_) => Err((
            ProxyRefusal::Timeout,
            format!("no complete header within {PROXY_HEADER_TIMEOUT:?}"),
        )),
    }
}

/// A connection refused for its PROXY header (or for not being allowed to send one). The
/// caller drops the socket, which closes it; nothing was admitted. `reason.as_str()` is the
/// label to count refusals by.
fn refused(peer: IpAddr, reason: ProxyRefusal, detail: &str) {
    let m = crate::metrics::shard();
    m.refuse(crate::metrics::RefuseLabel::Proxy);
    m.proxy_refused[reason as usize].inc();
    tracing::debug!(
        %peer,
        reason = reason.as_str(),
        detail,
        "connection refused: PROXY protocol"
    );
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

/// A session slot for a new connection from `ip` (its per-IP place `pass` then belongs to the
/// connection), or `None` (logged as due logs it) when the server is full; the caller then
/// drops the stream, which closes it.
fn admit<H: Host + ?Sized>(
    host: &H,
    server: &ServerCtx,
    ip: IpAddr,
    pass: IpPass,
) -> Option<Rc<crate::session::Conn>> {
    let conn = host.admit(server, ip);
    match conn {
        Some(_) => pass.admitted(),
        None => tracing::warn!(%ip, "connection allocate error: too many connection"),
    }
    conn
}

async fn serve_tls<H: Host>(
    host: Rc<H>,
    server: Arc<ServerCtx>,
    ip: IpAddr,
    pass: IpPass,
    stream: TcpStream,
) {
    let Some(conn) = admit(&*host, &server, ip, pass) else {
        return;
    };
    let tls = server.tls.as_ref().expect("TLS server");
    match tls_handshake(tls, stream, ip).await {
        Some(s) => {
            let machine = tcp_machine(&*host, &server, conn);
            driver::serve(host, server, machine, s).await
        }
        // Admitted before the handshake (as due's TCP server calls its connect handler on
        // accept): a close, counted under its own reason.
        None => {
            crate::metrics::shard().close(crate::metrics::CloseLabel::Handshake);
            host.release(&server, &conn)
        }
    }
}

async fn serve_ws_plain<H: Host>(
    host: Rc<H>,
    server: Arc<ServerCtx>,
    rules: Arc<WsRules>,
    ip: IpAddr,
    pass: IpPass,
    stream: TcpStream,
) {
    ws::accept(host, server, &rules, ip, pass, stream).await
}

async fn serve_wss<H: Host>(
    host: Rc<H>,
    server: Arc<ServerCtx>,
    rules: Arc<WsRules>,
    ip: IpAddr,
    pass: IpPass,
    stream: TcpStream,
) {
    let tls = server.tls.as_ref().expect("TLS server");
    let Some(s) = tls_handshake(tls, stream, ip).await else {
        // Nothing was admitted yet: a refusal.
        crate::metrics::shard().refuse(crate::metrics::RefuseLabel::Handshake);
        return;
    };
    ws::accept(host, server, &rules, ip, pass, s).await
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
