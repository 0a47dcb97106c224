//! Client connections: the sans-IO connection machine (`machine`, over a transport's `framing`),
//! its exportable `record`, the one IO `driver` for every transport, the WS handshake and the
//! KCP sessions of a shard (`kcp`).
//!
//! One task per connection does all of its IO: it reads, writes queued packets in batches and
//! runs its heartbeat/authorization timer. Session operations reach it only through [`Conn`].
//! What a connection needs from the shard it lives on is the narrow [`Host`] trait.

pub mod driver;
pub mod framing;
pub mod kcp;
pub mod machine;
pub mod record;
pub mod upgrade;
pub mod ws;
pub mod ws_frame;

#[cfg(test)]
mod tests;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{HeartbeatMechanism, LimitsConfig, ServerConfig};
use crate::dispatch::Delivery;
use crate::handoff::Stage;
use crate::limits::{IpLimits, Rate};
use crate::liveness::LivenessRules;
use crate::packet::PacketConfig;
use crate::session::{Conn, Transport};

/// What a client connection needs from the shard it lives on. The shard implements it; unit
/// tests implement it with a recorder.
pub trait Host {
    /// The packet layout of this gate.
    fn packet(&self) -> &PacketConfig;
    /// The heartbeat packet to send now (with the current time when configured).
    fn heartbeat(&self) -> Bytes;
    /// A client data packet, in per-connection arrival order.
    fn deliver(&self, d: Delivery);
    /// `Pending` while the node that connection `cid`'s last packet went to is not keeping up:
    /// that connection stops reading its client and is woken when the node catches up.
    fn poll_ready(&self, _cid: i64, _cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::task::Poll::Ready(())
    }
    /// Whether new clients are taken (false once the gate stops accepting). Connection-less
    /// transports (KCP) ask before creating a session; stream listeners simply stop.
    fn accepting(&self) -> bool {
        true
    }
    /// Admits a new connection from `ip` if `server` has room (registers its session, emits
    /// Connect). `None` = the server is full.
    fn admit(&self, server: &ServerCtx, ip: IpAddr) -> Option<Rc<Conn>>;
    /// Releases a connection whose socket is closed (tables, locator, Disconnect, server slot).
    fn release(&self, server: &ServerCtx, conn: &Conn);
    /// Runs a connection's task on the shard, which waits for it (bounded) when it stops.
    fn spawn(&self, task: impl std::future::Future<Output = ()> + 'static);
    /// The shard's client stage in an upgrade hand-off; `None` where none can happen.
    fn stage(&self) -> Option<&Rc<Stage>> {
        None
    }
    /// Offers a frozen connection's socket and state to the hand-off; `false` when none is
    /// being collected (the parcel is dropped and the connection stays here).
    fn hand_over(&self, _parcel: record::ConnParcel<crate::handoff::Lent>) -> bool {
        false
    }
    /// Forgets a connection the next process took over: no event, no locator change; its
    /// session lives on there.
    fn forget(&self, server: &ServerCtx, conn: &Conn) {
        self.release(server, conn)
    }
}

/// A stream whose socket can move to another process as it is: plain TCP can, TLS cannot (its
/// session keys live in this process).
pub trait Transferable {
    /// The socket, or `None` when it cannot be handed over.
    fn socket(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

impl Transferable for glommio::net::TcpStream {
    fn socket(&self) -> Option<std::os::fd::RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(self))
    }
}

impl<S> Transferable for futures_rustls::server::TlsStream<S> {}

impl<S: Transferable + ?Sized> Transferable for Box<S> {
    fn socket(&self) -> Option<std::os::fd::RawFd> {
        (**self).socket()
    }
}

/// Settings and counters of one client-facing server (TCP or WS), shared by all shards.
pub struct ServerCtx {
    pub transport: Transport,
    pub config: ServerConfig,
    pub rules: machine::MachineRules,
    /// Largest accepted `size` field.
    pub inbound_cap: u32,
    pub tls: Option<futures_rustls::TlsAcceptor>,
    /// PROXY protocol headers expected first on each socket, and from whom (`[gatehouse]`).
    pub proxy: crate::proxy_header::ProxyPolicy,
    /// Open connections and accept rate per source IP, shared by every server of the gate;
    /// `None` when `ipMaxConns` and `ipAcceptRate` are off.
    pub ip_limits: Option<Arc<IpLimits>>,
    /// Admitted and not yet released connections, across shards (maxConnNum).
    live: Arc<AtomicUsize>,
}

impl ServerCtx {
    pub fn new(
        transport: Transport,
        config: ServerConfig,
        inbound_cap: u32,
        tls: Option<futures_rustls::TlsAcceptor>,
    ) -> Self {
        let liveness = LivenessRules {
            interval: config.heartbeat_interval,
            tick_mode: config.heartbeat_mechanism == HeartbeatMechanism::Tick,
            authorize: config.authorize_timeout,
        };
        ServerCtx {
            transport,
            rules: machine::MachineRules {
                liveness,
                reply_heartbeats: config.heartbeat_mechanism == HeartbeatMechanism::Resp,
                packet_rate: None,
                rate_action: Default::default(),
            },
            inbound_cap,
            tls,
            config,
            proxy: Default::default(),
            ip_limits: None,
            live: Arc::default(),
        }
    }

