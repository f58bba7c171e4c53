//! One container: its spec, its state (created, running, stopped), its
//! processes (the init and the execs), and what it owns on disk.
//!
//! [`create`](create::create) builds one from a CreateContainer request; the
//! methods here are the other lifecycle verbs. The sandbox keeps the registry
//! of containers; a container never looks at the others.

pub mod create;
pub mod exec;
pub mod id;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use oci_spec::runtime::{ContainerState, Hook, Spec, State, StateBuilder};

use crate::cgroups::CgroupManager;
use crate::error::AgentError;
use crate::launch::{self, StartHandle};
use crate::process::{reaper, ExitStatus, ExitTable, Process};
use crate::storage::Mounted;

pub use create::{create, CreateParams, GuestHooks, PidNs};
pub use exec::exec;

/// Where a container is in its life, as far as the RPCs care.
#[derive(Debug)]
enum Phase {
    /// The init waits for StartContainer.
    Created(StartHandle),
    /// StartContainer ran (the init may have exited since).
    Started,
    /// StartContainer failed; only removal is left.
    Failed,
}

#[derive(Debug)]
pub struct Container {
    pub id: String,
    log: slog::Logger,
    spec: Spec,
    /// The container's state directory (config.json; the bundle hooks see).
    bundle: PathBuf,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Exec>>>,
    phase: tokio::sync::Mutex<Phase>,
    exits: Arc<ExitTable>,
    /// Held while an exec is being created (see [`exec`]).
    exec_creation: tokio::sync::Mutex<()>,
    /// The request's storages (rootfs, volumes), released at removal.
    mounts: Mutex<Vec<Mounted>>,
    /// The container's cgroup; `None` where the system has none mounted.
    cgroup: Mutex<Option<Arc<CgroupManager>>>,
}

/// An exec and whether someone has waited for it (after which it may go).
#[derive(Debug)]
struct Exec {
    process: Arc<Process>,
    waited: AtomicBool,
}

impl Container {
    pub fn log(&self) -> &slog::Logger {
        &self.log
    }

    pub fn init_pid(&self) -> i32 {
        self.init.pid
    }

