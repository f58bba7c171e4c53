//! A running VM that cleans up after itself.
//!
//! [`Vm::boot`] makes a private directory (`$TMPDIR/wisp-vm-XXXXXX`), starts the helpers the
//! channel needs, then QEMU, and owns them all. Dropping the [`Vm`] — at the end of a test or
//! while a failing test unwinds — stops QEMU and every helper (SIGTERM, then SIGKILL after
//! [`STOP_GRACE`]), reaps them and removes the directory.
//!
//! Every timeout error carries the last [`CONSOLE_TAIL_LINES`] lines of the guest console, since
//! the directory holding the full log is gone once the test has failed. The console is the
//! shim's: QEMU writes it into a FIFO that a [`ConsoleDrain`] copies into a bounded log.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;
use wisp_shim::agent_dial::{self, AgentAddr, AgentConn, DialError};
use wisp_shim::hypervisor::console::{self, ConsoleDrain};

use crate::accel::{self, Accel, AccelError};
use crate::qemu::{qemu_binary, shell_line, vhost_device_vsock_binary, VmConfig, VmPaths};

/// How many console lines errors carry.
pub const CONSOLE_TAIL_LINES: usize = 40;
/// How long a stopped process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_millis(300);
/// How long a helper gets to create its socket.
pub const HELPER_READY_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);
/// How often [`Vm::connect_agent`] checks that QEMU still runs.
const AGENT_EXIT_POLL: Duration = Duration::from_millis(50);

/// Failure to boot or observe a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The accelerator override is bad.
    #[error(transparent)]
    Accel(#[from] AccelError),
    /// A path QEMU receives as text is not UTF-8.
    #[error("path {} is not UTF-8 and cannot be passed to qemu", path.display())]
    NonUtf8Path {
        /// The path.
        path: PathBuf,
    },
    /// The VM's directory or one of its files could not be created.
    #[error("cannot create {}", path.display())]
    Create {
        /// What could not be created.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A process could not be started.
    #[error("cannot start {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The error from `spawn`.
        #[source]
        source: io::Error,
    },
    /// A helper exited before it was ready.
    #[error("{helper} exited with {status} before creating {}; its output:\n{log}", socket.display())]
    HelperExited {
        /// The helper program.
        helper: String,
        /// Its exit status.
        status: ExitStatus,
        /// The socket it should have created.
        socket: PathBuf,
        /// Its stdout and stderr.
        log: String,
    },
    /// A helper did not create its socket in time.
    #[error("{helper} did not create {} within {} ms; its output:\n{log}", socket.display(), waited.as_millis())]
    HelperTimeout {
        /// The helper program.
        helper: String,
        /// The socket it should have created.
        socket: PathBuf,
        /// How long we waited.
        waited: Duration,
        /// Its stdout and stderr.
        log: String,
    },
    /// The pattern did not appear on the console in time.
    #[error(
        "{pattern:?} did not appear on the console within {} ms; last console lines:\n{console}",
        waited.as_millis()
    )]
    ConsoleTimeout {
        /// What was awaited.
        pattern: String,
        /// How long we waited.
        waited: Duration,
        /// The console's last lines.
        console: String,
    },
    /// QEMU exited while something else was awaited.
    #[error("qemu exited with {status} while waiting for {awaited}; qemu output:\n{qemu_log}\nlast console lines:\n{console}")]
    QemuExited {
        /// What was awaited.
        awaited: String,
        /// QEMU's exit status.
        status: ExitStatus,
        /// QEMU's stdout and stderr.
        qemu_log: String,
        /// The console's last lines.
        console: String,
    },
    /// QEMU did not exit in time.
    #[error("qemu did not exit within {} ms; last console lines:\n{console}", waited.as_millis())]
    ExitTimeout {
        /// How long we waited.
        waited: Duration,
        /// The console's last lines.
        console: String,
    },
    /// The VM was booted without an agent channel.
    #[error("the VM has no agent channel (VmConfig::channel is Channel::None)")]
    NoChannel,
    /// The agent could not be reached while QEMU kept running.
    #[error("cannot reach the agent; last console lines:\n{console}")]
    Agent {
        /// Why.
        #[source]
        source: DialError,
        /// The console's last lines.
        console: String,
    },
    /// Waiting for a process failed.
    #[error("cannot wait for {program}")]
    Wait {
        /// The program.
        program: String,
        /// The error from `waitpid`.
        #[source]
        source: io::Error,
    },
}

