//! CopyFile: the host pushes files (k8s secrets, config maps, /etc/hosts of a
//! shared mount) into the guest in chunks.
//!
//! Only below a few agent-owned directories, and never through a symlink: a
//! path is checked component by component from its allowed base, each
//! existing component with `lstat`, so a symlink planted in the tree cannot
//! redirect a write to /etc or anywhere else. The chunks of one file go to a
//! temporary sibling that is renamed over the target once `file_size` bytes
//! are there, so a reader never sees half a file.

use std::ffi::OsString;
use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt as _, FileExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use protocols::agent::CopyFileRequest;

use crate::error::AgentError;

/// Permission bits a copied file or directory may carry (with setuid/setgid/sticky).
const FILE_MODE_MASK: u32 = 0o7777;
/// Permission bits of directories created on the way.
const DIR_MODE_MASK: u32 = 0o777;

fn denied(path: &str, why: &str) -> AgentError {
    AgentError::PermissionDenied(format!("CopyFile {path}: {why}"))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> AgentError {
    move |source| AgentError::Io { what, source }
}

/// Checks `path` against the allowed bases; returns the base it is under and
/// the components below it. Neither `.` nor `..` is accepted anywhere.
pub fn check_path<'a>(path: &'a str, bases: &[PathBuf]) -> Result<(PathBuf, Vec<&'a std::ffi::OsStr>), AgentError> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(AgentError::InvalidArgument(format!("CopyFile {path}: not an absolute path")));
    }
    // On the raw string: Path::components drops inner `.` components silently.
    if path.contains('\0') || path.split('/').any(|c| c == "." || c == "..") {
        return Err(AgentError::InvalidArgument(format!("CopyFile {path}: '.' and '..' are not allowed")));
    }
    for base in bases {
        if let Ok(rest) = p.strip_prefix(base) {
            let below: Vec<_> = rest.components().map(|c| c.as_os_str()).collect();
            if below.is_empty() {
                return Err(denied(path, "cannot replace an allowed directory itself"));
            }
            return Ok((base.clone(), below));
        }
    }
    Err(denied(path, "only paths below the agent's shared directories may be written"))
}