    /// The init for an empty exec id or the init's own, else the exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>, AgentError> {
        if exec_id.is_empty() || exec_id == self.init.exec_id {
            return Ok(self.init.clone());
        }
        self.execs_lock()
            .get(exec_id)
            .map(|e| e.process.clone())
            .ok_or_else(|| AgentError::ProcessNotFound { container_id: self.id.clone(), exec_id: exec_id.to_owned() })
    }

    fn execs_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Exec>>> {
        // Each critical section is one map operation: the map stays consistent.
        self.execs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The hooks' view of the container (OCI runtime spec, "state").
    fn state(&self, status: ContainerState) -> State {
        let mut b = StateBuilder::default()
            .version(self.spec.version().clone())
            .id(self.id.clone())
            .status(status)
            .bundle(self.bundle.clone());
        if status != ContainerState::Stopped {
            b = b.pid(self.init.pid);
        }
        if let Some(a) = self.spec.annotations() {
            b = b.annotations(a.clone());
        }
        // Every field is set; the builder cannot fail.
        b.build().unwrap_or_default()
    }

    /// Runs hooks of one stage on a blocking thread; failures are the caller's to judge.
    async fn run_hooks(
        &self,
        stage: &str,
        hooks: Option<&Vec<Hook>>,
        status: ContainerState,
    ) -> Result<(), AgentError> {
        let Some(hooks) = hooks.filter(|h| !h.is_empty()).cloned() else {
            return Ok(());
        };
        let state = self.state(status);
        slog::debug!(self.log, "running hooks"; "stage" => stage, "count" => hooks.len());
        let result = tokio::task::spawn_blocking(move || {
            let _own = reaper::own_children();
            launch::run_hooks(&hooks, &state)
        })
        .await
        .map_err(|e| AgentError::FailedPrecondition(format!("{stage} hooks of {}: {e}", self.id)))?;
        result.map_err(|source| AgentError::Hook { container_id: self.id.clone(), source })
    }

    /// StartContainer: releases the init into its program, then the poststart hooks.
    pub async fn start(&self) -> Result<(), AgentError> {
        let mut phase = self.phase.lock().await;
        let handle = match std::mem::replace(&mut *phase, Phase::Started) {
            Phase::Created(h) => h,
            other => {
                *phase = other;
                return Err(AgentError::FailedPrecondition(format!("container {} was already started", self.id)));
            }
        };
        let started = tokio::task::spawn_blocking(move || {
            let _own = reaper::own_children();
            handle.start()
        })
        .await;
        let failed = match started {
            Ok(Ok(())) => None,
            Ok(Err(source)) => Some(AgentError::Launch { container_id: self.id.clone(), source }),
            Err(e) => Some(AgentError::FailedPrecondition(format!("start of {}: {e}", self.id))),
        };
        if let Some(e) = failed {
            *phase = Phase::Failed;
            slog::warn!(self.log, "start failed"; "error" => %crate::error::chain(&e));
            return Err(e);
        }
        drop(phase);
        slog::info!(self.log, "container started"; "child_pid" => self.init.pid);
        let hooks = self.spec.hooks().as_ref().and_then(|h| h.poststart().as_ref());
        if let Err(e) = self.run_hooks("poststart", hooks, ContainerState::Running).await {
            // The OCI runtime spec: a failing poststart hook is logged, the container keeps running.
            slog::warn!(self.log, "poststart hook failed"; "error" => %crate::error::chain(&e));
        }
        Ok(())
    }

    /// Whether ExecProcess may run now.
    pub async fn check_running(&self) -> Result<(), AgentError> {
        let started = matches!(*self.phase.lock().await, Phase::Started);
        if !started || self.init.exit_status().is_some() {
            return Err(AgentError::FailedPrecondition(format!("container {} is not running", self.id)));
        }
        Ok(())
    }

    pub fn add_exec(&self, process: Arc<Process>) -> Result<(), AgentError> {
        let mut execs = self.execs_lock();
        if execs.contains_key(&process.exec_id) || process.exec_id == self.init.exec_id {
            return Err(AgentError::ExecExists { container_id: self.id.clone(), exec_id: process.exec_id.clone() });
        }
        execs.insert(process.exec_id.clone(), Arc::new(Exec { process, waited: AtomicBool::new(false) }));
        Ok(())
    }

    /// The container's cgroup, if it has one.
    pub fn cgroup(&self) -> Option<Arc<CgroupManager>> {
        self.cgroup.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `op` on the container's cgroup on a blocking thread (cgroupfs I/O,
    /// freezer waits); FAILED_PRECONDITION when it has none.
    pub async fn with_cgroup<T: Send + 'static>(
        &self,
        what: &str,
        op: impl FnOnce(&CgroupManager) -> Result<T, crate::cgroups::CgroupError> + Send + 'static,
    ) -> Result<T, AgentError> {
        let cg = self
            .cgroup()
            .ok_or_else(|| AgentError::FailedPrecondition(format!("container {} has no cgroup to {what}", self.id)))?;
        tokio::task::spawn_blocking(move || op(&cg))
            .await
            .map_err(|e| AgentError::FailedPrecondition(format!("{what} of {}: {e}", self.id)))?
            .map_err(|source| AgentError::Cgroup { container_id: self.id.clone(), source })
    }

    /// Takes over the storages mounted for this container.
    pub fn adopt_mounts(&self, mounts: Vec<Mounted>) {
        self.mounts.lock().unwrap_or_else(|p| p.into_inner()).extend(mounts);
    }

    pub fn has_exec(&self, exec_id: &str) -> bool {
        exec_id == self.init.exec_id || self.execs_lock().contains_key(exec_id)
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    pub fn exits(&self) -> &Arc<ExitTable> {
        &self.exits
    }

    /// SignalProcess. An empty exec id means every process of the container
    /// (the Kata runtime sends that for `kill --all`); the init's own id, or an
    /// exec's, that one process.
    pub fn signal(&self, exec_id: &str, signo: u32) -> Result<(), AgentError> {
        let sig = i32::try_from(signo)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| AgentError::InvalidArgument(format!("signal {signo}")))?;
        if exec_id.is_empty() {
            return self.signal_all(sig);
        }
        let p = self.process(exec_id)?;
        let sig = if Arc::ptr_eq(&p, &self.init) { init_signal(p.pid, sig) } else { sig };
        slog::debug!(p.log, "signal"; "signal" => %sig, "child_pid" => p.pid);
        p.signal(sig).map_err(|source| AgentError::Sys {
            what: format!("cannot send {sig} to {}/{} (pid {})", self.id, p.exec_id, p.pid),
            source,
        })
    }

    /// Every process of the container: the init and its descendants found by
    /// pid namespace when the container has its own, plus the execs.
    fn signal_all(&self, sig: Signal) -> Result<(), AgentError> {
        let init_sig = init_signal(self.init.pid, sig);
        if let Err(source) = self.init.signal(init_sig) {
            return Err(AgentError::Sys { what: format!("cannot send {init_sig} to {}", self.id), source });
        }
        for p in self.execs_lock().values().map(|e| e.process.clone()) {
            if let Err(e) = p.signal(sig) {
                slog::warn!(p.log, "signal not delivered"; "signal" => %sig, "error" => %e);
            }
        }
        for pid in self.namespace_pids() {
            // Raced with an exit: nothing left to signal.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
        // The cgroup also holds what left the namespace's view (a shared pid namespace).
        if let Some(cg) = self.cgroup() {
            if let Err(e) = cg.kill_all(sig) {
                slog::warn!(self.log, "cgroup signal failed"; "signal" => %sig, "error" => %crate::error::chain(&e));
            }
        }
        slog::debug!(self.log, "signal to all"; "signal" => %sig);
        Ok(())
    }

    /// The pids (agent's view) in the container's own pid namespace, the init
    /// excepted; empty when it shares the sandbox's or the init is gone.
    fn namespace_pids(&self) -> Vec<i32> {
        let own = self.spec.linux().as_ref().and_then(|l| l.namespaces().as_ref()).is_some_and(|ns| {
            ns.iter().any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Pid && n.path().is_none())
        });
        if !own || self.init.exit_status().is_some() {
            return Vec::new();
        }
        let Ok(init_ns) = std::fs::read_link(format!("/proc/{}/ns/pid", self.init.pid)) else { return Vec::new() };
        // Never the agent's own namespace, whatever the spec said: that would be every process.
        if std::fs::read_link("/proc/self/ns/pid").map_or(true, |mine| mine == init_ns) {
            return Vec::new();
        }
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
            .filter(|&pid| pid != self.init.pid)
            .filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|ns| ns == init_ns))
            .collect()
    }

    /// WaitProcess: the exit status; a waited exec whose output was all read is forgotten.
    pub async fn wait(&self, exec_id: &str) -> Result<ExitStatus, AgentError> {
        let p = self.process(exec_id)?;
        let status = p.wait().await.ok_or_else(|| AgentError::FailedPrecondition("the agent is stopping".into()))?;
        slog::info!(p.log, "process exited"; "status" => status);
        if let Some(e) = self.execs_lock().get(&p.exec_id) {
            e.waited.store(true, Ordering::Relaxed);
        }
        self.forget_exec_if_done(&p.exec_id);
        Ok(status)
    }

    /// Drops an exec once it has exited, has been waited for and its output is
    /// drained, so exec probes do not accumulate for the container's life.
    pub fn forget_exec_if_done(&self, exec_id: &str) {
        let mut execs = self.execs_lock();
        let done = execs.get(exec_id).is_some_and(|e| {
            e.waited.load(Ordering::Relaxed)
                && e.process.exit_status().is_some()
                && e.process.io.stdout.drained()
                && e.process.io.stderr.drained()
        });
        if done {
            execs.remove(exec_id);
            slog::debug!(self.log, "exec forgotten"; "exec_id" => exec_id);
        }
    }

    /// RemoveContainer: SIGKILL what still runs, wait up to `timeout` (none:
    /// forever) for it to be reaped, run the poststop hooks, delete the state.
    /// On a timeout the container stays registered so the call can be repeated.
    pub async fn remove(&self, timeout: Option<Duration>) -> Result<(), AgentError> {
        let mut all = vec![self.init.clone()];
        all.extend(self.execs_lock().values().map(|e| e.process.clone()));
        for p in &all {
            if let Err(e) = p.signal(Signal::SIGKILL) {
                slog::warn!(p.log, "cannot kill"; "child_pid" => p.pid, "error" => %e);
            }
        }
        if self.cgroup().is_some() {
            // A frozen process cannot die: thaw first (a no-op when not frozen).
            let killed = self
                .with_cgroup("kill", |cg| {
                    let _ = cg.thaw();
                    cg.kill_all(Signal::SIGKILL)
                })
                .await;
            if let Err(e) = killed {
                slog::warn!(self.log, "cgroup kill failed"; "error" => %crate::error::chain(&e));
            }
        }
        let reaped = async {
            for p in &all {
                p.wait().await;
            }
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, reaped).await.map_err(|_| AgentError::Timeout {
                what: format!("processes of container {} to exit", self.id),
                secs: t.as_secs(),
            })?,
            None => reaped.await,
        }
        let hooks = self.spec.hooks().as_ref().and_then(|h| h.poststop().as_ref());
        if let Err(e) = self.run_hooks("poststop", hooks, ContainerState::Stopped).await {
            slog::warn!(self.log, "poststop hook failed"; "error" => %crate::error::chain(&e));
        }
        self.destroy_cgroup().await;
        let mut mounts = std::mem::take(&mut *self.mounts.lock().unwrap_or_else(|p| p.into_inner()));
        let log = self.log.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || crate::sandbox::release_all(&mut mounts, &log)).await {
            slog::warn!(self.log, "storages not released"; "error" => %e);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.bundle) {
            if e.kind() != std::io::ErrorKind::NotFound {
                slog::warn!(self.log, "cannot delete the state directory"; "path" => %self.bundle.display(), "error" => %e);
            }
        }
        slog::info!(self.log, "container removed");
        Ok(())
    }
}

