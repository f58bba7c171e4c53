//! The image as an in-memory tree, and its serialisation as a newc (SVR4
//! "new ASCII") cpio archive: the only format the kernel unpacks into the
//! initramfs.
//!
//! Everything that makes the output reproducible lives here: entries are kept
//! in a sorted map (so the order never depends on readdir or insertion order,
//! and a parent directory always sorts before its children), owners are
//! root:root, every entry gets the same mtime, inode numbers are assigned
//! sequentially in output order, and modes are exactly what the caller asked
//! for (the host umask is never consulted).
//!
//! The header encoding itself is delegated to the `cpio` crate's writer, which
//! lets us set every newc field (mode, ino, nlink, mtime, rdev for device
//! nodes), so no hand-rolled format code is needed.

use std::collections::BTreeMap;
use std::io::{self, Write};

use cpio::newc::{Builder, ModeFileType};

/// Permission bits (including setuid/setgid/sticky) that a caller may set.
const PERM_MASK: u32 = 0o7777;
/// The archive is padded with zeros to a multiple of this many bytes after the
/// trailer, as GNU cpio and the kernel's `gen_init_cpio` do.
const BLOCK: usize = 512;

/// What a path in the image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

impl NodeKind {
    fn describe(&self) -> &'static str {
        match self {
            NodeKind::Dir => "directory",
            NodeKind::File(_) => "file",
            NodeKind::Symlink(_) => "symlink",
            NodeKind::CharDevice { .. } => "character device",
        }
    }
}

/// One entry of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    /// Permission bits only (`0o7777` mask); the file type comes from `kind`.
    pub perm: u32,
}

/// Errors while populating or serialising the image.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("invalid path {path:?} for the image: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("/{path} is already in the image as a {existing}; cannot add it again as a {new}")]
    Conflict { path: String, existing: &'static str, new: &'static str },
    #[error("/{path} has a parent /{parent} that is a {existing}, not a directory")]
    ParentNotDir { path: String, parent: String, existing: &'static str },
    #[error("/{path} is {size} bytes; newc cpio entries are limited to 4 GiB - 1")]
    TooLarge { path: String, size: usize },
    #[error("the image has too many entries for 32-bit cpio inode numbers")]
    TooManyEntries,
    #[error("cannot write the cpio stream")]
    Io(#[source] io::Error),
}

/// The image being assembled: paths (relative to `/`, no leading slash) to nodes.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    nodes: BTreeMap<String, Node>,
}

/// Normalises `path` to the archive's form: relative to `/`, `/`-separated,
/// no empty, `.` or `..` components.
pub fn normalize(path: &str) -> Result<String, ArchiveError> {
    let invalid = |reason| ArchiveError::InvalidPath { path: path.to_owned(), reason };
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid("contains a '..' component")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(invalid("names the root directory"));
    }
    Ok(parts.join("/"))
}

fn parent(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(p, _)| p)
}

impl Archive {
    /// An empty image.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries (not counting the cpio trailer).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the image has no entries.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node at `path` (leading `/` optional), if any.
    pub fn get(&self, path: &str) -> Option<&Node> {
        normalize(path).ok().and_then(|p| self.nodes.get(&p))
    }

    /// Whether `path` exists in the image.
    pub fn contains(&self, path: &str) -> bool {
        self.get(path).is_some()
    }

    /// All entries in output order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Adds a directory, or sets the permissions of an existing one.
    pub fn add_dir(&mut self, path: &str, perm: u32) -> Result<(), ArchiveError> {
        let path = normalize(path)?;
        self.ensure_parents(&path)?;
        match self.nodes.get_mut(&path) {
            Some(Node { kind: NodeKind::Dir, perm: p }) => {
                *p = perm & PERM_MASK;
                Ok(())
            }
            Some(other) => Err(ArchiveError::Conflict { path, existing: other.kind.describe(), new: "directory" }),
            None => {
                self.nodes.insert(path, Node { kind: NodeKind::Dir, perm: perm & PERM_MASK });
                Ok(())
            }
        }
    }

    /// Adds a regular file.
    pub fn add_file(&mut self, path: &str, perm: u32, data: Vec<u8>) -> Result<(), ArchiveError> {
        if u32::try_from(data.len()).is_err() {
            return Err(ArchiveError::TooLarge { path: path.trim_start_matches('/').to_owned(), size: data.len() });
        }
        self.insert_new(path, perm, NodeKind::File(data))
    }

