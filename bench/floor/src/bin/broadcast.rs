//! floor-broadcast: the broadcast floor. Accepts clients; when one sends a packet on the
//! broadcast route (loadgen fanout's trigger) it sends every client the stamped 64-byte packet.
//!
//! The packet is the Rust echo node's broadcast (route 20, seq 0, payload: Unix nanoseconds at the
//! trigger, then the broadcast's number, both big-endian, zeros to 64 bytes), so loadgen times it
//! the same way. Sending is a plain loop of one `send` per client from one thread, or two threads
//! (`--senders 2`) each taking half of the clients: the least any gate can do per broadcast on
//! this kernel, what gatehouse's broadcast figure is divided by. No heartbeat answers, no
//! sessions; one epoll thread accepts and reads (the trigger arrives on any client).

use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use floor::{is_heartbeat, listen, poll_on, send_all, unix_nanos, Flags, Packets, ReadEnd};
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

const USAGE: &str = "floor-broadcast [--listen 127.0.0.1:0] [--senders 1|2] [--route 20] \
                     [--route-bytes 2] [--seq-bytes 2]";
const LISTENER: Token = Token(usize::MAX);
/// The broadcast payload's size (as the Rust echo node's).
const BROADCAST_BYTES: usize = 64;

/// One connected client; the stream is shared with the second sender thread.
struct Client {
    stream: Arc<TcpStream>,
    packets: Packets,
}

/// One sender's share of the clients.
type Share = Arc<Vec<Arc<TcpStream>>>;
/// The helper sender's share, and the frame to send it.
type Job = (Share, bytes::Bytes);

fn main() {
    let flags = Flags::parse(USAGE, &[]);
    let addr = flags.get("--listen", "127.0.0.1:0".parse().expect("addr"));
    let senders: usize = flags.get("--senders", 1);
    let route: i32 = flags.get("--route", 20);
    let packet = flags.packet();
    if !(1..=2).contains(&senders) {
        eprintln!("floor-broadcast: --senders is 1 or 2");
        std::process::exit(2);
    }
    let mut listener = listen(addr).unwrap_or_else(|e| {
        eprintln!("floor-broadcast: listen {addr}: {e}");
        std::process::exit(1)
    });
    let mut poll = poll_on(&mut listener, LISTENER);
    println!(
        "{{\"listening\":\"{}\",\"senders\":{senders}}}",
        listener.local_addr().expect("local addr")
    );

    // The helper sender: takes the second half of each broadcast, answers when done.
    let helper = (senders == 2).then(|| {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel::<usize>();
        std::thread::spawn(move || {
            for (streams, frame) in rx {
                let failed = send_each(&streams, &frame);
                if done_tx.send(failed).is_err() {
                    return;
                }
            }
        });
        (jobs, done)
    });

    let mut clients: Vec<Option<Client>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    // Every client's stream, in two halves, rebuilt only after a connect or a close.
    let mut halves: Option<(Share, Share)> = None;
    let mut chunk = vec![0u8; 4096];
    let mut events = Events::with_capacity(1024);
    let mut number = 0u64;
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("epoll: {e}");
        }
        let mut triggers = 0;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept_all(&listener, &poll, &mut clients, &mut free, &packet);
                halves = None;
                continue;
            }
            let i = ev.token().0;
            let Some(c) = clients.get_mut(i).and_then(|c| c.as_mut()) else {
                continue;
            };
            let end = c.packets.read_all(&c.stream, &mut chunk, |p| {
                if !is_heartbeat(p) && packet.unpack(p).is_ok_and(|m| m.route == route) {
                    triggers += 1;
                }
            });
            if let ReadEnd::Closed = end {
                let fd = c.stream.as_raw_fd();
                let _ = poll.registry().deregister(&mut SourceFd(&fd));
                clients[i] = None;
                free.push(i);
                halves = None;
            }
        }
        for _ in 0..triggers {
            let (a, b) = halves.get_or_insert_with(|| split(&clients, senders));
            number += 1;
            let mut payload = [0u8; BROADCAST_BYTES];
            payload[..8].copy_from_slice(&unix_nanos().to_be_bytes());
            payload[8..16].copy_from_slice(&number.to_be_bytes());
            let frame = packet.encode(route, 0, &payload).expect("route fits");
            let t = Instant::now();
            let mut failed = 0;
            if let Some((jobs, _)) = &helper {
                let _ = jobs.send((b.clone(), frame.clone()));
            }
            failed += send_each(a, &frame);
            if let Some((_, done)) = &helper {
                failed += done.recv().unwrap_or(0);
            }
            eprintln!(
                "broadcast {number}: {} clients in {:.2} ms ({failed} failed)",
                a.len() + b.len(),
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }
}

/// Accepts every pending connection (edge-triggered) into a free slot.
fn accept_all(
    listener: &mio::net::TcpListener,
    poll: &Poll,
    clients: &mut Vec<Option<Client>>,
    free: &mut Vec<usize>,
    packet: &gatehouse::packet::PacketConfig,
) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of descriptors: back off and let the backlog wait.
                eprintln!("floor-broadcast: accept: {e}");
                std::thread::sleep(Duration::from_millis(5));
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let i = free.pop().unwrap_or_else(|| {
            clients.push(None);
            clients.len() - 1
        });
        let fd = stream.as_raw_fd();
        if poll
            .registry()
            .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)
            .is_err()
        {
            free.push(i);
            continue;
        }
        clients[i] = Some(Client {
            stream: Arc::new(stream),
            packets: Packets::new(packet),
        });
    }
}

/// Every live client's stream, as the main sender's share and the helper's share.
fn split(clients: &[Option<Client>], senders: usize) -> (Share, Share) {
    let mut all: Vec<Arc<TcpStream>> = clients.iter().flatten().map(|c| c.stream.clone()).collect();
    let second = if senders == 2 {
        all.split_off(all.len() / 2)
    } else {
        Vec::new()
    };
    (Arc::new(all), Arc::new(second))
}

/// One send per stream; returns how many failed (a closed client is not this floor's concern).
fn send_each(streams: &[Arc<TcpStream>], frame: &[u8]) -> usize {
    streams
        .iter()
        .filter(|s| !send_all(s, frame, Duration::from_secs(2)))
        .count()
}
