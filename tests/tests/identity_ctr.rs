//! Sandbox identity and ownership under a real containerd: one id in two containerd namespaces
//! is two sandboxes, and `wisp gc` removes a sandbox whose shim died unseen (containerd down)
//! while the one beside it keeps running.
//!
//! Needs root, `make deps` and `make all` (kernel, initrd, the shim, `wisp` and rootfs-builder).
//! Compiled only with both features `containerd-tests` and `vm-tests` (`make test-shim`).
#![cfg(all(feature = "containerd-tests", feature = "vm-tests"))]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use wisp_shim::state::{Owner, SandboxKey, OWNER_FILE};
use wisp_tests::containerd::process_running;
use wisp_tests::leftovers;
use wisp_tests::shim_setup::{describe, s, status_in_listing, text, wisp_binary, Setup, RUNTIME};

/// `ctr` against the test's containerd in namespace `ns`.
fn ctr(t: &Setup, ns: &str, args: &[&str]) -> anyhow::Result<Output> {
    let mut command = Command::new("ctr");
    command.arg("--address").arg(t.ctd.address()).args(["--namespace", ns]).args(args).stdin(Stdio::null());
    Ok(command.output()?)
}

/// The `ctr t ls` STATUS of task `id` in namespace `ns`.
fn status(t: &Setup, ns: &str, id: &str) -> anyhow::Result<String> {
    Ok(status_in_listing(&ctr(t, ns, &["tasks", "ls"])?, id))
}

/// Runs a detached `sleep` container `id` in namespace `ns` from bundle `bundle`.
fn run_detached(t: &Setup, ns: &str, bundle: &str, id: &str) -> anyhow::Result<()> {
    let config = t.bundle(bundle, &["sleep", "3600"])?;
    let out = ctr(t, ns, &["run", "-d", "--runtime", RUNTIME, "--config", s(&config), id])?;
    ensure!(out.status.success(), "ctr -n {ns} run -d {id}: {}\ncontainerd log:\n{}", describe(&out), t.ctd.log());
    ensure!(status(t, ns, id)? == "RUNNING", "{ns}/{id} not running: {}", describe(&ctr(t, ns, &["t", "ls"])?));
    Ok(())
}

/// The guest's boot id, read by an exec in `ns/id` (tells two VMs apart).
fn guest_boot_id(t: &Setup, ns: &str, id: &str, exec_id: &str) -> anyhow::Result<String> {
    let out = ctr(t, ns, &["tasks", "exec", "--exec-id", exec_id, id, "cat", "/proc/sys/kernel/random/boot_id"])?;
    ensure!(out.status.success(), "exec in {ns}/{id}: {}", describe(&out));
    Ok(text(&out.stdout).trim().to_owned())
}

/// Kills and deletes task and container `ns/id`.
fn remove(t: &Setup, ns: &str, id: &str) -> anyhow::Result<()> {
    let out = ctr(t, ns, &["tasks", "kill", "-s", "KILL", id])?;
    ensure!(out.status.success(), "ctr -n {ns} t kill {id}: {}", describe(&out));
    let start = Instant::now();
    while status(t, ns, id)? != "STOPPED" {
        ensure!(start.elapsed() < Duration::from_secs(10), "{ns}/{id} not STOPPED 10 s after SIGKILL");
        std::thread::sleep(Duration::from_millis(100));
    }
    for what in ["tasks", "containers"] {
        let out = ctr(t, ns, &[what, "delete", id])?;
        ensure!(out.status.success(), "ctr -n {ns} {what} delete {id}: {}", describe(&out));
    }
    Ok(())
}

#[test]
fn one_id_in_two_namespaces_is_two_sandboxes() -> anyhow::Result<()> {
    let t = Setup::new()?;
    run_detached(&t, "nsa", "a", "same")?;
    // The second Create of the id used to fail and take the first sandbox down with it.
    run_detached(&t, "nsb", "b", "same")?;
    let a = guest_boot_id(&t, "nsa", "same", "e1")?;
    let b = guest_boot_id(&t, "nsb", "same", "e1")?;
    ensure!(!a.is_empty() && a != b, "two VMs, two guest boot ids: {a:?} {b:?}");
    let (dir_a, dir_b) =
        (SandboxKey::containerd("nsa", "same").dir(&t.state()), SandboxKey::containerd("nsb", "same").dir(&t.state()));
    ensure!(
        dir_a.is_dir() && dir_b.is_dir(),
        "one state directory each: {:?}",
        leftovers::under_state_root(&t.state())
    );

    remove(&t, "nsa", "same")?;
    ensure!(status(&t, "nsb", "same")? == "RUNNING", "deleting nsa/same leaves nsb/same running");
    ensure!(guest_boot_id(&t, "nsb", "same", "e2")? == b, "nsb/same still answers from its own VM");
    let left = leftovers::wait_until_empty(Duration::from_secs(5), || {
        leftovers::under_state_root(&t.state()).into_iter().filter(|l| l.contains(&*dir_a.to_string_lossy())).collect()
    });
    ensure!(left.is_empty(), "nothing of nsa/same is left: {left:#?}");

    remove(&t, "nsb", "same")?;
    let left = t.wait_no_leftovers(Duration::from_secs(5));
    ensure!(left.is_empty(), "nothing of either sandbox is left: {left:#?}");
    Ok(())
}

