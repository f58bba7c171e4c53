//! Kubernetes pods (containerd's CRI plugin): what the CRI annotations of a container's spec
//! ask of the shim.
//!
//! containerd's CRI plugin runs a pod as a sandbox container (the pause image) plus the pod's
//! containers, and tells the runtime which is which through annotations:
//! `io.kubernetes.cri.container-type` (`sandbox` or `container`) and
//! `io.kubernetes.cri.sandbox-id` (the pod; [`crate::shim`] groups the pod's containers into one
//! shim and VM by it). With wisp a pod is one VM:
//!
//! - the sandbox container boots it, sized by the pod's resources when containerd passes them
//!   (`io.kubernetes.cri.sandbox-memory`, `-cpu-quota`, `-cpu-period`): as Kata does, they are
//!   added to the configured defaults, which stay the guest's own share;
//! - its pause process runs in the guest, the sandbox's first container, and holds the pod's
//!   pid namespace; a container whose spec joins the sandbox's pid namespace by path (the
//!   pod's `shareProcessNamespace`) is sent with CreateContainer's `sandbox_pidns`, and the
//!   agent joins it to the pause process's pid namespace; every container of the pod shares the
//!   pause process's ipc and uts namespaces. The spec's namespaces are prepared as Kata's
//!   runtime does ([`crate::task`]'s `namespaces` module): their paths name host processes
//!   (QEMU, as far as containerd knows).
//! - a pod without host networking has its network namespace (where containerd ran CNI) named
//!   by path in the sandbox's spec: the VM takes over its interface ([`crate::pod_network`]).

use std::collections::HashMap;
use std::path::PathBuf;

use crate::config::Config;

/// The annotation saying what a container is to its pod.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The pod's memory limit in bytes (sum of its containers' limits).
pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
/// The pod's CFS quota (µs per period).
pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// The pod's CFS period (µs).
pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// The largest guest the sizing grows to (QEMU's and the shim's sanity bound).
const MAX_MEMORY_MIB: u64 = 64 * 1024;
const MAX_VCPUS: u64 = 255;

/// What a container is to its CRI pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not run by the CRI plugin (`ctr`, another client).
    Plain,
    /// The pod's sandbox (pause) container.
    Sandbox,
    /// One of the pod's containers.
    Container,
}

/// The CRI facts of one container spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// Sandbox, container, or neither.
    pub role: Role,
    /// Extra guest memory for the pod, MiB (0: none asked).
    pub memory_mib: u64,
    /// Extra vCPUs for the pod (0: none asked).
    pub vcpus: u64,
    /// The network namespace the spec names by path, unless the container joins a pod
    /// (whose VM already has the pod's network).
    pub netns: Option<PathBuf>,
    /// The sandbox container's `linux.cgroupsPath`: the VM's cgroup goes under the pod's.
    pub cgroups_path: Option<String>,
}

