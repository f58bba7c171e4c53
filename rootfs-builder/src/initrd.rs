//! Assembling a complete initrd: the fixed skeleton every image needs, `/init`,
//! the optional busybox and kernel modules, then serialisation, compression and
//! an atomic write of the result.
//!
//! The skeleton exists because the kernel opens `/dev/console` *before* it
//! runs `/init` (without the node PID 1 starts with no stdin/stdout/stderr),
//! and PID 1 needs mount points for proc, sys, dev, run and tmp.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::archive::{Archive, ArchiveError};
use crate::busybox::{self, BusyboxError};
use crate::compress::{self, CompressError, Compression};
use crate::elf::{self, Elf, ElfError};
use crate::modules::{self, ModulesError};

/// Directories every image has, mode 0755 (`/tmp` is added separately as 1777).
pub const BASE_DIRS: &[&str] = &["dev", "proc", "sys", "run", "tmp", "etc", "root"];
/// `/dev/console`: character device 5:1, mode 0600.
pub const CONSOLE: (&str, u32, u32, u32) = ("dev/console", 0o600, 5, 1);

/// What becomes `/init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitSource {
    /// The guest agent: must be an ELF executable.
    Agent(PathBuf),
    /// Any file, e.g. a shell script for a boot-time baseline.
    File(PathBuf),
}

impl InitSource {
    fn path(&self) -> &Path {
        match self {
            InitSource::Agent(p) | InitSource::File(p) => p,
        }
    }

    fn what(&self) -> &'static str {
        match self {
            InitSource::Agent(_) => "agent binary",
            InitSource::File(_) => "init file",
        }
    }
}

/// Which kernel modules to include.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModulesRequest {
    /// A module tree directory, a root containing `lib/modules/<version>`, or a `.deb`.
    pub from: PathBuf,
    /// Module names; empty means [`modules::DEFAULT_MODULES`].
    pub names: Vec<String>,
}

/// Everything that determines the image's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitrdSpec {
    pub init: InitSource,
    /// Path of a static busybox to include, if any.
    pub busybox: Option<PathBuf>,
    pub modules: Option<ModulesRequest>,
    pub compression: Compression,
    /// Timestamp of every entry (from `SOURCE_DATE_EPOCH`, else 0).
    pub mtime: u32,
}

