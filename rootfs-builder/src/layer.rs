//! Applying image layers (tar streams) to a root directory, as containerd's applier does,
//! without ever writing outside that directory.
//!
//! # Security decisions
//!
//! A layer comes from whoever built the image, so every entry is treated as hostile:
//!
//! - **Entry names** that are absolute (`/etc/passwd`) or contain a `..` component are
//!   *refused*: the whole build fails with [`LayerError::Escape`] naming the entry. No legitimate
//!   image builder emits them, and silently rewriting them would hide a malicious image.
//! - **Symlinks** are created as symlinks with their target verbatim (absolute targets are
//!   normal in images: `/bin/sh -> /bin/busybox`) but are never followed while writing: every
//!   directory on the way to an entry is resolved *inside the root*, as `openat2`'s
//!   `RESOLVE_IN_ROOT` does — an absolute target restarts at the root, `..` stops at the root. So
//!   `link -> /tmp/x` followed by `link/file` writes `ROOT/tmp/x/file`, never `/tmp/x/file`. The
//!   last component of a path is never followed: it is replaced (files are created with
//!   `O_CREAT|O_EXCL`, which refuses an existing symlink).
//! - **Hard links** must point at an existing non-directory inside the root (resolved the same
//!   way); anything else is refused.
//! - **Device nodes and FIFOs** are skipped with a note: a container runtime populates `/dev`
//!   itself, and creating nodes from an untrusted image would hand it the host's devices.
//! - **Owners** are applied (`lchown`) only when running as root; otherwise files belong to the
//!   caller and a note says so once.
//!
//! Not applied: extended attributes (file capabilities, SELinux labels; a note counts the
//! entries that had some) and timestamps; the bundle is for running, not for re-exporting.
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
//! directories above them, stay, whatever their order in the tar).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// The whiteout prefix of the OCI image spec.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The opaque-directory marker of the OCI image spec.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// How many symlinks one path may cross (Linux's `MAXSYMLINKS`).
const MAX_SYMLINKS: u32 = 40;

/// Errors while applying a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer {layer}: entry {entry:?} {reason}; refusing to write outside the root file system")]
    Escape { layer: String, entry: String, reason: &'static str },
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
}

