//! The link module owns the internal gate↔node protocol ("drpc"): framing, commands, answers.
//! Nodes dial the gate's link server; the gate dials nodes to deliver client packets and events.

pub mod client;
pub mod server;
