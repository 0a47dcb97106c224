//! The words every part of the cluster shares: an instance's life-cycle state and a route's flags.
//! Plain data with their text and byte forms; the registry, the config and the node API use them.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// The one copy of this process's instance state: the node API reads and writes it
/// (getstate/setstate) and the registrar registers what it holds. Cheap to clone, any thread.
///
/// Kept as due keeps it: the raw byte a node's setstate sent, unvalidated (getstate echoes it);
/// a byte above 3 reads as `shut`, as Go renders it in the registry.
#[derive(Debug, Clone)]
pub struct StateCell(Arc<AtomicU8>);

impl StateCell {
    pub fn new(state: InstanceState) -> Self {
        StateCell(Arc::new(AtomicU8::new(state.as_byte())))
    }

    /// The state as the registry shows it.
    pub fn get(&self) -> InstanceState {
        InstanceState::from_byte(self.byte()).unwrap_or(InstanceState::Shut)
    }

    pub fn set(&self, state: InstanceState) {
        self.set_byte(state.as_byte());
    }

    /// The raw byte (getstate).
    pub fn byte(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }

    /// Stores a raw byte (setstate).
    pub fn set_byte(&self, byte: u8) {
        self.0.store(byte, Ordering::Relaxed);
    }
}

/// One message route an instance serves, with the three flags the gate acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RouteInfo {
    pub id: i32,
    /// Only reachable from other nodes: the gate drops client packets for it.
    pub internal: bool,
    /// Delivered to the node the user is bound to (located through Redis), not balanced.
    pub stateful: bool,
    /// Needs a bound user (uid ≠ 0); anonymous packets for it are dropped.
    pub authorized: bool,
}

/// An instance's life-cycle state (due's `cluster.State`).
///
/// The registry carries it as text, the link's getstate/setstate commands as one byte. The order
/// of the variants is the byte value, so `Shut` (0) is also the natural default: a record that
/// says nothing about its state is treated as not serving.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum InstanceState {
    /// Closed: not reachable for new work. Also what an unknown state text means (see
    /// [`InstanceState::from_text`]).
    #[default]
    Shut = 0,
    /// Serving normally: preferred by stateless dispatch.
    Work = 1,
    /// Serving but loaded: used by stateless dispatch only when no instance is in `Work`.
    Busy = 2,
    /// Shutting down: never picked for stateless routes, still reached by stateful routes and
    /// events.
    Hang = 3,
}

impl InstanceState {
    /// The registry text: `shut`, `work`, `busy` or `hang`.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Shut => "shut",
            InstanceState::Work => "work",
            InstanceState::Busy => "busy",
            InstanceState::Hang => "hang",
        }
    }

    /// Reads the registry text (exact, case-sensitive match as in Go).
    ///
    /// The spec does not say what an unknown text means, so it maps to `Shut`. That is not an
    /// arbitrary choice: due's dispatcher files an instance with an unknown state in no state
    /// bucket but still in the route's ID map and event lists — which is exactly how a `shut`
    /// instance is treated (never picked by stateless dispatch, still found by stateful routes,
    /// still sent events). So the mapping changes nothing observable for routing.
    pub fn from_text(text: &str) -> InstanceState {
        match text {
            "work" => InstanceState::Work,
            "busy" => InstanceState::Busy,
            "hang" => InstanceState::Hang,
            _ => InstanceState::Shut,
        }
    }

    /// The one-byte form used by getstate/setstate: 0 shut, 1 work, 2 busy, 3 hang.
    pub fn as_byte(self) -> u8 {
        self as u8
    }

    /// Reads the one-byte form; `None` for values above 3.
    ///
    /// Returning `None` (rather than guessing) matters because a v2.4.1 gate stores a setstate
    /// byte unvalidated and getstate echoes it back raw; the link layer decides whether to keep
    /// the raw byte. Go renders such a value as the text `shut`, i.e.
    /// `from_byte(b).unwrap_or(InstanceState::Shut)` gives Go's text.
    pub fn from_byte(byte: u8) -> Option<InstanceState> {
        match byte {
            0 => Some(InstanceState::Shut),
            1 => Some(InstanceState::Work),
            2 => Some(InstanceState::Busy),
            3 => Some(InstanceState::Hang),
            _ => None,
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_text_round_trips() {
        for state in [
            InstanceState::Shut,
            InstanceState::Work,
            InstanceState::Busy,
            InstanceState::Hang,
        ] {
            assert_eq!(InstanceState::from_text(state.as_str()), state);
            assert_eq!(state.to_string(), state.as_str());
        }
        assert_eq!(InstanceState::Work.as_str(), "work");
        assert_eq!(InstanceState::Shut.as_str(), "shut");
        assert_eq!(InstanceState::Busy.as_str(), "busy");
        assert_eq!(InstanceState::Hang.as_str(), "hang");
    }

    #[test]
    fn unknown_state_text_is_shut() {
        for text in ["", "WORK", "Work", "working", " work", "idle", "1"] {
            assert_eq!(
                InstanceState::from_text(text),
                InstanceState::Shut,
                "{text:?}"
            );
        }
    }

    #[test]
    fn state_cell_is_shared_and_keeps_raw_bytes() {
        let a = StateCell::new(InstanceState::Work);
        let b = a.clone();
        b.set(InstanceState::Hang);
        assert_eq!(a.get(), InstanceState::Hang);
        a.set_byte(9);
        assert_eq!(b.byte(), 9, "getstate echoes what setstate stored");
        assert_eq!(b.get(), InstanceState::Shut, "registered as Go renders it");
    }

    #[test]
    fn state_bytes() {
        assert_eq!(InstanceState::Shut.as_byte(), 0);
        assert_eq!(InstanceState::Work.as_byte(), 1);
        assert_eq!(InstanceState::Busy.as_byte(), 2);
        assert_eq!(InstanceState::Hang.as_byte(), 3);
        for b in 0..=3u8 {
            assert_eq!(InstanceState::from_byte(b).unwrap().as_byte(), b);
        }
        for b in [4u8, 7, 255] {
            assert_eq!(InstanceState::from_byte(b), None);
        }
    }
}
