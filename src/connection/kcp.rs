//! KCP clients of one shard: the shard's UDP socket, its sessions by source address, one update
//! timer for all of them, and the stream through which each connection's driver reads and
//! writes its session (the same driver, machine and TCP framing as a TCP connection).
//!
//! The socket is one of the server's SO_REUSEPORT UDP sockets, so every datagram of a client
//! arrives on the same shard. Datagrams are received by [`serve`]'s loop and routed by
//! `kcpnet` (feed, replace, create, drop); a created session is admitted like a TCP connection
//! (`Host::admit`: maxConnNum, cid, Connect) before its first packet is read. Writes go out at
//! once with a non-blocking `sendto` (a datagram the kernel cannot take is dropped: KCP
//! retransmits it). An idle session has no timer; a busy one is due in the shard's one schedule.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncWrite};

use super::framing::TcpFraming;
use super::machine::Connection;
use super::{client_ip, driver, Host, ServerCtx, Transferable};
use crate::kcpnet::{self, Closed, Intake, Outbox, Params, Route, Session};

/// How many closed conversations are remembered at most (each for `Params::closed_ms`, so that
/// its client's late datagrams do not open a zombie connection, §6.4).
const CLOSED_CAP: usize = 65_536;
/// Receive buffer: a due Go client's datagram is at most 1400 + 8 bytes (mtu + FEC header);
/// anything longer is truncated and fails the segment check, as in kcp-go.
const DATAGRAM_MAX: usize = 2048;

/// One client's session and who waits on it.
struct Slot {
    session: Session,
    /// The connection's task, woken when bytes arrive, the send window opens or the session
    /// ends under it.
    waker: Option<Waker>,
    /// When the connection ended: keep retransmitting until everything is acknowledged or
    /// this time (ms) has passed. `None` while the connection is open.
    linger_until: Option<u64>,
    /// Its entry in the schedule, if any.
    due: Option<u64>,
}

/// The KCP state of one shard: sessions by client address, their schedule, and the socket
/// datagrams leave by.
struct Hub {
    sock: std::net::UdpSocket,
    params: Params,
    epoch: Instant,
    out: Outbox,
    sessions: HashMap<SocketAddr, Slot>,
    closed: Closed,
    schedule: BTreeSet<(u64, SocketAddr)>,
    /// The update task, and the time it sleeps until (`None`: no timer armed).
    updater: Option<Waker>,
    armed: Option<u64>,
}

impl Hub {
    /// Milliseconds since this shard's KCP epoch (u64: never wraps; the engine gets u32).
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Sends what the last call on a session produced, to that session's client.
    fn send_out(&self, to: SocketAddr) {
        self.out.drain(|d| {
            // Non-blocking: a full socket buffer drops the datagram; KCP retransmits.
            let _ = self.sock.send_to(d, to);
        });
    }

    /// Puts the session at `addr` where its next update belongs (or out of the schedule when
    /// it is idle), and wakes the update task when that is sooner than it sleeps.
    fn reschedule(&mut self, addr: SocketAddr, now: u64) {
        let Some(slot) = self.sessions.get_mut(&addr) else {
            return;
        };
        let next = match slot.linger_until {
            // A lingering session is looked at by its deadline at the latest.
            Some(until) => Some(
                slot.session
                    .next_update(now as u32)
                    .map_or(until, |ms| (now + u64::from(ms.max(1))).min(until)),
            ),
            None => slot
                .session
                .next_update(now as u32)
                .map(|ms| now + u64::from(ms.max(1))),
        };
        if slot.due == next {
            return;
        }
        if let Some(old) = slot.due.take() {
            self.schedule.remove(&(old, addr));
        }
        if let Some(t) = next {
            slot.due = Some(t);
            self.schedule.insert((t, addr));
            if self.armed.map_or(true, |a| t < a) {
                if let Some(w) = &self.updater {
                    w.wake_by_ref();
                }
            }
        }
    }

    /// Forgets the session at `addr` and remembers its conversation as closed.
    fn remove(&mut self, addr: SocketAddr, now: u64) {
        if let Some(slot) = self.sessions.remove(&addr) {
            if let Some(t) = slot.due {
                self.schedule.remove(&(t, addr));
            }
            self.closed.insert(addr, slot.session.conv(), now);
            if let Some(w) = slot.waker {
                w.wake();
            }
        }
    }

