//! Interop suite: shared/spec/cluster-protocol.md §11, items 1–30 and 34, against REAL Redis,
//! a REAL Consul agent, the real due v2.4.1 Go node and Go clients — and the same scenario runs
//! against both gates: gatehouse and due's own Go gate (tests/interop/bin/gate). Each scenario
//! takes a [`GateKind`]; every (item group, gate) pair is its own #[test], so a failure names
//! both (e.g. `item15_18_21_bind::gatehouse`).
//!
//! The reference gate serves one client protocol per process: WS is due's own server; TCP is
//! the spec-based server of tests/interop/internal/tcpnet, and KCP the same over kcp-go
//! v5.6.20's listener (the `_kcp` scenarios; the client is kcp-go with due's FEC 10+3), because
//! due's network/tcp and network/kcp modules are not downloadable here (and its Consul registry is tests/interop/internal/consulreg, for the
//! same reason). Scenarios therefore pick one protocol each; gatehouse serves TCP and WS from
//! the same sample configuration (tests/interop/etc; only ports, gid, dispatch and node weight
//! are substituted).
//!
//! Where the gates legitimately differ (cid values, number of gate→node connections), the
//! assertions check the spec's rule, not equality. Not covered: items 31–33 (lifecycle: 31 and 33
//! are in tests/interop_faults.rs, on the same harness) and 35 (etcd; `on_etcd` runs the registry
//! items on etcd instead). Item 36 (a due v2.5.8 node) runs against gatehouse only. Item 34
//! (mesh): the Go peers contain no mesh program, so a mesh is played by the test itself over a
//! raw link connection (handshake kind 3, push frame built from cluster-protocol.md §2.6.7).
//!
//! Shortened or unobservable parts: item 2's "TTL stays passing for 2 minutes" and item 6's
//! "idle for 2 minutes" share one idle window of 32 s (longer than a v2.4.1 node's 20–30 s
//! silence cut-off and than three 10 s TTLs); item 1's check intervals are not visible through
//! Consul 1.8.7's API (`Definition` is empty), so the TCP check is identified by its target.
//!
//! Skipped (with a message) when the Go peers, redis-server or consul are missing, unless
//! `GATEHOUSE_REQUIRE_SERVICES=1` (then it fails). Each test starts its own Redis and Consul.
//! `GATEHOUSE_INTEROP_IDLE_SECS` (default 32) sets the idle window of items 2/6.

mod interop_support;

use interop_support::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

per_gate! {
    item01_03_registry => registry;
    item02_05_06_link_idle => link_idle;
    item04_discovery => discovery;
    item07_08_34_raw_link => raw_link;
    item09_13_client_to_node_tcp => |k, t| client_to_node(k, t, Proto::Tcp);
    item09_13_client_to_node_ws => |k, t| client_to_node(k, t, Proto::Ws);
    item09_13_client_to_node_kcp => |k, t| client_to_node(k, t, Proto::Kcp);
    item12_20_route_rules => route_rules;
    item14_dispatch_rr_states => dispatch_rr_states;
    item14_dispatch_wrr => dispatch_wrr;
    item15_18_21_bind => bind;
    item19_20_node_binding => node_binding;
    item22_23_29_push => |k, t| push(k, t, Proto::Tcp);
    item22_23_29_push_kcp => |k, t| push(k, t, Proto::Kcp);
    item24_broadcast_two_gates => broadcast_two_gates;
    item25_pubsub => pubsub;
    item26_27_query => query;
    item28_disconnect => disconnect;
    item30_rebind_across_gates => rebind_across_gates;
}

/// Item 36: a due v2.5.8 node (tests/interop/due25) beside a v2.4.1 node, gatehouse only (due's
/// own gate is v2.4.1, which knows none of it).
#[test]
fn item36_due_v258_node() {
    if available_program("node25") {
        run(GateKind::Gatehouse, "item36_due_v258_node", due_v258_node);
    }
}

