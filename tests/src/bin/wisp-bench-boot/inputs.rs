//! The files the bench reads: what `make` built, checked up front so a missing one fails before
//! any VM boots, and the initrd variants packed here (in `target/bench/`, kept so a number can be
//! reproduced by hand).

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use wisp_tests::{agent_client, artifacts, floor, rootfs_builder};

/// What `make` built.
#[derive(Debug)]
pub struct Inputs {
    pub agent: PathBuf,
    /// The true floor's `/init` (`make floor-init`).
    pub floor_init: PathBuf,
    pub initrd: PathBuf,
    pub busybox_initrd: PathBuf,
    pub cloud_initrd: PathBuf,
    pub kernel: PathBuf,
    pub vmlinux: PathBuf,
}

impl Inputs {
    /// Finds them all, or says to run `make`.
    pub fn find() -> Result<Inputs> {
        // Packs the variants below; found now so its absence fails first.
        artifacts::rootfs_builder()?;
        let target = artifacts::target_dir();
        let inputs = Inputs {
            agent: artifacts::agent()?,
            floor_init: artifacts::floor_init()?,
            initrd: artifacts::initrd()?,
            busybox_initrd: target.join("initrd/wisp-busybox.initrd"),
            cloud_initrd: target.join("initrd/wisp-cloud.initrd"),
            kernel: artifacts::kernel()?,
            vmlinux: artifacts::vmlinux()?,
        };
        ensure!(
            inputs.busybox_initrd.is_file(),
            "the busybox initrd not found at {}: run `make` in {}",
            inputs.busybox_initrd.display(),
            artifacts::workspace_root().display()
        );
        Ok(inputs)
    }
}

/// The initrds packed here.
#[derive(Debug)]
pub struct Packed {
    /// The true floor (`floor-init/`'s `/init` alone), uncompressed: a few KiB, nothing to
    /// decompress.
    pub true_floor_initrd: PathBuf,
    /// The busybox floor ([`floor::FLOOR_INIT`] and busybox), gzip; its script is kept beside it.
    pub floor_initrd: PathBuf,
    /// The agent-only initrd compressed with lz4 (legacy frame, `lz4 -l`, the kernel's format).
    pub lz4_initrd: PathBuf,
    /// The agent-only initrd compressed with xz (CRC32, 1 MiB dictionary, as the kernel's own
    /// `usr/Makefile` packs one).
    pub xz_initrd: PathBuf,
    /// The agent-only initrd compressed with zstd.
    pub zstd_initrd: PathBuf,
    /// The agent-only initrd compressed with gzip (rootfs-builder's default).
    pub gzip_initrd: PathBuf,
    /// A busybox rootfs, shared by 9p with the agent VMs for the container phases.
    pub rootfs: PathBuf,
}

impl Packed {
    /// Packs them into `dir`.
    pub fn build(inputs: &Inputs, dir: &Path) -> Result<Packed> {
        let packed = Packed {
            true_floor_initrd: dir.join("true-floor.cpio"),
            floor_initrd: dir.join("floor.initrd"),
            lz4_initrd: dir.join("wisp-lz4.initrd"),
            xz_initrd: dir.join("wisp-xz.initrd"),
            zstd_initrd: dir.join("wisp-zstd.initrd"),
            gzip_initrd: dir.join("wisp-gzip.initrd"),
            rootfs: dir.join("busybox-rootfs"),
        };
        if !packed.rootfs.join("bin/busybox").is_file() {
            agent_client::busybox_rootfs(&packed.rootfs)
                .with_context(|| format!("building a busybox rootfs in {}", packed.rootfs.display()))?;
        }
        floor::true_floor_initrd("none", &packed.true_floor_initrd)?;
        floor::initrd(&packed.floor_initrd)?;
        let agent_initrd = |compression: &str, out: &Path| {
            let args =
                [OsStr::new("--agent"), inputs.agent.as_os_str(), OsStr::new("--compress"), OsStr::new(compression)];
            rootfs_builder::initrd(args, out)
        };
        agent_initrd("zstd", &packed.zstd_initrd)?;
        agent_initrd("gzip", &packed.gzip_initrd)?;
        // rootfs-builder writes gzip, zstd or nothing: the other formats the kernel reads are
        // packed from make's uncompressed archive with the usual tools, to measure them.
        compress(&inputs.initrd, &packed.lz4_initrd, "lz4", &["-l", "-9", "-c", "-q"])?;
        compress(&inputs.initrd, &packed.xz_initrd, "xz", &["--check=crc32", "--lzma2=dict=1MiB", "-c"])?;
        Ok(packed)
    }
}

/// Runs `tool ARGS < input > output`.
fn compress(input: &Path, output: &Path, tool: &str, args: &[&str]) -> Result<()> {
    let stdin = File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let stdout = File::create(output).with_context(|| format!("creating {}", output.display()))?;
    let status = Command::new(tool)
        .args(args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("running {tool} (make deps installs it)"))?;
    ensure!(status.success(), "{tool} {args:?} < {} failed with {status}", input.display());
    Ok(())
}
