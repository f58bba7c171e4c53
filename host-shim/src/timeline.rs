//! The host timeline of a sandbox: one log line per phase of its life (`phase`, and `unix_ms`
//! on the host's wall clock), from the shim's start to its exit, so one `ctr run` can be laid
//! out end to end from containerd's log beside the client's own clock (`wisp-bench-ctr` reads
//! them, issue 18). The wall clock, not a monotonic one: the reader is another process.

use std::time::{SystemTime, UNIX_EPOCH};

use slog::{info, Logger};

/// Logs that phase `phase` was reached now.
pub fn mark(log: &Logger, phase: &str) {
    let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or_default();
    info!(log, "phase"; "phase" => phase, "unix_ms" => format!("{unix_ms:.1}"));
}
