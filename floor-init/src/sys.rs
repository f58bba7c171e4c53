//! The handful of x86_64 Linux syscalls the floor makes, issued directly (there is no libc).
//! Each wrapper returns the kernel's result or its errno.

use core::arch::asm;

pub const EINTR: i32 = 4;
pub const EIO: i32 = 5;
pub const EBADF: i32 = 9;
pub const ECONNABORTED: i32 = 103;

pub const AF_VSOCK: i32 = 40;
pub const SOCK_STREAM: i32 = 1;
pub const SOCK_CLOEXEC: i32 = 0o2_000_000;
/// `VMADDR_CID_ANY`.
pub const VMADDR_CID_ANY: u32 = u32::MAX;
pub const CLOCK_BOOTTIME: i32 = 7;

const SYS_READ: usize = 0;
const SYS_WRITE: usize = 1;
const SYS_CLOSE: usize = 3;
const SYS_GETPID: usize = 39;
const SYS_SOCKET: usize = 41;
const SYS_BIND: usize = 49;
const SYS_LISTEN: usize = 50;
const SYS_EXIT: usize = 60;
const SYS_REBOOT: usize = 169;
const SYS_CLOCK_GETTIME: usize = 228;
const SYS_ACCEPT4: usize = 288;

const REBOOT_MAGIC1: usize = 0xfee1_dead;
const REBOOT_MAGIC2: usize = 672_274_793;
const REBOOT_CMD_POWER_OFF: usize = 0x4321_fedc;

/// `struct sockaddr_vm` (linux/vm_sockets.h), 16 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockaddrVm {
    pub family: u16,
    pub reserved1: u16,
    pub port: u32,
    pub cid: u32,
    pub flags: u8,
    pub zero: [u8; 3],
}

impl SockaddrVm {
    /// `port` on any CID, for `bind`.
    pub fn any(port: u32) -> Self {
        SockaddrVm { family: AF_VSOCK as u16, reserved1: 0, port, cid: VMADDR_CID_ANY, flags: 0, zero: [0; 3] }
    }
}

/// `struct timespec`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: i64,
}