    /// The same server with `[gatehouse]`'s limits: the packet rate of its connections, and
    /// the gate's table of source IPs (one for all servers; `None` when its limits are off).
    pub fn with_limits(mut self, limits: &LimitsConfig, ips: Option<Arc<IpLimits>>) -> Self {
        self.rules.packet_rate = Rate::new(limits.packet_rate, limits.packet_burst);
        self.rules.rate_action = limits.packet_action;
        self.ip_limits = ips;
        self
    }

    /// A place for a new connection from `ip` under the per-IP limits (always, when they are
    /// off), held by the returned pass until the connection is admitted
    /// ([`IpPass::admitted`]) or dropped. A refusal is counted and logged (at most once a
    /// second per shard and reason); the caller closes the socket without a byte.
    pub fn ip_enter(&self, ip: IpAddr) -> Option<IpPass> {
        let Some(table) = &self.ip_limits else {
            return Some(IpPass(None));
        };
        let now = Instant::now();
        match table.open(ip, now) {
            Ok(()) => Some(IpPass(Some((table.clone(), ip)))),
            Err(why) => {
                use crate::limits::{may_log, IpRefusal, LimitLog};
                use crate::metrics::RefuseLabel;
                let (label, log, key) = match why {
                    IpRefusal::Rate => (RefuseLabel::IpRate, LimitLog::IpRate, "ipAcceptRate"),
                    IpRefusal::Conns => (RefuseLabel::IpConns, LimitLog::IpConns, "ipMaxConns"),
                };
                crate::metrics::shard().refuse(label);
                if let Some(suppressed) = may_log(log, now) {
                    tracing::warn!(%ip, limit = key, suppressed, "connection refused: over {key}");
                }
                None
            }
        }
    }

    /// A connection admitted under an [`IpPass`] was released (or handed to the next process).
    pub fn ip_leave(&self, ip: IpAddr) {
        if let Some(table) = &self.ip_limits {
            table.close(ip, Instant::now());
        }
    }

    /// A connection taken over from the previous process (`--upgrade`): counted in its IP's
    /// open connections whatever the limits, as the previous process admitted it.
    pub fn ip_adopt(&self, ip: IpAddr) {
        if let Some(table) = &self.ip_limits {
            table.adopt(ip, Instant::now());
        }
    }

    /// The same server expecting PROXY protocol headers as `proxy` says.
    pub fn with_proxy(mut self, proxy: crate::proxy_header::ProxyPolicy) -> Self {
        self.proxy = proxy;
        self
    }

