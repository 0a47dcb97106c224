//! Value conversion rules of due's `etc` (client-protocol.md §5.3): durations, byte sizes,
//! booleans, ints, strings. Owns turning one generic config value into one typed value; key names
//! and defaults live in `load`.
//!
//! The generic value is a `serde_json::Value` whatever the file format was (TOML, YAML, JSON and
//! XML are all converted to it by `load`). The functions here report failures as plain messages
//! without the key; `load` prefixes the full dotted key so every start-up error names it.
//!
//! Deliberate deviation from due: where due silently turns an unparsable value into 0 (durations,
//! ints, sizes), we return an error, because a gate that starts with a 0 heartbeat interval or a
//! 0-byte log file limit because of a typo is worse than one that refuses to start.

use serde_json::Value;

/// Nanoseconds per day, for due's `d` unit extension.
const NANOS_PER_DAY: f64 = 86_400_000_000_000.0;

/// Go's limit for a duration magnitude: `1 << 63` nanoseconds (only reachable when negative).
const GO_DURATION_LIMIT: u64 = 1 << 63;

/// Parses a duration the way due does (`xconv.Duration` on a string), returning nanoseconds.
///
/// The string is lower-cased, every `<number>d` (optional `-`, optional fraction) is replaced by
/// the equivalent whole nanoseconds (`7d` = 168h, `1.5d` = 36h, `1d12h` = 36h), and the result is
/// parsed with Go's `time.ParseDuration` syntax: an optional sign, then one or more
/// `<decimal><unit>` with units `ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`; `"0"` alone is allowed.
/// Surrounding whitespace is ignored.
///
/// Unlike due (which yields 0), a string that does not parse is an error, e.g. `"10"`: a number
/// without a unit is almost always meant as seconds, and due would silently read it as "disabled".
pub fn parse_duration(s: &str) -> Result<i128, String> {
    let lowered = s.trim().to_lowercase();
    expand_days(&lowered)
        .and_then(|expanded| parse_go_duration(&expanded))
        .map(i128::from)
        .ok_or_else(|| duration_error(s))
}

/// The message for an unparsable duration, with a hint fitting the most common mistake.
fn duration_error(s: &str) -> String {
    let t = s.trim();
    if !t.is_empty() && t.parse::<f64>().is_ok() {
        format!("cannot parse {s:?} as a duration (use a unit, e.g. \"{t}s\")")
    } else {
        format!("cannot parse {s:?} as a duration (e.g. \"10s\", \"1m30s\", \"1.5h\", \"7d\")")
    }
}

/// due's day extension: replaces every match of `-?\d+(\.\d+)?d` (leftmost first, like Go's
/// regexp) with `<nanoseconds>ns`, the nanoseconds truncated toward zero as Go's `int64(f)` does.
/// `None` when a day count does not fit a Go duration.
fn expand_days(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len() + 16);
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        match match_days(b, i) {
            Some(end) => {
                let number: f64 = s[i..end - 1].parse().ok()?;
                let nanos = number * NANOS_PER_DAY;
                // Digits and a point only, so never NaN; huge counts are infinite or too large.
                if nanos.abs() >= GO_DURATION_LIMIT as f64 {
                    return None;
                }
                out.push_str(&s[copied..i]);
                out.push_str(&format!("{}ns", nanos as i64));
                i = end;
                copied = end;
            }
            // Matches only ever start on an ASCII byte, so stepping bytewise keeps `i` usable
            // as a slice boundary whenever a match is found.
            None => i += 1,
        }
    }
    out.push_str(&s[copied..]);
    Some(out)
}

/// Tries `-?\d+(\.\d+)?d` at `start`; returns the end (exclusive, after the `d`).
fn match_days(b: &[u8], start: usize) -> Option<usize> {
    let mut j = start;
    if b.get(j) == Some(&b'-') {
        j += 1;
    }
    let digits = j;
    while b.get(j).is_some_and(u8::is_ascii_digit) {
        j += 1;
    }
    if j == digits {
        return None;
    }
    if b.get(j) == Some(&b'.') && b.get(j + 1).is_some_and(u8::is_ascii_digit) {
        j += 1;
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
    }
    (b.get(j) == Some(&b'd')).then_some(j + 1)
}

