//! The shim v2 process model: `start`, `delete`, and the daemon serving the task API.
//!
//! Built on the containerd-shim crate (flag parsing, `spawn`, the event publisher, the log
//! FIFO, the task API types) but with our own entry point, because the crate's `run` speaks
//! only to containerd 2.x: it answers `start` in a JSON/protobuf form and serves the task
//! service only as `containerd.task.v3.Task`, and Debian's containerd 1.6 expects a bare
//! address and calls `containerd.task.v2.Task`. The v2 and v3 services are the same messages
//! under two names, so the daemon serves both.
//!
//! - `start` (containerd runs it with cwd = the bundle): validates the configuration (a bad
//!   file is reported to the user here), spawns the daemon and prints its socket address.
//!   Containers that carry `io.kubernetes.cri.sandbox-id` share the shim (and the VM) of their
//!   sandbox: the socket address is derived from the group id, and a second `start` for the
//!   same group finds the running daemon and reuses its address.
//! - `delete` (after a shim died): cleans what the dead daemon left, via the same
//!   [`crate::sandbox::cleanup_dir`] a normal shutdown uses; a second `delete` finds nothing
//!   and succeeds.
//! - the daemon first sweeps the sandboxes of shims that died unseen ([`crate::gc`]), then
//!   serves the task API ([`crate::task::TaskService`]) until Shutdown. It reaps
//!   nothing itself: its children are QEMU and its helpers, waited for by tokio. SIGTERM or
//!   SIGINT (an administrator, systemd, a containerd gone) stops the sandbox the way Shutdown
//!   does, unmounts and removes its state, and exits; a SIGKILLed shim takes QEMU and the
//!   helpers with it (they die with their parent, see `hypervisor::confine`) and leaves its
//!   mounts and state to `delete` or `wisp gc`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal};
use containerd_shim::{Error as ShimError, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim_async::create_task;
use containerd_shim_protos::ttrpc::r#async::Server;
use nix::mount::{umount2, MntFlags};
use slog::{info, o, warn, Drain, Logger};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::sandbox::{cleanup_dir, sandbox_dir, state_root};
use crate::state::SandboxKey;
use crate::task::TaskService;

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.wisp.v2";
/// The CRI annotation grouping a pod's containers into one sandbox.
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// How long the exiting daemon waits for containerd to close its connections.
const SERVER_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// The task service names served: containerd 1.x calls v2, 2.x v3.
const TASK_SERVICES: [&str; 2] = ["containerd.task.v2.Task", "containerd.task.v3.Task"];

/// A logger into the `log` crate, which containerd-shim routes to containerd's log FIFO.
pub fn logger(id: &str, namespace: &str) -> Logger {
    Logger::root(slog_stdlog::StdLog.fuse(), o!("shim" => id.to_owned(), "namespace" => namespace.to_owned()))
}

/// The group (sandbox) a container of the bundle in `bundle` belongs to.
fn group_id(bundle: &Path, id: &str) -> String {
    oci_spec::runtime::Spec::load(bundle.join("config.json"))
        .ok()
        .and_then(|spec| spec.annotations().as_ref().and_then(|a| a.get(SANDBOX_ID_ANNOTATION).cloned()))
        .filter(|group| !group.is_empty())
        .unwrap_or_else(|| id.to_owned())
}

/// Runs the shim for `args` (without the program name); returns the process exit code.
pub async fn main(args: &[OsString]) -> i32 {
    let flags = match containerd_shim::parse(args) {
        Ok(flags) => flags,
        Err(err) => {
            eprintln!("{RUNTIME_ID}: {err}");
            return 1;
        }
    };
    let result = match flags.action.as_str() {
        "start" => start(&flags).await.map(|address| println!("{address}")),
        "delete" => delete(&flags).and_then(|response| {
            use std::io::Write;
            let bytes = response.write_to_bytes().map_err(|err| ShimError::Other(err.to_string()))?;
            std::io::stdout()
                .write_all(&bytes)
                .map_err(|err| ShimError::Other(format!("cannot write the answer: {err}")))
        }),
        "" => serve(&flags).await,
        other => Err(ShimError::InvalidArgument(format!("unknown action {other:?}: expected start, delete or none"))),
    };
    match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("{RUNTIME_ID}: {err}");
            1
        }
    }
}

/// `start`: validates the configuration, spawns (or finds) the daemon of the container's
/// group, records its address in the bundle, and returns it.
async fn start(flags: &Flags) -> Result<String, ShimError> {
    Config::load().map_err(|err| ShimError::InvalidArgument(crate::error_chain(&err)))?;
    let opts = StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..Default::default()
    };
    let cwd = std::env::current_dir().map_err(|err| ShimError::Other(format!("cannot read the cwd: {err}")))?;
    let group = group_id(&cwd, &opts.id);
    let address = spawn(opts, &group, Vec::new()).await?;
    std::fs::write(cwd.join("address"), &address)
        .map_err(|err| ShimError::Other(format!("cannot write {}/address: {err}", cwd.display())))?;
    Ok(address)
}