/// The owner record of sandbox `id` in the harness's namespace.
fn owner(t: &Setup, id: &str) -> anyhow::Result<(PathBuf, Owner)> {
    let dir = SandboxKey::containerd(t.ctd.namespace(), id).dir(&t.state());
    let record = std::fs::read(dir.join(OWNER_FILE)).with_context(|| format!("the owner of {}", dir.display()))?;
    Ok((dir, serde_json::from_slice(&record)?))
}

/// What of `dir` is on the host: processes naming it, mounts under it, the directory.
fn traces(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let state = dir.parent().unwrap_or(dir);
    let mut found: Vec<String> =
        leftovers::under_state_root(state).into_iter().filter(|l| l.contains(&needle)).collect();
    found.extend(dir.exists().then(|| format!("dir: {}", dir.display())));
    found
}

/// Runs `wisp gc ARGS` with the test's state root; what it printed.
fn wisp_gc(args: &[&str]) -> anyhow::Result<String> {
    let wisp = wisp_binary()?;
    let out = Command::new(&wisp).arg("gc").args(args).output().with_context(|| format!("{}", wisp.display()))?;
    ensure!(out.status.success(), "wisp gc {args:?}: {}", describe(&out));
    Ok(text(&out.stdout))
}

/// SIGKILLs `pid` and waits until it is gone.
fn kill_and_wait(pid: u32) -> anyhow::Result<()> {
    kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGKILL)?;
    let start = Instant::now();
    while process_running(pid) {
        ensure!(start.elapsed() < Duration::from_secs(10), "pid {pid} still runs 10 s after SIGKILL");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn gc_removes_a_sandbox_whose_shim_died_unseen_and_leaves_a_live_one() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let ns = t.ctd.namespace().to_owned();
    run_detached(&t, &ns, "v", "victim")?;
    run_detached(&t, &ns, "k", "keeper")?;
    let (victim_dir, victim) = owner(&t, "victim")?;
    let (keeper_dir, keeper) = owner(&t, "keeper")?;
    let keeper_before = traces(&keeper_dir);
    ensure!(keeper_before.iter().any(|l| l.starts_with("process")), "keeper's VM runs: {keeper_before:#?}");

    // Nobody to call the shim's delete: containerd goes first, then the victim's shim.
    kill_and_wait(t.ctd.pid().context("containerd runs")?)?;
    kill_and_wait(victim.pid)?;
    ensure!(!traces(&victim_dir).is_empty(), "the dead shim left its sandbox behind");

    let listed = wisp_gc(&["--dry-run"])?;
    let victim_name = victim_dir.display().to_string();
    ensure!(
        listed
            .lines()
            .any(|l| l.starts_with("would remove") && l.contains(&victim_name) && l.contains(&format!("{ns}/victim"))),
        "dry run lists the victim: {listed}"
    );
    ensure!(
        listed.lines().any(|l| l.starts_with("kept") && l.contains(&format!("{ns}/keeper"))),
        "and keeps the keeper: {listed}"
    );
    ensure!(!traces(&victim_dir).is_empty(), "a dry run removes nothing");

    let swept = wisp_gc(&[])?;
    ensure!(
        swept.lines().any(|l| l.starts_with("removed") && l.contains(&victim_name)),
        "gc says what it removed: {swept}"
    );
    // SIGKILLed processes take a moment to go on a loaded host.
    let left = leftovers::wait_until_empty(Duration::from_secs(5), || traces(&victim_dir));
    ensure!(left.is_empty(), "no QEMU, helper, mount or state of the victim left: {left:#?}\ngc said: {swept}");
    ensure!(process_running(keeper.pid), "the keeper's shim runs");
    let keeper_after = traces(&keeper_dir);
    ensure!(
        keeper_after == keeper_before,
        "the keeper is untouched: before {keeper_before:#?} after {keeper_after:#?}"
    );
    let again = wisp_gc(&[])?;
    ensure!(again.contains("nothing to remove"), "a second gc has nothing to do: {again}");

    // The keeper's shim dies too: gc cleans it as well, and nothing is left.
    kill_and_wait(keeper.pid)?;
    wisp_gc(&[])?;
    let left = t.wait_no_leftovers(Duration::from_secs(5));
    ensure!(left.is_empty(), "after both gc runs nothing is left: {left:#?}");
    Ok(())
}
