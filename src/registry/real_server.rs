//! Helpers of the registry backends' tests against a real server (Consul agent, etcd member):
//! the server's address from the environment, names unique per run, bounded waits. Tests only.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{InstanceState, ServiceInstance};

/// The server named by environment variable `var` (`GATEHOUSE_CONSUL_ADDR`,
/// `GATEHOUSE_ETCD_ADDR`); `None` (the test skips) when unset or empty.
pub(super) fn server_addr(var: &str) -> Option<String> {
    let addr = std::env::var(var).ok()?;
    (!addr.is_empty()).then_some(addr)
}

/// A name unique per test and run (tests share the server).
pub(super) fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "ghtest-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `cond` every 100 ms; panics after `bound`.
pub(super) fn wait_until(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < bound, "timed out after {bound:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A gate's record in state `work` with its link on 127.0.0.1:`port`, no metadata.
pub(super) fn gate_record(gid: &str, port: u16) -> ServiceInstance {
    ServiceInstance {
        id: gid.into(),
        name: "gate".into(),
        kind: "gate".into(),
        alias: "gate".into(),
        state: InstanceState::Work,
        endpoint: format!("drpc://127.0.0.1:{port}?is_secure=false"),
        ..ServiceInstance::default()
    }
}
