//! OCI runtime bundles: a directory with `rootfs/` and a `config.json` that `runc run`,
//! `ctr run --config` and the wisp shim accept.
//!
//! The root file system is either a static busybox with its applet links (the same tree the
//! `initrd --busybox` and `oci-image` builders use) or the layers of an image tarball (see
//! [`crate::image`], applied by [`crate::layer`] without ever writing outside the root).
//!
//! `config.json` starts from what `runc spec` gives (oci-spec's defaults: pid, network, ipc, uts
//! and mount namespaces; proc, dev, devpts, shm, mqueue, sysfs and cgroup mounts; masked and
//! read-only paths; `RLIMIT_NOFILE` 1024; the three default capabilities; no new privileges; a
//! deny-all device cgroup) and `root.path` is absolute, so the bundle works from any working
//! directory and through `ctr run --config`, which copies only config.json.
//!
//! The process comes from, in order of precedence: the flags; the image config (`Entrypoint` +
//! `Cmd` as argv, `Env`, `WorkingDir`, `User`); runc's defaults (`sh`, PATH and TERM, `/`, root).
//! `--args` is the complete argv: it replaces the image's entrypoint and command together.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBuilder, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxResourcesBuilder, Mount,
    MountBuilder, Spec, UserBuilder,
};

use crate::archive::{Archive, ArchiveError};
use crate::busybox::{self, BusyboxError};
use crate::image::{ImageArchive, ImageError, ProcessDefaults};
use crate::initrd::BASE_DIRS;
use crate::layer::{self, Applier, LayerError};
use crate::output;
use crate::progress::Progress;
use crate::rootfs::{self, RootfsError};

/// runc's default PATH.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The hostname when neither flag nor image says.
pub const DEFAULT_HOSTNAME: &str = "wisp";

/// Errors while building a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    #[error("output directory {} exists and is not empty; give a new or empty directory", path.display())]
    OutputNotEmpty { path: PathBuf },
    #[error("cannot create {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bad --device {value:?}: {reason} (expected PATH:TYPE:MAJOR:MINOR, e.g. /dev/vda:b:241:0)")]
    BadDevice { value: String, reason: &'static str },
    #[error("bad --mount {value:?}: {reason} (expected type=T,src=S,dst=D[,options=a:b], e.g. type=bind,src=/data,dst=/data,options=rbind:ro)")]
    BadMount { value: String, reason: String },
    #[error("bad --env {value:?}: expected KEY=VALUE")]
    BadEnv { value: String },
    #[error("bad user {value:?}: {reason} (expected UID[:GID], or a name from the image's /etc/passwd)")]
    BadUser { value: String, reason: &'static str },
    #[error("bad --cwd {value:?}: the working directory must be an absolute path")]
    BadCwd { value: String },
    #[error("cannot read image {}", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: ImageError,
    },
    #[error("cannot apply {layer} of {}", path.display())]
    Layer {
        path: PathBuf,
        layer: String,
        #[source]
        source: Box<LayerError>,
    },
    #[error("cannot describe the container")]
    Spec(#[source] oci_spec::OciSpecError),
    #[error(transparent)]
    Busybox(#[from] BusyboxError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Stage(#[from] RootfsError),
}

/// Where the root file system comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A static busybox binary and its applet links.
    Busybox(PathBuf),
    /// A docker-archive or OCI layout tarball, and the name of the image to take from it
    /// when it holds several.
    Archive { path: PathBuf, image: Option<String> },
}

/// A `--device PATH:TYPE:MAJOR:MINOR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceArg {
    pub path: String,
    pub block: bool,
    pub major: i64,
    pub minor: i64,
}

