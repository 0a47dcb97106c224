//! Logging: installs the global `tracing` subscriber described by `[log]` (console and file terminals).
//! Owns level filtering, the text/JSON line formats and the rotating, non-blocking file writer.
//!
//! Design choices, and why:
//!
//! * **Console goes to stderr**, synchronously. due logs to stdout, but our stdout carries the
//!   start-up banner, which scripts and tests read; keeping log lines off it keeps the banner
//!   clean. Writes are synchronous so a fatal message printed right before `exit(1)` is never
//!   lost; a console line is one small `write(2)`.
//! * **The file terminal never writes from the caller's thread.** Formatted lines go through a
//!   bounded channel to one `gatehouse-log` thread that owns the file, batches lines in a
//!   `BufWriter`, rotates and gzips. Rotation and compression can take long (renames, gzip of a
//!   500 MB file), and a shard thread stalled on disk would stall every connection it serves.
//!   When the channel is full the line is **dropped** (counted, reported on stderr) rather than
//!   blocking a shard. We use our own ~80-line writer rather than `tracing-appender`: it batches
//!   writes (one syscall per burst, not per line), waits for the final flush on drop instead of
//!   giving up after 1 s, and needs no extra dependency.
//! * **Levels** are due's: `level` is the minimum for every terminal; a terminal given as
//!   `terminal = [levels]` shows only those. `fatal`/`panic` become tracing's `ERROR` (tracing has
//!   nothing above it), so `level = "fatal"` shows all errors. The run mode does not lower the
//!   level: in due, debug mode only adds debug call sites, which `level` still filters.

use crate::config::{LogConfig, LogFormat, LogLevel, Mode, Rotate};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use file_rotate::compression::Compression;
use file_rotate::suffix::{AppendTimestamp, FileLimit};
use file_rotate::{ContentLimit, FileRotate};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// Lines the file channel holds before new lines are dropped (~13 MB at 200 bytes a line).
const FILE_QUEUE_LINES: usize = 65_536;

/// How long dropping [`LogGuard`] waits for the file thread to drain and flush. Generous because
/// a rotation with gzip may be in progress; bounded so a hung disk cannot hang shutdown.
const FLUSH_WAIT: Duration = Duration::from_secs(10);

/// Keeps the file terminal alive; dropping it flushes every queued line to disk.
///
/// Hold it in `main` for the life of the process and drop it (or let it go out of scope)
/// **before** calling `std::process::exit`, which skips destructors: lines still queued would
/// be lost.
#[must_use = "dropping the guard stops the file terminal"]
pub struct LogGuard {
    file: Option<FileWorker>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(worker) = self.file.take() {
            worker.shutdown();
        }
    }
}

/// Installs the global subscriber for `cfg`. Fails if the log file cannot be opened or if a
/// global subscriber is already installed.
///
/// `mode` is accepted for symmetry with due's logger set-up but deliberately changes nothing:
/// see the module documentation.
pub fn init(cfg: &LogConfig, mode: Mode) -> Result<LogGuard, String> {
    let (subscriber, guard) = build(cfg, mode)?;
    subscriber
        .try_init()
        .map_err(|e| format!("install logger: {e}"))?;
    Ok(guard)
}

