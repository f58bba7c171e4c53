//! Where a sandbox's VM comes from: the configuration's chosen VMM ([`HypervisorConfig`]),
//! and only that one, resolved against the host and built into a [`Hypervisor`].
//!
//! Making a VM takes two steps because the sandbox does work in between: [`VmFactory::resolve`]
//! runs before the state directory exists (a configuration this host cannot run fails with
//! nothing to clean up), the pod network may then give the VM a NIC
//! ([`ResolvedVm::attach_tap`]), and [`ResolvedVm::build`] makes the VM in the claimed
//! directory. [`crate::sandbox::Sandbox::boot_in`] takes the factory, so the core's unit tests
//! boot an in-process fake ([`super::fake`]) where production boots [`HostVms`].

use std::path::Path;

use async_trait::async_trait;
use slog::Logger;

use super::qemu::config::TapNic;
use super::qemu::{Qemu, QemuSpec};
use super::stratovirt::{StratoVirt, StratoVirtSpec};
use super::{Capabilities, Growth, Hypervisor, HypervisorError, VmPaths};
use crate::config::{Config, HypervisorConfig, StratoVirtSection};

/// Makes sandbox VMs.
#[async_trait]
pub trait VmFactory: Send + Sync + std::fmt::Debug {
    /// Resolves `config`'s VMM against this host (`state_root` holds host-wide caches).
    async fn resolve(&self, config: &Config, state_root: &Path) -> Result<Box<dyn ResolvedVm>, HypervisorError>;
}

/// A VM resolved, not yet made.
pub trait ResolvedVm: Send {
    /// What will boot, for the log.
    fn describe(&self) -> String;

    /// What the VM will be able to do.
    fn capabilities(&self) -> Capabilities;

    /// Gives the VM a virtio-net NIC on an open tap (a CRI pod's network; `None`: the pod's
    /// interface has no tap to hand over).
    fn attach_tap(&mut self, tap: Option<TapNic>) -> Result<(), HypervisorError>;

    /// The VM of the sandbox whose state directory `paths` lays out.
    fn build(self: Box<Self>, paths: &VmPaths, log: &Logger) -> Box<dyn Hypervisor>;

    /// Makes this VM a clone of the template in `templates` that stands for it
    /// ([`crate::template`]) and returns the template's key and what the clone grows by after
    /// its restore, or says why there is none.
    fn clone_template(&mut self, _templates: &Path) -> Result<(String, Growth), String> {
        Err("only QEMU VMs are cloned from templates".to_owned())
    }
}

/// The host's VMMs: QEMU or StratoVirt, as the configuration chose.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostVms;

#[async_trait]
impl VmFactory for HostVms {
    async fn resolve(&self, config: &Config, state_root: &Path) -> Result<Box<dyn ResolvedVm>, HypervisorError> {
        match &config.hypervisor {
            HypervisorConfig::Qemu(_) => Ok(Box::new(resolve_qemu(config, state_root).await?)),
            HypervisorConfig::StratoVirt(section) => Ok(Box::new(ResolvedStratoVirt {
                section: section.clone(),
                debug_console: config.agent.debug_console_enabled,
                cgroups_path: config.cgroups_path.clone(),
            })),
        }
    }
}

/// [`QemuSpec::resolve`] off the async threads: it reads files and may start a KVM probe,
/// and the task API keeps answering meanwhile.
async fn resolve_qemu(config: &Config, state_root: &Path) -> Result<QemuSpec, HypervisorError> {
    let (config, root) = (config.clone(), state_root.to_owned());
    tokio::task::spawn_blocking(move || QemuSpec::resolve(&config, &root, false))
        .await
        .map_err(|err| HypervisorError::Unsupported(format!("resolving the VM configuration panicked: {err}")))?
}

impl ResolvedVm for QemuSpec {
    fn describe(&self) -> String {
        format!(
            "qemu {:?}, accel {}, channel {:?}, shared_fs {:?}",
            self.machine, self.accel, self.channel, self.shared_fs
        )
    }

    fn capabilities(&self) -> Capabilities {
        super::qemu::capabilities(self.machine)
    }

    fn attach_tap(&mut self, tap: Option<TapNic>) -> Result<(), HypervisorError> {
        self.tap_nic = tap;
        Ok(())
    }

    fn build(self: Box<Self>, paths: &VmPaths, log: &Logger) -> Box<dyn Hypervisor> {
        Box::new(Qemu::new(*self, paths.clone(), log.clone()))
    }

    fn clone_template(&mut self, templates: &Path) -> Result<(String, Growth), String> {
        let (template, growth) = crate::template::find(self, templates)?;
        let mut clone = self.clone().for_template();
        // QEMU restores the template's VM; the rest is plugged in afterwards.
        (clone.vcpus, clone.memory_mib) = (template.meta.vcpus, template.meta.memory_mib);
        clone.template = Some(template.restore_role(growth));
        *self = clone;
        Ok((template.meta.key, growth))
    }
}

/// StratoVirt is resolved with its state directory (its guest context id derives from it).
struct ResolvedStratoVirt {
    section: StratoVirtSection,
    debug_console: bool,
    cgroups_path: Option<String>,
}

impl ResolvedVm for ResolvedStratoVirt {
    fn describe(&self) -> String {
        format!("stratovirt {:?}", self.section.machine_type)
    }

    fn capabilities(&self) -> Capabilities {
        super::stratovirt::CAPABILITIES
    }

    fn attach_tap(&mut self, _: Option<TapNic>) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported("StratoVirt takes no pod network".to_owned()))
    }

    fn build(self: Box<Self>, paths: &VmPaths, log: &Logger) -> Box<dyn Hypervisor> {
        let mut spec = StratoVirtSpec::resolve(&self.section, paths.dir(), self.debug_console);
        spec.cgroups_path = self.cgroups_path;
        Box::new(StratoVirt::new(spec, paths.clone(), Vec::new(), log.clone()))
    }
}
