//! The monitor: the process `wisp-runtime create` leaves running for a container, and the pid
//! its caller waits for (the pid file's). Docker's containerd-shim-runc-v2 and podman's conmon
//! are child subreapers that learn of the exit only by `wait4` on that pid, so the monitor is a
//! child of `create`, and it exits with the container's status.
//!
//! It boots the container's VM through the sandbox core, creates the container in it, binds
//! the control socket ([`super::control`]) and only then tells `create` (a line on the pipe
//! at [`READY_FD`]). Then it relays the container's stdio from the descriptors it inherited,
//! forwards the signals it receives to the container, and when the container exits, stops the
//! VM and exits with the status (128+N when signal N killed it). QEMU dies with it
//! (`PR_SET_PDEATHSIG`), so a SIGKILLed monitor leaves only files, which `delete` removes.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocols::agent as pb;
use protocols::ttrpc::context;
use slog::{info, warn, Logger};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Mutex};

use super::cgroup::{self, ContainerCgroupError};
use super::control::{self, Answer, Request};
use super::hooks::{self, HookError, HookKind, HookState};
use super::monitor_exec::{self, ExecRequest};
use super::network::{ContainerNetwork, NetworkError};
use super::pty::{self, PtyError, Terminal};
use super::store::{Status, Store};
use crate::config::{Config, ConfigError};
use crate::container::{self, Rollback};
use crate::error::Error;
use crate::io::Endpoint;
use crate::process_relay::{self, Stdio};
use crate::sandbox::{Sandbox, SandboxError};
use crate::state::SandboxKey;

/// The descriptor on which the monitor tells `create` that the container exists (or why not).
pub const READY_FD: RawFd = 3;
/// The status reported when the VM died under the container (as the shim reports it).
const VM_DIED_STATUS: i32 = 255;
/// Bound on ordinary agent calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The signals a caller sends the pid-file process that the container gets instead.
const FORWARDED: [i32; 7] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGCONT];

/// What the monitor is started with (`wisp-runtime __monitor`).
#[derive(Debug, Clone)]
pub struct MonitorArgs {
    /// The runtime's `--root`.
    pub root: PathBuf,
    /// The container id.
    pub id: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// `create --console-socket`: where the master of the container's host pty goes.
    pub console_socket: Option<PathBuf>,
    /// `--systemd-cgroup`: the bundle's `cgroupsPath` is systemd's `slice:prefix:name`.
    pub systemd_cgroup: bool,
}

impl MonitorArgs {
    fn dir(&self) -> PathBuf {
        self.root.join(&self.id)
    }
}

/// The sandbox of container `id` of the runtime root `root` (its state directory's key).
pub fn sandbox_key(root: &std::path::Path, id: &str) -> SandboxKey {
    SandboxKey { scope: root.display().to_string(), namespace: String::new(), id: id.to_owned() }
}

