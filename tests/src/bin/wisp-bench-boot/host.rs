//! What the bench reads from the host: that QEMU and vhost-device-vsock are there, QEMU's
//! version and the load average for the report, and the RSS of the processes a VM runs.

use std::fs;
use std::process::Command;

use anyhow::{ensure, Result};
use wisp_tests::qemu::{qemu_binary, vhost_device_vsock_binary};

/// QEMU and, for hybrid vsock, vhost-device-vsock must be there before 20 boots fail alike.
pub fn check_host_tools() -> Result<()> {
    let qemu = qemu_binary();
    let ok = Command::new(&qemu).arg("--version").output().is_ok_and(|o| o.status.success());
    ensure!(ok, "cannot run {}: run `make deps` (or set WISP_QEMU)", qemu.display());
    let helper = vhost_device_vsock_binary();
    ensure!(
        helper.is_file(),
        "vhost-device-vsock not found on PATH or in ~/.cargo/bin: run `make deps` (or set WISP_VHOST_DEVICE_VSOCK)"
    );
    Ok(())
}

/// The three load averages of `/proc/loadavg`, `?` when unreadable.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// The first line of `qemu --version`, empty when it does not run.
pub fn qemu_version() -> String {
    Command::new(qemu_binary())
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_owned))
        .unwrap_or_default()
}

/// `/proc/PID/comm`.
pub fn proc_comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_owned())
}

/// Clock ticks per second of `/proc/PID/stat`'s times (`USER_HZ`: 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

/// CPU seconds QEMU (`pid`, all its threads, live and gone) has run so far: the boot's cost in
/// work rather than wall time, which a loaded host inflates far less (10 ms resolution).
pub fn qemu_cpu_seconds(vm: &wisp_tests::Vm) -> Option<f64> {
    let pid = vm.pids().into_iter().find(|&pid| proc_comm(pid).is_some_and(|n| n.starts_with("qemu")))?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_cpu_ticks(&stat).map(|ticks| ticks as f64 / USER_HZ)
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line, counted after the command
/// name's closing parenthesis.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // rest starts at field 3: utime is its 12th field, stime the 13th.
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// A `kB` field of `/proc/PID/status`, in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, field).map(|kib| kib as f64 * 1024.0)
}

/// A `kB` field of `/proc/PID/smaps_rollup` (e.g. `Pss`), in bytes.
pub fn proc_rollup_bytes(pid: u32, field: &str) -> Option<f64> {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    parse_status_kib(&rollup, field).map(|kib| kib as f64 * 1024.0)
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_user_plus_system() {
        let stat = "4242 (qemu-system-x86) S 1 4242 4242 0 -1 4194304 9000 0 3 0 130 27 0 0 20 0 6 0 77 1 2";
        assert_eq!(stat_cpu_ticks(stat), Some(157));
        assert_eq!(stat_cpu_ticks("1 (x) S 0 1"), None);
        let own = fs::read_to_string("/proc/self/stat").unwrap();
        assert!(stat_cpu_ticks(&own).is_some(), "{own}");
    }

    #[test]
    fn proc_status_fields_are_read_in_kib() {
        let status = "Name:\tqemu-system-x86\nVmRSS:\t  123456 kB\nRssShmem:\t    2048 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(123_456));
        assert_eq!(parse_status_kib(status, "RssShmem"), Some(2048));
        assert_eq!(parse_status_kib(status, "VmHWM"), None);
    }
}
