//! Starting and watching the processes of one VM, the same way for every VMM backend.
//!
//! Each process logs to `<name>.log` and records its pid in `<name>.pid` in the VM's
//! directory, so a later `containerd-shim-wisp-v2 delete` can kill what a crashed shim left
//! behind; descriptors the VMM must inherit (the vhost-vsock fd, a CNI pod's tap) are passed to
//! that child only. Every child is confined ([`super::confine`]) and dies with the shim.
//!
//! # One forking thread
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process:
//! a child forked from a tokio blocking-pool thread (which exits after 10 s idle) would be
//! killed with it. So every fork happens on one thread started on first use and never ended
//! ([`fork_thread`]); it spawns in the caller's tokio runtime (the handle travels with the
//! request), so the caller gets an ordinary [`tokio::process::Child`].

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::{mpsc, Mutex, OnceLock};

use slog::{info, Logger};
use tokio::process::{Child, Command};
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::confine::{ChildSetup, Confinement};
use super::qemu::cmdline::shell_line;
use super::{tail, HypervisorError, VmPaths};

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

/// A spawn request for the forking thread: the command, the runtime it belongs to, where to
/// answer.
type Request = (Command, Handle, mpsc::SyncSender<io::Result<Child>>);

/// The forking thread's queue; the thread lives as long as the process.
fn fork_thread() -> &'static Mutex<mpsc::Sender<Request>> {
    static QUEUE: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        let spawned = std::thread::Builder::new().name("wisp-fork".to_owned()).spawn(move || {
            for (mut command, handle, answer) in rx {
                let _entered = handle.enter();
                let _ = answer.send(command.spawn());
            }
        });
        if let Err(err) = spawned {
            // Without the thread every spawn answers with this error (the queue is closed).
            eprintln!("wisp: cannot start the forking thread: {err}");
        }
        Mutex::new(tx)
    })
}

/// Spawns `command` from the long-lived forking thread (see the module docs), in the tokio
/// runtime of the caller.
pub fn spawn_from_fork_thread(command: Command) -> io::Result<Child> {
    let handle = Handle::try_current().map_err(|err| io::Error::other(err.to_string()))?;
    let (answer, reply) = mpsc::sync_channel(1);
    let queue = fork_thread().lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    queue.send((command, handle, answer)).map_err(|_| io::Error::other("the forking thread is gone"))?;
    reply.recv().map_err(|_| io::Error::other("the forking thread did not answer"))?
}

/// Starts `launch` confined by `confinement`, with stdout and stderr in `<name>.log` and its
/// pid in `<name>.pid`; killed when the returned [`Child`] is dropped, and when the shim dies.
pub fn spawn(
    paths: &VmPaths,
    log: &Logger,
    launch: Launch<'_>,
    confinement: Confinement,
) -> Result<Child, HypervisorError> {
    let Launch { name, program, args, env, inherit } = launch;
    let log_path = paths.helper_log(name);
    let io = |source| HypervisorError::Io { what: "cannot create log", path: log_path.clone(), source };
    // O_NOFOLLOW: in rootless mode the VM directory is writable by the sandbox's group, so a
    // helper taken over before this one starts could plant `<name>.log` -> a host file.
    let out = create_nofollow(&log_path).map_err(io)?;
    let err = out.try_clone().map_err(io)?;
    let spawn_err = |source| HypervisorError::Spawn { program: program.to_owned(), source };
    info!(log, "starting {name}"; "argv" => shell_line(&program.to_string_lossy(), args),
          "user" => confinement.run_as.map_or_else(|| "root".to_owned(), |ids| format!("{}:{}", ids.uid, ids.gid)));
    // A process that drops root is exec'd through a descriptor the shim opened as root: the
    // binary need not be reachable by its uid (`cargo install`'s ~/.cargo/bin is not), and the
    // file run is the one checked, not whatever the path names later. Close-on-exec stays set:
    // the kernel resolves the path before it closes descriptors.
    let binary = match confinement.run_as {
        Some(_) => Some(File::open(program).map_err(spawn_err)?),
        None => None,
    };
    let setup = ChildSetup::new(confinement, inherit).map_err(spawn_err)?;
    let mut command = match &binary {
        Some(file) => {
            let mut command = Command::new(format!("/proc/self/fd/{}", file.as_raw_fd()));
            command.arg0(program);
            command
        }
        None => Command::new(program),
    };
    command.args(args).envs(env.iter().copied()).stdin(Stdio::null()).stdout(out).stderr(err).kill_on_drop(true);
    // SAFETY: the closure runs between fork and exec; ChildSetup::apply makes only
    // async-signal-safe system calls on data prepared before the fork and allocates nothing.
    unsafe {
        command.pre_exec(move || setup.apply());
    }
    let child = spawn_from_fork_thread(command).map_err(spawn_err)?;
    drop(binary);
    if let Some(pid) = child.id() {
        let pid_file = paths.dir().join(format!("{name}.pid"));
        create_nofollow(&pid_file)
            .and_then(|mut f| f.write_all(pid.to_string().as_bytes()))
            .map_err(|source| HypervisorError::Io { what: "cannot write", path: pid_file, source })?;
    }
    Ok(child)
}