impl std::str::FromStr for DeviceArg {
    type Err = BundleError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let bad = |reason| BundleError::BadDevice { value: value.to_owned(), reason };
        let parts: Vec<&str> = value.split(':').collect();
        let [path, typ, major, minor] = parts[..] else { return Err(bad("four ':'-separated fields are needed")) };
        if !path.starts_with("/dev/") {
            return Err(bad("the path must be under /dev/"));
        }
        let block = match typ {
            "b" => true,
            "c" => false,
            _ => return Err(bad("the type is b (block) or c (character)")),
        };
        let num = |s: &str| s.parse::<u32>().map(i64::from).map_err(|_| bad("major and minor are numbers"));
        Ok(Self { path: path.to_owned(), block, major: num(major)?, minor: num(minor)? })
    }
}

/// A `--mount type=..,src=..,dst=..[,options=a:b]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountArg {
    pub typ: String,
    pub source: Option<String>,
    pub destination: String,
    pub options: Vec<String>,
}

impl std::str::FromStr for MountArg {
    type Err = BundleError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| BundleError::BadMount { value: value.to_owned(), reason };
        let (mut typ, mut source, mut destination, mut options) = (None, None, None, Vec::new());
        for field in value.split(',') {
            let (k, v) = field.split_once('=').ok_or_else(|| bad(format!("field {field:?} is not key=value")))?;
            match k {
                "type" => typ = Some(v.to_owned()),
                "src" | "source" => source = Some(v.to_owned()),
                "dst" | "destination" | "target" => destination = Some(v.to_owned()),
                "options" => options = v.split(':').filter(|o| !o.is_empty()).map(str::to_owned).collect(),
                other => return Err(bad(format!("unknown key {other:?}"))),
            }
        }
        let typ = typ.ok_or_else(|| bad("type= is missing".into()))?;
        let destination = destination.ok_or_else(|| bad("dst= is missing".into()))?;
        if !destination.starts_with('/') {
            return Err(bad("dst must be an absolute path".into()));
        }
        if typ == "bind" && source.is_none() {
            return Err(bad("a bind mount needs src=".into()));
        }
        if typ == "bind" && !options.iter().any(|o| o == "bind" || o == "rbind") {
            options.insert(0, "rbind".into());
        }
        Ok(Self { typ, source, destination, options })
    }
}

/// Everything `bundle` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleSpec {
    pub source: Source,
    pub output: PathBuf,
    /// The complete argv; empty means the image's (or `sh`).
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs, overriding the image's by key.
    pub env: Vec<String>,
    pub terminal: bool,
    pub readonly: bool,
    pub hostname: Option<String>,
    pub devices: Vec<DeviceArg>,
    pub mounts: Vec<MountArg>,
    pub cwd: Option<String>,
    /// `UID[:GID]`; the image's `User` otherwise.
    pub user: Option<String>,
}

/// A built bundle.
#[derive(Debug, Clone)]
pub struct Built {
    /// The absolute bundle directory.
    pub dir: PathBuf,
    /// The config written to `config.json`.
    pub spec: Spec,
    /// Things the user should know.
    pub notes: Vec<String>,
}

/// The busybox userland tree shared by bundles and OCI images: the base directories, the
/// binary with its applet links, and a minimal `/etc/passwd` and `/etc/group`.
pub fn busybox_tree(busybox_bin: &Path) -> Result<Archive, BundleError> {
    let mut tree = Archive::new();
    for dir in BASE_DIRS {
        tree.add_dir(dir, if *dir == "tmp" { 0o1777 } else { 0o755 })?;
    }
    busybox::load(busybox_bin)?.install(&mut tree)?;
    tree.add_file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n".to_vec(),
    )?;
    tree.add_file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n".to_vec())?;
    Ok(tree)
}

/// Makes `dir` ready: refused if another user owns it or it holds anything, created if
/// missing, made private (`output::TREE_MODE`) either way. Returns whether it was created here
/// (so a failed build removes it again).
fn prepare_output(dir: &Path) -> Result<bool, BundleError> {
    output::check_owner(dir)?;
    let created = match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BundleError::OutputNotEmpty { path: dir.to_owned() });
            }
            false
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(output::TREE_MODE)
                .create(dir)
                .map_err(|source| BundleError::Create { path: dir.to_owned(), source })?;
            true
        }
        Err(source) => return Err(BundleError::Create { path: dir.to_owned(), source }),
    };
    output::make_private(dir)?;
    Ok(created)
}

