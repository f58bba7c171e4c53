//! `wisp-runtime` under real clients: Debian's dockerd 20.10 (through containerd-shim-runc-v2,
//! `--add-runtime wisp=<wisp-runtime>`) runs containers in wisp VMs, on its bridge network
//! (its prestart hook's veth wired into the VM) and with the VM charged to the container's
//! cgroup (`docker stats`); the seed's own flow (`wisp-runtime run` in a bundle) propagates the
//! exit code and runs the bundle's host hooks; `kill` signals the init alone and `kill --all`
//! every process of the container.
//!
//! Needs root, `make deps` and `make all` (kernel, initrd, wisp-runtime, rootfs-builder).
//! Compiled only with both features `containerd-tests` and `vm-tests` (`make test-shim`).
#![cfg(all(feature = "containerd-tests", feature = "vm-tests"))]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::ensure;
use wisp_tests::containerd::{describe, mounts_under, s, text};
use wisp_tests::runtime_fixtures::{bundle, configure, image, left_on_host, processes_left};
use wisp_tests::shim_setup::runtime_binary;
use wisp_tests::{leftovers, Dockerd, DockerdOptions};

#[test]
fn docker_run_rm_prints_the_output_and_the_exit_code_in_a_vm() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-docker-").tempdir()?;
    configure(dir.path())?;
    let runtime = runtime_binary()?;
    let image = image(dir.path(), "wisp-rt:1")?;
    let docker =
        Dockerd::start_with(DockerdOptions { runtimes: vec![("wisp".into(), runtime)], ..Default::default() })?;
    let out = docker.docker(["load", "-i", s(&image)])?;
    ensure!(out.status.success(), "docker load: {}", describe(&out));

    // The guest's kernel is ours, not the host's: the container ran in the VM.
    let script = "echo hi; uname -r; exit 3";
    let out = docker.docker(["run", "--rm", "--runtime", "wisp", "wisp-rt:1", "sh", "-c", script])?;
    let context = || format!("{}\ndaemon log:\n{}", describe(&out), docker.log_tail(40));
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("hi"), "{}", context());
    let host_kernel = nix::sys::utsname::uname()?.release().to_string_lossy().into_owned();
    assert_ne!(lines.next(), Some(host_kernel.as_str()), "the container ran on the host's kernel: {}", context());
    assert_eq!(out.status.code(), Some(3), "the exit code reaches docker: {}", context());
    let left = left_on_host(dir.path(), Duration::from_secs(10));
    assert!(left.is_empty(), "left after --rm: {left:#?}");
    Ok(())
}

#[test]
fn the_seed_flow_runc_spec_style_bundle_run_propagates_the_exit_code() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-seed-").tempdir()?;
    configure(dir.path())?;
    let runtime = runtime_binary()?;
    let bundle = bundle(dir.path(), &["sh", "-c", "echo seed; exit 5"])?;
    let root = dir.path().join("root");
    let out = Command::new(&runtime).arg("--root").arg(&root).args(["run", "--bundle", s(&bundle), "demo"]).output()?;
    assert_eq!(text(&out.stdout), "seed\n", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    let left: Vec<_> = std::fs::read_dir(&root)?.flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "run removed the container's state: {left:?}");
    let left = left_on_host(dir.path(), Duration::from_secs(5));
    assert!(left.is_empty(), "left after run: {left:#?}");
    Ok(())
}

