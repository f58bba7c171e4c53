//! Starting a process inside a container: the `runc init` part of the agent.
//!
//! TEMPORARY: this first version only spawns the process without any
//! isolation, so the container module can be coded against the API. The real
//! launcher (re-exec as `wisp-agent __launch`, namespaces, rootfs, identity,
//! seccomp) replaces the bodies without changing the signatures.

// The container module (the lifecycle helper's) is the caller; until it lands
// only `wisp-agent run` uses part of the API.
#![allow(dead_code)]

mod error;
pub mod hooks;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub use error::LaunchError;
#[allow(unused_imports)] // used by the container module
pub use hooks::{run_hooks, HookError};

/// The three stdio descriptors of the container process. With `terminal`,
/// `stdin` is the pty's slave side and becomes the controlling terminal.
#[derive(Debug)]
pub struct StdioFds {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub terminal: bool,
}

/// A container's init process to create.
#[derive(Debug)]
pub struct InitRequest {
    pub container_id: String,
    pub spec: oci_spec::runtime::Spec,
    pub bundle: PathBuf,
    pub stdio: StdioFds,
}

/// A created container init: it waits for [`StartHandle::start`] before exec.
#[derive(Debug)]
pub struct Created {
    /// The final process, as a pid of the agent's pid namespace.
    pub pid: i32,
    pub start: StartHandle,
}

/// Releases a created init into `execve`.
#[derive(Debug)]
pub struct StartHandle {
    _private: (),
}

impl StartHandle {
    /// Returns once the container's process has exec'd, or with why it failed.
    pub fn start(self) -> Result<(), LaunchError> {
        Ok(())
    }
}

/// An extra process to run in a running container.
#[derive(Debug)]
pub struct ExecRequest {
    pub container_id: String,
    pub init_pid: i32,
    pub process: oci_spec::runtime::Process,
    pub spec: oci_spec::runtime::Spec,
    pub stdio: StdioFds,
}

/// Creates the container's init; `place(pid)` runs before the child isolates itself.
pub fn create(req: InitRequest, place: impl FnOnce(i32) -> Result<(), String>) -> Result<Created, LaunchError> {
    let process = req.spec.process().clone().ok_or_else(|| LaunchError::InvalidSpec("no process".into()))?;
    let pid = spawn_plain(&process, req.stdio)?;
    place(pid).map_err(|msg| LaunchError::Place { pid, msg })?;
    Ok(Created { pid, start: StartHandle { _private: () } })
}

/// Starts `req.process` inside the container whose init is `req.init_pid`.
pub fn exec(req: ExecRequest, place: impl FnOnce(i32) -> Result<(), String>) -> Result<i32, LaunchError> {
    let pid = spawn_plain(&req.process, req.stdio)?;
    place(pid).map_err(|msg| LaunchError::Place { pid, msg })?;
    Ok(pid)
}

/// TEMPORARY: a plain spawn without isolation.
fn spawn_plain(process: &oci_spec::runtime::Process, stdio: StdioFds) -> Result<i32, LaunchError> {
    let args = process.args().clone().unwrap_or_default();
    let (argv0, rest) = args.split_first().ok_or_else(|| LaunchError::InvalidSpec("process.args is empty".into()))?;
    let child = Command::new(argv0)
        .args(rest)
        .env_clear()
        .envs(process.env().iter().flatten().filter_map(|kv| kv.split_once('=')))
        .stdin(Stdio::from(stdio.stdin))
        .stdout(Stdio::from(stdio.stdout))
        .stderr(Stdio::from(stdio.stderr))
        .spawn()
        .map_err(|source| LaunchError::Launcher { what: format!("cannot start {argv0}"), source })?;
    Ok(child.id() as i32)
}

/// The `wisp-agent __launch` side.
pub fn child_main() -> ! {
    eprintln!("wisp-agent __launch: not implemented yet");
    std::process::exit(1)
}
