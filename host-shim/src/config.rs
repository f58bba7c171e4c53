//! The shim's configuration: a TOML file in Kata's `configuration.toml` vocabulary.
//!
//! # Lookup order
//!
//! 1. `$WISP_CONFIG` (a set but missing file is an error, not a silent fallback);
//! 2. `/etc/wisp/configuration.toml` (the administrator's);
//! 3. `/usr/share/defaults/wisp/configuration.toml` (the distribution's);
//! 4. the built-in default ([`Config::default`]).
//!
//! # Keys
//!
//! ```toml
//! [hypervisor.qemu]
//! path = "/usr/bin/qemu-system-x86_64" # absolute; a bare name is looked up in the system dirs
//! kernel = "/usr/local/share/wisp/bzImage"
//! initrd = "/usr/local/share/wisp/wisp.initrd"
//! machine_type = "q35"                 # q35 | pc | microvm
//! default_vcpus = 1
//! default_memory = 256                 # MiB
//! block_device_driver = "virtio-blk"   # virtio-blk | virtio-scsi | virtio-mmio
//! shared_fs = "auto"                   # auto | virtio-fs | virtio-9p
//! virtio_fs_daemon = "/usr/local/bin/virtiofsd"
//! kernel_params = ""
//! enable_vhost_user_store = false
//! disable_block_device_use = false     # true: a block-device rootfs is mounted on the host and shared
//! vhost_user_store_path = "/var/run/kata-containers/vhost-user"
//! pcie_root_port = 2                   # q35 only: free ports kept for hot-plug
//! accel = "auto"                       # auto | kvm | tcg
//! tb_size = 64                         # MiB of TCG translation cache
//! vhost_device_vsock = "/usr/local/bin/vhost-device-vsock"
//! rootless = false                     # true: QEMU and vhost-device-vsock run as the sandbox's own uid
//!
//! # [hypervisor.stratovirt] instead of [hypervisor.qemu] selects StratoVirt (seed: iSulad's
//! # Kata configuration); see hypervisor::stratovirt. Keys:
//! # path, kernel, initrd, machine_type = "microvm" | "q35", default_vcpus, default_memory,
//! # block_device_driver = "virtio-mmio" | "virtio-blk", use_vsock = true, kernel_params,
//! # firmware (pflash code for q35), shared_fs = "none" | "virtio-fs", virtio_fs_daemon,
//! # pcie_root_port, disable_block_device_use, and Kata's accepted-but-unused network keys
//! # (enable_netmon, internetworking_model, sandbox_cgroup_with_emulator, disable_new_netns,
//! # disable_vhost_net).
//!
//! [agent.wisp]
//! dial_timeout = 60                    # seconds to wait for the agent after QEMU starts
//! debug_console_enabled = false
//! channel = "auto"                     # auto | vhost-vsock | hybrid-vsock | serial
//!
//! [runtime]
//! direct_volumes_dir = "/run/kata-containers/shared/direct-volumes"  # WISP_DIRECT_VOLUMES_DIR wins
//!
//! [factory]
//! template = false                     # true: clone sandboxes from `wisp template create`'s VM
//! template_path = "/run/wisp/templates" # (Kata's enable_template is read as template)
//! ```
//!
//! # Helper binaries
//!
//! QEMU, virtiofsd and vhost-device-vsock are taken from the absolute paths above, never from
//! the caller's `PATH` or `$HOME` (whoever sets the shim's environment would pick the binary
//! that serves the guest). A bare name (older files: `virtiofsd`) is looked up in the fixed
//! [`SYSTEM_BIN_DIRS`]. When a default path is missing the shim falls back to the `cargo
//! install` directory of the user who built it (`make deps` puts the two helpers there;
//! `make install` copies them to `/usr/local/bin`), and `wisp check` says so.
//!
//! # The built-in kernel and initrd
//!
//! Without `kernel`/`initrd` keys the shim takes the first existing file of:
//! `<exe>/../share/wisp/` (the `make install` layout: `/usr/local/bin` →
//! `/usr/local/share/wisp`), `<exe>/../kernel/bzImage` and `<exe>/../initrd/wisp.initrd` (the
//! binary still in `target/release/`), and the workspace's `target/` as it was when the shim was
//! built. So the shim works right after `make`, and after `make install`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The environment variable naming the configuration file.
pub use crate::env::CONFIG_ENV;
/// The administrator's configuration file.
pub const ETC_CONFIG: &str = "/etc/wisp/configuration.toml";
/// The distribution's configuration file.
pub const DEFAULTS_CONFIG: &str = "/usr/share/defaults/wisp/configuration.toml";
/// Kata's direct-volume root.
pub const DEFAULT_DIRECT_VOLUMES_DIR: &str = "/run/kata-containers/shared/direct-volumes";
/// The default QEMU.
pub const DEFAULT_QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// The default virtiofsd (`make install` puts it there).
pub const DEFAULT_VIRTIOFSD: &str = "/usr/local/bin/virtiofsd";
/// The default vhost-device-vsock (`make install` puts it there).
pub const DEFAULT_VHOST_DEVICE_VSOCK: &str = "/usr/local/bin/vhost-device-vsock";
/// Where a bare program name is looked up, in order (never `PATH`).
pub const SYSTEM_BIN_DIRS: [&str; 5] = ["/usr/local/bin", "/usr/bin", "/usr/local/libexec", "/usr/libexec", "/bin"];
/// Kata's default vhost-user store.
pub const DEFAULT_VHOST_USER_STORE: &str = "/var/run/kata-containers/vhost-user";

