//! The shim v2 process model on the containerd-shim crate: `start`, `delete`, the daemon.
//!
//! - `start` (containerd runs it with cwd = the bundle): spawns the daemon and prints its
//!   socket address. Containers that carry `io.kubernetes.cri.sandbox-id` share the shim (and
//!   the VM) of their sandbox: the socket address is derived from the group id, and a second
//!   `start` for the same group finds the running daemon and reuses its address.
//! - `delete` (after a shim died): cleans what the dead daemon left, via the same
//!   [`crate::sandbox::cleanup_dir`] a normal shutdown uses; a second `delete` finds nothing
//!   and succeeds.
//! - the daemon serves the task API ([`crate::task::TaskService`]) until Shutdown.
//!
//! The crate's own child reaper is off ([`shim_config`]): the shim's children are QEMU and its
//! helpers, waited for by tokio, which must see their exit statuses.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::{Config as ShimConfig, Error as ShimError, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use nix::mount::{umount2, MntFlags};
use slog::{info, o, warn, Drain, Logger};

use crate::config::Config;
use crate::sandbox::{cleanup_dir, sandbox_dir, state_root};
use crate::task::TaskService;

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.wisp.v2";
/// The CRI annotation grouping a pod's containers into one sandbox.
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// The containerd-shim options wisp runs with.
pub fn shim_config() -> ShimConfig {
    ShimConfig { no_reaper: true, no_sub_reaper: true, ..Default::default() }
}

/// The shim.
pub struct WispShim {
    id: String,
    namespace: String,
    exit: Arc<ExitSignal>,
    log: Logger,
}

impl std::fmt::Debug for WispShim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WispShim").field("id", &self.id).field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

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

#[async_trait]
impl Shim for WispShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut ShimConfig) -> Self {
        Self {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
            log: logger(&args.id, &args.namespace),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, ShimError> {
        // A bad configuration fails here, where containerd shows the message to the user.
        Config::load().map_err(|err| ShimError::InvalidArgument(crate::error_chain(&err)))?;
        let cwd = std::env::current_dir().map_err(|err| ShimError::Other(format!("cannot read the cwd: {err}")))?;
        let group = group_id(&cwd, &opts.id);
        let address = spawn(opts, &group, Vec::new()).await?;
        std::fs::write(cwd.join("address"), &address)
            .map_err(|err| ShimError::Other(format!("cannot write {}/address: {err}", cwd.display())))?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, ShimError> {
        let log = Logger::root(slog::Discard, o!());
        let dir = sandbox_dir(&state_root(), &self.id);
        let done = cleanup_dir(&dir, &log);
        if let Ok(cwd) = std::env::current_dir() {
            let rootfs = cwd.join("rootfs");
            if crate::sandbox::mounts_under(&rootfs).contains(&rootfs) {
                let _ = umount2(&rootfs, MntFlags::MNT_DETACH);
            }
        }
        eprintln!(
            "containerd-shim-wisp-v2 delete {}: {}",
            self.id,
            if done.is_empty() { "nothing left".to_owned() } else { done.join(", ") }
        );
        Ok(DeleteResponse {
            // What runc reports for a task killed with its shim: 128 + SIGKILL.
            exit_status: 137,
            exited_at: Some(containerd_shim::util::timestamp().unwrap_or_default()).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let config = match Config::load() {
            Ok(config) => config,
            Err(err) => {
                // `start` already refused a bad file; it changed since: say so, run on defaults.
                warn!(self.log, "configuration unreadable, using the built-in default"; "error" => crate::error_chain(&err));
                Config::default()
            }
        };
        info!(self.log, "shim serving"; "config" => config.source_name(), "version" => env!("CARGO_PKG_VERSION"));
        TaskService::new(&self.id, &self.namespace, config, publisher, self.exit.clone(), self.log.clone())
    }
}
