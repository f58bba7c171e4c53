//! The share: what the guest sees of the host, made so that a hostile guest cannot turn it
//! against the host (the CVE-2020-2026 class that Kata closed the same way).
//!
//! ```text
//! <state>/                 0700, the shim's
//!   mounts/                0700, host only: a bind of itself, MS_SHARED; every host bind is made here
//!     <cid>/rootfs         the container's rootfs, bound nosuid,nodev (ro when `root.readonly`)
//!     <cid>/mounts/<i>-<n> a bind-mount source of the container, nosuid,nodev (ro when `ro`)
//!   shared/                what virtiofsd or QEMU's 9p serves: a read-only, MS_SLAVE bind of mounts/
//! ```
//!
//! Binds made under `mounts/` propagate into `shared/` (and into a helper's mount namespace
//! that is a slave of the host's), keeping their own flags; the guest can write inside a rw
//! bind, but cannot create, rename or replace an entry in a directory the shim made, since
//! those are only reachable through the read-only `shared/`. A bind is made read-only, nosuid
//! and nodev on a detached copy (`open_tree` + `mount_setattr`) before `move_mount` attaches
//! it, so no guest ever sees it writable; the copy is made private there too, so a mount made
//! later on the host under its source does not follow it into the share (Kata's choice; see
//! `docs/security.md`). A read-only rootfs gets its mount points first ([`mount_points`]).
//!
//! Teardown never follows a symlink nor crosses a mount point it did not make: every path is
//! opened beneath a directory descriptor with `openat2(RESOLVE_NO_SYMLINKS|RESOLVE_BENEATH)`,
//! unmounts use `UMOUNT_NOFOLLOW` on a parent so opened, and removal deletes only the entries
//! the shim created, deepest first ([`ShareTree::release`]), or, for a crashed shim's state
//! directory, walks it without following links and stops at any mount point left
//! ([`unmount_all`], [`remove_tree`]).

pub mod mount_points;

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use slog::{warn, Logger};

/// The host-only tree, inside the state directory.
pub const MOUNTS_DIR: &str = "mounts";
/// The guest-visible view of it, inside the state directory.
pub const SHARED_DIR: &str = "shared";
/// Mode of every directory and file the shim makes in the tree.
const MODE: libc::mode_t = 0o700;

// The new mount API's flags (linux/mount.h), not all exported by the libc crate.
const OPEN_TREE_CLONE: libc::c_uint = 0x1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
/// `MOUNT_ATTR_RDONLY` of `<linux/mount.h>`.
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// `struct mount_attr` of mount_setattr(2) (also the helpers' read-only view, in
/// `hypervisor::confine`).
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct MountAttr {
    pub(crate) attr_set: u64,
    pub(crate) attr_clr: u64,
    pub(crate) propagation: u64,
    pub(crate) userns_fd: u64,
}

/// What can go wrong with the share.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// A system call on a path failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A container id or share name that is not one plain path component per level.
    #[error("refusing to share {name:?} of container {container:?}: {why}")]
    BadName {
        /// The container.
        container: String,
        /// The name asked for.
        name: String,
        /// Why it was refused.
        why: &'static str,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ShareError + 'a {
    move |source| ShareError::Io { what, path: path.to_owned(), source }
}

/// What the shim made in `mounts/`, so that exactly that is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    Dir,
    File,
    Bind,
}

/// The share of one sandbox: `mounts/` and its read-only view `shared/`.
#[derive(Debug)]
pub struct ShareTree {
    dir: PathBuf,
    /// `mounts/`, the root of its self-bind (O_PATH).
    mounts: OwnedFd,
    /// Per container, what was made under `mounts/<cid>/`, in order (paths relative to `mounts/`).
    made: Mutex<HashMap<String, Vec<(PathBuf, Made)>>>,
}

