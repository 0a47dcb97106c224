//! The Grafana dashboard (`etc/grafana/gatehouse.json`) and the example alerting rules
//! (`etc/prometheus/gatehouse-alerts.yml`) query only what a real gate exports: every metric name
//! in every expression is a family of the gate's `/metrics`, every label they filter or group by
//! is one of that family's labels, every literal label value they match is one the gate writes.
//! Renaming a metric, a label or a label value without updating them fails here. With promtool
//! installed, every expression must also parse; docs/ops/metrics.md must quote the rules file
//! as it is.

mod common;

use common::*;
use gatehouse::dispatch::cluster::ClusterUpstream;
use gatehouse::dispatch::routes::Strategy;
use gatehouse::dispatch::UpstreamFactory;
use gatehouse::registry::{endpoint_url, InstanceState, RouteInfo, ServiceInstance};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ECHO: &str = env!("CARGO_BIN_EXE_echo-node");
const DASHBOARD: &str = "etc/grafana/gatehouse.json";
const ALERTS: &str = "etc/prometheus/gatehouse-alerts.yml";
const DOC: &str = "docs/ops/metrics.md";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Labels Prometheus adds to every scraped series (not in the exposition).
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// One metric family of the exposition: its type and every label name and value its samples
/// carry (`le` of histogram buckets included).
#[derive(Debug, Default)]
struct Family {
    kind: String,
    labels: BTreeMap<String, BTreeSet<String>>,
}

/// The families of a Prometheus text exposition, by name.
fn families(text: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            out.entry(name.to_string()).or_default().kind = kind.to_string();
        }
    }
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = l.find(['{', ' ']).unwrap_or(l.len());
        let name = &l[..end];
        let family = family_of(&out, name)
            .unwrap_or_else(|| panic!("sample {l:?} belongs to no # TYPE family"));
        if l[end..].starts_with('{') {
            let close = l.rfind('}').expect("closing brace");
            for m in matchers(&l[end + 1..close]) {
                out.get_mut(&family)
                    .unwrap()
                    .labels
                    .entry(m.label)
                    .or_default()
                    .insert(m.value);
            }
        }
    }
    out
}

/// The family a series name belongs to: itself, or a histogram's (summary's) `_bucket`, `_sum`
/// or `_count` series.
fn family_of(families: &BTreeMap<String, Family>, name: &str) -> Option<String> {
    if families.contains_key(name) {
        return Some(name.to_string());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|s| {
        let base = name.strip_suffix(s)?;
        let f = families.get(base)?;
        (f.kind == "histogram" || (f.kind == "summary" && *s != "_bucket"))
            .then(|| base.to_string())
    })
}

/// One label matcher of a selector: `label op "value"`.
#[derive(Debug, PartialEq)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

/// The matchers between a selector's braces (also an exposition line's labels).
fn matchers(inside: &str) -> Vec<Matcher> {
    let b = inside.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        if i >= b.len() {
            return out;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let label = inside[start..i].to_string();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let op_start = i;
        while i < b.len() && matches!(b[i], b'=' | b'!' | b'~') {
            i += 1;
        }
        let op = inside[op_start..i].to_string();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        assert!(
            !label.is_empty() && !op.is_empty() && i < b.len() && (b[i] == b'"' || b[i] == b'\''),
            "cannot read the matchers {inside:?}"
        );
        let quote = b[i];
        i += 1;
        let mut value = Vec::new();
        while i < b.len() && b[i] != quote {
            if b[i] == b'\\' && i + 1 < b.len() {
                i += 1;
            }
            value.push(b[i]);
            i += 1;
        }
        i += 1;
        let value = String::from_utf8_lossy(&value).into_owned();
        out.push(Matcher { label, op, value });
    }
}

/// What one PromQL expression refers to.
#[derive(Debug, Default)]
struct Refs {
    /// Metric names (`gatehouse_*`, `process_*`) with the matchers of their selector.
    selectors: Vec<(String, Vec<Matcher>)>,
    /// Labels named in `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`.
    grouping: Vec<String>,
}

