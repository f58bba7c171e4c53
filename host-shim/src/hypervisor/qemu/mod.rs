//! The QEMU backend.
//!
//! - [`config`]: [`QemuSpec`], the configuration resolved against this host (accelerator,
//!   agent channel, shared filesystem, binaries);
//! - [`cmdline`]: the exact argv of QEMU and of its helpers, a pure function of a spec;
//! - [`hotplug`]: disks and VFIO functions plugged into a running VM over QMP;
//! - [`grow`]: vCPUs and RAM plugged into a clone bigger than its template;
//! - [`lifecycle`]: [`Qemu`], the [`Hypervisor`](super::Hypervisor) that spawns, watches and
//!   stops QEMU, vhost-device-vsock and virtiofsd.

pub mod cmdline;
pub mod config;
pub mod grow;
pub mod hotplug;
pub mod lifecycle;

pub use config::QemuSpec;
pub use lifecycle::Qemu;

use super::Capabilities;
use crate::config::MachineType;

/// What a QEMU VM of `machine` can do: PCI machines hot-plug; microvm's virtio-mmio cannot,
/// so it takes its disks at boot.
pub fn capabilities(machine: MachineType) -> Capabilities {
    let microvm = machine == MachineType::Microvm;
    Capabilities { hot_plug_block: !microvm, boot_disks: microvm, pod_network: true }
}
