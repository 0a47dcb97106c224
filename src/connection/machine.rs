//! One client connection as a sans-IO state machine: framing, undecoded input, liveness, the
//! batch being written and the session half ([`Conn`]). No socket and no clock inside.
//!
//! The contract follows quinn-proto's: the driver feeds it with `handle_input` (bytes read) and
//! `handle_timeout` (the clock reached [`Connection::poll_timeout`]), and asks it what to do with
//! `poll_transmit` (bytes to write, then `transmitted`), `poll_close` (whether the connection is
//! done) and `wants_read`. Session operations reach the machine only through its [`Conn`]
//! (queue, orders, uid), which is shared with the shard's session table. The whole state can be
//! exported to a [`ConnRecord`] and rebuilt from one.

use bytes::{Bytes, BytesMut};
use std::rc::Rc;
use std::time::Instant;

use super::framing::{Framing, FramingRecord};
use super::record::{ConnRecord, RecordError, RECORD_VERSION};
use super::{CloseReason, Host, InputTail, WRITE_BATCH};
use crate::config::RateAction;
use crate::dispatch::Delivery;
use crate::limits::{PacketBucket, Rate};
use crate::liveness::{Liveness, LivenessRules, Verdict};
use crate::packet::FrameKind;
use crate::session::{Conn, ConnState};

/// How a finished connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub reason: CloseReason,
    /// Shut the socket down (and wait for that) before releasing: the close was ours and
    /// graceful, so the client must see an orderly end of stream after the last byte.
    pub shutdown: bool,
}

/// Where a connection stands on closing, once nothing is left to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseStatus {
    /// Not closing (or still writing).
    Open,
    /// A graceful close queued the framing's goodbye (a Close frame): write it, then ask again.
    Goodbye,
    /// Finished.
    Done(Ending),
}

/// Per-server settings a connection machine needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineRules {
    pub liveness: LivenessRules,
    /// `heartbeatMechanism = "resp"`: answer each client heartbeat.
    pub reply_heartbeats: bool,
    /// `packetRate`/`packetBurst`: the bucket each connection starts with; `None` = no limit.
    pub packet_rate: Option<Rate>,
    /// `packetRateAction`: what a data packet over the rate does.
    pub rate_action: RateAction,
}

/// The state of one client connection.
pub struct Connection<F> {
    conn: Rc<Conn>,
    framing: F,
    /// The undecoded tail of a partial frame (empty, with no allocation, most of the time).
    tail: InputTail,
    live: Liveness,
    /// The batch being written and how much of it is done.
    transmit: Option<(Bytes, usize)>,
    /// Inbound data packets over `packetRate` are dropped or close the connection
    /// (`rate_close`); `None` (the default) costs one branch per packet.
    /// Boxed: an idle connection without a limit pays 8 bytes for it, not 32.
    bucket: Option<Box<PacketBucket>>,
    reply_heartbeats: bool,
    rate_close: bool,
}

impl<F: Framing> Connection<F> {
    /// A connection admitted at `now`.
    pub fn new(conn: Rc<Conn>, framing: F, rules: MachineRules, now: Instant) -> Self {
        Connection {
            conn,
            framing,
            tail: InputTail::default(),
            live: Liveness::new(rules.liveness, now),
            transmit: None,
            bucket: rules
                .packet_rate
                .map(|r| Box::new(PacketBucket::new(r, now))),
            reply_heartbeats: rules.reply_heartbeats,
            rate_close: rules.rate_action == RateAction::Close,
        }
    }

    /// Whether the connection is quiet at `now`: open, nothing to write or ordered, and no frame
    /// from the client within `within` (an upgrade hands quiet connections over first).
    pub fn is_quiet(&self, now: Instant, within: std::time::Duration) -> bool {
        let conn = &*self.conn;
        self.transmit.is_none()
            && self.tail.as_slice().is_empty()
            && conn.nothing_queued()
            && conn.state() == ConnState::Opened
            && !conn.orders.borrow().forced_close
            && now.saturating_duration_since(self.live.last_receive()) >= within
    }

    /// The session half, shared with the shard's table.
    pub fn conn(&self) -> &Rc<Conn> {
        &self.conn
    }

