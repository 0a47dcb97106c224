//! The registry backends' background threads and their stop: named std threads joined with a
//! bound, the stop flag with the delivery lock, the stop-aware sleep, and the registrar every
//! backend (Consul, etcd, Nacos) starts, changes the state of, stops or abandons the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::{InstanceState, RegistryError};
use crate::instance::StateCell;

/// What a backend's registrar shares with its threads, as far as the common part needs it.
pub(super) trait Backend: Send + Sync + 'static {
    /// The backend's name, in errors and on the banner.
    const NAME: &'static str;
    /// What the registration lock guards.
    type Registration;
    /// The registration lock: held for the whole of every registration and of the final
    /// deregistration, so registrations never interleave and none follows the deregistration.
    fn registration(&self) -> MutexGuard<'_, Self::Registration>;
    fn stop_flag(&self) -> &Stop;
    /// The instance state, owned with the node API: every registration carries its value.
    fn state(&self) -> &StateCell;
    /// Registers the record with the current state. Caller holds the registration lock.
    fn register_locked(&self, reg: &mut Self::Registration) -> Result<(), RegistryError>;
    /// Removes the record under the registration lock (after any registration in flight),
    /// logging a failure.
    fn deregister_quietly(&self);
}

/// A thread of a registrar: its name and its body, which gets the stop channel.
pub(super) type Loop = (&'static str, Box<dyn FnOnce(Receiver<()>) + Send>);

/// A gate's registration in one backend and the threads that keep it and watch the nodes.
pub(super) struct Registrar<B> {
    pub(super) shared: Arc<B>,
    threads: Threads,
}

impl<B: Backend> Registrar<B> {
    /// Starts `loops` for a registered `shared`; if one cannot start, what started is stopped
    /// and the record removed.
    pub(super) fn spawn(shared: Arc<B>, loops: Vec<Loop>) -> Result<Self, RegistryError> {
        let mut registrar = Registrar {
            shared,
            threads: Threads::new(),
        };
        for (name, body) in loops {
            if let Err(e) = registrar.threads.spawn(name, body) {
                registrar.stop();
                return Err(e);
            }
        }
        Ok(registrar)
    }

    /// Sets the shared state and registers again (the gate does it once: `hang` when shutdown
    /// begins). The state is kept even if the call fails, so a later registration carries it.
    pub fn set_state(&self, state: InstanceState) -> Result<(), RegistryError> {
        let mut reg = self.shared.registration();
        if self.shared.stop_flag().stopped() {
            return Err(RegistryError::Stopped { backend: B::NAME });
        }
        self.shared.state().set(state);
        self.shared.register_locked(&mut reg)
    }

    /// Stops the threads, then removes the record.
    ///
    /// Bounded: each thread is given 1 s to end, then detached (its loops check the stop flag
    /// after every call, and every call has a timeout). None can act after this returns:
    /// registrations check the stop flag under the registration lock, which the removal holds,
    /// and no node list is delivered once the stop flag is set.
    pub fn stop(mut self) {
        self.halt();
        self.shared.deregister_quietly();
    }

    /// Stops the threads and leaves the record: the next process (`--upgrade`) registered the
    /// same one and keeps it alive.
    pub fn abandon(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop_flag().stop();
        self.threads.halt();
    }
}

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
