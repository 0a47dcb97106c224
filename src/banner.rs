//! Start-up banner: due's logo and the 56-column info boxes (Website, Global, Gate), byte-exact.
//! Owns the text layout and Go-style time rendering only; printing to stdout is the caller's job.

use jiff::tz::{Offset, TimeZone};
use jiff::{Timestamp, ZonedDateTime};

/// The framework version we are wire-compatible with, shown in the Website box.
///
/// We print due's version rather than our crate version because operators and tooling that
/// scrape the banner identify the protocol level from it.
pub const DUE_VERSION: &str = "v2.4.1";

/// Website printed in the untitled first box.
pub const DUE_WEBSITE: &str = "https://github.com/dobyte/due";

/// Width of every box line, in Unicode scalar values.
pub const BOX_WIDTH: usize = 56;

/// Inner width between the corners of the top/bottom lines.
const INNER: usize = BOX_WIDTH - 2;

/// Widest row text that still fits: `| ` + text + `|`.
const MAX_ROW: usize = BOX_WIDTH - 3;

/// The five-line logo, lines joined by `\n` without a trailing newline (print it with
/// `println!`).
///
/// Line 2 ends with a TAB and the lines have 20..16 leading spaces: both are in due's source
/// and reproduced so that banner diffs against the reference are empty.
pub fn logo() -> String {
    [
        r"                    ____  __  ________",
        "                   / __ \\/ / / / ____/\t",
        r"                  / / / / / / / __/",
        r"                 / /_/ / /_/ / /___",
        r"                /_____/\____/_____/",
    ]
    .join("\n")
}

/// Lays out one box: a top line with the optional centred title, one line per row, a bottom line.
///
/// Every line is [`BOX_WIDTH`] characters as long as the title fits in 54 characters and every
/// row in 53. **Deviation from due:** a longer row (or title) makes due panic on a negative
/// `strings.Repeat` count; we print it unpadded (`| text|`) instead, so an unusually long gate
/// id or address can never abort start-up.
pub fn boxed(title: Option<&str>, rows: &[String]) -> Vec<String> {
    let mut lines = Vec::with_capacity(rows.len() + 2);

    let title = title.unwrap_or("");
    let free = INNER.saturating_sub(title.chars().count());
    let left = free / 2;
    lines.push(format!(
        "┌{}{title}{}┐",
        "─".repeat(left),
        "─".repeat(free - left)
    ));

    for row in rows {
        let pad = MAX_ROW.saturating_sub(row.chars().count());
        lines.push(format!("| {row}{}|", " ".repeat(pad)));
    }

    lines.push(format!("└{}┘", "─".repeat(INNER)));
    lines
}

/// The untitled first box: website and framework version (normally [`DUE_VERSION`]).
pub fn website_box(version: &str) -> Vec<String> {
    boxed(
        None,
        &[
            format!("[Website] {DUE_WEBSITE}"),
            format!("[Version] {version}"),
        ],
    )
}

/// The `Global` box: process id, run mode and start time (see [`format_time`]).
pub fn global_box(pid: u32, mode: &str, time: &str) -> Vec<String> {
    boxed(
        Some("Global"),
        &[
            format!("PID: {pid}"),
            format!("Mode: {mode}"),
            format!("Time: {time}"),
        ],
    )
}

/// What the `Gate` box shows, collected by the caller once the gate has started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GateInfo {
    /// Instance id (configured or generated UUID).
    pub id: String,
    /// Instance name (`[cluster.gate] name`).
    pub name: String,
    /// Advertised internal link address (`host:port`).
    pub link: String,
    /// One `(protocol, listen addr)` per client server; protocol is `"tcp"` or `"ws"`.
    pub servers: Vec<(String, String)>,
    /// Locator name, e.g. `redis`.
    pub locator: String,
    /// Registry name, e.g. `consul`.
    pub registry: String,
}

/// The `Gate` box printed after a successful start.
pub fn gate_box(info: &GateInfo) -> Vec<String> {
    let mut rows = vec![
        format!("ID: {}", info.id),
        format!("Name: {}", info.name),
        format!("Link: {}", info.link),
    ];
    rows.extend(
        info.servers
            .iter()
            .map(|(proto, addr)| format!("Server: [{proto}] {}", fulfill_addr(addr))),
    );
    rows.push(format!("Locator: {}", info.locator));
    rows.push(format!("Registry: {}", info.registry));
    boxed(Some("Gate"), &rows)
}

/// due's `FulfillAddr`: a listen address with an empty host (`:3553`) is shown as `0.0.0.0:3553`,
/// which is what the socket actually binds. Anything else is shown unchanged.
fn fulfill_addr(addr: &str) -> String {
    if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_owned()
    }
}

