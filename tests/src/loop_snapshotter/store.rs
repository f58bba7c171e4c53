//! The snapshots themselves: an ext4 image file per active or committed snapshot, a loop
//! device per active snapshot or view, and the metadata (in memory) that containerd's
//! snapshotter contract asks for.
//!
//! The rules are those of containerd's `snapshots.Snapshotter` and its reference storage: keys
//! and committed names share one namespace; a parent must be committed; only an active snapshot
//! commits; a snapshot with children cannot be removed. A view binds its parent's image
//! read-only instead of copying it, which is why the parent cannot go while the view exists.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use super::api::snapshots::{Info, Kind};
use super::api::types::Mount;
use super::loop_dev::{self, LoopError};

/// What went wrong, in the categories of containerd's `errdefs` (mapped onto gRPC codes).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key, name or parent does not exist.
    #[error("snapshot {0:?} does not exist")]
    NotFound(String),
    /// The key or name is taken.
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    /// The snapshot is in the wrong state for the call (not active, has children).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// An image file could not be made, copied, read or removed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A loop device could not be attached or detached.
    #[error(transparent)]
    Loop(#[from] LoopError),
}

#[derive(Debug)]
struct Snapshot {
    kind: Kind,
    /// Empty for none, as on the wire.
    parent: String,
    /// Its own image (active, committed, view without parent) or its parent's (view).
    image: PathBuf,
    owns_image: bool,
    /// Bound while active or a view.
    device: Option<PathBuf>,
    labels: HashMap<String, String>,
    created: SystemTime,
    updated: SystemTime,
}

/// All snapshots of one snapshotter, and the directory holding their images.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    image_size: u64,
    next_image: u64,
    snapshots: BTreeMap<String, Snapshot>,
}

impl Store {
    /// A store keeping its images in `dir`, new filesystems `image_size` bytes (sparse).
    pub fn new(dir: PathBuf, image_size: u64) -> Self {
        Self { dir, image_size, next_image: 0, snapshots: BTreeMap::new() }
    }

