//! `agent.debug_console`: a shell on the VM's console for a person debugging the
//! guest (the initrd needs a shell, e.g. `rootfs-builder initrd --busybox`).
//!
//! The shell gets a session of its own with the console as controlling terminal,
//! so job control and Ctrl-C work. It is started once; when it exits the reaper
//! collects it like any other child.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Shells tried in order.
const SHELLS: &[&str] = &["/bin/bash", "/bin/sh"];

#[derive(Debug, thiserror::Error)]
pub enum DebugConsoleError {
    #[error("no shell in the image (looked for {})", SHELLS.join(", "))]
    NoShell,
    #[error("cannot open /dev/console for the debug shell")]
    Console(#[source] std::io::Error),
    #[error("cannot start {shell}")]
    Spawn { shell: &'static str, source: std::io::Error },
}

/// Starts the debug shell; returns its pid.
pub fn spawn() -> Result<u32, DebugConsoleError> {
    let shell = SHELLS.iter().copied().find(|s| Path::new(s).exists()).ok_or(DebugConsoleError::NoShell)?;
    let console =
        || std::fs::OpenOptions::new().read(true).write(true).open("/dev/console").map_err(DebugConsoleError::Console);
    let mut cmd = Command::new(shell);
    cmd.stdin(Stdio::from(console()?))
        .stdout(Stdio::from(console()?))
        .stderr(Stdio::from(console()?))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("TERM", "vt100")
        .env("HOME", "/root");
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (setsid, ioctl) on fd 0, which it owns.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 1) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| DebugConsoleError::Spawn { shell, source })?;
    Ok(child.id())
}
