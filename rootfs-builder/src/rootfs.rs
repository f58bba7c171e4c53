//! Bootable root file system disk images (ext4 or erofs) for `root=/dev/vda`:
//! Kata's image alternative to an initrd.
//!
//! The tree is the initrd's ([`initrd::assemble_with`]) with the agent at
//! `/sbin/init` and no `/dev/console` node (the kernel mounts devtmpfs on
//! `/dev` of a disk root, CONFIG_DEVTMPFS_MOUNT). It is written to a private
//! staging directory and handed to `mkfs.ext4 -d` or `mkfs.erofs`.
//!
//! Reproducibility: the file system UUID (and ext4's directory hash seed) is
//! derived from the tree's content, every timestamp is `SOURCE_DATE_EPOCH`
//! (or 0), and every owner is root. mkfs.ext4 copies ctime and owner from the
//! staging files, so a `debugfs` pass rewrites them on every inode; both tools
//! run with `E2FSPROGS_FAKE_TIME` so superblock times are fixed too.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::archive::{Archive, NodeKind};
use crate::initrd::{self, InitSource, InitrdError, InitrdSpec, Layout, ModulesRequest};

/// Path of the init executable in a root file system image.
pub const INIT_PATH: &str = "sbin/init";
/// Bytes per MiB.
const MIB: u64 = 1024 * 1024;
/// ext4 block size used for images and for size estimates.
const BLOCK: u64 = 4096;
/// Inodes 1..=10 are reserved in ext4 (bad blocks, root, journal, resize, ...).
const RESERVED_INODES: u32 = 10;
/// Offset of the primary ext4 superblock and its size.
const SB_OFFSET: u64 = 1024;
const SB_LEN: usize = 1024;

/// The file system of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Read-write ext4 (`mkfs.ext4`, e2fsprogs).
    Ext4,
    /// Read-only, compact erofs (`mkfs.erofs`, erofs-utils).
    Erofs,
}

impl Format {
    /// The `rootfstype=` name.
    pub fn name(self) -> &'static str {
        match self {
            Format::Ext4 => "ext4",
            Format::Erofs => "erofs",
        }
    }

    /// The kernel command line that boots an image of this format from `/dev/vda`.
    pub fn kernel_cmdline(self) -> String {
        let mode = match self {
            Format::Ext4 => "rw",
            Format::Erofs => "ro",
        };
        format!("root=/dev/vda {mode} rootfstype={} init=/{INIT_PATH}", self.name())
    }
}

/// Everything that determines the image's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsSpec {
    /// The agent binary, installed as `/sbin/init`.
    pub agent: PathBuf,
    pub busybox: Option<PathBuf>,
    pub modules: Option<ModulesRequest>,
    pub format: Format,
    /// ext4 image size in MiB; `None` computes it from the content.
    pub size_mib: Option<u64>,
    /// Timestamp of every inode (from `SOURCE_DATE_EPOCH`, else 0).
    pub mtime: u32,
}

/// Errors while building a root file system image.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Tree(#[from] InitrdError),
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    #[error("{tool} not found: apt-get install {package}")]
    ToolMissing { tool: &'static str, package: &'static str },
    #[error("cannot run {tool}")]
    ToolSpawn { tool: &'static str, source: io::Error },
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed { tool: &'static str, status: std::process::ExitStatus, stderr: String },
    #[error("--size applies to ext4 only; erofs images are exactly as large as their content")]
    SizeWithErofs,
    #[error("--size {size} MiB is too small: the content needs about {needed} MiB")]
    SizeTooSmall { size: u64, needed: u64 },
    #[error("/{path} is a device node, which a root file system image does not carry")]
    DeviceNode { path: String },
    #[error("cannot stage the tree in {path}")]
    Stage { path: PathBuf, source: io::Error },
    #[error("output path {path} is a directory or has no file name")]
    OutputNotFile { path: PathBuf },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: io::Error },
}

/// A written image.
#[derive(Debug)]
pub struct Built {
    /// Size of the image file in bytes.
    pub size: u64,
    /// Entries in the tree (the root directory and lost+found not counted).
    pub entries: usize,
    /// The file system UUID.
    pub uuid: String,
    pub notes: Vec<String>,
}

