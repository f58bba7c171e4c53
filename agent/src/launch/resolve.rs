//! Paths inside the container's root, resolved so that neither `..` nor a
//! symlink (absolute or relative) can lead outside it: `openat2(2)` with
//! `RESOLVE_IN_ROOT`, one component at a time when directories must be made.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

/// `struct open_how` of openat2(2).
#[repr(C)]
#[derive(Debug, Default)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// Opens `path` as if `root` were `/`.
pub(crate) fn open_in_root(root: BorrowedFd<'_>, path: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let rel = relative(path);
    let rel = if rel.as_os_str().is_empty() { PathBuf::from(".") } else { rel };
    let c = CString::new(rel.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: u64::from(mode),
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    loop {
        // SAFETY: `c` is a NUL-terminated string and `how` a properly sized
        // open_how that both outlive the call; the kernel only reads them.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            // SAFETY: openat2 returned a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        let err = io::Error::last_os_error();
        // EAGAIN: a concurrent rename raced the lookup; the kernel asks for a retry.
        if err.raw_os_error() != Some(libc::EAGAIN) {
            return Err(err);
        }
    }
}

/// `path` without its leading `/` (and without `.` components).
fn relative(path: &Path) -> PathBuf {
    path.components().filter(|c| !matches!(c, Component::RootDir | Component::CurDir | Component::Prefix(_))).collect()
}

/// Opens directory `path` inside `root` (O_PATH), making missing components
/// with `mode`. Each component is resolved from `root`, so a symlink met on
/// the way is followed inside the root.
pub(crate) fn mkdir_all_in_root(root: BorrowedFd<'_>, path: &Path, mode: u32) -> io::Result<OwnedFd> {
    let dir_flags = libc::O_PATH | libc::O_DIRECTORY;
    let mut prefix = PathBuf::new();
    let mut current = open_in_root(root, &prefix, dir_flags, 0)?;
    for comp in relative(path).components() {
        prefix.push(comp);
        current = match open_in_root(root, &prefix, dir_flags, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let Component::Normal(name) = comp else { return Err(e) };
                let c = CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                // SAFETY: `current` is an open directory descriptor and `c` a
                // NUL-terminated name; mkdirat does not keep either.
                let rc = unsafe { libc::mkdirat(current.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) };
                if rc != 0 {
                    let err = io::Error::last_os_error();
                    if err.raw_os_error() != Some(libc::EEXIST) {
                        return Err(err);
                    }
                }
                open_in_root(root, &prefix, dir_flags, 0)?
            }
            Err(e) => return Err(e),
        };
    }
    Ok(current)
}

/// Makes sure a file exists at `path` inside `root` (for bind mounts of
/// files), creating parents; returns it opened O_PATH.
pub(crate) fn touch_in_root(root: BorrowedFd<'_>, path: &Path) -> io::Result<OwnedFd> {
    if let Some(parent) = relative(path).parent() {
        mkdir_all_in_root(root, parent, 0o755)?;
    }
    match open_in_root(root, path, libc::O_PATH, 0) {
        Ok(fd) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            drop(open_in_root(root, path, libc::O_CREAT | libc::O_WRONLY, 0o644)?);
            open_in_root(root, path, libc::O_PATH, 0)
        }
        Err(e) => Err(e),
    }
}

/// The path through which a descriptor can be named to mount(2) and friends.
pub(crate) fn proc_fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::symlink;

    fn real(fd: &OwnedFd) -> PathBuf {
        std::fs::read_link(proc_fd_path(fd)).unwrap()
    }

    #[test]
    fn dotdot_and_symlinks_stay_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/", root.join("abs")).unwrap();
        symlink("../../../..", root.join("etc/up")).unwrap();
        let root_fd = std::fs::File::open(&root).unwrap();
        let root_fd: OwnedFd = root_fd.into();
        let root_real = std::fs::canonicalize(&root).unwrap();

        let fd = mkdir_all_in_root(root_fd.as_fd(), Path::new("../../x"), 0o755).unwrap();
        assert_eq!(real(&fd), root_real.join("x"));
        assert!(!tmp.path().join("x").exists(), "../../x escaped the root");

        let fd = mkdir_all_in_root(root_fd.as_fd(), Path::new("/abs/tmp/made"), 0o755).unwrap();
        assert_eq!(real(&fd), root_real.join("tmp/made"));

        let fd = mkdir_all_in_root(root_fd.as_fd(), Path::new("etc/up/y"), 0o755).unwrap();
        assert_eq!(real(&fd), root_real.join("y"));

        let fd = touch_in_root(root_fd.as_fd(), Path::new("/abs/dev/null")).unwrap();
        assert_eq!(real(&fd), root_real.join("dev/null"));
        assert!(root.join("dev/null").is_file());
    }

    #[test]
    fn a_missing_path_is_enoent() {
        let tmp = tempfile::tempdir().unwrap();
        let root: OwnedFd = std::fs::File::open(tmp.path()).unwrap().into();
        let err = open_in_root(root.as_fd(), Path::new("/nope"), libc::O_PATH, 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }
}
