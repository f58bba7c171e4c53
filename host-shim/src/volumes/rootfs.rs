//! A container rootfs that containerd hands over as a block device.
//!
//! containerd's devmapper snapshotter (and any snapshotter whose snapshots are disks) gives the
//! shim one rootfs mount whose source is a block device node: `{type: ext4, source:
//! /dev/mapper/...}`. Mounting it on the host and sharing the directory through virtio-fs or 9p
//! would put a file-system server between the container and its own disk; like Kata, the shim
//! plugs the device into the VM instead and lets the agent mount it (a `blk` or `mmioblk`
//! `Storage`), and the host never mounts it. `disable_block_device_use` turns this off.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::hypervisor::BlockSource;

/// Where the agent mounts container `cid`'s block rootfs in the guest.
pub fn guest_mount_point(cid: &str) -> String {
    format!("/run/kata-containers/{cid}/rootfs")
}

/// A rootfs disk: what backs it, and how the guest mounts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRootfs {
    /// The host block device.
    pub source: BlockSource,
    /// Its file system (`ext4`, `xfs`, ...), from the mount's type.
    pub fstype: String,
    /// The mount's options for the guest (`ro` included when read-only).
    pub options: Vec<String>,
}

/// The rootfs disk that a single containerd rootfs mount of `typ` from `source` stands for, if
/// `source` is a block device; `None` leaves the mount to the host (overlay, bind, ...).
pub fn from_mount(typ: &str, source: &str, options: &[String]) -> Option<BlockRootfs> {
    if typ.is_empty() || typ == "bind" || options.iter().any(|o| o == "bind" || o == "rbind") {
        return None;
    }
    let path = Path::new(source);
    if !path.is_absolute() || !std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device()) {
        return None;
    }
    let read_only = options.iter().any(|o| o == "ro");
    Some(BlockRootfs {
        source: BlockSource::File { path: path.to_owned(), read_only },
        fstype: typ.to_owned(),
        options: options.iter().filter(|o| *o != "rw").cloned().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(o: &[&str]) -> Vec<String> {
        o.iter().map(ToString::to_string).collect()
    }

    /// A block device every Linux host has (the null block of the loop driver is not
    /// promised): the first entry under /sys/dev/block names one.
    fn some_block_device() -> Option<String> {
        let entry = std::fs::read_dir("/sys/dev/block").ok()?.flatten().next()?;
        let uevent = std::fs::read_to_string(entry.path().join("uevent")).ok()?;
        let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
        let dev = format!("/dev/{name}");
        Path::new(&dev).exists().then_some(dev)
    }

    #[test]
    fn a_block_device_source_is_a_rootfs_disk() {
        let Some(dev) = some_block_device() else {
            eprintln!("no block device node on this host; skipped");
            return;
        };
        let disk = from_mount("ext4", &dev, &opts(&["rw", "discard"])).unwrap();
        assert_eq!(disk.source, BlockSource::File { path: dev.clone().into(), read_only: false });
        assert_eq!((disk.fstype.as_str(), disk.options), ("ext4", opts(&["discard"])));
        let view = from_mount("xfs", &dev, &opts(&["ro"])).unwrap();
        assert_eq!(view.source, BlockSource::File { path: dev.clone().into(), read_only: true });
        assert_eq!(view.options, opts(&["ro"]));
        assert_eq!(from_mount("bind", &dev, &[]), None);
        assert_eq!(from_mount("ext4", &dev, &opts(&["rbind"])), None);
    }

    #[test]
    fn directories_files_and_relative_paths_stay_on_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(from_mount("overlay", "overlay", &opts(&["lowerdir=/a"])), None);
        assert_eq!(from_mount("ext4", dir.path().to_str().unwrap(), &[]), None);
        assert_eq!(from_mount("ext4", file.to_str().unwrap(), &[]), None);
        assert_eq!(from_mount("ext4", "dev/null", &[]), None);
        assert_eq!(from_mount("ext4", "/nonexistent/disk", &[]), None);
    }
}
