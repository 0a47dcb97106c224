//! The new process's side of an upgrade: finds the running gate, receives its sockets and state,
//! and confirms once everything is taken up.
//!
//! Connections are spread over the new shards as they arrive ([`Spreader`]), and the shards
//! rebuild them at once, but nothing received runs before [`Taking::confirm`] returns: until the
//! running gate has committed, it may still resume, and two processes must never touch one
//! socket.

use socket2::Socket;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::Duration;

use super::give::name;
use super::wire::{Channel, SocketName};
use super::{ListenerKind, Msg, NodeLinkHead, UpgradeError, PROTOCOL};
use crate::connection::record::{ConnParcel, RECORD_VERSION};
use crate::dispatch::NodeLinkParcel;
use crate::node_api::LinkParcel;
use crate::session::SessionRecord;
use crate::session::{home_of_uid, shard_of_cid, Transport};
use crate::shard::{Feed, Inherited};

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

/// What the running gate hands over first: its listening sockets, port claims and upgrade
/// socket.
#[derive(Debug, Default)]
pub struct Head {
    pub listeners: Vec<(ListenerKind, Vec<OwnedFd>)>,
    pub claims: Vec<(u16, OwnedFd)>,
    pub upgrade_socket: Option<Socket>,
}

impl Head {
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

/// What follows the head, one message at a time, as it arrives.
pub enum Parcels {
    /// Client connections (skimmed ones first, then those of the freeze).
    Conns(Vec<ConnParcel>),
    /// Sessions of connections sent earlier that changed before the freeze.
    Sessions(Vec<SessionRecord>),
    Links(Vec<LinkParcel>),
    /// Outbound node links with the old shard each came from.
    NodeLinks(Vec<(usize, NodeLinkParcel)>),
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
    pub fn refuse(&self, reason: &str) {
        let _ = self.ch.send(&Msg::Refuse(reason.to_string()), &[]);
    }