/// Builds the tree for `spec`: the initrd's skeleton, `/sbin/init`, busybox, modules.
pub fn assemble(spec: &RootfsSpec) -> Result<initrd::Image, RootfsError> {
    let tree_spec = InitrdSpec {
        init: InitSource::Agent(spec.agent.clone()),
        busybox: spec.busybox.clone(),
        modules: spec.modules.clone(),
        compression: crate::compress::Compression::None,
        mtime: spec.mtime,
    };
    Ok(initrd::assemble_with(&tree_spec, Layout { init_path: INIT_PATH, console: false })?)
}

/// 64-bit FNV-1a of `data`, starting from `basis`.
fn fnv1a(basis: u64, data: &[u8]) -> u64 {
    data.iter().fold(basis, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// A version-4-shaped UUID derived from the tree's content (its newc
/// serialisation), so equal trees get equal UUIDs and different trees differ.
pub fn content_uuid(tree: &Archive, mtime: u32, format: Format) -> Result<String, RootfsError> {
    let mut data = tree.to_newc(mtime).map_err(InitrdError::from)?;
    data.extend_from_slice(format.name().as_bytes());
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&fnv1a(0xcbf2_9ce4_8422_2325, &data).to_be_bytes());
    b[8..].copy_from_slice(&fnv1a(0x6c62_272e_07bb_0142, &data).to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
}

/// ext4 size in MiB for `tree`: content (in 4 KiB blocks) + 30% + 16 MiB.
pub fn ext4_size_mib(tree: &Archive) -> u64 {
    let content: u64 = tree
        .iter()
        .map(|(_, node)| match &node.kind {
            NodeKind::File(d) => (d.len() as u64).div_ceil(BLOCK).max(1) * BLOCK,
            _ => BLOCK,
        })
        .sum();
    (content + content * 3 / 10).div_ceil(MIB) + 16
}

/// Writes `tree` under `root` (which must exist): directories, files and
/// symlinks with the tree's modes; the umask is not consulted.
pub fn stage(tree: &Archive, root: &Path) -> Result<(), RootfsError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| RootfsError::Stage { path, source }
    };
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).map_err(err(root))?;
    // The tree iterates parents before children.
    for (rel, node) in tree.iter() {
        let path = root.join(rel);
        match &node.kind {
            NodeKind::Dir => fs::create_dir(&path).map_err(err(&path))?,
            NodeKind::File(data) => fs::write(&path, data).map_err(err(&path))?,
            NodeKind::Symlink(target) => std::os::unix::fs::symlink(target, &path).map_err(err(&path))?,
            NodeKind::CharDevice { .. } => return Err(RootfsError::DeviceNode { path: rel.to_owned() }),
        }
        if !matches!(node.kind, NodeKind::Symlink(_)) {
            fs::set_permissions(&path, fs::Permissions::from_mode(node.perm)).map_err(err(&path))?;
        }
    }
    Ok(())
}

/// Finds `tool` on `PATH` or in the sbin directories (often missing from a
/// user's `PATH`, and where e2fsprogs installs).
fn find_tool(tool: &'static str, package: &'static str) -> Result<PathBuf, RootfsError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(tool))
        .find(|p| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
        .ok_or(RootfsError::ToolMissing { tool, package })
}

fn run(tool: &'static str, package: &'static str, args: &[&OsStr], mtime: u32) -> Result<(), RootfsError> {
    let bin = find_tool(tool, package)?;
    let output = Command::new(bin)
        .args(args)
        .env("E2FSPROGS_FAKE_TIME", mtime.to_string())
        .env("SOURCE_DATE_EPOCH", mtime.to_string())
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| RootfsError::ToolSpawn { tool, source })?;
    if !output.status.success() {
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        }
        return Err(RootfsError::ToolFailed { tool, status: output.status, stderr });
    }
    Ok(())
}

/// The debugfs script that makes every inode's owner and times deterministic:
/// the reserved inodes (journal, resize, ...), the root, lost+found and the tree.
fn debugfs_fixups(tree: &Archive, mtime: u32) -> String {
    let mut script = String::new();
    let paths = (1..=RESERVED_INODES)
        .map(|n| format!("<{n}>"))
        .chain(["/".to_owned(), "/lost+found".to_owned()])
        .chain(tree.iter().map(|(p, _)| format!("/{p}")));
    for path in paths {
        for (field, value) in [
            ("uid", "0".to_owned()),
            ("gid", "0".to_owned()),
            ("atime", format!("@{mtime}")),
            ("mtime", format!("@{mtime}")),
            ("ctime", format!("@{mtime}")),
            ("crtime", format!("@{mtime}")),
        ] {
            let path = if path.starts_with('<') { path.clone() } else { format!("\"{path}\"") };
            script.push_str(&format!("sif {path} {field} {value}\n"));
        }
    }
    script
}

