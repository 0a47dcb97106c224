//! Sockets shared by every listener: the accept loop that client listeners and the node link
//! server both run on their per-shard SO_REUSEPORT sockets.

use glommio::net::TcpStream;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::time::Duration;

/// Accepts on `fd` until `stop` is dropped, handing each connection to `on_accept`. Accept
/// errors (EMFILE/ENFILE when the fd limit is reached, …) back off from 5 ms doubling to 1 s:
/// the shard keeps serving its connections and tries again later, never spinning.
pub async fn accept_each(
    fd: OwnedFd,
    stop: flume::Receiver<()>,
    what: &'static str,
    mut on_accept: impl FnMut(TcpStream),
) {
    // SAFETY: `fd` is a listening TCP socket we own (created by `listener::bind_shared`);
    // ownership moves into the glommio listener, which closes it exactly once when dropped.
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd.into_raw_fd()) };
    let mut backoff = Duration::from_millis(5);
    loop {
        let next = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            let _ = stop.recv_async().await;
            None
        })
        .await;
        match next {
            None => break,
            Some(Ok(stream)) => {
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                on_accept(stream);
            }
            Some(Err(e)) => {
                tracing::warn!(listener = what, error = %e, delay = ?backoff, "accept failed, backing off");
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
