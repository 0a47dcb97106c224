//! Loading `etc`: finding the files (due's `./etc` < `DUE_ETC` < `--etc`), parsing toml/yaml/json/xml
//! into one generic tree, and building the typed [`Config`] with due's key names, defaults and checks.
//!
//! Deviations from due, all in the direction of "refuse to start rather than run misconfigured":
//! a file that fails to parse, an unparsable value, an out-of-range value or an unknown key in a
//! section the gate owns is a [`ConfigError`] naming the file or the full dotted key; due prints
//! and carries on with defaults (or zero values). A missing path still means "all defaults".

use super::convert::{
    kind, parse_bool, parse_duration, value_to_duration, value_to_int, value_to_size,
    value_to_string, value_to_string_list,
};
use super::{
    Config, ConsulConfig, EtcdConfig, GateConfig, GatehouseConfig, HeartbeatMechanism, KcpConfig,
    LimitsConfig, LocatorConfig, LogConfig, LogFormat, LogLevel, Mode, NacosConfig, RateAction,
    RedisConfig, RegistryConfig, Rotate, ServerConfig, SingleLogin, StaticNode, WsConfig,
};
use crate::instance::{InstanceState, RouteInfo};
use crate::net::HostPort;
use crate::packet::{ByteOrder, PacketConfig};
use crate::proxy_header::{ProxyMode, ProxyPolicy};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the configuration cannot be used. Every variant names the file or the full dotted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The configuration path exists but a file or directory in it could not be read.
    Read { path: PathBuf, reason: String },
    /// A configuration file is not valid for the format its extension names.
    Parse {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    /// The path names a single file whose extension no parser handles.
    UnsupportedFile { path: PathBuf },
    /// A key holds a value the gate cannot use.
    Invalid { key: String, reason: String },
    /// A key the gate does not know, inside a section the gate owns (most likely a typo).
    UnknownKey {
        key: String,
        known: &'static [&'static str],
    },
}

impl ConfigError {
    /// The full dotted key the error is about, when it is about a key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } | ConfigError::UnknownKey { key, .. } => Some(key),
            _ => None,
        }
    }

    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, reason } => {
                write!(f, "cannot read configuration {}: {reason}", path.display())
            }
            ConfigError::Parse {
                path,
                format,
                reason,
            } => write!(
                f,
                "cannot parse configuration file {} as {format}: {reason}",
                path.display()
            ),
            ConfigError::UnsupportedFile { path } => write!(
                f,
                "configuration file {} has an unsupported extension \
                 (use .toml, .yaml, .yml, .json or .xml)",
                path.display()
            ),
            ConfigError::Invalid { key, reason } => write!(f, "{key}: {reason}"),
            ConfigError::UnknownKey { key, known } => {
                write!(f, "{key}: unknown key (known keys: {})", known.join(", "))
            }
        }
    }
}

impl std::error::Error for ConfigError {}

type Result<T> = std::result::Result<T, ConfigError>;

/// The configuration location: `./etc`, overridden by `DUE_ETC`, overridden by `--etc`.
/// An empty value counts as not given (due would try to load `""` and fall back to defaults).
pub fn resolve_etc_path(flag: Option<&str>, env: Option<&str>) -> PathBuf {
    fn given(v: Option<&str>) -> Option<&str> {
        v.filter(|s| !s.is_empty())
    }
    PathBuf::from(given(flag).or(given(env)).unwrap_or("./etc"))
}

/// Loads the configuration at `path` (a directory or one file) and builds the gate's [`Config`].
///
/// * Directory: every regular file below it (recursively, in lexical order; files and
///   directories whose name starts with `.` skipped; symlinked files followed, symlinked
///   directories not) with extension toml/yaml/yml/json/xml (any case) is parsed, and becomes
///   the top-level key named after the file without its extension; a later file replaces an
///   earlier one with the same name. Other files are ignored. Only `etc` matters to the gate,
///   but every file must parse.
/// * File: only that file, which must have one of those extensions (its stem must be `etc` for
///   any key to apply).
/// * Missing path: all defaults. Empty (or whitespace-only) files are ignored.
///
/// `mode_override` is the already merged `DUE_MODE`/`--mode` value, which beats the file's `mode`.
pub fn load(path: &Path, mode_override: Option<&str>) -> Result<Config> {
    let files = match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let mut found = Vec::new();
            walk(path, &mut found)?;
            found
        }
        Ok(_) => {
            if Format::of(path).is_none() {
                return Err(ConfigError::UnsupportedFile {
                    path: path.to_path_buf(),
                });
            }
            vec![path.to_path_buf()]
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(read_error(path, e)),
    };

    let mut tree: BTreeMap<String, Loaded> = BTreeMap::new();
    for file in files {
        let Some(format) = Format::of(&file) else {
            continue;
        };
        let Some(value) = parse_file(&file, format)? else {
            continue;
        };
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        tree.insert(
            name,
            Loaded {
                value,
                xml: format == Format::Xml,
            },
        );
    }

    let etc = tree.get("etc");
    build(
        etc.map(|l| &l.value),
        etc.is_some_and(|l| l.xml),
        mode_override,
    )
}

/// One parsed file: its tree and whether it came from XML (see [`Section::xml`]).
struct Loaded {
    value: Value,
    xml: bool,
}

fn read_error(path: &Path, e: std::io::Error) -> ConfigError {
    ConfigError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Collects the candidate files below `dir` in Go `filepath.WalkDir` order (entries sorted by
/// name, directories entered where they sort). Hidden directories are skipped too (due enters
/// them); they hold things like `.git`, never configuration.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .and_then(|rd| rd.collect::<std::io::Result<Vec<_>>>())
        .map_err(|e| read_error(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let file_type = entry.file_type().map_err(|e| read_error(&path, e))?;
        if file_type.is_dir() {
            walk(&path, out)?;
        } else if file_type.is_file()
            || (file_type.is_symlink() && std::fs::metadata(&path).is_ok_and(|m| m.is_file()))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// The supported file formats, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Toml,
    Yaml,
    Json,
    Xml,
}

impl Format {
    fn of(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            "xml" => Some(Format::Xml),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Toml => "TOML",
            Format::Yaml => "YAML",
            Format::Json => "JSON",
            Format::Xml => "XML",
        }
    }
}

/// Builds the [`Config`] from the contents of one file named `path` (its extension picks the
/// format, its stem must be `etc` for any key to apply), without touching the filesystem:
/// exactly what [`load`] makes of that file. `path` only names the file in errors. For fuzzing
/// and tests; the gate itself calls [`load`].
pub fn load_bytes(path: &Path, bytes: &[u8], mode_override: Option<&str>) -> Result<Config> {
    let Some(format) = Format::of(path) else {
        return Err(ConfigError::UnsupportedFile {
            path: path.to_path_buf(),
        });
    };
    let etc =
        parse_bytes(path, format, bytes)?.filter(|_| path.file_stem().is_some_and(|s| s == "etc"));
    build(etc.as_ref(), format == Format::Xml, mode_override)
}

/// Reads and parses one file; `None` for an empty file.
fn parse_file(path: &Path, format: Format) -> Result<Option<Value>> {
    let bytes = std::fs::read(path).map_err(|e| read_error(path, e))?;
    parse_bytes(path, format, &bytes)
}

/// Parses the contents of the file `path` in `format`; `None` for an empty file.
fn parse_bytes(path: &Path, format: Format, bytes: &[u8]) -> Result<Option<Value>> {
    let parse_error = |reason: String| ConfigError::Parse {
        path: path.to_path_buf(),
        format: format.name(),
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| parse_error("not valid UTF-8".into()))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let value = match format {
        Format::Toml => text
            .parse::<toml::Table>()
            .map(|t| toml_to_json(toml::Value::Table(t)))
            .map_err(|e| e.to_string()),
        Format::Yaml => serde_yaml::from_str::<serde_yaml::Value>(text)
            .map_err(|e| e.to_string())
            .and_then(yaml_to_json),
        Format::Json => serde_json::from_str::<Value>(text).map_err(|e| e.to_string()),
        Format::Xml => xml_to_json(text),
    }
    .map_err(parse_error)?;
    Ok(Some(value))
}

/// TOML → generic tree. Datetimes become their RFC 3339 text; non-finite floats become strings.
fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map_or_else(|| Value::String(f.to_string()), Value::Number),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// YAML → generic tree. Non-string mapping keys (`1:`, `true:`) become their text; tags are
/// dropped; non-finite floats become strings.
fn yaml_to_json(v: serde_yaml::Value) -> std::result::Result<Value, String> {
    use serde_yaml::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map_or_else(|| Value::String(f.to_string()), Value::Number)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .map(yaml_to_json)
                .collect::<std::result::Result<_, _>>()?,
        ),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s,
                    Y::Bool(b) => b.to_string(),
                    Y::Number(n) => n.to_string(),
                    Y::Null => "null".to_string(),
                    _ => return Err("mapping keys must be scalars".to_string()),
                };
                out.insert(key, yaml_to_json(v)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(t.value)?,
    })
}

/// XML → generic tree, with a deliberately small mapping:
///
/// * the root element (any name, e.g. `<etc>` or `<config>`) wraps the file's keys;
/// * an element with child elements is a table; repeated children of one name form an array;
/// * an element without children is a string: its text, trimmed (`<id/>` is `""`); values then
///   go through the usual string conversions (`"5000"` → 5000, `"false"` → false, `"10s"`);
/// * attributes, comments, processing instructions and the declaration are ignored;
///   text mixed with child elements is an error.
///
/// Because a single element cannot be told from a one-element list, list keys read from XML
/// take a non-empty string as a one-element list (see `value_to_string_list`).
fn xml_to_json(text: &str) -> std::result::Result<Value, String> {
    use quick_xml::events::Event;

    struct Element {
        children: Map<String, Value>,
        has_children: bool,
        text: String,
    }
    impl Element {
        fn new() -> Self {
            Element {
                children: Map::new(),
                has_children: false,
                text: String::new(),
            }
        }
        fn finish(self, name: &str) -> std::result::Result<Value, String> {
            if !self.has_children {
                return Ok(Value::String(self.text.trim().to_string()));
            }
            if !self.text.trim().is_empty() {
                return Err(format!("element <{name}> mixes text and child elements"));
            }
            Ok(Value::Object(self.children))
        }
        fn add(&mut self, name: String, value: Value) {
            self.has_children = true;
            match self.children.get_mut(&name) {
                Some(Value::Array(items)) => items.push(value),
                Some(existing) => {
                    let first = existing.take();
                    *existing = Value::Array(vec![first, value]);
                }
                None => {
                    self.children.insert(name, value);
                }
            }
        }
    }

    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<(String, Element)> = Vec::new();
    let mut root: Option<Value> = None;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("{e} (near byte {})", reader.error_position()))?;
        // A finished element: its name and value, to attach to the parent (or be the root).
        let done = match event {
            Event::Start(e) => {
                if root.is_some() {
                    return Err("more than one root element".into());
                }
                stack.push((e.name().as_ref().to_string(), Element::new()));
                None
            }
            Event::Empty(e) => Some((e.name().as_ref().to_string(), Value::String(String::new()))),
            Event::End(_) => {
                let (name, element) = stack.pop().ok_or("unexpected closing tag")?;
                let value = element.finish(&name)?;
                Some((name, value))
            }
            Event::Text(t) => {
                let content = t.xml10_content();
                match stack.last_mut() {
                    Some((_, element)) => element.text.push_str(&content),
                    None if content.trim().is_empty() => {}
                    None => return Err("text outside the root element".into()),
                }
                None
            }
            Event::CData(c) => {
                match stack.last_mut() {
                    Some((_, element)) => element.text.push_str(&c.xml10_content()),
                    None => return Err("CDATA outside the root element".into()),
                }
                None
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(c) => c.to_string(),
                    None => quick_xml::escape::resolve_predefined_entity(&r.xml10_content())
                        .ok_or_else(|| format!("unknown entity &{};", r.xml10_content()))?
                        .to_string(),
                };
                match stack.last_mut() {
                    Some((_, element)) => element.text.push_str(&resolved),
                    None => return Err("text outside the root element".into()),
                }
                None
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => None,
            Event::Eof => break,
        };
        if let Some((name, value)) = done {
            match stack.last_mut() {
                Some((_, parent)) => parent.add(name, value),
                None if root.is_some() => return Err("more than one root element".into()),
                None => root = Some(value),
            }
        }
    }
    if let Some((name, _)) = stack.last() {
        return Err(format!("element <{name}> is not closed"));
    }
    match root {
        Some(Value::Object(map)) => Ok(Value::Object(map)),
        // `<etc/>` or `<etc></etc>`: no keys.
        Some(Value::String(s)) if s.is_empty() => Ok(Value::Object(Map::new())),
        Some(_) => Err("the root element must wrap the keys as child elements".into()),
        None => Err("no root element".into()),
    }
}

/// One table of the tree, with its full dotted path for error messages.
struct Section<'a> {
    path: String,
    /// `None` when the section is absent.
    map: Option<&'a Map<String, Value>>,
    /// Whether the tree came from XML: there every scalar is a string, an empty element (`""`)
    /// stands for an empty table or list, and a string is a one-element list.
    xml: bool,
}

/// Stands in for the empty table an XML empty element (`<server/>`) denotes.
static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

impl<'a> Section<'a> {
    fn root(etc: Option<&'a Value>, xml: bool) -> Result<Self> {
        Ok(Section {
            path: "etc".to_string(),
            map: table_of(etc, xml, "etc")?,
            xml,
        })
    }

    fn exists(&self) -> bool {
        self.map.is_some()
    }

    fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.path)
    }

    /// The value of `name`; `None` when absent or null (YAML `key:` with nothing after it).
    fn raw(&self, name: &str) -> Option<&'a Value> {
        self.map?.get(name).filter(|v| !v.is_null())
    }

    /// The sub-table `name`; absent when missing, an error when it is not a table.
    fn table(&self, name: &str) -> Result<Section<'a>> {
        let path = self.key(name);
        let map = table_of(self.raw(name), self.xml, &path)?;
        Ok(Section {
            path,
            map,
            xml: self.xml,
        })
    }

    /// Rejects keys outside `known` (sections the gate owns: a typo there is a silent
    /// misconfiguration otherwise).
    fn deny_unknown(&self, known: &'static [&'static str]) -> Result<()> {
        let Some(map) = self.map else {
            return Ok(());
        };
        match map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(ConfigError::UnknownKey {
                key: self.key(k),
                known,
            }),
            None => Ok(()),
        }
    }

    /// Applies `convert` to the value of `name`, naming the key in any error.
    fn get<T>(
        &self,
        name: &str,
        convert: impl FnOnce(&Value) -> std::result::Result<T, String>,
    ) -> Result<Option<T>> {
        self.raw(name)
            .map(convert)
            .transpose()
            .map_err(|reason| ConfigError::invalid(self.key(name), reason))
    }

    fn string(&self, name: &str, default: &str) -> Result<String> {
        Ok(self
            .get(name, value_to_string)?
            .unwrap_or_else(|| default.to_string()))
    }

    /// A string where empty means the default (due v2.5.8's rule for names and addresses).
    fn non_empty_string(&self, name: &str, default: &str) -> Result<String> {
        let s = self.string(name, default)?;
        Ok(if s.is_empty() { default.to_string() } else { s })
    }

    fn bool(&self, name: &str, default: bool) -> Result<bool> {
        Ok(self.get(name, parse_bool)?.unwrap_or(default))
    }

    fn int(&self, name: &str, default: i64) -> Result<i64> {
        Ok(self.get(name, value_to_int)?.unwrap_or(default))
    }

    /// Nanoseconds, possibly negative.
    fn duration_ns(&self, name: &str, default: Duration) -> Result<i128> {
        Ok(self
            .get(name, value_to_duration)?
            .unwrap_or(default.as_nanos() as i128))
    }

    /// A duration that must not be negative (zero usually means "disabled").
    fn non_negative_duration(&self, name: &str, default: Duration) -> Result<Duration> {
        let ns = self.duration_ns(name, default)?;
        if ns < 0 {
            return Err(ConfigError::invalid(
                self.key(name),
                "must not be negative (use 0 to disable)",
            ));
        }
        Ok(nanos(ns))
    }

    /// A duration where a negative value means zero (due only acts on values > 0).
    fn clamped_duration(&self, name: &str, default: Duration) -> Result<Duration> {
        Ok(nanos(self.duration_ns(name, default)?.max(0)))
    }

    fn size(&self, name: &str, default: u64) -> Result<u64> {
        Ok(self.get(name, value_to_size)?.unwrap_or(default))
    }

    /// A string list; `None` when absent.
    fn string_list(&self, name: &str) -> Result<Option<Vec<String>>> {
        let xml = self.xml;
        self.get(name, |v| value_to_string_list(v, xml))
    }

    /// An integer in `0..=max`.
    fn bounded_int(&self, name: &str, default: i64, max: i64) -> Result<i64> {
        self.ranged_int(name, default, 0, max)
    }

    /// An integer in `min..=max`.
    fn ranged_int(&self, name: &str, default: i64, min: i64, max: i64) -> Result<i64> {
        let v = self.int(name, default)?;
        if !(min..=max).contains(&v) {
            return Err(ConfigError::invalid(
                self.key(name),
                format!("{v} is out of range ({min} to {max})"),
            ));
        }
        Ok(v)
    }

    /// A duration where an integer is seconds (due's Consul keys); duration strings such as
    /// `"10s"` work too. Negative is an error, and so is zero when `positive`.
    fn seconds(&self, name: &str, default_secs: u64, positive: bool) -> Result<Duration> {
        let ns = self
            .get(name, value_to_seconds)?
            .unwrap_or(i128::from(default_secs) * 1_000_000_000);
        if ns < 0 || (positive && ns == 0) {
            let rule = if positive {
                "must be positive"
            } else {
                "must not be negative"
            };
            return Err(ConfigError::invalid(self.key(name), rule));
        }
        Ok(nanos(ns))
    }

    /// The elements of the list `name`; empty when absent. In XML a string is a one-element
    /// list and an empty element the empty list; elsewhere a scalar is an error.
    fn list(&self, name: &str) -> Result<Vec<&'a Value>> {
        let Some(v) = self.raw(name) else {
            return Ok(Vec::new());
        };
        match v {
            Value::Array(items) => Ok(items.iter().collect()),
            Value::String(s) if self.xml => Ok(if s.is_empty() { Vec::new() } else { vec![v] }),
            other => Err(ConfigError::invalid(
                self.key(name),
                format!("expected a list, found {}", kind(other)),
            )),
        }
    }

    /// A duration that must be above zero.
    fn positive_duration(&self, name: &str, default: Duration) -> Result<Duration> {
        let d = self.non_negative_duration(name, default)?;
        if d.is_zero() {
            return Err(ConfigError::invalid(self.key(name), "must be positive"));
        }
        Ok(d)
    }

    /// Converts every element of the list `name`, naming the key and the element in errors.
    fn list_of<T>(
        &self,
        name: &str,
        mut convert: impl FnMut(&Value) -> std::result::Result<T, String>,
    ) -> Result<Vec<T>> {
        self.list(name)?
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                convert(v).map_err(|reason| {
                    ConfigError::invalid(self.key(name), format!("element {i}: {reason}"))
                })
            })
            .collect()
    }

    /// An array of tables (TOML `[[name]]`, a JSON/YAML list of objects); empty when absent.
    /// Element `i` is the section `<path>.name[i]`. XML: repeated elements form the list, a
    /// single element is a one-element list and an empty element (`<nodes/>`) the empty list.
    fn tables(&self, name: &str) -> Result<Vec<Section<'a>>> {
        let path = self.key(name);
        let items: Vec<&'a Value> = match self.raw(name) {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().collect(),
            Some(Value::String(s)) if self.xml && s.is_empty() => return Ok(Vec::new()),
            Some(v @ Value::Object(_)) if self.xml => vec![v],
            Some(other) => {
                return Err(ConfigError::invalid(
                    path,
                    format!("expected a list of tables, found {}", kind(other)),
                ))
            }
        };
        items
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let item_path = format!("{path}[{i}]");
                match table_of(Some(v), self.xml, &item_path)? {
                    Some(map) => Ok(Section {
                        path: item_path,
                        map: Some(map),
                        xml: self.xml,
                    }),
                    None => Err(ConfigError::invalid(
                        item_path,
                        "expected a table, found nothing",
                    )),
                }
            })
            .collect()
    }
}

/// A seconds-or-duration value (due's Consul keys are integer seconds): an integer or an
/// integer string is seconds, any other string a duration (`"10s"`, `"1m30s"`).
fn value_to_seconds(v: &Value) -> std::result::Result<i128, String> {
    const NS: i128 = 1_000_000_000;
    match v {
        Value::Number(_) => value_to_int(v)
            .map(|s| i128::from(s) * NS)
            .map_err(|e| format!("{e} (use whole seconds or a duration such as \"10s\")")),
        Value::String(s) => match s.trim().parse::<i64>() {
            Ok(secs) => Ok(i128::from(secs) * NS),
            Err(_) => parse_duration(s),
        },
        other => Err(format!(
            "expected seconds or a duration such as \"10s\", found {}",
            kind(other)
        )),
    }
}

/// Checks an address to connect to (`net::HostPort::parse_remote`): a non-empty host (IPv6 in
/// brackets) and a numeric port.
fn check_host_port(addr: &str) -> std::result::Result<(), String> {
    HostPort::parse_remote(addr).map(drop).map_err(|e| {
        format!("{e}; expected host:port (e.g. \"10.0.0.5:3553\" or \"[fd00::5]:3553\")")
    })
}

/// Interprets a value as a table: absent → `None`; XML empty element → empty table.
fn table_of<'a>(
    v: Option<&'a Value>,
    xml: bool,
    path: &str,
) -> Result<Option<&'a Map<String, Value>>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(Value::String(s)) if xml && s.is_empty() => Ok(Some(&EMPTY)),
        Some(other) => Err(ConfigError::invalid(
            path,
            format!("expected a table, found {}", kind(other)),
        )),
    }
}