#[test]
fn docker_run_detached_then_stop_kill_and_rm_force() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-detached-").tempdir()?;
    configure(dir.path())?;
    let image = image(dir.path(), "wisp-rt:2")?;
    let docker = Dockerd::start_with(DockerdOptions {
        runtimes: vec![("wisp".into(), runtime_binary()?)],
        ..Default::default()
    })?;
    ensure!(docker.docker(["load", "-i", s(&image)])?.status.success());
    let run = |name: &str, script: &str| -> anyhow::Result<()> {
        let out = docker.docker(["run", "-d", "--runtime", "wisp", "--name", name, "wisp-rt:2", "sh", "-c", script])?;
        ensure!(out.status.success(), "docker run -d {name}: {}\n{}", describe(&out), docker.log_tail(30));
        Ok(())
    };
    // `docker stop`: SIGTERM reaches the container's process, which exits on it (the trap).
    run("polite", "trap 'exit 42' TERM; echo trapped; while true; do sleep 1; done")?;
    // Not before the trap is set: the agent makes an unhandled SIGTERM to a container's init a
    // SIGKILL (137), and `docker run -d` returns before the shell ran its first line.
    let waited = Instant::now();
    while !text(&docker.docker(["logs", "polite"])?.stdout).contains("trapped") {
        ensure!(waited.elapsed() < Duration::from_secs(30), "the container never set its trap");
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    let out = docker.docker(["stop", "-t", "20", "polite"])?;
    ensure!(out.status.success(), "docker stop: {}", describe(&out));
    let code = docker.docker(["inspect", "--format", "{{.State.ExitCode}}", "polite"])?;
    assert_eq!(text(&code.stdout).trim(), "42", "SIGTERM was honoured: {}\n{}", describe(&code), docker.log_tail(40));
    assert!(started.elapsed() < Duration::from_secs(15), "stop did not wait for the grace period's end");
    // `docker kill`: SIGKILL, 137.
    run("victim", "sleep 3600")?;
    ensure!(docker.docker(["kill", "victim"])?.status.success());
    let code = docker.docker(["wait", "victim"])?;
    assert_eq!(text(&code.stdout).trim(), "137", "{}", describe(&code));
    // `docker rm -f` of a running container.
    run("doomed", "sleep 3600")?;
    let out = docker.docker(["rm", "-f", "polite", "victim", "doomed"])?;
    ensure!(out.status.success(), "docker rm -f: {}", describe(&out));
    let left = left_on_host(dir.path(), Duration::from_secs(10));
    assert!(left.is_empty(), "left after rm -f: {left:#?}");
    Ok(())
}

#[test]
fn a_killed_monitor_reads_stopped_and_delete_cleans_up() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-kill-").tempdir()?;
    configure(dir.path())?;
    let runtime = runtime_binary()?;
    let bundle = bundle(dir.path(), &["sleep", "3600"])?;
    let root = dir.path().join("root");
    let rt = |args: &[&str]| Command::new(&runtime).arg("--root").arg(&root).args(args).output();
    let monitor = create_and_start(&runtime, &root, &bundle, "victim")?;
    let listed = rt(&["list"])?;
    assert!(
        text(&listed.stdout).lines().any(|l| l.starts_with("victim") && l.contains("running")),
        "{}",
        describe(&listed)
    );
    assert!(!processes_left(dir.path(), Duration::ZERO).is_empty(), "the VM runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(monitor), nix::sys::signal::Signal::SIGKILL)?;
    let left = processes_left(dir.path(), Duration::from_secs(10));
    assert!(left.is_empty(), "QEMU and its helpers died with the monitor: {left:#?}");
    let state: serde_json::Value = serde_json::from_slice(&rt(&["state", "victim"])?.stdout)?;
    assert_eq!(state["status"], "stopped", "{state}");
    let out = rt(&["delete", "victim"])?;
    ensure!(out.status.success(), "delete: {}", describe(&out));
    assert_eq!(std::fs::read_dir(&root)?.count(), 0, "the record is gone");
    let left = left_on_host(dir.path(), Duration::ZERO);
    assert!(left.is_empty(), "delete removed the sandbox's mounts and state: {left:#?}");
    Ok(())
}

