//! `wisp-bench-ctr` (part of `make bench`): where the time of one `ctr run --rm` through the
//! shim goes. Runs a busybox `echo` N times under a private containerd, then lays each run out
//! on the host's wall clock from the shim's phase lines in containerd's log (shim started, create
//! received, helpers up, QEMU spawned, agent ready, sandbox created, container created, process
//! started, first output, process exited, VM stopped, shim exiting) against `ctr`'s own start
//! and exit, and prints the median of each phase (issue 18: the floor + 0.25 s goal).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Result};
use clap::Parser;
use wisp_tests::containerd::{describe, s, text};
use wisp_tests::shim_setup::Setup;
use wisp_tests::shim_timeline::phases;

/// The phases in the order a `ctr run --rm` passes them.
const ORDER: [&str; 12] = [
    "shim started",
    "create received",
    "helpers up",
    "qemu spawned",
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
    let setup = Setup::new()?;
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
    let log = phases(&setup.ctd.log());
    println!("ctr run --rm busybox echo through the shim, {} runs (host wall clock, ms from `ctr run`)", args.runs);
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
    Ok(())
}
