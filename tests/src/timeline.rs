//! The boot timeline read off a guest console, and the agent's Prometheus metrics.
//!
//! Pure text parsing, no VM: `wisp-bench-boot` and `wisp-run` feed it what
//! [`crate::Vm::console`] returned.
//!
//! # Clocks
//!
//! Every time in a [`BootTimeline`] is in guest seconds since boot, but from two sources:
//! - kernel lines carry their printk stamp (`[    2.529214] Run /init as init process`), the
//!   kernel's `local_clock()`;
//! - agent lines carry `t=` (and `boot_clock=` on `init started`), the agent's
//!   `CLOCK_BOOTTIME`, the clock of `/proc/uptime` too, which the floor's `/init` prints.
//!
//! Both start near zero early in the kernel's boot and tick at the same rate once the kernel
//! marks its sched_clock stable, but they are not the same clock: from then on printk stamps
//! run ahead of `CLOCK_BOOTTIME` by a constant the kernel prints
//! (`sched_clock: Marking stable (ktime, OFFSET)->(raw, offset)`, OFFSET in ns: 30 to 55 ms
//! under TCG here, negative on other kernels). [`BootTimeline::printk_ahead`] holds it and
//! [`BootTimeline::kernel_run_init_boottime`] converts, so a printk stamp can be subtracted from
//! an agent time. Host times (QEMU's spawn, an RPC's answer) are another clock altogether and
//! never appear here.
//!
//! # Lines recognised
//!
//! | field | console line |
//! |---|---|
//! | [`BootTimeline::kernel_start`] | `[    0.000000] Linux version 6.1.192 ...` |
//! | [`BootTimeline::printk_ahead`] | `[    1.449349] sched_clock: Marking stable (1392214338, 55340050)->(1543792357, -96237969)` |
//! | [`BootTimeline::kernel_run_init`] | `[    1.781430] Run /init as init process` |
//! | [`BootTimeline::init_process_start`] | `boot_clock=` of the agent's `init started` line: when `main` ran, before the logger existed |
//! | [`BootTimeline::init_started`] | `wisp-agent t=1.820476 level=info msg="init started" boot_clock=1.801614 ...` |
//! | [`BootTimeline::modules_loaded`] | `wisp-agent t=3.506481 level=info msg="kernel modules loaded" ...` (module kernels only) |
//! | [`BootTimeline::agent_ready`] | `wisp-agent t=1.890780 level=info msg="agent ready" channel=vsock:1024 pid=1` |
//! | [`BootTimeline::powering_off`] | `wisp-agent t=2.008835 level=info msg="powering off" pid=1` |
//! | [`BootTimeline::floor_uptime`] | `WISP-FLOOR uptime=2.09 0.00`, the floor `/init`'s `/proc/uptime` (10 ms steps) |
//!
//! The agent and the kernel share the serial console, so a printk can land in the middle of an
//! agent line; markers are searched anywhere in a line, and the first occurrence wins.

use std::collections::BTreeMap;

/// The kernel's message when it executes the initrd's `/init`.
pub const KERNEL_RUN_INIT: &str = "Run /init as init process";
/// The kernel's message when sched_clock becomes stable; it carries the printk-boottime offset.
pub const SCHED_CLOCK_STABLE: &str = "sched_clock: Marking stable (";
/// The prefix of every agent log line.
pub const AGENT_PREFIX: &str = "wisp-agent t=";
/// The marker the floor `/init` prints, followed by `/proc/uptime`.
pub const FLOOR_MARKER: &str = "WISP-FLOOR uptime=";

/// Guest-side boot events, in guest seconds since boot (see the [module docs](self)).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BootTimeline {
    /// printk stamp of the kernel's first line (`Linux version ...`), normally 0.
    pub kernel_start: Option<f64>,
    /// Seconds the printk clock runs ahead of `CLOCK_BOOTTIME` (the kernel's `__gtod_offset`,
    /// from `sched_clock: Marking stable`; negative when behind).
    pub printk_ahead: Option<f64>,
    /// printk stamp of `Run /init as init process`.
    pub kernel_run_init: Option<f64>,
    /// `CLOCK_BOOTTIME` when the agent's `main` started (`boot_clock=` on `init started`).
    pub init_process_start: Option<f64>,
    /// `CLOCK_BOOTTIME` of the agent's `init started` line (mounts done, logger up).
    pub init_started: Option<f64>,
    /// `CLOCK_BOOTTIME` of the agent's `kernel modules loaded` line.
    pub modules_loaded: Option<f64>,
    /// `CLOCK_BOOTTIME` of the agent's `agent ready` line: it listens on its channel.
    pub agent_ready: Option<f64>,
    /// The channel named by `agent ready` (`vsock:1024`, `serial:/dev/vport1p1`).
    pub agent_channel: Option<String>,
    /// `CLOCK_BOOTTIME` of the agent's `powering off` line.
    pub powering_off: Option<f64>,
    /// The floor `/init`'s first `/proc/uptime` field (`CLOCK_BOOTTIME`, 10 ms resolution).
    pub floor_uptime: Option<f64>,
}