#[test]
fn kill_signals_the_init_alone_and_with_all_every_process() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-killall-").tempdir()?;
    configure(dir.path())?;
    let runtime = runtime_binary()?;
    // The init catches SIGTERM and goes on waiting for its child; the child (`sleep`, whose
    // SIGTERM is the default again after exec) dies of one. So the container ends only when
    // the child is signalled too.
    // It says "ready" once the trap is set: a SIGTERM before that would kill it.
    let script = "trap 'echo init caught TERM' TERM; sleep 3600 & echo ready; \
                  while kill -0 $! 2>/dev/null; do wait $!; done";
    let bundle = bundle(dir.path(), &["sh", "-c", script])?;
    let root = dir.path().join("root");
    let rt = |args: &[&str]| Command::new(&runtime).arg("--root").arg(&root).args(args).output();
    let status = |id: &str| -> anyhow::Result<String> {
        let state: serde_json::Value = serde_json::from_slice(&rt(&["state", id])?.stdout)?;
        Ok(state["status"].as_str().unwrap_or_default().to_owned())
    };
    create_and_start(&runtime, &root, &bundle, "both")?;
    let output = dir.path().join("both.stdio");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&output)?.contains("ready") {
        assert!(Instant::now() < deadline, "the container never said ready: {}", status("both")?);
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = rt(&["kill", "both", "TERM"])?;
    ensure!(out.status.success(), "kill: {}", describe(&out));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status("both")?, "running", "kill without --all reached the init's child");
    assert!(std::fs::read_to_string(&output)?.contains("init caught TERM"), "the init was not signalled");
    let out = rt(&["kill", "--all", "both", "TERM"])?;
    ensure!(out.status.success(), "kill --all: {}", describe(&out));
    let deadline = Instant::now() + Duration::from_secs(20);
    while status("both")? != "stopped" {
        assert!(Instant::now() < deadline, "kill --all did not reach the init's child: {}", status("both")?);
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = rt(&["delete", "both"])?;
    ensure!(out.status.success(), "delete: {}", describe(&out));
    let left = left_on_host(dir.path(), Duration::from_secs(10));
    assert!(left.is_empty(), "left after delete: {left:#?}");
    Ok(())
}

/// `wisp-runtime create` and `start` of `bundle` as `id`; returns the monitor's pid. The
/// monitor keeps create's stdio (the container's): files beside `root`, not pipes that
/// output() would wait on until the container ends.
fn create_and_start(runtime: &Path, root: &Path, bundle: &Path, id: &str) -> anyhow::Result<i32> {
    let dir = root.parent().unwrap_or(root);
    let pid_file = dir.join(format!("{id}.pid"));
    let stderr = dir.join(format!("{id}.stderr"));
    let created = Command::new(runtime)
        .arg("--root")
        .arg(root)
        .args(["create", "--bundle", s(bundle), "--pid-file", s(&pid_file), id])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(dir.join(format!("{id}.stdio")))?)
        .stderr(std::fs::File::create(&stderr)?)
        .status()?;
    ensure!(created.success(), "create: {}", std::fs::read_to_string(&stderr)?);
    let out = Command::new(runtime).arg("--root").arg(root).args(["start", id]).output()?;
    ensure!(out.status.success(), "start: {}", describe(&out));
    Ok(std::fs::read_to_string(&pid_file)?.trim().parse()?)
}

/// A cgroup a test names (and the runtime makes): removed with what is under it in every
/// hierarchy when dropped.
struct CgroupParent(String);

impl Drop for CgroupParent {
    fn drop(&mut self) {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for hierarchy in mounts.lines().filter(|l| l.contains(" cgroup")).filter_map(|l| l.split(' ').nth(1)) {
            let top = format!("{hierarchy}{}", self.0);
            let children = std::fs::read_dir(&top).into_iter().flatten().flatten();
            for child in children.filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
                let _ = std::fs::remove_dir(child.path());
            }
            let _ = std::fs::remove_dir(&top);
        }
    }
}

/// The path of `pid`'s cgroup in the memory hierarchy (cgroup v1) or the unified one (v2).
fn memory_cgroup(pid: u32) -> anyhow::Result<String> {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let found = if v2 { controllers.is_empty() } else { controllers.split(',').any(|c| c == "memory") };
            found.then(|| path.to_owned())
        })
        .ok_or_else(|| anyhow::anyhow!("no memory cgroup for {pid}: {text}"))
}

/// The memory charged to cgroup `path` (`memory.usage_in_bytes`, v2's `memory.current`).
fn cgroup_memory(path: &str) -> anyhow::Result<u64> {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let file = if v2 {
        format!("/sys/fs/cgroup{path}/memory.current")
    } else {
        format!("/sys/fs/cgroup/memory{path}/memory.usage_in_bytes")
    };
    Ok(std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("{file}: {e}"))?.trim().parse()?)
}

