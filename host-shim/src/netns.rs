//! Working inside a network namespace named by path (a CRI pod's, after containerd ran CNI),
//! without moving the shim into it.
//!
//! The shim's own threads stay in the host namespace: commands (`ip`, `tc`) run in a child
//! that enters the namespace between fork and exec, and the tap device is opened on a
//! short-lived thread that enters it (a tun device is created in the namespace of the thread
//! calling `TUNSETIFF`, and stays there). iproute2 is on every node CNI runs on; netlink's tc
//! filter and action encoding is not worth reimplementing in the shim.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `TUNSETIFF`: `_IOW('T', 202, int)` from `<linux/if_tun.h>`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// A layer-2 device (`IFF_TAP`), no packet-information prefix (`IFF_NO_PI`), with the
/// virtio-net header QEMU's virtio-net offloads use (`IFF_VNET_HDR`).
const TAP_FLAGS: libc::c_short = 0x0002 | 0x1000 | 0x4000;

/// What can go wrong in a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// The namespace file could not be opened.
    #[error("cannot open the network namespace {path}")]
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A command could not run or failed.
    #[error("`{command}` in {netns}: {why}")]
    Command {
        /// The command line.
        command: String,
        /// The namespace.
        netns: PathBuf,
        /// Its status and stderr, or the spawn error.
        why: String,
    },
    /// The tap device could not be created.
    #[error("cannot create tap {name} in {netns}")]
    Tap {
        /// The tap's name.
        name: String,
        /// The namespace.
        netns: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq` as `TUNSETIFF` reads it: the name, the flags, and the union's remaining bytes.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A network namespace held open by its file.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens the namespace at `path` (`/var/run/netns/cni-...`, `/proc/PID/ns/net`).
    pub fn open(path: &Path) -> Result<Self, NetNsError> {
        let file = File::open(path).map_err(|source| NetNsError::Open { path: path.to_owned(), source })?;
        Ok(Self { file, path: path.to_owned() })
    }

    /// The namespace's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this is the shim's own namespace (a "pod network" that is the host's: wiring
    /// it would redirect the host's interface into the VM).
    pub fn is_own(&self) -> Result<bool, NetNsError> {
        use std::os::unix::fs::MetadataExt;
        let own = Path::new("/proc/thread-self/ns/net");
        let failed = |source| NetNsError::Open { path: own.to_owned(), source };
        let mine = std::fs::metadata(own).map_err(failed)?;
        let that = self.file.metadata().map_err(|source| NetNsError::Open { path: self.path.clone(), source })?;
        Ok((mine.dev(), mine.ino()) == (that.dev(), that.ino()))
    }

    /// Runs `program args` inside the namespace; its stdout if it succeeds.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, NetNsError> {
        let command = std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
        let failed = |why: String| NetNsError::Command { command: command.clone(), netns: self.path.clone(), why };
        let fd = self.file.as_raw_fd();
        let mut cmd = Command::new(find_program(program));
        cmd.args(args);
        // SAFETY: the closure runs between fork and exec and only calls setns(2), which is
        // async-signal-safe; `fd` stays open in the child until exec (close-on-exec).
        unsafe {
            cmd.pre_exec(move || enter(fd));
        }
        let out = cmd.output().map_err(|err| failed(format!("cannot run: {err}")))?;
        if !out.status.success() {
            return Err(failed(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates the tap device `name` in the namespace and returns its (close-on-exec)
    /// descriptor. The device lives as long as a descriptor of it is open.
    pub fn open_tap(&self, name: &str) -> Result<OwnedFd, NetNsError> {
        let failed = |source| NetNsError::Tap { name: name.to_owned(), netns: self.path.clone(), source };
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(failed(io::Error::from(io::ErrorKind::InvalidInput)));
        }
        let fd = self.file.as_raw_fd();
        // A thread of its own: setns moves only the calling thread, which ends right after.
        let opened = std::thread::scope(|scope| scope.spawn(|| enter(fd).and_then(|()| create_tap(name))).join());
        opened.unwrap_or_else(|_| Err(io::Error::other("the tap thread panicked"))).map_err(failed)
    }
}

/// `name` on `PATH`, else in `/usr/sbin` or `/sbin` (containerd may start the shim with a
/// `PATH` without them).
fn find_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Moves the calling thread into the network namespace `fd`.
fn enter(fd: libc::c_int) -> io::Result<()> {
    // SAFETY: setns on an integer descriptor has no memory effects; a bad fd is an error return.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens `/dev/net/tun` and attaches it to (creating) tap `name` in the thread's namespace.
fn create_tap(name: &str) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated literal path; the result is checked.
    let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just opened and is owned by nothing else.
    let tun = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: TAP_FLAGS, _pad: [0; 22] };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads a `struct ifreq`, which `IfReq` lays out (40 bytes), and the
    // pointer is valid for the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(tun)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let err = NetNs::open(Path::new("/nonexistent/netns")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/netns"), "{err}");
    }

    #[test]
    fn the_own_namespace_is_recognised() {
        assert!(NetNs::open(Path::new("/proc/self/ns/net")).unwrap().is_own().unwrap());
        // Another namespace type is another inode: not ours as a network namespace.
        assert!(!NetNs::open(Path::new("/proc/self/ns/mnt")).unwrap().is_own().unwrap());
    }

    #[test]
    fn commands_run_inside_the_namespace() {
        // This process's own namespace: the command sees the same interfaces as we do.
        let ns = NetNs::open(Path::new("/proc/self/ns/net")).unwrap();
        let out = ns.run("sh", &["-c", "cat /proc/net/dev | wc -l"]).unwrap();
        assert!(out.trim().parse::<u32>().unwrap() >= 3, "{out}");
        let err = ns.run("sh", &["-c", "echo nope >&2; exit 3"]).unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("sh -c"), "{err}");
    }
}