fn mkfs_ext4(
    tree: &Archive,
    staging: &Path,
    img: &Path,
    uuid: &str,
    size_mib: u64,
    mtime: u32,
) -> Result<(), RootfsError> {
    // No backup superblocks (sparse_super2, num_backup_sb=0): only the primary
    // carries the write and creation times that `pin_superblock_times` rewrites.
    let extended = format!("root_owner=0:0,hash_seed={uuid},lazy_itable_init=0,nodiscard,num_backup_sb=0");
    let size = format!("{size_mib}M");
    let args: Vec<&OsStr> = vec![
        "-q".as_ref(),
        "-F".as_ref(),
        "-t".as_ref(),
        "ext4".as_ref(),
        "-b".as_ref(),
        "4096".as_ref(),
        "-I".as_ref(),
        "256".as_ref(),
        "-m".as_ref(),
        "0".as_ref(),
        "-O".as_ref(),
        "sparse_super2".as_ref(),
        "-L".as_ref(),
        "wisp-rootfs".as_ref(),
        "-U".as_ref(),
        uuid.as_ref(),
        "-E".as_ref(),
        extended.as_ref(),
        "-d".as_ref(),
        staging.as_os_str(),
        img.as_os_str(),
        size.as_ref(),
    ];
    run("mkfs.ext4", "e2fsprogs", &args, mtime)?;
    let script = staging.with_extension("debugfs");
    fs::write(&script, debugfs_fixups(tree, mtime))
        .map_err(|source| RootfsError::Stage { path: script.clone(), source })?;
    run("debugfs", "e2fsprogs", &["-w".as_ref(), "-f".as_ref(), script.as_os_str(), img.as_os_str()], mtime)?;
    pin_superblock_times(img, mtime)
}

/// CRC-32C (Castagnoli), as ext4 uses it: `crc` in, raw register out (no final xor).
fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    crc
}

/// Sets the superblock's mount, write, check and creation times to `mtime` and
/// fixes its checksum. e2fsprogs before 1.47.1 stamps these with the wall clock
/// whatever `E2FSPROGS_FAKE_TIME` says; they are the last non-reproducible bytes.
pub fn fix_superblock_times(sb: &mut [u8], mtime: u32) -> Result<(), &'static str> {
    if sb.len() != SB_LEN || sb[0x38..0x3a] != [0x53, 0xef] {
        return Err("no ext4 superblock magic");
    }
    // s_mtime, s_wtime, s_lastcheck, s_mkfs_time; then their _hi bytes.
    for off in [0x2c, 0x30, 0x40, 0x108] {
        sb[off..off + 4].copy_from_slice(&mtime.to_le_bytes());
    }
    for off in [0x274, 0x275, 0x276, 0x277] {
        sb[off] = 0;
    }
    let ro_compat = u32::from_le_bytes([sb[0x64], sb[0x65], sb[0x66], sb[0x67]]);
    const METADATA_CSUM: u32 = 0x400;
    if ro_compat & METADATA_CSUM != 0 {
        let sum = crc32c(!0, &sb[..0x3fc]);
        sb[0x3fc..].copy_from_slice(&sum.to_le_bytes());
    }
    Ok(())
}

fn pin_superblock_times(img: &Path, mtime: u32) -> Result<(), RootfsError> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let err = |source| RootfsError::Write { path: img.to_owned(), source };
    let mut f = fs::OpenOptions::new().read(true).write(true).open(img).map_err(err)?;
    let mut sb = vec![0u8; SB_LEN];
    f.seek(SeekFrom::Start(SB_OFFSET)).map_err(err)?;
    f.read_exact(&mut sb).map_err(err)?;
    fix_superblock_times(&mut sb, mtime)
        .map_err(|why| err(io::Error::new(io::ErrorKind::InvalidData, format!("mkfs.ext4 output: {why}"))))?;
    f.seek(SeekFrom::Start(SB_OFFSET)).map_err(err)?;
    f.write_all(&sb).map_err(err)?;
    Ok(())
}

