//! The container's filesystem, following runc's prepareRootfs: private (or
//! the spec's) propagation, the rootfs bound onto itself, the spec's mounts
//! with every destination resolved inside the rootfs, devices, then
//! `pivot_root(".", ".")` and the detach of the old root; after it the
//! readonly and masked paths, sysctls, hostname and a read-only root.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::{LinuxDeviceType, Mount, Spec};

use super::error::WireError;
use super::mountopts;
use super::resolve::{mkdir_all_in_root, open_in_root, proc_fd_path, touch_in_root};

const NONE: Option<&str> = None;

fn sys(what: impl std::fmt::Display) -> impl FnOnce(nix::Error) -> WireError {
    move |e| WireError::sys(what, e)
}

/// The rootfs path of the spec; it must be absolute.
pub(crate) fn root_path(spec: &Spec) -> Result<PathBuf, WireError> {
    let root = spec.root().as_ref().ok_or_else(|| WireError::invalid("the spec has no root"))?;
    if !root.path().is_absolute() {
        return Err(WireError::invalid(format!("root.path {} is not absolute", root.path().display())));
    }
    Ok(root.path().clone())
}

/// Everything before pivot_root. Returns the rootfs, opened after its bind
/// mount (so it names the new mount).
pub(crate) fn prepare(spec: &Spec, bundle: &Path, log: &mut dyn FnMut(String)) -> Result<OwnedFd, WireError> {
    let root = root_path(spec)?;
    let linux = spec.linux().clone().unwrap_or_default();
    let propagation = match linux.rootfs_propagation().as_deref() {
        None | Some("") => MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        Some(p) => mountopts::propagation_of(p)
            .ok_or_else(|| WireError::invalid(format!("linux.rootfsPropagation {p:?} is not a propagation")))?,
    };
    mount(NONE, "/", NONE, propagation, NONE).map_err(sys("make / private (mount propagation)"))?;
    mount(Some(&root), &root, NONE, MsFlags::MS_BIND | MsFlags::MS_REC, NONE)
        .map_err(sys(format!("bind the rootfs {} onto itself", root.display())))?;
    let root_fd: OwnedFd = std::fs::File::open(&root)
        .map_err(|e| WireError::sys(format!("open the rootfs {}", root.display()), e))?
        .into();
    let mounts = spec.mounts().clone().unwrap_or_default();
    for m in &mounts {
        mount_one(root_fd.as_fd(), m, bundle, log)?;
    }
    if let Some(cwd) = spec.process().as_ref().map(|p| p.cwd()).filter(|c| !c.as_os_str().is_empty()) {
        mkdir_all_in_root(root_fd.as_fd(), cwd, 0o755)
            .map_err(|e| WireError::sys(format!("create the working directory {}", cwd.display()), e))?;
    }
    let has_pts = mounts.iter().any(|m| m.destination() == Path::new("/dev/pts"));
    devices(root_fd.as_fd(), spec, has_pts)?;
    if spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false) {
        if let Err(e) = console(root_fd.as_fd()) {
            log(format!("no /dev/console for the terminal ({e}); `tty` will say \"not a tty\""));
        }
    }
    Ok(root_fd)
}

/// Binds the terminal (fd 0, a pty of the agent's devpts, which the
/// container's own `/dev/pts` does not show) onto `/dev/console`, as runc
/// does: [`reopen_console`] then gives the process descriptors whose path
/// exists in the container, so ttyname(3) finds its terminal.
fn console(root: BorrowedFd<'_>) -> Result<(), WireError> {
    // By its path: fd 0 was opened in the agent's mount namespace, and a
    // bind source must be a mount of this one (EINVAL otherwise), which is a
    // copy holding the same devpts at the same place.
    let pty = std::fs::read_link("/proc/self/fd/0").map_err(|e| WireError::sys("read the terminal's path", e))?;
    if !pty.starts_with("/dev/pts") {
        return Err(WireError::invalid(format!("the terminal {} is not under /dev/pts", pty.display())));
    }
    let target =
        touch_in_root(root, Path::new("/dev/console")).map_err(|e| WireError::sys("create /dev/console", e))?;
    mount(Some(&pty), &proc_fd_path(&target), NONE, MsFlags::MS_BIND, NONE)
        .map_err(sys(format!("bind the terminal {} onto /dev/console", pty.display())))
}