    /// Adds a symbolic link pointing at `target` (stored verbatim).
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), ArchiveError> {
        if target.is_empty() || target.contains('\0') {
            return Err(ArchiveError::InvalidPath { path: target.to_owned(), reason: "is not a valid symlink target" });
        }
        self.insert_new(path, 0o777, NodeKind::Symlink(target.to_owned()))
    }

    /// Adds a character device node.
    pub fn add_char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> Result<(), ArchiveError> {
        self.insert_new(path, perm, NodeKind::CharDevice { major, minor })
    }

    fn insert_new(&mut self, path: &str, perm: u32, kind: NodeKind) -> Result<(), ArchiveError> {
        let path = normalize(path)?;
        self.ensure_parents(&path)?;
        if let Some(existing) = self.nodes.get(&path) {
            return Err(ArchiveError::Conflict { path, existing: existing.kind.describe(), new: kind.describe() });
        }
        self.nodes.insert(path, Node { kind, perm: perm & PERM_MASK });
        Ok(())
    }

    /// Creates missing ancestors of `path` as 0755 directories.
    fn ensure_parents(&mut self, path: &str) -> Result<(), ArchiveError> {
        let mut ancestors = Vec::new();
        let mut cur = path;
        while let Some(p) = parent(cur) {
            ancestors.push(p);
            cur = p;
        }
        for dir in ancestors.into_iter().rev() {
            match self.nodes.get(dir) {
                Some(Node { kind: NodeKind::Dir, .. }) => {}
                Some(other) => {
                    return Err(ArchiveError::ParentNotDir {
                        path: path.to_owned(),
                        parent: dir.to_owned(),
                        existing: other.kind.describe(),
                    })
                }
                None => {
                    self.nodes.insert(dir.to_owned(), Node { kind: NodeKind::Dir, perm: 0o755 });
                }
            }
        }
        Ok(())
    }

    /// Serialises the image as a newc cpio archive, every entry stamped with `mtime`.
    pub fn to_newc(&self, mtime: u32) -> Result<Vec<u8>, ArchiveError> {
        // A directory's link count is 2 ("." and its entry in the parent) plus
        // one ".." per subdirectory, as on a real file system.
        let mut subdirs: BTreeMap<&str, u32> = BTreeMap::new();
        for (path, node) in &self.nodes {
            if node.kind == NodeKind::Dir {
                if let Some(p) = parent(path) {
                    *subdirs.entry(p).or_default() += 1;
                }
            }
        }

        let mut out = Vec::new();
        for (index, (path, node)) in self.nodes.iter().enumerate() {
            let ino = u32::try_from(index + 1).map_err(|_| ArchiveError::TooManyEntries)?;
            let (file_type, nlink, data, rdev): (_, u32, &[u8], _) = match &node.kind {
                NodeKind::Dir => (
                    ModeFileType::Directory,
                    2u32.saturating_add(subdirs.get(path.as_str()).copied().unwrap_or(0)),
                    &[],
                    (0, 0),
                ),
                NodeKind::File(d) => (ModeFileType::Regular, 1, d, (0, 0)),
                NodeKind::Symlink(t) => (ModeFileType::Symlink, 1, t.as_bytes(), (0, 0)),
                NodeKind::CharDevice { major, minor } => (ModeFileType::Char, 1, &[], (*major, *minor)),
            };
            let size = u32::try_from(data.len())
                .map_err(|_| ArchiveError::TooLarge { path: path.clone(), size: data.len() })?;
            let mut writer = Builder::new(path)
                .ino(ino)
                .mode(node.perm & PERM_MASK)
                .set_mode_file_type(file_type)
                .uid(0)
                .gid(0)
                .nlink(nlink)
                .mtime(mtime)
                .rdev_major(rdev.0)
                .rdev_minor(rdev.1)
                .write(&mut out, size);
            writer.write_all(data).map_err(ArchiveError::Io)?;
            writer.finish().map_err(ArchiveError::Io)?;
        }
        cpio::newc::trailer(&mut out).map_err(ArchiveError::Io)?;
        let padded = out.len().div_ceil(BLOCK) * BLOCK;
        out.resize(padded, 0);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// (name, mode, nlink, ino, mtime, rdev, data) of every entry.
    type Read_ = (String, u32, u32, u32, u32, (u32, u32), Vec<u8>);

    fn read_back(data: &[u8]) -> Vec<Read_> {
        let mut entries = Vec::new();
        let mut rest = data;
        loop {
            let mut r = cpio::NewcReader::new(rest).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            let e = r.entry().clone();
            let mut buf = Vec::new();
            r.read_to_end(&mut buf).unwrap();
            entries.push((
                e.name().to_owned(),
                e.mode(),
                e.nlink(),
                e.ino(),
                e.mtime(),
                (e.rdev_major(), e.rdev_minor()),
                buf,
            ));
            rest = r.finish().unwrap();
        }
        entries
    }

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize("/init").unwrap(), "init");
        assert_eq!(normalize("./a//b/").unwrap(), "a/b");
        assert!(normalize("/").is_err());
        assert!(normalize("a/../b").is_err());
        assert!(normalize("a\0b").is_err());
    }

    #[test]
    fn entries_sorted_parents_first_with_metadata() {
        let mut a = Archive::new();
        a.add_file("/usr/bin/zz", 0o755, b"z".to_vec()).unwrap();
        a.add_dir("/tmp", 0o1777).unwrap();
        a.add_char_device("/dev/console", 0o600, 5, 1).unwrap();
        a.add_symlink("/bin/sh", "/bin/busybox").unwrap();
        a.add_file("/init", 0o755, b"#!/bin/sh\n".to_vec()).unwrap();
        let bytes = a.to_newc(1234).unwrap();
        assert_eq!(bytes.len() % BLOCK, 0);
        let got = read_back(&bytes);
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["bin", "bin/sh", "dev", "dev/console", "init", "tmp", "usr", "usr/bin", "usr/bin/zz"]);
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e.3, i as u32 + 1, "sequential inodes");
            assert_eq!(e.4, 1234, "mtime");
        }
        let find = |n: &str| got.iter().find(|e| e.0 == n).unwrap();
        assert_eq!(find("tmp").1, 0o041777);
        assert_eq!(find("usr").1, 0o040755);
        assert_eq!(find("usr").2, 3, "usr has one subdirectory");
        assert_eq!(find("dev/console").1, 0o020600);
        assert_eq!(find("dev/console").5, (5, 1));
        assert_eq!(find("bin/sh").1, 0o120777);
        assert_eq!(find("bin/sh").6, b"/bin/busybox");
        assert_eq!(find("init").1, 0o100755);
        assert_eq!(find("init").6, b"#!/bin/sh\n");
    }

    #[test]
    fn insertion_order_does_not_matter() {
        let mut a = Archive::new();
        a.add_file("b/x", 0o644, b"1".to_vec()).unwrap();
        a.add_file("a/y", 0o644, b"22".to_vec()).unwrap();
        let mut b = Archive::new();
        b.add_file("a/y", 0o644, b"22".to_vec()).unwrap();
        b.add_file("b/x", 0o644, b"1".to_vec()).unwrap();
        assert_eq!(a.to_newc(0).unwrap(), b.to_newc(0).unwrap());
    }

    #[test]
    fn conflicts_are_errors() {
        let mut a = Archive::new();
        a.add_file("init", 0o755, vec![]).unwrap();
        assert!(matches!(a.add_symlink("init", "/bin/busybox"), Err(ArchiveError::Conflict { .. })));
        assert!(matches!(a.add_file("init/x", 0o644, vec![]), Err(ArchiveError::ParentNotDir { .. })));
        assert!(matches!(a.add_dir("init", 0o755), Err(ArchiveError::Conflict { .. })));
        // Re-adding a directory just updates its mode.
        a.add_dir("tmp", 0o755).unwrap();
        a.add_dir("tmp", 0o1777).unwrap();
        assert_eq!(a.get("/tmp").unwrap().perm, 0o1777);
        // An explicit mode is not reset when a child creates the parent again.
        a.add_file("tmp/x", 0o644, vec![]).unwrap();
        assert_eq!(a.get("tmp").unwrap().perm, 0o1777);
    }
}
