//! Faults injected into a real sandbox under a real containerd: a VM process or one of its
//! helpers SIGKILLed while the container runs, during boot and during Delete; the shim SIGKILLed
//! while containerd watches; a missing helper binary. Each case checks the task ends with a
//! status, a sandbox beside it keeps working, and nothing of the victim is left.
//!
//! The time from the kill until `ctr` saw the task stopped is printed for the closing table;
//! it is bounded only loosely here (speed belongs in `make bench`).
//!
//! Needs root, `make deps` and `make all`. Compiled only with both features `containerd-tests`
//! and `vm-tests` (`make test-shim`).
#![cfg(all(feature = "containerd-tests", feature = "vm-tests"))]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use wisp_shim::state::SandboxKey;
use wisp_tests::containerd::process_running;
use wisp_tests::leftovers;
use wisp_tests::shim_setup::{describe, s, text, Setup, RUNTIME};

/// The processes of one sandbox the tests kill, by the program name on their command line.
const VICTIMS: [&str; 3] = ["qemu-system", "virtiofsd", "vhost-device-vsock"];
/// How long a task may take to be seen stopped after its VM broke: generous, for a loaded host.
const STOP_BOUND: Duration = Duration::from_secs(30);

fn sandbox_dir(t: &Setup, id: &str) -> PathBuf {
    SandboxKey::containerd(t.ctd.namespace(), id).dir(&t.state())
}

/// The pid of the process of sandbox `id` whose command line starts with a path to `program`.
fn process_of(t: &Setup, id: &str, program: &str) -> Option<u32> {
    let dir = sandbox_dir(t, id).to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
        let cmdline = text(&std::fs::read(format!("/proc/{pid}/cmdline")).ok()?);
        let argv0 = cmdline.split('\0').next()?;
        let name = Path::new(argv0).file_name()?.to_string_lossy().into_owned();
        (name.starts_with(program) && cmdline.contains(&dir) && process_running(pid)).then_some(pid)
    })
}

/// What of sandbox `id` is still on the host (processes, mounts, state).
fn traces(t: &Setup, id: &str) -> Vec<String> {
    let dir = sandbox_dir(t, id).to_string_lossy().into_owned();
    t.leftovers().into_iter().filter(|l| l.contains(&dir)).collect()
}

fn run_detached(t: &Setup, config: &Path, id: &str) -> anyhow::Result<()> {
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, "--config", s(config), id])?;
    ensure!(out.status.success(), "ctr run -d {id}: {}\ncontainerd log:\n{}", describe(&out), t.ctd.log());
    Ok(())
}

/// Deletes task and container `id` (the task must have stopped).
fn delete(t: &Setup, id: &str) -> anyhow::Result<()> {
    for what in ["tasks", "containers"] {
        let out = t.ctr(&[what, "delete", id])?;
        ensure!(out.status.success(), "ctr {what} delete {id}: {}", describe(&out));
    }
    Ok(())
}

/// SIGKILLs `pid`.
fn sigkill(pid: u32) -> anyhow::Result<()> {
    Ok(kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGKILL)?)
}

/// Waits until nothing of sandbox `id` is on the host; fails naming `after` if something stays.
fn nothing_left_of(t: &Setup, id: &str, after: &str) -> anyhow::Result<()> {
    let left = leftovers::wait_until_empty(Duration::from_secs(10), || traces(t, id));
    ensure!(
        left.is_empty(),
        "{after}, {id} left: {left:#?}\ncontainerd log (the shim's lines land there):\n{}",
        t.log_tail(40)
    );
    Ok(())
}

