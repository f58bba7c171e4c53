//! Command-line interface. Kept in the library (not `main.rs`) so the argument
//! rules and help texts are unit-tested, and so `main.rs` only wires the parsed
//! arguments to the builder and reports errors.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::bundle::{BundleSpec, DeviceArg, MountArg, Source};
use crate::busybox::DEFAULT_BUSYBOX;
use crate::compress::Compression;
use crate::initrd::{InitSource, InitrdSpec, ModulesRequest};
use crate::rootfs::{Format, RootfsSpec};

/// Builds initrd and root file system images for wisp guests (QEMU, StratoVirt and other VMMs),
/// OCI runtime bundles and local OCI images.
#[derive(Debug, Parser)]
#[command(name = "rootfs-builder", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a reproducible initramfs (newc cpio) whose /init is the agent.
    #[command(long_about = INITRD_ABOUT, after_help = INITRD_AFTER)]
    Initrd(InitrdArgs),
    /// Build a reproducible root file system disk image (ext4 or erofs) whose
    /// /sbin/init is the agent, for booting with root=/dev/vda.
    #[command(long_about = ROOTFS_ABOUT, after_help = ROOTFS_AFTER)]
    Rootfs(RootfsArgs),
    /// Build an OCI runtime bundle (rootfs/ and config.json) from busybox or an image tarball,
    /// for runc, `ctr run --config` or the wisp shim.
    #[command(long_about = BUNDLE_ABOUT, after_help = BUNDLE_AFTER)]
    Bundle(BundleArgs),
    /// Build a local image tarball from busybox that `ctr images import` and `docker load` accept.
    #[command(long_about = OCI_IMAGE_ABOUT, after_help = OCI_IMAGE_AFTER)]
    OciImage(OciImageArgs),
}

/// Where a bundle's or image's root file system comes from (`--from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Recipe {
    /// a static busybox (see --busybox-bin) with a link per applet
    Busybox,
}

const BUNDLE_ABOUT: &str = "\
Build an OCI runtime bundle: DIR/rootfs/ and DIR/config.json in the shape `runc spec`
gives (pid, network, ipc, uts and mount namespaces; the standard mounts; masked and
read-only paths; RLIMIT_NOFILE 1024; default capabilities), with an absolute root.path
so `ctr run --config DIR/config.json ID` and `runc run --bundle DIR ID` both work.

The root file system is a static busybox with its applet links (--from busybox), or the
layers of an image tarball (--from-archive): a docker-archive (`docker save`, with
manifest.json) or an OCI image layout (`ctr images export`, `skopeo copy
oci-archive:`), optionally gzip/zstd/xz compressed; of a multi-platform image the
linux image for this machine's architecture is taken (none is an error); of an archive
holding several images, the one --image names (without it, the build is refused and the
images are listed). Every OCI blob
is checked against its digest. Layers are applied in order with
whiteouts (.wh.NAME deletes, .wh..wh..opq empties a directory). As in containerd, layer
entry names and hard link targets are taken relative to the rootfs (/etc/x and ../etc/x
both write rootfs/etc/x; a note counts names whose '..' climbed above it); symlinks are
created but never followed while writing (an absolute target resolves inside the rootfs);
FIFOs are created; device nodes are skipped; owners and extended attributes (file
capabilities, SELinux labels) are applied when running as root. Nothing is written outside DIR, which must
be new or empty and is removed again if the build fails.

The process defaults to the image's Entrypoint + Cmd, Env, WorkingDir and User (or sh,
runc's PATH, / and root for busybox); every flag overrides its image value.";

const BUNDLE_AFTER: &str = "\
Examples:
  rootfs-builder bundle --from busybox -o /tmp/bb --args echo hello
  ctr run --rm --runtime io.containerd.runc.v2 --config /tmp/bb/config.json demo
  rootfs-builder bundle --from-archive alpine.tar -o /tmp/alpine --env DEBUG=1 --cwd /srv
  rootfs-builder bundle --from-archive saved.tar --image alpine:3.20 -o /tmp/alpine
  rootfs-builder bundle --from busybox -o /tmp/blk --device /dev/vda:b:241:0 \\
      --mount type=tmpfs,dst=/scratch,options=size=64m --readonly --hostname box --user 1000:1000 \\
      --args sh -c 'ls -l /dev/vda'";

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["from", "from_archive"])))]
pub struct BundleArgs {
    /// Root file system from a built-in recipe: `busybox` (the host's static busybox, see
    /// --busybox-bin, with a link per applet and a minimal /etc/passwd). Example: --from busybox
    #[arg(long, value_enum, value_name = "RECIPE")]
    pub from: Option<Recipe>,

