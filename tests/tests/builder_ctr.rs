//! rootfs-builder's bundles and OCI images under a real containerd and runc (no VM): what the
//! tool writes is what `ctr run --config` and `ctr images import` + `ctr run` accept, on
//! containerd's overlayfs and on the loop snapshotter (block-device snapshots, devmapper's
//! stand-in).
//!
//! Needs root, `make deps` (containerd, runc, busybox-static) and a built rootfs-builder
//! (`make tools`; `WISP_ROOTFS_BUILDER` overrides). Compiled only with feature
//! `containerd-tests` (`make test-containerd`).
#![cfg(feature = "containerd-tests")]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use wisp_tests::containerd::process_running;
use wisp_tests::loop_snapshotter::{backed_under, host_mounts_of, root_mount, LoopSnapshotter};
use wisp_tests::{artifacts, Containerd, ContainerdOptions};

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

/// Asserts `out` succeeded and its root filesystem (the last lines, `grep ' / ' /proc/mounts`)
/// is a read-write ext4 loop device; returns the device.
fn loop_root(out: &Output) -> String {
    assert!(out.status.success(), "{}", describe(out));
    let root = root_mount(&text(&out.stdout)).unwrap_or_else(|| panic!("no root in /proc/mounts: {}", describe(out)));
    assert!(root[0].starts_with("/dev/loop"), "the root is a loop device: {root:?}");
    assert_eq!(root[2], "ext4", "{root:?}");
    assert!(root[3].split(',').any(|o| o == "rw"), "{root:?}");
    root[0].clone()
}

#[test]
fn image_runs_on_loop_device_snapshots_and_leaves_no_device_behind() -> anyhow::Result<()> {
    const IMAGE: &str = "docker.io/library/wisp-bb:loop";
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("image.tar");
    builder(&["oci-image", "--from", "busybox", "--name", "wisp-bb:loop", "-o", s(&image)])?;
    let snapshotter = LoopSnapshotter::start("wisp-loop")?;
    let images = snapshotter.images().to_owned();
    let options = ContainerdOptions {
        proxy_snapshotters: vec![(snapshotter.name().to_owned(), snapshotter.socket().to_owned())],
        ..ContainerdOptions::default()
    };
    let ctd = Containerd::start_with(options)?;
    let snap = ["--snapshotter", snapshotter.name()];

    // containerd unpacks the layer into a snapshot of ours and commits it: no device stays bound.
    let out = ctd.ctr(["images", "import"].iter().chain(&snap).chain(&[s(&image)]))?;
    assert!(out.status.success(), "import: {}", describe(&out));
    assert!(snapshotter.attached().is_empty(), "committed layers are unbound: {:?}", snapshotter.attached());
    let listed = ctd.ctr(["snapshots"].iter().chain(&snap).chain(&["ls"]))?;
    assert!(text(&listed.stdout).contains("Committed"), "the layer is a snapshot of ours: {}", describe(&listed));

    let script = "echo written > /probe && cat /probe && grep ' / ' /proc/mounts";
    let out = ctd.ctr(["run", "--rm"].iter().chain(&snap).chain(&[IMAGE, "loop-rm", "sh", "-c", script]))?;
    let device = loop_root(&out);
    assert_eq!(text(&out.stdout).lines().next(), Some("written"), "{}", describe(&out));
    assert!(host_mounts_of(&device).is_empty(), "--rm unmounted the root: {:?}", host_mounts_of(&device));

    // Two containers of one image: each its own copy of the layer, on its own device.
    let mut devices = vec![device];
    for id in ["loop-a", "loop-b"] {
        let out = ctd.ctr(["run", "-d"].iter().chain(&snap).chain(&[IMAGE, id, "sleep", "600"]))?;
        assert!(out.status.success(), "run -d {id}: {}", describe(&out));
    }
    let exec = |id: &str, script: &str| ctd.ctr(["tasks", "exec", "--exec-id", "probe", id, "sh", "-c", script]);
    let in_a = loop_root(&exec("loop-a", "echo a > /mine && grep ' / ' /proc/mounts")?);
    let out = exec("loop-b", "test ! -e /mine && test -x /bin/busybox && grep ' / ' /proc/mounts")?;
    let in_b = loop_root(&out);
    assert_ne!(in_a, in_b, "two containers share a device");
    let attached = snapshotter.attached();
    for device in [&in_a, &in_b] {
        assert!(attached.contains(&Path::new(device).to_owned()), "{device} is not ours: {attached:?}");
    }
    let out = exec("loop-a", "cat /mine")?;
    assert_eq!(text(&out.stdout).trim(), "a", "a container keeps its writes: {}", describe(&out));
    devices.extend([in_a, in_b]);

    // loop-b goes the ctr way, loop-a with the drops.
    let out = ctd.ctr(["tasks", "kill", "--signal", "SIGKILL", "loop-b"])?;
    assert!(out.status.success(), "kill: {}", describe(&out));
    let start = Instant::now();
    while !text(&ctd.ctr(["tasks", "ls"])?.stdout).lines().any(|l| l.starts_with("loop-b ") && l.contains("STOPPED")) {
        assert!(start.elapsed() < Duration::from_secs(10), "loop-b did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    for args in [["tasks", "rm", "loop-b"], ["containers", "rm", "loop-b"]] {
        let out = ctd.ctr(args)?;
        assert!(out.status.success(), "{args:?}: {}", describe(&out));
    }
    assert!(host_mounts_of(&devices[2]).is_empty(), "{:?}", host_mounts_of(&devices[2]));

    drop(ctd);
    for device in &devices {
        assert!(host_mounts_of(device).is_empty(), "{device} still mounted: {:?}", host_mounts_of(device));
    }
    drop(snapshotter);
    assert!(backed_under(&images).is_empty(), "loop devices outlived the snapshotter: {:?}", backed_under(&images));
    assert!(!images.exists(), "{} remains", images.display());
    Ok(())
}
