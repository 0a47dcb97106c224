//! loadgen: drives many due-protocol TCP connections at a gate (gatehouse or due's Go gate).
//! Owns the client side of load: connection ramp, source-address spreading, heartbeats, reports.
//!
//! Mode `idle` (this version): open N connections at a bounded rate, keep each alive with a
//! heartbeat every interval, print a progress line each second, and report connection errors.

use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use gatehouse::packet::PacketConfig;
use glommio::{LocalExecutorBuilder, Placement};

struct Args {
    mode: String,
    addr: SocketAddr,
    conns: usize,
    rate: u64,
    heartbeat: Duration,
    duration: Duration,
    sources: u8,
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen idle --addr HOST:PORT --conns N [--rate PER_SEC] [--heartbeat SECS] [--duration SECS] [--sources K]\n\
         idle: hold N connections, one heartbeat per connection every --heartbeat seconds;\n\
         source addresses are spread over 127.0.0.1..127.0.0.K to avoid exhausting ephemeral ports."
    );
    std::process::exit(2)
}

fn num<T: std::str::FromStr>(v: &str) -> T {
    v.parse().unwrap_or_else(|_| usage())
}

fn parse_args() -> Args {
    let mut a = Args {
        mode: String::new(),
        addr: "127.0.0.1:3553".parse().unwrap(),
        conns: 1000,
        rate: 5000,
        heartbeat: Duration::from_secs(10),
        duration: Duration::from_secs(30),
        sources: 8,
    };
    let mut it = std::env::args().skip(1);
    a.mode = it.next().unwrap_or_else(|| usage());
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--addr" => a.addr = num(&v),
            "--conns" => a.conns = num(&v),
            "--rate" => a.rate = num(&v),
            "--heartbeat" => a.heartbeat = Duration::from_secs_f64(num::<f64>(&v)),
            "--duration" => a.duration = Duration::from_secs_f64(num::<f64>(&v)),
            "--sources" => a.sources = num(&v),
            _ => usage(),
        }
    }
    if a.mode != "idle" {
        usage();
    }
    a
}

#[derive(Default)]
struct Stats {
    open: Cell<usize>,
    connect_errors: Cell<usize>,
    closed_by_gate: Cell<usize>,
    heartbeats: Cell<u64>,
}

fn connect(addr: SocketAddr, source: Ipv4Addr) -> std::io::Result<glommio::net::TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    if addr.ip().is_loopback() {
        s.bind(&SocketAddr::new(source.into(), 0).into())?;
    }
    s.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    s.set_tcp_nodelay(true)?;
    s.set_nonblocking(true)?;
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the fd is a connected TCP socket we own; ownership moves into the glommio stream,
    // which closes it once when dropped.
    Ok(unsafe { glommio::net::TcpStream::from_raw_fd(s.into_raw_fd()) })
}

async fn hold(
    mut stream: glommio::net::TcpStream,
    hb: Vec<u8>,
    every: Duration,
    stats: Rc<Stats>,
    end: Instant,
) {
    let mut buf = [0u8; 256];
    while Instant::now() < end {
        glommio::timer::sleep(every.min(end.saturating_duration_since(Instant::now()))).await;
        if Instant::now() >= end {
            break;
        }
        if stream.write_all(&hb).await.is_err() {
            stats.closed_by_gate.set(stats.closed_by_gate.get() + 1);
            break;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => {
                stats.closed_by_gate.set(stats.closed_by_gate.get() + 1);
                break;
            }
            Ok(_) => stats.heartbeats.set(stats.heartbeats.get() + 1),
        }
    }
    stats.open.set(stats.open.get() - 1);
}

fn main() {
    let a = parse_args();
    let hb = PacketConfig::default().heartbeat(0).to_vec();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("loadgen")
        .spawn(move || async move {
            let stats = Rc::new(Stats::default());
            let start = Instant::now();
            let end = start + a.duration;
            let gap = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
            let reporter = {
                let stats = stats.clone();
                glommio::spawn_local(async move {
                    while Instant::now() < end {
                        glommio::timer::sleep(Duration::from_secs(1)).await;
                        println!(
                            "t={:>4.0}s open={} connect_errors={} closed_by_gate={} heartbeats={}",
                            start.elapsed().as_secs_f64(),
                            stats.open.get(),
                            stats.connect_errors.get(),
                            stats.closed_by_gate.get(),
                            stats.heartbeats.get()
                        );
                    }
                })
            };
            for i in 0..a.conns {
                let next = start + gap * i as u32;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    glommio::timer::sleep(wait).await;
                }
                let source = Ipv4Addr::new(127, 0, 0, 1 + (i % a.sources.max(1) as usize) as u8);
                match connect(a.addr, source) {
                    Ok(s) => {
                        stats.open.set(stats.open.get() + 1);
                        glommio::spawn_local(hold(s, hb.clone(), a.heartbeat, stats.clone(), end)).detach();
                    }
                    Err(e) => {
                        if stats.connect_errors.get() == 0 {
                            eprintln!("connect error: {e}");
                        }
                        stats.connect_errors.set(stats.connect_errors.get() + 1);
                    }
                }
            }
            reporter.await;
            println!(
                "summary mode=idle conns={} open_at_end={} connect_errors={} closed_by_gate={} heartbeats={}",
                a.conns,
                stats.open.get(),
                stats.connect_errors.get(),
                stats.closed_by_gate.get(),
                stats.heartbeats.get()
            );
            stats.connect_errors.get() + stats.closed_by_gate.get()
        })
        .expect("start executor");
    let errors = handle.join().expect("executor");
    std::process::exit(if errors == 0 { 0 } else { 1 });
}
