//! The VM configurations the bench boots, each an agent VM and its two floor twins (the true
//! floor and the busybox floor): the same machine, kernel, memory, devices and QEMU command
//! line, only the initrd differs.

use std::fs;
use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use wisp_tests::{artifacts, Channel, Machine, VmConfig};

use crate::cli::ConfigName;
use crate::container::{share_args, Share};
use crate::inputs::Packed;

/// A configuration ready to boot: the agent VM and its floor twins.
#[derive(Debug)]
pub struct BenchConfig {
    pub name: &'static str,
    pub description: String,
    pub agent: VmConfig,
    /// The agent VM booting the true floor's initrd; `None` where the kernel has vsock only as
    /// modules (Debian's cloud kernel): the true floor loads none, it cannot listen there.
    pub true_floor: Option<VmConfig>,
    /// The agent VM booting the busybox floor's initrd.
    pub busybox_floor: VmConfig,
    /// The share the agent run's container uses (attached to both VMs); `None`: no container.
    pub container: Option<Share>,
    /// virtiofsd's socket, for [`Share::VirtioFs`] (a virtiofsd must serve it during each boot).
    pub virtiofsd_socket: PathBuf,
}

/// The configuration `name`: its agent VM, and the same VM booting `packed.true_floor_initrd`
/// and `packed.floor_initrd`.
pub fn bench_config(name: ConfigName, packed: &Packed) -> Result<BenchConfig> {
    let (agent, description) = match name {
        ConfigName::Q35 => (VmConfig::wisp(Machine::Q35)?.channel(Channel::HybridVsock), "our bzImage, hybrid vsock"),
        ConfigName::Pc => (VmConfig::wisp(Machine::Pc)?.channel(Channel::HybridVsock), "pc, our bzImage, hybrid vsock"),
        ConfigName::Q35VirtioFs => {
            (VmConfig::wisp(Machine::Q35)?.channel(Channel::HybridVsock), "our bzImage, hybrid vsock")
        }
        ConfigName::MicrovmVirtioFs => {
            (VmConfig::wisp(Machine::Microvm)?.channel(Channel::HybridVsock), "our PVH vmlinux, hybrid vsock")
        }
        ConfigName::Q35Gzip => (
            VmConfig::wisp(Machine::Q35)?.initrd(&packed.gzip_initrd).channel(Channel::HybridVsock),
            "our bzImage, gzip initrd, hybrid vsock",
        ),
        ConfigName::Microvm => {
            (VmConfig::wisp(Machine::Microvm)?.channel(Channel::HybridVsock), "our PVH vmlinux, hybrid vsock")
        }
        ConfigName::Q35Serial => (VmConfig::wisp(Machine::Q35)?.channel(Channel::Serial), "our bzImage, virtio-serial"),
        ConfigName::MicrovmSerial => {
            (VmConfig::wisp(Machine::Microvm)?.channel(Channel::Serial), "our PVH vmlinux, virtio-serial")
        }
        ConfigName::Q35Zstd => (
            VmConfig::wisp(Machine::Q35)?.initrd(&packed.zstd_initrd).channel(Channel::HybridVsock),
            "our bzImage, zstd initrd, hybrid vsock",
        ),
        ConfigName::Q35Lz4 => (
            VmConfig::wisp(Machine::Q35)?.initrd(&packed.lz4_initrd).channel(Channel::HybridVsock),
            "our bzImage, lz4 initrd, hybrid vsock",
        ),
        ConfigName::Q35Xz => (
            VmConfig::wisp(Machine::Q35)?.initrd(&packed.xz_initrd).channel(Channel::HybridVsock),
            "our bzImage, xz initrd, hybrid vsock",
        ),
        ConfigName::Cloud => {
            let release = cloud_kernel_release()?;
            let kernel = PathBuf::from(format!("/boot/vmlinuz-{release}"));
            ensure!(kernel.is_file(), "{} not found: run `make deps` (linux-image-cloud-amd64)", kernel.display());
            let initrd = artifacts::target_dir().join("initrd/wisp-cloud.initrd");
            ensure!(initrd.is_file(), "{} not found: run `make`", initrd.display());
            let config =
                VmConfig::new(Machine::Q35, kernel).initrd(initrd).memory_mib(512).channel(Channel::HybridVsock);
            (config, "Debian cloud kernel + modules, hybrid vsock, 512 MiB")
        }
    };
    // Debian's cloud kernel has no 9p (and its virtiofs is a module): its runs stop at agent ready.
    let container = match name {
        ConfigName::Cloud => None,
        ConfigName::Q35VirtioFs | ConfigName::MicrovmVirtioFs => Some(Share::VirtioFs),
        _ => Some(Share::NineP),
    };
    let virtiofsd_socket = artifacts::target_dir().join(format!("bench/virtiofsd-{}.sock", name.name()));
    let (agent, description) = match container {
        Some(share) => {
            let args = share_args(share, agent.machine_type(), &packed.rootfs, &virtiofsd_socket);
            (agent.qemu_args_extra(args), format!("{description}, {} container rootfs", share.name()))
        }
        None => (agent, format!("{description}, no container (no 9p in this kernel)")),
    };
    let true_floor = (name != ConfigName::Cloud).then(|| agent.clone().initrd(&packed.true_floor_initrd));
    let busybox_floor = agent.clone().initrd(&packed.floor_initrd);
    Ok(BenchConfig { name: name.name(), description, agent, true_floor, busybox_floor, container, virtiofsd_socket })
}

fn cloud_kernel_release() -> Result<String> {
    fs::read_dir("/lib/modules")
        .context("reading /lib/modules")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("-cloud-amd64"))
        .max()
        .context("no Debian cloud kernel in /lib/modules: run `make deps` (linux-image-cloud-amd64)")
}
