//! A container rootfs that containerd hands over as a block device (the devmapper case):
//! `ctr run --snapshotter wisp-loop --runtime io.containerd.wisp.v2 IMAGE`, where wisp-loop is
//! the test suite's proxy snapshotter whose snapshots are ext4 images on loop devices
//! (`wisp_tests::loop_snapshotter`; this host has no device-mapper). The shim must plug the
//! device into the VM, never mount it on the host, and the agent mounts it as the root.
//!
//! Needs root, `make deps` and `make all` (the PVH `vmlinux` too, for microvm). Compiled only
//! with both features `containerd-tests` and `vm-tests` (`make test-shim`).
#![cfg(all(feature = "containerd-tests", feature = "vm-tests"))]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Context};
use wisp_tests::loop_snapshotter::{host_mounts_of, root_mount, LoopSnapshotter};
use wisp_tests::shim_setup::{describe, s, text, Setup, RUNTIME};
use wisp_tests::{artifacts, ContainerdOptions};

const IMAGE: &str = "docker.io/library/wisp-bb:blk";
const SNAPSHOTTER: &str = "wisp-loop";
/// Writes a file, reads it back and prints the root's `/proc/mounts` line.
const PROBE: &str = "echo written > /probe && cat /probe && grep ' / ' /proc/mounts";

/// A private containerd running our shim (booting `kernel` with the `[hypervisor.qemu]` lines
/// `qemu`) that knows the loop snapshotter, with the busybox image unpacked into it.
fn setup(snapshotter: &LoopSnapshotter, kernel: &Path, qemu: &str) -> anyhow::Result<Setup> {
    let options = ContainerdOptions {
        proxy_snapshotters: vec![(snapshotter.name().to_owned(), snapshotter.socket().to_owned())],
        ..ContainerdOptions::default()
    };
    let t = Setup::with_containerd(kernel, qemu, "", options)?;
    let image = t.dir.path().join("image.tar");
    let out = Command::new(artifacts::rootfs_builder()?)
        .args(["oci-image", "--from", "busybox", "--name", "wisp-bb:blk", "-o", s(&image)])
        .output()?;
    ensure!(out.status.success(), "rootfs-builder oci-image: {}", describe(&out));
    let out = t.ctr(&["images", "import", "--snapshotter", SNAPSHOTTER, s(&image)])?;
    ensure!(out.status.success(), "ctr images import: {}", describe(&out));
    Ok(t)
}

/// `ctr run` of the image on the loop snapshotter through our shim.
fn run(t: &Setup, flags: &[&str], id: &str, args: &[&str]) -> anyhow::Result<Output> {
    let mut all = vec!["run", "--snapshotter", SNAPSHOTTER, "--runtime", RUNTIME];
    all.extend(flags);
    all.extend([IMAGE, id]);
    all.extend(args);
    t.ctr(&all)
}

/// The root file system's device and type as the container printed them (`PROBE`).
fn guest_root(out: &Output) -> anyhow::Result<(String, String)> {
    ensure!(out.status.success(), "{}", describe(out));
    let root = root_mount(&text(&out.stdout)).with_context(|| format!("no root line: {}", describe(out)))?;
    Ok((root[0].clone(), root[2].clone()))
}

/// Reads `path` from the ext4 file system on `device` without mounting it (debugfs).
fn read_unmounted(device: &Path, path: &str) -> anyhow::Result<String> {
    let out = Command::new("debugfs").args(["-R", &format!("cat {path}"), s(device)]).output()?;
    ensure!(out.status.success(), "debugfs: {}", describe(&out));
    Ok(text(&out.stdout))
}

/// Drops containerd (the shim and VM gone with it), then checks the snapshotter's devices are
/// all unbound and the host never mounted one of `seen`.
fn finish(t: Setup, snapshotter: LoopSnapshotter, seen: &[PathBuf]) {
    let left = t.wait_no_leftovers(Duration::from_secs(5));
    assert!(left.is_empty(), "nothing of the sandbox remains: {left:#?}");
    drop(t);
    for device in seen {
        assert!(host_mounts_of(s(device)).is_empty(), "{} is mounted on the host", device.display());
    }
    drop(snapshotter);
}

