//! echo-node: a minimal due node speaking the node side of the link, for demos and benchmarks.
//! Every client packet the gate delivers is pushed back, unchanged, to the connection it came from.
//!
//! One route is special: a packet on route 20 (`BROADCAST_ROUTE`) makes the node broadcast a
//! 64-byte packet on route 20 to every connection of the gate, its first 8 bytes the node's wall
//! clock (Unix nanoseconds, big-endian) — how the benchmark times a fan-out — and the next 8 the
//! broadcast's number (1, 2, … in the order the node sends them, big-endian) — how a client
//! checks it got every broadcast, in order. Routes 21 and 22
//! (`BIND_ROUTE`, `UNBIND_ROUTE`) carry a user ID as decimal digits: the node sends the link's
//! `bind` (that connection, that uid) or `unbind` (that uid) command, then echoes the packet as the
//! acknowledgement — how the soak binds and unbinds users through a node. With `--consul` the
//! node registers itself there as a due node (routes 1 and 20), so gates that discover nodes
//! through Consul (gatehouse with `[registry.consul]`, due's Go gate) find it.
//!
//! It listens for the gate's connections (handshake, heartbeats, trigger, deliver) and dials the
//! gate's link address once (handshake kind 2) to send pushes. Events are printed as JSON lines
//! on stdout, so scripts and tests can follow what the node saw. Blocking threads keep it short:
//! one reader per inbound connection and one writer that batches pushes into few writes.

use bytes::{Bytes, BytesMut};
use gatehouse::config::ConsulConfig;
use gatehouse::drpc::{self, Frame, Request};
use gatehouse::packet::PacketConfig;
use gatehouse::registry::consul::ConsulClient;
use gatehouse::registry::{InstanceState, RouteInfo, ServiceInstance};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// The route whose packets trigger a broadcast instead of an echo.
const BROADCAST_ROUTE: i32 = 20;
/// Size of the broadcast payload.
const BROADCAST_BYTES: usize = 64;
/// A packet on this route makes the node bind the user ID in its payload (decimal ASCII) to the
/// connection it came from, then push the packet back to that connection (the acknowledgement).
const BIND_ROUTE: i32 = 21;
/// A packet on this route makes the node unbind the user ID in its payload, then push the packet
/// back to the connection it came from.
const UNBIND_ROUTE: i32 = 22;

struct Args {
    listen: String,
    gate: String,
    id: String,
    consul: Option<String>,
    /// Print nothing per connection event (the benchmark opens 19,000 connections).
    quiet: bool,
    /// `[packet] routeBytes` of the cluster: where the route sits in a delivered packet.
    route_bytes: u8,
}

fn args() -> Args {
    let mut a = Args {
        listen: "127.0.0.1:0".into(),
        gate: String::new(),
        id: "echo-node".into(),
        consul: None,
        quiet: false,
        route_bytes: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--quiet" {
            a.quiet = true;
            continue;
        }
        let v = it.next().unwrap_or_default();
        match flag.as_str() {
            "--listen" => a.listen = v,
            "--gate" => a.gate = v,
            "--id" => a.id = v,
            "--consul" => a.consul = Some(v),
            "--route-bytes" if matches!(v.as_str(), "1" | "2" | "4") => {
                a.route_bytes = v.parse().unwrap_or(2)
            }
            _ => {
                eprintln!(
                    "usage: echo-node --gate GATE_LINK_ADDR [--listen ADDR] [--id ID] \
                     [--consul HOST:PORT] [--route-bytes 1|2|4] [--quiet]"
                );
                std::process::exit(2);
            }
        }
    }
    if a.gate.is_empty() {
        eprintln!("echo-node: --gate is required (the gate's link address, see its banner)");
        std::process::exit(2);
    }
    a
}

fn main() {
    let a = args();
    let listener = TcpListener::bind(&a.listen).expect("listen");
    println!(
        "{{\"listening\":\"{}\"}}",
        listener.local_addr().expect("local addr")
    );
    let _ = std::io::stdout().flush();
    let local = listener.local_addr().expect("local addr");
    if let Some(consul) = &a.consul {
        register(consul, &a.id, local);
    }
    let pushes = start_pusher(a.gate.clone(), a.id.clone());
    let node = std::sync::Arc::new(Node {
        pushes,
        quiet: a.quiet,
        packet: PacketConfig {
            route_bytes: a.route_bytes,
            ..PacketConfig::default()
        },
        broadcasts: std::sync::Mutex::new(0),
    });
    for stream in listener.incoming().flatten() {
        let node = node.clone();
        std::thread::spawn(move || serve_gate(stream, &node));
    }
}

/// What every gate connection's thread shares.
struct Node {
    pushes: crossbeam_channel::Sender<Bytes>,
    quiet: bool,
    packet: PacketConfig,
    /// The number of the last broadcast sent; held while a broadcast is numbered and queued, so
    /// numbers reach the gate in order whichever gate connection triggered them.
    broadcasts: std::sync::Mutex<u64>,
}

impl Node {
    /// The route of a delivered client packet.
    fn route(&self, packet: &[u8]) -> Option<i32> {
        self.packet.unpack(packet).ok().map(|m| m.route)
    }

    /// The user ID a bind or unbind packet carries (its payload, decimal digits).
    fn uid_of(&self, packet: &[u8]) -> Option<i64> {
        let m = self.packet.unpack(packet).ok()?;
        std::str::from_utf8(m.payload).ok()?.trim().parse().ok()
    }

    /// Numbers the next broadcast and queues it for the gate.
    fn send_broadcast(&self) {
        let mut n = self.broadcasts.lock().unwrap_or_else(|e| e.into_inner());
        *n += 1;
        let _ = self.pushes.send(self.broadcast(*n));
    }

