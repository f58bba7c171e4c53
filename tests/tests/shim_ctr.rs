//! `containerd-shim-wisp-v2` under a real containerd: `ctr run --runtime io.containerd.wisp.v2`
//! boots our kernel and initrd in QEMU, and the container runs in the guest.
//!
//! Needs root, `make deps` (containerd, runc, busybox-static, QEMU, vhost-device-vsock,
//! virtiofsd) and `make all` (kernel, initrd, the shim and rootfs-builder; `WISP_SHIM` names
//! another shim binary). Compiled only with both features `containerd-tests` and `vm-tests`
//! (`make test-shim`). Each test runs its own containerd, state directory and configuration.
#![cfg(all(feature = "containerd-tests", feature = "vm-tests"))]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use wisp_tests::shim_setup::{describe, s, text, Setup, RUNTIME};

#[test]
fn run_rm_prints_output_and_the_exit_code_reaches_ctr() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let config = t.bundle("echo", &["sh", "-c", "echo hi; echo to-stderr >&2; exit 3"])?;
    let out = t.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", s(&config), "wisp-echo"])?;
    assert_eq!(text(&out.stdout).trim(), "hi", "{}", describe(&out));
    assert!(text(&out.stderr).contains("to-stderr"), "{}", describe(&out));
    assert_eq!(out.status.code(), Some(3), "the container's exit code reaches ctr: {}", describe(&out));
    let left = t.wait_no_leftovers(Duration::from_secs(5));
    assert!(left.is_empty(), "after --rm nothing of the sandbox remains: {left:#?}");
    Ok(())
}

#[test]
fn detached_exec_and_kill() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let config = t.bundle("tail", &["sleep", "3600"])?;
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, "--config", s(&config), "wisp-tail"])?;
    ensure!(out.status.success(), "ctr run -d: {}", describe(&out));
    ensure!(t.task_status("wisp-tail")? == "RUNNING", "task not running: {}", describe(&t.ctr(&["t", "ls"])?));

    let out = t.ctr(&["tasks", "exec", "--exec-id", "1", "wisp-tail", "ls", "/"])?;
    ensure!(out.status.success(), "ctr t exec: {}", describe(&out));
    let listing = text(&out.stdout);
    for dir in ["bin", "proc", "etc"] {
        assert!(listing.lines().any(|l| l.trim() == dir), "ls / shows {dir}: {listing}");
    }
    let out = t.ctr(&["tasks", "exec", "--exec-id", "2", "wisp-tail", "sh", "-c", "exit 5"])?;
    assert_eq!(out.status.code(), Some(5), "an exec's exit code reaches ctr: {}", describe(&out));

    // A terminal: ctr needs one on its own stdin, so run it under script(1).
    let line = format!(
        "ctr --address {} --namespace {} tasks exec -t --exec-id tty1 wisp-tail sh -c '[ -t 0 ] && [ -t 1 ] && echo tty-ok'",
        t.ctd.address().display(),
        t.ctd.namespace()
    );
    let out = Command::new("script").args(["-qec", &line, "/dev/null"]).stdin(Stdio::null()).output()?;
    let shown = text(&out.stdout);
    assert!(shown.contains("tty-ok"), "the exec has a terminal: {}", describe(&out));

    let out = t.ctr(&["tasks", "kill", "-s", "KILL", "wisp-tail"])?;
    ensure!(out.status.success(), "ctr t kill: {}", describe(&out));
    t.wait_stopped("wisp-tail", Duration::from_secs(10))?;
    let out = t.ctr(&["tasks", "delete", "wisp-tail"])?;
    ensure!(out.status.success(), "ctr t delete: {}", describe(&out));
    let out = t.ctr(&["containers", "delete", "wisp-tail"])?;
    ensure!(out.status.success(), "ctr c delete: {}", describe(&out));
    let left = t.wait_no_leftovers(Duration::from_secs(5));
    assert!(left.is_empty(), "after delete nothing of the sandbox remains: {left:#?}");
    Ok(())
}

#[test]
fn stdin_reaches_the_container() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let config = t.bundle("cat", &["cat"])?;
    let mut cmd = t.ctd.ctr_command();
    cmd.args(["run", "--rm", "--runtime", RUNTIME, "--config", s(&config), "wisp-cat"]);
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    child.stdin.take().context("stdin")?.write_all(b"hi\n")?;
    let out = child.wait_with_output()?;
    assert_eq!(text(&out.stdout), "hi\n", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    Ok(())
}