/// What can go wrong reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a key of the wrong type or an unknown value.
    #[error("invalid configuration {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid configuration {path}: {message}")]
    Invalid {
        /// The file (or `built-in default`).
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// The QEMU machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineType {
    /// `q35` (PCIe).
    #[default]
    Q35,
    /// `pc` (i440fx, PCI).
    Pc,
    /// `microvm` (virtio-mmio, no PCI).
    Microvm,
}

/// How the bundle rootfs reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
pub enum SharedFsKind {
    /// virtio-fs when virtiofsd is installed, else virtio-9p.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// virtio-fs through a virtiofsd per VM.
    #[serde(rename = "virtio-fs")]
    VirtioFs,
    /// virtio-9p served by QEMU itself.
    #[serde(rename = "virtio-9p")]
    NineP,
}

/// The agent channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
pub enum ChannelKind {
    /// `/dev/vhost-vsock` if present, else vhost-user-vsock, else virtio-serial.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// The host kernel's vhost-vsock.
    #[serde(rename = "vhost-vsock")]
    VhostVsock,
    /// vhost-user-vsock through a `vhost-device-vsock` the shim spawns.
    #[serde(rename = "hybrid-vsock")]
    HybridVsock,
    /// A virtio-serial port.
    #[serde(rename = "serial")]
    Serial,
}

/// The accelerator choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM when a probe guest runs under it, else TCG.
    #[default]
    Auto,
    /// Always KVM.
    Kvm,
    /// Always TCG.
    Tcg,
}

/// `[hypervisor.qemu]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QemuSection {
    /// The QEMU binary.
    pub path: PathBuf,
    /// The guest kernel (bzImage for pc/q35, PVH vmlinux for microvm); `None`: built-in lookup.
    pub kernel: Option<PathBuf>,
    /// The initrd; `None`: built-in lookup.
    pub initrd: Option<PathBuf>,
    /// The machine type.
    pub machine_type: MachineType,
    /// vCPUs.
    pub default_vcpus: u32,
    /// Guest RAM in MiB.
    pub default_memory: u32,
    /// The block device driver (kept for block devices; not used by the rootfs share).
    pub block_device_driver: String,
    /// How the rootfs is shared.
    pub shared_fs: SharedFsKind,
    /// The virtiofsd binary.
    pub virtio_fs_daemon: PathBuf,
    /// Extra kernel parameters, space separated.
    pub kernel_params: String,
    /// Whether the vhost-user store is used for `linux.devices` of major 241/242.
    pub enable_vhost_user_store: bool,
    /// Kata key: a container rootfs that containerd gives as a block device (devmapper) is
    /// mounted on the host and shared like a directory instead of plugged as a disk.
    pub disable_block_device_use: bool,
    /// The vhost-user store.
    pub vhost_user_store_path: PathBuf,
    /// Free pcie-root-ports pre-created on q35 for later hot-plug.
    pub pcie_root_port: u32,
    /// The accelerator.
    pub accel: AccelChoice,
    /// TCG translation cache in MiB (QEMU's default is 1 GiB of host memory per VM).
    pub tb_size: u32,
    /// The vhost-user vsock backend.
    pub vhost_device_vsock: PathBuf,
    /// Kata's `rootless`: QEMU and vhost-device-vsock run as an unprivileged uid of the
    /// sandbox's own (virtiofsd stays root in its sandbox; see hypervisor::confine).
    pub rootless: bool,
}

impl Default for QemuSection {
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_QEMU),
            kernel: None,
            initrd: None,
            machine_type: MachineType::Q35,
            default_vcpus: 1,
            default_memory: 256,
            block_device_driver: "virtio-blk".to_owned(),
            shared_fs: SharedFsKind::Auto,
            virtio_fs_daemon: PathBuf::from(DEFAULT_VIRTIOFSD),
            kernel_params: String::new(),
            enable_vhost_user_store: false,
            disable_block_device_use: false,
            vhost_user_store_path: PathBuf::from(DEFAULT_VHOST_USER_STORE),
            pcie_root_port: 2,
            accel: AccelChoice::Auto,
            tb_size: 64,
            vhost_device_vsock: PathBuf::from(DEFAULT_VHOST_DEVICE_VSOCK),
            rootless: false,
        }
    }
}

