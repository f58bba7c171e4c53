//! When marker lines first appear on a VM's console, on the host clock: the bench's main thread
//! is busy dialing or waiting for QEMU, so a thread watches the console file meanwhile.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use wisp_tests::Vm;

/// How often the console watcher looks at the console file.
const WATCH_POLL: Duration = Duration::from_millis(5);

/// Notes, on the host clock, when marker strings first appear in the console file, from a
/// thread polling every [`WATCH_POLL`], while the main thread is busy dialing or waiting.
pub struct ConsoleWatcher {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<BTreeMap<&'static str, Duration>>>,
}

impl std::fmt::Debug for ConsoleWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleWatcher").finish_non_exhaustive()
    }
}

impl ConsoleWatcher {
    pub fn start(vm: &Vm, markers: &[&'static str]) -> Self {
        let path = vm.paths().console();
        let spawned = vm.spawned_at();
        let markers = markers.to_vec();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let mut seen = BTreeMap::new();
            let mut text = String::new();
            let mut bytes = Vec::new();
            let mut offset = 0;
            loop {
                // Read the stop flag first, so the final pass sees everything written before it.
                let last_pass = stopping.load(Ordering::Acquire);
                if let Ok(mut file) = fs::File::open(&path) {
                    // The console log is a ring: a file shorter than what was read is a new one.
                    if file.metadata().is_ok_and(|m| m.len() < offset) {
                        offset = 0;
                    }
                    if file.seek(SeekFrom::Start(offset)).is_ok() {
                        bytes.clear();
                        if let Ok(n) = file.read_to_end(&mut bytes) {
                            offset += n as u64;
                            text.push_str(&String::from_utf8_lossy(&bytes));
                        }
                    }
                }
                let now = spawned.elapsed();
                for marker in &markers {
                    if !seen.contains_key(marker) && text.contains(marker) {
                        seen.insert(*marker, now);
                    }
                }
                if last_pass || seen.len() == markers.len() {
                    return seen;
                }
                thread::sleep(WATCH_POLL);
            }
        });
        Self { stop, handle: Some(handle) }
    }

    pub fn finish(mut self) -> BTreeMap<&'static str, Duration> {
        self.stop.store(true, Ordering::Release);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }
}

impl Drop for ConsoleWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