/// Installs a debug-level text subscriber writing through libtest's capture. Safe to call from
/// every test: only the first call in a process installs anything.
pub fn init_for_tests() {
    let layer = tracing_subscriber::fmt::layer()
        .event_format(DueText::new(TimeZone::system()))
        .with_ansi(false)
        .with_test_writer()
        .with_filter(LevelSet::new(LogLevel::Debug, None));
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// At most one line per `period` for one kind of event on one thread (a shard): what a
/// client can trigger at will (refusals, drops) must not flood the log. The caller asks
/// [`Throttle::allow`] before logging and puts the count of suppressed lines in the line it
/// logs. Single-threaded (`Cell`s), clock passed in.
#[derive(Debug)]
pub struct Throttle {
    period: Duration,
    last: std::cell::Cell<Option<Instant>>,
    suppressed: std::cell::Cell<u64>,
}

impl Throttle {
    pub const fn new(period: Duration) -> Self {
        Throttle {
            period,
            last: std::cell::Cell::new(None),
            suppressed: std::cell::Cell::new(0),
        }
    }

    /// `Some(n)`: log now, `n` lines were suppressed since the last one. `None`: suppressed
    /// (counted for the next line).
    pub fn allow(&self, now: Instant) -> Option<u64> {
        match self.last.get() {
            Some(last) if now.saturating_duration_since(last) < self.period => {
                self.suppressed.set(self.suppressed.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.suppressed.replace(0))
            }
        }
    }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync + 'static>;

/// Builds the subscriber without installing it, so tests can scope it with `with_default`.
fn build(
    cfg: &LogConfig,
    _mode: Mode,
) -> Result<(impl Subscriber + Send + Sync + 'static, LogGuard), String> {
    let tz = TimeZone::system();
    let mut layers: Vec<BoxedLayer> = Vec::new();
    let mut guard = LogGuard { file: None };

    if let Some(only) = &cfg.console {
        let filter = LevelSet::new(cfg.level, only.as_deref());
        let ansi = io::stderr().is_terminal();
        layers.push(terminal_layer(
            cfg.console_format,
            io::stderr,
            ansi,
            &tz,
            filter,
        ));
    }

    if let Some(only) = &cfg.file {
        let file = RotatingFile::open(cfg)?;
        let worker = FileWorker::spawn(file, cfg.file_path.clone())?;
        let writer = worker.writer();
        guard.file = Some(worker);
        let filter = LevelSet::new(cfg.level, only.as_deref());
        layers.push(terminal_layer(cfg.file_format, writer, false, &tz, filter));
    }

    Ok((tracing_subscriber::registry().with(layers), guard))
}

/// One terminal: a formatter in `format` writing to `writer`, behind its own level filter.
fn terminal_layer<W>(
    format: LogFormat,
    writer: W,
    ansi: bool,
    tz: &TimeZone,
    filter: LevelSet,
) -> BoxedLayer
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => layer
            .event_format(DueText::new(tz.clone()))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_timer(Clock { tz: tz.clone() })
            .with_filter(filter)
            .boxed(),
    }
}

// ---------------------------------------------------------------------------------------------
// Level filtering

/// Maps due's six levels onto tracing's; `fatal` and `panic` have no tracing equivalent above
/// `ERROR`.
fn tracing_level(level: LogLevel) -> Level {
    match level {
        LogLevel::Debug => Level::DEBUG,
        LogLevel::Info => Level::INFO,
        LogLevel::Warn => Level::WARN,
        LogLevel::Error | LogLevel::Fatal | LogLevel::Panic => Level::ERROR,
    }
}

/// Per-terminal filter: at or above the global minimum and, when the terminal lists levels,
/// one of those. It depends only on static metadata, so tracing caches the verdict per call
/// site and a disabled `debug!` costs one load and branch.
#[derive(Debug, Clone)]
struct LevelSet {
    /// Allowed tracing levels; index 0 = ERROR … 4 = TRACE (TRACE is never allowed).
    allowed: [bool; 5],
    /// Most verbose allowed level, for tracing's global fast path.
    hint: LevelFilter,
}

impl LevelSet {
    fn new(min: LogLevel, only: Option<&[LogLevel]>) -> Self {
        let min = tracing_level(min);
        let mut allowed = [false; 5];
        for level in [Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG] {
            let listed = match only {
                None => true,
                Some(list) => list.iter().any(|&l| tracing_level(l) == level),
            };
            // tracing orders by verbosity: ERROR < WARN < INFO < DEBUG < TRACE.
            allowed[Self::index(&level)] = level <= min && listed;
        }
        let hint = [Level::DEBUG, Level::INFO, Level::WARN, Level::ERROR]
            .into_iter()
            .find(|l| allowed[Self::index(l)])
            .map_or(LevelFilter::OFF, LevelFilter::from_level);
        LevelSet { allowed, hint }
    }

    fn index(level: &Level) -> usize {
        match *level {
            Level::ERROR => 0,
            Level::WARN => 1,
            Level::INFO => 2,
            Level::DEBUG => 3,
            Level::TRACE => 4,
        }
    }

    fn allows(&self, level: &Level) -> bool {
        self.allowed[Self::index(level)]
    }
}

impl<S> Filter<S> for LevelSet {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        self.allows(meta.level())
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.allows(meta.level()) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.hint)
    }
}

// ---------------------------------------------------------------------------------------------
// Formats