/// One named instant of a [`BootTimeline`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimelineEvent {
    /// What happened.
    pub name: &'static str,
    /// Guest seconds since boot.
    pub at: f64,
}

impl BootTimeline {
    /// Reads the events out of a whole console log; lines that match nothing are ignored.
    pub fn parse(console: &str) -> BootTimeline {
        let mut timeline = BootTimeline::default();
        for raw in console.lines() {
            let line = raw.trim_end_matches('\r');
            if let Some(at) = printk_stamp_before(line, "Linux version") {
                timeline.kernel_start.get_or_insert(at);
            }
            if let Some(offset) = sched_clock_offset(line) {
                timeline.printk_ahead.get_or_insert(offset);
            }
            if let Some(at) = printk_stamp_before(line, KERNEL_RUN_INIT) {
                timeline.kernel_run_init.get_or_insert(at);
            }
            if let Some(rest) = line.split_once(FLOOR_MARKER).map(|(_, rest)| rest) {
                if let Some(uptime) = rest.split_whitespace().next().and_then(|v| v.parse().ok()) {
                    timeline.floor_uptime.get_or_insert(uptime);
                }
            }
            if let Some(record) = AgentLogLine::find(line) {
                timeline.add_agent_record(&record);
            }
        }
        timeline
    }

    fn add_agent_record(&mut self, record: &AgentLogLine) {
        match record.msg.as_str() {
            "init started" => {
                self.init_started.get_or_insert(record.t);
                if let Some(at) = record.field("boot_clock").and_then(|v| v.parse().ok()) {
                    self.init_process_start.get_or_insert(at);
                }
            }
            "kernel modules loaded" => {
                self.modules_loaded.get_or_insert(record.t);
            }
            "agent ready" if self.agent_ready.is_none() => {
                self.agent_ready = Some(record.t);
                self.agent_channel = record.field("channel").map(str::to_owned);
            }
            "powering off" => {
                self.powering_off.get_or_insert(record.t);
            }
            _ => {}
        }
    }

    /// [`BootTimeline::kernel_run_init`] on `CLOCK_BOOTTIME`, comparable with the agent's and
    /// the floor's times; the printk stamp itself when the offset is unknown.
    pub fn kernel_run_init_boottime(&self) -> Option<f64> {
        self.kernel_run_init.map(|at| at - self.printk_ahead.unwrap_or(0.0))
    }

    /// The events found, in guest-time order, each on its own clock (kernel events on printk's,
    /// the others on `CLOCK_BOOTTIME`; see [`BootTimeline::printk_ahead`]).
    pub fn events(&self) -> Vec<TimelineEvent> {
        let all = [
            ("kernel start", self.kernel_start),
            ("kernel runs /init", self.kernel_run_init),
            ("agent main() starts", self.init_process_start),
            ("agent: init started", self.init_started),
            ("agent: kernel modules loaded", self.modules_loaded),
            ("agent ready (listening)", self.agent_ready),
            ("floor /init reads uptime", self.floor_uptime),
            ("agent: powering off", self.powering_off),
        ];
        let mut events: Vec<TimelineEvent> =
            all.into_iter().filter_map(|(name, at)| at.map(|at| TimelineEvent { name, at })).collect();
        events.sort_by(|a, b| a.at.total_cmp(&b.at));
        events
    }
}

/// `__gtod_offset` in seconds from `sched_clock: Marking stable (ktime, OFFSET)->(raw, offset)`.
fn sched_clock_offset(line: &str) -> Option<f64> {
    let (_, rest) = line.split_once(SCHED_CLOCK_STABLE)?;
    let (inner, _) = rest.split_once(')')?;
    let (_, offset) = inner.split_once(',')?;
    offset.trim().parse::<i64>().ok().map(|ns| ns as f64 / 1e9)
}

