//! What a VM's processes (QEMU, virtiofsd, vhost-device-vsock, StratoVirt) are confined to,
//! applied in the child between fork and exec.
//!
//! The guest is untrusted, so the processes that serve it are the host's first line: each one
//! - dies with the shim: `PR_SET_PDEATHSIG(SIGKILL)`, then the classic race check (if the shim
//!   died before the `prctl`, `getppid()` no longer names it and the child gives up). The
//!   signal follows the *thread* that forked, so [`super::process`] forks from one thread
//!   that lives as long as the shim;
//! - starts in the sandbox's cgroup ([`super::cgroup`]): it writes `0` (itself) into every
//!   `cgroup.procs` before exec, so nothing it forks (virtiofsd's sandbox children) escapes;
//! - in rootless mode, runs as the sandbox's own uid and gid with no supplementary groups
//!   ([`RunAs`]; the ids are claimed per sandbox so two sandboxes never share one);
//! - vhost-device-vsock, which needs neither privilege nor the host's files, also gets a
//!   private mount namespace where every mount is read-only but the VM's directory, no
//!   capabilities (the bounding set emptied, so exec grants none even to uid 0), and
//!   `no_new_privs`.
//!
//! Everything the child needs is prepared before the fork ([`ChildSetup::new`]): between fork
//! and exec only async-signal-safe system calls run, nothing allocates.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::vhost_vsock;
use crate::share::{MountAttr, MOUNT_ATTR_RDONLY};

/// The highest capability number the kernel may know (CAP_LAST_CAP is 40 on 6.x); dropping a
/// number the kernel does not know fails with EINVAL, which is ignored.
const CAP_LAST: libc::c_ulong = 63;

/// The user and group a process runs as (rootless mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// The uid.
    pub uid: u32,
    /// The gid.
    pub gid: u32,
    /// One supplementary group (the group of `/dev/kvm`, so the VMM can open it).
    pub group: Option<u32>,
}

/// How one process of a VM is confined, beyond dying with the shim (which every one does).
#[derive(Debug, Default)]
pub struct Confinement {
    /// The `cgroup.procs` files of the sandbox cgroup, open for writing.
    pub cgroup_procs: Vec<File>,
    /// Run as this user instead of root.
    pub run_as: Option<RunAs>,
    /// A private, read-only view of the host where only this directory is writable, and no
    /// capabilities.
    pub writable_only: Option<PathBuf>,
}

/// Everything the child does between fork and exec, prepared in the parent.
#[derive(Debug)]
pub struct ChildSetup {
    parent: libc::pid_t,
    cgroup_procs: Vec<File>,
    run_as: Option<RunAs>,
    writable_only: Option<CString>,
    inherit: Vec<RawFd>,
}

/// The error a failed call left in errno, without allocating.
fn errno() -> io::Error {
    io::Error::last_os_error()
}

/// `Err(errno)` when a libc call returned -1.
fn check(ret: libc::c_long) -> io::Result<()> {
    if ret == -1 {
        Err(errno())
    } else {
        Ok(())
    }
}

impl ChildSetup {
    /// Prepares `confinement` for a child of this process that keeps `inherit` open.
    pub fn new(confinement: Confinement, inherit: &[RawFd]) -> io::Result<Self> {
        let writable_only = match &confinement.writable_only {
            Some(dir) => Some(
                CString::new(dir.as_os_str().as_bytes())
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?,
            ),
            None => None,
        };
        Ok(Self {
            parent: libc::pid_t::try_from(std::process::id()).unwrap_or(libc::pid_t::MAX),
            cgroup_procs: confinement.cgroup_procs,
            run_as: confinement.run_as,
            writable_only,
            inherit: inherit.to_vec(),
        })
    }

