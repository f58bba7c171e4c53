//! What a person reads: the sizes and boot tables on stdout (cells `median [min..max]`, the
//! agent's ratio to each floor, the goals' verdicts) and the one-line progress per run on stderr.

use crate::json::{ConfigReport, FloorRatios, HostInfo, KindReport, SizeEntry, Stats};
use crate::metrics::{key, Clock, Sample, Unit, MIB, ROWS};
use crate::runs::Kind;
use crate::stats::{READY_RATIO_GOAL, RSS_GOAL_BYTES, RSS_TARGET_BYTES};

/// The stderr line after a successful run.
pub fn progress_summary(kind: Kind, values: &Sample) -> String {
    let get = |k| values.get(k).map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}"));
    match kind {
        Kind::TrueFloor => format!(
            "guest listening at {} s; host: echo at {} s, exit at {} s",
            get(key::GUEST_READY),
            get(key::HOST_SERVING),
            get(key::HOST_EXIT)
        ),
        Kind::BusyboxFloor => format!(
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
    println!("  QEMU's spawn; TRUE = the true floor (floor-init/: a 3 KiB static /init that echoes on vsock");
    println!("  1024), BUSYBOX = the busybox floor (a shell script in a 1 MB initrd); a/T, a/B = agent median /");
    println!("  true floor median, / busybox floor median. All three boot the same QEMU command line bar -initrd.");
    for report in reports {
        let ok = |k: &KindReport| format!("{}/{}", k.runs.len(), k.runs.len() + k.failures.len());
        println!(
            "\n{} ({}): runs ok: true floor {}, busybox floor {}, agent {}",
            report.name,
            report.description,
            ok(&report.true_floor),
            ok(&report.busybox_floor),
            ok(&report.agent)
        );
        println!(
            "  {:<43} {:<6} {:<24} {:<24} {:<24} {:>6} {:>6}",
            "phase", "clock", "TRUE floor", "BUSYBOX floor", "agent", "a/T", "a/B"
        );
        for row in ROWS {
            let agent = row.agent.and_then(|k| report.agent.summary.get(k));
            let floors = [&report.true_floor, &report.busybox_floor];
            // A row no run of any kind produced (modules on our kernel) is left out.
            if agent.is_none() && floors.iter().all(|f| row.floor.and_then(|k| f.summary.get(k)).is_none()) {
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
                |f: &KindReport| row.floor.map_or_else(|| "-".to_owned(), |k| format_stats(row.unit, f.summary.get(k)));
            let ratio = |ratios: &std::collections::BTreeMap<&'static str, f64>| {
                row.floor.and(row.agent).and_then(|k| ratios.get(k)).map_or_else(String::new, |r| format!("{r:.3}"))
            };
            println!(
                "  {:<43} {:<6} {:<24} {:<24} {:<24} {:>6} {:>6}",
                row.label,
                clock,
                floor(&report.true_floor),
                floor(&report.busybox_floor),
                format_stats(row.unit, agent),
                ratio(&report.ratios_true_floor),
                ratio(&report.ratios_busybox_floor)
            );
        }
        let g = &report.goals;
        let r = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}"));
        let verdict = |met: Option<bool>| match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "n/a",
        };
        let t = &g.true_floor;
        println!(
            "  GOAL first Check / TRUE floor echo (host clock since QEMU's spawn) <= {READY_RATIO_GOAL}: {} ({}); minimums {}",
            r(t.serving_ratio_medians),
            verdict(t.serving_ratio_medians.map(|v| v <= READY_RATIO_GOAL)),
            r(t.serving_ratio_minimums)
        );
        println!(
            "       agent ready / TRUE floor listening (guest clock, blind to what happens before printk 0): {}; minimums {}, /init part only {}",
            r(t.ready_ratio_medians),
            r(t.ready_ratio_minimums),
            r(t.ready_ratio_init_part),
        );
        let b: &FloorRatios = &g.busybox_floor;
        println!(
            "       (busybox floor: first Check / WISP-FLOOR line {}; guest ready {}, minimums {}, /init part only {})",
            r(b.serving_ratio_medians),
            r(b.ready_ratio_medians),
            r(b.ready_ratio_minimums),
            r(b.ready_ratio_init_part)
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
        for (kind, k) in
            [("true floor", &report.true_floor), ("busybox floor", &report.busybox_floor), ("agent", &report.agent)]
        {
            for f in &k.failures {
                println!("  FAILED {kind} run {}: {}", f.run, f.error.lines().next().unwrap_or_default());
            }
        }
    }
}
