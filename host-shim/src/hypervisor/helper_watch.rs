//! A VM's helpers (virtiofsd, vhost-device-vsock) watched for the rest of its life: a helper
//! that dies on its own takes the VM down with it, so the sandbox ends with a reason instead of
//! hanging.
//!
//! Without its virtiofsd the guest's filesystem calls block forever; without its vsock backend
//! the agent is unreachable. QEMU runs on in both cases and the tasks look alive to containerd
//! while nothing can reach them. Kata stops the sandbox when virtiofsd quits; so do we: the
//! helper's exit becomes the VM's exit description (the first one sent wins, so the task layer
//! reports the cause, not QEMU's SIGKILL that follows) and the VMM is killed.
//!
//! The VMM is killed through a pidfd taken right after its spawn: a pid number could have been
//! reaped and reused by the time a helper dies, a pidfd cannot name another process.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use slog::{warn, Logger};
use tokio::process::Child;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::tail;

/// How long a helper asked to stop gets to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a helper that exited waits for QEMU to be seen exiting too before it is the cause.
const QEMU_EXIT_GRACE: Duration = Duration::from_millis(200);

/// The VMM process of a VM, once spawned, as a pidfd (shared with the helpers' watchers).
#[derive(Debug, Clone, Default)]
pub struct VmmHandle(Arc<Mutex<Option<OwnedFd>>>);