    /// Connections currently admitted on this server.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Takes a connection slot if the server has room (`maxConnNum`).
    pub fn try_admit(&self) -> bool {
        let max = self.config.max_conn_num;
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// The counter to decrement when a released connection's last work is done.
    pub fn slot(&self) -> Arc<AtomicUsize> {
        self.live.clone()
    }
}

/// A new connection's place in the per-IP table, before it is admitted: dropping it (a failed
/// handshake, a full server) gives the place back; [`IpPass::admitted`] hands it to the
/// connection, which gives it back at release (`ServerCtx::ip_leave`).
#[must_use = "dropping the pass gives the place back"]
pub struct IpPass(Option<(Arc<IpLimits>, IpAddr)>);

impl IpPass {
    /// The connection is admitted: its release gives the place back from now on.
    pub fn admitted(mut self) {
        self.0 = None;
    }
}

impl Drop for IpPass {
    fn drop(&mut self) {
        if let Some((table, ip)) = self.0.take() {
            table.close(ip, Instant::now());
        }
    }
}

/// Bytes read per `recv` into the shard's scratch buffer.
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// Largest batch of queued packets coalesced into one write.
pub(crate) const WRITE_BATCH: usize = 64 * 1024;
/// Reads or writes one connection may do before yielding to the others on its shard.
pub(crate) const IO_BUDGET: usize = 16;

thread_local! {
    /// Reads land here first, so an idle connection holds no read buffer of its own: only the
    /// tail of a partial frame is copied into the connection.
    pub(crate) static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseReason {
    /// The client closed or reset the connection.
    PeerClosed,
    Io(String),
    HeartbeatTimeout,
    AuthorizeTimeout,
    /// Forced close requested by a session operation (or shutdown).
    Forced,
    /// Graceful close: queued packets were written first.
    Graceful,
    /// The client broke the protocol (oversize frame, bad WS frame).
    Protocol(String),
    /// Single login (`[gatehouse] singleLogin`): its uid was bound to a newer connection, here
    /// or on another gate. Label "replaced".
    Replaced,
    /// The client sent data packets over `packetRate` with `packetRateAction = "close"`.
    /// Label "rate_limited".
    RateLimited,
}

impl CloseReason {
    /// How this close is counted; `conn` tells a forced close's cause (queue full, …).
    pub fn label(&self, conn: &Conn) -> crate::metrics::CloseLabel {
        use crate::metrics::CloseLabel as L;
        match self {
            CloseReason::PeerClosed => L::Peer,
            CloseReason::Io(_) => L::Io,
            CloseReason::HeartbeatTimeout => L::HeartbeatTimeout,
            CloseReason::AuthorizeTimeout => L::AuthorizeTimeout,
            CloseReason::Forced => conn.forced_label(),
            CloseReason::Graceful => L::Graceful,
            CloseReason::Protocol(_) => L::Protocol,
            CloseReason::Replaced => L::Replaced,
            CloseReason::RateLimited => L::RateLimited,
        }
    }
}

/// The undecoded tail of a connection's input. Reads land in the shard's scratch buffer; only
/// bytes of an incomplete frame are kept here, and the allocation is given back once it drains,
/// so an idle connection holds no input buffer.
#[derive(Default)]
pub(crate) struct InputTail(bytes::BytesMut);

impl InputTail {
    /// Hands `parse` the tail followed by `fresh` (which it may modify, e.g. to unmask);
    /// `parse` returns how many bytes it consumed and its result. The rest is kept.
    pub fn feed<R>(&mut self, fresh: &mut [u8], parse: impl FnOnce(&mut [u8]) -> (usize, R)) -> R {
        use bytes::Buf;
        if self.0.is_empty() {
            let (used, r) = parse(fresh);
            if used < fresh.len() {
                self.0.extend_from_slice(&fresh[used..]);
            }
            return r;
        }
        self.0.extend_from_slice(fresh);
        let (used, r) = parse(&mut self.0[..]);
        self.0.advance(used);
        if self.0.is_empty() {
            self.0 = bytes::BytesMut::new();
        } else if used > 0 && self.0.capacity() > 2 * self.0.len() + 4096 {
            // Do not let a short tail pin a large buffer.
            self.0 = bytes::BytesMut::from(&self.0[..]);
        }
        r
    }

    /// A tail holding `bytes` (a rebuilt connection's undecoded input).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        InputTail(bytes::BytesMut::from(bytes))
    }

    /// The bytes held.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// Drops whatever is buffered (input after a Close is never read).
    pub fn clear(&mut self) {
        self.0 = bytes::BytesMut::new();
    }
}

/// One read into `buf`; end of stream and resets are the peer closing, other errors are IO.
pub(crate) fn poll_read_into<S: futures_lite::io::AsyncRead + Unpin>(
    stream: &mut S,
    cx: &mut std::task::Context<'_>,
    buf: &mut [u8],
) -> std::task::Poll<Result<usize, CloseReason>> {
    use std::task::Poll;
    match std::pin::Pin::new(stream).poll_read(cx, buf) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Ok(0)) => Poll::Ready(Err(CloseReason::PeerClosed)),
        Poll::Ready(Ok(n)) => Poll::Ready(Ok(n)),
        Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Poll::Ready(Err(CloseReason::PeerClosed))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(CloseReason::Io(e.to_string()))),
    }
}

/// A glommio timer that follows the liveness deadline.
pub(crate) struct DeadlineTimer {
    timer: Option<glommio::timer::Timer>,
    armed_for: Option<Instant>,
}

impl Drop for DeadlineTimer {
    fn drop(&mut self) {
        self.disarm();
    }
}

impl DeadlineTimer {
    /// Drops the timer, if any; the shard's `deadline_timers` gauge follows (one relaxed load
    /// and store per arm or disarm, not per poll).
    fn disarm(&mut self) {
        if self.timer.take().is_some() {
            crate::metrics::shard().deadline_timers.dec();
        }
    }

    pub fn new() -> Self {
        DeadlineTimer {
            timer: None,
            armed_for: None,
        }
    }

    /// Re-arms for `deadline` if it changed; returns `Ready` when the armed deadline passed.
    pub fn poll(
        &mut self,
        deadline: Option<Instant>,
        now: Instant,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::future::Future;
        if deadline != self.armed_for {
            self.armed_for = deadline;
            match deadline {
                None => self.disarm(),
                Some(d) => {
                    let dur = d.saturating_duration_since(now);
                    match &mut self.timer {
                        Some(t) => t.reset(dur),
                        None => {
                            self.timer = Some(glommio::timer::Timer::new(dur));
                            crate::metrics::shard().deadline_timers.inc();
                        }
                    }
                }
            }
        }
        match &mut self.timer {
            Some(t) => match std::pin::Pin::new(t).poll(cx) {
                std::task::Poll::Ready(_) => {
                    self.disarm();
                    self.armed_for = None;
                    std::task::Poll::Ready(())
                }
                p => p.map(|_| ()),
            },
            None => std::task::Poll::Pending,
        }
    }
}

/// Normalises a peer address as due reports it: IPv4-mapped IPv6 becomes dotted IPv4.
pub fn client_ip(addr: std::net::SocketAddr) -> std::net::IpAddr {
    match addr.ip() {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(v6),
        },
        ip => ip,
    }
}
