//! `/metrics` and `/readyz` of gatehouse in a real cluster (Redis locator, Consul registry, a due
//! v2.4.1 Go node): ready and registered once in Consul, the locator counted up, a link per node.
//! Skipped (with a message) when the Go peers, redis-server or consul are missing, unless
//! `GATEHOUSE_REQUIRE_SERVICES=1` (then it fails).

mod interop_support;

use interop_support::*;
use std::time::Duration;

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn registered_gate_is_ready_and_counts_its_cluster() {
    if !available() {
        return;
    }
    let env = Env::start("metrics");
    let port = free_port(false);
    let section = format!("[gatehouse]\nmetricsAddr = \"127.0.0.1:{port}\"\n\n[locate.redis]");
    let gate = Gate::start_with(
        GateKind::Gatehouse,
        Proto::Tcp,
        "metrics-gate",
        "rr",
        &env,
        &[("[locate.redis]", section.as_str())],
    );
    let base = format!("http://127.0.0.1:{port}");
    // Gate::start_with returned once the gate is registered in Consul.
    let (status, body) = http_get(&format!("{base}/readyz")).expect("readyz answers");
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (_, text) = http_get(&format!("{base}/metrics")).expect("metrics answer");
    assert_eq!(
        sample(&text, "gatehouse_registry_registered"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "gatehouse_ready"), Some(1.0));

    // A due node registers; a client's Connect event makes the gate dial it (and keeps
    // trying while the node list catches up).
    let _node = Node::start(&env, 1, 0);
    let mut clients = Vec::new();
    wait_until("a node link counted up", Duration::from_secs(20), || {
        // A new connection per look (its Connect goes to the nodes); a few kept open.
        if clients.len() >= 3 {
            clients.remove(0);
        }
        clients.extend(std::net::TcpStream::connect(gate.tcp).ok());
        let Some((_, text)) = http_get(&format!("{base}/metrics")) else {
            return false;
        };
        text.lines()
            .any(|l| l.starts_with("gatehouse_node_link_connections{node=") && !l.ends_with(" 0"))
    });
    let (_, text) = http_get(&format!("{base}/metrics")).unwrap();
    assert_eq!(sample(&text, "gatehouse_locator_up"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "gatehouse_registry_errors_total"), Some(0.0));
    drop(gate);
}
