//! The container's network namespace on the host, which becomes the VM's network.
//!
//! Docker asks for a new network namespace without a path and adds a prestart hook
//! (`libnetwork-setkey`) that moves the container's veth into `/proc/<state.pid>/ns/net`, the
//! pid being the monitor's. So before the hooks run, the monitor's main thread leaves the
//! caller's namespace for a new one ([`ContainerNetwork::enter`]): the namespace lives exactly as
//! long as the monitor (nothing to remove afterwards, even after a SIGKILL), and it is the one
//! `/proc/<monitor>/ns/net` names. Everything else of the monitor (its event loop, QEMU and its
//! helpers, the hooks) runs on a thread that went back to the caller's namespace
//! ([`ContainerNetwork::run_outside`]), as the shim runs in the host's; the sandbox core then
//! wires the namespace to the VM as it wires a CRI pod's ([`crate::pod_network`]: a tap and tc
//! redirects in the namespace, the guest NIC given the interface's MAC, addresses and routes).
//!
//! A spec that names a namespace by path (podman's, Docker's `--network host` or `container:`)
//! gets it wired as the CRI path wires a pod's; the caller's own namespace means host
//! networking, nothing wired. A spec without a network namespace keeps the host's (the VM gets
//! no NIC), as before. A new namespace that the hooks left with only a loopback (Docker's
//! `--network none`, a plain `wisp-runtime run`) gets no NIC either.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// Errors of the container's network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot open the caller's network namespace")]
    OpenOwn(#[source] std::io::Error),
    #[error("cannot make the container's network namespace (unshare CLONE_NEWNET)")]
    Unshare(#[source] std::io::Error),
    #[error("cannot return to the caller's network namespace")]
    Return(#[source] std::io::Error),
    #[error("the monitor's thread panicked")]
    Panicked,
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the spec asks of the container's network.
#[derive(Debug)]
pub enum ContainerNetwork {
    /// No network namespace: the host's (the VM gets no NIC).
    Host,
    /// A namespace named by path: the sandbox core wires it (`plan.pod.netns`).
    Path(PathBuf),
    /// A new namespace, the monitor's main thread's; `caller` is the namespace it left.
    Own { caller: File },
}

impl ContainerNetwork {
    /// Reads what `spec` asks and, for a new namespace, moves the calling thread into one.
    /// Called on the monitor's main thread before any other thread exists (threads made later
    /// start in the namespace of the thread that makes them).
    pub fn enter(spec: &Spec) -> Result<Self, NetworkError> {
        let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
        let Some(ns) = namespaces.and_then(|list| list.iter().find(|ns| ns.typ() == LinuxNamespaceType::Network))
        else {
            return Ok(Self::Host);
        };
        if let Some(path) = ns.path().as_ref().filter(|p| !p.as_os_str().is_empty()) {
            return Ok(Self::Path(path.clone()));
        }
        let caller = File::open("/proc/thread-self/ns/net").map_err(NetworkError::OpenOwn)?;
        // SAFETY: unshare takes a flag word; it moves this thread alone into a new namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(NetworkError::Unshare(std::io::Error::last_os_error()));
        }
        Ok(Self::Own { caller })
    }

    /// Runs `work` in the caller's network namespace: on this thread when it never left it,
    /// else on a thread that returns there first (this one keeps the container's namespace,
    /// the one `/proc/<pid>/ns/net` names).
    pub fn run_outside<R: Send>(&self, work: impl FnOnce() -> R + Send) -> Result<R, NetworkError> {
        let Self::Own { caller } = self else { return Ok(work()) };
        let fd = caller.as_raw_fd();
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                // SAFETY: `fd` is the caller's namespace file, open for the scope's life; setns
                // moves this thread alone.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(NetworkError::Return(std::io::Error::last_os_error()));
                }
                Ok(work())
            });
            thread.join().map_err(|_| NetworkError::Panicked)?
        })
    }

    /// The namespace the sandbox core is to wire to the VM, once the hooks ran: the spec's
    /// path, or the monitor's own when something (Docker's hook) put an interface in it.
    pub fn to_wire(&self) -> Result<Option<PathBuf>, NetworkError> {
        match self {
            Self::Host => Ok(None),
            Self::Path(path) => Ok(Some(path.clone())),
            Self::Own { .. } => {
                let proc_dir = PathBuf::from(format!("/proc/{}", std::process::id()));
                Ok(has_interface(&proc_dir)?.then(|| proc_dir.join("ns/net")))
            }
        }
    }
}

/// Whether the namespace of the process or thread at `proc_dir` (`/proc/<pid>`) holds an
/// interface besides the loopback (its `net/dev` lists the namespace's interfaces).
fn has_interface(proc_dir: &Path) -> Result<bool, NetworkError> {
    let path = proc_dir.join("net/dev");
    let dev = std::fs::read_to_string(&path).map_err(|source| NetworkError::Read { path, source })?;
    // Two header lines, then `  name: counters...`.
    Ok(dev.lines().skip(2).filter_map(|line| line.split_once(':')).any(|(name, _)| name.trim() != "lo"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2", "linux": {"namespaces": namespaces}})).unwrap()
    }

    #[test]
    fn no_network_namespace_is_the_hosts_and_a_path_is_kept() {
        let host = ContainerNetwork::enter(&spec(serde_json::json!([{"type": "pid"}]))).unwrap();
        assert!(matches!(host, ContainerNetwork::Host));
        assert_eq!(host.to_wire().unwrap(), None);
        assert_eq!(host.run_outside(|| 7).unwrap(), 7);
        let path = ContainerNetwork::enter(&spec(serde_json::json!([{"type": "network", "path": "/run/netns/x"}])));
        assert_eq!(path.unwrap().to_wire().unwrap(), Some(PathBuf::from("/run/netns/x")));
    }

    /// Root only, in a child process (the namespace is left for the whole thread).
    #[test]
    fn a_new_namespace_is_the_main_threads_and_the_work_runs_in_the_callers() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to make a network namespace");
            return;
        }
        let ns = |path: &str| std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
        let before = ns("/proc/thread-self/ns/net");
        // On a thread of its own, which ends with the namespace it entered.
        let (own, outside, wired) = std::thread::spawn(move || {
            let network = ContainerNetwork::enter(&spec(serde_json::json!([{"type": "network"}]))).unwrap();
            let own = ns("/proc/thread-self/ns/net");
            let outside = network.run_outside(|| ns("/proc/thread-self/ns/net")).unwrap();
            // Only a loopback: nothing to wire.
            let wired = has_interface(Path::new("/proc/thread-self")).unwrap();
            (own, outside, wired)
        })
        .join()
        .unwrap();
        assert_ne!(own, before, "the thread is in a new namespace");
        assert_eq!(outside, before, "the work ran in the caller's");
        assert!(!wired, "a new namespace holds only a loopback");
        // The host's has more (this machine's own interfaces).
        assert!(
            has_interface(Path::new("/proc/self")).unwrap()
                || std::fs::read_dir("/sys/class/net").unwrap().count() == 1
        );
    }
}
