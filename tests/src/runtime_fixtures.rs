//! What the tests of `wisp-runtime` under real clients (dockerd, podman) share: the runtime's
//! configuration, a busybox image and bundle from rootfs-builder, and the probes of what the
//! sandboxes left on the host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::ensure;

use crate::containerd::{describe, s};
use crate::{artifacts, leftovers, shim_setup};

/// The runtime's configuration (our kernel and initrd) and state, in `dir`.
pub fn configure(dir: &Path) -> anyhow::Result<()> {
    shim_setup::configure(dir, &artifacts::kernel()?, "", "").map(drop)
}

/// A busybox bundle running `args`, made by rootfs-builder in `dir/bundle`.
pub fn bundle(dir: &Path, args: &[&str]) -> anyhow::Result<PathBuf> {
    let bundle = dir.join("bundle");
    let builder = artifacts::rootfs_builder()?;
    let built =
        Command::new(&builder).args(["bundle", "--from", "busybox", "-o", s(&bundle), "--args"]).args(args).output()?;
    ensure!(built.status.success(), "bundle: {}", describe(&built));
    Ok(bundle)
}

/// The busybox image `name` as rootfs-builder writes it, in `dir/image.tar`.
pub fn image(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let image = dir.join("image.tar");
    let builder = artifacts::rootfs_builder()?;
    let built =
        Command::new(&builder).args(["oci-image", "--from", "busybox", "--name", name, "-o", s(&image)]).output()?;
    ensure!(built.status.success(), "oci-image: {}", describe(&built));
    Ok(image)
}

/// What the sandboxes under `dir/state` still hold on the host after `within` (processes,
/// mounts, state), or at once when it holds nothing.
pub fn left_on_host(dir: &Path, within: Duration) -> Vec<String> {
    let state = dir.join("state");
    leftovers::wait_until_empty(within, || leftovers::under_state_root(&state))
}

/// The processes (QEMU, its helpers) of the sandboxes under `dir/state` after `within`.
pub fn processes_left(dir: &Path, within: Duration) -> Vec<String> {
    let state = dir.join("state");
    leftovers::wait_until_empty(within, || {
        leftovers::under_state_root(&state).into_iter().filter(|l| l.starts_with("process ")).collect()
    })
}
