//! CreateContainer: from a converted spec to a created container whose init
//! waits for StartContainer.
//!
//! The agent adjusts the host's spec to the guest before launching: the pid
//! namespace is the container's own or the sandbox's shared one (a host path
//! means nothing in the guest), and the sandbox's guest hooks are appended.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_spec::runtime::{
    Hook, LinuxDeviceCgroup, LinuxDeviceType, LinuxNamespace, LinuxNamespaceType, LinuxResources, Spec,
};

use super::{Container, Phase};
use crate::cgroups::{CgroupError, CgroupManager, Layout};
use crate::error::AgentError;
use crate::launch::{self, InitRequest};
use crate::process::{reaper, stdio, ExitTable, Process};

/// Which pid namespace the container's init gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidNs {
    /// A new one: the init is its PID 1.
    New,
    /// The sandbox's shared one, by its /proc/PID/ns/pid path.
    Join(PathBuf),
}

/// OCI hooks the sandbox adds to every container (CreateSandbox's guest_hook_path).
#[derive(Debug, Clone, Default)]
pub struct GuestHooks {
    pub prestart: Vec<Hook>,
    pub poststart: Vec<Hook>,
    pub poststop: Vec<Hook>,
}

#[derive(Debug)]
pub struct CreateParams<'a> {
    pub container_id: String,
    /// The init's exec id: the request's, or the container id when empty.
    pub exec_id: String,
    pub spec: Spec,
    /// Parent of the per-container state directories.
    pub state_root: &'a Path,
    pub guest_hooks: Option<&'a GuestHooks>,
    pub pidns: PidNs,
    /// `/proc/PID/ns` of the process holding the pod's namespaces, whose ipc and uts the
    /// container joins whatever its pid namespace.
    pub pod_ns: Option<PathBuf>,
    /// Where relative cgroups paths go in the agent's own cgroup.
    pub cgroup_parent: &'a str,
    pub exits: Arc<ExitTable>,
    pub log: slog::Logger,
}

fn invalid(id: &str, why: impl std::fmt::Display) -> AgentError {
    AgentError::InvalidArgument(format!("container {id}: {why}"))
}

/// Checks what the agent needs before anything is created.
pub fn validate(id: &str, spec: &Spec) -> Result<(), AgentError> {
    let root = spec.root().as_ref().ok_or_else(|| invalid(id, "the spec has no root"))?;
    let path = root.path();
    if !path.is_absolute() {
        return Err(invalid(id, format!("root path {} is not absolute", path.display())));
    }
    let process = spec.process().as_ref().ok_or_else(|| invalid(id, "the spec has no process"))?;
    if process.args().as_ref().map_or(true, |a| a.is_empty()) {
        return Err(invalid(id, "process.args is empty"));
    }
    if !path.is_dir() {
        return Err(invalid(id, format!("root path {} is not a directory", path.display())));
    }
    // The launcher resolves destinations inside the rootfs anyway (runc's
    // reading of a relative one); over the protocol such a spec is a mistake
    // or an attempt, so it is refused and named.
    for m in spec.mounts().iter().flatten() {
        crate::guest_path::check("mount destination", m.destination()).map_err(|e| invalid(id, e))?;
    }
    Ok(())
}

/// Sets the pid namespace the sandbox decided on, replacing any the host gave.
pub fn set_pid_namespace(spec: &mut Spec, pidns: &PidNs) {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    namespaces.retain(|n| n.typ() != LinuxNamespaceType::Pid);
    let mut ns = LinuxNamespace::default();
    ns.set_typ(LinuxNamespaceType::Pid);
    if let PidNs::Join(path) = pidns {
        ns.set_path(Some(path.clone()));
    }
    namespaces.push(ns);
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
}

