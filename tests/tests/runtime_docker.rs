//! `wisp-runtime` under real clients: Debian's dockerd 20.10 (through containerd-shim-runc-v2,
//! `--add-runtime wisp=<wisp-runtime>`) runs containers in wisp VMs, and the seed's own flow
//! (`wisp-runtime run` in a bundle) propagates the exit code.
//!
//! Needs root, `make deps` and `make all` (kernel, initrd, wisp-runtime, rootfs-builder).
//! Compiled only with both features `containerd-tests` and `vm-tests` (`make test-shim`).
#![cfg(all(feature = "containerd-tests", feature = "vm-tests"))]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::ensure;
use wisp_tests::containerd::{describe, s, text};
use wisp_tests::shim_setup::{self, runtime_binary};
use wisp_tests::{artifacts, leftovers, Dockerd, DockerdOptions};

/// The runtime's configuration (our kernel and initrd) and state, in `dir`.
fn configure(dir: &Path) -> anyhow::Result<()> {
    shim_setup::configure(dir, &artifacts::kernel()?, "", "").map(drop)
}

/// A busybox bundle running `args`, made by rootfs-builder in `dir/bundle`.
fn bundle(dir: &Path, args: &[&str]) -> anyhow::Result<PathBuf> {
    let bundle = dir.join("bundle");
    let builder = artifacts::rootfs_builder()?;
    let built =
        Command::new(&builder).args(["bundle", "--from", "busybox", "-o", s(&bundle), "--args"]).args(args).output()?;
    ensure!(built.status.success(), "bundle: {}", describe(&built));
    Ok(bundle)
}

/// The busybox image `name` as rootfs-builder writes it, in `dir/image.tar`.
fn image(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let image = dir.join("image.tar");
    let builder = artifacts::rootfs_builder()?;
    let built =
        Command::new(&builder).args(["oci-image", "--from", "busybox", "--name", name, "-o", s(&image)]).output()?;
    ensure!(built.status.success(), "oci-image: {}", describe(&built));
    Ok(image)
}

/// What the sandboxes under `dir/state` still hold on the host after `within` (processes,
/// mounts, state), or at once when it holds nothing.
fn left_on_host(dir: &Path, within: Duration) -> Vec<String> {
    let state = dir.join("state");
    leftovers::wait_until_empty(within, || leftovers::under_state_root(&state))
}

/// The processes (QEMU, its helpers) of the sandboxes under `dir/state` after `within`.
fn processes_left(dir: &Path, within: Duration) -> Vec<String> {
    let state = dir.join("state");
    leftovers::wait_until_empty(within, || {
        leftovers::under_state_root(&state).into_iter().filter(|l| l.starts_with("process ")).collect()
    })
}

#[test]
fn docker_run_rm_prints_the_output_and_the_exit_code_in_a_vm() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-docker-").tempdir()?;
    configure(dir.path())?;
    let runtime = runtime_binary()?;
    let image = image(dir.path(), "wisp-rt:1")?;
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
    let left = left_on_host(dir.path(), Duration::from_secs(10));
    assert!(left.is_empty(), "left after --rm: {left:#?}");
    Ok(())
}

#[test]
fn the_seed_flow_runc_spec_style_bundle_run_propagates_the_exit_code() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-seed-").tempdir()?;
    configure(dir.path())?;
    let runtime = runtime_binary()?;
    let bundle = bundle(dir.path(), &["sh", "-c", "echo seed; exit 5"])?;
    let root = dir.path().join("root");
    let out = Command::new(&runtime).arg("--root").arg(&root).args(["run", "--bundle", s(&bundle), "demo"]).output()?;
    assert_eq!(text(&out.stdout), "seed\n", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    let left: Vec<_> = std::fs::read_dir(&root)?.flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "run removed the container's state: {left:?}");
    let left = left_on_host(dir.path(), Duration::from_secs(5));
    assert!(left.is_empty(), "left after run: {left:#?}");
    Ok(())
}