impl ShareTree {
    /// Makes `<dir>/mounts` (a shared mount of its own) and `<dir>/shared` (its read-only
    /// slave view). `dir` is the sandbox's state directory, made by the shim.
    pub fn create(dir: &Path) -> Result<Self, ShareError> {
        let mounts_path = dir.join(MOUNTS_DIR);
        let shared_path = dir.join(SHARED_DIR);
        let state = open_dir_nofollow(dir).map_err(io_err("cannot open", dir))?;
        for name in [MOUNTS_DIR, SHARED_DIR] {
            make_entry(state.as_fd(), OsStr::new(name), true).map_err(io_err("cannot create", &dir.join(name)))?;
        }
        let bind = |source: &Path, target: &Path, flags: MsFlags, what: &'static str| {
            mount(Some(source), target, None::<&str>, flags, None::<&str>).map_err(|e| ShareError::Io {
                what,
                path: target.to_owned(),
                source: e.into(),
            })
        };
        let none = Path::new("none");
        let made = (|| {
            bind(&mounts_path, &mounts_path, MsFlags::MS_BIND, "cannot bind onto itself")?;
            // A peer group of its own (not the state root's), so binds reach only shared/.
            bind(none, &mounts_path, MsFlags::MS_PRIVATE, "cannot make private")?;
            bind(none, &mounts_path, MsFlags::MS_SHARED, "cannot make shared")?;
            bind(&mounts_path, &shared_path, MsFlags::MS_BIND, "cannot bind mounts/ onto")?;
            bind(none, &shared_path, MsFlags::MS_SLAVE, "cannot make a slave")?;
            let ro =
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            bind(none, &shared_path, ro, "cannot make read-only")
        })();
        if let Err(err) = made {
            for path in [&shared_path, &mounts_path] {
                let _ = umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
            }
            return Err(err);
        }
        let mounts = open_beneath(state.as_fd(), Path::new(MOUNTS_DIR), libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(io_err("cannot open", &mounts_path))?;
        Ok(Self { dir: dir.to_owned(), mounts, made: Mutex::new(HashMap::new()) })
    }

    /// Binds host path `source` (a directory or a file) at `mounts/<container>/<name>`, read-only
    /// when `read_only`, always nosuid and nodev; it appears in the guest's share under the same
    /// relative path, which is returned.
    pub fn bind(&self, container: &str, name: &str, source: &Path, read_only: bool) -> Result<PathBuf, ShareError> {
        let rel = checked_rel(container, name)?;
        let is_dir = std::fs::metadata(source).map_err(io_err("cannot share", source))?.is_dir();
        let mut made = self.made.lock().unwrap_or_else(PoisonError::into_inner);
        let record = made.entry(container.to_owned()).or_default();
        // The directories up to the target, then the target itself: made, never followed.
        let mut prefix = PathBuf::new();
        let components: Vec<_> = rel.components().collect();
        for (i, component) in components.iter().enumerate() {
            let last = i + 1 == components.len();
            let parent =
                open_beneath(self.mounts.as_fd(), &prefix, libc::O_PATH | libc::O_DIRECTORY, libc::RESOLVE_NO_XDEV)
                    .map_err(io_err("cannot open", &self.host_path(&prefix)))?;
            prefix.push(component);
            let want_dir = !last || is_dir;
            match make_entry(parent.as_fd(), component.as_os_str(), want_dir) {
                Ok(()) => record.push((prefix.clone(), if want_dir { Made::Dir } else { Made::File })),
                Err(err) if err.raw_os_error() == Some(libc::EEXIST) && !last => {}
                Err(err) => return Err(io_err("cannot create", &self.host_path(&prefix))(err)),
            }
        }
        let target = open_beneath(self.mounts.as_fd(), &rel, libc::O_PATH | libc::O_NOFOLLOW, libc::RESOLVE_NO_XDEV)
            .map_err(io_err("cannot open", &self.host_path(&rel)))?;
        let tree = open_tree_clone(source).map_err(io_err("cannot clone the mount of", source))?;
        let mut attr = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
        if read_only {
            attr |= MOUNT_ATTR_RDONLY;
        }
        set_attr_private(tree.as_fd(), attr).map_err(io_err("cannot restrict the bind of", source))?;
        move_mount(tree.as_fd(), target.as_fd())
            .map_err(io_err("cannot bind-mount into the share", &self.host_path(&rel)))?;
        record.push((rel.clone(), Made::Bind));
        Ok(rel)
    }

