//! Load on the shim under a real containerd: many sandboxes created at once on this small host,
//! and many create/run/delete cycles in a row, each checked for what it leaves behind.
//!
//! The sizes come from the environment so `make test` runs a short load and `make load` the
//! issue's full one: `WISP_LOAD_AT_ONCE` (default 8) sandboxes at once, `WISP_LOAD_CYCLES`
//! (default 24) cycles. Both tests print their timings; no time is asserted (speed belongs in
//! `make bench`), only that every sandbox ends, clearly, and that nothing grows.
//!
//! Needs root, `make deps` and `make all`. Compiled only with both features `containerd-tests`
//! and `vm-tests` (`make test-shim`).
#![cfg(all(feature = "containerd-tests", feature = "vm-tests"))]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use wisp_tests::shim_setup::{describe, s, text, Setup, RUNTIME};

/// How long one `ctr run --rm` may take under the heaviest load before the test calls it hung:
/// the shim's own dial timeout (90 s in the harness's configuration) plus its teardown.
const RUN_BOUND: Duration = Duration::from_secs(240);

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(default)
}

/// `ctr run --rm` of `config` as container `id`, as a child process (so many run at once).
fn spawn_run(t: &Setup, config: &Path, id: &str) -> anyhow::Result<std::process::Child> {
    let mut command = t.ctd.ctr_command();
    command.args(["run", "--rm", "--runtime", RUNTIME, "--config", s(config), id]);
    Ok(command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?)
}

