//! `create`'s half of the process model: start the monitor ([`super::monitor`]) as a child
//! with the caller's stdio, wait until it says the container exists, write the pid file. And
//! the commands that drive a running monitor or clean up after a dead one.

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::control::{self, Answer, ControlError, Request};
use super::monitor::READY_FD;
use super::status::{self, Status};
use crate::state::{self, Owner, ProcFs, SandboxKey};

/// The hidden subcommand the monitor runs as.
pub const MONITOR_COMMAND: &str = "__monitor";
/// The monitor's record of itself in the container's directory (an [`Owner`]).
const MONITOR_FILE: &str = "monitor.json";

/// Failures of the lifecycle commands.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot start the monitor")]
    Spawn(#[source] std::io::Error),
    #[error("{0}")]
    NotCreated(String),
    #[error("the monitor exited before it created the container ({0}); see the log")]
    MonitorDied(String),
    #[error("cannot write the pid file {}", path.display())]
    PidFile { path: PathBuf, source: std::io::Error },
    #[error("container not running")]
    NotRunning,
    /// runc's words, which containerd's runc shim matches to treat a delete as done.
    #[error("container \"{0}\" does not exist")]
    NotFound(String),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("{0}")]
    Refused(String),
    #[error("cannot remove {}", path.display())]
    Remove { path: PathBuf, source: std::io::Error },
}

/// What `create` is given.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// `--root`.
    pub root: PathBuf,
    /// The container id (its directory `<root>/<id>` exists).
    pub id: String,
    /// `--bundle`.
    pub bundle: PathBuf,
    /// `--pid-file`.
    pub pid_file: Option<PathBuf>,
    /// Extra arguments the monitor gets (global flags such as `--log`).
    pub monitor_args: Vec<String>,
}

/// Starts the monitor and waits until it created the container; writes the pid file. Returns
/// the monitor (the caller of `run` waits for it; `create` lets it go).
pub fn create(request: &CreateRequest) -> Result<Child, LaunchError> {
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|errno| LaunchError::Spawn(std::io::Error::from(errno)))?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("wisp-runtime")
        .args(&request.monitor_args)
        .arg("--root")
        .arg(&request.root)
        .arg(MONITOR_COMMAND)
        .arg("--bundle")
        .arg(&request.bundle)
        .arg(&request.id)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let raw = ready_w.as_raw_fd();
    // SAFETY: between fork and exec this only calls dup2, which is async-signal-safe, on a
    // descriptor this function owns.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 leaves READY_FD without close-on-exec: the monitor inherits it.
            if libc::dup2(raw, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = cmd.spawn().map_err(LaunchError::Spawn)?;
    drop(ready_w);
    let dir = request.root.join(&request.id);
    write_owner(&dir, &request.id, child.id());
    match read_ready(ready_r) {
        Ok(()) => {}
        Err(err) => {
            let _ = child.wait();
            return Err(err);
        }
    }
    if let Some(path) = &request.pid_file {
        if let Err(err) = write_pid_file(path, child.id()) {
            let _ = control::call(&dir, &Request::Shutdown);
            let _ = child.wait();
            return Err(err);
        }
    }
    Ok(child)
}

/// Records the monitor's identity so a later command can tell it from a reused pid.
fn write_owner(dir: &Path, id: &str, pid: u32) {
    let key = SandboxKey { scope: String::new(), namespace: String::new(), id: id.to_owned() };
    let procs = ProcFs;
    let owner = Owner {
        key,
        pid,
        start_time: state::Processes::start_time(&procs, pid).unwrap_or(0),
        boot_id: state::Processes::boot_id(&procs),
    };
    if let Ok(bytes) = serde_json::to_vec(&owner) {
        let _ = std::fs::write(dir.join(MONITOR_FILE), bytes);
    }
}

/// The monitor's pid if it still runs.
pub fn monitor_pid(dir: &Path) -> Option<u32> {
    let owner: Owner = serde_json::from_slice(&std::fs::read(dir.join(MONITOR_FILE)).ok()?).ok()?;
    owner.alive(&ProcFs).then_some(owner.pid)
}

