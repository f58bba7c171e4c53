//! The sandbox cgroup: QEMU and its helpers run in one cgroup per sandbox, so the VM's memory
//! and CPU are charged to the sandbox (Kata's `sandbox_cgroup_only`), and one place lists
//! every process a VM left.
//!
//! The cgroup is `<parent>/wisp-<state dir name>` in every hierarchy (cgroup v1: each
//! controller; v2: the unified tree), through `cgroups-rs`. The parent is the pod's cgroup
//! when the CRI gives one (the sandbox container's `linux.cgroupsPath` without its last
//! component; a systemd `slice:prefix:name` is expanded to the slice's path), else
//! [`DEFAULT_PARENT`]. Its path is recorded in the state directory (`cgroup`), so a later
//! cleanup of a crashed shim's leftovers ([`remove_recorded`]) kills what is still in it and
//! removes it.
//!
//! Processes join it themselves between fork and exec ([`SandboxCgroup::procs_files`] and
//! [`super::confine`]), so a helper that forks early (virtiofsd's sandbox) cannot leave a
//! child outside.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cgroups_rs::fs::{hierarchies, Cgroup};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The parent of sandbox cgroups when the CRI gives none.
pub const DEFAULT_PARENT: &str = "wisp";
/// The record of the cgroup path in the VM's directory.
const RECORD: &str = "cgroup";
/// How long the processes left in a cgroup get to die after SIGKILL.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of the sandbox cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The cgroup could not be created.
    #[error("cannot create the sandbox cgroup {path}")]
    Create {
        /// The cgroup path.
        path: String,
        /// Why.
        #[source]
        source: cgroups_rs::fs::error::Error,
    },
    /// A file of the cgroup could not be opened or written.
    #[error("cannot use {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The sandbox cgroup path (relative to every hierarchy's root) for the VM directory named
/// `dir_name`, under the pod cgroup of the CRI's `cgroups_path` if any.
pub fn sandbox_path(cgroups_path: Option<&str>, dir_name: &str) -> String {
    let parent = cgroups_path.and_then(pod_parent).unwrap_or_else(|| DEFAULT_PARENT.to_owned());
    format!("{}/wisp-{dir_name}", parent.trim_matches('/'))
}

/// The pod cgroup of a container's `linux.cgroupsPath`: `/kubepods/burstable/pod1/abc` ->
/// `kubepods/burstable/pod1`; `kubepods-burstable-pod1.slice:cri-containerd:abc` ->
/// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice`. `None` when the
/// path names no parent, or climbs (`..`).
pub fn pod_parent(cgroups_path: &str) -> Option<String> {
    let parent = match cgroups_path.split(':').collect::<Vec<_>>().as_slice() {
        [slice, _, _] => expand_slice(slice)?,
        _ => {
            let trimmed = cgroups_path.trim_matches('/');
            trimmed.rsplit_once('/').map(|(parent, _)| parent.to_owned())?
        }
    };
    let safe = !parent.is_empty() && parent.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    safe.then_some(parent)
}

/// systemd's path of a slice: `a-b-c.slice` -> `a.slice/a-b.slice/a-b-c.slice`.
pub fn expand_slice(slice: &str) -> Option<String> {
    let name = slice.strip_suffix(".slice")?;
    if name.is_empty() || name.contains('/') || name == "-" {
        return None;
    }
    let mut path = Vec::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if part.is_empty() {
            return None;
        }
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Some(path.join("/"))
}

/// One sandbox's cgroup.
#[derive(Debug)]
pub struct SandboxCgroup {
    cgroup: Cgroup,
}

impl SandboxCgroup {
    /// Creates the cgroup `path` in every hierarchy and records it in `vm_dir`.
    pub fn create(path: &str, vm_dir: &Path) -> Result<Self, CgroupError> {
        let record = vm_dir.join(RECORD);
        fs::write(&record, path).map_err(|source| CgroupError::Io { path: record, source })?;
        let cgroup = Cgroup::new(hierarchies::auto(), path)
            .map_err(|source| CgroupError::Create { path: path.to_owned(), source })?;
        Ok(Self { cgroup })
    }

    /// The cgroup path.
    pub fn path(&self) -> &str {
        self.cgroup.path()
    }

    /// `cgroup.procs` of each hierarchy, open for writing: a child writes `0` into each to
    /// join before exec.
    pub fn procs_files(&self) -> Result<Vec<File>, CgroupError> {
        let mut dirs: Vec<PathBuf> =
            self.cgroup.subsystems().iter().map(|s| s.to_controller().path().to_owned()).collect();
        dirs.sort();
        dirs.dedup();
        dirs.into_iter()
            .map(|dir| {
                let procs = dir.join("cgroup.procs");
                OpenOptions::new().write(true).open(&procs).map_err(|source| CgroupError::Io { path: procs, source })
            })
            .collect()
    }

