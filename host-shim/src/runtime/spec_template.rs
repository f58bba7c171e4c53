//! `spec`: runc's default `config.json` written into a bundle, as the seed's flow starts
//! (`runc spec`, edit `args`, `kata-runtime run NAME`), and its `--rootless` variant.
//!
//! The template is runc 1.1.5's own output (a shell on a terminal, the default capabilities,
//! mounts, masked and read-only paths, five new namespaces) with our spec version; `--rootless`
//! applies runc's `ToRootless`: no network namespace, a user namespace mapping the caller's
//! uid and gid to root, `/sys` bound instead of mounted, no `uid=`/`gid=` mount options, no
//! resources. An existing config.json is never overwritten (runc's message).

use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxIdMappingBuilder, LinuxNamespace, LinuxNamespaceType, Mount, Spec};

use super::RuntimeError;

/// `runc spec` of runc 1.1.5 (Debian 12), ociVersion aside.
const RUNC_DEFAULT: &str = r#"{
  "ociVersion": "1.0.2-dev",
  "process": {
    "terminal": true,
    "user": {
      "uid": 0,
      "gid": 0
    },
    "args": [
      "sh"
    ],
    "env": [
      "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      "TERM=xterm"
    ],
    "cwd": "/",
    "capabilities": {
      "bounding": [
        "CAP_AUDIT_WRITE",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE"
      ],
      "effective": [
        "CAP_AUDIT_WRITE",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE"
      ],
      "permitted": [
        "CAP_AUDIT_WRITE",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE"
      ],
      "ambient": [
        "CAP_AUDIT_WRITE",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE"
      ]
    },
    "rlimits": [
      {
        "type": "RLIMIT_NOFILE",
        "hard": 1024,
        "soft": 1024
      }
    ],
    "noNewPrivileges": true
  },
  "root": {
    "path": "rootfs",
    "readonly": true
  },
  "hostname": "runc",
  "mounts": [
    {
      "destination": "/proc",
      "type": "proc",
      "source": "proc"
    },
    {
      "destination": "/dev",
      "type": "tmpfs",
      "source": "tmpfs",
      "options": [
        "nosuid",
        "strictatime",
        "mode=755",
        "size=65536k"
      ]
    },
    {
      "destination": "/dev/pts",
      "type": "devpts",
      "source": "devpts",
      "options": [
        "nosuid",
        "noexec",
        "newinstance",
        "ptmxmode=0666",
        "mode=0620",
        "gid=5"
      ]
    },
    {
      "destination": "/dev/shm",
      "type": "tmpfs",
      "source": "shm",
      "options": [
        "nosuid",
        "noexec",
        "nodev",
        "mode=1777",
        "size=65536k"
      ]
    },
    {
      "destination": "/dev/mqueue",
      "type": "mqueue",
      "source": "mqueue",
      "options": [
        "nosuid",
        "noexec",
        "nodev"
      ]
    },
    {
      "destination": "/sys",
      "type": "sysfs",
      "source": "sysfs",
      "options": [
        "nosuid",
        "noexec",
        "nodev",
        "ro"
      ]
    },
    {
      "destination": "/sys/fs/cgroup",
      "type": "cgroup",
      "source": "cgroup",
      "options": [
        "nosuid",
        "noexec",
        "nodev",
        "relatime",
        "ro"
      ]
    }
  ],
  "linux": {
    "resources": {
      "devices": [
        {
          "allow": false,
          "access": "rwm"
        }
      ]
    },
    "namespaces": [
      {
        "type": "pid"
      },
      {
        "type": "network"
      },
      {
        "type": "ipc"
      },
      {
        "type": "uts"
      },
      {
        "type": "mount"
      }
    ],
    "maskedPaths": [
      "/proc/acpi",
      "/proc/asound",
      "/proc/kcore",
      "/proc/keys",
      "/proc/latency_stats",
      "/proc/timer_list",
      "/proc/timer_stats",
      "/proc/sched_debug",
      "/sys/firmware",
      "/proc/scsi"
    ],
    "readonlyPaths": [
      "/proc/bus",
      "/proc/fs",
      "/proc/irq",
      "/proc/sys",
      "/proc/sysrq-trigger"
    ]
  }
}"#;

/// runc's default spec, with our spec version.
pub fn default_spec() -> Result<Spec, serde_json::Error> {
    let mut spec: Spec = serde_json::from_str(RUNC_DEFAULT)?;
    spec.set_version(oci_spec::runtime::VERSION.to_owned());
    Ok(spec)
}

/// runc's `ToRootless`: `uid` and `gid` (the caller's effective ids) become root in a new
/// user namespace; no network namespace; `/sys` bound read-only; no `uid=`/`gid=` mount
/// options; no resources.
pub fn to_rootless(spec: &mut Spec, uid: u32, gid: u32) {
    let mounts = spec.mounts().clone().unwrap_or_default().into_iter().map(rootless_mount).collect();
    spec.set_mounts(Some(mounts));
    let Some(linux) = spec.linux_mut() else { return };
    let mut namespaces: Vec<LinuxNamespace> = linux.namespaces().clone().unwrap_or_default();
    namespaces.retain(|ns| !matches!(ns.typ(), LinuxNamespaceType::Network | LinuxNamespaceType::User));
    let mut user = LinuxNamespace::default();
    user.set_typ(LinuxNamespaceType::User);
    namespaces.push(user);
    linux.set_namespaces(Some(namespaces));
    let map = |host: u32| LinuxIdMappingBuilder::default().host_id(host).container_id(0u32).size(1u32).build().ok();
    linux.set_uid_mappings(map(uid).map(|m| vec![m]));
    linux.set_gid_mappings(map(gid).map(|m| vec![m]));
    linux.set_resources(None);
}