    /// Carries out the session's orders (forced close, uid changes) and every liveness rule due
    /// at `now`. `Err` = the connection must end now, for that reason (nothing is flushed).
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), CloseReason> {
        let conn = &*self.conn;
        {
            let mut orders = conn.orders.borrow_mut();
            if orders.forced_close {
                return Err(if orders.replaced {
                    CloseReason::Replaced
                } else {
                    CloseReason::Forced
                });
            }
            if std::mem::take(&mut orders.auth_changed) {
                if conn.uid() == 0 {
                    self.live.on_unbound(now);
                } else {
                    self.live.on_bound();
                }
            }
        }
        loop {
            match self.live.check(now) {
                Verdict::Idle => return Ok(()),
                Verdict::SendHeartbeat => conn.owe_heartbeat(),
                Verdict::HeartbeatTimeout => {
                    tracing::debug!(cid = conn.cid, "connection heartbeat timeout");
                    return Err(CloseReason::HeartbeatTimeout);
                }
                Verdict::AuthorizeTimeout => {
                    if conn.uid() == 0 {
                        tracing::debug!(cid = conn.cid, "connection authorize timeout");
                        return Err(CloseReason::AuthorizeTimeout);
                    }
                }
            }
        }
    }

    /// When [`Connection::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.live.next_deadline()
    }

    /// Whether the driver should read more input: not while a close handshake is under way, nor
    /// while a client sends pings faster than it reads the pongs.
    pub fn wants_read(&self) -> bool {
        self.framing.closing().is_none() && self.framing.control_len() < WRITE_BATCH
    }

    /// Handles bytes read from the client at `now` (`fresh` may be changed in place). Complete
    /// data packets go to `host`. `Err` = end the connection now (nothing more is written).
    pub fn handle_input<H: Host + ?Sized>(
        &mut self,
        fresh: &mut [u8],
        now: Instant,
        host: &H,
    ) -> Result<(), CloseReason> {
        let (framing, live, conn) = (&mut self.framing, &mut self.live, &*self.conn);
        let reply_heartbeats = self.reply_heartbeats;
        let (bucket, rate_close) = (&mut self.bucket, self.rate_close);
        let mut over = false;
        let mut packets = 0;
        let r = self.tail.feed(fresh, |data| {
            framing.decode(data, &mut |msg, bytes| {
                // Every complete message is liveness, even an empty or malformed one.
                live.on_frame(now);
                packets += 1;
                match msg {
                    Ok(FrameKind::Data) if over => {}
                    Ok(FrameKind::Data) if !within_rate(bucket, now) => {
                        over = over_rate(conn, rate_close, now);
                    }
                    Ok(kind) => on_packet(conn, kind, bytes, reply_heartbeats, host),
                    Err(e) => tracing::debug!(
                        cid = conn.cid,
                        len = bytes.len(),
                        "check heartbeat message error: {e}"
                    ),
                }
            })
        });
        crate::metrics::shard().packets_in.add(packets);
        if let Err(CloseReason::Protocol(e)) = &r {
            tracing::warn!(cid = conn.cid, "{e}, closing connection");
        }
        if self.framing.closing().is_some() {
            // Whatever follows a Close (ours or the client's) is never read.
            self.tail.clear();
        }
        if over && r.is_ok() {
            return Err(CloseReason::RateLimited);
        }
        r
    }

    /// The bytes to write next: the rest of the batch in progress, or a new batch of control
    /// frames, owed heartbeats and queued packets (at most [`WRITE_BATCH`] bytes unless a single
    /// packet is larger). `None` = nothing to write. Report progress with `transmitted`.
    pub fn poll_transmit<H: Host + ?Sized>(&mut self, host: &H) -> Option<&[u8]> {
        if self.transmit.is_none() {
            self.transmit = self.next_batch(host).map(|b| (b, 0));
        }
        self.transmit.as_ref().map(|(b, off)| &b[*off..])
    }

    /// `n` bytes of the transmit were written. `true` = the batch is complete (a buffering
    /// stream such as TLS should be flushed now).
    pub fn transmitted(&mut self, n: usize) -> bool {
        let Some((buf, off)) = &mut self.transmit else {
            return false;
        };
        *off += n;
        if *off >= buf.len() {
            self.transmit = None;
            return true;
        }
        false
    }

    fn next_batch<H: Host + ?Sized>(&mut self, host: &H) -> Option<Bytes> {
        let conn = &*self.conn;
        let control = self.framing.control_len();
        let closing = self.framing.closing().is_some();
        if control == 0 && !closing && F::RAW {
            // Lone packets and lone heartbeats go out as they are, without a copy.
            let mut q = conn.outbox();
            match conn.heartbeats_owed() {
                0 => {
                    let lone = match (q.front(), q.get(1)) {
                        (None, _) => return None,
                        (Some(_), None) => true,
                        (Some(a), Some(b)) => a.len() + b.len() > WRITE_BATCH,
                    };
                    if lone {
                        return q.pop_front();
                    }
                }
                1 if q.is_empty() => {
                    conn.take_heartbeats_owed();
                    return Some(host.heartbeat());
                }
                _ => {}
            }
        }
        let mut batch = BytesMut::new();
        self.framing.take_control(&mut batch);
        if closing {
            // Nothing may follow a Close frame.
            return (!batch.is_empty()).then(|| batch.freeze());
        }
        for _ in 0..conn.take_heartbeats_owed() {
            self.framing.encode(&host.heartbeat(), &mut batch);
        }
        let mut q = conn.outbox();
        let mut total = batch.len();
        let mut count = 0;
        for p in q.iter() {
            let len = self.framing.encoded_len(p.len());
            if total > 0 && total + len > WRITE_BATCH {
                break;
            }
            total += len;
            count += 1;
        }
        batch.reserve(total - batch.len());
        for p in q.drain_front(count) {
            self.framing.encode(&p, &mut batch);
        }
        (!batch.is_empty()).then(|| batch.freeze())
    }

    /// Whether the connection is done, once nothing is left to write. A graceful close ends
    /// after every packet queued before it (and the framing's goodbye, if any) was written.
    pub fn poll_close(&mut self) -> CloseStatus {
        if self.transmit.is_some() || self.framing.control_len() > 0 {
            return CloseStatus::Open;
        }
        if let Some(reason) = self.framing.closing() {
            return CloseStatus::Done(Ending {
                shutdown: *reason == CloseReason::Graceful,
                reason: reason.clone(),
            });
        }
        if self.conn.state() == ConnState::Hanged && self.conn.nothing_queued() {
            if self.framing.start_graceful_close() {
                return CloseStatus::Goodbye;
            }
            return CloseStatus::Done(Ending {
                reason: CloseReason::Graceful,
                shutdown: true,
            });
        }
        CloseStatus::Open
    }

    /// A server-initiated close other than graceful: the bytes to try once without waiting
    /// (WS Close(1000) with `wsCloseFrame`; never in the middle of a batch), if any.
    pub fn farewell(&mut self) -> Option<Vec<u8>> {
        if self.transmit.is_some() {
            return None;
        }
        self.framing.farewell()
    }

    /// The whole state as plain data, relative to `now`.
    pub fn export(&self, now: Instant) -> ConnRecord {
        ConnRecord {
            version: RECORD_VERSION,
            session: self.conn.export(),
            transmit: self
                .transmit
                .as_ref()
                .map(|(b, off)| b[*off..].to_vec())
                .unwrap_or_default(),
            input_tail: self.tail.as_slice().to_vec(),
            liveness: self.live.export(now),
            framing: self.framing.export(),
        }
    }

    /// Rebuilds a connection from `record` at `now`. `framing` builds the transport's framing
    /// from its share of the record; `queue_limit` is the server's `writeQueueSize`.
    pub fn import(
        record: ConnRecord,
        rules: MachineRules,
        queue_limit: usize,
        now: Instant,
        framing: impl FnOnce(FramingRecord) -> Result<F, RecordError>,
    ) -> Result<Self, RecordError> {
        if record.version != RECORD_VERSION {
            return Err(RecordError::Version(record.version));
        }
        let framing = framing(record.framing)?;
        let conn = Rc::new(Conn::import(record.session, queue_limit));
        Ok(Connection {
            conn,
            framing,
            tail: InputTail::from_bytes(&record.input_tail),
            live: Liveness::import(rules.liveness, &record.liveness, now),
            transmit: (!record.transmit.is_empty()).then(|| (Bytes::from(record.transmit), 0)),
            // Not in the record: the bucket starts full in the new process.
            bucket: rules
                .packet_rate
                .map(|r| Box::new(PacketBucket::new(r, now))),
            reply_heartbeats: rules.reply_heartbeats,
            rate_close: rules.rate_action == RateAction::Close,
        })
    }
}

