//! Which namespaces the launcher joins (by path, with setns) and which it
//! makes (unshare), from `linux.namespaces`; for an exec, the init
//! process's namespaces under /proc/<pid>/ns. A user namespace is always
//! joined first: the others are owned by it.

use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::error::WireError;

/// CLONE_NEWTIME (not in every libc crate version).
const CLONE_NEWTIME: i32 = 0x80;

/// The clone flag of a namespace type.
pub(crate) fn flag(typ: LinuxNamespaceType) -> CloneFlags {
    use LinuxNamespaceType as T;
    match typ {
        T::Mount => CloneFlags::CLONE_NEWNS,
        T::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        T::Uts => CloneFlags::CLONE_NEWUTS,
        T::Ipc => CloneFlags::CLONE_NEWIPC,
        T::User => CloneFlags::CLONE_NEWUSER,
        T::Pid => CloneFlags::CLONE_NEWPID,
        T::Network => CloneFlags::CLONE_NEWNET,
        T::Time => CloneFlags::from_bits_retain(CLONE_NEWTIME),
    }
}

/// The namespaces of a container's init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NsPlan {
    /// Namespaces to join, user first.
    pub join: Vec<(CloneFlags, PathBuf)>,
    /// Namespaces to create.
    pub new: CloneFlags,
}

impl NsPlan {
    /// Whether the container has its own namespace of this kind (joined or new).
    pub fn has(&self, f: CloneFlags) -> bool {
        self.new.contains(f) || self.join.iter().any(|(j, _)| *j == f)
    }
}

/// Reads `linux.namespaces`; a type given twice is a bad spec.
pub(crate) fn plan(spec: &Spec) -> Result<NsPlan, WireError> {
    let mut out = NsPlan { join: Vec::new(), new: CloneFlags::empty() };
    let mut seen = CloneFlags::empty();
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default();
    for ns in &namespaces {
        let f = flag(ns.typ());
        if seen.contains(f) {
            return Err(WireError::invalid(format!("namespace {} is listed twice", ns.typ())));
        }
        seen |= f;
        match ns.path() {
            Some(p) if !p.as_os_str().is_empty() => {
                if !p.is_absolute() {
                    return Err(WireError::invalid(format!(
                        "namespace {} path {} is not absolute",
                        ns.typ(),
                        p.display()
                    )));
                }
                out.join.push((f, p.clone()))
            }
            _ => out.new |= f,
        }
    }
    out.join.sort_by_key(|(f, _)| *f != CloneFlags::CLONE_NEWUSER);
    Ok(out)
}

/// An exec joins every namespace of `init_pid` that differs from ours, user
/// first, mount last (it changes our root).
pub(crate) fn of_process(init_pid: i32) -> Result<Vec<(CloneFlags, PathBuf)>, WireError> {
    let kinds: [(&str, CloneFlags); 8] = [
        ("user", CloneFlags::CLONE_NEWUSER),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("time", CloneFlags::from_bits_retain(CLONE_NEWTIME)),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let mut out = Vec::new();
    for (name, f) in kinds {
        let theirs = PathBuf::from(format!("/proc/{init_pid}/ns/{name}"));
        let their_ino = match std::fs::metadata(&theirs) {
            Ok(m) => m.ino(),
            // A kernel without this namespace kind.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && name != "pid" && name != "mnt" => continue,
            Err(e) => return Err(WireError::sys(format!("container init {init_pid}: {}", theirs.display()), e)),
        };
        let ours = std::fs::metadata(format!("/proc/self/ns/{name}")).map(|m| m.ino()).ok();
        if ours != Some(their_ino) {
            out.push((f, theirs));
        }
    }
    Ok(out)
}

/// Opens every path first (a mount namespace joined early would change what
/// the later paths name), then joins in order.
pub(crate) fn join_all(join: &[(CloneFlags, PathBuf)]) -> Result<(), WireError> {
    let mut fds: Vec<(CloneFlags, &PathBuf, OwnedFd)> = Vec::new();
    for (f, p) in join {
        let fd = std::fs::File::open(p).map_err(|e| WireError::sys(format!("open namespace {}", p.display()), e))?;
        fds.push((*f, p, fd.into()));
    }
    for (f, p, fd) in &fds {
        nix::sched::setns(fd.as_fd(), *f).map_err(|e| WireError::sys(format!("setns {}", p.display()), e))?;
    }
    Ok(())
}

/// unshare(2) of `flags`.
pub(crate) fn unshare(flags: CloneFlags) -> Result<(), WireError> {
    if flags.is_empty() {
        return Ok(());
    }
    nix::sched::unshare(flags).map_err(|e| WireError::sys(format!("unshare {flags:?}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ns: &str) -> Spec {
        serde_json::from_str(&format!(r#"{{"ociVersion":"1.0.2","linux":{{"namespaces":{ns}}}}}"#)).unwrap()
    }

    #[test]
    fn paths_are_joined_user_first_and_the_rest_is_new() {
        let p = plan(&spec(
            r#"[{"type":"pid"},{"type":"network","path":"/var/run/netns/x"},{"type":"mount"},{"type":"user","path":"/proc/1/ns/user"}]"#,
        ))
        .unwrap();
        assert_eq!(p.new, CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS);
        assert_eq!(
            p.join,
            vec![
                (CloneFlags::CLONE_NEWUSER, PathBuf::from("/proc/1/ns/user")),
                (CloneFlags::CLONE_NEWNET, PathBuf::from("/var/run/netns/x"))
            ]
        );
        assert!(p.has(CloneFlags::CLONE_NEWNET) && !p.has(CloneFlags::CLONE_NEWUTS));
    }

    #[test]
    fn duplicates_and_relative_paths_are_refused() {
        let e = plan(&spec(r#"[{"type":"pid"},{"type":"pid"}]"#)).unwrap_err();
        assert!(e.msg.contains("twice"), "{e}");
        let e = plan(&spec(r#"[{"type":"ipc","path":"ns/ipc"}]"#)).unwrap_err();
        assert!(e.msg.contains("ns/ipc"), "{e}");
    }

    #[test]
    fn an_unknown_type_does_not_parse() {
        let r: Result<Spec, _> =
            serde_json::from_str(r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"bogus"}]}}"#);
        assert!(r.is_err());
    }
}