/// The container's status: the monitor's record while it runs, `stopped` once it is gone.
pub fn status(dir: &Path) -> (Status, Option<u32>) {
    match monitor_pid(dir) {
        Some(pid) => (status::read(dir).map_or(Status::Created, |r| r.status), Some(pid)),
        None => (Status::Stopped, None),
    }
}

fn read_ready(ready: OwnedFd) -> Result<(), LaunchError> {
    let mut line = String::new();
    let read = BufReader::new(std::fs::File::from(ready)).read_line(&mut line);
    if read.is_err() || line.trim().is_empty() {
        return Err(LaunchError::MonitorDied("it said nothing".to_owned()));
    }
    let answer: serde_json::Value =
        serde_json::from_str(&line).map_err(|_| LaunchError::MonitorDied(format!("it said {line:?}")))?;
    match answer.get("error").and_then(serde_json::Value::as_str) {
        Some(error) => Err(LaunchError::NotCreated(error.to_owned())),
        None => Ok(()),
    }
}

/// Writes `pid` as digits, atomically (a temporary file beside it, renamed).
fn write_pid_file(path: &Path, pid: u32) -> Result<(), LaunchError> {
    let err = |source| LaunchError::PidFile { path: path.to_owned(), source };
    let name = path.file_name().ok_or_else(|| err(std::io::ErrorKind::InvalidInput.into()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, pid.to_string()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        err(source)
    })
}

/// Sends `request` to the running monitor of the container in `dir`.
pub fn ask(dir: &Path, request: &Request) -> Result<Answer, LaunchError> {
    if monitor_pid(dir).is_none() {
        return Err(LaunchError::NotRunning);
    }
    match control::call(dir, request)? {
        Answer::Error(why) => Err(LaunchError::Refused(why)),
        answer => Ok(answer),
    }
}

/// `start`: the created container starts.
pub fn start(dir: &Path) -> Result<(), LaunchError> {
    let (status, _) = status(dir);
    if status != Status::Created {
        return Err(LaunchError::Refused(format!("cannot start a container that is {}", name(status))));
    }
    ask(dir, &Request::Start)?;
    Ok(())
}

/// `delete`: stops what runs (only with `force` once started), then removes every trace.
pub fn delete(dir: &Path, force: bool) -> Result<(), LaunchError> {
    if !dir.is_dir() {
        let id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return Err(LaunchError::NotFound(id));
    }
    let (status, pid) = status(dir);
    if let Some(pid) = pid {
        if !force && matches!(status, Status::Running | Status::Paused) {
            return Err(LaunchError::Refused(format!("cannot delete container that is not stopped: {}", name(status))));
        }
        stop_monitor(dir, pid);
    }
    if let (Some(root), Some(id)) = (dir.parent(), dir.file_name()) {
        remove_leftovers(root, &id.to_string_lossy());
    }
    std::fs::remove_dir_all(dir).map_err(|source| LaunchError::Remove { path: dir.to_owned(), source })
}

/// Asks the monitor to stop its VM and exit; SIGKILL if it has not within a few seconds.
fn stop_monitor(dir: &Path, pid: u32) {
    let _ = control::call(dir, &Request::Shutdown);
    let deadline = Instant::now() + Duration::from_secs(10);
    while monitor_pid(dir).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if monitor_pid(dir).is_some() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while monitor_pid(dir).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What a SIGKILLed monitor left in the sandbox state root (its VM died with it).
fn remove_leftovers(root: &Path, id: &str) {
    let dir = super::monitor::sandbox_key(root, id).dir(&crate::sandbox::state_root());
    if let Ok(Some(_lock)) = state::lock_for_removal(&dir, &ProcFs) {
        crate::sandbox::cleanup_dir(&dir, &slog::Logger::root(slog::Discard, slog::o!()));
    }
}

fn name(status: Status) -> &'static str {
    match status {
        Status::Created => "created",
        Status::Running => "running",
        Status::Paused => "paused",
        Status::Stopped => "stopped",
    }
}
