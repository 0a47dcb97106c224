//! The operator's HTTP listener (`[gatehouse] metricsAddr`): `/metrics`, `/healthz`, `/readyz`.
//! One std thread answers one request per connection; it reads atomics and never waits on a shard.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::GateMetrics;

/// How long one request may take to arrive, whole, and its answer to be written: a slow or
/// stalled peer delays the next request (a readiness probe) by at most about twice this.
const IO_LIMIT: Duration = Duration::from_secs(1);
/// Largest request head read.
const MAX_REQUEST: usize = 8 << 10;

/// The running listener; stops when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// The listening socket, shared with the thread: shut down to wake its blocking accept.
    wake: TcpListener,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves `metrics` on `listener` (bound and listening) from a new thread.
    pub fn serve(
        listener: TcpListener,
        metrics: Arc<GateMetrics>,
    ) -> std::io::Result<MetricsServer> {
        // A blocking accept: the fd may come from a non-blocking socket helper.
        listener.set_nonblocking(false)?;
        let addr = listener.local_addr()?;
        let wake = listener.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("gatehouse-metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::Acquire) {
                        return;
                    }
                    match conn {
                        // The listener was shut down.
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => return,
                        Ok(s) => {
                            if let Err(e) = answer(s, &metrics) {
                                tracing::debug!(error = %e, "metrics: request failed");
                            }
                        }
                        // Out of descriptors or similar: back off instead of spinning.
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })?;
        Ok(MetricsServer {
            addr,
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Shutting the listening socket down wakes the blocking accept (Linux: EINVAL) and takes
        // the socket out of its SO_REUSEPORT group. Not a connect to our own address: while an
        // upgrade's next process listens on the same port, the kernel may hand that connect to
        // it, and this thread would wait in accept for ever.
        use std::os::fd::AsRawFd;
        let _ = nix::sys::socket::shutdown(self.wake.as_raw_fd(), nix::sys::socket::Shutdown::Read);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a request gets: status line, content type, body.
pub fn respond(method: &str, path: &str, m: &GateMetrics) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return (405, TEXT, "only GET and HEAD\n".into());
    }
    match path.split('?').next().unwrap_or("") {
        "/metrics" => (200, super::render::CONTENT_TYPE, super::render(m)),
        "/healthz" => (200, TEXT, "ok\n".into()),
        "/readyz" => match m.health.ready() {
            Ok(()) => (200, TEXT, "ready\n".into()),
            Err(why) => (503, TEXT, format!("not ready: {}\n", why.join("; "))),
        },
        _ => (
            404,
            TEXT,
            "not found (try /metrics, /healthz, /readyz)\n".into(),
        ),
    }
}

fn answer(mut s: TcpStream, m: &GateMetrics) -> std::io::Result<()> {
    s.set_write_timeout(Some(IO_LIMIT))?;
    let deadline = std::time::Instant::now() + IO_LIMIT;
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let (method, path) = loop {
        // One limit for the whole request, not per read: a peer trickling a byte at a time
        // cannot hold the thread.
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        s.set_read_timeout(Some(left))?;
        let n = s.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                )
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => {
                return write(&mut s, 400, "text/plain", "bad request\n", false);
            }
        }
    };
    let (status, kind, body) = respond(&method, &path, m);
    write(&mut s, status, kind, &body, method == "HEAD")
}

fn write(
    s: &mut TcpStream,
    status: u16,
    kind: &str,
    body: &str,
    head: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    s.write_all(&out)?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_health_and_readiness() {
        let m = GateMetrics::new(1);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = MetricsServer::serve(l, m.clone()).unwrap();
        let a = server.addr();
        let r = get(a, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        assert!(r.contains("listeners are not accepting"), "{r}");
        m.health.set_listening(true);
        let r = get(a, "GET /readyz HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        let r = get(a, "GET /healthz HTTP/1.0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 ") && r.ends_with("ok\n"), "{r}");
        m.shards()[0].open[1].add(2);
        let r = get(a, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(r.contains("text/plain; version=0.0.4"), "{r}");
        assert!(
            r.contains("\ngatehouse_connections_open{transport=\"ws\"} 2\n"),
            "{r}"
        );
        let r = get(a, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        let r = get(a, "GET /nope HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = get(a, "\x16\x03\x01garbage\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
        drop(server);
        assert!(TcpStream::connect(a).is_err(), "the listener is closed");
    }

    /// A socket bound to `addr` with SO_REUSEPORT (as gatehouse binds metricsAddr).
    fn reuseport(addr: SocketAddr) -> TcpListener {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(16).unwrap();
        s.into()
    }

    /// During an upgrade the next process listens on the same port: stopping must not depend
    /// on reaching our own socket (a connect could land on theirs), nor wait for a scrape.
    #[test]
    fn stops_while_another_process_shares_the_port() {
        let first = reuseport("127.0.0.1:0".parse().unwrap());
        let addr = first.local_addr().unwrap();
        let _next = reuseport(addr);
        let server = MetricsServer::serve(first, GateMetrics::new(1)).unwrap();
        let t = std::time::Instant::now();
        drop(server);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
    }

    /// A peer trickling its request byte by byte holds the thread at most IO_LIMIT: a probe
    /// sent meanwhile is answered soon after, not when the trickle ends.
    #[test]
    fn a_trickling_request_is_cut_off() {
        let m = GateMetrics::new(1);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = MetricsServer::serve(l, m).unwrap();
        let addr = server.addr();
        let trickle = std::thread::spawn(move || {
            let mut slow = TcpStream::connect(addr).unwrap();
            for _ in 0..50 {
                if slow.write_all(b"G").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        let t = std::time::Instant::now();
        let r = get(addr, "GET /healthz HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        assert!(
            t.elapsed() < Duration::from_millis(2500),
            "the probe waited {:?} behind a 5 s trickle",
            t.elapsed()
        );
        trickle.join().unwrap();
    }
}
