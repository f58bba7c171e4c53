//! `create`'s half of the process model: start the monitor ([`super::monitor`]) as a child
//! with the caller's stdio, wait until it says the container exists, write the pid file. And
//! the calls that drive a running monitor or stop it.

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::control::{self, Answer, ControlError, Request};
use super::monitor::READY_FD;
use super::store::{ContainerState, Monitor, Status, Store};
use super::RuntimeError;
use crate::state::ProcFs;

/// The hidden subcommand the monitor runs as.
pub const MONITOR_COMMAND: &str = "__monitor";

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
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("{0}")]
    Refused(String),
}

/// What `create` is given.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// `--root`.
    pub root: PathBuf,
    /// The container's record, not yet saved.
    pub record: ContainerState,
    /// `--pid-file`.
    pub pid_file: Option<PathBuf>,
    /// Extra arguments the monitor gets (global flags such as `--log`).
    pub monitor_args: Vec<String>,
    /// `--console-socket`: the container gets a host pty whose master goes there.
    pub console_socket: Option<PathBuf>,
}

/// Records the container, starts the monitor and waits until it created the container; writes
/// the pid file. Returns the monitor (`run` waits for it; `create` lets it go). On a failure
/// nothing is left: the monitor undid its work and exited, the record is removed.
pub fn create(request: &CreateRequest) -> Result<Child, RuntimeError> {
    let store = Store::new(&request.root);
    let id = request.record.id.clone();
    let locked = store.create(&id)?;
    locked.save(&request.record)?;
    let (mut child, ready) = match spawn(request) {
        Ok(spawned) => spawned,
        Err(err) => {
            locked.remove()?;
            return Err(err);
        }
    };
    // The monitor records its status under the lock: released before waiting for its word.
    let mut record = request.record.clone();
    record.monitor = Monitor::of(child.id(), &ProcFs);
    let saved = locked.save(&record);
    drop(locked);
    let done = saved.and_then(|()| wait_ready(&mut child, ready)).and_then(|()| match &request.pid_file {
        Some(path) => write_pid_file(path, child.id()).map_err(RuntimeError::from),
        None => Ok(()),
    });
    if let Err(err) = done {
        let _ = control::call(&store.dir(&id), &Request::Shutdown);
        let _ = child.wait();
        super::cgroup::remove(&store.dir(&id));
        if let Ok(locked) = store.lock(&id) {
            let _ = locked.remove();
        }
        return Err(err);
    }
    Ok(child)
}

/// Starts `wisp-runtime __monitor` with this process's stdio and the write end of a pipe at
/// [`READY_FD`]; returns it with the read end.
fn spawn(request: &CreateRequest) -> Result<(Child, OwnedFd), RuntimeError> {
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|errno| LaunchError::Spawn(std::io::Error::from(errno)))?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("wisp-runtime")
        .args(&request.monitor_args)
        .arg("--root")
        .arg(&request.root)
        .arg(MONITOR_COMMAND)
        .arg("--bundle")
        .arg(&request.record.bundle);
    match &request.console_socket {
        // The caller reads create's output until EOF when it gave a console socket (go-runc
        // does): the monitor, which outlives create, must not hold it.
        Some(socket) => {
            cmd.arg("--console-socket").arg(socket).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null())
        }
        None => cmd.stdin(Stdio::inherit()).stdout(Stdio::inherit()).stderr(Stdio::inherit()),
    };
    cmd.arg(&request.record.id);
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
    let child = cmd.spawn().map_err(LaunchError::Spawn)?;
    drop(ready_w);
    Ok((child, ready_r))
}

/// Waits for the monitor's line: the container exists, or why not (then it has exited).
fn wait_ready(child: &mut Child, ready: OwnedFd) -> Result<(), RuntimeError> {
    let mut line = String::new();
    let read = BufReader::new(std::fs::File::from(ready)).read_line(&mut line);
    if read.is_err() || line.trim().is_empty() {
        let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
        return Err(LaunchError::MonitorDied(status).into());
    }
    let answer: serde_json::Value =
        serde_json::from_str(&line).map_err(|_| LaunchError::MonitorDied(format!("it said {line:?}")))?;
    match answer.get("error").and_then(serde_json::Value::as_str) {
        Some(error) => Err(LaunchError::NotCreated(error.to_owned()).into()),
        None => Ok(()),
    }
}

/// Writes `pid` as digits, atomically (a temporary file beside it, renamed).
pub(super) fn write_pid_file(path: &Path, pid: u32) -> Result<(), LaunchError> {
    let err = |source| LaunchError::PidFile { path: path.to_owned(), source };
    let name = path.file_name().ok_or_else(|| err(std::io::ErrorKind::InvalidInput.into()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, pid.to_string()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        err(source)
    })
}

/// The live monitor of container `id`, if it runs.
fn live_monitor(store: &Store, id: &str) -> Result<Option<Monitor>, RuntimeError> {
    Ok(store.load(id)?.monitor.filter(|m| m.alive(&ProcFs)))
}

/// Sends `request` to the running monitor of container `id`.
pub fn ask(store: &Store, id: &str, request: &Request) -> Result<Answer, RuntimeError> {
    if live_monitor(store, id)?.is_none() {
        return Err(RuntimeError::NotRunning);
    }
    match control::call(&store.dir(id), request).map_err(LaunchError::from)? {
        Answer::Error(why) => Err(LaunchError::Refused(why).into()),
        answer => Ok(answer),
    }
}

/// `start`: the created container starts.
pub fn start(store: &Store, id: &str) -> Result<(), RuntimeError> {
    let status = store.load(id)?.live_status(&ProcFs);
    if status != Status::Created {
        return Err(LaunchError::Refused(format!("cannot start a container that is {status}")).into());
    }
    ask(store, id, &Request::Start).map(drop)
}

/// `delete`: stops what runs (only with `force` once started), then removes every trace.
pub fn delete(store: &Store, id: &str, force: bool) -> Result<(), RuntimeError> {
    let record = store.load(id)?;
    let status = record.live_status(&ProcFs);
    if let Some(monitor) = record.monitor.filter(|m| m.alive(&ProcFs)) {
        if !force && matches!(status, Status::Running | Status::Paused) {
            return Err(
                LaunchError::Refused(format!("cannot delete container {id} that is not stopped: {status}")).into()
            );
        }
        stop_monitor(&store.dir(id), &monitor);
    }
    remove_leftovers(store.root(), id);
    store.lock(id)?.remove()
}

/// Asks the monitor to stop its VM and exit; SIGKILL if it has not within a few seconds.
fn stop_monitor(dir: &Path, monitor: &Monitor) {
    let _ = control::call(dir, &Request::Shutdown);
    let exited_within = |within: Duration| {
        let deadline = Instant::now() + within;
        while monitor.alive(&ProcFs) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    };
    if !exited_within(Duration::from_secs(10)) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(monitor.pid).unwrap_or(i32::MAX));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        exited_within(Duration::from_secs(5));
    }
}

/// What a SIGKILLed monitor left in the sandbox state root (its VM died with it).
fn remove_leftovers(root: &Path, id: &str) {
    // cleanup_dir leaves a directory whose owner still runs alone.
    let dir = super::monitor::sandbox_key(root, id).dir(&crate::sandbox::state_root());
    crate::sandbox::cleanup_dir(&dir, &slog::Logger::root(slog::Discard, slog::o!()));
    // The container's cgroup, empty once its monitor is gone (runtime::cgroup).
    super::cgroup::remove(&root.join(id));
}
