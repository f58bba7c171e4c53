//! `/init` of the true-floor initrd: listen on vsock, print the ready line, echo one session,
//! power off (the library's docs say why). Any failure is printed on the console and powers off
//! too, so the bench sees QEMU exit instead of waiting for its timeout.

#![no_std]
#![no_main]

use core::panic::PanicInfo;

use wisp_floor_init::{listen_vsock, ready_line, serve, sys, write_all, Failure};

// The kernel enters here with argc at the stack pointer and no return address: clear the frame
// pointer, keep the 16-byte alignment the ABI expects at a call, and never return.
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "and rsp, -16",
    "call {main}",
    "ud2",
    main = sym floor_main,
);

/// The kernel gives PID 1 `/dev/console` as descriptors 0, 1 and 2.
const CONSOLE: i32 = 1;

extern "C" fn floor_main() -> ! {
    if let Err(Failure::Syscall(name, errno)) = run() {
        let _ = write_all(CONSOLE, b"WISP-FLOOR failed: ");
        let _ = write_all(CONSOLE, name.as_bytes());
        let mut line = [0u8; ready_line::MAX_LEN];
        let len = ready_line::format(&mut line, errno.unsigned_abs().into(), 0);
        // The errno, reusing the number formatter: `...uptime=ERRNO.000000 ...`.
        let _ = write_all(CONSOLE, b" errno ");
        let _ = write_all(CONSOLE, &line[wisp_floor_init::READY_MARKER.len()..len]);
    }
    halt()
}

fn run() -> Result<(), Failure> {
    let listener = listen_vsock()?;
    let now = sys::clock_gettime(sys::CLOCK_BOOTTIME).map_err(|errno| Failure::Syscall("clock_gettime", errno))?;
    let mut line = [0u8; ready_line::MAX_LEN];
    let len = ready_line::format(&mut line, now.sec.unsigned_abs(), now.nsec.unsigned_abs() as u32);
    write_all(CONSOLE, &line[..len]).map_err(|errno| Failure::Syscall("write", errno))?;
    serve(listener)
}

/// Powers off as PID 1 of the VM; anywhere else (run by hand on a host, as root) only exits.
fn halt() -> ! {
    if sys::getpid() == 1 {
        sys::power_off();
    }
    sys::exit(1)
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    let _ = write_all(CONSOLE, b"WISP-FLOOR panicked\n");
    halt()
}

// Without libc nobody provides the memory intrinsics the compiler calls (zeroing the buffers).
// Volatile stores keep the compiler from turning these loops into calls to themselves.

/// # Safety
/// `dest` is valid for `n` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, value: i32, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: `i < n` and the caller guarantees `dest..dest+n` is writable.
        unsafe { core::ptr::write_volatile(dest.add(i), value as u8) };
    }
    dest
}

/// # Safety
/// `dest` and `src` are valid for `n` bytes and do not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: `i < n`; the caller guarantees both ranges are valid.
        unsafe { core::ptr::write_volatile(dest.add(i), *src.add(i)) };
    }
    dest
}