    /// Runs in the child, after fork and before exec: only async-signal-safe calls, no
    /// allocation. The order matters: the cgroup and the mount namespace need root, the
    /// death signal is cleared by a change of credentials, so it is set after them.
    pub fn apply(&self) -> io::Result<()> {
        for procs in &self.cgroup_procs {
            // SAFETY: write(2) of a 1-byte static buffer on a descriptor the parent opened and
            // keeps open until the spawn returned.
            check(unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) } as libc::c_long)?;
        }
        if let Some(dir) = &self.writable_only {
            enter_read_only_view(dir)?;
        }
        for fd in &self.inherit {
            vhost_vsock::inherit_in_child(*fd)?;
        }
        if self.writable_only.is_some() {
            // Before the uid changes: emptying the bounding set needs CAP_SETPCAP.
            drop_bounding_set()?;
        }
        if let Some(ids) = self.run_as {
            let groups = [ids.group.unwrap_or(ids.gid)];
            // SAFETY: setgroups reads the one-element array on this frame; setresgid and
            // setresuid take integers.
            unsafe {
                check(libc::setgroups(1, groups.as_ptr()).into())?;
                check(libc::setresgid(ids.gid, ids.gid, ids.gid).into())?;
                check(libc::setresuid(ids.uid, ids.uid, ids.uid).into())?;
            }
        }
        if self.writable_only.is_some() {
            clear_capabilities()?;
        }
        die_with_parent(self.parent)
    }
}

/// `PR_SET_PDEATHSIG(SIGKILL)`, then fails with ESRCH if `parent` already died (the child was
/// reparented before the signal was armed).
pub fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number; getppid has no arguments.
    unsafe {
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0).into())?;
        if libc::getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// A private mount namespace (no propagation back to the host) where every mount is
/// read-only except a bind of `dir` onto itself.
fn enter_read_only_view(dir: &CString) -> io::Result<()> {
    let root = c"/";
    let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY, ..MountAttr::default() };
    // SAFETY: every pointer is a NUL-terminated string prepared before the fork or a static
    // one, or `attr`, which lives on this frame; the calls read them only.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS).into())?;
        check(
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            )
            .into(),
        )?;
        check(libc::mount(dir.as_ptr(), dir.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()).into())?;
        check(libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            root.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        ))?;
        check(
            libc::mount(
                std::ptr::null(),
                dir.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV,
                std::ptr::null(),
            )
            .into(),
        )?;
    }
    Ok(())
}

/// Empties the bounding set: no later exec can grant a capability, even to uid 0.
fn drop_bounding_set() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; errno is this thread's.
    unsafe {
        for cap in 0..=CAP_LAST {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) == -1 && *libc::__errno_location() != libc::EINVAL {
                return Err(errno());
            }
        }
    }
    Ok(())
}

/// Clears the ambient, effective, permitted and inheritable sets and sets `no_new_privs`:
/// with the bounding set empty, the exec that follows grants no capability.
fn clear_capabilities() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    unsafe {
        check(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0).into())?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into())?;
    }
    // The inheritable set must be empty too: uid 0's exec keeps `inheritable & file
    // inheritable` (all ones for root). capset(2) with all sets empty.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set.
    let header = Header { version: 0x2008_0522, pid: 0 };
    let data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: capset reads the header and the two data words, which live on this frame.
    check(unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) })
}

/// What the configuration asks of a VM's confinement (plain data, in the VMM's spec).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmConfinement {
    /// The CRI's `linux.cgroupsPath` of the pod's sandbox container, if any: the sandbox
    /// cgroup goes under its parent ([`super::cgroup::sandbox_path`]).
    pub cgroups_path: Option<String>,
    /// Run the VMM and vhost-device-vsock as the sandbox's own unprivileged user
    /// (`[hypervisor.qemu] rootless`).
    pub rootless: bool,
}

/// Makes `dir` a mount point with shared propagation (a bind onto itself first if it is not
/// one), so what is mounted under it later also appears in the copy of it that a helper with
/// its own mount namespace (virtiofsd's sandbox) holds.
pub fn propagate_into_namespaces(dir: &Path) -> nix::Result<()> {
    use nix::mount::{mount, MsFlags};
    if !crate::sandbox::mounts_under(dir).iter().any(|m| m == dir) {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
    }
    mount(None::<&str>, dir, None::<&str>, MsFlags::MS_SHARED, None::<&str>)
}

