//! `wisp-bench-ctr` (part of `make bench`): where the time of one `ctr run --rm` through the
//! shim goes. Runs a busybox `echo` N times under a private containerd, then lays each run out
//! on the host's wall clock from the shim's phase lines in containerd's log (shim started, create
//! received, helpers up, QEMU spawned, agent ready, sandbox created, container created, process
//! started, first output, process exited, VM stopped, shim exiting) against `ctr`'s own start
//! and exit, and prints the median of each phase (issue 18: the floor + 0.25 s goal).
//!
//! `--template` does the same with `[factory] template = true` after `wisp template create`:
//! each sandbox is a clone of the booted template. Both modes then run `--pss` sandboxes at
//! once (a `sleep`) and print their QEMUs' proportional set size: clones share the template's
//! RAM pages.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context as _, Result};
use clap::Parser;
use wisp_tests::containerd::{describe, s, text};
use wisp_tests::shim_setup::{wisp_binary, Setup};
use wisp_tests::shim_timeline::phases;

/// The phases in the order a `ctr run --rm` passes them.
const ORDER: [&str; 13] = [
    "shim started",
    "create received",
    "helpers up",
    "qemu spawned",
    "template restored",
    "agent ready",
    "sandbox created",
    "container created",
    "process started",
    "first output",
    "process exited",
    "vm stopped",
    "shim exiting",
];

/// Times `ctr run --rm` of a busybox echo through the shim, phase by phase.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Runs (the median of each phase is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Clone each sandbox from a template (made first with `wisp template create`).
    #[arg(long)]
    template: bool,
    /// Sandboxes run at once for the memory figure (0: none).
    #[arg(long, default_value_t = 5)]
    pss: usize,
    /// An extra line for the shim's `[hypervisor.qemu]` (repeatable), to compare settings:
    /// `--qemu 'shared_fs = "virtio-9p"'`, `--qemu 'kernel_params = "agent.log=debug"'`.
    #[arg(long = "qemu", value_name = "LINE")]
    qemu: Vec<String>,
    /// Copies containerd's log (the shims' lines with their phases) here at the end.
    #[arg(long, value_name = "FILE")]
    keep_log: Option<std::path::PathBuf>,
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or_default()
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.runs > 0, "--runs must be at least 1");
    let factory = if args.template { "\n[factory]\ntemplate = true\n" } else { "" };
    let setup = Setup::with_config(&args.qemu.join("\n"), factory)?;
    if args.template {
        let made = Command::new(wisp_binary()?)
            .args(["template", "create", "--config"])
            .arg(setup.dir.path().join("configuration.toml"))
            .output()?;
        ensure!(made.status.success(), "wisp template create: {}", describe(&made));
        eprint!("{}", text(&made.stdout));
    }
    let config = setup.bundle("bench", &["echo", "hi"])?;
    let mut runs = Vec::new();
    for run in 0..args.runs {
        let id = format!("bench-ctr-{run}");
        let started = now_ms();
        let out = setup.ctr(&["run", "--rm", "--runtime", "io.containerd.wisp.v2", "--config", s(&config), &id])?;
        let ended = now_ms();
        ensure!(out.status.success() && text(&out.stdout) == "hi\n", "ctr run {id}: {}", describe(&out));
        eprintln!("run {}/{}: {:.0} ms", run + 1, args.runs, ended - started);
        runs.push((id, started, ended));
    }
    let log_text = setup.ctd.log();
    if let Some(path) = &args.keep_log {
        std::fs::write(path, &log_text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let log = phases(&log_text);
    let how = if args.template { "cloned from a template" } else { "cold boot" };
    println!(
        "ctr run --rm busybox echo through the shim, {how}, {} runs (host wall clock, ms from `ctr run`)",
        args.runs
    );
    println!("{:<20} {:>9} {:>9} {:>9}", "phase", "median", "min", "max");
    let row = |name: &str, values: Vec<f64>| {
        let (min, max) = values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        if let Some(median) = median(values) {
            println!("{name:<20} {median:>9.0} {min:>9.0} {max:>9.0}");
        }
    };
    for name in ORDER {
        let values: Vec<f64> = runs
            .iter()
            .filter_map(|(id, started, _)| {
                log.iter().find(|p| &p.shim == id && p.name == name).map(|p| p.unix_ms - started)
            })
            .collect();
        row(name, values);
    }
    row("ctr exited", runs.iter().map(|(_, started, ended)| ended - started).collect());
    if args.pss > 0 {
        let pss = pss_at_once(&setup, args.pss)?;
        let mean = pss.iter().sum::<f64>() / pss.len() as f64;
        println!("QEMU PSS with {} sandboxes at once ({how}): mean {mean:.1} MiB, each {pss:.1?}", args.pss);
    }
    Ok(())
}

/// Runs `n` idle sandboxes at once; each QEMU's proportional set size in MiB, then removes them.
fn pss_at_once(setup: &Setup, n: usize) -> Result<Vec<f64>> {
    let config = setup.bundle("idle", &["sleep", "3600"])?;
    let ids: Vec<String> = (0..n).map(|i| format!("bench-idle-{i}")).collect();
    for id in &ids {
        let out = setup.ctr(&["run", "-d", "--runtime", "io.containerd.wisp.v2", "--config", s(&config), id])?;
        ensure!(out.status.success(), "ctr run -d {id}: {}", describe(&out));
    }
    // Let the guests settle (the boot's page cache, the agent's first allocations).
    std::thread::sleep(std::time::Duration::from_secs(2));
    let mut pss = Vec::new();
    for pid in setup.qemu_pids() {
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let kib = rollup.lines().find_map(|l| l.strip_prefix("Pss:")).and_then(|v| v.split_whitespace().next());
        if let Some(kib) = kib.and_then(|k| k.parse::<f64>().ok()) {
            pss.push(kib / 1024.0);
        }
    }
    for id in &ids {
        setup.ctr(&["tasks", "kill", "-s", "KILL", id])?;
    }
    for id in &ids {
        setup.wait_stopped(id, std::time::Duration::from_secs(20))?;
        setup.ctr(&["tasks", "delete", id])?;
        setup.ctr(&["containers", "delete", id])?;
    }
    ensure!(pss.len() == n, "{n} QEMUs expected, found {}", pss.len());
    Ok(pss)
}
