//! The shim's container workflow on QEMU `microvm` (virtio-mmio, no PCI): `ctr run --runtime
//! io.containerd.wisp.v2` with `machine_type = "microvm"` boots our PVH `vmlinux` and runs the
//! container there, over each channel (vhost-user-vsock, virtio-serial) and each rootfs share
//! (virtio-fs, 9p) in their `-device` (mmio) variants.
//!
//! The same guest path a StratoVirt microvm would boot (StratoVirt itself needs KVM, which this
//! host lacks). Needs what `tests/shim_ctr.rs` needs plus `target/kernel/vmlinux`
//! (`make kernel`). Compiled with features `containerd-tests` and `vm-tests` (`make test-shim`).
#![cfg(all(feature = "containerd-tests", feature = "vm-tests"))]

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use wisp_tests::artifacts;
use wisp_tests::shim_setup::{describe, s, text, Setup, RUNTIME};

/// A microvm sandbox with `qemu`/`agent` lines added to the configuration.
fn microvm(qemu: &str, agent: &str) -> anyhow::Result<Setup> {
    Setup::with_kernel(&artifacts::vmlinux()?, &format!("machine_type = \"microvm\"\n{qemu}"), agent)
}

/// QEMU's command line while the sandbox runs.
fn qemu_cmdline(t: &Setup) -> anyhow::Result<String> {
    let pid = t.qemu_pid().context("no QEMU runs for the sandbox")?;
    Ok(text(&std::fs::read(format!("/proc/{pid}/cmdline"))?).replace('\0', " "))
}

/// Kills and deletes a detached task, and checks nothing of the sandbox remains.
fn kill_and_delete(t: &Setup, id: &str) -> anyhow::Result<()> {
    t.kill_and_delete(id)
}

#[test]
fn microvm_vsock_virtio_fs_runs_exec_and_cleans_up() -> anyhow::Result<()> {
    let t = microvm("shared_fs = \"virtio-fs\"", "channel = \"hybrid-vsock\"")?;
    let config = t.bundle("mvm", &["sleep", "3600"])?;
    let started = Instant::now();
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, "--config", s(&config), "mvm"])?;
    ensure!(out.status.success(), "ctr run -d: {}", describe(&out));
    eprintln!("microvm sandbox running after {:?}", started.elapsed());

    let cmdline = qemu_cmdline(&t)?;
    for needle in ["-machine microvm,memory-backend=mem", "vhost-user-vsock-device", "vhost-user-fs-device"] {
        assert!(cmdline.contains(needle), "QEMU runs with {needle}: {cmdline}");
    }
    assert!(!cmdline.contains("-pci"), "no PCI device on microvm: {cmdline}");

    let out =
        t.ctr(&["tasks", "exec", "--exec-id", "m1", "mvm", "sh", "-c", "grep -c virtiofs /proc/mounts; exit 7"])?;
    assert_eq!(out.status.code(), Some(7), "the exec's exit code reaches ctr: {}", describe(&out));
    let mounts: u32 = text(&out.stdout).trim().parse().unwrap_or(0);
    assert!(mounts > 0, "the container's root is on virtio-fs: {}", describe(&out));
    kill_and_delete(&t, "mvm")
}

#[test]
fn microvm_serial_9p_run_rm_output_and_exit_code() -> anyhow::Result<()> {
    // No vhost-user helper at all: QEMU alone serves the channel and the share.
    let t = microvm("shared_fs = \"virtio-9p\"", "channel = \"serial\"")?;
    let config = t.bundle("mvm-9p", &["sh", "-c", "echo on-microvm; grep -c 9p /proc/mounts; echo err >&2; exit 3"])?;
    let started = Instant::now();
    let out = t.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", s(&config), "mvm-9p"])?;
    eprintln!("ctr run --rm on microvm (serial, 9p): {:?}", started.elapsed());
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("on-microvm"), "{}", describe(&out));
    let nine_p: u32 = stdout.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    assert!(nine_p > 0, "the container's root is on 9p: {}", describe(&out));
    assert!(text(&out.stderr).contains("err"), "{}", describe(&out));
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let left = t.wait_no_leftovers(Duration::from_secs(5));
    assert!(left.is_empty(), "after --rm nothing of the sandbox remains: {left:#?}");
    Ok(())
}