/// A port of Go's `time.ParseDuration` (same syntax, same overflow limits, same rounding).
fn parse_go_duration(s: &str) -> Option<i64> {
    let mut s = s.as_bytes();
    let mut neg = false;
    if let Some(&c) = s.first() {
        if c == b'-' || c == b'+' {
            neg = c == b'-';
            s = &s[1..];
        }
    }
    if s == b"0" {
        return Some(0);
    }
    if s.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return None;
        }
        let before = s.len();
        let (mut v, rest) = leading_int(s)?;
        s = rest;
        let pre = before != s.len();
        let (mut frac, mut scale, mut post) = (0u64, 1f64, false);
        if s.first() == Some(&b'.') {
            s = &s[1..];
            let before = s.len();
            let (f, sc, rest) = leading_fraction(s);
            (frac, scale, s) = (f, sc, rest);
            post = before != s.len();
        }
        if !pre && !post {
            return None;
        }
        let unit_len = s
            .iter()
            .position(|&c| c == b'.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return None;
        }
        let unit: u64 = match &s[..unit_len] {
            b"ns" => 1,
            b"us" => 1_000,
            u if u == "µs".as_bytes() || u == "μs".as_bytes() => 1_000,
            b"ms" => 1_000_000,
            b"s" => 1_000_000_000,
            b"m" => 60_000_000_000,
            b"h" => 3_600_000_000_000,
            _ => return None,
        };
        s = &s[unit_len..];
        if v > GO_DURATION_LIMIT / unit {
            return None;
        }
        v *= unit;
        if frac > 0 {
            v += (frac as f64 * (unit as f64 / scale)) as u64;
            if v > GO_DURATION_LIMIT {
                return None;
            }
        }
        total = total.checked_add(v)?;
        if total > GO_DURATION_LIMIT {
            return None;
        }
    }
    if neg {
        // total ≤ 2^63, so the negation always fits (2^63 becomes i64::MIN, as in Go).
        return Some((total as i64).wrapping_neg());
    }
    i64::try_from(total).ok()
}

/// Go's `leadingInt`: the leading decimal digits, `None` on overflow past `1 << 63`.
fn leading_int(s: &[u8]) -> Option<(u64, &[u8])> {
    let mut x: u64 = 0;
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        if x > GO_DURATION_LIMIT / 10 {
            return None;
        }
        x = x * 10 + u64::from(s[i] - b'0');
        if x > GO_DURATION_LIMIT {
            return None;
        }
        i += 1;
    }
    Some((x, &s[i..]))
}

/// Go's `leadingFraction`: digits after the point; precision beyond 63 bits is dropped.
fn leading_fraction(s: &[u8]) -> (u64, f64, &[u8]) {
    let (mut x, mut scale, mut overflow) = (0u64, 1f64, false);
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        if !overflow {
            if x > (GO_DURATION_LIMIT - 1) / 10 {
                overflow = true;
            } else {
                let y = x * 10 + u64::from(s[i] - b'0');
                if y > GO_DURATION_LIMIT {
                    overflow = true;
                } else {
                    x = y;
                    scale *= 10.0;
                }
            }
        }
        i += 1;
    }
    (x, scale, &s[i..])
}

