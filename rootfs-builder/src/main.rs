//! `rootfs-builder` binary: parses arguments, reads the environment
//! (`SOURCE_DATE_EPOCH`), runs the library, and reports. Errors get context
//! here (anyhow) and are printed with their whole source chain; exit code 1.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use rootfs_builder::cli::{BundleArgs, Cli, Command, InitrdArgs, OciImageArgs, RootfsArgs};
use rootfs_builder::progress::Progress;
use rootfs_builder::{bundle, initrd, oci_image, rootfs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Initrd(args) => run_initrd(args),
        Command::Rootfs(args) => run_rootfs(args),
        Command::Bundle(args) => run_bundle(args),
        Command::OciImage(args) => run_oci_image(args),
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

fn run_bundle(args: &BundleArgs) -> anyhow::Result<()> {
    let spec = args.to_spec();
    let mut progress = Progress::new("bundle");
    let built = bundle::build(&spec, &mut progress)
        .with_context(|| format!("cannot build bundle {}", spec.output.display()))?;
    for note in &built.notes {
        eprintln!("rootfs-builder: {note}");
    }
    let argv = built.spec.process().as_ref().and_then(|p| p.args().clone()).unwrap_or_default();
    eprintln!("rootfs-builder: wrote bundle {} (process: {})", built.dir.display(), argv.join(" "));
    eprintln!("rootfs-builder: run it with:");
    println!("ctr run --rm --runtime io.containerd.runc.v2 --config {} ID", built.dir.join("config.json").display());
    Ok(())
}

fn run_oci_image(args: &OciImageArgs) -> anyhow::Result<()> {
    let out = &args.output;
    let mtime = initrd::source_date_epoch(std::env::var_os("SOURCE_DATE_EPOCH").as_deref())
        .context("cannot choose the timestamp for image entries")?;
    let reference = oci_image::Reference::parse(&args.name)?;
    let mut tree = bundle::busybox_tree(&args.busybox())?;
    let added = args
        .added_files()
        .map_err(|pair| anyhow::anyhow!("--add-file {pair:?}: expected HOST:PATH with an absolute PATH"))?;
    for (host, path) in added {
        let data = std::fs::read(&host).with_context(|| format!("cannot read --add-file {}", host.display()))?;
        tree.add_file(&path, 0o755, data).with_context(|| format!("cannot add {path} to the image"))?;
    }
    let spec = oci_image::ImageSpec {
        reference: reference.clone(),
        cmd: if args.args.is_empty() { vec!["sh".to_owned()] } else { args.args.clone() },
        env: vec![bundle::DEFAULT_PATH.to_owned()],
        mtime,
    };
    let mut progress = Progress::new("compressing the layer");
    progress.step("compressing the layer");
    let built = oci_image::build(&tree, &spec).with_context(|| format!("cannot build image {}", out.display()))?;
    progress.step("writing the image");
    initrd::write_atomic(out, &built.bytes).with_context(|| format!("cannot write image {}", out.display()))?;
    progress.finish();
    eprintln!(
        "rootfs-builder: wrote {}: {} ({}, manifest {}, layer {})",
        out.display(),
        reference.full(),
        size(built.bytes.len()),
        built.manifest_digest,
        size(usize::try_from(built.layer_size).unwrap_or(usize::MAX))
    );
    eprintln!(
        "rootfs-builder: import and run it with (or: docker load -i {0} && docker run --rm {1}):",
        out.display(),
        reference.familiar()
    );
    println!("ctr images import {} && ctr run --rm {} ID", out.display(), reference.full());
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