/// Why a container could not be created.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot read the configuration")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Container(#[from] Error),
    #[error("cannot boot the container's VM")]
    Boot(#[from] SandboxError),
    #[error("cannot serve the control socket {}", path.display())]
    Control { path: PathBuf, source: std::io::Error },
    #[error("cannot start the monitor's event loop")]
    Runtime(#[source] std::io::Error),
    #[error("cannot give the container a terminal")]
    Terminal(#[from] PtyError),
    // Boxed: the error stays small enough to return everywhere.
    #[error(transparent)]
    Hook(#[from] Box<HookError>),
    #[error("the container's network namespace")]
    Network(#[from] Box<NetworkError>),
    #[error("the container's cgroup")]
    Cgroup(#[from] Box<ContainerCgroupError>),
}

/// The monitor's life; returns its exit code.
pub fn main(args: &MonitorArgs, log: &Logger) -> i32 {
    // Its own session: a signal the caller sends `create`'s group does not reach it, and a
    // terminal can become its controlling one.
    let _ = nix::unistd::setsid();
    // SAFETY: `create` put the write end of its pipe at READY_FD for this process alone and
    // nothing else here opens or owns that number.
    let ready = unsafe { File::from(OwnedFd::from_raw_fd(READY_FD)) };
    let log = log.new(slog::o!("container" => args.id.clone()));
    // Before any other thread exists: a spec asking for a new network namespace gets this
    // (main) thread's, and the rest runs in the caller's ([`super::network`]).
    let entered = match container::plan::load_spec(&args.bundle) {
        Ok(spec) => ContainerNetwork::enter(&spec).map_err(|err| MonitorError::Network(Box::new(err))),
        Err(err) => Err(MonitorError::Container(err)),
    };
    let network = match entered {
        Ok(network) => network,
        Err(err) => {
            tell(ready, Err(&err));
            return 1;
        }
    };
    let outcome = network.run_outside(|| {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(err) => {
                tell(ready, Err(&MonitorError::Runtime(err)));
                return 1;
            }
        };
        let code = runtime.block_on(run(args, ready, &network, &log));
        // A stdin relay may still sit in a blocking read (a terminal or a pipe the caller
        // keeps open): dropping the runtime would wait for it forever.
        runtime.shutdown_background();
        code
    });
    outcome.unwrap_or_else(|err| {
        warn!(log, "the monitor could not run"; "error" => protocols::error::chain(&err));
        1
    })
}

/// Tells `create` how the creation went, and closes the pipe.
fn tell(mut ready: File, outcome: Result<(), &MonitorError>) {
    let line = match outcome {
        Ok(()) => serde_json::json!({"ok": true}),
        Err(err) => serde_json::json!({"error": protocols::error::chain(err)}),
    };
    let _ = writeln!(ready, "{line}");
}

async fn run(args: &MonitorArgs, ready: File, network: &ContainerNetwork, log: &Logger) -> i32 {
    let (monitor, joined) = match setup(args, network, log).await {
        Ok(set_up) => set_up,
        Err(err) => {
            warn!(log, "the container was not created"; "error" => protocols::error::chain(&err));
            tell(ready, Err(&err));
            return 1;
        }
    };
    let listener = match control::bind(&args.dir()) {
        Ok(listener) => listener,
        Err(source) => {
            let err = MonitorError::Control { path: args.dir().join(control::SOCKET), source };
            tell(ready, Err(&err));
            monitor.sandbox.shutdown().await;
            if let Some(joined) = joined {
                joined.undo(&args.dir());
            }
            return 1;
        }
    };
    record(&args.root, &args.id, Status::Created, None, log);
    tell(ready, Ok(()));
    info!(log, "container created"; "vm_pid" => monitor.sandbox.vm_pid());
    let code = monitor.serve(listener).await;
    record(&args.root, &args.id, Status::Stopped, Some(code), log);
    let _ = std::fs::remove_file(args.dir().join(control::SOCKET));
    code
}

/// Runs the host's prestart and createRuntime hooks, moves the monitor into the container's
/// cgroup, boots the VM (wired to the container's network namespace, its cgroup under the
/// container's) and creates the container in it; undoes all of it on a failure. Returns the
/// cgroup joined, for [`run`] to undo if it fails later.
async fn setup(
    args: &MonitorArgs,
    network: &ContainerNetwork,
    log: &Logger,
) -> Result<(Arc<Monitor>, Option<cgroup::Joined>), MonitorError> {
    let config = Config::load()?;
    let spec = container::plan::load_spec(&args.bundle)?;
    let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().as_ref()).map(|p| p.to_string_lossy());
    let cgroup_path = cgroup::resolve(cgroups_path.as_deref(), args.systemd_cgroup).map_err(Box::new)?;
    // Blocking, as runc runs them: nothing else is served yet. Docker's moves the container's
    // veth into this process's network namespace.
    let state = HookState::new(&args.id, "creating", std::process::id(), &args.bundle, &spec);
    hooks::run_kinds(&[HookKind::Prestart, HookKind::CreateRuntime], &spec, &state).map_err(Box::new)?;
    let netns = network.to_wire().map_err(Box::new)?;
    let mut next = 0;
    let plan = container::plan::plan(&args.id, &args.bundle, spec, &[], &config, || {
        next += 1;
        format!("wisp-blk{next}")
    })?;
    let key = sandbox_key(&args.root, &args.id);
    let mut vm = container::vm::config_for(&config, &plan.pod, plan.shared_memory);
    let joined = match &cgroup_path {
        Some(path) => {
            vm.cgroups_path = Some(cgroup::vm_cgroups_path(path, &args.id));
            Some(cgroup::join(path, &args.dir()).map_err(Box::new)?)
        }
        None => None,
    };
    let created = async {
        let sandbox = Arc::new(container::vm::boot(&vm, &key, netns.as_deref(), &plan.boot_disks, log).await?);
        let mut rollback = Rollback::new(log);
        match container::create(&sandbox, &plan, &mut rollback, log).await {
            Ok(_) => rollback.commit(),
            Err(err) => {
                rollback.undo().await;
                sandbox.shutdown().await;
                return Err(MonitorError::from(err));
            }
        }
        Ok(sandbox)
    };
    let sandbox = match created.await {
        Ok(sandbox) => sandbox,
        Err(err) => {
            if let Some(joined) = joined {
                joined.undo(&args.dir());
            }
            return Err(err);
        }
    };
    if let Some(joined) = &joined {
        info!(log, "the monitor and the VM are in the container's cgroup"; "cgroup" => joined.path());
    }
    let terminal = match args.console_socket.as_deref().map(open_terminal).transpose() {
        Ok(terminal) => terminal,
        Err(err) => {
            sandbox.shutdown().await;
            if let Some(joined) = joined {
                joined.undo(&args.dir());
            }
            return Err(err.into());
        }
    };
    let (exit_tx, _) = watch::channel(None);
    let (cid, root, log) = (args.id.clone(), args.root.clone(), log.clone());
    Ok((Arc::new(Monitor { sandbox, cid, root, log, terminal, started: Mutex::new(false), exit_tx }), joined))
}

/// The container's host terminal: the master sent to `socket`, the slave the monitor's
/// controlling terminal (it leads its own session).
fn open_terminal(socket: &std::path::Path) -> Result<Terminal, PtyError> {
    let terminal = Terminal::open_for(socket)?;
    terminal.control()?;
    Ok(terminal)
}

/// A created container and its VM.
struct Monitor {
    sandbox: Arc<Sandbox>,
    cid: String,
    /// The runtime's root.
    root: PathBuf,
    log: Logger,
    /// The host pty relayed to the container's, with `--console-socket`.
    terminal: Option<Terminal>,
    /// Whether Start ran (a second one is refused).
    started: Mutex<bool>,
    /// The container's exit status once it exited (or a Shutdown ended it): see [`Self::exited`].
    exit_tx: watch::Sender<Option<i32>>,
}

impl Monitor {
    /// Serves the control socket and forwards signals until the container exits, the VM dies
    /// or a Shutdown comes; then stops the VM. Returns the exit code.
    async fn serve(self: Arc<Self>, listener: UnixListener) -> i32 {
        for signo in FORWARDED {
            let me = self.clone();
            tokio::spawn(async move { me.forward(signo).await });
        }
        if self.terminal.is_some() {
            let me = self.clone();
            tokio::spawn(async move { me.follow_window_size().await });
        }
        let mut exit = self.exit_tx.subscribe();
        let mut vm_exit = self.sandbox.exited();
        let code = loop {
            let vm_died = tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        let me = self.clone();
                        tokio::spawn(async move { me.answer(stream).await });
                    }
                    continue;
                }
                code = exit.wait_for(Option::is_some) => break code.ok().and_then(|c| *c).unwrap_or(VM_DIED_STATUS),
                _ = vm_exit.wait_for(Option::is_some) => true,
            };
            if vm_died {
                warn!(self.log, "the VM exited"; "exit" => vm_exit.borrow().clone(), "console" => self.sandbox.console_tail());
                // The waiter reports a running container's end itself; give it a moment.
                let late = tokio::time::timeout(Duration::from_secs(1), exit.wait_for(Option::is_some)).await;
                break late.ok().and_then(Result::ok).and_then(|c| *c).unwrap_or(VM_DIED_STATUS);
            }
        };
        self.sandbox.shutdown().await;
        info!(self.log, "container exited; VM stopped"; "status" => code);
        code
    }

    /// Sends every `signo` the monitor receives to the container's init.
    async fn forward(self: Arc<Self>, signo: i32) {
        let Ok(mut signals) = signal(SignalKind::from_raw(signo)) else { return };
        while signals.recv().await.is_some() {
            if let Err(err) = self.kill("", false, signo).await {
                warn!(self.log, "a signal was not forwarded"; "signal" => signo, "error" => err);
            }
        }
    }

    /// Sends SIGWINCH's news (the caller resized the master) to the container's terminal.
    async fn follow_window_size(self: Arc<Self>) {
        let Ok(mut signals) = signal(SignalKind::window_change()) else { return };
        while signals.recv().await.is_some() {
            if *self.started.lock().await {
                self.resize_to_terminal().await;
            }
        }
    }

    /// The container's terminal in the guest gets the host terminal's size, if it has one.
    async fn resize_to_terminal(&self) {
        let Some((rows, cols)) = self.terminal.as_ref().and_then(|t| pty::window_size(t.fd())) else { return };
        if let Err(err) = self.resize("", rows, cols).await {
            warn!(self.log, "the terminal's size was not passed on"; "error" => err);
        }
    }

    async fn answer(self: Arc<Self>, mut stream: tokio::net::UnixStream) {
        let Some((request, fds)) = control::read_request(&mut stream).await else { return };
        let answer = match request {
            Request::Start => self.start().await.map(|()| Answer::Ok),
            Request::Kill { signal, exec_id, all } => self.kill(&exec_id, all, signal).await.map(|()| Answer::Ok),
            Request::Pause => self.pause(true).await.map(|()| Answer::Ok),
            Request::Resume => self.pause(false).await.map(|()| Answer::Ok),
            Request::Shutdown => {
                self.exited(128 + libc::SIGKILL);
                Ok(Answer::Ok)
            }
            Request::Exec { exec_id, process } => {
                let request = ExecRequest { cid: self.cid.clone(), exec_id, process, fds };
                return monitor_exec::serve(self.sandbox.clone(), request, stream, &self.log).await;
            }
            Request::Resize { exec_id, rows, cols } => self.resize(&exec_id, rows, cols).await.map(|()| Answer::Ok),
            Request::Pids => Ok(Answer::Pids(vec![self.sandbox.vm_pid()])),
            Request::Update { resources } => self.update(resources).await.map(|()| Answer::Ok),
        };
        control::write_answer(stream, &answer.unwrap_or_else(Answer::Error)).await;
    }

    /// Records the container's exit status, the first one only (the waiter's, or a Shutdown's).
    fn exited(&self, code: i32) {
        self.exit_tx.send_if_modified(|slot| slot.is_none() && slot.replace(code).is_none());
    }

    /// StartContainer, then the stdio relays and the waiter.
    async fn start(self: &Arc<Self>) -> Result<(), String> {
        let mut started = self.started.lock().await;
        if *started {
            return Err(format!("container {} is already started", self.cid));
        }
        let agent = self.sandbox.agent().agent();
        let request = pb::StartContainerRequest { container_id: self.cid.clone(), ..Default::default() };
        agent
            .start_container(context::with_duration(CALL_TIMEOUT), &request)
            .await
            .map_err(|err| format!("StartContainer: {}", crate::sandbox::describe_ttrpc(&err)))?;
        *started = true;
        record(&self.root, &self.cid, Status::Running, None, &self.log);
        let stdio = match &self.terminal {
            Some(terminal) => {
                let copy = |what| terminal.file().map_err(|err| format!("cannot copy the terminal for {what}: {err}"));
                Stdio {
                    stdin: Some(Endpoint::File(copy("stdin")?)),
                    stdout: Some(Endpoint::File(copy("stdout")?)),
                    stderr: None,
                }
            }
            None => Stdio {
                stdin: inherited(0).map(Endpoint::File),
                stdout: inherited(1).map(Endpoint::File),
                stderr: inherited(2).map(Endpoint::File),
            },
        };
        let pumps = process_relay::start(&agent, &self.cid, "", stdio, Arc::new(tokio::sync::Notify::new()), &self.log);
        drop(started);
        self.resize_to_terminal().await;
        let me = self.clone();
        tokio::spawn(async move {
            let code = process_relay::wait(&agent, &me.cid, "", pumps, me.sandbox.exited(), &me.log).await;
            me.exited(code.unwrap_or(VM_DIED_STATUS));
        });
        Ok(())
    }

    /// Signals exec `exec_id`, the init when it is empty, or with `all` every process of
    /// the container (runc's `kill --all`).
    async fn kill(&self, exec_id: &str, all: bool, signal: i32) -> Result<(), String> {
        let request = pb::SignalProcessRequest {
            container_id: self.cid.clone(),
            exec_id: signal_target(&self.cid, exec_id, all).to_owned(),
            signal: u32::try_from(signal).map_err(|_| format!("invalid signal {signal}"))?,
            ..Default::default()
        };
        let agent = self.sandbox.agent().agent();
        agent
            .signal_process(context::with_duration(CALL_TIMEOUT), &request)
            .await
            .map(drop)
            .map_err(|err| format!("SignalProcess: {}", crate::sandbox::describe_ttrpc(&err)))
    }

    async fn pause(&self, pause: bool) -> Result<(), String> {
        let agent = self.sandbox.agent().agent();
        let ctx = context::with_duration(CALL_TIMEOUT);
        let done = if pause {
            let request = pb::PauseContainerRequest { container_id: self.cid.clone(), ..Default::default() };
            agent.pause_container(ctx, &request).await
        } else {
            let request = pb::ResumeContainerRequest { container_id: self.cid.clone(), ..Default::default() };
            agent.resume_container(ctx, &request).await
        };
        done.map_err(|err| crate::sandbox::describe_ttrpc(&err))?;
        record(&self.root, &self.cid, if pause { Status::Paused } else { Status::Running }, None, &self.log);
        Ok(())
    }
}

