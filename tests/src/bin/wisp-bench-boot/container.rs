//! The container part of an agent run, as the shim does it after the agent is ready:
//! CreateSandbox with the busybox rootfs shared by virtio-9p, CreateContainer + StartContainer
//! of `echo`, the first ReadStdout, the output drained and WaitProcess, RemoveContainer. Times
//! are on the host's monotonic clock since QEMU's spawn, like the other host rows.

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use protocols::agent::CreateSandboxRequest;
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

/// QEMU's arguments sharing `dir` under [`TAG`] on `machine` (the mmio variant on microvm).
pub fn share_args(machine: Machine, dir: &Path) -> Vec<String> {
    let device = if machine == Machine::Microvm { "virtio-9p-device" } else { "virtio-9p-pci" };
    vec![
        "-fsdev".into(),
        format!("local,id={TAG},path={},security_model=none", dir.display()),
        "-device".into(),
        format!("{device},fsdev={TAG},mount_tag={TAG}"),
    ]
}

/// Runs the container once; records its three host times into `values`.
pub async fn run(agent: &AgentConn, spawned: Instant, values: &mut Sample) -> Result<()> {
    let client = agent.agent();
    let mut sandbox = CreateSandboxRequest::new();
    sandbox.sandbox_id = "bench".into();
    sandbox.storages = vec![storage_9p(TAG, GUEST_ROOT)];
    client.create_sandbox(ctx(), &sandbox).await.context("CreateSandbox with the 9p rootfs")?;
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