    /// The processes in it.
    pub fn pids(&self) -> Vec<u64> {
        self.cgroup.procs().into_iter().map(|p| p.pid).collect()
    }

    /// Kills what is still in the cgroup and removes it. What it killed, for logs.
    pub fn remove(&self) -> Vec<String> {
        let mut killed = Vec::new();
        let start = Instant::now();
        loop {
            let pids = self.pids();
            if pids.is_empty() || start.elapsed() >= EMPTY_TIMEOUT {
                break;
            }
            for pid in pids {
                let Ok(raw) = i32::try_from(pid) else { continue };
                if kill(Pid::from_raw(raw), Signal::SIGKILL).is_ok() && !killed.contains(&pid) {
                    killed.push(pid);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.cgroup.delete();
        killed.into_iter().map(|pid| format!("process {pid} left in cgroup {}", self.path())).collect()
    }
}

/// Kills what is left in the cgroup recorded in `vm_dir` and removes it (a crashed shim's
/// leftovers, or after a stop); idempotent.
pub fn remove_recorded(vm_dir: &Path) -> Vec<String> {
    let record = vm_dir.join(RECORD);
    let Ok(path) = fs::read_to_string(&record) else { return Vec::new() };
    let path = path.trim();
    let mut done = Vec::new();
    if !path.is_empty() && !path.split('/').any(|c| c == "..") {
        let cgroup = SandboxCgroup { cgroup: Cgroup::load(hierarchies::auto(), path) };
        if cgroup.cgroup.exists() {
            done = cgroup.remove();
            done.push(format!("removed cgroup {path}"));
        }
    }
    let _ = fs::remove_file(&record);
    done
}

/// The cgroup of process `pid` in the hierarchy of `controller` (v1) or the unified one (v2,
/// `controller` ignored), as `/proc/<pid>/cgroup` says.
pub fn of_process(pid: u32, controller: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let v2 = hierarchies::is_cgroup2_unified_mode();
    text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let matches = if v2 { controllers.is_empty() } else { controllers.split(',').any(|c| c == controller) };
        matches.then(|| path.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_parents_of_cgroupfs_and_systemd_paths() {
        assert_eq!(pod_parent("/kubepods/burstable/pod1/abc").as_deref(), Some("kubepods/burstable/pod1"));
        assert_eq!(
            pod_parent("kubepods-burstable-pod1.slice:cri-containerd:abc").as_deref(),
            Some("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice")
        );
        assert_eq!(pod_parent("/abc"), None, "no parent");
        assert_eq!(pod_parent(""), None);
        assert_eq!(pod_parent("/kubepods/../../etc/x"), None, "a path that climbs is refused");
        assert_eq!(pod_parent("a--b.slice:p:n"), None);
        assert_eq!(pod_parent("notaslice:p:n"), None);
    }

    #[test]
    fn sandbox_paths_are_named_from_the_state_dir() {
        assert_eq!(sandbox_path(None, "s1"), "wisp/wisp-s1");
        assert_eq!(sandbox_path(Some("/kubepods/pod1/abc"), "h0a"), "kubepods/pod1/wisp-h0a");
        assert_eq!(sandbox_path(Some("/abc"), "s1"), "wisp/wisp-s1", "no pod parent: the default");
    }

    /// Root only: a real cgroup, joined by a child before exec, emptied and removed.
    #[test]
    fn a_child_joins_before_exec_and_removal_kills_what_is_left() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to create a cgroup");
            return;
        }
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let name = format!("wisp-test-{}", std::process::id());
        let path = sandbox_path(None, &name);
        let cgroup = SandboxCgroup::create(&path, dir.path()).unwrap();
        let files = cgroup.procs_files().unwrap();
        let setup = crate::hypervisor::confine::ChildSetup::new(
            crate::hypervisor::confine::Confinement { cgroup_procs: files, ..Default::default() },
            &[],
        )
        .unwrap();
        let mut command = std::process::Command::new("sleep");
        command.arg("30");
        // SAFETY: ChildSetup::apply makes async-signal-safe calls only.
        unsafe { command.pre_exec(move || setup.apply()) };
        let mut child = command.spawn().unwrap();
        let controller = if hierarchies::is_cgroup2_unified_mode() { "" } else { "memory" };
        assert_eq!(of_process(child.id(), controller).as_deref(), Some(format!("/{path}").as_str()));
        assert_eq!(cgroup.pids(), [u64::from(child.id())]);
        let done = remove_recorded(dir.path());
        assert!(done.iter().any(|d| d.contains(&child.id().to_string())), "{done:?}");
        let _ = child.wait();
        assert!(!Cgroup::load(hierarchies::auto(), path.as_str()).exists(), "the cgroup is gone");
        assert!(!dir.path().join(RECORD).exists());
        assert!(remove_recorded(dir.path()).is_empty(), "a second removal finds nothing");
    }
}