/// The index of the first `close` after `open` in `expr` that is not inside a quoted string.
fn closing(expr: &str, open: usize, close: u8) -> usize {
    let b = expr.as_bytes();
    let mut i = open + 1;
    while i < b.len() && b[i] != close {
        if b[i] == b'"' || b[i] == b'\'' {
            let q = b[i];
            i += 1;
            while i < b.len() && b[i] != q {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
        }
        i += 1;
    }
    assert!(i < b.len(), "no closing {:?} in {expr:?}", close as char);
    i
}

/// Scans `expr` for metric selectors and grouping labels. Strings outside selectors are skipped;
/// a metric name is any identifier starting `gatehouse_` or `process_`.
fn refs(expr: &str) -> Refs {
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let b = expr.as_bytes();
    let mut out = Refs::default();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == b'_' || c == b':') {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
            i += 1;
        }
        let word = &expr[start..i];
        if word.starts_with("gatehouse_") || word.starts_with("process_") {
            let j = skip_ws(i);
            let mut ms = Vec::new();
            if j < b.len() && b[j] == b'{' {
                let close = closing(expr, j, b'}');
                ms = matchers(&expr[j + 1..close]);
                i = close + 1;
            }
            out.selectors.push((word.to_string(), ms));
        } else if GROUPING.contains(&word) {
            let j = skip_ws(i);
            if j < b.len() && b[j] == b'(' {
                let close = closing(expr, j, b')');
                out.grouping.extend(
                    expr[j + 1..close]
                        .split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(String::from),
                );
                i = close + 1;
            }
        }
    }
    out
}

/// Checks `expr` (from `whence`) against the gate's families; returns the problems found.
fn check_expr(whence: &str, expr: &str, fams: &BTreeMap<String, Family>) -> Vec<String> {
    let mut bad = Vec::new();
    let r = refs(expr);
    // Labels any family of this expression carries, for the grouping check.
    let mut known: HashSet<&str> = TARGET_LABELS.into_iter().collect();
    for (name, ms) in &r.selectors {
        let Some(family) = family_of(fams, name) else {
            bad.push(format!(
                "{whence}: {name} is not exported by the gate (in {expr:?})"
            ));
            continue;
        };
        let labels = &fams[&family].labels;
        known.extend(labels.keys().map(String::as_str));
        for m in ms {
            if TARGET_LABELS.contains(&m.label.as_str()) {
                continue;
            }
            let Some(values) = labels.get(&m.label) else {
                bad.push(format!(
                    "{whence}: {family} has no label {:?} (in {expr:?})",
                    m.label
                ));
                continue;
            };
            if m.op == "=" && !m.value.contains('$') && !values.contains(&m.value) {
                bad.push(format!(
                    "{whence}: {family} never has {}={:?}; it has {values:?} (in {expr:?})",
                    m.label, m.value
                ));
            }
        }
    }
    for l in &r.grouping {
        if !known.contains(l.as_str()) {
            bad.push(format!(
                "{whence}: no metric of {expr:?} has the label {l:?} it groups by"
            ));
        }
    }
    bad
}

/// The dashboard's panels (rows' nested panels included, for a row saved collapsed).
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels is an array") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// Every PromQL expression of the dashboard: (where, expr). The `instance` variable's query is
/// `label_values(...)`, a Grafana function, and is returned apart.
fn dashboard_exprs(dashboard: &serde_json::Value) -> (Vec<(String, String)>, Vec<String>) {
    let mut exprs = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {}: a target without expr: {t}", p["title"]));
            exprs.push((
                format!("panel {} {} target {}", p["id"], p["title"], t["refId"]),
                expr.to_string(),
            ));
        }
    }
    let mut variables = Vec::new();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .expect("a query variable has a query");
            variables.push(q.to_string());
        }
    }
    (exprs, variables)
}

/// The alerting rules' expressions: (alert name, expr).
fn alert_exprs() -> Vec<(String, String)> {
    let rules: serde_yaml::Value = serde_yaml::from_str(&read(ALERTS)).expect("rules parse");
    let mut out = Vec::new();
    for g in rules["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            let name = r["alert"].as_str().or(r["record"].as_str()).expect("name");
            let expr = r["expr"].as_str().expect("expr");
            out.push((format!("alert {name}"), expr.to_string()));
        }
    }
    out
}

/// A running echo node (killed when dropped) and its link address.
struct EchoNode(Child, String);

impl EchoNode {
    fn start(gate_link: &str, id: &str) -> EchoNode {
        let mut child = Command::new(ECHO)
            .args(["--gate", gate_link, "--id", id])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn echo-node");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("echo-node prints its address").unwrap();
        // Keep reading, so the node never blocks on a full pipe.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        let addr = first
            .split('"')
            .nth(3)
            .expect("{\"listening\":\"addr\"}")
            .to_string();
        EchoNode(child, addr)
    }
}

