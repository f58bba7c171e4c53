//! Guest context ids for the host kernel's vhost-vsock.
//!
//! Every guest on a host needs its own context id (CID). Picking a number and hoping is racy
//! when sandboxes start in parallel, so, as Kata does, the shim opens `/dev/vhost-vsock` itself,
//! claims the first free CID on that descriptor with `VHOST_VSOCK_SET_GUEST_CID` (the kernel
//! refuses a CID in use with `EADDRINUSE`), and hands the very descriptor to the VMM
//! (`vhostfd=`). The CID stays claimed for as long as the descriptor is open: in the shim until
//! the VMM has started, then in the VMM.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

/// The host kernel's vhost-vsock device.
pub const DEVICE: &str = "/dev/vhost-vsock";
/// The first CID a guest may have: 0-2 are the hypervisor, local and host.
pub const FIRST_GUEST_CID: u32 = 3;
/// How many CIDs are tried before giving up (a host runs far fewer VMs).
const MAX_TRIES: u32 = 4096;

// VHOST_VSOCK_SET_GUEST_CID = _IOW(VHOST_VIRTIO 0xAF, 0x60, __u64) in <linux/vhost.h>.
nix::ioctl_write_ptr!(vhost_vsock_set_guest_cid, 0xAF, 0x60, u64);

/// Failure to claim a context id.
#[derive(Debug, thiserror::Error)]
pub enum CidError {
    /// The device could not be opened.
    #[error("cannot open {} (load vhost_vsock, or use channel = \"hybrid-vsock\")", path.display())]
    Open {
        /// The vhost-vsock device.
        path: PathBuf,
        /// The error from `open(2)`.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a CID for a reason other than "in use".
    #[error("VHOST_VSOCK_SET_GUEST_CID {cid} on {} failed", path.display())]
    Ioctl {
        /// The vhost-vsock device.
        path: PathBuf,
        /// The CID tried.
        cid: u32,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// Every CID tried was in use.
    #[error("no free vsock context id in {first}..{} on {}", first.saturating_add(MAX_TRIES), path.display())]
    Exhausted {
        /// The vhost-vsock device.
        path: PathBuf,
        /// The first CID tried.
        first: u32,
    },
}

/// A context id claimed on an open vhost-vsock descriptor.
#[derive(Debug)]
pub struct GuestCid {
    device: File,
    cid: u32,
}

impl GuestCid {
    /// Opens `device` and claims the first free CID from `first` on.
    pub fn claim(device: &Path, first: u32) -> Result<Self, CidError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(device)
            .map_err(|source| CidError::Open { path: device.to_owned(), source })?;
        Self::claim_on(file, device, first)
    }

    fn claim_on(device: File, path: &Path, first: u32) -> Result<Self, CidError> {
        // u32::MAX is VMADDR_CID_ANY, never a guest's.
        for cid in (first.max(FIRST_GUEST_CID)..u32::MAX).take(MAX_TRIES as usize) {
            let value = u64::from(cid);
            // SAFETY: the descriptor is open for the whole call and the ioctl only reads the u64
            // the pointer refers to, which lives on this stack frame.
            match unsafe { vhost_vsock_set_guest_cid(device.as_raw_fd(), &value) } {
                Ok(_) => return Ok(Self { device, cid }),
                Err(Errno::EADDRINUSE) => continue,
                Err(source) => return Err(CidError::Ioctl { path: path.to_owned(), cid, source }),
            }
        }
        Err(CidError::Exhausted { path: path.to_owned(), first })
    }

    /// The claimed context id.
    pub fn cid(&self) -> u32 {
        self.cid
    }

    /// The descriptor the VMM must inherit (`vhostfd=`); close-on-exec is still set, so the
    /// spawn must clear it in the child only (see [`inherit_in_child`]).
    pub fn fd(&self) -> RawFd {
        self.device.as_raw_fd()
    }
}

/// Clears close-on-exec on `fd` in a freshly forked child, so exactly that child inherits it.
///
/// Meant for `pre_exec`: it only calls `fcntl(2)`, which is async-signal-safe.
pub fn inherit_in_child(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an integer descriptor has no memory effects; an invalid fd is an error
    // return, not undefined behaviour.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_says_what_to_do() {
        let err = GuestCid::claim(Path::new("/nonexistent/vhost-vsock"), FIRST_GUEST_CID).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent/vhost-vsock") && text.contains("hybrid-vsock"), "{text}");
    }

    /// A descriptor that is not vhost-vsock makes the ioctl fail with ENOTTY: reported with the
    /// CID tried, not looped over 4096 CIDs.
    #[test]
    fn a_device_that_is_not_vhost_vsock_is_refused_at_the_first_cid() {
        let err = GuestCid::claim(Path::new("/dev/null"), FIRST_GUEST_CID).unwrap_err();
        match err {
            CidError::Ioctl { cid, source, .. } => {
                assert_eq!(cid, FIRST_GUEST_CID);
                assert_eq!(source, Errno::ENOTTY);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn inheritance_is_cleared_on_the_descriptor_only() {
        let file = File::open("/dev/null").unwrap();
        inherit_in_child(file.as_raw_fd()).unwrap();
        // SAFETY: F_GETFD on a descriptor we own.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, 0);
        assert!(inherit_in_child(-1).is_err());
    }
}
