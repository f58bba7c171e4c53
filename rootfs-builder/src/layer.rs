//! Applying image layers (tar streams) to a root directory, as containerd's applier does,
//! without ever writing outside that directory.
//!
//! # Security decisions
//!
//! A layer comes from whoever built the image, so every entry is treated as hostile:
//!
//! - **Entry names** are cleaned as containerd does (Go's `filepath.Clean`, relative to the
//!   root): `/etc/passwd` and `../../etc/passwd` both write `ROOT/etc/passwd`, since containerd
//!   runs such images and writes them there. A `..` is lexical (`link/../f` is `f` beside
//!   `link`) and stops at the root; a note counts the names that climbed above it. A name with
//!   a NUL byte is refused ([`LayerError::BadEntry`]); one that cleans to the root is skipped.
//! - **Symlinks** are created as symlinks with their target verbatim (absolute targets are
//!   normal in images: `/bin/sh -> /bin/busybox`) but are never followed while writing: every
//!   directory on the way to an entry is resolved *inside the root*, as `openat2`'s
//!   `RESOLVE_IN_ROOT` does — an absolute target restarts at the root, `..` stops at the root. So
//!   `link -> /tmp/x` followed by `link/file` writes `ROOT/tmp/x/file`, never `/tmp/x/file`. The
//!   last component of a path is never followed: it is replaced (files are created with
//!   `O_CREAT|O_EXCL`, which refuses an existing symlink).
//! - **Hard links** must point at an existing non-directory inside the root; their target is
//!   taken relative to the root (`/etc/passwd` or `../../etc/passwd` is `ROOT/etc/passwd`) and
//!   resolved the same way, as containerd's `hardlinkRootPath` does; anything else is refused.
//! - **FIFOs** are created (`mkfifo`) with their mode and owner, as containerd does.
//! - **Device nodes** are skipped with a note, where containerd (as root) would `mknod` them: the
//!   bundle's rootfs is a directory on the host, where a node from an untrusted image (say
//!   `8:0` mode 0666) would hand any host user who reaches it the host's disk, and a container
//!   runtime populates `/dev` itself.
//! - **Owners** are applied (`lchown`) only when running as root; otherwise files belong to the
//!   caller and a note says so once.
//!
//! Extended attributes (file capabilities, SELinux labels) are applied as root, as containerd
//! does (see [`crate::xattrs`]); otherwise a note counts the entries that had some. Timestamps
//! are not applied: the bundle is for running, not for re-exporting.
//! A hard link takes no owner or mode of its own: it shares the inode its target's entry set
//! up (a chown through it would clear the target's set-id bits).
//!
//! The resolution is done in code with `lstat`/`readlink`, not with file descriptors: the root
//! is a directory this process created empty, and no other process writes into it during the
//! build, so there is no concurrent writer to race with.
//!
//! # Whiteouts
//!
//! `DIR/.wh.NAME` deletes `DIR/NAME` from the lower layers; `DIR/.wh..wh..opq` empties `DIR` of
//! what lower layers put there, down the whole tree (entries of the same layer, and the
//! directories above them, stay, whatever their order in the tar). As in containerd, a
//! whiteout's directory exists afterwards even if no layer had it.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::xattrs;

/// The whiteout prefix of the OCI image spec.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The opaque-directory marker of the OCI image spec.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// How many symlinks one path may cross (Linux's `MAXSYMLINKS`).
const MAX_SYMLINKS: u32 = 40;