/// A child process the VM owns.
#[derive(Debug)]
struct Owned {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl Owned {
    fn spawn(mut command: Command, log: &Path) -> Result<Self, VmError> {
        let name = command.get_program().to_string_lossy().into_owned();
        let create = |source| VmError::Create { path: log.to_owned(), source };
        let out = File::create(log).map_err(create)?;
        let err = out.try_clone().map_err(create)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| VmError::Spawn { program: name.clone(), source })?;
        Ok(Self { name, child, status: None })
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>, VmError> {
        if self.status.is_none() {
            self.status =
                self.child.try_wait().map_err(|source| VmError::Wait { program: self.name.clone(), source })?;
        }
        Ok(self.status)
    }

    /// SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL; always reaps.
    fn stop(&mut self) {
        if self.status.is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // The child is not reaped yet, so the pid is still ours.
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.status = Some(status);
                return;
            }
            thread::sleep(POLL);
        }
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
    }
}

/// A booted VM; see the [module docs](self).
#[derive(Debug)]
pub struct Vm {
    config: VmConfig,
    accel: Accel,
    paths: VmPaths,
    qemu_args: Vec<String>,
    qemu: Owned,
    helpers: Vec<Owned>,
    spawned_at: Instant,
    /// Dropped after the processes are stopped, so it copies their last words.
    drain: ConsoleDrain,
    // Dropped last (fields drop in order, after `Drop::drop` has stopped the processes).
    dir: TempDir,
}

impl Vm {
    /// Starts the channel's helpers, then QEMU.
    ///
    /// Returns once QEMU is spawned; the guest boots in the background (see
    /// [`Vm::wait_for_console`]).
    pub fn boot(config: VmConfig) -> Result<Vm, VmError> {
        let accel = match config.accel_override() {
            Some(accel) => accel,
            None => accel::detect()?,
        };
        let tmp = std::env::temp_dir();
        let dir = tempfile::Builder::new()
            .prefix("wisp-vm-")
            .tempdir()
            .map_err(|source| VmError::Create { path: tmp, source })?;
        let paths = VmPaths::new(dir.path());
        if let Some(path) = config.text_paths(&paths).find(|p| p.to_str().is_none()) {
            return Err(VmError::NonUtf8Path { path: path.to_owned() });
        }

        let mut helpers = Vec::new();
        if let Some(args) = config.vsock_helper_args(&paths) {
            let mut command = Command::new(vhost_device_vsock_binary());
            command.args(&args);
            let mut helper = Owned::spawn(command, &paths.vsock_helper_log())?;
            let ready = wait_for_socket(&mut helper, &paths.vhost_vsock_socket(), &paths.vsock_helper_log());
            if let Err(err) = ready {
                helper.stop();
                return Err(err);
            }
            helpers.push(helper);
        }

        let discard = slog::Logger::root(slog::Discard, slog::o!());
        let drain = match ConsoleDrain::start(&paths, &discard) {
            Ok(drain) => drain,
            Err(source) => {
                helpers.iter_mut().for_each(Owned::stop);
                return Err(VmError::Create { path: paths.console_fifo(), source });
            }
        };
        let qemu_args = config.qemu_args(&paths, accel);
        let mut command = Command::new(qemu_binary());
        command.args(&qemu_args);
        let spawned_at = Instant::now();
        let qemu = match Owned::spawn(command, &paths.qemu_log()) {
            Ok(qemu) => qemu,
            Err(err) => {
                helpers.iter_mut().for_each(Owned::stop);
                return Err(err);
            }
        };
        Ok(Vm { config, accel, paths, qemu_args, qemu, helpers, spawned_at, drain, dir })
    }

