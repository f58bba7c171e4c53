//! The namespaces a container's spec keeps on its way into the guest: Kata's runtime's rule,
//! so that Kata's own agent runs what the shim sends, and ours reads it the same way.
//!
//! Both Kata runtimes prepare the spec before CreateContainer (Go:
//! `src/runtime/virtcontainers/kata_agent.go`, `handlePidNamespace` and `constrainGRPCSpec`;
//! runtime-rs: `container_manager/container.rs`, `amend_spec`; time since kata-containers#13082):
//!
//! - the **pid** entry goes; a path on it (the host's name of the pod's shared pid namespace)
//!   becomes CreateContainer's `sandbox_pidns`. The agent adds the one pid entry itself
//!   (Kata's `update_container_namespaces`): a second one from the host made Kata's agent's
//!   `ExecProcess` join a stale namespace (EINVAL);
//! - the **network** entry goes: the guest has one network, the VM's, where a pod's interface
//!   lives;
//! - the **time** entry goes: Kata's agent does not know the type (Docker 29.5 sends it);
//! - every other entry keeps its type and loses its path: a host path names nothing in the guest.
//!
//! Kata's Go runtime drops the cgroup entry too; runtime-rs keeps it, and so do we (both agents
//! support it, and a CRI container sees its own cgroup root as under runc).

use protocols::oci as pb;

/// The namespace types Kata's runtime never sends.
pub(super) const DROPPED: [&str; 3] = ["pid", "network", "time"];

/// Applies Kata's runtime's rule to `linux.Namespaces`; returns CreateContainer's
/// `sandbox_pidns`: whether the spec joined a pid namespace by path (the pod's).
pub(super) fn constrain(linux: &mut pb::Linux) -> bool {
    let sandbox_pidns = linux.Namespaces.iter().any(|ns| ns.Type == "pid" && !ns.Path.is_empty());
    linux.Namespaces.retain(|ns| !DROPPED.contains(&ns.Type.as_str()));
    for ns in &mut linux.Namespaces {
        ns.Path.clear();
    }
    sandbox_pidns
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux(entries: &[(&str, &str)]) -> pb::Linux {
        pb::Linux {
            Namespaces: entries
                .iter()
                .map(|(t, p)| pb::LinuxNamespace { Type: (*t).into(), Path: (*p).into(), ..Default::default() })
                .collect(),
            ..Default::default()
        }
    }

    fn types(linux: &pb::Linux) -> Vec<(&str, &str)> {
        linux.Namespaces.iter().map(|ns| (ns.Type.as_str(), ns.Path.as_str())).collect()
    }

    #[test]
    fn pid_network_and_time_go_other_paths_are_cleared() {
        let mut l = linux(&[
            ("pid", ""),
            ("ipc", "/proc/42/ns/ipc"),
            ("uts", ""),
            ("mount", ""),
            ("network", ""),
            ("time", ""),
            ("cgroup", ""),
        ]);
        assert!(!constrain(&mut l), "a pid entry without a path is a namespace of its own");
        assert_eq!(types(&l), [("ipc", ""), ("uts", ""), ("mount", ""), ("cgroup", "")]);
    }

    #[test]
    fn a_pid_namespace_by_path_is_the_sandboxs() {
        let mut l = linux(&[("pid", "/proc/42/ns/pid"), ("network", "/var/run/netns/cni-1")]);
        assert!(constrain(&mut l));
        assert!(l.Namespaces.is_empty());
        let mut none = linux(&[("mount", "")]);
        assert!(!constrain(&mut none), "no pid entry: the host's pid namespace in runc, a new one here");
    }
}