/// # Safety
/// The arguments must be valid for syscall `nr`: pointers among them must point to memory the
/// kernel may read or write for the lengths given.
unsafe fn syscall3(nr: usize, a1: usize, a2: usize, a3: usize) -> isize {
    let ret: isize;
    // SAFETY: the `syscall` instruction clobbers only rcx and r11 (declared) and rax (the
    // result); the caller guarantees the arguments are valid for `nr`.
    unsafe {
        asm!("syscall", inlateout("rax") nr as isize => ret, in("rdi") a1, in("rsi") a2, in("rdx") a3,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// # Safety
/// As [`syscall3`].
unsafe fn syscall4(nr: usize, a1: usize, a2: usize, a3: usize, a4: usize) -> isize {
    let ret: isize;
    // SAFETY: as in `syscall3`; the fourth argument goes in r10.
    unsafe {
        asm!("syscall", inlateout("rax") nr as isize => ret, in("rdi") a1, in("rsi") a2, in("rdx") a3,
             in("r10") a4, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// The kernel's -errno convention turned into a `Result`.
fn check(ret: isize) -> Result<usize, i32> {
    if ret < 0 {
        Err(-ret as i32)
    } else {
        Ok(ret as usize)
    }
}

pub fn read(fd: i32, buf: &mut [u8]) -> Result<usize, i32> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which we borrow mutably.
    check(unsafe { syscall3(SYS_READ, fd as usize, buf.as_mut_ptr() as usize, buf.len()) })
}

pub fn write(fd: i32, buf: &[u8]) -> Result<usize, i32> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
    check(unsafe { syscall3(SYS_WRITE, fd as usize, buf.as_ptr() as usize, buf.len()) })
}

/// Closes `fd`; an error is of no use to the floor and is ignored.
pub fn close(fd: i32) {
    // SAFETY: no pointers; closing a descriptor the caller owns.
    unsafe { syscall3(SYS_CLOSE, fd as usize, 0, 0) };
}

pub fn socket(domain: i32, kind: i32, protocol: i32) -> Result<i32, i32> {
    // SAFETY: no pointers.
    check(unsafe { syscall3(SYS_SOCKET, domain as usize, kind as usize, protocol as usize) }).map(|fd| fd as i32)
}

pub fn bind(fd: i32, addr: &SockaddrVm) -> Result<(), i32> {
    let len = core::mem::size_of::<SockaddrVm>();
    // SAFETY: `addr` is a live `sockaddr_vm` of `len` bytes the kernel only reads.
    check(unsafe { syscall3(SYS_BIND, fd as usize, addr as *const SockaddrVm as usize, len) }).map(drop)
}

pub fn listen(fd: i32, backlog: i32) -> Result<(), i32> {
    // SAFETY: no pointers.
    check(unsafe { syscall3(SYS_LISTEN, fd as usize, backlog as usize, 0) }).map(drop)
}

/// Accepts a connection (close-on-exec), without asking for the peer's address.
pub fn accept(fd: i32) -> Result<i32, i32> {
    // SAFETY: null address and length pointers: the kernel writes no address.
    check(unsafe { syscall4(SYS_ACCEPT4, fd as usize, 0, 0, SOCK_CLOEXEC as usize) }).map(|fd| fd as i32)
}

pub fn clock_gettime(clock: i32) -> Result<Timespec, i32> {
    let mut ts = Timespec::default();
    // SAFETY: the kernel writes one `struct timespec` into `ts`, which we borrow mutably.
    check(unsafe { syscall3(SYS_CLOCK_GETTIME, clock as usize, &mut ts as *mut Timespec as usize, 0) })?;
    Ok(ts)
}

pub fn getpid() -> i32 {
    // SAFETY: no arguments.
    unsafe { syscall3(SYS_GETPID, 0, 0, 0) as i32 }
}

/// Powers the machine off; returns only if the kernel refused (no CAP_SYS_BOOT). Run as root
/// outside a VM this powers the host off: callers check they are PID 1 first.
pub fn power_off() -> i32 {
    // SAFETY: no pointers; the magic numbers are the ones reboot(2) requires.
    let ret = unsafe { syscall4(SYS_REBOOT, REBOOT_MAGIC1, REBOOT_MAGIC2, REBOOT_CMD_POWER_OFF, 0) };
    check(ret).err().unwrap_or(0)
}

/// Ends the process (for PID 1: the kernel panics, which `panic=-1` turns into a reboot).
pub fn exit(code: i32) -> ! {
    loop {
        // SAFETY: no pointers; exit does not return.
        unsafe { syscall3(SYS_EXIT, code as usize, 0, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_vm_has_the_kernel_layout() {
        assert_eq!(core::mem::size_of::<SockaddrVm>(), 16);
        let addr = SockaddrVm::any(1024);
        // SAFETY: SockaddrVm is repr(C), 16 bytes, no padding.
        let bytes: [u8; 16] = unsafe { core::mem::transmute(addr) };
        assert_eq!(bytes, [40, 0, 0, 0, 0, 4, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0]);
    }

    #[test]
    fn the_boot_clock_moves_forward() {
        let a = clock_gettime(CLOCK_BOOTTIME).unwrap();
        let b = clock_gettime(CLOCK_BOOTTIME).unwrap();
        assert!((b.sec, b.nsec) >= (a.sec, a.nsec) && a.sec > 0, "{a:?} {b:?}");
        assert_eq!(clock_gettime(-100), Err(22));
    }

    #[test]
    fn errors_come_back_as_errno() {
        assert_eq!(write(-1, b"x"), Err(EBADF));
        assert_eq!(listen(-1, 1), Err(EBADF));
        assert_eq!(getpid() as u32, std::process::id());
    }
}
