//! Target `layer_apply`: image layers (tar streams) applied by rootfs-builder's
//! [`Applier`], which must never write outside its root.
//!
//! An input is up to [`MAX_LAYERS`] tar streams separated by [`LAYER_SEPARATOR`], applied in
//! order to one root (so whiteouts and opaque directories meet lower layers). The root is
//! `BASE/a/b/root`, beside an empty `BASE/a/b/outside`: after every input, `BASE` must hold
//! nothing but that, so a `..`, an absolute name, a symlink or a hard link that led out of
//! the root (up to three levels) is caught.
//!
//! Confined ([`Harness::new`] with `confine`, as root): the process first `chroot`s into
//! `BASE`, so an escape of any depth, or through an absolute symlink target, lands inside
//! `BASE` where the walk sees it, and never on the host. Owners and extended attributes are
//! then applied as in a root build. Unconfined (not root): the walk alone.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rootfs_builder::layer::Applier;

/// Separates the layers of one input.
pub const LAYER_SEPARATOR: &[u8] = b"\0WISP-NEXT-LAYER\0";
/// At most this many layers per input.
pub const MAX_LAYERS: usize = 4;

/// One process's state: where layers are applied.
#[derive(Debug)]
pub struct Harness {
    /// Owns BASE when not chrooted (removed on drop).
    _tmp: Option<tempfile::TempDir>,
    /// BASE as this process sees it (`/` once chrooted).
    base: PathBuf,
    chown: bool,
}

impl Harness {
    /// Creates BASE in `$TMPDIR`; with `confine` and as root, chroots into it (BASE then stays
    /// behind on the host: a chrooted process cannot name it; `fuzz/run.sh` points `TMPDIR`
    /// under `target/` and removes it).
    pub fn new(confine: bool) -> io::Result<Self> {
        let tmp = tempfile::Builder::new().prefix("wisp-fuzz-layer.").tempdir()?;
        let mut harness = Self::in_dir(tmp.path(), confine)?;
        if harness.base == tmp.path() {
            harness._tmp = Some(tmp);
        } else {
            let _ = tmp.keep();
        }
        Ok(harness)
    }

    /// Uses `base` (an existing, empty directory) as BASE; with `confine` and as root,
    /// chroots into it.
    pub fn in_dir(base: &Path, confine: bool) -> io::Result<Self> {
        fs::create_dir_all(base.join("a/b/root"))?;
        fs::create_dir_all(base.join("a/b/outside"))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if confine && root {
            std::os::unix::fs::chroot(base)?;
            std::env::set_current_dir("/")?;
            return Ok(Self { _tmp: None, base: PathBuf::from("/"), chown: true });
        }
        Ok(Self { _tmp: None, base: base.to_owned(), chown: false })
    }

    fn root(&self) -> PathBuf {
        self.base.join("a/b/root")
    }

    /// Applies the layers of `data`, checks that nothing was written outside the root and
    /// empties the root again; returns how many entries the applier wrote.
    pub fn run(&self, data: &[u8]) -> u64 {
        let root = self.root();
        let mut applier = Applier::new(&root, self.chown);
        for (i, layer) in split(data).into_iter().enumerate() {
            let _ = applier.apply(&format!("layer{i}"), layer);
        }
        let written = applier.finish().entries;
        let escaped = outside_root(&self.base);
        assert!(escaped.is_empty(), "the layer applier wrote outside its root: {escaped:?}");
        reset(&root).unwrap_or_else(|e| panic!("cannot empty {}: {e}", root.display()));
        written
    }

    /// BASE as this process sees it (`/` once chrooted).
    pub fn base(&self) -> &Path {
        &self.base
    }
}

/// The layers of one input.
pub fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut layers = Vec::new();
    let mut rest = data;
    while layers.len() + 1 < MAX_LAYERS {
        match rest.windows(LAYER_SEPARATOR.len()).position(|w| w == LAYER_SEPARATOR) {
            Some(at) => {
                layers.push(&rest[..at]);
                rest = &rest[at + LAYER_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    layers.push(rest);
    layers
}

/// Everything under `base` that is not `a`, `a/b`, `a/b/outside` (empty) or under `a/b/root`.
pub fn outside_root(base: &Path) -> Vec<PathBuf> {
    let allowed = |p: &Path| p == Path::new("a") || p == Path::new("a/b") || p == Path::new("a/b/outside");
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(entries) = fs::read_dir(base.join(&rel)) else { continue };
        for entry in entries.flatten() {
            let child = rel.join(entry.file_name());
            if child == Path::new("a/b/root") {
                continue;
            }
            if !allowed(&child) {
                found.push(child.clone());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(child);
            }
        }
    }
    found
}

/// Empties `root`, making directories writable first (a layer may leave them read-only).
fn reset(root: &Path) -> io::Result<()> {
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        for entry in fs::read_dir(&dir)?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    fs::remove_dir_all(root)?;
    fs::create_dir(root)
}