/// Points the spec's ipc and uts entries at those of the process holding the pod's
/// namespaces (`ns_dir` is its `/proc/PID/ns`). The containers of a Kubernetes pod share them
/// whether or not they share its pid namespace, and Kata's agent shares them sandbox-wide; a
/// spec without such an entry (the VM's own, as hostIPC asks) keeps it that way.
pub fn join_pod_namespaces(spec: &mut Spec, ns_dir: &Path) {
    let Some(mut linux) = spec.linux().clone() else { return };
    let Some(mut namespaces) = linux.namespaces().clone() else { return };
    for ns in namespaces.iter_mut() {
        let name = match ns.typ() {
            LinuxNamespaceType::Ipc => "ipc",
            LinuxNamespaceType::Uts => "uts",
            _ => continue,
        };
        ns.set_path(Some(ns_dir.join(name)));
    }
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
}

/// Appends the sandbox's guest hooks after the container's own.
pub fn append_guest_hooks(spec: &mut Spec, guest: &GuestHooks) {
    let mut hooks = spec.hooks().clone().unwrap_or_default();
    let join = |own: &Option<Vec<Hook>>, extra: &[Hook]| -> Option<Vec<Hook>> {
        let mut all = own.clone().unwrap_or_default();
        all.extend_from_slice(extra);
        (!all.is_empty()).then_some(all)
    };
    #[allow(deprecated)] // prestart is what guest hook directories provide, as in Kata.
    let prestart = join(hooks.prestart(), &guest.prestart);
    #[allow(deprecated)]
    hooks.set_prestart(prestart);
    hooks.set_poststart(join(hooks.poststart(), &guest.poststart));
    hooks.set_poststop(join(hooks.poststop(), &guest.poststop));
    spec.set_hooks(Some(hooks));
}

fn console_size(spec: &Spec) -> (u16, u16) {
    let clamp = |v: u64| u16::try_from(v).unwrap_or(u16::MAX);
    spec.process().as_ref().and_then(|p| p.console_size()).map_or((0, 0), |b| (clamp(b.height()), clamp(b.width())))
}

/// Creates the container: state directory, stdio, the launched init.
pub async fn create(p: CreateParams<'_>) -> Result<Container, AgentError> {
    let id = p.container_id;
    let log = p.log;
    let mut spec = p.spec;
    validate(&id, &spec)?;
    set_pid_namespace(&mut spec, &p.pidns);
    if let Some(ns_dir) = &p.pod_ns {
        join_pod_namespaces(&mut spec, ns_dir);
    }
    if let Some(guest) = p.guest_hooks {
        append_guest_hooks(&mut spec, guest);
    }

    let bundle = p.state_root.join(&id);
    let io_err = |what: String| move |source| AgentError::Io { what, source };
    match std::fs::remove_dir_all(&bundle) {
        Ok(()) => slog::warn!(log, "stale state directory replaced"; "path" => %bundle.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("cannot clear {}", bundle.display()))(e)),
    }
    std::fs::create_dir_all(&bundle).map_err(io_err(format!("cannot create {}", bundle.display())))?;
    let created = launch_init(&id, &p.exec_id, spec, &bundle, p.cgroup_parent, &p.exits, &log).await;
    match created {
        Ok((spec, init, start, cgroup)) => Ok(Container {
            id,
            log,
            spec,
            bundle,
            init: Arc::new(init),
            execs: Mutex::new(HashMap::new()),
            phase: tokio::sync::Mutex::new(Phase::Created(start)),
            exits: p.exits,
            exec_creation: tokio::sync::Mutex::new(()),
            mounts: Mutex::new(Vec::new()),
            cgroup: Mutex::new(cgroup.map(Arc::new)),
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&bundle);
            Err(e)
        }
    }
}

