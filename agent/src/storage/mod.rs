//! Kata `Storage`s: the file systems a sandbox or container needs mounted in
//! the guest (the shared 9p/virtio-fs directory, hot-plugged disks, tmpfs,
//! emptyDir-like local directories, binds, overlays), and their unmount.
//!
//! [`mount`] waits for the storage's disk if it has one, creates the mount
//! point and mounts; the returned [`Mounted`] unmounts on
//! [`release`](Mounted::release). A storage mounted again at the same mount
//! point (a sandbox storage several containers share) is counted, not
//! mounted twice, and only the last release unmounts. The count lives in a
//! registry as process-wide as the mount table it mirrors.
//!
//! `drivers.rs` turns each driver into a plan of `mount(2)` calls (pure,
//! unit-tested); this file executes plans through a [`Mounter`], real or fake.
// The callers (the sandbox's and containers' storages and devices) come with

mod drivers;
pub(crate) mod options;
pub mod virtiofs;
pub mod volume;

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags};
use protocols::agent::Storage;
use protocols::ttrpc::Code;

pub use drivers::{plan, FindDisk, MountCall, Plan, Target};

use crate::device::{DeviceError, Devices};

/// How long a busy mount gets before it is detached lazily.
const BUSY_RETRY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("unknown storage driver {driver:?} for {mount_point} (expected 9p, virtio-fs, blk, mmioblk, scsi, local, ephemeral, bind or overlayfs)")]
    UnknownDriver { driver: String, mount_point: String },
    #[error("invalid storage: {0}")]
    InvalidArgument(String),
    #[error("{mount_point} is already mounted from {existing:?} (driver {driver}); cannot mount {wanted:?} there")]
    Conflict { mount_point: String, existing: String, driver: String, wanted: String },
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("bind source {source_path} is not usable")]
    Source { source_path: PathBuf, error: io::Error },
    #[error("cannot create {path}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot mount {source_path:?} ({fstype}) on {target}")]
    Mount { source_path: String, fstype: String, target: PathBuf, source: nix::Error },
    #[error("cannot unmount {target}")]
    Unmount { target: PathBuf, source: nix::Error },
    #[error("cannot remove {path}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("cannot read the statistics of volume {path}")]
    Stats { path: String, source: nix::Error },
    #[error("cannot resize volume {path}: {why}")]
    Resize { path: String, why: String, code: Code },
}

impl StorageError {
    pub fn code(&self) -> Code {
        match self {
            StorageError::UnknownDriver { .. } | StorageError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            StorageError::Conflict { .. } => Code::ALREADY_EXISTS,
            StorageError::Device(e) => e.code(),
            StorageError::Source { error, .. } if error.kind() == io::ErrorKind::NotFound => Code::NOT_FOUND,
            StorageError::Source { .. } => Code::FAILED_PRECONDITION,
            StorageError::Create { .. } | StorageError::Remove { .. } => Code::INTERNAL,
            StorageError::Mount { source, .. }
            | StorageError::Unmount { source, .. }
            | StorageError::Stats { source, .. } => crate::error::errno_code(*source),
            StorageError::Resize { code, .. } => *code,
        }
    }
}

/// The `mount(2)`/`umount2(2)` layer, so the bookkeeping is tested unprivileged.
pub trait Mounter: Send + Sync + std::fmt::Debug {
    fn mount(&self, call: &MountCall) -> nix::Result<()>;
    fn umount(&self, target: &Path, flags: MntFlags) -> nix::Result<()>;
}

/// The kernel's.
#[derive(Debug)]
pub struct SysMounter;

impl Mounter for SysMounter {
    fn mount(&self, c: &MountCall) -> nix::Result<()> {
        let source = (!c.source.is_empty()).then_some(c.source.as_str());
        let data = (!c.data.is_empty()).then_some(c.data.as_str());
        nix::mount::mount(source, &c.target, c.fstype.as_deref(), c.flags, data)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        nix::mount::umount2(target, flags)
    }
}