/// Renders `now` like Go's `time.Time.String()` without the monotonic part:
/// `2006-01-02 15:04:05.999999999 -0700 MST`.
///
/// The fraction has trailing zeros removed and is omitted when zero. The zone is the
/// abbreviation in force at that instant; an unnamed fixed-offset zone is shown as `-0700`, as
/// Go does for zones without a name.
pub fn format_time(now: ZonedDateTime) -> String {
    let mut out = now.strftime("%Y-%m-%d %H:%M:%S").to_string();

    let nanos = now.subsec_nanosecond();
    if nanos > 0 {
        let digits = format!("{nanos:09}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }

    let offset = now.strftime("%z").to_string();
    let info = now.time_zone().to_offset_info(now.timestamp());
    // A bare fixed-offset zone has no name in Go, which then falls back to the `-0700` form;
    // jiff would call it `-05`. Named zones keep their abbreviation, including tzdata's numeric
    // ones such as `-05` for America/Bogota, exactly as Go prints them.
    let unnamed_fixed =
        now.offset() != Offset::UTC && *now.time_zone() == TimeZone::fixed(now.offset());
    let zone = if unnamed_fixed || info.abbreviation().is_empty() {
        offset.as_str()
    } else {
        info.abbreviation()
    };
    out.push(' ');
    out.push_str(&offset);
    out.push(' ');
    out.push_str(zone);
    out
}

/// Current time in the configured `timezone` (due's `timezone` key).
///
/// `""` and `"Local"` mean the system zone, as in Go. An unknown name also falls back to the
/// system zone: due logs the `LoadLocation` error and keeps `time.Local`, and the banner is no
/// place to abort start-up.
pub fn now_in(timezone: &str) -> ZonedDateTime {
    let tz = match timezone {
        "" | "Local" => TimeZone::system(),
        name => TimeZone::get(name).unwrap_or_else(|_| TimeZone::system()),
    };
    Timestamp::now().to_zoned_datetime(tz)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(s: &str) -> usize {
        s.chars().count()
    }

    /// 2025-10-30 03:44:50 UTC, the instant of the spec example.
    const EXAMPLE_SECOND: i64 = 1_761_795_890;

    fn cst() -> TimeZone {
        // POSIX rule rather than "Asia/Shanghai" so the test does not need a tz database.
        TimeZone::posix("CST-8").unwrap()
    }

    #[test]
    fn logo_is_exact() {
        let logo = logo();
        let lines: Vec<&str> = logo.split('\n').collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], "                    ____  __  ________");
        assert_eq!(lines[1], "                   / __ \\/ / / / ____/\t");
        assert_eq!(lines[2], "                  / / / / / / / __/");
        assert_eq!(lines[3], "                 / /_/ / /_/ / /___");
        assert_eq!(lines[4], "                /_____/\\____/_____/");
        let leading: Vec<usize> = lines
            .iter()
            .map(|l| l.len() - l.trim_start_matches(' ').len())
            .collect();
        assert_eq!(leading, [20, 19, 18, 17, 16]);
    }

    #[test]
    fn spec_example_boxes() {
        let time = format_time(
            Timestamp::new(EXAMPLE_SECOND, 315_426_300)
                .unwrap()
                .to_zoned_datetime(cst()),
        );
        let mut got = website_box(DUE_VERSION);
        got.extend(global_box(12345, "debug", &time));
        got.extend(gate_box(&GateInfo {
            id: "c996de98-b542-11f0-8753-f4f19e1f0070".into(),
            name: "gate".into(),
            link: "192.168.2.202:51121".into(),
            servers: vec![("tcp".into(), ":3553".into())],
            locator: "redis".into(),
            registry: "consul".into(),
        }));
        let want = "\
┌──────────────────────────────────────────────────────┐
| [Website] https://github.com/dobyte/due              |
| [Version] v2.4.1                                     |
└──────────────────────────────────────────────────────┘
┌────────────────────────Global────────────────────────┐
| PID: 12345                                           |
| Mode: debug                                          |
| Time: 2025-10-30 11:44:50.3154263 +0800 CST          |
└──────────────────────────────────────────────────────┘
┌─────────────────────────Gate─────────────────────────┐
| ID: c996de98-b542-11f0-8753-f4f19e1f0070             |
| Name: gate                                           |
| Link: 192.168.2.202:51121                            |
| Server: [tcp] 0.0.0.0:3553                           |
| Locator: redis                                       |
| Registry: consul                                     |
└──────────────────────────────────────────────────────┘";
        assert_eq!(got, want.lines().collect::<Vec<_>>());
        for line in &got {
            assert_eq!(chars(line), BOX_WIDTH, "{line:?}");
        }
    }

    #[test]
    fn title_dash_counts() {
        for (title, left, right) in [
            ("Global", 24, 24),
            ("Client", 24, 24),
            ("Gate", 25, 25),
            ("Mesh", 25, 25),
            ("Node", 25, 25),
            ("PProf", 24, 25),
        ] {
            let top = &boxed(Some(title), &[])[0];
            let want = format!("┌{}{title}{}┐", "─".repeat(left), "─".repeat(right));
            assert_eq!(top, &want);
            assert_eq!(chars(top), BOX_WIDTH);
        }
        assert_eq!(boxed(None, &[])[0], format!("┌{}┐", "─".repeat(54)));
    }

    #[test]
    fn every_line_is_56_chars() {
        let rows: Vec<String> = (0..=53).map(|n| "é".repeat(n)).collect();
        for line in boxed(Some("Ünïcødé"), &rows) {
            assert_eq!(chars(&line), BOX_WIDTH, "{line:?}");
        }
        let gate = GateInfo {
            servers: vec![
                ("tcp".into(), ":3553".into()),
                ("ws".into(), "127.0.0.1:3554".into()),
            ],
            ..GateInfo::default()
        };
        let lines = gate_box(&gate);
        assert_eq!(lines.len(), 2 + 3 + 2 + 2);
        assert!(lines.iter().all(|l| chars(l) == BOX_WIDTH));
        assert_eq!(
            lines[4],
            format!("| Server: [tcp] 0.0.0.0:3553{}|", " ".repeat(27))
        );
        assert!(lines[5].starts_with("| Server: [ws] 127.0.0.1:3554 "));
    }

    #[test]
    fn long_row_and_title_do_not_panic() {
        let long = "x".repeat(80);
        let lines = boxed(Some(&"T".repeat(70)), std::slice::from_ref(&long));
        assert_eq!(lines[0], format!("┌{}┐", "T".repeat(70)));
        assert_eq!(lines[1], format!("| {long}|"));
        assert_eq!(chars(&lines[2]), BOX_WIDTH);
        // Exactly 53 still fits with no padding; 54 is the first unpadded one.
        assert_eq!(chars(&boxed(None, &["y".repeat(53)])[1]), BOX_WIDTH);
        assert_eq!(chars(&boxed(None, &["y".repeat(54)])[1]), BOX_WIDTH + 1);
    }

    #[test]
    fn fulfill_addr_rules() {
        assert_eq!(fulfill_addr(":3553"), "0.0.0.0:3553");
        assert_eq!(fulfill_addr("0.0.0.0:3553"), "0.0.0.0:3553");
        assert_eq!(fulfill_addr("10.0.0.1:80"), "10.0.0.1:80");
        assert_eq!(fulfill_addr("[::]:80"), "[::]:80");
    }

    #[test]
    fn time_fraction_trimmed_or_omitted() {
        let at = |nanos| {
            format_time(
                Timestamp::new(EXAMPLE_SECOND, nanos)
                    .unwrap()
                    .to_zoned_datetime(cst()),
            )
        };
        assert_eq!(at(315_426_300), "2025-10-30 11:44:50.3154263 +0800 CST");
        assert_eq!(at(0), "2025-10-30 11:44:50 +0800 CST");
        assert_eq!(at(1), "2025-10-30 11:44:50.000000001 +0800 CST");
        assert_eq!(at(500_000_000), "2025-10-30 11:44:50.5 +0800 CST");
        assert_eq!(at(123_456_789), "2025-10-30 11:44:50.123456789 +0800 CST");
    }

    #[test]
    fn time_zone_names() {
        let ts = Timestamp::new(EXAMPLE_SECOND, 0).unwrap();
        assert_eq!(
            format_time(ts.to_zoned_datetime(TimeZone::UTC)),
            "2025-10-30 03:44:50 +0000 UTC"
        );
        // Go prints an unnamed fixed zone's offset twice.
        assert_eq!(
            format_time(ts.to_zoned_datetime(TimeZone::fixed(jiff::tz::offset(-5)))),
            "2025-10-29 22:44:50 -0500 -0500"
        );
        // A named zone keeps its abbreviation, even a numeric one.
        let bogota = TimeZone::posix("<-05>5").unwrap();
        assert_eq!(
            format_time(ts.to_zoned_datetime(bogota)),
            "2025-10-29 22:44:50 -0500 -05"
        );
        // DST abbreviation follows the instant.
        let ny = TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").unwrap();
        assert_eq!(
            format_time(ts.to_zoned_datetime(ny)),
            "2025-10-29 23:44:50 -0400 EDT"
        );
    }

    #[test]
    fn now_in_falls_back_to_system_zone() {
        let system = TimeZone::system();
        for name in ["", "Local", "Not/AZone"] {
            assert_eq!(now_in(name).time_zone(), &system, "{name:?}");
        }
        assert_eq!(now_in("UTC").offset(), jiff::tz::Offset::UTC);
    }
}