/// Errors while building an initrd.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    #[error("{what} {path} not found")]
    InitMissing { what: &'static str, path: PathBuf },
    #[error("cannot read {what} {path}")]
    InitRead { what: &'static str, path: PathBuf, source: io::Error },
    #[error("{what} {path} is not a regular file")]
    InitNotFile { what: &'static str, path: PathBuf },
    #[error("{what} {path} is empty")]
    InitEmpty { what: &'static str, path: PathBuf },
    #[error("agent {path} is not an ELF executable (use --init to put a script or other file at /init)")]
    AgentNotElf {
        path: PathBuf,
        #[source]
        source: Option<ElfError>,
    },
    #[error(
        "SOURCE_DATE_EPOCH={value:?} is not valid: expected whole seconds since 1970 \
         as a decimal integer from 0 to 4294967295"
    )]
    BadSourceDateEpoch { value: String },
    #[error("output path {path} is a directory or has no file name")]
    OutputNotFile { path: PathBuf },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Busybox(#[from] BusyboxError),
    #[error(transparent)]
    Modules(#[from] ModulesError),
    #[error(transparent)]
    Compress(#[from] CompressError),
}

/// Parses `SOURCE_DATE_EPOCH`: unset means 0; anything but a decimal number
/// that fits the 32-bit cpio mtime field is an error (never silently ignored).
pub fn source_date_epoch(value: Option<&OsStr>) -> Result<u32, InitrdError> {
    let Some(value) = value else { return Ok(0) };
    let bad = || InitrdError::BadSourceDateEpoch { value: value.to_string_lossy().into_owned() };
    let s = value.to_str().ok_or_else(bad)?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    s.parse::<u32>().map_err(|_| bad())
}

/// An assembled image, before serialisation.
#[derive(Debug)]
pub struct Image {
    pub archive: Archive,
    /// Warnings and notes for the user (one line each).
    pub notes: Vec<String>,
}

/// A serialised and compressed image.
#[derive(Debug)]
pub struct Built {
    /// The compressed archive, ready to write.
    pub bytes: Vec<u8>,
    /// Number of archive entries (excluding the trailer).
    pub entries: usize,
    /// Size of the uncompressed cpio archive.
    pub uncompressed_len: usize,
    pub notes: Vec<String>,
}

fn read_init(source: &InitSource, notes: &mut Vec<String>) -> Result<Vec<u8>, InitrdError> {
    let (path, what) = (source.path(), source.what());
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => InitrdError::InitMissing { what, path: path.to_owned() },
        _ => InitrdError::InitRead { what, path: path.to_owned(), source: e },
    })?;
    if !meta.is_file() {
        return Err(InitrdError::InitNotFile { what, path: path.to_owned() });
    }
    let data = fs::read(path).map_err(|source| InitrdError::InitRead { what, path: path.to_owned(), source })?;
    if data.is_empty() {
        return Err(InitrdError::InitEmpty { what, path: path.to_owned() });
    }
    let dynamic_note = |interp: String| {
        format!(
            "warning: {} is dynamically linked (interpreter {interp}); the initrd has no loader \
             or shared libraries, so /init will fail to start (build it with -C target-feature=+crt-static)",
            path.display()
        )
    };
    match source {
        InitSource::Agent(_) => {
            let elf =
                Elf::parse(&data).map_err(|e| InitrdError::AgentNotElf { path: path.to_owned(), source: Some(e) })?;
            if !elf.is_executable_type() {
                return Err(InitrdError::AgentNotElf { path: path.to_owned(), source: None });
            }
            if let Ok(Some(interp)) = elf.interpreter() {
                notes.push(dynamic_note(interp));
            }
        }
        InitSource::File(_) => {
            if elf::is_elf(&data) {
                if let Ok(Some(interp)) = Elf::parse(&data).and_then(|e| e.interpreter()) {
                    notes.push(dynamic_note(interp));
                }
            } else if !data.starts_with(b"#!") {
                notes.push(format!(
                    "warning: {} is neither an ELF executable nor a #! script; the kernel cannot run it as /init",
                    path.display()
                ));
            }
        }
    }
    Ok(data)
}

/// The interpreter path of a `#!` script, if `data` is one.
fn shebang_interpreter(data: &[u8]) -> Option<String> {
    let rest = data.strip_prefix(b"#!")?;
    let line = rest.split(|&b| b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    line.split_whitespace().next().map(str::to_owned)
}

/// Where the tree puts its init, and whether it needs a `/dev/console` node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Path of the init executable, relative to `/`.
    pub init_path: &'static str,
    /// Whether to add the [`CONSOLE`] node (an initramfs needs it; a disk root
    /// gets devtmpfs mounted on /dev by the kernel instead).
    pub console: bool,
}

impl Layout {
    /// An initramfs: `/init` and `/dev/console`.
    pub const INITRD: Layout = Layout { init_path: "init", console: true };
}

/// Builds the image tree for `spec`.
pub fn assemble(spec: &InitrdSpec) -> Result<Image, InitrdError> {
    assemble_with(spec, Layout::INITRD)
}

/// Builds the image tree for `spec` with init and console as `layout` says;
/// shared by the initrd and the disk-image (`rootfs`) builders.
pub fn assemble_with(spec: &InitrdSpec, layout: Layout) -> Result<Image, InitrdError> {
    let mut archive = Archive::new();
    let mut notes = Vec::new();
    for dir in BASE_DIRS {
        archive.add_dir(dir, if *dir == "tmp" { 0o1777 } else { 0o755 })?;
    }
    if layout.console {
        let (console, perm, major, minor) = CONSOLE;
        archive.add_char_device(console, perm, major, minor)?;
    }

    let init = read_init(&spec.init, &mut notes)?;
    let interpreter = shebang_interpreter(&init);
    archive.add_file(layout.init_path, 0o755, init)?;

    if let Some(path) = &spec.busybox {
        let bb = busybox::load(path)?;
        for skipped in bb.install(&mut archive)? {
            notes.push(format!("busybox applet /{skipped} not linked: that path is already in the image"));
        }
    }

    if let Some(req) = &spec.modules {
        let tree = modules::open(&req.from)?;
        let sel = tree.select(&req.names)?;
        notes.extend(sel.notes.iter().map(|n| format!("note: {n}")));
        let base = format!("lib/modules/{}", sel.version);
        archive.add_dir(&base, 0o755)?;
        archive.add_file(&format!("{base}/modules.dep"), 0o644, sel.modules_dep.clone().into_bytes())?;
        if let Some(builtin) = sel.modules_builtin {
            archive.add_file(&format!("{base}/modules.builtin"), 0o644, builtin)?;
        }
        if sel.files.is_empty() {
            notes.push(format!(
                "note: no modules selected from {} (all built in or absent); modules.dep is empty",
                req.from.display()
            ));
        }
        for (rel, data) in sel.files {
            archive.add_file(&format!("{base}/{rel}"), 0o644, data)?;
        }
    }

    if let Some(interp) = interpreter {
        if !archive.contains(&interp) {
            notes.push(format!(
                "warning: /{} is a script for {interp}, which is not in the image (add --busybox?)",
                layout.init_path
            ));
        }
    }
    Ok(Image { archive, notes })
}

/// Assembles, serialises and compresses the image for `spec`.
pub fn build(spec: &InitrdSpec) -> Result<Built, InitrdError> {
    let image = assemble(spec)?;
    let cpio = image.archive.to_newc(spec.mtime)?;
    let bytes = compress::compress(&cpio, spec.compression)?;
    Ok(Built { bytes, entries: image.archive.len(), uncompressed_len: cpio.len(), notes: image.notes })
}

/// Writes `bytes` to `out` atomically: a temporary file in the same directory
/// is written, synced and renamed over `out`; on any error nothing is left.
pub fn write_atomic(out: &Path, bytes: &[u8]) -> Result<(), InitrdError> {
    let not_file = || InitrdError::OutputNotFile { path: out.to_owned() };
    let name = out.file_name().ok_or_else(not_file)?;
    crate::output::check_owner(out)?;
    if out.is_dir() || out.as_os_str().to_string_lossy().ends_with('/') {
        return Err(not_file());
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| InitrdError::Write { path, source }
    };
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut tmp = tempfile::Builder::new().prefix(&prefix).suffix(".tmp").tempfile_in(dir).map_err(write_err(dir))?;
    tmp.write_all(bytes).map_err(write_err(tmp.path()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644)).map_err(write_err(tmp.path()))?;
    }
    tmp.as_file().sync_all().map_err(write_err(tmp.path()))?;
    tmp.persist(out).map_err(|e| InitrdError::Write { path: out.to_owned(), source: e.error })?;
    // Make the rename durable; failure to sync a directory is not fatal.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::NodeKind;

    fn spec(init: InitSource) -> InitrdSpec {
        InitrdSpec { init, busybox: None, modules: None, compression: Compression::None, mtime: 0 }
    }

    #[test]
    fn epoch_parsing() {
        assert_eq!(source_date_epoch(None).unwrap(), 0);
        assert_eq!(source_date_epoch(Some(OsStr::new("1700000000"))).unwrap(), 1_700_000_000);
        for bad in ["abc", "", "-1", "+5", " 5", "1.5", "4294967296"] {
            let err = source_date_epoch(Some(OsStr::new(bad))).unwrap_err();
            assert!(err.to_string().contains("SOURCE_DATE_EPOCH"), "{bad}: {err}");
        }
    }

    #[test]
    fn skeleton_and_script_init() {
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("floor.sh");
        fs::write(&script, b"#!/bin/sh\necho floor\n").unwrap();
        let image = assemble(&spec(InitSource::File(script))).unwrap();
        let a = &image.archive;
        for d in BASE_DIRS {
            assert_eq!(a.get(d).unwrap().kind, NodeKind::Dir);
        }
        assert_eq!(a.get("tmp").unwrap().perm, 0o1777);
        assert_eq!(a.get("etc").unwrap().perm, 0o755);
        assert_eq!(a.get("dev/console").unwrap().kind, NodeKind::CharDevice { major: 5, minor: 1 });
        assert_eq!(a.get("init").unwrap().perm, 0o755);
        // /bin/sh is not in the image: the user is warned.
        assert!(image.notes.iter().any(|n| n.contains("/bin/sh")), "{:?}", image.notes);
    }

    #[test]
    fn agent_must_be_elf() {
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("agent");
        fs::write(&script, b"#!/bin/sh\n").unwrap();
        let err = assemble(&spec(InitSource::Agent(script.clone()))).unwrap_err();
        assert!(matches!(err, InitrdError::AgentNotElf { .. }), "{err}");
        let err = assemble(&spec(InitSource::Agent(tmp.path().join("nope")))).unwrap_err();
        assert!(matches!(err, InitrdError::InitMissing { .. }), "{err}");
        let err = assemble(&spec(InitSource::Agent(tmp.path().to_owned()))).unwrap_err();
        assert!(matches!(err, InitrdError::InitNotFile { .. }), "{err}");
        fs::write(&script, b"").unwrap();
        let err = assemble(&spec(InitSource::File(script))).unwrap_err();
        assert!(matches!(err, InitrdError::InitEmpty { .. }), "{err}");

        let agent = tmp.path().join("dyn-agent");
        fs::write(&agent, crate::elf::testutil::build(3, Some("/lib/ld.so"), None)).unwrap();
        let image = assemble(&spec(InitSource::Agent(agent))).unwrap();
        assert!(image.notes.iter().any(|n| n.contains("dynamically linked")));
    }

    #[test]
    fn atomic_write() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("initrd.img");
        write_atomic(&out, b"one").unwrap();
        write_atomic(&out, b"two").unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temp files left: {names:?}");
        assert!(matches!(write_atomic(tmp.path(), b"x"), Err(InitrdError::OutputNotFile { .. })));
        assert!(matches!(write_atomic(&tmp.path().join("missing-dir/out"), b"x"), Err(InitrdError::Write { .. })));
    }

    #[test]
    fn modules_go_under_lib_modules_version() {
        let tmp = tempfile::tempdir().unwrap();
        let v = tmp.path().join("lib/modules/1.2.3");
        fs::create_dir_all(v.join("kernel")).unwrap();
        fs::write(v.join("kernel/m.ko"), crate::elf::testutil::fake_module("m", &[])).unwrap();
        fs::write(v.join("modules.dep"), b"kernel/m.ko:\n").unwrap();
        let init = tmp.path().join("init.sh");
        fs::write(&init, b"#!/bin/sh\n").unwrap();
        let mut s = spec(InitSource::File(init));
        s.modules = Some(ModulesRequest { from: tmp.path().to_owned(), names: vec!["m".into()] });
        let image = assemble(&s).unwrap();
        assert!(image.archive.contains("lib/modules/1.2.3/kernel/m.ko"));
        assert_eq!(
            image.archive.get("lib/modules/1.2.3/modules.dep").unwrap().kind,
            NodeKind::File(b"kernel/m.ko:\n".to_vec())
        );
    }
}
