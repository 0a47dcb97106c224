//! A client connection's whole state as a plain, versioned record: what an upgrade hands to the
//! next process so it can carry on the connection byte for byte.
//!
//! Built by `Connection::export` and consumed by `Connection::import`. Instants are stored as
//! durations from the moment of export; buffers as plain bytes. Serde makes it serialisable in
//! any format (the tests round-trip it through JSON).

use serde::{Deserialize, Serialize};

use super::framing::FramingRecord;
use crate::liveness::LivenessRecord;
use crate::session::SessionRecord;

/// The layout version written by this build. A record of another version is refused.
pub const RECORD_VERSION: u32 = 1;

/// Everything one client connection is, apart from its socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnRecord {
    /// [`RECORD_VERSION`] of the build that wrote it.
    pub version: u32,
    /// cid, uid, state, channels, queued packets, owed heartbeats, pending orders.
    pub session: SessionRecord,
    /// The unwritten rest of the batch being written (empty when none).
    pub transmit: Vec<u8>,
    /// Input read but not yet decoded (the start of an incomplete frame).
    pub input_tail: Vec<u8>,
    pub liveness: LivenessRecord,
    pub framing: FramingRecord,
}

/// How long a client must have sent nothing for its connection to count as quiet: an upgrade
/// hands quiet connections over first, while the busy ones still serve, and the next process
/// starts the busy ones first.
pub const SKIM_QUIET: std::time::Duration = std::time::Duration::from_millis(250);

/// A frozen connection on its way to the next process: its state and its socket, lent by the
/// parked driver in the old process ([`crate::handoff::Lent`]), owned in the new one.
#[derive(Debug)]
pub struct ConnParcel<S = std::os::fd::OwnedFd> {
    pub record: ConnRecord,
    pub fd: S,
}

/// Why a record cannot be taken up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// Written by a build with another record layout.
    Version(u32),
    /// The record's framing is not the transport of the server taking it up.
    Transport,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Version(v) => write!(
                f,
                "connection record version {v}, this build reads {RECORD_VERSION}"
            ),
            RecordError::Transport => f.write_str("connection record of another transport"),
        }
    }
}

impl std::error::Error for RecordError {}
