//! The numbers the runs add up to: min/median/max per metric and kind, the agent/floor ratios of
//! medians, and the goals they are held against.

use std::collections::BTreeMap;

use crate::json::{ConfigReport, FloorRatios, Goals, KindReport, Stats};
use crate::metrics::{key, MIB, ROWS};

/// Target: agent RSS when idle (the goal; the project's is 3 MiB).
pub const RSS_GOAL_BYTES: f64 = 2.0 * MIB;
/// Target: agent RSS when idle (the project's).
pub const RSS_TARGET_BYTES: f64 = 3.0 * MIB;
/// Goal: the agent's first Check answered / the true floor's echo, host clock since QEMU's
/// spawn (the guest clock cannot see QEMU loading the initrd nor the kernel decompressing).
pub const READY_RATIO_GOAL: f64 = 1.03;

impl ConfigReport {
    /// Fills the summaries, ratios and goals from the runs.
    pub fn summarize(&mut self) {
        self.true_floor.summarize();
        self.busybox_floor.summarize();
        self.agent.summarize();
        self.ratios_true_floor = ratios(&self.true_floor, &self.agent);
        self.ratios_busybox_floor = ratios(&self.busybox_floor, &self.agent);
        self.goals = Goals {
            true_floor: FloorRatios::of(&self.true_floor, &self.agent),
            busybox_floor: FloorRatios::of(&self.busybox_floor, &self.agent),
            ready_ratio_goal: READY_RATIO_GOAL,
            agent_rss_median_bytes: self.agent.median(key::AGENT_RSS),
            agent_rss_goal_bytes: RSS_GOAL_BYTES,
            agent_rss_target_bytes: RSS_TARGET_BYTES,
        };
    }
}

/// Agent median / `floor` median, per row both have.
fn ratios(floor: &KindReport, agent: &KindReport) -> BTreeMap<&'static str, f64> {
    ROWS.iter()
        // A ratio of two clock offsets means nothing.
        .filter(|row| row.agent != Some(key::GUEST_PRINTK_AHEAD))
        .filter_map(|row| {
            let (f, a) = (row.floor?, row.agent?);
            Some((a, agent.median(a)? / floor.median(f)?))
        })
        .collect()
}

impl FloorRatios {
    fn of(floor: &KindReport, agent: &KindReport) -> FloorRatios {
        let ratio = |k: &str, pick: fn(&Stats) -> f64| Some(pick(agent.summary.get(k)?) / pick(floor.summary.get(k)?));
        let init_part = (|| {
            let floor_ready = floor.median(key::GUEST_READY)?;
            let extra = agent.median(key::GUEST_EXEC_TO_READY)? - floor.median(key::GUEST_EXEC_TO_READY)?;
            Some((floor_ready + extra) / floor_ready)
        })();
        FloorRatios {
            ready_ratio_medians: ratio(key::GUEST_READY, |s| s.median),
            ready_ratio_minimums: ratio(key::GUEST_READY, |s| s.min),
            ready_ratio_init_part: init_part,
            serving_ratio_medians: ratio(key::HOST_SERVING, |s| s.median),
            serving_ratio_minimums: ratio(key::HOST_SERVING, |s| s.min),
        }
    }
}

impl Stats {
    fn of(values: &[f64]) -> Option<Stats> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        Some(Stats { n, min: sorted[0], median, max: sorted[n - 1] })
    }
}

impl KindReport {
    fn summarize(&mut self) {
        let mut by_key: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        for run in &self.runs {
            for (&k, &v) in &run.values {
                by_key.entry(k).or_default().push(v);
            }
        }
        self.summary = by_key.into_iter().filter_map(|(k, values)| Stats::of(&values).map(|s| (k, s))).collect();
    }

    fn median(&self, key: &str) -> Option<f64> {
        self.summary.get(key).map(|s| s.median)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::RunRecord;

    #[test]
    fn stats_are_min_median_max_of_finite_values() {
        let s = Stats::of(&[3.0, 1.0, 2.0, f64::NAN]).unwrap();
        assert_eq!((s.n, s.min, s.median, s.max), (3, 1.0, 2.0, 3.0));
        let s = Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Stats::of(&[]).is_none());
    }

    fn kind_with(samples: &[&[(&'static str, f64)]]) -> KindReport {
        let mut kind = KindReport::default();
        for (i, values) in samples.iter().enumerate() {
            let values = values.iter().copied().collect();
            kind.runs.push(RunRecord { run: i as u32 + 1, values, metrics: BTreeMap::new(), notes: Vec::new() });
        }
        kind.summarize();
        kind
    }

    #[test]
    fn goals_compare_medians_minimums_and_the_init_part() {
        use key::{AGENT_RSS, GUEST_EXEC_TO_READY as EXEC, GUEST_READY as READY, HOST_SERVING as SERVING};
        let floor = kind_with(&[
            &[(READY, 2.0), (EXEC, 0.10), (SERVING, 2.5)],
            &[(READY, 1.5), (EXEC, 0.12), (SERVING, 2.0)],
            &[(READY, 2.5), (EXEC, 0.20), (SERVING, 3.0)],
        ]);
        let agent = kind_with(&[
            &[(READY, 2.2), (EXEC, 0.15), (SERVING, 2.6), (AGENT_RSS, 1.5 * MIB)],
            &[(READY, 1.8), (EXEC, 0.16), (SERVING, 2.2), (AGENT_RSS, 1.7 * MIB)],
        ]);
        let goals = FloorRatios::of(&floor, &agent);
        assert_eq!(goals.ready_ratio_medians, Some(2.0 / 2.0));
        assert_eq!(goals.ready_ratio_minimums, Some(1.8 / 1.5));
        // Floor median 2.0 plus the agent's extra 0.155 - 0.12 after /init.
        assert!((goals.ready_ratio_init_part.unwrap() - 2.035 / 2.0).abs() < 1e-12);
        assert!((goals.serving_ratio_medians.unwrap() - 2.4 / 2.5).abs() < 1e-12);
        assert_eq!(agent.median(AGENT_RSS), Some(1.6 * MIB));
        let none = FloorRatios::of(&KindReport::default(), &agent);
        assert_eq!((none.ready_ratio_medians, none.ready_ratio_init_part), (None, None));
    }
}
