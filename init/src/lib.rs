//! What PID 1 of a wisp guest does before and after the agent serves: make the VM a
//! place a container runtime can work in, and power it off when the agent is done.
//!
//! The crate has no async runtime and knows nothing about containers or the agent
//! protocol. Each module splits its job into a pure *plan* (parsed from `/proc`
//! text, unit-tested unprivileged) and a thin executor that issues the syscalls, so
//! the privileged half stays small enough to be proven inside a VM test.
//!
//! Boot order: [`early`] (pseudo file systems, console; fatal on failure), then
//! [`read_cmdline`] and, once the caller has a logger, [`boot`] (the agent
//! channel's kernel modules, hostname, entropy, debug console), then, once the
//! agent serves, [`after_ready`] (loopback up, the other modules, cgroups). Failures after
//! `early` are logged, never fatal.

pub mod cgroups;
pub mod cmdline;
pub mod console;
pub mod debug_console;
pub mod entropy;
pub mod modules;
pub mod mounts;
pub mod net;
pub mod power;
pub mod reaper;

use std::path::Path;

pub use cmdline::{BootOptions, Channel, LogLevel};

/// The part of boot that comes before logging is possible: `/proc` (the log level
/// is on the command line), `/dev` (the console is a device node), and the console.
/// Failure is fatal: the caller reports it on whatever stderr it has and powers off.
pub fn early() -> Result<(), mounts::MountError> {
    mounts::mount_all(&mounts::pseudo_filesystems())?;
    console::attach_console();
    Ok(())
}

/// Reads `agent.*` options from `/proc/cmdline` (call after [`early`]).
pub fn read_cmdline() -> (BootOptions, Vec<cmdline::Diagnostic>) {
    BootOptions::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
}

/// Work [`boot`] leaves for [`after_ready`].
#[derive(Debug, Default)]
pub struct Deferred {
    module_dir: std::path::PathBuf,
    modules: Vec<String>,
}

/// The PID-1 setup the agent channel depends on: its drivers, when the kernel
/// has them as modules, then hostname, entropy and the debug console. Nothing
/// here is fatal: a missing module is logged, and whatever waits for its device
/// names it.
pub fn boot(log: &slog::Logger, opts: &BootOptions) -> Deferred {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let module_dir = Path::new("/lib/modules").join(&release);
    let mut deferred = Deferred::default();
    if module_dir.join("modules.dep").exists() {
        let plan = modules::read_plan(log, &module_dir);
        modules::load_all(log, &module_dir, &plan.channel, "agent channel modules");
        deferred = Deferred { module_dir, modules: plan.rest };
    }

    if let Err(e) = nix::unistd::sethostname(&opts.hostname) {
        slog::warn!(log, "cannot set hostname"; "hostname" => &opts.hostname, "error" => %e);
    }
    entropy::seed_from_hwrng(log);

    if opts.debug_console {
        match debug_console::spawn() {
            Ok(pid) => slog::info!(log, "debug console started"; "shell_pid" => pid),
            Err(e) => slog::warn!(log, "debug console not started"; "error" => %e),
        }
    }
    deferred
}

/// Setup nothing needs before the first container: run after the agent serves,
/// so the host's first Health.Check does not wait for it (the other kernel
/// modules and the cgroup mounts cost up to a third of a second under TCG).
/// Container creation must wait for it.
pub fn after_ready(log: &slog::Logger, opts: &BootOptions, deferred: Deferred) {
    // Two ioctls, yet 11-18 ms under TCG (the kernel's work behind IFF_UP):
    // a third of init-to-ready there, so after the agent serves.
    loopback_up(log);
    modules::load_all(log, &deferred.module_dir, &deferred.modules, "kernel modules");
    cgroups::mount(log, opts.cgroup_v2);
}

/// Brings `lo` up, logging how long it took.
fn loopback_up(log: &slog::Logger) {
    let started = std::time::Instant::now();
    match net::loopback_up() {
        Ok(()) => slog::debug!(log, "loopback up"; "micros" => started.elapsed().as_micros()),
        Err(e) => {
            let cause = std::error::Error::source(&e).map(|c| c.to_string()).unwrap_or_default();
            slog::warn!(log, "loopback not up"; "error" => %e, "cause" => cause);
        }
    }
}
