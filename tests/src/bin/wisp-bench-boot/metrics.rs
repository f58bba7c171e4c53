//! What a run records and how the table shows it: the metric keys (shared by floor and agent
//! runs where they mean the same thing, and the JSON's `values` keys) and the table's rows, in
//! one place so the table, the ratios and the JSON cannot disagree on a name.

use std::collections::BTreeMap;

/// A mebibyte, in bytes.
pub const MIB: f64 = 1024.0 * 1024.0;

/// What one run measured, by metric key (see [`key`]).
pub type Sample = BTreeMap<&'static str, f64>;

/// Metric keys, shared by the floor and agent runs where they mean the same thing.
pub mod key {
    // Guest clock, seconds.
    pub const GUEST_RUN_INIT: &str = "guest_kernel_run_init_s";
    pub const GUEST_MAIN: &str = "guest_agent_main_s";
    pub const GUEST_INIT_STARTED: &str = "guest_agent_init_started_s";
    pub const GUEST_MODULES: &str = "guest_agent_modules_loaded_s";
    /// True floor: CLOCK_BOOTTIME once it listens; busybox floor: `/proc/uptime` at `/init`;
    /// agent: `agent ready`.
    pub const GUEST_READY: &str = "guest_ready_s";
    /// GUEST_READY minus `Run /init` converted to CLOCK_BOOTTIME: the userspace part.
    pub const GUEST_EXEC_TO_READY: &str = "guest_init_exec_to_ready_s";
    /// How far the printk clock runs ahead of CLOCK_BOOTTIME.
    pub const GUEST_PRINTK_AHEAD: &str = "guest_printk_ahead_of_boottime_s";
    // Host clock, seconds since QEMU's spawn.
    pub const HOST_RUN_INIT_SEEN: &str = "host_console_run_init_s";
    /// Floors: the WISP-FLOOR line; agent: the `agent ready` line.
    pub const HOST_READY_SEEN: &str = "host_console_ready_s";
    /// The vsock connection made (true floor and agent).
    pub const HOST_CONNECTED: &str = "host_agent_connected_s";
    /// True floor: the Health.Check frame echoed; busybox floor: the WISP-FLOOR line; agent:
    /// the first Check answered.
    pub const HOST_SERVING: &str = "host_serving_s";
    pub const HOST_BEFORE_GUEST_CLOCK: &str = "host_before_guest_clock_s";
    /// CPU seconds QEMU ran until SERVING (true floor: the echo; agent: the first Check;
    /// the busybox floor has no such moment): the boot's work, less inflated by a loaded host than wall time.
    pub const HOST_QEMU_CPU_SERVING: &str = "host_qemu_cpu_to_serving_s";
    pub const HOST_METRICS_RPC: &str = "host_get_metrics_rpc_s";
    /// CreateSandbox + CreateContainer + StartContainer of a busybox echo (9p rootfs) answered.
    pub const HOST_CONTAINER_STARTED: &str = "host_container_started_s";
    /// Its first ReadStdout answered with data.
    pub const HOST_FIRST_OUTPUT: &str = "host_container_first_output_s";
    /// Its WaitProcess answered (output drained), then RemoveContainer.
    pub const HOST_CONTAINER_EXIT: &str = "host_container_exit_s";
    pub const HOST_DESTROY_TO_EXIT: &str = "host_destroy_to_exit_s";
    pub const HOST_EXIT: &str = "host_qemu_exit_s";
    // Memory.
    pub const AGENT_RSS: &str = "agent_rss_bytes";
    pub const AGENT_THREADS: &str = "agent_threads";
    /// The agent's minor page faults when GetMetrics ran (right after the first Check).
    pub const AGENT_MINOR_FAULTS: &str = "agent_minor_page_faults";
    pub const GUEST_MEM_TOTAL: &str = "guest_mem_total_bytes";
    pub const GUEST_MEM_AVAILABLE: &str = "guest_mem_available_bytes";
    /// MemTotal - MemAvailable.
    pub const GUEST_MEM_USED: &str = "guest_mem_used_bytes";
    pub const QEMU_RSS: &str = "qemu_rss_bytes";
    pub const QEMU_RSS_SHMEM: &str = "qemu_rss_shmem_bytes";
    /// QEMU's proportional set size (`/proc/PID/smaps_rollup` Pss).
    pub const QEMU_PSS: &str = "qemu_pss_bytes";
    pub const HELPER_RSS: &str = "vsock_helper_rss_bytes";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The guest's printk stamps.
    Printk,
    /// The guest's CLOCK_BOOTTIME.
    Boot,
    /// Printk against CLOCK_BOOTTIME.
    Both,
    /// The host's monotonic clock since QEMU's spawn.
    Host,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Bytes,
    Count,
}

