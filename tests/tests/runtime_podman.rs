//! `wisp-runtime` under Debian's podman 4.3 (through conmon, `--runtime <wisp-runtime>`):
//! containers run in wisp VMs, their output and exit code reach podman, `podman stop`'s SIGTERM
//! and `podman kill`'s SIGKILL reach the container, and nothing is left once podman removed
//! them (no QEMU or helper, no record under the runtime's root, no mount, no conmon).
//!
//! The podman is the harness's ([`wisp_tests::Podman`]): private storage (vfs), run root,
//! configuration, cgroup parent; no network. The runtime keeps its records in its default
//! root, `/run/wisp-runtime`, as for any podman user (podman's cleanup passes no `--root`):
//! the tests check that their containers' records are gone from there.
//! Needs root, `make deps` and `make all` (kernel, initrd, wisp-runtime, rootfs-builder).
//! Compiled only with both features `containerd-tests` and `vm-tests` (`make test-shim`).
#![cfg(all(feature = "containerd-tests", feature = "vm-tests"))]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::ensure;
use wisp_shim::runtime::store::default_root;
use wisp_tests::containerd::{describe, mounts_under, s, text};
use wisp_tests::runtime_fixtures;
use wisp_tests::shim_setup::runtime_binary;
use wisp_tests::{leftovers, Podman, PodmanOptions};

/// The image every test runs, as `podman load` names it.
const IMAGE: &str = "localhost/wisp-rt-podman:1";

/// A private podman running `wisp-runtime`, the runtime configured (our kernel and initrd,
/// sandbox state in `dir/state`), the busybox image loaded.
fn podman(dir: &Path) -> anyhow::Result<Podman> {
    runtime_fixtures::configure(dir)?;
    let podman = Podman::start_with(PodmanOptions {
        runtime: Some(runtime_binary()?),
        runtime_root: Some(default_root(
            nix::unistd::geteuid().as_raw(),
            std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
        )),
        ..Default::default()
    })?;
    let image = runtime_fixtures::image(dir, IMAGE)?;
    let out = podman.podman(["load", "-i", s(&image)])?;
    ensure!(out.status.success(), "podman load: {}", describe(&out));
    Ok(podman)
}

/// What is still on the host after `within` (or at once when nothing is): the sandboxes'
/// processes, mounts and state under `dir/state`, the runtime's records, mounts under the
/// podman's directory, and its processes (conmon, podman's cleanup, the monitors).
fn left_on_host(dir: &Path, podman: &Podman, within: Duration) -> Vec<String> {
    let state = dir.join("state");
    leftovers::wait_until_empty(within, || {
        let mut left = leftovers::under_state_root(&state);
        left.extend(podman.new_runtime_records().iter().map(|r| format!("record: {}", r.display())));
        let base = podman.dir().map(Path::to_owned).unwrap_or_default();
        left.extend(mounts_under(&[&base]).iter().map(|m| format!("mount: {}", m.display())));
        left.extend(podman.processes().iter().map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            format!("process {pid}: {}", String::from_utf8_lossy(&cmdline).replace('\0', " "))
        }));
        left
    })
}

/// `podman run -d --name NAME IMAGE sh -c SCRIPT`.
fn run_detached(podman: &Podman, name: &str, script: &str) -> anyhow::Result<()> {
    let out = podman.run(["-d", "--name", name, IMAGE, "sh", "-c", script])?;
    ensure!(out.status.success(), "podman run -d {name}: {}", describe(&out));
    Ok(())
}

/// Polls `podman logs NAME` until it prints `line` (the container's output reached conmon's
/// log through the monitor); fails after `within`.
fn wait_for_log(podman: &Podman, name: &str, line: &str, within: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let out = podman.podman(["logs", name])?;
        if text(&out.stdout).lines().any(|l| l == line) {
            return Ok(());
        }
        ensure!(started.elapsed() < within, "{name} did not print {line:?} within {within:?}: {}", describe(&out));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The container's exit code as podman recorded it.
fn exit_code(podman: &Podman, name: &str) -> anyhow::Result<String> {
    let out = podman.podman(["inspect", "--format", "{{.State.ExitCode}}", name])?;
    ensure!(out.status.success(), "podman inspect {name}: {}", describe(&out));
    Ok(text(&out.stdout).trim().to_owned())
}

#[test]
fn podman_run_rm_prints_the_output_and_the_exit_code_in_a_vm() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-podman-").tempdir()?;
    let podman = podman(dir.path())?;
    // The guest's kernel is ours, not the host's: the container ran in the VM.
    let out = podman.run(["--rm", IMAGE, "sh", "-c", "echo hi; uname -r; exit 3"])?;
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("hi"), "{}", describe(&out));
    let host_kernel = nix::sys::utsname::uname()?.release().to_string_lossy().into_owned();
    let guest_kernel = lines.next();
    assert!(guest_kernel.is_some_and(|k| !k.is_empty()), "uname -r printed: {}", describe(&out));
    assert_ne!(guest_kernel, Some(host_kernel.as_str()), "the container ran on the host's kernel: {}", describe(&out));
    assert_eq!(out.status.code(), Some(3), "the exit code reaches podman: {}", describe(&out));
    let left = left_on_host(dir.path(), &podman, Duration::from_secs(10));
    assert!(left.is_empty(), "left after --rm: {left:#?}");
    let listed = podman.podman(["ps", "--all", "--quiet"])?;
    assert_eq!(text(&listed.stdout), "", "--rm removed the container: {}", describe(&listed));
    Ok(())
}