#[derive(Debug)]
struct Entry {
    refs: usize,
    driver: String,
    source: String,
    /// What release undoes.
    owns: Owns,
}

/// What a storage made, and so what its release takes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owns {
    /// Its mount.
    Mount,
    /// Its directory (a `local` storage that created it), with everything in it.
    Dir,
    /// Nothing: a `local` storage on a directory that was there before (`/`, `/etc`,
    /// another storage's) is not the storage's to delete.
    Nothing,
}

/// Mounted storages by mount point, with their reference counts.
#[derive(Debug)]
pub struct Registry {
    mounter: Box<dyn Mounter>,
    log: slog::Logger,
    mounts: Mutex<BTreeMap<PathBuf, Entry>>,
}

/// A storage this process mounted; [`release`](Mounted::release) undoes it.
#[derive(Debug)]
#[must_use = "a storage stays mounted until released"]
pub struct Mounted {
    registry: Arc<Registry>,
    mount_point: PathBuf,
    released: bool,
}

/// Mounts `storage` (see the module docs), waiting up to `timeout` for its disk.
pub fn mount(storage: &Storage, devices: &Devices, timeout: Duration) -> Result<Mounted, StorageError> {
    Registry::system(devices.log()).mount(storage, devices, timeout)
}

impl Registry {
    pub fn new(mounter: Box<dyn Mounter>, log: slog::Logger) -> Arc<Registry> {
        Arc::new(Registry { mounter, log, mounts: Mutex::new(BTreeMap::new()) })
    }

    /// The process's registry over the real kernel.
    pub fn system(log: &slog::Logger) -> Arc<Registry> {
        static SYSTEM: OnceLock<Arc<Registry>> = OnceLock::new();
        SYSTEM.get_or_init(|| Registry::new(Box::new(SysMounter), log.new(slog::o!("module" => "storage")))).clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, Entry>> {
        self.mounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn mount(
        self: &Arc<Self>,
        storage: &Storage,
        disks: &dyn FindDisk,
        timeout: Duration,
    ) -> Result<Mounted, StorageError> {
        let mount_point = crate::guest_path::check("mount point", Path::new(&storage.mount_point))
            .map_err(|e| {
                StorageError::InvalidArgument(format!("{e} (storage {:?}, driver {})", storage.source, storage.driver))
            })?
            .to_owned();
        let handle = || Mounted { registry: self.clone(), mount_point: mount_point.clone(), released: false };
        if self.share(storage, &mount_point)? {
            return Ok(handle());
        }
        // Waiting for a disk happens outside the lock: other storages go on.
        let plan = plan(storage, disks, timeout)?;
        let mut mounts = self.lock();
        // Someone may have mounted the same storage while this one waited.
        if let Some(entry) = mounts.get_mut(&mount_point) {
            check_same(entry, storage)?;
            entry.refs += 1;
            return Ok(handle());
        }
        let owns = match plan.local_mode {
            None => Owns::Mount,
            Some(_) if std::fs::symlink_metadata(&mount_point).is_err() => Owns::Dir,
            Some(_) => Owns::Nothing,
        };
        self.execute(&plan, &mount_point)?;
        let log = &self.log;
        slog::info!(log, "storage mounted"; "driver" => &storage.driver, "source" => &storage.source,
            "mount_point" => %mount_point.display());
        mounts.insert(
            mount_point.clone(),
            Entry { refs: 1, driver: storage.driver.clone(), source: storage.source.clone(), owns },
        );
        Ok(handle())
    }

    /// Counts one more user of an identical storage already mounted there.
    fn share(&self, storage: &Storage, mount_point: &Path) -> Result<bool, StorageError> {
        let mut mounts = self.lock();
        let Some(entry) = mounts.get_mut(mount_point) else { return Ok(false) };
        check_same(entry, storage)?;
        entry.refs += 1;
        slog::debug!(self.log, "storage shared"; "mount_point" => %mount_point.display(), "refs" => entry.refs);
        Ok(true)
    }

    fn execute(&self, plan: &Plan, mount_point: &Path) -> Result<(), StorageError> {
        for (dir, mode) in &plan.dirs {
            create_dir(dir, *mode)?;
        }
        match plan.target {
            Target::Dir => create_dir(mount_point, plan.local_mode)?,
            Target::File => create_file(mount_point)?,
        }
        if let Some(mode) = plan.local_mode {
            // The umask trimmed what mkdir set; local storages want the exact mode.
            std::fs::set_permissions(mount_point, std::fs::Permissions::from_mode(mode))
                .map_err(|source| StorageError::Create { path: mount_point.to_owned(), source })?;
        }
        for (i, call) in plan.calls.iter().enumerate() {
            if let Err(source) = self.mounter.mount(call) {
                // Undo the first call's mount so a failed storage leaves nothing behind.
                if i > 0 {
                    let _ = self.mounter.umount(mount_point, MntFlags::MNT_DETACH);
                }
                return Err(StorageError::Mount {
                    source_path: call.source.clone(),
                    fstype: call.fstype.clone().unwrap_or_else(|| describe_flags(call.flags)),
                    target: call.target.clone(),
                    source,
                });
            }
        }
        Ok(())
    }

    fn release(&self, mount_point: &Path) -> Result<(), StorageError> {
        let mut mounts = self.lock();
        let Some(entry) = mounts.get_mut(mount_point) else { return Ok(()) };
        entry.refs -= 1;
        if entry.refs > 0 {
            return Ok(());
        }
        let owns = entry.owns;
        mounts.remove(mount_point);
        drop(mounts);
        match owns {
            Owns::Mount => {}
            Owns::Nothing => return Ok(()),
            Owns::Dir => {
                return match std::fs::remove_dir_all(mount_point) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        Err(StorageError::Remove { path: mount_point.to_owned(), source: e })
                    }
                    _ => Ok(()),
                }
            }
        }
        self.unmount(mount_point)?;
        slog::info!(self.log, "storage unmounted"; "mount_point" => %mount_point.display());
        Ok(())
    }

