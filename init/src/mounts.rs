//! The pseudo file systems every guest needs before anything else runs.
//!
//! Flags follow what a container runtime expects to find: nothing executable or
//! setuid on the kernel's own file systems, and a private devpts instance so
//! containers can get their own later.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::mount::MsFlags;

/// One mount of the boot plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: PathBuf,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot create mount point {path}")]
    MountPoint { path: PathBuf, source: std::io::Error },
    #[error("mount {fstype} on {target} failed")]
    Mount { fstype: &'static str, target: PathBuf, source: Errno },
    #[error("cannot link {path}")]
    Link { path: PathBuf, source: std::io::Error },
}

fn spec(source: &'static str, target: &str, fstype: &'static str, flags: MsFlags, data: &'static str) -> MountSpec {
    MountSpec { source, target: PathBuf::from(target), fstype, flags, data }
}

/// The boot plan, in mount order (devpts and shm live under /dev).
pub fn pseudo_filesystems() -> Vec<MountSpec> {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    vec![
        spec("proc", "/proc", "proc", hardened, ""),
        spec("sysfs", "/sys", "sysfs", hardened, ""),
        spec("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, "mode=0755"),
        spec(
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
        ),
        spec("shm", "/dev/shm", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "mode=1777"),
        spec("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "mode=0755"),
    ]
}

/// Mounts `plan` in order. A target that is already a mount point (EBUSY, e.g. a
/// kernel that auto-mounted devtmpfs) counts as done, so init can be re-run safely.
pub fn mount_all(plan: &[MountSpec]) -> Result<(), MountError> {
    for m in plan {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&m.target)
            .map_err(|source| MountError::MountPoint { path: m.target.clone(), source })?;
        let data = (!m.data.is_empty()).then_some(m.data);
        match nix::mount::mount(Some(m.source), &m.target, Some(m.fstype), m.flags, data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(source) => return Err(MountError::Mount { fstype: m.fstype, target: m.target.clone(), source }),
        }
    }
    // With a private devpts instance, /dev/ptmx must lead to it, not to the
    // devtmpfs node that belongs to the initial instance.
    let ptmx = PathBuf::from("/dev/ptmx");
    let _ = std::fs::remove_file(&ptmx);
    std::os::unix::fs::symlink("pts/ptmx", &ptmx).map_err(|source| MountError::Link { path: ptmx, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_mounted_before_children() {
        let plan = pseudo_filesystems();
        for (i, m) in plan.iter().enumerate() {
            for later in &plan[i + 1..] {
                assert!(
                    !m.target.starts_with(&later.target),
                    "{:?} mounted before its parent {:?}",
                    m.target,
                    later.target
                );
            }
        }
    }

    #[test]
    fn kernel_file_systems_are_not_executable() {
        for m in pseudo_filesystems() {
            assert!(m.flags.contains(MsFlags::MS_NOSUID), "{:?} allows setuid", m.target);
            if ["/proc", "/sys", "/dev/pts"].contains(&m.target.to_str().unwrap()) {
                assert!(m.flags.contains(MsFlags::MS_NOEXEC));
            }
        }
    }
}
