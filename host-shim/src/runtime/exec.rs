//! `exec`: a process in a running container. The process the caller waits for is a *relay*:
//! `exec` itself, or with `--detach` a child it forks (its pid goes to `--pid-file`, as runsc's
//! exec relay does). The relay hands its stdio (or, with a terminal, the slave of a host pty
//! whose master went over `--console-socket`) to the container's monitor with the request
//! ([`super::monitor_exec`] starts the process in the guest and relays them), forwards the
//! signals it receives to the process, passes its terminal's resizes on, and exits with the
//! process's status.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};

use super::cli::ExecArgs;
use super::control::{self, Answer, Request};
use super::launch::LaunchError;
use super::pty::{self, Terminal};
use super::store::{Status, Store};
use super::{Ctx, RuntimeError};
use crate::state::ProcFs;

/// The signals the relay receives that the exec'd process gets instead.
const FORWARDED: [i32; 7] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGCONT];
/// The status when the monitor went away before the process's status came (the VM died).
const LOST_STATUS: i32 = 255;

/// `exec`: returns the process's exit status, or 0 once a detached one started.
pub fn exec(ctx: &Ctx, args: &ExecArgs) -> Result<i32, RuntimeError> {
    let store = Store::new(&ctx.root);
    let record = store.load(&args.id)?;
    let status = record.live_status(&ProcFs);
    if status != Status::Running {
        return Err(LaunchError::Refused(format!("cannot exec in a container that is {status}")).into());
    }
    let process = process_of(args, &record.bundle)?;
    let terminal = process.get("terminal").and_then(Value::as_bool).unwrap_or(false);
    match (terminal, &args.console_socket, args.detach) {
        (true, None, true) => {
            return Err(RuntimeError::Usage(
                "cannot allocate tty if runc will detach without setting console socket".into(),
            ))
        }
        (false, Some(_), _) => {
            return Err(RuntimeError::Usage("cannot use console socket if runc will not detach or allocate tty".into()))
        }
        _ => {}
    }
    let job =
        Job { dir: store.dir(&args.id), exec_id: exec_id(), process, console_socket: args.console_socket.clone() };
    if args.detach {
        detach(&job, args.pid_file.as_deref())
    } else {
        job.relay(|_| ())
    }
}

/// One exec as the relay carries it out.
struct Job {
    /// The container's directory (its monitor's socket).
    dir: PathBuf,
    exec_id: String,
    /// The OCI process.
    process: Value,
    console_socket: Option<PathBuf>,
}

