//! The configuration loader (`gatehouse::config::load_bytes`: one `etc` file's contents, every
//! format, without the filesystem).
//!
//! Input: `format(1) | file contents...`; the same bytes also drive a structure-aware file.
//!
//! Properties:
//! * never panics, whatever the text, in every format;
//! * every error names the file (parse errors) or a full dotted key (value errors), and its
//!   message says so;
//! * an accepted configuration holds only values the gate can use (route/seq widths);
//! * structure-aware: the same settings written as TOML, YAML, JSON and XML load to the same
//!   configuration, or fail on the same key.

use arbitrary::{Arbitrary, Unstructured};
use gatehouse::config::{load_bytes, ConfigError};
use std::collections::BTreeMap;
use std::path::Path;

const FILES: [&str; 5] = ["etc.toml", "etc.yaml", "etc.json", "etc.xml", "etc.yml"];

/// Loads `bytes` as the file `name` and checks the result; the normalised config or the
/// error's key.
fn check(name: &str, bytes: &[u8], mode: Option<&str>) -> Result<String, Option<String>> {
    match load_bytes(Path::new(name), bytes, mode) {
        Ok(mut c) => {
            assert!([1, 2, 4].contains(&c.packet.route_bytes));
            assert!([0, 1, 2, 4].contains(&c.packet.seq_bytes));
            assert!(c.tcp.is_some() || c.ws.is_some());
            // The generated instance id is random: blank it to compare.
            c.gate.id.clear();
            Ok(format!("{c:?}"))
        }
        Err(e) => {
            let text = e.to_string();
            match &e {
                ConfigError::Parse { path, .. } => {
                    assert_eq!(path, Path::new(name));
                    assert!(text.contains(name), "{text}");
                }
                ConfigError::Invalid { key, .. } | ConfigError::UnknownKey { key, .. } => {
                    assert!(!key.is_empty(), "{e:?}");
                    assert!(text.starts_with(key.as_str()), "{text}");
                }
                other => panic!("unexpected error for in-memory text: {other:?}"),
            }
            Err(e.key().map(str::to_string))
        }
    }
}

/// Leaf keys the structured input may set (dotted; none is a prefix of another).
const KEYS: &[&str] = &[
    "mode",
    "timezone",
    "shutdownMaxWaitTime",
    "packet.byteOrder",
    "packet.routeBytes",
    "packet.seqBytes",
    "packet.bufferBytes",
    "packet.heartbeatTime",
    "packet.typo",
    "cluster.gate.name",
    "cluster.gate.addr",
    "cluster.gate.timeout",
    "cluster.gate.expose",
    "network.tcp.server.addr",
    "network.tcp.server.maxConnNum",
    "network.tcp.server.heartbeatInterval",
    "network.tcp.server.heartbeatMechanism",
    "network.ws.server.addr",
    "network.ws.server.path",
    "log.level",
    "gatehouse.shards",
    "gatehouse.maxInboundFrame",
    "gatehouse.proxyProtocol",
];

/// The keys of [`KEYS`] that hold durations.
const DURATION_KEYS: &[&str] = &[
    "shutdownMaxWaitTime",
    "cluster.gate.timeout",
    "network.tcp.server.heartbeatInterval",
];

#[derive(Debug, Clone)]
enum Scalar {
    Int(i64),
    Bool(bool),
    /// Restricted to characters every format writes bare and XML does not trim.
    Str(String),
}

fn scalar(u: &mut Unstructured<'_>) -> arbitrary::Result<Scalar> {
    Ok(match u.int_in_range(0..=3)? {
        0 => Scalar::Int(i64::from(i16::arbitrary(u)?)),
        1 => Scalar::Int(i64::arbitrary(u)?),
        2 => Scalar::Bool(bool::arbitrary(u)?),
        _ => {
            let n = u.int_in_range(0..=10)?;
            let s: arbitrary::Result<String> = (0..n)
                .map(|_| Ok(*u.choose(b"abcdxyzLITE0123456789:.-_smh")? as char))
                .collect();
            Scalar::Str(s?)
        }
    })
}

/// A tree of tables with scalar leaves.
#[derive(Default)]
struct Table(BTreeMap<String, Node>);

enum Node {
    Leaf(Scalar),
    Table(Table),
}

impl Table {
    fn set(&mut self, path: &[&str], v: Scalar) {
        if path.len() == 1 {
            self.0.insert(path[0].to_string(), Node::Leaf(v));
            return;
        }
        let next = self
            .0
            .entry(path[0].to_string())
            .or_insert_with(|| Node::Table(Table::default()));
        if let Node::Table(t) = next {
            t.set(&path[1..], v);
        }
    }