fn mkfs_erofs(staging: &Path, img: &Path, uuid: &str, mtime: u32) -> Result<(), RootfsError> {
    let t = format!("-T{mtime}");
    let u = format!("-U{uuid}");
    let args: Vec<&OsStr> = vec![
        "--quiet".as_ref(),
        t.as_ref(),
        u.as_ref(),
        "--all-root".as_ref(),
        "-x-1".as_ref(),
        img.as_os_str(),
        staging.as_os_str(),
    ];
    run("mkfs.erofs", "erofs-utils", &args, mtime)
}

/// Builds the image for `spec` and writes it to `out` atomically: the image is
/// made in a temporary file next to `out` and renamed; on error nothing is left.
pub fn build(spec: &RootfsSpec, out: &Path) -> Result<Built, RootfsError> {
    let not_file = || RootfsError::OutputNotFile { path: out.to_owned() };
    let name = out.file_name().ok_or_else(not_file)?;
    crate::output::check_owner(out)?;
    if out.is_dir() || out.as_os_str().to_string_lossy().ends_with('/') {
        return Err(not_file());
    }
    if spec.format == Format::Erofs && spec.size_mib.is_some() {
        return Err(RootfsError::SizeWithErofs);
    }
    let image = assemble(spec)?;
    let tree = &image.archive;
    let size_mib = match (spec.format, spec.size_mib) {
        (Format::Ext4, Some(size)) => {
            let needed = ext4_size_mib(tree) - 16 + 2;
            if size < needed {
                return Err(RootfsError::SizeTooSmall { size, needed });
            }
            size
        }
        _ => ext4_size_mib(tree),
    };
    let uuid = content_uuid(tree, spec.mtime, spec.format)?;

    let scratch = crate::output::scratch("rootfs-builder.")
        .map_err(|source| RootfsError::Stage { path: std::env::temp_dir(), source })?;
    let staging = scratch.path().join("tree");
    fs::create_dir(&staging).map_err(|source| RootfsError::Stage { path: staging.clone(), source })?;
    stage(tree, &staging)?;

    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| RootfsError::Write { path, source }
    };
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let tmp = tempfile::Builder::new().prefix(&prefix).suffix(".tmp").tempfile_in(dir).map_err(write_err(dir))?;
    match spec.format {
        Format::Ext4 => mkfs_ext4(tree, &staging, tmp.path(), &uuid, size_mib, spec.mtime)?,
        Format::Erofs => mkfs_erofs(&staging, tmp.path(), &uuid, spec.mtime)?,
    }
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644)).map_err(write_err(tmp.path()))?;
    // mkfs wrote through its own descriptor; reopen to sync what it wrote.
    let file = fs::File::open(tmp.path()).map_err(write_err(tmp.path()))?;
    file.sync_all().map_err(write_err(tmp.path()))?;
    let size = file.metadata().map_err(write_err(tmp.path()))?.len();
    tmp.persist(out).map_err(|e| RootfsError::Write { path: out.to_owned(), source: e.error })?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(Built { size, entries: tree.len(), uuid, notes: image.notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(dir: &Path) -> PathBuf {
        let p = dir.join("agent");
        fs::write(&p, crate::elf::testutil::build(2, None, None)).unwrap();
        p
    }

    fn spec(agent: PathBuf, format: Format) -> RootfsSpec {
        RootfsSpec { agent, busybox: None, modules: None, format, size_mib: None, mtime: 0 }
    }

    #[test]
    fn tree_has_sbin_init_and_no_console() {
        let tmp = tempfile::tempdir().unwrap();
        let image = assemble(&spec(agent(tmp.path()), Format::Ext4)).unwrap();
        let a = &image.archive;
        assert_eq!(a.get("sbin/init").unwrap().perm, 0o755);
        assert!(!a.contains("init"));
        assert!(!a.contains("dev/console"));
        for d in initrd::BASE_DIRS {
            assert_eq!(a.get(d).unwrap().kind, NodeKind::Dir);
        }
        assert_eq!(a.get("tmp").unwrap().perm, 0o1777);
    }

    #[test]
    fn cmdlines() {
        assert_eq!(Format::Ext4.kernel_cmdline(), "root=/dev/vda rw rootfstype=ext4 init=/sbin/init");
        assert_eq!(Format::Erofs.kernel_cmdline(), "root=/dev/vda ro rootfstype=erofs init=/sbin/init");
    }

    #[test]
    fn uuid_follows_content() {
        let mut a = Archive::new();
        a.add_file("sbin/init", 0o755, b"x".to_vec()).unwrap();
        let u1 = content_uuid(&a, 0, Format::Ext4).unwrap();
        assert_eq!(u1, content_uuid(&a, 0, Format::Ext4).unwrap());
        assert_eq!(u1.len(), 36);
        assert_eq!(&u1[14..15], "4");
        assert_ne!(u1, content_uuid(&a, 1, Format::Ext4).unwrap());
        assert_ne!(u1, content_uuid(&a, 0, Format::Erofs).unwrap());
        a.add_dir("etc", 0o755).unwrap();
        assert_ne!(u1, content_uuid(&a, 0, Format::Ext4).unwrap());
    }

    #[test]
    fn size_estimate() {
        let mut a = Archive::new();
        a.add_dir("etc", 0o755).unwrap();
        assert_eq!(ext4_size_mib(&a), 17);
        a.add_file("big", 0o644, vec![0; 10 * MIB as usize]).unwrap();
        assert_eq!(ext4_size_mib(&a), 13 + 16 + 1);
    }

    #[test]
    fn staging_keeps_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = Archive::new();
        a.add_dir("tmp", 0o1777).unwrap();
        a.add_file("sbin/init", 0o755, b"x".to_vec()).unwrap();
        a.add_symlink("bin/sh", "/bin/busybox").unwrap();
        stage(&a, tmp.path()).unwrap();
        let mode = |p: &str| fs::symlink_metadata(tmp.path().join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(mode("sbin/init"), 0o755);
        assert_eq!(fs::read_link(tmp.path().join("bin/sh")).unwrap(), Path::new("/bin/busybox"));

        let mut d = Archive::new();
        d.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        let err = stage(&d, &tmp.path().join("tmp")).unwrap_err();
        assert!(matches!(err, RootfsError::DeviceNode { .. }), "{err}");
    }

    #[test]
    fn bad_requests_leave_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out").join("root.img");
        fs::create_dir(tmp.path().join("out")).unwrap();
        let mut s = spec(tmp.path().join("missing"), Format::Ext4);
        assert!(matches!(build(&s, &out), Err(RootfsError::Tree(InitrdError::InitMissing { .. }))));
        s.agent = agent(tmp.path());
        s.format = Format::Erofs;
        s.size_mib = Some(64);
        assert!(matches!(build(&s, &out), Err(RootfsError::SizeWithErofs)));
        s.format = Format::Ext4;
        s.size_mib = Some(1);
        assert!(matches!(build(&s, &out), Err(RootfsError::SizeTooSmall { .. })));
        assert_eq!(fs::read_dir(tmp.path().join("out")).unwrap().count(), 0);
    }

    #[test]
    fn crc32c_check_value() {
        assert_eq!(!crc32c(!0, b"123456789"), 0xe306_9283);
    }

    #[test]
    fn superblock_times_pinned() {
        let mut sb = vec![0xaa; SB_LEN];
        assert!(fix_superblock_times(&mut sb, 5).is_err());
        sb[0x38..0x3a].copy_from_slice(&[0x53, 0xef]);
        sb[0x64..0x68].copy_from_slice(&0x400u32.to_le_bytes());
        fix_superblock_times(&mut sb, 5).unwrap();
        assert_eq!(sb[0x30..0x34], 5u32.to_le_bytes());
        assert_eq!(sb[0x108..0x10c], 5u32.to_le_bytes());
        assert_eq!(sb[0x275], 0);
        assert_eq!(sb[0x3fc..], crc32c(!0, &sb[..0x3fc]).to_le_bytes());
    }

    #[test]
    fn missing_tool_names_the_package() {
        let err = find_tool("mkfs.no-such-fs", "no-such-utils").unwrap_err();
        assert_eq!(err.to_string(), "mkfs.no-such-fs not found: apt-get install no-such-utils");
    }
}
