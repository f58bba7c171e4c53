//! What a wisp sandbox may leave on the host, for the tests that check nothing is left.
//!
//! Everything a sandbox creates lives under the shim's state root (`WISP_STATE_DIR`): QEMU
//! and its helpers name their state directory on their command line, shares are mounted
//! under it, sockets and logs are files in it. The probe lists what remains; the wait polls
//! it, because the shim cleans up after answering containerd.

use std::path::Path;
use std::time::{Duration, Instant};

/// Processes naming `state` on their command line, mounts under it, and its entries (but the
/// per-host `accel` cache and the VM templates, which outlive sandboxes by design), each as
/// one line.
pub fn under_state_root(state: &Path) -> Vec<String> {
    let needle = state.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(format!("process {pid}: {cmdline}"));
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    found.extend(mountinfo.lines().filter(|l| l.contains(&needle)).map(|l| format!("mount: {l}")));
    for entry in std::fs::read_dir(state).into_iter().flatten().flatten() {
        if entry.file_name() != "accel" && entry.file_name() != wisp_shim::template::DEFAULT_DIR_NAME {
            found.push(format!("state: {}", entry.path().display()));
        }
    }
    found
}

/// Polls `probe` until it finds nothing or `within` passed; what it found last.
pub fn wait_until_empty(within: Duration, mut probe: impl FnMut() -> Vec<String>) -> Vec<String> {
    let start = Instant::now();
    loop {
        let left = probe();
        if left.is_empty() || start.elapsed() >= within {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
