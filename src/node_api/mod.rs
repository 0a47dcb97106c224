//! The inbound node API: what nodes and meshes ask of the gate over drpc (bind, push, stat, …),
//! as pure per-command plans ([`command`]) run on the sessions by a socket loop ([`server`]).
//!
//! It sits above [`crate::session`] and below the shard: it never names the shard, the client
//! listeners or the gate. What it needs of the shard it owns is the [`LocalSessions`] trait.

pub mod command;
pub mod server;

pub use command::{plan, respond, Effect, Outcome, Peer, Plan, Reply, Rules};
pub use server::{accept_loop, LinkShared};

use bytes::Bytes;

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
}
