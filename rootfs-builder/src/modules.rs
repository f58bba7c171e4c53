//! Kernel modules for the image: finding a kernel's module tree, choosing
//! modules plus their full dependency closure, and producing the
//! `lib/modules/<version>/` subset the guest's PID 1 loads at boot.
//!
//! Distribution kernels build virtio, vsock and most file systems as modules,
//! so an initrd for them must carry those `.ko` files. The guest reads
//! `/lib/modules/$(uname -r)/modules.dep` and loads every module listed there,
//! dependencies first, with a plain `finit_module`; hence this module:
//! * writes a `modules.dep` restricted to the shipped modules, in the exact
//!   format depmod writes (`kernel/a.ko: kernel/dep1.ko kernel/dep2.ko`, where
//!   dependencies are listed so that the *last* one is loaded first);
//! * decompresses `.ko.{xz,zst,gz}` at build time and renames them `.ko`, since
//!   the guest has no decompressor (and kernels may lack in-kernel module
//!   decompression);
//! * accepts a Debian kernel package directly. Packages do not ship
//!   `modules.dep` (depmod runs in postinst), so for a `.deb` without one the
//!   dependencies are read from each module's `.modinfo` `depends=` field,
//!   which modpost derives from the same symbol references depmod uses.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use crate::compress::{Codec, CompressError};
use crate::elf::{self, ElfError};

/// Modules a virtio guest needs when `--module` is not given: PCI and MMIO
/// transports, block/SCSI/console/net/rng devices, vsock (the agent's channel),
/// 9p and virtio-fs shared directories, and the file systems containers use.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_scsi",
    "virtio_console",
    "virtio_net",
    "virtio_rng",
    "vmw_vsock_virtio_transport",
    "9pnet_virtio",
    "9p",
    "virtiofs",
    "fuse",
    "overlay",
    "ext4",
];

/// Where module trees live inside a root file system or package.
const MODULE_DIRS: &[&str] = &["lib/modules", "usr/lib/modules"];

/// Errors while locating or selecting kernel modules.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error("module source {path} does not exist")]
    SourceMissing { path: PathBuf },
    #[error("cannot read {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is neither a directory nor a Debian package (.deb)")]
    UnknownSource { path: PathBuf },
    #[error(
        "{path} contains neither modules.dep nor lib/modules/<version>/; pass a \
         /lib/modules/<version> directory, a root directory containing one, or a kernel .deb"
    )]
    NoModulesTree { path: PathBuf },
    #[error(
        "{path} has no modules.dep; run `depmod -b <root> <version>` for it first, or pass the \
         kernel .deb itself (dependencies are then read from the modules)"
    )]
    MissingModulesDep { path: PathBuf },
    #[error("{path} contains several kernel versions ({}); pass the lib/modules/<version> directory of the one you want", versions.join(", "))]
    SeveralVersions { path: PathBuf, versions: Vec<String> },
    #[error("{path} contains no lib/modules/<version>/ directory (is it a kernel image package?)")]
    NoModulesInPackage { path: PathBuf },
    #[error("{path}:{line}: malformed modules.dep line {text:?} (expected `kernel/x.ko: kernel/dep.ko ...`)")]
    MalformedDep { path: PathBuf, line: usize, text: String },
    #[error("{path}: unusable module path {rel:?} ({reason})")]
    UnsafePath { path: PathBuf, rel: String, reason: &'static str },
    #[error("{path}: a file or directory name is not valid UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error("modules.dep lists {dep} as a dependency of {module} but has no line for it")]
    DanglingDep { module: String, dep: String },
    #[error("module {module} depends on {dep}, which is neither a module of this kernel nor built in")]
    MissingDep { module: String, dep: String },
    #[error("module dependency cycle involving {module}")]
    Cycle { module: String },
    #[error("module(s) not found in kernel {version}: {}", names.join(", "))]
    NotFound { version: String, names: Vec<String> },
    #[error("invalid module name {name:?}")]
    BadName { name: String },
    #[error("{path} is not a kernel module (ELF)")]
    NotModule {
        path: PathBuf,
        #[source]
        source: Option<ElfError>,
    },
    #[error("cannot decompress {path}")]
    Decompress { path: PathBuf, source: CompressError },
    #[error("cannot read {member} of Debian package {path}")]
    Deb { path: PathBuf, member: String, source: io::Error },
    #[error("{path} has no data.tar member (is it a Debian package?)")]
    NoDataTar { path: PathBuf },
    #[error(
        "{path}: unsupported package member {member} (expected data.tar, data.tar.xz, data.tar.zst or data.tar.gz)"
    )]
    UnsupportedDataTar { path: PathBuf, member: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ModulesError + '_ {
    move |source| ModulesError::Io { path: path.to_owned(), source }
}

