//! The `-o` path of every subcommand.
//!
//! An existing output that belongs to another user is refused: its owner could read, swap or
//! keep what is written there (for a bundle, a whole root filesystem with an untrusted image's
//! set-id binaries in it). A directory tree the builder writes (a bundle) is made 0700, so
//! nothing in it is reachable by other local users until the caller moves it where it
//! belongs; the files inside keep their modes. The image files (initrd, rootfs, OCI image)
//! are single files written through a private temporary file and a rename.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use nix::unistd::{geteuid, Uid, User};

/// The mode of an output directory tree.
pub const TREE_MODE: u32 = 0o700;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("output {} belongs to {owner}, not to the caller ({caller}); give a path you own", path.display())]
    NotOwned { path: PathBuf, owner: Owner, caller: Owner },
    #[error("cannot inspect output {}", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot make output {} private (mode {TREE_MODE:o})", path.display())]
    Private {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A user, shown as `uid N (name)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner(pub u32);

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match User::from_uid(Uid::from_raw(self.0)).ok().flatten() {
            Some(user) => write!(f, "uid {} ({})", self.0, user.name),
            None => write!(f, "uid {}", self.0),
        }
    }
}

/// Refuses `path` if it exists and the caller does not own it (nor, for a symlink, what it
/// points to). A missing path is fine: the builder creates it.
pub fn check_owner(path: &Path) -> Result<(), OutputError> {
    let caller = geteuid().as_raw();
    let inspect = |source| OutputError::Inspect { path: path.to_owned(), source };
    let link = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(inspect(e)),
    };
    let refuse =
        |owner: u32| OutputError::NotOwned { path: path.to_owned(), owner: Owner(owner), caller: Owner(caller) };
    if link.uid() != caller {
        return Err(refuse(link.uid()));
    }
    if link.file_type().is_symlink() {
        match fs::metadata(path) {
            Ok(target) if target.uid() != caller => return Err(refuse(target.uid())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(inspect(e)),
        }
    }
    Ok(())
}

/// A scratch directory under the system's temp dir, [`TREE_MODE`] from its creation (the
/// temp file crate's default follows the umask): trees are staged there before they become
/// an image.
pub fn scratch(prefix: &str) -> io::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix(prefix).permissions(fs::Permissions::from_mode(TREE_MODE)).tempdir()
}

/// Makes the output directory `dir` [`TREE_MODE`] (whatever the umask, and if it was there
/// before).
pub fn make_private(dir: &Path) -> Result<(), OutputError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(TREE_MODE))
        .map_err(|source| OutputError::Private { path: dir.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_caller_owns_or_what_is_missing_passes() {
        let dir = tempfile::tempdir().unwrap();
        check_owner(&dir.path().join("missing")).unwrap();
        check_owner(dir.path()).unwrap();
        std::os::unix::fs::symlink("missing", dir.path().join("dangling")).unwrap();
        check_owner(&dir.path().join("dangling")).unwrap();
    }

    #[test]
    fn another_users_path_is_refused_with_both_owners_named() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        let other = if geteuid().is_root() { 65534 } else { 0 };
        if geteuid().is_root() {
            std::os::unix::fs::chown(&theirs, Some(other), None).unwrap();
        }
        // Unprivileged, `/` (root's) stands in for another user's directory.
        let theirs = if geteuid().is_root() { theirs } else { PathBuf::from("/") };
        let err = check_owner(&theirs).unwrap_err().to_string();
        assert!(err.contains(&format!("output {} belongs to uid {other}", theirs.display())), "{err}");
        assert!(err.contains(&format!("not to the caller (uid {}", geteuid().as_raw())), "{err}");

        // A link of the caller's to their directory is theirs too.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&theirs, &link).unwrap();
        assert!(matches!(check_owner(&link), Err(OutputError::NotOwned { owner: Owner(o), .. }) if o == other));
    }

    #[test]
    fn scratch_space_is_private_from_the_start() {
        let dir = scratch("rootfs-builder-test.").unwrap();
        assert_eq!(fs::metadata(dir.path()).unwrap().permissions().mode() & 0o7777, 0o700);
    }

    #[test]
    fn an_output_tree_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::set_permissions(&out, fs::Permissions::from_mode(0o755)).unwrap();
        make_private(&out).unwrap();
        assert_eq!(fs::metadata(&out).unwrap().permissions().mode() & 0o7777, 0o700);
    }
}