/// After pivot_root: stdin, stdout and stderr become `/dev/console` (the
/// same terminal, now through a path of the container) when it was bound.
pub(crate) fn reopen_console() -> Result<(), WireError> {
    let Ok(console) = nix::fcntl::open(
        "/dev/console",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        return Ok(());
    };
    let same = |a: &nix::sys::stat::FileStat, b: &nix::sys::stat::FileStat| a.st_rdev == b.st_rdev;
    let (Ok(c), Ok(zero)) = (nix::sys::stat::fstat(&console), nix::sys::stat::fstat(std::io::stdin())) else {
        return Ok(());
    };
    if !same(&c, &zero) {
        return Ok(());
    }
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which this process owns; `console` stays open.
        let rc = unsafe { libc::dup2(console.as_raw_fd(), fd) };
        if rc < 0 {
            return Err(WireError::sys("dup /dev/console onto stdio", io::Error::last_os_error()));
        }
    }
    Ok(())
}

fn mount_one(root: BorrowedFd<'_>, m: &Mount, bundle: &Path, log: &mut dyn FnMut(String)) -> Result<(), WireError> {
    let dest = m.destination();
    let typ = m.typ().clone().unwrap_or_default();
    let opts = mountopts::parse(&typ, &m.options().clone().unwrap_or_default());
    for ig in &opts.ignored {
        log(format!("mount {}: option {ig:?} is not supported; ignored", dest.display()));
    }
    let at = |what: &str| format!("mount {} ({what})", dest.display());
    let reopen =
        || open_in_root(root, dest, libc::O_PATH, 0).map_err(|e| WireError::sys(at("reopen the mount point"), e));
    if typ == "cgroup" || typ == "cgroup2" {
        let target = mkdir_all_in_root(root, dest, 0o755).map_err(|e| WireError::sys(at("mount point"), e))?;
        mount_cgroup(&target, opts.flags).map_err(|e| WireError::sys(at("cgroup"), e))?;
    } else if opts.is_bind() {
        let src = m.source().clone().ok_or_else(|| WireError::invalid(at("a bind mount without a source")))?;
        let src = if src.is_absolute() { src } else { bundle.join(src) };
        let meta = std::fs::metadata(&src).map_err(|e| WireError::sys(at(&format!("source {}", src.display())), e))?;
        let target = if meta.is_dir() { mkdir_all_in_root(root, dest, 0o755) } else { touch_in_root(root, dest) }
            .map_err(|e| WireError::sys(at("mount point"), e))?;
        let rec = opts.flags & MsFlags::MS_REC;
        mount(Some(&src), &proc_fd_path(&target), NONE, MsFlags::MS_BIND | rec, NONE)
            .map_err(sys(at(&format!("bind {}", src.display()))))?;
        let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            let target = reopen()?;
            remount_bind(&proc_fd_path(&target), extra | rec).map_err(|e| WireError::sys(at("remount"), e))?;
        }
    } else {
        let target = mkdir_all_in_root(root, dest, 0o755).map_err(|e| WireError::sys(at("mount point"), e))?;
        let src = m.source().clone().unwrap_or_else(|| PathBuf::from(&typ));
        let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
        let flags = opts.flags & !MsFlags::MS_REC;
        let fstype = (!typ.is_empty()).then_some(typ.as_str());
        mount(Some(&src), &proc_fd_path(&target), fstype, flags, data).map_err(sys(at(&format!("type {typ}"))))?;
    }
    for p in &opts.propagation {
        let target = reopen()?;
        mount(NONE, &proc_fd_path(&target), NONE, *p, NONE).map_err(sys(at("propagation")))?;
    }
    Ok(())
}