    /// Root file system from an image tarball: docker-archive (manifest.json + layer tars) or
    /// OCI image layout (oci-layout + index.json), plain or compressed.
    /// Example: --from-archive alpine.tar (made with `ctr images export alpine.tar docker.io/library/alpine:3.20`)
    #[arg(long, value_name = "IMAGE.tar")]
    pub from_archive: Option<PathBuf>,

    /// The image to take from an archive holding several (`docker save a b`, `ctr images export
    /// out.tar a b`), by a name it lists (manifest.json RepoTags, or index.json's
    /// io.containerd.image.name); `alpine`, `alpine:latest` and docker.io/library/alpine:latest
    /// are one name. Without it such an archive is refused, naming its images.
    /// Example: --image alpine:3.20
    #[arg(long, value_name = "NAME[:TAG]", conflicts_with = "from")]
    pub image: Option<String>,

    /// Busybox binary for --from busybox; must be statically linked [default: /bin/busybox,
    /// from Debian's busybox-static]. Example: --busybox-bin /opt/busybox
    #[arg(long, value_name = "PATH", conflicts_with = "from_archive")]
    pub busybox_bin: Option<PathBuf>,

    /// The bundle directory to create (new or empty, yours); it is made mode 0700 so an image's
    /// set-id files stay out of other users' reach until you move it. Example: -o /tmp/bundle
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: PathBuf,

    #[command(flatten)]
    pub process: ProcessArgs,

    /// Give the process a terminal (process.terminal; run it with `ctr run -t`). Adds TERM=xterm
    /// unless set. Example: --terminal --args sh
    #[arg(long)]
    pub terminal: bool,

    /// Mount the root file system read-only (root.readonly). Example: --readonly
    #[arg(long)]
    pub readonly: bool,

    /// The container's hostname [default: wisp]. Example: --hostname web1
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,

    /// Add a device node and allow it in the device cgroup (repeatable): PATH:TYPE:MAJOR:MINOR
    /// with TYPE b (block) or c (character). Example: --device /dev/vda:b:241:0
    #[arg(long = "device", value_name = "PATH:TYPE:MAJ:MIN")]
    pub devices: Vec<DeviceArg>,

    /// Add a mount (repeatable): type=T,src=S,dst=D[,options=a:b] (options ':'-separated; a
    /// bind mount gets rbind unless told bind). Example: --mount type=bind,src=/data,dst=/data,options=ro
    #[arg(long = "mount", value_name = "SPEC")]
    pub mounts: Vec<MountArg>,
}

/// The process settings shared by `bundle` and `oci-image`.
#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// The complete argv of the process; takes every word after it, so put it last
    /// [default: the image's Entrypoint + Cmd, else sh]. Example: --args sh -c 'echo $HOSTNAME'
    #[arg(long, value_name = "ARG", num_args = 1.., allow_hyphen_values = true)]
    pub args: Vec<String>,

    /// Set an environment variable (repeatable), overriding the image's value of the same
    /// name. Example: --env DEBUG=1 --env LANG=C.UTF-8
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Working directory of the process, absolute [default: the image's WorkingDir, else /].
    /// Example: --cwd /srv
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,

    /// User of the process: UID[:GID], or a name from the image's /etc/passwd [default: the
    /// image's User, else 0:0]. Example: --user 1000:1000
    #[arg(long, value_name = "UID[:GID]")]
    pub user: Option<String>,
}

impl BundleArgs {
    /// The bundle specification for these arguments.
    pub fn to_spec(&self) -> BundleSpec {
        let source = match (&self.from_archive, &self.busybox_bin) {
            (Some(archive), _) => Source::Archive { path: archive.clone(), image: self.image.clone() },
            (None, Some(bin)) => Source::Busybox(bin.clone()),
            (None, None) => Source::Busybox(PathBuf::from(DEFAULT_BUSYBOX)),
        };
        BundleSpec {
            source,
            output: self.output.clone(),
            args: self.process.args.clone(),
            env: self.process.env.clone(),
            terminal: self.terminal,
            readonly: self.readonly,
            hostname: self.hostname.clone(),
            devices: self.devices.clone(),
            mounts: self.mounts.clone(),
            cwd: self.process.cwd.clone(),
            user: self.process.user.clone(),
        }
    }
}