    /// A new active snapshot: a fresh filesystem, or a copy of the committed `parent`'s.
    pub fn prepare(
        &mut self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, StoreError> {
        self.check_new(key, parent)?;
        let image = self.new_image(parent)?;
        let device = loop_dev::attach(&image, false).map_err(|e| remove_after(&image, StoreError::Loop(e)))?;
        self.insert(key, Kind::Active, parent, (image, true), device, labels)
    }

    /// A read-only view of the committed `parent` (its image bound read-only), or of an empty
    /// filesystem.
    pub fn view(&mut self, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>, StoreError> {
        self.check_new(key, parent)?;
        let (image, owned) = match self.snapshots.get(parent) {
            Some(parent) => (parent.image.clone(), false),
            None => (self.new_image("")?, true),
        };
        let device = loop_dev::attach(&image, true).map_err(|e| {
            if owned {
                remove_after(&image, StoreError::Loop(e))
            } else {
                StoreError::Loop(e)
            }
        })?;
        self.insert(key, Kind::View, parent, (image, owned), device, labels)
    }

    /// What to mount for an active snapshot or view.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>, StoreError> {
        let snapshot = self.get(key)?;
        match &snapshot.device {
            Some(device) => Ok(vec![mount(device, snapshot.kind == Kind::View)]),
            None => Err(StoreError::FailedPrecondition(format!("snapshot {key:?} is committed: nothing to mount"))),
        }
    }

    /// Freezes the active snapshot `key` as the committed snapshot `name`.
    pub fn commit(&mut self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<(), StoreError> {
        if self.snapshots.contains_key(name) {
            return Err(StoreError::AlreadyExists(name.to_owned()));
        }
        let snapshot = self.get(key)?;
        if snapshot.kind != Kind::Active {
            return Err(StoreError::FailedPrecondition(format!("snapshot {key:?} is not active")));
        }
        if let Some(device) = &snapshot.device {
            loop_dev::detach(device)?;
        }
        let mut snapshot = self.snapshots.remove(key).ok_or_else(|| StoreError::NotFound(key.to_owned()))?;
        let now = SystemTime::now();
        snapshot.kind = Kind::Committed;
        snapshot.device = None;
        snapshot.labels.extend(labels);
        snapshot.created = now;
        snapshot.updated = now;
        self.snapshots.insert(name.to_owned(), snapshot);
        Ok(())
    }

    /// Unbinds and deletes a snapshot without children (a view leaves its parent's image).
    pub fn remove(&mut self, key: &str) -> Result<(), StoreError> {
        let snapshot = self.get(key)?;
        if let Some(child) = self.snapshots.iter().find(|(_, s)| s.parent == key).map(|(k, _)| k) {
            return Err(StoreError::FailedPrecondition(format!(
                "cannot remove snapshot {key:?}: {child:?} is its child"
            )));
        }
        if let Some(device) = &snapshot.device {
            loop_dev::detach(device)?;
        }
        let snapshot = self.snapshots.remove(key).ok_or_else(|| StoreError::NotFound(key.to_owned()))?;
        if snapshot.owns_image {
            fs::remove_file(&snapshot.image)
                .map_err(|source| StoreError::Io { what: format!("removing {}", snapshot.image.display()), source })?;
        }
        Ok(())
    }

    /// A snapshot's metadata.
    pub fn stat(&self, key: &str) -> Result<Info, StoreError> {
        self.get(key).map(|s| info(key, s))
    }

    /// Changes the labels of `new.name`: all of them, or those the mask names (`labels`,
    /// `labels.KEY`; an empty value deletes the key). Other fields are immutable.
    pub fn update(&mut self, new: Info, mask: &[String]) -> Result<Info, StoreError> {
        let snapshot = self.snapshots.get_mut(&new.name).ok_or_else(|| StoreError::NotFound(new.name.clone()))?;
        let mut labels = if mask.is_empty() { new.labels.clone() } else { snapshot.labels.clone() };
        for path in mask {
            if path == "labels" {
                labels.clone_from(&new.labels);
            } else if let Some(label) = path.strip_prefix("labels.") {
                match new.labels.get(label).filter(|v| !v.is_empty()) {
                    Some(value) => labels.insert(label.to_owned(), value.clone()),
                    None => labels.remove(label),
                };
            } else {
                return Err(StoreError::InvalidArgument(format!(
                    "cannot update field {path:?} of snapshot {:?}",
                    new.name
                )));
            }
        }
        snapshot.labels = labels;
        snapshot.updated = SystemTime::now();
        Ok(info(&new.name, snapshot))
    }

    /// Every snapshot (filters are left to containerd's metadata layer, which keeps its own).
    pub fn list(&self) -> Vec<Info> {
        self.snapshots.iter().map(|(key, s)| info(key, s)).collect()
    }

    /// Bytes the image takes on disk (0 for a view of a parent, which owns none) and inodes its
    /// filesystem uses, per its superblock (lazily updated while mounted).
    pub fn usage(&self, key: &str) -> Result<(i64, i64), StoreError> {
        let snapshot = self.get(key)?;
        if !snapshot.owns_image {
            return Ok((0, 0));
        }
        let io = |source| StoreError::Io { what: format!("reading {}", snapshot.image.display()), source };
        let size = fs::metadata(&snapshot.image).map_err(io)?.blocks().saturating_mul(512);
        let out = Command::new("dumpe2fs").arg("-h").arg(&snapshot.image).output().map_err(io)?;
        let inodes = used_inodes(&String::from_utf8_lossy(&out.stdout)).unwrap_or(0);
        Ok((i64::try_from(size).unwrap_or(i64::MAX), inodes))
    }

    /// The loop devices bound now, per the store's bookkeeping.
    pub fn devices(&self) -> Vec<PathBuf> {
        self.snapshots.values().filter_map(|s| s.device.clone()).collect()
    }

    /// Unbinds every device (the images go with the directory). Best effort: for `Drop`.
    pub fn detach_all(&mut self) {
        for snapshot in self.snapshots.values_mut() {
            if let Some(device) = snapshot.device.take() {
                let _ = loop_dev::detach(&device);
            }
        }
    }

    fn get(&self, key: &str) -> Result<&Snapshot, StoreError> {
        self.snapshots.get(key).ok_or_else(|| StoreError::NotFound(key.to_owned()))
    }

    fn check_new(&self, key: &str, parent: &str) -> Result<(), StoreError> {
        if key.is_empty() {
            return Err(StoreError::InvalidArgument("empty snapshot key".into()));
        }
        if self.snapshots.contains_key(key) {
            return Err(StoreError::AlreadyExists(key.to_owned()));
        }
        if parent.is_empty() {
            return Ok(());
        }
        match self.snapshots.get(parent) {
            None => Err(StoreError::NotFound(parent.to_owned())),
            Some(p) if p.kind != Kind::Committed => {
                Err(StoreError::InvalidArgument(format!("parent {parent:?} is not a committed snapshot")))
            }
            Some(_) => Ok(()),
        }
    }

    /// A new image file: a fresh filesystem, or a copy of the committed `parent`'s.
    fn new_image(&mut self, parent: &str) -> Result<PathBuf, StoreError> {
        // Keys carry containerd's namespace and slashes: the files get numbers instead.
        self.next_image += 1;
        let image = self.dir.join(format!("{}.ext4", self.next_image));
        let made = match self.snapshots.get(parent) {
            None => make_filesystem(&image, self.image_size),
            Some(parent) => sparse_copy(&parent.image, &image),
        };
        made.map(|()| image.clone()).map_err(|e| remove_after(&image, e))
    }

    /// Records a snapshot bound to `device` and returns its mounts.
    fn insert(
        &mut self,
        key: &str,
        kind: Kind,
        parent: &str,
        (image, owns_image): (PathBuf, bool),
        device: PathBuf,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, StoreError> {
        let mounts = vec![mount(&device, kind == Kind::View)];
        let now = SystemTime::now();
        let snapshot = Snapshot {
            kind,
            parent: parent.to_owned(),
            image,
            owns_image,
            device: Some(device),
            labels,
            created: now,
            updated: now,
        };
        self.snapshots.insert(key.to_owned(), snapshot);
        Ok(mounts)
    }
}

fn mount(device: &Path, read_only: bool) -> Mount {
    Mount {
        r#type: "ext4".into(),
        source: device.display().to_string(),
        target: String::new(),
        options: if read_only { vec!["ro".into()] } else { Vec::new() },
    }
}

fn info(key: &str, s: &Snapshot) -> Info {
    Info {
        name: key.to_owned(),
        parent: s.parent.clone(),
        kind: s.kind.into(),
        created_at: Some(s.created.into()),
        updated_at: Some(s.updated.into()),
        labels: s.labels.clone(),
    }
}

/// A sparse file of `size` bytes holding an empty ext4 filesystem.
fn make_filesystem(image: &Path, size: u64) -> Result<(), StoreError> {
    let io = |source| StoreError::Io { what: format!("creating {}", image.display()), source };
    fs::File::create(image).and_then(|f| f.set_len(size)).map_err(io)?;
    // Inode tables and journal initialised now (free on a file mkfs can punch), so no lazy-init
    // thread of the kernel writes them later, inside whichever guest mounts the image first.
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"]).arg(image))
}

/// Copies an image, keeping its holes (a committed layer's image is mostly holes).
fn sparse_copy(from: &Path, to: &Path) -> Result<(), StoreError> {
    run(Command::new("cp").arg("--sparse=always").arg(from).arg(to))
}

fn run(command: &mut Command) -> Result<(), StoreError> {
    let what = format!("{command:?}");
    let out = command.output().map_err(|source| StoreError::Io { what: what.clone(), source })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    Err(StoreError::Io { what, source: io::Error::other(format!("{}: {stderr}", out.status)) })
}

/// Removes a half-made image, keeping the error that stopped it.
fn remove_after(image: &Path, error: StoreError) -> StoreError {
    let _ = fs::remove_file(image);
    error
}

/// `Inode count` minus `Free inodes` from `dumpe2fs -h`.
fn used_inodes(superblock: &str) -> Option<i64> {
    let field = |name: &str| {
        superblock
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim_start().strip_prefix(':')?.trim().parse::<i64>().ok())
    };
    Some(field("Inode count")? - field("Free inodes")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_inodes_come_from_the_superblock_counts() {
        let text = "Filesystem volume name:   <none>\nInode count:              65536\nBlock count:              262144\nFree inodes:              65525\n";
        assert_eq!(used_inodes(text), Some(11));
        assert_eq!(used_inodes("Inode count: 5\n"), None);
    }
}