/// Errors while applying a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer {layer}: entry {entry:?} {reason}; refusing the image")]
    BadEntry { layer: String, entry: String, reason: &'static str },
    #[error("layer {layer}: hard link {entry:?} points at {target:?}, which {reason}")]
    BadHardLink { layer: String, entry: String, target: String, reason: &'static str },
    #[error("layer {layer}: {entry:?} crosses more than {MAX_SYMLINKS} symlinks")]
    SymlinkLoop { layer: String, entry: String },
    #[error("layer {layer}: the parent of {entry:?} is not a directory")]
    NotADirectory { layer: String, entry: String },
    #[error("layer {layer} is not a valid tar stream")]
    Tar {
        layer: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read layer {layer} to its end")]
    Read {
        layer: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: cannot write {}", path.display())]
    Write {
        layer: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What applying layers did, besides the files.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// Entries written (files, directories, links).
    pub entries: u64,
    /// Paths deleted by whiteouts.
    pub whiteouts: u64,
    /// Things the user should know (skipped device nodes, owners not applied).
    pub notes: Vec<String>,
}

/// Applies layers, in order, to one root directory.
#[derive(Debug)]
pub struct Applier {
    root: PathBuf,
    chown: bool,
    report: ApplyReport,
    skipped_devices: u64,
    skipped_xattrs: u64,
    climbed_names: u64,
}

/// A layer entry's name, split into components and cleaned the way containerd's applier does
/// (Go's `filepath.Clean`, then taken relative to the root): `.` and empty components go, a
/// `..` drops the component before it, lexically, and a `..` at the root stays at the root, so
/// `/etc/x` and `../etc/x` both name `ROOT/etc/x`. The second value says whether a `..`
/// climbed above the root. Symlinks among the remaining components are resolved later, inside
/// the root.
fn entry_components(layer: &str, raw: &[u8]) -> Result<(Vec<OsString>, bool), LayerError> {
    if raw.contains(&0) {
        return Err(LayerError::BadEntry {
            layer: layer.to_owned(),
            entry: String::from_utf8_lossy(raw).into_owned(),
            reason: "contains a NUL byte",
        });
    }
    let mut parts = Vec::new();
    let mut climbed = false;
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => climbed |= parts.pop().is_none(),
            p => parts.push(OsStr::from_bytes(p).to_owned()),
        }
    }
    Ok((parts, climbed))
}

/// Whether this process may chown (effective uid 0), judged by the owner of `/proc/self`.
pub fn running_as_root() -> bool {
    fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

impl Applier {
    /// An applier writing into `root`, which must exist. Owners are applied when `chown`.
    pub fn new(root: &Path, chown: bool) -> Self {
        Self {
            root: root.to_owned(),
            chown,
            report: ApplyReport::default(),
            skipped_devices: 0,
            skipped_xattrs: 0,
            climbed_names: 0,
        }
    }

    /// The report so far, with the pending notes.
    pub fn finish(mut self) -> ApplyReport {
        if self.skipped_devices > 0 {
            self.report.notes.push(format!(
                "note: skipped {} device node(s) from the layers; the container runtime creates /dev",
                self.skipped_devices
            ));
        }
        if self.climbed_names > 0 {
            self.report.notes.push(format!(
                "note: the names of {} layer entry(ies) climbed above the root with '..'; they were written \
                 inside it, as containerd does",
                self.climbed_names
            ));
        }
        if self.skipped_xattrs > 0 {
            self.report.notes.push(format!(
                "note: the extended attributes (file capabilities, SELinux labels) of {} entry(ies) were not applied \
                 (not running as root, or not supported here)",
                self.skipped_xattrs
            ));
        }
        if !self.chown && self.report.entries > 0 {
            self.report
                .notes
                .push("note: not running as root, so files belong to the caller, not the owners in the layers".into());
        }
        self.report
    }

    /// Resolves `parts` inside the root (see the module docs) and returns the host path of the
    /// directory they name; missing directories are created (0755) when `create`, otherwise
    /// `Ok(None)` says the directory does not exist. As in containerd's `RootPath`, a missing
    /// component is taken as it is and a later `..` can cancel it, so `missing/../etc` is `etc`;
    /// only what is missing from the final path is created.
    fn resolve_dir(
        &self,
        layer: &str,
        entry: &str,
        parts: &[OsString],
        create: bool,
    ) -> Result<Option<PathBuf>, LayerError> {
        let not_a_dir = || LayerError::NotADirectory { layer: layer.to_owned(), entry: entry.to_owned() };
        let mut queue: VecDeque<OsString> = parts.iter().cloned().collect();
        let mut resolved: Vec<OsString> = Vec::new();
        // Where the components that do not exist start in `resolved`.
        let mut missing_from: Option<usize> = None;
        // Whether the last component resolved is not a directory: only a `..` may follow it.
        let mut after_file = false;
        let mut hops = 0;
        while let Some(part) = queue.pop_front() {
            match part.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    resolved.pop();
                    after_file = false;
                    missing_from = missing_from.filter(|m| *m < resolved.len());
                    continue;
                }
                _ => {}
            }
            if missing_from.is_some() {
                resolved.push(part);
                continue;
            }
            if after_file {
                return Err(not_a_dir());
            }
            let mut candidate = self.root.clone();
            candidate.extend(&resolved);
            candidate.push(&part);
            match fs::symlink_metadata(&candidate) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINKS {
                        return Err(LayerError::SymlinkLoop { layer: layer.to_owned(), entry: entry.to_owned() });
                    }
                    let target = fs::read_link(&candidate).map_err(|source| LayerError::Write {
                        layer: layer.to_owned(),
                        path: candidate.clone(),
                        source,
                    })?;
                    if target.is_absolute() {
                        resolved.clear();
                    }
                    for (i, c) in target.components().filter(|c| !matches!(c, Component::RootDir)).enumerate() {
                        queue.insert(i, c.as_os_str().to_owned());
                    }
                }
                // A non-directory is fine if a `..` follows; otherwise the next lookup or the
                // final check refuses it.
                Ok(meta) => {
                    after_file = !meta.is_dir();
                    resolved.push(part);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    missing_from = Some(resolved.len());
                    resolved.push(part);
                }
                Err(source) => return Err(LayerError::Write { layer: layer.to_owned(), path: candidate, source }),
            }
        }
        let existing = missing_from.unwrap_or(resolved.len());
        let mut dir = self.root.clone();
        dir.extend(&resolved[..existing]);
        if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return Err(not_a_dir());
        }
        for part in &resolved[existing..] {
            if !create {
                return Ok(None);
            }
            dir.push(part);
            fs::create_dir(&dir).map_err(|source| LayerError::Write {
                layer: layer.to_owned(),
                path: dir.clone(),
                source,
            })?;
        }
        Ok(Some(dir))
    }

    /// Applies one layer, an uncompressed tar stream named `layer` in messages.
    pub fn apply<R: Read>(&mut self, layer: &str, stream: R) -> Result<(), LayerError> {
        let tar_err = |source| LayerError::Tar { layer: layer.to_owned(), source };
        let write_err = |path: &Path| {
            let (layer, path) = (layer.to_owned(), path.to_owned());
            move |source| LayerError::Write { layer, path, source }
        };
        let mut archive = tar::Archive::new(stream);
        // Paths this layer wrote: whiteouts and opaque markers only hide lower layers.
        let mut written: HashSet<PathBuf> = HashSet::new();
        // Directory modes are set after the layer, so a read-only directory does not stop
        // its own children from being written.
        let mut dir_modes: BTreeMap<PathBuf, u32> = BTreeMap::new();
        for entry in archive.entries().map_err(tar_err)? {
            let mut entry = entry.map_err(tar_err)?;
            let raw = entry.path_bytes().into_owned();
            let name = String::from_utf8_lossy(&raw).into_owned();
            let (mut parts, climbed) = entry_components(layer, &raw)?;
            self.climbed_names += u64::from(climbed);
            let Some(last) = parts.pop() else { continue }; // the root itself
            let last_bytes = last.as_bytes();
            // Every entry's parent directories exist afterwards, a whiteout's too: containerd
            // creates them before it looks at the name (the directory is in the layer's upper
            // dir as far as overlay is concerned), so this layer counts them as written.
            let Some(parent) = self.resolve_dir(layer, &name, &parts, true)? else { continue };
            if last_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                mark_written(&mut written, &self.root, parent.clone());
            }

            if last_bytes == OPAQUE_MARKER.as_bytes() {
                self.report.whiteouts += hide_lower(&parent, &written).map_err(|(path, source)| LayerError::Write {
                    layer: layer.to_owned(),
                    path,
                    source,
                })?;
                continue;
            }
            if let Some(hidden) = last_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
                if hidden.is_empty() || hidden == b"." || hidden == b".." {
                    return Err(LayerError::BadEntry {
                        layer: layer.to_owned(),
                        entry: name,
                        reason: "is a bad whiteout",
                    });
                }
                let target = parent.join(OsStr::from_bytes(hidden));
                if !written.contains(&target) && fs::symlink_metadata(&target).is_ok() {
                    remove(&target).map_err(write_err(&target))?;
                    self.report.whiteouts += 1;
                }
                continue;
            }

            let path = parent.join(&last);
            let attrs = xattrs::of_entry(&mut entry);
            let header = entry.header();
            let kind = header.entry_type();
            // An unreadable owner field (some writers leave it blank) means root, as in GNU tar.
            let (uid, gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
            if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
                self.skipped_devices += 1;
                continue;
            }
            let is_fifo = kind == tar::EntryType::Fifo;
            // What takes a mode of its own (chmodded after the chown, which clears set-id bits).
            let is_file = is_fifo
                || matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse);
            if !(is_file || kind.is_dir() || kind.is_symlink() || kind.is_hard_link()) {
                // pax/GNU metadata entries are consumed by the tar reader; anything else is
                // not a file system object.
                continue;
            }
            // Links have no mode of their own, and some writers leave the field blank for them.
            let mode = if is_file || kind.is_dir() { header.mode().map_err(tar_err)? & 0o7777 } else { 0 };
            let existing = fs::symlink_metadata(&path).ok();
            let keep_dir = kind.is_dir() && existing.as_ref().is_some_and(|m| m.is_dir());
            if existing.is_some() && !keep_dir {
                remove(&path).map_err(write_err(&path))?;
                // A directory this layer made and now replaced gets no mode at the end: the
                // path may be a symlink by then, and chmod follows symlinks out of the root.
                forget_subtree(&mut dir_modes, &path);
            }
            match kind {
                tar::EntryType::Directory => {
                    if !keep_dir {
                        fs::create_dir(&path).map_err(write_err(&path))?;
                    }
                    dir_modes.insert(path.clone(), mode);
                }
                tar::EntryType::Symlink => {
                    let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                    if target.is_empty() {
                        return Err(LayerError::BadEntry {
                            layer: layer.to_owned(),
                            entry: name,
                            reason: "is a symlink without target",
                        });
                    }
                    std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path).map_err(write_err(&path))?;
                }
                tar::EntryType::Link => {
                    let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                    let source = self.hard_link_source(layer, &name, &target)?;
                    fs::hard_link(&source, &path).map_err(write_err(&path))?;
                }
                tar::EntryType::Fifo => {
                    // The mode is set below, past the umask, as for a regular file.
                    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                        .map_err(io::Error::from)
                        .map_err(write_err(&path))?;
                }
                _ => {
                    let mut file =
                        OpenOptions::new().write(true).create_new(true).open(&path).map_err(write_err(&path))?;
                    io::copy(&mut entry, &mut file).map_err(write_err(&path))?;
                }
            }
            // A hard link shares its target's inode, whose owner and mode came with the
            // target's own entry; chown here would also clear the target's set-id bits.
            if self.chown && !kind.is_hard_link() {
                std::os::unix::fs::lchown(&path, u32::try_from(uid).ok(), u32::try_from(gid).ok())
                    .map_err(write_err(&path))?;
            }
            // After the chown, which clears security.capability, and before the chmod, as in
            // containerd. Setting them takes root (security.*, trusted.*), as chown does.
            if !attrs.is_empty() {
                let skipped = if self.chown { xattrs::apply(&path, &attrs).map_err(write_err(&path))? } else { true };
                self.skipped_xattrs += u64::from(skipped);
            }
            // chown clears set-id bits, so the mode comes after it; symlinks have no mode.
            if is_file {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(write_err(&path))?;
            }
            mark_written(&mut written, &self.root, path);
            self.report.entries += 1;
        }
        // Read to the very end: the tar reader stops at the end-of-archive blocks, and a
        // digest-checking reader underneath only judges the blob once it has seen all of it.
        io::copy(&mut archive.into_inner(), &mut io::sink())
            .map_err(|source| LayerError::Read { layer: layer.to_owned(), source })?;
        // Deepest first, so making a parent read-only cannot block a child's chmod.
        for (dir, mode) in dir_modes.into_iter().rev() {
            // Never through a symlink: set_permissions follows one, wherever it points.
            if fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).map_err(write_err(&dir))?;
            }
        }
        Ok(())
    }

    /// The host path a hard link entry may link to: an existing non-directory in the root. The
    /// target is resolved like containerd's `hardlinkRootPath`: relative to the root whether or
    /// not it starts with `/`, its directories resolved inside the root (`..` stops there), its
    /// last component not followed (a link to a symlink links the symlink).
    fn hard_link_source(&self, layer: &str, entry: &str, target: &[u8]) -> Result<PathBuf, LayerError> {
        let bad = |reason| LayerError::BadHardLink {
            layer: layer.to_owned(),
            entry: entry.to_owned(),
            target: String::from_utf8_lossy(target).into_owned(),
            reason,
        };
        if target.contains(&0) {
            return Err(bad("contains a NUL byte"));
        }
        let mut parts: Vec<OsString> = target
            .split(|b| *b == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
            .map(|p| OsStr::from_bytes(p).to_owned())
            .collect();
        let last = parts.pop().ok_or_else(|| bad("is the root directory"))?;
        if last.as_bytes() == b".." {
            return Err(bad("is a directory"));
        }
        let parent = match self.resolve_dir(layer, entry, &parts, false) {
            Ok(Some(parent)) => parent,
            Ok(None) | Err(LayerError::NotADirectory { .. }) => return Err(bad("does not exist")),
            Err(e) => return Err(e),
        };
        let source = parent.join(last);
        match fs::symlink_metadata(&source) {
            Ok(m) if m.is_dir() => Err(bad("is a directory")),
            Ok(_) => Ok(source),
            Err(_) => Err(bad("does not exist")),
        }
    }
}

