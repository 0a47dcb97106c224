//! The running gate's side of an upgrade: serves the upgrade socket, freezes the shards for a
//! new process that asks, sends it everything, and commits or thaws.
//!
//! Runs on a thread of its own; it reaches the shards only through their inboxes. A request from
//! another user (SO_PEERCRED) or one that breaks the conversation is refused with a logged reason
//! and changes nothing; a failure after the freeze thaws every shard, so the gate serves on.

use socket2::Socket;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::wire::{Channel, MAX_FDS};
use super::{ListenerKind, Msg, NodeLinkHead, PROTOCOL};
use crate::connection::record::{ConnParcel, RECORD_VERSION};
use crate::handoff::Lent;
use crate::node_api::LinkParcel;
use crate::shard::{fan_out, ShardInbox, ShardMsg, ShardParcel};

/// How long each step of the conversation may take before the gate gives up and serves on.
const STEP: Duration = Duration::from_secs(10);
/// How long a shard may take to freeze (its own limits are shorter).
const FREEZE: Duration = Duration::from_secs(10);
/// The pause before each message of skimmed connections.
const SKIM_PACE: Duration = Duration::from_micros(300);
/// The old process's nice value once it has handed over ([`yield_the_cpu`]).
const AFTER_HAND_OFF_NICE: libc::c_int = 10;
/// Session updates per message (they carry no sockets).
const SESSIONS_PER_MESSAGE: usize = 1000;
/// How long the new process may take to take everything up.
const READY: Duration = Duration::from_secs(30);

/// What the running gate hands over, apart from what its shards hold.
pub struct Giver {
    pub inboxes: Vec<ShardInbox>,
    /// Duplicates of every listening socket, by listener, in shard order.
    pub listeners: Vec<(ListenerKind, Vec<OwnedFd>)>,
    /// Duplicates of the port claims.
    pub claims: Vec<(u16, OwnedFd)>,
    pub gid: String,
    pub link_addr: String,
}

/// Serves `socket` until one request hands the gate over; returns the new process's pid.
pub fn serve(socket: Socket, giver: Giver) -> u32 {
    let me = effective_uid();
    loop {
        let (sock, _) = match socket.accept() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "upgrade: accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let ch = match Channel::accepted(sock, STEP) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "upgrade: cannot set up the connection");
                continue;
            }
        };
        match ch.peer() {
            Some((uid, _)) if uid == me => {}
            Some((uid, pid)) => {
                tracing::warn!(
                    uid,
                    pid,
                    "upgrade: refused a request from another user (this gate runs as uid {me})"
                );
                continue;
            }
            None => {
                tracing::warn!("upgrade: refused a request whose sender is unknown");
                continue;
            }
        }
        match giver.give(&ch, &socket) {
            Ok(pid) => return pid,
            Err(e) => tracing::warn!("upgrade: not handed over, serving on: {e}"),
        }
    }
}

/// Lowers every thread of this process to nice 10 (about a tenth of a nice-0 thread's share):
/// what it still does must not take the CPU from the new process, yet must not starve either,
/// or a saturated machine keeps the old process around for seconds. (Nice 19 did: with the new
/// shards and busy clients on every CPU, the old process took over 15 s to exit in a debug
/// build.) Linux keeps a nice value per thread, so each one in /proc/self/task is set. Best
/// effort.
fn yield_the_cpu() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for tid in tasks
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse::<u32>().ok())
    {
        // SAFETY: setpriority only reads its integer arguments; a thread that has exited in
        // the meantime makes it fail with ESRCH, which changes nothing.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, tid, AFTER_HAND_OFF_NICE);
        }
    }
}

/// This process's effective uid.
fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// What the shards gave up in a freeze.
struct Frozen {
    links: Vec<LinkParcel<Lent>>,
    shards: Vec<ShardParcel>,
}

