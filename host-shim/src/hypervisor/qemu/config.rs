//! [`QemuSpec`]: `[hypervisor.qemu]` and `[agent.wisp]` resolved against this host.
//!
//! Resolution decides what the configuration leaves open:
//! - the accelerator: `accel = "kvm"|"tcg"` or `WISP_ACCEL`, else [`crate::accel::decide`]
//!   (KVM only when a probe guest runs, cached per host boot in the state root);
//! - the agent channel (`channel = "auto"`): `/dev/vhost-vsock` present → vhost-vsock-pci
//!   (AF_VSOCK, a context id claimed at start); else vhost-device-vsock installed →
//!   vhost-user-vsock; else virtio-serial;
//! - the shared filesystem (`shared_fs = "auto"`): virtiofsd installed → virtio-fs, else 9p.
//!
//! [`QemuSpec`] is plain data so [`super::cmdline`] can be tested without a host.

use std::path::{Path, PathBuf};

use crate::accel::{self, Accel};
use crate::config::{AccelChoice, ChannelKind, Config, MachineType, SharedFsKind};
use crate::hypervisor::confine::VmConfinement;
use crate::hypervisor::{AgentChannel, Growth, HypervisorError, SharedFs, GUEST_CID};

use crate::hypervisor::vhost_vsock::DEVICE as VHOST_VSOCK_DEVICE;
/// The fast pc/q35 firmware shipped with Debian's QEMU.
pub const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// Everything the QEMU command line depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuSpec {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The machine type.
    pub machine: MachineType,
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initrd (the shim always has one; console-only test VMs may not).
    pub initrd: Option<PathBuf>,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Extra kernel parameters.
    pub kernel_params: Vec<String>,
    /// The accelerator.
    pub accel: Accel,
    /// TCG translation cache in MiB.
    pub tb_size_mib: u32,
    /// The agent channel (`None`: console only, for boot-floor test VMs).
    pub channel: Option<AgentChannel>,
    /// The vhost-vsock descriptor QEMU inherits (`vhostfd=`), once a context id is claimed.
    pub vhost_vsock_fd: Option<i32>,
    /// How the shared directory reaches the guest (`None`: no share).
    pub shared_fs: Option<SharedFs>,
    /// Whether QEMU serves QMP (always for the shim: hot-plug and a clean quit).
    pub qmp: bool,
    /// Free pcie-root-ports on q35.
    pub root_ports: u32,
    /// The pc/q35 firmware, if not QEMU's default.
    pub bios: Option<PathBuf>,
    /// Boot the debug console.
    pub debug_console: bool,
    /// Other vhost-user devices will be attached (guest memory must be shareable).
    pub vhost_user_devices: bool,
    /// The vhost-user vsock backend binary.
    pub vhost_device_vsock: PathBuf,
    /// The virtio-fs daemon binary.
    pub virtiofsd: PathBuf,
    /// Raw QEMU arguments appended last (devices a test needs).
    pub extra_args: Vec<String>,
    /// A virtio-net NIC on a tap QEMU inherits (a CRI pod's network).
    pub tap_nic: Option<TapNic>,
    /// The sandbox cgroup's parent and rootless mode ([`crate::hypervisor::confine`]).
    pub confine: VmConfinement,
    /// Booting a template, or cloning one ([`crate::template`]).
    pub template: Option<TemplateRole>,
    /// The host's TSC rate ([`crate::tsc`]), given to a TCG guest as `tsc_early_khz`.
    pub tsc_khz: Option<u32>,
    /// The vCPUs a template's VM (and so each clone) can grow to (`-smp N,maxcpus=`): the
    /// host's CPUs, as Kata's `default_maxvcpus` (more vCPUs than host CPUs buy nothing).
    pub max_vcpus: u32,
}