/// Polls until task `id` is STOPPED; how long it took.
fn wait_stopped(t: &Setup, id: &str, since: Instant) -> anyhow::Result<Duration> {
    loop {
        let status = t.task_status(id)?;
        if status == "STOPPED" {
            return Ok(since.elapsed());
        }
        ensure!(since.elapsed() < STOP_BOUND, "{id} is {status:?} {} s after its VM broke", STOP_BOUND.as_secs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The bystander still runs and answers an exec.
fn bystander_answers(t: &Setup, exec_id: &str) -> anyhow::Result<()> {
    ensure!(t.task_status("bystander")? == "RUNNING", "the bystander stopped: {}", t.task_status("bystander")?);
    let out = t.ctr(&["tasks", "exec", "--exec-id", exec_id, "bystander", "echo", "still here"])?;
    ensure!(text(&out.stdout).trim() == "still here", "the bystander's exec: {}", describe(&out));
    Ok(())
}

#[test]
fn a_helper_killed_under_a_running_container_ends_its_task_and_spares_the_sandbox_beside() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let config = t.bundle("sleeper", &["sleep", "3600"])?;
    run_detached(&t, &config, "bystander")?;
    for (n, program) in VICTIMS.iter().enumerate() {
        let id = format!("victim-{n}");
        run_detached(&t, &config, &id)?;
        let pid =
            process_of(&t, &id, program).with_context(|| format!("no {program} of {id}: {:#?}", t.leftovers()))?;
        let killed = Instant::now();
        sigkill(pid)?;
        let took = wait_stopped(&t, &id, killed).with_context(|| format!("after SIGKILL of {program}"))?;
        println!("fault: SIGKILL of {program} under a running container: task stopped after {took:.2?}");
        delete(&t, &id)?;
        nothing_left_of(&t, &id, &format!("after SIGKILL of {program} and delete"))?;
        bystander_answers(&t, &format!("e{n}"))?;
    }
    t.kill_and_delete("bystander")
}

#[test]
fn a_helper_killed_during_boot_fails_the_run_clearly_and_leaves_nothing() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let config = t.bundle("echo", &["echo", "booted"])?;
    for (n, program) in VICTIMS.iter().enumerate() {
        let id = format!("boot-{n}");
        let child = t
            .ctd
            .ctr_command()
            .args(["run", "--rm", "--runtime", RUNTIME, "--config", s(&config), &id])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // Kill it as soon as it exists: the guest is then still booting.
        let start = Instant::now();
        let pid = loop {
            if let Some(pid) = process_of(&t, &id, program) {
                break pid;
            }
            ensure!(start.elapsed() < STOP_BOUND, "{program} of {id} never started");
            std::thread::sleep(Duration::from_millis(10));
        };
        sigkill(pid)?;
        let out = child.wait_with_output()?;
        ensure!(!out.status.success(), "{id} ran although its {program} was killed during boot: {}", describe(&out));
        let why = text(&out.stderr);
        ensure!(why.contains("failed to create shim task"), "no clear error after {program} died: {}", describe(&out));
        println!("fault: SIGKILL of {program} during boot: ctr failed after {:.2?}: {}", start.elapsed(), why.trim());
        nothing_left_of(&t, &id, &format!("after SIGKILL of {program} during boot"))?;
        let listed = text(&t.ctr(&["containers", "ls", "-q"])?.stdout);
        ensure!(!listed.lines().any(|l| l == id), "--rm left container {id}: {listed}");
    }
    Ok(())
}

#[test]
fn a_process_killed_during_delete_still_deletes_and_leaves_nothing() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let config = t.bundle("sleeper", &["sleep", "3600"])?;
    run_detached(&t, &config, "bystander")?;
    for (n, program) in VICTIMS.iter().enumerate() {
        let id = format!("doomed-{n}");
        run_detached(&t, &config, &id)?;
        let out = t.ctr(&["tasks", "kill", "-s", "KILL", &id])?;
        ensure!(out.status.success(), "kill: {}", describe(&out));
        wait_stopped(&t, &id, Instant::now())?;
        let pid = process_of(&t, &id, program).with_context(|| format!("no {program} of {id} to kill"))?;
        let deleting = t.ctd.ctr_command().args(["tasks", "delete", &id]).stderr(Stdio::piped()).spawn()?;
        sigkill(pid)?;
        let out = deleting.wait_with_output()?;
        // Either the delete won the race or the VM's death answered it: both must end the task.
        if !out.status.success() {
            let again = t.ctr(&["tasks", "delete", &id])?;
            ensure!(again.status.success() || text(&again.stderr).contains("not found"), "{}", describe(&again));
        }
        let out = t.ctr(&["containers", "delete", &id])?;
        ensure!(out.status.success(), "containers delete after {program} died: {}", describe(&out));
        nothing_left_of(&t, &id, &format!("after {program} died during delete"))?;
        bystander_answers(&t, &format!("d{n}"))?;
    }
    t.kill_and_delete("bystander")
}

