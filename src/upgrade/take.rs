//! The new process's side of an upgrade: finds the running gate, receives its sockets and state,
//! and confirms once everything is taken up.
//!
//! Nothing received runs before [`Taking::confirm`] returns: until the running gate has
//! committed, it may still resume, and two processes must never touch one socket.

use socket2::Socket;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::give::name;
use super::wire::{Channel, SocketName};
use super::{ListenerKind, Msg, NodeLinkHead, UpgradeError, PROTOCOL};
use crate::connection::record::{ConnParcel, RECORD_VERSION};
use crate::dispatch::NodeLinkParcel;
use crate::node_api::LinkParcel;
use crate::session::SessionRecord;

/// How long each message may take to arrive (the freeze is bounded well under it).
const STEP: Duration = Duration::from_secs(20);

/// The running gate as its offer described it.
#[derive(Debug, Clone)]
pub struct Offer {
    pub pid: u32,
    pub gid: String,
    pub link_addr: String,
    pub shards: usize,
}

/// Everything the running gate handed over.
#[derive(Debug, Default)]
pub struct Received {
    pub listeners: Vec<(ListenerKind, Vec<OwnedFd>)>,
    pub claims: Vec<(u16, OwnedFd)>,
    pub upgrade_socket: Option<Socket>,
    pub conns: Vec<ConnParcel>,
    pub links: Vec<LinkParcel>,
    /// Outbound node links with the old shard each came from.
    pub node_links: Vec<(usize, NodeLinkParcel)>,
    /// Every cid the old gate made is below it.
    pub cid_bound: i64,
}

impl Received {
    /// The listening sockets of `kind`, in the old process's shard order.
    pub fn take_listeners(&mut self, kind: ListenerKind) -> Vec<OwnedFd> {
        let mut out = Vec::new();
        for (k, fds) in &mut self.listeners {
            if *k == kind {
                out.append(fds);
            }
        }
        out
    }
}

/// An upgrade in progress, from the new process.
pub struct Taking {
    ch: Channel,
    pub offer: Offer,
}

impl Taking {
    /// Finds the running gate on `socket` and agrees on versions.
    pub fn begin(socket: &SocketName) -> Result<Taking, UpgradeError> {
        let ch = Channel::connect(socket, STEP).map_err(|e| UpgradeError::NoGate {
            socket: socket.to_string(),
            reason: e.to_string(),
        })?;
        let hello = Msg::Hello {
            protocol: PROTOCOL,
            record_version: RECORD_VERSION,
            pid: std::process::id(),
        };
        send(&ch, &hello)?;
        match recv(&ch)?.0 {
            Msg::Offer {
                protocol,
                record_version,
                pid,
                gid,
                link_addr,
                shards,
            } => {
                if protocol != PROTOCOL || record_version != RECORD_VERSION {
                    let reason = format!(
                        "the running gate (pid {pid}) writes connection records \
                         v{record_version} over hand-off protocol {protocol}; this build reads \
                         v{RECORD_VERSION} over protocol {PROTOCOL}"
                    );
                    let _ = ch.send(&Msg::Refuse(reason.clone()), &[]);
                    return Err(UpgradeError::Refused(reason));
                }
                Ok(Taking {
                    ch,
                    offer: Offer {
                        pid,
                        gid,
                        link_addr,
                        shards: shards as usize,
                    },
                })
            }
            Msg::Refuse(r) => Err(UpgradeError::Refused(r)),
            other => Err(UpgradeError::Broken(format!(
                "expected an offer, got {}",
                name(&other)
            ))),
        }
    }

    /// Tells the running gate the upgrade is off (it serves on).
    pub fn refuse(self, reason: &str) {
        let _ = self.ch.send(&Msg::Refuse(reason.to_string()), &[]);
    }

    /// Asks the running gate to freeze and receives everything it hands over.
    pub fn receive(&self) -> Result<Received, UpgradeError> {
        send(&self.ch, &Msg::Go)?;
        let mut got = Received::default();
        // When each connection's record arrived: skimmed ones wait through the freeze, and
        // their liveness is aged by that wait.
        let mut arrived: Vec<(usize, Instant)> = Vec::new();
        let mut sessions: Vec<SessionRecord> = Vec::new();
        loop {
            let (msg, fds) = recv(&self.ch)?;
            let mut fds = fds.into_iter();
            let mut take = |n: usize, what: &str| -> Result<Vec<OwnedFd>, UpgradeError> {
                let v: Vec<OwnedFd> = fds.by_ref().take(n).collect();
                if v.len() != n {
                    return Err(UpgradeError::Broken(format!(
                        "{what}: {n} sockets announced, {} attached",
                        v.len()
                    )));
                }
                Ok(v)
            };
            match msg {
                Msg::Listeners(kind) => {
                    let all: Vec<OwnedFd> = fds.by_ref().collect();
                    got.listeners.push((kind, all));
                }
                Msg::Claims(ports) => {
                    let socks = take(ports.len(), "claims")?;
                    got.claims.extend(ports.into_iter().zip(socks));
                }
                Msg::UpgradeSocket => {
                    let fd = take(1, "upgrade socket")?.pop().expect("one socket");
                    got.upgrade_socket = Some(Socket::from(fd));
                }
                Msg::Conns(records) => {
                    let socks = take(records.len(), "connections")?;
                    arrived.push((got.conns.len() + records.len(), Instant::now()));
                    got.conns.extend(
                        records
                            .into_iter()
                            .zip(socks)
                            .map(|(record, fd)| ConnParcel { record, fd }),
                    );
                }
                Msg::Links(records) => {
                    let socks = take(records.len(), "links")?;
                    got.links.extend(
                        records
                            .into_iter()
                            .zip(socks)
                            .map(|(record, fd)| LinkParcel { record, fd }),
                    );
                }
                Msg::NodeLinks(heads) => {
                    let socks = take(heads.len(), "node links")?;
                    got.node_links
                        .extend(heads.into_iter().zip(socks).map(|(h, fd)| parcel(h, fd)));
                }
                Msg::Sessions(records) => sessions.extend(records),
                Msg::Done { cid_bound } => {
                    got.cid_bound = cid_bound;
                    update(&mut got.conns, sessions, &arrived)?;
                    return Ok(got);
                }
                Msg::Refuse(r) => return Err(UpgradeError::Refused(r)),
                other => {
                    return Err(UpgradeError::Broken(format!(
                        "unexpected {} while receiving",
                        name(&other)
                    )))
                }
            }
        }
    }

