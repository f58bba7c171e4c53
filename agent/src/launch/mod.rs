//! Starting a process inside a container: the `runc init` part of the agent.
//!
//! The agent is multi-threaded, and after fork() only async-signal-safe code
//! may run; so [`create`] and [`exec`] start `/proc/self/exe __launch` (the
//! same static binary, fresh and single-threaded: [`child_main`]) with the
//! container's stdio as its 0/1/2 and a socket as fd 3, and send it the job
//! as JSON (see `wire`). The child joins or makes the namespaces, forks the
//! final process into the pid namespace (as the agent's child, CLONE_PARENT),
//! and that process mounts the rootfs, pivots, takes its identity and waits
//! for "start". The socket is close-on-exec: EOF after "start" means the
//! execve happened; an error message means it did not, and says why.
//!
//! These calls block: the caller runs them on a blocking thread.

mod child;
mod error;
pub mod hooks;
mod identity;
mod mountopts;
mod namespaces;
pub(crate) mod resolve;
mod rootfs;
pub mod run;
mod seccomp;
mod wire;

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use oci_spec::runtime::{ContainerState, Spec, State, StateBuilder};

pub use error::LaunchError;
pub use hooks::{run_hooks, HookError};
use wire::{Channel, Job, ToChild, ToParent};

/// The launcher child's socket descriptor.
const LAUNCH_FD: i32 = 3;

/// The three stdio descriptors of the container process. With `terminal`,
/// `stdin` is the pty's slave side and becomes the controlling terminal.
#[derive(Debug)]
pub struct StdioFds {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub terminal: bool,
}