impl Giver {
    /// One conversation. `Ok` = handed over to that pid; `Err` = the gate serves on (thawed if
    /// it was frozen).
    fn give(&self, ch: &Channel, socket: &Socket) -> Result<u32, String> {
        let hello = recv(ch)?;
        let Msg::Hello {
            protocol,
            record_version,
            pid,
        } = hello
        else {
            return Err(format!("expected a hello, got {}", name(&hello)));
        };
        tracing::info!(pid, "upgrade: requested");
        if protocol != PROTOCOL || record_version != RECORD_VERSION {
            let reason = format!(
                "the running gate (pid {}) writes connection records v{RECORD_VERSION} over \
                 hand-off protocol {PROTOCOL}; the new process reads v{record_version} over \
                 protocol {protocol}",
                std::process::id()
            );
            let _ = ch.send(&Msg::Refuse(reason.clone()), &[]);
            return Err(reason);
        }
        let offer = Msg::Offer {
            protocol: PROTOCOL,
            record_version: RECORD_VERSION,
            pid: std::process::id(),
            gid: self.gid.clone(),
            link_addr: self.link_addr.clone(),
            shards: self.inboxes.len() as u32,
        };
        send(ch, &offer, &[])?;
        match recv(ch)? {
            Msg::Go => {}
            Msg::Refuse(r) => return Err(format!("the new process (pid {pid}) refused: {r}")),
            other => return Err(format!("expected go, got {}", name(&other))),
        }
        let started = std::time::Instant::now();
        // The listeners first: the new process starts its shards with them while this one
        // still serves. Then the quiet connections, while the busy ones serve on.
        let skimmed = match self.send_head(ch, socket).and_then(|()| self.skim(ch)) {
            Ok(n) => n,
            Err(e) => {
                self.thaw();
                let _ = ch.send(&Msg::Refuse(e.clone()), &[]);
                return Err(e);
            }
        };
        let skim_took = started.elapsed();
        let frozen = match self.freeze() {
            Ok(f) => f,
            Err(e) => {
                self.thaw();
                let _ = ch.send(&Msg::Refuse(e.clone()), &[]);
                return Err(e);
            }
        };
        let counts = (
            skimmed + frozen.shards.iter().map(|s| s.conns.len()).sum::<usize>(),
            frozen.links.len(),
        );
        let updated: usize = frozen.shards.iter().map(|s| s.sessions.len()).sum();
        tracing::info!(
            skimmed,
            updated,
            connections = counts.0,
            links = counts.1,
            skimmed_in = ?skim_took,
            took = ?started.elapsed(),
            "upgrade: frozen, sending"
        );
        match self.send_rest(ch, frozen) {
            Ok(()) => {}
            Err(e) => {
                self.thaw();
                return Err(e);
            }
        }
        let _ = ch.set_timeout(READY);
        match recv(ch) {
            Ok(Msg::Ready) => {}
            Ok(Msg::Refuse(r)) => {
                self.thaw();
                return Err(format!("the new process (pid {pid}) refused: {r}"));
            }
            Ok(other) => {
                self.thaw();
                return Err(format!("expected ready, got {}", name(&other)));
            }
            Err(e) => {
                self.thaw();
                return Err(format!("the new process (pid {pid}) failed: {e}"));
            }
        }
        // Parked tasks never touch their sockets while frozen, and after `ready` nothing thaws
        // them: the new process may start at once; the shards learn it next.
        let _ = ch.send(&Msg::Committed, &[]);
        self.commit();
        // What this process still does (dropping its parked tasks, closing what stayed) must
        // not take the CPU from the new process while it takes every connection up.
        yield_the_cpu();
        tracing::info!(
            pid,
            connections = counts.0,
            links = counts.1,
            took = ?started.elapsed(),
            "upgrade: handed over"
        );
        Ok(pid)
    }

    /// Posts `msg` (built around a reply channel) to every shard and collects their answers in
    /// shard order; `what` names a shard that does not answer in time.
    fn ask_all<T>(
        &self,
        msg: impl Fn(flume::Sender<T>) -> ShardMsg,
        what: &str,
    ) -> Result<Vec<T>, String> {
        let replies: Vec<_> = self
            .inboxes
            .iter()
            .map(|inbox| {
                let (tx, rx) = flume::bounded(1);
                inbox.post(msg(tx));
                rx
            })
            .collect();
        replies
            .into_iter()
            .enumerate()
            .map(|(i, rx)| {
                rx.recv_timeout(FREEZE)
                    .map_err(|_| format!("shard {i} did not {what}"))
            })
            .collect()
    }

    /// Skims every shard (its quiet connections park) and sends what they gave up; the busy
    /// connections, links and node links serve on meanwhile. Returns how many were sent.
    fn skim(&self, ch: &Channel) -> Result<usize, String> {
        let mut sent = 0;
        for conns in self.ask_all(ShardMsg::Skim, "skim its connections")? {
            sent += conns.len();
            // Paced: the busy connections share these CPUs with the transfer and with the
            // new process taking each batch up.
            send_conns(ch, conns, SKIM_PACE)?;
        }
        Ok(sent)
    }

    /// Freezes the link connections of every shard, then (every node command having reached
    /// its shard) the client connections and node links.
    fn freeze(&self) -> Result<Frozen, String> {
        let started = std::time::Instant::now();
        let links = self
            .ask_all(ShardMsg::FreezeLinks, "freeze its links")?
            .into_iter()
            .flatten()
            .collect();
        // One round through every inbox: the second hops of commands the links handed on (a push
        // by uid: home shard, then owner) are queued before the client freeze.
        self.ask_all(ShardMsg::Quiesce, "answer")?;
        let links_took = started.elapsed();
        let shards = self.ask_all(ShardMsg::FreezeClients, "freeze its connections")?;
        tracing::info!(links = ?links_took, clients = ?(started.elapsed() - links_took), "upgrade: freeze steps");
        Ok(Frozen { links, shards })
    }

    fn thaw(&self) {
        fan_out(&self.inboxes, || ShardMsg::Thaw);
    }

