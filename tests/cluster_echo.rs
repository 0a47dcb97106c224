//! The cluster path with the Rust echo node as a real process: client → gate → link → node →
//! link → gate → client, plus events, routing rules and the link server's commands.

mod common;

use bytes::BytesMut;
use common::*;
use gatehouse::dispatch::cluster::ClusterUpstream;
use gatehouse::dispatch::routes::Strategy;
use gatehouse::dispatch::UpstreamFactory;
use gatehouse::drpc;
use gatehouse::registry::{endpoint_url, InstanceState, RouteInfo, ServiceInstance};
use gatehouse::session::Transport;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ECHO: &str = env!("CARGO_BIN_EXE_echo-node");

struct EchoNode {
    child: Child,
    addr: String,
    lines: flume::Receiver<String>,
}

impl EchoNode {
    fn start(gate_link: &str, id: &str) -> EchoNode {
        let mut child = Command::new(ECHO)
            .args(["--gate", gate_link, "--id", id])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn echo-node");
        let (tx, rx) = flume::unbounded();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("echo-node prints its address");
        let addr = first
            .split('"')
            .nth(3)
            .expect("{\"listening\":\"addr\"}")
            .to_string();
        EchoNode {
            child,
            addr,
            lines: rx,
        }
    }

    fn instance(&self, id: &str, routes: Vec<RouteInfo>, events: Vec<i32>) -> ServiceInstance {
        ServiceInstance {
            id: id.into(),
            name: "node".into(),
            kind: "node".into(),
            alias: "echo".into(),
            state: InstanceState::Work,
            events,
            routes,
            endpoint: endpoint_url(&self.addr),
            weight: 1,
            ..Default::default()
        }
    }

    /// The next event line the node printed that contains `needle`.
    fn event(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.lines.recv_deadline(deadline) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => continue,
                Err(_) => panic!("echo-node printed no line with {needle}"),
            }
        }
    }
}

impl Drop for EchoNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cluster_gate(extra: &str) -> TestGate {
    let upstream: UpstreamFactory = Arc::new(|shard| {
        Box::new(ClusterUpstream::new(
            "gate-test",
            Strategy::RoundRobin,
            shard,
            2,
            None,
        ))
    });
    TestGate::start_with(
        &format!("[cluster.gate]\nid = \"gate-test\"\naddr = \"127.0.0.1:0\"\n[network.tcp.server]\naddr = \"127.0.0.1:0\"\n{extra}"),
        upstream,
    )
}

fn route(id: i32) -> RouteInfo {
    RouteInfo {
        id,
        ..Default::default()
    }
}

/// A client's packet reaches the echo node and comes back byte-identical; events arrive with
/// the gate id from the handshake; unknown, internal, stateful and authorized routes are dropped.
#[test]
fn echo_round_trip_and_routing_rules() {
    let g = cluster_gate("");
    let node = EchoNode::start(&g.gate().link_addr, "echo-1");
    g.gate().set_nodes(vec![node.instance(
        "echo-1",
        vec![
            route(1),
            RouteInfo {
                id: 2,
                stateful: true,
                ..Default::default()
            },
            RouteInfo {
                id: 3,
                authorized: true,
                ..Default::default()
            },
            RouteInfo {
                id: 4,
                internal: true,
                ..Default::default()
            },
        ],
        vec![1, 2, 3],
    )]);
    std::thread::sleep(ms(100));
    let mut c = g.connect();
    let connect = node.event("\"connect\"");
    assert!(connect.contains("\"gid\":\"gate-test\""), "{connect}");
    let sent = c.data(1, 7, b"hello");
    assert_eq!(c.frame(), sent, "echoed byte for byte");
    for r in [2, 3, 4, 99] {
        c.data(r, 1, b"x");
    }
    c.silent_for(ms(300));
    // 1000 numbered packets come back in order.
    let sent: Vec<Vec<u8>> = (0..1000)
        .map(|i| c.data(1, i, &(i as u32).to_be_bytes()))
        .collect();
    for s in &sent {
        assert_eq!(&c.frame(), s);
    }
    drop(c);
    let disc = node.event("\"disconnect\"");
    assert!(disc.contains("\"uid\":0"), "{disc}");
}

/// Writes one request and reads a response of `want_len` bytes.
fn call(s: &mut std::net::TcpStream, build: impl Fn(&mut BytesMut), want_len: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    build(&mut out);
    s.write_all(&out).unwrap();
    let mut buf = vec![0u8; want_len];
    s.read_exact(&mut buf).unwrap();
    buf
}

