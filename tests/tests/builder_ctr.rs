//! rootfs-builder's bundles and OCI images under a real containerd and runc (no VM): what the
//! tool writes is what `ctr run --config` and `ctr images import` + `ctr run` accept.
//!
//! Needs root, `make deps` (containerd, runc, busybox-static) and a built rootfs-builder
//! (`make tools`; `WISP_ROOTFS_BUILDER` overrides). Compiled only with feature
//! `containerd-tests` (`make test-containerd`).
#![cfg(feature = "containerd-tests")]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use wisp_tests::containerd::process_running;
use wisp_tests::{artifacts, Containerd};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs rootfs-builder with `args`; fails the test with its stderr if it fails.
fn builder(args: &[&str]) -> anyhow::Result<()> {
    let bin = artifacts::rootfs_builder()?;
    let out = Command::new(&bin).args(args).env_remove("SOURCE_DATE_EPOCH").output()?;
    anyhow::ensure!(out.status.success(), "{} {args:?} failed:\n{}", bin.display(), text(&out.stderr));
    Ok(())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn describe(out: &Output) -> String {
    format!("status {}\nstdout:\n{}\nstderr:\n{}", out.status, text(&out.stdout), text(&out.stderr))
}

#[test]
fn busybox_bundle_runs_under_runc_and_its_exit_code_reaches_ctr() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bundle = dir.path().join("bundle");
    builder(&[
        "bundle",
        "--from",
        "busybox",
        "-o",
        s(&bundle),
        "--hostname",
        "wisp-test",
        "--env",
        "GREETING=hello",
        "--args",
        "sh",
        "-c",
        "echo $GREETING from $(hostname) as $(id -u); exit 7",
    ])?;
    let ctd = Containerd::start()?;
    let config = bundle.join("config.json");
    let out = ctd.ctr(["run", "--rm", "--runtime", "io.containerd.runc.v2", "--config", s(&config), "bb-exit"])?;
    assert_eq!(text(&out.stdout).trim(), "hello from wisp-test as 0", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(7), "the container's exit code reaches ctr: {}", describe(&out));
    let listed = ctd.ctr(["containers", "ls", "-q"])?;
    assert_eq!(text(&listed.stdout).trim(), "", "--rm removed the container");
    Ok(())
}

#[test]
fn oci_image_imports_and_runs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("image.tar");
    builder(&["oci-image", "--from", "busybox", "--name", "wisp-bb:ctr", "-o", s(&image)])?;
    let ctd = Containerd::start()?;
    let out = ctd.ctr(["images", "import", s(&image)])?;
    assert!(out.status.success(), "import: {}", describe(&out));
    let listed = ctd.ctr(["images", "ls", "-q"])?;
    assert!(text(&listed.stdout).lines().any(|l| l == "docker.io/library/wisp-bb:ctr"), "{}", describe(&listed));
    let out = ctd.ctr(["run", "--rm", "docker.io/library/wisp-bb:ctr", "bb-img", "echo", "hi"])?;
    assert!(out.status.success(), "run: {}", describe(&out));
    assert_eq!(text(&out.stdout).trim(), "hi");

    // The exported image is a valid bundle source, and runs the same.
    let exported = dir.path().join("exported.tar");
    let out = ctd.ctr(["images", "export", s(&exported), "docker.io/library/wisp-bb:ctr"])?;
    assert!(out.status.success(), "export: {}", describe(&out));
    let bundle = dir.path().join("from-export");
    builder(&["bundle", "--from-archive", s(&exported), "-o", s(&bundle), "--args", "echo", "from export"])?;
    let config = bundle.join("config.json");
    let out = ctd.ctr(["run", "--rm", "--runtime", "io.containerd.runc.v2", "--config", s(&config), "bb-exp"])?;
    assert_eq!(text(&out.stdout).trim(), "from export", "{}", describe(&out));
    Ok(())
}

#[test]
fn dropping_containerd_kills_running_containers_and_shims() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bundle = dir.path().join("bundle");
    builder(&["bundle", "--from", "busybox", "-o", s(&bundle), "--args", "sleep", "600"])?;
    let ctd = Containerd::start()?;
    let config = bundle.join("config.json");
    let out = ctd.ctr(["run", "-d", "--runtime", "io.containerd.runc.v2", "--config", s(&config), "sleeper"])?;
    assert!(out.status.success(), "{}", describe(&out));
    let start = Instant::now();
    let mut serving = ctd.shim_processes();
    while serving.len() < 2 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        serving = ctd.shim_processes();
    }
    assert!(serving.len() >= 2, "a shim and the sleeping container run: {serving:?}");
    let state = ctd.dir().map(Path::to_owned);
    drop(ctd);
    for pid in &serving {
        assert!(!process_running(*pid), "process {pid} survived the drop");
    }
    if let Some(state) = state {
        assert!(!state.exists(), "{} remains", state.display());
    }
    Ok(())
}
