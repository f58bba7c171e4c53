//! A checker of Kata's runtime-to-agent conventions, fed with the requests the shim builds
//! from what real clients send: so a regression that Kata's own agent would refuse (or, worse,
//! run differently) is caught without Kata's binaries, which CI cannot build.
//!
//! The rules, and where Kata states them:
//! - no pid, network or time namespace in the spec, no namespace path, no type listed twice,
//!   only types Kata's agent knows (`kata_agent.go`: `handlePidNamespace`, `constrainGRPCSpec`;
//!   the agent's `rustjail` namespace table);
//! - `sandbox_pidns` exactly when the client's spec joined a pid namespace by path;
//! - after Kata's agent adds its own pid entry (`update_container_namespaces`) there is one;
//! - no hooks (they ran on the host), an absolute guest root, the container id as the init's
//!   exec id (`ExecId: c.id`);
//! - ExecProcess names the container and a distinct exec id, and carries a process to run.
//!
//! The client specs: `ctr run`'s is containerd 1.6.20's own (`testdata/ctr-run.json`, the
//! output of `ctr oci spec`); the CRI ones are that spec with the namespaces and annotations
//! containerd 1.6's CRI plugin sets for the pods of `tests/tests/cri_pods.rs`
//! (`sandbox_run_linux.go`, `container_create_linux.go`, `WithPodNamespaces`).

use std::path::Path;

use protocols::agent as pb;

use super::guest;

/// The namespace types Kata's agent accepts (rustjail's `TYPETONAME`).
const KATA_AGENT_TYPES: [&str; 7] = ["ipc", "user", "pid", "network", "mount", "cgroup", "uts"];

/// What Kata's conventions find wrong in `req`, built from the client's `spec`.
fn create_violations(spec: &oci_spec::runtime::Spec, req: &pb::CreateContainerRequest) -> Vec<String> {
    let mut found = Vec::new();
    if req.container_id.is_empty() || req.exec_id != req.container_id {
        found.push(format!("exec id {:?} is not the container id {:?}", req.exec_id, req.container_id));
    }
    let Some(oci) = req.OCI.as_ref() else {
        found.push("no OCI spec".to_owned());
        return found;
    };
    if oci.Hooks.is_some() {
        found.push("hooks are sent (they ran on the host)".to_owned());
    }
    if !oci.Root.Path.starts_with('/') {
        found.push(format!("root {:?} is not an absolute guest path", oci.Root.Path));
    }
    let namespaces = oci.Linux.as_ref().map(|l| l.Namespaces.clone()).unwrap_or_default();
    let mut seen = Vec::new();
    for ns in &namespaces {
        let typ = ns.Type.as_str();
        if ["pid", "network", "time"].contains(&typ) {
            found.push(format!("namespace {typ} is sent (Kata's runtime removes it)"));
        }
        if !KATA_AGENT_TYPES.contains(&typ) {
            found.push(format!("Kata's agent does not know namespace type {typ:?}"));
        }
        if !ns.Path.is_empty() {
            found.push(format!("namespace {typ} keeps the host path {:?}", ns.Path));
        }
        if seen.contains(&typ) {
            found.push(format!("namespace {typ} is listed twice"));
        }
        seen.push(typ);
    }
    // Kata's agent appends its own pid entry: one it must stay.
    let pids = namespaces.iter().filter(|ns| ns.Type == "pid").count() + 1;
    if pids != 1 {
        found.push(format!("Kata's agent would hold {pids} pid entries"));
    }
    let joined = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .any(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Pid && ns.path().is_some());
    if req.sandbox_pidns != joined {
        found.push(format!(
            "sandbox_pidns is {} but the client's spec joined a pid namespace: {joined}",
            req.sandbox_pidns
        ));
    }
    found
}

/// What Kata's conventions find wrong in an ExecProcess request for `container`.
fn exec_violations(container: &str, req: &pb::ExecProcessRequest) -> Vec<String> {
    let mut found = Vec::new();
    if req.container_id != container {
        found.push(format!("container id {:?}, not {container:?}", req.container_id));
    }
    if req.exec_id.is_empty() || req.exec_id == req.container_id {
        found.push(format!("exec id {:?} is empty or the container's", req.exec_id));
    }
    match req.process.as_ref() {
        None => found.push("no process".to_owned()),
        Some(p) if p.Args.is_empty() => found.push("the process has no args".to_owned()),
        Some(_) => {}
    }
    found
}