/// A `/proc/PID/status` field in bytes (`RssAnon:  1234 kB`).
fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field)).ok_or_else(|| anyhow::anyhow!("no {field}"))?;
    let kib: u64 = line[field.len()..].trim().trim_end_matches("kB").trim().parse()?;
    Ok(kib * 1024)
}

/// `docker stats`' `MemUsage` (`95.2MiB / 7.6GiB`): the usage in bytes.
fn parse_mem_usage(text: &str) -> Option<u64> {
    let usage = text.split('/').next()?.trim();
    let split = usage.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = usage.split_at(split);
    let factor = match unit {
        "B" => 1.0,
        "KiB" | "kB" => 1024.0,
        "MiB" | "MB" => 1024.0 * 1024.0,
        "GiB" | "GB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((number.trim().parse::<f64>().ok()? * factor) as u64)
}

/// The QEMU processes of the sandboxes under `dir/state`.
fn qemu_pids(dir: &Path) -> Vec<u32> {
    leftovers::under_state_root(&dir.join("state"))
        .iter()
        .filter_map(|l| l.strip_prefix("process ")?.split_once(':').filter(|(_, c)| c.contains("qemu-system")))
        .filter_map(|(pid, _)| pid.parse().ok())
        .collect()
}

#[test]
fn a_container_on_dockers_bridge_reaches_a_listener_on_the_host_from_its_vm() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-net-").tempdir()?;
    configure(dir.path())?;
    let image = image(dir.path(), "wisp-rt:net")?;
    // A subnet of this test process's own, should two runs overlap.
    let net = format!("10.214.{}", std::process::id() % 200 + 20);
    let docker = Dockerd::start_with(DockerdOptions {
        runtimes: vec![("wisp".into(), runtime_binary()?)],
        bridge: Some(format!("{net}.1/24")),
        ..Default::default()
    })?;
    let bridge = docker.bridge().unwrap_or_default().to_owned();
    ensure!(docker.docker(["load", "-i", s(&image)])?.status.success());
    let listener = std::net::TcpListener::bind(format!("{net}.1:0"))?;
    let port = listener.local_addr()?.port();
    let server = std::thread::spawn(move || -> anyhow::Result<(String, String)> {
        let (mut stream, peer) = listener.accept()?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut stream), &mut line)?;
        Ok((peer.ip().to_string(), line.trim().to_owned()))
    });
    let script = format!("ip -4 addr show eth0; uname -r; echo hello-from-the-vm | nc {net}.1 {port} && echo nc-ok");
    let out = docker.docker(["run", "--rm", "--runtime", "wisp", "wisp-rt:net", "sh", "-c", &script])?;
    let context = || format!("{}\ndaemon log:\n{}", describe(&out), docker.log_tail(40));
    ensure!(out.status.success(), "{}", context());
    let stdout = text(&out.stdout);
    let address = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("inet ")?.split('/').next().map(str::to_owned))
        .ok_or_else(|| anyhow::anyhow!("no address on the guest's eth0: {}", context()))?;
    ensure!(address.starts_with(&format!("{net}.")), "the guest's eth0 has Docker's address: {}", context());
    let host_kernel = nix::sys::utsname::uname()?.release().to_string_lossy().into_owned();
    ensure!(!stdout.lines().any(|l| l == host_kernel), "the container ran on the host's kernel: {}", context());
    ensure!(stdout.contains("nc-ok"), "{}", context());
    let (peer, message) = server.join().map_err(|_| anyhow::anyhow!("the listener panicked"))??;
    assert_eq!(message, "hello-from-the-vm", "the bytes arrived");
    assert_eq!(peer, address, "from the container's address");
    // `--network host`: the spec names the caller's own namespace by path, nothing is wired
    // (a VM cannot share the host's interfaces) and the container still runs.
    let out =
        docker.docker(["run", "--rm", "--network", "host", "--runtime", "wisp", "wisp-rt:net", "ip", "-4", "addr"])?;
    ensure!(out.status.success(), "--network host: {}\n{}", describe(&out), docker.log_tail(20));
    ensure!(!text(&out.stdout).contains(&format!("inet {net}.")), "no bridge address: {}", describe(&out));
    // Nothing left: the VM, the sandbox's state, Docker's veth and its mount of the namespace.
    let left = left_on_host(dir.path(), Duration::from_secs(10));
    assert!(left.is_empty(), "left after --rm: {left:#?}");
    let ports = Command::new("ip").args(["-j", "link", "show", "master", &bridge]).output()?;
    let ports = text(&ports.stdout);
    assert!(ports.trim().is_empty() || ports.trim() == "[]", "the veth is gone: {ports}");
    let base = docker.dir().map(Path::to_owned).unwrap_or_default();
    // `netns/default` is dockerd's name for the host's namespace (`--network host`), its own.
    let netns: Vec<_> = mounts_under(&[&base])
        .into_iter()
        .filter(|m| s(m).contains("/netns/") && !s(m).ends_with("/netns/default"))
        .collect();
    assert!(netns.is_empty(), "the container's namespace is not held: {netns:?}");
    Ok(())
}