async fn launch_init(
    id: &str,
    exec_id: &str,
    spec: Spec,
    bundle: &Path,
    cgroup_parent: &str,
    exits: &Arc<ExitTable>,
    log: &slog::Logger,
) -> Result<(Spec, Process, launch::StartHandle, Option<CgroupManager>), AgentError> {
    let config = serde_json::to_vec_pretty(&spec).map_err(|e| invalid(id, format!("cannot encode the spec: {e}")))?;
    let config_path = bundle.join("config.json");
    std::fs::write(&config_path, config)
        .map_err(|source| AgentError::Io { what: format!("cannot write {}", config_path.display()), source })?;

    let terminal = spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
    let plog = log.new(slog::o!("exec_id" => exec_id.to_owned()));
    let (io, fds) = stdio::open(terminal, console_size(&spec), None, &plog).map_err(|source| AgentError::Stdio {
        container_id: id.to_owned(),
        exec_id: exec_id.to_owned(),
        source,
    })?;
    let req = InitRequest { container_id: id.to_owned(), spec: spec.clone(), bundle: bundle.to_owned(), stdio: fds };
    let ticket = exits.ticket();
    let (cid, parent, cg_log) = (id.to_owned(), cgroup_parent.to_owned(), log.clone());
    let created = tokio::task::spawn_blocking(move || {
        let cgroup = make_cgroup(&cid, &parent, &req.spec, &cg_log)?;
        let _own = reaper::own_children();
        // The launcher's first process joins the cgroup before it forks, so
        // the container's every process is in it from the start.
        let place = |pid: i32| match &cgroup {
            Some(cg) => cg.add_pid(pid).map_err(|e| crate::error::chain(&e)),
            None => Ok(()),
        };
        match launch::create(req, place) {
            Ok(created) => Ok((created, cgroup)),
            Err(source) => {
                if let Some(Err(e)) = cgroup.map(CgroupManager::destroy) {
                    slog::warn!(cg_log, "cgroup not removed"; "error" => %crate::error::chain(&e));
                }
                Err(AgentError::Launch { container_id: cid, source })
            }
        }
    })
    .await
    .map_err(|e| AgentError::FailedPrecondition(format!("launch of {id}: {e}")))??;
    let (created, cgroup) = created;
    let exit = exits.register(created.pid, ticket);
    slog::info!(plog, "container created"; "child_pid" => created.pid, "terminal" => terminal,
        "cgroup" => cgroup.as_ref().and_then(|c| c.paths().first()).map(|p| p.display().to_string()));
    let init = Process::new(exec_id.to_owned(), created.pid, io, exit, plog);
    Ok((spec, init, created.start, cgroup))
}

/// The container's cgroup at `linux.cgroupsPath` (the container id when the
/// spec has none; relative paths go below `parent`) with the spec's
/// resources. A guest or host with no cgroup hierarchy at all runs the
/// container without one, and says so.
fn make_cgroup(id: &str, parent: &str, spec: &Spec, log: &slog::Logger) -> Result<Option<CgroupManager>, AgentError> {
    let linux = spec.linux().as_ref();
    let path = linux
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| id.to_owned());
    let resources = with_default_devices(spec);
    let cgroup_err = |source| AgentError::Cgroup { container_id: id.to_owned(), source };
    let layout = match Layout::discover() {
        Ok(layout) => layout,
        Err(CgroupError::NoHierarchy) => {
            slog::warn!(log, "no cgroup hierarchy mounted; the container runs without a cgroup");
            return Ok(None);
        }
        Err(e) => return Err(cgroup_err(e)),
    };
    CgroupManager::create_in(&layout, parent, &path, Some(&resources)).map(Some).map_err(cgroup_err)
}

/// Character devices every container may use whatever its rules say, as runc
/// and Kata allow them: null, zero, full, random, urandom, tty, ptmx, the pty
/// slaves; plus mknod of anything (the launcher creates `linux.devices`).
/// `runc spec` and Kata start the device rules with "deny all": without these
/// the container could not even open /dev/null.
const DEFAULT_DEVICES: [(LinuxDeviceType, Option<i64>, Option<i64>, &str); 10] = [
    (LinuxDeviceType::C, None, None, "m"),
    (LinuxDeviceType::B, None, None, "m"),
    (LinuxDeviceType::C, Some(1), Some(3), "rwm"),
    (LinuxDeviceType::C, Some(1), Some(5), "rwm"),
    (LinuxDeviceType::C, Some(1), Some(7), "rwm"),
    (LinuxDeviceType::C, Some(1), Some(8), "rwm"),
    (LinuxDeviceType::C, Some(1), Some(9), "rwm"),
    (LinuxDeviceType::C, Some(5), Some(0), "rwm"),
    (LinuxDeviceType::C, Some(5), Some(2), "rwm"),
    (LinuxDeviceType::C, Some(136), None, "rwm"),
];