/// Creates (or truncates) `path` for writing, refusing a symlink in its place.
pub fn create_nofollow(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// Waits for the VMM `child` in the background and sends one line on `exited` when it is gone:
/// `<what> exited (<status>): <last line of its log>`, unless a cause was sent first (a helper
/// that died and took the VM down: see [`super::helper_watch`]).
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
        exited.send_if_modified(|current| {
            current.is_none() && {
                *current = Some(description);
                true
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::hypervisor::confine::RunAs;

    fn alive(pid: u32) -> bool {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"))
            .unwrap_or(false)
    }

    fn launch<'a>(args: &'a [String]) -> Launch<'a> {
        Launch { name: "probe", program: Path::new("/bin/sh"), args, env: &[], inherit: &[] }
    }

    /// A child spawned by a thread that then exits lives on: the fork happened on the
    /// long-lived forking thread, which the death signal follows.
    #[tokio::test]
    async fn a_child_outlives_the_short_lived_thread_that_asked_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let paths = VmPaths::new(dir.path());
        let handle = Handle::current();
        let args = vec!["-c".to_owned(), "sleep 30".to_owned()];
        let child = std::thread::spawn(move || {
            let _entered = handle.enter();
            let log = Logger::root(slog::Discard, slog::o!());
            spawn(&paths, &log, launch(&args), Confinement::default()).unwrap()
        })
        .join()
        .unwrap();
        let pid = child.id().unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(alive(pid), "the child died with the thread that asked for it");
        let recorded = fs::read_to_string(dir.path().join("probe.pid")).unwrap();
        assert_eq!(recorded, pid.to_string());
        drop(child);
    }

    /// Root only: a rootless child runs as its ids, with the extra group, exec'd through a
    /// descriptor (argv[0] still names the program).
    #[tokio::test]
    async fn a_rootless_child_runs_as_its_own_ids() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to change ids");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let paths = VmPaths::new(dir.path());
        let log = Logger::root(slog::Discard, slog::o!());
        let args = vec!["-c".to_owned(), "echo $0 $(id -u) $(id -g) $(id -G)".to_owned()];
        let run_as = RunAs { uid: 2_000_012_345, gid: 2_000_012_345, group: Some(4242) };
        let confinement = Confinement { run_as: Some(run_as), ..Confinement::default() };
        let mut child = spawn(&paths, &log, launch(&args), confinement).unwrap();
        assert!(child.wait().await.unwrap().success());
        let out = fs::read_to_string(paths.helper_log("probe")).unwrap();
        assert_eq!(out.trim(), "/bin/sh 2000012345 2000012345 2000012345 4242", "{out}");
    }
}
