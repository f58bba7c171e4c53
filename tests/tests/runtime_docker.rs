//! `wisp-runtime` under real clients: Debian's dockerd 20.10 (through containerd-shim-runc-v2,
//! `--add-runtime wisp=<wisp-runtime>`) runs containers in wisp VMs, and the seed's own flow
//! (`wisp-runtime run` in a bundle) propagates the exit code.
//!
//! Needs root, `make deps` and `make all` (kernel, initrd, wisp-runtime, rootfs-builder).
//! Compiled only with both features `containerd-tests` and `vm-tests` (`make test-shim`).
#![cfg(all(feature = "containerd-tests", feature = "vm-tests"))]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::ensure;
use wisp_tests::containerd::{describe, s, text};
use wisp_tests::shim_setup::{self, runtime_binary};
use wisp_tests::{artifacts, Dockerd, DockerdOptions};

/// The runtime's configuration (our kernel and initrd) and state, in `dir`.
fn configure(dir: &Path) -> anyhow::Result<()> {
    shim_setup::configure(dir, &artifacts::kernel()?, "", "").map(drop)
}

/// QEMU processes whose command line names `dir`.
fn qemus_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c).contains("qemu") && String::from_utf8_lossy(&c).contains(&needle)
            })
        })
        .collect()
}

/// Waits until no QEMU of `dir` runs; what still runs after `within`.
fn wait_no_qemu(dir: &Path, within: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let left = qemus_under(dir);
        if left.is_empty() || start.elapsed() > within {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn docker_run_rm_prints_the_output_and_the_exit_code_in_a_vm() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-docker-").tempdir()?;
    configure(dir.path())?;
    let runtime = runtime_binary()?;
    let image = dir.path().join("image.tar");
    let builder = artifacts::rootfs_builder()?;
    let built = Command::new(&builder)
        .args(["oci-image", "--from", "busybox", "--name", "wisp-rt:1", "-o", s(&image)])
        .output()?;
    ensure!(built.status.success(), "oci-image: {}", describe(&built));
    let docker =
        Dockerd::start_with(DockerdOptions { runtimes: vec![("wisp".into(), runtime)], ..Default::default() })?;
    let out = docker.docker(["load", "-i", s(&image)])?;
    ensure!(out.status.success(), "docker load: {}", describe(&out));

    // The guest's kernel is ours, not the host's: the container ran in the VM.
    let script = "echo hi; uname -r; exit 3";
    let out = docker.docker(["run", "--rm", "--runtime", "wisp", "wisp-rt:1", "sh", "-c", script])?;
    let context = || format!("{}\ndaemon log:\n{}", describe(&out), docker.log_tail(40));
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("hi"), "{}", context());
    let host_kernel = nix::sys::utsname::uname()?.release().to_string_lossy().into_owned();
    assert_ne!(lines.next(), Some(host_kernel.as_str()), "the container ran on the host's kernel: {}", context());
    assert_eq!(out.status.code(), Some(3), "the exit code reaches docker: {}", context());
    let left = wait_no_qemu(dir.path(), Duration::from_secs(10));
    assert!(left.is_empty(), "QEMU still runs after --rm: {left:?}");
    Ok(())
}

#[test]
fn the_seed_flow_runc_spec_style_bundle_run_propagates_the_exit_code() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-seed-").tempdir()?;
    configure(dir.path())?;
    let runtime = runtime_binary()?;
    let bundle = dir.path().join("bundle");
    let builder = artifacts::rootfs_builder()?;
    let built = Command::new(&builder)
        .args(["bundle", "--from", "busybox", "-o", s(&bundle), "--args", "sh", "-c", "echo seed; exit 5"])
        .output()?;
    ensure!(built.status.success(), "bundle: {}", describe(&built));
    let root = dir.path().join("root");
    let out = Command::new(&runtime).arg("--root").arg(&root).args(["run", "--bundle", s(&bundle), "demo"]).output()?;
    assert_eq!(text(&out.stdout), "seed\n", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    let left: Vec<_> = std::fs::read_dir(&root)?.flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "run removed the container's state: {left:?}");
    assert!(wait_no_qemu(dir.path(), Duration::from_secs(5)).is_empty());
    Ok(())
}