/// Parses a byte size such as `500M`, `1G`, `10KB`, `512B` or `1024` (due's `xconv.B`).
///
/// Units (case-insensitive, powers of 1024): none or `B`, `K`/`KB`, `M`/`MB`, `G`/`GB`,
/// `T`/`TB`, `P`/`PB`, `E`/`EB`. Whitespace around the value and before the unit is ignored.
/// A decimal fraction is accepted (`1.5G`); due would read it as 1 byte, which nobody means.
/// Anything else is an error (due: 0).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let err =
        || format!("cannot parse {s:?} as a size (e.g. \"500M\", \"1G\", \"10KB\", \"512B\")");
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim_start());
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" => 10,
        "M" | "MB" => 20,
        "G" | "GB" => 30,
        "T" | "TB" => 40,
        "P" | "PB" => 50,
        "E" | "EB" => 60,
        _ => return Err(err()),
    };
    if number.is_empty() || !number.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(err());
    }
    if let Ok(n) = number.parse::<u64>() {
        return n
            .checked_mul(1u64 << shift)
            .ok_or_else(|| format!("{s:?} is too large for a size"));
    }
    let n: f64 = number.parse().map_err(|_| err())?;
    let bytes = n * (1u64 << shift) as f64;
    if bytes >= u64::MAX as f64 {
        return Err(format!("{s:?} is too large for a size"));
    }
    Ok(bytes as u64)
}

/// due's boolean rule (`xconv.Bool`): booleans as they are; strings are true unless `""`, `"0"`
/// or (case-insensitive) `"false"`; numbers are true when ≠ 0; null is false.
/// Arrays and tables are an error (due has no sensible answer for them either).
pub fn parse_bool(v: &Value) -> Result<bool, String> {
    match v {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        Value::String(s) => Ok(!(s.is_empty() || s == "0" || s.eq_ignore_ascii_case("false"))),
        Value::Number(n) => Ok(n.as_f64().is_some_and(|f| f != 0.0)),
        other => Err(format!("expected a boolean, found {}", kind(other))),
    }
}

/// A duration value: integers (and floats, truncated) are nanoseconds, as in due — so
/// `heartbeatInterval = 0` disables and `heartbeatInterval = 10` is 10 ns; strings go through
/// [`parse_duration`]. Booleans, arrays and tables are errors (due: 0).
pub(crate) fn value_to_duration(v: &Value) -> Result<i128, String> {
    match v {
        Value::String(s) => parse_duration(s),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i128::from(i))
            } else if n.is_u64() {
                Err(format!("{n} nanoseconds is too large for a duration"))
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.is_finite() && f.abs() < GO_DURATION_LIMIT as f64 {
                    Ok(f as i128)
                } else {
                    Err(format!("{n} nanoseconds is too large for a duration"))
                }
            }
        }
        other => Err(format!(
            "expected a duration such as \"10s\", found {}",
            kind(other)
        )),
    }
}

/// An integer value: numbers as they are (floats only when whole), strings parsed as base-10.
/// Unlike due (0), an unparsable string, a fraction or a boolean is an error.
pub(crate) fn value_to_int(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i)
            } else if n.is_u64() {
                Err(format!("{n} is too large"))
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() == 0.0 && f.abs() < 9.2e18 {
                    Ok(f as i64)
                } else {
                    Err(format!("expected an integer, found {n}"))
                }
            }
        }
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("cannot parse {s:?} as an integer")),
        other => Err(format!("expected an integer, found {}", kind(other))),
    }
}

/// A size value: non-negative integers are bytes, strings go through [`parse_size`].
pub(crate) fn value_to_size(v: &Value) -> Result<u64, String> {
    match v {
        Value::String(s) => parse_size(s),
        Value::Number(_) => {
            let n = value_to_int(v)?;
            u64::try_from(n).map_err(|_| format!("a size cannot be negative ({n})"))
        }
        other => Err(format!(
            "expected a size such as \"500M\", found {}",
            kind(other)
        )),
    }
}

/// A string value: strings as they are; numbers and booleans in their usual text form (as due's
/// `xconv.String` does, so `name = 5` is `"5"`). Arrays and tables are errors.
pub(crate) fn value_to_string(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok(String::new()),
        other => Err(format!("expected a string, found {}", kind(other))),
    }
}