/// Records `path` as written by this layer, with the directories above it up to the root: an
/// opaque marker later in the layer keeps them (they may have been created implicitly, for an
/// entry whose parents the tar does not list).
fn mark_written(written: &mut HashSet<PathBuf>, root: &Path, path: PathBuf) {
    let mut next = Some(path);
    while let Some(p) = next.take() {
        if p == root || !p.starts_with(root) {
            break;
        }
        let parent = p.parent().map(Path::to_owned);
        if written.insert(p) {
            next = parent;
        }
    }
}

/// Drops `path` and everything below it from `modes` (a subtree is contiguous in path order).
fn forget_subtree(modes: &mut BTreeMap<PathBuf, u32>, path: &Path) {
    let doomed: Vec<PathBuf> =
        modes.range(path.to_owned()..).take_while(|(p, _)| p.starts_with(path)).map(|(p, _)| p.clone()).collect();
    for p in doomed {
        modes.remove(&p);
    }
}

/// Empties `dir` of what lower layers put there, as an opaque marker says: what this layer
/// wrote stays, and a directory holding something this layer wrote is emptied the same way,
/// so lower content below it is hidden too (containerd walks the tree alike). Returns how many
/// paths were removed.
fn hide_lower(dir: &Path, written: &HashSet<PathBuf>) -> Result<u64, (PathBuf, io::Error)> {
    let mut removed = 0;
    for child in fs::read_dir(dir).map_err(|e| (dir.to_owned(), e))? {
        let child = child.map_err(|e| (dir.to_owned(), e))?.path();
        if !written.contains(&child) {
            remove(&child).map_err(|e| (child.clone(), e))?;
            removed += 1;
        } else if fs::symlink_metadata(&child).is_ok_and(|m| m.is_dir()) {
            removed += hide_lower(&child, written)?;
        }
    }
    Ok(removed)
}

