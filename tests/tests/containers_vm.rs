#![cfg(feature = "vm-tests")]
//! Containers in a real VM: the agent as PID 1 runs busybox containers whose
//! rootfs is a host directory shared by virtio-9p and mounted as a sandbox
//! storage, driven over hybrid vsock exactly as a Kata runtime would.
//!
//! Needs `make` (kernel, static agent, initrd) and `make deps` (busybox-static).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use protocols::agent::{CreateSandboxRequest, DestroySandboxRequest, StatsContainerRequest};
use wisp_tests::agent_client::{self, ctx, qemu_9p_args, run_to_completion, spec, storage_9p, Container};
use wisp_tests::{Channel, Machine, Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(90);
const TAG: &str = "wisprootfs";
const ROOTFS: &str = "/run/kata-containers/shared/busybox";

#[test]
fn busybox_containers_run_in_the_vm() -> Result<()> {
    let rootfs = tempfile::tempdir()?;
    agent_client::busybox_rootfs(rootfs.path())?;
    let config = VmConfig::wisp(Machine::Q35)?
        .channel(Channel::HybridVsock)
        .memory_mib(512)
        .qemu_args_extra(qemu_9p_args(rootfs.path(), TAG));
    let mut vm = Vm::boot(config)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = rt.block_on(async {
        let conn = vm.connect_agent(BOOT).await?;
        let agent = conn.agent();
        let mut sandbox = CreateSandboxRequest::new();
        sandbox.sandbox_id = "vm-test".into();
        sandbox.hostname = "wisp-vm".into();
        sandbox.storages = vec![storage_9p(TAG, ROOTFS)];
        agent.create_sandbox(ctx(), &sandbox).await.context("CreateSandbox with the 9p rootfs")?;

        let out = run_to_completion(&agent, "echo", spec(ROOTFS, &["/bin/echo", "hello from the vm"], false), vec![])
            .await
            .context("echo")?;
        ensure!(out.stdout == b"hello from the vm\n" && out.status == 0, "{out:?}");

        let out =
            run_to_completion(&agent, "three", spec(ROOTFS, &["/bin/sh", "-c", "echo err >&2; exit 3"], false), vec![])
                .await
                .context("exit 3")?;
        ensure!(out.status == 3 && out.stderr == b"err\n", "{out:?}");

        let cat = Container::run(&agent, "cat", spec(ROOTFS, &["/bin/cat"], false), vec![]).await.context("cat")?;
        cat.write("cat", b"through stdin\n").await?;
        cat.close_stdin("cat").await?;
        let out = cat.output("cat").await?;
        ensure!(out.stdout == b"through stdin\n" && out.status == 0, "{out:?}");
        cat.remove().await?;

        let sleeper = Container::run(&agent, "sleeper", spec(ROOTFS, &["/bin/sleep", "100"], false), vec![])
            .await
            .context("sleeper")?;
        sleeper.exec("ps", &["/bin/sh", "-c", "echo $$; cat /proc/1/cmdline"]).await.context("ExecProcess")?;
        let out = sleeper.output("ps").await?;
        ensure!(out.status == 0, "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(text.contains("/bin/sleep"), "the exec shares the container's pid namespace: {text:?}");
        // The container has its cgroup in the guest: statistics come from it.
        let mut stats = StatsContainerRequest::new();
        stats.container_id = "sleeper".into();
        let cg = agent.stats_container(ctx(), &stats).await.context("StatsContainer")?.cgroup_stats;
        let pids = cg.into_option().and_then(|c| c.pids_stats.into_option()).context("pids stats")?;
        ensure!(pids.current >= 1, "the sleeper is in its cgroup: {pids:?}");
        sleeper.signal("sleeper", 9).await?;
        ensure!(sleeper.wait("sleeper").await? == 137, "SIGKILL is 128+9");
        sleeper.remove().await?;

        agent.destroy_sandbox(ctx(), &DestroySandboxRequest::new()).await.context("DestroySandbox")?;
        Ok::<_, anyhow::Error>(())
    });
    if let Err(e) = result {
        return Err(e.context(format!("console:\n{}", vm.console_tail(40))));
    }
    let status = vm.wait_exit(Duration::from_secs(60))?;
    ensure!(status.success(), "qemu exit status {status}; console:\n{}", vm.console_tail(20));
    Ok(())
}
