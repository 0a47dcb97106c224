//! Which session a datagram belongs to (spec kcp.md §2.2, with gatehouse's deviations): feed an
//! existing session, replace it (reconnect from the same port), create one, or drop the datagram;
//! and the memory of recently closed conversations that keeps closed sessions from coming back
//! as zombies (§6.4).
//!
//! Pure: the owner keeps the sessions by source address and asks [`route`] what to do.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;

use super::intake::Intake;

/// What to do with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Feed it to the address's session.
    Feed,
    /// Close the address's session (its client started a new conversation from the same port:
    /// another conv with sn 0) and create a new one from this datagram.
    Replace,
    /// Create a session (and a connection) from this datagram.
    Create,
    /// Drop it silently, for this reason.
    Drop(Dropped),
}

/// Why a datagram was dropped (a metrics and debug-log label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Shorter than a segment (kcp-go drops it too).
    TooShort,
    /// An FEC parity shard (no Reed-Solomon recovery; KCP retransmits).
    Parity,
    /// Another conv with sn ≠ 0 from an address that has a session (kcp-go drops it too).
    OtherConv,
    /// The first segment is no valid KCP segment (gatehouse: kcp-go makes a session of any
    /// 24 bytes, V2).
    Invalid,
    /// The conversation was closed here lately (gatehouse: kcp-go makes a zombie, V11).
    Closed,
}

impl Dropped {
    pub fn label(self) -> &'static str {
        match self {
            Dropped::TooShort => "too_short",
            Dropped::Parity => "parity",
            Dropped::OtherConv => "other_conv",
            Dropped::Invalid => "invalid",
            Dropped::Closed => "closed",
        }
    }
}

/// Decides for a datagram classified as `intake` from an address whose session (if any) has
/// conversation `existing`; `valid` = the first segment passed `intake::sanitise` (a non-zero
/// prefix); `closed` = the (address, conv) pair is in the [`Closed`] memory.
pub fn route(existing: Option<u32>, intake: Intake, valid: bool, closed: bool) -> Route {
    let (conv, sn) = match intake {
        Intake::TooShort => return Route::Drop(Dropped::TooShort),
        Intake::Parity => return Route::Drop(Dropped::Parity),
        Intake::Segments { conv, sn, .. } => (conv, sn),
    };
    match existing {
        Some(c) if c == conv => Route::Feed,
        Some(_) if sn == 0 && valid && !closed => Route::Replace,
        Some(_) => Route::Drop(Dropped::OtherConv),
        None if closed => Route::Drop(Dropped::Closed),
        None if valid => Route::Create,
        None => Route::Drop(Dropped::Invalid),
    }
}

/// Conversations closed lately, by (address, conv), each remembered for `ttl_ms` (and at most
/// `cap` of them, oldest forgotten first, so a flood of closes cannot grow it without bound).
pub struct Closed {
    set: HashSet<(SocketAddr, u32)>,
    order: VecDeque<(u64, SocketAddr, u32)>,
    ttl_ms: u64,
    cap: usize,
}

impl Closed {
    pub fn new(ttl_ms: u64, cap: usize) -> Self {
        Closed {
            set: HashSet::new(),
            order: VecDeque::new(),
            ttl_ms,
            cap,
        }
    }

    /// Remembers that `conv` from `addr` closed at `now_ms`.
    pub fn insert(&mut self, addr: SocketAddr, conv: u32, now_ms: u64) {
        if self.ttl_ms == 0 || self.cap == 0 {
            return;
        }
        if self.set.insert((addr, conv)) {
            self.order.push_back((now_ms + self.ttl_ms, addr, conv));
        }
        while self.order.len() > self.cap {
            self.pop();
        }
    }

    /// Whether `conv` from `addr` closed less than the ttl before `now_ms`.
    pub fn contains(&mut self, addr: SocketAddr, conv: u32, now_ms: u64) -> bool {
        while self
            .order
            .front()
            .is_some_and(|(until, ..)| *until <= now_ms)
        {
            self.pop();
        }
        self.set.contains(&(addr, conv))
    }

    fn pop(&mut self) {
        if let Some((_, a, c)) = self.order.pop_front() {
            self.set.remove(&(a, c));
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: fn(u32, u32) -> Intake = |conv, sn| Intake::Segments {
        offset: 0,
        conv,
        sn,
    };

    #[test]
    fn routes_follow_kcp_go_with_gatehouse_deviations() {
        // §2.2 step 3: same conv feeds; a parity shard never does anything.
        assert_eq!(route(Some(7), SEG(7, 5), true, false), Route::Feed);
        assert_eq!(route(Some(7), SEG(7, 5), false, false), Route::Feed);
        assert_eq!(
            route(Some(7), Intake::Parity, false, false),
            Route::Drop(Dropped::Parity)
        );
        assert_eq!(
            route(None, Intake::Parity, false, false),
            Route::Drop(Dropped::Parity)
        );
        // V3: another conv with sn 0 replaces, with sn ≠ 0 is dropped.
        assert_eq!(
            route(Some(0xaaaa), SEG(0xbbbb, 0), true, false),
            Route::Replace
        );
        assert_eq!(
            route(Some(0xbbbb), SEG(0xcccc, 1), true, false),
            Route::Drop(Dropped::OtherConv)
        );
        // V1: too short.
        assert_eq!(
            route(None, Intake::TooShort, false, false),
            Route::Drop(Dropped::TooShort)
        );
        // New address: a valid first segment creates (K1, K10's WASK, V5's gap) …
        assert_eq!(route(None, SEG(1, 0), true, false), Route::Create);
        assert_eq!(route(None, SEG(5, 1), true, false), Route::Create);
        // … 24 zero bytes do not (V2, deviation) …
        assert_eq!(
            route(None, SEG(0, 0), false, false),
            Route::Drop(Dropped::Invalid)
        );
        // … nor a conversation closed here lately (V11, deviation), even with sn 0.
        assert_eq!(
            route(None, SEG(0x1122_3344, 7), true, true),
            Route::Drop(Dropped::Closed)
        );
        assert_eq!(
            route(None, SEG(0x1122_3344, 0), true, true),
            Route::Drop(Dropped::Closed)
        );
    }

    #[test]
    fn closed_conversations_are_forgotten_after_the_ttl_or_beyond_the_cap() {
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let mut c = Closed::new(1000, 2);
        c.insert(a, 1, 0);
        assert!(c.contains(a, 1, 999));
        assert!(!c.contains(a, 2, 999), "another conv from the address");
        assert!(!c.contains(b, 1, 999), "the conv from another address");
        assert!(!c.contains(a, 1, 1000), "forgotten after the ttl");
        assert!(c.is_empty());
        c.insert(a, 1, 0);
        c.insert(a, 2, 0);
        c.insert(b, 1, 0);
        assert_eq!(c.len(), 2);
        assert!(!c.contains(a, 1, 1), "the oldest went beyond the cap");
        assert!(c.contains(b, 1, 1));
    }
}
