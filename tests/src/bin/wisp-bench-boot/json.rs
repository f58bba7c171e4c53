//! The JSON report (`target/bench/boot.json`, or `--json FILE`): its schema, every struct that
//! serializes into it, and writing it. The numbers in it are computed elsewhere ([`crate::stats`]).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::configs::BenchConfig;
use crate::metrics::Sample;

/// The whole of the file.
#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: u32,
    pub generated_unix: u64,
    pub host: HostInfo,
    pub runs_per_config: u32,
    pub sizes: Vec<SizeEntry>,
    pub configs: Vec<ConfigReport>,
    pub failed_runs: usize,
}

/// The host the runs ran on.
#[derive(Debug, Serialize)]
pub struct HostInfo {
    pub accel: String,
    pub cpus: usize,
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub qemu_version: String,
}

/// One artifact's size.
#[derive(Debug, Serialize)]
pub struct SizeEntry {
    pub name: &'static str,
    pub path: PathBuf,
    pub bytes: u64,
    pub target_bytes: Option<u64>,
}

/// One configuration: what was booted, its runs and what they add up to.
#[derive(Debug, Serialize)]
pub struct ConfigReport {
    pub name: &'static str,
    pub description: String,
    pub machine: &'static str,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub true_floor_initrd: Option<PathBuf>,
    pub busybox_floor_initrd: Option<PathBuf>,
    /// The agent's; the floors' differ only in `-initrd`.
    pub qemu_command_line: String,
    pub true_floor: KindReport,
    pub busybox_floor: KindReport,
    pub agent: KindReport,
    /// Agent median / true floor median, per metric both have.
    pub ratios_true_floor: BTreeMap<&'static str, f64>,
    /// Agent median / busybox floor median, per metric both have.
    pub ratios_busybox_floor: BTreeMap<&'static str, f64>,
    pub goals: Goals,
}

/// The agent against one floor.
#[derive(Debug, Default, Serialize)]
pub struct FloorRatios {
    /// Agent ready / floor ready (true floor: listening; busybox: `/proc/uptime` at `/init`),
    /// both guest CLOCK_BOOTTIME: medians.
    pub ready_ratio_medians: Option<f64>,
    /// The same with the fastest run of each (the least disturbed by the host).
    pub ready_ratio_minimums: Option<f64>,
    /// The floor's median plus the agent's extra time from the exec of `/init` (kernel noise
    /// removed), over the floor's median.
    pub ready_ratio_init_part: Option<f64>,
    /// First Check answered / floor serving (true floor: the Check frame echoed; busybox: its
    /// WISP-FLOOR line seen), host clock: medians and minimums.
    pub serving_ratio_medians: Option<f64>,
    pub serving_ratio_minimums: Option<f64>,
}

/// The project's targets, from the summaries (computed in [`crate::stats`]).
#[derive(Debug, Default, Serialize)]
pub struct Goals {
    /// Against the true floor: the goal's measure.
    pub true_floor: FloorRatios,
    /// Against the busybox floor, for comparison with earlier reports.
    pub busybox_floor: FloorRatios,
    /// The goal for `true_floor.serving_ratio_medians` (first Check / echo, host clock).
    pub ready_ratio_goal: f64,
    pub agent_rss_median_bytes: Option<f64>,
    pub agent_rss_goal_bytes: f64,
    pub agent_rss_target_bytes: f64,
}

impl ConfigReport {
    /// The report of `config` before any run.
    pub fn new(config: &BenchConfig) -> ConfigReport {
        ConfigReport {
            name: config.name,
            description: config.description.clone(),
            machine: config.agent.machine_type().qemu_name(),
            kernel: config.agent.kernel_path().to_owned(),
            initrd: config.agent.initrd_path().map(Path::to_owned),
            true_floor_initrd: config.true_floor.as_ref().and_then(|vm| vm.initrd_path()).map(Path::to_owned),
            busybox_floor_initrd: config.busybox_floor.initrd_path().map(Path::to_owned),
            qemu_command_line: String::new(),
            true_floor: KindReport::default(),
            busybox_floor: KindReport::default(),
            agent: KindReport::default(),
            ratios_true_floor: BTreeMap::new(),
            ratios_busybox_floor: BTreeMap::new(),
            goals: Goals::default(),
        }
    }
}

/// One kind's runs (a floor's or the agent's) of one configuration.
#[derive(Debug, Default, Serialize)]
pub struct KindReport {
    pub runs: Vec<RunRecord>,
    pub failures: Vec<Failure>,
    pub summary: BTreeMap<&'static str, Stats>,
}

/// One run that succeeded.
#[derive(Debug, Serialize)]
pub struct RunRecord {
    pub run: u32,
    pub values: Sample,
    /// The raw GetMetrics samples (agent runs).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    pub notes: Vec<String>,
}

/// One run that failed.
#[derive(Debug, Serialize)]
pub struct Failure {
    pub run: u32,
    pub error: String,
}

/// One metric over the runs of one kind (computed in [`crate::stats`]).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

/// Writes `report` to `path` (pretty, newline-terminated), creating its directory.
pub fn write_json(path: &Path, report: &Report) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let json = serde_json::to_string_pretty(report).context("serializing the report")?;
    fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
}
