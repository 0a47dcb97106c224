//! The registry backends' background threads and their stop: named std threads joined with a
//! bound, the stop flag with the delivery lock, and the stop-aware sleep. Shared by Consul, etcd.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::RegistryError;

/// How long [`Threads::halt`] waits for each thread before detaching it.
const JOIN_BOUND: Duration = Duration::from_secs(1);

/// A thread and a channel that disconnects when it ends (for a bounded join).
struct Worker {
    handle: JoinHandle<()>,
    done: Receiver<()>,
}

impl Worker {
    fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<Worker, RegistryError> {
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
    fn join_bounded(self, bound: Duration) {
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

/// A registrar's threads: each gets the stop channel, which [`Threads::halt`] closes.
pub(super) struct Threads {
    stop_tx: Option<Sender<()>>,
    stop_rx: Receiver<()>,
    workers: Vec<Worker>,
}

impl Threads {
    pub(super) fn new() -> Threads {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        Threads {
            stop_tx: Some(stop_tx),
            stop_rx,
            workers: Vec::new(),
        }
    }

    /// Starts thread `name` running `body` with the stop channel.
    pub(super) fn spawn(
        &mut self,
        name: &str,
        body: impl FnOnce(Receiver<()>) + Send + 'static,
    ) -> Result<(), RegistryError> {
        let stop = self.stop_rx.clone();
        self.workers.push(Worker::spawn(name, move || body(stop))?);
        Ok(())
    }

    /// Wakes every thread and joins each within 1 s (else detaches it).
    pub(super) fn halt(&mut self) {
        drop(self.stop_tx.take());
        for worker in self.workers.drain(..) {
            worker.join_bounded(JOIN_BOUND);
        }
    }
}

/// The stop flag of a registrar and the lock that keeps node-list deliveries from running past
/// `stop`.
#[derive(Default)]
pub(super) struct Stop {
    /// Set first thing in `stop`; checked under the registration lock before every registration
    /// and under `deliver` before every node list is handed out.
    stopped: AtomicBool,
    /// Serialises node-list deliveries with `stop`: none starts after `stop` returned.
    deliver: Mutex<()>,
}

impl Stop {
    pub(super) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Sets the flag and waits for a delivery in progress; later ones see the flag.
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        drop(self.deliver.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Runs `deliver` unless stopped; false when stopped.
    pub(super) fn deliver(&self, deliver: impl FnOnce()) -> bool {
        let _guard = self.deliver.lock().unwrap_or_else(|p| p.into_inner());
        if self.stopped() {
            return false;
        }
        deliver();
        true
    }
}

/// Sleeps `d` unless the stop channel fires (or disconnects) first; true if it did.
pub(super) fn stopped_within(stop: &Receiver<()>, d: Duration) -> bool {
    !matches!(stop.recv_timeout(d), Err(RecvTimeoutError::Timeout))
}

/// Why an HTTP call to a registry failed: transport trouble, or a status other than 200 with the
/// server's explanation.
#[derive(Debug)]
pub(super) enum CallError {
    Transport(String),
    Status(u16, String),
}

impl CallError {
    /// The error of call `what` (`register gate-1`) to `backend`.
    pub(super) fn describe(self, backend: &'static str, what: &str) -> RegistryError {
        let call = what.to_string();
        match self {
            CallError::Transport(reason) => RegistryError::Transport {
                backend,
                call,
                reason,
            },
            CallError::Status(status, body) => RegistryError::Status {
                backend,
                call,
                status,
                body,
            },
        }
    }
}
