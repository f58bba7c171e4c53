//! Sandboxes cloned from a VM template under a real containerd (`[factory] template = true`):
//! `wisp template create` boots the configured VM once and saves it; each `ctr run` then
//! restores a private copy of it instead of booting a kernel. Two clones never boot a kernel
//! (their consoles start after the restore), yet each gets its own randomness and the host's
//! clock; a sandbox bigger than the template is a clone grown by vCPU and memory hot-plug; a
//! sandbox with no matching template, or whose template does not restore, boots cold;
//! nothing of a clone is left after delete, and the template stays until `wisp template remove`.
//!
//! Needs root, `make deps` and `make all`. Compiled with features `containerd-tests` and
//! `vm-tests` (`make test-shim`).
#![cfg(all(feature = "containerd-tests", feature = "vm-tests"))]

use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context};
use wisp_shim::state::SandboxKey;
use wisp_tests::shim_setup::{describe, s, text, wisp_binary, Setup, RUNTIME};

/// The configuration's `[factory]`, after `[agent.wisp]`'s keys.
const TEMPLATING: &str = "\n[factory]\ntemplate = true\n";

fn wisp(t: &Setup, args: &[&str]) -> anyhow::Result<Output> {
    let config = t.dir.path().join("configuration.toml");
    // WISP_STATE_DIR is the test's (shim_setup::configure): the templates go under it.
    Ok(Command::new(wisp_binary()?).args(args).arg("--config").arg(&config).output()?)
}

fn run_detached(t: &Setup, id: &str) -> anyhow::Result<()> {
    let config = t.bundle(id, &["sleep", "3600"])?;
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, "--config", s(&config), id])?;
    ensure!(out.status.success(), "ctr run -d {id}: {}\nshim log:\n{}", describe(&out), t.log_tail(40));
    Ok(())
}

/// Runs `script` in container `id`; its stdout.
fn exec(t: &Setup, id: &str, exec_id: &str, script: &str) -> anyhow::Result<String> {
    let out = t.ctr(&["tasks", "exec", "--exec-id", exec_id, id, "sh", "-c", script])?;
    ensure!(out.status.success(), "exec {script:?} in {id}: {}", describe(&out));
    Ok(text(&out.stdout).trim().to_owned())
}

/// 16 random bytes and the guest's clock (seconds), seen from container `id`.
fn guest_identity(t: &Setup, id: &str) -> anyhow::Result<(String, u64)> {
    let random = exec(t, id, "rand", "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'")?;
    let clock = exec(t, id, "date", "date +%s")?;
    Ok((random, clock.parse().with_context(|| format!("guest date {clock:?}"))?))
}

