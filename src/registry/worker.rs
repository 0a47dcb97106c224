//! The registry backends' background threads: a named std thread whose end can be awaited
//! with a bound, and the stop-aware sleep their loops use. Shared by Consul and etcd.

use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::RegistryError;

/// A thread and a channel that disconnects when it ends (for a bounded join).
pub(super) struct Worker {
    handle: JoinHandle<()>,
    done: Receiver<()>,
}

impl Worker {
    pub(super) fn spawn(
        name: &str,
        body: impl FnOnce() + Send + 'static,
    ) -> Result<Worker, RegistryError> {
        let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let _done = done_tx;
                body();
            })
            .map_err(|e| RegistryError::Thread {
                name: name.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Worker { handle, done })
    }

    /// Joins within `bound`, else detaches (the thread ends on its own: its loops check the stop
    /// flag after every call, and every call has a timeout).
    pub(super) fn join_bounded(self, bound: Duration) {
        match self.done.recv_timeout(bound) {
            Err(RecvTimeoutError::Disconnected) => {
                let _ = self.handle.join();
            }
            Ok(()) | Err(RecvTimeoutError::Timeout) => {
                let name = self.handle.thread().name().unwrap_or("?").to_string();
                tracing::debug!(thread = %name, "registry: thread still busy at stop, detached");
            }
        }
    }
}

/// Sleeps `d` unless the stop channel fires (or disconnects) first; true if it did.
pub(super) fn stopped_within(stop: &Receiver<()>, d: Duration) -> bool {
    !matches!(stop.recv_timeout(d), Err(RecvTimeoutError::Timeout))
}
