//! OOM-kill events of one cgroup as an async stream, and a fan-in of many.
//!
//! v1: the kernel's memory-cgroup notification API: an eventfd registered
//! through `cgroup.event_control` against `memory.oom_control`, which fires when
//! the cgroup hits its limit (and once more when the cgroup is removed). v2: an
//! inotify watch on `memory.events`, which the kernel touches when a counter
//! changes, with a slow poll as a safety net. Either way the number reported is
//! the increase of the `oom_kill` counter (in `memory.oom_control` on v1 kernels
//! since 4.13, in `memory.events` on v2), so [`OomEvents::next`] yields exactly
//! once per process the OOM killer took in this cgroup; a v1 kernel without the
//! counter yields once per notification.
//!
//! [`OomWatcher`] merges the streams of every container into one queue of
//! container ids: GetOOMEvent is `watcher.next().await`.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::stats::flat_keyed;
use super::CgroupError;

/// How often v2 re-reads `memory.events` when inotify said nothing.
const V2_POLL: Duration = Duration::from_secs(1);

/// How many 10 ms rounds v1 waits for the `oom_kill` counter after a notification.
const V1_KILL_WAIT_TRIES: u32 = 50;

/// OOM kills of one cgroup; see the module docs.
#[derive(Debug)]
pub struct OomEvents {
    dir: PathBuf,
    v2: bool,
    source: Source,
    /// The `oom_kill` counter last seen (None: this kernel has none).
    last: Option<u64>,
    /// Kills counted but not yet yielded.
    pending: u64,
    /// v1 notifications yielded without a counter increase.
    unmatched: u64,
}

#[derive(Debug)]
enum Source {
    /// The eventfd, and the `memory.oom_control` it is registered against (the
    /// registration lives as long as that file stays open).
    V1 {
        efd: AsyncFd<EventFd>,
        _oom_control: File,
    },
    V2 {
        inotify: AsyncFd<InotifyFd>,
    },
}

/// Inotify is `AsFd` only; `AsyncFd` wants `AsRawFd`.
#[derive(Debug)]
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// The `oom_kill` counter of the memory cgroup at `dir`, if the file has one.
pub(super) fn oom_kill_count(dir: &Path, v2: bool) -> Result<Option<u64>, std::io::Error> {
    let file = if v2 { "memory.events" } else { "memory.oom_control" };
    Ok(flat_keyed(&std::fs::read_to_string(dir.join(file))?).get("oom_kill").copied())
}

impl OomEvents {
    /// Starts watching; needs a tokio runtime (the fd is registered with its reactor).
    pub(super) fn new(dir: &Path, v2: bool) -> Result<OomEvents, CgroupError> {
        let io = |path: PathBuf| move |source: std::io::Error| CgroupError::Io { path, source };
        if tokio::runtime::Handle::try_current().is_err() {
            // Registering without a reactor would panic; the agent is PID 1.
            let e = std::io::Error::other("OOM events need a tokio runtime");
            return Err(io(dir.to_owned())(e));
        }
        let last = oom_kill_count(dir, v2).map_err(io(dir.to_owned()))?;
        let source = if v2 {
            let events = dir.join("memory.events");
            let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
                .map_err(|e| io(events.clone())(e.into()))?;
            inotify.add_watch(&events, AddWatchFlags::IN_MODIFY).map_err(|e| io(events.clone())(e.into()))?;
            Source::V2 { inotify: register(InotifyFd(inotify)).map_err(io(events))? }
        } else {
            let control = dir.join("memory.oom_control");
            let oom_control = File::open(&control).map_err(io(control.clone()))?;
            let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(|e| io(control.clone())(e.into()))?;
            let registration = format!("{} {}", efd.as_raw_fd(), oom_control.as_raw_fd());
            super::write_file(&dir.join("cgroup.event_control"), &registration)?;
            Source::V1 { efd: register(efd).map_err(io(control))?, _oom_control: oom_control }
        };
        Ok(OomEvents { dir: dir.to_owned(), v2, source, last, pending: 0, unmatched: 0 })
    }

    /// Waits for the next OOM kill. `None` once the cgroup is gone.
    pub async fn next(&mut self) -> Option<()> {
        loop {
            if self.pending > 0 {
                self.pending -= 1;
                return Some(());
            }
            let notified = match &self.source {
                Source::V1 { efd, .. } => wait_eventfd(efd).await,
                Source::V2 { inotify } => wait_inotify(inotify).await,
            };
            if !notified {
                return None;
            }
            // The cgroup's removal also notifies; its files are gone by then.
            let Ok(mut count) = oom_kill_count(&self.dir, self.v2) else { return None };
            if !self.v2 {
                // v1 notifies when the cgroup enters OOM, just before the killer
                // picks a victim: give the counter a moment to move.
                let mut tries = 0;
                while count.is_some() && count <= self.last && tries < V1_KILL_WAIT_TRIES {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let Ok(c) = oom_kill_count(&self.dir, false) else { return None };
                    count = c;
                    tries += 1;
                }
            }
            let increase = match (count, self.last) {
                (Some(now), Some(before)) => now.saturating_sub(before),
                (Some(now), None) => now,
                (None, _) => 0,
            };
            if increase > 0 {
                // Kills already reported as bare notifications are not reported twice.
                let unmatched = std::mem::take(&mut self.unmatched);
                self.pending += increase.saturating_sub(unmatched);
            } else if !self.v2 {
                // An OOM without a (visible) kill: the OOM killer is disabled, or this
                // kernel has no counter. Kata reports the notification; so do we.
                self.pending += 1;
                self.unmatched += 1;
            }
            if count.is_some() {
                self.last = count;
            }
        }
    }
}