    /// Asks the running gate to hand over (`go`) and receives its head: listeners, claims and
    /// the upgrade socket, which come last.
    pub fn receive_head(&self) -> Result<Head, UpgradeError> {
        send(&self.ch, &Msg::Go)?;
        let mut head = Head::default();
        loop {
            let (msg, fds) = recv(&self.ch)?;
            let mut fds = fds.into_iter();
            match msg {
                Msg::Listeners(kind) => head.listeners.push((kind, fds.collect())),
                Msg::Claims(ports) => {
                    let socks = take(&mut fds, ports.len(), "claims")?;
                    head.claims.extend(ports.into_iter().zip(socks));
                }
                Msg::UpgradeSocket => {
                    let fd = take(&mut fds, 1, "upgrade socket")?
                        .pop()
                        .expect("one socket");
                    head.upgrade_socket = Some(Socket::from(fd));
                    return Ok(head);
                }
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Receives every parcel, handing each message to `sink` as it arrives, until `done`;
    /// returns the cid bound (every cid the running gate made is below it). An `Err` from
    /// `sink` ends the hand-off (the caller refuses it).
    pub fn receive_parcels(
        &self,
        mut sink: impl FnMut(Parcels) -> Result<(), UpgradeError>,
    ) -> Result<i64, UpgradeError> {
        loop {
            let (msg, fds) = recv(&self.ch)?;
            let mut fds = fds.into_iter();
            let parcels = match msg {
                Msg::Conns(records) => {
                    let socks = take(&mut fds, records.len(), "connections")?;
                    Parcels::Conns(
                        records
                            .into_iter()
                            .zip(socks)
                            .map(|(record, fd)| ConnParcel { record, fd })
                            .collect(),
                    )
                }
                Msg::Sessions(records) => Parcels::Sessions(records),
                Msg::Links(records) => {
                    let socks = take(&mut fds, records.len(), "links")?;
                    Parcels::Links(
                        records
                            .into_iter()
                            .zip(socks)
                            .map(|(record, fd)| LinkParcel { record, fd })
                            .collect(),
                    )
                }
                Msg::NodeLinks(heads) => {
                    let socks = take(&mut fds, heads.len(), "node links")?;
                    Parcels::NodeLinks(
                        heads
                            .into_iter()
                            .zip(socks)
                            .map(|(h, fd)| parcel(h, fd))
                            .collect(),
                    )
                }
                Msg::Done { cid_bound } => return Ok(cid_bound),
                other => return Err(unexpected(other)),
            };
            sink(parcels)?;
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

/// `n` sockets out of those attached to a message about `what`.
fn take(
    fds: &mut impl Iterator<Item = OwnedFd>,
    n: usize,
    what: &str,
) -> Result<Vec<OwnedFd>, UpgradeError> {
    let v: Vec<OwnedFd> = fds.by_ref().take(n).collect();
    if v.len() != n {
        return Err(UpgradeError::Broken(format!(
            "{what}: {n} sockets announced, {} attached",
            v.len()
        )));
    }
    Ok(v)
}

/// A message out of place: a refusal passes on, anything else breaks the hand-off.
fn unexpected(msg: Msg) -> UpgradeError {
    match msg {
        Msg::Refuse(r) => UpgradeError::Refused(r),
        other => UpgradeError::Broken(format!("unexpected {} while receiving", name(&other))),
    }
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

/// Spreads what arrives over this process's shards as it arrives (`Feed`): each connection to
/// the shard its cid names under this shard count, so every cid stays valid; then, once all is
/// in, the links, node links, home index entries and the cid floor.
pub struct Spreader {
    feeds: Vec<flume::Sender<Feed>>,
    /// Transports this configuration serves without TLS (a connection of another is refused).
    plain: Vec<Transport>,
    /// The uid of every connection sent to a shard, by cid (for the home index).
    uids: HashMap<i64, i64>,
    links: Vec<LinkParcel>,
    node_links: Vec<(usize, NodeLinkParcel)>,
}

impl Spreader {
    pub fn new(feeds: Vec<flume::Sender<Feed>>, plain: Vec<Transport>) -> Spreader {
        Spreader {
            feeds,
            plain,
            uids: HashMap::new(),
            links: Vec::new(),
            node_links: Vec::new(),
        }
    }

    /// Takes one message's parcels.
    pub fn take(&mut self, parcels: Parcels) -> Result<(), UpgradeError> {
        let count = self.feeds.len();
        match parcels {
            Parcels::Conns(conns) => {
                let mut per: Vec<Vec<ConnParcel>> = (0..count).map(|_| Vec::new()).collect();
                for c in conns {
                    let s = &c.record.session;
                    if !self.plain.contains(&s.transport) {
                        return Err(UpgradeError::Refused(format!(
                            "connection {} is {:?}, and this configuration has no such server \
                             without TLS",
                            s.cid, s.transport
                        )));
                    }
                    self.uids.insert(s.cid, s.uid);
                    per[shard_of_cid(s.cid, count)].push(c);
                }
                for (i, conns) in per.into_iter().enumerate() {
                    if !conns.is_empty() {
                        self.feed(i, Feed::Conns(conns))?;
                    }
                }
            }
            Parcels::Sessions(sessions) => {
                for s in sessions {
                    let Some(uid) = self.uids.get_mut(&s.cid) else {
                        return Err(UpgradeError::Broken(format!(
                            "a session update for connection {}, which was not sent",
                            s.cid
                        )));
                    };
                    *uid = s.uid;
                    self.feed(shard_of_cid(s.cid, count), Feed::Session(s))?;
                }
            }
            Parcels::Links(links) => self.links.extend(links),
            Parcels::NodeLinks(l) => self.node_links.extend(l),
        }
        Ok(())
    }

    /// Everything arrived (`cid_bound` from `done`): hands each shard the rest. Returns the
    /// feeds, for `Commit`.
    pub fn finish(self, cid_bound: i64) -> Result<Vec<flume::Sender<Feed>>, UpgradeError> {
        let count = self.feeds.len();
        // New cids start above every old one.
        let next_seq = cid_bound / count as i64 + 1;
        let mut rest: Vec<Inherited> = (0..count)
            .map(|_| Inherited {
                next_seq,
                ..Default::default()
            })
            .collect();
        for (cid, uid) in self.uids {
            if uid != 0 {
                rest[home_of_uid(uid, count)].users.push((uid, cid));
            }
        }
        for (i, link) in self.links.into_iter().enumerate() {
            rest[i % count].links.push(link);
        }
        for (old_shard, l) in self.node_links {
            rest[old_shard % count].node_links.push(l);
        }
        for (i, r) in rest.into_iter().enumerate() {
            feed(&self.feeds, i, Feed::Rest(r))?;
        }
        Ok(self.feeds)
    }

    fn feed(&self, shard: usize, f: Feed) -> Result<(), UpgradeError> {
        feed(&self.feeds, shard, f)
    }
}

/// Hands `f` to `shard`; a shard that stopped breaks the hand-off.
pub fn feed(feeds: &[flume::Sender<Feed>], shard: usize, f: Feed) -> Result<(), UpgradeError> {
    feeds[shard]
        .send(f)
        .map_err(|_| UpgradeError::Broken(format!("shard {shard} stopped")))
}