fn nanos(ns: i128) -> Duration {
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// `[cluster.gate]` keys: v2.4.1's, plus v2.5.8's internal-RPC tuning keys (accepted so one
/// configuration works for either version; parsed for type errors, otherwise unused).
const GATE_KEYS: &[&str] = &[
    "id",
    "name",
    "addr",
    "expose",
    "timeout",
    "dispatch",
    "metadata",
    "callTimeout",
    "connNum",
    "dialTimeout",
    "dialRetryTimes",
    "writeTimeout",
    "writeQueueSize",
    "faultRecoveryTime",
];

const PACKET_KEYS: &[&str] = &[
    "byteOrder",
    "routeBytes",
    "seqBytes",
    "bufferBytes",
    "heartbeatTime",
];

const TCP_SERVER_KEYS: &[&str] = &[
    "addr",
    "certFile",
    "keyFile",
    "maxConnNum",
    "heartbeatInterval",
    "heartbeatMechanism",
    "authorizeTimeout",
    "writeTimeout",
    "writeQueueSize",
];

/// due v2.4.1's `network/kcp` server options (v2.5.8 has the same; no writeQueueSize there).
const KCP_SERVER_KEYS: &[&str] = &[
    "addr",
    "maxConnNum",
    "heartbeatInterval",
    "heartbeatMechanism",
    "authorizeTimeout",
    "mtu",
    "noDelay",
    "ackNoDelay",
    "writeDelay",
    "windowSize",
    "readBuffer",
    "writeBuffer",
];

const WS_SERVER_KEYS: &[&str] = &[
    "addr",
    "path",
    "certFile",
    "keyFile",
    "maxConnNum",
    "origins",
    "handshakeTimeout",
    "heartbeatInterval",
    "heartbeatMechanism",
    "authorizeTimeout",
    "writeTimeout",
    "writeQueueSize",
];

const GATEHOUSE_KEYS: &[&str] = &[
    "shards",
    "pin",
    "maxInboundFrame",
    "lenientInbound",
    "wsCloseFrame",
    "wsLittleEndianTsHeartbeat",
    "ioMemory",
    "listenBacklog",
    "proxyProtocol",
    "proxyTrusted",
    "nodes",
    "linkConns",
    "publishResponseV25",
    "upgradeSocket",
    "metricsAddr",
    "singleLogin",
    "packetRate",
    "packetBurst",
    "packetRateAction",
    "ipAcceptRate",
    "ipAcceptBurst",
    "ipMaxConns",
    "registry",
    "kcpLinger",
    "kcpClosedMemory",
];

/// `[[gatehouse.nodes]]` keys.
const NODE_KEYS: &[&str] = &[
    "id",
    "name",
    "addr",
    "routes",
    "stateful",
    "authorized",
    "internal",
    "events",
    "weight",
    "state",
];

/// `[locate.redis]` keys (due v2.4.1 `locate/redis/options.go`).
const REDIS_KEYS: &[&str] = &[
    "addrs",
    "db",
    "username",
    "password",
    "maxRetries",
    "prefix",
    "certFile",
    "keyFile",
    "caFile",
];

/// `[registry.consul]` keys (due v2.4.1 `registry/consul/options.go`).
const CONSUL_KEYS: &[&str] = &[
    "addr",
    "healthCheck",
    "healthCheckInterval",
    "healthCheckTimeout",
    "heartbeatCheck",
    "heartbeatCheckInterval",
    "deregisterCriticalServiceAfter",
];

/// `[registry.etcd]` keys (due v2.4.1 `registry/etcd/options.go`, plus v2.5.8's credentials).
const ETCD_KEYS: &[&str] = &[
    "addrs",
    "dialTimeout",
    "namespace",
    "timeout",
    "retryTimes",
    "retryInterval",
    "username",
    "password",
];

/// `[registry.nacos]` keys (due v2.4.1 `registry/nacos/options.go`).
const NACOS_KEYS: &[&str] = &[
    "urls",
    "clusterName",
    "groupName",
    "timeout",
    "namespaceId",
    "endpoint",
    "regionId",
    "accessKey",
    "secretKey",
    "openKMS",
    "cacheDir",
    "username",
    "password",
    "logDir",
    "logLevel",
];

const SECOND: Duration = Duration::from_secs(1);

/// Builds the [`Config`] from the `etc` tree (`None` = no `etc` file: all defaults).
fn build(etc: Option<&Value>, xml: bool, mode_override: Option<&str>) -> Result<Config> {
    let root = Section::root(etc, xml)?;

    let pid = root.string("pid", "")?;
    let timezone = root.non_empty_string("timezone", "Local")?;
    let shutdown_max_wait = root.clamped_duration("shutdownMaxWaitTime", Duration::ZERO)?;
    let network = root.table("network")?;
    let tcp = network.table("tcp")?.table("server")?;
    let ws = network.table("ws")?.table("server")?;
    let kcp = network.table("kcp")?.table("server")?;
    let locator = locator(&root.table("locate")?.table("redis")?)?;
    let gatehouse = gatehouse_with(&root.table("gatehouse")?, &locator)?;

    Ok(Config {
        pid: (!pid.is_empty()).then(|| PathBuf::from(pid)),
        mode: mode(&root, mode_override)?,
        timezone,
        shutdown_max_wait,
        gate: gate(&root.table("cluster")?.table("gate")?)?,
        packet: packet(&root.table("packet")?)?,
        // A gate needs a client server: with none of the sections, due's default TCP server.
        tcp: if tcp.exists() || !(ws.exists() || kcp.exists()) {
            tcp.deny_unknown(TCP_SERVER_KEYS)?;
            Some(server(&tcp)?)
        } else {
            None
        },
        ws: if ws.exists() {
            ws.deny_unknown(WS_SERVER_KEYS)?;
            Some(ws_server(&ws)?)
        } else {
            None
        },
        kcp: if kcp.exists() {
            kcp.deny_unknown(KCP_SERVER_KEYS)?;
            let mut k = kcp_server(&kcp)?;
            k.params.linger_ms = gatehouse.kcp_linger.as_millis() as u64;
            k.params.closed_ms = gatehouse.kcp_closed_memory.as_millis() as u64;
            Some(k)
        } else {
            None
        },
        log: log(&root.table("log")?)?,
        gatehouse,
        locator,
        registry: registry(&root.table("registry")?, &root.table("gatehouse")?)?,
    })
}

/// `[gatehouse]`, checked against the locator: single login across gates hears of other
/// gates' binds only through the Redis locator's events.
fn gatehouse_with(g: &Section, locator: &LocatorConfig) -> Result<GatehouseConfig> {
    let c = gatehouse(g)?;
    if c.single_login == SingleLogin::Cluster && *locator == LocatorConfig::Memory {
        return Err(ConfigError::invalid(
            g.key("singleLogin"),
            "\"cluster\" needs the Redis locator ([locate.redis]) to hear of other gates' binds",
        ));
    }
    Ok(c)
}

/// `[locate.redis]`: its presence selects the Redis locator. Other `[locate.*]` sections
/// (etcd, …) belong to other backends and are not read.
fn locator(r: &Section) -> Result<LocatorConfig> {
    if !r.exists() {
        return Ok(LocatorConfig::Memory);
    }
    r.deny_unknown(REDIS_KEYS)?;
    let default = RedisConfig::default();
    let mut addrs = r.list_of("addrs", |v| {
        let addr = value_to_string(v)?;
        check_host_port(&addr)?;
        Ok(addr)
    })?;
    if addrs.is_empty() {
        // go-redis dials 127.0.0.1:6379 when given no address.
        addrs = default.addrs;
    }
    let max_retries = r.int("maxRetries", default.max_retries)?;
    if max_retries < -1 {
        return Err(ConfigError::invalid(
            r.key("maxRetries"),
            format!("{max_retries} is out of range (-1 = no retries, 0 = the default 3)"),
        ));
    }
    Ok(LocatorConfig::Redis(RedisConfig {
        addrs,
        db: r.bounded_int("db", default.db, i32::MAX.into())?,
        username: r.string("username", "")?,
        password: r.string("password", "")?,
        max_retries,
        prefix: r.string("prefix", &default.prefix)?,
        cert_file: r.string("certFile", "")?,
        key_file: r.string("keyFile", "")?,
        ca_file: r.string("caFile", "")?,
    }))
}

/// The registry backend. due's gate program picks it in code (`consul.NewRegistry()`,
/// `etcd.NewRegistry()` or `nacos.NewRegistry()`), and due's sample `etc.toml` carries every
/// section, so: the one of `[registry.consul]` / `[registry.etcd]` / `[registry.nacos]` that is
/// present selects its backend (none: the static node list); with more than one,
/// `[gatehouse] registry` (`consul`, `etcd`, `nacos` or `static`) must say which, and it may also
/// name a backend whose section is absent (due's defaults).
fn registry(r: &Section, gatehouse: &Section) -> Result<RegistryConfig> {
    let sections = [
        ("consul", r.table("consul")?),
        ("etcd", r.table("etcd")?),
        ("nacos", r.table("nacos")?),
    ];
    let choice = gatehouse.string("registry", "")?;
    let present: Vec<&str> = sections
        .iter()
        .filter(|(_, t)| t.exists())
        .map(|(n, _)| *n)
        .collect();
    let chosen = match choice.as_str() {
        "" => match present.as_slice() {
            [] => "static",
            [one] => one,
            several => {
                return Err(ConfigError::invalid(
                    gatehouse.key("registry"),
                    format!(
                        "[registry.{}] are all present: due's gate program picks one in code; \
                         say which with registry = \"consul\", \"etcd\" or \"nacos\"",
                        several.join("], [registry.")
                    ),
                ))
            }
        },
        "consul" | "etcd" | "nacos" | "static" => choice.as_str(),
        other => {
            return Err(ConfigError::invalid(
                gatehouse.key("registry"),
                format!("{other:?} is not a registry (consul, etcd, nacos or static)"),
            ))
        }
    };
    let section = |name: &str| &sections.iter().find(|(n, _)| *n == name).expect("known").1;
    match chosen {
        "consul" => consul_registry(section("consul")),
        "etcd" => etcd_registry(section("etcd")),
        "nacos" => nacos_registry(section("nacos")),
        _ => Ok(RegistryConfig::Static),
    }
}

/// `[registry.nacos]` (docs/ops/nacos.md). `urls` must be a list of `http://host:port/path`
/// URLs (no TLS, like the Consul and etcd clients); the Alibaba Cloud keys (address server, KMS, access keys) cannot be honoured over the
/// open API and stop start-up when set.
fn nacos_registry(n: &Section) -> Result<RegistryConfig> {
    n.deny_unknown(NACOS_KEYS)?;
    let default = NacosConfig::default();
    let urls = if n.raw("urls").is_some() {
        let urls = n.list_of("urls", |v| {
            let url = value_to_string(v)?;
            // Plain HTTP, as the Consul and etcd clients speak (no TLS in the HTTP client).
            let rest = url
                .strip_prefix("http://")
                .ok_or_else(|| format!("{url:?}: not an http:// URL (https is not supported)"))?;
            let host_port = rest.split('/').next().unwrap_or_default();
            check_host_port(host_port).map_err(|e| format!("{url:?}: {e}"))?;
            Ok(url.trim_end_matches('/').to_string())
        })?;
        if urls.is_empty() {
            return Err(ConfigError::invalid(
                n.key("urls"),
                "must name at least one Nacos server URL",
            ));
        }
        urls
    } else {
        default.urls
    };
    for key in ["endpoint", "regionId", "accessKey", "secretKey"] {
        if !n.string(key, "")?.is_empty() {
            return Err(ConfigError::invalid(
                n.key(key),
                "Alibaba Cloud's address server, KMS and access keys are not supported; \
                 name the servers in urls",
            ));
        }
    }
    if n.bool("openKMS", false)? {
        return Err(ConfigError::invalid(
            n.key("openKMS"),
            "KMS encryption is not supported",
        ));
    }
    // The Go SDK's local cache and log files: nothing of the kind here.
    for key in ["cacheDir", "logDir", "logLevel"] {
        n.string(key, "")?;
    }
    Ok(RegistryConfig::Nacos(NacosConfig {
        urls,
        cluster_name: n.non_empty_string("clusterName", &default.cluster_name)?,
        group_name: n.non_empty_string("groupName", &default.group_name)?,
        timeout: n.positive_duration("timeout", default.timeout)?,
        namespace_id: n.string("namespaceId", "")?,
        username: n.string("username", "")?,
        password: n.string("password", "")?,
    }))
}

/// `[registry.etcd]` (etcd-registry.md §1). `addrs` must be a list, as in due (a plain string
/// leaves due without endpoints and its gate exits; here it stops start-up naming the key).
fn etcd_registry(e: &Section) -> Result<RegistryConfig> {
    e.deny_unknown(ETCD_KEYS)?;
    let default = EtcdConfig::default();
    let addrs = if e.raw("addrs").is_some() {
        let addrs = e.list_of("addrs", |v| {
            let addr = value_to_string(v)?;
            let host_port = addr.strip_prefix("http://").unwrap_or(&addr);
            check_host_port(host_port.trim_end_matches('/'))?;
            Ok(host_port.trim_end_matches('/').to_string())
        })?;
        if addrs.is_empty() {
            return Err(ConfigError::invalid(
                e.key("addrs"),
                "must name at least one etcd member host:port (due fails every call without one)",
            ));
        }
        addrs
    } else {
        default.addrs
    };
    let namespace = e.string("namespace", &default.namespace)?;
    if namespace.contains('/') {
        return Err(ConfigError::invalid(
            e.key("namespace"),
            format!("{namespace:?} contains '/': keys would nest deeper than /<namespace>/<name>/<id> and deletions would be missed"),
        ));
    }
    Ok(RegistryConfig::Etcd(EtcdConfig {
        addrs,
        dial_timeout: e.positive_duration("dialTimeout", default.dial_timeout)?,
        namespace,
        timeout: e.positive_duration("timeout", default.timeout)?,
        retry_times: e.bounded_int("retryTimes", default.retry_times, i32::MAX.into())?,
        // Below 1 s the TTL is 1 s (etcd then grants its minimum, 2 s), as in due.
        retry_interval: e.non_negative_duration("retryInterval", default.retry_interval)?,
        username: e.string("username", "")?,
        password: e.string("password", "")?,
    }))
}

/// `[registry.consul]` (cluster-protocol.md §5.6).
fn consul_registry(c: &Section) -> Result<RegistryConfig> {
    c.deny_unknown(CONSUL_KEYS)?;
    let health_check = c.bool("healthCheck", true)?;
    let heartbeat_check = c.bool("heartbeatCheck", true)?;
    Ok(RegistryConfig::Consul(ConsulConfig {
        addr: c.non_empty_string("addr", "127.0.0.1:8500")?,
        health_check,
        // A zero interval is refused by Consul (TCP check) or a panic in due (TTL ticker).
        health_check_interval: c.seconds("healthCheckInterval", 10, health_check)?,
        health_check_timeout: c.seconds("healthCheckTimeout", 5, false)?,
        heartbeat_check,
        heartbeat_check_interval: c.seconds("heartbeatCheckInterval", 10, heartbeat_check)?,
        deregister_critical_service_after: c.seconds(
            "deregisterCriticalServiceAfter",
            30,
            false,
        )?,
    }))
}

/// One `[[gatehouse.nodes]]` entry, the `index`-th (0-based).
fn static_node(n: &Section, index: usize) -> Result<StaticNode> {
    n.deny_unknown(NODE_KEYS)?;

    let addr = n.string("addr", "")?;
    if addr.is_empty() {
        let reason = if n.raw("addr").is_none() {
            "missing: every static node needs its link address host:port"
        } else {
            "must not be empty (the node's link address host:port)"
        };
        return Err(ConfigError::invalid(n.key("addr"), reason));
    }
    check_host_port(&addr).map_err(|reason| ConfigError::invalid(n.key("addr"), reason))?;

    // One route per id in order of first mention, with the flags of every list naming it.
    let mut routes: Vec<RouteInfo> = Vec::new();
    type SetFlag = fn(&mut RouteInfo);
    let lists: [(&str, SetFlag); 4] = [
        ("routes", |_| {}),
        ("stateful", |r| r.stateful = true),
        ("authorized", |r| r.authorized = true),
        ("internal", |r| r.internal = true),
    ];
    for (key, set_flag) in lists {
        let ids = n.list_of(key, |v| {
            let id = value_to_int(v)?;
            i32::try_from(id).map_err(|_| format!("route {id} is out of range"))
        })?;
        for id in ids {
            let route = match routes.iter().position(|r| r.id == id) {
                Some(i) => &mut routes[i],
                None => {
                    routes.push(RouteInfo {
                        id,
                        ..RouteInfo::default()
                    });
                    routes.last_mut().expect("just pushed")
                }
            };
            set_flag(route);
        }
    }

    let mut events: Vec<i32> = Vec::new();
    for event in n.list_of("events", event_number)? {
        if !events.contains(&event) {
            events.push(event);
        }
    }

    let state = n
        .get("state", |v| {
            let s = value_to_string(v)?;
            match s.as_str() {
                "work" | "busy" | "hang" | "shut" => Ok(InstanceState::from_text(&s)),
                _ => Err(format!(
                    "{s:?} is not an instance state (use work, busy, hang or shut)"
                )),
            }
        })?
        .unwrap_or(InstanceState::Work);

    Ok(StaticNode {
        id: n.non_empty_string("id", &format!("static-{index}"))?,
        name: n.non_empty_string("name", "node")?,
        addr,
        routes,
        events,
        weight: n.bounded_int("weight", 1, i32::MAX.into())? as i32,
        state,
    })
}

/// An event: 1/`connect`, 2/`reconnect` or 3/`disconnect` (names in any case).
fn event_number(v: &Value) -> std::result::Result<i32, String> {
    if let Value::String(s) = v {
        match s.trim().to_ascii_lowercase().as_str() {
            "connect" => return Ok(1),
            "reconnect" => return Ok(2),
            "disconnect" => return Ok(3),
            _ => {}
        }
    }
    let bad = || {
        format!(
            "{} is not an event (use 1/\"connect\", 2/\"reconnect\" or 3/\"disconnect\")",
            v
        )
    };
    match value_to_int(v) {
        Ok(n @ 1..=3) => Ok(n as i32),
        _ => Err(bad()),
    }
}

/// `mode`: the override (already merged `DUE_MODE`/`--mode`) beats the file; empty is `debug`.
fn mode(root: &Section, mode_override: Option<&str>) -> Result<Mode> {
    let (value, source) = match mode_override {
        Some(m) => (m.to_string(), " (from DUE_MODE or --mode)"),
        None => (root.string("mode", "debug")?, ""),
    };
    match value.as_str() {
        "" | "debug" => Ok(Mode::Debug),
        "test" => Ok(Mode::Test),
        "release" => Ok(Mode::Release),
        other => Err(ConfigError::invalid(
            root.key("mode"),
            format!("{other:?}{source} is not a mode (use debug, test or release)"),
        )),
    }
}

/// `[cluster.gate]`.
fn gate(g: &Section) -> Result<GateConfig> {
    g.deny_unknown(GATE_KEYS)?;

    // v2.5.8's callTimeout replaces v2.4.1's timeout; ≤ 0 means the default 3s in both.
    let timeout_key = if g.raw("callTimeout").is_some() {
        "callTimeout"
    } else {
        "timeout"
    };
    let timeout = match g.duration_ns(timeout_key, 3 * SECOND)? {
        ns if ns <= 0 => 3 * SECOND,
        ns => nanos(ns),
    };
    // Accepted v2.5.8 keys: only checked for type, the v2.4.1 gate has nothing to tune with them.
    for key in ["connNum", "dialRetryTimes", "writeQueueSize"] {
        g.int(key, 0)?;
    }
    for key in ["dialTimeout", "writeTimeout", "faultRecoveryTime"] {
        g.duration_ns(key, Duration::ZERO)?;
    }

    let metadata_section = g.table("metadata")?;
    let mut metadata = BTreeMap::new();
    for (k, v) in metadata_section.map.into_iter().flatten() {
        let value = value_to_string(v)
            .map_err(|reason| ConfigError::invalid(metadata_section.key(k), reason))?;
        metadata.insert(k.clone(), value);
    }

    let id = g.string("id", "")?;
    Ok(GateConfig {
        id: if id.is_empty() { generate_id() } else { id },
        name: g.non_empty_string("name", "gate")?,
        addr: g.non_empty_string("addr", ":0")?,
        expose: g.bool("expose", false)?,
        timeout,
        dispatch: g.non_empty_string("dispatch", "random")?,
        metadata,
    })
}

/// A time-based (v1) UUID, as due generates for an empty `id`. The node id is random (with the
/// multicast bit set, which RFC 4122 §4.5 reserves for exactly that) instead of a MAC address.
fn generate_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process: enough randomness for a node id
    // without another dependency.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let random = hasher.finish().to_le_bytes();
    let mut node = [0u8; 6];
    node.copy_from_slice(&random[..6]);
    node[0] |= 0x01;
    uuid::Uuid::now_v1(&node).to_string()
}

/// `[packet]`: invalid widths abort start-up, as due's fatal log does.
fn packet(p: &Section) -> Result<PacketConfig> {
    p.deny_unknown(PACKET_KEYS)?;
    let default = PacketConfig::default();

    // due: "little" (any case) is little endian, any other string big endian.
    let byte_order = if p.string("byteOrder", "big")?.eq_ignore_ascii_case("little") {
        ByteOrder::Little
    } else {
        ByteOrder::Big
    };
    let route_bytes = p.int("routeBytes", default.route_bytes.into())?;
    if ![1, 2, 4].contains(&route_bytes) {
        return Err(ConfigError::invalid(
            p.key("routeBytes"),
            format!("{route_bytes} is not a valid route width (use 1, 2 or 4)"),
        ));
    }
    let seq_bytes = p.int("seqBytes", default.seq_bytes.into())?;
    if ![0, 1, 2, 4].contains(&seq_bytes) {
        return Err(ConfigError::invalid(
            p.key("seqBytes"),
            format!("{seq_bytes} is not a valid seq width (use 0, 1, 2 or 4)"),
        ));
    }
    let buffer_bytes = p.int("bufferBytes", default.buffer_bytes.into())?;
    let buffer_bytes = u32::try_from(buffer_bytes).map_err(|_| {
        ConfigError::invalid(
            p.key("bufferBytes"),
            format!("{buffer_bytes} is out of range (0 to {})", u32::MAX),
        )
    })?;
    Ok(PacketConfig {
        byte_order,
        route_bytes: route_bytes as u8,
        seq_bytes: seq_bytes as u8,
        buffer_bytes,
        heartbeat_time: p.bool("heartbeatTime", default.heartbeat_time)?,
    })
}