/// Registers an owned fd with the runtime's reactor, for read readiness only.
fn register<T: AsRawFd>(owned: T) -> Result<AsyncFd<T>, std::io::Error> {
    // SAFETY: `owned` (an EventFd or an Inotify) owns its descriptor, which stays
    // open and unchanged until the AsyncFd that now owns `owned` is dropped; its
    // `as_raw_fd` always returns that descriptor.
    unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }.map_err(std::io::Error::from)
}

/// Waits until the eventfd counts a notification; false when the fd failed.
async fn wait_eventfd(efd: &AsyncFd<EventFd>) -> bool {
    loop {
        let Ok(mut guard) = efd.readable().await else { return false };
        match guard.try_io(|fd| fd.get_ref().read().map_err(std::io::Error::from)) {
            Ok(Ok(_)) => return true,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Ok(Err(_)) => return false,
            Err(_would_block) => continue,
        }
    }
}

/// Waits until `memory.events` changed or the poll interval passed (both mean
/// "re-read the counter"); false when the fd failed.
async fn wait_inotify(inotify: &AsyncFd<InotifyFd>) -> bool {
    let readable = async {
        loop {
            let Ok(mut guard) = inotify.readable().await else { return false };
            match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(std::io::Error::from)) {
                Ok(Ok(_)) => return true,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Ok(Err(_)) => return false,
                Err(_would_block) => continue,
            }
        }
    };
    tokio::select! {
        ok = readable => ok,
        () = tokio::time::sleep(V2_POLL) => true,
    }
}

/// Merges the OOM streams of many containers into one queue of container ids.
#[derive(Debug, Clone)]
pub struct OomWatcher {
    tx: mpsc::UnboundedSender<String>,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>>,
    tasks: Arc<std::sync::Mutex<HashMap<String, tokio::task::AbortHandle>>>,
}

impl Default for OomWatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl OomWatcher {
    pub fn new() -> OomWatcher {
        let (tx, rx) = mpsc::unbounded_channel();
        OomWatcher { tx, rx: Arc::new(tokio::sync::Mutex::new(rx)), tasks: Arc::default() }
    }

    /// Queues `container_id` once per OOM kill in `events` until the cgroup is
    /// gone or [`unwatch`](Self::unwatch) is called. Needs a tokio runtime.
    pub fn watch(&self, container_id: &str, mut events: OomEvents) {
        let tx = self.tx.clone();
        let id = container_id.to_owned();
        let tasks = Arc::clone(&self.tasks);
        let task = tokio::spawn(async move {
            while events.next().await.is_some() {
                if tx.send(id.clone()).is_err() {
                    break;
                }
            }
            if let Ok(mut t) = tasks.lock() {
                t.remove(&id);
            }
        });
        if let Ok(mut t) = self.tasks.lock() {
            if let Some(old) = t.insert(container_id.to_owned(), task.abort_handle()) {
                old.abort();
            }
        }
    }

    /// Stops watching a container (RemoveContainer).
    pub fn unwatch(&self, container_id: &str) {
        if let Some(task) = self.tasks.lock().ok().and_then(|mut t| t.remove(container_id)) {
            task.abort();
        }
    }

    /// The id of the container with the next OOM kill (GetOOMEvent). Waits until
    /// there is one; concurrent callers are served one event each, in turn.
    pub async fn next(&self) -> Option<String> {
        self.rx.lock().await.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{write, FakeTree};
    use super::*;

    #[test]
    fn oom_kill_counter_from_v1_and_v2_files() {
        let t = FakeTree::v1();
        let _m = t.create("/c1", None);
        let d = t.dir("memory", "c1");
        write(&d, "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n");
        assert_eq!(oom_kill_count(&d, false).unwrap(), Some(3));
        write(&d, "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n");
        assert_eq!(oom_kill_count(&d, false).unwrap(), None, "kernels before 4.13 have no counter");
        write(&d, "memory.events", "low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\n");
        assert_eq!(oom_kill_count(&d, true).unwrap(), Some(1));
        assert!(oom_kill_count(&d.join("gone"), true).is_err());
    }

    #[tokio::test]
    async fn v2_yields_once_per_kill_and_ends_when_the_cgroup_goes() {
        let t = FakeTree::v2();
        let m = t.create("/c1", None);
        let d = t.dir("", "c1");
        write(&d, "memory.events", "oom 1\noom_kill 1\n");
        let watcher = OomWatcher::new();
        watcher.watch("c1", m.oom_events().unwrap());
        // Two kills after the watch started (the one before it is history).
        write(&d, "memory.events", "oom 3\noom_kill 3\n");
        for _ in 0..2 {
            let id = tokio::time::timeout(Duration::from_secs(3), watcher.next()).await.expect("an OOM event");
            assert_eq!(id.as_deref(), Some("c1"));
        }
        assert!(tokio::time::timeout(Duration::from_millis(100), watcher.next()).await.is_err(), "exactly two events");
        let mut events = m.oom_events().unwrap();
        std::fs::remove_file(d.join("memory.events")).unwrap();
        let end = tokio::time::timeout(Duration::from_secs(3), events.next()).await.expect("the stream ends");
        assert_eq!(end, None);
    }
}