/// One line of `modules.dep`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepEntry {
    /// Module file, relative to `lib/modules/<version>/`.
    pub path: String,
    /// Its dependencies, in depmod order (load the last one first).
    pub deps: Vec<String>,
}

/// A parsed `modules.dep` file, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModulesDep {
    pub entries: Vec<DepEntry>,
}

impl ModulesDep {
    /// Parses `modules.dep` text; `origin` is only used in error messages.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ModulesError> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let malformed =
                || ModulesError::MalformedDep { path: origin.to_owned(), line: i + 1, text: raw.to_owned() };
            let (module, rest) = line.split_once(':').ok_or_else(malformed)?;
            let module = module.trim();
            if module.is_empty() || module.contains(char::is_whitespace) {
                return Err(malformed());
            }
            check_rel(module, origin)?;
            let deps = rest
                .split_whitespace()
                .map(|d| check_rel(d, origin).map(|()| d.to_owned()))
                .collect::<Result<Vec<_>, _>>()?;
            entries.push(DepEntry { path: module.to_owned(), deps });
        }
        Ok(ModulesDep { entries })
    }

    /// Renders in depmod's format: `a.ko:` or `a.ko: b.ko c.ko`, one per line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            out.push_str(&e.path);
            out.push(':');
            for d in &e.deps {
                out.push(' ');
                out.push_str(d);
            }
            out.push('\n');
        }
        out
    }
}

/// Checks that a module path is relative and stays inside the module tree.
fn check_rel(rel: &str, origin: &Path) -> Result<(), ModulesError> {
    let bad = |reason| ModulesError::UnsafePath { path: origin.to_owned(), rel: rel.to_owned(), reason };
    if rel.starts_with('/') {
        return Err(bad("absolute path; regenerate modules.dep with a current depmod"));
    }
    if rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(bad("empty, '.' or '..' component"));
    }
    if rel.contains('\0') {
        return Err(bad("NUL byte"));
    }
    Ok(())
}

/// Canonical module name: `-` and `_` are equivalent, so use `_`.
pub fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The codec of a compressed module file name, and the name without that suffix.
fn split_compression(rel: &str) -> (String, Option<Codec>) {
    match Codec::from_name(rel) {
        Some(c) => (rel[..rel.len() - c.suffix().len()].to_owned(), Some(c)),
        None => (rel.to_owned(), None),
    }
}

/// Module name of a module file path (`kernel/net/vmw_vsock/vsock.ko.xz` → `vsock`).
pub fn module_name(rel: &str) -> String {
    let (plain, _) = split_compression(rel);
    let base = plain.rsplit('/').next().unwrap_or(&plain);
    normalize_name(base.strip_suffix(".ko").unwrap_or(base))
}

/// The modules to take from a tree, in the form `lib/modules/<version>/` of the image.
#[derive(Debug)]
pub struct Selection {
    pub version: String,
    /// `modules.dep` restricted to the selected modules, paths ending in `.ko`.
    pub modules_dep: String,
    /// The tree's `modules.builtin`, copied verbatim if present.
    pub modules_builtin: Option<Vec<u8>>,
    /// Uncompressed module files, paths relative to `lib/modules/<version>/`, sorted.
    pub files: Vec<(String, Vec<u8>)>,
    /// Things the user should know (e.g. requested modules that are built in).
    pub notes: Vec<String>,
}

/// A kernel's module tree, ready for selection.
#[derive(Debug)]
pub struct ModuleTree {
    version: String,
    dir: PathBuf,
    /// Parsed `modules.dep`; `None` for packages, whose deps come from `.modinfo`.
    dep: Option<ModulesDep>,
    /// Keeps an extracted package alive as long as the tree.
    _scratch: Option<tempfile::TempDir>,
}

/// Opens a module source: a `/lib/modules/<version>` directory, a root directory
/// containing `lib/modules/<version>/`, or a Debian kernel package.
pub fn open(source: &Path) -> Result<ModuleTree, ModulesError> {
    let meta = fs::metadata(source).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ModulesError::SourceMissing { path: source.to_owned() },
        _ => ModulesError::Io { path: source.to_owned(), source: e },
    })?;
    if meta.is_dir() {
        return open_dir(source);
    }
    if meta.is_file() && is_ar_archive(source)? {
        let scratch = extract_deb(source)?;
        let (version, dir) = single_version(scratch.path(), source)?
            .ok_or_else(|| ModulesError::NoModulesInPackage { path: source.to_owned() })?;
        let dep = read_modules_dep(&dir)?;
        return Ok(ModuleTree { version, dir, dep, _scratch: Some(scratch) });
    }
    Err(ModulesError::UnknownSource { path: source.to_owned() })
}

