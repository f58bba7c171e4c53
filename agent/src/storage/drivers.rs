//! One function per Kata storage driver, each turning a `Storage` into a
//! [`Plan`]: the directories to create and the `mount(2)` calls to make. The
//! plans are pure (apart from waiting for a disk), so every driver is tested
//! without root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::MsFlags;
use protocols::agent::Storage;

use super::options::MountOptions;
use super::StorageError;
use crate::device::Devices;

/// Kata's default 9p message size (`msize_9p` in its configuration).
pub const DEFAULT_9P_MSIZE: &str = "8192";
/// Mode of a `local` directory when the options give none: Kata's.
const DEFAULT_LOCAL_MODE: u32 = 0o777;

/// One `mount(2)` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountCall {
    pub source: String,
    pub target: PathBuf,
    pub fstype: Option<String>,
    pub flags: MsFlags,
    pub data: String,
}

/// What the mount point is: a bind of a file needs a file to mount on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Dir,
    File,
}

/// What mounting one storage takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub target: Target,
    /// Directories to create first (overlay's upper and work dirs), with modes.
    pub dirs: Vec<(PathBuf, Option<u32>)>,
    pub calls: Vec<MountCall>,
    /// `local` storage: the mount point is a directory, nothing is mounted, and
    /// release removes it.
    pub local_mode: Option<u32>,
}

/// Where block drivers find their disk; a trait so plans are tested without one.
pub trait FindDisk {
    fn pci(&self, pci_path: &str, timeout: Duration) -> Result<PathBuf, StorageError>;
    fn mmio(&self, vm_path: &str, timeout: Duration) -> Result<PathBuf, StorageError>;
    fn scsi(&self, addr: &str, timeout: Duration) -> Result<PathBuf, StorageError>;
}

impl FindDisk for Devices {
    fn pci(&self, pci_path: &str, timeout: Duration) -> Result<PathBuf, StorageError> {
        Ok(self.wait_pci(pci_path, timeout)?)
    }
    fn mmio(&self, vm_path: &str, timeout: Duration) -> Result<PathBuf, StorageError> {
        Ok(self.wait_mmio(vm_path, timeout)?)
    }
    fn scsi(&self, addr: &str, timeout: Duration) -> Result<PathBuf, StorageError> {
        Ok(self.wait_scsi(addr, timeout)?)
    }
}

/// The plan for `storage`, waiting up to `timeout` for its disk if it has one.
pub fn plan(storage: &Storage, disks: &dyn FindDisk, timeout: Duration) -> Result<Plan, StorageError> {
    let target = PathBuf::from(&storage.mount_point);
    let mut opts = MountOptions::parse(&storage.options);
    let fstype = (!storage.fstype.is_empty()).then(|| storage.fstype.clone());
    let one = |source: String, fstype: Option<String>, opts: &MountOptions| {
        let mut calls =
            vec![MountCall { source, target: target.clone(), fstype, flags: opts.flags, data: opts.data() }];
        push_propagation(&mut calls, &target, opts);
        Plan { target: Target::Dir, dirs: Vec::new(), calls, local_mode: None }
    };
    let block = |disk: PathBuf, opts: &MountOptions| -> Result<Plan, StorageError> {
        let fstype = fstype.clone().ok_or_else(|| invalid(storage, "a block storage needs an fstype"))?;
        Ok(one(disk.to_string_lossy().into_owned(), Some(fstype), opts))
    };
    match storage.driver.as_str() {
        "9p" => {
            opts.set_default("trans", "virtio");
            opts.set_default("version", "9p2000.L");
            opts.set_default("msize", DEFAULT_9P_MSIZE);
            Ok(one(need_source(storage)?.to_owned(), Some("9p".into()), &opts))
        }
        "virtio-fs" => Ok(one(need_source(storage)?.to_owned(), Some("virtiofs".into()), &opts)),
        "blk" => {
            let source = need_source(storage)?;
            // Old runtimes send the guest node itself rather than a PCI path.
            let disk = if source.starts_with("/dev/") { PathBuf::from(source) } else { disks.pci(source, timeout)? };
            block(disk, &opts)
        }
        "mmioblk" => block(disks.mmio(need_source(storage)?, timeout)?, &opts),
        "scsi" => block(disks.scsi(need_source(storage)?, timeout)?, &opts),
        "ephemeral" => {
            let source = if storage.source.is_empty() { "tmpfs" } else { storage.source.as_str() };
            Ok(one(source.to_owned(), Some("tmpfs".into()), &opts))
        }
        "local" => {
            let mode = match opts.take("mode") {
                Some(m) => u32::from_str_radix(&m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| invalid(storage, &format!("mode={m} is not an octal file mode")))?,
                None => DEFAULT_LOCAL_MODE,
            };
            Ok(Plan { target: Target::Dir, dirs: Vec::new(), calls: Vec::new(), local_mode: Some(mode) })
        }
        "bind" => bind_plan(storage, &target, opts),
        "overlayfs" | "overlay" => {
            if opts.get("lowerdir").is_none() {
                return Err(invalid(storage, "overlayfs needs a lowerdir option"));
            }
            let dirs =
                ["upperdir", "workdir"].iter().filter_map(|k| opts.get(k)).map(|d| (PathBuf::from(d), None)).collect();
            let source = if storage.source.is_empty() { "overlay" } else { storage.source.as_str() };
            let mut plan = one(source.to_owned(), Some("overlay".into()), &opts);
            plan.dirs = dirs;
            Ok(plan)
        }
        other => {
            Err(StorageError::UnknownDriver { driver: other.to_owned(), mount_point: storage.mount_point.clone() })
        }
    }
}

