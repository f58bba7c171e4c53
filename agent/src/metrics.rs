//! GetMetrics: the agent's and the guest's vital signs as Prometheus text.
//!
//! The agent's RSS comes from `smaps_rollup`, which is exact: `VmRSS` in
//! `/proc/self/status` sums per-thread cached counters that 6.1 flushes lazily,
//! and read 4 KiB for a 1.8 MiB agent once it had a second thread.
//!
//! Kept minimal and cheap (a few small procfs reads, no collector registry): it
//! is what the boot benchmark uses to measure the agent's own memory from inside
//! the guest, and what a runtime scrapes. Names are `wisp_*`; the boot-clock
//! gauges let a host read the guest's own timeline without parsing the console.

use std::fmt::Write as _;

/// When the agent started and became ready, on the guest's boot clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeline {
    pub init_started: f64,
    pub ready: Option<f64>,
    /// When the setup deferred past readiness (cgroups) finished.
    pub setup_done: Option<f64>,
}

/// The `/proc` texts the metrics are made of.
#[derive(Debug, Default)]
pub struct Sources {
    pub self_status: String,
    /// `/proc/self/stat`: the page fault counters.
    pub self_stat: String,
    pub smaps_rollup: String,
    pub meminfo: String,
    pub uptime: String,
}

/// Renders the metrics from `/proc` texts; pure, so it is tested with samples.
pub fn render(src: &Sources, timeline: Timeline) -> String {
    let (self_status, meminfo, uptime) = (&src.self_status, &src.meminfo, &src.uptime);
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: String| {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n");
    };
    let kib = |text: &str, key: &str| field(text, key).map(|kb| (kb * 1024).to_string());
    if let Some(v) = kib(&src.smaps_rollup, "Rss:").or_else(|| kib(self_status, "VmRSS:")) {
        gauge("wisp_agent_resident_memory_bytes", "Resident set size of the agent.", v);
    }
    if let Some(v) = kib(&src.smaps_rollup, "Anonymous:") {
        // The rest of the RSS is the binary's text and data as touched: that part grows with
        // the code paths run, not with the work held.
        gauge("wisp_agent_anonymous_memory_bytes", "Anonymous (heap, stacks) part of the agent's RSS.", v);
    }
    if let Some(v) = kib(self_status, "VmSize:") {
        gauge("wisp_agent_virtual_memory_bytes", "Virtual memory size of the agent.", v);
    }
    // Page faults cost a trap and a TLB refill each, dear under TCG: the count says how much of
    // the binary the agent touched so far (text is faulted in from the initramfs page cache).
    if let Some((minor, major)) = page_faults(&src.self_stat) {
        gauge("wisp_agent_minor_page_faults", "Minor page faults of the agent so far.", minor.to_string());
        gauge("wisp_agent_major_page_faults", "Major page faults of the agent so far.", major.to_string());
    }
    if let Some(v) = field(self_status, "Threads:") {
        gauge("wisp_agent_threads", "Threads of the agent process.", v.to_string());
    }
    if let Some(v) = kib(meminfo, "MemTotal:") {
        gauge("wisp_guest_memory_total_bytes", "Memory the guest kernel manages.", v);
    }
    if let Some(v) = kib(meminfo, "MemAvailable:") {
        gauge("wisp_guest_memory_available_bytes", "Memory available for new work in the guest.", v);
    }
    if let Some(up) = uptime.split_whitespace().next().and_then(|s| s.parse::<f64>().ok()) {
        gauge("wisp_guest_uptime_seconds", "Guest boot clock now.", format!("{up:.6}"));
    }
    gauge(
        "wisp_agent_init_started_seconds",
        "Guest boot clock when the agent started.",
        format!("{:.6}", timeline.init_started),
    );
    if let Some(ready) = timeline.ready {
        gauge("wisp_agent_ready_seconds", "Guest boot clock when the agent began serving.", format!("{ready:.6}"));
    }
    if let Some(done) = timeline.setup_done {
        gauge(
            "wisp_guest_setup_done_seconds",
            "Guest boot clock when setup deferred past readiness finished.",
            format!("{done:.6}"),
        );
    }
    out
}

