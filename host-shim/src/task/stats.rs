//! The agent's answers in containerd's shapes: cgroup statistics as containerd's cgroup v1
//! `Metrics` (what `ctr t metrics` decodes), volume statistics as kata-ctl's JSON.

use containerd_shim_protos::cgroups::metrics;
use protocols::agent as pb;

/// The agent's volume stats as JSON (kata-ctl prints the same fields).
pub(super) fn volume_stats_json(stats: &protocols::csi::VolumeStatsResponse) -> serde_json::Value {
    let usage: Vec<_> = stats
        .usage
        .iter()
        .map(|u| {
            serde_json::json!({
                "available": u.available,
                "total": u.total,
                "used": u.used,
                "unit": format!("{:?}", u.unit.enum_value_or_default()),
            })
        })
        .collect();
    let condition = stats.volume_condition.as_ref();
    serde_json::json!({
        "usage": usage,
        "volume_condition": {
            "abnormal": condition.is_some_and(|c| c.abnormal),
            "message": condition.map(|c| c.message.clone()).unwrap_or_default(),
        },
    })
}

/// CgroupStats from the agent as containerd's cgroup v1 metrics.
pub(super) fn metrics_of(stats: &pb::CgroupStats) -> metrics::Metrics {
    let mut m = metrics::Metrics::new();
    let cpu = &stats.cpu_stats.cpu_usage;
    m.cpu = Some(metrics::CPUStat {
        usage: Some(metrics::CPUUsage {
            total: cpu.total_usage,
            kernel: cpu.usage_in_kernelmode,
            user: cpu.usage_in_usermode,
            per_cpu: cpu.percpu_usage.clone(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    })
    .into();
    let mem = &stats.memory_stats;
    let entry = |d: &pb::MemoryData| {
        Some(metrics::MemoryEntry {
            limit: d.limit,
            usage: d.usage,
            max: d.max_usage,
            failcnt: d.failcnt,
            ..Default::default()
        })
        .into()
    };
    m.memory = Some(metrics::MemoryStat {
        cache: mem.cache,
        usage: entry(&mem.usage),
        swap: entry(&mem.swap_usage),
        kernel: entry(&mem.kernel_usage),
        ..Default::default()
    })
    .into();
    m.pids = Some(metrics::PidsStat {
        current: stats.pids_stats.current,
        limit: stats.pids_stats.limit,
        ..Default::default()
    })
    .into();
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_carry_cpu_memory_pids() {
        let mut stats = pb::CgroupStats::new();
        stats.cpu_stats.mut_or_insert_default().cpu_usage.mut_or_insert_default().total_usage = 42;
        stats.memory_stats.mut_or_insert_default().usage.mut_or_insert_default().usage = 4096;
        stats.pids_stats.mut_or_insert_default().current = 3;
        let m = metrics_of(&stats);
        assert_eq!(m.cpu.usage.total, 42);
        assert_eq!(m.memory.usage.usage, 4096);
        assert_eq!(m.pids.current, 3);
    }
}