/// Builds the bundle; on error nothing is left in the output directory.
pub fn build(spec: &BundleSpec, progress: &mut Progress) -> Result<Built, BundleError> {
    let created = prepare_output(&spec.output)?;
    let result = build_in(spec, progress);
    if result.is_err() {
        if created {
            let _ = fs::remove_dir_all(&spec.output);
        } else {
            let _ = fs::remove_dir_all(spec.output.join("rootfs"));
            let _ = fs::remove_file(spec.output.join("config.json"));
        }
    }
    result
}

fn build_in(spec: &BundleSpec, progress: &mut Progress) -> Result<Built, BundleError> {
    let create = |path: &Path| {
        let path = path.to_owned();
        move |source| BundleError::Create { path, source }
    };
    let dir = fs::canonicalize(&spec.output).map_err(create(&spec.output))?;
    let root = dir.join("rootfs");
    fs::create_dir(&root).map_err(create(&root))?;
    let mut notes = Vec::new();
    let defaults = match &spec.source {
        Source::Busybox(bin) => {
            rootfs::stage(&busybox_tree(bin)?, &root)?;
            ProcessDefaults::default()
        }
        Source::Archive { path, image } => {
            let image = ImageArchive::open(path, image.as_deref())
                .map_err(|source| BundleError::Image { path: path.clone(), source })?;
            let mut applier = Applier::new(&root, layer::running_as_root());
            let count = image.layers.len();
            for (i, layer) in image.layers.iter().enumerate() {
                let layer_err = |source| BundleError::Layer {
                    path: path.clone(),
                    layer: layer.name.clone(),
                    source: Box::new(source),
                };
                progress.step(format!("extracting layer {}/{count}", i + 1));
                let reader =
                    image.layer_reader(layer).map_err(|source| BundleError::Image { path: path.clone(), source })?;
                applier.apply(&layer.name, progress.reader(reader)).map_err(layer_err)?;
            }
            progress.finish();
            let report = applier.finish();
            notes.push(format!(
                "applied {count} layer(s) of the {} {}: {} entries, {} whiteout(s)",
                image.format,
                path.display(),
                report.entries,
                report.whiteouts
            ));
            notes.extend(report.notes);
            if count == 0 {
                notes.push("note: the image has no layers, so the root file system is empty".into());
            }
            let defaults = &image.defaults;
            if spec.args.is_empty() && defaults.entrypoint.iter().chain(&defaults.cmd).all(Vec::is_empty) {
                notes.push(
                    "note: the image gives no Entrypoint or Cmd and --args is not given; the process is sh".into(),
                );
            }
            image.defaults.clone()
        }
    };
    let config = runtime_spec(spec, &defaults, &root)?;
    let json = serde_json::to_vec_pretty(&config).map_err(|e| BundleError::Spec(e.into()))?;
    let config_path = dir.join("config.json");
    crate::initrd::write_atomic(&config_path, &json)
        .map_err(|e| BundleError::Create { path: config_path.clone(), source: io::Error::other(e) })?;
    Ok(Built { dir, spec: config, notes })
}

/// The fields of the first line of `root`/etc/`file` (passwd or group) that `matches`; a
/// symlinked or missing file counts as empty, so nothing outside the image is read.
fn etc_entry(root: &Path, file: &str, matches: impl Fn(&[&str]) -> bool) -> Option<Vec<String>> {
    let path = root.join("etc").join(file);
    if !fs::symlink_metadata(&path).ok()?.is_file() {
        return None;
    }
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && matches(f))
        .map(|f| f.into_iter().map(str::to_owned).collect())
}