    /// Runs every update due by `now`; returns when the next one is due.
    fn run_due(&mut self, now: u64) -> Option<u64> {
        while let Some(&(t, addr)) = self.schedule.first() {
            if t > now {
                return Some(t);
            }
            self.schedule.pop_first();
            let Some(slot) = self.sessions.get_mut(&addr) else {
                continue;
            };
            slot.due = None;
            let before = slot.session.unacked();
            slot.session.update(now as u32);
            let after = slot.session.unacked();
            let done = slot
                .linger_until
                .is_some_and(|until| after == 0 || now >= until);
            if after < before {
                if let Some(w) = &slot.waker {
                    w.wake_by_ref();
                }
            }
            self.send_out(addr);
            if done {
                self.remove(addr, now);
            } else {
                self.reschedule(addr, now);
            }
        }
        None
    }

    /// Routes one datagram from `from`. `Some((conv, offset, len))`: a session is to be created
    /// from `d[offset..offset + len]` (the caller admits the connection first).
    fn intake(&mut self, d: &mut [u8], from: SocketAddr, now: u64) -> Option<(u32, usize, usize)> {
        let intake = kcpnet::classify(d);
        let (offset, conv) = match intake {
            Intake::Segments { offset, conv, .. } => (offset, conv),
            _ => (0, 0),
        };
        let valid = match intake {
            Intake::Segments { .. } => kcpnet::sanitise(&mut d[offset..], conv, now as u32),
            _ => 0,
        };
        let existing = self.sessions.get(&from).map(|s| s.session.conv());
        let closed = existing != Some(conv)
            && matches!(intake, Intake::Segments { .. })
            && self.closed.contains(from, conv, now);
        match kcpnet::route(existing, intake, valid > 0, closed) {
            Route::Feed => {
                if valid > 0 {
                    self.feed(from, &d[offset..offset + valid], now);
                }
                None
            }
            Route::Replace => {
                // The client started over from the same port: its old connection ends.
                tracing::debug!(client = %from, conv, "kcp: new conversation from the same address");
                self.remove(from, now);
                Some((conv, offset, valid))
            }
            Route::Create => Some((conv, offset, valid)),
            Route::Drop(why) => {
                tracing::trace!(client = %from, conv, reason = why.label(), "kcp: datagram dropped");
                None
            }
        }
    }

    fn feed(&mut self, from: SocketAddr, segs: &[u8], now: u64) {
        let Some(slot) = self.sessions.get_mut(&from) else {
            return;
        };
        let before = slot.session.unacked();
        if let Err(e) = slot.session.input(segs, now as u32, false) {
            tracing::trace!(client = %from, error = %e, "kcp: segments refused");
        }
        let wake = slot.session.readable() || slot.session.unacked() < before;
        if wake {
            if let Some(w) = &slot.waker {
                w.wake_by_ref();
            }
        }
        self.send_out(from);
        self.reschedule(from, now);
    }

    /// A new session for an admitted connection, fed its first datagram (answered at once).
    fn create(&mut self, from: SocketAddr, conv: u32, segs: &[u8], now: u64) {
        let mut session = Session::new(conv, &self.params, now as u32, self.out.clone());
        let _ = session.input(segs, now as u32, true);
        self.sessions.insert(
            from,
            Slot {
                session,
                waker: None,
                linger_until: None,
                due: None,
            },
        );
        self.send_out(from);
        self.reschedule(from, now);
    }
}

/// A connection's view of its KCP session: a byte stream for the driver.
pub struct KcpStream {
    hub: Rc<RefCell<Hub>>,
    addr: SocketAddr,
    conv: u32,
}

impl KcpStream {
    /// Runs `f` on this stream's slot; `None` when the session is gone (replaced by the
    /// client's new conversation, or the shard stopped).
    fn with_slot<R>(&self, f: impl FnOnce(&mut Hub, u64) -> R) -> Option<R> {
        let mut hub = self.hub.borrow_mut();
        let ok = hub
            .sessions
            .get(&self.addr)
            .is_some_and(|s| s.session.conv() == self.conv && s.linger_until.is_none());
        if !ok {
            return None;
        }
        let now = hub.now_ms();
        Some(f(&mut hub, now))
    }
}

impl AsyncRead for KcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let addr = self.addr;
        let r = self.with_slot(|hub, now| {
            let slot = hub.sessions.get_mut(&addr).expect("checked");
            let n = slot.session.read(buf);
            if n == 0 {
                slot.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            hub.reschedule(addr, now);
            Poll::Ready(Ok(n))
        });
        // The session ended under the connection: end of stream.
        r.unwrap_or(Poll::Ready(Ok(0)))
    }
}

