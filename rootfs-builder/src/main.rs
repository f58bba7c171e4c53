//! `rootfs-builder` binary: parses arguments, reads the environment
//! (`SOURCE_DATE_EPOCH`), runs the library, and reports. Errors get context
//! here (anyhow) and are printed with their whole source chain; exit code 1.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use rootfs_builder::cli::{Cli, Command, InitrdArgs, RootfsArgs};
use rootfs_builder::{initrd, rootfs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Initrd(args) => run_initrd(args),
        Command::Rootfs(args) => run_rootfs(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rootfs-builder: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run_initrd(args: &InitrdArgs) -> anyhow::Result<()> {
    let out = &args.output;
    let mtime = initrd::source_date_epoch(std::env::var_os("SOURCE_DATE_EPOCH").as_deref())
        .context("cannot choose the timestamp for archive entries")?;
    let spec = args.to_spec(mtime);
    let built = initrd::build(&spec).with_context(|| format!("cannot build initrd {}", out.display()))?;
    for note in &built.notes {
        eprintln!("rootfs-builder: {note}");
    }
    initrd::write_atomic(out, &built.bytes).with_context(|| format!("cannot write initrd {}", out.display()))?;
    eprintln!(
        "rootfs-builder: wrote {}: {} entries, {} uncompressed, {} {}",
        out.display(),
        built.entries,
        size(built.uncompressed_len),
        size(built.bytes.len()),
        match spec.compression {
            rootfs_builder::compress::Compression::None => "(not compressed)".to_owned(),
            c => format!("{}-compressed", c.name()),
        }
    );
    Ok(())
}

fn run_rootfs(args: &RootfsArgs) -> anyhow::Result<()> {
    let out = &args.output;
    let mtime = initrd::source_date_epoch(std::env::var_os("SOURCE_DATE_EPOCH").as_deref())
        .context("cannot choose the timestamp for file system entries")?;
    let spec = args.to_spec(mtime);
    let built =
        rootfs::build(&spec, out).with_context(|| format!("cannot build root file system {}", out.display()))?;
    for note in &built.notes {
        eprintln!("rootfs-builder: {note}");
    }
    eprintln!(
        "rootfs-builder: wrote {}: {} image, {} entries, {}, UUID {}",
        out.display(),
        spec.format.name(),
        built.entries,
        size(usize::try_from(built.size).unwrap_or(usize::MAX)),
        built.uuid
    );
    eprintln!("rootfs-builder: boot it as a raw virtio-blk disk with this kernel command line:");
    println!("{}", spec.format.kernel_cmdline());
    Ok(())
}

/// Bytes, with a human-readable MiB/KiB figure.
fn size(n: usize) -> String {
    let f = n as f64;
    if f >= 1024.0 * 1024.0 {
        format!("{n} bytes ({:.1} MiB)", f / (1024.0 * 1024.0))
    } else if f >= 1024.0 {
        format!("{n} bytes ({:.1} KiB)", f / 1024.0)
    } else {
        format!("{n} bytes")
    }
}