/// The spec's resources with the default devices and every `linux.devices`
/// entry allowed after the spec's own rules (so a leading "deny all" keeps
/// its meaning for everything else).
fn with_default_devices(spec: &Spec) -> LinuxResources {
    let linux = spec.linux().as_ref();
    let mut resources = linux.and_then(|l| l.resources().clone()).unwrap_or_default();
    let mut rules = resources.devices().clone().unwrap_or_default();
    for (typ, major, minor, access) in DEFAULT_DEVICES {
        let mut rule = LinuxDeviceCgroup::default();
        rule.set_allow(true);
        rule.set_typ(Some(typ));
        rule.set_major(major);
        rule.set_minor(minor);
        rule.set_access(Some(access.to_owned()));
        rules.push(rule);
    }
    let devices = linux.and_then(|l| l.devices().as_ref()).map(Vec::as_slice).unwrap_or_default();
    rules.extend(devices.iter().map(LinuxDeviceCgroup::from));
    resources.set_devices(Some(rules));
    resources
}

/// Reads a guest hook directory: executables in `prestart/`, `poststart/`
/// and `poststop/` below `dir`, in name order.
pub fn load_guest_hooks(dir: &Path) -> Result<GuestHooks, std::io::Error> {
    use std::os::unix::fs::PermissionsExt as _;
    let stage = |name: &str| -> Result<Vec<Hook>, std::io::Error> {
        let d = dir.join(name);
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
            .map(|e| e.path())
            .collect();
        paths.sort();
        Ok(paths
            .into_iter()
            .map(|path| {
                let mut h = Hook::default();
                h.set_args(Some(vec![path.display().to_string(), name.to_owned()]));
                h.set_path(path);
                h
            })
            .collect())
    };
    Ok(GuestHooks { prestart: stage("prestart")?, poststart: stage("poststart")?, poststop: stage("poststop")? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{Hooks, ProcessBuilder, RootBuilder, SpecBuilder};

    fn spec(root: &str, args: &[&str]) -> Spec {
        let process = ProcessBuilder::default().args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>()).build();
        let root = RootBuilder::default().path(root).build().unwrap();
        SpecBuilder::default().root(root).process(process.unwrap()).build().unwrap()
    }

    #[test]
    fn deny_all_keeps_the_default_devices_and_the_specs_own_devices_usable() {
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","root":{"path":"/r"},"linux":{
                "devices":[{"path":"/dev/vda","type":"b","major":254,"minor":0}],
                "resources":{"devices":[{"allow":false,"access":"rwm"}]}}}"#,
        )
        .unwrap();
        let rules: Vec<String> =
            with_default_devices(&spec).devices().clone().unwrap().iter().map(|r| r.to_string()).collect();
        assert!(rules[0].starts_with("a"), "the spec's deny-all stays first: {rules:?}");
        for want in ["c 1:3 rwm", "c 5:2 rwm", "c 136:* rwm", "b 254:0 rwm", "c *:* m"] {
            assert!(rules.iter().any(|r| r == want), "{want} missing from {rules:?}");
        }
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        validate("c", &spec(root, &["sh"])).unwrap();
        let e = validate("c", &spec("rootfs", &["sh"])).unwrap_err().to_string();
        assert!(e.contains("not absolute"), "{e}");
        let e = validate("c", &spec(root, &[])).unwrap_err().to_string();
        assert!(e.contains("args"), "{e}");
        let e = validate("c", &spec("/nonexistent/rootfs", &["sh"])).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        for dest in ["../../etc", "/a/../../etc", "etc"] {
            let mut s = spec(root, &["sh"]);
            let m = oci_spec::runtime::MountBuilder::default().destination(dest).typ("tmpfs").build().unwrap();
            s.set_mounts(Some(vec![m]));
            let e = validate("c", &s).unwrap_err().to_string();
            assert!(e.contains(dest) && e.contains("absolute"), "{e}");
        }
    }

    #[test]
    fn the_pid_namespace_is_the_sandboxs_choice() {
        let mut s = spec("/", &["sh"]);
        let mut host = LinuxNamespace::default();
        host.set_typ(LinuxNamespaceType::Pid);
        host.set_path(Some("/proc/4242/ns/pid".into()));
        let mut linux = oci_spec::runtime::Linux::default();
        linux.set_namespaces(Some(vec![host]));
        s.set_linux(Some(linux));
        set_pid_namespace(&mut s, &PidNs::New);
        let pid: Vec<_> = s
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|n| n.typ() == LinuxNamespaceType::Pid)
            .collect();
        assert_eq!(pid.len(), 1);
        assert!(pid[0].path().is_none(), "the host's path is dropped");
        set_pid_namespace(&mut s, &PidNs::Join("/proc/7/ns/pid".into()));
        let ns = s.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let pid: Vec<_> = ns.iter().filter(|n| n.typ() == LinuxNamespaceType::Pid).collect();
        assert_eq!(pid[0].path().as_deref(), Some(Path::new("/proc/7/ns/pid")));
    }

    #[test]
    fn a_pod_container_joins_the_holders_ipc_and_uts_whatever_its_pid_namespace() {
        let mut s = spec("/", &["sh"]);
        let mut linux = oci_spec::runtime::Linux::default();
        let entries = [LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts, LinuxNamespaceType::Mount];
        linux.set_namespaces(Some(
            entries
                .iter()
                .map(|t| {
                    let mut n = LinuxNamespace::default();
                    n.set_typ(*t);
                    n
                })
                .collect(),
        ));
        s.set_linux(Some(linux));
        set_pid_namespace(&mut s, &PidNs::New);
        join_pod_namespaces(&mut s, Path::new("/proc/7/ns"));
        let ns = s.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let path = |t| ns.iter().find(|n| n.typ() == t).and_then(|n| n.path().clone());
        assert_eq!(path(LinuxNamespaceType::Pid), None, "its own pid namespace");
        assert_eq!(path(LinuxNamespaceType::Ipc).as_deref(), Some(Path::new("/proc/7/ns/ipc")));
        assert_eq!(path(LinuxNamespaceType::Uts).as_deref(), Some(Path::new("/proc/7/ns/uts")));
        assert_eq!(path(LinuxNamespaceType::Mount), None, "the mount namespace stays the container's own");
        assert!(ns.iter().all(|n| n.typ() != LinuxNamespaceType::Network), "absent kinds are not added");
    }

    #[test]
    fn guest_hooks_come_from_the_stage_directories_and_follow_the_containers() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        for (stage, name, mode) in [
            ("prestart", "b", 0o755),
            ("prestart", "a", 0o755),
            ("poststop", "z", 0o755),
            ("poststop", "not-exec", 0o644),
        ] {
            std::fs::create_dir_all(dir.path().join(stage)).unwrap();
            let p = dir.path().join(stage).join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let guest = load_guest_hooks(dir.path()).unwrap();
        let names: Vec<_> = guest.prestart.iter().map(|h| h.path().file_name().unwrap().to_owned()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(guest.poststop.len(), 1, "a file that is not executable is no hook");
        assert!(guest.poststart.is_empty(), "a missing stage directory is no hooks");

        let mut s = spec("/", &["sh"]);
        let mut own = Hook::default();
        own.set_path("/own".into());
        let mut hooks = Hooks::default();
        hooks.set_poststop(Some(vec![own]));
        s.set_hooks(Some(hooks));
        append_guest_hooks(&mut s, &guest);
        let poststop = s.hooks().as_ref().unwrap().poststop().clone().unwrap();
        assert_eq!(poststop[0].path(), Path::new("/own"));
        assert_eq!(poststop[1].path().file_name().unwrap(), "z");
        assert!(s.hooks().as_ref().unwrap().poststart().is_none());
    }
}