#[test]
fn a_sigkilled_shim_is_cleaned_up_by_containerd_and_the_sandbox_beside_runs_on() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let config = t.bundle("sleeper", &["sleep", "3600"])?;
    run_detached(&t, &config, "bystander")?;
    run_detached(&t, &config, "orphan")?;
    let shim = t
        .shims()
        .into_iter()
        .find(|pid| {
            // The shim's cwd is its bundle in containerd's state; its sandbox is named by its id.
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            cwd.ends_with("orphan")
        })
        .with_context(|| format!("no shim of orphan among {:?}", t.shims()))?;
    let killed = Instant::now();
    sigkill(shim)?;
    // containerd runs the shim's `delete` and forgets the task: it is no longer listed.
    let took = loop {
        let status = t.task_status("orphan")?;
        if status.is_empty() || status == "STOPPED" {
            break killed.elapsed();
        }
        ensure!(killed.elapsed() < STOP_BOUND, "orphan is {status:?} {} s after its shim died", STOP_BOUND.as_secs());
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("fault: SIGKILL of the shim (containerd up): task stopped after {took:.2?}");
    let _ = t.ctr(&["tasks", "delete", "orphan"])?;
    let out = t.ctr(&["containers", "delete", "orphan"])?;
    ensure!(out.status.success(), "containers delete: {}", describe(&out));
    nothing_left_of(&t, "orphan", "after containerd's cleanup of the dead shim")?;
    bystander_answers(&t, "after-shim")?;
    t.kill_and_delete("bystander")
}

#[test]
fn a_missing_virtiofsd_fails_create_clearly_and_leaves_nothing() -> anyhow::Result<()> {
    let t = Setup::with_config("shared_fs = \"virtio-fs\"\nvirtio_fs_daemon = \"/nonexistent/virtiofsd\"", "")?;
    let config = t.bundle("echo", &["echo", "never"])?;
    let out = t.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", s(&config), "no-fs"])?;
    ensure!(!out.status.success(), "ran without virtiofsd: {}", describe(&out));
    ensure!(
        text(&out.stderr).contains("/nonexistent/virtiofsd"),
        "the error names the missing binary: {}",
        describe(&out)
    );
    let left = t.wait_no_leftovers(Duration::from_secs(10));
    ensure!(left.is_empty(), "a failed Create left: {left:#?}");
    Ok(())
}

#[test]
fn containerd_restarted_under_three_sandboxes_leaves_them_running_and_manageable() -> anyhow::Result<()> {
    let mut t = Setup::new()?;
    let config = t.bundle("sleeper", &["sleep", "3600"])?;
    let ids = ["keep-0", "keep-1", "keep-2"];
    for id in ids {
        run_detached(&t, &config, id)?;
    }
    t.ctd.restart().map_err(|err| anyhow::anyhow!("restarting containerd: {err}"))?;
    for (n, id) in ids.iter().enumerate() {
        ensure!(t.task_status(id)? == "RUNNING", "{id} after the restart: {:?}", t.task_status(id)?);
        let out = t.ctr(&["tasks", "exec", "--exec-id", &format!("after-{n}"), id, "echo", "reattached"])?;
        ensure!(text(&out.stdout).trim() == "reattached", "exec in {id} after the restart: {}", describe(&out));
    }
    for id in ids {
        t.kill_and_delete(id).or_else(|err| {
            // kill_and_delete checks the whole state root: the others may still run.
            let left = traces(&t, id);
            if left.is_empty() && t.task_status(id)?.is_empty() {
                Ok(())
            } else {
                Err(err.context(format!("{id}: {left:#?}")))
            }
        })?;
    }
    let left = t.wait_no_leftovers(Duration::from_secs(10));
    ensure!(left.is_empty(), "after deleting every sandbox: {left:#?}");
    Ok(())
}

/// A small tmpfs mounted over the shim's state root, unmounted when dropped.
struct FullStateRoot(PathBuf);

impl FullStateRoot {
    fn mount(state: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(state)?;
        nix::mount::mount(
            Some("tmpfs"),
            state,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("size=256k,mode=0711"),
        )?;
        let mounted = Self(state.to_owned());
        // Fill it: every later write there fails with ENOSPC.
        let mut filler = std::fs::File::create(state.join("filler"))?;
        let chunk = vec![0u8; 64 * 1024];
        while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
        Ok(mounted)
    }
}

impl Drop for FullStateRoot {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_full_state_root_fails_create_clearly_and_leaves_nothing() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let config = t.bundle("echo", &["echo", "never"])?;
    let full = FullStateRoot::mount(&t.state())?;
    let out = t.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", s(&config), "no-space"])?;
    ensure!(!out.status.success(), "ran with a full state root: {}", describe(&out));
    let why = text(&out.stderr);
    ensure!(why.contains("No space left on device"), "the error says the disk is full: {}", describe(&out));
    println!("fault: a full state root at Create: {}", why.trim());
    // The test's own tmpfs and filler are not the shim's.
    let own_mount = format!(" {} ", t.state().display());
    let left: Vec<String> = leftovers::wait_until_empty(Duration::from_secs(10), || {
        t.leftovers().into_iter().filter(|l| !l.ends_with("/filler") && !l.contains(&own_mount)).collect()
    });
    ensure!(left.is_empty(), "a Create on a full disk left: {left:#?}");
    drop(full);
    Ok(())
}
