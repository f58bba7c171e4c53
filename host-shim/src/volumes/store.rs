//! Kata's vhost-user store: which vhost-user socket a `linux.devices` entry of major 241 means.
//!
//! A config.json device `{type: "b", major: 241, minor: N}` asks for a vhost-user-blk disk
//! (SPDK, or any vhost-user-blk backend). The operator creates, under the store directory, a
//! device node `block/devices/<name>` whose rdev is `241:N` and the backend's socket
//! `block/sockets/<name>`; the shim finds the node by its numbers and plugs the socket of the
//! same name. Major 242 (vhost-user-scsi) is refused with a clear error: the guest has no
//! vhost-user-scsi path here.
//!
//! The store directory is `$WISP_VHOST_USER_STORE`, else `vhost_user_store_path` of
//! `[hypervisor.qemu]` (default `/var/run/kata-containers/vhost-user`).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::config::Config;

/// The environment variable naming the store directory.
pub use crate::env::VHOST_USER_STORE_ENV as STORE_ENV;
/// Kata's major number for vhost-user-blk devices.
pub const VHOST_USER_BLK_MAJOR: i64 = 241;
/// Kata's major number for vhost-user-scsi devices.
pub const VHOST_USER_SCSI_MAJOR: i64 = 242;

/// Why a vhost-user device cannot be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// Major 242.
    #[error(
        "device {path} is vhost-user-scsi (major 242), which wisp does not support; export the disk as \
         vhost-user-blk and give it major 241"
    )]
    Scsi {
        /// The container path of the device.
        path: String,
    },
    /// No node has the numbers.
    #[error("device {path} ({major}:{minor}): no node with rdev {major}:{minor} in {dir} (the vhost-user store)")]
    NoNode {
        /// The container path of the device.
        path: String,
        /// Major.
        major: i64,
        /// Minor.
        minor: i64,
        /// Where we looked.
        dir: PathBuf,
    },
    /// The node exists, its socket does not.
    #[error("device {path} ({major}:{minor}): node {node} has no vhost-user socket at {socket}")]
    NoSocket {
        /// The container path of the device.
        path: String,
        /// Major.
        major: i64,
        /// Minor.
        minor: i64,
        /// The node found.
        node: PathBuf,
        /// The socket expected.
        socket: PathBuf,
    },
}

/// The store directory for `config`.
pub fn store_dir(config: &Config) -> PathBuf {
    crate::env::path(STORE_ENV).unwrap_or_else(|| config.hypervisor.vhost_user_store_path())
}

/// Whether `(type, major)` names a vhost-user device of the store.
pub fn is_vhost_user(typ: &str, major: i64) -> bool {
    typ == "b" && (major == VHOST_USER_BLK_MAJOR || major == VHOST_USER_SCSI_MAJOR)
}

/// The socket of the vhost-user-blk device `major:minor` (container path `path`) in `store`.
pub fn resolve(store: &Path, path: &str, major: i64, minor: i64) -> Result<PathBuf, StoreError> {
    if major == VHOST_USER_SCSI_MAJOR {
        return Err(StoreError::Scsi { path: path.to_owned() });
    }
    let dir = store.join("block/devices");
    let node = std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path()).find(|node| {
        std::fs::metadata(node).is_ok_and(|m| {
            let ft = m.file_type();
            (ft.is_block_device() || ft.is_char_device())
                && i64::try_from(nix::sys::stat::major(m.rdev())).ok() == Some(major)
                && i64::try_from(nix::sys::stat::minor(m.rdev())).ok() == Some(minor)
        })
    });
    let Some(node) = node else {
        return Err(StoreError::NoNode { path: path.to_owned(), major, minor, dir });
    };
    let name = node.file_name().unwrap_or_default();
    let socket = store.join("block/sockets").join(name);
    if !std::fs::metadata(&socket).is_ok_and(|m| m.file_type().is_socket()) {
        return Err(StoreError::NoSocket { path: path.to_owned(), major, minor, node, socket });
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};

    use super::*;

    fn can_mknod() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn finds_the_socket_of_the_node_with_the_numbers() {
        let store = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(store.path().join("block/devices")).unwrap();
        std::fs::create_dir_all(store.path().join("block/sockets")).unwrap();
        let err = resolve(store.path(), "/dev/vda", 241, 0).unwrap_err();
        assert!(
            err.to_string().contains(&format!("no node with rdev 241:0 in {}/block/devices", store.path().display())),
            "{err}"
        );
        if !can_mknod() {
            return;
        }
        for (name, minor) in [("other", 1), ("vhostblk0", 0)] {
            let node = store.path().join("block/devices").join(name);
            mknod(&node, SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), makedev(241, minor)).unwrap();
        }
        let err = resolve(store.path(), "/dev/vda", 241, 0).unwrap_err();
        assert!(matches!(err, StoreError::NoSocket { .. }), "{err:?}");
        assert!(err.to_string().contains("block/sockets/vhostblk0"), "{err}");
        let socket = store.path().join("block/sockets/vhostblk0");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        assert_eq!(resolve(store.path(), "/dev/vda", 241, 0).unwrap(), socket);
    }

    #[test]
    fn scsi_is_refused_and_majors_are_recognised() {
        let err = resolve(Path::new("/nowhere"), "/dev/sda", 242, 0).unwrap_err();
        assert_eq!(err, StoreError::Scsi { path: "/dev/sda".into() });
        assert!(err.to_string().contains("vhost-user-scsi (major 242)"));
        assert!(is_vhost_user("b", 241) && is_vhost_user("b", 242));
        assert!(!is_vhost_user("c", 241) && !is_vhost_user("b", 8));
    }
}