/// The flags a bind remount must keep: in a user namespace the kernel
/// refuses to clear nosuid/nodev/noexec that the source mount has.
fn locked_flags(path: &Path) -> MsFlags {
    let mut out = MsFlags::empty();
    if let Ok(st) = nix::sys::statvfs::statvfs(path) {
        use nix::sys::statvfs::FsFlags;
        let f = st.flags();
        for (fs, ms) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        ] {
            if f.contains(fs) {
                out |= ms;
            }
        }
    }
    out
}

fn remount_bind(path: &Path, flags: MsFlags) -> nix::Result<()> {
    let flags = flags | locked_flags(path) | MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    mount(NONE, path, NONE, flags, NONE)
}

/// cgroup2 is mounted fresh (the container's cgroup namespace decides what
/// it shows); cgroup v1, or a refused cgroup2 mount, gets the agent's
/// /sys/fs/cgroup bound instead.
fn mount_cgroup(target: &OwnedFd, flags: MsFlags) -> nix::Result<()> {
    let path = proc_fd_path(target);
    let v2 = nix::sys::statfs::statfs("/sys/fs/cgroup")
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false);
    let flags = flags & (MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    if v2 && mount(Some("cgroup2"), &path, Some("cgroup2"), flags, NONE).is_ok() {
        return Ok(());
    }
    mount(Some("/sys/fs/cgroup"), &path, NONE, MsFlags::MS_BIND | MsFlags::MS_REC, NONE)?;
    if flags.contains(MsFlags::MS_RDONLY) {
        let fresh = std::fs::read_link(&path).map_err(|_| nix::Error::EINVAL)?;
        remount_bind(&fresh, flags | MsFlags::MS_REC)?;
    }
    Ok(())
}

fn cstr(p: &Path) -> Result<CString, WireError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| WireError::invalid(format!("path {:?} has a NUL", p)))
}

/// The character devices every container gets (runc's defaults).
const DEFAULT_DEVICES: [(&str, u32, u32); 6] =
    [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

fn devices(root: BorrowedFd<'_>, spec: &Spec, has_pts: bool) -> Result<(), WireError> {
    for (name, major, minor) in DEFAULT_DEVICES {
        make_device(root, &Path::new("/dev").join(name), libc::S_IFCHR, 0o666, (major, minor), (0, 0))?;
    }
    let devs = spec.linux().as_ref().and_then(|l| l.devices().clone()).unwrap_or_default();
    for d in &devs {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
            LinuxDeviceType::B => libc::S_IFBLK,
            LinuxDeviceType::P => libc::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(WireError::invalid(format!("device {}: type \"a\" is not a device", d.path().display())))
            }
        };
        let mode = d.file_mode().unwrap_or(0o666) & 0o7777;
        let (major, minor) = (d.major() as u32, d.minor() as u32);
        make_device(root, d.path(), kind, mode, (major, minor), (d.uid().unwrap_or(0), d.gid().unwrap_or(0)))?;
    }
    let dev = mkdir_all_in_root(root, Path::new("/dev"), 0o755).map_err(|e| WireError::sys("create /dev", e))?;
    let mut links = vec![
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("core", "/proc/kcore"));
    }
    if has_pts {
        unlink_at(&dev, "ptmx")?;
        links.push(("ptmx", "pts/ptmx"));
    }
    for (name, target) in links {
        let (n, t) = (cstr(Path::new(name))?, cstr(Path::new(target))?);
        // SAFETY: both strings are NUL-terminated and `dev` is an open directory.
        let rc = unsafe { libc::symlinkat(t.as_ptr(), dev.as_raw_fd(), n.as_ptr()) };
        let err = io::Error::last_os_error();
        if rc != 0 && err.raw_os_error() != Some(libc::EEXIST) {
            return Err(WireError::sys(format!("symlink /dev/{name}"), err));
        }
    }
    Ok(())
}