/// `[agent.wisp]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSection {
    /// Seconds to wait for the agent once QEMU runs.
    pub dial_timeout: u64,
    /// Boot the initrd's debug shell on the console (`agent.debug_console`).
    pub debug_console_enabled: bool,
    /// The channel.
    pub channel: ChannelKind,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self { dial_timeout: 60, debug_console_enabled: false, channel: ChannelKind::Auto }
    }
}

impl AgentSection {
    /// [`AgentSection::dial_timeout`] as a duration.
    pub fn dial_timeout(&self) -> Duration {
        Duration::from_secs(self.dial_timeout)
    }
}

/// StratoVirt's machine types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StratoVirtMachine {
    /// `microvm`: virtio-mmio devices, no PCI, no firmware.
    #[default]
    Microvm,
    /// `q35`, StratoVirt's "standard" machine: virtio-pci on `pcie.0`, boots through firmware.
    Q35,
}

/// How the rootfs reaches a StratoVirt guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
pub enum StratoVirtSharedFs {
    /// No shared directory: container rootfs are block devices (Kata's devicemapper setup).
    #[default]
    #[serde(rename = "none")]
    None,
    /// virtio-fs through virtiofsd (`vhost-user-fs-pci`: standard machine only).
    #[serde(rename = "virtio-fs")]
    VirtioFs,
}

/// `[hypervisor.stratovirt]`: Kata's keys for StratoVirt (see ../shared/seeds/003, iSulad).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StratoVirtSection {
    /// The StratoVirt binary (or a wrapper script that sets `STRATOVIRT_LOG_LEVEL`).
    pub path: PathBuf,
    /// The guest kernel; `None`: the built-in lookup (PVH `vmlinux` on microvm).
    pub kernel: Option<PathBuf>,
    /// The initrd; `None`: the built-in lookup.
    pub initrd: Option<PathBuf>,
    /// The machine type.
    pub machine_type: StratoVirtMachine,
    /// vCPUs.
    pub default_vcpus: u32,
    /// Guest RAM in MiB (StratoVirt accepts 128 MiB .. 512 GiB).
    pub default_memory: u32,
    /// `virtio-mmio` (microvm: `virtio-blk-device`, Kata storage driver `mmioblk`) or
    /// `virtio-blk` (q35: `virtio-blk-pci`, driver `blk`).
    pub block_device_driver: String,
    /// The agent channel is vsock (`vhost-vsock-device`/`-pci`); StratoVirt has no other.
    pub use_vsock: bool,
    /// Extra kernel parameters, space separated.
    pub kernel_params: String,
    /// The pflash firmware (EDK2 code) the standard machine boots through.
    pub firmware: Option<PathBuf>,
    /// How the bundle rootfs reaches the guest.
    pub shared_fs: StratoVirtSharedFs,
    /// The virtiofsd binary.
    pub virtio_fs_daemon: PathBuf,
    /// Free pcie-root-ports on q35, for hot-plug.
    pub pcie_root_port: u32,
    /// Kata key, accepted for iSulad configurations; wisp has no network monitor.
    pub enable_netmon: bool,
    /// Kata key, accepted; wisp's networking is the agent's UpdateInterface/Routes.
    pub internetworking_model: String,
    /// Kata key, accepted; must be false (the shim does not move the VMM into a cgroup).
    pub sandbox_cgroup_with_emulator: bool,
    /// Kata key, accepted.
    pub disable_new_netns: bool,
    /// Kata key: a block-device container rootfs is mounted on the host and shared instead of
    /// plugged (with `shared_fs = "none"` such a container cannot start).
    pub disable_block_device_use: bool,
    /// Kata key, accepted.
    pub disable_vhost_net: bool,
}