#[test]
fn qemu_killed_reports_the_exit_and_leaves_nothing() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let config = t.bundle("victim", &["sleep", "3600"])?;
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, "--config", s(&config), "wisp-victim"])?;
    ensure!(out.status.success(), "ctr run -d: {}", describe(&out));
    let Some(qemu) = t.qemu_pid() else { bail!("no QEMU found for the sandbox under {}", t.state().display()) };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(qemu as i32), nix::sys::signal::Signal::SIGKILL)?;
    let killed = Instant::now();
    while t.task_status("wisp-victim")? != "STOPPED" {
        ensure!(killed.elapsed() < Duration::from_secs(2), "ctr does not see the exit within 2 s of QEMU's death");
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = t.wait_no_leftovers(Duration::from_secs(5));
    assert!(left.is_empty(), "after QEMU died nothing of the sandbox remains: {left:#?}");
    let out = t.ctr(&["tasks", "delete", "wisp-victim"])?;
    ensure!(out.status.success(), "ctr t delete after the VM died: {}", describe(&out));
    Ok(())
}

#[test]
fn image_from_the_snapshotter_runs() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let image = t.import_busybox("shim")?;
    let out = t.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        &image,
        "wisp-img",
        "sh",
        "-c",
        "echo from-image; test -x /bin/busybox; exit 4",
    ])?;
    assert_eq!(text(&out.stdout).trim(), "from-image", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let left = t.wait_no_leftovers(Duration::from_secs(5));
    assert!(left.is_empty(), "the overlay rootfs and the sandbox are gone: {left:#?}");
    Ok(())
}

#[test]
fn pause_resume_metrics_and_ls() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let config = t.bundle("pause", &["sleep", "3600"])?;
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, "--config", s(&config), "wisp-pause"])?;
    ensure!(out.status.success(), "ctr run -d: {}", describe(&out));
    let out = t.ctr(&["tasks", "pause", "wisp-pause"])?;
    ensure!(out.status.success(), "ctr t pause: {}", describe(&out));
    assert_eq!(t.task_status("wisp-pause")?, "PAUSED");
    let out = t.ctr(&["tasks", "resume", "wisp-pause"])?;
    ensure!(out.status.success(), "ctr t resume: {}", describe(&out));
    assert_eq!(t.task_status("wisp-pause")?, "RUNNING");
    let out = t.ctr(&["tasks", "metrics", "wisp-pause"])?;
    ensure!(out.status.success() && text(&out.stdout).contains("memory"), "ctr t metrics: {}", describe(&out));
    let out = t.ctr(&["tasks", "kill", "-s", "KILL", "wisp-pause"])?;
    ensure!(out.status.success(), "ctr t kill: {}", describe(&out));
    t.wait_stopped("wisp-pause", Duration::from_secs(10))?;
    t.ctr(&["tasks", "delete", "wisp-pause"])?;
    t.ctr(&["containers", "delete", "wisp-pause"])?;
    Ok(())
}

#[test]
fn ten_sandboxes_in_a_row_leak_nothing() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let config = t.bundle("ten", &["sh", "-c", "echo round"])?;
    for round in 0..10 {
        let id = format!("wisp-ten-{round}");
        let out = t.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", s(&config), &id])?;
        ensure!(out.status.success() && text(&out.stdout).trim() == "round", "round {round}: {}", describe(&out));
        let left = t.wait_no_leftovers(Duration::from_secs(5));
        ensure!(left.is_empty(), "round {round} left: {left:#?}");
    }
    let out = t.ctr(&["containers", "ls", "-q"])?;
    assert_eq!(text(&out.stdout).trim(), "", "no container remains");
    Ok(())
}

#[test]
fn zero_dependency_fallbacks_serial_channel_and_9p() -> anyhow::Result<()> {
    // No vhost-device-vsock, no virtiofsd: what a host with QEMU alone gets.
    let t = Setup::with_config("shared_fs = \"virtio-9p\"\nmachine_type = \"pc\"", "channel = \"serial\"")?;
    let config = t.bundle("fallback", &["sh", "-c", "echo via-9p; cat /proc/mounts | grep -c 9p; exit 2"])?;
    let out = t.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", s(&config), "wisp-9p"])?;
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("via-9p"), "{}", describe(&out));
    let nine_p_mounts: u32 = stdout.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    assert!(nine_p_mounts > 0, "the container's root is on 9p: {}", describe(&out));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let left = t.wait_no_leftovers(Duration::from_secs(5));
    assert!(left.is_empty(), "{left:#?}");
    Ok(())
}