const OCI_IMAGE_ABOUT: &str = "\
Build a local image: one tarball with one gzip layer holding a static busybox and its
applet links, which both `ctr images import` and `docker load` accept, so `ctr run IMAGE ID`
and `docker run IMAGE` work without a registry. It is an OCI image layout (oci-layout,
index.json, blobs/sha256/) and a docker-archive at once: manifest.json names the same config
and layer blobs, as `docker save` writes since Docker 25 (Docker 20.10's `docker load` reads
only manifest.json; containerd prefers index.json). index.json carries the
io.containerd.image.name annotation (the full reference, docker.io/library/NAME:TAG for a
bare NAME:TAG) and org.opencontainers.image.ref.name (the TAG); manifest.json's RepoTags
holds NAME:TAG as docker prints it.

The output is deterministic: entries sorted, owned by root, stamped with
$SOURCE_DATE_EPOCH (or 0); the same inputs always give the same bytes.";

const OCI_IMAGE_AFTER: &str = "\
Examples:
  rootfs-builder oci-image --from busybox --name wisp-busybox:1 -o bb.tar
  ctr images import bb.tar && ctr run --rm docker.io/library/wisp-busybox:1 demo echo hi
  docker load -i bb.tar && docker run --rm wisp-busybox:1 echo hi
  rootfs-builder oci-image --from busybox --name example.com/tools/bb:v2 -o bb.tar --args sh -c 'uname -a'
  rootfs-builder oci-image --from busybox --name wisp-pause:1 --add-file ./pause:/pause -o pause.tar --args /pause";

#[derive(Debug, Args)]
pub struct OciImageArgs {
    /// Root file system recipe: `busybox` (see --busybox-bin). Example: --from busybox
    #[arg(long, value_enum, value_name = "RECIPE")]
    pub from: Recipe,

    /// Busybox binary; must be statically linked [default: /bin/busybox].
    /// Example: --busybox-bin /opt/busybox
    #[arg(long, value_name = "PATH")]
    pub busybox_bin: Option<PathBuf>,

    /// Image reference NAME[:TAG] (TAG defaults to latest; a name without registry lives on
    /// docker.io, one without '/' under library/). Example: --name wisp-busybox:1
    #[arg(long, value_name = "NAME:TAG")]
    pub name: String,

    /// Also put host file HOST at PATH in the image (mode 0755; repeatable). Example:
    /// --add-file target/pause:/pause (with --args /pause: a CRI sandbox image)
    #[arg(long, value_name = "HOST:PATH")]
    pub add_file: Vec<String>,

    /// The image's default command (Cmd); takes every word after it, so put it last
    /// [default: sh]. Example: --args echo hello
    #[arg(long, value_name = "ARG", num_args = 1.., allow_hyphen_values = true)]
    pub args: Vec<String>,

    /// Output tarball. Written atomically: nothing is left behind on error. Example: -o bb.tar
    #[arg(short = 'o', long = "output", value_name = "IMAGE.tar")]
    pub output: PathBuf,
}

impl OciImageArgs {
    /// The busybox binary to use.
    pub fn busybox(&self) -> PathBuf {
        self.busybox_bin.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_BUSYBOX))
    }

    /// The `--add-file` pairs as (host path, image path); `None` names the malformed one.
    pub fn added_files(&self) -> Result<Vec<(PathBuf, String)>, String> {
        self.add_file
            .iter()
            .map(|pair| match pair.split_once(':') {
                Some((host, path)) if !host.is_empty() && path.starts_with('/') => {
                    Ok((PathBuf::from(host), path.to_owned()))
                }
                _ => Err(pair.clone()),
            })
            .collect()
    }
}

const ROOTFS_ABOUT: &str = "\
Build a reproducible root file system disk image (ext4 or erofs) whose /sbin/init is
the wisp agent, attached as a raw virtio-blk disk and booted with root=/dev/vda:
Kata's image alternative to an initrd.

The tree is the initrd's: /dev, /proc, /sys, /run, /etc, /root (0755), /tmp (1777),
plus busybox and kernel modules on request; no /dev/console node (the kernel mounts
devtmpfs on /dev). Everything is owned by root and stamped with $SOURCE_DATE_EPOCH
(or 0), and the file system UUID is derived from the content, so the same inputs
always give the same bytes. Needs mkfs.ext4 and debugfs (e2fsprogs) or mkfs.erofs
(erofs-utils). Prints the kernel command line to boot the image on stdout.";