/// Resolves a user name or `UID[:GID]` against the image's /etc/passwd and /etc/group.
fn resolve_user(value: &str, root: &Path) -> Result<(u32, u32), BundleError> {
    let bad = |reason| BundleError::BadUser { value: value.to_owned(), reason };
    let (user, group) = match value.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (value, None),
    };
    if user.is_empty() {
        return Err(bad("the user is empty"));
    }
    let field = |f: &Option<Vec<String>>, i: usize| f.as_ref().and_then(|f| f.get(i)?.parse::<u32>().ok());
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => {
            let entry = etc_entry(root, "passwd", |f| f[2].parse() == Ok(uid));
            (uid, field(&entry, 3).unwrap_or(uid))
        }
        Err(_) => {
            let entry = etc_entry(root, "passwd", |f| f[0] == user);
            let uid = field(&entry, 2).ok_or_else(|| bad("no such user in the image's /etc/passwd"))?;
            (uid, field(&entry, 3).unwrap_or(uid))
        }
    };
    let gid = match group {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => field(&etc_entry(root, "group", |f| f[0] == g), 2)
                .ok_or_else(|| bad("no such group in the image's /etc/group"))?,
        },
    };
    Ok((uid, gid))
}

/// Merges `overrides` (`KEY=VALUE`) into `base` by key, keeping base's order.
fn merge_env(base: &[String], overrides: &[String]) -> Result<Vec<String>, BundleError> {
    let mut env: Vec<String> = base.to_vec();
    for o in overrides {
        let Some((key, _)) = o.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(BundleError::BadEnv { value: o.clone() });
        };
        match env.iter_mut().find(|e| e.split_once('=').map(|(k, _)| k) == Some(key)) {
            Some(slot) => *slot = o.clone(),
            None => env.push(o.clone()),
        }
    }
    Ok(env)
}