/// Walks from `base` to the parent of the target, creating missing
/// directories with `dir_mode` and refusing any symlink on the way.
fn parent_dir(path: &str, base: &Path, dirs: &[&std::ffi::OsStr], dir_mode: u32) -> Result<PathBuf, AgentError> {
    // The base is the agent's own directory; it may simply not exist yet.
    std::fs::create_dir_all(base).map_err(io(format!("CopyFile {path}: cannot create {}", base.display())))?;
    let mut at = base.to_path_buf();
    for name in dirs {
        at.push(name);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => return Err(denied(path, &format!("{} is a symlink", at.display()))),
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(AgentError::InvalidArgument(format!(
                    "CopyFile {path}: {} is not a directory",
                    at.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .mode(dir_mode & DIR_MODE_MASK)
                    .create(&at)
                    .map_err(io(format!("CopyFile {path}: cannot create {}", at.display())))?;
            }
            Err(e) => return Err(io(format!("CopyFile {path}: cannot inspect {}", at.display()))(e)),
        }
    }
    Ok(at)
}

fn owner(id: i32) -> Option<u32> {
    u32::try_from(id).ok()
}

fn lchown(path: &Path, uid: i32, gid: i32, what: &str) -> Result<(), AgentError> {
    std::os::unix::fs::lchown(path, owner(uid), owner(gid)).map_err(io(format!("CopyFile {what}: cannot chown")))
}

/// Serves one CopyFile request (one chunk, a directory, or a symlink).
pub fn copy_file(req: &CopyFileRequest, bases: &[PathBuf]) -> Result<(), AgentError> {
    let path = req.path.as_str();
    let (base, below) = check_path(path, bases)?;
    let (name, dirs) = below.split_last().ok_or_else(|| denied(path, "no file name"))?;
    let parent = parent_dir(path, &base, dirs, req.dir_mode)?;
    let target = parent.join(name);
    let kind = req.file_mode & libc::S_IFMT;
    let perms = std::fs::Permissions::from_mode(req.file_mode & FILE_MODE_MASK);

    if kind == libc::S_IFDIR {
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(AgentError::InvalidArgument(format!("CopyFile {path}: exists and is not a directory")))
            }
            Err(_) => DirBuilder::new().create(&target).map_err(io(format!("CopyFile {path}: cannot create")))?,
        }
        std::fs::set_permissions(&target, perms).map_err(io(format!("CopyFile {path}: cannot chmod")))?;
        return lchown(&target, req.uid, req.gid, path);
    }
    if kind == libc::S_IFLNK {
        let dest = std::str::from_utf8(&req.data)
            .map_err(|_| AgentError::InvalidArgument(format!("CopyFile {path}: symlink target is not UTF-8")))?;
        // A symlink is replaced (k8s flips `..data` to a new directory this way), never followed.
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(&target).map_err(io(format!("CopyFile {path}: cannot replace the symlink")))?;
        }
        std::os::unix::fs::symlink(dest, &target).map_err(io(format!("CopyFile {path}: cannot create the symlink")))?;
        return lchown(&target, req.uid, req.gid, path);
    }
    if kind != 0 && kind != libc::S_IFREG {
        return Err(AgentError::InvalidArgument(format!("CopyFile {path}: file type {kind:o} is not supported")));
    }

    let end = u64::try_from(req.offset).ok().and_then(|o| o.checked_add(req.data.len() as u64));
    let size = u64::try_from(req.file_size).ok();
    let (Some(end), Some(size)) = (end, size) else {
        return Err(AgentError::InvalidArgument(format!("CopyFile {path}: negative offset or size")));
    };
    if end > size {
        return Err(AgentError::InvalidArgument(format!(
            "CopyFile {path}: chunk ends at {end}, past file_size {size}"
        )));
    }
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".wisp-copy");
    let tmp = parent.join(tmp_name);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        // The first chunk starts over whatever an interrupted copy left.
        .truncate(req.offset == 0)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("CopyFile {path}: cannot open {}", tmp.display())))?;
    file.write_all_at(&req.data, end - req.data.len() as u64).map_err(io(format!("CopyFile {path}: cannot write")))?;
    let written = file.metadata().map_err(io(format!("CopyFile {path}: cannot stat")))?.len();
    if written < size {
        return Ok(());
    }
    file.set_permissions(perms).map_err(io(format!("CopyFile {path}: cannot chmod")))?;
    lchown(&tmp, req.uid, req.gid, path)?;
    std::fs::rename(&tmp, &target).map_err(io(format!("CopyFile {path}: cannot move into place")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::ttrpc::Code;

    fn code(e: AgentError) -> Code {
        let protocols::ttrpc::Error::RpcStatus(s) = protocols::ttrpc::Error::from(e) else { panic!() };
        s.code()
    }

    fn req(path: &Path, data: &[u8], offset: i64, size: i64, mode: u32) -> CopyFileRequest {
        let mut r = CopyFileRequest::new();
        r.path = path.to_str().unwrap().into();
        r.data = data.to_vec();
        r.offset = offset;
        r.file_size = size;
        r.file_mode = mode;
        r.dir_mode = 0o750;
        r.uid = -1;
        r.gid = -1;
        r
    }

    #[test]
    fn paths_outside_or_with_dots_are_refused() {
        let bases = [PathBuf::from("/run/kata-containers")];
        for (p, want) in [
            ("/etc/passwd", Code::PERMISSION_DENIED),
            ("/run/kata-containersX/a", Code::PERMISSION_DENIED),
            ("/run/kata-containers", Code::PERMISSION_DENIED),
            ("/run/kata-containers/../../etc/passwd", Code::INVALID_ARGUMENT),
            ("/run/kata-containers/./a", Code::INVALID_ARGUMENT),
            ("run/kata-containers/a", Code::INVALID_ARGUMENT),
        ] {
            assert_eq!(code(check_path(p, &bases).unwrap_err()), want, "{p}");
        }
        let (base, below) = check_path("/run/kata-containers/shared/a.txt", &bases).unwrap();
        assert_eq!(base, bases[0]);
        assert_eq!(below, ["shared", "a.txt"]);
    }

    #[test]
    fn chunks_arrive_in_place_with_mode_and_new_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let bases = [dir.path().to_owned()];
        let target = dir.path().join("sub/deeper/file");
        copy_file(&req(&target, b"hello ", 0, 11, libc::S_IFREG | 0o640), &bases).unwrap();
        assert!(!target.exists(), "not in place before the last chunk");
        copy_file(&req(&target, b"world", 6, 11, libc::S_IFREG | 0o640), &bases).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"hello world");
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777, 0o640);
        assert_eq!(std::fs::metadata(dir.path().join("sub")).unwrap().permissions().mode() & 0o777, 0o750);
        assert_eq!(std::fs::read_dir(target.parent().unwrap()).unwrap().count(), 1, "no temporary left");
        // An empty file is complete at once.
        let empty = dir.path().join("empty");
        copy_file(&req(&empty, b"", 0, 0, 0o644), &bases).unwrap();
        assert_eq!(std::fs::read(&empty).unwrap(), b"");
        let e = copy_file(&req(&empty, b"toolong", 0, 3, 0o644), &bases).unwrap_err();
        assert_eq!(code(e), Code::INVALID_ARGUMENT);
    }

    #[test]
    fn a_symlink_on_the_way_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let bases = [dir.path().join("allowed")];
        std::fs::create_dir(&bases[0]).unwrap();
        std::os::unix::fs::symlink(outside.path(), bases[0].join("evil")).unwrap();
        let e = copy_file(&req(&bases[0].join("evil/passwd"), b"x", 0, 1, 0o644), &bases).unwrap_err();
        assert_eq!(code(e), Code::PERMISSION_DENIED);
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing written outside");
        // A symlink as the target itself is replaced, not written through.
        std::os::unix::fs::symlink(outside.path().join("victim"), bases[0].join("link")).unwrap();
        copy_file(&req(&bases[0].join("link"), b"data", 0, 4, 0o644), &bases).unwrap();
        assert!(!outside.path().join("victim").exists());
        assert_eq!(std::fs::read(bases[0].join("link")).unwrap(), b"data");
    }

    #[test]
    fn directories_and_symlinks_are_copied_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let bases = [dir.path().to_owned()];
        copy_file(&req(&dir.path().join("..2024_01"), b"", 0, 0, libc::S_IFDIR | 0o755), &bases).unwrap();
        assert!(dir.path().join("..2024_01").is_dir());
        let link = dir.path().join("..data");
        copy_file(&req(&link, b"..2024_01", 0, 0, libc::S_IFLNK | 0o777), &bases).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("..2024_01"));
        // Re-pointing an existing symlink works (the k8s secret update).
        copy_file(&req(&link, b"..2024_02", 0, 0, libc::S_IFLNK | 0o777), &bases).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("..2024_02"));
    }
}