    /// Unmounts and removes what was made for `container`, deepest first; a failure is
    /// logged and the rest still undone. Anything the shim did not make stays.
    pub fn release(&self, container: &str, log: &Logger) {
        let record = self.made.lock().unwrap_or_else(PoisonError::into_inner).remove(container).unwrap_or_default();
        for (rel, made) in record.iter().rev() {
            let done = match made {
                Made::Bind => unmount_beneath(self.mounts.as_fd(), rel),
                Made::Dir | Made::File => remove_entry(self.mounts.as_fd(), rel, *made == Made::Dir),
            };
            if let Err(err) = done {
                warn!(log, "cannot undo a share"; "container" => container, "path" => %self.host_path(rel).display(),
                      "what" => ?made, "error" => %err);
            }
        }
    }

    /// Releases every container, then unmounts `shared/` and `mounts/` (their leftovers go with
    /// the state directory).
    pub fn teardown(&self, log: &Logger) {
        let containers: Vec<String> =
            self.made.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect();
        for container in containers {
            self.release(&container, log);
        }
        for name in [SHARED_DIR, MOUNTS_DIR] {
            let path = self.dir.join(name);
            match umount2(&path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
                // Not (or no longer) a mount point: a second teardown.
                Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
                Err(err) => warn!(log, "cannot unmount"; "path" => %path.display(), "error" => %err),
            }
        }
    }

    fn host_path(&self, rel: &Path) -> PathBuf {
        self.dir.join(MOUNTS_DIR).join(rel)
    }
}

/// `<container>/<name>` when both are plain relative components (`name` may have several).
fn checked_rel(container: &str, name: &str) -> Result<PathBuf, ShareError> {
    let bad = |why| ShareError::BadName { container: container.to_owned(), name: name.to_owned(), why };
    if container.is_empty() || container.contains('/') || container == "." || container == ".." {
        return Err(bad("the container id is not one path component"));
    }
    if name.is_empty() || Path::new(name).components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(bad("the name is not a relative path of plain components"));
    }
    if container.contains('\0') || name.contains('\0') {
        return Err(bad("a NUL byte"));
    }
    Ok(Path::new(container).join(name))
}

/// Unmounts every mount at or below `dir` (deepest first), each one reached without following
/// a symlink from `dir`'s parent; returns what it did, for logs. A mount met through a path
/// that is no longer real (a renamed or replaced directory) is left, and said.
pub fn unmount_all(dir: &Path, log: &Logger) -> Vec<String> {
    let mut done = Vec::new();
    let Some((parent, name)) = dir.parent().zip(dir.file_name()) else { return done };
    let Ok(base) = open_dir_nofollow(parent) else { return done };
    // Deepest first, mountinfo read again after each one: an unmount in mounts/ takes its copy
    // in shared/ along (propagation), and a path that failed once is not tried again.
    let mut failed: Vec<PathBuf> = Vec::new();
    loop {
        let mut mounted: Vec<PathBuf> = mounts_under(dir).into_iter().filter(|p| !failed.contains(p)).collect();
        mounted.sort_by_key(|p| p.components().count());
        let Some(target) = mounted.pop() else { break };
        let rel = match target.strip_prefix(parent) {
            Ok(rel) if !rel.as_os_str().is_empty() => rel.to_owned(),
            _ => PathBuf::from(name),
        };
        match unmount_beneath(base.as_fd(), &rel) {
            Ok(()) => done.push(format!("unmounted {}", target.display())),
            Err(err) => {
                warn!(log, "cannot unmount"; "path" => %target.display(), "error" => %err);
                failed.push(target);
            }
        }
    }
    done
}

