//! Block storage a container asks for, and how it reaches the guest.
//!
//! Two places in a container spec ask for disks:
//! - `linux.devices` entries of major 241 (vhost-user-blk, through Kata's vhost-user store:
//!   [`store`]); the guest gets a Kata `Device` and the agent renumbers the entry;
//! - mounts of type `directvol`, `spdkvol` or `vfiovol` whose source is a direct volume
//!   ([`direct`]); the guest gets a Kata `blk` `Storage` mounted with the volume's fstype and
//!   options, and the container mount becomes a bind of it.
//!
//! A third comes from containerd itself: a rootfs mount whose source is a block device
//! ([`rootfs`]), plugged the same way and mounted by the agent as the container's root.
//!
//! [`plan`] reads both before the VM is touched, so bad input fails Create with nothing
//! plugged or mounted; the shim then plugs each [`Attach`] over QMP.

pub mod direct;
pub mod rootfs;
pub mod store;

use oci_spec::runtime::Spec;

use crate::config::Config;
use crate::hypervisor::BlockSource;

/// Where the guest mounts direct volumes (Kata's directory for block storages).
pub const GUEST_STORAGE_DIR: &str = "/run/kata-containers/sandbox/storage";

/// Why a container's block storage cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A `linux.devices` entry.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A direct volume.
    #[error(transparent)]
    Direct(#[from] direct::DirectError),
}

/// How the container uses a plugged disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Use {
    /// As the device node `container_path` (a `linux.devices` entry).
    Device {
        /// The node in the container.
        container_path: String,
    },
    /// Mounted for spec mount number `mount_index`.
    Volume {
        /// The index in the spec's mounts.
        mount_index: usize,
        /// The direct volume's path (its key in the direct-volume root).
        volume: String,
        /// The volume's description.
        info: direct::MountInfo,
    },
    /// As the container's root file system.
    Rootfs {
        /// The file system.
        fstype: String,
        /// Its mount options in the guest.
        options: Vec<String>,
    },
}

/// One disk to plug for a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    /// What backs it.
    pub source: BlockSource,
    /// What the container does with it.
    pub usage: Use,
}

/// The disks `spec` asks for, resolved against `config`'s vhost-user store and direct-volume
/// root.
pub fn plan(spec: &Spec, config: &Config) -> Result<Vec<Attach>, VolumeError> {
    let mut out = Vec::new();
    let devices = spec.linux().as_ref().and_then(|l| l.devices().clone()).unwrap_or_default();
    let store_dir = store::store_dir(config);
    for d in devices {
        let typ = if d.typ() == oci_spec::runtime::LinuxDeviceType::B { "b" } else { "" };
        if store::is_vhost_user(typ, d.major()) {
            let path = d.path().to_string_lossy().into_owned();
            let socket = store::resolve(&store_dir, &path, d.major(), d.minor())?;
            out.push(Attach { source: BlockSource::VhostUser { socket }, usage: Use::Device { container_path: path } });
        }
    }
    let root = direct::root(config);
    for (mount_index, m) in spec.mounts().iter().flatten().enumerate() {
        let Some(kind) = m.typ().as_deref().filter(|t| direct::VOLUME_TYPES.contains(t)) else { continue };
        let volume = m.source().as_ref().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let info = direct::read(&root, &volume)?;
        if info.volume_type != kind {
            return Err(direct::DirectError::BadDevice {
                volume,
                why: format!("mounted as type={kind} but its mountInfo says volume-type {}", info.volume_type),
            }
            .into());
        }
        let source = direct::source(&volume, &info)?;
        out.push(Attach { source, usage: Use::Volume { mount_index, volume, info } });
    }
    Ok(out)
}

/// The guest mount point of the volume behind mount `index` of container `cid`.
pub fn guest_mount_point(cid: &str, index: usize) -> String {
    format!("{GUEST_STORAGE_DIR}/{cid}-{index}")
}

/// Whether `attaches` need shared guest memory (a vhost-user device).
pub fn need_shared_memory(attaches: &[Attach]) -> bool {
    attaches.iter().any(|a| matches!(a.source, BlockSource::VhostUser { .. }))
}

/// What backs a disk hot-plugged by path: a vhost-user-blk socket, else a raw image or host
/// block device (seed 004's `--block-volume`).
pub fn hot_plug_source(path: &str) -> Result<BlockSource, String> {
    use std::os::unix::fs::FileTypeExt;
    let p = std::path::Path::new(path);
    if !p.is_absolute() {
        return Err(format!("block volume {path:?} must be an absolute path"));
    }
    let meta = std::fs::metadata(p).map_err(|e| format!("block volume {path}: {e}"))?;
    let ft = meta.file_type();
    if ft.is_socket() {
        Ok(BlockSource::VhostUser { socket: p.to_owned() })
    } else if ft.is_file() || ft.is_block_device() {
        Ok(BlockSource::File { path: p.to_owned(), read_only: false })
    } else {
        Err(format!("block volume {path} is neither a file, a block device nor a vhost-user socket"))
    }
}