/// The ids a rootless sandbox runs as: the first free id of
/// `[ROOTLESS_FIRST_ID, ROOTLESS_FIRST_ID + ROOTLESS_IDS)`, claimed by creating
/// `<state root>/.rootless/<id>` exclusively (released by [`release_ids`]), uid = gid.
pub const ROOTLESS_FIRST_ID: u32 = 2_000_000_000;
/// How many ids the rootless range holds.
pub const ROOTLESS_IDS: u32 = 65_536;
/// The device whose group a rootless VMM joins.
const KVM_DEVICE: &str = "/dev/kvm";
/// The record, in the VM's directory, of the id a rootless sandbox claimed.
const ID_RECORD: &str = "rootless-id";

/// Errors of claiming an id.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The claims directory could not be used.
    #[error("cannot claim a rootless id in {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Every id of the range is claimed.
    #[error("all {ROOTLESS_IDS} rootless ids from {ROOTLESS_FIRST_ID} are in use under {0}")]
    Exhausted(PathBuf),
}

fn claims_dir(vm_dir: &Path) -> PathBuf {
    vm_dir.parent().unwrap_or(vm_dir).join(".rootless")
}

/// Claims a free id for the VM whose directory is `vm_dir` and records it there.
pub fn claim_ids(vm_dir: &Path) -> Result<RunAs, ClaimError> {
    let claims = claims_dir(vm_dir);
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ClaimError::Io { path, source }
    };
    for id in ROOTLESS_FIRST_ID..ROOTLESS_FIRST_ID.saturating_add(ROOTLESS_IDS) {
        let claim = claims.join(id.to_string());
        let mut created = OpenOptions::new().write(true).create_new(true).open(&claim);
        if matches!(&created, Err(err) if err.kind() == io::ErrorKind::NotFound) {
            // First claim on this host, or another sandbox just removed the empty directory.
            fs::create_dir_all(&claims).map_err(io_err(&claims))?;
            created = OpenOptions::new().write(true).create_new(true).open(&claim);
        }
        match created {
            Ok(_) => {
                let record = vm_dir.join(ID_RECORD);
                fs::write(&record, id.to_string()).map_err(io_err(&record))?;
                let group = fs::metadata(KVM_DEVICE).ok().map(|m| std::os::unix::fs::MetadataExt::gid(&m));
                return Ok(RunAs { uid: id, gid: id, group });
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(ClaimError::Io { path: claim, source: err }),
        }
    }
    Err(ClaimError::Exhausted(claims))
}

/// Releases the id the VM in `vm_dir` claimed, if any (idempotent).
pub fn release_ids(vm_dir: &Path) {
    let record = vm_dir.join(ID_RECORD);
    let Some(id) = fs::read_to_string(&record).ok().and_then(|s| s.trim().parse::<u32>().ok()) else { return };
    let claims = claims_dir(vm_dir);
    let _ = fs::remove_file(claims.join(id.to_string()));
    let _ = fs::remove_file(&record);
    // Gone once empty, so a state root without sandboxes is empty.
    let _ = fs::remove_dir(&claims);
}