fn unlink_at(dir: &OwnedFd, name: &str) -> Result<(), WireError> {
    let n = cstr(Path::new(name))?;
    // SAFETY: `n` is NUL-terminated and `dir` an open directory.
    let rc = unsafe { libc::unlinkat(dir.as_raw_fd(), n.as_ptr(), 0) };
    let err = io::Error::last_os_error();
    if rc != 0 && err.raw_os_error() != Some(libc::ENOENT) {
        return Err(WireError::sys(format!("remove the old {name}"), err));
    }
    Ok(())
}

/// mknod inside the root; where mknod is denied (a user namespace, a shared
/// filesystem), an empty file with the host's device bound onto it, as runc
/// does in a user namespace.
fn make_device(
    root: BorrowedFd<'_>,
    path: &Path,
    kind: libc::mode_t,
    mode: u32,
    (major, minor): (u32, u32),
    (uid, gid): (u32, u32),
) -> Result<(), WireError> {
    let what = |w: &str| format!("device {}: {w}", path.display());
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().ok_or_else(|| WireError::invalid(what("no file name")))?;
    let dir = mkdir_all_in_root(root, parent, 0o755).map_err(|e| WireError::sys(what("parent directory"), e))?;
    unlink_at(&dir, &name.to_string_lossy())?;
    let n = cstr(Path::new(name))?;
    // SAFETY: `n` is NUL-terminated and `dir` an open directory.
    let rc = unsafe { libc::mknodat(dir.as_raw_fd(), n.as_ptr(), kind | mode, libc::makedev(major, minor)) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        // EPERM: a user namespace; EOPNOTSUPP/EACCES: a shared filesystem
        // (9p, virtio-fs) that will not hold device nodes.
        let denied = matches!(err.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP | libc::EACCES));
        if !denied || kind == libc::S_IFIFO {
            return Err(WireError::sys(what("mknod"), err));
        }
        let target = touch_in_root(root, path).map_err(|e| WireError::sys(what("bind target"), e))?;
        mount(Some(path), &proc_fd_path(&target), NONE, MsFlags::MS_BIND, NONE)
            .map_err(sys(what("bind from the host")))?;
        return Ok(());
    }
    // SAFETY: as above; AT_SYMLINK_NOFOLLOW keeps the change on the node just made.
    let rc = unsafe { libc::fchmodat(dir.as_raw_fd(), n.as_ptr(), mode, 0) };
    if rc != 0 {
        return Err(WireError::sys(what("chmod"), io::Error::last_os_error()));
    }
    // SAFETY: as above.
    let rc = unsafe { libc::fchownat(dir.as_raw_fd(), n.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        return Err(WireError::sys(what("chown"), io::Error::last_os_error()));
    }
    Ok(())
}

/// pivot_root(".", ".") from inside the rootfs, then the old root (now
/// stacked under the new one) is made a slave, so its detach cannot
/// propagate to the agent's mounts, and detached.
///
/// The initramfs a VM's agent runs from cannot be pivoted away from (the
/// kernel says EINVAL); there the rootfs is moved over `/` and chrooted
/// into, as switch_root and runc's `--no-pivot` do. Returns whether that
/// fallback was used, for the log.
pub(crate) fn pivot(root: &OwnedFd) -> Result<bool, WireError> {
    nix::unistd::fchdir(root).map_err(sys("chdir into the rootfs"))?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            mount(NONE, ".", NONE, MsFlags::MS_SLAVE | MsFlags::MS_REC, NONE)
                .map_err(sys("make the old root a slave"))?;
            umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach the old root"))?;
            nix::unistd::chdir("/").map_err(sys("chdir /"))?;
            Ok(false)
        }
        Err(nix::Error::EINVAL) if on_initramfs() => {
            mount(Some("."), "/", NONE, MsFlags::MS_MOVE, NONE).map_err(sys("move the rootfs over / (no pivot)"))?;
            nix::unistd::chroot(".").map_err(sys("chroot into the rootfs"))?;
            nix::unistd::chdir("/").map_err(sys("chdir /"))?;
            Ok(true)
        }
        Err(e) => Err(WireError::sys("pivot_root", e)),
    }
}

