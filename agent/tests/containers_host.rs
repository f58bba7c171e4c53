//! Host tests of the container runtime, as root: the real `wisp-agent` on a
//! unix socket runs containers from a busybox rootfs in a temp directory and
//! is driven over the Kata protocol, as a VM's agent would be.
//!
//! Needs root (namespaces, mounts) and a static busybox at /bin/busybox
//! (`make deps` installs busybox-static). Either missing fails the test.

mod common;
// The container client the VM tests and `make run` use too.
#[path = "../../tests/src/agent_client.rs"]
#[allow(dead_code)]
mod agent_client;

use std::time::{Duration, Instant};

use agent_client::{spec, Container};
use common::{code_of, ctx, Agent};
use protocols::agent::{CopyFileRequest, CreateSandboxRequest};
use protocols::ttrpc::Code;

/// A busybox root filesystem in a temp directory; root is required.
fn rootfs() -> tempfile::TempDir {
    assert_eq!(nix::unistd::geteuid().as_raw(), 0, "containers_host tests need root");
    let dir = tempfile::tempdir().unwrap();
    agent_client::busybox_rootfs(dir.path()).unwrap();
    dir
}

fn path_of(dir: &tempfile::TempDir) -> &str {
    dir.path().to_str().unwrap()
}

/// The agent's live children (zombies included), from /proc.
fn children(agent: &Agent) -> Vec<i32> {
    let me = agent.child.id() as i32;
    let mut kids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else { continue };
        let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:")).map(|v| v.trim().parse::<i32>());
        if ppid == Some(Ok(me)) {
            kids.push(pid);
        }
    }
    kids
}

/// A sandbox with one pid namespace for all, held by a "pause" container.
async fn shared_pidns_sandbox<'a>(
    client: &'a protocols::agent_ttrpc::AgentServiceClient,
    root: &tempfile::TempDir,
) -> Container<'a> {
    let mut req = CreateSandboxRequest::new();
    req.sandbox_pidns = true;
    client.create_sandbox(ctx(), &req).await.unwrap();
    run(client, "pause", spec(path_of(root), &["/bin/sleep", "100"], false)).await
}

/// Create and start, or fail the test.
async fn run<'a>(
    client: &'a protocols::agent_ttrpc::AgentServiceClient,
    id: &str,
    spec: protocols::oci::Spec,
) -> Container<'a> {
    Container::run(client, id, spec, Vec::new()).await.expect("CreateContainer + StartContainer")
}