/// The link server answers every node→gate command with due's exact layouts.
#[test]
fn link_commands() {
    let g = TestGate::start(
        "[cluster.gate]\naddr = \"127.0.0.1:0\"\n[network.tcp.server]\naddr = \"127.0.0.1:0\"\n",
    );
    let (mut client, cid) = g.connect_with_cid();
    let link = g.gate().link_addr.clone();
    let mut s = std::net::TcpStream::connect(&link).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let hs = call(&mut s, |o| drpc::put_handshake(o, 1, 2, b"node-x"), 16);
    assert_eq!(hs, hex("0000000c 00 01 0000000000000001 0000"));
    assert_eq!(call(&mut s, drpc::put_heartbeat, 5), hex("0000000180"));
    let bind = call(&mut s, |o| drpc::put_bind(o, 5, cid, 42), 16);
    assert_eq!(bind, hex("0000000c 00 02 0000000000000005 0000"));
    let missing = call(&mut s, |o| drpc::put_bind(o, 6, 999_999, 42), 16);
    assert_eq!(missing, hex("0000000c 00 02 0000000000000006 0001"));
    let ip = call(&mut s, |o| drpc::put_getip(o, 7, 2, 42), 20);
    assert_eq!(ip, hex("00000010 00 04 0000000000000007 0000 7f000001"));
    let stat = call(&mut s, |o| drpc::put_stat(o, 8, 1), 24);
    assert_eq!(
        stat,
        hex("00000014 00 05 0000000000000008 0000 0000000000000001")
    );
    let bad_kind = call(&mut s, |o| drpc::put_stat(o, 9, 7), 16);
    assert_eq!(bad_kind, hex("0000000c 00 05 0000000000000009 0002"));
    let online = call(&mut s, |o| drpc::put_isonline(o, 10, 2, 42), 17);
    assert_eq!(online, hex("0000000d 00 06 000000000000000a 0000 01"));
    let offline = call(&mut s, |o| drpc::put_isonline(o, 11, 2, 43), 17);
    assert_eq!(offline, hex("0000000d 00 06 000000000000000b 0000 00"));
    let state = call(&mut s, |o| drpc::put_getstate(o, 0), 17);
    assert_eq!(
        state,
        hex("0000000d 00 10 0000000000000000 0000 01"),
        "v2.4.1 answers seq 0"
    );

    // Push by uid (seq 0, no answer), then a subscribe call and a publish call.
    let p = g.packet.encode(9, 0, b"pushed").unwrap();
    let mut out = BytesMut::new();
    drpc::put_push(&mut out, 0, 0, 2, 42, &p);
    s.write_all(&out).unwrap();
    assert_eq!(client.frame(), p.to_vec());
    let sub = call(
        &mut s,
        |o| drpc::put_subscribe(o, 12, 1, &[cid], b"room").unwrap(),
        16,
    );
    assert_eq!(sub, hex("0000000c 00 0c 000000000000000c 0000"));
    let publish = call(
        &mut s,
        |o| drpc::put_publish(o, 0, 13, b"room", &p).unwrap(),
        22,
    );
    assert_eq!(
        publish,
        hex("00000012 00 0b 000000000000000d 0000000000000001")
    );
    assert_eq!(client.frame(), p.to_vec());
    // An unknown command is ignored; the connection stays usable.
    let mut unknown = BytesMut::new();
    unknown.extend_from_slice(&hex("0000000a 00 63 0000000000000001"));
    s.write_all(&unknown).unwrap();
    let mc = call(
        &mut s,
        |o| drpc::put_multicast(o, 0, 14, 1, &[cid, 5555], &p).unwrap(),
        24,
    );
    assert_eq!(
        mc,
        hex("00000014 00 09 000000000000000e 0000 0000000000000001")
    );
    assert_eq!(client.frame(), p.to_vec());
    // Graceful disconnect (seq 0): queued push first, then the close.
    let mut out = BytesMut::new();
    drpc::put_push(&mut out, 0, 0, 1, cid, &p);
    drpc::put_disconnect(&mut out, 0, 1, cid, false);
    s.write_all(&out).unwrap();
    assert_eq!(client.frame(), p.to_vec());
    client.wait_closed(Duration::from_secs(2));

    // A Consul-style TCP check: open and close without a byte; the gate keeps serving.
    drop(std::net::TcpStream::connect(&link).unwrap());
    let mut again = std::net::TcpStream::connect(&link).unwrap();
    again
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    again.write_all(&hex("0000000180")).unwrap();
    let mut hb = [0u8; 5];
    again.read_exact(&mut hb).unwrap();
    assert_eq!(hb.to_vec(), hex("0000000180"));
    let _ = g.addr(Transport::Tcp);
}