fn open_dir(dir: &Path) -> Result<ModuleTree, ModulesError> {
    if dir.join("modules.dep").is_file() {
        let canonical = dir.canonicalize().map_err(io_err(dir))?;
        let version = canonical
            .file_name()
            .ok_or_else(|| ModulesError::NoModulesTree { path: dir.to_owned() })?
            .to_str()
            .ok_or_else(|| ModulesError::NotUtf8 { path: dir.to_owned() })?
            .to_owned();
        let dep = read_modules_dep(dir)?;
        return Ok(ModuleTree { version, dir: dir.to_owned(), dep, _scratch: None });
    }
    let (version, vdir) =
        single_version(dir, dir)?.ok_or_else(|| ModulesError::NoModulesTree { path: dir.to_owned() })?;
    match read_modules_dep(&vdir)? {
        Some(dep) => Ok(ModuleTree { version, dir: vdir, dep: Some(dep), _scratch: None }),
        None => Err(ModulesError::MissingModulesDep { path: vdir }),
    }
}

fn read_modules_dep(dir: &Path) -> Result<Option<ModulesDep>, ModulesError> {
    let path = dir.join("modules.dep");
    match fs::read(&path) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes).map_err(|_| ModulesError::NotUtf8 { path: path.clone() })?;
            ModulesDep::parse(&text, &path).map(Some)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// The only `lib/modules/<version>` (or `usr/lib/modules/<version>`) under
/// `root`; `origin` names the source in error messages.
fn single_version(root: &Path, origin: &Path) -> Result<Option<(String, PathBuf)>, ModulesError> {
    let mut versions: BTreeMap<String, PathBuf> = BTreeMap::new();
    for base in MODULE_DIRS {
        let base = root.join(base);
        if !base.is_dir() {
            continue;
        }
        let rd = fs::read_dir(&base).map_err(io_err(&base))?;
        for entry in rd {
            let entry = entry.map_err(io_err(&base))?;
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let name = entry.file_name().into_string().map_err(|_| ModulesError::NotUtf8 { path: path.clone() })?;
            versions.entry(name).or_insert(path);
        }
    }
    match versions.len() {
        0 => Ok(None),
        1 => Ok(versions.into_iter().next()),
        _ => Err(ModulesError::SeveralVersions { path: origin.to_owned(), versions: versions.into_keys().collect() }),
    }
}

fn is_ar_archive(path: &Path) -> Result<bool, ModulesError> {
    let mut magic = [0u8; 8];
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"!<arch>\n"),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Unpacks the module trees (`[usr/]lib/modules/**`) of a `.deb` into a scratch
/// directory. Nothing outside those trees, and no links, are written.
fn extract_deb(path: &Path) -> Result<tempfile::TempDir, ModulesError> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    let mut ar = ar::Archive::new(BufReader::new(file));
    while let Some(entry) = ar.next_entry() {
        let entry =
            entry.map_err(|source| ModulesError::Deb { path: path.to_owned(), member: "ar archive".into(), source })?;
        let member = String::from_utf8_lossy(entry.header().identifier()).trim_end_matches('/').to_owned();
        if !member.starts_with("data.tar") {
            continue;
        }
        let reader: Box<dyn Read + '_> = if member == "data.tar" {
            Box::new(entry)
        } else {
            match Codec::from_name(&member) {
                Some(c) => {
                    c.decoder(entry).map_err(|source| ModulesError::Decompress { path: path.join(&member), source })?
                }
                None => return Err(ModulesError::UnsupportedDataTar { path: path.to_owned(), member }),
            }
        };
        let scratch = crate::output::scratch("rootfs-builder-deb.").map_err(io_err(&std::env::temp_dir()))?;
        unpack_module_trees(reader, scratch.path()).map_err(|source| ModulesError::Deb {
            path: path.to_owned(),
            member,
            source,
        })?;
        return Ok(scratch);
    }
    Err(ModulesError::NoDataTar { path: path.to_owned() })
}

fn unpack_module_trees(reader: impl Read, dest: &Path) -> io::Result<()> {
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let mut parts = Vec::new();
        let mut safe = true;
        for c in path.components() {
            match c {
                Component::Normal(p) => parts.push(p.to_owned()),
                Component::CurDir | Component::RootDir => {}
                Component::ParentDir | Component::Prefix(_) => safe = false,
            }
        }
        let under_modules = MODULE_DIRS.iter().any(|base| {
            let base: Vec<&str> = base.split('/').collect();
            parts.len() > base.len() && parts.iter().zip(&base).all(|(p, b)| p == b)
        });
        if !safe || !under_modules {
            continue;
        }
        let target: PathBuf = parts.iter().fold(dest.to_owned(), |acc, p| acc.join(p));
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            fs::create_dir_all(&target)?;
        } else if kind.is_file() {
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)?;
            }
            let mut out = fs::File::create(&target)?;
            io::copy(&mut entry, &mut out)?;
        }
        // Symlinks (build/, source/) and other types are not needed.
    }
    Ok(())
}

