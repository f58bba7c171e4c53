//! Entropy for the guest's random pool.
//!
//! A fresh VM has little entropy; containers calling getrandom() early would block.
//! At boot we credit bytes from a virtio-rng device when the VM has one (read
//! without blocking, so a slow device never delays boot); later the host can push
//! seed bytes with the ReseedRandomDev RPC, which [`reseed`] implements.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

// From <linux/random.h>: _IO('R', 0x07).
nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);
// _IOW('R', 0x03, int[2]); the kernel reads a struct rand_pool_info.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;

#[derive(Debug, thiserror::Error)]
pub enum EntropyError {
    #[error("cannot open /dev/random")]
    Open(#[source] std::io::Error),
    #[error("cannot write seed bytes to /dev/random")]
    Write(#[source] std::io::Error),
    #[error("kernel refused to reseed the CRNG")]
    Reseed(#[source] nix::Error),
}

/// Mixes `data` into the pool and forces the CRNG to reseed from it, as Kata's
/// ReseedRandomDev does.
pub fn reseed(data: &[u8]) -> Result<(), EntropyError> {
    let mut f = OpenOptions::new().write(true).open("/dev/random").map_err(EntropyError::Open)?;
    f.write_all(data).map_err(EntropyError::Write)?;
    // SAFETY: RNDRESEEDCRNG takes no argument; the fd is an open /dev/random.
    unsafe { rnd_reseed_crng(f.as_raw_fd()) }.map_err(EntropyError::Reseed)?;
    Ok(())
}

/// Credits up to 64 bytes from /dev/hwrng, if a hardware RNG is present.
pub fn seed_from_hwrng(log: &slog::Logger) {
    let Ok(mut hw) = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/dev/hwrng") else {
        return;
    };
    let mut buf = [0u8; 64];
    let n = match hw.read(&mut buf) {
        Ok(n) if n > 0 => n,
        _ => return,
    };
    #[repr(C)]
    struct RandPoolInfo {
        entropy_count: libc::c_int,
        buf_size: libc::c_int,
        buf: [u8; 64],
    }
    let info = RandPoolInfo { entropy_count: (n * 8) as libc::c_int, buf_size: n as libc::c_int, buf };
    let Ok(random) = OpenOptions::new().write(true).open("/dev/random") else { return };
    // SAFETY: RNDADDENTROPY reads a rand_pool_info header followed by buf_size
    // bytes; `info` is a live, properly laid out struct holding them.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY as _, &info as *const RandPoolInfo) };
    if rc != 0 {
        slog::debug!(log, "hwrng entropy not credited"; "error" => %std::io::Error::last_os_error());
    }
}