    fn get(&self, dotted: &str) -> Option<&Scalar> {
        let mut t = self;
        let mut parts = dotted.split('.').peekable();
        while let Some(p) = parts.next() {
            match (t.0.get(p)?, parts.peek()) {
                (Node::Leaf(v), None) => return Some(v),
                (Node::Table(next), Some(_)) => t = next,
                _ => return None,
            }
        }
        None
    }

    fn toml(&self, prefix: &str, out: &mut String) {
        for (k, n) in &self.0 {
            if let Node::Leaf(v) = n {
                let v = match v {
                    Scalar::Int(i) => i.to_string(),
                    Scalar::Bool(b) => b.to_string(),
                    Scalar::Str(s) => format!("\"{s}\""),
                };
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        for (k, n) in &self.0 {
            if let Node::Table(t) = n {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push_str(&format!("[{name}]\n"));
                t.toml(&name, out);
            }
        }
    }

    fn json(&self) -> String {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|(k, n)| {
                let v = match n {
                    Node::Leaf(Scalar::Int(i)) => i.to_string(),
                    Node::Leaf(Scalar::Bool(b)) => b.to_string(),
                    Node::Leaf(Scalar::Str(s)) => format!("\"{s}\""),
                    Node::Table(t) => t.json(),
                };
                format!("\"{k}\": {v}")
            })
            .collect();
        format!("{{{}}}", items.join(", "))
    }

    fn yaml(&self, indent: usize, out: &mut String) {
        for (k, n) in &self.0 {
            out.push_str(&" ".repeat(indent));
            match n {
                Node::Leaf(Scalar::Int(i)) => out.push_str(&format!("{k}: {i}\n")),
                Node::Leaf(Scalar::Bool(b)) => out.push_str(&format!("{k}: {b}\n")),
                Node::Leaf(Scalar::Str(s)) => out.push_str(&format!("{k}: \"{s}\"\n")),
                Node::Table(t) => {
                    out.push_str(&format!("{k}:\n"));
                    t.yaml(indent + 2, out);
                }
            }
        }
    }

    fn xml(&self, out: &mut String) {
        for (k, n) in &self.0 {
            match n {
                Node::Leaf(Scalar::Int(i)) => out.push_str(&format!("<{k}>{i}</{k}>")),
                Node::Leaf(Scalar::Bool(b)) => out.push_str(&format!("<{k}>{b}</{k}>")),
                Node::Leaf(Scalar::Str(s)) => out.push_str(&format!("<{k}>{s}</{k}>")),
                Node::Table(t) => {
                    out.push_str(&format!("<{k}>"));
                    t.xml(out);
                    out.push_str(&format!("</{k}>"));
                }
            }
        }
    }
}

fn structured(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let mut root = Table::default();
    for _ in 0..u.int_in_range(0..=6)? {
        let key = *u.choose(KEYS)?;
        let path: Vec<&str> = key.split('.').collect();
        root.set(&path, scalar(u)?);
    }
    let mut toml = String::new();
    root.toml("", &mut toml);
    let mut yaml = String::new();
    root.yaml(0, &mut yaml);
    if root.0.is_empty() {
        yaml = "{}".into();
    }
    let json = root.json();
    let mut xml = String::from("<etc>");
    root.xml(&mut xml);
    xml.push_str("</etc>");
    let want = check("etc.toml", toml.as_bytes(), None);
    if let Err(None) = want {
        panic!("generated TOML does not parse:\n{toml}");
    }
    // XML has no numbers: a duration written as a bare integer (nanoseconds in the typed
    // formats) is a unitless string there, which the loader refuses on purpose ("use a unit").
    let xml_comparable = !DURATION_KEYS
        .iter()
        .any(|k| matches!(root.get(k), Some(Scalar::Int(_))));
    let mut others = vec![("etc.yaml", &yaml), ("etc.json", &json)];
    if xml_comparable {
        others.push(("etc.xml", &xml));
    }
    for (name, text) in others {
        let got = check(name, text.as_bytes(), None);
        // Only the outcome and the key are compared: messages may name the format's types.
        let same = match (&want, &got) {
            (Ok(a), Ok(b)) => a == b,
            (Err(a), Err(b)) => a == b,
            _ => false,
        };
        assert!(
            same,
            "TOML and {name} disagree:\n{toml}\n--\n{text}\n--\n{want:?}\n--\n{got:?}"
        );
    }
    Ok(())
}

/// The target's properties over one input (the libFuzzer entry and `tests/fuzz_seeds.rs`).
pub fn check_input(data: &[u8]) {
    let [sel, text @ ..] = data else {
        return;
    };
    let name = FILES[*sel as usize % FILES.len()];
    let mode = (sel & 0x80 != 0).then_some("release");
    let _ = check(name, text, mode);
    let _ = structured(&mut Unstructured::new(text));
}