#[test]
fn docker_stats_counts_the_vm_in_the_containers_cgroup() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-cg-").tempdir()?;
    configure(dir.path())?;
    let image = image(dir.path(), "wisp-rt:cg")?;
    let docker = Dockerd::start_with(DockerdOptions {
        runtimes: vec![("wisp".into(), runtime_binary()?)],
        ..Default::default()
    })?;
    ensure!(docker.docker(["load", "-i", s(&image)])?.status.success());
    let out = docker.docker(["run", "-d", "--runtime", "wisp", "--name", "stats", "wisp-rt:cg", "sleep", "3600"])?;
    ensure!(out.status.success(), "docker run -d: {}\n{}", describe(&out), docker.log_tail(30));
    let id = text(&out.stdout).trim().to_owned();
    let monitor: u32 =
        text(&docker.docker(["inspect", "--format", "{{.State.Pid}}", "stats"])?.stdout).trim().parse()?;
    // Docker's cgroupfs driver: <cgroup parent>/<id>, the monitor in it, QEMU below it.
    let container = format!("{}/{id}", docker.cgroup_parent());
    assert_eq!(memory_cgroup(monitor)?, container, "the monitor (the pid-file process) is in the container's cgroup");
    let qemu = qemu_pids(dir.path());
    ensure!(qemu.len() == 1, "one QEMU: {qemu:?}");
    let qemu_cgroup = memory_cgroup(qemu[0])?;
    assert!(qemu_cgroup.starts_with(&format!("{container}/wisp-")), "QEMU's cgroup is under it: {qemu_cgroup}");
    let vm = status_bytes(qemu[0], "RssAnon:")? + status_bytes(qemu[0], "RssShmem:")?;
    let charged = cgroup_memory(&container)?;
    assert!(charged >= vm, "the container's cgroup holds the VM's {vm} bytes: {charged}");
    let stats = docker.docker(["stats", "--no-stream", "--format", "{{.MemUsage}}", "stats"])?;
    ensure!(stats.status.success(), "docker stats: {}", describe(&stats));
    let shown = parse_mem_usage(&text(&stats.stdout))
        .ok_or_else(|| anyhow::anyhow!("docker stats said {:?}", text(&stats.stdout)))?;
    assert!(shown >= vm * 9 / 10, "docker stats shows the VM ({vm} bytes): {}", text(&stats.stdout));
    println!("docker stats: {} (QEMU anon+shmem {} MiB)", text(&stats.stdout).trim(), vm >> 20);
    let out = docker.docker(["rm", "-f", "stats"])?;
    ensure!(out.status.success(), "docker rm -f: {}", describe(&out));
    let left = left_on_host(dir.path(), Duration::from_secs(10));
    assert!(left.is_empty(), "left after rm -f: {left:#?}");
    let cgroups: Vec<_> = docker.cgroup_dirs().into_iter().filter(|d| s(d).contains(&id)).collect();
    assert!(cgroups.is_empty(), "the container's cgroup is removed: {cgroups:?}");
    Ok(())
}