impl Drop for EchoNode {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The exposition of a gate with a node link up (the per-node families exist only then), after
/// one client packet went to the node and back.
fn live_exposition() -> String {
    let upstream: UpstreamFactory = Arc::new(|shard| {
        Box::new(ClusterUpstream::new(
            "gate-dashboard",
            Strategy::RoundRobin,
            shard,
            2,
            None,
        ))
    });
    let g = TestGate::start_with(
        "[cluster.gate]\nid = \"gate-dashboard\"\naddr = \"127.0.0.1:0\"\n[network.tcp.server]\naddr = \"127.0.0.1:0\"\n[gatehouse]\nmetricsAddr = \"127.0.0.1:0\"\n",
        upstream,
    );
    let addr = g.gate().metrics_addr().expect("metrics served");
    let node = EchoNode::start(&g.gate().link_addr, "echo-dashboard");
    g.gate().set_nodes(vec![ServiceInstance {
        id: "echo-dashboard".into(),
        name: "node".into(),
        kind: "node".into(),
        alias: "echo".into(),
        state: InstanceState::Work,
        routes: vec![RouteInfo {
            id: 1,
            ..Default::default()
        }],
        endpoint: endpoint_url(&node.1),
        weight: 1,
        ..Default::default()
    }]);
    std::thread::sleep(ms(100));
    let mut c = g.connect();
    let sent = c.data(1, 1, b"dashboard");
    assert_eq!(c.frame(), sent, "the node echoes");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(addr);
        if text.contains("\ngatehouse_node_link_connections{") {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no node link in the exposition:\n{text}"
        );
        std::thread::sleep(ms(20));
    }
}

#[test]
fn dashboard_is_grafana_json() {
    let d: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("valid JSON");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "title");
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()), "uid");
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| v["name"].as_str().expect("variable name"))
        .collect();
    assert!(
        vars.contains(&"datasource") && vars.contains(&"instance"),
        "{vars:?}"
    );
    let mut ids = HashSet::new();
    let all = panels(&d);
    assert!(all.len() > 10, "{} panels", all.len());
    for p in all {
        let title = p["title"].as_str().expect("every panel has a title");
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{title}: id"));
        assert!(ids.insert(id), "{title}: panel id {id} is used twice");
        let g = &p["gridPos"];
        for k in ["h", "w", "x", "y"] {
            assert!(g[k].is_u64(), "{title}: gridPos.{k}");
        }
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{title}: wider than the grid"
        );
        if p["type"] == "row" {
            continue;
        }
        assert!(p["type"].is_string(), "{title}: type");
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{title}: the templated data source"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no target");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            assert!(
                expr.contains("instance=~\"$instance\""),
                "{title}: {expr:?} ignores the instance variable"
            );
            // A counter is read through rate() or increase(), over Grafana's rate interval.
            for (name, _) in refs(expr).selectors {
                if ["_total", "_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.ends_with(s))
                {
                    assert!(
                        expr.contains("[$__rate_interval]"),
                        "{title}: {name} outside rate(...[$__rate_interval])"
                    );
                }
            }
        }
    }
}

/// The test that fails when a metric, label or label value is renamed without the dashboard and
/// the alerts following.
#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let text = live_exposition();
    let fams = families(&text);
    // The exposition itself was read right: the kinds and labels this test relies on.
    assert_eq!(fams["gatehouse_write_batch_bytes"].kind, "histogram");
    assert!(fams["gatehouse_write_batch_bytes"].labels["le"].contains("+Inf"));
    assert!(fams["gatehouse_connections_refused_total"].labels["reason"].contains("max_conn"));
    assert!(fams.contains_key("gatehouse_node_link_reconnects_total"));

    let d: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("valid JSON");
    let (exprs, variables) = dashboard_exprs(&d);
    let mut bad = Vec::new();
    let mut used = BTreeSet::new();
    for (whence, expr) in exprs.iter().chain(&alert_exprs()) {
        // Only GatehouseDown reads no gate metric (Prometheus's own `up`).
        if refs(expr).selectors.is_empty() && !expr.starts_with("up{") {
            bad.push(format!(
                "{whence}: no gatehouse_ or process_ metric in {expr:?}"
            ));
        }
        bad.extend(check_expr(whence, expr, &fams));
        used.extend(
            refs(expr)
                .selectors
                .into_iter()
                .filter_map(|(n, _)| family_of(&fams, &n)),
        );
    }
    for q in &variables {
        bad.extend(check_expr("variable query", q, &fams));
    }
    assert!(bad.is_empty(), "{}\n\nexposition:\n{text}", bad.join("\n"));
    assert!(
        used.len() >= 20,
        "the dashboard covers only {used:?}; exported: {:?}",
        fams.keys()
    );
}