const ROOTFS_AFTER: &str = "\
Examples:
  rootfs-builder rootfs --agent target/x86_64-unknown-linux-gnu/release/wisp-agent -o rootfs.img
  rootfs-builder rootfs --agent AGENT --busybox --format erofs -o rootfs.erofs
  rootfs-builder rootfs --agent AGENT --modules-from /lib/modules/$(uname -r) --size 128 -o rootfs.img";

#[derive(Debug, Args)]
pub struct RootfsArgs {
    /// Guest agent executable to install as /sbin/init (mode 0755). Must be an ELF
    /// binary, and should be statically linked: the image has no shared libraries.
    #[arg(long, value_name = "BIN")]
    pub agent: PathBuf,

    #[command(flatten)]
    pub content: ContentArgs,

    /// File system of the image: ext4 (read-write) or erofs (read-only, compact).
    #[arg(long, value_enum, value_name = "FS", default_value_t = Format::Ext4)]
    pub format: Format,

    /// ext4 image size in MiB [default: content + 30% + 16 MiB]
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub size: Option<u64>,

    /// Output file. Written atomically: nothing is left behind on error.
    #[arg(short = 'o', long = "output", value_name = "IMG")]
    pub output: PathBuf,
}

impl RootfsArgs {
    /// The build specification for these arguments; `mtime` comes from `SOURCE_DATE_EPOCH`.
    pub fn to_spec(&self, mtime: u32) -> RootfsSpec {
        RootfsSpec {
            agent: self.agent.clone(),
            busybox: self.content.busybox(),
            modules: self.content.modules(),
            format: self.format,
            size_mib: self.size,
            mtime,
        }
    }
}

/// What goes into an image besides its init, shared by `initrd` and `rootfs`.
#[derive(Debug, Args)]
pub struct ContentArgs {
    /// Add a static busybox at /bin/busybox plus a symlink for every applet it
    /// lists (`busybox --list-full`: /bin/sh, /sbin/ifconfig, ...). Never replaces the init.
    #[arg(long)]
    pub busybox: bool,

    /// Busybox binary to use (implies --busybox). Must be statically linked
    /// [default: /bin/busybox, from Debian's busybox-static]
    #[arg(long, value_name = "PATH")]
    pub busybox_bin: Option<PathBuf>,

    /// Kernel modules source: a /lib/modules/<version> directory (with modules.dep),
    /// a root directory containing lib/modules/<version>/, or a Debian kernel
    /// package (.deb). Modules go to /lib/modules/<version>/ with a matching
    /// modules.dep; .ko.xz/.ko.zst/.ko.gz are stored decompressed.
    #[arg(long, value_name = "KERNEL_PKG_OR_DIR")]
    pub modules_from: Option<PathBuf>,

    /// Module to include with its dependencies (repeatable or comma-separated;
    /// '-' and '_' are equivalent). Without it, a virtio guest set is used:
    /// virtio_pci, virtio_mmio, virtio_blk, virtio_scsi, virtio_console, virtio_net,
    /// virtio_rng, vmw_vsock_virtio_transport, 9pnet_virtio, 9p, virtiofs, fuse,
    /// overlay, ext4 (those the kernel lacks are skipped). Built-in modules are
    /// skipped with a note; a named module that does not exist is an error.
    #[arg(long = "module", value_name = "NAME", value_delimiter = ',', requires = "modules_from")]
    pub modules: Vec<String>,
}

impl ContentArgs {
    /// The busybox to install, if any: `--busybox-bin` implies `--busybox`.
    pub fn busybox(&self) -> Option<PathBuf> {
        match (&self.busybox_bin, self.busybox) {
            (Some(bin), _) => Some(bin.clone()),
            (None, true) => Some(PathBuf::from(DEFAULT_BUSYBOX)),
            (None, false) => None,
        }
    }

    /// The modules to install, if a source was given.
    pub fn modules(&self) -> Option<ModulesRequest> {
        self.modules_from.as_ref().map(|from| ModulesRequest { from: from.clone(), names: self.modules.clone() })
    }
}

const INITRD_ABOUT: &str = "\
Build a reproducible initramfs (newc cpio, optionally compressed) whose /init is the
wisp agent or a file of your choice, for booting with -initrd (QEMU) or its
equivalent in other VMMs.