/// Timestamps in the system zone (the zone is looked up once, at start-up).
#[derive(Debug, Clone)]
struct Clock {
    tz: TimeZone,
}

impl Clock {
    /// due's default `timeFormat`, `2006/01/02 15:04:05.000000`.
    fn write_text(&self, w: &mut impl fmt::Write, ts: Timestamp) -> fmt::Result {
        let dt = self.tz.to_datetime(ts);
        write!(
            w,
            "{:04}/{:02}/{:02} {:02}:{:02}:{:02}.{:06}",
            dt.year(),
            dt.month(),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.subsec_nanosecond() / 1000
        )
    }
}

/// JSON lines carry RFC 3339 with microseconds and the local offset, which log shippers parse.
impl FormatTime for Clock {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let ts = Timestamp::now();
        let dt = self.tz.to_datetime(ts);
        let offset = self.tz.to_offset(ts).seconds();
        let sign = if offset < 0 { '-' } else { '+' };
        let offset = offset.unsigned_abs() / 60;
        write!(
            w,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}{sign}{:02}:{:02}",
            dt.year(),
            dt.month(),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.subsec_nanosecond() / 1000,
            offset / 60,
            offset % 60
        )
    }
}

/// due-like text lines: `INFO [2025/10/30 11:44:50.315426] gatehouse::gate: message k=v`.
///
/// due prints `file:line` where we print the target: targets are stable across refactors and
/// are what `RUST_LOG`-style tooling filters on.
struct DueText {
    clock: Clock,
}

impl DueText {
    fn new(tz: TimeZone) -> Self {
        DueText {
            clock: Clock { tz },
        }
    }
}

/// due's four-letter labels, and the ANSI colour used on a terminal.
fn label(level: &Level) -> (&'static str, &'static str) {
    match *level {
        Level::ERROR => ("ERRO", "31"),
        Level::WARN => ("WARN", "33"),
        Level::INFO => ("INFO", "32"),
        Level::DEBUG => ("DEBU", "36"),
        Level::TRACE => ("TRAC", "90"),
    }
}

impl<S, N> FormatEvent<S, N> for DueText
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let (label, colour) = label(meta.level());
        if writer.has_ansi_escapes() {
            write!(writer, "\x1b[{colour}m{label}\x1b[0m [")?;
        } else {
            write!(writer, "{label} [")?;
        }
        self.clock.write_text(&mut writer, Timestamp::now())?;
        write!(writer, "] {}: ", meta.target())?;

        // Enclosing spans, outermost first, as `name{fields}: `.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                writer.write_str(span.name())?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(writer, "{{{fields}}}")?;
                    }
                }
                writer.write_str(": ")?;
            }
        }

        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

// ---------------------------------------------------------------------------------------------
// Rotating file

/// Which rotation period an instant falls in; a change of key means "rotate now".
fn period_key(rotate: Rotate, dt: jiff::civil::DateTime) -> Option<i64> {
    let (y, m, d, h) = (
        i64::from(dt.year()),
        i64::from(dt.month()),
        i64::from(dt.day()),
        i64::from(dt.hour()),
    );
    Some(match rotate {
        Rotate::None => return None,
        Rotate::Year => y,
        Rotate::Month => y * 100 + m,
        Rotate::Week => {
            let week = dt.date().iso_week_date();
            i64::from(week.year()) * 100 + i64::from(week.week())
        }
        Rotate::Day => (y * 100 + m) * 100 + d,
        Rotate::Hour => ((y * 100 + m) * 100 + d) * 100 + h,
    })
}

/// The log file: `file-rotate` handles size limits, renaming (`due.log.20251030T114450`),
/// age-based deletion and gzip; the calendar period is checked here because file-rotate accepts
/// only one content limit and `rotate` and `maxSize` may both be set.
///
/// Rotated files are named after the moment of rotation. Size rotation happens before the first
/// write that finds the file already over `maxSize`, so a file may exceed it by one batch
/// (at most a `BufWriter` buffer); lines are never split across files.
struct RotatingFile {
    inner: FileRotate<AppendTimestamp>,
    rotate: Rotate,
    tz: TimeZone,
    period: Option<i64>,
}

