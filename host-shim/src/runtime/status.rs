//! The container's status as the monitor records it, for the commands that find the monitor
//! gone: `<root>/<id>/status.json`, replaced atomically.

use std::path::Path;

use serde::{Deserialize, Serialize};
use slog::{warn, Logger};

/// The file's name in the container's directory.
pub const FILE: &str = "status.json";

/// The OCI statuses a monitor records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub status: Status,
    /// The exit code, once stopped.
    pub exit_code: Option<i32>,
}

/// Records `status` in `dir` (a failure is logged: the monitor's liveness still tells).
pub fn record(dir: &Path, status: Status, exit_code: Option<i32>, log: &Logger) {
    let tmp = dir.join(format!(".{FILE}.tmp"));
    let written = serde_json::to_vec(&Recorded { status, exit_code })
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, dir.join(FILE)));
    if let Err(err) = written {
        warn!(log, "cannot record the status"; "status" => ?status, "error" => %err);
    }
}

/// The recorded status, if any.
pub fn read(dir: &Path) -> Option<Recorded> {
    serde_json::from_slice(&std::fs::read(dir.join(FILE)).ok()?).ok()
}
