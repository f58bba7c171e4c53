//! The container's spec and processes as the guest needs them: a config.json rewritten so its
//! rootfs and bind-mount sources point into the shared directory, and the agent requests that
//! carry them, as Kata's runtime builds them.

use std::path::{Path, PathBuf};

use protocols::agent as pb;
use protocols::convert::to_pb;

use super::namespaces;
use crate::error::Error;
use crate::volumes;

/// The CreateContainer request for container `cid`, as Kata's runtime sends it: the spec
/// adapted by [`guest_spec`], its namespaces by Kata's rule ([`namespaces::constrain`]), the
/// pod's shared pid namespace asked for with `sandbox_pidns`, the container id as its init's
/// exec id. Devices and storages are the caller's to add.
pub fn create_request(
    cid: &str,
    spec: &oci_spec::runtime::Spec,
    bundle: &Path,
    rootfs_guest: String,
    share: impl FnMut(&str, &Path, bool) -> Result<String, Error>,
) -> Result<pb::CreateContainerRequest, Error> {
    let mut oci = guest_spec(spec, bundle, rootfs_guest, share)?;
    let sandbox_pidns = oci.Linux.as_mut().is_some_and(namespaces::constrain);
    Ok(pb::CreateContainerRequest {
        container_id: cid.to_owned(),
        exec_id: cid.to_owned(),
        OCI: Some(oci).into(),
        sandbox_pidns,
        ..Default::default()
    })
}

/// The process of `ctr exec` / `kubectl exec` as ExecProcess carries it.
pub fn exec_process(spec: &oci_spec::runtime::Process, terminal: bool) -> protocols::oci::Process {
    let mut process = to_pb::process(spec);
    process.Terminal = terminal;
    process
}

/// The ExecProcess request that starts exec `exec_id` of container `cid`.
pub fn exec_request(cid: &str, exec_id: &str, process: &protocols::oci::Process) -> pb::ExecProcessRequest {
    pb::ExecProcessRequest {
        container_id: cid.to_owned(),
        exec_id: exec_id.to_owned(),
        process: Some(process.clone()).into(),
        ..Default::default()
    }
}

/// Adapts a config.json spec for the guest: the rootfs and host bind-mount sources point into
/// the shared directory, host hooks are dropped. The namespaces are [`create_request`]'s.
pub fn guest_spec(
    spec: &oci_spec::runtime::Spec,
    bundle: &Path,
    rootfs_guest: String,
    mut share: impl FnMut(&str, &Path, bool) -> Result<String, Error>,
) -> Result<protocols::oci::Spec, Error> {
    let mut pb_spec = to_pb::spec(spec);
    pb_spec.Root.mut_or_insert_default().Path = rootfs_guest;
    // Host hooks cannot run in the guest; guest hooks come from CreateSandbox.guest_hook_path.
    pb_spec.Hooks = None.into();
    for (index, m) in pb_spec.Mounts.iter_mut().enumerate() {
        if volumes::direct::VOLUME_TYPES.contains(&m.type_.as_str()) {
            // A direct volume: plugged as a disk, not shared.
            continue;
        }
        let bind = m.type_ == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind");
        let source = PathBuf::from(&m.source);
        let source = if source.is_absolute() { source } else { bundle.join(source) };
        // Judged where it really leads: `/run/../proc` or a symlink to /sys is the guest's
        // own, not the host's to share. A source that does not exist is left as written.
        let Ok(source) = std::fs::canonicalize(&source) else { continue };
        let host_only = ["/proc", "/sys", "/dev"].iter().any(|p| source.starts_with(p));
        if bind && !host_only {
            let name = source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            // `ro` is enforced on the host: a guest that remounts its view rw still cannot write.
            let read_only = m.options.iter().any(|o| o == "ro");
            m.source = share(&format!("mounts/{index}-{name}"), &source, read_only)?;
        }
    }
    Ok(pb_spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_spec_points_into_the_share_and_drops_host_parts() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let json = format!(
            r#"{{"ociVersion": "1.0.2", "root": {{"path": "rootfs"}},
                "process": {{"args": ["sh"], "cwd": "/", "user": {{"uid": 0, "gid": 0}}}},
                "hooks": {{"prestart": [{{"path": "/usr/bin/host-hook"}}]}},
                "mounts": [{{"destination": "/proc", "type": "proc", "source": "proc"}},
                           {{"destination": "/data", "type": "bind", "source": "{}", "options": ["rbind", "ro"]}},
                           {{"destination": "/dev/shm", "type": "bind", "source": "/dev/shm", "options": ["rbind"]}},
                           {{"destination": "/a", "type": "bind", "source": "{}/to-proc", "options": ["rbind"]}},
                           {{"destination": "/b", "type": "bind", "source": "/run/../sys", "options": ["rbind"]}}],
                "linux": {{"namespaces": [{{"type": "pid"}}, {{"type": "network", "path": "/var/run/netns/x"}}]}}}}"#,
            data.display(),
            dir.path().display()
        );
        std::os::unix::fs::symlink("/proc/self", dir.path().join("to-proc")).unwrap();
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        let spec = oci_spec::runtime::Spec::load(dir.path().join("config.json")).unwrap();
        let mut shared = Vec::new();
        let pb = guest_spec(&spec, dir.path(), "/guest/c1/rootfs".into(), |name, source, read_only| {
            shared.push((name.to_owned(), source.to_owned(), read_only));
            Ok(format!("/guest/c1/{name}"))
        })
        .unwrap();
        assert_eq!(pb.Root.Path, "/guest/c1/rootfs");
        assert!(pb.Hooks.is_none());
        assert_eq!(pb.Mounts[0].source, "proc");
        assert_eq!(pb.Mounts[1].source, "/guest/c1/mounts/1-data");
        assert_eq!(pb.Mounts[2].source, "/dev/shm", "host device paths are not shared");
        assert_eq!(pb.Mounts[4].source, "/run/../sys", "a path that leads to /sys is not shared");
        assert_eq!(
            shared,
            [("mounts/1-data".to_owned(), data, true)],
            "nor a symlink to /proc; `ro` reaches the host bind"
        );
        assert_eq!(pb.Process.Args, ["sh"]);
    }
}