/// `delete`: removes what a dead daemon of sandbox `flags.id` in `flags.namespace` left (a
/// live daemon's state is left alone: [`cleanup_dir`] checks the owner).
fn delete(flags: &Flags) -> Result<DeleteResponse, ShimError> {
    let log = Logger::root(slog::Discard, o!());
    let dir = sandbox_dir(&state_root(), &SandboxKey::containerd(&flags.namespace, &flags.id));
    let done = cleanup_dir(&dir, &log);
    if let Ok(cwd) = std::env::current_dir() {
        let rootfs = cwd.join("rootfs");
        if crate::sandbox::mounts_under(&rootfs).contains(&rootfs) {
            let _ = umount2(&rootfs, MntFlags::MNT_DETACH);
        }
    }
    let summary = if done.is_empty() { "nothing left".to_owned() } else { done.join(", ") };
    eprintln!("{RUNTIME_ID} delete {}/{}: {summary}", flags.namespace, flags.id);
    Ok(DeleteResponse {
        // What runc reports for a task killed with its shim: 128 + SIGKILL.
        exit_status: 137,
        exited_at: Some(containerd_shim::util::timestamp().unwrap_or_default()).into(),
        ..Default::default()
    })
}

/// Removes the sandboxes of shims that died unseen ([`crate::gc`]), before this one serves
/// (so the sweep never meets a sandbox this process is creating). A scan of the state root.
fn sweep_orphans(log: &Logger) {
    let (swept, _) = crate::gc::sweep(&state_root(), &crate::state::ProcFs, |dir| cleanup_dir(dir, log));
    for s in swept {
        info!(log, "removed a sandbox whose shim is gone"; "sandbox" => s.found.describe(), "done" => s.done.join(", "));
    }
}

/// The daemon: serves the task API on `flags.socket` until Shutdown.
async fn serve(flags: &Flags) -> Result<(), ShimError> {
    if flags.socket.is_empty() {
        return Err(ShimError::InvalidArgument("-socket is required to serve".to_owned()));
    }
    containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)?;
    let log = logger(&flags.id, &flags.namespace);
    crate::timeline::mark(&log, "shim started");
    let config = match Config::load() {
        Ok(config) => config,
        Err(err) => {
            // `start` refused a bad file; it changed since: say so, and run on the default.
            warn!(log, "configuration unreadable, using the built-in default"; "error" => crate::error_chain(&err));
            Config::default()
        }
    };
    let ttrpc_address = std::env::var("TTRPC_ADDRESS")
        .map_err(|_| ShimError::InvalidArgument("TTRPC_ADDRESS is not set (containerd sets it)".to_owned()))?;
    let publisher = RemotePublisher::new(&ttrpc_address).await?;
    let exit = Arc::new(ExitSignal::default());
    info!(log, "shim serving"; "config" => config.source_name(), "version" => env!("CARGO_PKG_VERSION"),
          "socket" => &flags.socket);
    sweep_orphans(&log);
    let task = Arc::new(TaskService::new(&flags.id, &flags.namespace, config, publisher, exit.clone(), log.clone()));
    let mut services = HashMap::new();
    for name in TASK_SERVICES {
        // create_task names its service v3; the same handlers answer under both names.
        if let Some(service) = create_task(task.clone()).into_values().next() {
            services.insert(name.to_owned(), service);
        }
    }
    let socket = flags.socket.as_str();
    let path = socket.strip_prefix("unix://").unwrap_or(socket);
    if let Some(parent) = Path::new(path).parent() {
        std::fs::create_dir_all(parent)
            .map_err(|err| ShimError::Other(format!("cannot create {}: {err}", parent.display())))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        // The group's daemon already serves here (a second container of the same sandbox):
        // `start` prints this address and containerd talks to that daemon.
        info!(log, "the sandbox's shim already serves; not starting another"; "socket" => path);
        return Ok(());
    }
    let _ = std::fs::remove_file(path);
    let mut server = Server::new().bind(&format!("unix://{path}"))?.register_service(services);
    server.start().await?;
    // `start` reads our stdout until EOF: point it at stderr now that the socket serves.
    nix::unistd::dup2_stdout(std::io::stderr())
        .map_err(|err| ShimError::Other(format!("cannot detach stdout: {err}")))?;
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(err), _) | (_, Err(err)) => return Err(ShimError::Other(format!("cannot watch SIGTERM/SIGINT: {err}"))),
    };
    let stopped_by = tokio::select! {
        () = exit.wait() => None,
        _ = term.recv() => Some("SIGTERM"),
        _ = int.recv() => Some("SIGINT"),
    };
    if let Some(signal) = stopped_by {
        info!(log, "stopping the sandbox and cleaning up"; "signal" => signal);
        task.terminate().await;
    }
    crate::timeline::mark(&log, "shim exiting");
    // Connections containerd still holds (a pod's shim has one per container) are told to close;
    // the shim does not wait on them for long: its work is done.
    if tokio::time::timeout(SERVER_CLOSE_TIMEOUT, server.shutdown()).await.is_err() {
        warn!(log, "connections still open at exit"; "waited_ms" => SERVER_CLOSE_TIMEOUT.as_millis());
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}