/// A string list (`origins`, `terminals`): an array converts element by element.
///
/// A scalar is due's quirk: `xconv.Strings` of a non-array is an empty list (so
/// `origins = "*"` rejects every origin). XML cannot tell a one-element list from a scalar, so
/// with `xml_scalars_are_lists` a non-empty string is a one-element list and `""` (an empty
/// element such as `<origins/>`) the empty list.
pub(crate) fn value_to_string_list(
    v: &Value,
    xml_scalars_are_lists: bool,
) -> Result<Vec<String>, String> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Array(_) | Value::Object(_) => Err(format!(
                    "expected a list of strings, found {} in the list",
                    kind(item)
                )),
                scalar => value_to_string(scalar),
            })
            .collect(),
        Value::String(s) if xml_scalars_are_lists => Ok(if s.is_empty() {
            Vec::new()
        } else {
            vec![s.clone()]
        }),
        Value::Object(_) => Err("expected a list of strings, found a table".to_string()),
        _ => Ok(Vec::new()),
    }
}

/// A short description of a value's type, for error messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const S: i128 = 1_000_000_000;
    const H: i128 = 3600 * S;

    #[test]
    fn durations_from_the_spec() {
        let cases: &[(&str, i128)] = &[
            ("10s", 10 * S),
            ("1m30s", 90 * S),
            ("1.5h", 90 * 60 * S),
            ("7d", 168 * H),
            ("1.5d", 36 * H),
            ("1d12h", 36 * H),
            ("300ms", 300_000_000),
            ("-1s", -S),
            ("0", 0),
            ("-0", 0),
            ("+5s", 5 * S),
            ("0s", 0),
            ("30s", 30 * S),
            ("3s", 3 * S),
            ("10us", 10_000),
            ("10µs", 10_000), // U+00B5 micro sign
            ("10μs", 10_000), // U+03BC greek mu
            ("10ΜS", 10_000), // capital mu lower-cases to U+03BC, as Go's ToLower does
            ("5ns", 5),
            ("10S", 10 * S), // lower-cased first
            ("2H45M", 2 * H + 45 * 60 * S),
            (" 10s ", 10 * S), // surrounding whitespace ignored
            (".5s", 500_000_000),
            ("1.s", S),
            ("1h0.5m", H + 30 * S),
            ("-1d12h", -36 * H),
            ("-0.5d", -12 * H),
            ("2562047h47m16.854775807s", i64::MAX as i128),
            ("-2562047h47m16.854775808s", i64::MIN as i128),
        ];
        for &(input, want) in cases {
            assert_eq!(parse_duration(input), Ok(want), "input {input:?}");
        }
    }

    #[test]
    fn unparsable_durations_are_errors() {
        for input in [
            "",
            "10",
            "1.5",
            "abc",
            "10x",
            "s",
            ".s",
            "1d-1d",
            "10 s",
            "1h-1m",
            "-",
            "+",
            "0.0",
            "9223372036854775808ns",
            "2562047h47m16.854775808s",
            "110000000d",
            "true",
        ] {
            assert!(
                parse_duration(input).is_err(),
                "input {input:?} should fail"
            );
        }
        assert_eq!(
            parse_duration("10").unwrap_err(),
            r#"cannot parse "10" as a duration (use a unit, e.g. "10s")"#
        );
        assert!(parse_duration("abc").unwrap_err().contains("\"abc\""));
    }

    #[test]
    fn duration_values() {
        assert_eq!(value_to_duration(&json!(10)), Ok(10)); // due quirk: bare number = ns
        assert_eq!(value_to_duration(&json!(0)), Ok(0));
        assert_eq!(value_to_duration(&json!(-5)), Ok(-5));
        assert_eq!(value_to_duration(&json!(1.9)), Ok(1));
        assert_eq!(value_to_duration(&json!("10s")), Ok(10 * S));
        assert!(value_to_duration(&json!(true)).is_err());
        assert!(value_to_duration(&json!(["10s"])).is_err());
        assert!(value_to_duration(&json!(u64::MAX)).is_err());
    }

    #[test]
    fn sizes() {
        let cases: &[(&str, u64)] = &[
            ("100M", 100 << 20),
            ("500M", 500 << 20),
            ("1G", 1 << 30),
            ("10KB", 10 << 10),
            ("10kb", 10 << 10),
            ("10k", 10 << 10),
            ("512B", 512),
            ("512b", 512),
            ("1024", 1024),
            ("0", 0),
            ("2TB", 2 << 40),
            ("1P", 1 << 50),
            ("3EB", 3 << 60),
            ("64 KB", 64 << 10),
            (" 1.5G ", 3 << 29),
            ("4MB", 4 << 20),
        ];
        for &(input, want) in cases {
            assert_eq!(parse_size(input), Ok(want), "input {input:?}");
        }
        for input in [
            "", "M", "abc", "10X", "-1M", "1.5.5M", "16E", "1ZB", "10 M B", ".5M",
        ] {
            assert!(parse_size(input).is_err(), "input {input:?} should fail");
        }
        assert_eq!(value_to_size(&json!(1234)), Ok(1234));
        assert_eq!(value_to_size(&json!("1K")), Ok(1024));
        assert!(value_to_size(&json!(-1)).is_err());
        assert!(value_to_size(&json!(false)).is_err());
    }

    #[test]
    fn bools() {
        assert_eq!(parse_bool(&json!(true)), Ok(true));
        assert_eq!(parse_bool(&json!(false)), Ok(false));
        for s in ["", "0", "false", "FALSE", "False"] {
            assert_eq!(parse_bool(&json!(s)), Ok(false), "{s:?}");
        }
        for s in ["1", "true", "yes", "no", "off", " false"] {
            assert_eq!(parse_bool(&json!(s)), Ok(true), "{s:?}");
        }
        assert_eq!(parse_bool(&json!(0)), Ok(false));
        assert_eq!(parse_bool(&json!(0.0)), Ok(false));
        assert_eq!(parse_bool(&json!(2)), Ok(true));
        assert_eq!(parse_bool(&json!(-0.5)), Ok(true));
        assert_eq!(parse_bool(&Value::Null), Ok(false));
        assert!(parse_bool(&json!([true])).is_err());
        assert!(parse_bool(&json!({})).is_err());
    }

    #[test]
    fn ints_strings_and_lists() {
        assert_eq!(value_to_int(&json!(5000)), Ok(5000));
        assert_eq!(value_to_int(&json!("5000")), Ok(5000));
        assert_eq!(value_to_int(&json!(" -3 ")), Ok(-3));
        assert_eq!(value_to_int(&json!(2.0)), Ok(2));
        assert!(value_to_int(&json!(2.5)).is_err());
        assert!(value_to_int(&json!("2x")).is_err());
        assert!(value_to_int(&json!(true)).is_err());
        assert!(value_to_int(&json!(u64::MAX)).is_err());

        assert_eq!(value_to_string(&json!("a")), Ok("a".into()));
        assert_eq!(value_to_string(&json!(5)), Ok("5".into()));
        assert_eq!(value_to_string(&json!(true)), Ok("true".into()));
        assert!(value_to_string(&json!({})).is_err());

        assert_eq!(
            value_to_string_list(&json!(["*", 1]), false),
            Ok(vec!["*".to_string(), "1".to_string()])
        );
        // due quirk: a scalar is an empty list ...
        assert_eq!(value_to_string_list(&json!("*"), false), Ok(vec![]));
        assert_eq!(value_to_string_list(&json!(5), false), Ok(vec![]));
        // ... except from XML, which has no other way to write a one-element list.
        assert_eq!(
            value_to_string_list(&json!("*"), true),
            Ok(vec!["*".to_string()])
        );
        assert_eq!(value_to_string_list(&json!(""), true), Ok(vec![]));
        assert!(value_to_string_list(&json!({"a": 1}), false).is_err());
        assert!(value_to_string_list(&json!([["a"]]), false).is_err());
    }
}
