//! Entropy for the guest's random pool.
//!
//! A fresh VM has little entropy; containers calling getrandom() early would block.
//! At boot we credit bytes from a virtio-rng device when the VM has one (read
//! without blocking, so a slow device never delays boot); later the host pushes
//! seed bytes with the ReseedRandomDev RPC ([`reseed`]).
//!
//! Seed bytes are *credited* (RNDADDENTROPY), not just written: a plain write mixes
//! them in without counting them, so a guest whose CRNG is not ready yet stays not
//! ready, and the kernel then refuses RNDRESEEDCRNG with ENODATA (seen on 6.1 under
//! TCG without a hwrng). The host's bytes come from its own CRNG; crediting them is
//! what seeding means.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

// From <linux/random.h>: _IO('R', 0x07).
nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);
// _IOW('R', 0x03, int[2]): the kernel reads a struct rand_pool_info
// { int entropy_count; int buf_size; __u32 buf[]; }.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// Bytes per RNDADDENTROPY call; larger seeds are credited in pieces.
const CHUNK: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum EntropyError {
    #[error("cannot open /dev/random")]
    Open(#[source] std::io::Error),
    #[error("kernel refused the seed bytes")]
    AddEntropy(#[source] std::io::Error),
    #[error("kernel refused to reseed the CRNG")]
    Reseed(#[source] nix::Error),
}

/// Credits `data` as entropy, then forces the CRNG to reseed from it, as Kata's
/// ReseedRandomDev intends.
pub fn reseed(data: &[u8]) -> Result<(), EntropyError> {
    let random = OpenOptions::new().write(true).open("/dev/random").map_err(EntropyError::Open)?;
    for chunk in data.chunks(CHUNK) {
        add_entropy(&random, chunk).map_err(EntropyError::AddEntropy)?;
    }
    // SAFETY: RNDRESEEDCRNG takes no argument; the fd is an open /dev/random.
    match unsafe { rnd_reseed_crng(random.as_raw_fd()) } {
        // Fewer than 256 credited bits so far: the bytes are in the pool and the
        // CRNG seeds itself from it once it is ready; nothing failed.
        Ok(_) | Err(nix::Error::ENODATA) => Ok(()),
        Err(e) => Err(EntropyError::Reseed(e)),
    }
}

/// Adds `data` (at most [`CHUNK`] bytes) to the pool, crediting 8 bits per byte.
fn add_entropy(random: &File, data: &[u8]) -> std::io::Result<()> {
    debug_assert!(data.len() <= CHUNK);
    let header = [(data.len() * 8) as libc::c_int, data.len() as libc::c_int];
    // rand_pool_info is two ints then the bytes; build it in a u32 buffer so the
    // ints are aligned.
    let mut words = vec![0u32; 2 + data.len().div_ceil(4)];
    words[0] = header[0] as u32;
    words[1] = header[1] as u32;
    // SAFETY: `words` has room for 8 header bytes plus data.len() bytes (rounded
    // up to whole words); we copy exactly data.len() bytes after the header.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), words.as_mut_ptr().add(2).cast::<u8>(), data.len());
    }
    // SAFETY: RNDADDENTROPY reads a rand_pool_info header followed by buf_size
    // bytes; `words` is a live buffer laid out exactly so.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY as _, words.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
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
    let credited = OpenOptions::new().write(true).open("/dev/random").and_then(|r| add_entropy(&r, &buf[..n]));
    match credited {
        Ok(()) => slog::debug!(log, "hwrng entropy credited"; "bytes" => n),
        Err(e) => slog::debug!(log, "hwrng entropy not credited"; "error" => %e),
    }
}