/// The checker catches what it is there to catch.
#[test]
fn the_checker_finds_renamed_metrics_labels_and_values() {
    let fams = families(
        "# TYPE gatehouse_a_total counter\ngatehouse_a_total{reason=\"x\"} 1\n\
         # TYPE gatehouse_h histogram\ngatehouse_h_bucket{le=\"1\"} 0\ngatehouse_h_bucket{le=\"+Inf\"} 0\n\
         gatehouse_h_sum 0\ngatehouse_h_count 0\n",
    );
    let ok = |e: &str| check_expr("t", e, &fams);
    assert_eq!(
        ok("sum by (reason) (rate(gatehouse_a_total{instance=~\"$instance\", reason=\"x\"}[$__rate_interval]))"),
        Vec::<String>::new()
    );
    assert_eq!(
        ok("histogram_quantile(0.9, sum by (le, instance) (rate(gatehouse_h_bucket[1m]))) / gatehouse_h_count"),
        Vec::<String>::new()
    );
    assert_eq!(ok("rate(gatehouse_b_total[1m])").len(), 1, "unknown name");
    assert_eq!(
        ok("gatehouse_a_total_bucket").len(),
        1,
        "a counter has no buckets"
    );
    assert_eq!(
        ok("gatehouse_a_total{kind=\"x\"}").len(),
        1,
        "unknown label"
    );
    assert_eq!(
        ok("gatehouse_a_total{reason=\"y\"}").len(),
        1,
        "unknown value"
    );
    assert_eq!(ok("sum by (kind) (gatehouse_a_total)").len(), 1, "grouping");
    assert_eq!(
        ok("gatehouse_a_total{instance=~\"${instance}\", reason=\"x\"}"),
        Vec::<String>::new(),
        "a brace inside a value"
    );
    assert_eq!(
        refs("label_values(gatehouse_shards, instance)").selectors[0].0,
        "gatehouse_shards"
    );
}

fn promtool_check_rules(file: &Path) {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(file)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Grafana's variables replaced by values PromQL accepts.
fn without_variables(expr: &str) -> String {
    let mut s = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    // Any other variable ($instance, ${instance}) is a label value: match everything.
    while let Some(i) = s.find('$') {
        let rest = &s[i + 1..];
        let len = if let Some(r) = rest.strip_prefix('{') {
            r.find('}').expect("closing brace") + 2
        } else {
            rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())
        };
        s.replace_range(i..i + 1 + len, ".*");
    }
    s
}

/// promtool parses every dashboard expression (each one a recording rule of a generated rules
/// file) and the alerting rules.
#[test]
fn promtool_parses_every_expression() {
    if !have_tool("promtool", "scripts/install-prometheus.sh") {
        return;
    }
    let d: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("valid JSON");
    let rules: Vec<serde_json::Value> = dashboard_exprs(&d)
        .0
        .iter()
        .enumerate()
        .map(|(i, (_, e))| {
            serde_json::json!({"record": format!("dashboard:expr_{i}"), "expr": without_variables(e)})
        })
        .collect();
    assert!(!rules.is_empty());
    let dir = TempDir::new("dashboard");
    let file = dir.0.join("dashboard-rules.yml");
    // JSON is YAML.
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, doc.to_string()).unwrap();
    promtool_check_rules(&file);
    promtool_check_rules(&repo_file(ALERTS));
}

#[test]
fn grafana_variables_are_replaced() {
    assert_eq!(
        without_variables("rate(a{instance=~\"$instance\"}[$__rate_interval]) + b{x=~\"${x}\"}"),
        "rate(a{instance=~\".*\"}[1m]) + b{x=~\".*\"}"
    );
}

/// The operations page quotes the rules file as it is.
#[test]
fn the_docs_quote_the_alerting_rules() {
    let doc = read(DOC);
    let rules = read(ALERTS);
    assert!(
        doc.contains(&rules),
        "{DOC} must quote {ALERTS} verbatim (in a yaml block)"
    );
}
