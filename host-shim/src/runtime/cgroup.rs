//! The container's cgroup on the host: the bundle's `linux.cgroupsPath`, holding the monitor
//! and, below it, the VM's sandbox cgroup, so what the caller reads from the pid-file
//! process's cgroup (`docker stats`, containerd's OOM events) counts the whole VM.
//!
//! containerd-shim-runc-v2 and conmon find the container's cgroup from the pid they wait for,
//! the monitor's (`/proc/<pid>/cgroup`). So the monitor moves itself into the container's
//! cgroup `C` before the VM boots, and the sandbox core puts QEMU and its helpers into its
//! usual sandbox cgroup ([`crate::hypervisor::cgroup`]), made under `C` (`C/wisp-<state dir>`):
//! `C` plays the part a CRI pod's cgroup plays for the shim. Memory is hierarchical in both
//! cgroup versions, so `C`'s usage is the monitor's plus the VM's. On cgroup v2 the monitor in
//! `C` keeps the kernel from enabling controllers in `C`'s subtree (its no-internal-process
//! rule): the sandbox cgroup then has none of its own and its processes are charged to `C`,
//! which is what the caller reads. No limit is written: the VM's size is the configuration's and
//! the container's resources apply in the guest; a host limit below QEMU's footprint would
//! have the kernel OOM-kill the VM.
//!
//! `C` is made with the sandbox cgroup's own code and its path recorded in the container's
//! directory (`<root>/<id>/cgroup`): `delete` empties and removes it once the monitor is gone
//! ([`remove`]), as `runc delete` removes runc's.
//!
//! Paths: a cgroupfs path (`/docker/<id>`, podman's `/libpod_parent/libpod-<id>`) is taken
//! under every hierarchy's root. With `--systemd-cgroup` the path is systemd's
//! `slice:prefix:name` (Docker's `system.slice:docker:<id>`): wisp-runtime does not ask systemd
//! for a transient scope over D-Bus (there is no systemd on many of the hosts it runs on, and
//! runc refuses the flag there); it makes the cgroup systemd would have made, at the same place:
//! `<slice's path>/<prefix>-<name>.scope` (`system.slice/docker-<id>.scope`; an empty slice is
//! `system.slice`, as runc's default). A spec without `cgroupsPath` leaves the monitor where it
//! is and the VM in the default sandbox parent, as before.

use std::path::Path;

use cgroups_rs::fs::{hierarchies, Cgroup};
use cgroups_rs::CgroupPid;

use crate::hypervisor::cgroup::{expand_slice, remove_recorded, CgroupError, SandboxCgroup};

/// Errors of the container's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum ContainerCgroupError {
    #[error("invalid cgroupsPath {0:?}: a path without `.` or `..` components")]
    BadPath(String),
    #[error("invalid cgroupsPath {0:?}: --systemd-cgroup wants slice:prefix:name")]
    BadSystemdPath(String),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("cannot move the monitor into the cgroup {path}")]
    Join {
        path: String,
        #[source]
        source: cgroups_rs::fs::error::Error,
    },
}

/// The cgroup path (relative to every hierarchy's root) of `cgroups_path`, the bundle's
/// `linux.cgroupsPath`; `None` when it has none.
pub fn resolve(cgroups_path: Option<&str>, systemd: bool) -> Result<Option<String>, ContainerCgroupError> {
    let Some(given) = cgroups_path.filter(|p| !p.is_empty()) else { return Ok(None) };
    let path = if systemd {
        let bad = || ContainerCgroupError::BadSystemdPath(given.to_owned());
        let [slice, prefix, name] = given.split(':').collect::<Vec<_>>()[..] else { return Err(bad()) };
        if name.is_empty() || name.contains('/') || prefix.contains('/') {
            return Err(bad());
        }
        let slice = expand_slice(if slice.is_empty() { "system.slice" } else { slice }).ok_or_else(bad)?;
        if name.ends_with(".slice") {
            expand_slice(name).ok_or_else(bad)?
        } else if prefix.is_empty() {
            format!("{slice}/{name}.scope")
        } else {
            format!("{slice}/{prefix}-{name}.scope")
        }
    } else {
        given.trim_matches('/').to_owned()
    };
    let safe = !path.is_empty() && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if !safe {
        return Err(ContainerCgroupError::BadPath(given.to_owned()));
    }
    Ok(Some(path))
}

/// What the sandbox core is given as the VM's `cgroups_path` so that its sandbox cgroup goes
/// under `container` (the core takes a container's path and makes the sandbox's beside it).
pub fn vm_cgroups_path(container: &str, id: &str) -> String {
    format!("/{container}/{id}")
}

/// The container's cgroup, joined by the monitor.
#[derive(Debug)]
pub struct Joined {
    cgroup: SandboxCgroup,
}

