//! A read-only rootfs, read-only on the host: the mount points a container needs are made in
//! its rootfs on the host first, as runc makes them before it remounts the root read-only.
//!
//! The agent mounts the spec's mounts inside the rootfs it gets through the share, and makes
//! each missing mount point there (a CRI pause container's `/etc/resolv.conf`, `/proc`, ...),
//! then its device nodes under `/dev` and the working directory. Through a read-only bind it
//! cannot (EROFS), so before the rootfs is shared the shim makes exactly what the agent would:
//! every mount's destination that is not beneath an earlier mount (those are made in that
//! mount, a tmpfs `/dev` or a volume, by the agent), a directory or, for a bind of a file, an
//! empty file, and the working directory. The agent then finds them and makes nothing.
//!
//! Paths are resolved the way the agent (and runc's securejoin) resolves them:
//! `openat2(RESOLVE_IN_ROOT)` from a descriptor of the rootfs, so a symlink an image planted
//! (`/etc -> /host/etc`, `../../..`) is followed as if the rootfs were `/` and never leaves
//! it; magic links are refused (`RESOLVE_NO_MAGICLINKS`), and so is a path that would cross
//! into another mount (`RESOLVE_NO_XDEV`). Entries are made with `mkdirat` and
//! `O_CREAT | O_EXCL` on the directory so opened, never through a path.
//!
//! When the shim cannot know what the agent will need (a spec with nothing mounted on `/dev`,
//! where the agent makes device nodes in the rootfs itself; a bind whose source is not on the
//! host and whose destination is missing), the rootfs stays writable on the host and only the
//! guest makes it read-only, as before ([`RootfsAccess::GuestReadOnly`] says why).

use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Spec;

use super::{cstring, openat2};
use crate::volumes::direct::VOLUME_TYPES;

/// `RESOLVE_NO_MAGICLINKS` of `<linux/openat2.h>`.
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
/// How every path in the rootfs is resolved.
const IN_ROOT: u64 = libc::RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV;
/// Modes of what is made (the agent's and runc's).
const DIR_MODE: libc::mode_t = 0o755;
const FILE_MODE: libc::mode_t = 0o644;

/// A mount point the rootfs cannot be given.
#[derive(Debug, thiserror::Error)]
#[error("cannot make the mount point {destination} in the read-only rootfs {root}")]
pub struct MountPointError {
    /// The path inside the container.
    pub destination: PathBuf,
    /// The rootfs on the host.
    pub root: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// How the container's rootfs is to be shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsAccess {
    /// Writable (`root.readonly` is not set).
    ReadWrite,
    /// Read-only on the host: the mount points are made.
    ReadOnly,
    /// `root.readonly`, but the agent will need to write in it: read-only in the guest only.
    GuestReadOnly {
        /// What the agent would write.
        why: String,
    },
}

impl RootfsAccess {
    /// Whether the host bind is read-only.
    pub fn on_host(&self) -> bool {
        *self == Self::ReadOnly
    }
}

/// What the agent needs at a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A file (a bind of a file).
    File,
    /// It cannot be told on the host (a bind of a guest path): it must exist already.
    Existing,
}