impl Monitor {
    async fn resize(&self, exec_id: &str, rows: u16, cols: u16) -> Result<(), String> {
        let request = pb::TtyWinResizeRequest {
            container_id: self.cid.clone(),
            exec_id: exec_id.to_owned(),
            row: rows.into(),
            column: cols.into(),
            ..Default::default()
        };
        let agent = self.sandbox.agent().agent();
        agent
            .tty_win_resize(context::with_duration(CALL_TIMEOUT), &request)
            .await
            .map(drop)
            .map_err(|err| format!("TtyWinResize: {}", crate::sandbox::describe_ttrpc(&err)))
    }

    /// `update`: the container's resources in the guest.
    async fn update(&self, resources: serde_json::Value) -> Result<(), String> {
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_value(resources)
            .map_err(|err| format!("the resources are not OCI LinuxResources: {err}"))?;
        let request = pb::UpdateContainerRequest {
            container_id: self.cid.clone(),
            resources: Some(protocols::convert::to_pb::resources(&resources)).into(),
            ..Default::default()
        };
        let agent = self.sandbox.agent().agent();
        agent
            .update_container(context::with_duration(CALL_TIMEOUT), &request)
            .await
            .map(drop)
            .map_err(|err| format!("UpdateContainer: {}", crate::sandbox::describe_ttrpc(&err)))
    }
}