/// A layer entry's name, checked and split into components.
fn entry_components(layer: &str, raw: &[u8]) -> Result<Vec<OsString>, LayerError> {
    let escape = |reason| LayerError::Escape {
        layer: layer.to_owned(),
        entry: String::from_utf8_lossy(raw).into_owned(),
        reason,
    };
    if raw.first() == Some(&b'/') {
        return Err(escape("is an absolute path"));
    }
    if raw.contains(&0) {
        return Err(escape("contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(escape("has a '..' component")),
            p => parts.push(OsStr::from_bytes(p).to_owned()),
        }
    }
    Ok(parts)
}

/// Whether this process may chown (effective uid 0), judged by the owner of `/proc/self`.
pub fn running_as_root() -> bool {
    fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

impl Applier {
    /// An applier writing into `root`, which must exist. Owners are applied when `chown`.
    pub fn new(root: &Path, chown: bool) -> Self {
        Self { root: root.to_owned(), chown, report: ApplyReport::default(), skipped_devices: 0, skipped_xattrs: 0 }
    }

    /// The report so far, with the pending notes.
    pub fn finish(mut self) -> ApplyReport {
        if self.skipped_devices > 0 {
            self.report.notes.push(format!(
                "note: skipped {} device node(s) and FIFO(s) from the layers; the container runtime creates /dev",
                self.skipped_devices
            ));
        }
        if self.skipped_xattrs > 0 {
            self.report.notes.push(format!(
                "note: the extended attributes (file capabilities, SELinux labels) of {} entry(ies) were not applied",
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
    /// `Ok(None)` says the directory does not exist.
    fn resolve_dir(
        &self,
        layer: &str,
        entry: &str,
        parts: &[OsString],
        create: bool,
    ) -> Result<Option<PathBuf>, LayerError> {
        let mut queue: VecDeque<OsString> = parts.iter().cloned().collect();
        let mut resolved: Vec<OsString> = Vec::new();
        let mut hops = 0;
        while let Some(part) = queue.pop_front() {
            match part.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    resolved.pop();
                    continue;
                }
                _ => {}
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
                Ok(meta) if meta.is_dir() => resolved.push(part),
                Ok(_) => return Err(LayerError::NotADirectory { layer: layer.to_owned(), entry: entry.to_owned() }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    fs::create_dir(&candidate).map_err(|source| LayerError::Write {
                        layer: layer.to_owned(),
                        path: candidate.clone(),
                        source,
                    })?;
                    resolved.push(part);
                }
                Err(source) => return Err(LayerError::Write { layer: layer.to_owned(), path: candidate, source }),
            }
        }
        let mut dir = self.root.clone();
        dir.extend(&resolved);
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
            let mut parts = entry_components(layer, &raw)?;
            let Some(last) = parts.pop() else { continue }; // the root itself
            let last_bytes = last.as_bytes();
            // A whiteout under a directory that does not exist hides nothing: no parent is
            // created for it.
            let is_whiteout = last_bytes.starts_with(WHITEOUT_PREFIX.as_bytes());
            let Some(parent) = self.resolve_dir(layer, &name, &parts, !is_whiteout)? else { continue };

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
                    return Err(LayerError::Escape {
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
            if has_xattrs(&mut entry) {
                self.skipped_xattrs += 1;
            }
            let header = entry.header();
            let kind = header.entry_type();
            // An unreadable owner field (some writers leave it blank) means root, as in GNU tar.
            let (uid, gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
            if matches!(kind, tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo) {
                self.skipped_devices += 1;
                continue;
            }
            let is_file =
                matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse);
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
                        return Err(LayerError::Escape {
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

    /// The host path a hard link entry may link to: an existing non-directory in the root.
    fn hard_link_source(&self, layer: &str, entry: &str, target: &[u8]) -> Result<PathBuf, LayerError> {
        let bad = |reason| LayerError::BadHardLink {
            layer: layer.to_owned(),
            entry: entry.to_owned(),
            target: String::from_utf8_lossy(target).into_owned(),
            reason,
        };
        let mut parts = entry_components(layer, target).map_err(|_| bad("is outside the root file system"))?;
        let last = parts.pop().ok_or_else(|| bad("is the root directory"))?;
        let parent = self.resolve_dir(layer, entry, &parts, false)?.ok_or_else(|| bad("does not exist"))?;
        let source = parent.join(last);
        match fs::symlink_metadata(&source) {
            Ok(m) if m.is_dir() => Err(bad("is a directory")),
            Ok(_) => Ok(source),
            Err(_) => Err(bad("does not exist")),
        }
    }
}

/// Whether `entry` carries extended attributes (PAX `SCHILY.xattr.*` or `LIBARCHIVE.xattr.*`).
fn has_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> bool {
    let Ok(Some(pax)) = entry.pax_extensions() else { return false };
    pax.flatten()
        .any(|e| e.key_bytes().starts_with(b"SCHILY.xattr.") || e.key_bytes().starts_with(b"LIBARCHIVE.xattr."))
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
    fn names_are_checked() {
        assert!(entry_components("l", b"/etc/passwd").is_err());
        assert!(entry_components("l", b"a/../../b").is_err());
        assert_eq!(entry_components("l", b"./a//b/").unwrap(), [OsString::from("a"), OsString::from("b")]);
        assert!(entry_components("l", b"./").unwrap().is_empty());
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
        assert!(!root.join("nowhere").exists(), "a whiteout creates no parent");
        assert!(!root.join("etc/.wh.gone").exists());
    }

    #[test]
    fn escapes_are_refused() {
        for name in ["../../evil", "/abs-evil", "a/../../evil"] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("root");
            fs::create_dir(&root).unwrap();
            let err = apply(&root, &[tar_of(&[(name, T::Regular, "x")])]).unwrap_err();
            assert!(matches!(err, LayerError::Escape { .. }), "{name}: {err}");
            assert!(err.to_string().contains(name.trim_start_matches("a/")) || err.to_string().contains(name));
            assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "nothing beside the root");
        }
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
        let err = apply(&root, &[tar_of(&[("d", T::Link, "nope")])]).unwrap_err();
        assert!(matches!(err, LayerError::BadHardLink { .. }), "{err}");
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
    fn owners_and_set_id_bits_are_kept_through_hard_links_and_xattrs_are_noted() {
        let dir = tempfile::tempdir().unwrap();
        let layer = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o4755);
            h.set_size(1);
            h.set_uid(1234);
            h.set_gid(5678);
            b.append_pax_extensions([("SCHILY.xattr.security.capability", &b"\x01\0\0\x02"[..])])?;
            b.append_data(&mut h, "su", &b"x"[..])?;
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(T::Link);
            h.set_mode(0o4755);
            h.set_size(0);
            b.append_link(&mut h, "su2", "su")
        });
        // Owners are applied only as root (as the tests run on the build machine); without
        // root there is no chown to clear the bits, and the check holds trivially.
        let mut applier = Applier::new(dir.path(), running_as_root());
        applier.apply("l", layer.as_slice()).unwrap();
        let report = applier.finish();
        assert_eq!(mode_of(&dir.path().join("su")), 0o4755, "set-uid kept on the target");
        if running_as_root() {
            let meta = fs::metadata(dir.path().join("su")).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (1234, 5678), "owners kept");
        }
        assert_eq!(
            fs::metadata(dir.path().join("su2")).unwrap().ino(),
            fs::metadata(dir.path().join("su")).unwrap().ino()
        );
        assert!(
            report.notes.iter().any(|n| n.contains("extended attributes") && n.contains("of 1 entry(ies)")),
            "{:?}",
            report.notes
        );
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
