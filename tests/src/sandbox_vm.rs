//! A booted VM with a sandbox ready for containers: the busybox rootfs shared
//! by virtio-9p and mounted as a sandbox storage, the agent reached over
//! hybrid vsock. The container VM tests and `wisp-bench-containers` share it
//! so that both measure and test the same setup.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use protocols::agent::{CreateSandboxRequest, DestroySandboxRequest};
use wisp_shim::agent_dial::AgentConn;

use crate::agent_client::{self, ctx, storage_9p};
use crate::{Channel, Machine, Vm, VmConfig};

/// How long the agent gets to answer after QEMU starts (TCG is slow).
pub const BOOT: Duration = Duration::from_secs(90);
/// The 9p tag of the rootfs share.
pub const TAG: &str = "wisprootfs";
/// Where the sandbox mounts the rootfs in the guest.
pub const ROOTFS: &str = "/run/kata-containers/shared/busybox";

/// A VM, its rootfs directory, and the runtime its agent connection lives on.
#[derive(Debug)]
pub struct SandboxVm {
    pub vm: Vm,
    pub rootfs: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

impl SandboxVm {
    /// Boots q35 (512 MiB) with a fresh busybox rootfs shared by 9p, the extra
    /// QEMU arguments and kernel command line arguments given. `prepare` may
    /// add files to the rootfs directory before the VM sees it.
    pub fn boot(
        qemu_extra: Vec<String>,
        cmdline: &[&str],
        prepare: impl FnOnce(&std::path::Path) -> std::io::Result<()>,
    ) -> Result<Self> {
        let rootfs = tempfile::tempdir()?;
        agent_client::busybox_rootfs(rootfs.path()).context("busybox rootfs")?;
        prepare(rootfs.path()).context("preparing the rootfs")?;
        let mut config = VmConfig::wisp(Machine::Q35)?
            .channel(Channel::HybridVsock)
            .memory_mib(512)
            .qemu_args_extra(Machine::Q35.share_9p_args(rootfs.path(), TAG))
            .qemu_args_extra(qemu_extra);
        for arg in cmdline {
            config = config.cmdline_arg(*arg);
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(SandboxVm { vm: Vm::boot(config)?, rootfs, rt })
    }

    /// Connects and creates the sandbox (hostname `wisp-vm`, the rootfs storage).
    pub fn connect(&mut self) -> Result<AgentConn> {
        let (rt, vm) = (&self.rt, &mut self.vm);
        let conn = rt.block_on(async {
            let conn = vm.connect_agent(BOOT).await?;
            let mut sandbox = CreateSandboxRequest::new();
            sandbox.sandbox_id = "vm-test".into();
            sandbox.hostname = "wisp-vm".into();
            sandbox.storages = vec![storage_9p(TAG, ROOTFS)];
            conn.agent().create_sandbox(ctx(), &sandbox).await.context("CreateSandbox with the 9p rootfs")?;
            Ok::<_, anyhow::Error>(conn)
        });
        conn.map_err(|e| self.with_console(e))
    }

    /// Runs `f` (RPCs on a connection of this VM); a failure carries the console's tail.
    pub fn block_on<T>(&self, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        self.rt.block_on(f).map_err(|e| self.with_console(e))
    }

    /// Destroys the sandbox and checks that QEMU exits by itself.
    pub fn finish(mut self, conn: &AgentConn) -> Result<()> {
        let destroyed = self.rt.block_on(conn.agent().destroy_sandbox(ctx(), &DestroySandboxRequest::new()));
        destroyed.context("DestroySandbox").map_err(|e| self.with_console(e))?;
        let status = self.vm.wait_exit(Duration::from_secs(60))?;
        ensure!(status.success(), "qemu exit status {status}; console:\n{}", self.vm.console_tail(20));
        Ok(())
    }

    fn with_console(&self, e: anyhow::Error) -> anyhow::Error {
        e.context(format!("console:\n{}", self.vm.console_tail(40)))
    }
}