/// One table row: the floors' metric beside the agent's (the same key).
#[derive(Debug)]
pub struct Row {
    pub label: &'static str,
    pub clock: Clock,
    pub unit: Unit,
    pub floor: Option<&'static str>,
    pub agent: Option<&'static str>,
}

const fn row(label: &'static str, clock: Clock, unit: Unit, floor: bool, agent: &'static str) -> Row {
    Row { label, clock, unit, floor: if floor { Some(agent) } else { None }, agent: Some(agent) }
}

/// The boot table, top to bottom; `true` when the floors have the metric too (a floor that
/// does not measure it shows `n/a`).
#[rustfmt::skip]
pub const ROWS: &[Row] = &[
    row("kernel runs /init", Clock::Printk, Unit::Seconds, true, key::GUEST_RUN_INIT),
    row("agent main() starts", Clock::Boot, Unit::Seconds, false, key::GUEST_MAIN),
    row("agent: init started (mounts, logger)", Clock::Boot, Unit::Seconds, false, key::GUEST_INIT_STARTED),
    row("agent: kernel modules loaded", Clock::Boot, Unit::Seconds, false, key::GUEST_MODULES),
    row("READY: floor listens/uptime | agent ready", Clock::Boot, Unit::Seconds, true, key::GUEST_READY),
    row("  of which exec of /init -> READY", Clock::Both, Unit::Seconds, true, key::GUEST_EXEC_TO_READY),
    row("printk clock ahead of CLOCK_BOOTTIME", Clock::Both, Unit::Seconds, true, key::GUEST_PRINTK_AHEAD),
    row("before printk 0 (qemu, firmware, decomp.)", Clock::Host, Unit::Seconds, true, key::HOST_BEFORE_GUEST_CLOCK),
    row("console: Run /init", Clock::Host, Unit::Seconds, true, key::HOST_RUN_INIT_SEEN),
    row("console: WISP-FLOOR | agent ready", Clock::Host, Unit::Seconds, true, key::HOST_READY_SEEN),
    row("vsock connected (serial: at once)", Clock::Host, Unit::Seconds, true, key::HOST_CONNECTED),
    row("SERVING: echo/WISP-FLOOR | first Check", Clock::Host, Unit::Seconds, true, key::HOST_SERVING),
    row("QEMU CPU seconds to SERVING (not busybox)", Clock::Host, Unit::Seconds, true, key::HOST_QEMU_CPU_SERVING),
    row("GetMetrics round trip", Clock::Host, Unit::Seconds, false, key::HOST_METRICS_RPC),
    row("container started (sandbox+create+start)", Clock::Host, Unit::Seconds, false, key::HOST_CONTAINER_STARTED),
    row("container first output", Clock::Host, Unit::Seconds, false, key::HOST_FIRST_OUTPUT),
    row("container exit (WaitProcess)", Clock::Host, Unit::Seconds, false, key::HOST_CONTAINER_EXIT),
    row("DestroySandbox sent -> qemu exit", Clock::Host, Unit::Seconds, false, key::HOST_DESTROY_TO_EXIT),
    row("qemu exit", Clock::Host, Unit::Seconds, true, key::HOST_EXIT),
    row("agent RSS (GetMetrics)", Clock::None, Unit::Bytes, false, key::AGENT_RSS),
    row("agent threads", Clock::None, Unit::Count, false, key::AGENT_THREADS),
    row("agent minor page faults at first GetMetrics", Clock::None, Unit::Count, false, key::AGENT_MINOR_FAULTS),
    row("guest MemTotal", Clock::None, Unit::Bytes, false, key::GUEST_MEM_TOTAL),
    row("guest MemAvailable", Clock::None, Unit::Bytes, false, key::GUEST_MEM_AVAILABLE),
    row("guest memory used (Total - Available)", Clock::None, Unit::Bytes, false, key::GUEST_MEM_USED),
    row("qemu VmRSS", Clock::None, Unit::Bytes, false, key::QEMU_RSS),
    row("  of which guest RAM (RssShmem)", Clock::None, Unit::Bytes, false, key::QEMU_RSS_SHMEM),
    row("qemu PSS (smaps_rollup)", Clock::None, Unit::Bytes, false, key::QEMU_PSS),
    row("vhost-device-vsock VmRSS", Clock::None, Unit::Bytes, false, key::HELPER_RSS),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_key_is_distinct_per_side() {
        let agent: Vec<_> = ROWS.iter().filter_map(|r| r.agent).collect();
        let mut dedup = agent.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(agent.len(), dedup.len());
    }
}
