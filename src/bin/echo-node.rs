//! echo-node: a minimal due node speaking the node side of the link, for demos and benchmarks.
//! Every client packet the gate delivers is pushed back, unchanged, to the connection it came from.
//!
//! It listens for the gate's connections (handshake, heartbeats, trigger, deliver) and dials the
//! gate's link address once (handshake kind 2) to send pushes. Events are printed as JSON lines
//! on stdout, so scripts and tests can follow what the node saw. Blocking threads keep it short:
//! one reader per inbound connection and one writer that batches pushes into few writes.

use bytes::{Bytes, BytesMut};
use gatehouse::link::codec::{self, Frame, Request};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

struct Args {
    listen: String,
    gate: String,
    id: String,
}

fn args() -> Args {
    let mut a = Args {
        listen: "127.0.0.1:0".into(),
        gate: String::new(),
        id: "echo-node".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_default();
        match flag.as_str() {
            "--listen" => a.listen = v,
            "--gate" => a.gate = v,
            "--id" => a.id = v,
            _ => {
                eprintln!("usage: echo-node --gate GATE_LINK_ADDR [--listen ADDR] [--id ID]");
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
    let pushes = start_pusher(a.gate.clone(), a.id.clone());
    for stream in listener.incoming().flatten() {
        let pushes = pushes.clone();
        std::thread::spawn(move || serve_gate(stream, pushes));
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
        codec::put_handshake(&mut out, 1, 2, id.as_bytes());
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
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => codec::put_heartbeat(&mut out),
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
fn serve_gate(mut s: TcpStream, pushes: crossbeam_channel::Sender<Bytes>) {
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
        while let Ok(Some(len)) = codec::frame_len(&buf, 64 << 20) {
            let frame = buf.split_to(len).freeze();
            match codec::decode(frame) {
                Ok(Frame::Heartbeat) => codec::put_heartbeat(&mut out),
                Ok(Frame::Request { seq, req, .. }) => match req {
                    Request::Handshake { id, .. } => {
                        gid = String::from_utf8_lossy(&id).into_owned();
                        codec::put_code(&mut out, codec::Cmd::Handshake, seq, 0);
                    }
                    Request::Trigger { event, cid, uid } => {
                        let name = match event {
                            1 => "connect",
                            2 => "reconnect",
                            3 => "disconnect",
                            _ => "unknown",
                        };
                        println!("{{\"event\":\"{name}\",\"gid\":\"{gid}\",\"cid\":{cid},\"uid\":{uid}}}");
                        let _ = std::io::stdout().flush();
                        if seq != 0 {
                            codec::put_code(&mut out, codec::Cmd::Trigger, seq, 0);
                        }
                    }
                    Request::Deliver { cid, message, .. } => {
                        let mut push = BytesMut::with_capacity(23 + message.len());
                        codec::put_push(&mut push, 0, 0, 1, cid, &message);
                        let _ = pushes.send(push.freeze());
                        if seq != 0 {
                            codec::put_code(&mut out, codec::Cmd::Deliver, seq, 0);
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
