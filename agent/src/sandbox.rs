//! The sandbox: guest-wide state and operations that are not about one container.
//!
//! For now that is the guest's identity (GetGuestDetails), its clock and entropy,
//! and the end of its life: DestroySandbox asks the server loop to stop, and init
//! powers the VM off once the reply has been sent.

use std::path::Path;
use std::sync::OnceLock;

use protocols::agent::{AgentDetails, GuestDetailsResponse};
use tokio::sync::watch;

use crate::error::AgentError;
use crate::logging::boot_clock;
use crate::metrics;

/// What the agent does when the sandbox is destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// PID 1 of a VM: power off.
    Init,
    /// A process on a host (protocol tests): exit.
    Standalone,
}

#[derive(Debug)]
pub struct Sandbox {
    log: slog::Logger,
    role: Role,
    shutdown: watch::Sender<bool>,
    /// Boot clock when the process started, and when it began serving.
    started: f64,
    ready: OnceLock<f64>,
    /// Boot clock when the guest setup deferred past readiness (cgroups)
    /// finished; container creation will have to wait for it.
    setup_done: OnceLock<f64>,
}

impl Sandbox {
    /// `started` is the boot clock when the process started.
    pub fn new(log: slog::Logger, role: Role, started: f64) -> Self {
        Sandbox {
            log,
            role,
            shutdown: watch::channel(false).0,
            started,
            ready: OnceLock::new(),
            setup_done: OnceLock::new(),
        }
    }

    /// Records that the server accepts connections.
    pub fn mark_ready(&self) {
        let _ = self.ready.set(boot_clock());
    }

    /// Records that the deferred guest setup has finished.
    pub fn mark_setup_done(&self) {
        let _ = self.setup_done.set(boot_clock());
    }

    pub fn metrics(&self) -> String {
        metrics::collect(metrics::Timeline {
            init_started: self.started,
            ready: self.ready.get().copied(),
            setup_done: self.setup_done.get().copied(),
        })
    }

    pub fn log(&self) -> &slog::Logger {
        &self.log
    }

    /// Resolves when DestroySandbox has been called.
    pub fn shutdown_requested(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn guest_details(&self, want_block_size: bool, want_probe: bool) -> GuestDetailsResponse {
        let mut r = GuestDetailsResponse::new();
        let memory = Path::new("/sys/devices/system/memory");
        if want_block_size {
            r.mem_block_size_bytes = std::fs::read_to_string(memory.join("block_size_bytes"))
                .ok()
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .unwrap_or(0);
        }
        if want_probe {
            r.support_mem_hotplug_probe = memory.join("probe").exists();
        }
        let mut details = AgentDetails::new();
        details.version = env!("CARGO_PKG_VERSION").to_owned();
        details.init_daemon = self.role == Role::Init;
        details.supports_seccomp = libseccomp::get_api() > 0;
        r.agent_details = Some(details).into();
        r
    }

    pub fn set_time(&self, sec: i64, usec: i64) -> Result<(), AgentError> {
        if !(0..1_000_000).contains(&usec) || sec < 0 {
            return Err(AgentError::InvalidArgument(format!("time {sec}s {usec}us out of range")));
        }
        let ts = nix::sys::time::TimeSpec::new(sec, usec * 1000);
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts).map_err(|source| AgentError::SetTime {
            sec,
            usec,
            source,
        })?;
        slog::info!(self.log, "guest clock set"; "sec" => sec);
        Ok(())
    }

    pub fn reseed(&self, data: &[u8]) -> Result<(), AgentError> {
        if data.is_empty() {
            return Err(AgentError::InvalidArgument("no seed bytes".into()));
        }
        wisp_init::entropy::reseed(data)?;
        slog::debug!(self.log, "random device reseeded"; "bytes" => data.len());
        Ok(())
    }

    pub fn destroy(&self) {
        slog::info!(self.log, "sandbox destroyed; stopping"; "role" => ?self.role);
        self.shutdown.send_replace(true);
    }
}
