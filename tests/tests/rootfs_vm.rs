#![cfg(feature = "vm-tests")]
//! The agent as `/sbin/init` of a root file system disk image (ext4 and erofs,
//! built by `rootfs-builder rootfs`) attached as a raw virtio-blk disk and booted
//! with `root=/dev/vda` and no initrd: Kata's image alternative to an initrd.
//!
//! Needs `make` (kernel, static agent, rootfs-builder); mkfs.ext4/debugfs
//! (e2fsprogs) and mkfs.erofs (erofs-utils) on the host.

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use protocols::agent::{DestroySandboxRequest, GuestDetailsRequest};
use protocols::health::{health_check_response::ServingStatus, CheckRequest};
use protocols::ttrpc::{self, context};
use wisp_tests::{artifacts, Channel, Machine, Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(90);

fn one_vm_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn ctx() -> ttrpc::context::Context {
    context::with_timeout(20_000_000_000)
}

/// Runs `rootfs-builder rootfs --agent AGENT --format FORMAT -o IMG` and returns
/// the kernel command line it printed.
fn build_image(format: &str, img: &Path) -> Result<String> {
    let builder = artifacts::rootfs_builder()?;
    let agent = artifacts::agent()?;
    let out = Command::new(&builder)
        .arg("rootfs")
        .arg("--agent")
        .arg(&agent)
        .args(["--format", format, "-o"])
        .arg(img)
        .output()
        .with_context(|| format!("running {}", builder.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "{} rootfs failed ({}):\n{stderr}", builder.display(), out.status);
    let cmdline = String::from_utf8(out.stdout)?.trim().to_owned();
    ensure!(cmdline.starts_with("root=/dev/vda "), "unexpected command line {cmdline:?}; stderr:\n{stderr}");
    Ok(cmdline)
}

/// Boots q35 with no initrd from `img` as virtio-blk, checks the agent serves,
/// and ends the VM through DestroySandbox.
fn boot_from_disk(format: &str, read_only: bool) -> Result<()> {
    let _one = one_vm_at_a_time();
    let dir = tempfile::tempdir()?;
    let img = dir.path().join(format!("rootfs.{format}"));
    let cmdline = build_image(format, &img)?;

    let mut config = VmConfig::for_machine(Machine::Q35)?.channel(Channel::HybridVsock);
    ensure!(config.initrd_path().is_none(), "the disk is the root: no initrd");
    for arg in cmdline.split_whitespace() {
        config = config.cmdline_arg(arg);
    }
    let ro = if read_only { "on" } else { "off" };
    config = config.qemu_args_extra([
        "-blockdev".to_owned(),
        format!("driver=file,node-name=rootfs-file,filename={},read-only={ro}", img.display()),
        "-blockdev".to_owned(),
        format!("driver=raw,node-name=rootfs,file=rootfs-file,read-only={ro}"),
        "-device".to_owned(),
        "virtio-blk-pci,drive=rootfs".to_owned(),
    ]);

    let mut vm = Vm::boot(config)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let agent = vm.connect_agent(BOOT).await?;
        let r = agent.health().check(ctx(), &CheckRequest::new()).await.context("Health.Check")?;
        ensure!(r.status.enum_value() == Ok(ServingStatus::SERVING), "status {:?}", r.status);
        let d = agent.agent().get_guest_details(ctx(), &GuestDetailsRequest::new()).await?;
        let details = d.agent_details.into_option().context("agent_details")?;
        ensure!(details.init_daemon, "the agent is PID 1 (/sbin/init) in the VM");
        agent.agent().destroy_sandbox(ctx(), &DestroySandboxRequest::new()).await.context("DestroySandbox")?;
        let status = vm.wait_exit(Duration::from_secs(60))?;
        ensure!(status.success(), "qemu exit status {status}; console:\n{}", vm.console_tail(30));
        Ok(())
    })?;
    let console = vm.console();
    ensure!(
        console.contains(&format!("VFS: Mounted root ({format} filesystem)")),
        "root not mounted from the disk:\n{}",
        vm.console_tail(40)
    );
    if format == "ext4" {
        // Power-off remounts the root read-only: the journal needs no recovery.
        let fsck = std::process::Command::new("e2fsck").arg("-fn").arg(&img).output()?;
        let report = String::from_utf8_lossy(&fsck.stdout).into_owned() + &String::from_utf8_lossy(&fsck.stderr);
        ensure!(fsck.status.success() && !report.contains("recovery"), "image not clean after power-off:\n{report}");
    }
    Ok(())
}

#[test]
fn ext4_root_disk_boots_the_agent() -> Result<()> {
    boot_from_disk("ext4", false)
}

#[test]
fn erofs_root_disk_boots_the_agent() -> Result<()> {
    boot_from_disk("erofs", true)
}