#[test]
fn q35_plugs_the_snapshot_device_and_the_guest_writes_to_it() -> anyhow::Result<()> {
    let snapshotter = LoopSnapshotter::start(SNAPSHOTTER)?;
    let t = setup(&snapshotter, &artifacts::kernel()?, "")?;

    let out = run(&t, &["--rm"], "blk-rm", &["sh", "-c", PROBE])?;
    assert_eq!(text(&out.stdout).lines().next(), Some("written"), "{}", describe(&out));
    let (device, fstype) = guest_root(&out)?;
    assert!(device.starts_with("/dev/vd"), "the root is a virtio disk in the guest: {}", describe(&out));
    assert_eq!(fstype, "ext4", "{}", describe(&out));

    // A detached container: while it runs its device is bound but not mounted on the host.
    let out = run(&t, &["-d"], "blk-d", &["sleep", "600"])?;
    ensure!(out.status.success(), "run -d: {}", describe(&out));
    let attached = snapshotter.attached();
    ensure!(attached.len() == 1, "one active snapshot for the running container: {attached:?}");
    let device = attached[0].clone();
    assert!(host_mounts_of(s(&device)).is_empty(), "{} is mounted on the host", device.display());
    let out = t.ctr(&["tasks", "exec", "--exec-id", "w", "blk-d", "sh", "-c", "echo kept > /kept && sync"])?;
    ensure!(out.status.success(), "exec: {}", describe(&out));
    let out = t.ctr(&["tasks", "kill", "--signal", "SIGKILL", "blk-d"])?;
    ensure!(out.status.success(), "kill: {}", describe(&out));
    let mut deleted = t.ctr(&["tasks", "delete", "blk-d"])?;
    for _ in 0..100 {
        if deleted.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        deleted = t.ctr(&["tasks", "delete", "blk-d"])?;
    }
    ensure!(deleted.status.success(), "tasks delete: {}", describe(&deleted));
    // The task is gone, the snapshot is not: what the guest wrote is on the device.
    assert_eq!(read_unmounted(&device, "/kept")?.trim(), "kept");
    let out = t.ctr(&["containers", "delete", "blk-d"])?;
    ensure!(out.status.success(), "containers delete: {}", describe(&out));
    finish(t, snapshotter, &[device]);
    Ok(())
}

#[test]
fn microvm_takes_the_snapshot_device_at_boot() -> anyhow::Result<()> {
    let snapshotter = LoopSnapshotter::start(SNAPSHOTTER)?;
    let t = setup(&snapshotter, &artifacts::vmlinux()?, "machine_type = \"microvm\"")?;
    let out = run(&t, &["--rm"], "blk-micro", &["sh", "-c", PROBE])?;
    let (device, fstype) = guest_root(&out)?;
    assert_eq!((device.as_str(), fstype.as_str()), ("/dev/vda", "ext4"), "{}", describe(&out));
    assert_eq!(text(&out.stdout).lines().next(), Some("written"), "{}", describe(&out));
    finish(t, snapshotter, &[]);
    Ok(())
}

#[test]
fn disable_block_device_use_mounts_it_on_the_host_and_shares_it() -> anyhow::Result<()> {
    let snapshotter = LoopSnapshotter::start(SNAPSHOTTER)?;
    let t = setup(&snapshotter, &artifacts::kernel()?, "disable_block_device_use = true")?;
    let out = run(&t, &["--rm"], "blk-shared", &["sh", "-c", PROBE])?;
    let (_, fstype) = guest_root(&out)?;
    assert!(["virtiofs", "9p"].contains(&fstype.as_str()), "the root is the shared directory: {}", describe(&out));
    assert_eq!(text(&out.stdout).lines().next(), Some("written"), "{}", describe(&out));
    finish(t, snapshotter, &[]);
    Ok(())
}