/// What sandbox `id`'s guest wrote on its console.
fn console(t: &Setup, id: &str) -> anyhow::Result<String> {
    let dir = SandboxKey::containerd(t.ctd.namespace(), id).dir(&t.state());
    Ok(std::fs::read_to_string(dir.join("console.log"))?)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[test]
fn sandboxes_cloned_from_a_template_are_its_boot_but_their_own() -> anyhow::Result<()> {
    let t = Setup::with_config("", TEMPLATING)?;
    let made = wisp(&t, &["template", "create"])?;
    ensure!(made.status.success(), "wisp template create: {}", describe(&made));
    let said = text(&made.stdout);
    ensure!(said.contains("saved in"), "create says where the template is: {said}");
    let listed = wisp(&t, &["template", "list"])?;
    let key = text(&listed.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("this configuration clones "))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .with_context(|| format!("wisp template list names the template to clone: {}", describe(&listed)))?;

    let checked = text(&wisp(&t, &["check"])?.stdout);
    ensure!(checked.contains("ok    template: sandboxes are cloned from"), "wisp check sees the template: {checked}");

    // Two clones at once: both go on from the template's boot, with their own randomness.
    run_detached(&t, "c1")?;
    run_detached(&t, "c2")?;
    let log = t.ctd.log();
    ensure!(
        count(&log, "restored from the template") == 2 && !log.contains("booting cold"),
        "both sandboxes are clones:\n{}",
        t.log_tail(60)
    );
    let qemu = t.qemu_pid().context("a clone's QEMU")?;
    let cmdline = text(&std::fs::read(format!("/proc/{qemu}/cmdline"))?).replace('\0', " ");
    ensure!(
        cmdline.contains("share=off") && cmdline.contains("-incoming defer") && cmdline.contains(&key),
        "a clone maps template {key}'s RAM privately and restores: {cmdline}"
    );
    for id in ["c1", "c2"] {
        let console = console(&t, id)?;
        ensure!(
            console.contains("agent") && !console.contains("Linux version"),
            "{id}'s guest did not boot a kernel, it went on from the template:\n{console}"
        );
    }
    let (random1, clock1) = guest_identity(&t, "c1")?;
    let (random2, clock2) = guest_identity(&t, "c2")?;
    ensure!(random1.len() == 32 && random1 != random2, "clones are reseeded apart: {random1} {random2}");
    for clock in [clock1, clock2] {
        ensure!(clock.abs_diff(now()) < 30, "a clone's clock is the host's: guest {clock}, host {}", now());
    }

    // A pod bigger than the template (CRI's sandbox sizing: 1 more vCPU, 200 MiB more) is the
    // template grown by hot-plug, not a cold boot: its guest counts 2 CPUs and ~512 MiB. (A
    // template's room is the host's CPUs: this host has at least 2.)
    let config = t.bundle("big", &["sh", "-c", "nproc; grep MemTotal /proc/meminfo"])?;
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config)?)?;
    spec["annotations"] = serde_json::json!({
        "io.kubernetes.cri.sandbox-cpu-quota": "100000",
        "io.kubernetes.cri.sandbox-cpu-period": "100000",
        "io.kubernetes.cri.sandbox-memory": (200u64 << 20).to_string(),
    });
    std::fs::write(&config, serde_json::to_vec(&spec)?)?;
    let out = t.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", s(&config), "big"])?;
    ensure!(out.status.success(), "ctr run --rm big: {}\n{}", describe(&out), t.log_tail(40));
    let log = t.ctd.log();
    ensure!(
        count(&log, "restored from the template") == 3 && count(&log, "the clone grown by hot-plug") == 1,
        "the bigger sandbox is a grown clone:\n{}",
        t.log_tail(40)
    );
    let said = text(&out.stdout);
    let mut lines = said.lines();
    ensure!(lines.next() == Some("2"), "the grown clone's container sees 2 CPUs: {said}");
    let mem_kib: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("MemTotal: {said}"))?;
    // The template has 256 MiB; 256 MiB more come as two memory blocks (200 MiB rounded up).
    ensure!(mem_kib > 448 << 10 && mem_kib <= 512 << 10, "the grown clone's guest has ~512 MiB: {said}");

    // A short-lived one, as ctr run --rm uses it.
    let config = t.bundle("echo", &["echo", "from a clone"])?;
    let out = t.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", s(&config), "echo"])?;
    ensure!(out.status.success() && text(&out.stdout).contains("from a clone"), "ctr run --rm: {}", describe(&out));
    for id in ["c1", "c2"] {
        let out = t.ctr(&["tasks", "kill", "-s", "KILL", id])?;
        ensure!(out.status.success(), "ctr t kill {id}: {}", describe(&out));
        t.wait_stopped(id, Duration::from_secs(20))?;
        for what in ["tasks", "containers"] {
            let out = t.ctr(&[what, "delete", id])?;
            ensure!(out.status.success(), "ctr {what} delete {id}: {}", describe(&out));
        }
    }
    let left = t.wait_no_leftovers(Duration::from_secs(5));
    ensure!(left.is_empty(), "nothing of the clones is left: {left:#?}");
    ensure!(t.state().join("templates").join(&key).is_dir(), "the template outlives its clones");

    // A template whose state does not restore costs a cold boot, not the sandbox.
    let state = t.state().join("templates").join(&key).join("state");
    let saved = std::fs::read(&state)?;
    std::fs::write(&state, &saved[..saved.len() / 2])?;
    let config = t.bundle("broken", &["echo", "after a failed clone"])?;
    let out = t.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", s(&config), "broken"])?;
    ensure!(out.status.success() && text(&out.stdout).contains("after a failed clone"), "{}", describe(&out));
    ensure!(t.ctd.log().contains("the clone failed"), "the failed clone is logged:\n{}", t.log_tail(30));
    let left = t.wait_no_leftovers(Duration::from_secs(5));
    ensure!(left.is_empty(), "nothing of the failed clone is left: {left:#?}");
    std::fs::write(&state, &saved)?;

    // Without its template the same configuration boots cold, and still works.
    let removed = wisp(&t, &["template", "remove", &key])?;
    ensure!(removed.status.success(), "wisp template remove: {}", describe(&removed));
    let checked = text(&wisp(&t, &["check"])?.stdout);
    ensure!(checked.contains("warn  template: sandboxes boot cold"), "wisp check says why: {checked}");
    run_detached(&t, "cold")?;
    ensure!(t.ctd.log().contains("booting cold, not from a template"), "the fallback is logged:\n{}", t.log_tail(30));
    let console = console(&t, "cold")?;
    ensure!(console.contains("Linux version"), "a cold boot's console starts with the kernel's:\n{console}");
    ensure!(exec(&t, "cold", "e", "echo cold")? == "cold", "the cold sandbox runs");
    t.kill_and_delete("cold")?;
    Ok(())
}