/// A container's init process to create. The process's user may carry a
/// name in `process.user.username` (Kata's `User.username`): it is looked up
/// in the container's /etc/passwd and /etc/group.
#[derive(Debug)]
pub struct InitRequest {
    pub container_id: String,
    pub spec: Spec,
    /// The bundle directory: relative bind sources, and the hooks' state.
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

/// Releases a created init into `execve`. Dropping it without `start` makes
/// the waiting process exit.
#[derive(Debug)]
pub struct StartHandle {
    chan: Channel,
    container_id: String,
}

impl StartHandle {
    /// Runs the startContainer hooks inside the container and execs its
    /// process; returns once that happened, or with why it failed.
    pub fn start(mut self) -> Result<(), LaunchError> {
        self.chan
            .send(&ToChild::Start)
            .map_err(|source| LaunchError::Launcher { what: "send start".into(), source })?;
        loop {
            match recv(&mut self.chan)? {
                None => return Ok(()),
                Some(ToParent::Log(l)) => log::info!("container {}: {l}", self.container_id),
                Some(ToParent::Error(e)) => return Err(e.into()),
                Some(other) => return Err(LaunchError::Protocol(format!("unexpected {other:?} after start"))),
            }
        }
    }
}

/// An extra process to run in a running container.
#[derive(Debug)]
pub struct ExecRequest {
    pub container_id: String,
    /// The container's init, whose namespaces the process joins.
    pub init_pid: i32,
    pub process: oci_spec::runtime::Process,
    /// The container's spec (for its seccomp filter).
    pub spec: Spec,
    pub stdio: StdioFds,
}

fn recv(chan: &mut Channel) -> Result<Option<ToParent>, LaunchError> {
    chan.recv().map_err(|source| LaunchError::Launcher { what: "read from the launcher".into(), source })
}

/// Starts `/proc/self/exe __launch` with `stdio` and the socket on fd 3, and
/// places it (cgroup) before it reads its job.
fn spawn(stdio: StdioFds, place: impl FnOnce(i32) -> Result<(), String>) -> Result<(Child, Channel), LaunchError> {
    let (ours, pair_end) =
        UnixStream::pair().map_err(|source| LaunchError::Launcher { what: "socketpair".into(), source })?;
    // Above the stdio numbers, so setting up the child's 0/1/2 cannot
    // overwrite it (an agent started with 0-2 closed gets low numbers).
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one or -1.
    let high = unsafe { libc::fcntl(pair_end.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if high < 0 {
        return Err(LaunchError::Launcher {
            what: "dup the launch socket".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    drop(pair_end);
    // SAFETY: `high` is a fresh descriptor that nothing else owns.
    let theirs = unsafe { OwnedFd::from_raw_fd(high) };
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("wisp-agent")
        .arg("__launch")
        .env_clear()
        .stdin(Stdio::from(stdio.stdin))
        .stdout(Stdio::from(stdio.stdout))
        .stderr(Stdio::from(stdio.stderr));
    // SAFETY: between fork and exec this only calls dup2/fcntl, which are
    // async-signal-safe, on descriptors this function owns.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 leaves the new descriptor without close-on-exec.
            if libc::dup2(theirs_fd, LAUNCH_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child =
        cmd.spawn().map_err(|source| LaunchError::Launcher { what: "start /proc/self/exe __launch".into(), source })?;
    drop(theirs);
    let pid = child.id() as i32;
    if let Err(msg) = place(pid) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(LaunchError::Place { pid, msg });
    }
    let chan = Channel::new(ours).map_err(|source| LaunchError::Launcher { what: "socket".into(), source })?;
    Ok((child, chan))
}

/// The OCI state hooks get on stdin.
pub fn state(id: &str, status: ContainerState, pid: i32, bundle: &std::path::Path, spec: &Spec) -> State {
    let mut b = StateBuilder::default().version("1.2.0").id(id).status(status).pid(pid).bundle(bundle.to_path_buf());
    if let Some(a) = spec.annotations() {
        b = b.annotations(a.clone());
    }
    // Every field is set: the builder cannot fail.
    b.build().unwrap_or_default()
}

/// Writes the uid/gid maps of a user namespace the launcher made.
fn write_id_maps(pid: i32, spec: &Spec) -> Result<(), LaunchError> {
    let linux = spec.linux().clone().unwrap_or_default();
    for (file, field, maps) in
        [("uid_map", "uidMappings", linux.uid_mappings()), ("gid_map", "gidMappings", linux.gid_mappings())]
    {
        let text: String =
            maps.iter().flatten().map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size())).collect();
        if text.is_empty() {
            return Err(LaunchError::InvalidSpec(format!("a new user namespace needs linux.{field}")));
        }
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, text)
            .map_err(|source| LaunchError::Launcher { what: format!("write {path}"), source })?;
    }
    Ok(())
}

/// Reaps the launcher's first process; the agent's reaper may have got it
/// first, which is fine.
fn reap(mut first: Child) {
    let _ = first.wait();
}

/// Creates the container's init; `place(pid)` runs before the child isolates
/// itself. Runs prestart and createRuntime hooks in the agent's namespaces and
/// createContainer hooks inside the container.
pub fn create(req: InitRequest, place: impl FnOnce(i32) -> Result<(), String>) -> Result<Created, LaunchError> {
    let InitRequest { container_id, spec, bundle, stdio } = req;
    let terminal = stdio.terminal;
    let (first, mut chan) = spawn(stdio, place)?;
    let first_pid = first.id() as i32;
    let job = Job::Init {
        container_id: container_id.clone(),
        spec: Box::new(spec.clone()),
        bundle: bundle.clone(),
        terminal,
    };
    let mut pid = None;
    let result = (|| {
        chan.send(&ToChild::Job(Box::new(job)))
            .map_err(|source| LaunchError::Launcher { what: "send the job".into(), source })?;
        loop {
            match recv(&mut chan)? {
                Some(ToParent::Log(l)) => log::info!("container {container_id}: {l}"),
                Some(ToParent::IdMaps) => {
                    write_id_maps(first_pid, &spec)?;
                    chan.send(&ToChild::IdMapsDone)
                        .map_err(|source| LaunchError::Launcher { what: "send id maps done".into(), source })?;
                }
                Some(ToParent::Pid(p)) => pid = Some(p),
                Some(ToParent::RuntimeHooks) => {
                    let p = pid.ok_or_else(|| LaunchError::Protocol("hooks before the pid".into()))?;
                    let st = state(&container_id, ContainerState::Created, p, &bundle, &spec);
                    let h = spec.hooks().clone().unwrap_or_default();
                    #[allow(deprecated)]
                    let prestart = h.prestart().clone().unwrap_or_default();
                    run_hooks(&prestart, &st)?;
                    run_hooks(&h.create_runtime().clone().unwrap_or_default(), &st)?;
                    let json = serde_json::to_string(&st).map_err(|e| LaunchError::Hook(HookError::State(e)))?;
                    chan.send(&ToChild::RuntimeHooksDone { state: json })
                        .map_err(|source| LaunchError::Launcher { what: "send hooks done".into(), source })?;
                }
                Some(ToParent::Created) => {
                    return pid.ok_or_else(|| LaunchError::Protocol("created before the pid".into()));
                }
                Some(ToParent::Error(e)) => return Err(e.into()),
                None => return Err(LaunchError::Protocol("the launcher exited without a word".into())),
            }
        }
    })();
    match result {
        Ok(pid) => {
            reap(first);
            Ok(Created { pid, start: StartHandle { chan, container_id } })
        }
        Err(e) => {
            // Both launcher processes may be waiting for a word that will
            // not come: EOF ends the first, SIGKILL the final one.
            drop(chan);
            if let Some(p) = pid {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::SIGKILL);
            }
            reap(first);
            Err(e)
        }
    }
}

/// Starts `req.process` inside the container whose init is `req.init_pid`;
/// returns its pid once it exec'd.
pub fn exec(req: ExecRequest, place: impl FnOnce(i32) -> Result<(), String>) -> Result<i32, LaunchError> {
    let ExecRequest { container_id, init_pid, process, spec, stdio } = req;
    let terminal = stdio.terminal;
    let (first, mut chan) = spawn(stdio, place)?;
    let job = Job::Exec {
        container_id: container_id.clone(),
        init_pid,
        process: Box::new(process),
        spec: Box::new(spec),
        terminal,
    };
    let result = (|| {
        chan.send(&ToChild::Job(Box::new(job)))
            .map_err(|source| LaunchError::Launcher { what: "send the job".into(), source })?;
        let mut pid = None;
        loop {
            match recv(&mut chan)? {
                Some(ToParent::Log(l)) => log::info!("container {container_id}: {l}"),
                Some(ToParent::Pid(p)) => pid = Some(p),
                Some(ToParent::Error(e)) => return Err(e.into()),
                Some(other) => return Err(LaunchError::Protocol(format!("unexpected {other:?} in an exec"))),
                None => return pid.ok_or_else(|| LaunchError::Protocol("the launcher exited without a word".into())),
            }
        }
    })();
    // EOF ends a first process still waiting (after a parent-side error).
    drop(chan);
    reap(first);
    result
}

/// The `wisp-agent __launch` side.
pub fn child_main() -> ! {
    child::main()
}