/// The first number after `key` in a `Key:   value kB` style text.
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `minflt` and `majflt` (fields 10 and 12) of a `/proc/PID/stat` line; counted after the
/// command name's closing parenthesis, since the name may hold spaces.
fn page_faults(stat: &str) -> Option<(u64, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    // rest starts at field 3 (state): minflt is the 8th field of rest, majflt the 10th.
    let mut fields = rest.split_whitespace();
    let minor = fields.nth(7)?.parse().ok()?;
    let major = fields.nth(1)?.parse().ok()?;
    Some((minor, major))
}

/// Reads procfs and renders; a file that cannot be read just drops its lines.
pub fn collect(timeline: Timeline) -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let sources = Sources {
        self_status: read("/proc/self/status"),
        self_stat: read("/proc/self/stat"),
        smaps_rollup: read("/proc/self/smaps_rollup"),
        meminfo: read("/proc/meminfo"),
        uptime: read("/proc/uptime"),
    };
    render(&sources, timeline)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\twisp-agent\nVmSize:\t    4200 kB\nVmRSS:\t    1536 kB\nThreads:\t1\n";
    const MEMINFO: &str = "MemTotal:         230000 kB\nMemFree:          200000 kB\nMemAvailable:     210000 kB\n";

    #[test]
    fn renders_prometheus_text_in_bytes() {
        let src = Sources {
            self_status: STATUS.into(),
            meminfo: MEMINFO.into(),
            uptime: "2.50 1.00\n".into(),
            ..Sources::default()
        };
        let text = render(&src, Timeline { init_started: 2.1, ready: Some(2.2), setup_done: Some(2.3) });
        for line in [
            "wisp_agent_resident_memory_bytes 1572864",
            "wisp_agent_virtual_memory_bytes 4300800",
            "wisp_agent_threads 1",
            "wisp_guest_memory_total_bytes 235520000",
            "wisp_guest_memory_available_bytes 215040000",
            "wisp_guest_uptime_seconds 2.500000",
            "wisp_agent_init_started_seconds 2.100000",
            "wisp_agent_ready_seconds 2.200000",
            "wisp_guest_setup_done_seconds 2.300000",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("# TYPE wisp_agent_threads gauge"));
    }

    #[test]
    fn rss_prefers_the_exact_smaps_rollup() {
        let src = Sources {
            self_status: "VmRSS:\t       4 kB\n".into(),
            smaps_rollup:
                "55c0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:                1856 kB\nPss:  1800 kB\nAnonymous:  800 kB\n"
                    .into(),
            ..Sources::default()
        };
        let text = render(&src, Timeline::default());
        assert!(text.contains("wisp_agent_resident_memory_bytes 1900544\n"));
        assert!(text.contains("wisp_agent_anonymous_memory_bytes 819200\n"));
    }

    #[test]
    fn page_faults_are_read_after_the_command_name() {
        // A real line of a 6.1 guest, with a name holding ") " to trip a naive split.
        let stat =
            "1 (wisp a) b) S 0 1 1 0 -1 4194560 1234 0 5 0 12 34 0 0 20 0 2 0 5 4300800 384 18446744073709551615";
        assert_eq!(page_faults(stat), Some((1234, 5)));
        let text = render(&Sources { self_stat: stat.into(), ..Sources::default() }, Timeline::default());
        assert!(text.contains("wisp_agent_minor_page_faults 1234\n"), "{text}");
        assert!(text.contains("wisp_agent_major_page_faults 5\n"), "{text}");
        assert_eq!(page_faults("1 (x) S 0"), None);
    }

    #[test]
    fn unreadable_sources_drop_their_lines_only() {
        let src = Sources { meminfo: "garbage".into(), ..Sources::default() };
        let text = render(&src, Timeline::default());
        assert!(!text.contains("resident"));
        assert!(text.contains("wisp_agent_init_started_seconds 0.000000"));
        assert!(!text.contains("wisp_agent_ready_seconds"));
    }
}