/// Makes cgroup `path` in every hierarchy, records it in the container's directory `dir` and
/// moves this process (all its threads) into it.
pub fn join(path: &str, dir: &Path) -> Result<Joined, ContainerCgroupError> {
    let cgroup = SandboxCgroup::create(path, dir)?;
    let me = CgroupPid::from(u64::from(std::process::id()));
    let loaded = Cgroup::load(hierarchies::auto(), path);
    if let Err(source) = loaded.add_task_by_tgid(me) {
        remove_recorded(dir);
        return Err(ContainerCgroupError::Join { path: path.to_owned(), source });
    }
    Ok(Joined { cgroup })
}

impl Joined {
    /// The cgroup path.
    pub fn path(&self) -> &str {
        self.cgroup.path()
    }

    /// Undoes [`join`] after a failed creation: the monitor moves to the root cgroup (the only
    /// one every hierarchy accepts it in) and the container's cgroup is removed.
    pub fn undo(self, dir: &Path) -> Vec<String> {
        let me = CgroupPid::from(u64::from(std::process::id()));
        let _ = Cgroup::load(hierarchies::auto(), "").add_task_by_tgid(me);
        remove_recorded(dir)
    }
}

/// Removes the container's cgroup recorded in its directory `dir`, killing what is left in it
/// (nothing once the monitor is gone); idempotent.
pub fn remove(dir: &Path) -> Vec<String> {
    remove_recorded(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_paths_are_taken_under_the_root() {
        assert_eq!(resolve(Some("/docker/abc"), false).unwrap().as_deref(), Some("docker/abc"));
        assert_eq!(resolve(Some("libpod_parent/libpod-1"), false).unwrap().as_deref(), Some("libpod_parent/libpod-1"));
        assert_eq!(resolve(None, false).unwrap(), None);
        assert_eq!(resolve(Some(""), true).unwrap(), None);
        for bad in ["/", "/a/../../etc", "/a//b", "./a"] {
            assert!(resolve(Some(bad), false).is_err(), "{bad}");
        }
    }

    #[test]
    fn systemd_paths_become_the_scope_systemd_would_make() {
        let path = |p| resolve(Some(p), true).map_err(|e| e.to_string());
        assert_eq!(path("system.slice:docker:abc").unwrap().as_deref(), Some("system.slice/docker-abc.scope"));
        assert_eq!(
            path("machine-libpod.slice:libpod:1").unwrap().as_deref(),
            Some("machine.slice/machine-libpod.slice/libpod-1.scope")
        );
        assert_eq!(path(":docker:abc").unwrap().as_deref(), Some("system.slice/docker-abc.scope"), "runc's default");
        assert_eq!(path("user.slice::abc").unwrap().as_deref(), Some("user.slice/abc.scope"));
        assert_eq!(path("a.slice:p:a-b.slice").unwrap().as_deref(), Some("a.slice/a-b.slice"), "a slice itself");
        for bad in ["/docker/abc", "system.slice:docker", "notaslice:p:n", "system.slice:p:", "system.slice:p:a/b"] {
            assert!(path(bad).unwrap_err().contains("slice:prefix:name"), "{bad}");
        }
    }

    #[test]
    fn the_vms_cgroup_goes_under_the_containers() {
        let vm = vm_cgroups_path("docker/abc", "abc");
        assert_eq!(crate::hypervisor::cgroup::sandbox_path(Some(&vm), "h1"), "docker/abc/wisp-h1");
    }

    /// Root only, in a child process (joining moves the whole process).
    #[test]
    fn a_joined_cgroup_is_recorded_and_undone() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to create a cgroup");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = format!("wisp-test-rt-{}", std::process::id());
        // A child joins and undoes; the parent (this test) checks from outside.
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let cgroup = SandboxCgroup::create(&path, dir.path()).unwrap();
        let loaded = Cgroup::load(hierarchies::auto(), path.as_str());
        loaded.add_task_by_tgid(CgroupPid::from(u64::from(child.id()))).unwrap();
        let controller = if hierarchies::is_cgroup2_unified_mode() { "" } else { "memory" };
        let of = crate::hypervisor::cgroup::of_process(child.id(), controller);
        assert_eq!(of.as_deref(), Some(format!("/{path}").as_str()));
        assert_eq!(std::fs::read_to_string(dir.path().join("cgroup")).unwrap(), path);
        drop(cgroup);
        let done = remove(dir.path());
        assert!(done.iter().any(|d| d.contains(&child.id().to_string())), "what was left is killed: {done:?}");
        let _ = child.wait();
        assert!(!Cgroup::load(hierarchies::auto(), path.as_str()).exists());
        assert!(remove(dir.path()).is_empty(), "idempotent");
    }
}
