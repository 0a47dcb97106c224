//! floor-forward: the forwarding floor. Client packets go to one node over the link's deliver
//! framing; the node's pushes come back to the client they name.
//!
//! Speaks just enough of the link for the Rust echo node (`echo-node --listen NODE --gate LINK`):
//! it dials NODE (handshake as a gate), wraps every client packet in a deliver frame (seq 0, the
//! client's cid, uid 0) and accepts the node's push connection on LINK (answering its handshake
//! and heartbeats). Two threads: the epoll thread accepts and reads clients and writes every
//! packet a round of readiness produced to the node in one write; the push thread reads pushes
//! and writes each client's share of a read in one write. No heartbeats towards clients, no
//! sessions, no routing table: the least a gate must do per request/response pair, what
//! gatehouse's CPU per pair and TPS are divided by.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream as StdStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use floor::{is_heartbeat, listen, poll_on, send_all, Flags, Packets, ReadEnd};
use gatehouse::drpc::{self, Cmd, Head};
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Token};

const USAGE: &str = "floor-forward --node NODE_ADDR [--listen 127.0.0.1:0] [--link 127.0.0.1:0] \
                     [--route-bytes 2] [--seq-bytes 2]";
const LISTENER: Token = Token(usize::MAX);
/// The push command's body: `kind(1) | target(8) | message`, after the 14-byte head.
const PUSH_BODY: usize = drpc::MIN_DATA_FRAME + 9;

/// Clients by cid, for the push thread.
type Table = Arc<RwLock<HashMap<i64, Arc<TcpStream>>>>;

fn main() {
    let flags = Flags::parse(USAGE, &[]);
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let addr = flags.get("--listen", any);
    let link_addr = flags.get("--link", any);
    let node: SocketAddr = flags.get("--node", any);
    if !flags.has("--node") {
        eprintln!("usage: {USAGE}");
        std::process::exit(2);
    }
    let packet = flags.packet();
    let fail = |what: &str, e: std::io::Error| -> ! {
        eprintln!("floor-forward: {what}: {e}");
        std::process::exit(1)
    };
    let mut listener = listen(addr).unwrap_or_else(|e| fail("listen", e));
    let link = TcpListener::bind(link_addr).unwrap_or_else(|e| fail("link listen", e));
    let mut upstream = StdStream::connect(node).unwrap_or_else(|e| fail("dial node", e));
    let _ = upstream.set_nodelay(true);
    let mut out = BytesMut::with_capacity(256 * 1024);
    drpc::put_handshake(&mut out, 1, 1, b"floor-forward");
    upstream
        .write_all(&out)
        .unwrap_or_else(|e| fail("handshake", e));
    out.clear();
    // The node's answers on this connection (handshake, heartbeats) are read and dropped.
    let mut drain = upstream.try_clone().expect("clone");
    std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while matches!(drain.read(&mut b), Ok(n) if n > 0) {}
    });
    let link_local = link.local_addr().map_or(String::new(), |a| a.to_string());
    let table: Table = Arc::default();
    {
        let table = table.clone();
        std::thread::spawn(move || {
            for s in link.incoming().flatten() {
                let table = table.clone();
                std::thread::spawn(move || serve_pushes(s, &table));
            }
        });
    }
    let mut poll = poll_on(&mut listener, LISTENER);
    println!(
        "{{\"listening\":\"{}\",\"link\":\"{}\"}}",
        listener.local_addr().expect("local addr"),
        link_local
    );
    let _ = std::io::stdout().flush();

    let mut clients: HashMap<usize, (Arc<TcpStream>, Packets)> = HashMap::new();
    let mut next_cid = 1usize;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut events = Events::with_capacity(1024);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("epoll: {e}");
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((s, _)) = listener.accept() {
                    let _ = s.set_nodelay(true);
                    let cid = next_cid;
                    next_cid += 1;
                    let fd = s.as_raw_fd();
                    if poll
                        .registry()
                        .register(&mut SourceFd(&fd), Token(cid), Interest::READABLE)
                        .is_err()
                    {
                        continue;
                    }
                    let s = Arc::new(s);
                    table
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(cid as i64, s.clone());
                    clients.insert(cid, (s, Packets::new(&packet)));
                }
                continue;
            }
            let cid = ev.token().0;
            let Some((s, packets)) = clients.get_mut(&cid) else {
                continue;
            };
            let end = packets.read_all(s, &mut chunk, |p| {
                if !is_heartbeat(p) {
                    drpc::put_deliver(&mut out, 0, cid as i64, 0, p);
                }
            });
            if let ReadEnd::Closed = end {
                let fd = s.as_raw_fd();
                let _ = poll.registry().deregister(&mut SourceFd(&fd));
                clients.remove(&cid);
                table
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&(cid as i64));
            }
        }
        if !out.is_empty() {
            if let Err(e) = upstream.write_all(&out) {
                fail("write to node", e);
            }
            out.clear();
        }
    }
}

/// Serves the node's push connection: answers its handshake and heartbeats, and writes each
/// pushed message to its client, one write per client per read.
fn serve_pushes(mut s: StdStream, table: &Table) {
    let _ = s.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let mut chunk = vec![0u8; 256 * 1024];
    let mut answers = BytesMut::new();
    // Per client, the messages of this read (reused between reads).
    let mut pending: HashMap<i64, BytesMut> = HashMap::new();
    let mut order: Vec<i64> = Vec::new();
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while let Ok(Some(len)) = drpc::frame_len(&buf[at..], drpc::MAX_LINK_FRAME) {
            let frame = &buf[at..at + len];
            at += len;
            match drpc::peek(frame) {
                Ok(Head::Heartbeat) => drpc::put_heartbeat(&mut answers),
                Ok(Head::Data { cmd, seq, .. }) if cmd == Cmd::Handshake as u8 => {
                    drpc::put_code(&mut answers, Cmd::Handshake, seq, 0)
                }
                Ok(Head::Data { cmd, .. }) if cmd == Cmd::Push as u8 && len > PUSH_BODY => {
                    // kind 1: the target is a cid.
                    if frame[drpc::MIN_DATA_FRAME] != 1 {
                        continue;
                    }
                    let cid = i64::from_be_bytes(
                        frame[drpc::MIN_DATA_FRAME + 1..PUSH_BODY]
                            .try_into()
                            .expect("8 bytes"),
                    );
                    let p = pending.entry(cid).or_default();
                    if p.is_empty() {
                        order.push(cid);
                    }
                    p.extend_from_slice(&frame[PUSH_BODY..]);
                }
                _ => {}
            }
        }
        let _ = buf.split_to(at);
        if !order.is_empty() {
            let clients = table.read().unwrap_or_else(|e| e.into_inner());
            for cid in order.drain(..) {
                let p = pending.get_mut(&cid).expect("pending");
                if let Some(c) = clients.get(&cid) {
                    send_all(c, p, Duration::from_secs(2));
                }
                p.clear();
            }
        }
        if !answers.is_empty() {
            if s.write_all(&answers).is_err() {
                return;
            }
            answers.clear();
        }
    }
}