#[test]
fn podman_run_t_gives_the_container_a_terminal() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-podman-tty-").tempdir()?;
    let podman = podman(dir.path())?;
    // conmon's `create --console-socket`: the container's stdout is a pty in the guest.
    let out = podman.run(["--rm", "-t", IMAGE, "sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo on a terminal; exit 2"])?;
    assert!(text(&out.stdout).starts_with("on a terminal"), "run -t: {}", describe(&out));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let left = left_on_host(dir.path(), &podman, Duration::from_secs(10));
    assert!(left.is_empty(), "left after run --rm -t: {left:#?}");
    Ok(())
}

#[test]
fn podman_run_detached_then_stop_honours_sigterm_and_rm() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-podman-stop-").tempdir()?;
    let podman = podman(dir.path())?;
    run_detached(&podman, "polite", "trap 'exit 42' TERM; echo trapped; while true; do sleep 1; done")?;
    let state = podman.podman(["inspect", "--format", "{{.State.Status}}", "polite"])?;
    assert_eq!(text(&state.stdout).trim(), "running", "{}", describe(&state));
    // `run -d` returns once the process started, maybe before the shell set its trap.
    wait_for_log(&podman, "polite", "trapped", Duration::from_secs(30))?;
    // `podman stop`: SIGTERM reaches the container's process, which exits on it (the trap)
    // well before the grace period ends (podman would send SIGKILL then: 137).
    let started = Instant::now();
    let out = podman.podman(["stop", "--time", "20", "polite"])?;
    ensure!(out.status.success(), "podman stop: {}", describe(&out));
    assert!(started.elapsed() < Duration::from_secs(15), "stop waited for the grace period's end");
    assert_eq!(exit_code(&podman, "polite")?, "42", "SIGTERM was honoured");
    let out = podman.podman(["rm", "polite"])?;
    ensure!(out.status.success(), "podman rm: {}", describe(&out));
    let left = left_on_host(dir.path(), &podman, Duration::from_secs(10));
    assert!(left.is_empty(), "left after stop and rm: {left:#?}");
    Ok(())
}

#[test]
fn podman_kill_then_rm_force_of_a_running_container() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-podman-kill-").tempdir()?;
    let podman = podman(dir.path())?;
    // `podman kill`: SIGKILL, 137.
    run_detached(&podman, "victim", "sleep 3600")?;
    let out = podman.podman(["kill", "victim"])?;
    ensure!(out.status.success(), "podman kill: {}", describe(&out));
    let waited = podman.podman(["wait", "victim"])?;
    assert_eq!(text(&waited.stdout).trim(), "137", "{}", describe(&waited));
    // `podman rm -f`: of the killed one and of one that still runs.
    run_detached(&podman, "doomed", "sleep 3600")?;
    let out = podman.podman(["rm", "--force", "victim", "doomed"])?;
    ensure!(out.status.success(), "podman rm -f: {}", describe(&out));
    let left = left_on_host(dir.path(), &podman, Duration::from_secs(10));
    assert!(left.is_empty(), "left after kill and rm -f: {left:#?}");
    Ok(())
}

#[test]
fn podman_exec_runs_in_the_container_and_returns_its_exit_code() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-podman-exec-").tempdir()?;
    let podman = podman(dir.path())?;
    run_detached(&podman, "host", "echo inside > /mark; echo ready; sleep 3600")?;
    wait_for_log(&podman, "host", "ready", Duration::from_secs(30))?;
    let out = podman.podman(["exec", "host", "sh", "-c", "cat /mark; uname -r; exit 4"])?;
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("inside"), "the exec runs in the container: {}", describe(&out));
    let host_kernel = nix::sys::utsname::uname()?.release().to_string_lossy().into_owned();
    assert_ne!(lines.next(), Some(host_kernel.as_str()), "the exec ran on the host: {}", describe(&out));
    assert_eq!(out.status.code(), Some(4), "the exec's exit code reaches podman: {}", describe(&out));
    // conmon's terminal exec: `exec --detach --tty --console-socket S`.
    let out = podman.podman(["exec", "-t", "host", "tty"])?;
    assert!(text(&out.stdout).starts_with("/dev/pts/"), "exec -t runs on a pty: {}", describe(&out));
    let state = podman.podman(["inspect", "--format", "{{.State.Status}}", "host"])?;
    assert_eq!(text(&state.stdout).trim(), "running", "the container outlives its exec: {}", describe(&state));
    let out = podman.podman(["rm", "--force", "host"])?;
    ensure!(out.status.success(), "podman rm -f: {}", describe(&out));
    let left = left_on_host(dir.path(), &podman, Duration::from_secs(10));
    assert!(left.is_empty(), "left after exec and rm -f: {left:#?}");
    Ok(())
}