#[tokio::test]
async fn echo_prints_and_exits_zero() {
    let (agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;
    let c = run(&client, "echo", spec(path_of(&root), &["/bin/echo", "hello"], false)).await;
    assert_eq!(c.read_to_eof("echo", false).await.unwrap(), b"hello\n");
    // Kata's answer at EOF, which the Kata shim's copy loop relies on.
    let (code, msg) = code_of(c.read("echo", false).await.unwrap_err());
    assert_eq!(code, Code::INTERNAL, "{msg}");
    assert!(msg.contains("read meet eof"), "{msg}");
    assert_eq!(c.wait("echo").await.unwrap(), 0);
    assert_eq!(c.wait("").await.unwrap(), 0, "an empty exec id is the init; waiting twice answers at once");
    c.remove().await.unwrap();
    assert_eq!(std::fs::read_dir(&agent.state).unwrap().count(), 0, "state directory removed");
}

#[tokio::test]
async fn exit_codes_and_signal_deaths_are_what_waitpid_said() {
    let (agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;
    let c = run(&client, "three", spec(path_of(&root), &["/bin/sh", "-c", "exit 3"], false)).await;
    assert_eq!(c.wait("three").await.unwrap(), 3);
    c.remove().await.unwrap();

    let c = run(&client, "killed", spec(path_of(&root), &["/bin/sh", "-c", "exec sleep 100"], false)).await;
    c.signal("killed", 9).await.unwrap();
    assert_eq!(c.wait("killed").await.unwrap(), 128 + 9);
    c.remove().await.unwrap();
}

#[tokio::test]
async fn stdin_reaches_cat_and_closing_it_ends_cat() {
    let (agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;
    let c = run(&client, "cat", spec(path_of(&root), &["/bin/cat"], false)).await;
    assert_eq!(c.write("cat", b"one\n").await.unwrap(), 4);
    assert_eq!(c.write("cat", b"two\n").await.unwrap(), 4);
    c.close_stdin("cat").await.unwrap();
    assert_eq!(c.read_to_eof("cat", false).await.unwrap(), b"one\ntwo\n");
    assert_eq!(c.wait("cat").await.unwrap(), 0);
    let (code, msg) = code_of(c.write("cat", b"late").await.unwrap_err());
    assert_eq!(code, Code::FAILED_PRECONDITION, "{msg}");
    c.remove().await.unwrap();
}

#[tokio::test]
async fn a_terminal_has_the_console_size_and_follows_resizes() {
    let (agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;
    let c = run(&client, "tty", spec(path_of(&root), &["/bin/sh", "-c", "stty size; read x; stty size"], true)).await;
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains("24 80") {
        out.extend(c.read("tty", false).await.expect("output before the resize"));
    }
    c.resize("tty", 30, 100).await.expect("TtyWinResize");
    c.write("tty", b"go\n").await.unwrap();
    let rest = String::from_utf8_lossy(&c.read_to_eof("tty", false).await.unwrap()).into_owned();
    assert!(rest.contains("30 100"), "{rest:?}");
    assert_eq!(c.wait("tty").await.unwrap(), 0);
    let (code, _) = code_of(c.read("tty", true).await.unwrap_err());
    assert_eq!(code, Code::INTERNAL, "a terminal's stderr is at EOF");
    c.remove().await.unwrap();
}

#[tokio::test]
async fn execs_run_inside_and_die_alone() {
    let (agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;
    let c = run(&client, "box", spec(path_of(&root), &["/bin/sh", "-c", "exec sleep 100"], false)).await;
    c.exec("hi", &["/bin/echo", "inside"]).await.expect("ExecProcess");
    assert_eq!(c.read_to_eof("hi", false).await.unwrap(), b"inside\n");
    assert_eq!(c.wait("hi").await.unwrap(), 0);

    c.exec("sleeper", &["/bin/sleep", "100"]).await.expect("ExecProcess");
    let (code, msg) = code_of(c.exec("sleeper", &["/bin/true"]).await.unwrap_err());
    assert_eq!(code, Code::ALREADY_EXISTS, "{msg}");
    c.signal("sleeper", 9).await.unwrap();
    assert_eq!(c.wait("sleeper").await.unwrap(), 137);
    // The container lives on: another exec still runs in it.
    c.exec("after", &["/bin/true"]).await.expect("exec after killing one exec");
    assert_eq!(c.wait("after").await.unwrap(), 0);

    // An empty exec id signals every process of the container.
    c.exec("second", &["/bin/sleep", "100"]).await.unwrap();
    c.signal("", 9).await.unwrap();
    assert_eq!(c.wait("second").await.unwrap(), 137);
    assert_eq!(c.wait("box").await.unwrap(), 137);
    let (code, msg) = code_of(c.exec("late", &["/bin/true"]).await.unwrap_err());
    assert_eq!(code, Code::FAILED_PRECONDITION, "{msg}");
    c.remove().await.unwrap();
}

#[tokio::test]
async fn output_of_a_process_that_exited_unread_is_all_there() {
    let (agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;
    let script = "dd if=/dev/zero bs=1024 count=200 2>/dev/null | tr '\\0' a; echo done >&2";
    let c = run(&client, "big", spec(path_of(&root), &["/bin/sh", "-c", script], false)).await;
    assert_eq!(c.wait("big").await.unwrap(), 0, "exits without anyone reading");
    let out = c.read_to_eof("big", false).await.unwrap();
    assert_eq!(out.len(), 200 * 1024);
    assert!(out.iter().all(|&b| b == b'a'));
    assert_eq!(c.read("big", true).await.unwrap(), b"done\n");
    c.remove().await.unwrap();
}

#[tokio::test]
async fn twenty_containers_come_and_go_without_leaks() {
    let (agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;
    let mut all = Vec::new();
    for i in 0..20 {
        all.push(
            run(&client, &format!("c{i}"), spec(path_of(&root), &["/bin/sh", "-c", "exec sleep 100"], false)).await,
        );
    }
    assert!(children(&agent).len() >= 20, "{:?}", children(&agent));
    for c in all {
        c.remove().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !children(&agent).is_empty() {
        assert!(Instant::now() < deadline, "leaked processes: {:?}", children(&agent));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read_dir(&agent.state).unwrap().count(), 0, "leaked state directories");
}

#[tokio::test]
async fn bad_requests_get_their_code_and_the_agent_keeps_serving() {
    let (agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;

    let mut relative = spec(path_of(&root), &["/bin/true"], false);
    relative.Root.as_mut().unwrap().Path = "rootfs".into();
    let (code, msg) = code_of(Container::create(&client, "rel", relative, Vec::new()).await.err().unwrap());
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("not absolute"), "{msg}");
    agent.assert_serving().await;

    let mut bad_ns = spec(path_of(&root), &["/bin/true"], false);
    bad_ns.Linux.as_mut().unwrap().Namespaces[0].Type = "bogus".into();
    let (code, msg) = code_of(Container::create(&client, "ns", bad_ns, Vec::new()).await.err().unwrap());
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("bogus"), "{msg}");
    agent.assert_serving().await;

    let (code, msg) = code_of(
        Container::create(&client, "../evil", spec(path_of(&root), &["/bin/true"], false), Vec::new())
            .await
            .err()
            .unwrap(),
    );
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");

    let first =
        Container::create(&client, "dup", spec(path_of(&root), &["/bin/true"], false), Vec::new()).await.unwrap();
    let (code, msg) = code_of(
        Container::create(&client, "dup", spec(path_of(&root), &["/bin/true"], false), Vec::new()).await.err().unwrap(),
    );
    assert_eq!(code, Code::ALREADY_EXISTS, "{msg}");
    agent.assert_serving().await;
    first.remove().await.unwrap();

    let ghost = Container::named(&client, "ghost");
    let (code, msg) = code_of(ghost.exec("e", &["/bin/true"]).await.unwrap_err());
    assert_eq!(code, Code::NOT_FOUND, "{msg}");
    let (code, _) = code_of(ghost.read("", false).await.unwrap_err());
    assert_eq!(code, Code::NOT_FOUND);
    agent.assert_serving().await;

    let mut copy = CopyFileRequest::new();
    copy.path = "/etc/passwd".into();
    copy.data = b"root::0:0::/:/bin/sh\n".to_vec();
    copy.file_size = copy.data.len() as i64;
    copy.file_mode = 0o644;
    let (code, msg) = code_of(client.copy_file(ctx(), &copy).await.unwrap_err());
    assert_eq!(code, Code::PERMISSION_DENIED, "{msg}");
    agent.assert_serving().await;
}

#[tokio::test]
async fn a_huge_stdin_write_is_refused_without_harm() {
    let (agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;
    let c = run(&client, "big-in", spec(path_of(&root), &["/bin/sh", "-c", "wc -c"], false)).await;
    assert!(c.write("big-in", &vec![b'x'; 64 << 20]).await.is_err(), "64 MiB is over ttrpc's frame limit");
    agent.assert_serving().await;
    // Below the limit, a large write goes through in pieces while wc reads.
    assert_eq!(c.write("big-in", &vec![b'x'; 3 << 20]).await.unwrap(), 3 << 20);
    c.close_stdin("big-in").await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&c.read_to_eof("big-in", false).await.unwrap()).trim(),
        (3u32 << 20).to_string()
    );
    c.remove().await.unwrap();
}

#[tokio::test]
async fn create_sandbox_writes_dns_and_refuses_a_second_time() {
    let agent = Agent::start();
    let client = agent.client().await;
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = "sb1".into();
    req.hostname = "wisp-test".into();
    req.dns = vec!["nameserver 10.0.0.1".into(), "search example.com".into()];
    client.create_sandbox(ctx(), &req).await.expect("CreateSandbox");
    let resolv = std::fs::read_to_string(agent.state.join("resolv.conf")).unwrap();
    assert_eq!(resolv, "nameserver 10.0.0.1\nsearch example.com\n");
    let (code, msg) = code_of(client.create_sandbox(ctx(), &req).await.unwrap_err());
    assert_eq!(code, Code::FAILED_PRECONDITION, "{msg}");
}

#[tokio::test]
async fn sigterm_to_an_init_without_a_handler_stops_it() {
    let (agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;
    // PID 1 of its namespace: the kernel would drop a SIGTERM sleep does not handle.
    let c = run(&client, "term", spec(path_of(&root), &["/bin/sleep", "100"], false)).await;
    c.signal("term", 15).await.unwrap();
    assert_eq!(c.wait("term").await.unwrap(), 137, "replaced by SIGKILL, as Kata does");
    c.remove().await.unwrap();
}

#[tokio::test]
async fn signalling_all_reaches_the_inits_descendants() {
    let (agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;
    // The shell traps TERM and waits for its background child; only a signal
    // to every process ends the child, and then the shell's wait returns.
    let script = "trap 'echo term' TERM; sleep 100 & wait; wait; echo done";
    let c = run(&client, "tree", spec(path_of(&root), &["/bin/sh", "-c", script], false)).await;
    std::thread::sleep(Duration::from_millis(200));
    c.signal("", 15).await.unwrap();
    assert_eq!(c.wait("tree").await.unwrap(), 0);
    let out = String::from_utf8_lossy(&c.read_to_eof("tree", false).await.unwrap()).into_owned();
    assert!(out.contains("term") && out.contains("done"), "{out:?}");
    c.remove().await.unwrap();
}

#[tokio::test]
async fn containers_share_the_sandbox_pid_namespace_when_asked() {
    let (agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;
    let pause = shared_pidns_sandbox(&client, &root).await;
    let app = run(&client, "app", spec(path_of(&root), &["/bin/cat", "/proc/1/cmdline"], false)).await;
    assert_eq!(
        app.read_to_eof("app", false).await.unwrap(),
        b"/bin/sleep\x00100\x00",
        "PID 1 is the first container's init"
    );
    assert_eq!(app.wait("app").await.unwrap(), 0);
    app.remove().await.unwrap();
    pause.remove().await.unwrap();
}

/// CreateContainer with its own `sandbox_pidns` choice (a CRI pod's per-container one), then start.
async fn run_asking<'a>(
    client: &'a protocols::agent_ttrpc::AgentServiceClient,
    id: &str,
    spec: protocols::oci::Spec,
    sandbox_pidns: bool,
) -> Container<'a> {
    let mut req = protocols::agent::CreateContainerRequest::new();
    req.container_id = id.into();
    req.exec_id = id.into();
    req.OCI = Some(spec).into();
    req.sandbox_pidns = sandbox_pidns;
    client.create_container(ctx(), &req).await.expect("CreateContainer");
    let c = Container::named(client, id);
    c.start().await.expect("StartContainer");
    c
}

#[tokio::test]
async fn only_containers_that_ask_join_the_held_pid_namespace() {
    let (agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;
    // A CRI pod: no sandbox-wide pid namespace; the pause container asks to hold one.
    client.create_sandbox(ctx(), &CreateSandboxRequest::new()).await.unwrap();
    let pause = run_asking(&client, "pause", spec(path_of(&root), &["/bin/sleep", "100"], false), true).await;
    let cat = &["/bin/cat", "/proc/1/cmdline"];
    let joined = run_asking(&client, "joined", spec(path_of(&root), cat, false), true).await;
    assert_eq!(joined.read_to_eof("joined", false).await.unwrap(), b"/bin/sleep\x00100\x00", "joined the pause's");
    assert_eq!(joined.wait("joined").await.unwrap(), 0);
    let own = run_asking(&client, "own", spec(path_of(&root), cat, false), false).await;
    assert_eq!(own.read_to_eof("own", false).await.unwrap(), b"/bin/cat\x00/proc/1/cmdline\x00", "its own");
    assert_eq!(own.wait("own").await.unwrap(), 0);
    for c in [joined, own, pause] {
        c.remove().await.unwrap();
    }
}

/// A spec as Kata's runtime sends it: no pid, network or time entry (`constrainGRPCSpec` and
/// `handlePidNamespace` in its `kata_agent.go`); the agent decides the pid namespace.
fn kata_spec(root: &tempfile::TempDir, args: &[&str]) -> protocols::oci::Spec {
    let mut s = spec(path_of(root), args, false);
    s.Linux.mut_or_insert_default().Namespaces.retain(|ns| !["pid", "network", "time"].contains(&ns.Type.as_str()));
    s
}

#[tokio::test]
async fn specs_as_katas_runtime_sends_them_share_what_they_shared_before() {
    let (agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;
    client.create_sandbox(ctx(), &CreateSandboxRequest::new()).await.unwrap();
    // The first container does not ask (`ctr run`, a pod's pause): a pid namespace of its own,
    // which it holds for the sandbox; an exec joins it.
    let pause = run_asking(&client, "pause", kata_spec(&root, &["/bin/sleep", "100"]), false).await;
    pause.exec("e1", &["/bin/cat", "/proc/1/cmdline"]).await.expect("ExecProcess joins its namespaces");
    assert_eq!(pause.read_to_eof("e1", false).await.unwrap(), b"/bin/sleep\x00100\x00", "PID 1 is its own init");
    assert_eq!(pause.wait("e1").await.unwrap(), 0);
    // A pod's containers: one asks for the pod's pid namespace, one does not.
    let show = "cat /proc/1/cmdline; echo; for n in ipc uts net; do busybox readlink /proc/self/ns/$n; done";
    let joined = run_asking(&client, "joined", kata_spec(&root, &["/bin/sh", "-c", show]), true).await;
    let joined_out = String::from_utf8(joined.read_to_eof("joined", false).await.unwrap()).unwrap();
    assert_eq!(joined.wait("joined").await.unwrap(), 0);
    let own = run_asking(&client, "own", kata_spec(&root, &["/bin/sh", "-c", show]), false).await;
    let own_out = String::from_utf8(own.read_to_eof("own", false).await.unwrap()).unwrap();
    assert_eq!(own.wait("own").await.unwrap(), 0);
    let joined_lines: Vec<&str> = joined_out.lines().collect();
    let own_lines: Vec<&str> = own_out.lines().collect();
    assert_eq!(joined_lines.len(), 4, "{joined_out:?}");
    assert_eq!(joined_lines[0], "/bin/sleep\x00100\x00", "joined the pause's pid namespace");
    assert!(own_lines[0].starts_with("/bin/sh"), "its own pid namespace: {own_out:?}");
    assert_eq!(joined_lines[1..3], own_lines[1..3], "the pod's ipc and uts namespaces are shared");
    let net = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(own_lines[3], net.to_str().unwrap(), "no network entry: the agent's (the VM's) network");
    for c in [joined, own, pause] {
        c.remove().await.unwrap();
    }
}

#[tokio::test]
async fn guest_hooks_run_for_every_container() {
    let (agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;
    let hooks = tempfile::tempdir().unwrap();
    for stage in ["poststart", "poststop"] {
        std::fs::create_dir(hooks.path().join(stage)).unwrap();
        let script = hooks.path().join(stage).join("record");
        let out = hooks.path().join(format!("{stage}.json"));
        std::fs::write(&script, format!("#!/bin/sh\n/bin/cat > {}\n", out.display())).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let mut req = CreateSandboxRequest::new();
    req.guest_hook_path = hooks.path().to_str().unwrap().into();
    client.create_sandbox(ctx(), &req).await.unwrap();
    let c = run(&client, "hooked", spec(path_of(&root), &["/bin/true"], false)).await;
    let poststart = std::fs::read_to_string(hooks.path().join("poststart.json")).expect("poststart hook ran");
    assert!(poststart.contains("\"id\":\"hooked\"") && poststart.contains("running"), "{poststart}");
    assert_eq!(c.wait("hooked").await.unwrap(), 0);
    c.remove().await.unwrap();
    let poststop = std::fs::read_to_string(hooks.path().join("poststop.json")).expect("poststop hook ran");
    assert!(poststop.contains("stopped"), "{poststop}");
}

#[tokio::test]
async fn copy_file_writes_chunks_below_the_state_directory() {
    let agent = Agent::start();
    let client = agent.client().await;
    let target = agent.state.join("shared/hosts");
    for (offset, chunk) in [(0, &b"127.0.0.1 "[..]), (10, &b"localhost\n"[..])] {
        let mut req = CopyFileRequest::new();
        req.path = target.to_str().unwrap().into();
        req.file_size = 20;
        req.offset = offset;
        req.data = chunk.to_vec();
        req.file_mode = 0o644;
        req.dir_mode = 0o755;
        client.copy_file(ctx(), &req).await.expect("CopyFile");
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"127.0.0.1 localhost\n");
}

fn is_mounted(path: &std::path::Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_str().unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(path))
}

fn storage(driver: &str, source: &str, mount_point: &std::path::Path, options: &[&str]) -> protocols::agent::Storage {
    let mut s = protocols::agent::Storage::new();
    s.driver = driver.into();
    s.source = source.into();
    s.mount_point = mount_point.to_str().unwrap().into();
    s.options = options.iter().map(|o| o.to_string()).collect();
    s
}

#[tokio::test]
async fn storages_are_mounted_for_their_container_and_released_with_it() {
    let (agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;
    let mnt = agent.state.join("mnt");
    let rootfs_at = mnt.join("bound-rootfs");
    let scratch = mnt.join("scratch");
    let storages =
        vec![storage("bind", path_of(&root), &rootfs_at, &["bind"]), storage("ephemeral", "", &scratch, &["size=1m"])];
    let mut s = spec(rootfs_at.to_str().unwrap(), &["/bin/echo", "from a bound rootfs"], false);
    let mut data = protocols::oci::Mount::new();
    data.destination = "/data".into();
    data.source = scratch.to_str().unwrap().into();
    data.type_ = "bind".into();
    data.options = vec!["rbind".into()];
    s.Mounts.push(data);
    let c = Container::run(&client, "stor", s, storages).await.expect("a container on its storages");
    assert!(is_mounted(&rootfs_at) && is_mounted(&scratch), "both storages mounted");
    assert_eq!(c.read_to_eof("stor", false).await.unwrap(), b"from a bound rootfs\n");
    assert_eq!(c.wait("stor").await.unwrap(), 0);
    c.remove().await.unwrap();
    assert!(!is_mounted(&rootfs_at) && !is_mounted(&scratch), "released with the container");

    // A storage that cannot be mounted fails the create and leaves nothing behind.
    let bad = vec![
        storage("ephemeral", "", &scratch, &["size=1m"]),
        storage("bind", "/nonexistent/source", &mnt.join("never"), &["bind"]),
    ];
    let e = Container::create(&client, "bad", spec(path_of(&root), &["/bin/true"], false), bad).await.err().unwrap();
    let (code, msg) = code_of(e);
    assert_ne!(code, Code::OK, "{msg}");
    assert!(!is_mounted(&scratch), "the first storage was released again");
    agent.assert_serving().await;
}

#[tokio::test]
async fn sandbox_storages_live_until_destroy_sandbox() {
    let mut agent = Agent::start();
    let client = agent.client().await;
    let shared = agent.state.join("shared-tmpfs");
    let mut req = CreateSandboxRequest::new();
    req.storages = vec![storage("ephemeral", "", &shared, &["size=1m"])];
    client.create_sandbox(ctx(), &req).await.expect("CreateSandbox with a storage");
    assert!(is_mounted(&shared));
    client.destroy_sandbox(ctx(), &protocols::agent::DestroySandboxRequest::new()).await.unwrap();
    agent.wait_exit(Duration::from_secs(10)).expect("agent exits after DestroySandbox");
    assert!(!is_mounted(&shared), "DestroySandbox released the sandbox's storage");
}

#[tokio::test]
async fn a_terminal_left_open_by_a_daemon_still_ends_after_its_process() {
    let (agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;
    // In the shared pid namespace the daemon outlives the tty's process (its
    // init is not PID 1 there) and keeps the pty open.
    let pause = shared_pidns_sandbox(&client, &root).await;
    let c = run(&client, "tty", spec(path_of(&root), &["/bin/sh", "-c", "sleep 100 & echo bye"], true)).await;
    let started = Instant::now();
    let out = c.read_to_eof("tty", false).await.unwrap();
    assert!(String::from_utf8_lossy(&out).contains("bye"), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "EOF came {:?} after the process exited", started.elapsed());
    assert_eq!(c.wait("tty").await.unwrap(), 0);
    c.remove().await.unwrap();
    pause.remove().await.unwrap();
}

/// Whether the ticker stays silent for `quiet` once what it printed before is read.
async fn stays_silent(c: &Container<'_>, quiet: Duration) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    // Drain what was printed (or in flight) before the freeze.
    while tokio::time::timeout(Duration::from_millis(200), c.read("ticker", false)).await.is_ok() {
        assert!(Instant::now() < deadline, "the ticker never went quiet");
    }
    tokio::time::timeout(quiet, c.read("ticker", false)).await.is_err()
}

#[tokio::test]
async fn pause_resume_update_and_stats_go_through_the_cgroup() {
    let (agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;
    let c = run(
        &client,
        "ticker",
        spec(path_of(&root), &["/bin/sh", "-c", "while true; do echo t; sleep 0.02; done"], false),
    )
    .await;
    let id_req = |id: &str| id.to_owned();

    let mut pause = protocols::agent::PauseContainerRequest::new();
    pause.container_id = id_req("ticker");
    client.pause_container(ctx(), &pause).await.expect("PauseContainer");
    assert!(stays_silent(&c, Duration::from_millis(500)).await, "a frozen container prints nothing");
    let mut resume = protocols::agent::ResumeContainerRequest::new();
    resume.container_id = id_req("ticker");
    client.resume_container(ctx(), &resume).await.expect("ResumeContainer");
    let again = tokio::time::timeout(Duration::from_secs(5), c.read("ticker", false)).await;
    assert!(matches!(again, Ok(Ok(_))), "a thawed container prints again");

    let mut update = protocols::agent::UpdateContainerRequest::new();
    update.container_id = id_req("ticker");
    let mut resources = protocols::oci::LinuxResources::new();
    let mut pids = protocols::oci::LinuxPids::new();
    pids.Limit = 42;
    resources.Pids = Some(pids).into();
    update.resources = Some(resources).into();
    client.update_container(ctx(), &update).await.expect("UpdateContainer");

    let mut stats = protocols::agent::StatsContainerRequest::new();
    stats.container_id = id_req("ticker");
    let s = client.stats_container(ctx(), &stats).await.expect("StatsContainer");
    let cg = s.cgroup_stats.into_option().expect("cgroup stats");
    let pids = cg.pids_stats.into_option().expect("pids stats");
    assert_eq!(pids.limit, 42, "the update reached the cgroup");
    assert!(pids.current >= 1, "{pids:?}");
    let mem = cg.memory_stats.into_option().and_then(|m| m.usage.into_option()).expect("memory usage");
    assert!(mem.usage > 0, "{mem:?}");
    c.remove().await.unwrap();

    let ghost = protocols::agent::PauseContainerRequest { container_id: "ghost".into(), ..Default::default() };
    let (code, _) = code_of(client.pause_container(ctx(), &ghost).await.unwrap_err());
    assert_eq!(code, Code::NOT_FOUND);
}

#[tokio::test]
async fn an_oom_kill_is_reported_with_the_container_id() {
    let (agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;
    let mut s = spec(path_of(&root), &["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"], false);
    let mut resources = protocols::oci::LinuxResources::new();
    let mut memory = protocols::oci::LinuxMemory::new();
    memory.Limit = 32 << 20;
    resources.Memory = Some(memory).into();
    s.Linux.as_mut().unwrap().Resources = Some(resources).into();
    let c = run(&client, "hog", s).await;
    assert_eq!(c.wait("hog").await.unwrap(), 137, "killed by the OOM killer");
    let ev = tokio::time::timeout(Duration::from_secs(10), client.get_oom_event(ctx(), &Default::default()))
        .await
        .expect("an OOM event within 10 s")
        .expect("GetOOMEvent");
    assert_eq!(ev.container_id, "hog");
    c.remove().await.unwrap();
}

#[tokio::test]
async fn sigterm_on_a_host_takes_the_containers_along() {
    let (mut agent, root) = (Agent::start(), rootfs());
    let client = agent.client().await;
    let _c = run(&client, "left", spec(path_of(&root), &["/bin/sleep", "100"], false)).await;
    let kids = children(&agent);
    assert!(!kids.is_empty());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let status = agent.wait_exit(Duration::from_secs(15)).expect("agent exits on SIGTERM");
    assert!(status.success(), "{status}");
    for pid in kids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "container process {pid} outlived the agent");
    }
}