/// Waits for `child` up to `bound`; kills it and says so if it takes longer.
fn wait_bounded(mut child: std::process::Child, bound: Duration) -> anyhow::Result<(Output, Duration)> {
    let start = Instant::now();
    while child.try_wait()?.is_none() {
        if start.elapsed() > bound {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            anyhow::bail!("hung: no answer within {} s\n{}", bound.as_secs(), describe(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((child.wait_with_output()?, start.elapsed()))
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

#[test]
fn many_sandboxes_at_once_each_answer_or_fail_clearly_and_leave_nothing() -> anyhow::Result<()> {
    let count = env_count("WISP_LOAD_AT_ONCE", 8);
    let t = Setup::new()?;
    let configs: Vec<PathBuf> = (0..count)
        .map(|i| t.bundle(&format!("b{i}"), &["sh", "-c", &format!("echo sandbox-{i}")]))
        .collect::<anyhow::Result<_>>()?;
    let start = Instant::now();
    let (done, results) = mpsc::channel();
    for (i, config) in configs.iter().enumerate() {
        let child = spawn_run(&t, config, &format!("at-once-{i}"))?;
        let done = done.clone();
        std::thread::spawn(move || {
            let _ = done.send((i, wait_bounded(child, RUN_BOUND)));
        });
    }
    drop(done);
    let mut answered = 0;
    let mut failures = Vec::new();
    for (i, result) in results.iter() {
        let (out, took) = result.with_context(|| format!("at-once-{i}"))?;
        if out.status.success() {
            ensure!(text(&out.stdout).trim() == format!("sandbox-{i}"), "at-once-{i} printed: {}", describe(&out));
            answered += 1;
        } else {
            // Under this load a sandbox may miss its boot deadline; it must then say why.
            let why = text(&out.stderr);
            ensure!(!why.trim().is_empty(), "at-once-{i} failed without a word after {took:?}: {}", describe(&out));
            failures.push(format!("at-once-{i} after {took:?}: {}", why.trim()));
        }
    }
    let wall = start.elapsed();
    println!("load: {count} sandboxes at once: {answered} answered, {} failed, wall {wall:.2?}", failures.len());
    for failure in &failures {
        println!("  {failure}");
    }
    let left = t.wait_no_leftovers(Duration::from_secs(20));
    ensure!(left.is_empty(), "after {count} sandboxes at once: {left:#?}");
    ensure!(t.shims().is_empty(), "shims still running: {:?}", t.shims());
    let listed = text(&t.ctr(&["containers", "ls", "-q"])?.stdout);
    ensure!(listed.trim().is_empty(), "--rm containers still listed: {listed}");
    ensure!(answered > 0, "not one of {count} sandboxes answered: {failures:#?}");
    Ok(())
}

/// What a cycle could leak on the host, counted.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Footprint {
    mounts: usize,
    containerd_fds: usize,
    containerd_children: usize,
    state_entries: usize,
    host_links: usize,
    sandbox_cgroups: usize,
}

fn count_dir(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Child cgroups of `dir` (its control files are entries too).
fn count_subdirs(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.flatten().filter(|e| e.path().is_dir()).count()).unwrap_or(0)
}

/// Mounts under the test's directories (the shim's state, containerd's root and state): the
/// rest of the host may mount what it likes meanwhile.
fn mounts_of(t: &Setup) -> usize {
    let mut dirs = vec![t.dir.path().to_string_lossy().into_owned()];
    dirs.extend(t.ctd.dir().map(|d| d.to_string_lossy().into_owned()));
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().filter(|l| l.split(' ').nth(4).is_some_and(|m| dirs.iter().any(|d| m.starts_with(d.as_str())))).count()
}

fn footprint(t: &Setup) -> Footprint {
    let cgroups = Path::new("/sys/fs/cgroup");
    let sandbox_cgroups = std::fs::read_dir(cgroups)
        .into_iter()
        .flatten()
        .flatten()
        .map(|controller| count_subdirs(&controller.path().join("wisp")))
        .sum::<usize>()
        // cgroup v2: one hierarchy, the sandboxes right under /sys/fs/cgroup/wisp.
        + count_subdirs(&cgroups.join("wisp"));
    Footprint {
        mounts: mounts_of(t),
        containerd_fds: t.ctd.pid().map_or(0, |pid| count_dir(&PathBuf::from(format!("/proc/{pid}/fd")))),
        containerd_children: t.ctd.shim_processes().len(),
        state_entries: t.leftovers().len(),
        host_links: count_dir(Path::new("/sys/class/net")),
        sandbox_cgroups,
    }
}

/// One `ctr run --rm` echo, its output checked.
fn cycle(t: &Setup, config: &Path, n: usize) -> anyhow::Result<Duration> {
    let (out, took) = wait_bounded(spawn_run(t, config, &format!("cycle-{n}"))?, RUN_BOUND)?;
    ensure!(out.status.success() && text(&out.stdout).trim() == "cycle", "cycle {n}: {}", describe(&out));
    Ok(took)
}

#[test]
fn repeated_cycles_leak_nothing() -> anyhow::Result<()> {
    const WARM_UP: usize = 3;
    let cycles = env_count("WISP_LOAD_CYCLES", 24).max(WARM_UP + 2);
    let t = Setup::new()?;
    let config = t.bundle("cycle", &["echo", "cycle"])?;
    // The first cycles settle containerd's own caches (plugins, connections, the KVM verdict).
    for n in 0..WARM_UP {
        cycle(&t, &config, n)?;
    }
    ensure!(t.wait_no_leftovers(Duration::from_secs(10)).is_empty(), "{:#?}", t.leftovers());
    let before = footprint(&t);
    let mut times = Vec::with_capacity(cycles);
    for n in WARM_UP..cycles {
        times.push(cycle(&t, &config, n)?);
    }
    ensure!(t.wait_no_leftovers(Duration::from_secs(10)).is_empty(), "{:#?}", t.leftovers());
    // containerd closes a shim's connections a moment after the shim exits.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = footprint(&t);
    while after != before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        after = footprint(&t);
    }
    let window = times.len().min(20);
    println!(
        "load: {} cycles after {WARM_UP} warm-up: median of the first {window} {:.2?}, of the last {window} {:.2?}",
        times.len(),
        median(times[..window].to_vec()),
        median(times[times.len() - window..].to_vec()),
    );
    println!("load: footprint before {before:?}\nload: footprint after  {after:?}");
    ensure!(after == before, "{} cycles grew the host's footprint:\nbefore {before:?}\nafter  {after:?}", times.len());
    Ok(())
}
