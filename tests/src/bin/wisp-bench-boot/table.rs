//! What a person reads: the sizes and boot tables on stdout (cells `median [min..max]`, the
//! agent/floor ratio, the goals' verdicts) and the one-line progress per run on stderr.

use crate::json::{ConfigReport, HostInfo, KindReport, SizeEntry, Stats};
use crate::metrics::{key, Clock, Sample, Unit, MIB, ROWS};
use crate::runs::Kind;
use crate::stats::{READY_RATIO_GOAL, RSS_GOAL_BYTES, RSS_TARGET_BYTES};

/// The stderr line after a successful run.
pub fn progress_summary(kind: Kind, values: &Sample) -> String {
    let get = |k| values.get(k).map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}"));
    match kind {
        Kind::Floor => format!(
            "guest /init at {} s, host: WISP-FLOOR at {} s, exit at {} s",
            get(key::GUEST_READY),
            get(key::HOST_SERVING),
            get(key::HOST_EXIT)
        ),
        Kind::Agent => format!(
            "guest: agent ready at {} s; host: first Check at {} s, exit at {} s; agent RSS {}",
            get(key::GUEST_READY),
            get(key::HOST_SERVING),
            get(key::HOST_EXIT),
            values.get(key::AGENT_RSS).map_or_else(|| "n/a".to_owned(), |v| format_bytes(*v))
        ),
    }
}

fn format_bytes(bytes: f64) -> String {
    if bytes >= MIB {
        format!("{:.2} MiB", bytes / MIB)
    } else {
        format!("{:.0} KiB", bytes / 1024.0)
    }
}

fn format_value(unit: Unit, v: f64) -> String {
    match unit {
        Unit::Seconds => format!("{v:.3}"),
        Unit::Bytes => format_bytes(v),
        Unit::Count => format!("{v:.0}"),
    }
}

/// `median [min..max]`, or `n/a`.
fn format_stats(unit: Unit, stats: Option<&Stats>) -> String {
    match stats {
        None => "n/a".to_owned(),
        Some(s) if s.n == 1 || s.min == s.max => format_value(unit, s.median),
        Some(s) => match unit {
            Unit::Bytes => {
                format!("{} [{:.2}..{:.2}]", format_bytes(s.median), s.min / MIB, s.max / MIB)
            }
            _ => format!(
                "{} [{}..{}]",
                format_value(unit, s.median),
                format_value(unit, s.min),
                format_value(unit, s.max)
            ),
        },
    }
}

/// The SIZES table.
pub fn print_sizes(sizes: &[SizeEntry]) {
    println!("SIZES");
    println!("  {:<38} {:>12} {:>10}  target", "artifact", "bytes", "MiB");
    for s in sizes {
        let target = s.target_bytes.map_or_else(String::new, |t| {
            let verdict = if s.bytes <= t { "ok" } else { "OVER" };
            format!("<= {:.1} MiB  {verdict}", t as f64 / MIB)
        });
        let line = format!("  {:<38} {:>12} {:>10.2}  {target}", s.name, s.bytes, s.bytes as f64 / MIB);
        println!("{}", line.trim_end());
    }
}

/// The BOOTS tables, one per configuration, with its goals and failed runs.
pub fn print_boots(host: &HostInfo, runs: u32, reports: &[ConfigReport]) {
    println!(
        "\nBOOTS  accel {}, {} host cpus, load average before {} / after {}",
        host.accel, host.cpus, host.loadavg_before, host.loadavg_after
    );
    println!("  {runs} runs per configuration and kind; cells are median [min..max], seconds unless a size;");
    println!("  clocks: printk = guest kernel stamps, boot = guest CLOCK_BOOTTIME, host = host monotonic since");
    println!("  QEMU's spawn; a/f = agent median / floor median");
    for report in reports {
        let ok = |k: &KindReport| format!("{}/{}", k.runs.len(), k.runs.len() + k.failures.len());
        println!(
            "\n{} ({}): floor runs ok {}, agent runs ok {}",
            report.name,
            report.description,
            ok(&report.floor),
            ok(&report.agent)
        );
        println!("  {:<43} {:<6} {:<25} {:<25} {:>6}", "phase", "clock", "floor", "agent", "a/f");
        for row in ROWS {
            let agent = row.agent.and_then(|k| report.agent.summary.get(k));
            // A row no run of either kind produced (modules on our kernel) is left out.
            if agent.is_none() && row.floor.and_then(|k| report.floor.summary.get(k)).is_none() {
                continue;
            }
            let clock = match row.clock {
                Clock::Printk => "printk",
                Clock::Boot => "boot",
                Clock::Both => "p-boot",
                Clock::Host => "host",
                Clock::None => "",
            };
            let floor =
                row.floor.map_or_else(|| "-".to_owned(), |k| format_stats(row.unit, report.floor.summary.get(k)));
            let ratio = row.floor.and(row.agent).and_then(|k| report.ratios.get(k));
            let ratio = ratio.map_or_else(String::new, |r| format!("{r:.3}"));
            let agent = format_stats(row.unit, agent);
            println!("  {:<43} {:<6} {:<25} {:<25} {:>6}", row.label, clock, floor, agent, ratio);
        }
        let g = &report.goals;
        let r = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}"));
        let verdict = |met: Option<bool>| match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "n/a",
        };
        println!(
            "  GOAL agent ready / floor /init (guest) <= {READY_RATIO_GOAL}: {} ({}); minimums {}, /init part only {}",
            r(g.ready_ratio_medians),
            verdict(g.ready_ratio_medians.map(|v| v <= READY_RATIO_GOAL)),
            r(g.ready_ratio_minimums),
            r(g.ready_ratio_init_part),
        );
        println!(
            "       first Check / WISP-FLOOR line (host): {}; minimums {}",
            r(g.serving_ratio_medians),
            r(g.serving_ratio_minimums)
        );
        let rss = g.agent_rss_median_bytes;
        let rss_verdict = match rss {
            None => "n/a",
            Some(v) if v <= RSS_GOAL_BYTES => "goal and target met",
            Some(v) if v <= RSS_TARGET_BYTES => "goal MISSED, target met",
            Some(_) => "MISSED",
        };
        println!(
            "       agent RSS <= 2 MiB (goal) / 3 MiB (target): {} ({rss_verdict})",
            rss.map_or_else(|| "n/a".to_owned(), format_bytes)
        );
        for (kind, k) in [("floor", &report.floor), ("agent", &report.agent)] {
            for f in &k.failures {
                println!("  FAILED {kind} run {}: {}", f.run, f.error.lines().next().unwrap_or_default());
            }
        }
    }
}
