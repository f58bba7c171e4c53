//! The container part of an agent run, as the shim does it after the agent is ready:
//! CreateSandbox with the busybox rootfs shared by virtio-9p or virtio-fs, CreateContainer + StartContainer
//! of `echo`, the first ReadStdout, the output drained and WaitProcess, RemoveContainer. Times
//! are on the host's monotonic clock since QEMU's spawn, like the other host rows.

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use protocols::agent::{CreateSandboxRequest, Storage};
use wisp_shim::agent_dial::AgentConn;
use wisp_tests::agent_client::{ctx, spec, storage_9p, Container};
use wisp_tests::Machine;

use crate::metrics::{key, Sample};

/// The 9p tag of the shared busybox rootfs.
pub const TAG: &str = "wispbench";
/// Where the guest mounts it (Kata's shared directory).
pub const GUEST_ROOT: &str = "/run/kata-containers/shared/bench-rootfs";
/// What the container prints.
const GREETING: &[u8] = b"bench\n";

/// How the container rootfs reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// virtio-9p, served by QEMU.
    NineP,
    /// virtio-fs through a virtiofsd per boot (guest RAM is the shared memfd hybrid vsock sets up).
    VirtioFs,
}

impl Share {
    /// Its name in the descriptions.
    pub fn name(self) -> &'static str {
        match self {
            Self::NineP => "9p",
            Self::VirtioFs => "virtio-fs",
        }
    }
}

/// QEMU's arguments sharing `dir` (9p) or virtiofsd's `socket` (virtio-fs) under [`TAG`] on
/// `machine` (the mmio variants on microvm).
pub fn share_args(share: Share, machine: Machine, dir: &Path, socket: &Path) -> Vec<String> {
    match share {
        Share::NineP => machine.share_9p_args(dir, TAG),
        Share::VirtioFs => vec![
            "-chardev".into(),
            format!("socket,id={TAG},path={}", socket.display()),
            "-device".into(),
            format!("{},chardev={TAG},tag={TAG},queue-size=1024", machine.virtio_device("vhost-user-fs")),
        ],
    }
}

/// The storage the guest mounts the share with.
fn storage(share: Share) -> Storage {
    match share {
        Share::NineP => storage_9p(TAG, GUEST_ROOT),
        Share::VirtioFs => {
            let mut s = Storage::new();
            s.driver = "virtio-fs".into();
            s.source = TAG.into();
            s.fstype = "virtiofs".into();
            s.mount_point = GUEST_ROOT.into();
            s
        }
    }
}

/// Runs the container once over `share`; records its three host times into `values`.
pub async fn run(agent: &AgentConn, share: Share, spawned: Instant, values: &mut Sample) -> Result<()> {
    let client = agent.agent();
    let mut sandbox = CreateSandboxRequest::new();
    sandbox.sandbox_id = "bench".into();
    sandbox.storages = vec![storage(share)];
    client
        .create_sandbox(ctx(), &sandbox)
        .await
        .with_context(|| format!("CreateSandbox with the {} rootfs", share.name()))?;
    let id = "bench-echo";
    let c = Container::run(&client, id, spec(GUEST_ROOT, &["/bin/echo", "bench"], false), vec![])
        .await
        .context("CreateContainer + StartContainer")?;
    values.insert(key::HOST_CONTAINER_STARTED, spawned.elapsed().as_secs_f64());
    let first = c.read(id, false).await.context("ReadStdout")?;
    values.insert(key::HOST_FIRST_OUTPUT, spawned.elapsed().as_secs_f64());
    let rest = c.output(id).await.context("output and WaitProcess")?;
    values.insert(key::HOST_CONTAINER_EXIT, spawned.elapsed().as_secs_f64());
    let stdout = [first, rest.stdout].concat();
    ensure!(stdout == GREETING && rest.status == 0, "the container printed {stdout:?}, status {}", rest.status);
    c.remove().await.context("RemoveContainer")?;
    Ok(())
}