/// The mount points the agent will look for in the rootfs of `spec` (relative to the
/// rootfs, in the spec's order), or why they cannot be known. `bundle` resolves relative
/// bind sources.
pub fn needed(spec: &Spec, bundle: &Path) -> Result<Vec<(PathBuf, Kind)>, String> {
    let mounts = spec.mounts().clone().unwrap_or_default();
    if !mounts.iter().any(|m| relative(m.destination()) == Some(PathBuf::from("dev"))) {
        return Err("nothing is mounted on /dev, so the agent makes device nodes in the rootfs".to_owned());
    }
    let devices = spec.linux().as_ref().and_then(|l| l.devices().clone()).unwrap_or_default();
    if let Some(d) = devices.iter().find(|d| !relative(d.path()).is_some_and(|p| p.starts_with("dev"))) {
        return Err(format!("device {} is outside /dev", d.path().display()));
    }
    let mut out: Vec<(PathBuf, Kind)> = Vec::new();
    let mut covered: Vec<PathBuf> = Vec::new();
    for m in &mounts {
        // A destination with `..` is refused by the agent; nothing to make for it.
        let Some(dest) = relative(m.destination()) else { continue };
        let beneath = covered.iter().any(|c| dest.starts_with(c));
        covered.push(dest.clone());
        if beneath || dest.as_os_str().is_empty() {
            continue;
        }
        let typ = m.typ().as_deref().unwrap_or_default();
        let options = m.options().clone().unwrap_or_default();
        let bind = typ == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        let kind = if !bind || VOLUME_TYPES.contains(&typ) {
            Kind::Dir
        } else {
            let source = m.source().clone().unwrap_or_default();
            let source = if source.is_absolute() { source } else { bundle.join(source) };
            // The guest's source is this one shared, or, for /proc, /sys and /dev, the guest's
            // own of the same kind.
            match std::fs::metadata(&source) {
                Ok(meta) if meta.is_dir() => Kind::Dir,
                Ok(_) => Kind::File,
                Err(_) => Kind::Existing,
            }
        };
        out.push((dest, kind));
    }
    let cwd = spec.process().as_ref().map(|p| p.cwd().clone()).unwrap_or_default();
    if let Some(cwd) = relative(&cwd).filter(|c| !c.as_os_str().is_empty()) {
        if !covered.iter().any(|c| cwd.starts_with(c)) {
            out.push((cwd, Kind::Dir));
        }
    }
    Ok(out)
}

/// Decides how the rootfs at `root` is shared and, for [`RootfsAccess::ReadOnly`], makes in it
/// every mount point [`needed`] lists.
pub fn prepare(root: &Path, spec: &Spec, bundle: &Path) -> Result<RootfsAccess, MountPointError> {
    if spec.root().as_ref().and_then(|r| r.readonly()) != Some(true) {
        return Ok(RootfsAccess::ReadWrite);
    }
    let needs = match needed(spec, bundle) {
        Ok(needs) => needs,
        Err(why) => return Ok(RootfsAccess::GuestReadOnly { why }),
    };
    let fail = |destination: &Path| {
        let destination = Path::new("/").join(destination);
        move |source| MountPointError { destination, root: root.to_owned(), source }
    };
    let root_fd = open_root(root).map_err(fail(Path::new("")))?;
    // Checked first, so a refusal leaves the rootfs as it was.
    for (dest, kind) in &needs {
        if *kind == Kind::Existing && open_in_root(root_fd.as_fd(), dest, libc::O_PATH, 0).is_err() {
            return Ok(RootfsAccess::GuestReadOnly {
                why: format!("the bind on /{} has a source the host does not have", dest.display()),
            });
        }
    }
    for (dest, kind) in &needs {
        match kind {
            Kind::Dir => drop(mkdir_all_in_root(root_fd.as_fd(), dest).map_err(fail(dest))?),
            Kind::File => touch_in_root(root_fd.as_fd(), dest).map_err(fail(dest))?,
            Kind::Existing => {}
        }
    }
    Ok(RootfsAccess::ReadOnly)
}

/// `path` made relative (its `/` and `.` dropped); `None` when it climbs with `..`.
fn relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => return None,
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// The rootfs, a path the shim chose (a bundle's or the one it mounted).
fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let c = cstring(root.as_os_str().as_bytes())?;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_in_root(root: BorrowedFd<'_>, rel: &Path, flags: i32, mode: libc::mode_t) -> io::Result<OwnedFd> {
    openat2(root, rel, flags, mode, IN_ROOT)
}

/// Opens directory `rel` of the rootfs (O_PATH), making each missing component (mode 0755)
/// in the directory its parent resolved to.
fn mkdir_all_in_root(root: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    let dir = libc::O_PATH | libc::O_DIRECTORY;
    let mut prefix = PathBuf::new();
    let mut current = open_in_root(root, &prefix, dir, 0)?;
    for name in rel.components() {
        prefix.push(name);
        current = match open_in_root(root, &prefix, dir, 0) {
            Ok(fd) => fd,
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                let c = cstring(name.as_os_str().as_bytes())?;
                // SAFETY: `current` is an open directory and `c` a NUL-terminated name; mkdirat
                // keeps neither and never follows a link at the name.
                let rc = unsafe { libc::mkdirat(current.as_raw_fd(), c.as_ptr(), DIR_MODE) };
                let err = io::Error::last_os_error();
                if rc != 0 && err.raw_os_error() != Some(libc::EEXIST) {
                    return Err(err);
                }
                // A dangling link at the name (EEXIST) fails here, as it does in the agent.
                open_in_root(root, &prefix, dir, 0)?
            }
            Err(err) => return Err(err),
        };
    }
    Ok(current)
}