/// The runtime config for `spec`, with `defaults` from the image and the absolute `root`.
pub fn runtime_spec(spec: &BundleSpec, defaults: &ProcessDefaults, root: &Path) -> Result<Spec, BundleError> {
    let mut config = Spec::default();
    let mut process = config.process().clone().unwrap_or_default();

    let args = if !spec.args.is_empty() {
        spec.args.clone()
    } else {
        let mut argv = defaults.entrypoint.clone().unwrap_or_default();
        argv.extend(defaults.cmd.clone().unwrap_or_default());
        if argv.is_empty() {
            vec!["sh".to_owned()]
        } else {
            argv
        }
    };
    process.set_args(Some(args));

    let mut base_env = defaults.env.clone().unwrap_or_default();
    if !base_env.iter().any(|e| e.starts_with("PATH=")) {
        base_env.insert(0, DEFAULT_PATH.to_owned());
    }
    if spec.terminal && !base_env.iter().any(|e| e.starts_with("TERM=")) {
        base_env.push("TERM=xterm".to_owned());
    }
    process.set_env(Some(merge_env(&base_env, &spec.env)?));
    process.set_terminal(Some(spec.terminal));

    let cwd = spec.cwd.clone().or_else(|| defaults.working_dir.clone().filter(|w| !w.is_empty())).unwrap_or("/".into());
    if !cwd.starts_with('/') {
        return Err(BundleError::BadCwd { value: cwd });
    }
    process.set_cwd(cwd.into());

    let user = spec.user.clone().or_else(|| defaults.user.clone().filter(|u| !u.is_empty()));
    if let Some(user) = user {
        let (uid, gid) = resolve_user(&user, root)?;
        process.set_user(UserBuilder::default().uid(uid).gid(gid).build().map_err(BundleError::Spec)?);
    }
    config.set_process(Some(process));

    let mut root_cfg = config.root().clone().unwrap_or_default();
    root_cfg.set_path(root.to_owned());
    root_cfg.set_readonly(Some(spec.readonly));
    config.set_root(Some(root_cfg));
    config.set_hostname(Some(spec.hostname.clone().unwrap_or_else(|| DEFAULT_HOSTNAME.to_owned())));

    let mut mounts: Vec<Mount> = config.mounts().clone().unwrap_or_default();
    for m in &spec.mounts {
        let mut b = MountBuilder::default().destination(&m.destination).typ(&m.typ);
        if let Some(src) = &m.source {
            b = b.source(src);
        }
        if !m.options.is_empty() {
            b = b.options(m.options.clone());
        }
        mounts.push(b.build().map_err(BundleError::Spec)?);
    }
    config.set_mounts(Some(mounts));

    // runc spec's device cgroup: deny everything but what the runtime adds, then the devices.
    let mut rules =
        vec![LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().map_err(BundleError::Spec)?];
    let mut devices = Vec::new();
    for d in &spec.devices {
        let typ = if d.block { LinuxDeviceType::B } else { LinuxDeviceType::C };
        devices.push(
            LinuxDeviceBuilder::default()
                .path(&d.path)
                .typ(typ)
                .major(d.major)
                .minor(d.minor)
                .file_mode(0o660u32)
                .uid(0u32)
                .gid(0u32)
                .build()
                .map_err(BundleError::Spec)?,
        );
        rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(typ)
                .major(d.major)
                .minor(d.minor)
                .access("rwm")
                .build()
                .map_err(BundleError::Spec)?,
        );
    }
    let defaults_linux = config.linux().clone().unwrap_or_default();
    let mut linux = LinuxBuilder::default()
        .namespaces(defaults_linux.namespaces().clone().unwrap_or_default())
        .masked_paths(defaults_linux.masked_paths().clone().unwrap_or_default())
        .readonly_paths(defaults_linux.readonly_paths().clone().unwrap_or_default())
        .resources(LinuxResourcesBuilder::default().devices(rules).build().map_err(BundleError::Spec)?);
    if !devices.is_empty() {
        linux = linux.devices(devices);
    }
    config.set_linux(Some(linux.build().map_err(BundleError::Spec)?));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BundleSpec {
        BundleSpec {
            source: Source::Busybox("/bin/busybox".into()),
            output: "/x".into(),
            args: vec![],
            env: vec![],
            terminal: false,
            readonly: false,
            hostname: None,
            devices: vec![],
            mounts: vec![],
            cwd: None,
            user: None,
        }
    }

    #[test]
    fn device_and_mount_parsing() {
        let d: DeviceArg = "/dev/vda:b:241:0".parse().unwrap();
        assert_eq!(d, DeviceArg { path: "/dev/vda".into(), block: true, major: 241, minor: 0 });
        for bad in ["/dev/vda:b:241", "vda:b:1:2", "/dev/x:z:1:2", "/dev/x:c:a:2"] {
            assert!(bad.parse::<DeviceArg>().is_err(), "{bad}");
        }
        let m: MountArg = "type=bind,src=/data,dst=/mnt,options=ro".parse().unwrap();
        assert_eq!(m.options, ["rbind", "ro"]);
        let m: MountArg = "type=tmpfs,dst=/scratch,options=size=1m:mode=755".parse().unwrap();
        assert_eq!((m.typ.as_str(), m.source, m.options), ("tmpfs", None, vec!["size=1m".into(), "mode=755".into()]));
        for bad in ["type=bind,dst=/x", "src=/a,dst=/b", "type=tmpfs,dst=rel", "type=tmpfs,dst=/a,bogus=1"] {
            assert!(bad.parse::<MountArg>().is_err(), "{bad}");
        }
    }

    #[test]
    fn config_has_runc_spec_shape() {
        let mut s = spec();
        s.args = vec!["echo".into(), "hi".into()];
        s.env = vec!["A=1".into()];
        s.readonly = true;
        s.devices = vec!["/dev/vda:b:241:0".parse().unwrap()];
        s.mounts = vec!["type=tmpfs,dst=/scratch".parse().unwrap()];
        let c = runtime_spec(&s, &ProcessDefaults::default(), Path::new("/abs/rootfs")).unwrap();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["root"]["path"], "/abs/rootfs");
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["process"]["args"], serde_json::json!(["echo", "hi"]));
        assert_eq!(v["process"]["env"][0], DEFAULT_PATH);
        assert!(v["process"]["env"].as_array().unwrap().contains(&"A=1".into()));
        assert_eq!(v["hostname"], DEFAULT_HOSTNAME);
        let ns: Vec<_> = v["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].clone()).collect();
        for want in ["pid", "network", "ipc", "uts", "mount"] {
            assert!(ns.contains(&want.into()), "{want} in {ns:?}");
        }
        assert!(!v["linux"]["maskedPaths"].as_array().unwrap().is_empty());
        assert!(!v["linux"]["readonlyPaths"].as_array().unwrap().is_empty());
        assert_eq!(v["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
        assert!(v["process"]["capabilities"]["bounding"].as_array().unwrap().contains(&"CAP_KILL".into()));
        let dests: Vec<_> = v["mounts"].as_array().unwrap().iter().map(|m| m["destination"].clone()).collect();
        for want in ["/proc", "/dev", "/dev/pts", "/sys", "/scratch"] {
            assert!(dests.contains(&want.into()), "{want} in {dests:?}");
        }
        assert_eq!(v["linux"]["devices"][0]["path"], "/dev/vda");
        assert_eq!(v["linux"]["resources"]["devices"][1]["major"], 241);
        assert_eq!(v["linux"]["resources"]["devices"][0]["allow"], false);
    }

    #[test]
    fn image_defaults_and_flag_precedence() {
        let defaults = ProcessDefaults {
            env: Some(vec!["PATH=/img".into(), "X=img".into()]),
            cmd: Some(vec!["-c".into(), "echo".into()]),
            entrypoint: Some(vec!["/bin/sh".into()]),
            working_dir: Some("/work".into()),
            user: Some("7:8".into()),
        };
        let root = Path::new("/nonexistent");
        let c = runtime_spec(&spec(), &defaults, root).unwrap();
        let p = c.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["/bin/sh", "-c", "echo"]);
        assert_eq!(p.env().as_ref().unwrap(), &["PATH=/img", "X=img"]);
        assert_eq!(p.cwd(), Path::new("/work"));
        assert_eq!((p.user().uid(), p.user().gid()), (7, 8));

        let mut s = spec();
        s.args = vec!["true".into()];
        s.env = vec!["X=flag".into()];
        s.cwd = Some("/".into());
        s.user = Some("0".into());
        let c = runtime_spec(&s, &defaults, root).unwrap();
        let p = c.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["true"]);
        assert_eq!(p.env().as_ref().unwrap(), &["PATH=/img", "X=flag"]);
        assert_eq!(p.cwd(), Path::new("/"));
        assert_eq!(p.user().uid(), 0);

        let mut s = spec();
        s.env = vec!["novalue".into()];
        assert!(matches!(runtime_spec(&s, &defaults, root), Err(BundleError::BadEnv { .. })));
        let mut s = spec();
        s.cwd = Some("rel".into());
        assert!(matches!(runtime_spec(&s, &defaults, root), Err(BundleError::BadCwd { .. })));
        let mut s = spec();
        s.user = Some("alice".into());
        assert!(matches!(runtime_spec(&s, &defaults, root), Err(BundleError::BadUser { .. })));
    }

    #[test]
    fn user_names_come_from_the_image() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/:/bin/sh\nalice:x:1000:1001::/:/bin/sh\n").unwrap();
        fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(resolve_user("alice", dir.path()).unwrap(), (1000, 1001));
        assert_eq!(resolve_user("alice:staff", dir.path()).unwrap(), (1000, 50));
        assert_eq!(resolve_user("1000", dir.path()).unwrap(), (1000, 1001));
        assert_eq!(resolve_user("5:6", dir.path()).unwrap(), (5, 6));
        assert!(resolve_user("bob", dir.path()).is_err());
    }

    #[test]
    fn non_empty_output_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("keep"), "x").unwrap();
        let mut s = spec();
        s.output = dir.path().to_owned();
        let err = build(&s, &mut Progress::with_output("", false)).unwrap_err();
        assert!(matches!(err, BundleError::OutputNotEmpty { .. }), "{err}");
        assert!(dir.path().join("keep").exists());
    }
}
