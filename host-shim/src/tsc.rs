//! The host's TSC rate, for guests under TCG.
//!
//! Under TCG a guest's TSC is the host's (QEMU reads it with `rdtsc`), and the guest kernel
//! calibrates its rate against the emulated PIT at boot. On a loaded host that calibration
//! goes wrong: with six TCG guests booting at once beside two busy loops, one guest found
//! "220.255 MHz" on a 2.6 GHz host. Its clock then ran twelve times too fast until the
//! clocksource watchdog gave up on the TSC, and every deadline in it (the agent's ttrpc
//! deadlines among them: a CreateSandbox "timed out" after 30 guest seconds within a few real
//! ones) came early. Measured once per process and passed as `tsc_early_khz`, the rate is
//! right from the first instruction; the kernel's own refinement still checks it.

use std::sync::OnceLock;
use std::time::Duration;

/// How long the measurement spans: 10 ms against a read jitter of ~1 µs is 0.01 %.
const SPAN: Duration = Duration::from_millis(10);

/// The rate, once measured.
static KHZ: OnceLock<Option<u32>> = OnceLock::new();

/// The host's TSC rate in kHz, if the TSC runs at a constant rate here; measured the first
/// time (a [`SPAN`] sleep), then remembered.
pub fn host_khz() -> Option<u32> {
    *KHZ.get_or_init(measure)
}

/// Starts [`host_khz`]'s measurement on a thread, so that a later call finds it done; once
/// measured, nothing.
pub fn measure_in_background() {
    if KHZ.get().is_none() {
        std::thread::spawn(host_khz);
    }
}

/// Whether this host's TSC ticks at one rate whatever the CPU's frequency and sleep state.
fn constant_tsc() -> bool {
    let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else { return false };
    let Some(flags) = cpuinfo.lines().find(|l| l.starts_with("flags")) else { return false };
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    has("constant_tsc") && has("nonstop_tsc")
}

#[cfg(target_arch = "x86_64")]
fn measure() -> Option<u32> {
    if !constant_tsc() {
        return None;
    }
    let (tsc0, ns0) = sample();
    std::thread::sleep(SPAN);
    let (tsc1, ns1) = sample();
    let khz = (tsc1.checked_sub(tsc0)? as u128 * 1_000_000) / (ns1.checked_sub(ns0)?.max(1) as u128);
    u32::try_from(khz).ok().filter(|&k| k > 100_000)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure() -> Option<u32> {
    None
}

/// A TSC reading and the monotonic raw clock (ns) read next to it: the pair with the
/// shortest gap of three, as the kernel's own reference reads do (a preemption in between
/// would skew it).
#[cfg(target_arch = "x86_64")]
fn sample() -> (u64, u64) {
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..3 {
        // SAFETY: rdtsc has no preconditions on x86_64 and touches no memory.
        let before = unsafe { core::arch::x86_64::_rdtsc() };
        let ns = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_RAW)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0);
        // SAFETY: as above.
        let after = unsafe { core::arch::x86_64::_rdtsc() };
        let gap = after.wrapping_sub(before);
        if gap < best.0 {
            best = (gap, before + gap / 2, ns);
        }
    }
    (best.1, best.2)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_rate_is_plausible_and_stable() {
        let first = super::measure();
        assert_eq!(first.is_some(), cfg!(target_arch = "x86_64") && super::constant_tsc(), "measured where it can be");
        let Some(first) = first else { return };
        let second = super::measure().expect("measured once, measured again");
        assert!((100_000..10_000_000).contains(&first), "{first} kHz");
        let diff = (i64::from(first) - i64::from(second)).unsigned_abs();
        assert!(diff * 100 < u64::from(first), "two measurements within 1 %: {first} vs {second}");
    }
}