impl VmmHandle {
    /// Records the VMM `pid` (call right after its spawn, before anything can reap it).
    pub fn set(&self, pid: u32) {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory
        // is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        let Ok(fd) = i32::try_from(fd) else { return };
        if fd < 0 {
            return;
        }
        // SAFETY: `fd` was just returned by pidfd_open and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(fd);
        }
    }

    /// Whether the VMM has exited (or was never recorded).
    pub fn exited(&self) -> bool {
        let Ok(slot) = self.0.lock() else { return true };
        let Some(fd) = slot.as_ref() else { return true };
        // A pidfd polls readable once its process has exited.
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }

    /// Waits up to `within` for the VMM to exit; whether it did.
    pub async fn wait_exited(&self, within: Duration) -> bool {
        let start = std::time::Instant::now();
        while !self.exited() {
            if start.elapsed() >= within {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// SIGKILLs the VMM if it still runs (a reaped one is left alone, whatever its pid now is).
    pub fn kill(&self) {
        let Ok(slot) = self.0.lock() else { return };
        if let Some(fd) = slot.as_ref() {
            // SAFETY: pidfd_send_signal takes a pidfd we own, a signal number, a null siginfo
            // (allowed: the kernel then fills it as for kill(2)) and flags 0.
            unsafe {
                libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<u8>(), 0);
            }
        }
    }
}

/// One helper process whose unexpected exit ends its VM.
#[derive(Debug)]
pub struct WatchedHelper {
    stop: Option<oneshot::Sender<()>>,
    watcher: JoinHandle<()>,
}

/// Watches `child` (the helper `name`, logging to `log_path`): if it exits before
/// [`WatchedHelper::stop`], sends why on `exited` (unless the VM already ended) and kills `vmm`.
pub fn watch(
    mut child: Child,
    name: &'static str,
    log_path: PathBuf,
    exited: watch::Sender<Option<String>>,
    vmm: VmmHandle,
    log: Logger,
) -> WatchedHelper {
    let (stop, stopped) = oneshot::channel::<()>();
    let watcher = tokio::spawn(async move {
        tokio::select! {
            status = child.wait() => {
                // After QEMU (a stop, or QEMU's own death) a helper exits because its client
                // went away: QEMU's exit is the reason, not this. QEMU closes its sockets in
                // its exit, before its pidfd reads as exited: virtiofsd was seen to go first.
                if vmm.wait_exited(QEMU_EXIT_GRACE).await {
                    return;
                }
                let status = status.map_or_else(|err| format!("could not be waited for: {err}"), |s| s.to_string());
                let last = tail(&log_path, 1);
                let description = format!("{name} exited ({status}) under the running VM: {last}");
                warn!(log, "a helper of the VM died; stopping the VM"; "helper" => name, "status" => &status);
                exited.send_if_modified(|current| current.is_none() && { *current = Some(description); true });
                vmm.kill();
            }
            _ = stopped => {
                let _ = child.start_kill();
                if tokio::time::timeout(REAP_TIMEOUT, child.wait()).await.is_err() {
                    warn!(log, "a helper did not exit after SIGKILL"; "helper" => name);
                }
            }
        }
    });
    WatchedHelper { stop: Some(stop), watcher }
}

impl WatchedHelper {
    /// Kills the helper (it is expected to go now) and waits until it was reaped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(REAP_TIMEOUT * 2, &mut self.watcher).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slog::o;
    use tokio::process::Command;

    fn sleeper() -> Child {
        Command::new("sleep").arg("60").kill_on_drop(true).spawn().expect("spawn sleep")
    }

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) != Some("Z"))
            .unwrap_or(false)
    }

    /// A VMM and a watched "virtiofsd" (both sleepers); the helper is SIGKILLed at once.
    fn vmm_and_a_killed_helper() -> (Child, VmmHandle, WatchedHelper, watch::Receiver<Option<String>>) {
        let log = Logger::root(slog::Discard, o!());
        let (tx, rx) = watch::channel(None);
        let vmm_child = sleeper();
        let vmm = VmmHandle::default();
        vmm.set(vmm_child.id().expect("pid"));
        let helper = sleeper();
        let helper_pid = helper.id().expect("pid");
        let watched = watch(helper, "virtiofsd", PathBuf::from("/nonexistent.log"), tx, vmm.clone(), log);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(helper_pid as i32), nix::sys::signal::Signal::SIGKILL)
            .expect("kill the helper");
        (vmm_child, vmm, watched, rx)
    }

    #[tokio::test]
    async fn a_helper_that_dies_ends_the_vm_with_its_reason() {
        let (mut vmm_child, vmm, _watched, mut rx) = vmm_and_a_killed_helper();
        let reason = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(Option::is_some))
            .await
            .expect("a reason within 5 s")
            .expect("channel open")
            .clone()
            .unwrap_or_default();
        assert!(reason.starts_with("virtiofsd exited (signal: 9"), "{reason}");
        assert!(vmm.wait_exited(Duration::from_secs(5)).await, "the VMM was killed");
        let status = vmm_child.wait().await.expect("status");
        assert!(!status.success());
    }

    #[tokio::test]
    async fn a_stopped_helper_leaves_the_vm_alone() {
        let log = Logger::root(slog::Discard, o!());
        let (tx, rx) = watch::channel(None);
        let mut vmm_child = sleeper();
        let vmm_pid = vmm_child.id().expect("pid");
        let vmm = VmmHandle::default();
        vmm.set(vmm_pid);
        let helper = sleeper();
        let helper_pid = helper.id().expect("pid");
        watch(helper, "vhost-device-vsock", PathBuf::from("/nonexistent.log"), tx, vmm.clone(), log).stop().await;
        assert!(!alive(helper_pid), "the helper was killed and reaped");
        assert!(rx.borrow().is_none(), "a stop is not a failure");
        assert!(alive(vmm_pid) && !vmm.wait_exited(Duration::from_millis(100)).await, "the VMM runs on");
        vmm.kill();
        assert!(vmm.wait_exited(Duration::from_secs(5)).await, "kill ends the VMM");
        let _ = vmm_child.wait().await;
    }

    /// QEMU closes its sockets before its pidfd reads as exited, so at a stop virtiofsd can
    /// exit a moment before QEMU does: that is QEMU's exit, not a helper's failure.
    #[tokio::test]
    async fn a_helper_that_exits_just_before_the_vmm_is_not_the_cause() {
        let (mut vmm_child, vmm, _watched, rx) = vmm_and_a_killed_helper();
        tokio::time::sleep(Duration::from_millis(30)).await;
        vmm.kill();
        let _ = vmm_child.wait().await;
        tokio::time::sleep(QEMU_EXIT_GRACE).await;
        assert!(rx.borrow().is_none(), "no failure recorded: {:?}", rx.borrow());
    }
}