impl Job {
    /// Opens the host terminal if one was asked for, starts the process through the monitor,
    /// calls `started` with the outcome, then relays until the process exited; returns its
    /// status.
    fn relay(&self, started: impl FnOnce(Result<(), &RuntimeError>)) -> Result<i32, RuntimeError> {
        let outcome = self.begin();
        started(outcome.as_ref().map(drop));
        let (stream, terminal) = outcome?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RuntimeError::io("cannot start the event loop of the exec of", &self.dir))?;
        let code = runtime.block_on(self.follow(stream, terminal));
        // A control call may still be on its way: the status is known, do not wait for it.
        runtime.shutdown_background();
        Ok(code)
    }

    /// Sends the request with the stdio and waits for the monitor's first word.
    fn begin(&self) -> Result<(std::os::unix::net::UnixStream, Option<Terminal>), RuntimeError> {
        let terminal = match &self.console_socket {
            Some(socket) => {
                let terminal =
                    Terminal::open_for(socket).map_err(|err| LaunchError::Refused(protocols::error::chain(&err)))?;
                // A detached relay leads its own session; a foreground exec keeps the caller's
                // terminal and takes no controlling one.
                let _ = terminal.control();
                Some(terminal)
            }
            None => None,
        };
        let stdio = match &terminal {
            Some(terminal) => vec![terminal.fd().as_raw_fd()],
            None => inherited_stdio()?,
        };
        let request = Request::Exec { exec_id: self.exec_id.clone(), process: self.process.clone() };
        let mut stream = control::connect(&self.dir).map_err(LaunchError::from)?;
        control::send(&mut stream, &self.dir, &request, &stdio).map_err(LaunchError::from)?;
        // Only the monitor's copies serve the process now (a descriptor opened here for it).
        let mut line = Vec::new();
        BufReader::new(&stream)
            .read_until(b'\n', &mut line)
            .map_err(|source| LaunchError::from(control::ControlError::Io { path: self.dir.clone(), source }))?;
        match control::parse_answer(&line) {
            Ok(Answer::Ok) => Ok((stream, terminal)),
            Ok(Answer::Error(why)) => Err(LaunchError::Refused(why).into()),
            _ => Err(LaunchError::MonitorDied(format!("it answered {:?}", String::from_utf8_lossy(&line))).into()),
        }
    }

    /// Forwards signals and resizes until the monitor sends the status.
    async fn follow(&self, stream: std::os::unix::net::UnixStream, terminal: Option<Terminal>) -> i32 {
        for signo in FORWARDED {
            let (dir, exec_id) = (self.dir.clone(), self.exec_id.clone());
            tokio::spawn(async move {
                let Ok(mut signals) = signal(SignalKind::from_raw(signo)) else { return };
                while signals.recv().await.is_some() {
                    let request = Request::Kill { signal: signo, all: false, exec_id: exec_id.clone() };
                    let dir = dir.clone();
                    let _ = tokio::task::spawn_blocking(move || control::call(&dir, &request)).await;
                }
            });
        }
        if self.process.get("terminal").and_then(Value::as_bool).unwrap_or(false) {
            let size_of = match &terminal {
                Some(terminal) => terminal.fd().try_clone_to_owned().ok(),
                // A foreground exec's own terminal, if it has one.
                None => std::io::stdin().as_fd().try_clone_to_owned().ok(),
            };
            if let Some(fd) = size_of {
                let (dir, exec_id) = (self.dir.clone(), self.exec_id.clone());
                tokio::spawn(async move { follow_window_size(dir, exec_id, fd).await });
            }
        }
        let status = tokio::task::spawn_blocking(move || {
            let _ = stream.set_read_timeout(None);
            let mut line = Vec::new();
            let _ = BufReader::new(&stream).read_until(b'\n', &mut line);
            match control::parse_answer(&line) {
                Ok(Answer::Exited(code)) => code,
                _ => LOST_STATUS,
            }
        });
        let code = status.await.unwrap_or(LOST_STATUS);
        drop(terminal);
        code
    }
}

/// Passes the size of terminal `fd` on now and on every SIGWINCH.
async fn follow_window_size(dir: PathBuf, exec_id: String, fd: OwnedFd) {
    let Ok(mut signals) = signal(SignalKind::window_change()) else { return };
    loop {
        if let Some((rows, cols)) = pty::window_size(fd.as_fd()) {
            let request = Request::Resize { exec_id: exec_id.clone(), rows, cols };
            let dir = dir.clone();
            let _ = tokio::task::spawn_blocking(move || control::call(&dir, &request)).await;
        }
        if signals.recv().await.is_none() {
            return;
        }
    }
}

/// `exec --detach`: forks the relay; once the process started, writes the relay's pid to
/// `pid_file` and returns.
fn detach(job: &Job, pid_file: Option<&Path>) -> Result<i32, RuntimeError> {
    if !single_threaded() {
        return Err(LaunchError::Refused("exec --detach: the runtime is not single-threaded here".into()).into());
    }
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| LaunchError::Spawn(std::io::Error::from(e)))?;
    // SAFETY: this process has one thread (checked above), so the child may run any code.
    match unsafe { nix::unistd::fork() }.map_err(|e| LaunchError::Spawn(std::io::Error::from(e)))? {
        nix::unistd::ForkResult::Child => {
            drop(ready_r);
            std::process::exit(relay_child(job, ready_w));
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(ready_w);
            let mut line = String::new();
            let _ = BufReader::new(std::fs::File::from(ready_r)).read_line(&mut line);
            if line.trim() != "ok" {
                let _ = nix::sys::wait::waitpid(child, None);
                let why =
                    if line.trim().is_empty() { "the exec's relay exited".to_owned() } else { line.trim().to_owned() };
                return Err(LaunchError::NotCreated(why).into());
            }
            if let Some(path) = pid_file {
                super::launch::write_pid_file(path, child.as_raw() as u32)?;
            }
            Ok(0)
        }
    }
}