fn rootless_mount(mut mount: Mount) -> Mount {
    if Path::new(mount.destination()).components().eq(Path::new("/sys").components()) {
        mount.set_typ(Some("none".into()));
        mount.set_source(Some("/sys".into()));
        mount.set_options(Some(["rbind", "nosuid", "noexec", "nodev", "ro"].map(str::to_owned).to_vec()));
        return mount;
    }
    if let Some(options) = mount.options_mut() {
        options.retain(|o| !o.starts_with("uid=") && !o.starts_with("gid="));
    }
    mount
}

/// `spec [--rootless] --bundle DIR`: writes `DIR/config.json`, refusing to replace one.
pub fn write(bundle: &Path, rootless: bool) -> Result<PathBuf, RuntimeError> {
    let path = bundle.join("config.json");
    let mut spec = default_spec().map_err(|source| RuntimeError::Json {
        what: "cannot build the default spec for",
        path: path.clone(),
        source,
    })?;
    if rootless {
        to_rootless(&mut spec, nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
    }
    let json = serde_json::to_string_pretty(&spec).map_err(|source| RuntimeError::Json {
        what: "cannot serialize",
        path: path.clone(),
        source,
    })?;
    let mut file = match OpenOptions::new().write(true).create_new(true).mode(0o666).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(RuntimeError::SpecExists),
        Err(source) => return Err(RuntimeError::Io { what: "cannot create", path, source }),
    };
    file.write_all(json.as_bytes()).map_err(RuntimeError::io("cannot write", &path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_runcs_and_loads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), false).unwrap();
        let spec = Spec::load(&path).unwrap();
        assert_eq!(spec.version(), oci_spec::runtime::VERSION);
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.args().as_deref(), Some(&["sh".to_owned()][..]));
        assert_eq!(process.terminal(), Some(true));
        assert_eq!(spec.root().as_ref().unwrap().path(), Path::new("rootfs"));
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        let linux = spec.linux().as_ref().unwrap();
        let types: Vec<_> = linux.namespaces().as_ref().unwrap().iter().map(|n| n.typ()).collect();
        use LinuxNamespaceType as T;
        assert_eq!(types, [T::Pid, T::Network, T::Ipc, T::Uts, T::Mount]);
        assert!(linux.uid_mappings().is_none());
        assert!(linux.resources().is_some());
        let mounts = spec.mounts().as_ref().unwrap();
        let dests: Vec<_> = mounts.iter().map(|m| m.destination().to_str().unwrap()).collect();
        assert_eq!(dests, ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]);
        // The file is the default through and through (capabilities are sets: compared as such).
        assert_eq!(spec, default_spec().unwrap());
    }

    #[test]
    fn an_existing_config_is_never_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("config.json"), "mine").unwrap();
        let err = write(tmp.path(), false).unwrap_err();
        assert_eq!(err.to_string(), "File config.json exists. Remove it first");
        assert_eq!(std::fs::read_to_string(tmp.path().join("config.json")).unwrap(), "mine");
        assert!(matches!(write(&tmp.path().join("missing"), false), Err(RuntimeError::Io { .. })));
    }

    #[test]
    fn rootless_is_runcs_to_rootless() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), true).unwrap();
        let spec = Spec::load(&path).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let types: Vec<_> = linux.namespaces().as_ref().unwrap().iter().map(|n| n.typ()).collect();
        use LinuxNamespaceType as T;
        assert_eq!(types, [T::Pid, T::Ipc, T::Uts, T::Mount, T::User]);
        let uid = linux.uid_mappings().as_ref().unwrap();
        assert_eq!(
            (uid.len(), uid[0].host_id(), uid[0].container_id(), uid[0].size()),
            (1, nix::unistd::geteuid().as_raw(), 0, 1)
        );
        assert_eq!(linux.gid_mappings().as_ref().unwrap()[0].host_id(), nix::unistd::getegid().as_raw());
        assert!(linux.resources().is_none());
        let mounts = spec.mounts().as_ref().unwrap();
        let sys = mounts.iter().find(|m| m.destination() == Path::new("/sys")).unwrap();
        assert_eq!((sys.typ().as_deref(), sys.source().as_deref()), (Some("none"), Some(Path::new("/sys"))));
        assert_eq!(
            sys.options().as_deref(),
            Some(&["rbind", "nosuid", "noexec", "nodev", "ro"].map(str::to_owned)[..])
        );
        let pts = mounts.iter().find(|m| m.destination() == Path::new("/dev/pts")).unwrap();
        assert!(!pts.options().as_ref().unwrap().iter().any(|o| o.starts_with("gid=")), "{pts:?}");
        assert!(pts.options().as_ref().unwrap().iter().any(|o| o == "mode=0620"));
    }
}