#[test]
fn docker_run_detached_then_stop_kill_and_rm_force() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-detached-").tempdir()?;
    configure(dir.path())?;
    let image = image(dir.path(), "wisp-rt:2")?;
    let docker = Dockerd::start_with(DockerdOptions {
        runtimes: vec![("wisp".into(), runtime_binary()?)],
        ..Default::default()
    })?;
    ensure!(docker.docker(["load", "-i", s(&image)])?.status.success());
    let run = |name: &str, script: &str| -> anyhow::Result<()> {
        let out = docker.docker(["run", "-d", "--runtime", "wisp", "--name", name, "wisp-rt:2", "sh", "-c", script])?;
        ensure!(out.status.success(), "docker run -d {name}: {}\n{}", describe(&out), docker.log_tail(30));
        Ok(())
    };
    // `docker stop`: SIGTERM reaches the container's process, which exits on it (the trap).
    run("polite", "trap 'exit 42' TERM; echo trapped; while true; do sleep 1; done")?;
    // A SIGTERM before the trap is set meets an init without a handler, which the agent
    // turns into SIGKILL (as Kata's does): stop only once the trap is in place.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text(&docker.docker(["logs", "polite"])?.stdout).contains("trapped") {
        ensure!(Instant::now() < deadline, "the container never said it set its trap\n{}", docker.log_tail(30));
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    let out = docker.docker(["stop", "-t", "20", "polite"])?;
    ensure!(out.status.success(), "docker stop: {}", describe(&out));
    let code = docker.docker(["inspect", "--format", "{{.State.ExitCode}}", "polite"])?;
    assert_eq!(text(&code.stdout).trim(), "42", "SIGTERM was honoured: {}\n{}", describe(&code), docker.log_tail(40));
    assert!(started.elapsed() < Duration::from_secs(15), "stop did not wait for the grace period's end");
    // `docker kill`: SIGKILL, 137.
    run("victim", "sleep 3600")?;
    ensure!(docker.docker(["kill", "victim"])?.status.success());
    let code = docker.docker(["wait", "victim"])?;
    assert_eq!(text(&code.stdout).trim(), "137", "{}", describe(&code));
    // `docker rm -f` of a running container.
    run("doomed", "sleep 3600")?;
    let out = docker.docker(["rm", "-f", "polite", "victim", "doomed"])?;
    ensure!(out.status.success(), "docker rm -f: {}", describe(&out));
    let left = left_on_host(dir.path(), Duration::from_secs(10));
    assert!(left.is_empty(), "left after rm -f: {left:#?}");
    Ok(())
}

#[test]
fn a_killed_monitor_reads_stopped_and_delete_cleans_up() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-kill-").tempdir()?;
    configure(dir.path())?;
    let runtime = runtime_binary()?;
    let bundle = bundle(dir.path(), &["sleep", "3600"])?;
    let root = dir.path().join("root");
    let rt = |args: &[&str]| Command::new(&runtime).arg("--root").arg(&root).args(args).output();
    let pid_file = dir.path().join("pid");
    // The monitor keeps create's stdio (the container's): a file, not a pipe output() would
    // wait on until the container ends.
    let stdio = dir.path().join("stdio");
    let created = Command::new(&runtime)
        .arg("--root")
        .arg(&root)
        .args(["create", "--bundle", s(&bundle), "--pid-file", s(&pid_file), "victim"])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&stdio)?)
        .stderr(std::fs::File::create(dir.path().join("stderr"))?)
        .status()?;
    ensure!(created.success(), "create: {}", std::fs::read_to_string(dir.path().join("stderr"))?);
    ensure!(rt(&["start", "victim"])?.status.success());
    let listed = rt(&["list"])?;
    assert!(
        text(&listed.stdout).lines().any(|l| l.starts_with("victim") && l.contains("running")),
        "{}",
        describe(&listed)
    );
    let monitor: i32 = std::fs::read_to_string(&pid_file)?.parse()?;
    assert!(!processes_left(dir.path(), Duration::ZERO).is_empty(), "the VM runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(monitor), nix::sys::signal::Signal::SIGKILL)?;
    let left = processes_left(dir.path(), Duration::from_secs(10));
    assert!(left.is_empty(), "QEMU and its helpers died with the monitor: {left:#?}");
    let state: serde_json::Value = serde_json::from_slice(&rt(&["state", "victim"])?.stdout)?;
    assert_eq!(state["status"], "stopped", "{state}");
    let out = rt(&["delete", "victim"])?;
    ensure!(out.status.success(), "delete: {}", describe(&out));
    assert_eq!(std::fs::read_dir(&root)?.count(), 0, "the record is gone");
    let left = left_on_host(dir.path(), Duration::ZERO);
    assert!(left.is_empty(), "delete removed the sandbox's mounts and state: {left:#?}");
    Ok(())
}
