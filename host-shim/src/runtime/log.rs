//! runc's log: logrus lines in `--log FILE` (or on stderr without it), text or json.
//!
//! Callers read it: containerd-shim-runc-v2 passes `--log <bundle>/log.json --log-format json`
//! and, when a command fails, shows the `msg` of the last `"level":"error"` line; conmon does the
//! same with its own file. So every error is one line there, and (as runc does) also the bare
//! message on stderr when the log is a file, since anything on stdout may end up in the
//! container's output. Lines are `time="2006-01-02T15:04:05Z" level=error msg="..."` (text) or
//! `{"level":"error","msg":"...","time":"..."}` (json). Info lines are written always, debug
//! lines with `--debug` only (runc's default level is info).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use serde::Serialize;

use super::RuntimeError;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--log`'s path made absolute (the monitor runs with another working directory).
fn file_path(file: Option<&Path>) -> Option<std::path::PathBuf> {
    file.map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_owned()))
}

/// A line's level, with logrus's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
    Info,
    Debug,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Info => "info",
            Self::Debug => "debug",
        }
    }
}

/// Where log lines go, in which format, from which level.
#[derive(Debug)]
pub struct Log {
    file: Option<File>,
    /// `--log`, passed on to the monitor.
    path: Option<std::path::PathBuf>,
    format: LogFormat,
    debug: bool,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    level: &'a str,
    msg: &'a str,
    time: &'a str,
}

impl Log {
    /// The log of `--log FILE` (appended to, created 0644 as runc does), or stderr without it.
    pub fn open(file: Option<&Path>, format: LogFormat, debug: bool) -> Result<Self, RuntimeError> {
        let file_arg = file;
        let file = match file {
            Some(path) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o644)
                    .custom_flags(libc::O_SYNC | libc::O_CLOEXEC)
                    .open(path)
                    .map_err(RuntimeError::io("cannot open the log", path))?,
            ),
            None => None,
        };
        Ok(Self { file, path: file_path(file_arg), format, debug })
    }

    /// The global flags that give another `wisp-runtime` process (the monitor) this log.
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(path) = &self.path {
            args.extend(["--log".to_owned(), path.display().to_string()]);
        }
        let format = match self.format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        args.extend(["--log-format".to_owned(), format.to_owned()]);
        if self.debug {
            args.push("--debug".to_owned());
        }
        args
    }

    /// `--log-format`.
    pub fn format(&self) -> LogFormat {
        self.format
    }

    /// The log file's path, if any (the monitor's own lines go there too).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Lines on stderr (no `--log`, or it could not be opened).
    pub fn stderr(format: LogFormat, debug: bool) -> Self {
        Self { file: None, path: None, format, debug }
    }

    pub fn error(&self, msg: impl fmt::Display) {
        self.write(Level::Error, &msg.to_string());
    }

    pub fn warn(&self, msg: impl fmt::Display) {
        self.write(Level::Warning, &msg.to_string());
    }

    pub fn info(&self, msg: impl fmt::Display) {
        self.write(Level::Info, &msg.to_string());
    }

    /// A line only with `--debug`.
    pub fn debug(&self, msg: impl fmt::Display) {
        if self.debug {
            self.write(Level::Debug, &msg.to_string());
        }
    }

    /// Whether `--debug` was given.
    pub fn is_debug(&self) -> bool {
        self.debug
    }

    /// A failed command, as runc reports it: the error and its causes as one error line, and
    /// the bare message on stderr too when the line went to a file.
    pub fn fatal(&self, err: &dyn std::error::Error) {
        let msg = crate::error_chain(err);
        self.write(Level::Error, &msg);
        if self.file.is_some() {
            eprintln!("{msg}");
        }
    }

    fn write(&self, level: Level, msg: &str) {
        let line = format_line(self.format, level, msg, SystemTime::now());
        // A log that cannot be written has nowhere to report to: the error still reaches
        // stderr through `fatal`, and the exit status says the rest.
        let _ = match &self.file {
            Some(file) => (&*file).write_all(line.as_bytes()),
            None => std::io::stderr().write_all(line.as_bytes()),
        };
    }
}

/// One log line, newline included.
pub fn format_line(format: LogFormat, level: Level, msg: &str, now: SystemTime) -> String {
    let time = rfc3339(now, false);
    match format {
        LogFormat::Json => {
            let line = JsonLine { level: level.name(), msg, time: &time };
            // Three strings always serialize.
            serde_json::to_string(&line).unwrap_or_default() + "\n"
        }
        LogFormat::Text => format!("time={} level={} msg={}\n", logfmt(&time), level.name(), logfmt(msg)),
    }
}

/// A value as logrus's text formatter writes it: bare when made only of letters, digits and
/// `-._/@^+`, else quoted as Go's `%q` does.
fn logfmt(value: &str) -> String {
    let bare = |c: char| c.is_ascii_alphanumeric() || "-._/@^+".contains(c);
    if !value.is_empty() && value.chars().all(bare) {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `t` in UTC as RFC 3339: `2006-01-02T15:04:05Z`, or with `nanos` Go's RFC3339Nano (the
/// fraction without its trailing zeros, none when zero), as runc writes `created`.
pub fn rfc3339(t: SystemTime, nanos: bool) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    let mut out = format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    if nanos && since.subsec_nanos() != 0 {
        let fraction = format!("{:09}", since.subsec_nanos());
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// (year, month, day) of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn times_are_rfc3339_in_utc_as_go_prints_them() {
        assert_eq!(rfc3339(at(0, 0), false), "1970-01-01T00:00:00Z");
        // 2026-12-06T01:34:23.040327255Z, runc's `created` of a container made here.
        assert_eq!(rfc3339(at(1_796_520_863, 40_327_255), true), "2026-12-06T01:34:23.040327255Z");
        assert_eq!(rfc3339(at(1_796_520_863, 40_327_255), false), "2026-12-06T01:34:23Z");
        assert_eq!(rfc3339(at(951_782_400, 500_000_000), true), "2000-02-29T00:00:00.5Z", "a leap day");
        assert_eq!(rfc3339(at(951_782_400, 0), true), "2000-02-29T00:00:00Z", "no fraction when zero");
        assert_eq!(rfc3339(at(4_102_444_799, 0), false), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn lines_are_logrus_lines() {
        let t = at(1_796_520_836, 0);
        assert_eq!(
            format_line(LogFormat::Json, Level::Error, "container does not exist", t),
            "{\"level\":\"error\",\"msg\":\"container does not exist\",\"time\":\"2026-12-06T01:33:56Z\"}\n"
        );
        assert_eq!(
            format_line(LogFormat::Text, Level::Error, "container does not exist", t),
            "time=\"2026-12-06T01:33:56Z\" level=error msg=\"container does not exist\"\n"
        );
        assert_eq!(
            format_line(LogFormat::Text, Level::Info, "started", t),
            "time=\"2026-12-06T01:33:56Z\" level=info msg=started\n"
        );
        let quoted = format_line(LogFormat::Text, Level::Warning, "a \"b\"\\\n\u{1}é", t);
        assert!(quoted.ends_with("level=warning msg=\"a \\\"b\\\"\\\\\\n\\x01é\"\n"), "{quoted}");
        let json = format_line(LogFormat::Json, Level::Debug, "x \"y\"\n", t);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!((v["level"].as_str(), v["msg"].as_str()), (Some("debug"), Some("x \"y\"\n")));
    }

    #[test]
    fn a_file_log_appends_one_line_per_entry_and_debug_only_when_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("log.json");
        std::fs::write(&path, "{\"level\":\"info\",\"msg\":\"before\",\"time\":\"x\"}\n").unwrap();
        let log = Log::open(Some(&path), LogFormat::Json, false).unwrap();
        log.info("one");
        log.debug("hidden");
        log.fatal(&RuntimeError::NotRunning);
        let debug = Log::open(Some(&path), LogFormat::Json, true).unwrap();
        debug.debug("shown");
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let msgs: Vec<_> = lines.iter().map(|l| (l["level"].as_str().unwrap(), l["msg"].as_str().unwrap())).collect();
        assert_eq!(msgs, [("info", "before"), ("info", "one"), ("error", "container not running"), ("debug", "shown")]);
        assert!(Log::open(Some(&tmp.path().join("missing/log.json")), LogFormat::Json, false).is_err());
    }
}
