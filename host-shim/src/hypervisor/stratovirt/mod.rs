//! The StratoVirt backend (openEuler's VMM; what iSulad + Kata run as secure containers).
//!
//! StratoVirt speaks a QEMU-like command line and QMP, but narrower: its `microvm` machine
//! has only virtio-mmio devices (`virtio-blk-device`, `vhost-vsock-device`, no 9p and no
//! virtio-fs), its standard machine (`q35`) boots through pflash firmware and puts virtio-pci
//! devices on `pcie.0` at explicit slots, and the agent channel is vsock only (the host's
//! `vhost_vsock` module). Syntax from StratoVirt's `docs/config_guidebook.md` and `docs/qmp.md`.
//!
//! - [`config`]: [`StratoVirtSpec`], `[hypervisor.stratovirt]` resolved;
//! - [`cmdline`]: StratoVirt's argv, and the QMP arguments of a block device hot-plug;
//! - [`lifecycle`]: [`StratoVirt`], the [`Hypervisor`](super::Hypervisor): spawn, watch, QMP
//!   `quit`, kill. QMP itself is the QEMU backend's client ([`super::qemu::qmp`]): the wire
//!   is the same (greeting, `qmp_capabilities`, `return`/`error`, events in between).
//!
//! Not run here: StratoVirt needs KVM and `/dev/vhost-vsock`, which this build host lacks, so
//! [`StratoVirt::start`](super::Hypervisor::start) refuses before spawning (the context id
//! claim fails). The argv and the QMP dialogue are unit-tested against the
//! documented syntax; the guest side (virtio-mmio, mmioblk) runs for real under QEMU microvm.

pub mod cmdline;
pub mod config;
pub mod lifecycle;

pub use config::StratoVirtSpec;
pub use lifecycle::StratoVirt;

/// What a StratoVirt VM can do through the seam: its QMP block hot-plug
/// ([`StratoVirt::hotplug_block`]) is not behind [`super::Hypervisor::hot_plug`] yet, disks
/// are not attached at boot, and it takes no pod network.
pub const CAPABILITIES: super::Capabilities =
    super::Capabilities { hot_plug_block: false, boot_disks: false, pod_network: false };
