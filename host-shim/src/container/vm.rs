//! The VM a container's plan needs, booted: sized as its pod asks, with shared guest memory
//! for a vhost-user disk and its boot disks attached, retried once on a stalled channel. Every
//! front end that boots a sandbox for a container goes through here.

use std::path::Path;

use slog::{warn, Logger};

use crate::config::Config;
use crate::hypervisor::BlockSource;
use crate::pod::PodSpec;
use crate::sandbox::{Sandbox, SandboxError};
use crate::state::SandboxKey;

/// The configuration of the VM for `pod`: `base` sized as the pod asks, with shared memory if
/// `shared_memory` (a vhost-user disk will be plugged).
pub fn config_for(base: &Config, pod: &PodSpec, shared_memory: bool) -> Config {
    let mut config = pod.vm_config(base);
    if shared_memory {
        config.hypervisor.share_guest_memory();
    }
    config
}

/// Boots sandbox `key` with `config`; a boot whose agent channel stalled is retried once (the
/// first VM and its helpers are gone already; a fresh one gets a fresh channel).
pub async fn boot(
    config: &Config,
    key: &SandboxKey,
    netns: Option<&Path>,
    boot_disks: &[(String, BlockSource)],
    log: &Logger,
) -> Result<Sandbox, SandboxError> {
    match Sandbox::boot(config, key, netns, boot_disks, log).await {
        Err(err @ SandboxError::AgentStalled { .. }) => {
            warn!(log, "the agent channel stalled; booting the VM once more"; "error" => %err);
            Sandbox::boot(config, key, netns, boot_disks, log).await
        }
        booted => booted,
    }
}