/// containerd 1.6.20's default spec (`ctr oci spec`), as `ctr run IMAGE ID ARGS` completes it.
fn ctr_run_spec(args: &[&str]) -> serde_json::Value {
    let mut spec: serde_json::Value = serde_json::from_str(include_str!("testdata/ctr-run.json")).unwrap();
    spec["process"]["args"] = serde_json::json!(args);
    spec["root"] = serde_json::json!({"path": "rootfs"});
    spec
}

/// A CRI plugin spec: the default spec with a pod role's annotations and namespaces.
fn cri_spec(args: &[&str], annotations: serde_json::Value, namespaces: serde_json::Value) -> serde_json::Value {
    let mut spec = ctr_run_spec(args);
    spec["root"]["readonly"] = serde_json::json!(true);
    spec["annotations"] = annotations;
    spec["linux"]["namespaces"] = namespaces;
    spec
}

/// The pause container of `cri_pods`' pods: pod pid and ipc, host network (no network entry),
/// or with `netns` the namespace containerd ran CNI in.
fn cri_sandbox(netns: Option<&str>) -> serde_json::Value {
    let mut namespaces = serde_json::json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]);
    if let Some(path) = netns {
        namespaces.as_array_mut().unwrap().push(serde_json::json!({"type": "network", "path": path}));
    }
    cri_spec(
        &["/pause"],
        serde_json::json!({
            "io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.sandbox-id": "5f0c",
            "io.kubernetes.cri.sandbox-name": "pod1",
            "io.kubernetes.cri.sandbox-namespace": "default",
            "io.kubernetes.cri.sandbox-log-directory": "/tmp/wisp-cri-x/logs/pod1",
            "io.kubernetes.cri.sandbox-memory": "67108864",
            "io.kubernetes.cri.sandbox-cpu-quota": "50000",
            "io.kubernetes.cri.sandbox-cpu-period": "100000",
            "io.kubernetes.cri.sandbox-cpu-shares": "2"
        }),
        namespaces,
    )
}

/// A container of that pod (the shim reports QEMU's pid, 4242, as the sandbox's): in the pod's
/// pid namespace (`NamespaceMode::Pod`, the test's default) or its own (`Container`).
fn cri_container(shares_pid: bool) -> serde_json::Value {
    let mut namespaces = serde_json::json!([
        {"type": "ipc", "path": "/proc/4242/ns/ipc"},
        {"type": "uts", "path": "/proc/4242/ns/uts"},
        {"type": "mount"},
        {"type": "network", "path": "/proc/4242/ns/net"},
        {"type": "cgroup"}
    ]);
    let pid = if shares_pid {
        serde_json::json!({"type": "pid", "path": "/proc/4242/ns/pid"})
    } else {
        serde_json::json!({"type": "pid"})
    };
    namespaces.as_array_mut().unwrap().push(pid);
    cri_spec(
        &["sh", "-c", "echo sleeper-up; exec sleep 3600"],
        serde_json::json!({
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": "sleeper",
            "io.kubernetes.cri.image-name": "docker.io/library/wisp-busybox:1",
            "io.kubernetes.cri.sandbox-id": "5f0c",
            "io.kubernetes.cri.sandbox-name": "pod1",
            "io.kubernetes.cri.sandbox-namespace": "default"
        }),
        namespaces,
    )
}

/// The request the shim's Create builds for `json` (rootfs and shares stubbed).
fn request_for(cid: &str, json: &serde_json::Value) -> (oci_spec::runtime::Spec, pb::CreateContainerRequest) {
    let spec: oci_spec::runtime::Spec = serde_json::from_value(json.clone()).unwrap();
    let bundle = tempfile::tempdir().unwrap();
    let share =
        |name: &str, _: &Path, _read_only: bool| Ok(format!("/run/kata-containers/shared/containers/{cid}/{name}"));
    let rootfs = format!("/run/kata-containers/shared/containers/{cid}/rootfs");
    let req = guest::create_request(cid, &spec, bundle.path(), rootfs, share).unwrap();
    (spec, req)
}

