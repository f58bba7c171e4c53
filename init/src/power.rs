//! Ending the VM. PID 1 must never exit (the kernel panics), so every way out of
//! the agent, including a panic, ends here: log, sync, power off.

use std::io::Write;

use nix::sys::reboot::{reboot, RebootMode};

/// Syncs file systems, makes a disk root read-only, and powers the VM off. With
/// QEMU's `-no-reboot` and ACPI this makes the hypervisor process exit, which is
/// how the host sees a clean end.
pub fn power_off() -> ! {
    nix::unistd::sync();
    // A root on a disk (rootfs-builder rootfs) would otherwise be left needing
    // journal recovery. On an initramfs root this fails harmlessly.
    let _ = nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    );
    let err = match reboot(RebootMode::RB_POWER_OFF) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // Only reached without CAP_SYS_BOOT: nothing better to do than say so and
    // halt in place rather than exit and panic the kernel.
    let _ = writeln!(std::io::stderr(), "wisp: power off failed: {err}");
    loop {
        nix::unistd::pause();
    }
}

/// Makes a panic anywhere end the VM cleanly instead of leaving PID 1 dead.
/// The message goes to the console directly: the logger may be what panicked.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let _ = writeln!(std::io::stderr(), "wisp-agent: fatal: {info}; powering off");
        power_off();
    }));
}