/// The keys `[network.tcp.server]` and `[network.ws.server]` share.
fn server(s: &Section) -> Result<ServerConfig> {
    let mechanism = s.string("heartbeatMechanism", "resp")?;
    let heartbeat_mechanism = match mechanism.as_str() {
        "resp" => HeartbeatMechanism::Resp,
        "tick" => HeartbeatMechanism::Tick,
        other => {
            return Err(ConfigError::invalid(
                s.key("heartbeatMechanism"),
                format!("{other:?} is not a heartbeat mechanism (use \"resp\" or \"tick\")"),
            ))
        }
    };
    // v2.5.8: maxConnNum ≤ 0 means the default (v2.4.1 would refuse every connection).
    let max_conn_num = match s.int("maxConnNum", 5000)? {
        n if n <= 0 => 5000,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    // v2.4.1's fixed queue size; the v2.5.8 key is honoured when positive.
    let write_queue_size = match s.int("writeQueueSize", 4096)? {
        n if n <= 0 => 4096,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    Ok(ServerConfig {
        addr: s.non_empty_string("addr", ":3553")?,
        cert_file: s.string("certFile", "")?,
        key_file: s.string("keyFile", "")?,
        max_conn_num,
        heartbeat_interval: s.non_negative_duration("heartbeatInterval", 10 * SECOND)?,
        heartbeat_mechanism,
        authorize_timeout: s.non_negative_duration("authorizeTimeout", Duration::ZERO)?,
        write_queue_size,
        write_timeout: s.clamped_duration("writeTimeout", Duration::ZERO)?,
    })
}

/// `[network.kcp.server]` (spec kcp.md §1.1). Where due would run a KCP server that serves
/// nobody or ignores a setting silently, start-up stops naming the key: `maxConnNum` ≤ 0 (due's
/// KCP server refuses every client then, also in v2.5.8), an `mtu` kcp-go ignores (outside
/// 50..=1500), a `noDelay` that is not 4 integers, a `windowSize` that is not 2.
fn kcp_server(s: &Section) -> Result<KcpConfig> {
    use crate::kcpnet::Params;
    if s.int("maxConnNum", 5000)? <= 0 {
        return Err(ConfigError::invalid(
            s.key("maxConnNum"),
            "must be positive (due's KCP server refuses every client at 0 or below)",
        ));
    }
    let server = server(s)?;
    let mut p = Params::default();
    match s.int("mtu", 0)? {
        0 => {}
        n @ 50..=1500 => p.mtu = n as usize,
        n => {
            return Err(ConfigError::invalid(
                s.key("mtu"),
                format!("{n} is out of range (50..=1500; kcp-go would ignore it)"),
            ))
        }
    }
    let ints = |name: &str| s.list_of(name, value_to_int);
    let no_delay = ints("noDelay")?;
    if s.raw("noDelay").is_some() {
        let [nodelay, interval, resend, nc] = no_delay[..] else {
            return Err(ConfigError::invalid(
                s.key("noDelay"),
                format!(
                    "expected 4 integers [nodelay, interval, resend, nc], found {}",
                    no_delay.len()
                ),
            ));
        };
        // kcp-go's SetNoDelay: a negative element leaves that parameter as it is.
        if nodelay >= 0 {
            p.nodelay = nodelay != 0;
        }
        if interval >= 0 {
            p.interval = interval.clamp(10, 5000) as u32;
        }
        if resend >= 0 {
            p.resend = u32::try_from(resend).unwrap_or(u32::MAX);
        }
        if nc >= 0 {
            p.no_cwnd = nc != 0;
        }
    }
    let window = ints("windowSize")?;
    if s.raw("windowSize").is_some() {
        let [snd, rcv] = window[..] else {
            return Err(ConfigError::invalid(
                s.key("windowSize"),
                format!(
                    "expected 2 integers [send, receive], found {}",
                    window.len()
                ),
            ));
        };
        // Values ≤ 0 keep the default (kcp-go's SetWindowSize).
        let segments = |n: i64, default: u16| {
            if n <= 0 {
                default
            } else {
                u16::try_from(n).unwrap_or(u16::MAX)
            }
        };
        p.snd_wnd = segments(snd, p.snd_wnd);
        p.rcv_wnd = segments(rcv, p.rcv_wnd);
    }
    p.ack_nodelay = s.bool("ackNoDelay", false)?;
    p.write_delay = s.bool("writeDelay", false)?;
    // No effect on due's server either (kcp-go refuses buffer sizes on a listener's sessions).
    s.size("readBuffer", 0)?;
    s.size("writeBuffer", 0)?;
    Ok(KcpConfig { server, params: p })
}

/// `[network.ws.server]`.
fn ws_server(s: &Section) -> Result<WsConfig> {
    let path = s.string("path", "/")?;
    if path.is_empty() {
        // due hands "" to Go's ServeMux, which panics at start-up.
        return Err(ConfigError::invalid(
            s.key("path"),
            "must not be empty (the default is \"/\")",
        ));
    }
    Ok(WsConfig {
        server: server(s)?,
        path,
        origins: s
            .string_list("origins")?
            .unwrap_or_else(|| vec!["*".to_string()]),
        handshake_timeout: s.non_negative_duration("handshakeTimeout", 10 * SECOND)?,
    })
}

/// `[log]`, `[log.console]`, `[log.file]`. Keys we do not use (stackLevel, timeFormat, callSkip,
/// callFullPath, other terminals' sections) are ignored: the section is shared with due's own
/// components and tools.
fn log(l: &Section) -> Result<LogConfig> {
    let level = l.get("level", |v| {
        let s = value_to_string(v)?;
        if s.is_empty() {
            Ok(LogLevel::Info)
        } else {
            parse_level(&s)
        }
    })?;

    let (mut console, mut file) = (None, None);
    let terminals_key = l.key("terminals");
    let mut enable = |name: &str, levels: Option<Vec<LogLevel>>| match name {
        "console" => {
            console = Some(levels);
            Ok(())
        }
        "file" => {
            file = Some(levels);
            Ok(())
        }
        other => Err(ConfigError::invalid(
            &terminals_key,
            format!("unsupported terminal {other:?} (gatehouse supports \"console\" and \"file\")"),
        )),
    };
    match l.raw("terminals") {
        None => {
            enable("console", None)?;
            enable("file", None)?;
        }
        // Table form: `terminal = [levels]`; an empty list puts no restriction on levels.
        Some(Value::Object(map)) => {
            for (name, levels) in map {
                let key = format!("{terminals_key}.{name}");
                let levels = value_to_string_list(levels, l.xml)
                    .and_then(|names| names.iter().map(|n| parse_level(n)).collect())
                    .map_err(|reason| ConfigError::invalid(&key, reason))?;
                enable(name, Some(levels).filter(|ls: &Vec<_>| !ls.is_empty()))?;
            }
        }
        Some(_) => {
            for name in l.string_list("terminals")?.unwrap_or_default() {
                enable(&name, None)?;
            }
        }
    }

    let c = l.table("console")?;
    let f = l.table("file")?;
    Ok(LogConfig {
        level: level.unwrap_or(LogLevel::Info),
        console,
        file,
        console_format: format(&c)?,
        file_path: PathBuf::from(f.non_empty_string("path", "./log/due.log")?),
        file_format: format(&f)?,
        file_max_age: f.clamped_duration("maxAge", 7 * 24 * 3600 * SECOND)?,
        file_max_size: f.size("maxSize", 500 << 20)?,
        file_rotate: f
            .get("rotate", |v| {
                let s = value_to_string(v)?;
                match s.to_ascii_lowercase().as_str() {
                    "" | "none" => Ok(Rotate::None),
                    "year" => Ok(Rotate::Year),
                    "month" => Ok(Rotate::Month),
                    "week" => Ok(Rotate::Week),
                    "day" => Ok(Rotate::Day),
                    "hour" => Ok(Rotate::Hour),
                    _ => Err(format!(
                        "{s:?} is not a rotation (use none, year, month, week, day or hour)"
                    )),
                }
            })?
            .unwrap_or(Rotate::None),
        file_compress: f.bool("compress", false)?,
    })
}

fn parse_level(s: &str) -> std::result::Result<LogLevel, String> {
    match s.to_ascii_lowercase().as_str() {
        "debug" => Ok(LogLevel::Debug),
        "info" => Ok(LogLevel::Info),
        "warn" => Ok(LogLevel::Warn),
        "error" => Ok(LogLevel::Error),
        "fatal" => Ok(LogLevel::Fatal),
        "panic" => Ok(LogLevel::Panic),
        _ => Err(format!(
            "{s:?} is not a log level (use debug, info, warn, error, fatal or panic)"
        )),
    }
}

/// `format` of a log terminal: `text` (default) or `json`.
fn format(s: &Section) -> Result<LogFormat> {
    Ok(s.get("format", |v| {
        let f = value_to_string(v)?;
        match f.to_ascii_lowercase().as_str() {
            "" | "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{f:?} is not a log format (use text or json)")),
        }
    })?
    .unwrap_or(LogFormat::Text))
}

/// `[gatehouse]`: our own settings.
fn gatehouse(g: &Section) -> Result<GatehouseConfig> {
    g.deny_unknown(GATEHOUSE_KEYS)?;
    let io_memory = g.size("ioMemory", 64 << 10)?;

    let mut nodes: Vec<StaticNode> = Vec::new();
    for (i, section) in g.tables("nodes")?.iter().enumerate() {
        let node = static_node(section, i)?;
        if let Some(j) = nodes.iter().position(|other| other.id == node.id) {
            return Err(ConfigError::invalid(
                section.key("id"),
                format!("{:?} is already the id of nodes[{j}]", node.id),
            ));
        }
        nodes.push(node);
    }
    Ok(GatehouseConfig {
        shards: g.bounded_int("shards", 0, 65_536)? as usize,
        pin: g.bool("pin", true)?,
        max_inbound_frame: g.bounded_int("maxInboundFrame", 0, u32::MAX.into())? as u32,
        lenient_inbound: g.bool("lenientInbound", false)?,
        ws_close_frame: g.bool("wsCloseFrame", false)?,
        ws_le_ts_heartbeat: g.bool("wsLittleEndianTsHeartbeat", false)?,
        io_memory: usize::try_from(io_memory).map_err(|_| {
            ConfigError::invalid(g.key("ioMemory"), format!("{io_memory} is too large"))
        })?,
        listen_backlog: g.bounded_int("listenBacklog", 4096, i32::MAX.into())? as i32,
        proxy: proxy_policy(g)?,
        nodes,
        link_conns: g.ranged_int("linkConns", 1, 1, 20)? as usize,
        publish_v25: g.bool("publishResponseV25", false)?,
        upgrade_socket: Some(g.string("upgradeSocket", "")?)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        metrics_addr: metrics_addr(g)?,
        // Case-insensitive, as proxyProtocol.
        single_login: match g
            .string("singleLogin", "off")?
            .to_ascii_lowercase()
            .as_str()
        {
            "off" | "" => SingleLogin::Off,
            "gate" => SingleLogin::Gate,
            "cluster" => SingleLogin::Cluster,
            other => {
                return Err(ConfigError::invalid(
                    g.key("singleLogin"),
                    format!("{other:?} is not a single-login mode (use off, gate or cluster)"),
                ))
            }
        },
        limits: limits(g)?,
        kcp_linger: g.non_negative_duration("kcpLinger", 2 * SECOND)?,
        kcp_closed_memory: g.non_negative_duration("kcpClosedMemory", 60 * SECOND)?,
    })
}

/// The largest rate `packetRate` and `ipAcceptRate` take (per second), and the largest burst.
const MAX_RATE: i64 = 1_000_000;
const MAX_BURST: i64 = 1_000_000_000;

/// `packetRate`/`packetBurst`/`packetRateAction`, `ipAcceptRate`/`ipAcceptBurst`, `ipMaxConns`.
fn limits(g: &Section) -> Result<LimitsConfig> {
    // A rate and its burst: the burst defaults to the rate, must be at least 1 when the rate
    // is on, and means nothing without it.
    let rate_burst = |rate_key: &str, burst_key: &str| -> Result<(u32, u32)> {
        let rate = g.bounded_int(rate_key, 0, MAX_RATE)? as u32;
        let burst = g.get(burst_key, value_to_int)?;
        let burst = match burst {
            None => rate,
            Some(_) if rate == 0 => {
                return Err(ConfigError::invalid(
                    g.key(burst_key),
                    format!("has no effect without {rate_key} (0 or absent: off)"),
                ))
            }
            Some(b) if !(1..=MAX_BURST).contains(&b) => {
                return Err(ConfigError::invalid(
                    g.key(burst_key),
                    format!("{b} is out of range (1 to {MAX_BURST})"),
                ))
            }
            Some(b) => b as u32,
        };
        Ok((rate, burst))
    };
    let (packet_rate, packet_burst) = rate_burst("packetRate", "packetBurst")?;
    let (ip_accept_rate, ip_accept_burst) = rate_burst("ipAcceptRate", "ipAcceptBurst")?;
    let packet_action = match g
        .string("packetRateAction", "drop")?
        .to_ascii_lowercase()
        .as_str()
    {
        "drop" | "" => RateAction::Drop,
        "close" => RateAction::Close,
        other => {
            return Err(ConfigError::invalid(
                g.key("packetRateAction"),
                format!("{other:?} is not an action (use drop or close)"),
            ))
        }
    };
    Ok(LimitsConfig {
        packet_rate,
        packet_burst,
        packet_action,
        ip_accept_rate,
        ip_accept_burst,
        ip_max_conns: g.bounded_int("ipMaxConns", 0, u32::MAX.into())? as u32,
    })
}

/// `metricsAddr`: where `/metrics`, `/healthz` and `/readyz` are served; empty = off.
fn metrics_addr(g: &Section) -> Result<Option<String>> {
    let addr = g.string("metricsAddr", "")?;
    if addr.is_empty() {
        return Ok(None);
    }
    HostPort::parse(&addr).map_err(|e| {
        ConfigError::invalid(
            g.key("metricsAddr"),
            format!("{e}; expected host:port (e.g. \"127.0.0.1:9300\" or \":9300\")"),
        )
    })?;
    Ok(Some(addr))
}

/// `proxyProtocol` and `proxyTrusted`. A mode other than off with no trusted network is an
/// error: every connection would be refused, and trusting everyone would let any client name
/// any address.
fn proxy_policy(g: &Section) -> Result<ProxyPolicy> {
    let mode = g
        .get("proxyProtocol", |v| {
            let s = value_to_string(v)?;
            ProxyMode::parse(&s)
                .ok_or_else(|| format!("{s:?} is not a PROXY protocol mode (off, v1, v2 or any)"))
        })?
        .unwrap_or_default();
    let trusted = g.list_of("proxyTrusted", |v| {
        let s = value_to_string(v)?;
        let s = s.trim();
        match s.parse::<ipnet::IpNet>() {
            Ok(net) => Ok(net.trunc()),
            Err(_) => s
                .parse::<std::net::IpAddr>()
                .map(ipnet::IpNet::from)
                .map_err(|_| format!("{s:?} is not an IP address or CIDR")),
        }
    })?;
    if mode != ProxyMode::Off && trusted.is_empty() {
        return Err(ConfigError::invalid(
            g.key("proxyTrusted"),
            format!(
                "proxyProtocol = \"{}\" needs the addresses of the proxies (CIDRs); \
                 with none every connection would be refused",
                mode.as_str()
            ),
        ));
    }
    Ok(ProxyPolicy { mode, trusted })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "gatehouse-config-{}-{}-{name}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, rel: &str, content: &str) -> PathBuf {
            let path = self.0.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, content).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn from_toml(text: &str) -> Result<Config> {
        let table: toml::Table = text.parse().expect("test TOML must parse");
        build(Some(&toml_to_json(toml::Value::Table(table))), false, None)
    }

    fn load_one(name: &str, content: &str) -> Result<Config> {
        let dir = TempDir::new("one");
        let path = dir.write(name, content);
        load(&path, None)
    }

    /// Config has no PartialEq: compare the Debug text with the (random) generated id blanked.
    fn normalized(mut c: Config) -> String {
        c.gate.id.clear();
        format!("{c:?}")
    }

    fn err_key<T: std::fmt::Debug>(r: Result<T>) -> String {
        let e = r.expect_err("expected a ConfigError");
        e.key().unwrap_or_default().to_string()
    }

    const S: Duration = SECOND;

    /// client-protocol.md §5.10, verbatim.
    const EXAMPLE_TOML: &str = r#"
pid = "./run/gate.pid"
mode = "release"
timezone = "Local"
shutdownMaxWaitTime = "30s"

[cluster.gate]
id = ""                 # empty: generated
name = "gate"
addr = ":0"
expose = false
timeout = "3s"          # v2.4.1 key
dispatch = "random"
[cluster.gate.metadata]
region = "eu"

[packet]
byteOrder = "big"
routeBytes = 2
seqBytes = 2
bufferBytes = 5000
heartbeatTime = false

[network.tcp.server]
addr = ":3553"
certFile = ""
keyFile = ""
maxConnNum = 5000
heartbeatInterval = "10s"
heartbeatMechanism = "resp"
authorizeTimeout = "0s"

[network.ws.server]
addr = ":3554"
path = "/"
maxConnNum = 5000
origins = ["*"]
heartbeatInterval = "10s"
heartbeatMechanism = "resp"
authorizeTimeout = "0s"

[log]
level = "info"
terminals = ["console"]
"#;

    const EXAMPLE_YAML: &str = r#"
pid: ./run/gate.pid
mode: release
timezone: Local
shutdownMaxWaitTime: 30s
cluster:
  gate:
    id: ""
    name: gate
    addr: ":0"
    expose: false
    timeout: 3s
    dispatch: random
    metadata:
      region: eu
packet:
  byteOrder: big
  routeBytes: 2
  seqBytes: 2
  bufferBytes: 5000
  heartbeatTime: false
network:
  tcp:
    server:
      addr: ":3553"
      certFile: ""
      keyFile: ""
      maxConnNum: 5000
      heartbeatInterval: 10s
      heartbeatMechanism: resp
      authorizeTimeout: 0s
  ws:
    server:
      addr: ":3554"
      path: /
      maxConnNum: 5000
      origins: ["*"]
      heartbeatInterval: 10s
      heartbeatMechanism: resp
      authorizeTimeout: 0s
log:
  level: info
  terminals: [console]
"#;

    const EXAMPLE_JSON: &str = r#"{
  "pid": "./run/gate.pid",
  "mode": "release",
  "timezone": "Local",
  "shutdownMaxWaitTime": "30s",
  "cluster": {"gate": {"id": "", "name": "gate", "addr": ":0", "expose": false,
              "timeout": "3s", "dispatch": "random", "metadata": {"region": "eu"}}},
  "packet": {"byteOrder": "big", "routeBytes": 2, "seqBytes": 2, "bufferBytes": 5000,
             "heartbeatTime": false},
  "network": {
    "tcp": {"server": {"addr": ":3553", "certFile": "", "keyFile": "", "maxConnNum": 5000,
            "heartbeatInterval": "10s", "heartbeatMechanism": "resp", "authorizeTimeout": "0s"}},
    "ws": {"server": {"addr": ":3554", "path": "/", "maxConnNum": 5000, "origins": ["*"],
           "heartbeatInterval": "10s", "heartbeatMechanism": "resp", "authorizeTimeout": "0s"}}
  },
  "log": {"level": "info", "terminals": ["console"]}
}"#;

    const EXAMPLE_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- client-protocol.md §5.10 as XML -->
