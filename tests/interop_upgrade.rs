//! `gatehouse --upgrade` in a real cluster (issue 9): REAL Redis, a REAL Consul agent, the real
//! due v2.4.1 Go node and Go clients (TCP and WebSocket). The gate is replaced mid-cluster; the
//! Go clients stay connected, the node hears no Disconnect, Consul still lists `gate-<gid>`
//! passing, the Redis bindings are unchanged, and the node's pushes by uid reach the clients
//! after the upgrade. gatehouse only: due's own gate has no upgrade.
//!
//! Skipped (with a message) when the Go peers, redis-server or consul are missing, unless
//! `GATEHOUSE_REQUIRE_SERVICES=1` (then it fails).

mod interop_support;

use interop_support::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn upgrade_keeps_clients_bindings_and_registration() {
    run(GateKind::Gatehouse, "upgrade", upgrade);
}

fn upgrade(kind: GateKind, tag: &str) {
    let mut c = Cluster::start(tag, Spec::one(kind, Proto::Tcp));
    let gid = c.gate().gid.clone();
    let sid = c.gate().service_id();
    let mut cls: Vec<Client> = vec![
        c.connect(0, Proto::Tcp),
        c.connect(0, Proto::Tcp),
        c.connect(0, Proto::Ws),
        c.connect(0, Proto::Ws),
    ];
    let uids = [9101i64, 9102, 9103, 9104];
    for (cl, uid) in cls.iter_mut().zip(uids) {
        c.bind(cl, uid);
    }
    let bindings = |c: &Cluster| -> Vec<Option<String>> {
        uids.iter()
            .map(|u| c.env.redis.get(&gate_key(*u)))
            .collect()
    };
    let before = bindings(&c);
    assert!(
        before.iter().all(|b| b.as_deref() == Some(gid.as_str())),
        "{before:?}"
    );
    let disconnects = |c: &Cluster| c.node_events(|v| v["event"] == "disconnect").len();
    let gone_before = disconnects(&c);

    // The upgrade, with the same configuration, from the same directory.
    let etc = c.env.dir.0.join(format!("etc-gate-{gid}"));
    let mut cmd = Command::new(GATEHOUSE_BIN);
    cmd.arg("--upgrade")
        .arg("--etc")
        .arg(&etc)
        .current_dir(&c.env.dir.0);
    let new = Proc::spawn(&format!("gatehouse {gid} (upgrade)"), cmd, false);
    new.wait_line("gate started", Duration::from_secs(20));
    let mut old = std::mem::replace(&mut c.gates[0].proc, new);
    assert!(
        old.wait_exit(Duration::from_secs(15)),
        "the old gate did not exit"
    );
    let status = old.exit_status().expect("exit status");
    assert!(status.success(), "the old gate exited with {status}");
    old.wait_line("upgrade: handed over to pid", WAIT);

    // Every Go client is still connected and served by the new process: an echo through the
    // node, then a push by uid from the due node (located through Redis).
    for (i, cl) in cls.iter_mut().enumerate() {
        assert!(!cl.disconnected(), "client {i} was disconnected");
        let p = c.unique("after");
        cl.send(1, 1, &p);
        cl.expect(1, &p);
    }
    for (cl, uid) in cls.iter_mut().zip(uids) {
        let p = c.unique("push");
        c.node().ok(
            "/push",
            &[
                ("kind", "user"),
                ("target", &uid.to_string()),
                ("route", "100"),
            ],
            &p,
        );
        cl.expect(100, &p);
    }
    assert_eq!(bindings(&c), before, "the Redis bindings are unchanged");
    wait_until("gate still passing in consul", WAIT, || {
        c.env.consul().is_passing("gate", &sid)
    });
    // Over a TTL period later it still passes: the new process keeps the record alive.
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        c.env.consul().is_passing("gate", &sid),
        "{sid} no longer passing 12 s after the upgrade"
    );
    assert_eq!(
        disconnects(&c),
        gone_before,
        "the node saw a Disconnect during the upgrade"
    );
    for (i, cl) in cls.iter().enumerate() {
        assert!(!cl.disconnected(), "client {i} was disconnected");
    }
}
