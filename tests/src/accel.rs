//! KVM or TCG for the test VMs: the shim's decision ([`wisp_shim::accel`]) with the test
//! harness's inputs.
//!
//! 1. `WISP_ACCEL=kvm|tcg` decides outright.
//! 2. Else [`wisp_shim::accel::decide`] with the built kernel (`target/kernel/bzImage`) as the
//!    probe guest and `target/wisp-tests/accel` as the per-host-boot cache.
//!
//! Within a process the decision is kept in a [`OnceLock`].

use std::sync::OnceLock;

pub use wisp_shim::accel::{probe_kvm, Accel, AccelError, Decision, ACCEL_ENV, PROBE_TIMEOUT};

use crate::artifacts;
use crate::qemu::qemu_binary;

/// The accelerator VMs use: [`ACCEL_ENV`] if set, else the probed [`decision`].
pub fn detect() -> Result<Accel, AccelError> {
    wisp_shim::accel::from_env().unwrap_or_else(|| Ok(decision().accel))
}

/// The probed decision (ignores [`ACCEL_ENV`]); computed once per process and logged to stderr.
pub fn decision() -> &'static Decision {
    static DECISION: OnceLock<Decision> = OnceLock::new();
    DECISION.get_or_init(|| {
        let kernel = artifacts::kernel().ok();
        let cache = artifacts::target_dir().join("wisp-tests").join("accel");
        let decision = wisp_shim::accel::decide(&qemu_binary(), kernel.as_deref(), Some(&cache));
        eprintln!("wisp-tests: accelerator {}: {}", decision.accel, decision.reason);
        decision
    })
}