/// Whether a data packet at `now` is within the connection's `packetRate` (always, without one).
#[inline]
fn within_rate(bucket: &mut Option<Box<PacketBucket>>, now: Instant) -> bool {
    match bucket {
        None => true,
        Some(b) => b.take(now),
    }
}

/// A data packet over the connection's rate: dropped (counted, logged at most once a second
/// per shard), or the connection must close (`true`: drop the rest of this read too).
#[cold]
fn over_rate(conn: &Conn, close: bool, now: Instant) -> bool {
    use crate::limits::{may_log, LimitLog};
    if conn.state() != ConnState::Opened {
        return false;
    }
    if close {
        if let Some(suppressed) = may_log(LimitLog::PacketClosed, now) {
            tracing::warn!(
                cid = conn.cid,
                ip = %conn.ip,
                suppressed,
                "client over packetRate, closing connection"
            );
        }
        return true;
    }
    crate::metrics::shard().dropped_rate_limited.inc();
    if let Some(suppressed) = may_log(LimitLog::PacketDropped, now) {
        tracing::warn!(
            cid = conn.cid,
            ip = %conn.ip,
            suppressed,
            "client over packetRate, packet dropped"
        );
    }
    false
}

/// Handles one complete client packet: heartbeats are answered (in `resp` mode), data packets
/// go to the host, in arrival order. Nothing is handled once a close has begun.
fn on_packet<H: Host + ?Sized>(
    conn: &Conn,
    kind: FrameKind,
    frame: &[u8],
    reply_heartbeats: bool,
    host: &H,
) {
    if conn.state() != ConnState::Opened {
        return;
    }
    match kind {
        FrameKind::Empty => {}
        FrameKind::Heartbeat => {
            if reply_heartbeats {
                conn.owe_heartbeat();
            }
        }
        FrameKind::Data => match host.packet().unpack(frame) {
            Ok(m) => host.deliver(Delivery {
                cid: conn.cid,
                uid: conn.uid(),
                route: m.route,
                seq: m.seq,
                frame: Bytes::copy_from_slice(frame),
            }),
            Err(e) => tracing::warn!(cid = conn.cid, len = frame.len(), "{e}, frame dropped"),
        },
    }
}
