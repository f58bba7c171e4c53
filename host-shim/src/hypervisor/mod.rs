//! The hypervisor seam: what a sandbox needs from a VMM, and one file set per VMM behind it.
//!
//! A [`Hypervisor`] boots one VM for one sandbox: the kernel and initrd, an agent channel, a
//! share of a host directory (the bundle rootfs) and, where the VMM has one, a control socket
//! for later hot-plug. It owns every process it starts (the VMM and its vhost-user helpers) and
//! [`Hypervisor::stop`] ends them all. The shim talks to the agent, never to the VMM, for
//! everything else.
//!
//! Backends: [`qemu`] (`qemu/{config,cmdline,hotplug,lifecycle}.rs`) and [`stratovirt`] (its
//! microvm/standard argv, a lifecycle). Both speak QMP through the one client in [`qmp`]. A
//! backend fits the seam with its own `config.rs` (from `[hypervisor.<name>]`), `cmdline.rs`
//! (its machine syntax), and a lifecycle that hands back an [`AgentAddr`]. [`factory`] makes
//! the VM of the configuration's chosen VMM, and nothing else.

pub mod cgroup;
pub mod confine;
pub mod console;
pub mod factory;
#[cfg(test)]
pub mod fake;
pub mod helper_watch;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod stratovirt;
pub mod vhost_vsock;

use std::fmt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::agent_dial::AgentAddr;

/// The tag the guest mounts the shared directory by (Kata's name).
pub const SHARED_FS_TAG: &str = "kataShared";
/// The vsock context id given to guests behind hybrid vsock (it needs no unique one: the
/// helper's unix socket is per VM). vhost-vsock guests get a claimed one ([`vhost_vsock`]).
pub const GUEST_CID: u32 = 3;

/// What a sandbox cloned from a template gets by hot-plug after its restore, beyond the
/// template's own size ([`crate::template`]): a sized pod need not boot cold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Growth {
    /// vCPUs to add.
    pub vcpus: u32,
    /// Guest RAM to add, MiB (a whole number of the guest's 128 MiB memory blocks).
    pub memory_mib: u32,
}

impl Growth {
    /// Whether nothing is added.
    pub fn is_none(&self) -> bool {
        self.vcpus == 0 && self.memory_mib == 0
    }
}

/// How the host reaches the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentChannel {
    /// The host kernel's vhost-vsock (`/dev/vhost-vsock`), guest context id `cid`.
    VhostVsock {
        /// The guest's context id, unique on the host.
        cid: u32,
    },
    /// vhost-user-vsock served by a `vhost-device-vsock` helper; the host dials its hybrid socket.
    HybridVsock,
    /// A virtio-serial port named `agent.channel.0` behind a unix socket.
    Serial,
}

impl fmt::Display for AgentChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::VhostVsock { cid } => write!(f, "vhost-vsock (cid {cid})"),
            Self::HybridVsock => f.write_str("vhost-user-vsock (vhost-device-vsock)"),
            Self::Serial => f.write_str("virtio-serial"),
        }
    }
}

/// How the shared directory reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SharedFs {
    /// virtio-fs through a virtiofsd per VM.
    VirtioFs,
    /// virtio-9p served by QEMU.
    NineP,
}

impl SharedFs {
    /// Kata's `Storage.driver` for this share.
    pub fn storage_driver(self) -> &'static str {
        match self {
            Self::VirtioFs => "virtio-fs",
            Self::NineP => "9p",
        }
    }

    /// The guest filesystem type.
    pub fn fstype(self) -> &'static str {
        match self {
            Self::VirtioFs => "virtiofs",
            Self::NineP => "9p",
        }
    }

    /// Mount options in the guest.
    pub fn mount_options(self) -> Vec<String> {
        match self {
            Self::VirtioFs => Vec::new(),
            Self::NineP => ["trans=virtio", "version=9p2000.L", "msize=512000", "cache=mmap"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

impl fmt::Display for SharedFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::VirtioFs => "virtio-fs",
            Self::NineP => "virtio-9p",
        })
    }
}

/// The files of one VM inside its sandbox state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    dir: PathBuf,
}

impl VmPaths {
    /// The layout inside `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The end of what the guest wrote on `ttyS0` (a [`console::Ring`]: this file and
    /// `console.log.1`, at most [`console::CONSOLE_CAP`] together).
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The FIFO the VMM writes the guest's `ttyS0` into, drained by a [`console::ConsoleDrain`].
    pub fn console_fifo(&self) -> PathBuf {
        self.dir.join("console.fifo")
    }

    /// QEMU's stdout and stderr.
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }

    /// The helpers' output.
    pub fn helper_log(&self, helper: &str) -> PathBuf {
        self.dir.join(format!("{helper}.log"))
    }

    /// `vhost-device-vsock`'s stdout and stderr.
    pub fn vsock_helper_log(&self) -> PathBuf {
        self.helper_log("vhost-device-vsock")
    }

    /// The vhost-user socket between QEMU and `vhost-device-vsock`.
    pub fn vhost_vsock_socket(&self) -> PathBuf {
        self.dir.join("vhost.sock")
    }

    /// The hybrid vsock socket the host dials (`CONNECT <port>`).
    pub fn hybrid_vsock_socket(&self) -> PathBuf {
        self.dir.join("hvsock.sock")
    }

    /// QEMU's end of the virtio-serial agent port.
    pub fn serial_socket(&self) -> PathBuf {
        self.dir.join("serial.sock")
    }

    /// The QMP socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    /// The vhost-user socket between QEMU and virtiofsd.
    pub fn virtiofsd_socket(&self) -> PathBuf {
        self.dir.join("virtiofsd.sock")
    }

    /// The host directory shared with the guest.
    pub fn shared_dir(&self) -> PathBuf {
        self.dir.join("shared")
    }
}