/// A VM's part in templating: guest RAM is a file; the template maps it shared (its RAM ends up
/// in the file), a clone privately (copy-on-write: what it writes stays its own). With
/// `x-ignore-shared` the migration stream leaves shared RAM out, so it is a few hundred KiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateRole {
    /// Boots to be saved: RAM shared with `memory` (the device state is sent over QMP later).
    Save {
        /// The RAM file (on tmpfs).
        memory: PathBuf,
    },
    /// Restores `state` over a private map of `memory` (QEMU waits for `migrate-incoming`).
    Restore {
        /// The template's RAM file.
        memory: PathBuf,
        /// The template's device state.
        state: PathBuf,
        /// vCPUs and RAM plugged in after the restore (a pod bigger than the template).
        growth: Growth,
    },
}

/// The DIMM slots a template's VM has for a clone's added RAM (one DIMM per clone).
pub const TEMPLATE_DIMM_SLOTS: u32 = 4;
/// The RAM a template's VM (and so each clone) can grow to, MiB (`-m N,maxmem=`): the pod
/// limit ([`crate::pod`]). Only guest-physical address space is set aside for it.
pub const TEMPLATE_MAX_MEMORY_MIB: u32 = 64 * 1024;
/// The guest's memory block size on x86_64 below 64 GiB: added RAM comes in these.
pub const MEMORY_BLOCK_MIB: u32 = 128;

impl TemplateRole {
    /// The RAM file.
    pub fn memory(&self) -> &Path {
        match self {
            Self::Save { memory, .. } | Self::Restore { memory, .. } => memory,
        }
    }
}

/// A virtio-net NIC backed by an already open tap descriptor (`-netdev tap,fd=N`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapNic {
    /// The tap descriptor QEMU inherits.
    pub fd: i32,
    /// The NIC's MAC.
    pub mac: String,
}

impl QemuSpec {
    /// Resolves `config` against this host; `state_root` holds the accelerator cache. An
    /// undecided KVM probe is waited for only with `wait_for_probe` (`wisp check`); a sandbox
    /// boots under TCG meanwhile ([`accel::decide_in_background`]).
    pub fn resolve(config: &Config, state_root: &Path, wait_for_probe: bool) -> Result<Self, HypervisorError> {
        let Some(q) = config.qemu() else {
            return Err(HypervisorError::Unsupported(format!(
                "the configuration chose {}, not QEMU",
                config.hypervisor.name()
            )));
        };
        let accel = match q.accel {
            AccelChoice::Kvm => Accel::Kvm,
            AccelChoice::Tcg => Accel::Tcg,
            AccelChoice::Auto => match accel::from_env() {
                Some(Ok(accel)) => accel,
                Some(Err(err)) => return Err(HypervisorError::Unsupported(err.to_string())),
                None => {
                    let kernel = config.kernel();
                    let probe_kernel = (q.machine_type != MachineType::Microvm).then_some(kernel.as_path());
                    let cache = state_root.join("accel");
                    let decision = if wait_for_probe {
                        accel::decide(&q.path, probe_kernel, Some(&cache))
                    } else {
                        accel::decide_in_background(&q.path, probe_kernel, Some(&cache))
                    };
                    decision.accel
                }
            },
        };
        let vhost_device_vsock = crate::config::find_program(&q.vhost_device_vsock);
        let channel = match config.agent.channel {
            // The context id is claimed when the VM starts (several sandboxes resolve at once).
            ChannelKind::VhostVsock if !Path::new(VHOST_VSOCK_DEVICE).exists() => {
                return Err(HypervisorError::Unsupported(format!(
                    "agent.wisp.channel = \"vhost-vsock\" but {VHOST_VSOCK_DEVICE} is missing \
                     (modprobe vhost_vsock); or use \"hybrid-vsock\" or \"serial\""
                )))
            }
            ChannelKind::VhostVsock => AgentChannel::VhostVsock { cid: GUEST_CID },
            ChannelKind::HybridVsock => AgentChannel::HybridVsock,
            ChannelKind::Serial => AgentChannel::Serial,
            ChannelKind::Auto if Path::new(VHOST_VSOCK_DEVICE).exists() => AgentChannel::VhostVsock { cid: GUEST_CID },
            ChannelKind::Auto if vhost_device_vsock.is_some() => AgentChannel::HybridVsock,
            ChannelKind::Auto => AgentChannel::Serial,
        };
        let virtiofsd = crate::config::find_program(&q.virtio_fs_daemon);
        let shared_fs = match q.shared_fs {
            SharedFsKind::VirtioFs => SharedFs::VirtioFs,
            SharedFsKind::NineP => SharedFs::NineP,
            SharedFsKind::Auto if virtiofsd.is_some() => SharedFs::VirtioFs,
            SharedFsKind::Auto => SharedFs::NineP,
        };
        let bios = (q.machine_type != MachineType::Microvm && Path::new(QBOOT).is_file()).then(|| PathBuf::from(QBOOT));
        Ok(Self {
            qemu: crate::config::find_program(&q.path).unwrap_or_else(|| q.path.clone()),
            machine: q.machine_type,
            kernel: config.kernel(),
            initrd: Some(config.initrd()),
            vcpus: q.default_vcpus,
            memory_mib: q.default_memory,
            kernel_params: q.kernel_params.split_whitespace().map(str::to_owned).collect(),
            accel,
            tb_size_mib: q.tb_size,
            channel: Some(channel),
            vhost_vsock_fd: None,
            tap_nic: None,
            shared_fs: Some(shared_fs),
            qmp: true,
            root_ports: if q.machine_type == MachineType::Q35 { q.pcie_root_port } else { 0 },
            bios,
            debug_console: config.agent.debug_console_enabled,
            vhost_user_devices: q.enable_vhost_user_store,
            vhost_device_vsock: vhost_device_vsock.unwrap_or_else(|| q.vhost_device_vsock.clone()),
            virtiofsd: virtiofsd.unwrap_or_else(|| q.virtio_fs_daemon.clone()),
            extra_args: Vec::new(),
            confine: VmConfinement { cgroups_path: config.cgroups_path.clone(), rootless: q.rootless },
            template: None,
            tsc_khz: None,
            max_vcpus: host_cpus(),
        })
    }