fn assert_conforms(cid: &str, json: &serde_json::Value) -> pb::CreateContainerRequest {
    let (spec, req) = request_for(cid, json);
    let found = create_violations(&spec, &req);
    assert!(found.is_empty(), "{cid}: {found:#?}");
    req
}

fn namespace_types(req: &pb::CreateContainerRequest) -> Vec<&str> {
    req.OCI.Linux.Namespaces.iter().map(|ns| ns.Type.as_str()).collect()
}

#[test]
fn ctr_run_conforms_and_gets_its_own_pid_namespace() {
    let req = assert_conforms("c1", &ctr_run_spec(&["sh", "-c", "exit 4"]));
    assert!(!req.sandbox_pidns, "ctr run: the agent gives it a pid namespace of its own");
    assert_eq!(namespace_types(&req), ["ipc", "uts", "mount"], "the VM's network, no pid entry");
}

#[test]
fn ctr_exec_and_exec_t_conform() {
    let req = assert_conforms("c1", &ctr_run_spec(&["sleep", "3600"]));
    // ctr exec sends the container's process with the new args (and -t: a terminal).
    for (exec_id, terminal) in [("e1", false), ("e2", true)] {
        let mut process: oci_spec::runtime::Process =
            serde_json::from_value(ctr_run_spec(&["sh", "-c", "echo exec"])["process"].clone()).unwrap();
        process.set_terminal(Some(terminal));
        let pb_process = guest::exec_process(&process, terminal);
        let exec = guest::exec_request(&req.container_id, exec_id, &pb_process);
        let found = exec_violations(&req.container_id, &exec);
        assert!(found.is_empty(), "{exec_id}: {found:#?}");
        assert_eq!(exec.process.Terminal, terminal);
    }
}

#[test]
fn a_cri_pods_sandbox_and_containers_conform() {
    for netns in [None, Some("/var/run/netns/cni-1f3e")] {
        let sandbox = assert_conforms("5f0c", &cri_sandbox(netns));
        assert!(!sandbox.sandbox_pidns, "the pause container is the first: it creates the pod's pid namespace");
        assert_eq!(namespace_types(&sandbox), ["ipc", "uts", "mount"]);
    }
    let shared = assert_conforms("sleeper", &cri_container(true));
    assert!(shared.sandbox_pidns, "a container in the pod's pid namespace asks for it");
    assert_eq!(
        namespace_types(&shared),
        ["ipc", "uts", "mount", "cgroup"],
        "ipc and uts: the agent makes them the pod's"
    );
    let own = assert_conforms("loner", &cri_container(false));
    assert!(!own.sandbox_pidns, "a container with its own pid namespace (kubelet's default) does not");
}

#[test]
fn a_time_namespace_is_not_sent() {
    let mut json = ctr_run_spec(&["true"]);
    json["linux"]["namespaces"].as_array_mut().unwrap().push(serde_json::json!({"type": "time"}));
    let req = assert_conforms("docker-29", &json);
    assert!(!namespace_types(&req).contains(&"time"));
}

#[test]
fn the_checker_catches_what_the_shim_sent_before() {
    // e92c9f2 kept the pid entry and a path-less network entry, and asked for the pod's pid
    // namespace on the pause container: what made Kata's agent's ExecProcess fail.
    let (spec, mut req) = request_for("c1", &ctr_run_spec(&["sh"]));
    for typ in ["pid", "network"] {
        let ns = protocols::oci::LinuxNamespace { Type: typ.into(), ..Default::default() };
        req.OCI.mut_or_insert_default().Linux.mut_or_insert_default().Namespaces.push(ns);
    }
    let found = create_violations(&spec, &req);
    assert!(found.iter().any(|v| v.contains("namespace pid is sent")), "{found:#?}");
    assert!(found.iter().any(|v| v.contains("namespace network is sent")), "{found:#?}");
    assert!(found.iter().any(|v| v.contains("2 pid entries")), "{found:#?}");
    let (spec, mut req) = request_for("5f0c", &cri_sandbox(None));
    req.sandbox_pidns = true;
    assert_eq!(create_violations(&spec, &req).len(), 1);
    let exec = guest::exec_request("c1", "c1", &Default::default());
    assert_eq!(exec_violations("c1", &exec).len(), 2, "the init's id as an exec id, and no args");
}