Every image contains /dev, /proc, /sys, /run, /etc, /root (0755), /tmp (1777) and
the /dev/console node (char 5:1, 0600) the kernel opens before starting /init.
All entries are owned by root, sorted, and stamped with $SOURCE_DATE_EPOCH (or 0),
so the same inputs always give the same bytes.";

const INITRD_AFTER: &str = "\
Examples:
  rootfs-builder initrd --agent target/x86_64-unknown-linux-gnu/release/wisp-agent -o initrd.img
  rootfs-builder initrd --agent AGENT --modules-from /lib/modules/$(uname -r) -o initrd.img
  rootfs-builder initrd --agent AGENT --modules-from linux-image-6.1.0-56-cloud-amd64_*.deb \\
      --module virtio_pci --module vmw_vsock_virtio_transport --compress zstd -o initrd.img
  rootfs-builder initrd --init floor.sh --busybox -o floor.img";

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("init_source").required(true).args(["agent", "init"])))]
pub struct InitrdArgs {
    /// Guest agent executable to install as /init (mode 0755). Must be an ELF binary,
    /// and should be statically linked: the image has no shared libraries.
    #[arg(long, value_name = "BIN")]
    pub agent: Option<PathBuf>,

    /// Install an arbitrary FILE as /init (mode 0755) instead of the agent, e.g. a
    /// shell script for a boot-time baseline (combine with --busybox for /bin/sh).
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,

    #[command(flatten)]
    pub content: ContentArgs,

    /// Compression of the image; every choice is accepted by the kernel's initramfs
    /// unpacker (zstd needs CONFIG_RD_ZSTD). gzip is the smallest common choice; `none`
    /// boots fastest (the kernel copies instead of inflating: 40-50 ms less under TCG for
    /// the agent-only initrd), which is what `make initrd` builds.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = Compression::Gzip)]
    pub compress: Compression,

    /// Output file. Written atomically: nothing is left behind on error.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: PathBuf,
}