impl RotatingFile {
    fn open(cfg: &LogConfig) -> Result<Self, String> {
        let path = &cfg.file_path;
        // Create and open the file ourselves first: FileRotate panics when it cannot create the
        // directory and silently discards writes when it cannot open the file.
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("create log directory {}: {e}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("open log file {}: {e}", path.display()))?;
        let modified = file.metadata().and_then(|m| m.modified()).ok();
        if path.file_name().is_none() {
            return Err(format!("log file path {} has no file name", path.display()));
        }

        let file_limit = match chrono::Duration::from_std(cfg.file_max_age) {
            Ok(age) if !cfg.file_max_age.is_zero() => FileLimit::Age(age),
            _ => FileLimit::Unlimited,
        };
        let content_limit = match cfg.file_max_size {
            0 => ContentLimit::None,
            n => ContentLimit::BytesSurpassed(usize::try_from(n).unwrap_or(usize::MAX)),
        };
        let compression = if cfg.file_compress {
            Compression::OnRotate(0)
        } else {
            Compression::None
        };
        let inner = FileRotate::new(
            path,
            AppendTimestamp::default(file_limit),
            content_limit,
            compression,
            None,
        );

        let tz = TimeZone::system();
        // A file left over from an earlier period is rotated on the first write, as
        // file-rotate's own time limit does.
        let since = modified
            .and_then(|t| Timestamp::try_from(t).ok())
            .unwrap_or_else(Timestamp::now);
        let period = period_key(cfg.file_rotate, tz.to_datetime(since));
        Ok(RotatingFile {
            inner,
            rotate: cfg.file_rotate,
            tz,
            period,
        })
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let now = period_key(self.rotate, self.tz.to_datetime(Timestamp::now()));
        if now != self.period {
            self.period = now;
            self.inner.rotate()?;
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

// ---------------------------------------------------------------------------------------------
// Non-blocking writer

enum Msg {
    Line(Vec<u8>),
    Shutdown,
}

/// The file thread and the sending side shared with the formatter.
struct FileWorker {
    sender: FileSender,
    thread: JoinHandle<()>,
}

impl FileWorker {
    fn spawn(file: RotatingFile, path: PathBuf) -> Result<Self, String> {
        let (tx, rx) = crossbeam_channel::bounded(FILE_QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let sender = FileSender {
            tx,
            dropped: dropped.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("gatehouse-log".into())
            .spawn(move || drain(rx, BufWriter::new(file), &path, &dropped))
            .map_err(|e| format!("start log file thread: {e}"))?;
        Ok(FileWorker { sender, thread })
    }

    fn writer(&self) -> FileSender {
        self.sender.clone()
    }

    /// Queues a shutdown behind every line already sent and waits (bounded) for the flush.
    fn shutdown(self) {
        let deadline = Instant::now() + FLUSH_WAIT;
        if self
            .sender
            .tx
            .send_deadline(Msg::Shutdown, deadline)
            .is_err()
        {
            return;
        }
        while !self.thread.is_finished() {
            if Instant::now() >= deadline {
                eprintln!("gatehouse: log file flush did not finish in {FLUSH_WAIT:?}");
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.thread.join();
    }
}

/// The file thread: write lines as they come, flush whenever the queue runs dry, so a burst
/// costs one `write(2)` per 8 KiB and a quiet gate still has every line on disk at once.
fn drain(rx: Receiver<Msg>, mut out: BufWriter<RotatingFile>, path: &Path, dropped: &AtomicU64) {
    let mut failing = false;
    let mut reported_drops = 0;
    let mut check = |result: io::Result<()>| match result {
        // Report the first error of a run only: a full disk must not flood stderr.
        Err(e) if !failing => {
            failing = true;
            eprintln!("gatehouse: writing log file {}: {e}", path.display());
        }
        Err(_) => {}
        Ok(()) => failing = false,
    };

    while let Ok(Msg::Line(line)) = rx.recv() {
        check(out.write_all(&line));
        if rx.is_empty() {
            check(out.flush());
            let drops = dropped.load(Ordering::Relaxed);
            if drops > reported_drops {
                eprintln!(
                    "gatehouse: {} log lines dropped: the log file could not keep up",
                    drops - reported_drops
                );
                reported_drops = drops;
            }
        }
    }
    check(out.flush());
}

/// What the formatter writes to: every `write` is one formatted line (tracing-subscriber
/// formats an event into a buffer and writes it with a single `write_all`), queued whole.
#[derive(Clone)]
struct FileSender {
    tx: Sender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl Write for &FileSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.tx.try_send(Msg::Line(buf.to_vec())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // After shutdown: nothing left to write to, and logging must never fail the caller.
            Err(TrySendError::Disconnected(_)) => {}
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for FileSender {
    type Writer = &'a FileSender;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_line_a_period_through_and_counts_the_rest() {
        let t = Throttle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.allow(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(t.allow(t0 + Duration::from_millis(100 * i)), None);
        }
        assert_eq!(t.allow(t0 + Duration::from_millis(999)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(1)), Some(6));
        assert_eq!(t.allow(t0 + Duration::from_millis(1500)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(60)), Some(1));
        // An earlier instant (another thread's clock reading) is suppressed, never a panic.
        assert_eq!(t.allow(t0), None);
    }
    use std::sync::atomic::AtomicUsize;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static SEQ: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "gatehouse-logging-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn file_config(dir: &TempDir, format: LogFormat) -> LogConfig {
        LogConfig {
            level: LogLevel::Info,
            console: None,
            file: Some(None),
            console_format: LogFormat::Text,
            // A nested, not yet existing directory: init must create it.
            file_path: dir.0.join("log").join("due.log"),
            file_format: format,
            file_max_age: Duration::from_secs(7 * 86_400),
            file_max_size: 0,
            file_rotate: Rotate::None,
            file_compress: false,
        }
    }

    /// Runs `f` with the subscriber for `cfg` as the thread's default, then flushes.
    fn with_logger(cfg: &LogConfig, f: impl FnOnce()) {
        let (subscriber, guard) = build(cfg, Mode::Debug).unwrap();
        tracing::subscriber::with_default(subscriber, f);
        drop(guard);
    }

    fn log_lines(cfg: &LogConfig) -> Vec<String> {
        std::fs::read_to_string(&cfg.file_path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn file_terminal_writes_info_and_filters_debug() {
        let dir = TempDir::new();
        let cfg = file_config(&dir, LogFormat::Text);
        with_logger(&cfg, || {
            tracing::debug!("hidden detail");
            tracing::info!(conns = 3, "gate started");
            tracing::warn!("slow client");
        });
        let lines = log_lines(&cfg);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let info = &lines[0];
        assert!(info.starts_with("INFO ["), "{info}");
        assert!(
            info.ends_with("] gatehouse::logging::tests: gate started conns=3"),
            "{info}"
        );
        // `[YYYY/MM/DD hh:mm:ss.uuuuuu]`
        assert_eq!(info.find(']'), Some(6 + 26));
        assert!(lines[1].starts_with("WARN ["), "{}", lines[1]);
        assert!(!lines.iter().any(|l| l.contains("hidden")));
        assert!(
            !lines.iter().any(|l| l.contains('\x1b')),
            "no colour in files"
        );
    }

    #[test]
    fn debug_level_and_spans() {
        let dir = TempDir::new();
        let mut cfg = file_config(&dir, LogFormat::Text);
        cfg.level = LogLevel::Debug;
        with_logger(&cfg, || {
            let span = tracing::info_span!("conn", cid = 7);
            let _enter = span.enter();
            tracing::debug!("shown");
        });
        let lines = log_lines(&cfg);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("DEBU ["));
        assert!(lines[0].ends_with(": conn{cid=7}: shown"), "{}", lines[0]);
    }

    #[test]
    fn json_lines_parse() {
        let dir = TempDir::new();
        let cfg = file_config(&dir, LogFormat::Json);
        with_logger(&cfg, || {
            tracing::info!(uid = 42, "user bound");
            tracing::debug!("hidden");
            tracing::error!(reason = "quote \" and\nnewline", "closing");
        });
        let lines = log_lines(&cfg);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let values: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(values[0]["level"], "INFO");
        assert_eq!(values[0]["message"], "user bound");
        assert_eq!(values[0]["uid"], 42);
        assert_eq!(values[0]["target"], "gatehouse::logging::tests");
        let ts = values[0]["timestamp"].as_str().unwrap();
        assert!(ts.parse::<Timestamp>().is_ok(), "{ts}");
        assert_eq!(values[1]["level"], "ERROR");
        assert_eq!(values[1]["reason"], "quote \" and\nnewline");
    }

    #[test]
    fn per_terminal_level_list() {
        let dir = TempDir::new();
        let mut cfg = file_config(&dir, LogFormat::Text);
        cfg.level = LogLevel::Debug;
        cfg.file = Some(Some(vec![LogLevel::Debug, LogLevel::Fatal]));
        with_logger(&cfg, || {
            tracing::debug!("d");
            tracing::info!("i");
            tracing::warn!("w");
            tracing::error!("e");
        });
        let labels: Vec<String> = log_lines(&cfg).iter().map(|l| l[..4].to_owned()).collect();
        assert_eq!(labels, ["DEBU", "ERRO"]);
    }

    #[test]
    fn level_set_rules() {
        let all = LevelSet::new(LogLevel::Warn, None);
        assert!(all.allows(&Level::ERROR) && all.allows(&Level::WARN));
        assert!(!all.allows(&Level::INFO) && !all.allows(&Level::DEBUG));
        assert!(!all.allows(&Level::TRACE));
        assert_eq!(all.hint, LevelFilter::WARN);

        // fatal/panic are ERROR: `level = "fatal"` keeps errors.
        let fatal = LevelSet::new(LogLevel::Fatal, None);
        assert!(fatal.allows(&Level::ERROR) && !fatal.allows(&Level::WARN));

        // A listed level below the minimum stays filtered.
        let list = LevelSet::new(LogLevel::Info, Some(&[LogLevel::Debug, LogLevel::Warn]));
        assert!(!list.allows(&Level::DEBUG) && !list.allows(&Level::INFO));
        assert!(list.allows(&Level::WARN) && !list.allows(&Level::ERROR));
        assert_eq!(list.hint, LevelFilter::WARN);

        let none = LevelSet::new(LogLevel::Info, Some(&[]));
        assert_eq!(none.hint, LevelFilter::OFF);
    }

    #[test]
    fn size_rotation_and_compression() {
        let dir = TempDir::new();
        let mut cfg = file_config(&dir, LogFormat::Text);
        cfg.file_max_size = 200;
        cfg.file_compress = true;
        // Each line goes through its own batch: wait until the file thread has drained.
        let (subscriber, guard) = build(&cfg, Mode::Release).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..6 {
                tracing::info!("line {i} with some padding to pass the limit quickly");
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        drop(guard);
        let names: Vec<String> = std::fs::read_dir(cfg.file_path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().any(|n| n == "due.log"), "{names:?}");
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("due.log.") && n.ends_with(".gz")),
            "{names:?}"
        );
    }

    #[test]
    fn unwritable_path_is_an_error() {
        let dir = TempDir::new();
        std::fs::create_dir_all(&dir.0).unwrap();
        let blocker = dir.0.join("file");
        std::fs::write(&blocker, b"").unwrap();
        let mut cfg = file_config(&dir, LogFormat::Text);
        cfg.file_path = blocker.join("due.log");
        let err = build(&cfg, Mode::Release).err().unwrap();
        assert!(err.starts_with("create log directory"), "{err}");
    }

    #[test]
    fn period_keys() {
        let dt = |s: &str| s.parse::<jiff::civil::DateTime>().unwrap();
        let a = dt("2025-12-29T23:59:59");
        let b = dt("2025-12-30T00:00:00");
        let c = dt("2026-01-01T00:00:00");
        assert_eq!(period_key(Rotate::None, a), None);
        assert_ne!(period_key(Rotate::Day, a), period_key(Rotate::Day, b));
        assert_ne!(period_key(Rotate::Hour, a), period_key(Rotate::Hour, b));
        assert_eq!(
            period_key(Rotate::Hour, b),
            period_key(Rotate::Hour, dt("2025-12-30T00:59:59"))
        );
        // 2025-12-29 is the Monday of ISO week 2026-W01, which also holds 2026-01-01.
        assert_eq!(period_key(Rotate::Week, a), period_key(Rotate::Week, c));
        assert_ne!(
            period_key(Rotate::Week, a),
            period_key(Rotate::Week, dt("2025-12-28T12:00:00"))
        );
        assert_eq!(period_key(Rotate::Month, a), period_key(Rotate::Month, b));
        assert_ne!(period_key(Rotate::Month, b), period_key(Rotate::Month, c));
        assert_ne!(period_key(Rotate::Year, b), period_key(Rotate::Year, c));
    }

    #[test]
    fn init_for_tests_is_idempotent() {
        init_for_tests();
        init_for_tests();
        tracing::info!("captured by libtest");
    }
}