impl ModuleTree {
    /// The kernel release this tree belongs to (the `<version>` directory name).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether dependencies come from the tree's `modules.dep` (else from `.modinfo`).
    pub fn has_modules_dep(&self) -> bool {
        self.dep.is_some()
    }

    fn builtin(&self) -> Result<(Option<Vec<u8>>, HashSet<String>), ModulesError> {
        let path = self.dir.join("modules.builtin");
        match fs::read(&path) {
            Ok(bytes) => {
                let names = String::from_utf8_lossy(&bytes)
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(module_name)
                    .collect();
                Ok((Some(bytes), names))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((None, HashSet::new())),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Module name → file path (relative to the tree), first one wins.
    fn index(&self) -> Result<HashMap<String, String>, ModulesError> {
        let mut paths = Vec::new();
        match &self.dep {
            Some(dep) => paths.extend(dep.entries.iter().map(|e| e.path.clone())),
            None => walk_modules(&self.dir, "", &mut paths)?,
        }
        let mut index = HashMap::new();
        for p in paths {
            index.entry(module_name(&p)).or_insert(p);
        }
        Ok(index)
    }

    /// Reads a module file and returns its uncompressed bytes.
    fn read_module(&self, rel: &str) -> Result<Vec<u8>, ModulesError> {
        let path = self.dir.join(rel);
        let raw = fs::read(&path).map_err(io_err(&path))?;
        let data = match split_compression(rel).1 {
            Some(codec) => {
                codec.decompress(&raw).map_err(|source| ModulesError::Decompress { path: path.clone(), source })?
            }
            None => raw,
        };
        if !elf::is_elf(&data) {
            return Err(ModulesError::NotModule { path, source: None });
        }
        Ok(data)
    }

    /// Chooses `names` (or [`DEFAULT_MODULES`] if empty) and their dependency
    /// closure, and produces the files for `lib/modules/<version>/`.
    pub fn select(&self, names: &[String]) -> Result<Selection, ModulesError> {
        let explicit = !names.is_empty();
        let requested: Vec<String> = if explicit {
            names.iter().map(|n| normalize_name(n.trim())).collect()
        } else {
            DEFAULT_MODULES.iter().map(|n| normalize_name(n)).collect()
        };
        for n in &requested {
            if n.is_empty() || n.contains('/') || n.contains(char::is_whitespace) {
                return Err(ModulesError::BadName { name: n.clone() });
            }
        }
        let (modules_builtin, builtin) = self.builtin()?;
        let index = self.index()?;

        let mut notes = Vec::new();
        let mut roots = Vec::new();
        let mut missing = Vec::new();
        let mut seen = HashSet::new();
        for name in &requested {
            if !seen.insert(name.clone()) {
                continue;
            }
            if builtin.contains(name) {
                notes.push(format!("module {name} is built into kernel {}; not adding it", self.version));
            } else if let Some(path) = index.get(name) {
                roots.push(path.clone());
            } else if explicit {
                missing.push(name.clone());
            }
        }
        if !missing.is_empty() {
            return Err(ModulesError::NotFound { version: self.version.clone(), names: missing });
        }

        // Direct dependencies of each module in the closure, as source paths.
        let mut cache: HashMap<String, Vec<u8>> = HashMap::new();
        let dep_lines: HashMap<&str, &DepEntry> =
            self.dep.iter().flat_map(|d| d.entries.iter()).map(|e| (e.path.as_str(), e)).collect();
        let mut direct: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut queue: VecDeque<String> = roots.into_iter().collect();
        while let Some(module) = queue.pop_front() {
            if direct.contains_key(&module) {
                continue;
            }
            let deps = if self.dep.is_some() {
                let Some(line) = dep_lines.get(module.as_str()) else {
                    return Err(ModulesError::DanglingDep { module: "a selected module".into(), dep: module });
                };
                for d in &line.deps {
                    if !dep_lines.contains_key(d.as_str()) {
                        return Err(ModulesError::DanglingDep { module: module.clone(), dep: d.clone() });
                    }
                }
                line.deps.clone()
            } else {
                let data = self.read_module(&module)?;
                let info = elf::modinfo(&data)
                    .map_err(|e| ModulesError::NotModule { path: self.dir.join(&module), source: Some(e) })?;
                cache.insert(module.clone(), data);
                let mut deps = Vec::new();
                for (_, value) in info.iter().filter(|(k, _)| k == "depends") {
                    for dep in value.split(',').map(str::trim).filter(|d| !d.is_empty()) {
                        let dep = normalize_name(dep);
                        if let Some(p) = index.get(&dep) {
                            deps.push(p.clone());
                        } else if !builtin.contains(&dep) {
                            return Err(ModulesError::MissingDep { module: module_name(&module), dep });
                        }
                    }
                }
                deps
            };
            queue.extend(deps.iter().cloned());
            direct.insert(module, deps);
        }

        // The new modules.dep, with decompressed file names.
        let plain = |p: &str| split_compression(p).0;
        let entries: Vec<DepEntry> = match &self.dep {
            Some(dep) => dep
                .entries
                .iter()
                .filter(|e| direct.contains_key(&e.path))
                .map(|e| DepEntry { path: plain(&e.path), deps: e.deps.iter().map(|d| plain(d)).collect() })
                .collect(),
            None => direct
                .keys()
                .map(|m| {
                    Ok(DepEntry { path: plain(m), deps: depmod_order(m, &direct)?.iter().map(|d| plain(d)).collect() })
                })
                .collect::<Result<_, ModulesError>>()?,
        };

        let mut files = Vec::new();
        for module in direct.keys() {
            let data = match cache.remove(module) {
                Some(d) => d,
                None => self.read_module(module)?,
            };
            files.push((plain(module), data));
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));

        Ok(Selection {
            version: self.version.clone(),
            modules_dep: ModulesDep { entries }.render(),
            modules_builtin,
            files,
            notes,
        })
    }
}

/// All transitive dependencies of `module`, ordered like depmod: every module
/// comes before its own dependencies, so loading from the end is safe.
fn depmod_order(module: &str, direct: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>, ModulesError> {
    fn visit(
        m: &str,
        direct: &BTreeMap<String, Vec<String>>,
        state: &mut HashMap<String, bool>,
        post: &mut Vec<String>,
    ) -> Result<(), ModulesError> {
        match state.get(m) {
            Some(true) => return Ok(()),
            Some(false) => return Err(ModulesError::Cycle { module: module_name(m) }),
            None => {}
        }
        state.insert(m.to_owned(), false);
        let mut deps: Vec<&String> = direct.get(m).map(|d| d.iter().collect()).unwrap_or_default();
        deps.sort();
        deps.dedup();
        for d in deps {
            visit(d, direct, state, post)?;
        }
        state.insert(m.to_owned(), true);
        post.push(m.to_owned());
        Ok(())
    }
    let mut state = HashMap::new();
    let mut post = Vec::new();
    visit(module, direct, &mut state, &mut post)?;
    post.pop(); // the module itself comes last in post-order
    post.reverse();
    Ok(post)
}

/// Collects module files (`*.ko`, `*.ko.{xz,zst,gz}`) under `dir`, relative
/// paths with `/` separators, without following symlinks.
fn walk_modules(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), ModulesError> {
    let mut entries: Vec<_> = fs::read_dir(dir).map_err(io_err(dir))?.collect::<Result<_, _>>().map_err(io_err(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().into_string().map_err(|_| ModulesError::NotUtf8 { path: path.clone() })?;
        let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        let ft = entry.file_type().map_err(io_err(&path))?;
        if ft.is_dir() {
            walk_modules(&path, &rel, out)?;
        } else if ft.is_file() && split_compression(&name).0.ends_with(".ko") {
            out.push(rel);
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::elf::testutil::fake_module;
    use std::collections::BTreeSet;
    use std::io::Write;

    /// The newest Debian cloud kernel's module tree and its version. `make deps`
    /// installs it; without it the tests that read real modules fail and say so
    /// (the version is not pinned: Debian bumps its ABI number with updates).
    pub(crate) fn real_tree() -> (PathBuf, String) {
        let version = fs::read_dir("/lib/modules")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|v| v.ends_with("-cloud-amd64") && Path::new("/lib/modules").join(v).join("modules.dep").exists())
            .max()
            .expect("no Debian cloud kernel modules in /lib/modules: run `make deps` (linux-image-cloud-amd64)");
        (Path::new("/lib/modules").join(&version), version)
    }

    fn write(path: &Path, data: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A tree: a -> b -> c, d (compressed) -> c, e-x standalone, builtin f.
    fn fake_tree(root: &Path) -> PathBuf {
        let v = root.join("lib/modules/9.9.9-test");
        write(&v.join("kernel/a/a.ko"), &fake_module("a", &["b"]));
        write(&v.join("kernel/b/b.ko"), &fake_module("b", &["c"]));
        write(&v.join("kernel/c/c.ko"), &fake_module("c", &[]));
        write(&v.join("kernel/d/d.ko.xz"), &xz(&fake_module("d", &["c"])));
        write(&v.join("kernel/e/e-x.ko.gz"), &gz(&fake_module("e_x", &[])));
        write(&v.join("modules.builtin"), b"kernel/fs/f.ko\n");
        v
    }

    fn write_dep(v: &Path) {
        write(
            &v.join("modules.dep"),
            b"kernel/a/a.ko: kernel/b/b.ko kernel/c/c.ko\n\
              kernel/b/b.ko: kernel/c/c.ko\n\
              kernel/c/c.ko:\n\
              kernel/d/d.ko.xz: kernel/c/c.ko\n\
              kernel/e/e-x.ko.gz:\n",
        );
    }

    fn names(sel: &Selection) -> Vec<&str> {
        sel.files.iter().map(|f| f.0.as_str()).collect()
    }

    #[test]
    fn parse_and_render_roundtrip() {
        let text = "kernel/a.ko: kernel/b.ko kernel/c.ko\nkernel/b.ko:\nkernel/c.ko:\n";
        let dep = ModulesDep::parse(text, Path::new("x")).unwrap();
        assert_eq!(dep.entries.len(), 3);
        assert_eq!(dep.render(), text);
        assert!(matches!(
            ModulesDep::parse("no colon here\n", Path::new("x")),
            Err(ModulesError::MalformedDep { line: 1, .. })
        ));
        assert!(matches!(ModulesDep::parse("../evil.ko:\n", Path::new("x")), Err(ModulesError::UnsafePath { .. })));
        assert!(matches!(
            ModulesDep::parse("/lib/modules/x/a.ko:\n", Path::new("x")),
            Err(ModulesError::UnsafePath { .. })
        ));
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("kernel/net/vmw_vsock/vsock.ko.xz"), "vsock");
        assert_eq!(module_name("kernel/x/intel-uncore.ko"), "intel_uncore");
        assert_eq!(normalize_name("vmw-vsock-virtio-transport"), "vmw_vsock_virtio_transport");
    }

    #[test]
    fn closure_from_modules_dep_with_decompression() {
        let tmp = tempfile::tempdir().unwrap();
        let v = fake_tree(tmp.path());
        write_dep(&v);
        let tree = open(&v).unwrap();
        assert_eq!(tree.version(), "9.9.9-test");
        let sel = tree.select(&["a".into(), "d".into(), "e_x".into()]).unwrap();
        assert_eq!(
            names(&sel),
            ["kernel/a/a.ko", "kernel/b/b.ko", "kernel/c/c.ko", "kernel/d/d.ko", "kernel/e/e-x.ko"]
        );
        assert_eq!(
            sel.modules_dep,
            "kernel/a/a.ko: kernel/b/b.ko kernel/c/c.ko\n\
             kernel/b/b.ko: kernel/c/c.ko\n\
             kernel/c/c.ko:\n\
             kernel/d/d.ko: kernel/c/c.ko\n\
             kernel/e/e-x.ko:\n"
        );
        // Compressed modules were decompressed.
        let d = &sel.files.iter().find(|f| f.0 == "kernel/d/d.ko").unwrap().1;
        assert_eq!(d, &fake_module("d", &["c"]));
        assert_eq!(sel.modules_builtin.as_deref(), Some(&b"kernel/fs/f.ko\n"[..]));

        // Only b: b and c, and only their lines.
        let sel = tree.select(&["b".into()]).unwrap();
        assert_eq!(names(&sel), ["kernel/b/b.ko", "kernel/c/c.ko"]);
        assert_eq!(sel.modules_dep, "kernel/b/b.ko: kernel/c/c.ko\nkernel/c/c.ko:\n");

        // '-' and '_' are the same.
        let sel = tree.select(&["e-x".into()]).unwrap();
        assert_eq!(names(&sel), ["kernel/e/e-x.ko"]);
    }

    #[test]
    fn root_dir_and_version_discovery() {
        let tmp = tempfile::tempdir().unwrap();
        let v = fake_tree(tmp.path());
        // No modules.dep yet: a directory source needs one.
        let err = open(tmp.path()).unwrap_err();
        assert!(matches!(err, ModulesError::MissingModulesDep { .. }), "{err}");
        assert!(err.to_string().contains("depmod"));
        write_dep(&v);
        let tree = open(tmp.path()).unwrap();
        assert_eq!(tree.version(), "9.9.9-test");
        // A second version is ambiguous.
        fs::create_dir_all(tmp.path().join("usr/lib/modules/1.2.3")).unwrap();
        let err = open(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("1.2.3, 9.9.9-test"), "{err}");
        // A directory with nothing relevant.
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(open(empty.path()), Err(ModulesError::NoModulesTree { .. })));
        assert!(matches!(open(&empty.path().join("nope")), Err(ModulesError::SourceMissing { .. })));
        let file = empty.path().join("plain");
        fs::write(&file, b"hello").unwrap();
        assert!(matches!(open(&file), Err(ModulesError::UnknownSource { .. })));
    }

    #[test]
    fn builtin_default_and_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let v = fake_tree(tmp.path());
        write_dep(&v);
        let tree = open(&v).unwrap();
        // Builtin: skipped with a note, even when explicit.
        let sel = tree.select(&["f".into(), "c".into()]).unwrap();
        assert_eq!(names(&sel), ["kernel/c/c.ko"]);
        assert_eq!(sel.notes.len(), 1);
        assert!(sel.notes[0].contains("built into"), "{:?}", sel.notes);
        // Explicit missing modules: an error naming all of them.
        let err = tree.select(&["nope".into(), "a".into(), "gone".into()]).unwrap_err();
        assert_eq!(err.to_string(), "module(s) not found in kernel 9.9.9-test: nope, gone");
        // The default list finds none of these fake modules: silently empty.
        let sel = tree.select(&[]).unwrap();
        assert!(sel.files.is_empty());
        assert_eq!(sel.modules_dep, "");
        assert!(tree.select(&["a/b".into()]).is_err());
    }

    #[test]
    fn dangling_dependency_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let v = fake_tree(tmp.path());
        write(&v.join("modules.dep"), b"kernel/a/a.ko: kernel/zz.ko\n");
        let err = open(&v).unwrap().select(&["a".into()]).unwrap_err();
        assert!(matches!(err, ModulesError::DanglingDep { .. }), "{err}");
    }

    #[test]
    fn non_elf_module_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let v = tmp.path().join("1.0");
        write(&v.join("kernel/a.ko"), b"not elf");
        write(&v.join("modules.dep"), b"kernel/a.ko:\n");
        let err = open(&v).unwrap().select(&["a".into()]).unwrap_err();
        assert!(matches!(err, ModulesError::NotModule { .. }), "{err}");
    }

    #[test]
    fn depmod_order_puts_dependents_first() {
        let mut direct = BTreeMap::new();
        direct.insert("p".to_string(), vec!["l".to_string(), "v".to_string(), "r".to_string()]);
        direct.insert("v".to_string(), vec!["r".to_string()]);
        direct.insert("l".to_string(), vec![]);
        direct.insert("r".to_string(), vec![]);
        let order = depmod_order("p", &direct).unwrap();
        let pos = |m: &str| order.iter().position(|x| x == m).unwrap();
        assert_eq!(order.len(), 3);
        assert!(pos("v") < pos("r"), "v depends on r, so r is loaded first (listed later)");
        direct.insert("r".to_string(), vec!["p".to_string()]);
        assert!(matches!(depmod_order("p", &direct), Err(ModulesError::Cycle { .. })));
    }

    /// Builds a .deb (ar: debian-binary, control.tar.xz, data.tar.<codec>) whose
    /// data holds `files` (path, contents); directories are added for parents.
    pub(crate) fn make_deb(out: &Path, files: &[(&str, Vec<u8>)], codec: Option<Codec>) {
        let mut tar = tar::Builder::new(Vec::new());
        let mut dirs = BTreeSet::new();
        for (path, _) in files {
            let mut p = Path::new(path).parent();
            while let Some(d) = p {
                if !d.as_os_str().is_empty() && d != Path::new(".") {
                    dirs.insert(d.to_owned());
                }
                p = d.parent();
            }
        }
        for d in &dirs {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_cksum();
            tar.append_data(&mut h, format!("{}/", d.display()), io::empty()).unwrap();
        }
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_cksum();
            tar.append_data(&mut h, path, &data[..]).unwrap();
        }
        // A symlink, as kernel packages have (build -> ...): must be ignored.
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_cksum();
        tar.append_link(&mut h, "./lib/modules/9.9.9-test/build", "/usr/src/x").unwrap();
        let data_tar = tar.into_inner().unwrap();
        let (name, data) = match codec {
            None => ("data.tar", data_tar),
            Some(Codec::Xz) => ("data.tar.xz", xz(&data_tar)),
            Some(Codec::Gzip) => ("data.tar.gz", gz(&data_tar)),
            Some(Codec::Zstd) => ("data.tar.zst", zstd::encode_all(&data_tar[..], 3).unwrap()),
        };
        let mut ar = ar::Builder::new(fs::File::create(out).unwrap());
        let control = xz(&tar::Builder::new(Vec::new()).into_inner().unwrap());
        for (id, bytes) in [("debian-binary", b"2.0\n".to_vec()), ("control.tar.xz", control), (name, data)] {
            ar.append(&ar::Header::new(id.as_bytes().to_vec(), bytes.len() as u64), &bytes[..]).unwrap();
        }
    }