/// A bind mount ignores every flag but `MS_REC` on its first call: read-only
/// and the like need a remount.
fn bind_plan(storage: &Storage, target: &Path, opts: MountOptions) -> Result<Plan, StorageError> {
    let source = need_source(storage)?;
    let meta = std::fs::metadata(source).map_err(|e| StorageError::Source { source_path: source.into(), error: e })?;
    let rec = opts.flags & MsFlags::MS_REC;
    let mut calls = vec![MountCall {
        source: source.to_owned(),
        target: target.to_owned(),
        fstype: None,
        flags: MsFlags::MS_BIND | rec,
        data: String::new(),
    }];
    let extra = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
    if !extra.is_empty() {
        calls.push(MountCall {
            source: String::new(),
            target: target.to_owned(),
            fstype: None,
            flags: MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
            data: String::new(),
        });
    }
    push_propagation(&mut calls, target, &opts);
    let target = if meta.is_dir() { Target::Dir } else { Target::File };
    Ok(Plan { target, dirs: Vec::new(), calls, local_mode: None })
}

fn push_propagation(calls: &mut Vec<MountCall>, target: &Path, opts: &MountOptions) {
    if !opts.propagation.is_empty() {
        calls.push(MountCall {
            source: String::new(),
            target: target.to_owned(),
            fstype: None,
            flags: opts.propagation,
            data: String::new(),
        });
    }
}

fn need_source(storage: &Storage) -> Result<&str, StorageError> {
    if storage.source.is_empty() {
        return Err(invalid(storage, "no source"));
    }
    Ok(&storage.source)
}

