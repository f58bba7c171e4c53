//! Reaping: PID 1 inherits every orphan in the VM and must collect them, or the
//! process table fills with zombies.
//!
//! The agent calls [`reap`] whenever SIGCHLD arrives and routes each exit to the
//! process that waits for it; exits nobody waits for are just logged.

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: i32,
    /// The shell convention the Kata protocol uses: the exit code, or 128+signal.
    pub status: i32,
}

/// Converts a wait status to an [`Exit`]; `None` for stops and continues.
pub fn exit_of(status: WaitStatus) -> Option<Exit> {
    match status {
        WaitStatus::Exited(pid, code) => Some(Exit { pid: pid.as_raw(), status: code }),
        WaitStatus::Signaled(pid, sig, _) => Some(Exit { pid: pid.as_raw(), status: 128 + sig as i32 }),
        _ => None,
    }
}

/// Collects every child that has exited, without blocking.
pub fn reap() -> Vec<Exit> {
    let mut exits = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return exits,
            Ok(status) => exits.extend(exit_of(status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn signal_deaths_use_the_shell_convention() {
        let pid = Pid::from_raw(42);
        assert_eq!(exit_of(WaitStatus::Exited(pid, 3)), Some(Exit { pid: 42, status: 3 }));
        assert_eq!(exit_of(WaitStatus::Signaled(pid, Signal::SIGKILL, false)), Some(Exit { pid: 42, status: 137 }));
        assert_eq!(exit_of(WaitStatus::Stopped(pid, Signal::SIGSTOP)), None);
    }

    #[test]
    // The child is waited for by `reap()`, which is what this test checks.
    #[allow(clippy::zombie_processes)]
    fn reap_collects_a_real_child() {
        let child = std::process::Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut seen = None;
        while seen.is_none() && std::time::Instant::now() < deadline {
            seen = reap().into_iter().find(|e| e.pid == pid);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(seen, Some(Exit { pid, status: 7 }));
    }
}