impl PodSpec {
    /// Reads the CRI annotations and namespaces of `spec`.
    pub fn of(spec: &oci_spec::runtime::Spec) -> Self {
        let empty = HashMap::new();
        let annotations = spec.annotations().as_ref().unwrap_or(&empty);
        let role = match annotations.get(CONTAINER_TYPE).map(String::as_str) {
            Some("sandbox") => Role::Sandbox,
            Some("container") => Role::Container,
            _ => Role::Plain,
        };
        let number = |key: &str| annotations.get(key).and_then(|v| v.trim().parse::<i64>().ok()).unwrap_or(0);
        let memory = u64::try_from(number(SANDBOX_MEMORY)).unwrap_or(0);
        let quota = number(SANDBOX_CPU_QUOTA);
        let period = number(SANDBOX_CPU_PERIOD);
        let vcpus = match (u64::try_from(quota), u64::try_from(period)) {
            (Ok(quota), Ok(period)) if quota > 0 && period > 0 => quota.div_ceil(period),
            _ => 0,
        };
        let ns_path = |typ: oci_spec::runtime::LinuxNamespaceType| {
            let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref())?;
            let ns = namespaces.iter().find(|ns| ns.typ() == typ)?;
            ns.path().as_ref().filter(|p| !p.as_os_str().is_empty()).cloned()
        };
        let netns =
            if role == Role::Container { None } else { ns_path(oci_spec::runtime::LinuxNamespaceType::Network) };
        let cgroups_path = (role == Role::Sandbox)
            .then(|| spec.linux().as_ref().and_then(|l| l.cgroups_path().as_ref()))
            .flatten()
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| !p.is_empty());
        Self { role, memory_mib: memory.div_ceil(1024 * 1024), vcpus, netns, cgroups_path }
    }

    /// The configuration the pod's VM boots with: `base` grown by the pod's resources.
    pub fn vm_config(&self, base: &Config) -> Config {
        let mut config = base.clone();
        let vm = &mut config.hypervisor;
        let (base_memory, base_vcpus) = (vm.memory_mib(), vm.vcpus());
        let memory = u64::from(base_memory).saturating_add(self.memory_mib).min(MAX_MEMORY_MIB);
        let vcpus = u64::from(base_vcpus).saturating_add(self.vcpus).min(MAX_VCPUS);
        vm.resize(u32::try_from(memory).unwrap_or(base_memory), u32::try_from(vcpus).unwrap_or(base_vcpus));
        config.cgroups_path = self.cgroups_path.clone();
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> oci_spec::runtime::Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_sandbox_sizes_the_vm_from_the_pod_resources() {
        let s = spec(
            r#"{"ociVersion": "1.0.2", "annotations": {
                "io.kubernetes.cri.container-type": "sandbox",
                "io.kubernetes.cri.sandbox-memory": "134217728",
                "io.kubernetes.cri.sandbox-cpu-quota": "150000",
                "io.kubernetes.cri.sandbox-cpu-period": "100000"}}"#,
        );
        let pod = PodSpec::of(&s);
        assert_eq!(pod, PodSpec { role: Role::Sandbox, memory_mib: 128, vcpus: 2, netns: None, cgroups_path: None });
        let config = pod.vm_config(&Config::default());
        assert_eq!((config.hypervisor.memory_mib(), config.hypervisor.vcpus()), (256 + 128, 1 + 2));
    }

    #[test]
    fn no_or_bad_resources_keep_the_defaults() {
        let s = spec(
            r#"{"ociVersion": "1.0.2", "annotations": {
                "io.kubernetes.cri.container-type": "sandbox",
                "io.kubernetes.cri.sandbox-memory": "-1",
                "io.kubernetes.cri.sandbox-cpu-quota": "-1",
                "io.kubernetes.cri.sandbox-cpu-period": "100000"}}"#,
        );
        let pod = PodSpec::of(&s);
        assert_eq!((pod.memory_mib, pod.vcpus), (0, 0));
        let config = pod.vm_config(&Config::default());
        assert_eq!((config.hypervisor.memory_mib(), config.hypervisor.vcpus()), (256, 1));
    }

    #[test]
    fn the_sandbox_names_the_pods_network_namespace_containers_do_not() {
        let sandbox = spec(
            r#"{"ociVersion": "1.0.2", "annotations": {"io.kubernetes.cri.container-type": "sandbox"},
                "linux": {"namespaces": [{"type": "network", "path": "/var/run/netns/cni-1"}, {"type": "pid"}]}}"#,
        );
        assert_eq!(PodSpec::of(&sandbox).netns, Some(PathBuf::from("/var/run/netns/cni-1")));
        let container = spec(
            r#"{"ociVersion": "1.0.2", "annotations": {"io.kubernetes.cri.container-type": "container"},
                "linux": {"namespaces": [{"type": "network", "path": "/proc/42/ns/net"}]}}"#,
        );
        assert_eq!(PodSpec::of(&container).netns, None, "a container joins its pod's VM");
        let host_network = spec(
            r#"{"ociVersion": "1.0.2", "annotations": {"io.kubernetes.cri.container-type": "sandbox"},
                "linux": {"namespaces": [{"type": "pid"}]}}"#,
        );
        assert_eq!(PodSpec::of(&host_network).netns, None);
        let new_one = spec(r#"{"ociVersion": "1.0.2", "linux": {"namespaces": [{"type": "network"}]}}"#);
        assert_eq!(PodSpec::of(&new_one).netns, None);
    }
}