impl Default for StratoVirtSection {
    fn default() -> Self {
        Self {
            path: PathBuf::from("stratovirt"),
            kernel: None,
            initrd: None,
            machine_type: StratoVirtMachine::Microvm,
            default_vcpus: 1,
            default_memory: 256,
            block_device_driver: "virtio-mmio".to_owned(),
            use_vsock: true,
            kernel_params: String::new(),
            firmware: None,
            shared_fs: StratoVirtSharedFs::None,
            virtio_fs_daemon: PathBuf::from(DEFAULT_VIRTIOFSD),
            pcie_root_port: 2,
            enable_netmon: false,
            internetworking_model: "tcfilter".to_owned(),
            sandbox_cgroup_with_emulator: false,
            disable_new_netns: false,
            disable_block_device_use: false,
            disable_vhost_net: true,
        }
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSection {
    /// Where `wisp direct-volume` and the shim keep direct volumes' `mountInfo.json`.
    pub direct_volumes_dir: PathBuf,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        Self { direct_volumes_dir: PathBuf::from(DEFAULT_DIRECT_VOLUMES_DIR) }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HypervisorTable {
    qemu: Option<QemuSection>,
    stratovirt: Option<StratoVirtSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AgentTable {
    wisp: AgentSection,
}

/// `[factory]`: sandboxes cloned from a booted template VM ([`crate::template`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FactorySection {
    /// Start sandboxes from a template made by `wisp template create` when one matches (Kata's
    /// `enable_template` is read too); a cold boot otherwise.
    #[serde(alias = "enable_template")]
    pub template: bool,
    /// Where templates are kept (Kata's key); default `<state root>/templates`.
    pub template_path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct File {
    hypervisor: HypervisorTable,
    agent: AgentTable,
    runtime: RuntimeSection,
    factory: FactorySection,
}

/// The VMM a sandbox boots under, with its section: `[hypervisor.stratovirt]` when the file
/// has one, else `[hypervisor.qemu]` (or its defaults). Only the chosen section is kept, so
/// nothing reads the other's keys; what both share is asked of this type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HypervisorConfig {
    /// `[hypervisor.qemu]`.
    Qemu(QemuSection),
    /// `[hypervisor.stratovirt]`.
    StratoVirt(StratoVirtSection),
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        Self::Qemu(QemuSection::default())
    }
}

impl HypervisorConfig {
    /// The section's name, for messages (`hypervisor.<name>.<key>`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Qemu(_) => "qemu",
            Self::StratoVirt(_) => "stratovirt",
        }
    }

    /// Guest RAM in MiB.
    pub fn memory_mib(&self) -> u32 {
        match self {
            Self::Qemu(q) => q.default_memory,
            Self::StratoVirt(s) => s.default_memory,
        }
    }

    /// vCPUs.
    pub fn vcpus(&self) -> u32 {
        match self {
            Self::Qemu(q) => q.default_vcpus,
            Self::StratoVirt(s) => s.default_vcpus,
        }
    }

    /// Sets the VM's size (a pod's resources on top of the defaults).
    pub fn resize(&mut self, memory_mib: u32, vcpus: u32) {
        let (memory, cpus) = match self {
            Self::Qemu(q) => (&mut q.default_memory, &mut q.default_vcpus),
            Self::StratoVirt(s) => (&mut s.default_memory, &mut s.default_vcpus),
        };
        (*memory, *cpus) = (memory_mib, vcpus);
    }

    /// The kernel: the configured one, else the built-in lookup for the machine type (PVH
    /// `vmlinux` on microvm, `bzImage` otherwise).
    pub fn kernel(&self) -> PathBuf {
        match self {
            Self::Qemu(q) => kernel_or_built_in(&q.kernel, q.machine_type == MachineType::Microvm),
            Self::StratoVirt(s) => s.kernel(),
        }
    }

    /// The initrd: the configured one, else the built-in lookup.
    pub fn initrd(&self) -> PathBuf {
        match self {
            Self::Qemu(q) => initrd_or_built_in(&q.initrd),
            Self::StratoVirt(s) => s.initrd(),
        }
    }

    /// Whether a container rootfs given as a block device is plugged into the VM as a disk
    /// (Kata's `disable_block_device_use = false`).
    pub fn block_rootfs(&self) -> bool {
        match self {
            Self::Qemu(q) => !q.disable_block_device_use,
            Self::StratoVirt(s) => !s.disable_block_device_use,
        }
    }

    /// The vhost-user store (`[hypervisor.qemu] vhost_user_store_path`; StratoVirt has no such
    /// key: Kata's default).
    pub fn vhost_user_store_path(&self) -> PathBuf {
        match self {
            Self::Qemu(q) => q.vhost_user_store_path.clone(),
            Self::StratoVirt(_) => PathBuf::from(DEFAULT_VHOST_USER_STORE),
        }
    }

    /// Asks for guest memory a vhost-user disk can map (QEMU's `enable_vhost_user_store`;
    /// StratoVirt has no vhost-user disks, so nothing changes there).
    pub fn share_guest_memory(&mut self) {
        if let Self::Qemu(q) = self {
            q.enable_vhost_user_store = true;
        }
    }

    /// What the VM will be able to do ([`crate::hypervisor::Capabilities`], as its backend
    /// says), known before it boots.
    pub fn capabilities(&self) -> crate::hypervisor::Capabilities {
        match self {
            Self::Qemu(q) => crate::hypervisor::qemu::capabilities(q.machine_type),
            Self::StratoVirt(_) => crate::hypervisor::stratovirt::CAPABILITIES,
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            Self::Qemu(q) => q.validate(),
            Self::StratoVirt(s) => s.validate(),
        }
    }
}