    /// Tells every shard the next process has its parcels (waits for the answers, bounded; a
    /// shard that does not answer is logged, its parked tasks touch nothing anyway).
    fn commit(&self) {
        if let Err(e) = self.ask_all(ShardMsg::Commit, "commit") {
            tracing::warn!("upgrade: {e}");
        }
    }

    /// Sends the listeners, claims and the upgrade socket (duplicates: nothing changes here).
    fn send_head(&self, ch: &Channel, socket: &Socket) -> Result<(), String> {
        for (kind, fds) in &self.listeners {
            for chunk in fds.chunks(MAX_FDS) {
                send(ch, &Msg::Listeners(*kind), &raw(chunk))?;
            }
        }
        let ports: Vec<u16> = self.claims.iter().map(|(p, _)| *p).collect();
        let claim_fds: Vec<RawFd> = self.claims.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        send(ch, &Msg::Claims(ports), &claim_fds)?;
        send(ch, &Msg::UpgradeSocket, &[socket.as_raw_fd()])
    }

    /// Sends every parcel of the freeze, the session updates, and `done`.
    fn send_rest(&self, ch: &Channel, frozen: Frozen) -> Result<(), String> {
        let count = self.inboxes.len() as i64;
        let mut cid_bound = 1;
        let mut conns = Vec::new();
        let mut sessions = Vec::new();
        let mut node_links = Vec::new();
        for (i, shard) in frozen.shards.into_iter().enumerate() {
            // Shard i made cids seq * count + i + 1 for every seq below its next one.
            cid_bound = cid_bound.max(shard.next_seq * count + i as i64 + 1);
            conns.extend(shard.conns);
            sessions.extend(shard.sessions);
            node_links.extend(shard.node_links.into_iter().map(|l| (i as u32, l)));
        }
        send_conns(ch, conns, Duration::ZERO)?;
        let mut sessions = sessions.into_iter().peekable();
        while sessions.peek().is_some() {
            let batch = sessions.by_ref().take(SESSIONS_PER_MESSAGE).collect();
            send(ch, &Msg::Sessions(batch), &[])?;
        }
        for chunk in frozen.links.chunks(MAX_FDS) {
            let records = chunk.iter().map(|p| p.record.clone()).collect();
            let fds: Vec<RawFd> = chunk.iter().map(|p| p.fd).collect();
            send(ch, &Msg::Links(records), &fds)?;
        }
        for chunk in node_links.chunks(MAX_FDS) {
            let heads = chunk
                .iter()
                .map(|(shard, l)| NodeLinkHead {
                    addr: l.addr.clone(),
                    shard: *shard,
                    slot: l.slot as u32,
                    queued: l.queued.clone(),
                })
                .collect();
            let fds: Vec<RawFd> = chunk.iter().map(|(_, l)| l.fd).collect();
            send(ch, &Msg::NodeLinks(heads), &fds)?;
        }
        send(ch, &Msg::Done { cid_bound }, &[])
    }
}

/// Sends connection parcels, their records moved out batch by batch, not cloned (19,000
/// records are a few megabytes).
fn send_conns(ch: &Channel, conns: Vec<ConnParcel<Lent>>, pace: Duration) -> Result<(), String> {
    let mut conns = conns.into_iter().peekable();
    while conns.peek().is_some() {
        if !pace.is_zero() {
            std::thread::sleep(pace);
        }
        let (records, fds): (Vec<_>, Vec<RawFd>) = conns
            .by_ref()
            .take(MAX_FDS)
            .map(|p| (p.record, p.fd))
            .unzip();
        send(ch, &Msg::Conns(records), &fds)?;
    }
    Ok(())
}

fn raw(fds: &[OwnedFd]) -> Vec<RawFd> {
    fds.iter().map(|f| f.as_raw_fd()).collect()
}

fn send(ch: &Channel, msg: &Msg, fds: &[RawFd]) -> Result<(), String> {
    ch.send(msg, fds)
        .map_err(|e| format!("sending {}: {e}", name(msg)))
}

fn recv(ch: &Channel) -> Result<Msg, String> {
    let (msg, fds) = ch.recv::<Msg>().map_err(|e| format!("receiving: {e}"))?;
    if !fds.is_empty() {
        return Err(format!("{} came with sockets attached", name(&msg)));
    }
    Ok(msg)
}

/// A message's name for logs.
pub(crate) fn name(m: &Msg) -> &'static str {
    match m {
        Msg::Hello { .. } => "hello",
        Msg::Offer { .. } => "offer",
        Msg::Refuse(_) => "refuse",
        Msg::Go => "go",
        Msg::Listeners(_) => "listeners",
        Msg::Claims(_) => "claims",
        Msg::UpgradeSocket => "upgrade socket",
        Msg::Conns(_) => "connections",
        Msg::Links(_) => "links",
        Msg::NodeLinks(_) => "node links",
        Msg::Done { .. } => "done",
        Msg::Ready => "ready",
        Msg::Committed => "committed",
        Msg::Sessions(_) => "sessions",
    }
}
