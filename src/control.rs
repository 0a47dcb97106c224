//! The control thread: a plain std thread that owns the user locator (memory or Redis), whose
//! calls may block. Shards talk to it over channels and never wait on it synchronously.
//!
//! Requests that need an answer carry a `flume` reply sender; a shard awaits the reply
//! asynchronously, so a slow locator delays only the operation that asked, never the shard.

pub use crate::locator::{Locator, LocatorError, MemoryLocator};
use crate::metrics::ControlMetrics;
use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Why a request to the control thread failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// The control thread has stopped (the gate is shutting down).
    Stopped,
    /// The locator answered with an error.
    Locator(LocatorError),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::Stopped => f.write_str("control thread stopped"),
            ControlError::Locator(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ControlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ControlError::Stopped => None,
            ControlError::Locator(e) => Some(e),
        }
    }
}

impl From<LocatorError> for ControlError {
    fn from(e: LocatorError) -> ControlError {
        ControlError::Locator(e)
    }
}

/// Requests the control thread serves.
pub enum ControlRequest {
    BindUser {
        uid: i64,
        reply: flume::Sender<Result<(), LocatorError>>,
    },
    /// Unbinds; answers on `reply` when given (errors are logged either way).
    UnbindUser {
        uid: i64,
        reply: Option<flume::Sender<Result<(), LocatorError>>>,
    },
    LocateNode {
        uid: i64,
        name: String,
        reply: flume::Sender<Result<Option<String>, LocatorError>>,
    },
    /// Runs `then` unless the locator names this gate for `uid` (single login across gates).
    IfMoved {
        uid: i64,
        then: Box<dyn FnOnce() + Send>,
    },
    Stop,
}

/// A cloneable handle to the control thread.
#[derive(Clone)]
pub struct Control {
    tx: crossbeam_channel::Sender<ControlRequest>,
}

impl Control {
    /// Starts the control thread with its locator; locator calls are counted in `metrics`.
    pub fn start(
        gid: String,
        mut locator: Box<dyn Locator>,
        metrics: Arc<ControlMetrics>,
    ) -> (Control, JoinHandle<()>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        metrics.locator_up.set(1);
        // One writer: this thread.
        let count = move |ok: bool| {
            if !ok {
                metrics.locator_errors.inc();
            }
            metrics.locator_up.set(ok as i64);
        };
        let handle = std::thread::Builder::new()
            .name("gatehouse-control".into())
            .spawn(move || {
                for req in rx {
                    match req {
                        ControlRequest::BindUser { uid, reply } => {
                            let r = locator.bind_gate(uid, &gid);
                            count(r.is_ok());
                            let _ = reply.send(r);
                        }
                        ControlRequest::UnbindUser { uid, reply } => {
                            let r = locator.unbind_gate(uid, &gid);
                            count(r.is_ok());
                            if let Err(e) = &r {
                                tracing::error!(uid, error = %e, "locator unbind failed");
                            }
                            if let Some(reply) = reply {
                                let _ = reply.send(r);
                            }
                        }
                        ControlRequest::LocateNode { uid, name, reply } => {
                            let r = locator.locate_node(uid, &name);
                            count(r.is_ok());
                            let _ = reply.send(r);
                        }
                        ControlRequest::IfMoved { uid, then } => {
                            let r = locator.locate_gate(uid);
                            count(r.is_ok());
                            match r {
                                Ok(Some(g)) if g == gid => {
                                    tracing::debug!(uid, "locator: stale bind event, uid is here");
                                }
                                Ok(_) => then(),
                                Err(e) => {
                                    // The event itself says another gate bound the uid: trust it.
                                    tracing::warn!(uid, error = %e, "locator: cannot confirm a bind elsewhere");
                                    then();
                                }
                            }
                        }
                        ControlRequest::Stop => break,
                    }
                }
            })
            .expect("spawn control thread");
        (Control { tx }, handle)
    }

    /// Asks the locator to bind `uid` to this gate; resolves when it answered.
    pub async fn bind_user(&self, uid: i64) -> Result<(), ControlError> {
        let (reply, rx) = flume::bounded(1);
        self.tx
            .send(ControlRequest::BindUser { uid, reply })
            .map_err(|_| ControlError::Stopped)?;
        let answer = rx.recv_async().await.map_err(|_| ControlError::Stopped)?;
        Ok(answer?)
    }

    /// The node of name `name` serving `uid` (stateful routes); resolves when the locator answered.
    pub async fn locate_node(&self, uid: i64, name: &str) -> Result<Option<String>, ControlError> {
        let (reply, rx) = flume::bounded(1);
        self.tx
            .send(ControlRequest::LocateNode {
                uid,
                name: name.to_string(),
                reply,
            })
            .map_err(|_| ControlError::Stopped)?;
        let answer = rx.recv_async().await.map_err(|_| ControlError::Stopped)?;
        Ok(answer?)
    }

    /// Runs `then` on the control thread unless the locator names this gate for `uid` (an
    /// event saying another gate bound it may be older than this gate's own later bind). A
    /// locator error runs it too. Returns at once; `then` must not block.
    pub fn if_moved(&self, uid: i64, then: Box<dyn FnOnce() + Send>) {
        let _ = self.tx.send(ControlRequest::IfMoved { uid, then });
    }

    /// Fire-and-forget unbind of `uid` from this gate.
    pub fn unbind_user(&self, uid: i64) {
        let _ = self
            .tx
            .send(ControlRequest::UnbindUser { uid, reply: None });
    }

    /// Unbinds `uid` from this gate and resolves when the locator answered.
    pub async fn unbind_user_wait(&self, uid: i64) -> Result<(), ControlError> {
        let (reply, rx) = flume::bounded(1);
        self.tx
            .send(ControlRequest::UnbindUser {
                uid,
                reply: Some(reply),
            })
            .map_err(|_| ControlError::Stopped)?;
        let answer = rx.recv_async().await.map_err(|_| ControlError::Stopped)?;
        Ok(answer?)
    }

    pub fn stop(&self) {
        let _ = self.tx.send(ControlRequest::Stop);
    }
}
