//! The layering check: reads every file under `src/` (not `src/bin/`, `src/main.rs` or
//! `src/lib.rs`), finds which top-level module each one uses (`use crate::x`, `crate::x::` in
//! code, `super::` that climbs out of its top-level module), and fails on
//!
//! 1. a cycle between top-level modules (the failure names the cycle and the lines making it);
//! 2. an edge forbidden by [`RULES`];
//! 3. a module that is in no layer of [`LAYERS`].
//!
//! Comments, string literals and `#[cfg(test)]` items are ignored. An inline `mod x { … }` that
//! is not a test module is read as part of its file (its `super::` is counted from the file).
//! Run it with `cargo test --test layering`; docs/layering.md says how to change the rules.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::Path;

/// The intended layers, highest first. A module may use modules of its own layer or a lower one;
/// the rules below say which of those uses are enforced. Every top-level module of `src/` must be
/// in exactly one layer.
const LAYERS: &[(&str, &[&str])] = &[
    // Start-up: builds the shards and the control plane, nothing else.
    ("wiring", &["gate", "upgrade"]),
    // One pinned executor: its inbox, listeners, tasks and shutdown.
    ("shard", &["shard"]),
    // Client sockets and the inbound node API (node commands applied to shard state).
    ("edge", &["listener", "connection", "node_api"]),
    // Per-shard session tables and cross-shard operations.
    ("session", &["session"]),
    // Routing client packets and events to nodes; the outbound node link.
    ("dispatch", &["dispatch"]),
    // The internal (drpc) codec, sans-IO.
    ("drpc", &["drpc"]),
    // Locator (Redis), registry (Consul, etcd), the control thread.
    ("control-plane", &["control", "locator", "registry"]),
    // The operator's configuration as plain data.
    ("config", &["config"]),
    // Leaves: the client protocol, socket helpers, TLS, logging and the command line.
    (
        "bottom",
        &[
            "net",
            "packet",
            "liveness",
            "tls",
            "logging",
            "banner",
            "cli",
            "instance",
            "claim",
            "handoff",
            "proxy_header",
            "metrics",
            "limits",
            "kcpnet",
        ],
    ),
];

/// Who a rule applies to.
#[derive(Clone, Copy)]
enum From {
    /// These modules.
    Only(&'static [&'static str]),
    /// Every module but these.
    AllExcept(&'static [&'static str]),
}

/// What a rule forbids them to use.
#[derive(Clone, Copy)]
enum To {
    /// These modules.
    Modules(&'static [&'static str]),
    /// Any module in a layer above the user's own.
    Above,
}

struct Rule {
    from: From,
    to: To,
    why: &'static str,
}

/// The enforced edges. To add one, add a `Rule`; the `why` is printed with every violation.
const RULES: &[Rule] = &[
    Rule {
        from: From::AllExcept(&["gate", "upgrade"]),
        to: To::Modules(&["gate", "shard"]),
        why: "only the wiring builds and reaches shards; others get a narrow handle",
    },
    Rule {
        from: From::Only(&["drpc", "net", "packet", "liveness", "proxy_header"]),
        to: To::Above,
        why: "codecs and socket helpers are leaves: sans-IO, testable alone",
    },
    Rule {
        from: From::Only(&[
            "dispatch", "drpc", "control", "locator", "registry", "config",
        ]),
        to: To::Above,
        why: "nothing below sessions reaches up: answers travel back by channel or trait",
    },
    Rule {
        from: From::Only(&["dispatch"]),
        to: To::Modules(&["session", "shard", "listener", "connection", "node_api"]),
        why: "dispatch sits below sessions: it routes what it is handed",
    },
    Rule {
        from: From::Only(&["session"]),
        to: To::Modules(&["shard", "listener", "connection", "node_api"]),
        why: "sessions are tables and messages; the edge and the shard use them, not the reverse",
    },
    Rule {
        from: From::Only(&["config"]),
        to: To::Modules(&["registry", "control", "locator"]),
        why: "config is plain data; the types it shares with the control plane live in `instance`",
    },
    Rule {
        from: From::Only(&["connection"]),
        to: To::Modules(&["shard"]),
        why: "a connection sees its shard through the narrow connection::Host trait, not &Shard",
    },
];