/// The forked relay: its own session, then [`Job::relay`]; tells the parent on `ready`.
fn relay_child(job: &Job, ready: OwnedFd) -> i32 {
    let _ = nix::unistd::setsid();
    if job.console_socket.is_some() {
        // The caller reads exec's output until EOF with a terminal (go-runc does): the relay,
        // which outlives exec, lets go of it (the terminal is the process's stdio).
        release_stdio();
    }
    let mut ready = std::fs::File::from(ready);
    let relayed = job.relay(|outcome| {
        let line = match outcome {
            Ok(()) => "ok".to_owned(),
            Err(err) => protocols::error::chain(err).replace('\n', " "),
        };
        let _ = writeln!(ready, "{line}");
    });
    relayed.unwrap_or(1)
}

/// Points 0-2 at /dev/null.
fn release_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            // SAFETY: dup2 onto 0-2 replaces this process's stdio; no Rust object owns them.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Descriptors 0-2 to hand over; one that is closed is given as /dev/null.
fn inherited_stdio() -> Result<Vec<RawFd>, RuntimeError> {
    let mut fds = Vec::new();
    for fd in 0..3 {
        // SAFETY: F_GETFD only asks whether `fd` is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(RuntimeError::io("cannot open", "/dev/null"))?;
            // SAFETY: `fd` is closed (checked above): dup2 makes it /dev/null for this process.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
        fds.push(fd);
    }
    Ok(fds)
}

/// Whether this process runs one thread (a fork may then run anything in the child).
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").map(|tasks| tasks.count() == 1).unwrap_or(false)
}

/// An id no other exec of the container has.
fn exec_id() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("exec-{}-{nanos:x}", std::process::id())
}

/// The process to run, as runc's exec reads it: the `--process` file as given, else the
/// container's own process with the command and the flags applied.
fn process_of(args: &ExecArgs, bundle: &Path) -> Result<Value, RuntimeError> {
    let mut process = match &args.process {
        Some(path) => {
            let text = std::fs::read(path).map_err(RuntimeError::io("cannot read the process", path))?;
            serde_json::from_slice(&text).map_err(|source| RuntimeError::Json {
                what: "cannot parse the process in",
                path: path.clone(),
                source,
            })?
        }
        None => from_command(args, bundle)?,
    };
    // What Go's decoder leaves zero in runc: root, and the container's root directory.
    if process.is_object() {
        for (field, zero) in [("user", json!({"uid": 0, "gid": 0})), ("cwd", json!("/"))] {
            if process.get(field).is_none() {
                process[field] = zero;
            }
        }
    }
    let path = args.process.clone().unwrap_or_else(|| bundle.join("config.json"));
    serde_json::from_value::<oci_spec::runtime::Process>(process.clone()).map_err(|source| RuntimeError::Json {
        what: "the exec's process is not an OCI process:",
        path,
        source,
    })?;
    Ok(process)
}