    /// The configuration this VM was booted with.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The accelerator in use.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// The VM's private directory (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The files in the VM's directory.
    pub fn paths(&self) -> &VmPaths {
        &self.paths
    }

    /// When QEMU was spawned (host monotonic clock).
    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// QEMU's arguments (without the program name).
    pub fn qemu_args(&self) -> &[String] {
        &self.qemu_args
    }

    /// QEMU's command line, shell-quoted, for logs.
    pub fn qemu_command_line(&self) -> String {
        shell_line(&qemu_binary().to_string_lossy(), &self.qemu_args)
    }

    /// The pids of QEMU and every helper (valid until the VM is dropped).
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(&self.qemu).chain(&self.helpers).map(|owned| owned.child.id()).collect()
    }

    /// Where the host reaches the agent, if the VM has a channel.
    pub fn agent_addr(&self) -> Option<AgentAddr> {
        self.config.agent_addr(&self.paths)
    }

    /// The QMP socket, if QMP is on.
    pub fn qmp_socket(&self) -> Option<PathBuf> {
        self.config.has_qmp().then(|| self.paths.qmp_socket())
    }

    /// Everything the guest printed on its console so far (its last
    /// [`console::CONSOLE_CAP`] bytes at most).
    pub fn console(&self) -> String {
        console::read_all(&self.paths.console())
    }

    /// The last `lines` lines of the console (from a bounded end of it).
    pub fn console_tail(&self, lines: usize) -> String {
        console::tail(&self.paths.console(), lines)
    }

    /// QEMU's own output (warnings, errors).
    pub fn qemu_log(&self) -> String {
        read_lossy(&self.paths.qemu_log())
    }

    /// Waits until `pattern` appears on the console; returns the time from QEMU's spawn to the
    /// moment it was seen (within the 10 ms poll interval).
    pub fn wait_for_console(&mut self, pattern: &str, timeout: Duration) -> Result<Duration, VmError> {
        let start = Instant::now();
        loop {
            // Look at the console before checking for an exit: the guest may print and power
            // off between two polls.
            let exited = self.qemu_try_wait()?;
            if self.console().contains(pattern) {
                return Ok(self.spawned_at.elapsed());
            }
            if let Some(status) = exited {
                return Err(self.qemu_exited(status, format!("{pattern:?} on the console")));
            }
            if start.elapsed() >= timeout {
                return Err(VmError::ConsoleTimeout {
                    pattern: pattern.to_owned(),
                    waited: start.elapsed(),
                    console: self.console_tail(CONSOLE_TAIL_LINES),
                });
            }
            thread::sleep(POLL);
        }
    }

    /// Dials the agent over the VM's channel (bounded by `timeout`) and starts a ttrpc client.
    ///
    /// Fails early, with QEMU's output and the console, if QEMU exits meanwhile. Needs a tokio
    /// runtime with the time driver enabled.
    pub async fn connect_agent(&mut self, timeout: Duration) -> Result<AgentConn, VmError> {
        let addr = self.agent_addr().ok_or(VmError::NoChannel)?;
        let mut dial = std::pin::pin!(agent_dial::connect(&addr, timeout));
        loop {
            match tokio::time::timeout(AGENT_EXIT_POLL, &mut dial).await {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(source)) => {
                    return Err(VmError::Agent { source, console: self.console_tail(CONSOLE_TAIL_LINES) })
                }
                Err(_) => {
                    if let Some(status) = self.qemu_try_wait()? {
                        return Err(self.qemu_exited(status, format!("the agent at {addr}")));
                    }
                }
            }
        }
    }

    /// Waits for QEMU to exit by itself (the guest powered off, rebooted or panicked).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, VmError> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.qemu_try_wait()? {
                return Ok(status);
            }
            if start.elapsed() >= timeout {
                return Err(VmError::ExitTimeout {
                    waited: start.elapsed(),
                    console: self.console_tail(CONSOLE_TAIL_LINES),
                });
            }
            thread::sleep(POLL);
        }
    }

    /// QEMU's exit status if it has exited.
    pub fn try_exit_status(&mut self) -> Result<Option<ExitStatus>, VmError> {
        self.qemu_try_wait()
    }

    /// An error for QEMU having exited while `awaited` was expected; for callers waiting on
    /// something else (an agent connection, say).
    pub fn qemu_exited(&self, status: ExitStatus, awaited: String) -> VmError {
        VmError::QemuExited {
            awaited,
            status,
            qemu_log: self.qemu_log(),
            console: self.console_tail(CONSOLE_TAIL_LINES),
        }
    }

    /// QEMU's exit status if it has exited; then its last console output is in the log too.
    fn qemu_try_wait(&mut self) -> Result<Option<ExitStatus>, VmError> {
        let status = self.qemu.try_wait()?;
        if status.is_some() {
            self.drain.wait_ended(console::CONSOLE_SETTLE);
        }
        Ok(status)
    }

    /// Stops QEMU and the helpers now (dropping the VM does it too).
    pub fn kill(&mut self) {
        self.qemu.stop();
        self.drain.wait_ended(console::CONSOLE_SETTLE);
        self.helpers.iter_mut().for_each(Owned::stop);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        // `self.dir` is removed when the fields drop, after this.
    }
}