/// The whole configuration and where it came from; the default is the built-in one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// The chosen VMM and its section.
    pub hypervisor: HypervisorConfig,
    /// `[agent.wisp]`.
    pub agent: AgentSection,
    /// `[runtime]`.
    pub runtime: RuntimeSection,
    /// `[factory]`.
    pub factory: FactorySection,
    /// The file it was read from; `None` for the built-in default.
    pub source: Option<PathBuf>,
    /// The CRI's `linux.cgroupsPath` of the pod's sandbox container: set per sandbox by the
    /// shim ([`crate::pod::PodSpec`]), never read from the file.
    pub cgroups_path: Option<String>,
}

impl Config {
    /// `[hypervisor.qemu]` when QEMU is the chosen VMM.
    pub fn qemu(&self) -> Option<&QemuSection> {
        match &self.hypervisor {
            HypervisorConfig::Qemu(q) => Some(q),
            HypervisorConfig::StratoVirt(_) => None,
        }
    }

    /// [`Config::qemu`], to change.
    pub fn qemu_mut(&mut self) -> Option<&mut QemuSection> {
        match &mut self.hypervisor {
            HypervisorConfig::Qemu(q) => Some(q),
            HypervisorConfig::StratoVirt(_) => None,
        }
    }

    /// `[hypervisor.stratovirt]` when StratoVirt is the chosen VMM.
    pub fn stratovirt(&self) -> Option<&StratoVirtSection> {
        match &self.hypervisor {
            HypervisorConfig::StratoVirt(s) => Some(s),
            HypervisorConfig::Qemu(_) => None,
        }
    }

    /// Whether a container rootfs given as a block device is plugged into the VM as a disk
    /// (Kata's `disable_block_device_use = false`, of the hypervisor in use).
    pub fn block_rootfs(&self) -> bool {
        self.hypervisor.block_rootfs()
    }

    /// Whether the VM cannot hot-plug, so the container that boots it brings its disks along
    /// (QEMU's microvm machine: [`crate::hypervisor::Capabilities::disks_at_boot`]).
    pub fn disks_at_boot(&self) -> bool {
        self.hypervisor.capabilities().disks_at_boot()
    }

    /// Loads the configuration in the documented order (see the module docs).
    pub fn load() -> Result<Self, ConfigError> {
        let env_path = crate::env::path(CONFIG_ENV);
        Self::load_from(env_path.as_deref(), &[Path::new(ETC_CONFIG), Path::new(DEFAULTS_CONFIG)])
    }

    /// The lookup with explicit inputs: `explicit` must exist; else the first existing of
    /// `candidates`; else the built-in default.
    pub fn load_from(explicit: Option<&Path>, candidates: &[&Path]) -> Result<Self, ConfigError> {
        if let Some(path) = explicit {
            return Self::from_file(path);
        }
        match candidates.iter().find(|path| path.is_file()) {
            Some(path) => Self::from_file(path),
            None => Ok(Self::default()),
        }
    }

    /// Reads one file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses TOML text read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: File = toml::from_str(text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })?;
        let invalid = |message: String| ConfigError::Invalid { path: path.to_owned(), message };
        let HypervisorTable { qemu, stratovirt } = file.hypervisor;
        // A `[hypervisor.qemu]` beside the chosen StratoVirt is still checked (as it always
        // was), then dropped.
        if let (Some(q), Some(_)) = (&qemu, &stratovirt) {
            q.validate().map_err(invalid)?;
        }
        let hypervisor = match stratovirt {
            Some(section) => HypervisorConfig::StratoVirt(section),
            None => HypervisorConfig::Qemu(qemu.unwrap_or_default()),
        };
        let config = Self {
            hypervisor,
            agent: file.agent.wisp,
            runtime: file.runtime,
            factory: file.factory,
            source: Some(path.to_owned()),
            cgroups_path: None,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: self.source.clone().unwrap_or_else(|| PathBuf::from("built-in default")),
            message,
        };
        self.hypervisor.validate().map_err(invalid)?;
        if self.agent.dial_timeout == 0 {
            return Err(invalid("agent.wisp.dial_timeout = 0: use seconds, e.g. 60".to_owned()));
        }
        Ok(())
    }

    /// Where this configuration came from, for messages.
    pub fn source_name(&self) -> String {
        self.source.as_ref().map_or_else(|| "built-in default".to_owned(), |p| p.display().to_string())
    }

    /// The kernel of the chosen VMM ([`HypervisorConfig::kernel`]).
    pub fn kernel(&self) -> PathBuf {
        self.hypervisor.kernel()
    }

    /// The initrd of the chosen VMM ([`HypervisorConfig::initrd`]).
    pub fn initrd(&self) -> PathBuf {
        self.hypervisor.initrd()
    }
}