/// Hands `path` to the rootless `ids` by group: `root:<gid>`, mode `mode`.
///
/// The VM's directory is writable by that group (sticky), and a rootless helper that a guest
/// took over could plant `virtiofsd.sock -> /etc/shadow` before virtiofsd makes the socket: only
/// an entry root made is changed. In the sticky directory the group cannot remove or rename a
/// root-owned entry, so what was checked is what chown and chmod then reach.
pub fn share_with_group(path: &Path, ids: RunAs, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() || meta.uid() != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not an entry root made (uid {}, symlink: {})",
                path.display(),
                meta.uid(),
                meta.is_symlink()
            ),
        ));
    }
    std::os::unix::fs::chown(path, Some(0), Some(ids.gid))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_planted_symlink_is_not_handed_to_the_rootless_group() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("secret");
        fs::write(&target, b"x").unwrap();
        let planted = dir.path().join("virtiofsd.sock");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        let ids = RunAs { uid: ROOTLESS_FIRST_ID, gid: ROOTLESS_FIRST_ID, group: None };
        let before = fs::metadata(&target).unwrap();
        assert!(share_with_group(&planted, ids, 0o660).is_err());
        let after = fs::metadata(&target).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((before.gid(), before.mode()), (after.gid(), after.mode()), "the target is untouched");
    }

    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::*;

    #[test]
    fn the_death_signal_is_armed_and_a_stranger_parent_is_refused() {
        // In a forked child (the test thread is the parent): the signal is SIGKILL, and a
        // parent pid that is not ours makes the setup fail with ESRCH.
        let me = libc::pid_t::try_from(std::process::id()).unwrap();
        let mut ok = Command::new("sh");
        ok.args(["-c", "exit 0"]);
        // SAFETY: die_with_parent calls prctl and getppid only.
        unsafe { ok.pre_exec(move || die_with_parent(me)) };
        assert!(ok.status().unwrap().success());

        let mut refused = Command::new("sh");
        refused.args(["-c", "exit 0"]);
        // SAFETY: as above.
        unsafe { refused.pre_exec(move || die_with_parent(1)) };
        let err = refused.status().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH), "{err}");
    }

    #[test]
    fn a_child_of_a_dead_thread_gets_sigkill() {
        // PDEATHSIG fires when the forking *thread* exits: a child spawned from a short-lived
        // thread dies with it. This is why process.rs forks from one long-lived thread.
        let me = libc::pid_t::try_from(std::process::id()).unwrap();
        let child = std::thread::spawn(move || {
            let mut command = Command::new("sleep");
            command.arg("30");
            // SAFETY: die_with_parent calls prctl and getppid only.
            unsafe { command.pre_exec(move || die_with_parent(me)) };
            command.spawn().unwrap()
        })
        .join()
        .unwrap();
        let mut child = child;
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }

    #[test]
    fn ids_are_claimed_once_and_released() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        let first = claim_ids(&a).unwrap();
        let second = claim_ids(&b).unwrap();
        assert_eq!((first.uid, first.gid), (ROOTLESS_FIRST_ID, ROOTLESS_FIRST_ID));
        assert_eq!(second.uid, ROOTLESS_FIRST_ID + 1, "a second sandbox gets its own id");
        release_ids(&a);
        assert_eq!(claim_ids(&root.path().join("a")).unwrap().uid, ROOTLESS_FIRST_ID, "a released id is reused");
        release_ids(&a);
        release_ids(&b);
        release_ids(&b);
        assert_eq!(fs::read_dir(root.path().join(".rootless")).map(|d| d.count()).ok(), None, "nothing left");
    }

    /// Root only (the test suite runs as root here and in CI; elsewhere the namespace cannot
    /// be made and the test says so).
    #[test]
    fn the_read_only_view_leaves_only_the_vm_dir_writable_and_no_capabilities() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to make a mount namespace");
            return;
        }
        let vm = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let script = format!(
            "echo ok > {vm}/in; echo bad > {out}/out 2>/dev/null; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status",
            vm = vm.path().display(),
            out = outside.path().display()
        );
        let setup =
            ChildSetup::new(Confinement { writable_only: Some(vm.path().to_owned()), ..Confinement::default() }, &[])
                .unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", &script]);
        // SAFETY: ChildSetup::apply makes async-signal-safe calls only.
        unsafe { command.pre_exec(move || setup.apply()) };
        let out = command.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(fs::read_to_string(vm.path().join("in")).unwrap(), "ok\n");
        assert!(!outside.path().join("out").exists(), "the rest of the host is read-only");
        assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
        assert!(text.contains("CapBnd:\t0000000000000000"), "{text}");
        assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    }
}
