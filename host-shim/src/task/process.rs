//! The processes and containers of the shim as containerd sees them: their stdio, status and
//! exit, which the agent's answers update.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};

use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::{watch, Notify};

use crate::container::UsedVolume;
use crate::error::Error;

/// The life of one process as containerd sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

/// How a process ended.
#[derive(Debug, Clone)]
pub(super) struct Exit {
    pub(super) status: u32,
    pub(super) at: Timestamp,
}

/// containerd's stdio for one process.
#[derive(Debug, Clone, Default)]
pub(super) struct Stdio {
    pub(super) stdin: String,
    pub(super) stdout: String,
    pub(super) stderr: String,
    pub(super) terminal: bool,
}

/// One process (a container's init or an exec).
#[derive(Debug)]
pub(super) struct Proc {
    pub(super) container: String,
    /// containerd's exec id (`""` for init).
    pub(super) exec_id: String,
    pub(super) stdio: Stdio,
    /// The OCI process of an exec (sent with ExecProcess at Start).
    pub(super) exec_spec: Option<protocols::oci::Process>,
    pub(super) status: StdMutex<Status>,
    pub(super) exit_tx: watch::Sender<Option<Exit>>,
    pub(super) stdin_close: Arc<Notify>,
}

impl Proc {
    pub(super) fn new(
        container: &str,
        exec_id: &str,
        stdio: Stdio,
        exec_spec: Option<protocols::oci::Process>,
    ) -> Arc<Self> {
        let (exit_tx, _) = watch::channel(None);
        Arc::new(Self {
            container: container.to_owned(),
            exec_id: exec_id.to_owned(),
            stdio,
            exec_spec,
            status: StdMutex::new(Status::Created),
            exit_tx,
            stdin_close: Arc::new(Notify::new()),
        })
    }

    /// The agent's name for this process.
    pub(super) fn agent_exec_id(&self) -> &str {
        if self.exec_id.is_empty() {
            &self.container
        } else {
            &self.exec_id
        }
    }

    pub(super) fn status(&self) -> Status {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn set_status(&self, status: Status) {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = status;
    }

    pub(super) fn exit(&self) -> Option<Exit> {
        self.exit_tx.borrow().clone()
    }
}

/// One container.
#[derive(Debug)]
pub(super) struct Container {
    pub(super) bundle: String,
    /// `<bundle>/rootfs` when the shim mounted containerd's rootfs mounts there.
    pub(super) mounted_rootfs: Option<PathBuf>,
    pub(super) init: Arc<Proc>,
    pub(super) execs: HashMap<String, Arc<Proc>>,
    /// Disks plugged for it (QEMU device ids), unplugged when it is deleted.
    pub(super) plugged: Vec<String>,
    /// Direct volumes it uses.
    pub(super) volumes: Vec<UsedVolume>,
    /// Disks hot-plugged while it runs.
    pub(super) hot: Vec<HotDisk>,
}

/// A disk hot-plugged into a running container.
#[derive(Debug, Clone)]
pub(super) struct HotDisk {
    /// The node in the container.
    pub(super) device_path: String,
    /// Where it is mounted in the container (empty: not mounted).
    pub(super) mount: String,
    /// The VM's device id.
    pub(super) id: String,
}

impl Container {
    pub(super) fn process(&self, exec_id: &str) -> Result<Arc<Proc>, Error> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::ExecNotFound { container: self.init.container.clone(), exec: exec_id.to_owned() })
    }
}