// ---------------------------------------------------------------------------------------------
// The checker.

/// One source file: its path relative to the crate root (`src/session/table.rs`) and its text.
struct SourceFile {
    path: String,
    text: String,
}

/// A use of module `to` at `path:line`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Site {
    path: String,
    line: usize,
}

/// Top-level module (`session`) and module depth (1 for `src/x.rs` and `src/x/mod.rs`, 2 for
/// `src/x/y.rs`) of a file under `src/`, or `None` for files the check does not read.
fn module_of(path: &str) -> Option<(String, usize)> {
    let rel = path.strip_prefix("src/")?;
    let parts: Vec<&str> = rel.split('/').collect();
    if !rel.ends_with(".rs") || rel == "lib.rs" || rel == "main.rs" || parts[0] == "bin" {
        return None;
    }
    let top = parts[0].trim_end_matches(".rs").to_string();
    let depth = if parts.last() == Some(&"mod.rs") {
        parts.len() - 1
    } else {
        parts.len()
    };
    Some((top, depth))
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `src` with comments, string and char literals blanked (newlines kept, so lines still count).
fn strip_comments_and_literals(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    // Pushes the newlines of c[from..to] only.
    let blank = |out: &mut String, from: usize, to: usize| {
        for &ch in &c[from..to.min(c.len())] {
            out.push(if ch == '\n' { '\n' } else { ' ' });
        }
    };
    let mut i = 0;
    while i < c.len() {
        let prev_ident = i > 0 && is_ident(c[i - 1]);
        if c[i] == '/' && at(i + 1) == '/' {
            let start = i;
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
            blank(&mut out, start, i);
        } else if c[i] == '/' && at(i + 1) == '*' {
            let (start, mut depth) = (i, 0);
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            blank(&mut out, start, i);
        } else if !prev_ident && (c[i] == 'r' || (c[i] == 'b' && at(i + 1) == 'r')) && {
            let j = if c[i] == 'b' { i + 2 } else { i + 1 };
            let mut k = j;
            while at(k) == '#' {
                k += 1;
            }
            at(k) == '"'
        } {
            // Raw string: r"…", r#"…"#, br"…".
            let start = i;
            let mut k = if c[i] == 'b' { i + 2 } else { i + 1 };
            let mut hashes = 0;
            while at(k) == '#' {
                hashes += 1;
                k += 1;
            }
            k += 1;
            while k < c.len() {
                if c[k] == '"' && (1..=hashes).all(|h| at(k + h) == '#') {
                    k += 1 + hashes;
                    break;
                }
                k += 1;
            }
            blank(&mut out, start, k);
            i = k;
        } else if c[i] == '"' {
            let start = i;
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            blank(&mut out, start, i);
        } else if c[i] == '\'' && at(i + 1) == '\\' {
            // Escaped char literal: '\n', '\'', '\u{1F600}'.
            let start = i;
            i += 3;
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
            blank(&mut out, start, i);
        } else if c[i] == '\'' && at(i + 2) == '\'' {
            blank(&mut out, i, i + 3);
            i += 3;
        } else {
            // Anything else, a lifetime's quote included.
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Index just past the block whose `{` is at `open` (or the end of `c`).
fn skip_block(c: &[char], open: usize) -> usize {
    let mut depth = 0;
    let mut i = open;
    while i < c.len() {
        match c[i] {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    c.len()
}

/// Index just past the attribute whose `#` is at `i`, and its text without whitespace.
fn read_attribute(c: &[char], i: usize) -> (usize, String) {
    let mut j = i + 1;
    while j < c.len() && c[j].is_whitespace() {
        j += 1;
    }
    if c.get(j) != Some(&'[') {
        return (i + 1, String::new());
    }
    let (mut depth, mut text) = (0, String::new());
    while j < c.len() {
        match c[j] {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return (j + 1, text);
        }
        let opening_bracket = depth == 1 && c[j] == '[';
        if !(c[j].is_whitespace() || opening_bracket) {
            text.push(c[j]);
        }
        j += 1;
    }
    (c.len(), text)
}

/// Blanks every item marked `#[cfg(test)]` (a `mod tests { … }`, a test-only fn or use).
/// Expects text already stripped of comments and literals.
fn strip_test_items(stripped: &str) -> String {
    let c: Vec<char> = stripped.chars().collect();
    let mut drop = vec![false; c.len()];
    let mut i = 0;
    while i < c.len() {
        if c[i] != '#' {
            i += 1;
            continue;
        }
        let (after, attr) = read_attribute(&c, i);
        if attr != "cfg(test)" {
            i = after;
            continue;
        }
        // Skip further attributes, then the item: through its `;` or its `{ … }`.
        let mut j = after;
        loop {
            while j < c.len() && c[j].is_whitespace() {
                j += 1;
            }
            if c.get(j) == Some(&'#') {
                j = read_attribute(&c, j).0;
            } else {
                break;
            }
        }
        while j < c.len() && c[j] != '{' && c[j] != ';' {
            j += 1;
        }
        let end = if c.get(j) == Some(&'{') {
            skip_block(&c, j)
        } else {
            (j + 1).min(c.len())
        };
        for d in &mut drop[i..end] {
            *d = true;
        }
        i = end;
    }
    c.iter()
        .zip(drop)
        .map(|(&ch, d)| if d && ch != '\n' { ' ' } else { ch })
        .collect()
}

/// The identifier starting at `i` (after whitespace), and the index past it.
fn ident_at(c: &[char], mut i: usize) -> (String, usize) {
    while i < c.len() && c[i].is_whitespace() {
        i += 1;
    }
    let start = i;
    while i < c.len() && is_ident(c[i]) {
        i += 1;
    }
    (c[start..i].iter().collect(), i)
}

/// Index past `::` (with optional whitespace) at `i`, if there is one.
fn path_sep_at(c: &[char], mut i: usize) -> Option<usize> {
    while i < c.len() && c[i].is_whitespace() {
        i += 1;
    }
    (c.get(i) == Some(&':') && c.get(i + 1) == Some(&':')).then_some(i + 2)
}

/// The first segment of each path the text at `i` names: `x` for `x::…`, and `a`, `b` for
/// `{a::…, b}`. Each comes with its index in `c`.
fn first_segments(c: &[char], mut i: usize) -> Vec<(String, usize)> {
    while i < c.len() && c[i].is_whitespace() {
        i += 1;
    }
    if c.get(i) != Some(&'{') {
        let (name, _) = ident_at(c, i);
        return if name.is_empty() {
            vec![]
        } else {
            vec![(name, i)]
        };
    }
    let end = skip_block(c, i);
    let (mut depth, mut expect, mut out) = (0, true, vec![]);
    let mut j = i;
    while j < end {
        match c[j] {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 1 => expect = true,
            ch if depth == 1 && expect && is_ident(ch) => {
                let (name, next) = ident_at(c, j);
                out.push((name, j));
                expect = false;
                j = next;
                continue;
            }
            _ => {}
        }
        j += 1;
    }
    out
}

/// Top-level modules named by `crate::x` paths, and by `super::` paths that climb out of a file
/// at module depth `depth`, with the index of each name.
fn references(code: &str, depth: usize) -> Vec<(String, usize)> {
    let c: Vec<char> = code.chars().collect();
    let mut out = vec![];
    let mut i = 0;
    while i < c.len() {
        if !is_ident(c[i]) {
            i += 1;
            continue;
        }
        let boundary = i == 0 || !(is_ident(c[i - 1]) || c[i - 1] == '$');
        let (word, after) = ident_at(&c, i);
        if !boundary {
            i = after;
            continue;
        }
        if word == "crate" {
            if let Some(next) = path_sep_at(&c, after) {
                out.extend(first_segments(&c, next));
            }
        } else if word == "super" {
            // Count the chain super::super::…; it leaves the top-level module when it climbs as
            // many levels as the file is deep.
            let (mut climbs, mut j) = (1, after);
            while let Some(next) = path_sep_at(&c, j) {
                let (w, past) = ident_at(&c, next);
                if w == "super" {
                    climbs += 1;
                    j = past;
                } else {
                    if climbs >= depth {
                        out.extend(first_segments(&c, next));
                    }
                    break;
                }
            }
            i = j;
            continue;
        }
        i = after;
    }
    out.retain(|(name, _)| name != "self" && name != "super" && name != "crate");
    out
}

/// Line (1-based) of char index `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    1 + text.chars().take(at).filter(|&ch| ch == '\n').count()
}

/// Module graph: from → to → where.
type Graph = BTreeMap<String, BTreeMap<String, Vec<Site>>>;

/// Builds the graph over the files' top-level modules; names that are not modules of the tree
/// (a crate-root item, say) are not edges.
fn graph(files: &[SourceFile]) -> (Graph, BTreeMap<String, String>) {
    let mut modules = BTreeMap::new(); // module → a file of it
    for f in files {
        if let Some((top, _)) = module_of(&f.path) {
            modules.entry(top).or_insert_with(|| f.path.clone());
        }
    }
    let mut g: Graph = modules
        .keys()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for f in files {
        let Some((top, depth)) = module_of(&f.path) else {
            continue;
        };
        let code = strip_test_items(&strip_comments_and_literals(&f.text));
        for (name, at) in references(&code, depth) {
            if name != top && modules.contains_key(&name) {
                let site = Site {
                    path: f.path.clone(),
                    line: line_of(&code, at),
                };
                let sites = g.get_mut(&top).unwrap().entry(name).or_default();
                if !sites.contains(&site) {
                    sites.push(site);
                }
            }
        }
    }
    (g, modules)
}

/// Strongly connected components with more than one module (each is at least one cycle).
fn cyclic_components(g: &Graph) -> Vec<Vec<String>> {
    // Tarjan's algorithm; the graphs are tiny, recursion is fine.
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g[v].keys() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = vec![];
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: vec![],
        on: BTreeSet::new(),
        out: vec![],
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// A shortest cycle through `start` inside `comp`: `[start, …, start]`.
fn cycle_through(g: &Graph, comp: &[String], start: &str) -> Vec<String> {
    let inside: BTreeSet<&str> = comp.iter().map(String::as_str).collect();
    let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in g[v].keys().map(String::as_str) {
            if !inside.contains(w) {
                continue;
            }
            if w == start {
                let mut path = vec![start.to_string()];
                let mut at = v;
                while at != start {
                    path.push(at.to_string());
                    at = prev[at];
                }
                path.push(start.to_string());
                path.reverse();
                return path;
            }
            if !prev.contains_key(w) {
                prev.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    vec![]
}

fn layer_of(layers: &[(&str, &[&str])], module: &str) -> Option<usize> {
    layers.iter().position(|(_, ms)| ms.contains(&module))
}

fn sites_text(sites: &[Site]) -> String {
    let v: Vec<String> = sites
        .iter()
        .map(|s| format!("{}:{}", s.path, s.line))
        .collect();
    v.join(", ")
}

/// Every violation in `files`, one paragraph each; empty when the tree is clean.
fn check(files: &[SourceFile], layers: &[(&str, &[&str])], rules: &[Rule]) -> Vec<String> {
    let mut out = vec![];
    let (g, modules) = graph(files);

    // The tables themselves: a rule naming a module in no layer is a typo.
    let mut named: Vec<&str> = vec![];
    for r in rules {
        match r.from {
            From::Only(ms) | From::AllExcept(ms) => named.extend(ms),
        }
        if let To::Modules(ms) = r.to {
            named.extend(ms);
        }
    }
    for m in named {
        if layer_of(layers, m).is_none() {
            out.push(format!(
                "rule names `{m}`, which is in no layer of LAYERS: add it to a layer or fix the rule"
            ));
        }
    }

    for (m, file) in &modules {
        if layer_of(layers, m).is_none() {
            out.push(format!(
                "unknown module `{m}` ({file}): it is in no layer of LAYERS; add it to a layer"
            ));
        }
    }

    for comp in cyclic_components(&g) {
        let cycle = cycle_through(&g, &comp, &comp[0]);
        let mut s = format!(
            "cycle: {} (modules in this cycle group: {})",
            cycle.join(" → "),
            comp.join(", ")
        );
        // Every edge inside the group: cutting enough of them breaks every cycle.
        let _ = write!(s, "\n  edges inside the group:");
        for from in &comp {
            for (to, sites) in &g[from] {
                if comp.contains(to) {
                    let _ = write!(s, "\n    {from} → {to}: {}", sites_text(sites));
                }
            }
        }
        out.push(s);
    }

    for (from, tos) in &g {
        for (to, sites) in tos {
            let whys: Vec<&str> = rules
                .iter()
                .filter(|r| {
                    let applies = match r.from {
                        From::Only(ms) => ms.contains(&from.as_str()),
                        From::AllExcept(ms) => !ms.contains(&from.as_str()),
                    };
                    let forbidden = match r.to {
                        To::Modules(ms) => ms.contains(&to.as_str()),
                        To::Above => match (layer_of(layers, from), layer_of(layers, to)) {
                            (Some(lf), Some(lt)) => lt < lf,
                            _ => false,
                        },
                    };
                    applies && forbidden
                })
                .map(|r| r.why)
                .collect();
            if !whys.is_empty() {
                out.push(format!(
                    "forbidden: {from} → {to} ({})\n    at {}",
                    whys.join("; "),
                    sites_text(sites)
                ));
            }
        }
    }
    out
}

/// Every `.rs` file under `dir`, as paths relative to `root`, sorted.
fn walk(root: &Path, dir: &Path, out: &mut Vec<SourceFile>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(root, &p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p.strip_prefix(root).unwrap();
            let path = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let text = std::fs::read_to_string(&p).unwrap();
            out.push(SourceFile { path, text });
        }
    }
}

#[test]
fn source_tree_follows_the_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![];
    walk(root, &root.join("src"), &mut files);
    assert!(
        files.iter().any(|f| module_of(&f.path).is_some()),
        "no source files found under {}",
        root.join("src").display()
    );
    let violations = check(&files, LAYERS, RULES);
    assert!(
        violations.is_empty(),
        "{} layering violation(s) (rules: tests/layering.rs, docs/layering.md):\n\n{}\n",
        violations.len(),
        violations.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Self-tests: the checker over small in-memory trees, so a broken checker cannot pass silently.

fn fake(files: &[(&str, &str)]) -> Vec<SourceFile> {
    files
        .iter()
        .map(|(p, t)| SourceFile {
            path: p.to_string(),
            text: t.to_string(),
        })
        .collect()
}

#[test]
fn a_cycle_is_reported_with_its_path() {
    let files = fake(&[
        ("src/registry/mod.rs", "use crate::config::Config;\n"),
        ("src/config/mod.rs", "pub struct Config;\n"),
        (
            "src/config/load.rs",
            "fn f() {\n    let s = crate::locator::bind();\n}\n",
        ),
        ("src/locator/mod.rs", "use crate::{packet, registry::X};\n"),
        ("src/packet.rs", "pub struct P;\n"),
    ]);
    let v = check(&files, LAYERS, RULES);
    let cycles: Vec<&String> = v.iter().filter(|s| s.starts_with("cycle:")).collect();
    assert_eq!(cycles.len(), 1, "{v:#?}");
    assert!(
        cycles[0].starts_with("cycle: config → locator → registry → config"),
        "{}",
        cycles[0]
    );
    assert!(
        cycles[0].contains("config → locator: src/config/load.rs:2"),
        "{}",
        cycles[0]
    );
    assert!(
        cycles[0].contains("locator → registry: src/locator/mod.rs:1"),
        "{}",
        cycles[0]
    );
    // config → locator is also a forbidden edge; locator → packet is neither.
    assert!(
        v.iter()
            .any(|s| s.starts_with("forbidden: config → locator")),
        "{v:#?}"
    );
    assert_eq!(v.len(), 2, "{v:#?}");
}

#[test]
fn forbidden_edges_and_unknown_modules_are_reported() {
    let files = fake(&[
        ("src/session/mod.rs", "use crate::shard::Shard;\n"),
        ("src/shard.rs", "use crate::session::Sessions;\n"),
        ("src/dispatch/mod.rs", "use crate::session::Kind;\n"),
        ("src/packet.rs", "use crate::config::Config;\n"),
        ("src/config/mod.rs", ""),
        ("src/widget/mod.rs", "use crate::packet;\n"),
    ]);
    let v = check(&files, LAYERS, RULES);
    let has = |p: &str| v.iter().any(|s| s.starts_with(p));
    assert!(has("forbidden: session → shard"), "{v:#?}");
    assert!(has("forbidden: dispatch → session"), "{v:#?}");
    assert!(has("forbidden: packet → config"), "{v:#?}");
    assert!(has("unknown module `widget`"), "{v:#?}");
    assert!(v.iter().any(|s| s.contains("add it to a layer")), "{v:#?}");
    assert!(has("cycle: session → shard → session"), "{v:#?}");
    // Two rules forbid session → shard (nobody reaches the shard; session's own list): one
    // paragraph for the edge, naming both.
    let edge: Vec<&String> = v
        .iter()
        .filter(|s| s.starts_with("forbidden: session → shard"))
        .collect();
    assert_eq!(edge.len(), 1, "{v:#?}");
    assert!(edge[0].contains("; "), "{}", edge[0]);
    assert_eq!(v.len(), 5, "{v:#?}");
}

#[test]
fn comments_strings_and_test_modules_are_not_edges() {
    let text = r##"
//! Uses crate::shard in a doc comment.
/// And crate::gate here.
use std::fmt; // crate::shard
/* crate::shard /* nested crate::gate */ */
const S: &str = "crate::shard::Shard";
const R: &str = r#"crate::gate "quoted" "#;
const C: char = '"';
fn f<'a>(x: &'a str) -> &'a str { x }
#[cfg(test)]
mod tests {
    use crate::shard::Shard;
    fn g() { let _ = crate::gate::x(); }
}
#[cfg(test)]
use crate::gate::Y;
pub(crate) fn h() { let _ = "}"; }
use crate::packet::P;
"##;
    let files = fake(&[
        ("src/session/mod.rs", text),
        ("src/shard.rs", ""),
        ("src/gate.rs", ""),
        ("src/packet.rs", ""),
    ]);
    let (g, _) = graph(&files);
    let from_session: Vec<&String> = g["session"].keys().collect();
    assert_eq!(from_session, ["packet"]);
    assert_eq!(g["session"]["packet"][0].line, 18);
    assert!(check(&files, LAYERS, RULES).is_empty());
}

#[test]
fn super_counts_only_when_it_leaves_the_module() {
    let files = fake(&[
        // depth 2: super is session, super::super is the crate root.
        (
            "src/session/table.rs",
            "use super::Conn;\nuse super::super::dispatch::Upstream;\n",
        ),
        // depth 1: super is the crate root.
        ("src/session/mod.rs", "use super::{packet::P, session};\n"),
        ("src/dispatch/mod.rs", ""),
        ("src/packet.rs", ""),
        ("src/link/mod.rs", "pub(super) fn f() {}\n"),
    ]);
    let (g, _) = graph(&files);
    let targets: Vec<&String> = g["session"].keys().collect();
    assert_eq!(targets, ["dispatch", "packet"]);
    assert_eq!(g["session"]["dispatch"][0].line, 2);
    assert!(g["link"].is_empty());
}

#[test]
fn the_tables_name_known_modules_only() {
    let v = check(&[], LAYERS, RULES);
    assert!(v.is_empty(), "{v:#?}");
    let mut seen = BTreeSet::new();
    for (_, ms) in LAYERS {
        for m in *ms {
            assert!(seen.insert(*m), "`{m}` is in two layers");
        }
    }
}