    /// Unmounts; a mount still busy after a retry is detached lazily, and one
    /// that is gone already counts as unmounted.
    fn unmount(&self, target: &Path) -> Result<(), StorageError> {
        let mut result = self.mounter.umount(target, MntFlags::empty());
        if result == Err(nix::Error::EBUSY) {
            std::thread::sleep(BUSY_RETRY);
            result = self.mounter.umount(target, MntFlags::empty());
        }
        if result == Err(nix::Error::EBUSY) {
            slog::warn!(self.log, "mount busy; detaching it lazily"; "mount_point" => %target.display());
            result = self.mounter.umount(target, MntFlags::MNT_DETACH);
        }
        match result {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
            Err(source) => Err(StorageError::Unmount { target: target.to_owned(), source }),
        }
    }

    #[cfg(test)]
    fn refs(&self, mount_point: &str) -> usize {
        self.lock().get(Path::new(mount_point)).map_or(0, |e| e.refs)
    }
}

impl Mounted {
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// Gives up this use of the storage; the last use unmounts it. Calling it
    /// again does nothing.
    pub fn release(&mut self) -> Result<(), StorageError> {
        if std::mem::replace(&mut self.released, true) {
            return Ok(());
        }
        self.registry.release(&self.mount_point)
    }
}

fn check_same(entry: &Entry, storage: &Storage) -> Result<(), StorageError> {
    if entry.driver == storage.driver && entry.source == storage.source {
        return Ok(());
    }
    Err(StorageError::Conflict {
        mount_point: storage.mount_point.clone(),
        existing: entry.source.clone(),
        driver: entry.driver.clone(),
        wanted: storage.source.clone(),
    })
}

