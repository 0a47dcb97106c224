//! KCP over UDP as due v2.4.1's KCP server speaks it (kcp-go v5.6.20), sans-IO: datagram intake
//! (plain and FEC-framed), which session a datagram belongs to, and one session's KCP engine.
//!
//! The engine itself is the `kcp` crate's; this module runs it as kcp-go does (parameters,
//! MSS-cut writes with `frg = 0`, flush timing) and closes its gaps around it: datagrams are
//! classified and checked first (`intake`: FEC headers stripped, bad segments cut, impossible
//! values that would overflow the engine's arithmetic refused or clamped). The sockets, timers
//! and connections live in `connection::kcp`.

pub mod intake;
pub mod session;
pub mod table;

#[cfg(test)]
mod tests;

pub use intake::{classify, sanitise, Intake};
pub use session::{Outbox, Params, Session};
pub use table::{route, Closed, Dropped, Route};