impl AsyncWrite for KcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let addr = self.addr;
        let r = self.with_slot(|hub, now| {
            let slot = hub.sessions.get_mut(&addr).expect("checked");
            let n = slot.session.write(buf, now as u32);
            if n == 0 {
                slot.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            hub.send_out(addr);
            hub.reschedule(addr, now);
            Poll::Ready(Ok(n))
        });
        r.unwrap_or_else(|| Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// KCP sessions live in this process only: they are not handed over (`--upgrade` is refused
/// with a KCP server).
impl Transferable for KcpStream {}

impl Drop for KcpStream {
    /// The connection ended: nothing is sent to announce it (as in due); what the client has
    /// not acknowledged yet is still retransmitted for a while, then the session is forgotten
    /// and its conversation remembered as closed.
    fn drop(&mut self) {
        let Ok(mut hub) = self.hub.try_borrow_mut() else {
            return;
        };
        let now = hub.now_ms();
        let linger = hub.params.linger_ms;
        let Some(slot) = hub.sessions.get_mut(&self.addr) else {
            return;
        };
        if slot.session.conv() != self.conv || slot.linger_until.is_some() {
            return;
        }
        slot.waker = None;
        if slot.session.unacked() == 0 || linger == 0 {
            hub.remove(self.addr, now);
        } else {
            slot.linger_until = Some(now + linger);
            hub.reschedule(self.addr, now);
        }
    }
}

/// Serves a KCP server on one shard's UDP socket until the returned future is dropped: receives
/// and routes datagrams, admits new sessions as connections and runs the shard's one update
/// timer. New sessions are created only while `host.accepting()`.
pub async fn serve<H: Host + 'static>(
    host: Rc<H>,
    server: Arc<ServerCtx>,
    params: Params,
    fd: OwnedFd,
) {
    let send = match fd.try_clone() {
        Ok(dup) => std::net::UdpSocket::from(dup),
        Err(e) => {
            tracing::error!(error = %e, "kcp: cannot duplicate the UDP socket");
            return;
        }
    };
    let recv = crate::net::udp_from(fd);
    let hub = Rc::new(RefCell::new(Hub {
        sock: send,
        params,
        epoch: Instant::now(),
        out: Outbox::default(),
        sessions: HashMap::new(),
        closed: Closed::new(params.closed_ms, CLOSED_CAP),
        schedule: BTreeSet::new(),
        updater: None,
        armed: None,
    }));
    let receive = receive(host, server, hub.clone(), recv);
    futures_lite::future::or(receive, updates(hub)).await
}

async fn receive<H: Host + 'static>(
    host: Rc<H>,
    server: Arc<ServerCtx>,
    hub: Rc<RefCell<Hub>>,
    sock: glommio::net::UdpSocket,
) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors surface here on Linux; the socket goes on.
                tracing::trace!(error = %e, "kcp: receive");
                continue;
            }
        };
        crate::metrics::shard().bytes_in.add(n as u64);
        let now = hub.borrow().now_ms();
        let create = hub.borrow_mut().intake(&mut buf[..n], from, now);
        let Some((conv, offset, len)) = create else {
            continue;
        };
        if !host.accepting() {
            continue;
        }
        let ip = client_ip(from);
        let Some(pass) = server.ip_enter(ip) else {
            continue;
        };
        let Some(conn) = host.admit(&server, ip) else {
            // Every datagram of a refused client asks again; logged once per address here
            // would still be a flood, so only at debug.
            tracing::debug!(%ip, "connection allocate error: too many connection");
            continue;
        };
        pass.admitted();
        hub.borrow_mut()
            .create(from, conv, &buf[offset..offset + len], now);
        let framing = TcpFraming::new(*host.packet(), server.inbound_cap);
        let machine = Connection::new(conn, framing, server.rules, Instant::now());
        let stream = KcpStream {
            hub: hub.clone(),
            addr: from,
            conv,
        };
        host.spawn(driver::serve(host.clone(), server.clone(), machine, stream));
    }
}

/// The shard's one KCP timer: runs the updates that are due, then sleeps until the next one
/// (or until a session needs one sooner).
async fn updates(hub: Rc<RefCell<Hub>>) {
    let mut timer: Option<(u64, glommio::timer::Timer)> = None;
    std::future::poll_fn(|cx| loop {
        let next = {
            let mut h = hub.borrow_mut();
            let now = h.now_ms();
            let next = h.run_due(now);
            h.updater = Some(cx.waker().clone());
            h.armed = next;
            next.map(|t| (t, t.saturating_sub(now)))
        };
        let Some((at, wait)) = next else {
            timer = None;
            return Poll::<()>::Pending;
        };
        if timer.as_ref().map_or(true, |(t, _)| *t != at) {
            timer = Some((at, glommio::timer::Timer::new(Duration::from_millis(wait))));
        }
        let (_, t) = timer.as_mut().expect("armed");
        match Pin::new(t).poll(cx) {
            Poll::Ready(_) => timer = None,
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}