/// runc's `exec ID COMMAND...`: the container's process, its args replaced, the flags applied.
fn from_command(args: &ExecArgs, bundle: &Path) -> Result<Value, RuntimeError> {
    let config = bundle.join("config.json");
    let text = std::fs::read(&config).map_err(RuntimeError::io("cannot read", &config))?;
    let spec: Value = serde_json::from_slice(&text).map_err(|source| RuntimeError::Json {
        what: "cannot parse",
        path: config.clone(),
        source,
    })?;
    let mut process = spec.get("process").cloned().unwrap_or_else(|| json!({}));
    process["args"] = json!(args.command);
    process["terminal"] = json!(args.tty);
    if let Some(cwd) = &args.cwd {
        process["cwd"] = json!(cwd);
    }
    if !args.env.is_empty() {
        let mut env = process.get("env").and_then(Value::as_array).cloned().unwrap_or_default();
        env.extend(args.env.iter().map(|e| json!(e)));
        process["env"] = Value::Array(env);
    }
    if let Some(user) = &args.user {
        let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
        let id = |raw: &str| {
            raw.parse::<u32>().map_err(|_| RuntimeError::Usage(format!("exec --user {user:?}: not UID[:GID]")))
        };
        process["user"] = json!({"uid": id(uid)?, "gid": id(gid)?});
    }
    if !args.additional_gids.is_empty() {
        process["user"]["additionalGids"] = json!(args.additional_gids);
    }
    if args.no_new_privs {
        process["noNewPrivileges"] = json!(true);
    }
    for cap in &args.cap {
        for set in ["bounding", "effective", "permitted", "ambient"] {
            let list = &mut process["capabilities"][set];
            if !list.is_array() {
                *list = json!([]);
            }
            if let Some(list) = list.as_array_mut() {
                list.push(json!(cap));
            }
        }
    }
    Ok(process)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> ExecArgs {
        let mut argv = vec!["wisp-runtime", "exec"];
        argv.extend_from_slice(extra);
        match super::super::cli::Cli::try_parse_from(argv).unwrap().command {
            Some(super::super::cli::Command::Exec(args)) => args,
            other => panic!("{other:?}"),
        }
    }

    fn bundle(process: Value) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let spec = json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": process});
        std::fs::write(dir.path().join("config.json"), spec.to_string()).unwrap();
        dir
    }

    #[test]
    fn a_command_runs_as_the_containers_process_with_the_flags_applied() {
        let dir = bundle(json!({"args": ["sh"], "cwd": "/srv", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}}));
        let args = args(&["-t", "-e", "A=1", "--user", "1000:100", "--cwd", "/tmp", "-g", "7", "c1", "ls", "-l"]);
        let process = process_of(&args, dir.path()).unwrap();
        assert_eq!(process["args"], json!(["ls", "-l"]));
        assert_eq!(process["terminal"], json!(true));
        assert_eq!(process["cwd"], json!("/tmp"));
        assert_eq!(process["env"], json!(["PATH=/bin", "A=1"]));
        assert_eq!(process["user"], json!({"uid": 1000, "gid": 100, "additionalGids": [7]}));
    }

    #[test]
    fn a_process_file_is_taken_as_given_and_checked() {
        let dir = bundle(json!({"args": ["sh"], "cwd": "/"}));
        let file = dir.path().join("process.json");
        std::fs::write(&file, json!({"args": ["top"], "cwd": "/", "terminal": true}).to_string()).unwrap();
        let process = process_of(&args(&["--process", file.to_str().unwrap(), "c1"]), dir.path()).unwrap();
        assert_eq!(process["args"], json!(["top"]));

        std::fs::write(&file, json!({"args": "not a list", "cwd": "/"}).to_string()).unwrap();
        let err = process_of(&args(&["--process", file.to_str().unwrap(), "c1"]), dir.path()).unwrap_err();
        assert!(err.to_string().contains("not an OCI process"), "{err}");
    }

    #[test]
    fn a_bad_user_is_refused_naming_it() {
        let dir = bundle(json!({"args": ["sh"], "cwd": "/"}));
        let err = process_of(&args(&["--user", "me", "c1", "id"]), dir.path()).unwrap_err();
        assert!(err.to_string().contains("\"me\""), "{err}");
    }

    #[test]
    fn exec_ids_differ() {
        assert_ne!(exec_id(), exec_id());
    }
}