/// The printk stamp of the line holding `marker`: the `[ seconds]` right before it.
fn printk_stamp_before(line: &str, marker: &str) -> Option<f64> {
    let (before, _) = line.split_once(marker)?;
    let close = before.rfind(']')?;
    let open = before[..close].rfind('[')?;
    before[open + 1..close].trim().parse().ok()
}

/// One agent log line: `wisp-agent t=SECONDS level=LEVEL msg="..." key=value ...` (logfmt, values
/// quoted as Rust string literals when they hold a space, a quote or `=`).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentLogLine {
    /// `CLOCK_BOOTTIME` seconds when the line was logged.
    pub t: f64,
    /// The level as written (`info`, `warn`, `error`, `debug`, ...).
    pub level: String,
    /// The message.
    pub msg: String,
    /// The other key/value pairs, in order.
    pub fields: Vec<(String, String)>,
}

impl AgentLogLine {
    /// The agent record in `line`, if one starts anywhere in it.
    pub fn find(line: &str) -> Option<AgentLogLine> {
        let start = line.find(AGENT_PREFIX)?;
        let pairs = logfmt_pairs(&line[start + "wisp-agent ".len()..]);
        let mut t = None;
        let mut level = None;
        let mut msg = None;
        let mut fields = Vec::new();
        for (key, value) in pairs {
            match key.as_str() {
                "t" if t.is_none() => t = value.parse().ok(),
                "level" if level.is_none() => level = Some(value),
                "msg" if msg.is_none() => msg = Some(value),
                _ => fields.push((key, value)),
            }
        }
        Some(AgentLogLine { t: t?, level: level.unwrap_or_default(), msg: msg?, fields })
    }

    /// The value of field `key`, if present.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Splits `key=value key="quoted \"value\"" ...`; stops at the first token that is not a pair.
fn logfmt_pairs(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = &rest[..eq];
        if key.is_empty() || key.contains(char::is_whitespace) {
            break;
        }
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match unquote(quoted) {
                Some(parsed) => parsed,
                None => break,
            }
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        pairs.push((key.to_owned(), value));
        rest = next.trim_start();
    }
    pairs
}