fn create_dir(path: &Path, mode: Option<u32>) -> Result<(), StorageError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode.unwrap_or(0o755))
        .create(path)
        .map_err(|source| StorageError::Create { path: path.to_owned(), source })
}

fn create_file(path: &Path) -> Result<(), StorageError> {
    if let Some(parent) = path.parent() {
        create_dir(parent, None)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|source| StorageError::Create { path: path.to_owned(), source })
}

fn describe_flags(flags: MsFlags) -> String {
    if flags.contains(MsFlags::MS_REMOUNT) {
        "remount".into()
    } else if flags.contains(MsFlags::MS_BIND) {
        "bind".into()
    } else {
        "propagation".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::tests::logger;

    /// Records calls; fails mounts whose source is "fail" and reports a busy
    /// target `busy` times before unmounting it.
    #[derive(Debug, Default)]
    struct FakeMounter {
        calls: Arc<Mutex<Vec<String>>>,
        busy: Mutex<u32>,
    }

    impl Mounter for FakeMounter {
        fn mount(&self, c: &MountCall) -> nix::Result<()> {
            self.calls.lock().expect("lock").push(format!("mount {} {}", c.source, c.target.display()));
            if c.source == "fail" {
                return Err(nix::Error::ENODEV);
            }
            Ok(())
        }
        fn umount(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
            self.calls.lock().expect("lock").push(format!("umount {} {:?}", target.display(), flags.bits()));
            let mut busy = self.busy.lock().expect("lock");
            if *busy > 0 && !flags.contains(MntFlags::MNT_DETACH) {
                *busy -= 1;
                return Err(nix::Error::EBUSY);
            }
            Ok(())
        }
    }

    struct NoDisks;
    impl FindDisk for NoDisks {
        fn pci(&self, p: &str, _: Duration) -> Result<PathBuf, StorageError> {
            Err(StorageError::InvalidArgument(format!("no disk {p}")))
        }
        fn mmio(&self, p: &str, t: Duration) -> Result<PathBuf, StorageError> {
            self.pci(p, t)
        }
        fn scsi(&self, p: &str, t: Duration) -> Result<PathBuf, StorageError> {
            self.pci(p, t)
        }
    }

    fn registry(busy: u32) -> (Arc<Registry>, Arc<Mutex<Vec<String>>>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let fake = FakeMounter { calls: calls.clone(), busy: Mutex::new(busy) };
        (Registry::new(Box::new(fake), logger()), calls)
    }

    fn storage(driver: &str, source: &str, mount_point: &Path) -> Storage {
        let mut s = Storage::new();
        s.driver = driver.into();
        s.source = source.into();
        s.mount_point = mount_point.to_string_lossy().into_owned();
        s
    }

    #[test]
    fn shared_storage_is_mounted_once_and_unmounted_by_the_last_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mp = dir.path().join("a/b");
        let (reg, calls) = registry(0);
        let s = storage("virtio-fs", "kataShared", &mp);
        let mut first = reg.mount(&s, &NoDisks, Duration::ZERO).expect("mount");
        let mut second = reg.mount(&s, &NoDisks, Duration::ZERO).expect("share");
        assert!(mp.is_dir(), "mount point created");
        assert_eq!(reg.refs(mp.to_str().expect("utf-8")), 2);
        first.release().expect("release");
        first.release().expect("a second release is a no-op");
        assert_eq!(calls.lock().expect("lock").len(), 1, "still mounted for the second user");
        second.release().expect("release");
        let calls = calls.lock().expect("lock").clone();
        assert_eq!(calls, vec![format!("mount kataShared {}", mp.display()), format!("umount {} 0", mp.display())]);
    }

    #[test]
    fn another_source_at_the_same_point_is_a_conflict() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (reg, _) = registry(0);
        let _kept = reg.mount(&storage("ephemeral", "tmpfs", dir.path()), &NoDisks, Duration::ZERO).expect("mount");
        let err = reg.mount(&storage("9p", "tag", dir.path()), &NoDisks, Duration::ZERO).expect_err("conflict");
        assert_eq!(err.code(), Code::ALREADY_EXISTS);
    }

    #[test]
    fn busy_mounts_are_retried_then_detached() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (reg, calls) = registry(5);
        let mut m = reg.mount(&storage("ephemeral", "", dir.path()), &NoDisks, Duration::ZERO).expect("mount");
        m.release().expect("release");
        let calls = calls.lock().expect("lock").clone();
        let detach = MntFlags::MNT_DETACH.bits();
        let d = dir.path().display();
        assert_eq!(calls[1..], [format!("umount {d} 0"), format!("umount {d} 0"), format!("umount {d} {detach}")]);
    }

    #[test]
    fn a_failed_mount_is_not_registered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (reg, _) = registry(0);
        let err = reg.mount(&storage("virtio-fs", "fail", dir.path()), &NoDisks, Duration::ZERO).expect_err("fails");
        assert!(err.to_string().contains("cannot mount \"fail\" (virtiofs)"), "{err}");
        assert_eq!(reg.refs(dir.path().to_str().expect("utf-8")), 0);
        let err = reg.mount(&storage("blk", "02/00", dir.path()), &NoDisks, Duration::ZERO).expect_err("no disk");
        assert!(err.to_string().contains("no disk 02/00"), "{err}");
        let err = reg.mount(&storage("local", "", Path::new("rel")), &NoDisks, Duration::ZERO).expect_err("relative");
        assert_eq!(err.code(), Code::INVALID_ARGUMENT);
    }

    #[test]
    fn local_storage_is_a_directory_with_its_mode_removed_on_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mp = dir.path().join("local/vol");
        let (reg, calls) = registry(0);
        let mut s = storage("local", "", &mp);
        s.options = vec!["mode=0777".into()];
        let mut m = reg.mount(&s, &NoDisks, Duration::ZERO).expect("mount");
        let mode = std::fs::metadata(&mp).expect("created").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o777);
        std::fs::write(mp.join("data"), "x").expect("write");
        m.release().expect("release");
        assert!(!mp.exists(), "removed with its contents");
        assert!(calls.lock().expect("lock").is_empty(), "nothing mounted");
    }

    #[test]
    fn a_mount_point_through_dotdot_is_refused_before_anything_is_made() {
        // `keep/nonexistent/..` is `keep` itself: made (as `nonexistent`), counted as the
        // storage's own directory, and then removed on release, with `keep` in it.
        let dir = tempfile::tempdir().expect("tempdir");
        let keep = dir.path().join("keep");
        std::fs::create_dir(&keep).expect("mkdir");
        std::fs::write(keep.join("precious"), "x").expect("write");
        let (reg, calls) = registry(0);
        let err = reg
            .mount(&storage("local", "", &keep.join("nonexistent/..")), &NoDisks, Duration::ZERO)
            .map(|mut m| m.release())
            .expect_err("refused");
        assert_eq!(err.code(), Code::INVALID_ARGUMENT);
        assert!(err.to_string().contains("must be absolute, without `..`"), "{err}");
        assert!(keep.join("precious").exists() && !keep.join("nonexistent").exists(), "nothing made or removed");
        assert!(calls.lock().expect("lock").is_empty());
    }

    #[test]
    fn a_local_storage_on_an_existing_directory_leaves_it_on_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("precious"), "x").expect("write");
        let (reg, calls) = registry(0);
        let mut m = reg.mount(&storage("local", "", dir.path()), &NoDisks, Duration::ZERO).expect("mount");
        m.release().expect("release");
        assert!(dir.path().join("precious").exists(), "what was there before stays");
        assert!(calls.lock().expect("lock").is_empty(), "nothing mounted, nothing unmounted");
    }
}
