//! `wisp-bench-boot`: how big wisp is and how long it takes to boot, beside the targets.
//!
//! Run by `make bench` after `make` built the kernel, the agent and the initrds. See `--help`
//! for what is measured and on which clock.
//!
//! This file is the orchestration: find and pack the inputs, boot every configuration's floors
//! and agent in turn, then print the tables and write the JSON. The modules hold one job each.

mod agent_session;
mod cli;
mod configs;
mod console_watch;
mod container;
mod dial_attempt;
mod echo_session;
mod host;
mod inputs;
mod json;
mod metrics;
mod progress;
mod runs;
mod sizes;
mod stats;
mod svg;
mod table;
mod virtiofsd;

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Parser;
use wisp_tests::vm::tail;
use wisp_tests::{accel, artifacts};

use crate::cli::{selected, Args};
use crate::configs::{bench_config, BenchConfig};
use crate::container::Share;
use crate::inputs::{Inputs, Packed};
use crate::json::{write_json, ConfigReport, Failure, HostInfo, Report, RunRecord};
use crate::progress::Progress;
use crate::runs::{agent_run, busybox_floor_run, true_floor_run, Kind};
use crate::virtiofsd::Virtiofsd;

/// Lines of console printed with a failed run.
const FAILURE_TAIL: usize = 25;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!("wisp-bench-boot: {failed} run(s) failed; see above");
            std::process::ExitCode::from(1)
        }
        Err(err) => {
            eprintln!("wisp-bench-boot: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Returns how many runs failed.
fn run(args: Args) -> Result<usize> {
    let inputs = Inputs::find()?;
    let loadavg_before = host::loadavg();
    // Kept after the run (a few MiB), so a number can be reproduced by hand.
    let work = artifacts::target_dir().join("bench");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    eprintln!("packing the floors and the initrd compression variants in {}", work.display());
    let packed = Packed::build(&inputs, &work)?;
    let sizes = sizes::sizes(&inputs, &packed)?;
    let accel = accel::detect()?;

    let (mut reports, failed) = if args.sizes_only {
        (Vec::new(), 0)
    } else {
        host::check_host_tools()?;
        let configs =
            selected(&args).into_iter().map(|name| bench_config(name, &packed)).collect::<Result<Vec<_>>>()?;
        run_boots(&configs, &args, &packed.rootfs)?
    };
    reports.iter_mut().for_each(ConfigReport::summarize);

    let host = HostInfo {
        accel: accel.to_string(),
        cpus: thread::available_parallelism().map_or(0, usize::from),
        loadavg_before,
        loadavg_after: host::loadavg(),
        qemu_version: host::qemu_version(),
    };
    table::print_sizes(&sizes);
    if !args.sizes_only {
        table::print_boots(&host, args.effective_runs(), &reports);
    }
    let report = Report {
        schema: 2,
        generated_unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        host,
        runs_per_config: if args.sizes_only { 0 } else { args.effective_runs() },
        sizes,
        configs: reports,
        failed_runs: failed,
    };
    let json_path = args.json.clone().unwrap_or_else(|| artifacts::target_dir().join("bench/boot.json"));
    write_json(&json_path, &report)?;
    println!("\nJSON: {}", json_path.display());
    if !args.sizes_only {
        let svg_path = args.svg.clone().unwrap_or_else(|| artifacts::target_dir().join("bench/boot.svg"));
        svg::write_svg(&svg_path, &report.configs, report.runs_per_config)?;
        println!("SVG:  {}", svg_path.display());
    }
    Ok(failed)
}

/// The kinds `config` boots, in order (no true floor where it cannot run).
fn kinds(config: &BenchConfig) -> Vec<Kind> {
    Kind::ALL.into_iter().filter(|&k| k != Kind::TrueFloor || config.true_floor.is_some()).collect()
}

/// Boots every configuration [`Args::effective_runs`] times, the floors and the agent interleaved; returns the
/// reports (not summarized yet) and how many runs failed. `packed_rootfs` is what virtiofsd serves.
fn run_boots(configs: &[BenchConfig], args: &Args, packed_rootfs: &Path) -> Result<(Vec<ConfigReport>, usize)> {
    let timeout = Duration::from_secs(args.timeout);
    if let Some(dir) = &args.keep_consoles {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut reports: Vec<ConfigReport> = configs.iter().map(ConfigReport::new).collect();
    let started = Instant::now();
    let mut failed = 0;
    let runs = args.effective_runs();
    let boots = configs.iter().map(|c| kinds(c).len()).sum::<usize>() * runs as usize;
    let mut progress = Progress::new(boots);
    for run_no in 1..=runs {
        for (config, report) in configs.iter().zip(reports.iter_mut()) {
            for kind in kinds(config) {
                let label = format!("run {run_no}/{runs} {} {}", config.name, kind.name());
                progress.start(&label);
                // virtio-fs: a fresh virtiofsd per boot (it exits with QEMU's disconnect).
                let virtiofsd = (config.container == Some(Share::VirtioFs))
                    .then(|| Virtiofsd::start(&config.virtiofsd_socket, packed_rootfs))
                    .transpose()?;
                let outcome = match kind {
                    Kind::TrueFloor => match &config.true_floor {
                        Some(vm) => true_floor_run(vm.clone(), timeout),
                        None => continue,
                    },
                    Kind::BusyboxFloor => busybox_floor_run(config.busybox_floor.clone(), timeout),
                    Kind::Agent => agent_run(config.agent.clone(), timeout, config.container),
                };
                drop(virtiofsd);
                if let (Some(dir), Some(console)) = (&args.keep_consoles, &outcome.console) {
                    let file = dir.join(format!("{}-{}-{run_no}.log", config.name, kind.name()));
                    fs::write(&file, console).with_context(|| format!("writing {}", file.display()))?;
                }
                if kind == Kind::Agent && report.qemu_command_line.is_empty() {
                    report.qemu_command_line = outcome.command_line.clone().unwrap_or_default();
                }
                let target = match kind {
                    Kind::TrueFloor => &mut report.true_floor,
                    Kind::BusyboxFloor => &mut report.busybox_floor,
                    Kind::Agent => &mut report.agent,
                };
                match outcome.result {
                    Ok((values, metrics, notes)) => {
                        progress.done(&table::progress_summary(kind, &values));
                        notes.iter().for_each(|note| progress.note(note));
                        target.runs.push(RunRecord { run: run_no, values, metrics, notes });
                    }
                    Err(err) => {
                        failed += 1;
                        let error = format!("{err:#}");
                        progress.failed(&format!("{label}: {error}"));
                        // VM errors carry the console tail already.
                        if let Some(console) = outcome.console.filter(|_| !error.contains("console")) {
                            eprintln!("last console lines:\n{}", tail(&console, FAILURE_TAIL));
                        }
                        target.failures.push(Failure { run: run_no, error });
                    }
                }
            }
        }
    }
    progress.finish();
    eprintln!("{boots} boots in {:.0} s", started.elapsed().as_secs_f64());
    Ok((reports, failed))
}