    /// The pod NIC QEMU gets on its command line: none for a template (it has none) or a clone
    /// (its NIC is hot-plugged after the restore).
    pub fn nic_at_boot(&self) -> Option<&TapNic> {
        self.tap_nic.as_ref().filter(|_| self.template.is_none())
    }

    /// Whether guest memory must be a shared memfd: any vhost-user device needs it.
    pub fn shared_memory(&self) -> bool {
        self.channel == Some(AgentChannel::HybridVsock)
            || self.shared_fs == Some(SharedFs::VirtioFs)
            || self.vhost_user_devices
    }

    /// Why this VM cannot be a template or a clone (QEMU 7.2: vhost-user devices neither
    /// migrate nor map a clone's private RAM; 9p migrates only while unmounted, so the guest
    /// mounts it after the restore), if it cannot.
    pub fn template_blocker(&self) -> Option<&'static str> {
        if self.machine == MachineType::Microvm {
            Some("microvm takes its disks at boot")
        } else if self.shared_memory() {
            Some("a vhost-user device (hybrid vsock, virtio-fs or a vhost-user disk) cannot migrate")
        } else if self.confine.rootless {
            Some("a rootless QEMU cannot open the root-only template")
        } else if self.channel.is_none() || self.shared_fs.is_none() || !self.qmp {
            Some("a VM without the agent channel, the share or QMP")
        } else {
            None
        }
    }

    /// This VM in the form a template takes: the agent on virtio-serial (kernel vhost-vsock
    /// would migrate, but each clone needs its own context id, which no host here can test),
    /// the share over 9p.
    pub fn for_template(mut self) -> Self {
        self.channel = Some(AgentChannel::Serial);
        self.shared_fs = Some(SharedFs::NineP);
        self
    }
}

/// The CPUs this process may run on (a q35 guest takes at most 240 without an IOMMU).
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)).min(240)
}
