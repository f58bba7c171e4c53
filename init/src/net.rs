//! The loopback interface, up before the first container: the kernel creates
//! `lo` down, and containers sharing the guest's network namespace expect
//! 127.0.0.1 to answer. Two ioctls on a throwaway socket, no netlink, no async
//! runtime. Cheap to issue, yet the kernel's work behind IFF_UP took 11-18 ms
//! in a TCG guest, so init runs it after the agent serves (`after_ready`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot open a socket for interface ioctls")]
    Socket(#[source] std::io::Error),
    #[error("cannot read the flags of {0}")]
    GetFlags(&'static str, #[source] std::io::Error),
    #[error("cannot set {0} up")]
    SetFlags(&'static str, #[source] std::io::Error),
}

/// Sets `lo` up; does nothing if it is up already.
pub fn loopback_up() -> Result<(), NetError> {
    const LO: &str = "lo";
    // SAFETY: socket(2) with constant arguments; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(NetError::Socket(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor this function alone owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };

    // SAFETY: ifreq is plain old data (bytes and integers): all zeros is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(LO.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name, and
    // SIOCGIFFLAGS writes only its flags member.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(NetError::GetFlags(LO, std::io::Error::last_os_error()));
    }
    // SAFETY: SIOCGIFFLAGS just filled in the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(NetError::SetFlags(LO, std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unprivileged: either lo is up already (every host) and nothing is
    /// asked of the kernel, or setting it fails with a permission error, never
    /// with a malformed request.
    #[test]
    fn loopback_up_is_idempotent_or_refused_cleanly() {
        match loopback_up() {
            Ok(()) => {}
            Err(NetError::SetFlags(_, e)) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
            Err(e) => panic!("unexpected: {e}"),
        }
    }
}
