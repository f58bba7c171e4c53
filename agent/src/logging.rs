//! The agent's log: one logfmt line per record on the console (stderr), stamped
//! with the guest's boot clock, so the boot timeline can be read straight off the
//! serial console and lines from concurrent requests never interleave.
//!
//! ttrpc and other libraries log through the `log` facade; [`LogBridge`] forwards
//! those records into the same slog stack.

use std::fmt::{self, Write as _};
use std::io::Write as _;

use slog::{Drain, Key, Level, OwnedKVList, Record, KV};
use wisp_init::LogLevel;

/// Seconds since the guest booted (CLOCK_BOOTTIME), the clock printk uses too.
pub fn boot_clock() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0)
}

fn slog_level(level: LogLevel) -> Level {
    match level {
        LogLevel::Critical => Level::Critical,
        LogLevel::Error => Level::Error,
        LogLevel::Warning => Level::Warning,
        LogLevel::Info => Level::Info,
        LogLevel::Debug => Level::Debug,
        LogLevel::Trace => Level::Trace,
    }
}

/// Full lowercase names, as Kata's agent logs them.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::Critical => "critical",
        Level::Error => "error",
        Level::Warning => "warning",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// Writes records at or above a level to stderr.
#[derive(Debug)]
struct ConsoleDrain {
    level: Level,
}

struct LineSerializer<'a>(&'a mut String);

impl slog::Serializer for LineSerializer<'_> {
    fn emit_arguments(&mut self, key: Key, val: &fmt::Arguments<'_>) -> slog::Result {
        let value = val.to_string();
        if value.is_empty() || value.contains([' ', '"', '=']) {
            let _ = write!(self.0, " {key}={value:?}");
        } else {
            let _ = write!(self.0, " {key}={value}");
        }
        Ok(())
    }
}

impl Drain for ConsoleDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        if !record.level().is_at_least(self.level) {
            return Ok(());
        }
        let mut line = format!(
            "wisp-agent t={:.6} level={} msg={:?}",
            boot_clock(),
            level_name(record.level()),
            record.msg().to_string()
        );
        let _ = record.kv().serialize(record, &mut LineSerializer(&mut line));
        let _ = values.serialize(record, &mut LineSerializer(&mut line));
        line.push('\n');
        // One write per line: concurrent records stay whole on the console.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
        Ok(())
    }
}

/// The root logger at `level`.
pub fn logger(level: LogLevel) -> slog::Logger {
    let drain = ConsoleDrain { level: slog_level(level) };
    slog::Logger::root(drain.fuse(), slog::o!("pid" => std::process::id()))
}

/// Forwards `log` records (ttrpc's) into slog.
#[derive(Debug)]
pub struct LogBridge(pub slog::Logger);

impl log::Log for LogBridge {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        let target = r.target();
        match r.level() {
            log::Level::Error => slog::error!(self.0, "{}", r.args(); "source" => target),
            log::Level::Warn => slog::warn!(self.0, "{}", r.args(); "source" => target),
            log::Level::Info => slog::info!(self.0, "{}", r.args(); "source" => target),
            log::Level::Debug => slog::debug!(self.0, "{}", r.args(); "source" => target),
            log::Level::Trace => slog::trace!(self.0, "{}", r.args(); "source" => target),
        }
    }
    fn flush(&self) {}
}

/// Installs the bridge once; libraries then log at most at `level`.
pub fn bridge_log_crate(log: &slog::Logger, level: LogLevel) {
    let max = match level {
        LogLevel::Critical | LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warning => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    };
    if log::set_boxed_logger(Box::new(LogBridge(log.clone()))).is_ok() {
        log::set_max_level(max);
    }
}