/// Makes sure a file (or anything but a missing entry) is at `rel` in the rootfs, making its
/// parents. A dangling link there is followed inside the rootfs, as the agent would.
fn touch_in_root(root: BorrowedFd<'_>, rel: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let dir = mkdir_all_in_root(root, parent)?;
    match open_in_root(root, rel, libc::O_PATH, 0) {
        Ok(_) => return Ok(()),
        Err(err) if err.raw_os_error() != Some(libc::ENOENT) => return Err(err),
        Err(_) => {}
    }
    let c = cstring(name.as_bytes())?;
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_WRONLY | libc::O_CLOEXEC;
    // SAFETY: `dir` is an open directory and `c` a NUL-terminated name; O_CREAT takes the
    // mode as the variadic argument.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, FILE_MODE) };
    if fd >= 0 {
        // SAFETY: openat returned a new descriptor that nothing else owns; dropping closes it.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EEXIST) {
        return Err(err);
    }
    // EEXIST: a dangling link; made where it leads, resolved in the rootfs.
    drop(open_in_root(root, rel, libc::O_CREAT | libc::O_WRONLY, FILE_MODE)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    const DEV: &str = r#"{"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}"#;

    #[test]
    fn mount_points_beneath_an_earlier_mount_are_the_agents() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("resolv.conf"), b"").unwrap();
        let s = spec(&format!(
            r#"{{"ociVersion": "1.0.2", "root": {{"path": "rootfs", "readonly": true}},
                "process": {{"args": ["sh"], "cwd": "/work/dir", "user": {{"uid": 0, "gid": 0}}}},
                "mounts": [{{"destination": "/proc", "type": "proc", "source": "proc"}}, {DEV},
                           {{"destination": "/dev/shm", "type": "tmpfs", "source": "shm"}},
                           {{"destination": "/etc/resolv.conf", "type": "bind", "source": "resolv.conf", "options": ["rbind"]}},
                           {{"destination": "/data", "type": "bind", "source": "{}", "options": ["rbind"]}},
                           {{"destination": "/data/sub", "type": "bind", "source": "/nonexistent", "options": ["rbind"]}},
                           {{"destination": "/x/../y", "type": "tmpfs", "source": "tmpfs"}}]}}"#,
            dir.path().display()
        ));
        let got = needed(&s, dir.path()).unwrap();
        let want: Vec<(PathBuf, Kind)> = vec![
            ("proc".into(), Kind::Dir),
            ("dev".into(), Kind::Dir),
            ("etc/resolv.conf".into(), Kind::File),
            ("data".into(), Kind::Dir),
            ("work/dir".into(), Kind::Dir),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn a_spec_without_dev_keeps_the_rootfs_writable_on_the_host() {
        let s = spec(
            r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs", "readonly": true},
                "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}]}"#,
        );
        assert!(needed(&s, Path::new("/")).unwrap_err().contains("/dev"));
        let dir = tempfile::tempdir().unwrap();
        let access = prepare(dir.path(), &s, dir.path()).unwrap();
        assert!(matches!(access, RootfsAccess::GuestReadOnly { .. }), "{access:?}");
        assert!(!access.on_host());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing made");
    }
    /// A readonly spec with `/dev` and a bind of file `source` on `dest`.
    fn file_bind(source: &Path, dest: &str) -> Spec {
        spec(&format!(
            r#"{{"ociVersion": "1.0.2", "root": {{"path": "rootfs", "readonly": true}},
                "process": {{"args": ["sh"], "cwd": "/", "user": {{"uid": 0, "gid": 0}}}},
                "mounts": [{DEV}, {{"destination": "{dest}", "type": "bind", "source": "{}", "options": ["rbind"]}}]}}"#,
            source.display()
        ))
    }

    /// A rootfs and, beside it, a host directory with a file an image would like to reach.
    fn rootfs_and_host() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (root, host) = (dir.path().join("rootfs"), dir.path().join("host"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("hostname"), b"secret").unwrap();
        (dir, root, host)
    }

    fn host_untouched(host: &Path) {
        assert_eq!(std::fs::read(host.join("hostname")).unwrap(), b"secret");
        assert_eq!(std::fs::read_dir(host).unwrap().count(), 1, "something was made on the host");
    }

    #[test]
    fn mount_points_are_made_and_existing_ones_kept() {
        let (dir, root, host) = rootfs_and_host();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hosts"), b"image").unwrap();
        let mut s = file_bind(&host.join("hostname"), "/etc/resolv.conf");
        let mut mounts = s.mounts().clone().unwrap();
        mounts.extend(file_bind(&host.join("hostname"), "/etc/hosts").mounts().clone().unwrap().into_iter().skip(1));
        mounts.extend(file_bind(&host, "/data/v").mounts().clone().unwrap().into_iter().skip(1));
        s.set_mounts(Some(mounts));
        assert_eq!(prepare(&root, &s, dir.path()).unwrap(), RootfsAccess::ReadOnly);
        assert!(root.join("dev").is_dir() && root.join("data/v").is_dir());
        assert!(std::fs::symlink_metadata(root.join("etc/resolv.conf")).unwrap().is_file());
        assert_eq!(std::fs::read(root.join("etc/hosts")).unwrap(), b"image", "an existing mount point is kept");
        assert_eq!(prepare(&root, &s, dir.path()).unwrap(), RootfsAccess::ReadOnly, "a second time finds them");
        host_untouched(&host);
    }

    #[test]
    fn a_symlinked_parent_is_resolved_inside_the_rootfs() {
        let (dir, root, host) = rootfs_and_host();
        // An absolute link that names a host directory: followed as if the rootfs were `/`.
        std::fs::create_dir_all(root.join(host.strip_prefix("/").unwrap())).unwrap();
        std::os::unix::fs::symlink(&host, root.join("etc")).unwrap();
        let s = file_bind(&host.join("hostname"), "/etc/hostname");
        assert_eq!(prepare(&root, &s, dir.path()).unwrap(), RootfsAccess::ReadOnly);
        assert!(root.join(host.strip_prefix("/").unwrap()).join("hostname").is_file(), "made inside the rootfs");
        host_untouched(&host);
    }

    #[test]
    fn a_link_that_leads_nowhere_inside_the_rootfs_is_refused_not_followed_out() {
        for (name, target) in [("climbing", PathBuf::from("../host")), ("absolute", PathBuf::from("/nonexistent/x"))] {
            let (dir, root, host) = rootfs_and_host();
            std::os::unix::fs::symlink(&target, root.join("etc")).unwrap();
            let err = prepare(&root, &file_bind(&host.join("hostname"), "/etc/hostname"), dir.path()).unwrap_err();
            assert_eq!(err.destination, Path::new("/etc/hostname"), "{name}");
            assert!(err.to_string().contains("/etc/hostname"), "{name}: {err}");
            host_untouched(&host);
        }
        // The file itself a link to a host file: resolved inside, where its parent is missing.
        let (dir, root, host) = rootfs_and_host();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink(host.join("hostname"), root.join("etc/hostname")).unwrap();
        assert!(prepare(&root, &file_bind(&host.join("hostname"), "/etc/hostname"), dir.path()).is_err());
        host_untouched(&host);
        // The link stays as the image made it.
        assert!(std::fs::symlink_metadata(root.join("etc/hostname")).unwrap().file_type().is_symlink());
    }

    #[test]
    fn a_bind_of_a_guest_path_must_find_its_mount_point() {
        let (dir, root, host) = rootfs_and_host();
        let s = file_bind(Path::new("/run/kata-containers/nonexistent"), "/share");
        let access = prepare(&root, &s, dir.path()).unwrap();
        assert!(matches!(&access, RootfsAccess::GuestReadOnly { why } if why.contains("/share")), "{access:?}");
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "a refusal makes nothing");
        std::fs::create_dir(root.join("share")).unwrap();
        assert_eq!(prepare(&root, &s, dir.path()).unwrap(), RootfsAccess::ReadOnly);
        let mut rw = s.clone();
        rw.set_root(Some(oci_spec::runtime::RootBuilder::default().path("rootfs").readonly(false).build().unwrap()));
        assert_eq!(prepare(&root, &rw, dir.path()).unwrap(), RootfsAccess::ReadWrite);
        host_untouched(&host);
    }
}
