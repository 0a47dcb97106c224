//! The inbound node API: what nodes and meshes ask of the gate over drpc (bind, push, stat, …),
//! as pure per-command plans ([`command`]) run on the sessions by a socket loop ([`server`]).
//!
//! It sits above [`crate::session`] and below the shard: it never names the shard, the client
//! listeners or the gate. What it needs of the shard it owns is the [`LocalSessions`] trait.

pub mod command;
pub mod server;

pub use command::{plan, respond, Effect, Outcome, Peer, Plan, Reply, Rules};
pub use server::{accept_loop, adopt, LinkParcel, LinkRecord, LinkShared};

use bytes::Bytes;
use std::rc::Rc;

use crate::handoff::Stage;
use crate::session::{Kind, SessionError, Sessions};

/// The session state of the shard a link connection runs on.
pub trait LocalSessions {
    /// The gate-wide session API.
    fn sessions(&self) -> &Sessions;
    /// A fire-and-forget push, applied without a channel hop when this shard owns the target
    /// (otherwise like [`Sessions::push_nowait`]).
    fn push_nowait(&self, kind: Kind, target: i64, bytes: Bytes) -> Result<(), SessionError>;
    /// Runs a follow-up of a command (a disconnect not awaited) as a task of the shard, which
    /// waits for it (bounded) when it stops.
    fn spawn(&self, task: impl std::future::Future<Output = ()> + 'static);
    /// The shard's stage of inbound link connections in an upgrade hand-off.
    fn link_stage(&self) -> Option<&Rc<Stage>> {
        None
    }
    /// Offers a frozen link connection to the hand-off; `false` when none is being collected
    /// (the parcel is dropped and the connection stays here).
    fn hand_over_link(&self, _parcel: LinkParcel<crate::handoff::Lent>) -> bool {
        false
    }
}