    pub(crate) fn fake_deb_files() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("./boot/vmlinuz-9.9.9-test", b"kernel".to_vec()),
            (
                "./lib/modules/9.9.9-test/kernel/drivers/virtio/virtio.ko.xz",
                xz(&fake_module("virtio", &["virtio_ring"])),
            ),
            ("./lib/modules/9.9.9-test/kernel/drivers/virtio/virtio_ring.ko.xz", xz(&fake_module("virtio_ring", &[]))),
            (
                "./lib/modules/9.9.9-test/kernel/drivers/virtio/virtio_pci.ko.xz",
                xz(&fake_module("virtio_pci", &["virtio", "virtio_ring", "virtio_pci_modern_dev"])),
            ),
            (
                "./lib/modules/9.9.9-test/kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz",
                xz(&fake_module("virtio_pci_modern_dev", &[])),
            ),
            (
                "./lib/modules/9.9.9-test/kernel/drivers/block/virtio_blk.ko.xz",
                xz(&fake_module("virtio_blk", &["virtio", "virtio_ring"])),
            ),
            ("./lib/modules/9.9.9-test/kernel/fs/unrelated.ko.xz", xz(&fake_module("unrelated", &[]))),
            ("./lib/modules/9.9.9-test/modules.builtin", b"kernel/fs/ext4/ext4.ko\n".to_vec()),
        ]
    }

    #[test]
    fn deb_without_modules_dep_uses_modinfo() {
        for codec in [Some(Codec::Xz), Some(Codec::Zstd), Some(Codec::Gzip), None] {
            let tmp = tempfile::tempdir().unwrap();
            let deb = tmp.path().join("linux-image-9.9.9-test_1_amd64.deb");
            make_deb(&deb, &fake_deb_files(), codec);
            let tree = open(&deb).unwrap();
            assert_eq!(tree.version(), "9.9.9-test");
            assert!(!tree.has_modules_dep());
            let sel = tree.select(&[]).unwrap();
            assert_eq!(
                names(&sel),
                [
                    "kernel/drivers/block/virtio_blk.ko",
                    "kernel/drivers/virtio/virtio.ko",
                    "kernel/drivers/virtio/virtio_pci.ko",
                    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                    "kernel/drivers/virtio/virtio_ring.ko",
                ],
                "{codec:?}"
            );
            assert_eq!(
                sel.modules_dep,
                "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
                 kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
                 kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
                 kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n\
                 kernel/drivers/virtio/virtio_ring.ko:\n"
            );
            assert!(sel.notes.iter().any(|n| n.contains("ext4")), "{:?}", sel.notes);
            assert!(sel.files.iter().all(|f| elf::is_elf(&f.1)));
        }
    }

    #[test]
    fn bad_debs() {
        let tmp = tempfile::tempdir().unwrap();
        let deb = tmp.path().join("x.deb");
        // A package without any module tree.
        make_deb(&deb, &[("./usr/bin/hello", b"hi".to_vec())], Some(Codec::Xz));
        assert!(matches!(open(&deb), Err(ModulesError::NoModulesInPackage { .. })));
        // An ar archive without data.tar.
        let mut ar = ar::Builder::new(fs::File::create(&deb).unwrap());
        ar.append(&ar::Header::new(b"debian-binary".to_vec(), 4), &b"2.0\n"[..]).unwrap();
        drop(ar);
        assert!(matches!(open(&deb), Err(ModulesError::NoDataTar { .. })));
        // Truncated archive.
        let mut bytes = b"!<arch>\n".to_vec();
        bytes.extend(b"data.tar.xz     0           0     0     100644  999       `\n");
        bytes.extend(b"\xfd7zXZ\0");
        fs::write(&deb, bytes).unwrap();
        assert!(open(&deb).is_err());
    }

    #[test]
    fn real_tree_virtio_pci_closure() {
        let (dir, version) = real_tree();
        let tree = open(&dir).unwrap();
        assert_eq!(tree.version(), version);
        let sel = tree.select(&["virtio-pci".into()]).unwrap();
        let mut got: Vec<String> = sel.files.iter().map(|f| module_name(&f.0)).collect();
        got.sort();
        assert_eq!(got, ["virtio", "virtio_pci", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_ring"]);
        assert!(sel.modules_dep.contains(
            "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko \
             kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko \
             kernel/drivers/virtio/virtio_ring.ko\n"
        ));

        // The default list: ext4 is built in, 9p/virtio_rng absent on the cloud kernel.
        let sel = tree.select(&[]).unwrap();
        assert!(sel.notes.iter().any(|n| n.contains("ext4")), "{:?}", sel.notes);
        let got: BTreeSet<String> = sel.files.iter().map(|f| module_name(&f.0)).collect();
        for m in ["virtio_pci", "virtio_blk", "vmw_vsock_virtio_transport", "vsock", "virtiofs", "fuse", "overlay"] {
            assert!(got.contains(m), "{m} missing from {got:?}");
        }
        // Every dependency named in the new modules.dep is shipped.
        let dep = ModulesDep::parse(&sel.modules_dep, Path::new("new")).unwrap();
        let shipped: BTreeSet<&str> = sel.files.iter().map(|f| f.0.as_str()).collect();
        for e in &dep.entries {
            assert!(shipped.contains(e.path.as_str()));
            for d in &e.deps {
                assert!(shipped.contains(d.as_str()), "{d}");
            }
        }
        assert_eq!(dep.entries.len(), sel.files.len());
    }
}
