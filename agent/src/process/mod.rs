//! One process of a container (its init or an exec): pid, exit status, stdio.
//!
//! [`exits`] routes the statuses the reaper collects to the processes that
//! wait for them, [`stdio`] holds the pipes or pty, [`buffer`] the bounded
//! output queues between them and ReadStdout/ReadStderr.

pub mod buffer;
pub mod exits;
pub mod reaper;
pub mod stdio;

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

pub use exits::{ExitStatus, ExitTable};
pub use stdio::{ProcessIo, StdioError};

/// How long a terminal's output is still awaited after its process exited.
/// A daemon the process left behind may keep the pty open forever; Kata's
/// agent then answers EOF after the same half second.
pub const TERMINAL_DRAIN: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct Process {
    /// The container's id for the init, the exec id for an exec.
    pub exec_id: String,
    /// In the agent's pid namespace.
    pub pid: i32,
    pub io: ProcessIo,
    exit: watch::Receiver<Option<ExitStatus>>,
    pub log: slog::Logger,
}

impl Process {
    pub fn new(
        exec_id: String,
        pid: i32,
        io: ProcessIo,
        exit: watch::Receiver<Option<ExitStatus>>,
        log: slog::Logger,
    ) -> Self {
        Process { exec_id, pid, io, exit, log }
    }

    /// The exit status, once the reaper has collected it.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits for the exit; any number of callers may wait at once.
    pub async fn wait(&self) -> Option<ExitStatus> {
        exits::wait(self.exit.clone()).await
    }

    /// ReadStdout/ReadStderr: up to `max` bytes once there are some, `None` at
    /// EOF. A terminal counts as ended [`TERMINAL_DRAIN`] after its process
    /// exited even if something else still holds the pty.
    pub async fn read_output(&self, stderr: bool, max: usize) -> Option<Vec<u8>> {
        let buf = if stderr { &self.io.stderr } else { &self.io.stdout };
        if !self.io.is_terminal() {
            return buf.read(max).await;
        }
        let drained = async {
            self.wait().await;
            tokio::time::sleep(TERMINAL_DRAIN).await;
        };
        tokio::select! {
            biased;
            data = buf.read(max) => data,
            () = drained => buf.try_read(max),
        }
    }

    /// Signals the process unless it is already reaped (its pid may be reused then).
    pub fn signal(&self, sig: Signal) -> nix::Result<()> {
        if self.exit_status().is_some() {
            return Ok(());
        }
        match kill(Pid::from_raw(self.pid), sig) {
            // Dead but not reaped yet: nothing to signal.
            Err(nix::Error::ESRCH) => Ok(()),
            other => other,
        }
    }
}