/// What can go wrong with a VM.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// A program could not be started.
    #[error("cannot start {program}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A helper did not create its socket in time, or exited first.
    #[error("{helper} did not create {socket} within {waited_ms} ms{exited}; its log says: {log}")]
    HelperNotReady {
        /// The helper.
        helper: String,
        /// `: it exited (<status>)` when it died first, else empty.
        exited: String,
        /// The socket it should have created.
        socket: PathBuf,
        /// How long we waited.
        waited_ms: u128,
        /// The tail of its log.
        log: String,
    },
    /// A path QEMU takes inside a `key=value` option is not UTF-8.
    #[error("path {0} is not UTF-8; QEMU cannot take it")]
    NonUtf8Path(PathBuf),
    /// Filesystem work in the state directory failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host cannot provide what the configuration asks for.
    #[error("{0}")]
    Unsupported(String),
    /// The sandbox cgroup or the rootless ids could not be set up (the whole cause chain).
    #[error("confining the VM: {0}")]
    Confine(String),
    /// QMP failed.
    #[error("QMP")]
    Qmp(#[from] qmp::QmpError),
}

/// What backs a disk plugged into a running VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockSource {
    /// A raw image file or a host block device, as virtio-blk.
    File {
        /// The file or device.
        path: PathBuf,
        /// Plug it read-only.
        read_only: bool,
    },
    /// A vhost-user-blk backend (SPDK, qemu-storage-daemon) behind a unix socket; needs
    /// shared guest memory.
    VhostUser {
        /// The backend's socket.
        socket: PathBuf,
    },
    /// A host PCI function passed through with VFIO (`0000:45:00.1`).
    Vfio {
        /// The full PCI address.
        host: String,
    },
}

impl fmt::Display for BlockSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { path, .. } => write!(f, "virtio-blk {}", path.display()),
            Self::VhostUser { socket } => write!(f, "vhost-user-blk {}", socket.display()),
            Self::Vfio { host } => write!(f, "vfio-pci {host}"),
        }
    }
}

/// A device plugged into a running VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugged {
    /// The VMM's id of the device (what [`Hypervisor::hot_unplug`] takes).
    pub id: String,
    /// Where the guest finds it: Kata's PCI path (`02/00`), or for a virtio-mmio disk attached
    /// at boot its node (`/dev/vda`, Kata's `mmioblk`).
    pub pci_path: String,
}

/// What a VM can do, asked of the backend rather than read off its machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Disks can be plugged into (and out of) the running VM ([`Hypervisor::hot_plug`]).
    pub hot_plug_block: bool,
    /// Disks can be attached before the VM starts ([`Hypervisor::cold_plug`]).
    pub boot_disks: bool,
    /// A CRI pod's network can be given to the VM as a NIC on its tap.
    pub pod_network: bool,
}

impl Capabilities {
    /// Whether the disks of the container that boots the VM must come along at boot: the VM
    /// cannot hot-plug them later.
    pub fn disks_at_boot(self) -> bool {
        self.boot_disks && !self.hot_plug_block
    }
}

/// One VM.
#[async_trait]
pub trait Hypervisor: Send + Sync + fmt::Debug {
    /// What this VM can do.
    fn capabilities(&self) -> Capabilities;

    /// Starts the helpers and the VMM; returns once the VMM runs (not once the guest booted)
    /// with the address the agent will answer on.
    async fn start(&mut self) -> Result<AgentAddr, HypervisorError>;

    /// The VMM's pid while it runs.
    fn pid(&self) -> Option<u32>;

    /// Becomes `Some(description)` when the VMM has exited.
    fn exited(&self) -> watch::Receiver<Option<String>>;

    /// The last `lines` lines the guest printed on its console.
    fn console_tail(&self, lines: usize) -> String;

    /// The host directory shared with the guest (see [`SharedFs`]), and how.
    fn shared(&self) -> (PathBuf, SharedFs);

    /// Stops the VMM and every helper, and waits for them. Idempotent.
    async fn stop(&mut self);

    /// Plugs `source` into the running VM as device `id`; returns where the guest finds it.
    async fn hot_plug(&mut self, id: &str, source: &BlockSource) -> Result<Plugged, HypervisorError> {
        Err(HypervisorError::Unsupported(format!("this hypervisor cannot hot-plug devices ({id}: {source})")))
    }

    /// Attaches `source` as disk `id` when the VM boots (before [`Hypervisor::start`]), for
    /// machines that cannot hot-plug (microvm): the guest finds it as `/dev/vdX`.
    fn cold_plug(&mut self, id: &str, source: &BlockSource) -> Result<Plugged, HypervisorError> {
        Err(HypervisorError::Unsupported(format!("this hypervisor cannot attach devices at boot ({id}: {source})")))
    }

    /// Unplugs device `id` and frees what backed it. Idempotent for unknown ids.
    async fn hot_unplug(&mut self, id: &str) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported(format!("this hypervisor cannot hot-unplug devices ({id})")))
    }

    /// Grows (or shrinks) the virtio-blk disk `id` to `size` bytes, as the guest sees it.
    async fn resize_block(&mut self, id: &str, size: u64) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported(format!("this hypervisor cannot resize disk {id} to {size} bytes")))
    }
}

/// The last `lines` lines of a log file (lossy UTF-8), for error messages: read from a
/// bounded end of the file (and of its older half when it is a [`console::Ring`]).
pub fn tail(path: &Path, lines: usize) -> String {
    console::tail(path, lines)
}
