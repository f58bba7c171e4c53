//! `wisp-runtime`'s command line, run as a caller runs it (the built binary, a private `--root`
//! in a temporary directory, no VM, no root needed): what it prints, where errors go (stderr
//! and the `--log` file in the format asked), its exit status, and what it leaves behind.
//!
//! Records of containers are made with the library's store (the lifecycle that makes them is
//! not here yet), with real processes as monitors: this test process (alive) and a `sleep`
//! killed with SIGKILL (a monitor that died without a word).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use wisp_shim::runtime::store::{ContainerState, Monitor, Status, Store};
use wisp_shim::state::ProcFs;

const BIN: &str = env!("CARGO_BIN_EXE_wisp-runtime");

/// A private root and log in a temporary directory.
struct Runtime {
    dir: tempfile::TempDir,
}

impl Runtime {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir") }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("log.json")
    }

    /// `wisp-runtime --root ROOT --log LOG --log-format json ARGS` (as containerd's runc shim).
    fn run(&self, args: &[&str]) -> Output {
        let root = self.root();
        let log = self.log();
        let globals = ["--root", root.to_str().unwrap(), "--log", log.to_str().unwrap(), "--log-format", "json"];
        self.raw(&globals, args)
    }

    /// The same with `--flag=value` (as conmon).
    fn run_eq(&self, args: &[&str]) -> Output {
        let root = format!("--root={}", self.root().display());
        let log = format!("--log={}", self.log().display());
        self.raw(&[&root, &log, "--log-format=json"], args)
    }

    fn raw(&self, globals: &[&str], args: &[&str]) -> Output {
        Command::new(BIN).args(globals).args(args).current_dir(self.dir.path()).output().expect("run wisp-runtime")
    }

    /// The log's lines, parsed.
    fn log_lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}"))).collect()
    }

    /// A bundle with runc's default config.json made by `spec`, and `annotations` in it.
    fn bundle(&self, name: &str, annotations: Value) -> PathBuf {
        let bundle = self.dir.path().join(name);
        std::fs::create_dir(&bundle).unwrap();
        let out = self.run(&["spec", "--bundle", bundle.to_str().unwrap()]);
        assert!(out.status.success(), "spec: {}", stderr(&out));
        let path = bundle.join("config.json");
        let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["annotations"] = annotations;
        std::fs::write(&path, config.to_string()).unwrap();
        bundle
    }

    /// A record of container `id` from `bundle` with `monitor` as its monitor.
    fn record(&self, id: &str, bundle: &Path, monitor: Option<Monitor>, status: Status) -> ContainerState {
        let store = Store::new(&self.root());
        let state = ContainerState { monitor, status, ..ContainerState::from_bundle(id, bundle).unwrap() };
        store.create(id).unwrap().save(&state).unwrap();
        state
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A failure as runc reports one: exit 1, `message` on stderr and in the last error line of
/// the json log, nothing on stdout.
fn assert_fails(rt: &Runtime, out: &Output, message: &str) {
    assert_eq!(out.status.code(), Some(1), "stdout {:?} stderr {:?}", stdout(out), stderr(out));
    assert!(stderr(out).contains(message), "stderr {:?} lacks {message:?}", stderr(out));
    assert!(out.stdout.is_empty(), "stdout {:?}", stdout(out));
    let lines = rt.log_lines();
    let last = lines.last().unwrap_or_else(|| panic!("no log line for {message:?}"));
    assert_eq!(last["level"], "error", "{last}");
    assert!(last["msg"].as_str().unwrap().contains(message), "log {last} lacks {message:?}");
    let time = last["time"].as_str().unwrap();
    assert!(time.len() == 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T', "time {time:?}");
}

/// A monitor that died of SIGKILL and was reaped.
fn dead_monitor() -> Monitor {
    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    let monitor = Monitor::of(child.id(), &ProcFs).expect("sleep runs");
    child.kill().unwrap();
    child.wait().unwrap();
    monitor
}

#[test]
fn version_has_runcs_shape() {
    for flag in ["--version", "-v"] {
        let out = Command::new(BIN).arg(flag).output().unwrap();
        assert!(out.status.success());
        let text = stdout(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], format!("wisp-runtime version {}", env!("CARGO_PKG_VERSION")));
        assert!(lines[1].starts_with("commit: ") && lines[1].len() > "commit: ".len(), "{text}");
        assert_eq!(lines[2], format!("spec: {}", oci_spec::runtime::VERSION));
    }
}

#[test]
fn unknown_ids_fail_on_stderr_and_in_the_log_with_either_flag_syntax() {
    let rt = Runtime::new();
    for args in [
        &["state", "nope"][..],
        &["kill", "nope"],
        &["kill", "--all", "nope", "KILL"],
        &["delete", "nope"],
        &["start", "nope"],
        &["pause", "nope"],
        &["resume", "nope"],
        &["ps", "--format", "json", "nope"],
        &["exec", "--process", "/nonexistent.json", "--detach", "nope"],
        &["exec", "nope", "sh", "-c", "true"],
        &["update", "--resources", "-", "nope"],
    ] {
        assert_fails(&rt, &rt.run(args), "container \"nope\" does not exist");
        assert_fails(&rt, &rt.run_eq(args), "container \"nope\" does not exist");
    }
    assert!(!rt.root().join("nope").exists());
}

#[test]
fn bad_input_is_refused_clearly() {
    let rt = Runtime::new();
    assert_fails(&rt, &rt.run(&["state", "a/b"]), "invalid container ID format");
    assert_fails(&rt, &rt.run(&["state", ".."]), "invalid container ID format");
    assert_fails(&rt, &rt.run(&["kill", "c1", "SIGNOPE"]), "unknown signal \"SIGNOPE\"");
    assert_fails(&rt, &rt.run(&["kill"]), "required arguments were not provided");
    assert_fails(&rt, &rt.run(&["exec", "c1"]), "process args cannot be empty");
    assert_fails(&rt, &rt.run(&["--log-format", "json", "frobnicate"]), "unrecognized subcommand");
    // Without --log, the error line itself goes to stderr (logrus text by default).
    let out = rt.raw(&["--root", rt.root().to_str().unwrap()], &["state", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("time=\"") && err.contains(" level=error msg=\"container \\\"nope\\\" does not exist\"\n"),
        "{err}"
    );
    // A log that cannot be opened is itself the error.
    let out = rt.raw(&["--log", "/nonexistent/dir/log.json"], &["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot open the log /nonexistent/dir/log.json"), "{}", stderr(&out));
}

#[test]
fn create_refuses_bad_bundles_ids_and_pid_files_and_leaves_nothing() {
    let rt = Runtime::new();
    let empty = rt.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = empty.to_str().unwrap();
    assert_fails(&rt, &rt.run(&["create", "--bundle", e, "c1"]), "JSON specification file");
    assert_fails(&rt, &rt.run(&["run", "--bundle", e, "c1"]), "config.json not found");
    let bundle = rt.bundle("bundle", Value::Null);
    let b = bundle.to_str().unwrap();
    let pid = rt.dir.path().join("missing/pid");
    assert_fails(
        &rt,
        &rt.run(&["create", "--bundle", b, "--pid-file", pid.to_str().unwrap(), "c1"]),
        "no directory for the pid file",
    );
    assert_fails(&rt, &rt.run(&["create", "--bundle", b, "a/b"]), "invalid container ID format");
    // Podman's socket activation passes descriptors the VM's process could never get.
    let preserving = rt.run(&["create", "--bundle", b, "--preserve-fds", "2", "c1"]);
    assert_fails(&rt, &preserving, "--preserve-fds 2: the process runs in a VM");
    assert_fails(&rt, &rt.run(&["exec", "--preserve-fds", "1", "c1", "true"]), "--preserve-fds 1");
    let root_entries = || std::fs::read_dir(rt.root()).map(|d| d.count()).unwrap_or(0);
    assert_eq!(root_entries(), 0, "a refused create leaves nothing");
    rt.record("c1", &bundle, Some(dead_monitor()), Status::Stopped);
    assert_fails(&rt, &rt.run_eq(&["create", "--bundle", b, "c1"]), "container with id exists: c1");
    assert_eq!(root_entries(), 1);
}

#[test]
fn spec_writes_a_config_that_loads_back_and_never_overwrites() {
    let rt = Runtime::new();
    let out = rt.run(&["spec"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let spec = oci_spec::runtime::Spec::load(rt.dir.path().join("config.json")).unwrap();
    let process = spec.process().as_ref().unwrap();
    assert_eq!((process.args().as_deref(), process.terminal()), (Some(&["sh".to_owned()][..]), Some(true)));
    let before = std::fs::read(rt.dir.path().join("config.json")).unwrap();
    assert_fails(&rt, &rt.run(&["spec"]), "File config.json exists. Remove it first");
    assert_eq!(std::fs::read(rt.dir.path().join("config.json")).unwrap(), before);
    let rootless = rt.dir.path().join("rootless");
    std::fs::create_dir(&rootless).unwrap();
    let out = rt.run(&["spec", "--rootless", "-b", rootless.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let spec = oci_spec::runtime::Spec::load(rootless.join("config.json")).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    assert!(linux.uid_mappings().is_some() && linux.resources().is_none());
}

#[test]
fn state_prints_the_oci_state_and_a_dead_monitor_reads_stopped() {
    let rt = Runtime::new();
    let bundle = rt.bundle("bundle", serde_json::json!({"org.example.a": "1"}));
    let me = Monitor::of(std::process::id(), &ProcFs).unwrap();
    let live = rt.record("live", &bundle, Some(me), Status::Running);
    rt.record("dead", &bundle, Some(dead_monitor()), Status::Running);

    let out = rt.run(&["state", "live"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.starts_with(b"{\n  \"ociVersion\"") && !out.stdout.ends_with(b"\n"), "runc's layout");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = ["ociVersion", "id", "pid", "status", "bundle", "rootfs", "created", "annotations", "owner"];
    want.sort_unstable();
    assert_eq!(fields, want, "every field of the OCI state and runc's rootfs, nothing else");
    assert_eq!(v["ociVersion"], oci_spec::runtime::VERSION);
    assert_eq!(v["id"], "live");
    assert_eq!(v["pid"], std::process::id());
    assert_eq!(v["status"], "running");
    assert_eq!(v["bundle"], bundle.to_str().unwrap());
    assert_eq!(v["rootfs"], bundle.join("rootfs").to_str().unwrap());
    assert_eq!(v["created"], live.created.as_str());
    assert_eq!(v["annotations"], serde_json::json!({"org.example.a": "1"}));
    assert_eq!(v["owner"], "");

    let out = rt.run(&["state", "dead"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&v["status"], &v["pid"]), (&Value::from("stopped"), &Value::from(0)), "SIGKILLed monitor");
    assert_fails(&rt, &rt.run(&["kill", "dead", "9"]), "container not running");
    assert_fails(&rt, &rt.run(&["delete", "gone"]), "does not exist");
    let out = rt.run(&["delete", "--force", "gone"]);
    assert!(out.status.success(), "delete --force of an unknown id succeeds as runc's: {}", stderr(&out));
}

#[test]
fn list_prints_runcs_table_json_and_ids() {
    let rt = Runtime::new();
    let out = rt.run(&["list"]);
    assert_eq!(stdout(&out), "ID          PID         STATUS      BUNDLE      CREATED     OWNER\n");
    assert_eq!(stdout(&rt.run(&["list", "--format", "json"])), "null\n", "runc's empty list");
    let bundle = rt.bundle("bundle", serde_json::json!({}));
    let me = Monitor::of(std::process::id(), &ProcFs).unwrap();
    let b = rt.record("b-container", &bundle, Some(me), Status::Paused);
    let a = rt.record("a", &bundle, Some(dead_monitor()), Status::Created);

    let table = stdout(&rt.run(&["list"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    let cells: Vec<Vec<&str>> = lines.iter().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(cells[0], ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]);
    let owner = wisp_shim::runtime::oci_state::owner_name(nix::unistd::geteuid().as_raw());
    let pid = std::process::id().to_string();
    assert_eq!(cells[1], ["a", "0", "stopped", bundle.to_str().unwrap(), &a.created, &owner]);
    assert_eq!(cells[2], ["b-container", &pid, "paused", bundle.to_str().unwrap(), &b.created, &owner]);
    let column = |name: &str| lines[0].find(name).unwrap();
    for line in &lines[1..] {
        assert_eq!(line.find(bundle.to_str().unwrap()), Some(column("BUNDLE")), "aligned: {table}");
    }

    let json: Value = serde_json::from_str(&stdout(&rt.run(&["list", "-f", "json"]))).unwrap();
    let ids: Vec<&str> = json.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b-container"]);
    assert_eq!(json[1]["owner"], owner.as_str());
    assert_eq!(json[1]["pid"], std::process::id());
    assert_eq!(stdout(&rt.run(&["list", "-q"])), "a\nb-container\n");
}

#[test]
fn features_is_an_oci_features_document() {
    let out = Command::new(BIN).arg("features").output().unwrap();
    assert!(out.status.success());
    let features: oci_spec::runtime::Features = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(features.oci_version_max(), oci_spec::runtime::VERSION);
    assert!(features.hooks().as_ref().is_some_and(|h| h.iter().any(|h| h == "prestart")));
}

#[test]
fn debug_lines_only_with_debug() {
    let rt = Runtime::new();
    assert!(rt.run(&["list"]).status.success());
    assert!(rt.log_lines().is_empty(), "a command that succeeds writes nothing without --debug");
    let root = rt.root();
    let log = rt.log();
    let out = rt.raw(
        &["--root", root.to_str().unwrap(), "--log", log.to_str().unwrap(), "--log-format=json", "--debug"],
        &["list"],
    );
    assert!(out.status.success());
    let lines = rt.log_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["level"], "debug");
    assert!(lines[0]["msg"].as_str().unwrap().ends_with("--debug list"), "{}", lines[0]);
}

/// The network namespace `/proc/<pid>/ns/net` of every process, and the nsfs mounts.
fn netns_in_use() -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path().join("ns/net")).ok())
        .map(|link| link.to_string_lossy().into_owned())
        .collect();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    found.extend(mountinfo.lines().map(str::to_owned));
    found
}

#[test]
fn a_failing_prestart_hook_fails_run_with_its_name_and_leaves_nothing() {
    let rt = Runtime::new();
    let bundle = rt.bundle("hooked", Value::Null);
    let path = bundle.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let root = nix::unistd::geteuid().is_root();
    if !root {
        // A new network namespace needs root; the hook runs the same without one.
        config["linux"]["namespaces"].as_array_mut().unwrap().retain(|ns| ns["type"] != "network");
    }
    // The hook notes the namespace of state.pid (the monitor's), then fails.
    let seen = rt.dir.path().join("seen");
    let script = format!(
        "pid=$(sed -n 's/.*\"pid\":\\([0-9]*\\).*/\\1/p'); echo $pid > {0}; readlink /proc/$pid/ns/net >> {0}; \
         echo broken-hook >&2; exit 9",
        seen.display()
    );
    config["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", script]}]});
    std::fs::write(&path, config.to_string()).unwrap();
    let out = rt.run(&["run", "--bundle", bundle.to_str().unwrap(), "hooked"]);
    assert_fails(&rt, &out, "error running prestart hook #0 (/bin/sh): exit status 9, stdout: , stderr: broken-hook");
    assert_eq!(std::fs::read_dir(rt.root()).map(|d| d.count()).unwrap_or(0), 0, "no record left");
    let seen = std::fs::read_to_string(&seen).expect("the hook ran");
    let mut lines = seen.lines();
    let pid: i32 = lines.next().unwrap().parse().unwrap();
    assert!(std::fs::metadata(format!("/proc/{pid}")).is_err(), "the monitor (state.pid) exited");
    if root {
        let netns = lines.next().unwrap().to_owned();
        let own = std::fs::read_link("/proc/self/ns/net").unwrap().to_string_lossy().into_owned();
        assert!(netns.starts_with("net:[") && netns != own, "the hook saw a namespace of the container's: {netns}");
        let users: Vec<String> = netns_in_use().into_iter().filter(|l| l.contains(&netns)).collect();
        assert!(users.is_empty(), "the container's namespace outlived the failure: {users:?}");
    }
}