/// Whether `/` is the kernel's initial rootfs (ramfs or tmpfs), which
/// pivot_root refuses.
fn on_initramfs() -> bool {
    use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
    const RAMFS_MAGIC: FsType = FsType(0x858458f6);
    statfs("/").map(|s| s.filesystem_type() == RAMFS_MAGIC || s.filesystem_type() == TMPFS_MAGIC).unwrap_or(false)
}

/// The container's uts namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Uts {
    New,
    Joined,
    Host,
}

/// Everything after pivot_root, inside the new root.
pub(crate) fn finish(spec: &Spec, uts: Uts) -> Result<(), WireError> {
    paths_and_sysctls(spec)?;
    names(spec, uts)?;
    if spec.root().as_ref().is_some_and(|r| r.readonly() == Some(true)) {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY).map_err(sys("remount the rootfs read-only"))?;
    }
    Ok(())
}

fn paths_and_sysctls(spec: &Spec) -> Result<(), WireError> {
    let linux = spec.linux().clone().unwrap_or_default();
    for (key, value) in linux.sysctl().clone().unwrap_or_default() {
        let rel = key.replace('.', "/");
        if key.is_empty() || rel.split('/').any(|c| c.is_empty() || c == "..") {
            return Err(WireError::invalid(format!("sysctl {key:?} is not a sysctl name")));
        }
        let path = Path::new("/proc/sys").join(rel);
        std::fs::write(&path, value.as_bytes()).map_err(|e| WireError::sys(format!("sysctl {key}={value}"), e))?;
    }
    for p in linux.readonly_paths().clone().unwrap_or_default() {
        let path = Path::new(&p);
        match mount(Some(path), path, NONE, MsFlags::MS_BIND | MsFlags::MS_REC, NONE) {
            Err(nix::Error::ENOENT) => continue,
            r => r.map_err(sys(format!("readonly path {p}: bind")))?,
        }
        remount_bind(path, MsFlags::MS_RDONLY | MsFlags::MS_REC).map_err(sys(format!("readonly path {p}: remount")))?;
    }
    for p in linux.masked_paths().clone().unwrap_or_default() {
        let path = Path::new(&p);
        let r = match std::fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(WireError::sys(format!("masked path {p}"), e)),
            Ok(m) if m.is_dir() => mount(Some("tmpfs"), path, Some("tmpfs"), MsFlags::MS_RDONLY, NONE),
            Ok(_) => mount(Some("/dev/null"), path, NONE, MsFlags::MS_BIND, NONE),
        };
        r.map_err(sys(format!("masked path {p}")))?;
    }
    Ok(())
}

/// Hostname and domainname.
fn names(spec: &Spec, uts: Uts) -> Result<(), WireError> {
    // Only in a uts namespace of its own: a joined one (Kata's sandbox-wide
    // namespace) belongs to whoever made it; none at all is refused, as runc does.
    let hostname = spec.hostname().as_deref().filter(|h| !h.is_empty());
    let domainname = spec.domainname().as_deref().filter(|d| !d.is_empty());
    if uts == Uts::Host && (hostname.is_some() || domainname.is_some()) {
        return Err(WireError::invalid("a hostname or domainname needs a uts namespace"));
    }
    if uts != Uts::New {
        return Ok(());
    }
    if let Some(h) = hostname {
        nix::unistd::sethostname(h).map_err(sys(format!("sethostname {h:?}")))?;
    }
    if let Some(d) = domainname {
        // SAFETY: the pointer and length describe `d`, which outlives the call.
        let rc = unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) };
        if rc != 0 {
            return Err(WireError::sys(format!("setdomainname {d:?}"), io::Error::last_os_error()));
        }
    }
    Ok(())
}