<etc>
  <pid>./run/gate.pid</pid>
  <mode>release</mode>
  <timezone>Local</timezone>
  <shutdownMaxWaitTime>30s</shutdownMaxWaitTime>
  <cluster>
    <gate>
      <id></id>
      <name>gate</name>
      <addr>:0</addr>
      <expose>false</expose>
      <timeout>3s</timeout>
      <dispatch>random</dispatch>
      <metadata><region>eu</region></metadata>
    </gate>
  </cluster>
  <packet>
    <byteOrder>big</byteOrder>
    <routeBytes>2</routeBytes>
    <seqBytes>2</seqBytes>
    <bufferBytes>5000</bufferBytes>
    <heartbeatTime>false</heartbeatTime>
  </packet>
  <network>
    <tcp>
      <server>
        <addr>:3553</addr>
        <certFile/>
        <keyFile></keyFile>
        <maxConnNum>5000</maxConnNum>
        <heartbeatInterval>10s</heartbeatInterval>
        <heartbeatMechanism>resp</heartbeatMechanism>
        <authorizeTimeout>0s</authorizeTimeout>
      </server>
    </tcp>
    <ws>
      <server>
        <addr>:3554</addr>
        <path>/</path>
        <maxConnNum>5000</maxConnNum>
        <origins>*</origins>
        <heartbeatInterval>10s</heartbeatInterval>
        <heartbeatMechanism>resp</heartbeatMechanism>
        <authorizeTimeout>0s</authorizeTimeout>
      </server>
    </ws>
  </network>
  <log>
    <level>info</level>
    <terminals>console</terminals>
  </log>
