//! The console PID 1 talks on.
//!
//! The kernel gives /init the console as fds 0-2 only if `/dev/console` existed in
//! the initramfs; after devtmpfs is mounted we reopen it so logging works either
//! way, and make it our controlling terminal in a session of our own.

use std::os::fd::AsRawFd;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// Reattaches fds 0-2 to `/dev/console`. Failure is ignored: the VM still works,
/// only its log is lost, and there is no logger yet to say so.
pub fn attach_console() {
    let _ = nix::unistd::setsid();
    let fd = match nix::fcntl::open("/dev/console", OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(_) => return,
    };
    for target in 0..=2 {
        // SAFETY: `fd` is an open descriptor we own; dup2 onto 0-2 replaces the
        // standard streams, which nothing else holds a Rust handle to.
        unsafe { libc::dup2(fd.as_raw_fd(), target) };
    }
}
