//! Permissions of a sandbox's state directory: it holds the guest's share (set-id files and
//! device nodes a guest made included), QEMU's QMP socket and the helpers' vhost-user sockets,
//! so no other local user may list, enter or connect to anything in it.
//!
//! The state root is made 0711 (enterable, not listable) when the shim creates it, a sandbox's
//! directory 0700, and every socket in it 0600 once QEMU and its helpers have made them.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use slog::{warn, Logger};

/// Mode of the state root when the shim creates it.
pub const ROOT_MODE: u32 = 0o711;
/// Mode of a sandbox's state directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of a socket in it.
pub const SOCKET_MODE: u32 = 0o600;

/// Creates sandbox state directory `dir` (mode [`DIR_MODE`], also when it existed) and its
/// missing parents (mode [`ROOT_MODE`]).
pub fn create(dir: &Path) -> io::Result<()> {
    if let Some(root) = dir.parent() {
        DirBuilder::new().recursive(true).mode(ROOT_MODE).create(root)?;
    }
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && fs::symlink_metadata(dir)?.is_dir() => {
            fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
        }
        Err(err) => Err(err),
    }
}

/// Makes every socket directly in `dir` [`SOCKET_MODE`] (they are made by QEMU and its helpers
/// under their own umask).
pub fn restrict_sockets(dir: &Path, log: &Logger) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_socket()) {
            continue;
        }
        // A rootless helper can swap its socket for a symlink between the listing and the
        // chmod: the entry is opened without following, checked, and changed through that
        // descriptor's /proc link (which names the inode, not the path).
        let path = entry.path();
        let restricted = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .and_then(|file| {
                if !file.metadata()?.file_type().is_socket() {
                    return Err(io::Error::other("no longer a socket"));
                }
                fs::set_permissions(format!("/proc/self/fd/{}", file.as_raw_fd()), Permissions::from_mode(SOCKET_MODE))
            });
        if let Err(err) = restricted {
            warn!(log, "cannot restrict a socket"; "path" => %path.display(), "error" => %err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn the_state_dir_is_private_and_its_sockets_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("root/sb1");
        create(&dir).unwrap();
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), DIR_MODE);
        assert_eq!(mode(dir.parent().unwrap()), ROOT_MODE);
        fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        create(&dir).unwrap();
        assert_eq!(mode(&dir), DIR_MODE, "an existing dir is made private too");
        let _listener = UnixListener::bind(dir.join("qmp.sock")).unwrap();
        fs::set_permissions(dir.join("qmp.sock"), Permissions::from_mode(0o777)).unwrap();
        fs::write(dir.join("console.log"), b"").unwrap();
        fs::set_permissions(dir.join("console.log"), Permissions::from_mode(0o644)).unwrap();
        restrict_sockets(&dir, &Logger::root(slog::Discard, slog::o!()));
        assert_eq!(mode(&dir.join("qmp.sock")), SOCKET_MODE);
        assert_eq!(mode(&dir.join("console.log")), 0o644, "only sockets are touched");
    }
}
