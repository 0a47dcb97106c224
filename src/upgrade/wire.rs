//! The hand-off's channel: serde messages with sockets attached, over a connected Unix
//! SEQPACKET socket, and where that socket lives (a path, or an abstract name).
//!
//! A message is postcard bytes cut into packets of at most [`PACKET`] bytes; each packet's first
//! byte says whether more follow, and the sockets ride on the first packet (SCM_RIGHTS), at
//! most [`MAX_FDS`] per message. SEQPACKET keeps packet bounds, so sockets arrive with exactly
//! the message they belong to. Every receive is bounded by the socket's timeout.

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{de::DeserializeOwned, Serialize};
use socket2::{Domain, SockAddr, Socket, Type};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

/// Largest packet sent (well under the default socket buffer, so a send never needs more room
/// than one packet).
pub const PACKET: usize = 32 * 1024;
/// Sockets attached to one message (the kernel takes up to 253 per packet).
pub const MAX_FDS: usize = 250;
/// Flag byte: another packet of this message follows.
const MORE: u8 = 1;
const LAST: u8 = 0;

/// Where the upgrade socket lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketName {
    Path(PathBuf),
    /// A name in the abstract namespace (no file; gone with its process).
    Abstract(String),
}

impl std::fmt::Display for SocketName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketName::Path(p) => write!(f, "{}", p.display()),
            SocketName::Abstract(n) => write!(f, "@{n}"),
        }
    }
}

impl SocketName {
    fn addr(&self) -> io::Result<SockAddr> {
        match self {
            SocketName::Path(p) => SockAddr::unix(p),
            SocketName::Abstract(n) => {
                let mut name = vec![0u8];
                name.extend_from_slice(n.as_bytes());
                use std::os::unix::ffi::OsStrExt;
                SockAddr::unix(std::ffi::OsStr::from_bytes(&name))
            }
        }
    }

    /// Listens here. A socket file left by a process that is gone is replaced; one a live
    /// process listens on is not (`AddrInUse`).
    pub fn listen(&self) -> io::Result<Socket> {
        let addr = self.addr()?;
        let sock = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
        match sock.bind(&addr) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                let SocketName::Path(p) = self else {
                    return Err(e);
                };
                if Channel::connect(self, Duration::from_secs(1)).is_ok() {
                    return Err(e);
                }
                std::fs::remove_file(p)?;
                sock.bind(&addr)?;
            }
            Err(e) => return Err(e),
        }
        sock.listen(4)?;
        Ok(sock)
    }
}

/// One end of a hand-off conversation.
pub struct Channel(Socket);

impl Channel {
    /// Connects to the running gate's upgrade socket; receives wait at most `timeout`.
    pub fn connect(name: &SocketName, timeout: Duration) -> io::Result<Channel> {
        let sock = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
        sock.connect(&name.addr()?)?;
        sock.set_read_timeout(Some(timeout))?;
        Ok(Channel(sock))
    }

    /// The accepted end of a conversation; receives wait at most `timeout`.
    pub fn accepted(sock: Socket, timeout: Duration) -> io::Result<Channel> {
        sock.set_read_timeout(Some(timeout))?;
        Ok(Channel(sock))
    }

    /// Changes how long receives wait.
    pub fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.0.set_read_timeout(Some(timeout))
    }

    /// The uid and pid of the process at the other end (SO_PEERCRED).
    pub fn peer(&self) -> Option<(u32, u32)> {
        crate::claim::peer_cred(&self.0).map(|c| (c.uid, c.pid as u32))
    }

    /// Sends `msg` with `fds` attached.
    pub fn send<T: Serialize>(&self, msg: &T, fds: &[RawFd]) -> io::Result<()> {
        assert!(fds.len() <= MAX_FDS, "too many sockets in one message");
        let bytes = postcard::to_stdvec(msg).map_err(io::Error::other)?;
        let mut chunks = bytes.chunks(PACKET - 1).peekable();
        let mut first = true;
        // An empty message is one packet of just the flag.
        let empty: &[u8] = &[];
        let mut next = chunks.next().or(Some(empty));
        while let Some(chunk) = next.take() {
            next = chunks.next();
            let flag = [if next.is_some() { MORE } else { LAST }];
            let iov = [IoSlice::new(&flag), IoSlice::new(chunk)];
            let rights = [ControlMessage::ScmRights(fds)];
            let cmsgs: &[ControlMessage] = if first && !fds.is_empty() {
                &rights
            } else {
                &[]
            };
            first = false;
            socket::sendmsg::<()>(
                self.0.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(io::Error::from)?;
        }
        Ok(())
    }

    /// Receives one message and the sockets attached to it. End of stream is `UnexpectedEof`.
    pub fn recv<T: DeserializeOwned>(&self) -> io::Result<(T, Vec<OwnedFd>)> {
        let mut bytes = Vec::new();
        let mut fds = Vec::new();
        let mut packet = vec![0u8; PACKET];
        loop {
            let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
            let (n, more) = {
                let mut iov = [IoSliceMut::new(&mut packet)];
                let msg = socket::recvmsg::<()>(
                    self.0.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                for c in msg.cmsgs() {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        // SAFETY: SCM_RIGHTS just installed these descriptors in this process;
                        // nothing else owns them, so each becomes owned exactly once, here.
                        fds.extend(
                            raw.into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
                    return Err(io::Error::other(
                        "sockets were cut off (too many in one message)",
                    ));
                }
                (msg.bytes, msg.flags.contains(MsgFlags::MSG_TRUNC))
            };
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if more {
                return Err(io::Error::other("packet larger than the hand-off's limit"));
            }
            bytes.extend_from_slice(&packet[1..n]);
            if packet[0] != MORE {
                break;
            }
        }
        let msg = postcard::from_bytes(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok((msg, fds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn messages_of_any_size_arrive_whole_with_their_sockets() {
        let (a, b) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        let (a, b) = (
            Channel::accepted(a, Duration::from_secs(5)).unwrap(),
            Channel::accepted(b, Duration::from_secs(5)).unwrap(),
        );
        let (mut p, q) = std::os::unix::net::UnixStream::pair().unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sender = std::thread::spawn(move || {
            a.send(&("big", big), &[q.as_raw_fd()]).unwrap();
            a.send(&("empty", Vec::<u8>::new()), &[]).unwrap();
            // Only the passed descriptor keeps q's socket open from here.
            drop(q);
            a
        });
        let ((tag, body), fds): ((String, Vec<u8>), _) = b.recv().unwrap();
        assert_eq!(tag, "big");
        assert_eq!(body.len(), 200_000);
        assert!(body.iter().enumerate().all(|(i, &v)| v == (i % 251) as u8));
        assert_eq!(fds.len(), 1);
        let ((tag, body), none): ((String, Vec<u8>), Vec<OwnedFd>) = b.recv().unwrap();
        assert_eq!((tag.as_str(), body.len(), none.len()), ("empty", 0, 0));
        let a = sender.join().unwrap();
        // The received descriptor is q's socket: what is written on it arrives on p.
        let mut passed = std::os::unix::net::UnixStream::from(fds.into_iter().next().unwrap());
        passed.write_all(b"through the passed socket").unwrap();
        let mut got = [0u8; 25];
        p.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"through the passed socket");
        drop(a);
        let err = b.recv::<u32>().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_receive_is_bounded_by_the_timeout() {
        let (a, b) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        let b = Channel::accepted(b, Duration::from_millis(50)).unwrap();
        let t = std::time::Instant::now();
        assert!(b.recv::<u32>().is_err());
        assert!(t.elapsed() < Duration::from_secs(2));
        drop(a);
    }
}