fn invalid(storage: &Storage, why: &str) -> StorageError {
    StorageError::InvalidArgument(format!(
        "storage {:?} (driver {}) at {}: {why}",
        storage.source, storage.driver, storage.mount_point
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Disks as a fake device table would find them.
    struct FakeDisks;

    impl FindDisk for FakeDisks {
        fn pci(&self, pci_path: &str, _: Duration) -> Result<PathBuf, StorageError> {
            assert_eq!(pci_path, "02/00");
            Ok("/dev/vdb".into())
        }
        fn mmio(&self, vm_path: &str, _: Duration) -> Result<PathBuf, StorageError> {
            Ok(vm_path.into())
        }
        fn scsi(&self, addr: &str, _: Duration) -> Result<PathBuf, StorageError> {
            assert_eq!(addr, "0:1");
            Ok("/dev/sdb".into())
        }
    }

    fn storage(driver: &str, source: &str, fstype: &str, options: &[&str]) -> Storage {
        let mut s = Storage::new();
        s.driver = driver.into();
        s.source = source.into();
        s.fstype = fstype.into();
        s.options = options.iter().map(|o| o.to_string()).collect();
        s.mount_point = "/run/m".into();
        s
    }

    fn only_call(s: &Storage) -> MountCall {
        let plan = plan(s, &FakeDisks, Duration::ZERO).expect("plan");
        assert_eq!(plan.calls.len(), 1, "{plan:?}");
        plan.calls[0].clone()
    }

    #[test]
    fn ninep_gets_kata_defaults_unless_given() {
        let c = only_call(&storage("9p", "kataShared", "", &["nodev", "cache=mmap"]));
        assert_eq!((c.source.as_str(), c.fstype.as_deref()), ("kataShared", Some("9p")));
        assert_eq!(c.flags, MsFlags::MS_NODEV);
        assert_eq!(c.data, "cache=mmap,trans=virtio,version=9p2000.L,msize=8192");
        let c = only_call(&storage("9p", "t", "", &["msize=512000"]));
        assert_eq!(c.data, "msize=512000,trans=virtio,version=9p2000.L");
    }

    #[test]
    fn virtio_fs_ephemeral_and_overlay() {
        let c = only_call(&storage("virtio-fs", "kataShared", "", &["dax"]));
        assert_eq!((c.source.as_str(), c.fstype.as_deref(), c.data.as_str()), ("kataShared", Some("virtiofs"), "dax"));
        let c = only_call(&storage("ephemeral", "", "", &["size=1m", "nosuid"]));
        assert_eq!((c.source.as_str(), c.fstype.as_deref(), c.flags), ("tmpfs", Some("tmpfs"), MsFlags::MS_NOSUID));
        let p = plan(
            &storage("overlayfs", "", "", &["lowerdir=/a:/b", "upperdir=/u", "workdir=/w"]),
            &FakeDisks,
            Duration::ZERO,
        )
        .expect("plan");
        assert_eq!(p.dirs, vec![(PathBuf::from("/u"), None), (PathBuf::from("/w"), None)]);
        assert_eq!(p.calls[0].fstype.as_deref(), Some("overlay"));
        assert_eq!(p.calls[0].data, "lowerdir=/a:/b,upperdir=/u,workdir=/w");
        assert!(plan(&storage("overlayfs", "", "", &["upperdir=/u"]), &FakeDisks, Duration::ZERO).is_err());
    }

    #[test]
    fn block_drivers_find_their_disk_and_need_an_fstype() {
        assert_eq!(only_call(&storage("blk", "02/00", "ext4", &["ro"])).source, "/dev/vdb");
        assert_eq!(only_call(&storage("blk", "/dev/vdz", "ext4", &[])).source, "/dev/vdz");
        assert_eq!(only_call(&storage("mmioblk", "/dev/vdc", "xfs", &[])).source, "/dev/vdc");
        let c = only_call(&storage("scsi", "0:1", "ext4", &["ro", "noatime"]));
        assert_eq!((c.source.as_str(), c.flags), ("/dev/sdb", MsFlags::MS_RDONLY | MsFlags::MS_NOATIME));
        let err = plan(&storage("blk", "02/00", "", &[]), &FakeDisks, Duration::ZERO).expect_err("no fstype");
        assert!(err.to_string().contains("needs an fstype"), "{err}");
    }

    #[test]
    fn local_takes_its_mode_from_options() {
        let p = plan(&storage("local", "", "", &["mode=0750"]), &FakeDisks, Duration::ZERO).expect("plan");
        assert_eq!((p.local_mode, p.calls.len()), (Some(0o750), 0));
        let p = plan(&storage("local", "", "", &[]), &FakeDisks, Duration::ZERO).expect("plan");
        assert_eq!(p.local_mode, Some(0o777));
        assert!(plan(&storage("local", "", "", &["mode=rwx"]), &FakeDisks, Duration::ZERO).is_err());
    }

    #[test]
    fn bind_remounts_for_flags_and_mounts_files_on_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().to_str().expect("utf-8");
        let p =
            plan(&storage("bind", src, "", &["rbind", "ro", "rprivate"]), &FakeDisks, Duration::ZERO).expect("plan");
        assert_eq!(p.target, Target::Dir);
        let flags: Vec<_> = p.calls.iter().map(|c| c.flags).collect();
        assert_eq!(
            flags,
            vec![
                MsFlags::MS_BIND | MsFlags::MS_REC,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                MsFlags::MS_PRIVATE | MsFlags::MS_REC
            ]
        );
        let file = dir.path().join("f");
        std::fs::write(&file, "x").expect("write");
        let p =
            plan(&storage("bind", file.to_str().expect("utf-8"), "", &[]), &FakeDisks, Duration::ZERO).expect("plan");
        assert_eq!((p.target, p.calls.len()), (Target::File, 1));
        let err = plan(&storage("bind", "/nonexistent/x", "", &[]), &FakeDisks, Duration::ZERO).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/x"), "{err}");
    }

    #[test]
    fn unknown_driver_is_named() {
        let err = plan(&storage("nvdimm", "x", "", &[]), &FakeDisks, Duration::ZERO).expect_err("unknown");
        assert_eq!(err.code(), protocols::ttrpc::Code::INVALID_ARGUMENT);
        assert!(err.to_string().contains("\"nvdimm\""), "{err}");
        assert!(plan(&storage("9p", "", "", &[]), &FakeDisks, Duration::ZERO).is_err(), "9p needs a tag");
    }
}