/// The registry scenarios again with an etcd member in place of the Consul agent (etcd-registry.md
/// §12): the gates and the Go nodes register in etcd (`[registry.etcd]`; the nodes through the
/// spec-based stand-in tests/interop/internal/etcdreg), the gate finds nodes through its watch.
mod on_etcd {
    use super::*;
    per_gate! {@on RegistryKind::Etcd;
        etcd01_03_registration => etcd_registration;
        etcd04_discovery => discovery;
        etcd14_dispatch_rr_states => dispatch_rr_states;
    }
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

/// Waits until `c` has sent a frame route 1 with a fresh payload, the node handled it and the
/// echo arrived; returns the index of the node that handled it, `None` if nothing came back
/// within `bound` (dropped).
fn route_one(c: &Cluster, cl: &mut Client, bound: Duration) -> Option<usize> {
    let p = c.unique("pick");
    cl.send(1, 1, &p);
    let start = Instant::now();
    while start.elapsed() < bound {
        if cl.got(1, &p) {
            let (i, _) = c.wait_message(&format!("node line of {p}"), |v| v["payload"] == p);
            return Some(i);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        c.node_events(|v| v["payload"] == p).is_empty(),
        "{p} reached a node but its echo did not come back"
    );
    None
}

/// Asserts no node ran a handler for `payload` (after the caller's barrier plus a grace time).
fn assert_not_delivered(c: &Cluster, payload: &str, why: &str) {
    std::thread::sleep(GRACE);
    let got = c.node_events(|v| v["event"] == "message" && v["payload"] == payload);
    assert!(got.is_empty(), "{why}: {payload} was delivered: {got:?}");
}

// ---------------------------------------------------------------------------------------------
// Items 1, 2 (start), 3: the registry record, its checks, and the node's view of the gate.

fn registry(kind: GateKind, tag: &str) {
    let c = Cluster::start(tag, Spec::one(kind, Proto::Ws));
    let g = c.gate();
    let consul = c.env.consul();
    let sid = g.service_id();
    let port = g.link.port();
    let endpoint = format!("drpc://127.0.0.1:{port}?is_secure=false");

    // 1. The agent's service record.
    let svc = consul.agent_service(&sid).expect("gate service registered");
    assert_eq!(svc["ID"], sid);
    assert_eq!(svc["Service"], "gate");
    assert_eq!(svc["Address"], "127.0.0.1", "advertised link host: {svc}");
    assert_eq!(svc["Port"], port);
    assert!(
        svc["Tags"].is_null() || svc["Tags"] == json!([]),
        "no tags: {svc}"
    );
    assert_eq!(
        svc["TaggedAddresses"]["drpc"],
        json!({"Address": "127.0.0.1", "Port": port}),
        "TaggedAddresses.drpc: {svc}"
    );
    assert_eq!(
        svc["Meta"],
        json!({
            "_region": "test", "alias": "gate", "endpoint": endpoint,
            "id": g.gid, "kind": "gate", "state": "work",
        }),
        "Meta exactly (no routes/events/weight for a gate)"
    );
    // The advertised port is the link server: a node handshake is answered there.
    let mut l = Link::connect(g.link);
    assert_eq!(l.handshake(2, "interop-probe"), frame(1, 1, &[0, 0]));

    // 1. Checks: a TCP check on the link port and the TTL check `service:gate-<gid>`. (Consul
    // 1.8.7's agent API leaves `Definition` empty, so interval/timeout/deregister values are
    // not observable; the TCP target is, through the check output.)
    let checks = consul.agent_checks(&sid);
    assert_eq!(checks.len(), 2, "exactly two checks: {checks:?}");
    let ttl = checks
        .iter()
        .find(|c| c["CheckID"] == format!("service:{sid}"))
        .unwrap_or_else(|| panic!("TTL check service:{sid}: {checks:?}"));
    assert_eq!(ttl["Type"], "ttl");
    assert_eq!(ttl["Status"], "passing");
    assert_eq!(
        ttl["Output"], "passed",
        "TTL updates send Output \"passed\""
    );
    let tcp = checks
        .iter()
        .find(|c| c["Type"] == "tcp")
        .unwrap_or_else(|| panic!("a TCP check: {checks:?}"));
    assert_eq!(tcp["Status"], "passing");
    assert_eq!(
        tcp["Output"],
        format!("TCP connect 127.0.0.1:{port}: Success"),
        "the TCP check dials the link port"
    );

    // 2. Passing (every check) within ~15 s of the start.
    let after = c.gate_passing_after[0];
    assert!(
        after <= Duration::from_secs(15),
        "passing only after {after:?}"
    );
    let entry = consul.get("/v1/health/service/gate?passing=1");
    assert_eq!(entry.as_array().map(Vec::len), Some(1), "{entry}");

    // 3. The Go node's FetchGateList and HasGate.
    let n = c.node();
    let list = n.ok("/fetchgatelist", &[], "");
    assert_eq!(
        list,
        json!([{
            "id": g.gid, "name": "gate", "kind": "gate", "alias": "gate", "state": "work",
            "endpoint": endpoint, "metadata": {"region": "test"},
        }]),
        "FetchGateList"
    );
    assert_eq!(
        n.ok("/fetchgatelist", &[("states", "work")], ""),
        list,
        "listed as work"
    );
    assert_eq!(
        n.ok("/fetchgatelist", &[("states", "busy,hang")], ""),
        json!([]),
        "not busy/hang"
    );
    assert!(n.has_gate(&g.gid));
    assert!(!n.has_gate("no-such-gate"));
}

// ---------------------------------------------------------------------------------------------
// Items 5, 6, 2 (TTL stays passing): the node's 20 link connections, handshake and heartbeat
// answers, then an idle window longer than a node's 20–30 s silence cut-off and than 3 TTLs.

fn link_idle(kind: GateKind, tag: &str) {
    let c = Cluster::start(tag, Spec::one(kind, Proto::Tcp));
    let (g, n) = (c.gate(), c.node());
    let link = g.link.port();

    // 5. The node opened its 20 connections (the probe made it answer a client).
    wait_until("the node's 20 link connections", WAIT, || {
        established_to(n.proc.pid(), link).len() == 20
    });
    // Each starts with a handshake (kind 2, nid) answered with code 0 — what the gate answers a
    // node handshake, observed directly; and heartbeats are echoed.
    let mut l = Link::connect(g.link);
    assert_eq!(
        l.handshake(2, &n.nid),
        frame(1, 1, &[0, 0]),
        "handshake answer"
    );
    l.send(&HEARTBEAT);
    assert_eq!(l.read(WAIT), Some(HEARTBEAT.to_vec()), "heartbeat echo");
    drop(l);

    let node_svc = c
        .env
        .consul()
        .agent_service(&n.service_id())
        .expect("node registered");
    let node_port = node_svc["Port"].as_u64().unwrap() as u16;
    let node_side = established_to(n.proc.pid(), link);
    let gate_side = established_to(g.proc.pid(), node_port);
    assert_eq!(node_side.len(), 20);
    // due opens 20 per node; the spec allows a gate 1..20.
    assert!(
        (1..=20).contains(&gate_side.len()),
        "gate→node connections: {}",
        gate_side.len()
    );

    // 6 + 2: idle. A gate that does not echo heartbeats is cut by the node after 20–30 s; one
    // that sends none is cut by the node's server likewise; a missed TTL update fails the check
    // within 10 s.
    let idle: u64 = std::env::var("GATEHOUSE_INTEROP_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let ttl_id = format!("service:{}", g.service_id());
    let end = Instant::now() + Duration::from_secs(idle);
    while Instant::now() < end {
        let checks = c.env.consul().agent_checks(&g.service_id());
        let ttl = checks
            .iter()
            .find(|c| c["CheckID"] == ttl_id)
            .expect("TTL check");
        assert_eq!(ttl["Status"], "passing", "TTL check during the idle window");
        assert!(c.env.consul().is_passing("gate", &g.service_id()));
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(
        established_to(n.proc.pid(), link),
        node_side,
        "the node's 20 connections stayed up (no re-dials) for {idle} s"
    );
    assert_eq!(
        established_to(g.proc.pid(), node_port),
        gate_side,
        "the gate's connections to the node stayed up for {idle} s"
    );
    let mut cl = c.connect(0, Proto::Tcp);
    cl.barrier();
}

// ---------------------------------------------------------------------------------------------
// etcd-registry.md §12 items 1–3, 7, 9, 11: the gate's key, its exact value (the same bytes from
// both gates), its lease (TTL ⌊retryInterval⌋ + 1 = 11) kept alive, the node's record read by
// the gate, the node's view of the gate, and the key expiring with its lease after a SIGKILL.

fn etcd_registration(kind: GateKind, tag: &str) {
    let c = Cluster::start(tag, Spec::one(kind, Proto::Tcp));
    let (g, etcd) = (c.gate(), c.env.etcd());
    let key = format!("/services/gate/{}", g.gid);
    let kv = etcd.get(&key).expect("the gate's key");
    // 1. Members in due's order, empty ones omitted, metadata from [cluster.gate.metadata].
    let want = format!(
        r#"{{"id":"{}","name":"gate","kind":"gate","alias":"gate","state":"work","endpoint":"drpc://127.0.0.1:{}?is_secure=false","metadata":{{"region":"test"}}}}"#,
        g.gid,
        g.link.port()
    );
    assert_eq!(kv.value, want, "the gate's value, byte for byte");
    // Nothing else of the gate's under the namespace.
    let gates = etcd.list("/services/gate/");
    assert_eq!(gates.len(), 1, "{gates:?}");
    // 2. Its own lease, granted TTL 11, holding only this key.
    let (left, granted, keys) = etcd.lease(kv.lease);
    assert_eq!(granted, 11, "granted TTL");
    assert!(left > 0, "lease alive");
    assert_eq!(keys, std::slice::from_ref(&key));
    // 3. Kept alive: over 9 s (two keep-alive periods of TTL/3) the remaining TTL never falls
    // below TTL - TTL/3 - 2 = 6 (the checklist's - 1, plus a second for a loaded machine: due's
    // gate once showed 6 on etcd 3.5 with two fuzzers holding both CPUs) and is seen to go back
    // up. Without keep-alives it would fall to 2.
    let (t, mut lowest, mut rose, mut last) = (Instant::now(), left, false, left);
    while t.elapsed() < Duration::from_secs(9) {
        let (now, _, _) = etcd.lease(kv.lease);
        lowest = lowest.min(now);
        rose |= now > last;
        last = now;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        lowest >= 6,
        "remaining TTL fell to {lowest}: keep-alive too slow"
    );
    assert!(rose, "no keep-alive seen in 9 s");
    assert_eq!(
        etcd.get(&key).map(|kv| kv.lease),
        Some(kv.lease),
        "same lease"
    );

    // 9. The Go node's record (due's encoding) is what the gate routes by: its routes and
    // events reach it (wait_ready routed route 1; a stateless echo here again).
    let n = c.node();
    let node = etcd
        .record(&format!("/services/node/{}", n.nid))
        .expect("the node's key");
    assert_eq!(node["kind"], "node");
    assert_eq!(node["state"], "work");
    let mut cl = c.connect(0, Proto::Tcp);
    let p = c.unique("etcd");
    cl.send(1, 1, &p);
    cl.expect(1, &p);
    // 11. The node sees the gate by its gid (FetchGateList through its etcd watch).
    assert!(n.has_gate(&g.gid));

    // 7. SIGKILL: no deregistration; the key goes with its lease, within TTL + 1 s of the last
    // keep-alive (the kill is at most one keep-alive period, TTL/3, after it).
    let (left, _, _) = etcd.lease(etcd.get(&key).unwrap().lease);
    g.proc.signal(libc::SIGKILL);
    let killed = Instant::now();
    let gone = wait_some("the killed gate's key expires", START, || {
        etcd.get(&key).is_none().then(|| killed.elapsed())
    });
    eprintln!("[{tag}] key gone {gone:?} after SIGKILL ({left} s left at the kill)");
    assert!(
        gone <= Duration::from_secs(left as u64 + 2),
        "key outlived its lease: {gone:?} after SIGKILL with {left} s left"
    );
    wait_until("the node drops the killed gate", START, || {
        !n.has_gate(&g.gid)
    });
}

// ---------------------------------------------------------------------------------------------
// Item 4: the gate discovers nodes started after it, and stops routing to a node that leaves.

fn discovery(kind: GateKind, tag: &str) {
    let mut c = Cluster::start(
        tag,
        Spec {
            gates: vec![(kind, Proto::Tcp)],
            nodes: vec![],
            dispatch: "rr",
            registry: current_registry(),
        },
    );
    // A client connected while the gate knows no node at all.
    let mut cl = c.spawn_client(0, Proto::Tcp);
    let early = c.unique("early");
    cl.send(1, 1, &early);

    c.nodes.push(Node::start(&c.env, 1, 0));
    c.wait_ready();
    // The early client's messages now reach the node: no gate restart needed.
    cl.barrier();
    assert!(
        !cl.got(1, &early),
        "a message with no node to go to is dropped"
    );

    c.nodes.push(Node::start(&c.env, 1, 1));
    c.wait_ready();
    let mut seen = [false; 2];
    wait_until("rr reaching both nodes", START, || {
        if let Some(i) = route_one(&c, &mut cl, WAIT) {
            seen[i] = true;
        }
        seen == [true, true]
    });

    // Node 0 leaves (graceful: it re-registers hang, then deregisters).
    let leaving = c.nodes[0].nid.clone();
    c.nodes[0].ok("/quit", &[], "");
    let t = Instant::now();
    wait_until("node 0 no longer listed as work", START, || {
        c.env.registry.listed_state("node", &leaving).as_deref() != Some("work")
    });
    let gone = t.elapsed();
    // ~2 s for the gate's registry watch (the spec's bound), then every pick is node 1.
    std::thread::sleep(Duration::from_millis(2500));
    for _ in 0..6 {
        assert_eq!(
            route_one(&c, &mut cl, WAIT),
            Some(1),
            "after node 0 left the registry ({gone:?} after quit), routing must use node 1 only"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Items 7, 8, 34 over raw link connections.

fn raw_link(kind: GateKind, tag: &str) {
    let c = Cluster::start(tag, Spec::one(kind, Proto::Tcp));
    let g = c.gate();

    // 7. Unknown command byte: ignored (no answer), the connection stays usable.
    let mut l = Link::connect(g.link);
    assert_eq!(l.handshake(2, "interop-raw"), frame(1, 1, &[0, 0]));
    l.send(&frame(99, 5, b"zz"));
    let mut isonline = vec![1];
    isonline.extend_from_slice(&12345i64.to_be_bytes());
    l.send(&frame(6, 7, &isonline));
    assert_eq!(
        l.read_data(WAIT),
        Some(frame(6, 7, &[0, 0, 0])),
        "the first answer is isonline's (code 0, offline): the unknown command got none"
    );
    l.send(&HEARTBEAT);
    assert_eq!(l.read(WAIT), Some(HEARTBEAT.to_vec()));
    l.send(&frame(16, 8, &[]));
    assert_eq!(
        l.read_data(WAIT),
        Some(frame(16, 8, &[0, 0, 1])),
        "getstate: code 0, work"
    );
    // Frames before any handshake are processed too (cluster-protocol.md §2.4).
    let mut early = Link::connect(g.link);
    early.send(&frame(6, 9, &isonline));
    assert_eq!(early.read_data(WAIT), Some(frame(6, 9, &[0, 0, 0])));
    drop(early);

    // 8. Consul-TCP-check-like connections (open, close, no data): no leaked sockets, no harm.
    let pid = g.proc.pid();
    let base = socket_count(pid);
    for _ in 0..100 {
        drop(std::net::TcpStream::connect(g.link).expect("connect link"));
    }
    let mut last = 0;
    let settled = Instant::now();
    while settled.elapsed() < WAIT {
        last = socket_count(pid);
        if last <= base + 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        last <= base + 4,
        "gate sockets after 100 empty connections: {last}, before: {base}"
    );
    l.send(&HEARTBEAT);
    assert_eq!(l.read(WAIT), Some(HEARTBEAT.to_vec()), "link still serves");
    assert!(c.env.consul().is_passing("gate", &g.service_id()));
    let mut cl = c.connect(0, Proto::Tcp);
    cl.barrier();

    // 34. A mesh (kind 3) pushes to a uid (the test plays the mesh: no Go mesh program exists).
    c.bind(&mut cl, 3401);
    let mut mesh = Link::connect(g.link);
    assert_eq!(mesh.handshake(3, "interop-mesh"), frame(1, 1, &[0, 0]));
    let mut body = vec![2];
    body.extend_from_slice(&3401i64.to_be_bytes());
    body.extend_from_slice(&client_packet(106, 0, b"from-mesh"));
    mesh.send(&frame(8, 11, &body));
    assert_eq!(
        mesh.read_data(WAIT),
        Some(frame(8, 11, &[0, 0])),
        "push answered code 0"
    );
    let m = cl.expect(106, "from-mesh");
    assert_eq!(m["seq"], 0);
    // And by conn: seq 0 (fire and forget, as nodes send it).
    let mut body = vec![1];
    body.extend_from_slice(&cl.cid.to_be_bytes());
    body.extend_from_slice(&client_packet(107, 3, b"mesh-conn"));
    mesh.send(&frame(8, 0, &body));
    cl.expect(107, "mesh-conn");
    assert_eq!(
        mesh.read_data(Duration::from_millis(300)),
        None,
        "seq 0: no answer"
    );

    // The other node→gate commands a mesh may send, with seq ≠ 0 so the gate's answers are
    // observable (cluster-protocol.md §2.6.8–2.6.11, v2.4.1 layouts).
    let with_total = |total: u64| {
        let mut b = vec![0, 0];
        b.extend_from_slice(&total.to_be_bytes());
        b
    };
    // multicast kind conn to [cid, unknown]: code 0 + total 1 (24 bytes).
    let mut body = vec![1, 0, 2];
    body.extend_from_slice(&cl.cid.to_be_bytes());
    body.extend_from_slice(&987_654_321i64.to_be_bytes());
    body.extend_from_slice(&client_packet(108, 0, b"mesh-multi"));
    mesh.send(&frame(9, 12, &body));
    assert_eq!(mesh.read_data(WAIT), Some(frame(9, 12, &with_total(1))));
    cl.expect(108, "mesh-multi");
    // broadcast kind user: the one bound user.
    let mut body = vec![2];
    body.extend_from_slice(&client_packet(109, 0, b"mesh-all"));
    mesh.send(&frame(10, 13, &body));
    assert_eq!(mesh.read_data(WAIT), Some(frame(10, 13, &with_total(1))));
    cl.expect(109, "mesh-all");
    // subscribe (code only), publish (v2.4.1: total without code, 22 bytes), unsubscribe.
    let mut sub = vec![1, 0, 1];
    sub.extend_from_slice(&cl.cid.to_be_bytes());
    sub.extend_from_slice(b"meshch");
    mesh.send(&frame(12, 14, &sub));
    assert_eq!(mesh.read_data(WAIT), Some(frame(12, 14, &[0, 0])));
    let mut publish = vec![6];
    publish.extend_from_slice(b"meshch");
    publish.extend_from_slice(&client_packet(110, 0, b"mesh-pub"));
    mesh.send(&frame(11, 15, &publish));
    assert_eq!(
        mesh.read_data(WAIT),
        Some(frame(11, 15, &1u64.to_be_bytes()))
    );
    cl.expect(110, "mesh-pub");
    mesh.send(&frame(13, 16, &sub));
    assert_eq!(mesh.read_data(WAIT), Some(frame(13, 16, &[0, 0])));
    mesh.send(&frame(11, 17, &publish));
    assert_eq!(
        mesh.read_data(WAIT),
        Some(frame(11, 17, &0u64.to_be_bytes()))
    );
    // Push to a uid that is not here: code 1.
    let mut body = vec![2];
    body.extend_from_slice(&3499i64.to_be_bytes());
    body.extend_from_slice(&client_packet(111, 0, b"nobody"));
    mesh.send(&frame(8, 18, &body));
    assert_eq!(mesh.read_data(WAIT), Some(frame(8, 18, &[0, 1])));
}

// ---------------------------------------------------------------------------------------------
// Items 9, 10, 11, 13: the client → node path.

fn client_to_node(kind: GateKind, tag: &str, proto: Proto) {
    let c = Cluster::start(tag, Spec::one(kind, proto));
    let g = c.gate();
    let mut cl = c.connect(0, proto);

    // 9. Connect event: gid, cid > 0, uid 0; it precedes the connection's first message.
    let node = &c.node().proc;
    let connect = node.wait_event("connect event", WAIT, |v| {
        v["event"] == "connect" && v["cid"] == cl.cid
    });
    assert_eq!(
        connect,
        json!({"event": "connect", "gid": g.gid, "cid": cl.cid, "uid": 0})
    );
    // The order holds for gatehouse, which pins triggers and delivers of one cid to one link
    // connection. due v2.4.1's gate sends triggers on its shared, unpinned queue
    // (cluster-protocol.md §1.3), so its Connect can overtake or trail the first message: seen
    // as a flaky failure of this assertion against the reference, never against gatehouse.
    if kind == GateKind::Gatehouse {
        let events = node.events();
        let pos = |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred).unwrap();
        assert!(
            pos(&|v| v["event"] == "connect" && v["cid"] == cl.cid)
                < pos(&|v| v["event"] == "message" && v["cid"] == cl.cid),
            "connect before the first message"
        );
    }

    // 10. Same route/seq/payload at the node; the response comes back with route and seq.
    let p = c.unique("hello");
    cl.send(1, 4242, &p);
    let echo = cl.expect(1, &p);
    assert_eq!(echo["seq"], 4242);
    let (_, m) = c.wait_message("echo at node", |v| v["payload"] == p);
    assert_eq!(
        m,
        json!({"event": "message", "route": 1, "seq": 4242, "gid": g.gid, "cid": cl.cid, "uid": 0, "payload": p})
    );
    // Binary payload bytes pass unchanged both ways.
    cl.send_hex(1, 7, "00ff10800a0d");
    let bin = cl.wait_message("binary echo", |v| v["hex"] == "00ff10800a0d");
    assert_eq!(
        (bin["route"].clone(), bin["seq"].clone()),
        (json!(1), json!(7))
    );

    // 11. 1000 back-to-back messages arrive in order (at the node and back at the client).
    let count: i64 = 1000;
    let prefix = c.unique("ord");
    let script: String = (1..=count)
        .map(|i| format!("send 1 {i} {prefix}-{i}\n"))
        .collect();
    cl.send_script(&script);
    let mine = |v: &Value| {
        v["payload"]
            .as_str()
            .is_some_and(|p| p.starts_with(&format!("{prefix}-")))
    };
    wait_until("all messages at the node", Duration::from_secs(30), || {
        c.node().messages(mine).len() == count as usize
    });
    let at_node: Vec<i64> = c
        .node()
        .messages(mine)
        .iter()
        .map(|v| v["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(at_node, (1..=count).collect::<Vec<i64>>(), "node order");
    wait_until("all echoes", Duration::from_secs(30), || {
        cl.messages().iter().filter(|v| mine(v)).count() == count as usize
    });
    let back: Vec<String> = cl
        .messages()
        .iter()
        .filter(|v| mine(v))
        .map(|v| v["payload"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (1..=count).map(|i| format!("{prefix}-{i}")).collect();
    assert_eq!(back, want, "client order");

    // 13. A route no node serves: dropped, the connection stays open.
    let nobody = c.unique("nobody");
    cl.send(999, 1, &nobody);
    cl.barrier();
    assert_not_delivered(&c, &nobody, "route 999 is unknown");
    assert!(!cl.got(999, &nobody));
    assert!(!cl.disconnected());
}

// ---------------------------------------------------------------------------------------------
// Items 12 and 20: stateful/authorized routes need a uid, internal routes are never delivered,
// stateful routes need a node binding.

fn route_rules(kind: GateKind, tag: &str) {
    let c = Cluster::start(tag, Spec::one(kind, Proto::Ws));
    let proto = c.gate().proto_for(Proto::Ws);
    let mut cl = c.connect(0, proto);

    // (A v2.4.1 node itself ignores the authorized and internal flags, so a gate forwarding
    // those would make the handler run; stateful routes are re-checked by the node as well.)
    let (st, au, int) = (c.unique("st0"), c.unique("au0"), c.unique("in0"));
    cl.send(2, 1, &st);
    cl.send(3, 2, &au);
    cl.send(4, 3, &int);
    cl.barrier();
    assert_not_delivered(&c, &st, "stateful route with uid 0");
    assert_not_delivered(&c, &au, "authorized route with uid 0");
    assert_not_delivered(&c, &int, "internal route");
    assert!(!cl.disconnected(), "dropping does not close the client");

    // Bound: authorized is delivered with the uid; stateful still needs BindNode (item 20);
    // internal never.
    c.bind(&mut cl, 1201);
    let au = c.unique("au1");
    cl.send(3, 4, &au);
    cl.expect(3, &au);
    let (_, m) = c.wait_message("authorized message", |v| v["payload"] == au);
    assert_eq!(
        (m["uid"].clone(), m["route"].clone()),
        (json!(1201), json!(3))
    );
    let (st, int) = (c.unique("st1"), c.unique("in1"));
    cl.send(2, 5, &st);
    cl.send(4, 6, &int);
    cl.barrier();
    assert_not_delivered(&c, &st, "stateful route before any BindNode");
    assert_not_delivered(&c, &int, "internal route, bound user");
    assert!(!cl.disconnected());
}

// ---------------------------------------------------------------------------------------------
// Item 14: dispatch strategies and node states.

/// Routes until every node handled a message (the gate's view holds all of them).
fn until_all_nodes_seen(c: &Cluster, cl: &mut Client) {
    let mut seen = vec![false; c.nodes.len()];
    wait_until("every node picked once", START, || {
        if let Some(i) = route_one(c, cl, WAIT) {
            seen[i] = true;
        }
        seen.iter().all(|s| *s)
    });
}

fn set_state(c: &Cluster, i: usize, state: &str) {
    assert_eq!(c.nodes[i].ok("/state", &[("set", state)], ""), json!(state));
    let nid = &c.nodes[i].nid;
    wait_until(&format!("node {i} listed as {state}"), START, || {
        c.env.registry.listed_state("node", nid).as_deref() == Some(state)
    });
}

/// Routes until `n` consecutive picks satisfy `ok` (the gate applies registry changes about a
/// second after Consul), then `more` further picks must all satisfy it.
fn converge(
    c: &Cluster,
    cl: &mut Client,
    what: &str,
    bound: Duration,
    n: usize,
    more: usize,
    ok: impl Fn(Option<usize>) -> bool,
) {
    let mut run = 0;
    let start = Instant::now();
    while run < n {
        assert!(start.elapsed() < bound, "never converged: {what}");
        let pick = route_one(c, cl, Duration::from_secs(1));
        run = if ok(pick) { run + 1 } else { 0 };
    }
    for _ in 0..more {
        let pick = route_one(c, cl, Duration::from_secs(1));
        assert!(ok(pick), "{what}: pick {pick:?} after convergence");
    }
}

fn dispatch_rr_states(kind: GateKind, tag: &str) {
    let c = Cluster::start(
        tag,
        Spec {
            gates: vec![(kind, Proto::Tcp)],
            nodes: vec![1, 1],
            dispatch: "rr",
            registry: current_registry(),
        },
    );
    let mut cl = c.connect(0, Proto::Tcp);
    until_all_nodes_seen(&c, &mut cl);
    // rr alternates.
    let picks: Vec<usize> = (0..10)
        .map(|_| route_one(&c, &mut cl, WAIT).expect("delivered"))
        .collect();
    assert!(
        picks.windows(2).all(|w| w[0] != w[1]),
        "rr alternates: {picks:?}"
    );

    // Node 0 busy while node 1 works: never chosen.
    set_state(&c, 0, "busy");
    converge(&c, &mut cl, "busy node avoided", START, 4, 6, |p| {
        p == Some(1)
    });
    // Only busy nodes: still delivered (to both, rr over the busy bucket).
    set_state(&c, 1, "busy");
    let mut seen = [false; 2];
    wait_until("busy-only nodes both picked", START, || {
        let p = route_one(&c, &mut cl, WAIT).expect("only busy nodes: still delivered");
        seen[p] = true;
        seen == [true, true]
    });
    // Only hang nodes: dropped.
    set_state(&c, 0, "hang");
    set_state(&c, 1, "hang");
    converge(&c, &mut cl, "hang nodes never chosen", START, 1, 3, |p| {
        p.is_none()
    });
    assert!(!cl.disconnected());
    // Events still go to nodes in any state (cluster-protocol.md §4): connect and disconnect reach
    // both.
    let count = |i: usize, what: &str| {
        c.nodes[i]
            .proc
            .count_events(|v| v["event"] == what && v["gid"] == c.gate().gid)
    };
    let before = [count(0, "connect"), count(1, "connect")];
    let gone = [count(0, "disconnect"), count(1, "disconnect")];
    let extra = c.spawn_client(0, Proto::Tcp);
    wait_until("connect events at both hang nodes", WAIT, || {
        [count(0, "connect"), count(1, "connect")] == [before[0] + 1, before[1] + 1]
    });
    extra.close();
    wait_until("disconnect events at both hang nodes", WAIT, || {
        [count(0, "disconnect"), count(1, "disconnect")] == [gone[0] + 1, gone[1] + 1]
    });
}

fn dispatch_wrr(kind: GateKind, tag: &str) {
    let c = Cluster::start(
        tag,
        Spec {
            gates: vec![(kind, Proto::Tcp)],
            nodes: vec![4, 2, 1],
            dispatch: "wrr",
            registry: current_registry(),
        },
    );
    let mut cl = c.connect(0, Proto::Tcp);
    until_all_nodes_seen(&c, &mut cl);
    // Smooth WRR with weights 4/2/1 repeats a 7-pick pattern (A B A C A B A, cluster-protocol.md
    // §10.4; the letters follow the registry's list order): every 7 consecutive picks are 4:2:1.
    let picks: Vec<usize> = (0..21)
        .map(|_| route_one(&c, &mut cl, WAIT).expect("delivered"))
        .collect();
    for w in picks.windows(7) {
        let count = |i| w.iter().filter(|p| **p == i).count();
        assert_eq!(
            [count(0), count(1), count(2)],
            [4, 2, 1],
            "weights 4/2/1, picks {picks:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Items 15, 16, 17, 18, 21: binding users to the gate.

fn bind(kind: GateKind, tag: &str) {
    let c = Cluster::start(tag, Spec::one(kind, Proto::Ws));
    let (g, n, redis) = (c.gate(), c.node(), &c.env.redis);
    let proto = g.proto_for(Proto::Ws);
    let mut a = c.connect(0, proto);
    let uid = 1501;

    // 15. BindGate: Redis key, bind event, reconnect event, uid on later messages.
    a.send(5, 5, &s(uid));
    a.expect(5, "ok");
    assert_eq!(redis.get(&gate_key(uid)), Some(g.gid.clone()));
    let bound = location_event(uid, 1, &g.gid, "gate", "");
    c.sub.wait_exact(GATE_CHANNEL, &bound);
    let re = n
        .proc
        .wait_event("reconnect", WAIT, |v| v["event"] == "reconnect");
    assert_eq!(
        re,
        json!({"event": "reconnect", "gid": g.gid, "cid": a.cid, "uid": uid})
    );
    let p = c.unique("bound");
    a.send(1, 9, &p);
    a.expect(1, &p);
    assert_eq!(
        c.wait_message("bound message", |v| v["payload"] == p).1["uid"],
        uid
    );

    // 21. KEEPTTL: a TTL set by someone else survives a rebind.
    let _: i64 = redis.query(&["EXPIRE", &gate_key(uid), "1000"]);
    a.send(5, 6, &s(uid));
    a.wait_message("rebind ok", |v| v["route"] == 5 && v["seq"] == 6);
    wait_until("second bind event", WAIT, || {
        c.sub.for_uid(GATE_CHANNEL, uid).len() == 2
    });
    let ttl = redis.ttl(&gate_key(uid));
    assert!((1..=1000).contains(&ttl), "TTL kept by the rebind: {ttl}");
    assert_eq!(redis.get(&gate_key(uid)), Some(g.gid.clone()));
    wait_until("a reconnect event for every bind", WAIT, || {
        n.proc
            .count_events(|v| v["event"] == "reconnect" && v["uid"] == uid)
            == 2
    });

    // 16. Bind with an unknown cid: the v2.4.1 node reports success, Redis is unchanged.
    assert_eq!(
        n.call(
            "/bindgate",
            &[("gid", &g.gid), ("cid", "987654321"), ("uid", "1601")],
            ""
        ),
        Ok(Value::Null)
    );
    assert_eq!(redis.get(&gate_key(1601)), None);

    // 17. The same uid on a second connection: the first stays open, unbound.
    let mut b = c.connect(0, proto);
    c.bind(&mut b, uid);
    assert_eq!(redis.get(&gate_key(uid)), Some(g.gid.clone()));
    let (pa, pb) = (c.unique("first"), c.unique("second"));
    a.send(1, 1, &pa);
    b.send(1, 1, &pb);
    a.expect(1, &pa);
    b.expect(1, &pb);
    assert_eq!(c.wait_message("first", |v| v["payload"] == pa).1["uid"], 0);
    assert_eq!(
        c.wait_message("second", |v| v["payload"] == pb).1["uid"],
        uid
    );
    assert!(!a.disconnected());
    // Nothing was ever published for the unknown-cid bind (b's bind event came later).
    assert!(c.sub.for_uid(GATE_CHANNEL, 1601).is_empty());
    assert!(n
        .proc
        .find_event(|v| v["event"] == "reconnect" && v["uid"] == 1601)
        .is_none());

    // 18. UnbindGate: key deleted, type-3 event, the client stays connected and unbound.
    n.ok("/unbindgate", &[("uid", &s(uid))], "");
    assert_eq!(redis.get(&gate_key(uid)), None);
    c.sub
        .wait_exact(GATE_CHANNEL, &location_event(uid, 3, &g.gid, "gate", ""));
    let pb = c.unique("unbound");
    b.send(1, 1, &pb);
    b.expect(1, &pb);
    assert_eq!(
        c.wait_message("unbound", |v| v["payload"] == pb).1["uid"],
        0
    );
    let bcid = b.cid;
    b.close();
    let d = n.proc.wait_event("disconnect of b", WAIT, |v| {
        v["event"] == "disconnect" && v["cid"] == bcid
    });
    assert_eq!(d["uid"], 0, "disconnect after unbind carries no uid");
    assert_eq!(
        c.sub.for_uid(GATE_CHANNEL, uid).len(),
        4,
        "bind, bind, bind, unbind"
    );

    // Rebinding a connection to another uid (cluster-protocol.md §2.6.1 step 3): the old uid leaves
    // the gate's index, its Redis location stays until a push finds it stale.
    let mut e = c.connect(0, proto);
    c.bind(&mut e, 1701);
    c.bind(&mut e, 1702);
    assert_eq!(redis.get(&gate_key(1701)), Some(g.gid.clone()));
    assert_eq!(redis.get(&gate_key(1702)), Some(g.gid.clone()));
    let p = c.unique("rebound");
    e.send(1, 1, &p);
    e.expect(1, &p);
    assert_eq!(
        c.wait_message("rebound", |v| v["payload"] == p).1["uid"],
        1702
    );
    let by_gid = |uid: &'static str| [("kind", "user"), ("gid", g.gid.as_str()), ("target", uid)];
    assert_eq!(n.ok("/isonline", &by_gid("1701"), ""), json!(false));
    assert_eq!(n.ok("/isonline", &by_gid("1702"), ""), json!(true));
    let mut push = by_gid("1701").to_vec();
    push.push(("route", "140"));
    n.ok("/push", &push, "old-uid");
    c.sub
        .wait_exact(GATE_CHANNEL, &location_event(1701, 3, &g.gid, "gate", ""));
    assert_eq!(redis.get(&gate_key(1701)), None);
    e.barrier();
    assert!(
        !e.got(140, "old-uid"),
        "a push to the old uid reached the connection"
    );
}

// ---------------------------------------------------------------------------------------------
// Items 19, 20: stateful routing by node binding, with two nodes of the same name.

fn node_binding(kind: GateKind, tag: &str) {
    let c = Cluster::start(
        tag,
        Spec {
            gates: vec![(kind, Proto::Tcp)],
            nodes: vec![1, 1],
            dispatch: "rr",
            registry: current_registry(),
        },
    );
    let redis = &c.env.redis;
    let mut cl = c.connect(0, Proto::Tcp);
    let uid = 1901;
    c.bind(&mut cl, uid);
    until_all_nodes_seen(&c, &mut cl);

    // 20. Stateful before any BindNode: dropped silently.
    let p = c.unique("st-early");
    cl.send(2, 1, &p);
    cl.barrier();
    assert_not_delivered(&c, &p, "stateful before BindNode");

    // 19. Node 0 binds the user: Redis hash + node event; stateful messages all go to node 0
    // although node 1 (same name "node") serves the route too.
    let a = &c.nodes[0];
    a.ok("/bindnode", &[("uid", &s(uid))], "");
    assert_eq!(redis.hget(&node_key(uid), "node"), Some(a.nid.clone()));
    c.sub.wait_exact(
        NODE_CHANNEL,
        &location_event(uid, 2, &a.nid, "node", "node"),
    );
    for i in 0..6 {
        let p = c.unique("st");
        cl.send(2, i, &p);
        cl.expect(2, &p);
        let (at, m) = c.wait_message("stateful message", |v| v["payload"] == p);
        assert_eq!(at, 0, "stateful message {i} went to node {at}");
        assert_eq!(m["uid"], uid);
    }

    // UnbindNode (type 4): stateful messages are dropped again.
    a.ok("/unbindnode", &[("uid", &s(uid))], "");
    assert_eq!(redis.hget(&node_key(uid), "node"), None);
    c.sub.wait_exact(
        NODE_CHANNEL,
        &location_event(uid, 4, &a.nid, "node", "node"),
    );
    let start = Instant::now();
    let mut dropped = 0;
    while dropped < 4 {
        assert!(
            start.elapsed() < WAIT,
            "stateful messages still delivered after UnbindNode"
        );
        let p = c.unique("st-late");
        cl.send(2, 1, &p);
        cl.barrier();
        std::thread::sleep(GRACE);
        if c.node_events(|v| v["payload"] == p).is_empty() {
            dropped += 1;
        } else {
            assert_eq!(dropped, 0, "delivered again after being dropped");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Items 22, 23, 29: push and multicast from the node, stale locations.

fn push(kind: GateKind, tag: &str, proto: Proto) {
    let c = Cluster::start(tag, Spec::one(kind, proto));
    let (g, n, redis) = (c.gate(), c.node(), &c.env.redis);
    let mut cls: Vec<Client> = (0..4).map(|_| c.connect(0, proto)).collect();
    let uids = [2201i64, 2202, 2203];
    for (cl, uid) in cls.iter_mut().zip(uids) {
        c.bind(cl, uid);
    }
    let cids: Vec<i64> = cls.iter().map(|c| c.cid).collect();
    let cid = |i: usize| cids[i];
    // Only clients `who` got (route, payload); the others get nothing (after a barrier).
    let only = |cls: &mut Vec<Client>, who: &[usize], route: i64, payload: &str| {
        for &i in who {
            cls[i].expect(route, payload);
        }
        for (i, cl) in cls.iter_mut().enumerate() {
            if !who.contains(&i) {
                cl.barrier();
                assert!(!cl.got(route, payload), "client {i} got {payload}");
            }
        }
    };

    // 22. Push by uid without gid (located through Redis), and by conn with gid.
    n.ok(
        "/push",
        &[
            ("kind", "user"),
            ("target", "2201"),
            ("route", "100"),
            ("seq", "3"),
        ],
        "p-user",
    );
    let m = cls[0].expect(100, "p-user");
    assert_eq!(m["seq"], 3);
    only(&mut cls, &[0], 100, "p-user");
    n.ok(
        "/push",
        &[
            ("kind", "conn"),
            ("gid", &g.gid),
            ("target", &s(cid(1))),
            ("route", "101"),
        ],
        "p-conn",
    );
    only(&mut cls, &[1], 101, "p-conn");

    // 23. Multicast by conn with gid (3 of 4 clients), then by uid without gid.
    let targets = format!("{},{},{}", cid(0), cid(1), cid(3));
    n.ok(
        "/multicast",
        &[
            ("kind", "conn"),
            ("gid", &g.gid),
            ("targets", &targets),
            ("route", "102"),
        ],
        "m-conn",
    );
    only(&mut cls, &[0, 1, 3], 102, "m-conn");
    n.ok(
        "/multicast",
        &[
            ("kind", "user"),
            ("targets", "2201,2202,2203"),
            ("route", "103"),
        ],
        "m-user",
    );
    only(&mut cls, &[0, 1, 2], 103, "m-user");

    // 29. A uid that Redis maps to this gate but that is not connected: the push removes the
    // stale location (type-3 event); nobody receives it.
    let _: () = redis.query(&["SET", &gate_key(2299), &g.gid]);
    n.ok(
        "/push",
        &[("kind", "user"), ("target", "2299"), ("route", "104")],
        "p-stale",
    );
    c.sub
        .wait_exact(GATE_CHANNEL, &location_event(2299, 3, &g.gid, "gate", ""));
    assert_eq!(redis.get(&gate_key(2299)), None);
    only(&mut cls, &[], 104, "p-stale");
    // Bound users were not touched.
    for uid in uids {
        assert_eq!(redis.get(&gate_key(uid)), Some(g.gid.clone()));
    }
}

// ---------------------------------------------------------------------------------------------
// Item 24: broadcast over two gates (gatehouse and the reference) at once.

/// `kind` is the first gate, on TCP (the reference then runs its TCP server); the other kind
/// runs beside it on WS.
fn broadcast_two_gates(kind: GateKind, tag: &str) {
    let c = Cluster::start(
        tag,
        Spec {
            gates: vec![(kind, Proto::Tcp), (kind.other(), Proto::Ws)],
            nodes: vec![1],
            dispatch: "rr",
            registry: current_registry(),
        },
    );
    let n = c.node();
    // Per gate a bound and an unbound client (gatehouse: one over TCP, one over WS).
    let first = c.gates[0].proto_for(Proto::Ws);
    let second = c.gates[1].proto_for(Proto::Tcp);
    let mut cls = [
        c.connect(0, Proto::Tcp),
        c.connect(0, first),
        c.connect(1, Proto::Ws),
        c.connect(1, second),
    ];
    c.bind(&mut cls[0], 2401);
    c.bind(&mut cls[2], 2402);

    n.ok(
        "/broadcast",
        &[("kind", "conn"), ("route", "110")],
        "b-conn",
    );
    for (i, cl) in cls.iter().enumerate() {
        let m = cl.expect(110, "b-conn");
        assert_eq!(m["seq"], 0, "client {i}");
    }
    n.ok(
        "/broadcast",
        &[("kind", "user"), ("route", "111")],
        "b-user",
    );
    cls[0].expect(111, "b-user");
    cls[2].expect(111, "b-user");
    for i in [1, 3] {
        cls[i].barrier();
        assert!(
            !cls[i].got(111, "b-user"),
            "unbound client {i} got a user broadcast"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Item 25: channel subscriptions belong to connections.

fn pubsub(kind: GateKind, tag: &str) {
    let c = Cluster::start(tag, Spec::one(kind, Proto::Ws));
    let (g, n) = (c.gate(), c.node());
    let proto = g.proto_for(Proto::Ws);
    let a = c.connect(0, proto);
    let mut b = c.connect(0, proto);
    let mut d = c.connect(0, proto);
    n.ok(
        "/subscribe",
        &[
            ("kind", "conn"),
            ("gid", &g.gid),
            ("targets", &format!("{},{}", a.cid, b.cid)),
            ("channel", "ch25"),
        ],
        "",
    );
    n.ok("/publish", &[("channel", "ch25"), ("route", "120")], "pub1");
    a.expect(120, "pub1");
    b.expect(120, "pub1");
    d.barrier();
    assert!(!d.got(120, "pub1"), "not subscribed");

    // The subscriber reconnects: the new connection is not subscribed.
    a.close();
    let mut a2 = c.connect(0, proto);
    n.ok("/publish", &[("channel", "ch25"), ("route", "121")], "pub2");
    b.expect(121, "pub2");
    for cl in [&mut a2, &mut d] {
        cl.barrier();
        assert!(!cl.got(121, "pub2"));
    }

    // Unsubscribe: nobody left.
    n.ok(
        "/unsubscribe",
        &[
            ("kind", "conn"),
            ("gid", &g.gid),
            ("targets", &s(b.cid)),
            ("channel", "ch25"),
        ],
        "",
    );
    n.ok("/publish", &[("channel", "ch25"), ("route", "122")], "pub3");
    // A later push to b is written after the publish would have been.
    n.ok(
        "/push",
        &[
            ("kind", "conn"),
            ("gid", &g.gid),
            ("target", &s(b.cid)),
            ("route", "123"),
        ],
        "after",
    );
    b.expect(123, "after");
    b.barrier();
    assert!(!b.got(122, "pub3"), "unsubscribed");
}

// ---------------------------------------------------------------------------------------------
// Items 26, 27: GetIP, IsOnline, Stat.

fn query(kind: GateKind, tag: &str) {
    let c = Cluster::start(tag, Spec::one(kind, Proto::Tcp));
    let (g, n) = (c.gate(), c.node());
    let mut a = c.connect(0, Proto::Tcp);
    let uid = 2601;
    c.bind(&mut a, uid);
    let acid = s(a.cid);
    let conn = [
        ("kind", "conn"),
        ("gid", g.gid.as_str()),
        ("target", acid.as_str()),
    ];
    let user = [("kind", "user"), ("target", "2601")];

    // 26. GetIP and IsOnline while connected.
    assert_eq!(n.ok("/getip", &conn, ""), json!("127.0.0.1"));
    assert_eq!(n.ok("/getip", &user, ""), json!("127.0.0.1"));
    assert_eq!(n.ok("/isonline", &conn, ""), json!(true));
    assert_eq!(n.ok("/isonline", &user, ""), json!(true));

    // 27. Stat with 3 clients: 0 on a v2.4.1 node (decoder quirk, cluster-protocol.md §2.6.4).
    let _b = c.connect(0, Proto::Tcp);
    let _d = c.connect(0, Proto::Tcp);
    assert_eq!(n.ok("/stat", &[("kind", "conn")], ""), json!(0));
    assert_eq!(n.ok("/stat", &[("kind", "user")], ""), json!(0));
    // The bytes behind the quirk: code 0 and the real total (24 bytes), as due's gate sends them;
    // getip: code 0 and the IPv4 (20 bytes).
    let mut l = Link::connect(g.link);
    assert_eq!(l.handshake(2, "interop-raw"), frame(1, 1, &[0, 0]));
    let stat = |l: &mut Link, seq: u64, kind: u8, total: u64| {
        let mut want = vec![0, 0];
        want.extend_from_slice(&total.to_be_bytes());
        let mut last = None;
        let start = Instant::now();
        while start.elapsed() < WAIT {
            l.send(&frame(5, seq, &[kind]));
            last = l.read_data(WAIT);
            if last.as_deref() == Some(&frame(5, seq, &want)[..]) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("stat kind {kind}: want total {total}, last answer {last:?}");
    };
    stat(&mut l, 21, 1, 3);
    stat(&mut l, 22, 2, 1);
    let mut getip = vec![1];
    getip.extend_from_slice(&a.cid.to_be_bytes());
    l.send(&frame(4, 23, &getip));
    assert_eq!(l.read_data(WAIT), Some(frame(4, 23, &[0, 0, 127, 0, 0, 1])));

    // 26. After the disconnect: offline.
    let acid = a.cid;
    a.close();
    n.proc.wait_event("disconnect", WAIT, |v| {
        v["event"] == "disconnect" && v["cid"] == acid
    });
    assert_eq!(n.ok("/isonline", &conn, ""), json!(false));
    let by_gid = [
        ("kind", "user"),
        ("gid", g.gid.as_str()),
        ("target", "2601"),
    ];
    assert_eq!(n.ok("/isonline", &by_gid, ""), json!(false));
    // Without gid the node must locate the user first; the gate removed the location.
    match n.call("/isonline", &user, "") {
        Ok(v) => assert_eq!(v, json!(false)),
        Err(e) => assert!(
            e.contains("not found user"),
            "isonline after disconnect: {e}"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Item 28: Disconnect from the node.

fn disconnect(kind: GateKind, tag: &str) {
    let c = Cluster::start(tag, Spec::one(kind, Proto::Ws));
    let (g, n, redis) = (c.gate(), c.node(), &c.env.redis);
    let proto = g.proto_for(Proto::Ws);
    let mut a = c.connect(0, proto);
    let uid = 2801;
    c.bind(&mut a, uid);

    // Graceful: the push queued before the disconnect is delivered first.
    let acid = s(a.cid);
    let conn_a = [
        ("kind", "conn"),
        ("gid", g.gid.as_str()),
        ("target", acid.as_str()),
    ];
    let mut push = conn_a.to_vec();
    push.push(("route", "130"));
    n.ok("/push", &push, "last-words");
    n.ok("/disconnect", &conn_a, "");
    a.wait_disconnected(WAIT);
    let events = a.proc.events();
    let got = events
        .iter()
        .position(|v| v["event"] == "message" && v["payload"] == "last-words")
        .expect("the push before a graceful disconnect is delivered");
    let closed = events
        .iter()
        .position(|v| v["event"] == "disconnected")
        .unwrap();
    assert!(got < closed);
    let d = n.proc.wait_event("disconnect event", WAIT, |v| {
        v["event"] == "disconnect" && v["cid"] == a.cid
    });
    assert_eq!(
        d,
        json!({"event": "disconnect", "gid": g.gid, "cid": a.cid, "uid": uid})
    );
    // The gate runs UnbindGate before it triggers the disconnect event (cluster-protocol.md §4).
    assert_eq!(redis.get(&gate_key(uid)), None);
    c.sub
        .wait_exact(GATE_CHANNEL, &location_event(uid, 3, &g.gid, "gate", ""));

    // Forced: closes at once.
    let b = c.connect(0, proto);
    let bcid = s(b.cid);
    let t = Instant::now();
    n.ok(
        "/disconnect",
        &[
            ("kind", "conn"),
            ("gid", &g.gid),
            ("target", &bcid),
            ("force", "true"),
        ],
        "",
    );
    b.wait_disconnected(Duration::from_secs(3));
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "forced disconnect took {took:?}"
    );
    let d = n.proc.wait_event("forced disconnect event", WAIT, |v| {
        v["event"] == "disconnect" && v["cid"] == b.cid
    });
    assert_eq!(d["uid"], 0);

    // By uid, without gid (located through Redis).
    let mut e = c.connect(0, proto);
    c.bind(&mut e, 2802);
    n.ok("/disconnect", &[("kind", "user"), ("target", "2802")], "");
    e.wait_disconnected(WAIT);
    let d = n.proc.wait_event("disconnect by uid", WAIT, |v| {
        v["event"] == "disconnect" && v["cid"] == e.cid
    });
    assert_eq!(d["uid"], 2802);
    assert_eq!(redis.get(&gate_key(2802)), None);
    c.sub
        .wait_exact(GATE_CHANNEL, &location_event(2802, 3, &g.gid, "gate", ""));
}

// ---------------------------------------------------------------------------------------------
// Item 30: a user moves from gate A (the gate under test) to gate B (the other kind).

fn rebind_across_gates(kind: GateKind, tag: &str) {
    let c = Cluster::start(
        tag,
        Spec {
            gates: vec![(kind, Proto::Ws), (kind.other(), Proto::Ws)],
            nodes: vec![1],
            dispatch: "rr",
            registry: current_registry(),
        },
    );
    let (ga, gb, redis) = (&c.gates[0], &c.gates[1], &c.env.redis);
    let uid = 3001;
    let mut a = c.connect(0, Proto::Ws);
    c.bind(&mut a, uid);
    assert_eq!(redis.get(&gate_key(uid)), Some(ga.gid.clone()));
    let mut b = c.connect(1, Proto::Ws);
    c.bind(&mut b, uid);
    assert_eq!(redis.get(&gate_key(uid)), Some(gb.gid.clone()));
    c.sub
        .wait_exact(GATE_CHANNEL, &location_event(uid, 1, &gb.gid, "gate", ""));

    // A still has the user on its connection; its disconnect must not touch B's location.
    let acid = a.cid;
    a.close();
    let d = c.node().proc.wait_event("disconnect from A", WAIT, |v| {
        v["event"] == "disconnect" && v["gid"] == ga.gid && v["cid"] == acid
    });
    assert_eq!(d["uid"], uid, "A still had the uid bound at close time");
    std::thread::sleep(GRACE);
    assert_eq!(redis.get(&gate_key(uid)), Some(gb.gid.clone()));
    let unbinds: Vec<Value> = c
        .sub
        .for_uid(GATE_CHANNEL, uid)
        .into_iter()
        .filter(|v| v["type"] == 3)
        .collect();
    assert!(unbinds.is_empty(), "A published {unbinds:?}");
    // B still serves the user.
    let p = c.unique("on-b");
    b.send(1, 1, &p);
    b.expect(1, &p);
    assert_eq!(
        c.wait_message("message on B", |v| v["payload"] == p).1["uid"],
        uid
    );
}

// ---------------------------------------------------------------------------------------------
// Item 36: a due v2.5.8 node. cluster-protocol.md §9: acknowledged sends (seq ≠ 0) answered with
// the delivered count, the 0x40 "disconnect after push" bit, disconnect as a call, publish
// answered in v2.5.5's layout (`publishResponseV25`; a v2.4.1 node never asks for a publish
// answer, so it is unaffected), and a v2.4.1 node in the same cluster still served.

fn due_v258_node(kind: GateKind, tag: &str) {
    let env = Env::start(tag);
    let gate = Gate::start_with(
        kind,
        Proto::Tcp,
        &format!("{}-{tag}-0", kind.tag()),
        "rr",
        &env,
        &[(
            "[interop.gate]",
            "[gatehouse]\npublishResponseV25 = true\n\n[interop.gate]",
        )],
    );
    let old = Node::start(&env, 1, 0);
    let new = Node::start_v258(&env, 1, 1);
    let c = Cluster::assemble(tag, env, vec![gate], vec![old, new]);
    let gid = c.gate().gid.clone();
    let (old, new) = (&c.nodes[0], &c.nodes[1]);
    assert!(
        new.proc
            .events()
            .iter()
            .any(|v| v["event"] == "ready" && v["version"] == "v2.5.8"),
        "the second node is the v2.5.8 one"
    );
    // The readiness probe's client has left the gate before anything is counted.
    c.wait_node_event("the probe client's disconnect", |v| {
        v["event"] == "disconnect" && v["gid"] == gid
    });
    let a = c.connect(0, Proto::Tcp);
    let mut b = c.connect(0, Proto::Tcp);
    let mut d = c.connect(0, Proto::Tcp);

    // Acknowledged multicast: the count of targets present (an unknown cid is skipped).
    let n = new.ok(
        "/multicast",
        &[
            ("gid", &gid),
            ("targets", &format!("{},{},999999", a.cid, b.cid)),
            ("route", "140"),
            ("ack", "true"),
        ],
        "m1",
    );
    assert_eq!(
        n, 2,
        "acknowledged multicast counts the two connections present"
    );
    a.expect(140, "m1");
    b.expect(140, "m1");
    d.barrier();
    assert!(!d.got(140, "m1"), "not a target");

    // Acknowledged broadcast: every connection of the gate.
    let n = new.ok("/broadcast", &[("route", "141"), ("ack", "true")], "b1");
    assert_eq!(n, 3, "acknowledged broadcast counts the three connections");
    for cl in [&a, &b, &d] {
        cl.expect(141, "b1");
    }

    // Acknowledged push by connection: done; to a cid that is not there: the gate's code 1
    // surfaces as the node's error.
    new.ok(
        "/push",
        &[
            ("gid", &gid),
            ("target", &s(d.cid)),
            ("route", "142"),
            ("ack", "true"),
        ],
        "p1",
    )
    .as_null()
    .expect("push answers nothing but success");
    d.expect(142, "p1");
    let missing = new.call(
        "/push",
        &[
            ("gid", &gid),
            ("target", "999999"),
            ("route", "142"),
            ("ack", "true"),
        ],
        "p2",
    );
    assert!(
        missing.is_err(),
        "an acknowledged push to a missing cid fails: {missing:?}"
    );

    // Bound user: the v2.5.8 node binds d, then pushes by uid with an acknowledgement.
    let uid = 3600 + (std::process::id() as i64 % 1000);
    new.ok(
        "/bindgate",
        &[("gid", &gid), ("cid", &s(d.cid)), ("uid", &s(uid))],
        "",
    );
    c.wait_node_event(&format!("reconnect of uid {uid}"), |v| {
        v["event"] == "reconnect" && v["uid"] == uid && v["cid"] == d.cid
    });
    assert_eq!(
        c.env.redis.get(&gate_key(uid)).as_deref(),
        Some(gid.as_str())
    );
    new.ok(
        "/push",
        &[
            ("kind", "user"),
            ("target", &s(uid)),
            ("route", "143"),
            ("ack", "true"),
        ],
        "u1",
    );
    d.expect(143, "u1");

    // Acknowledged publish: v2.5.5's answer, with and without subscribers (the latter is the
    // 16-byte form the Go v2.5.8 gate gets wrong; the node decodes ours as 0, no error).
    new.ok(
        "/subscribe",
        &[("gid", &gid), ("targets", &s(b.cid)), ("channel", "ch36")],
        "",
    );
    let n = new.ok(
        "/publish",
        &[("channel", "ch36"), ("route", "144"), ("ack", "true")],
        "pub1",
    );
    assert_eq!(n, 1, "acknowledged publish counts the one subscriber");
    b.expect(144, "pub1");
    let n = new.ok(
        "/publish",
        &[("channel", "nobody36"), ("route", "145"), ("ack", "true")],
        "pub2",
    );
    assert_eq!(
        n, 0,
        "acknowledged publish to an empty channel: 0, no error"
    );

    // Disconnect after push (bit 0x40): a gets the message, then the gate closes it gracefully.
    let n = new.ok(
        "/multicast",
        &[
            ("gid", &gid),
            ("targets", &s(a.cid)),
            ("route", "146"),
            ("ack", "true"),
            ("disconnect", "true"),
        ],
        "last",
    );
    assert_eq!(n, 1);
    a.wait_disconnected(WAIT);
    assert!(a.got(146, "last"), "the message arrives before the close");
    c.wait_node_event("a's disconnect", |v| {
        v["event"] == "disconnect" && v["cid"] == a.cid && v["gid"] == gid
    });
    b.barrier();
    d.barrier();

    // Disconnect as a call (seq ≠ 0): answered, and b is closed.
    new.ok("/disconnect", &[("gid", &gid), ("target", &s(b.cid))], "");
    b.wait_disconnected(WAIT);

    // The v2.4.1 node in the same cluster: its fire-and-forget push, multicast, broadcast and
    // publish still reach d, and client messages reach both nodes (round robin).
    old.ok(
        "/push",
        &[("gid", &gid), ("target", &s(d.cid)), ("route", "150")],
        "o1",
    );
    old.ok(
        "/multicast",
        &[("gid", &gid), ("targets", &s(d.cid)), ("route", "151")],
        "o2",
    );
    old.ok("/broadcast", &[("route", "152")], "o3");
    old.ok(
        "/subscribe",
        &[("gid", &gid), ("targets", &s(d.cid)), ("channel", "old36")],
        "",
    );
    old.ok("/publish", &[("channel", "old36"), ("route", "153")], "o4");
    for (route, p) in [(150, "o1"), (151, "o2"), (152, "o3"), (153, "o4")] {
        d.expect(route, p);
    }
    // Client messages reach both nodes (the gate routes round robin once it sees both).
    until_all_nodes_seen(&c, &mut d);

    // The disconnect bit on publish and on broadcast: each connection that got the message is
    // closed behind it; the acknowledged counts are those connections.
    let e = c.connect(0, Proto::Tcp);
    new.ok(
        "/subscribe",
        &[("gid", &gid), ("targets", &s(e.cid)), ("channel", "bye36")],
        "",
    );
    let n = new.ok(
        "/publish",
        &[
            ("channel", "bye36"),
            ("route", "160"),
            ("ack", "true"),
            ("disconnect", "true"),
        ],
        "bye",
    );
    assert_eq!(n, 1);
    e.wait_disconnected(WAIT);
    assert!(
        e.got(160, "bye"),
        "the published message arrives before the close"
    );
    d.barrier();
    assert!(!d.got(160, "bye") && !d.disconnected(), "d is not a member");

    let f = c.connect(0, Proto::Tcp);
    c.wait_node_event("e's disconnect", |v| {
        v["event"] == "disconnect" && v["cid"] == e.cid && v["gid"] == gid
    });
    let n = new.ok(
        "/broadcast",
        &[("route", "161"), ("ack", "true"), ("disconnect", "true")],
        "all-bye",
    );
    assert_eq!(n, 2, "the two connections left");
    for cl in [&d, &f] {
        cl.wait_disconnected(WAIT);
        assert!(
            cl.got(161, "all-bye"),
            "the broadcast arrives before the close"
        );
    }
}