/// Records the container's status (and exit status) under the record's lock; a failure is
/// logged (a dead monitor reads as stopped whatever the record says).
fn record(root: &std::path::Path, id: &str, status: Status, exit_status: Option<i32>, log: &Logger) {
    let store = Store::new(root);
    let saved = store.lock(id).and_then(|locked| {
        let mut record = locked.load()?;
        record.status = status;
        record.exit_status = exit_status.or(record.exit_status);
        locked.save(&record)
    });
    if let Err(err) = saved {
        warn!(log, "cannot record the status"; "status" => %status, "error" => protocols::error::chain(&err));
    }
}

/// A copy of inherited descriptor `fd`, if it is open.
fn inherited(fd: RawFd) -> Option<File> {
    // SAFETY: F_GETFD only asks whether `fd` is open; no memory is passed.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: `fd` is open (checked above) and stays open for the process's life: nothing here
    // closes 0-2; it is only borrowed to duplicate it.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    borrowed.as_fd().try_clone_to_owned().ok().map(File::from)
}

/// The SignalProcess exec id for a signal to container `cid`: Kata's agent reads an empty
/// one as every process of the container and the container's id as its init (runc's `kill`
/// without `--all`, and the signals `run` forwards).
fn signal_target<'a>(cid: &'a str, exec_id: &'a str, all: bool) -> &'a str {
    match (exec_id.is_empty(), all) {
        (true, true) => "",
        (true, false) => cid,
        (false, _) => exec_id,
    }
}

#[cfg(test)]
mod tests {
    use super::signal_target;

    #[test]
    fn kill_names_the_init_unless_all_is_asked_and_an_exec_by_its_id() {
        assert_eq!(signal_target("c1", "", false), "c1");
        assert_eq!(signal_target("c1", "", true), "");
        assert_eq!(signal_target("c1", "e1", false), "e1");
        assert_eq!(signal_target("c1", "e1", true), "e1");
    }
}
