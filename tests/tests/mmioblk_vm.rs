#![cfg(feature = "vm-tests")]
//! Block devices on virtio-mmio (Kata's `mmioblk`, what StratoVirt's `block_device_driver =
//! "virtio-mmio"` hands the agent): QEMU microvm boots with an ext4 image holding a busybox
//! rootfs as `virtio-blk-device`, the agent mounts it from the storage `{driver: mmioblk,
//! source: /dev/vda}` at CreateSandbox, and a container runs from it and writes to it.
//!
//! Needs `make` (PVH vmlinux, agent, initrd), `make deps` (busybox-static, e2fsprogs).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use protocols::agent::{CreateSandboxRequest, DestroySandboxRequest, Storage};
use wisp_tests::agent_client::{self, ctx, run_to_completion, spec};
use wisp_tests::{Channel, Machine, Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(90);
const ROOTFS: &str = "/run/kata-containers/shared/mmio-root";

/// An ext4 image of `size_mib` filled from `dir` (no loop mount: `mkfs.ext4 -d`).
fn ext4_image(dir: &Path, image: &Path, size_mib: u32) -> Result<()> {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(dir)
        .arg(image)
        .arg(format!("{size_mib}M"))
        .output()
        .context("running mkfs.ext4 (make deps: e2fsprogs)")?;
    ensure!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

fn mmioblk(source: &str, mount_point: &str) -> Storage {
    let mut s = Storage::new();
    s.driver = "mmioblk".into();
    s.source = source.into();
    s.fstype = "ext4".into();
    s.mount_point = mount_point.into();
    s
}

#[test]
fn a_container_runs_from_an_mmio_block_device_on_microvm() -> Result<()> {
    let work = tempfile::tempdir()?;
    let rootfs = work.path().join("rootfs");
    agent_client::busybox_rootfs(&rootfs)?;
    let image = work.path().join("root.ext4");
    ext4_image(&rootfs, &image, 32)?;
    let config = VmConfig::wisp(Machine::Microvm)?.channel(Channel::HybridVsock).qemu_args_extra([
        "-drive".to_owned(),
        format!("file={},if=none,id=blk0,format=raw", image.display()),
        "-device".to_owned(),
        "virtio-blk-device,drive=blk0".to_owned(),
    ]);
    let mut vm = Vm::boot(config)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = rt.block_on(async {
        let conn = vm.connect_agent(BOOT).await?;
        let agent = conn.agent();
        let mut sandbox = CreateSandboxRequest::new();
        sandbox.sandbox_id = "mmio".into();
        sandbox.storages = vec![mmioblk("/dev/vda", ROOTFS)];
        agent.create_sandbox(ctx(), &sandbox).await.context("CreateSandbox with the mmioblk rootfs")?;
        let script = "grep ' / ' /proc/mounts | cut -d' ' -f3; echo kept > /written; cat /written";
        let out = run_to_completion(&agent, "blk", spec(ROOTFS, &["/bin/sh", "-c", script], false), vec![])
            .await
            .context("the container on the block device")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(out.status == 0, "{out:?}");
        ensure!(stdout == "ext4\nkept\n", "the root is the ext4 disk and writable: {stdout:?}");
        agent.destroy_sandbox(ctx(), &DestroySandboxRequest::new()).await.context("DestroySandbox")?;
        Ok::<_, anyhow::Error>(())
    });
    if let Err(e) = result {
        return Err(e.context(format!("console:\n{}", vm.console_tail(40))));
    }
    let status = vm.wait_exit(Duration::from_secs(60))?;
    ensure!(status.success(), "qemu exit status {status}; console:\n{}", vm.console_tail(20));
    // The guest unmounted and synced it: the file written in the container is on the image.
    let out = Command::new("debugfs").args(["-R", "cat /written"]).arg(&image).output().context("debugfs")?;
    ensure!(String::from_utf8_lossy(&out.stdout) == "kept\n", "{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}