#[test]
fn wisp_runtime_run_runs_the_bundles_hooks_on_the_host_in_its_cgroup() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-hooks-").tempdir()?;
    configure(dir.path())?;
    let runtime = runtime_binary()?;
    // The container outlives the poststart hook (which marks its rootfs when it has looked, at
    // most 10 s later): a container that has exited takes its monitor with it, and poststart
    // would find no process to look at (seen once boots got fast).
    let bundle = bundle(
        dir.path(),
        &[
            "sh",
            "-c",
            "echo in-vm; i=0; while [ ! -e /poststart-ran ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; exit 4",
        ],
    )?;
    let marker = bundle.join("rootfs/poststart-ran");
    // Each hook appends: its kind, the state's status and pid, that pid's network namespace
    // and memory cgroup.
    let record = dir.path().join("hooks.log");
    let hook = |kind: &str| {
        let mark = if kind == "poststart" { format!("; touch {}", marker.display()) } else { String::new() };
        let script = format!(
            "s=$(cat); pid=$(echo \"$s\" | sed -n 's/.*\"pid\":\\([0-9]*\\).*/\\1/p'); \
             st=$(echo \"$s\" | sed -n 's/.*\"status\":\"\\([a-z]*\\)\".*/\\1/p'); \
             echo \"{kind} $st ${{pid:-0}} $(readlink /proc/${{pid:-0}}/ns/net) \
             $(grep -E ':memory:|^0::' /proc/${{pid:-0}}/cgroup 2>/dev/null | head -n 1 | cut -d: -f3)\" >> {}{mark}",
            record.display()
        );
        serde_json::json!([{"path": "/bin/sh", "args": ["sh", "-c", script]}])
    };
    let parent = CgroupParent(format!("/wisp-rt-hooks-{}", std::process::id()));
    let cgroup = format!("{}/demo", parent.0);
    let config_path = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path)?)?;
    config["hooks"] = serde_json::json!({
        "prestart": hook("prestart"),
        "createRuntime": hook("createRuntime"),
        "poststart": hook("poststart"),
        "poststop": hook("poststop"),
    });
    config["linux"]["cgroupsPath"] = cgroup.clone().into();
    let namespaces = config["linux"]["namespaces"].as_array().cloned().unwrap_or_default();
    ensure!(namespaces.iter().any(|ns| ns["type"] == "network"), "the bundle asks for a network namespace");
    std::fs::write(&config_path, config.to_string())?;
    let root = dir.path().join("root");
    let out = Command::new(&runtime).arg("--root").arg(&root).args(["run", "--bundle", s(&bundle), "demo"]).output()?;
    assert_eq!(text(&out.stdout), "in-vm\n", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let log = std::fs::read_to_string(&record)?;
    let lines: Vec<Vec<&str>> = log.lines().map(|l| l.split_whitespace().collect()).collect();
    let kinds: Vec<(&str, &str)> = lines.iter().map(|l| (l[0], l[1])).collect();
    assert_eq!(
        kinds,
        [("prestart", "creating"), ("createRuntime", "creating"), ("poststart", "running"), ("poststop", "stopped")],
        "{log}"
    );
    let own_netns = std::fs::read_link("/proc/self/ns/net")?.to_string_lossy().into_owned();
    let (pre, post) = (&lines[0], &lines[2]);
    assert!(pre[2] != "0" && pre[2] == post[2], "state.pid is the monitor's throughout: {log}");
    assert!(pre[3].starts_with("net:[") && pre[3] != own_netns, "the monitor holds a namespace of its own: {log}");
    assert_eq!(post.get(4).copied(), Some(cgroup.as_str()), "the monitor is in the bundle's cgroup: {log}");
    assert_eq!(lines[3][2], "0", "poststop: pid 0: {log}");
    let left: Vec<_> = std::fs::read_dir(&root)?.flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "run removed the container's state: {left:?}");
    let left = left_on_host(dir.path(), Duration::from_secs(5));
    assert!(left.is_empty(), "left after run: {left:#?}");
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let cgroup_dir = if v2 { format!("/sys/fs/cgroup{cgroup}") } else { format!("/sys/fs/cgroup/memory{cgroup}") };
    assert!(!Path::new(&cgroup_dir).exists(), "the container's cgroup is removed");
    drop(parent);
    Ok(())
}