/// Removes `path` without following it: a directory with its content, anything else unlinked.
fn remove(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            // A read-only directory (set by a lower layer) cannot be emptied by a non-root
            // caller; make the tree writable first.
            make_writable(path);
            fs::remove_dir_all(path)
        }
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn make_writable(dir: &Path) {
    if let Ok(m) = fs::symlink_metadata(dir) {
        if m.is_dir() {
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(m.mode() & 0o7777 | 0o700));
            for child in fs::read_dir(dir).into_iter().flatten().flatten() {
                make_writable(&child.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar stream from (name, kind, data-or-link-target) triples.
    pub(crate) fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
            h.set_uid(0);
            h.set_gid(0);
            // Write the raw name: set_path would refuse '..' and absolute names, which is
            // exactly what these tests need to produce.
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    h.set_link_name(data).unwrap();
                    h.set_size(0);
                    h.set_cksum();
                    b.append(&h, io::empty()).unwrap();
                }
                _ => {
                    h.set_size(data.len() as u64);
                    h.set_cksum();
                    b.append(&h, data.as_bytes()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    use tar::EntryType as T;

    fn apply(root: &Path, layers: &[Vec<u8>]) -> Result<ApplyReport, LayerError> {
        let mut a = Applier::new(root, false);
        for (i, l) in layers.iter().enumerate() {
            a.apply(&format!("#{i}"), l.as_slice())?;
        }
        Ok(a.finish())
    }

    #[test]
    fn names_are_cleaned_relative_to_the_root() {
        let parts = |raw: &[u8]| {
            let (p, climbed) = entry_components("l", raw).unwrap();
            (p.iter().map(|c| c.to_str().unwrap().to_owned()).collect::<Vec<_>>().join("/"), climbed)
        };
        assert_eq!(parts(b"/etc/passwd"), ("etc/passwd".into(), false));
        assert_eq!(parts(b"a/../../b"), ("b".into(), true));
        assert_eq!(parts(b"../../../x/y"), ("x/y".into(), true));
        assert_eq!(parts(b"a/b/../c/./"), ("a/c".into(), false));
        assert_eq!(parts(b"./a//b/"), ("a/b".into(), false));
        assert_eq!(parts(b"/"), (String::new(), false));
        assert_eq!(parts(b".."), (String::new(), true));
        assert!(entry_components("l", b"a\0b").is_err());
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let lower = tar_of(&[
            ("etc/", T::Directory, ""),
            ("etc/gone", T::Regular, "x"),
            ("etc/kept", T::Regular, "k"),
            ("opq/", T::Directory, ""),
            ("opq/old", T::Regular, "o"),
            ("opq/sub/", T::Directory, ""),
        ]);
        let upper = tar_of(&[
            ("etc/.wh.gone", T::Regular, ""),
            ("opq/new", T::Regular, "n"),
            ("opq/.wh..wh..opq", T::Regular, ""),
        ]);
        let report = apply(dir.path(), &[lower, upper]).unwrap();
        let root = dir.path();
        assert!(!root.join("etc/gone").exists());
        assert_eq!(fs::read_to_string(root.join("etc/kept")).unwrap(), "k");
        let mut names: Vec<_> = fs::read_dir(root.join("opq")).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, [OsString::from("new")], "opaque dir keeps only this layer's entries");
        assert_eq!(report.whiteouts, 3);
        apply(root, &[tar_of(&[("nowhere/.wh.x", T::Regular, "")])]).unwrap();
        assert!(root.join("nowhere").is_dir(), "a whiteout's parent is created, as containerd does");
        assert!(!root.join("nowhere/.wh.x").exists() && !root.join("nowhere/x").exists());
        assert!(!root.join("etc/.wh.gone").exists());
    }

    #[test]
    fn absolute_and_climbing_names_land_inside_the_root() {
        for (name, inside) in [("../../evil", "evil"), ("/abs/evil", "abs/evil"), ("a/../../evil", "evil"), ("..", "")]
        {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("root");
            fs::create_dir(&root).unwrap();
            let report = apply(&root, &[tar_of(&[(name, T::Regular, "x")])]).unwrap();
            assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "{name}: nothing beside the root");
            if inside.is_empty() {
                assert_eq!(report.entries, 0, "a name that cleans to the root is skipped, as containerd does");
                continue;
            }
            assert_eq!(fs::read_to_string(root.join(inside)).unwrap(), "x", "{name}");
            let climbed = report.notes.iter().any(|n| n.contains("1 layer entry(ies) climbed above the root"));
            assert_eq!(climbed, name.contains(".."), "{name}: {:?}", report.notes);
        }
        // Cleaning is lexical, as Go's filepath.Clean: `link/..` is the directory holding
        // `link`, not the parent of the link's target.
        let dir = tempfile::tempdir().unwrap();
        let layer =
            tar_of(&[("d/", T::Directory, ""), ("d/l", T::Symlink, "/elsewhere"), ("d/l/../f", T::Regular, "y")]);
        apply(dir.path(), &[layer]).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("d/f")).unwrap(), "y");
        assert!(!dir.path().join("elsewhere").exists());
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        let out = outside.to_str().unwrap();
        let layer = tar_of(&[
            ("abs", T::Symlink, out),
            ("abs/file", T::Regular, "a"),
            ("rel", T::Symlink, "../../../outside"),
            ("rel/file2", T::Regular, "b"),
        ]);
        apply(&root, &[layer]).unwrap();
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "nothing written through the links");
        assert_eq!(fs::read_link(root.join("abs")).unwrap(), outside, "links kept verbatim");
        let inside = root.join(out.trim_start_matches('/')).join("file");
        assert_eq!(fs::read_to_string(inside).unwrap(), "a");
        assert_eq!(fs::read_to_string(root.join("outside/file2")).unwrap(), "b");
    }

    #[test]
    fn final_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "safe").unwrap();
        let layer = tar_of(&[("f", T::Symlink, victim.to_str().unwrap()), ("f", T::Regular, "pwned")]);
        apply(&root, &[layer]).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "safe");
        assert_eq!(fs::read_to_string(root.join("f")).unwrap(), "pwned");
    }

    #[test]
    fn hard_links_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let layer = tar_of(&[("a", T::Regular, "data"), ("b", T::Link, "a")]);
        apply(&root, &[layer]).unwrap();
        assert_eq!(fs::metadata(root.join("a")).unwrap().ino(), fs::metadata(root.join("b")).unwrap().ino());
        fs::write(dir.path().join("secret"), "s").unwrap();
        let err = apply(&root, &[tar_of(&[("c", T::Link, "../secret")])]).unwrap_err();
        assert!(matches!(err, LayerError::BadHardLink { .. }), "{err}");
        assert!(err.to_string().contains("does not exist"), "'..' stops at the root: {err}");
        let err = apply(&root, &[tar_of(&[("d", T::Link, "nope")])]).unwrap_err();
        assert!(matches!(err, LayerError::BadHardLink { .. }), "{err}");
        for (target, reason) in [("/", "the root directory"), ("..", "a directory"), ("a/x", "does not exist")] {
            let err = apply(&root, &[tar_of(&[("e", T::Link, target)])]).unwrap_err();
            assert!(err.to_string().contains(reason), "{target}: {err}");
        }
        assert_eq!(fs::metadata(dir.path().join("secret")).unwrap().nlink(), 1, "the outside file was never linked");
    }

    #[test]
    fn absolute_and_climbing_hard_link_targets_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/passwd"), "outside").unwrap();
        let layer = tar_of(&[
            ("etc/passwd", T::Regular, "inside"),
            ("abs", T::Link, "/etc/passwd"),
            ("up", T::Link, "../../../../etc/passwd"),
            ("localetc", T::Symlink, "/etc"),
            ("via", T::Link, "/localetc/passwd"),
            ("missing", T::Link, "nowhere/../etc/passwd"),
            ("ghost", T::Symlink, "nowhere/../etc"),
            ("ghost/f", T::Regular, "g"),
        ]);
        fs::create_dir(&root).unwrap();
        apply(&root, &[layer]).unwrap();
        let ino = fs::metadata(root.join("etc/passwd")).unwrap().ino();
        assert_eq!(fs::read_to_string(root.join("etc/f")).unwrap(), "g", "a missing component then '..'");
        assert!(!root.join("nowhere").exists(), "a component a '..' cancels is not created");
        for name in ["abs", "up", "via", "missing"] {
            assert_eq!(fs::metadata(root.join(name)).unwrap().ino(), ino, "{name}");
        }
        assert_eq!(fs::metadata(dir.path().join("etc/passwd")).unwrap().nlink(), 1, "the outside file is untouched");
    }

    #[test]
    fn fifos_are_created_with_their_mode_and_owner() {
        let dir = tempfile::tempdir().unwrap();
        let layer = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(T::Fifo);
            h.set_mode(0o4640);
            h.set_size(0);
            h.set_uid(1234);
            h.set_gid(5678);
            b.append_data(&mut h, "run/ctl", io::empty())
        });
        let mut applier = Applier::new(dir.path(), running_as_root());
        applier.apply("l", layer.as_slice()).unwrap();
        let report = applier.finish();
        let meta = fs::symlink_metadata(dir.path().join("run/ctl")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()));
        assert_eq!(meta.mode() & 0o7777, 0o4640, "the mode is the layer's, past the umask and the chown");
        if running_as_root() {
            assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
        }
        assert!(!report.notes.iter().any(|n| n.contains("skipped")), "{:?}", report.notes);
    }

    #[test]
    fn devices_are_skipped_with_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let report = apply(dir.path(), &[tar_of(&[("null", T::Char, ""), ("x", T::Regular, "")])]).unwrap();
        assert!(!dir.path().join("null").exists());
        assert!(report.notes.iter().any(|n| n.contains("device")), "{:?}", report.notes);
    }

    #[test]
    fn garbage_is_not_a_layer() {
        let dir = tempfile::tempdir().unwrap();
        let err = apply(dir.path(), &[vec![0x55; 1024]]).unwrap_err();
        assert!(matches!(err, LayerError::Tar { .. }), "{err}");
    }

    /// A layer written with the tar crate's own header writers (GNU long names, PAX records).
    fn tar_with(f: impl FnOnce(&mut tar::Builder<Vec<u8>>) -> io::Result<()>) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b).unwrap();
        b.into_inner().unwrap()
    }

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_directory_replaced_by_a_symlink_is_not_chmodded_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(outside.join("sub")).unwrap();
        for d in [&outside, &outside.join("sub")] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o700)).unwrap();
        }
        let layer = tar_of(&[
            ("d/", T::Directory, ""),
            ("d/sub/", T::Directory, ""),
            ("d", T::Symlink, outside.to_str().unwrap()),
        ]);
        apply(&root, &[layer]).unwrap();
        assert_eq!(mode_of(&outside), 0o700, "the directory mode went through the symlink");
        assert_eq!(mode_of(&outside.join("sub")), 0o700);
        assert_eq!(fs::read_link(root.join("d")).unwrap(), outside);
    }

    #[test]
    fn a_directory_replaced_by_a_file_keeps_the_file_mode() {
        let dir = tempfile::tempdir().unwrap();
        apply(dir.path(), &[tar_of(&[("d/", T::Directory, ""), ("d", T::Regular, "f")])]).unwrap();
        assert_eq!(mode_of(&dir.path().join("d")), 0o644);
    }

    #[test]
    fn an_opaque_marker_after_entries_keeps_them_and_hides_lower_content_below() {
        let dir = tempfile::tempdir().unwrap();
        let lower = tar_of(&[
            ("o/", T::Directory, ""),
            ("o/s/", T::Directory, ""),
            ("o/s/old", T::Regular, ""),
            ("o/t/", T::Directory, ""),
            ("o/t/old", T::Regular, ""),
            ("o/gone", T::Regular, ""),
        ]);
        // o/s is not listed: its entry is written through the lower directory.
        let upper = tar_of(&[
            ("o/s/new", T::Regular, "n"),
            ("o/t/", T::Directory, ""),
            ("o/fresh/deep/f", T::Regular, ""),
            ("o/.wh..wh..opq", T::Regular, ""),
        ]);
        let report = apply(dir.path(), &[lower, upper]).unwrap();
        let o = dir.path().join("o");
        assert_eq!(fs::read_to_string(o.join("s/new")).unwrap(), "n");
        assert!(!o.join("s/old").exists() && !o.join("t/old").exists(), "lower content below kept dirs is hidden");
        assert!(o.join("t").is_dir() && o.join("fresh/deep/f").exists());
        assert!(!o.join("gone").exists());
        assert_eq!(report.whiteouts, 3);
    }

    #[test]
    fn links_with_a_blank_mode_field() {
        let dir = tempfile::tempdir().unwrap();
        let layer = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o600);
            h.set_size(1);
            b.append_data(&mut h, "f", &b"x"[..])?;
            for (kind, name) in [(T::Symlink, "sym"), (T::Link, "hard")] {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(kind);
                h.set_size(0);
                b.append_link(&mut h, name, "f")?;
            }
            Ok(())
        });
        apply(dir.path(), &[layer]).unwrap();
        assert_eq!(fs::read_link(dir.path().join("sym")).unwrap(), Path::new("f"));
        assert_eq!(fs::read_to_string(dir.path().join("hard")).unwrap(), "x");
    }

    #[test]
    fn long_names_long_links_pax_paths_and_setuid() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{}/{}", "d".repeat(150), "f".repeat(120));
        let link_target = format!("/{}", "t".repeat(200));
        let pax_path = format!("p/{}/{}", "x".repeat(200), "y".repeat(150));
        let layer = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o4755);
            b.append_data(&mut h, &long, &b"hi"[..])?;
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(T::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "ll", &link_target)?;
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(T::Link);
            h.set_size(0);
            b.append_link(&mut h, "hl", &long)?;
            let mut h = tar::Header::new_ustar();
            h.set_size(1);
            h.set_mode(0o2711);
            b.append_pax_extensions([("path", pax_path.as_bytes())])?;
            b.append_data(&mut h, "ignored-short-name", &b"p"[..])
        });
        apply(dir.path(), &[layer]).unwrap();
        let root = dir.path();
        assert_eq!(mode_of(&root.join(&long)), 0o4755, "setuid kept");
        assert_eq!(fs::read_link(root.join("ll")).unwrap(), Path::new(&link_target));
        assert_eq!(fs::read_to_string(root.join("hl")).unwrap(), "hi");
        assert_eq!(fs::read_to_string(root.join(&pax_path)).unwrap(), "p");
        assert_eq!(mode_of(&root.join(&pax_path)), 0o2711, "setgid kept");
        assert!(!root.join("ignored-short-name").exists());
    }

    #[test]
    fn broken_headers_are_tar_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut truncated = tar_of(&[("a", T::Regular, &"x".repeat(5000))]);
        truncated.truncate(1024);
        let sized = |size: &[u8; 12]| {
            tar_with(|b| {
                let mut h = tar::Header::new_gnu();
                h.set_mode(0o644);
                h.set_path("big")?;
                h.as_gnu_mut().unwrap().size = *size;
                h.set_cksum();
                b.append(&h, &b"x"[..])
            })
        };
        let huge = sized(&[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let negative = sized(&[0xff; 12]);
        for layer in [truncated, huge, negative] {
            let err = apply(dir.path(), &[layer]).unwrap_err();
            assert!(matches!(err, LayerError::Tar { .. }), "{err}");
        }
    }

    #[test]
    fn hard_links_across_layers_whiteouts_and_loops() {
        let dir = tempfile::tempdir().unwrap();
        let lower = tar_of(&[("a", T::Regular, "data"), ("d/", T::Directory, ""), ("d/x", T::Regular, "")]);
        apply(dir.path(), &[lower.clone(), tar_of(&[("b", T::Link, "./a")])]).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("b")).unwrap(), "data", "a link to a lower layer's file");

        let dir = tempfile::tempdir().unwrap();
        let upper = tar_of(&[(".wh.a", T::Regular, ""), ("b", T::Link, "a")]);
        let err = apply(dir.path(), &[lower.clone(), upper]).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "a link to a whited-out file: {err}");

        let dir = tempfile::tempdir().unwrap();
        let upper = tar_of(&[(".wh.d", T::Regular, ""), (".wh.never-was", T::Regular, "")]);
        apply(dir.path(), &[lower.clone(), upper]).unwrap();
        assert!(!dir.path().join("d").exists() && dir.path().join("a").exists());
        let err = apply(dir.path(), &[tar_of(&[("a/x", T::Regular, "")])]).unwrap_err();
        assert!(matches!(err, LayerError::NotADirectory { .. }), "{err}");

        let loops = tar_of(&[("l1", T::Symlink, "l2"), ("l2", T::Symlink, "l1"), ("l1/x", T::Regular, "")]);
        let err = apply(dir.path(), &[loops]).unwrap_err();
        assert!(matches!(err, LayerError::SymlinkLoop { .. }), "{err}");
    }

    #[test]
    fn owners_and_set_id_bits_are_kept_through_hard_links_and_xattrs_are_applied_as_root() {
        // A VFS_CAP_REVISION_2 file capability (effective, permitted cap_net_bind_service),
        // as `setcap cap_net_bind_service+ep` writes it.
        let mut cap = vec![0u8; 20];
        cap[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
        cap[4..8].copy_from_slice(&(1u32 << 10).to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        let layer = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o4755);
            h.set_size(1);
            h.set_uid(1234);
            h.set_gid(5678);
            b.append_pax_extensions([("SCHILY.xattr.security.capability", cap.as_slice())])?;
            b.append_data(&mut h, "su", &b"x"[..])?;
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(T::Link);
            h.set_mode(0o4755);
            h.set_size(0);
            b.append_link(&mut h, "su2", "su")?;
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(0);
            b.append_pax_extensions([("LIBARCHIVE.xattr.user.x", &b"eA=="[..])])?;
            b.append_data(&mut h, "libarchive", io::empty())
        });
        // Owners and extended attributes are applied only as root (as the tests run on the
        // build machine); without root there is no chown to clear the bits, and the check
        // holds trivially.
        let mut applier = Applier::new(dir.path(), running_as_root());
        applier.apply("l", layer.as_slice()).unwrap();
        let report = applier.finish();
        let su = dir.path().join("su");
        assert_eq!(mode_of(&su), 0o4755, "set-uid kept on the target");
        let mut got = vec![0u8; 64];
        let read = rustix::fs::lgetxattr(&su, "security.capability", &mut got);
        if running_as_root() {
            let meta = fs::metadata(&su).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (1234, 5678), "owners kept");
            assert_eq!(&got[..read.unwrap()], cap.as_slice(), "the capability survives the chown");
        } else {
            assert!(read.is_err());
        }
        assert_eq!(fs::metadata(dir.path().join("su2")).unwrap().ino(), fs::metadata(&su).unwrap().ino());
        let noted = if running_as_root() { "of 1 entry(ies)" } else { "of 2 entry(ies)" };
        assert!(
            report.notes.iter().any(|n| n.contains("extended attributes") && n.contains(noted)),
            "{:?}",
            report.notes
        );
    }

    #[test]
    fn an_extended_attribute_the_kernel_refuses_fails_the_build_as_in_containerd() {
        if !running_as_root() {
            return; // nothing is set without root
        }
        let dir = tempfile::tempdir().unwrap();
        let layer = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o755);
            h.set_size(0);
            b.append_pax_extensions([("SCHILY.xattr.security.capability", &b"\x01\0\0\x02"[..])])?;
            b.append_data(&mut h, "bad", io::empty())
        });
        let err = Applier::new(dir.path(), true).apply("l", layer.as_slice()).unwrap_err();
        assert!(format!("{:?}", err).contains("security.capability"), "{err:?}");
    }

    #[test]
    fn names_that_are_not_utf8_are_kept_and_nul_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layer = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(1);
            h.as_gnu_mut().unwrap().name[..5].copy_from_slice(b"caf\xe9!");
            h.set_cksum();
            b.append(&h, &b"x"[..])
        });
        apply(dir.path(), &[layer]).unwrap();
        assert_eq!(fs::read(dir.path().join(OsStr::from_bytes(b"caf\xe9!"))).unwrap(), b"x");

        let layer = tar_with(|b| {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(1);
            b.append_pax_extensions([("path", &b"ok\0/../../escape"[..])])?;
            b.append_data(&mut h, "short", &b"x"[..])
        });
        let err = apply(dir.path(), &[layer]).unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
    }
}