</etc>
"#;

    #[test]
    fn spec_example_toml() {
        let c = load_one("etc.toml", EXAMPLE_TOML).unwrap();
        assert_eq!(c.pid, Some(PathBuf::from("./run/gate.pid")));
        assert_eq!(c.mode, Mode::Release);
        assert_eq!(c.timezone, "Local");
        assert_eq!(c.shutdown_max_wait, 30 * S);

        assert_eq!(c.gate.id.len(), 36);
        assert_eq!(&c.gate.id[14..15], "1", "a version-1 UUID: {}", c.gate.id);
        assert_eq!(c.gate.name, "gate");
        assert_eq!(c.gate.addr, ":0");
        assert!(!c.gate.expose);
        assert_eq!(c.gate.timeout, 3 * S);
        assert_eq!(c.gate.dispatch, "random");
        assert_eq!(
            c.gate.metadata,
            BTreeMap::from([("region".to_string(), "eu".to_string())])
        );

        assert_eq!(c.packet, PacketConfig::default());

        let tcp = c.tcp.unwrap();
        assert_eq!(tcp.addr, ":3553");
        assert!(!tcp.tls());
        assert_eq!(tcp.max_conn_num, 5000);
        assert_eq!(tcp.heartbeat_interval, 10 * S);
        assert_eq!(tcp.heartbeat_mechanism, HeartbeatMechanism::Resp);
        assert_eq!(tcp.authorize_timeout, Duration::ZERO);
        assert_eq!(tcp.write_queue_size, 4096);
        assert_eq!(tcp.write_timeout, Duration::ZERO);

        let ws = c.ws.unwrap();
        assert_eq!(ws.server.addr, ":3554");
        assert_eq!(ws.path, "/");
        assert_eq!(ws.origins, vec!["*"]);
        assert_eq!(ws.handshake_timeout, 10 * S);
        assert_eq!(ws.server.write_queue_size, 4096);

        assert_eq!(c.log.level, LogLevel::Info);
        assert_eq!(c.log.console, Some(None));
        assert_eq!(c.log.file, None);
    }

    #[test]
    fn same_example_in_every_format_gives_the_same_config() {
        let toml = normalized(load_one("etc.toml", EXAMPLE_TOML).unwrap());
        for (name, text) in [
            ("etc.yaml", EXAMPLE_YAML),
            ("etc.yml", EXAMPLE_YAML),
            ("etc.json", EXAMPLE_JSON),
            ("etc.xml", EXAMPLE_XML),
            ("etc.TOML", EXAMPLE_TOML),
        ] {
            let other = normalized(load_one(name, text).unwrap_or_else(|e| panic!("{name}: {e}")));
            assert_eq!(other, toml, "{name}");
        }
    }

    #[test]
    fn load_bytes_matches_load_of_the_same_file() {
        for (name, text) in [
            ("etc.toml", EXAMPLE_TOML),
            ("etc.yaml", EXAMPLE_YAML),
            ("etc.json", EXAMPLE_JSON),
            ("etc.xml", EXAMPLE_XML),
            ("other.toml", EXAMPLE_TOML),
            ("etc.toml", "pid = 1 = 2"),
            ("etc.json", "{\"packet\": {\"routeBytes\": 3}}"),
            ("etc.txt", "x"),
        ] {
            let from_file = load_one(name, text).map(normalized);
            let from_bytes = load_bytes(Path::new(name), text.as_bytes(), None).map(normalized);
            match (from_file, from_bytes) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{name}"),
                // The file's error names its temp path; the variant and key must agree.
                (Err(a), Err(b)) => {
                    assert_eq!(a.key(), b.key(), "{name}");
                    assert_eq!(
                        std::mem::discriminant(&a),
                        std::mem::discriminant(&b),
                        "{name}"
                    );
                }
                (a, b) => panic!("{name}: load {a:?}, load_bytes {b:?}"),
            }
        }
    }

    #[test]
    fn defaults_when_nothing_is_there() {
        let dir = TempDir::new("missing");
        let missing = normalized(load(&dir.0.join("nope"), None).unwrap());
        let empty_dir = normalized(load(&dir.0, None).unwrap());
        let empty_file = normalized(load_one("etc.toml", "\n  \n").unwrap());
        assert_eq!(missing, empty_dir);
        assert_eq!(missing, empty_file);

        let c = load(&dir.0.join("nope"), None).unwrap();
        assert_eq!(c.pid, None);
        assert_eq!(c.mode, Mode::Debug);
        assert_eq!(c.timezone, "Local");
        assert_eq!(c.shutdown_max_wait, Duration::ZERO);
        assert!(!c.gate.id.is_empty());
        assert_eq!(c.gate.name, "gate");
        assert_eq!(c.gate.addr, ":0");
        assert_eq!(c.gate.timeout, 3 * S);
        assert_eq!(c.gate.dispatch, "random");
        assert!(c.gate.metadata.is_empty());
        assert_eq!(c.packet, PacketConfig::default());
        assert!(c.tcp.is_some_and(|t| t.addr == ":3553") && c.ws.is_none());
        assert_eq!(c.log.level, LogLevel::Info);
        assert_eq!(
            (c.log.console.clone(), c.log.file.clone()),
            (Some(None), Some(None))
        );
        assert_eq!(c.log.console_format, LogFormat::Text);
        assert_eq!(c.log.file_path, PathBuf::from("./log/due.log"));
        assert_eq!(c.log.file_format, LogFormat::Text);
        assert_eq!(c.log.file_max_age, 7 * 24 * 3600 * S);
        assert_eq!(c.log.file_max_size, 500 << 20);
        assert_eq!(c.log.file_rotate, Rotate::None);
        assert!(!c.log.file_compress);
        let g = &c.gatehouse;
        assert_eq!((g.shards, g.pin, g.max_inbound_frame), (0, true, 0));
        assert!(!g.lenient_inbound && !g.ws_close_frame && !g.ws_le_ts_heartbeat);
        assert_eq!((g.io_memory, g.listen_backlog), (64 << 10, 4096));
    }

    #[test]
    fn generated_ids_differ() {
        assert_ne!(generate_id(), generate_id());
    }

    #[test]
    fn kcp_server_keys_defaults_and_refusals() {
        use crate::kcpnet::Params;
        // Alone, it is the gate's only client server (no default TCP server beside it).
        let c = from_toml("[network.kcp.server]\n").unwrap();
        assert!(c.tcp.is_none() && c.ws.is_none());
        let k = c.kcp.unwrap();
        assert_eq!(k.server.addr, ":3553");
        assert_eq!(k.server.max_conn_num, 5000);
        assert_eq!(k.server.heartbeat_interval, 10 * S);
        assert_eq!(k.params, Params::default());
        // The spec's example with everything set (§1.1).
        let c = from_toml(
            "[network.tcp.server]\n[network.kcp.server]\naddr = \":3554\"\nmaxConnNum = 7\n\
             heartbeatMechanism = \"tick\"\nauthorizeTimeout = \"3s\"\nmtu = 500\n\
             noDelay = [1, 10, 2, 1]\nackNoDelay = true\nwriteDelay = true\n\
             windowSize = [128, 64]\nreadBuffer = \"4MB\"\nwriteBuffer = 4096",
        )
        .unwrap();
        assert!(c.tcp.is_some());
        let k = c.kcp.unwrap();
        assert_eq!(
            (k.server.addr.as_str(), k.server.max_conn_num),
            (":3554", 7)
        );
        assert_eq!(k.server.heartbeat_mechanism, HeartbeatMechanism::Tick);
        assert_eq!(k.server.authorize_timeout, 3 * S);
        assert_eq!(
            k.params,
            Params {
                mtu: 500,
                nodelay: true,
                interval: 10,
                resend: 2,
                no_cwnd: true,
                snd_wnd: 128,
                rcv_wnd: 64,
                ack_nodelay: true,
                write_delay: true,
                ..Params::default()
            }
        );
        // kcp-go's rules: negative noDelay elements keep the default, the interval is clamped,
        // window sizes ≤ 0 keep the default.
        let k = from_toml("[network.kcp.server]\nnoDelay = [-1, 1, -1, -1]\nwindowSize = [0, 256]")
            .unwrap()
            .kcp
            .unwrap();
        assert_eq!(
            k.params,
            Params {
                interval: 10,
                rcv_wnd: 256,
                ..Params::default()
            }
        );
        for (toml, key) in [
            ("maxConnNum = 0", "maxConnNum"),
            ("maxConnNum = -1", "maxConnNum"),
            ("mtu = 1501", "mtu"),
            ("mtu = 49", "mtu"),
            ("noDelay = [1, 10, 2]", "noDelay"),
            ("noDelay = \"1,10,2,1\"", "noDelay"),
            ("windowSize = [128]", "windowSize"),
            ("readBuffer = \"lots\"", "readBuffer"),
            ("heartbeatMechanism = \"ping\"", "heartbeatMechanism"),
            ("writeQueueSize = 10", "writeQueueSize"),
            ("certFile = \"c\"", "certFile"),
        ] {
            let r = from_toml(&format!("[network.kcp.server]\n{toml}"));
            assert_eq!(
                err_key(r),
                format!("etc.network.kcp.server.{key}"),
                "{toml}"
            );
        }
        // gatehouse's own KCP knobs live in [gatehouse].
        let k = from_toml(
            "[network.kcp.server]\n[gatehouse]\nkcpLinger = \"0s\"\nkcpClosedMemory = \"5s\"",
        )
        .unwrap()
        .kcp
        .unwrap();
        assert_eq!((k.params.linger_ms, k.params.closed_ms), (0, 5_000));
        assert_eq!(
            err_key(from_toml("[gatehouse]\nkcpLinger = \"-1s\"")),
            "etc.gatehouse.kcpLinger"
        );
        // The client side is not ours.
        from_toml("[network.kcp.client]\naddr = \"127.0.0.1:3553\"").unwrap();
    }

    #[test]
    fn server_section_defaults_and_presence() {
        let c = from_toml("[network.tcp.server]\n").unwrap();
        let tcp = c.tcp.unwrap();
        assert_eq!(tcp.addr, ":3553");
        assert_eq!(tcp.max_conn_num, 5000);
        assert_eq!(tcp.heartbeat_interval, 10 * S);
        assert_eq!(tcp.heartbeat_mechanism, HeartbeatMechanism::Resp);
        assert_eq!(tcp.write_queue_size, 4096);
        assert!(c.ws.is_none());

        let c = from_toml("[network.ws.server]\n[network.tcp.client]\naddr = \"x\"").unwrap();
        assert!(c.tcp.is_none());
        let ws = c.ws.unwrap();
        assert_eq!(ws.path, "/");
        assert_eq!(ws.origins, vec!["*"]);
        assert_eq!(ws.handshake_timeout, 10 * S);
        assert_eq!(ws.server.addr, ":3553");

        // Empty addr → default (v2.5.8); maxConnNum ≤ 0 → 5000 (v2.5.8); TLS when both files.
        let c = from_toml(
            "[network.tcp.server]\naddr = \"\"\nmaxConnNum = -1\ncertFile = \"c\"\nkeyFile = \"k\"\n\
             heartbeatMechanism = \"tick\"\nauthorizeTimeout = \"5s\"",
        )
        .unwrap();
        let tcp = c.tcp.unwrap();
        assert_eq!((tcp.addr.as_str(), tcp.max_conn_num), (":3553", 5000));
        assert!(tcp.tls());
        assert_eq!(tcp.heartbeat_mechanism, HeartbeatMechanism::Tick);
        assert_eq!(tcp.authorize_timeout, 5 * S);
    }

    #[test]
    fn origins_quirks() {
        let ws =
            |body: &str| from_toml(&format!("[network.ws.server]\n{body}")).map(|c| c.ws.unwrap());
        assert_eq!(ws("origins = []").unwrap().origins, Vec::<String>::new());
        // due quirk: a scalar string is an empty list (every origin rejected).
        assert_eq!(ws("origins = \"*\"").unwrap().origins, Vec::<String>::new());
        assert_eq!(
            ws("origins = [\"https://a.example\", \"*.b.example\"]")
                .unwrap()
                .origins,
            vec!["https://a.example", "*.b.example"]
        );
        assert_eq!(err_key(ws("path = \"\"")), "etc.network.ws.server.path");
    }

    #[test]
    fn durations_in_the_config() {
        let tcp = |v: &str| {
            from_toml(&format!("[network.tcp.server]\nheartbeatInterval = {v}"))
                .map(|c| c.tcp.unwrap().heartbeat_interval)
        };
        assert_eq!(tcp("\"10s\"").unwrap(), 10 * S);
        assert_eq!(tcp("\"1m30s\"").unwrap(), 90 * S);
        assert_eq!(tcp("\"1.5h\"").unwrap(), 5400 * S);
        assert_eq!(tcp("\"7d\"").unwrap(), 7 * 24 * 3600 * S);
        assert_eq!(tcp("\"300ms\"").unwrap(), Duration::from_millis(300));
        assert_eq!(tcp("\"0\"").unwrap(), Duration::ZERO);
        // due quirk kept: a bare integer is nanoseconds; 0 disables (due's benchmark uses it).
        assert_eq!(tcp("10").unwrap(), Duration::from_nanos(10));
        assert_eq!(tcp("0").unwrap(), Duration::ZERO);

        let e = tcp("\"10\"").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"etc.network.tcp.server.heartbeatInterval: cannot parse "10" as a duration (use a unit, e.g. "10s")"#
        );
        assert_eq!(
            err_key(tcp("\"abc\"")),
            "etc.network.tcp.server.heartbeatInterval"
        );
        assert_eq!(
            err_key(tcp("true")),
            "etc.network.tcp.server.heartbeatInterval"
        );
        assert_eq!(
            err_key(tcp("\"-1s\"")),
            "etc.network.tcp.server.heartbeatInterval"
        );
        assert_eq!(
            err_key(from_toml("[network.ws.server]\nauthorizeTimeout = \"-1s\"")),
            "etc.network.ws.server.authorizeTimeout"
        );
        assert_eq!(
            err_key(from_toml("shutdownMaxWaitTime = \"soon\"")),
            "etc.shutdownMaxWaitTime"
        );
        // Negative shutdown wait means "no limit", like 0 (due only acts on > 0).
        let c = from_toml("shutdownMaxWaitTime = \"-1s\"").unwrap();
        assert_eq!(c.shutdown_max_wait, Duration::ZERO);
    }

    #[test]
    fn heartbeat_mechanism_is_exact() {
        for bad in ["\"Resp\"", "\"ping\"", "\"\""] {
            let r = from_toml(&format!("[network.tcp.server]\nheartbeatMechanism = {bad}"));
            assert_eq!(
                err_key(r),
                "etc.network.tcp.server.heartbeatMechanism",
                "{bad}"
            );
        }
    }

    #[test]
    fn packet_validation() {
        let p = |body: &str| from_toml(&format!("[packet]\n{body}"));
        assert_eq!(err_key(p("routeBytes = 3")), "etc.packet.routeBytes");
        assert_eq!(err_key(p("routeBytes = 0")), "etc.packet.routeBytes");
        assert_eq!(err_key(p("seqBytes = 3")), "etc.packet.seqBytes");
        assert_eq!(err_key(p("bufferBytes = -1")), "etc.packet.bufferBytes");
        assert_eq!(
            err_key(p("bufferBytes = 4294967296")),
            "etc.packet.bufferBytes"
        );
        assert_eq!(err_key(p("routeBytes = \"two\"")), "etc.packet.routeBytes");
        assert!(p("routeBytes = 3")
            .unwrap_err()
            .to_string()
            .contains("use 1, 2 or 4"));

        let c = p("byteOrder = \"LITTLE\"\nrouteBytes = 4\nseqBytes = 0\nbufferBytes = 0\nheartbeatTime = true")
            .unwrap();
        assert_eq!(
            c.packet,
            PacketConfig {
                byte_order: ByteOrder::Little,
                route_bytes: 4,
                seq_bytes: 0,
                buffer_bytes: 0,
                heartbeat_time: true,
            }
        );
        // Any other byte order string silently means big (due rule); strings parse as ints.
        let c = p("byteOrder = \"middle\"\nrouteBytes = \"1\"\nseqBytes = \"4\"").unwrap();
        assert_eq!(c.packet.byte_order, ByteOrder::Big);
        assert_eq!((c.packet.route_bytes, c.packet.seq_bytes), (1, 4));
    }

    #[test]
    fn unknown_keys_in_owned_sections() {
        let e = from_toml("[network.tcp.server]\nheartbeatIntervall = \"10s\"").unwrap_err();
        assert_eq!(e.key(), Some("etc.network.tcp.server.heartbeatIntervall"));
        assert!(e.to_string().contains("unknown key"), "{e}");
        assert!(e.to_string().contains("heartbeatInterval,"), "{e}");

        for (toml, key) in [
            ("[network.ws.server]\nfoo = 1", "etc.network.ws.server.foo"),
            ("[cluster.gate]\nweight = 1", "etc.cluster.gate.weight"),
            ("[packet]\nbyteorder = \"big\"", "etc.packet.byteorder"),
            ("[gatehouse]\nshard = 2", "etc.gatehouse.shard"),
            // handshakeTimeout belongs to WS only.
            (
                "[network.tcp.server]\nhandshakeTimeout = \"1s\"",
                "etc.network.tcp.server.handshakeTimeout",
            ),
        ] {
            assert_eq!(err_key(from_toml(toml)), key, "{toml}");
        }

        // Sections of other components, and unknown top-level keys, are none of our business.
        from_toml(
            r#"
            unknownTopLevel = 1
            [cluster.node]
            codec = "proto"
            [cluster.gate.metadata]
            anything = "goes"
            [network.tcp.client]
            addr = "127.0.0.1:3553"
            [network.ws.client]
            url = "ws://x"
            [locate.redis]
            addrs = ["127.0.0.1:6379"]
            [registry.etcd]
            addrs = ["127.0.0.1:2379"]
            [transport.grpc.server]
            addr = ":0"
            [log]
            stackLevel = "error"
            timeFormat = "2006/01/02 15:04:05.000000"
            callSkip = 2
            callFullPath = true
            somethingNew = 1
            [log.aliyun]
            endpoint = "x"
            "#,
        )
        .unwrap();
    }

    #[test]
    fn v258_keys_are_accepted() {
        let c = from_toml(
            r#"
            [cluster.gate]
            name = ""
            addr = ""
            dispatch = ""
            timeout = "1s"
            callTimeout = "5s"
            connNum = 5
            dialTimeout = "3s"
            dialRetryTimes = 3
            writeTimeout = "0s"
            writeQueueSize = 2048
            faultRecoveryTime = "5s"
            [network.tcp.server]
            writeTimeout = "2s"
            writeQueueSize = 512
            [network.ws.server]
            writeTimeout = "1s"
            writeQueueSize = 1024
            handshakeTimeout = "3s"
            "#,
        )
        .unwrap();
        // callTimeout wins over timeout; empty name/addr/dispatch fall back (v2.5.8).
        assert_eq!(c.gate.timeout, 5 * S);
        assert_eq!(
            (
                c.gate.name.as_str(),
                c.gate.addr.as_str(),
                c.gate.dispatch.as_str()
            ),
            ("gate", ":0", "random")
        );
        let tcp = c.tcp.unwrap();
        assert_eq!((tcp.write_timeout, tcp.write_queue_size), (2 * S, 512));
        let ws = c.ws.unwrap();
        assert_eq!(
            (ws.server.write_timeout, ws.server.write_queue_size),
            (S, 1024)
        );
        assert_eq!(ws.handshake_timeout, 3 * S);

        // The accepted keys are still type-checked.
        assert_eq!(
            err_key(from_toml("[cluster.gate]\nconnNum = \"many\"")),
            "etc.cluster.gate.connNum"
        );
        assert_eq!(
            err_key(from_toml("[cluster.gate]\nfaultRecoveryTime = \"5\"")),
            "etc.cluster.gate.faultRecoveryTime"
        );
    }

    #[test]
    fn gate_timeout_rules() {
        let t = |body: &str| from_toml(&format!("[cluster.gate]\n{body}")).map(|c| c.gate.timeout);
        assert_eq!(t("timeout = \"10s\"").unwrap(), 10 * S);
        assert_eq!(t("timeout = \"0s\"").unwrap(), 3 * S);
        assert_eq!(t("timeout = \"-5s\"").unwrap(), 3 * S);
        assert_eq!(t("callTimeout = \"0s\"\ntimeout = \"10s\"").unwrap(), 3 * S);
        assert_eq!(err_key(t("timeout = \"3\"")), "etc.cluster.gate.timeout");

        let c = from_toml("[cluster.gate]\nid = \"gate-1\"\nexpose = \"true\"\n[cluster.gate.metadata]\nweight = 3")
            .unwrap();
        assert_eq!(c.gate.id, "gate-1");
        assert!(c.gate.expose);
        assert_eq!(c.gate.metadata["weight"], "3");
        assert_eq!(
            err_key(from_toml("[cluster.gate.metadata.nested]\na = \"b\"")),
            "etc.cluster.gate.metadata.nested"
        );
        assert_eq!(
            err_key(from_toml("[cluster]\ngate = 5")),
            "etc.cluster.gate"
        );
    }

    #[test]
    fn mode_and_override() {
        assert_eq!(from_toml("").unwrap().mode, Mode::Debug);
        assert_eq!(from_toml("mode = \"\"").unwrap().mode, Mode::Debug);
        assert_eq!(from_toml("mode = \"test\"").unwrap().mode, Mode::Test);
        assert_eq!(err_key(from_toml("mode = \"prod\"")), "etc.mode");

        let dir = TempDir::new("mode");
        let path = dir.write("etc.toml", "mode = \"release\"");
        assert_eq!(load(&path, None).unwrap().mode, Mode::Release);
        assert_eq!(load(&path, Some("test")).unwrap().mode, Mode::Test);
        assert_eq!(load(&path, Some("")).unwrap().mode, Mode::Debug);
        let e = load(&path, Some("fast")).unwrap_err();
        assert_eq!(e.key(), Some("etc.mode"));
        assert!(e.to_string().contains("DUE_MODE"), "{e}");
        // The override also covers an invalid file value.
        let bad = dir.write("bad/etc.toml", "mode = \"prod\"");
        assert_eq!(load(&bad, Some("debug")).unwrap().mode, Mode::Debug);
        assert_eq!(load(&bad, None).unwrap_err().key(), Some("etc.mode"));
    }

    #[test]
    fn log_section() {
        let c = from_toml(
            r#"
            [log]
            level = "warn"
            terminals = ["file"]
            [log.console]
            format = "json"
            [log.file]
            path = "/var/log/gate.log"
            format = "json"
            maxAge = "1d12h"
            maxSize = "100M"
            rotate = "day"
            compress = true
            "#,
        )
        .unwrap();
        let l = c.log;
        assert_eq!(l.level, LogLevel::Warn);
        assert_eq!((l.console, l.file), (None, Some(None)));
        assert_eq!(
            (l.console_format, l.file_format),
            (LogFormat::Json, LogFormat::Json)
        );
        assert_eq!(l.file_path, PathBuf::from("/var/log/gate.log"));
        assert_eq!(l.file_max_age, 36 * 3600 * S);
        assert_eq!(l.file_max_size, 100 << 20);
        assert_eq!(l.file_rotate, Rotate::Day);
        assert!(l.file_compress);

        // Table form restricts levels per terminal; an integer size is bytes.
        let c = from_toml(
            "[log]\n[log.terminals]\nconsole = [\"debug\", \"ERROR\"]\nfile = []\n[log.file]\nmaxSize = 1048576",
        )
        .unwrap();
        assert_eq!(
            c.log.console,
            Some(Some(vec![LogLevel::Debug, LogLevel::Error]))
        );
        assert_eq!(c.log.file, Some(None));
        assert_eq!(c.log.file_max_size, 1 << 20);

        // due quirk: a scalar instead of an array is an empty list: no terminal at all.
        let c = from_toml("[log]\nterminals = \"console\"").unwrap();
        assert_eq!((c.log.console, c.log.file), (None, None));

        for (toml, key) in [
            ("[log]\nlevel = \"verbose\"", "etc.log.level"),
            (
                "[log]\nterminals = [\"console\", \"aliyun\"]",
                "etc.log.terminals",
            ),
            ("[log.terminals]\ntencent = []", "etc.log.terminals"),
            (
                "[log.terminals]\nconsole = [\"loud\"]",
                "etc.log.terminals.console",
            ),
            ("[log.console]\nformat = \"xml\"", "etc.log.console.format"),
            ("[log.file]\nrotate = \"minute\"", "etc.log.file.rotate"),
            ("[log.file]\nmaxSize = \"lots\"", "etc.log.file.maxSize"),
            ("[log.file]\nmaxAge = \"7\"", "etc.log.file.maxAge"),
        ] {
            assert_eq!(err_key(from_toml(toml)), key, "{toml}");
        }
    }

    #[test]
    fn gatehouse_section() {
        let c = from_toml(
            r#"
            [gatehouse]
            shards = 2
            pin = false
            maxInboundFrame = 65536
            lenientInbound = true
            wsCloseFrame = true
            wsLittleEndianTsHeartbeat = true
            ioMemory = "1M"
            listenBacklog = 128
            "#,
        )
        .unwrap();
        let g = c.gatehouse;
        assert_eq!((g.shards, g.pin, g.max_inbound_frame), (2, false, 65536));
        assert!(g.lenient_inbound && g.ws_close_frame && g.ws_le_ts_heartbeat);
        assert_eq!((g.io_memory, g.listen_backlog), (1 << 20, 128));

        assert_eq!(
            from_toml("[gatehouse]\nioMemory = 4096")
                .unwrap()
                .gatehouse
                .io_memory,
            4096
        );
        for (toml, key) in [
            ("[gatehouse]\nshards = -1", "etc.gatehouse.shards"),
            (
                "[gatehouse]\nmaxInboundFrame = -1",
                "etc.gatehouse.maxInboundFrame",
            ),
            (
                "[gatehouse]\nmaxInboundFrame = 4294967296",
                "etc.gatehouse.maxInboundFrame",
            ),
            (
                "[gatehouse]\nlistenBacklog = -1",
                "etc.gatehouse.listenBacklog",
            ),
            ("[gatehouse]\nioMemory = \"big\"", "etc.gatehouse.ioMemory"),
            ("[gatehouse]\npin = [true]", "etc.gatehouse.pin"),
            (
                "[gatehouse]\nmetricsAddr = \"9300\"",
                "etc.gatehouse.metricsAddr",
            ),
            (
                "[gatehouse]\nmetricsAddr = 9300",
                "etc.gatehouse.metricsAddr",
            ),
        ] {
            assert_eq!(err_key(from_toml(toml)), key, "{toml}");
        }
    }

    #[test]
    fn limits_keys() {
        let off = from_toml("").unwrap().gatehouse.limits;
        assert_eq!(off, LimitsConfig::default());
        assert_eq!(off.packet_action, RateAction::Drop);
        let c = from_toml(
            r#"
            [gatehouse]
            packetRate = 50
            packetRateAction = "close"
            ipAcceptRate = 5
            ipAcceptBurst = 20
            ipMaxConns = 3
            "#,
        )
        .unwrap()
        .gatehouse
        .limits;
        assert_eq!(
            c,
            LimitsConfig {
                packet_rate: 50,
                packet_burst: 50,
                packet_action: RateAction::Close,
                ip_accept_rate: 5,
                ip_accept_burst: 20,
                ip_max_conns: 3,
            }
        );
        let json =
            r#"{"gatehouse": {"packetRate": 10, "packetBurst": 1, "packetRateAction": "drop"}}"#;
        let j = load_one("etc.json", json).unwrap().gatehouse.limits;
        assert_eq!((j.packet_rate, j.packet_burst), (10, 1));
        for (toml, key) in [
            ("packetRate = -1", "packetRate"),
            ("packetRate = 1000001", "packetRate"),
            ("packetRate = \"fast\"", "packetRate"),
            ("packetRate = 10\npacketBurst = 0", "packetBurst"),
            ("packetRate = 10\npacketBurst = -5", "packetBurst"),
            ("packetBurst = 10", "packetBurst"),
            ("packetRateAction = \"kick\"", "packetRateAction"),
            ("packetRateAction = 1", "packetRateAction"),
            ("ipAcceptRate = -3", "ipAcceptRate"),
            ("ipAcceptBurst = 4", "ipAcceptBurst"),
            ("ipAcceptRate = 1\nipAcceptBurst = 0", "ipAcceptBurst"),
            ("ipMaxConns = -1", "ipMaxConns"),
            ("ipMaxConns = 4294967296", "ipMaxConns"),
        ] {
            let toml = format!("[gatehouse]\n{toml}");
            assert_eq!(
                err_key(from_toml(&toml)),
                format!("etc.gatehouse.{key}"),
                "{toml}"
            );
        }
    }

    fn c_default_single_login() -> SingleLogin {
        from_toml("").unwrap().gatehouse.single_login
    }

    #[test]
    fn proxy_protocol_keys() {
        use crate::proxy_header::{ProxyMode, ProxyPolicy};
        // Off by default, with nothing trusted.
        assert_eq!(
            from_toml("").unwrap().gatehouse.proxy,
            ProxyPolicy::default()
        );
        let c = from_toml(
            r#"
            [gatehouse]
            proxyProtocol = "V2"
            proxyTrusted = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1", " 172.16.5.9/12 "]
            "#,
        )
        .unwrap();
        let p = c.gatehouse.proxy;
        assert_eq!(p.mode, ProxyMode::V2);
        let nets: Vec<String> = p.trusted.iter().map(|n| n.to_string()).collect();
        // Bare addresses are /32 and /128; host bits of a CIDR are dropped.
        assert_eq!(
            nets,
            [
                "10.0.0.0/8",
                "192.0.2.7/32",
                "2001:db8::/32",
                "::1/128",
                "172.16.0.0/12"
            ]
        );
        for (mode, want) in [
            ("off", ProxyMode::Off),
            ("v1", ProxyMode::V1),
            ("any", ProxyMode::Any),
        ] {
            let c = from_toml(&format!(
                "[gatehouse]\nproxyProtocol = {mode:?}\nproxyTrusted = [\"127.0.0.1\"]"
            ))
            .unwrap();
            assert_eq!(c.gatehouse.proxy.mode, want);
        }
        // A trusted list without a mode is kept (and ignored): switching off is one key.
        let off = from_toml("[gatehouse]\nproxyTrusted = [\"127.0.0.1\"]").unwrap();
        assert!(!off.gatehouse.proxy.enabled());
        // The same keys from JSON.
        let json = load_one(
            "etc.json",
            r#"{"gatehouse": {"proxyProtocol": "v1", "proxyTrusted": ["127.0.0.0/8"]}}"#,
        )
        .unwrap();
        assert_eq!(json.gatehouse.proxy.mode, ProxyMode::V1);
        assert!(json.gatehouse.proxy.trusts([127, 0, 0, 9].into()));

        for (toml, key) in [
            (
                "[gatehouse]\nproxyProtocol = \"on\"",
                "etc.gatehouse.proxyProtocol",
            ),
            (
                "[gatehouse]\nproxyProtocol = 2",
                "etc.gatehouse.proxyProtocol",
            ),
            (
                "[gatehouse]\nproxyProtocol = [\"v1\"]",
                "etc.gatehouse.proxyProtocol",
            ),
            // On, with no one to trust: refused rather than trusting everyone or no one.
            (
                "[gatehouse]\nproxyProtocol = \"v1\"",
                "etc.gatehouse.proxyTrusted",
            ),
            (
                "[gatehouse]\nproxyProtocol = \"any\"\nproxyTrusted = []",
                "etc.gatehouse.proxyTrusted",
            ),
            (
                "[gatehouse]\nproxyTrusted = [\"10.0.0.0/33\"]",
                "etc.gatehouse.proxyTrusted",
            ),
            (
                "[gatehouse]\nproxyTrusted = [\"10.0.0.1\", \"lb.example\"]",
                "etc.gatehouse.proxyTrusted",
            ),
            (
                "[gatehouse]\nproxyTrusted = \"10.0.0.1\"",
                "etc.gatehouse.proxyTrusted",
            ),
            (
                "[gatehouse]\nproxyTrusted = [[\"10.0.0.1\"]]",
                "etc.gatehouse.proxyTrusted",
            ),
        ] {
            assert_eq!(err_key(from_toml(toml)), key, "{toml}");
        }
        let e = from_toml("[gatehouse]\nproxyTrusted = [\"10.0.0.1\", \"lb.example\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("element 1") && e.contains("lb.example"), "{e}");
    }

    #[test]
    fn control_plane_defaults() {
        let c = from_toml("").unwrap();
        assert_eq!(c.locator, LocatorConfig::Memory);
        assert_eq!(c.registry, RegistryConfig::Static);
        let g = &c.gatehouse;
        assert!(g.nodes.is_empty());
        assert_eq!((g.link_conns, g.publish_v25), (1, false));

        // Other backends' sections select nothing and are not checked.
        let c = from_toml(
            "[locate.etcd]\naddrs = [\"x\"]\nwhatever = 1\n[registry.zookeeper]\nbar = 2",
        )
        .unwrap();
        assert_eq!(c.locator, LocatorConfig::Memory);
        assert_eq!(c.registry, RegistryConfig::Static);
        // An empty [registry.etcd] selects etcd with due's defaults.
        let c = from_toml("[registry.etcd]\n").unwrap();
        assert_eq!(c.registry, RegistryConfig::Etcd(EtcdConfig::default()));
        let RegistryConfig::Etcd(e) = c.registry else {
            unreachable!()
        };
        assert_eq!(e.addrs, ["127.0.0.1:2379"]);
        assert_eq!((e.namespace.as_str(), e.retry_times), ("services", 3));
        assert_eq!(
            (e.dial_timeout, e.timeout, e.retry_interval, e.lease_ttl()),
            (5 * S, 3 * S, 10 * S, 11)
        );

        // An empty section selects the backend with due's defaults.
        let c = from_toml("[locate.redis]\n[registry.consul]\n").unwrap();
        assert_eq!(c.locator, LocatorConfig::Redis(RedisConfig::default()));
        assert_eq!(c.registry, RegistryConfig::Consul(ConsulConfig::default()));
        let LocatorConfig::Redis(r) = c.locator else {
            unreachable!()
        };
        assert_eq!(r.addrs, vec!["127.0.0.1:6379"]);
        assert_eq!(
            (r.db, r.max_retries, r.prefix.as_str()),
            (0, 3, "due:locate")
        );
        assert!(r.username.is_empty() && r.password.is_empty() && !r.tls());
        let RegistryConfig::Consul(k) = c.registry else {
            unreachable!()
        };
        assert_eq!(k.addr, "127.0.0.1:8500");
        assert!(k.health_check && k.heartbeat_check);
        assert_eq!(
            (
                k.health_check_interval,
                k.health_check_timeout,
                k.heartbeat_check_interval,
                k.deregister_critical_service_after
            ),
            (10 * S, 5 * S, 10 * S, 30 * S)
        );
    }

    #[test]
    fn full_redis_and_consul_sections() {
        let c = from_toml(
            r#"
            [locate.redis]
            addrs = ["10.0.0.1:6379", "10.0.0.2:6380", "[fd00::5]:6379"]
            db = 2
            username = "gate"
            password = "secret"
            maxRetries = -1
            prefix = "game"
            certFile = "c.pem"
            keyFile = "k.pem"
            caFile = "ca.pem"
            [registry.consul]
            addr = "consul.local:8500"
            healthCheck = false
            healthCheckInterval = 0
            healthCheckTimeout = "1500ms"
            heartbeatCheck = true
            heartbeatCheckInterval = "4s"
            deregisterCriticalServiceAfter = "2m"
            "#,
        )
        .unwrap();
        assert_eq!(
            c.locator,
            LocatorConfig::Redis(RedisConfig {
                addrs: vec![
                    "10.0.0.1:6379".into(),
                    "10.0.0.2:6380".into(),
                    "[fd00::5]:6379".into()
                ],
                db: 2,
                username: "gate".into(),
                password: "secret".into(),
                max_retries: -1,
                prefix: "game".into(),
                cert_file: "c.pem".into(),
                key_file: "k.pem".into(),
                ca_file: "ca.pem".into(),
            })
        );
        let LocatorConfig::Redis(r) = &c.locator else {
            unreachable!()
        };
        assert!(r.tls());
        assert_eq!(
            c.registry,
            RegistryConfig::Consul(ConsulConfig {
                addr: "consul.local:8500".into(),
                health_check: false,
                // A disabled check may have a zero interval.
                health_check_interval: Duration::ZERO,
                health_check_timeout: Duration::from_millis(1500),
                heartbeat_check: true,
                heartbeat_check_interval: 4 * S,
                deregister_critical_service_after: 120 * S,
            })
        );

        // Integers (and integer strings) are seconds; an empty list / addr means the default.
        let c = from_toml(
            "[locate.redis]\naddrs = []\nprefix = \"\"\n[registry.consul]\naddr = \"\"\n\
             healthCheckInterval = 3\nheartbeatCheckInterval = \"7\"",
        )
        .unwrap();
        let LocatorConfig::Redis(r) = c.locator else {
            unreachable!()
        };
        assert_eq!(r.addrs, vec!["127.0.0.1:6379"]);
        assert_eq!(r.prefix, "", "an explicit empty prefix is kept, as in due");
        let RegistryConfig::Consul(k) = c.registry else {
            unreachable!()
        };
        assert_eq!(k.addr, "127.0.0.1:8500");
        assert_eq!(
            (k.health_check_interval, k.heartbeat_check_interval),
            (3 * S, 7 * S)
        );
    }

    #[test]
    fn etcd_section() {
        let c = from_toml(
            r#"
            [registry.etcd]
            addrs = ["10.0.0.1:2379", "http://etcd.local:2379/", "[fd00::5]:2379"]
            dialTimeout = "2s"
            namespace = "svc"
            timeout = "1500ms"
            retryTimes = 0
            retryInterval = "4.9s"
            username = "gate"
            password = "secret"
            "#,
        )
        .unwrap();
        assert_eq!(
            c.registry,
            RegistryConfig::Etcd(EtcdConfig {
                addrs: vec![
                    "10.0.0.1:2379".into(),
                    "etcd.local:2379".into(),
                    "[fd00::5]:2379".into()
                ],
                dial_timeout: 2 * S,
                namespace: "svc".into(),
                timeout: Duration::from_millis(1500),
                retry_times: 0,
                retry_interval: Duration::from_millis(4900),
                username: "gate".into(),
                password: "secret".into(),
            })
        );
        // etcd-registry.md E6: "4.9s" → TTL 5; below 1 s → TTL 1 (etcd grants its minimum).
        let RegistryConfig::Etcd(e) = c.registry else {
            unreachable!()
        };
        assert_eq!(e.lease_ttl(), 5);
        let e = EtcdConfig {
            retry_interval: Duration::from_millis(300),
            ..EtcdConfig::default()
        };
        assert_eq!(e.lease_ttl(), 1);
    }

    #[test]
    fn nacos_section() {
        let c = from_toml(
            r#"
            [registry.nacos]
            urls = ["http://10.0.0.1:8848/nacos", "http://nacos.local:8849/ctx/"]
            clusterName = "C1"
            groupName = "G1"
            timeout = "1500ms"
            namespaceId = "ns"
            cacheDir = "./run/nacos/naming/cache"
            logDir = "./run/nacos/naming/log"
            logLevel = "info"
            username = "gate"
            password = "secret"
            "#,
        )
        .unwrap();
        assert_eq!(
            c.registry,
            RegistryConfig::Nacos(NacosConfig {
                urls: vec![
                    "http://10.0.0.1:8848/nacos".into(),
                    "http://nacos.local:8849/ctx".into()
                ],
                cluster_name: "C1".into(),
                group_name: "G1".into(),
                timeout: Duration::from_millis(1500),
                namespace_id: "ns".into(),
                username: "gate".into(),
                password: "secret".into(),
            })
        );
        for (extra, key) in [
            ("urls = []", "etc.registry.nacos.urls"),
            ("urls = [\"10.0.0.1:8848\"]", "etc.registry.nacos.urls"),
            (
                "urls = [\"https://10.0.0.1:8848/nacos\"]",
                "etc.registry.nacos.urls",
            ),
            (
                "endpoint = \"acm.aliyun.com\"",
                "etc.registry.nacos.endpoint",
            ),
            ("accessKey = \"k\"", "etc.registry.nacos.accessKey"),
            ("openKMS = true", "etc.registry.nacos.openKMS"),
            ("timeout = 0", "etc.registry.nacos.timeout"),
            ("weight = 1", "etc.registry.nacos.weight"),
        ] {
            let text = format!("[registry.nacos]\n{extra}\n");
            assert_eq!(err_key(from_toml(&text)), key, "{extra}");
        }
    }

    #[test]
    fn registry_selection() {
        let both = "[registry.consul]\n[registry.etcd]\n[registry.nacos]\n";
        let e = from_toml(both).unwrap_err();
        assert_eq!(e.key(), Some("etc.gatehouse.registry"));
        assert!(e.to_string().contains("all present"), "{e}");
        for (choice, want) in [
            ("consul", RegistryConfig::Consul(ConsulConfig::default())),
            ("etcd", RegistryConfig::Etcd(EtcdConfig::default())),
            ("nacos", RegistryConfig::Nacos(NacosConfig::default())),
            ("static", RegistryConfig::Static),
        ] {
            let with_both = format!("[gatehouse]\nregistry = \"{choice}\"\n{both}");
            assert_eq!(from_toml(&with_both).unwrap().registry, want, "{choice}");
            // A named backend without its section runs on due's defaults.
            let alone = format!("[gatehouse]\nregistry = \"{choice}\"\n");
            assert_eq!(from_toml(&alone).unwrap().registry, want, "{choice}");
        }
        assert_eq!(
            err_key(from_toml("[gatehouse]\nregistry = \"zookeeper\"")),
            "etc.gatehouse.registry"
        );
        assert_eq!(
            from_toml("[registry.nacos]\n").unwrap().registry,
            RegistryConfig::Nacos(NacosConfig::default())
        );
        // The chosen section is checked; the other one is not read.
        assert_eq!(
            err_key(from_toml(
                "[gatehouse]\nregistry = \"etcd\"\n[registry.etcd]\nfoo = 1\n[registry.consul]\nbar = 2"
            )),
            "etc.registry.etcd.foo"
        );
        assert!(from_toml("[gatehouse]\nregistry = \"consul\"\n[registry.etcd]\nfoo = 1").is_ok());
    }

    #[test]
    fn control_plane_errors_name_the_key() {
        for (toml, key) in [
            ("[registry.etcd]\naddr = \"x:1\"", "etc.registry.etcd.addr"),
            // due: a plain string leaves the client without endpoints (etcd-registry.md E7).
            (
                "[registry.etcd]\naddrs = \"127.0.0.1:2379\"",
                "etc.registry.etcd.addrs",
            ),
            ("[registry.etcd]\naddrs = []", "etc.registry.etcd.addrs"),
            (
                "[registry.etcd]\naddrs = [\"etcd\"]",
                "etc.registry.etcd.addrs",
            ),
            (
                "[registry.etcd]\naddrs = [\"https://etcd:2379\"]",
                "etc.registry.etcd.addrs",
            ),
            (
                "[registry.etcd]\ndialTimeout = \"0s\"",
                "etc.registry.etcd.dialTimeout",
            ),
            (
                "[registry.etcd]\ntimeout = \"-1s\"",
                "etc.registry.etcd.timeout",
            ),
            (
                "[registry.etcd]\nretryInterval = \"soon\"",
                "etc.registry.etcd.retryInterval",
            ),
            (
                "[registry.etcd]\nretryTimes = -1",
                "etc.registry.etcd.retryTimes",
            ),
            (
                "[registry.etcd]\nnamespace = \"a/b\"",
                "etc.registry.etcd.namespace",
            ),
            (
                "[registry.etcd]\nusername = []",
                "etc.registry.etcd.username",
            ),
            ("[locate.redis]\naddr = \"x:1\"", "etc.locate.redis.addr"),
            ("[locate.redis]\nPrefix = \"x\"", "etc.locate.redis.Prefix"),
            (
                "[registry.consul]\nhealthcheck = true",
                "etc.registry.consul.healthcheck",
            ),
            ("[registry.consul]\naddrs = []", "etc.registry.consul.addrs"),
            ("[gatehouse]\nnode = []", "etc.gatehouse.node"),
            (
                "[locate.redis]\naddrs = \"127.0.0.1:6379\"",
                "etc.locate.redis.addrs",
            ),
            (
                "[locate.redis]\naddrs = [\"redis\"]",
                "etc.locate.redis.addrs",
            ),
            (
                "[locate.redis]\naddrs = [\"fd00::5:6379\"]",
                "etc.locate.redis.addrs",
            ),
            ("[locate.redis]\ndb = -1", "etc.locate.redis.db"),
            (
                "[locate.redis]\nmaxRetries = -2",
                "etc.locate.redis.maxRetries",
            ),
            ("[locate]\nredis = 1", "etc.locate.redis"),
            (
                "[registry.consul]\nhealthCheckInterval = 0",
                "etc.registry.consul.healthCheckInterval",
            ),
            (
                "[registry.consul]\nheartbeatCheckInterval = \"0s\"",
                "etc.registry.consul.heartbeatCheckInterval",
            ),
            (
                "[registry.consul]\nhealthCheckTimeout = -1",
                "etc.registry.consul.healthCheckTimeout",
            ),
            (
                "[registry.consul]\nderegisterCriticalServiceAfter = \"soon\"",
                "etc.registry.consul.deregisterCriticalServiceAfter",
            ),
            (
                "[registry.consul]\nhealthCheckInterval = 1.5",
                "etc.registry.consul.healthCheckInterval",
            ),
            ("[gatehouse]\nlinkConns = 0", "etc.gatehouse.linkConns"),
            ("[gatehouse]\nlinkConns = 21", "etc.gatehouse.linkConns"),
            (
                "[gatehouse]\npublishResponseV25 = []",
                "etc.gatehouse.publishResponseV25",
            ),
        ] {
            assert_eq!(err_key(from_toml(toml)), key, "{toml}");
        }
        let e = from_toml("[locate.redis]\nprefx = \"x\"").unwrap_err();
        assert!(
            matches!(&e, ConfigError::UnknownKey { known, .. } if *known == REDIS_KEYS),
            "{e}"
        );
        assert!(e.to_string().contains("prefix"), "{e}");

        assert_eq!(c_default_single_login(), SingleLogin::Off);
        for (value, mode) in [
            ("off", SingleLogin::Off),
            ("gate", SingleLogin::Gate),
            ("cluster", SingleLogin::Cluster),
        ] {
            let c = from_toml(&format!(
                "[locate.redis]\n[gatehouse]\nsingleLogin = {value:?}"
            ))
            .unwrap();
            assert_eq!(c.gatehouse.single_login, mode);
        }
        for toml in [
            "[gatehouse]\nsingleLogin = \"yes\"",
            "[gatehouse]\nsingleLogin = 1",
            "[gatehouse]\nsingleLogin = \"cluster\"",
        ] {
            let e = from_toml(toml).unwrap_err();
            assert_eq!(e.key(), Some("etc.gatehouse.singleLogin"), "{toml}: {e}");
        }
        let e = from_toml("[gatehouse]\nsingleLogin = \"cluster\"").unwrap_err();
        assert!(e.to_string().contains("locate.redis"), "{e}");

        let c = from_toml("[gatehouse]\nlinkConns = 20\npublishResponseV25 = true").unwrap();
        assert_eq!(
            (c.gatehouse.link_conns, c.gatehouse.publish_v25),
            (20, true)
        );
    }

    #[test]
    fn static_nodes() {
        let c = from_toml(
            r#"
            [gatehouse]
            shards = 1
            [[gatehouse.nodes]]
            id = "n1"
            name = "game"
            addr = "10.0.0.5:40123"
            routes = [1, 2, 3]
            stateful = [2, 10]
            authorized = [2, 3]
            internal = [4]
            events = ["connect", 3, "Reconnect", "connect"]
            weight = 5
            state = "busy"
            [[gatehouse.nodes]]
            addr = "[fd00::7]:40000"
            routes = [7]
            "#,
        )
        .unwrap();
        let nodes = &c.gatehouse.nodes;
        assert_eq!(nodes.len(), 2);
        let route = |id, stateful, authorized, internal| RouteInfo {
            id,
            internal,
            stateful,
            authorized,
        };
        assert_eq!(
            nodes[0],
            StaticNode {
                id: "n1".into(),
                name: "game".into(),
                addr: "10.0.0.5:40123".into(),
                routes: vec![
                    route(1, false, false, false),
                    route(2, true, true, false),
                    route(3, false, true, false),
                    route(10, true, false, false),
                    route(4, false, false, true),
                ],
                events: vec![1, 3, 2],
                weight: 5,
                state: InstanceState::Busy,
            }
        );
        assert_eq!(
            nodes[1],
            StaticNode {
                id: "static-1".into(),
                name: "node".into(),
                addr: "[fd00::7]:40000".into(),
                routes: vec![route(7, false, false, false)],
                events: vec![],
                weight: 1,
                state: InstanceState::Work,
            }
        );
        assert_eq!(c.registry, RegistryConfig::Static);
        assert_eq!(c.gatehouse.shards, 1);

        // The same list from JSON and YAML trees.
        let json = load_one(
            "etc.json",
            r#"{"gatehouse": {"nodes": [
                {"id": "n1", "name": "game", "addr": "10.0.0.5:40123", "routes": [1, 2, 3],
                 "stateful": [2, 10], "authorized": [2, 3], "internal": [4],
                 "events": ["connect", 3, "Reconnect", "connect"], "weight": 5, "state": "busy"},
                {"addr": "[fd00::7]:40000", "routes": [7]}]}}"#,
        )
        .unwrap();
        assert_eq!(&json.gatehouse.nodes, nodes);
        let yaml = load_one(
            "etc.yaml",
            "gatehouse:\n  nodes:\n    - id: n1\n      name: game\n      addr: 10.0.0.5:40123\n      \
             routes: [1, 2, 3]\n      stateful: [2, 10]\n      authorized: [2, 3]\n      internal: [4]\n      \
             events: [connect, 3, Reconnect, connect]\n      weight: 5\n      state: busy\n    \
             - addr: \"[fd00::7]:40000\"\n      routes: [7]\n",
        )
        .unwrap();
        assert_eq!(&yaml.gatehouse.nodes, nodes);

        // XML: repeated <nodes> elements; repeated <routes> elements form the lists.
        let xml = load_one(
            "etc.xml",
            "<etc><gatehouse>\
               <nodes><id>n1</id><name>game</name><addr>10.0.0.5:40123</addr>\
                 <routes>1</routes><routes>2</routes><routes>3</routes>\
                 <stateful>2</stateful><stateful>10</stateful>\
                 <authorized>2</authorized><authorized>3</authorized><internal>4</internal>\
                 <events>connect</events><events>3</events><events>Reconnect</events>\
                 <events>connect</events><weight>5</weight><state>busy</state></nodes>\
               <nodes><addr>[fd00::7]:40000</addr><routes>7</routes><events/></nodes>\
             </gatehouse></etc>",
        )
        .unwrap();
        assert_eq!(&xml.gatehouse.nodes, nodes);
        let one = load_one(
            "etc.xml",
            "<etc><gatehouse><nodes><addr>h:1</addr></nodes></gatehouse></etc>",
        )
        .unwrap();
        assert_eq!(one.gatehouse.nodes.len(), 1);
        let none = load_one("etc.xml", "<etc><gatehouse><nodes/></gatehouse></etc>").unwrap();
        assert!(none.gatehouse.nodes.is_empty());

        // An empty id or name means the default; "shut" is a valid state.
        let c = from_toml(
            "[[gatehouse.nodes]]\nid = \"\"\nname = \"\"\naddr = \"h:1\"\nstate = \"shut\"",
        )
        .unwrap();
        let n = &c.gatehouse.nodes[0];
        assert_eq!((n.id.as_str(), n.name.as_str()), ("static-0", "node"));
        assert_eq!(n.state, InstanceState::Shut);
    }

    #[test]
    fn static_node_errors_name_the_key() {
        let e = from_toml("[[gatehouse.nodes]]\nroutes = [1]").unwrap_err();
        assert_eq!(e.key(), Some("etc.gatehouse.nodes[0].addr"));
        assert!(e.to_string().contains("missing"), "{e}");
        assert_eq!(
            err_key(load_one(
                "etc.json",
                r#"{"gatehouse": {"nodes": [{"routes": [1]}]}}"#
            )),
            "etc.gatehouse.nodes[0].addr"
        );

        let node = |body: &str| from_toml(&format!("[[gatehouse.nodes]]\naddr = \"h:1\"\n{body}"));
        for (body, key) in [
            ("rout = [1]", "etc.gatehouse.nodes[0].rout"),
            ("routes = 1", "etc.gatehouse.nodes[0].routes"),
            ("routes = [\"one\"]", "etc.gatehouse.nodes[0].routes"),
            ("stateful = [2147483648]", "etc.gatehouse.nodes[0].stateful"),
            ("authorized = [[1]]", "etc.gatehouse.nodes[0].authorized"),
            ("internal = [1.5]", "etc.gatehouse.nodes[0].internal"),
            ("events = [4]", "etc.gatehouse.nodes[0].events"),
            ("events = [\"open\"]", "etc.gatehouse.nodes[0].events"),
            ("weight = -1", "etc.gatehouse.nodes[0].weight"),
            ("state = \"Work\"", "etc.gatehouse.nodes[0].state"),
            ("id = [1]", "etc.gatehouse.nodes[0].id"),
            (
                "[[gatehouse.nodes]]\naddr = \"h:2\"\nid = \"static-0\"",
                "etc.gatehouse.nodes[1].id",
            ),
            (
                "[[gatehouse.nodes]]\naddr = \"\"",
                "etc.gatehouse.nodes[1].addr",
            ),
            (
                "[[gatehouse.nodes]]\naddr = \"h\"",
                "etc.gatehouse.nodes[1].addr",
            ),
            (
                "[[gatehouse.nodes]]\naddr = \":1\"",
                "etc.gatehouse.nodes[1].addr",
            ),
        ] {
            assert_eq!(err_key(node(body)), key, "{body}");
        }
        assert!(node("events = [4]")
            .unwrap_err()
            .to_string()
            .contains("element 0"));
        // Not a list of tables.
        assert_eq!(
            err_key(from_toml("[gatehouse.nodes]\naddr = \"h:1\"")),
            "etc.gatehouse.nodes"
        );
        assert_eq!(
            err_key(from_toml("[gatehouse]\nnodes = [1]")),
            "etc.gatehouse.nodes[0]"
        );
        assert_eq!(
            err_key(load_one("etc.yaml", "gatehouse:\n  nodes:\n    -\n")),
            "etc.gatehouse.nodes[0]"
        );
    }

    #[test]
    fn shipped_configurations_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc");
        // etc/etc.toml starts a gate with no external service.
        let c = load(&root.join("etc.toml"), None).unwrap();
        assert_eq!(c.locator, LocatorConfig::Memory);
        assert_eq!(c.registry, RegistryConfig::Static);
        assert!(c.gatehouse.nodes.is_empty());
        assert_eq!(
            (c.gatehouse.link_conns, c.gatehouse.publish_v25),
            (1, false)
        );
        // So does the directory (the examples in it load as `tcp` and `ws`, not as `etc`).
        let dir = load(&root, None).unwrap();
        assert_eq!(normalized(dir), normalized(c));

        let mut examples: Vec<PathBuf> = std::fs::read_dir(root.join("examples"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        examples.sort();
        assert!(!examples.is_empty());
        for path in examples {
            // The examples are named after their server, not `etc`: load them as etc.toml.
            let text = std::fs::read_to_string(&path).unwrap();
            let c = load_one("etc.toml", &text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            assert!(
                matches!(&c.locator, LocatorConfig::Redis(r) if r.prefix == "due"),
                "{path:?}: {:?}",
                c.locator
            );
            assert!(
                matches!(&c.registry, RegistryConfig::Consul(k) if k.addr == "127.0.0.1:8500"),
                "{path:?}: {:?}",
                c.registry
            );
        }
    }

    #[test]
    fn directory_loading() {
        let dir = TempDir::new("dir");
        dir.write("etc.toml", "[packet]\nrouteBytes = 4\n");
        // Unrelated files load (and must parse) but do not affect the gate.
        dir.write("db.toml", "[mysql]\ndsn = \"x\"\n");
        dir.write("README.md", "not a config");
        dir.write(".hidden.toml", "this is not toml at all [");
        dir.write(".git/etc.toml", "[packet]\nrouteBytes = 1\n");
        dir.write("empty.json", "");
        let c = load(&dir.0, None).unwrap();
        assert_eq!(c.packet.route_bytes, 4);

        // A later file with the same stem in walk order replaces an earlier one entirely:
        // "etc.toml" < "sub" in lexical order, so sub/etc.json wins.
        dir.write("sub/etc.json", r#"{"packet": {"seqBytes": 1}}"#);
        let c = load(&dir.0, None).unwrap();
        assert_eq!((c.packet.route_bytes, c.packet.seq_bytes), (2, 1));

        // A single file whose stem is not `etc` provides no gate keys.
        let c = load(&dir.0.join("db.toml"), None).unwrap();
        assert_eq!(c.packet, PacketConfig::default());
    }

    #[test]
    fn broken_files_are_errors_naming_the_file() {
        let dir = TempDir::new("broken");
        dir.write("etc.toml", "[packet]\nrouteBytes = 4\n");
        let db = dir.write("db.yaml", "a: [1, 2\n");
        let e = load(&dir.0, None).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Parse { path, format: "YAML", .. } if *path == db),
            "{e}"
        );
        assert!(e.to_string().contains("db.yaml"), "{e}");

        for (name, text) in [
            ("etc.toml", "[packet\n"),
            ("etc.json", "{\"packet\": }"),
            ("etc.xml", "<etc><packet></etc>"),
            ("etc.xml", "<etc>text<packet/></etc>"),
            ("etc.xml", "<a/><b/>"),
            ("etc.xml", "just text"),
            ("etc.yml", "- a\nb: c\n"),
        ] {
            let e = load_one(name, text).unwrap_err();
            assert!(
                matches!(e, ConfigError::Parse { .. }),
                "{name} {text:?}: {e}"
            );
            assert!(e.to_string().contains(name), "{e}");
        }

        let bin = dir.write("bin/etc.toml", "");
        std::fs::write(&bin, [0xff, 0xfe, 0x00]).unwrap();
        assert!(matches!(load(&bin, None), Err(ConfigError::Parse { .. })));

        let ini = dir.write("etc.ini", "x=1");
        assert!(matches!(
            load(&ini, None),
            Err(ConfigError::UnsupportedFile { .. })
        ));

        // etc must be a table.
        assert_eq!(err_key(load_one("etc.json", "[1, 2]")), "etc");
    }

    #[test]
    fn xml_details() {
        let c = load_one(
            "etc.xml",
            r#"<config>
                 <network><ws><server>
                   <origins>https://a.example</origins>
                   <origins>https://b.example</origins>
                   <path><![CDATA[/ws]]></path>
                 </server></ws>
                 <tcp><server/></tcp></network>
                 <cluster><gate><name>gate &amp; co&#x21;</name><metadata/></gate></cluster>
                 <log><terminals><console>warn</console><console>error</console></terminals></log>
               </config>"#,
        )
        .unwrap();
        let ws = c.ws.unwrap();
        assert_eq!(ws.origins, vec!["https://a.example", "https://b.example"]);
        assert_eq!(ws.path, "/ws");
        assert!(c.tcp.is_some(), "an empty element is an empty section");
        assert_eq!(c.gate.name, "gate & co!");
        assert!(c.gate.metadata.is_empty());
        assert_eq!(
            c.log.console,
            Some(Some(vec![LogLevel::Warn, LogLevel::Error]))
        );
        assert_eq!(c.log.file, None);

        let c = load_one(
            "etc.xml",
            "<etc><network><ws><server><origins/></server></ws></network></etc>",
        )
        .unwrap();
        assert_eq!(c.ws.unwrap().origins, Vec::<String>::new());
        assert!(load_one("etc.xml", "<etc/>").unwrap().ws.is_none());
    }

    #[test]
    fn yaml_and_json_details() {
        // YAML null (`key:` with nothing) means "not set".
        let c = load_one("etc.yaml", "network:\n  tcp:\n    server:\n      addr:\n").unwrap();
        assert_eq!(c.tcp.unwrap().addr, ":3553");
        // JSON integers are nanoseconds too; strings convert to ints and bools.
        let c = load_one(
            "etc.json",
            r#"{"network": {"tcp": {"server": {"heartbeatInterval": 0, "maxConnNum": "100"}}},
                "packet": {"heartbeatTime": "1"}}"#,
        )
        .unwrap();
        let tcp = c.tcp.unwrap();
        assert_eq!(
            (tcp.heartbeat_interval, tcp.max_conn_num),
            (Duration::ZERO, 100)
        );
        assert!(c.packet.heartbeat_time);
    }

    #[test]
    fn etc_path_precedence() {
        assert_eq!(resolve_etc_path(None, None), PathBuf::from("./etc"));
        assert_eq!(resolve_etc_path(None, Some("/env")), PathBuf::from("/env"));
        assert_eq!(
            resolve_etc_path(Some("/flag"), Some("/env")),
            PathBuf::from("/flag")
        );
        assert_eq!(
            resolve_etc_path(Some("/flag"), None),
            PathBuf::from("/flag")
        );
        assert_eq!(
            resolve_etc_path(Some(""), Some("/env")),
            PathBuf::from("/env")
        );
        assert_eq!(resolve_etc_path(None, Some("")), PathBuf::from("./etc"));
    }

    #[test]
    fn error_display() {
        let e = ConfigError::UnknownKey {
            key: "etc.packet.x".into(),
            known: PACKET_KEYS,
        };
        assert_eq!(
            e.to_string(),
            "etc.packet.x: unknown key (known keys: byteOrder, routeBytes, seqBytes, bufferBytes, heartbeatTime)"
        );
        let e: Box<dyn std::error::Error> = Box::new(ConfigError::invalid("etc.mode", "bad"));
        assert_eq!(e.to_string(), "etc.mode: bad");
    }
}