impl QemuSection {
    /// The ranges QEMU and the guest need.
    fn validate(&self) -> Result<(), String> {
        if self.default_vcpus == 0 || self.default_vcpus > 255 {
            return Err(format!("hypervisor.qemu.default_vcpus = {}: use 1..=255", self.default_vcpus));
        }
        if self.default_memory < 64 {
            return Err(format!(
                "hypervisor.qemu.default_memory = {} MiB: the guest needs at least 64",
                self.default_memory
            ));
        }
        if !["virtio-blk", "virtio-scsi", "virtio-mmio"].contains(&self.block_device_driver.as_str()) {
            return Err(format!(
                "hypervisor.qemu.block_device_driver = {:?}: use virtio-blk, virtio-scsi or virtio-mmio",
                self.block_device_driver
            ));
        }
        if self.tb_size == 0 {
            return Err("hypervisor.qemu.tb_size = 0: use a size in MiB, e.g. 64".to_owned());
        }
        if self.pcie_root_port > 32 {
            return Err(format!("hypervisor.qemu.pcie_root_port = {}: at most 32", self.pcie_root_port));
        }
        Ok(())
    }
}

impl StratoVirtSection {
    /// The kernel: the configured one, else the built-in lookup (PVH `vmlinux` on microvm,
    /// `bzImage` on q35).
    pub fn kernel(&self) -> PathBuf {
        kernel_or_built_in(&self.kernel, self.machine_type == StratoVirtMachine::Microvm)
    }

    /// The initrd: the configured one, else the built-in lookup.
    pub fn initrd(&self) -> PathBuf {
        initrd_or_built_in(&self.initrd)
    }

    /// Ranges StratoVirt documents, and the combinations it cannot run.
    fn validate(&self) -> Result<(), String> {
        if self.default_vcpus == 0 || self.default_vcpus > 254 {
            return Err(format!("hypervisor.stratovirt.default_vcpus = {}: use 1..=254", self.default_vcpus));
        }
        if self.default_memory < 128 {
            return Err(format!(
                "hypervisor.stratovirt.default_memory = {} MiB: StratoVirt needs at least 128",
                self.default_memory
            ));
        }
        if !["virtio-mmio", "virtio-blk"].contains(&self.block_device_driver.as_str()) {
            return Err(format!(
                "hypervisor.stratovirt.block_device_driver = {:?}: use virtio-mmio (microvm) or virtio-blk (q35)",
                self.block_device_driver
            ));
        }
        if !self.use_vsock {
            return Err(
                "hypervisor.stratovirt.use_vsock = false: StratoVirt reaches the agent only over vsock".to_owned()
            );
        }
        if self.sandbox_cgroup_with_emulator {
            return Err(
                "hypervisor.stratovirt.sandbox_cgroup_with_emulator = true: not supported; set it to false (as \
                        iSulad's guide does)"
                    .to_owned(),
            );
        }
        if self.machine_type == StratoVirtMachine::Microvm && self.shared_fs == StratoVirtSharedFs::VirtioFs {
            return Err("hypervisor.stratovirt.shared_fs = \"virtio-fs\" needs machine_type = \"q35\": StratoVirt's \
                        microvm has no virtio-fs device"
                .to_owned());
        }
        if self.pcie_root_port > 32 {
            return Err(format!("hypervisor.stratovirt.pcie_root_port = {}: at most 32", self.pcie_root_port));
        }
        Ok(())
    }
}

/// `configured`, else the built-in kernel: a PVH `vmlinux` for a `microvm`, else `bzImage`.
fn kernel_or_built_in(configured: &Option<PathBuf>, microvm: bool) -> PathBuf {
    let name = if microvm { "vmlinux" } else { "bzImage" };
    configured.clone().unwrap_or_else(|| find_artifact(&[Path::new("kernel")], name))
}

/// `configured`, else the built-in initrd.
fn initrd_or_built_in(configured: &Option<PathBuf>) -> PathBuf {
    configured.clone().unwrap_or_else(|| find_artifact(&[Path::new("initrd")], "wisp.initrd"))
}

/// The workspace's `target/` when this crate was built.
fn build_target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target")
}

/// `name` in the installed layout, next to the binary in `target/`, or in the build-time
/// `target/`; the last candidate if none exists (so the error names a real place to put it).
fn find_artifact(subdirs: &[&Path], name: &str) -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(exe_dir) = env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)) {
        candidates.push(exe_dir.join("../share/wisp").join(name));
        for sub in subdirs {
            candidates.push(exe_dir.join("..").join(sub).join(name));
        }
    }
    for sub in subdirs {
        candidates.push(build_target_dir().join(sub).join(name));
    }
    let fallback = candidates.last().cloned().unwrap_or_else(|| PathBuf::from(name));
    candidates.into_iter().find(|c| c.is_file()).map_or(fallback, |found| normalize(&found))
}

/// Removes `..` components lexically so messages show a clean path.
fn normalize(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// Where a helper binary was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The binary.
    pub path: PathBuf,
    /// It is the build-time `cargo install` fallback, not the configured path.
    pub fallback: bool,
}