#[test]
fn a_killed_shim_is_cleaned_up_by_containerd_delete() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let config = t.bundle("crash", &["sleep", "3600"])?;
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, "--config", s(&config), "wisp-crash"])?;
    ensure!(out.status.success(), "ctr run -d: {}", describe(&out));
    let shims = t.shims();
    ensure!(shims.len() == 1, "one shim process expected: {shims:?}");
    for pid in shims {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)?;
    }
    // containerd notices the dead shim and runs `containerd-shim-wisp-v2 delete`, which must
    // stop QEMU and the helpers the shim left, unmount, and remove the state.
    // (20 s: once, on a host loaded by builds beside the tests, 10 s were not enough.)
    let left = t.wait_no_leftovers(Duration::from_secs(20));
    assert!(
        left.is_empty(),
        "after the shim died and containerd cleaned up: {left:#?}\ncontainerd log:\n{}",
        t.log_tail(40)
    );
    Ok(())
}

#[test]
fn a_failing_start_reports_the_cause_and_leaves_nothing() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let config = t.bundle("missing", &["/no/such/binary"])?;
    let out = t.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", s(&config), "wisp-missing"])?;
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(text(&out.stderr).contains("/no/such/binary"), "the error names the binary: {}", describe(&out));
    // ctr leaves the container record behind on a failed start; removing it ends the shim.
    let _ = t.ctr(&["tasks", "delete", "wisp-missing"]);
    let _ = t.ctr(&["containers", "delete", "wisp-missing"]);
    let left = t.wait_no_leftovers(Duration::from_secs(10));
    assert!(left.is_empty(), "{left:#?}");
    Ok(())
}

#[test]
fn containers_of_one_pod_share_one_shim_and_vm() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let mut configs = Vec::new();
    for (name, args) in [("pod-a", &["sleep", "3600"][..]), ("pod-b", &["sh", "-c", "echo second; exit 6"][..])] {
        let config = t.bundle(name, args)?;
        // CRI's grouping annotation: both containers belong to sandbox "pod1".
        let mut spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config)?)?;
        spec["annotations"] = serde_json::json!({"io.kubernetes.cri.sandbox-id": "pod1"});
        std::fs::write(&config, serde_json::to_string_pretty(&spec)?)?;
        configs.push(config);
    }
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, "--config", s(&configs[0]), "pod-a"])?;
    ensure!(out.status.success(), "first container: {}", describe(&out));
    let first_qemu = t.qemu_pid().context("no QEMU for the pod")?;
    let out = t.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", s(&configs[1]), "pod-b"])?;
    assert_eq!(text(&out.stdout).trim(), "second", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
    assert_eq!(t.shims().len(), 1, "one shim serves the pod");
    assert_eq!(t.qemu_pid(), Some(first_qemu), "the second container ran in the first one's VM");
    assert_eq!(t.task_status("pod-a")?, "RUNNING", "the first container outlives the second");
    let out = t.ctr(&["tasks", "kill", "-s", "KILL", "pod-a"])?;
    ensure!(out.status.success(), "{}", describe(&out));
    t.wait_stopped("pod-a", Duration::from_secs(10))?;
    t.ctr(&["tasks", "delete", "pod-a"])?;
    t.ctr(&["containers", "delete", "pod-a"])?;
    let left = t.wait_no_leftovers(Duration::from_secs(5));
    assert!(left.is_empty(), "{left:#?}");
    Ok(())
}

#[test]
fn tail_f_dev_null_keeps_running_detached() -> anyhow::Result<()> {
    // The long-running container: it needs /dev/null usable inside the container
    // (the default device allow-list of runc and Kata's agent).
    let t = Setup::new()?;
    let config = t.bundle("devnull", &["tail", "-f", "/dev/null"])?;
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, "--config", s(&config), "wisp-devnull"])?;
    ensure!(out.status.success(), "ctr run -d: {}", describe(&out));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        t.task_status("wisp-devnull")?,
        "RUNNING",
        "tail -f /dev/null exited (is /dev/null usable in the container?)"
    );
    t.ctr(&["tasks", "kill", "-s", "KILL", "wisp-devnull"])?;
    Ok(())
}

#[test]
fn a_detached_container_writing_more_than_the_pipes_hold_is_not_blocked() -> anyhow::Result<()> {
    // `ctr run -d` leaves nobody reading the output FIFOs once it exits: the shim must keep
    // draining the guest, or the writer blocks on a full pipe and never reaches its exit.
    let t = Setup::new()?;
    let config = t.bundle("chatty", &["sh", "-c", "sleep 1; yes wisp | head -c 4000000; exit 7"])?;
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, "--config", s(&config), "wisp-chatty"])?;
    ensure!(out.status.success(), "ctr run -d: {}", describe(&out));
    t.wait_stopped("wisp-chatty", Duration::from_secs(30))?;
    t.ctr(&["tasks", "delete", "wisp-chatty"])?;
    t.ctr(&["containers", "delete", "wisp-chatty"])?;
    let left = t.wait_no_leftovers(Duration::from_secs(5));
    assert!(left.is_empty(), "{left:#?}");
    Ok(())
}
