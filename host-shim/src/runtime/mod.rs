//! `wisp-runtime`: runc's command line in front of the sandbox core, so callers that drive a
//! runc-compatible runtime (Docker 20.10 through containerd-shim-runc-v2, Podman 4.3 through
//! conmon) run their containers in wisp VMs.
//!
//! # Process model
//!
//! `create` forks a per-container *monitor* that stays alive: its pid is the one written to
//! `--pid-file`, the process the caller (a child subreaper) waits for. The monitor owns the VM,
//! relays the container's stdio (or a pty whose master went over `--console-socket`), forwards
//! every signal it receives to the container and exits with the container's status. The other
//! commands (`start`, `kill`, `exec`, ...) are short-lived processes that find the monitor through
//! `<root>/<id>/` and talk to it. A monitor killed with SIGKILL never writes that it stopped:
//! [`store::live_status`] reads a dead monitor as `stopped` whatever the record says.
//!
//! # Files
//!
//! | module | holds |
//! |---|---|
//! | [`cli`] | runc's flags and commands (clap), signal names and numbers |
//! | [`log`] | runc's `--log` / `--log-format` lines (logrus text or json), errors also on stderr |
//! | [`store`] | `<root>/<id>/state.json` under a lock: create, load, save, list, remove; the live status |
//! | [`oci_state`] | the OCI state JSON of `state`, the table and JSON of `list` |
//! | [`preflight`] | runc's checks before a lifecycle command: the id exists, `kill` needs a live container, `delete` of a half-made one |
//! | [`spec_template`] | `spec`: runc's default `config.json` (and its `--rootless` variant) |
//! | [`features`] | `features`: what wisp supports, as the OCI features document |
//! | [`lifecycle`] | one function per command that needs the VM: create, start, kill, delete, exec, ... |
//! | [`launch`] | `create`'s half of the process model: the monitor forked, its word awaited, the pid file |
//! | [`monitor`] | the monitor: the VM booted through the sandbox core, stdio relayed, signals forwarded, the control requests served |
//! | [`control`] | the monitor's control socket: a JSON line and the descriptors it hands over, a JSON line back |
//! | [`exec`] | `exec`: the relay the caller waits for (forked with `--detach`), its stdio handed to the monitor |
//! | [`monitor_exec`] | the monitor's side of an exec: ExecProcess, the relay's stdio pumped, the status sent back |
//! | [`pty`] | the host pty of `--console-socket`: the master sent, the slave raw and controlling |
//! | [`hooks`] | the bundle's host hooks (prestart, createRuntime, poststart, poststop) with the OCI state on stdin |
//! | [`network`] | the container's network namespace: the monitor's own for Docker's hook, wired to the VM |
//! | [`cgroup`] | the container's cgroup (`cgroupsPath`): the monitor in it, the VM's sandbox cgroup under it |
//! | [`json_log`] | the monitor's slog lines in runc's JSON log format |
//!
//! The binary (`src/bin/wisp-runtime.rs`) parses, dispatches and reports errors as runc does
//! (a line in the log, the message on stderr, exit status 1).

pub mod cgroup;
pub mod cli;
pub mod control;
pub mod exec;
pub mod features;
pub mod hooks;
pub mod json_log;
pub mod launch;
pub mod lifecycle;
pub mod log;
pub mod monitor;
pub mod monitor_exec;
pub mod network;
pub mod oci_state;
pub mod preflight;
pub mod pty;
pub mod spec_template;
pub mod store;

use std::io;
use std::path::PathBuf;

/// What every command gets besides its own arguments: the global flags, parsed.
#[derive(Debug)]
pub struct Ctx {
    /// `--root`: the directory of the containers' state (default [`store::default_root`]).
    pub root: PathBuf,
    /// `--log` / `--log-format` / `--debug`.
    pub log: log::Log,
    /// `--systemd-cgroup`: the bundle's `cgroupsPath` is `slice:prefix:name` for systemd.
    pub systemd_cgroup: bool,
    /// `--rootless` as given (`auto`, `true` or `false`; runc's default is `auto`).
    pub rootless: Option<String>,
}

/// The errors of `wisp-runtime`. Where a caller matches runc's message (containerd's runc shim
/// looks for "does not exist" and "container not running", podman for "does not exist"), the
/// message contains runc's words.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("container \"{0}\" does not exist")]
    NotExist(String),
    #[error("container with id exists: {0}")]
    Exists(String),
    #[error("container not running")]
    NotRunning,
    #[error("invalid container ID format: {0:?}")]
    InvalidId(String),
    /// runc's words, capital and period included (`runc spec` prints exactly this).
    #[error("File config.json exists. Remove it first")]
    SpecExists,
    #[error("JSON specification file {0} not found")]
    NoSpec(PathBuf),
    #[error("cannot load {path}")]
    BadSpec {
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("unknown signal {0:?}")]
    BadSignal(String),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path}")]
    Json {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} is not a directory of wisp-runtime (a symlink or another kind of file)")]
    NotADirectory { path: PathBuf },
    #[error("{0}")]
    Usage(String),
    /// Creating, starting or driving the container failed.
    #[error(transparent)]
    Launch(#[from] launch::LaunchError),
    /// A host hook failed (`start`'s poststart).
    #[error(transparent)]
    Hook(#[from] hooks::HookError),
}

impl RuntimeError {
    /// An `Io` error maker for `map_err`: what failed, on which path.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }
}
