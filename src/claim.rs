//! Claims on the ports a gate serves, so a second gatehouse on the same ports is refused: one
//! listening abstract Unix socket per port, named after it, held for the life of the gate.
//!
//! Every listener is SO_REUSEPORT (one socket per shard), so the kernel would let a second
//! process bind the same ports and split clients and node links with the first one. due's gate
//! fails with "address in use"; so does gatehouse, before it binds anything: the claim is taken
//! first, and when it is already held, the holder's pid is read from the socket's peer
//! credentials (SO_PEERCRED) and named in the error. Abstract sockets belong to the network
//! namespace, as ports do, and vanish with the process that holds them (no stale files).

use std::io;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

/// Connections a claim socket queues (nobody accepts them; a refused start only reads the
/// holder's credentials).
const CLAIM_BACKLOG: i32 = 128;

/// The claims of one gate; dropping it releases them.
#[derive(Debug, Default)]
pub struct PortClaims {
    held: Vec<(u16, UnixListener)>,
}

/// Why a port cannot be claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimError {
    /// Another gatehouse serves the port (its pid, when the kernel told it).
    Taken { port: u16, pid: Option<u32> },
    /// The claim socket could not be made.
    Io { port: u16, reason: String },
}

impl std::fmt::Display for ClaimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimError::Taken {
                port,
                pid: Some(pid),
            } => write!(
                f,
                "port {port} is already served by gatehouse pid {pid} (address in use)"
            ),
            ClaimError::Taken { port, pid: None } => write!(
                f,
                "port {port} is already served by another gatehouse (address in use)"
            ),
            ClaimError::Io { port, reason } => write!(f, "cannot claim port {port}: {reason}"),
        }
    }
}

impl std::error::Error for ClaimError {}

impl PortClaims {
    /// Claims `port` for this gate (port 0 needs no claim: the kernel picks a free one; a port
    /// this gate already claimed is claimed).
    pub fn claim(&mut self, port: u16) -> Result<(), ClaimError> {
        if port == 0 || self.held.iter().any(|(p, _)| *p == port) {
            return Ok(());
        }
        let io_err = |e: io::Error| ClaimError::Io {
            port,
            reason: e.to_string(),
        };
        let name = SocketAddr::from_abstract_name(claim_name(port)).map_err(io_err)?;
        match UnixListener::bind_addr(&name) {
            Ok(l) => {
                self.held.push((port, l));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(ClaimError::Taken {
                port,
                pid: UnixStream::connect_addr(&name)
                    .ok()
                    .and_then(|s| peer_pid(&s)),
            }),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Duplicates of the claim sockets, for the next process (`--upgrade`): the claims go on
    /// being held, by both processes until this one exits.
    pub fn duplicate(&self) -> io::Result<Vec<(u16, std::os::fd::OwnedFd)>> {
        self.held
            .iter()
            .map(|(port, l)| Ok((*port, std::os::fd::AsFd::as_fd(l).try_clone_to_owned()?)))
            .collect()
    }

    /// The claims the previous process held (`--upgrade`); [`PortClaims::take_holder`] makes
    /// them name this process once the hand-off is committed.
    pub fn inherit(sockets: Vec<(u16, std::os::fd::OwnedFd)>) -> Self {
        let held = sockets
            .into_iter()
            .map(|(port, fd)| (port, UnixListener::from(fd)))
            .collect();
        PortClaims { held }
    }

    /// Listens on each claim again, which makes the kernel record this process as the holder:
    /// a refused start then names this pid. Called only once the previous holder let go (a
    /// failed upgrade must leave the running gate named).
    pub fn take_holder(&self) {
        for (port, l) in &self.held {
            if let Err(e) = socket2::SockRef::from(l).listen(CLAIM_BACKLOG) {
                tracing::warn!(port, error = %e, "claim: cannot take over the holder's name");
            }
        }
    }

    /// Ports claimed so far.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// The abstract socket name standing for `port`.
fn claim_name(port: u16) -> String {
    format!("gatehouse/port/{port}")
}

/// The pid of the process that listens on the other end of `s`.
fn peer_pid(s: &UnixStream) -> Option<u32> {
    peer_cred(s).and_then(|c| (c.pid > 0).then_some(c.pid as u32))
}

/// The credentials (pid, uid, gid) of the process at the other end of the Unix socket `s`, as
/// the kernel recorded them when it connected (SO_PEERCRED).
pub fn peer_cred(s: &impl AsRawFd) -> Option<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `s` is an open socket for the whole call; `cred` and `len` are valid, writable and
    // `len` holds the size of `cred`, which is what SO_PEERCRED writes (a `struct ucred`).
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port number nobody else in this test binary claims.
    fn test_port() -> u16 {
        // Any u16 works (the claim is a name, not a socket on the port); spread by pid so two
        // test runs at once do not meet.
        40_000 + (std::process::id() % 20_000) as u16
    }

    #[test]
    fn a_held_port_is_refused_naming_the_holder_and_freed_on_drop() {
        let port = test_port();
        let mut first = PortClaims::default();
        first.claim(port).unwrap();
        first.claim(0).unwrap();
        first.claim(port).unwrap();
        assert_eq!(
            first.len(),
            1,
            "port 0 needs no claim, a held port no second one"
        );
        let mut second = PortClaims::default();
        assert_eq!(
            second.claim(port),
            Err(ClaimError::Taken {
                port,
                pid: Some(std::process::id())
            })
        );
        assert_eq!(
            second.claim(port).unwrap_err().to_string(),
            format!(
                "port {port} is already served by gatehouse pid {} (address in use)",
                std::process::id()
            )
        );
        drop(first);
        second.claim(port).unwrap();
    }
}
