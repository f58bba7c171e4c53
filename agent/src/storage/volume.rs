//! GetVolumeStats and ResizeVolume: the usage of a mounted volume in the
//! CSI shape kubelet asks for, and the online growth of its file system
//! after the host grew the disk underneath.
//!
//! The initrd has no resize2fs or xfs_growfs. Growing a mounted ext4 is one
//! ioctl (EXT4_IOC_RESIZE_FS, what resize2fs itself calls for an online
//! resize), so ext4 is grown here; other file systems are refused with a
//! message saying so.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use nix::sys::statfs::{statfs, FsType};
use nix::sys::statvfs::statvfs;
use protocols::csi::{volume_usage::Unit, VolumeCondition, VolumeStatsResponse, VolumeUsage};
use protocols::ttrpc::Code;

use super::StorageError;

const EXT4_SUPER_MAGIC: i64 = 0xEF53;
const SECTOR: u64 = 512;

nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

/// Byte and inode usage of the file system mounted at `path`.
pub fn stats(path: &str) -> Result<VolumeStatsResponse, StorageError> {
    let st = statvfs(path).map_err(|source| StorageError::Stats { path: path.into(), source })?;
    let frsize = st.fragment_size() as u64;
    let usage = |unit, total: u64, free: u64, available: u64| {
        let mut u = VolumeUsage::new();
        u.unit = protocols::protobuf::EnumOrUnknown::new(unit);
        u.total = total;
        u.available = available;
        u.used = total.saturating_sub(free);
        u
    };
    let mut r = VolumeStatsResponse::new();
    r.usage = vec![
        usage(
            Unit::BYTES,
            st.blocks() as u64 * frsize,
            st.blocks_free() as u64 * frsize,
            st.blocks_available() as u64 * frsize,
        ),
        usage(Unit::INODES, st.files() as u64, st.files_free() as u64, st.files_available() as u64),
    ];
    let mut condition = VolumeCondition::new();
    condition.abnormal = false;
    condition.message = "volume is mounted and answers statfs".into();
    r.volume_condition = Some(condition).into();
    Ok(r)
}

/// Grows the ext4 file system mounted at `path` to `size` bytes (0: the whole
/// disk), capped at the size of its disk. Returns the new size in blocks.
pub fn resize(path: &str, size: u64) -> Result<u64, StorageError> {
    let fail = |code, why: String| StorageError::Resize { path: path.into(), why, code };
    let fs = statfs(path).map_err(|source| StorageError::Stats { path: path.into(), source })?;
    if fs.filesystem_type() != FsType(EXT4_SUPER_MAGIC as _) {
        return Err(fail(
            Code::FAILED_PRECONDITION,
            format!(
                "only ext4 can be grown in this guest (file system magic {:#x}; resize2fs and xfs_growfs are not in the initrd)",
                fs.filesystem_type().0
            ),
        ));
    }
    let dir = std::fs::File::open(path).map_err(|e| fail(Code::NOT_FOUND, e.to_string()))?;
    let dev = dir.metadata().map_err(|e| fail(Code::INTERNAL, e.to_string()))?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let sysfs = format!("/sys/dev/block/{major}:{minor}/size");
    let sectors: u64 = std::fs::read_to_string(&sysfs)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| fail(Code::FAILED_PRECONDITION, format!("cannot read the disk size from {sysfs}")))?;
    let disk = sectors * SECTOR;
    let block = fs.block_size() as u64;
    let target = if size == 0 { disk } else { size.min(disk) };
    let blocks = target / block;
    let current = fs.blocks();
    if blocks < current {
        return Err(fail(
            Code::FAILED_PRECONDITION,
            format!(
                "asked for {target} bytes, less than the {} bytes in use: ext4 cannot shrink online",
                current * block
            ),
        ));
    }
    if blocks == current {
        return Ok(blocks);
    }
    // SAFETY: `dir` is an open descriptor on the mount for the whole call, and
    // the kernel reads exactly one u64 from the pointer, which outlives the call.
    unsafe { ext4_resize_fs(dir.as_raw_fd(), &blocks) }
        .map_err(|e| fail(crate::error::errno_code(e), format!("EXT4_IOC_RESIZE_FS to {blocks} blocks: {e}")))?;
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_a_directory_add_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = stats(dir.path().to_str().expect("utf-8")).expect("stats");
        assert_eq!(r.usage.len(), 2);
        let (bytes, inodes) = (&r.usage[0], &r.usage[1]);
        assert_eq!((bytes.unit.enum_value(), inodes.unit.enum_value()), (Ok(Unit::BYTES), Ok(Unit::INODES)));
        assert!(bytes.total > 0 && bytes.used <= bytes.total && bytes.available <= bytes.total, "{bytes:?}");
        assert!(inodes.used <= inodes.total, "{inodes:?}");
    }

    #[test]
    fn stats_of_a_missing_path_is_not_found() {
        let err = stats("/nonexistent/volume").expect_err("missing");
        assert_eq!(err.code(), Code::NOT_FOUND);
        assert!(err.to_string().contains("/nonexistent/volume"), "{err}");
    }

    #[test]
    fn resize_refuses_what_it_cannot_grow() {
        // /proc is never ext4.
        let err = resize("/proc", 0).expect_err("proc");
        assert_eq!(err.code(), Code::FAILED_PRECONDITION);
        assert!(err.to_string().contains("only ext4"), "{err}");
    }
}
