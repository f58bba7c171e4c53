//! The one undo path of container creation and hot-plug: each step that changed the host or
//! the VM is recorded as it succeeds (a rootfs mounted, a container's shares started, a disk
//! plugged), and a failure undoes exactly those, newest first. A [`Rollback`] dropped without
//! [`Rollback::commit`] or [`Rollback::undo`] (its request cancelled half-way) undoes them on
//! a task of its own, so a cut-short Create leaves nothing behind either.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use nix::mount::{umount2, MntFlags};
use slog::{warn, Logger};

use crate::hypervisor::HypervisorError;
use crate::sandbox::Sandbox;

/// What a rollback undoes in a sandbox; the [`Sandbox`] does it, tests record it.
#[async_trait]
pub trait Undo: Send + Sync {
    /// Unmounts everything shared for `container`.
    fn unshare(&self, container: &str);
    /// Unplugs disk `id`.
    async fn unplug(&self, id: &str) -> Result<(), HypervisorError>;
}

#[async_trait]
impl Undo for Sandbox {
    fn unshare(&self, container: &str) {
        Sandbox::unshare(self, container);
    }

    async fn unplug(&self, id: &str) -> Result<(), HypervisorError> {
        self.hot_unplug(id).await
    }
}

/// One step done.
enum Step {
    /// containerd's rootfs mounts stacked at this path.
    Mounted(PathBuf),
    /// The container's shares (all released at once).
    Shared(Arc<dyn Undo>, String),
    /// A disk plugged into the VM.
    Plugged(Arc<dyn Undo>, String),
}

/// The steps done so far, undone in reverse unless committed.
pub struct Rollback {
    steps: Vec<Step>,
    log: Logger,
}

impl std::fmt::Debug for Rollback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollback").field("steps", &self.steps.len()).finish_non_exhaustive()
    }
}

impl Rollback {
    /// Nothing done yet; `log` carries the ids the work concerns.
    pub fn new(log: &Logger) -> Self {
        Self { steps: Vec::new(), log: log.clone() }
    }

    /// Records containerd's rootfs mounted at `target`.
    pub fn mounted(&mut self, target: PathBuf) {
        self.steps.push(Step::Mounted(target));
    }

    /// Records that `container`'s shares are being made in `sandbox` (recorded before the first
    /// one, so a share that fails half-way is released too).
    pub fn sharing(&mut self, sandbox: Arc<dyn Undo>, container: &str) {
        self.steps.push(Step::Shared(sandbox, container.to_owned()));
    }

    /// Records disk `id` plugged into `sandbox`.
    pub fn plugged(&mut self, sandbox: Arc<dyn Undo>, id: &str) {
        self.steps.push(Step::Plugged(sandbox, id.to_owned()));
    }

    /// The work succeeded: nothing is undone.
    pub fn commit(mut self) {
        self.steps.clear();
    }

    /// The work failed: undoes every step, newest first.
    pub async fn undo(mut self) {
        undo_all(std::mem::take(&mut self.steps), &self.log).await;
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        if self.steps.is_empty() {
            return;
        }
        let steps = std::mem::take(&mut self.steps);
        let log = self.log.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { undo_all(steps, &log).await });
            }
            Err(_) => warn!(log, "work cut short outside a runtime: not undone"; "steps" => steps.len()),
        }
    }
}

async fn undo_all(steps: Vec<Step>, log: &Logger) {
    for step in steps.into_iter().rev() {
        match step {
            Step::Mounted(target) => {
                if let Err(err) = umount2(&target, MntFlags::MNT_DETACH) {
                    warn!(log, "cannot unmount rootfs"; "path" => %target.display(), "error" => %err);
                }
            }
            Step::Shared(sandbox, container) => sandbox.unshare(&container),
            Step::Plugged(sandbox, id) => {
                if let Err(err) = sandbox.unplug(&id).await {
                    warn!(log, "cannot unplug"; "device" => &id, "error" => %err);
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records what is undone, in order.
    #[derive(Debug, Default)]
    pub(crate) struct Recorder(pub(crate) Mutex<Vec<String>>);

    #[async_trait]
    impl Undo for Recorder {
        fn unshare(&self, container: &str) {
            self.0.lock().unwrap().push(format!("unshare {container}"));
        }

        async fn unplug(&self, id: &str) -> Result<(), HypervisorError> {
            self.0.lock().unwrap().push(format!("unplug {id}"));
            Ok(())
        }
    }

    fn log() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    fn three_steps(recorder: &Arc<Recorder>) -> Rollback {
        let mut rollback = Rollback::new(&log());
        rollback.mounted("/nonexistent/wisp-rollback-test".into());
        rollback.sharing(recorder.clone(), "c1");
        rollback.plugged(recorder.clone(), "wisp-blk0");
        rollback.plugged(recorder.clone(), "wisp-blk1");
        rollback
    }

    #[tokio::test]
    async fn undo_reverses_exactly_what_was_done() {
        let recorder = Arc::new(Recorder::default());
        three_steps(&recorder).undo().await;
        assert_eq!(*recorder.0.lock().unwrap(), ["unplug wisp-blk1", "unplug wisp-blk0", "unshare c1"]);
    }

    #[tokio::test]
    async fn commit_undoes_nothing() {
        let recorder = Arc::new(Recorder::default());
        three_steps(&recorder).commit();
        tokio::task::yield_now().await;
        assert!(recorder.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_rollback_dropped_half_way_still_undoes() {
        let recorder = Arc::new(Recorder::default());
        drop(three_steps(&recorder));
        for _ in 0..100 {
            if recorder.0.lock().unwrap().len() == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(*recorder.0.lock().unwrap(), ["unplug wisp-blk1", "unplug wisp-blk0", "unshare c1"]);
    }
}
