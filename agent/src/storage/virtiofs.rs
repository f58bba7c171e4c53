//! RemoveStaleVirtiofsShareMounts: Kata's runtime calls it after it unshared a container's
//! files on the host (every container stop), and fails the stop if the agent refuses.
//!
//! A host-side unmount under the shared directory leaves virtio-fs entries in the guest that
//! pin the daemon's file descriptors. Looking each mount below the shared containers directory
//! up again (`stat`) makes the guest revalidate it, and virtiofsd drops what no longer exists:
//! what Kata's agent does too. Nothing is unmounted.

use std::path::{Path, PathBuf};

/// Kata's directory of the containers' shared files in the guest.
pub const SHARED_CONTAINERS_DIR: &str = "/run/kata-containers/shared/containers";

/// The mount points strictly below `dir` in a mountinfo text.
pub fn mounts_below(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    crate::mountinfo::mount_points(mountinfo).into_iter().filter(|m| m != dir && m.starts_with(dir)).collect()
}

/// Looks up every mount below [`SHARED_CONTAINERS_DIR`] again; returns those that are gone.
pub fn revalidate_shared_mounts(log: &slog::Logger) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut gone = Vec::new();
    for mount in mounts_below(&mountinfo, Path::new(SHARED_CONTAINERS_DIR)) {
        if let Err(e) = std::fs::metadata(&mount) {
            slog::info!(log, "stale shared mount"; "mount_point" => %mount.display(), "error" => %e);
            gone.push(mount);
        }
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mounts_below_the_directory() {
        let text = "30 22 0:30 / /run/kata-containers/shared/containers rw - virtiofs kataShared rw\n\
                    31 30 0:30 /c1 /run/kata-containers/shared/containers/c1/rootfs rw - virtiofs kataShared rw\n\
                    32 22 0:31 / /run/kata-containers/shared/containers-x rw - tmpfs tmpfs rw\n\
                    33 22 0:32 / /proc rw - proc proc rw\n";
        assert_eq!(
            mounts_below(text, Path::new(SHARED_CONTAINERS_DIR)),
            [PathBuf::from("/run/kata-containers/shared/containers/c1/rootfs")]
        );
    }
}
