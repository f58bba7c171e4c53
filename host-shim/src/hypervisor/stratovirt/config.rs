//! [`StratoVirtSpec`]: `[hypervisor.stratovirt]` resolved against this host, as plain data so
//! [`super::cmdline`] is testable without StratoVirt.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::config::{find_program, StratoVirtMachine, StratoVirtSection, StratoVirtSharedFs};
use crate::hypervisor::SharedFs;

/// How a block device is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockDriver {
    /// `virtio-blk-device` on virtio-mmio; Kata's storage driver `mmioblk` (`/dev/vdX` by slot).
    Mmio,
    /// `virtio-blk-pci`; Kata's storage driver `blk`.
    Pci,
}

impl BlockDriver {
    /// Kata's `Storage.driver` for a device attached this way.
    pub fn storage_driver(self) -> &'static str {
        match self {
            Self::Mmio => "mmioblk",
            Self::Pci => "blk",
        }
    }
}

/// Everything StratoVirt's command line depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StratoVirtSpec {
    /// The StratoVirt binary (or wrapper script).
    pub binary: PathBuf,
    /// The machine.
    pub machine: StratoVirtMachine,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The initrd.
    pub initrd: PathBuf,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Extra kernel parameters.
    pub kernel_params: Vec<String>,
    /// The guest's vsock context id: derived from the sandbox directory, then the first free
    /// one from there claimed at start ([`crate::hypervisor::vhost_vsock`]).
    pub guest_cid: u32,
    /// The claimed vhost-vsock descriptor StratoVirt inherits (`vhostfd=`).
    pub vhost_fd: Option<i32>,
    /// How block devices are attached.
    pub block_driver: BlockDriver,
    /// pflash firmware (standard machine).
    pub firmware: Option<PathBuf>,
    /// The shared directory, if any (virtio-fs on q35 only).
    pub shared_fs: Option<SharedFs>,
    /// Free pcie-root-ports (q35).
    pub root_ports: u32,
    /// The virtiofsd binary.
    pub virtiofsd: PathBuf,
    /// Boot the debug console.
    pub debug_console: bool,
    /// The CRI's `linux.cgroupsPath` of the pod's sandbox container, if any (the sandbox
    /// cgroup goes under the pod's).
    pub cgroups_path: Option<String>,
}

impl StratoVirtSpec {
    /// Resolves `section` for the sandbox whose state directory is `dir` (the guest CID is
    /// derived from it, so two sandboxes get different ones).
    pub fn resolve(section: &StratoVirtSection, dir: &Path, debug_console: bool) -> Self {
        let q35 = section.machine_type == StratoVirtMachine::Q35;
        Self {
            binary: find_program(&section.path).unwrap_or_else(|| section.path.clone()),
            machine: section.machine_type,
            kernel: section.kernel(),
            initrd: section.initrd(),
            vcpus: section.default_vcpus,
            memory_mib: section.default_memory,
            kernel_params: section.kernel_params.split_whitespace().map(str::to_owned).collect(),
            guest_cid: guest_cid_for(dir),
            vhost_fd: None,
            block_driver: if section.block_device_driver == "virtio-mmio" && !q35 {
                BlockDriver::Mmio
            } else {
                BlockDriver::Pci
            },
            firmware: section.firmware.clone(),
            shared_fs: (section.shared_fs == StratoVirtSharedFs::VirtioFs).then_some(SharedFs::VirtioFs),
            root_ports: if q35 { section.pcie_root_port } else { 0 },
            virtiofsd: find_program(&section.virtio_fs_daemon).unwrap_or_else(|| section.virtio_fs_daemon.clone()),
            debug_console,
            cgroups_path: None,
        }
    }
}

/// A context id in `3..u32::MAX` from the sandbox directory (0-2 are reserved, `u32::MAX` is
/// `VMADDR_CID_ANY`).
pub fn guest_cid_for(dir: &Path) -> u32 {
    let mut hasher = DefaultHasher::new();
    dir.hash(&mut hasher);
    let span = u64::from(u32::MAX - 3);
    3 + u32::try_from(hasher.finish() % span).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn seed_003_keys_resolve_to_microvm_mmio_vsock() {
        // iSulad's guide for Kata + StratoVirt (../shared/seeds/003), verbatim keys.
        let config = Config::parse(
            r#"
            [hypervisor.stratovirt]
            path = "/home/stratovirt.sh"
            kernel = "/var/lib/kata/vmlinux.bin"
            initrd = "/var/lib/kata/kata-containers-initrd.img"
            block_device_driver = "virtio-mmio"
            use_vsock = true
            enable_netmon = true
            internetworking_model="tcfilter"
            sandbox_cgroup_with_emulator = false
            disable_new_netns = false
            disable_block_device_use = false
            disable_vhost_net = true
            "#,
            Path::new("/etc/wisp/configuration.toml"),
        )
        .unwrap();
        let section = config.stratovirt().expect("the section selects StratoVirt");
        let spec = StratoVirtSpec::resolve(section, Path::new("/run/wisp/s1"), false);
        assert_eq!(spec.binary, Path::new("/home/stratovirt.sh"));
        assert_eq!(spec.machine, StratoVirtMachine::Microvm);
        assert_eq!(spec.kernel, Path::new("/var/lib/kata/vmlinux.bin"));
        assert_eq!(spec.initrd, Path::new("/var/lib/kata/kata-containers-initrd.img"));
        assert_eq!(spec.block_driver, BlockDriver::Mmio);
        assert_eq!(spec.block_driver.storage_driver(), "mmioblk");
        assert_eq!((spec.shared_fs, spec.root_ports), (None, 0));
        assert!(spec.guest_cid >= 3);
        assert_ne!(spec.guest_cid, guest_cid_for(Path::new("/run/wisp/s2")), "sandboxes get their own CID");
    }

    #[test]
    fn invalid_combinations_name_the_key() {
        let parse = |text: &str| Config::parse(text, Path::new("/c.toml")).unwrap_err().to_string();
        assert!(parse("[hypervisor.stratovirt]\nuse_vsock = false\n").contains("use_vsock"));
        assert!(parse("[hypervisor.stratovirt]\ndefault_memory = 64\n").contains("at least 128"));
        assert!(parse("[hypervisor.stratovirt]\nshared_fs = \"virtio-fs\"\n").contains("machine_type = \"q35\""));
        assert!(parse("[hypervisor.stratovirt]\nsandbox_cgroup_with_emulator = true\n").contains("false"));
        assert!(parse("[hypervisor.stratovirt]\nblock_device_driver = \"ide\"\n").contains("virtio-mmio"));
        let ok = Config::parse(
            "[hypervisor.stratovirt]\nmachine_type = \"q35\"\nshared_fs = \"virtio-fs\"\nblock_device_driver = \"virtio-blk\"\n",
            Path::new("/c.toml"),
        )
        .unwrap();
        let spec = StratoVirtSpec::resolve(ok.stratovirt().unwrap(), Path::new("/d"), false);
        assert_eq!(
            (spec.block_driver, spec.shared_fs, spec.root_ports),
            (BlockDriver::Pci, Some(SharedFs::VirtioFs), 2)
        );
    }
}