impl InitrdArgs {
    /// The build specification for these arguments; `mtime` comes from the
    /// environment (`SOURCE_DATE_EPOCH`), which the caller reads.
    pub fn to_spec(&self, mtime: u32) -> InitrdSpec {
        let init = match (&self.agent, &self.init) {
            (Some(agent), _) => InitSource::Agent(agent.clone()),
            (None, Some(file)) => InitSource::File(file.clone()),
            // clap's required group guarantees one of them; this is unreachable
            // for parsed arguments but harmless (the read fails clearly).
            (None, None) => InitSource::Agent(PathBuf::new()),
        };
        InitrdSpec {
            init,
            busybox: self.content.busybox(),
            modules: self.content.modules(),
            compression: self.compress,
            mtime,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `rootfs-builder SUB ARGS...` parsed, and the subcommand's arguments
    /// taken out by `pick` (which only sees the subcommand it asked for).
    fn parse_sub<T>(sub: &str, args: &[&str], pick: fn(Command) -> Option<T>) -> Result<T, clap::Error> {
        let mut full = vec!["rootfs-builder", sub];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).map(|c| pick(c.command).expect("clap parsed the subcommand it was given"))
    }

    fn parse(args: &[&str]) -> Result<InitrdArgs, clap::Error> {
        parse_sub("initrd", args, |c| if let Command::Initrd(a) = c { Some(a) } else { None })
    }

    fn parse_rootfs(args: &[&str]) -> Result<RootfsArgs, clap::Error> {
        parse_sub("rootfs", args, |c| if let Command::Rootfs(a) = c { Some(a) } else { None })
    }

    #[test]
    fn rootfs_options() {
        let s = parse_rootfs(&["--agent", "a", "-o", "x"]).unwrap().to_spec(9);
        assert_eq!(s.format, Format::Ext4);
        assert_eq!((s.size_mib, s.busybox, s.modules, s.mtime), (None, None, None, 9));
        let s = parse_rootfs(&[
            "--agent",
            "a",
            "--busybox",
            "--modules-from",
            "/m",
            "--module",
            "virtio_blk",
            "--format",
            "erofs",
            "-o",
            "x",
        ])
        .unwrap()
        .to_spec(0);
        assert_eq!(s.format, Format::Erofs);
        assert_eq!(s.busybox, Some(PathBuf::from("/bin/busybox")));
        assert_eq!(s.modules.unwrap().names, ["virtio_blk"]);
        assert_eq!(parse_rootfs(&["--agent", "a", "--size", "64", "-o", "x"]).unwrap().size, Some(64));
        assert!(parse_rootfs(&["-o", "x"]).is_err(), "--agent is required");
        assert!(parse_rootfs(&["--agent", "a", "--format", "xfs", "-o", "x"]).is_err());
        assert!(parse_rootfs(&["--agent", "a", "--size", "0", "-o", "x"]).is_err());
        assert!(parse_rootfs(&["--agent", "a", "--module", "m", "-o", "x"]).is_err());
    }

    fn parse_bundle(args: &[&str]) -> Result<BundleArgs, clap::Error> {
        parse_sub("bundle", args, |c| if let Command::Bundle(a) = c { Some(a) } else { None })
    }

    #[test]
    fn bundle_options() {
        let s = parse_bundle(&[
            "--from",
            "busybox",
            "-o",
            "d",
            "--env",
            "A=1",
            "--device",
            "/dev/vda:b:241:0",
            "--mount",
            "type=tmpfs,dst=/t",
            "--user",
            "1:2",
            "--readonly",
            "--args",
            "sh",
            "-c",
            "echo --env",
        ])
        .unwrap()
        .to_spec();
        assert_eq!(s.source, Source::Busybox("/bin/busybox".into()));
        assert_eq!(s.args, ["sh", "-c", "echo --env"], "--args takes everything after it");
        assert_eq!(s.env, ["A=1"]);
        assert_eq!(s.devices.len(), 1);
        assert_eq!(s.mounts[0].destination, "/t");
        assert!(s.readonly && !s.terminal);
        assert_eq!(s.user.as_deref(), Some("1:2"));
        let s = parse_bundle(&["--from-archive", "x.tar", "-o", "d"]).unwrap().to_spec();
        assert_eq!(s.source, Source::Archive { path: "x.tar".into(), image: None });
        let s = parse_bundle(&["--from-archive", "x.tar", "--image", "a:1", "-o", "d"]).unwrap().to_spec();
        assert_eq!(s.source, Source::Archive { path: "x.tar".into(), image: Some("a:1".into()) });
        assert!(parse_bundle(&["--from", "busybox", "--image", "a:1", "-o", "d"]).is_err(), "--image needs an archive");
        assert!(parse_bundle(&["-o", "d"]).is_err(), "a source is required");
        assert!(parse_bundle(&["--from", "busybox", "--from-archive", "x", "-o", "d"]).is_err());
        assert!(parse_bundle(&["--from-archive", "x", "--busybox-bin", "b", "-o", "d"]).is_err());
        assert!(parse_bundle(&["--from", "busybox", "-o", "d", "--device", "vda"]).is_err());
        assert!(parse_bundle(&["--from", "busybox", "-o", "d", "--mount", "dst=/x"]).is_err());
    }

    #[test]
    fn definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exactly_one_init_source() {
        assert!(parse(&["-o", "x"]).is_err());
        assert!(parse(&["--agent", "a", "--init", "b", "-o", "x"]).is_err());
        let a = parse(&["--init", "b", "-o", "x"]).unwrap();
        assert_eq!(a.to_spec(0).init, InitSource::File("b".into()));
    }

    #[test]
    fn defaults_and_options() {
        let a = parse(&["--agent", "a", "-o", "x"]).unwrap();
        let s = a.to_spec(7);
        assert_eq!(s.compression, Compression::Gzip);
        assert_eq!(s.busybox, None);
        assert_eq!(s.modules, None);
        assert_eq!(s.mtime, 7);

        let a = parse(&[
            "--agent",
            "a",
            "--busybox",
            "--modules-from",
            "/m",
            "--module",
            "virtio-pci,9p",
            "--module",
            "fuse",
            "--compress",
            "zstd",
            "--output",
            "x",
        ])
        .unwrap();
        let s = a.to_spec(0);
        assert_eq!(s.busybox, Some(PathBuf::from("/bin/busybox")));
        assert_eq!(s.compression, Compression::Zstd);
        assert_eq!(s.modules.unwrap().names, ["virtio-pci", "9p", "fuse"]);

        let a = parse(&["--agent", "a", "--busybox-bin", "/opt/bb", "-o", "x"]).unwrap();
        assert_eq!(a.to_spec(0).busybox, Some(PathBuf::from("/opt/bb")));
    }

    #[test]
    fn bad_values_rejected() {
        assert!(parse(&["--agent", "a", "--compress", "lz4", "-o", "x"]).is_err());
        assert!(parse(&["--agent", "a", "--module", "x", "-o", "x"]).is_err(), "--module needs --modules-from");
    }
}
