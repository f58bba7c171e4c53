//! The SVG chart (`target/bench/boot.svg`): per configuration, a bar per floor and the agent's,
//! each stacked from the host-clock phases (medians of the times since QEMU's spawn), so a
//! person sees where the time goes and what the agent adds over the floor. Written by hand:
//! a few rects and texts, no plotting dependency.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use crate::json::{ConfigReport, KindReport};
use crate::metrics::key;

/// The phases, in order: the key whose median ends each, its legend, its colour.
const PHASES: &[(&str, &str, &str)] = &[
    (key::HOST_BEFORE_GUEST_CLOCK, "QEMU spawn -> kernel start", "#9e9e9e"),
    (key::HOST_RUN_INIT_SEEN, "kernel -> /init entered", "#5c6bc0"),
    (key::HOST_SERVING, "/init -> agent ready (floors: echo / line)", "#26a69a"),
    (key::HOST_CONTAINER_STARTED, "-> container started", "#ffa726"),
    (key::HOST_FIRST_OUTPUT, "-> first output", "#ef5350"),
    (key::HOST_CONTAINER_EXIT, "-> container exit", "#ab47bc"),
    (key::HOST_EXIT, "-> VM gone", "#8d6e63"),
];

const WIDTH: f64 = 900.0;
const LEFT: f64 = 170.0;
const BAR: f64 = 18.0;
const GAP: f64 = 8.0;

/// One bar segment: start and end in seconds, and the index of its phase in [`PHASES`].
pub type Segment = (f64, f64, usize);

/// The segments of one bar: (start, end, phase index) in seconds; a phase whose key is missing
/// is skipped, one ending before its predecessor is drawn empty.
pub fn segments(kind: &KindReport) -> Vec<Segment> {
    let mut at = 0.0;
    let mut out = Vec::new();
    for (i, (k, _, _)) in PHASES.iter().enumerate() {
        if let Some(s) = kind.summary.get(*k) {
            let end = s.median.max(at);
            out.push((at, end, i));
            at = end;
        }
    }
    out
}

/// Renders the chart.
pub fn render(reports: &[ConfigReport], runs: u32) -> String {
    let bars: Vec<(String, Vec<Segment>)> = reports
        .iter()
        .flat_map(|r| {
            [
                (format!("{} true floor", r.name), segments(&r.true_floor)),
                (format!("{} busybox floor", r.name), segments(&r.busybox_floor)),
                (format!("{} agent", r.name), segments(&r.agent)),
            ]
        })
        .collect();
    let max = bars.iter().flat_map(|(_, s)| s.last().map(|l| l.1)).fold(0.1_f64, f64::max);
    let scale = (WIDTH - LEFT - 60.0) / max;
    let top = 40.0;
    let legend_y = top + bars.len() as f64 * (BAR + GAP) + 30.0;
    let height = legend_y + PHASES.len() as f64 * 18.0 + 20.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="14">wisp boot phases: medians of {runs} run(s), host monotonic clock, seconds since QEMU's spawn</text>"#
    );
    for (row, (label, segs)) in bars.iter().enumerate() {
        let y = top + row as f64 * (BAR + GAP);
        let _ = writeln!(
            svg,
            r#"<text x="{:.0}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + BAR - 5.0,
            esc(label)
        );
        for &(start, end, phase) in segs {
            let (_, name, colour) = PHASES[phase];
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{BAR}" fill="{colour}"><title>{}: {:.3} s (ends at {:.3} s)</title></rect>"#,
                LEFT + start * scale,
                (end - start) * scale,
                esc(name),
                end - start,
                end
            );
        }
        if let Some(&(_, end, _)) = segs.last() {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}">{end:.2} s</text>"#,
                LEFT + end * scale + 4.0,
                y + BAR - 5.0
            );
        }
    }
    for (i, (_, name, colour)) in PHASES.iter().enumerate() {
        let y = legend_y + i as f64 * 18.0;
        let _ = writeln!(svg, r#"<rect x="{LEFT}" y="{:.1}" width="12" height="12" fill="{colour}"/>"#, y - 10.0);
        let _ = writeln!(svg, r#"<text x="{:.0}" y="{y:.1}">{}</text>"#, LEFT + 18.0, esc(name));
    }
    svg.push_str("</svg>\n");
    svg
}

/// Writes the chart to `path`.
pub fn write_svg(path: &Path, reports: &[ConfigReport], runs: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, render(reports, runs)).with_context(|| format!("writing {}", path.display()))
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Stats;

    fn kind(values: &[(&'static str, f64)]) -> KindReport {
        let mut k = KindReport::default();
        for &(key, median) in values {
            k.summary.insert(key, Stats { n: 1, min: median, median, max: median });
        }
        k
    }

    #[test]
    fn segments_stack_in_phase_order_and_skip_missing_phases() {
        let floor = kind(&[(key::HOST_BEFORE_GUEST_CLOCK, 0.2), (key::HOST_RUN_INIT_SEEN, 0.9), (key::HOST_EXIT, 1.1)]);
        assert_eq!(segments(&floor), [(0.0, 0.2, 0), (0.2, 0.9, 1), (0.9, 1.1, 6)]);
        // A later phase whose median is earlier (noise) is drawn empty, never backwards.
        let odd = kind(&[(key::HOST_RUN_INIT_SEEN, 0.9), (key::HOST_SERVING, 0.8)]);
        assert_eq!(segments(&odd), [(0.0, 0.9, 1), (0.9, 0.9, 2)]);
    }

    #[test]
    fn chart_has_a_bar_per_kind_and_configuration_and_escapes_text() {
        let report = |name| ConfigReport {
            name,
            description: String::new(),
            machine: "q35",
            kernel: "/k".into(),
            initrd: None,
            true_floor_initrd: None,
            busybox_floor_initrd: None,
            qemu_command_line: String::new(),
            true_floor: kind(&[(key::HOST_SERVING, 0.8), (key::HOST_EXIT, 0.9)]),
            busybox_floor: kind(&[(key::HOST_EXIT, 1.0)]),
            agent: kind(&[(key::HOST_SERVING, 1.2), (key::HOST_EXIT, 1.5)]),
            ratios_true_floor: Default::default(),
            ratios_busybox_floor: Default::default(),
            goals: Default::default(),
        };
        let svg = render(&[report("q35"), report("a<b")], 3);
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"), "{svg}");
        assert_eq!(svg.matches("<title>").count(), 10, "2 + 1 + 2 segments per configuration");
        assert!(svg.contains("a&lt;b agent") && svg.contains("a&lt;b true floor"), "{svg}");
        assert!(svg.contains("medians of 3 run(s)"), "{svg}");
        assert!(svg.contains("1.50 s"), "{svg}");
    }
}