/// Waits for `helper` to create `socket`; fails if it exits or takes too long.
fn wait_for_socket(helper: &mut Owned, socket: &Path, log: &Path) -> Result<(), VmError> {
    let start = Instant::now();
    loop {
        if socket.exists() {
            return Ok(());
        }
        if let Some(status) = helper.try_wait()? {
            return Err(VmError::HelperExited {
                helper: helper.name.clone(),
                status,
                socket: socket.to_owned(),
                log: read_lossy(log),
            });
        }
        if start.elapsed() >= HELPER_READY_TIMEOUT {
            return Err(VmError::HelperTimeout {
                helper: helper.name.clone(),
                socket: socket.to_owned(),
                waited: start.elapsed(),
                log: read_lossy(log),
            });
        }
        thread::sleep(POLL);
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default()
}

/// The last `lines` lines of `text` (for console tails in error messages).
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a\nb", 5), "a\nb");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn stop_reaps_a_process_that_ignores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("sleep");
        command.arg("30");
        let mut owned = Owned::spawn(command, &dir.path().join("sleep.log")).unwrap();
        let pid = owned.child.id();
        owned.stop();
        assert!(owned.status.is_some());
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn stop_kills_a_process_that_ignores_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("sh");
        // An ignored signal stays ignored across exec.
        command.args(["-c", "trap '' TERM; exec sleep 30"]);
        let mut owned = Owned::spawn(command, &dir.path().join("sh.log")).unwrap();
        thread::sleep(Duration::from_millis(100));
        let start = Instant::now();
        owned.stop();
        assert!(start.elapsed() >= STOP_GRACE);
        assert!(!owned.status.unwrap().success());
    }

    #[test]
    fn helper_that_exits_early_is_reported_with_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("helper.log");
        let mut command = Command::new("sh");
        command.args(["-c", "echo 'bad socket path' >&2; exit 3"]);
        let mut helper = Owned::spawn(command, &log).unwrap();
        let err = wait_for_socket(&mut helper, &dir.path().join("never.sock"), &log).unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("sh exited with exit status: 3 before creating"), "{message}");
        assert!(message.contains("bad socket path"), "{message}");
    }
}