/// Mount points at or below `dir`, from this thread's `mountinfo`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(OsString::from_vec(unescape_mountinfo(field))))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = bytes[i + 1..i + 4].iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
            out.push(u8::try_from(value).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Removes `dir` and everything below it without following a symlink (a link is removed, not
/// its target) and without entering a mount point (it stays, with its parents, and is
/// returned). Harmless when `dir` does not exist.
pub fn remove_tree(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let base = match open_dir_nofollow(parent) {
        Ok(fd) => fd,
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut kept = Vec::new();
    remove_below(base.as_fd(), name, dir, &mut kept)?;
    Ok(kept)
}

fn remove_below(parent: BorrowedFd<'_>, name: &OsStr, path: &Path, kept: &mut Vec<PathBuf>) -> io::Result<()> {
    let c = cstring(name.as_bytes())?;
    let st = match fstatat_nofollow(parent, &c) {
        Ok(st) => st,
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(err) => return Err(err),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return unlinkat(parent, &c, 0);
    }
    let dir = match open_beneath(parent, Path::new(name), libc::O_RDONLY | libc::O_DIRECTORY, libc::RESOLVE_NO_XDEV) {
        Ok(fd) => fd,
        Err(err) if err.raw_os_error() == Some(libc::EXDEV) => {
            kept.push(path.to_owned());
            return Ok(());
        }
        Err(err) => return Err(err),
    };
    let mut entries = nix::dir::Dir::from_fd(dir).map_err(io::Error::from)?;
    let mut names = Vec::new();
    for entry in entries.iter() {
        let entry = entry.map_err(io::Error::from)?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_owned());
        }
    }
    // SAFETY: the descriptor belongs to `entries`, which stays open until the end of this
    // function, past every use of `dir_fd`.
    let dir_fd = unsafe { BorrowedFd::borrow_raw(entries.as_raw_fd()) };
    let before = kept.len();
    for child in names {
        remove_below(dir_fd, &child, &path.join(&child), kept)?;
    }
    if kept.len() > before {
        // A mount point stays below: so does this directory.
        return Ok(());
    }
    unlinkat(parent, &c, libc::AT_REMOVEDIR)
}

/// Unmounts the mount at `rel` below `base`: the parent is opened without following a symlink,
/// the last component is not followed either.
fn unmount_beneath(base: BorrowedFd<'_>, rel: &Path) -> io::Result<()> {
    let (parent, name) = split(rel)?;
    let dir = open_beneath(base, parent, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    let mut target = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    target.push(name);
    umount2(&target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).map_err(io::Error::from)
}

/// Removes the directory (`dir`) or file the shim made at `rel` below `base`, refusing a
/// symlink, a mount point or an entry of another type.
fn remove_entry(base: BorrowedFd<'_>, rel: &Path, dir: bool) -> io::Result<()> {
    let (parent, name) = split(rel)?;
    let parent = open_beneath(base, parent, libc::O_PATH | libc::O_DIRECTORY, libc::RESOLVE_NO_XDEV)?;
    let c = cstring(name.as_bytes())?;
    let st = fstatat_nofollow(parent.as_fd(), &c)?;
    let want = if dir { libc::S_IFDIR } else { libc::S_IFREG };
    if st.st_mode & libc::S_IFMT != want {
        return Err(io::Error::other("not what the shim made there (replaced): left"));
    }
    // rmdir refuses a mount point (EBUSY) and a non-empty directory.
    unlinkat(parent.as_fd(), &c, if dir { libc::AT_REMOVEDIR } else { 0 })
}

fn split(rel: &Path) -> io::Result<(&Path, &OsStr)> {
    match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

/// Makes directory or empty file `name` in `parent` (mode [`MODE`]); EEXIST when it exists,
/// whatever it is.
fn make_entry(parent: BorrowedFd<'_>, name: &OsStr, dir: bool) -> io::Result<()> {
    let c = cstring(name.as_bytes())?;
    if dir {
        // SAFETY: `parent` is an open directory descriptor and `c` a NUL-terminated name;
        // mkdirat(2) keeps neither.
        let rc = unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), MODE) };
        return if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
    }
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_WRONLY | libc::O_CLOEXEC;
    // SAFETY: as above; O_CREAT takes the mode as the variadic argument.
    let fd = unsafe { libc::openat(parent.as_raw_fd(), c.as_ptr(), flags, MODE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor that nothing else owns; dropping it closes it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// openat2(2) of `rel` below `base` with `RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH | extra`.
fn open_beneath(base: BorrowedFd<'_>, rel: &Path, flags: i32, extra: u64) -> io::Result<OwnedFd> {
    openat2(base, rel, flags, 0, libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_BENEATH | extra)
}

/// openat2(2) of `rel` (`.` when empty) from `base` with `resolve`; `mode` for O_CREAT.
fn openat2(base: BorrowedFd<'_>, rel: &Path, flags: i32, mode: libc::mode_t, resolve: u64) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let c = cstring(rel.as_os_str().as_bytes())?;
    // SAFETY: open_how is plain data; all-zero is its documented "no options" value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::try_from(flags | libc::O_CLOEXEC).unwrap_or_default();
    how.mode = u64::from(mode);
    how.resolve = resolve;
    loop {
        // SAFETY: `c` is NUL-terminated and `how` a properly sized open_how; both outlive the
        // call and the kernel only reads them.
        let fd = unsafe {
            libc::syscall(libc::SYS_openat2, base.as_raw_fd(), c.as_ptr(), &how, std::mem::size_of::<libc::open_how>())
        };
        if fd >= 0 {
            // SAFETY: openat2 returned a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).unwrap_or(-1)) });
        }
        let err = io::Error::last_os_error();
        // EAGAIN: a concurrent rename raced the lookup; the kernel asks for a retry.
        if err.raw_os_error() != Some(libc::EAGAIN) {
            return Err(err);
        }
    }
}

/// A directory given by a host path the shim chose, its last component not followed.
fn open_dir_nofollow(path: &Path) -> io::Result<OwnedFd> {
    let c = cstring(path.as_os_str().as_bytes())?;
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A detached copy of the mount tree at `source` (open_tree(2) with OPEN_TREE_CLONE).
fn open_tree_clone(source: &Path) -> io::Result<OwnedFd> {
    let c = cstring(source.as_os_str().as_bytes())?;
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint;
    // SAFETY: `c` is NUL-terminated and outlives the call; AT_FDCWD needs no descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).unwrap_or(-1)) })
}

/// Sets `attr` and makes private every mount of the detached tree `tree` (mount_setattr(2),
/// AT_RECURSIVE): the tree leaves the peer group of its source, so a mount made later under
/// the source on the host does not propagate into it.
fn set_attr_private(tree: BorrowedFd<'_>, attr: u64) -> io::Result<()> {
    let how = MountAttr { attr_set: attr, propagation: libc::MS_PRIVATE, ..Default::default() };
    let flags = libc::AT_EMPTY_PATH | libc::AT_RECURSIVE;
    // SAFETY: `tree` is an open mount descriptor, the path is the empty NUL-terminated string
    // and `how` a properly sized mount_attr; the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &how,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Attaches the detached tree `tree` on `target` (an O_PATH descriptor).
fn move_mount(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    let flags = MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH;
    // SAFETY: both descriptors are open and the paths the empty NUL-terminated string.
    let rc = unsafe {
        libc::syscall(libc::SYS_move_mount, tree.as_raw_fd(), c"".as_ptr(), target.as_raw_fd(), c"".as_ptr(), flags)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn fstatat_nofollow(parent: BorrowedFd<'_>, name: &CString) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data, filled by the kernel below.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `parent` is open, `name` NUL-terminated, `st` a valid stat buffer.
    let rc = unsafe { libc::fstatat(parent.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if rc == 0 {
        Ok(st)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn unlinkat(parent: BorrowedFd<'_>, name: &CString, flags: i32) -> io::Result<()> {
    // SAFETY: `parent` is open and `name` NUL-terminated; unlinkat(2) never follows `name`.
    let rc = unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/run/a\040b"), b"/run/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), b"/plain");
        assert_eq!(unescape_mountinfo(r"/x\134y"), br"/x\y");
    }

    #[test]
    fn names_must_be_plain_components() {
        assert_eq!(checked_rel("c1", "mounts/1-data").unwrap(), Path::new("c1/mounts/1-data"));
        for (cid, name) in
            [("..", "rootfs"), ("a/b", "rootfs"), ("", "rootfs"), ("c1", "../x"), ("c1", "/etc"), ("c1", "")]
        {
            assert!(checked_rel(cid, name).is_err(), "{cid:?} {name:?}");
        }
    }
}