impl Container {
    /// Removes the cgroup once its processes are gone (the kernel may take a
    /// moment after the last reap; `destroy` retries briefly).
    async fn destroy_cgroup(&self) {
        let Some(cg) = self.cgroup.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        let log = self.log.clone();
        let done = tokio::task::spawn_blocking(move || match Arc::try_unwrap(cg) {
            Ok(cg) => cg.destroy().map_err(|e| crate::error::chain(&e)),
            Err(_) => Err("still in use by a running request".to_owned()),
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => slog::warn!(log, "cgroup not removed"; "error" => e),
            Err(e) => slog::warn!(log, "cgroup not removed"; "error" => %e),
        }
    }
}

/// A container's init is PID 1 of its pid namespace, where the kernel drops
/// signals it has no handler for: a SIGTERM it does not handle becomes a
/// SIGKILL, as in Kata, so `kill` stops a container whose program forgot.
fn init_signal(pid: i32, sig: Signal) -> Signal {
    if sig != Signal::SIGTERM {
        return sig;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) if !handles(&status, sig) => Signal::SIGKILL,
        _ => sig,
    }
}

/// Whether /proc/PID/status shows `sig` caught, ignored or blocked.
fn handles(status: &str, sig: Signal) -> bool {
    let bit = 1u64 << (sig as i32 - 1);
    status
        .lines()
        .filter_map(|l| l.strip_prefix("SigCgt:").or(l.strip_prefix("SigIgn:")).or(l.strip_prefix("SigBlk:")))
        .filter_map(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .any(|mask| mask & bit != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigterm_handling_is_read_from_proc_status() {
        let caught = "Name:\tx\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000004000\n";
        assert!(handles(caught, Signal::SIGTERM), "bit 15 is SIGTERM");
        let none = "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000001\nSigCgt:\t0000000000000000\n";
        assert!(!handles(none, Signal::SIGTERM));
        assert!(handles(none, Signal::SIGHUP));
    }

    #[test]
    fn only_sigterm_is_ever_replaced() {
        assert_eq!(init_signal(i32::MAX, Signal::SIGINT), Signal::SIGINT);
        // No such process: leave the signal alone, the kill reports ESRCH.
        assert_eq!(init_signal(i32::MAX, Signal::SIGTERM), Signal::SIGTERM);
    }
}