/// The `cargo install` directory of whoever built this binary (`make deps` puts virtiofsd and
/// vhost-device-vsock there): fixed at build time, not read from the environment at run time.
fn build_time_cargo_bin() -> Option<PathBuf> {
    option_env!("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| option_env!("HOME").map(|home| Path::new(home).join(".cargo")))
        .map(|home| home.join("bin"))
}

/// Finds the program `name`: an absolute or relative path as is, a bare name in
/// [`SYSTEM_BIN_DIRS`]; failing that, for a bare name or one of our default paths only, the
/// same file name in the build-time `cargo install` directory (reported as a fallback). A path
/// the configuration spells out is that file or nothing: a binary found elsewhere would hide a
/// typo. Never `PATH` or `$HOME`.
pub fn locate_program(name: &Path) -> Option<Found> {
    let direct = if name.components().count() > 1 {
        name.is_file().then(|| name.to_owned())
    } else {
        SYSTEM_BIN_DIRS.iter().map(|dir| Path::new(dir).join(name)).find(|p| p.is_file())
    };
    if let Some(path) = direct {
        return Some(Found { path, fallback: false });
    }
    let default = [DEFAULT_QEMU, DEFAULT_VIRTIOFSD, DEFAULT_VHOST_DEVICE_VSOCK].iter().any(|d| Path::new(d) == name);
    if name.components().count() > 1 && !default {
        return None;
    }
    let file_name = name.file_name()?;
    let path = build_time_cargo_bin()?.join(file_name);
    path.is_file().then_some(Found { path, fallback: true })
}

/// [`locate_program`]'s path.
pub fn find_program(name: &Path) -> Option<PathBuf> {
    locate_program(name).map(|found| found.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_path_that_is_missing_is_not_replaced_by_another_binary() {
        assert_eq!(locate_program(Path::new("/nonexistent/virtiofsd")), None);
        assert_eq!(locate_program(Path::new("/nonexistent/vhost-device-vsock")), None);
        let sh = locate_program(Path::new("sh")).expect("sh is in a system directory");
        assert!(!sh.fallback && sh.path.is_absolute(), "{sh:?}");
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/t/configuration.toml"))
    }

    #[test]
    fn factory_template_is_off_by_default_and_reads_kata_s_key_too() {
        assert!(!parse("").unwrap().factory.template);
        let ours = parse("[factory]\ntemplate = true\ntemplate_path = \"/run/t\"\n").unwrap();
        assert!(ours.factory.template);
        assert_eq!(ours.factory.template_path.as_deref(), Some(Path::new("/run/t")));
        assert!(parse("[factory]\nenable_template = true\n").unwrap().factory.template);
        assert!(parse("[factory]\ntemplates = true\n").is_err(), "a misspelt key is refused");
    }

    #[test]
    fn empty_file_is_the_default() {
        let config = parse("").unwrap();
        assert_eq!(config.hypervisor, HypervisorConfig::Qemu(QemuSection::default()));
        assert_eq!(config.agent, AgentSection::default());
        assert_eq!(config.source.as_deref(), Some(Path::new("/t/configuration.toml")));
    }

    #[test]
    fn kata_keys_parse() {
        let config = parse(
            r#"
            [hypervisor.qemu]
            path = "/opt/qemu/bin/qemu-system-x86_64"
            kernel = "/k/vmlinux"
            initrd = "/k/wisp.initrd"
            machine_type = "microvm"
            default_vcpus = 2
            default_memory = 512
            block_device_driver = "virtio-mmio"
            shared_fs = "virtio-9p"
            kernel_params = "agent.log=debug quiet"
            enable_vhost_user_store = true
            disable_block_device_use = true
            vhost_user_store_path = "/var/vu"
            pcie_root_port = 4
            accel = "tcg"
            tb_size = 32

            [agent.wisp]
            dial_timeout = 30
            debug_console_enabled = true
            channel = "serial"
            "#,
        )
        .unwrap();
        let q = config.qemu().unwrap();
        assert_eq!(q.path, Path::new("/opt/qemu/bin/qemu-system-x86_64"));
        assert_eq!(config.kernel(), Path::new("/k/vmlinux"));
        assert_eq!(config.initrd(), Path::new("/k/wisp.initrd"));
        assert_eq!(q.machine_type, MachineType::Microvm);
        assert_eq!((q.default_vcpus, q.default_memory), (2, 512));
        assert_eq!(q.block_device_driver, "virtio-mmio");
        assert_eq!(q.shared_fs, SharedFsKind::NineP);
        assert_eq!(q.kernel_params, "agent.log=debug quiet");
        assert!(q.enable_vhost_user_store);
        assert!(q.disable_block_device_use);
        assert_eq!(q.vhost_user_store_path, Path::new("/var/vu"));
        assert_eq!((q.pcie_root_port, q.accel, q.tb_size), (4, AccelChoice::Tcg, 32));
        assert_eq!(config.agent.dial_timeout(), Duration::from_secs(30));
        assert!(config.agent.debug_console_enabled);
        assert_eq!(config.agent.channel, ChannelKind::Serial);
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = parse("[hypervisor.qemu]\nmachine_type = \"virt\"\n").unwrap_err();
        assert!(format!("{err}: {}", std::error::Error::source(&err).unwrap()).contains("machine_type"), "{err:?}");
        let err = parse("[hypervisor.qemu]\ndefault_vcpus = 0\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration /t/configuration.toml: hypervisor.qemu.default_vcpus = 0: use 1..=255"
        );
        let err = parse("[hypervisor.qemu]\nblock_device_driver = \"ide\"\n").unwrap_err();
        assert!(err.to_string().contains("virtio-blk, virtio-scsi or virtio-mmio"), "{err}");
        let err = parse("[hypervisor.qemu]\nno_such_key = 1\n").unwrap_err();
        assert!(std::error::Error::source(&err).unwrap().to_string().contains("no_such_key"), "{err:?}");
        let err = parse("[agent.wisp]\ndial_timeout = 0\n").unwrap_err();
        assert!(err.to_string().contains("agent.wisp.dial_timeout"), "{err}");
    }

    #[test]
    fn lookup_order() {
        let dir = tempfile::tempdir().unwrap();
        let explicit = dir.path().join("explicit.toml");
        let etc = dir.path().join("etc.toml");
        let defaults = dir.path().join("defaults.toml");
        fs::write(&explicit, "[hypervisor.qemu]\ndefault_vcpus = 3\n").unwrap();
        fs::write(&etc, "[hypervisor.qemu]\ndefault_vcpus = 2\n").unwrap();
        fs::write(&defaults, "[hypervisor.qemu]\ndefault_vcpus = 4\n").unwrap();
        let candidates = [etc.as_path(), defaults.as_path()];

        let config = Config::load_from(Some(&explicit), &candidates).unwrap();
        assert_eq!((config.hypervisor.vcpus(), config.source.as_deref()), (3, Some(explicit.as_path())));
        let config = Config::load_from(None, &candidates).unwrap();
        assert_eq!((config.hypervisor.vcpus(), config.source.as_deref()), (2, Some(etc.as_path())));
        fs::remove_file(&etc).unwrap();
        let config = Config::load_from(None, &candidates).unwrap();
        assert_eq!((config.hypervisor.vcpus(), config.source.as_deref()), (4, Some(defaults.as_path())));
        fs::remove_file(&defaults).unwrap();
        let config = Config::load_from(None, &candidates).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.source_name(), "built-in default");

        // A named file that does not exist is an error, never a silent fallback.
        let err = Config::load_from(Some(&dir.path().join("missing.toml")), &candidates).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    }

    #[test]
    fn built_in_artifacts_follow_the_machine() {
        let mut config = Config::default();
        assert!(config.kernel().ends_with("bzImage"), "{}", config.kernel().display());
        assert!(config.initrd().ends_with("wisp.initrd"), "{}", config.initrd().display());
        assert!(!config.disks_at_boot() && config.hypervisor.capabilities().hot_plug_block);
        config.qemu_mut().unwrap().machine_type = MachineType::Microvm;
        assert!(config.kernel().ends_with("vmlinux"), "{}", config.kernel().display());
        assert!(config.disks_at_boot(), "microvm cannot hot-plug: {:?}", config.hypervisor.capabilities());
    }

    #[test]
    fn a_stratovirt_section_chooses_stratovirt_and_only_its_keys_count() {
        let config = parse(
            "[hypervisor.qemu]\ndefault_memory = 1024\nvhost_user_store_path = \"/q\"\n\n\
             [hypervisor.stratovirt]\ndefault_memory = 512\ndefault_vcpus = 2\nkernel = \"/k/vmlinux\"\n",
        )
        .unwrap();
        assert_eq!(config.hypervisor.name(), "stratovirt");
        assert!(config.qemu().is_none() && config.stratovirt().is_some());
        assert_eq!((config.hypervisor.memory_mib(), config.hypervisor.vcpus()), (512, 2));
        assert_eq!(config.kernel(), Path::new("/k/vmlinux"));
        assert_eq!(config.hypervisor.vhost_user_store_path(), Path::new(DEFAULT_VHOST_USER_STORE));
        // The QEMU section beside it is still checked.
        let err = parse("[hypervisor.qemu]\ndefault_vcpus = 0\n[hypervisor.stratovirt]\n").unwrap_err();
        assert!(err.to_string().contains("hypervisor.qemu.default_vcpus"), "{err}");
        let caps = config.hypervisor.capabilities();
        assert!(!caps.pod_network && !caps.disks_at_boot(), "{caps:?}");
        let mut sized = config.clone();
        sized.hypervisor.resize(640, 3);
        assert_eq!(sized.stratovirt().map(|s| (s.default_memory, s.default_vcpus)), Some((640, 3)));
    }
}