    /// Everything is taken up: the running gate lets go of it. Once this returns `Ok`, the
    /// sockets are this process's alone.
    pub fn confirm(self) -> Result<(), UpgradeError> {
        send(&self.ch, &Msg::Ready)?;
        match recv(&self.ch)?.0 {
            Msg::Committed => Ok(()),
            other => Err(UpgradeError::Broken(format!(
                "expected committed, got {}",
                name(&other)
            ))),
        }
    }
}

/// Ages every record by its wait since it arrived (`arrived`: the end of each batch and when it
/// came) and puts each updated session in the record of its cid.
fn update(
    conns: &mut [ConnParcel],
    sessions: Vec<SessionRecord>,
    arrived: &[(usize, Instant)],
) -> Result<(), UpgradeError> {
    let now = Instant::now();
    let mut start = 0;
    for &(end, at) in arrived {
        let waited = now.saturating_duration_since(at);
        for c in &mut conns[start..end] {
            c.record.liveness = c.record.liveness.aged(waited);
        }
        start = end;
    }
    if sessions.is_empty() {
        return Ok(());
    }
    let by_cid: HashMap<i64, usize> = conns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.record.session.cid, i))
        .collect();
    for s in sessions {
        let Some(&i) = by_cid.get(&s.cid) else {
            return Err(UpgradeError::Broken(format!(
                "a session update for connection {}, which was not sent",
                s.cid
            )));
        };
        conns[i].record.session = s;
    }
    Ok(())
}

fn parcel(h: NodeLinkHead, fd: OwnedFd) -> (usize, NodeLinkParcel) {
    (
        h.shard as usize,
        NodeLinkParcel {
            addr: h.addr,
            slot: h.slot as usize,
            fd,
            queued: h.queued,
        },
    )
}

fn send(ch: &Channel, msg: &Msg) -> Result<(), UpgradeError> {
    ch.send(msg, &[])
        .map_err(|e| UpgradeError::Broken(format!("sending {}: {e}", name(msg))))
}

fn recv(ch: &Channel) -> Result<(Msg, Vec<OwnedFd>), UpgradeError> {
    ch.recv::<Msg>().map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => UpgradeError::Refused(format!(
            "cannot read what the running gate sent ({e}); it serves on"
        )),
        _ => UpgradeError::Broken(format!("receiving: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::framing::FramingRecord;
    use crate::connection::record::ConnRecord;
    use crate::liveness::LivenessRecord;
    use crate::session::{ConnState, Transport};

    fn parcel(cid: i64) -> ConnParcel {
        let fd = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        ConnParcel {
            record: ConnRecord {
                version: RECORD_VERSION,
                session: SessionRecord {
                    cid,
                    uid: 0,
                    ip: [127, 0, 0, 1].into(),
                    transport: Transport::Tcp,
                    state: ConnState::Opened,
                    channels: vec![],
                    outbox: vec![],
                    heartbeats_owed: 0,
                    forced_close: false,
                    auth_changed: false,
                },
                transmit: vec![],
                input_tail: vec![],
                liveness: LivenessRecord {
                    since_last_receive: Duration::from_millis(300),
                    until_next_tick: Some(Duration::from_millis(50)),
                    until_authorize: None,
                },
                framing: FramingRecord::Tcp,
            },
            fd,
        }
    }

    #[test]
    fn skimmed_records_are_aged_and_take_their_session_updates() {
        let mut conns: Vec<ConnParcel> = (1..=3).map(parcel).collect();
        let long_ago = Instant::now() - Duration::from_millis(100);
        // Two came in the skim (long ago), one in the freeze (just now).
        let arrived = [(2, long_ago), (3, Instant::now())];
        let mut changed = conns[1].record.session.clone();
        changed.uid = 42;
        changed.outbox = vec![b"pushed".to_vec()];
        update(&mut conns, vec![changed.clone()], &arrived).unwrap();
        assert_eq!(conns[1].record.session, changed);
        assert_eq!(conns[0].record.session.uid, 0);
        let l = &conns[0].record.liveness;
        assert!(l.since_last_receive >= Duration::from_millis(400));
        assert_eq!(l.until_next_tick, Some(Duration::ZERO));
        let fresh = &conns[2].record.liveness;
        assert!(fresh.since_last_receive < Duration::from_millis(350));
        // An update for a connection that was never sent breaks the hand-off.
        let mut stray = changed;
        stray.cid = 9;
        assert!(matches!(
            update(&mut conns, vec![stray], &arrived),
            Err(UpgradeError::Broken(_))
        ));
    }
}