    /// A broadcast request (kind 1: every connection) of the timestamped, numbered 64-byte
    /// packet.
    fn broadcast(&self, number: u64) -> Bytes {
        let mut payload = [0u8; BROADCAST_BYTES];
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        payload[..8].copy_from_slice(&now.to_be_bytes());
        payload[8..16].copy_from_slice(&number.to_be_bytes());
        let message = self
            .packet
            .encode(BROADCAST_ROUTE, 0, &payload)
            .expect("route 20 fits every route width");
        let mut out = BytesMut::with_capacity(32 + message.len());
        drpc::put_broadcast(&mut out, 0, 0, 1, &message);
        out.freeze()
    }
}

/// Registers this node in Consul as due does (service `node`, TCP check on the link address),
/// serving routes 1 and 20 in state work. Exits the process when the agent refuses.
fn register(consul: &str, id: &str, link: std::net::SocketAddr) {
    let route = |id| RouteInfo {
        id,
        ..RouteInfo::default()
    };
    let inst = ServiceInstance {
        id: id.to_string(),
        name: "node".into(),
        kind: "node".into(),
        alias: "node".into(),
        state: InstanceState::Work,
        routes: vec![route(1), route(BROADCAST_ROUTE)],
        endpoint: format!("drpc://{link}?is_secure=false"),
        weight: 1,
        ..ServiceInstance::default()
    };
    let settings = ConsulConfig {
        health_check_interval: Duration::from_secs(1),
        heartbeat_check: false,
        ..ConsulConfig::default()
    };
    let client = ConsulClient::new(consul).unwrap_or_else(|e| {
        eprintln!("echo-node: consul {consul}: {e}");
        std::process::exit(1)
    });
    if let Err(e) = client.register(&inst, &settings) {
        eprintln!("echo-node: {e}");
        std::process::exit(1);
    }
}

/// Dials the gate (re-dialling on failure) and writes every queued push, batched, plus a
/// heartbeat every 10 s (the gate cuts link connections silent for 20 s).
fn start_pusher(gate: String, id: String) -> crossbeam_channel::Sender<Bytes> {
    let (tx, rx) = crossbeam_channel::unbounded::<Bytes>();
    std::thread::spawn(move || loop {
        let mut s = match TcpStream::connect(&gate) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("echo-node: dial gate {gate}: {e}");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let mut out = BytesMut::new();
        drpc::put_handshake(&mut out, 1, 2, id.as_bytes());
        if s.write_all(&out).is_err() {
            continue;
        }
        // Drain whatever the gate sends back (handshake answer, heartbeat echoes).
        if let Ok(mut r) = s.try_clone() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
        loop {
            out.clear();
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(first) => {
                    out.extend_from_slice(&first);
                    while let Ok(more) = rx.try_recv() {
                        out.extend_from_slice(&more);
                        if out.len() > 256 * 1024 {
                            break;
                        }
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => drpc::put_heartbeat(&mut out),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
            if s.write_all(&out).is_err() {
                break;
            }
        }
    });
    tx
}

/// Serves one connection the gate dialled: answers the handshake and heartbeats, prints
/// events, and echoes deliveries.
fn serve_gate(mut s: TcpStream, node: &Node) {
    let _ = s.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::new();
    let mut gid = String::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Ok(Some(len)) = drpc::frame_len(&buf, 64 << 20) {
            let frame = buf.split_to(len).freeze();
            match drpc::decode(frame) {
                Ok(Frame::Heartbeat) => drpc::put_heartbeat(&mut out),
                Ok(Frame::Request { seq, req, .. }) => match req {
                    Request::Handshake { id, .. } => {
                        gid = String::from_utf8_lossy(&id).into_owned();
                        drpc::put_code(&mut out, drpc::Cmd::Handshake, seq, 0);
                    }
                    Request::Trigger { event, cid, uid } => {
                        let name = match event {
                            1 => "connect",
                            2 => "reconnect",
                            3 => "disconnect",
                            _ => "unknown",
                        };
                        if !node.quiet {
                            println!("{{\"event\":\"{name}\",\"gid\":\"{gid}\",\"cid\":{cid},\"uid\":{uid}}}");
                            let _ = std::io::stdout().flush();
                        }
                        if seq != 0 {
                            drpc::put_code(&mut out, drpc::Cmd::Trigger, seq, 0);
                        }
                    }
                    Request::Deliver { cid, message, .. } => {
                        let route = node.route(&message);
                        if route == Some(BROADCAST_ROUTE) {
                            node.send_broadcast();
                        } else {
                            let mut push = BytesMut::with_capacity(53 + message.len());
                            // Bind or unbind first: the acknowledgement follows it on the link.
                            match (route, node.uid_of(&message)) {
                                (Some(BIND_ROUTE), Some(uid)) => {
                                    drpc::put_bind(&mut push, 0, cid, uid)
                                }
                                (Some(UNBIND_ROUTE), Some(uid)) => {
                                    drpc::put_unbind(&mut push, 0, uid)
                                }
                                _ => {}
                            }
                            drpc::put_push(&mut push, 0, 0, 1, cid, &message);
                            let _ = node.pushes.send(push.freeze());
                        }
                        if seq != 0 {
                            drpc::put_code(&mut out, drpc::Cmd::Deliver, seq, 0);
                        }
                    }
                    _ => {}
                },
                Ok(Frame::Unknown { .. }) => {}
                Err(_) => return,
            }
        }
        if !out.is_empty() {
            if s.write_all(&out).is_err() {
                return;
            }
            out.clear();
        }
    }
}