/// Reads a Rust-`Debug`-quoted string body up to its closing quote; returns it and what follows.
fn unquote(text: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &text[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '0' => out.push('\0'),
                'u' => {
                    // \u{XXXX}
                    let mut hex = String::new();
                    for (_, h) in chars.by_ref() {
                        match h {
                            '{' => {}
                            '}' => break,
                            h => hex.push(h),
                        }
                    }
                    out.push(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32).unwrap_or('\u{fffd}'));
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// A line of Prometheus text exposition that is neither a comment nor `name value`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line_no} of the metrics is not `name value`: {line:?}")]
pub struct PrometheusError {
    /// 1-based line number.
    pub line_no: usize,
    /// The line.
    pub line: String,
}

/// Parses Prometheus text exposition (`# HELP`/`# TYPE` comments, `name{labels} value [ts]`)
/// into a map from the series (name with its labels, as written) to its value.
///
/// `NaN`, `+Inf` and `-Inf` are accepted; a later sample of the same series replaces an earlier
/// one; any other line is an error, so a broken exporter does not go unnoticed.
pub fn parse_prometheus_text(text: &str) -> Result<BTreeMap<String, f64>, PrometheusError> {
    let mut samples = BTreeMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || PrometheusError { line_no: index + 1, line: raw.to_owned() };
        // The series ends at the closing brace of its labels (label values may hold spaces), or
        // at the first whitespace.
        let series_end = match (line.find('{'), line.find(char::is_whitespace)) {
            (Some(open), Some(space)) if open < space => line[open..].find('}').map(|close| open + close + 1),
            (_, space) => space,
        }
        .ok_or_else(bad)?;
        let (series, rest) = line.split_at(series_end);
        let mut fields = rest.split_whitespace();
        let value = fields.next().and_then(parse_sample_value).ok_or_else(bad)?;
        // An optional integer timestamp, and nothing else.
        match (fields.next(), fields.next()) {
            (None, _) => {}
            (Some(ts), None) if ts.parse::<i64>().is_ok() => {}
            _ => return Err(bad()),
        }
        if series.is_empty() || series.starts_with('{') {
            return Err(bad());
        }
        samples.insert(series.to_owned(), value);
    }
    Ok(samples)
}

fn parse_sample_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_console_gives_every_phase() {
        let timeline = BootTimeline::parse(AGENT_CONSOLE);
        assert_eq!(timeline.kernel_start, Some(0.0));
        assert_eq!(timeline.printk_ahead, Some(0.05534005));
        assert_eq!(timeline.kernel_run_init, Some(1.78143));
        assert!((timeline.kernel_run_init_boottime().unwrap() - 1.72608995).abs() < 1e-9);
        assert_eq!(timeline.init_process_start, Some(1.801614));
        assert_eq!(timeline.init_started, Some(1.820476));
        assert_eq!(timeline.agent_ready, Some(1.89078));
        assert_eq!(timeline.agent_channel.as_deref(), Some("vsock:1024"));
        assert_eq!(timeline.powering_off, Some(2.008835));
        assert_eq!(timeline.modules_loaded, None);
        assert_eq!(timeline.floor_uptime, None);
        let names: Vec<&str> = timeline.events().iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            [
                "kernel start",
                "kernel runs /init",
                "agent main() starts",
                "agent: init started",
                "agent ready (listening)",
                "agent: powering off"
            ]
        );
    }

    #[test]
    fn module_kernel_console_gives_the_module_phase_and_a_negative_offset() {
        let timeline = BootTimeline::parse(CLOUD_CONSOLE);
        assert_eq!(timeline.printk_ahead, Some(-0.035685299));
        assert_eq!(timeline.modules_loaded, Some(3.506481));
        assert_eq!(timeline.agent_ready, Some(3.61756));
        assert!((timeline.kernel_run_init_boottime().unwrap() - 2.716408299).abs() < 1e-9);
    }

    #[test]
    fn floor_console_gives_the_uptime_at_init() {
        let timeline = BootTimeline::parse(FLOOR_CONSOLE);
        assert_eq!(timeline.kernel_run_init, Some(2.006986));
        assert_eq!(timeline.printk_ahead, Some(0.050687117));
        assert_eq!(timeline.floor_uptime, Some(2.09));
        assert_eq!(timeline.agent_ready, None);
    }

    #[test]
    fn without_the_sched_clock_line_printk_is_taken_as_boottime() {
        let timeline = BootTimeline::parse("[    1.500000] Run /init as init process\n");
        assert_eq!(timeline.printk_ahead, None);
        assert_eq!(timeline.kernel_run_init_boottime(), Some(1.5));
    }

    #[test]
    fn crlf_and_interleaved_printk_are_tolerated() {
        let console = "[    0.000000] Linux version 6.1\r\n\
                       [    1.100000] Run /init as init process\r\n\
                       wisp-agent t=1.300000 level=info msg=\"init st[    1.300100] virtio_blk virtio1: 1/0/0\r\n\
                       wisp-agent t=1.5 level=info msg=\"agent ready\" channel=serial:/dev/vport1p1 pid=1\r\n";
        let timeline = BootTimeline::parse(console);
        assert_eq!(timeline.kernel_run_init, Some(1.1));
        // The broken line is dropped rather than misread.
        assert_eq!(timeline.init_started, None);
        assert_eq!(timeline.agent_ready, Some(1.5));
        assert_eq!(timeline.agent_channel.as_deref(), Some("serial:/dev/vport1p1"));
    }

    #[test]
    fn first_occurrence_wins() {
        let console = "wisp-agent t=1.0 level=info msg=\"agent ready\" channel=a\n\
                       wisp-agent t=9.0 level=info msg=\"agent ready\" channel=b\n";
        let timeline = BootTimeline::parse(console);
        assert_eq!((timeline.agent_ready, timeline.agent_channel.as_deref()), (Some(1.0), Some("a")));
    }

    #[test]
    fn agent_lines_unquote_their_values() {
        let line = r#"wisp-agent t=2.801000 level=warn msg="kernel command line: bad value \"loud\" for agent.log; using info" pid=1"#;
        let record = AgentLogLine::find(line).unwrap();
        assert_eq!(record.t, 2.801);
        assert_eq!(record.level, "warn");
        assert_eq!(record.msg, r#"kernel command line: bad value "loud" for agent.log; using info"#);
        assert_eq!(record.fields, [("pid".to_owned(), "1".to_owned())]);
        assert_eq!(record.field("pid"), Some("1"));
        assert_eq!(AgentLogLine::find("[    1.0] random: crng init done"), None);
        assert_eq!(AgentLogLine::find("wisp-agent t=oops level=info msg=\"x\""), None);
    }

    #[test]
    fn logfmt_handles_empty_and_escaped_values() {
        assert_eq!(
            logfmt_pairs(r#"a=1 b="" c="x\ty\u{e9}" d=z"#),
            [
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), String::new()),
                ("c".to_owned(), "x\ty\u{e9}".to_owned()),
                ("d".to_owned(), "z".to_owned())
            ]
        );
        // An unterminated quote ends the record.
        assert_eq!(logfmt_pairs(r#"a=1 b="open"#), [("a".to_owned(), "1".to_owned())]);
    }

    #[test]
    fn prometheus_text_is_parsed() {
        let metrics = parse_prometheus_text(METRICS).unwrap();
        assert_eq!(metrics["wisp_agent_resident_memory_bytes"], 1_961_984.0);
        assert_eq!(metrics["wisp_agent_threads"], 1.0);
        assert_eq!(metrics["wisp_guest_memory_total_bytes"], 232_886_272.0);
        assert_eq!(metrics["wisp_guest_uptime_seconds"], 3.104);
        assert_eq!(metrics["wisp_agent_ready_seconds"], 2.878673);
        assert_eq!(metrics[r#"wisp_rpc_total{method="Check",code="OK"}"#], 2.0);
        assert_eq!(metrics[r#"wisp_label{text="a b"}"#], 7.0);
        assert_eq!(metrics["wisp_with_ts"], 5.0);
        assert!(metrics["wisp_nan"].is_nan());
        assert_eq!(metrics["wisp_inf"], f64::INFINITY);
        assert_eq!(metrics.len(), 12);
    }

    #[test]
    fn bad_prometheus_lines_are_errors() {
        for (text, line_no) in [("a 1\nnot-a-sample\n", 2), ("x one\n", 1), ("x 1 2 3\n", 1), ("{a=\"b\"} 1\n", 1)] {
            let err = parse_prometheus_text(text).unwrap_err();
            assert_eq!(err.line_no, line_no, "{text:?}");
        }
        assert_eq!(
            parse_prometheus_text("y\n").unwrap_err().to_string(),
            "line 1 of the metrics is not `name value`: \"y\""
        );
    }

    const METRICS: &str = r#"# HELP wisp_agent_resident_memory_bytes Resident set size of the agent.
# TYPE wisp_agent_resident_memory_bytes gauge
wisp_agent_resident_memory_bytes 1961984
wisp_agent_threads 1
wisp_guest_memory_total_bytes 232886272
wisp_guest_memory_available_bytes 214003712
wisp_guest_uptime_seconds 3.104
wisp_agent_init_started_seconds 2.769356
wisp_agent_ready_seconds 2.878673

wisp_rpc_total{method="Check",code="OK"} 2
wisp_label{text="a b"} 7
wisp_with_ts 5 1700000000000
wisp_nan NaN
wisp_inf +Inf
"#;

    // Excerpts of real consoles (q35 and Debian's cloud kernel under TCG).
    const AGENT_CONSOLE: &str = "\
[    0.000000] Linux version 6.1.192 (root@vm) (gcc (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP Mon Nov 23 23:13:27 UTC 2026
[    0.000000] Command line: console=ttyS0 panic=-1 printk.time=1
[    1.449349] sched_clock: Marking stable (1392214338, 55340050)->(1543792357, -96237969)
[    1.762497] Freeing unused kernel image (initmem) memory: 764K
[    1.781430] Run /init as init process
wisp-agent t=1.820476 level=info msg=\"init started\" boot_clock=1.801614 version=0.1.0 pid=1
wisp-agent t=1.890780 level=info msg=\"agent ready\" channel=vsock:1024 pid=1
wisp-agent t=1.939399 level=info msg=\"sandbox destroyed; stopping\" role=Init pid=1
wisp-agent t=2.008835 level=info msg=\"powering off\" pid=1
[    2.068927] reboot: Power down
";

    const CLOUD_CONSOLE: &str = "\
[    2.012899] sched_clock: Marking stable (2048152674, -35685299)->(2135644045, -123176670)
[    2.680723] Run /init as init process
wisp-agent t=2.929276 level=info msg=\"init started\" boot_clock=2.862152 version=0.1.0 pid=1
wisp-agent t=3.506481 level=info msg=\"kernel modules loaded\" dir=/lib/modules/6.1.0-56-cloud-amd64 count=21 pid=1
wisp-agent t=3.617560 level=info msg=\"agent ready\" channel=vsock:1024 pid=1
";

    const FLOOR_CONSOLE: &str = "\
[    1.656632] sched_clock: Marking stable (1604136247, 50687117)->(1673612233, -18788869)
[    2.006986] Run /init as init process
WISP-FLOOR uptime=2.09 0.00
[    2.172757] reboot: Power down
";
}
