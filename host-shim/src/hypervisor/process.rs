//! Starting and watching the processes of one VM, the same way for every VMM backend.
//!
//! Each process logs to `<name>.log` and records its pid in `<name>.pid` in the VM's
//! directory, so a later `containerd-shim-wisp-v2 delete` can kill what a crashed shim left
//! behind; descriptors the VMM must inherit (the vhost-vsock fd, a CNI pod's tap) are passed to
//! that child only.

use std::fs::{self, File};
use std::path::Path;
use std::process::Stdio;

use slog::{info, Logger};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::qemu::cmdline::shell_line;
use super::{tail, vhost_vsock, HypervisorError, VmPaths};

/// What to start: `program` with `args` and extra environment `env`, keeping `inherit` open.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    /// The log and pid file name (`qemu`, `virtiofsd`, ...).
    pub name: &'a str,
    /// The program.
    pub program: &'a Path,
    /// Its arguments.
    pub args: &'a [String],
    /// Extra environment variables.
    pub env: &'a [(&'a str, &'a str)],
    /// Descriptors only this child keeps across exec.
    pub inherit: &'a [i32],
}

/// Starts `launch` with stdout and stderr in `<name>.log` and its pid in `<name>.pid`; killed
/// when the returned [`Child`] is dropped.
pub fn spawn(paths: &VmPaths, log: &Logger, launch: Launch<'_>) -> Result<Child, HypervisorError> {
    let Launch { name, program, args, env, inherit } = launch;
    let log_path = paths.helper_log(name);
    let io = |source| HypervisorError::Io { what: "cannot create log", path: log_path.clone(), source };
    let out = File::create(&log_path).map_err(io)?;
    let err = out.try_clone().map_err(io)?;
    info!(log, "starting {name}"; "argv" => shell_line(&program.to_string_lossy(), args));
    let mut command = Command::new(program);
    command.args(args).envs(env.iter().copied()).stdin(Stdio::null()).stdout(out).stderr(err).kill_on_drop(true);
    if !inherit.is_empty() {
        let fds = inherit.to_vec();
        // SAFETY: the closure runs between fork and exec and only calls fcntl(2), which is
        // async-signal-safe; it reads the moved vector and touches no other memory.
        unsafe {
            command.pre_exec(move || fds.iter().try_for_each(|fd| vhost_vsock::inherit_in_child(*fd)));
        }
    }
    let child = command.spawn().map_err(|source| HypervisorError::Spawn { program: program.to_owned(), source })?;
    if let Some(pid) = child.id() {
        let pid_file = paths.dir().join(format!("{name}.pid"));
        fs::write(&pid_file, pid.to_string()).map_err(|source| HypervisorError::Io {
            what: "cannot write",
            path: pid_file,
            source,
        })?;
    }
    Ok(child)
}

/// Waits for the VMM `child` in the background and sends one line on `exited` when it is gone:
/// `<what> exited (<status>): <last line of its log>`.
pub fn watch_exit(
    mut child: Child,
    what: &'static str,
    log_path: std::path::PathBuf,
    exited: watch::Sender<Option<String>>,
) {
    tokio::spawn(async move {
        let status = child.wait().await;
        let last = tail(&log_path, 1);
        let description = match status {
            Ok(status) if last.is_empty() => format!("{what} exited ({status})"),
            Ok(status) => format!("{what} exited ({status}): {last}"),
            Err(err) => format!("{what} could not be waited for: {err}"),
        };
        let _ = exited.send(Some(description));
    });
}
