//! The host side of a sandbox, confined (issue 14, "Confined helpers"), checked from the host
//! under a real containerd: QEMU under its seccomp filter, virtiofsd in its own namespaces
//! under its filter, vhost-device-vsock in a read-only view without capabilities, all of them
//! in the sandbox's cgroup (which is charged the VM's memory); a rootfs bound after boot still
//! reaches the guest through the sandboxed virtiofsd; rootless mode runs QEMU and
//! vhost-device-vsock as a uid of the sandbox's own; and a shim that dies, killed or
//! terminated, with no containerd to clean up, takes QEMU and every helper with it.
//!
//! Needs root, `make deps` and `make all`. Compiled with `containerd-tests` and `vm-tests`
//! (`make test-shim`).
#![cfg(all(feature = "containerd-tests", feature = "vm-tests"))]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use wisp_tests::containerd::process_running;
use wisp_tests::shim_setup::{describe, s, text, Setup, RUNTIME};

/// One process of the sandbox, as `/proc` shows it.
#[derive(Debug)]
struct Proc {
    pid: u32,
    program: String,
}

impl Proc {
    fn status(&self, field: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    }

    fn mount_ns(&self) -> PathBuf {
        std::fs::read_link(format!("/proc/{}/ns/mnt", self.pid)).unwrap_or_default()
    }

    fn cgroup(&self) -> Option<String> {
        wisp_shim::hypervisor::cgroup::of_process(self.pid, "memory")
    }

    fn uid(&self) -> u32 {
        self.status("Uid").split_whitespace().next().and_then(|u| u.parse().ok()).unwrap_or(u32::MAX)
    }
}

/// QEMU, virtiofsd and vhost-device-vsock processes naming the test's state root.
fn vm_processes(t: &Setup) -> Vec<Proc> {
    let needle = t.state().to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = text(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default());
        if !cmdline.contains(&needle) || !process_running(pid) {
            continue;
        }
        let argv0 = cmdline.split('\0').next().unwrap_or("");
        let program = Path::new(argv0).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if ["virtiofsd", "vhost-device-vsock"].contains(&program.as_str()) || program.starts_with("qemu-system") {
            found.push(Proc { pid, program });
        }
    }
    found
}

/// The one sandbox state directory under the state root.
fn sandbox_dir(t: &Setup) -> anyhow::Result<PathBuf> {
    let dirs: Vec<PathBuf> = std::fs::read_dir(t.state())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "accel" && !n.to_string_lossy().starts_with('.')))
        .collect();
    match dirs.as_slice() {
        [dir] => Ok(dir.clone()),
        other => bail!("one sandbox directory expected under {}: {other:?}", t.state().display()),
    }
}

/// A bundle whose config.json carries the CRI grouping annotation of sandbox `pod`.
fn pod_bundle(t: &Setup, name: &str, pod: &str, args: &[&str]) -> anyhow::Result<PathBuf> {
    let config = t.bundle(name, args)?;
    let mut spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config)?)?;
    spec["annotations"] = serde_json::json!({"io.kubernetes.cri.sandbox-id": pod});
    std::fs::write(&config, serde_json::to_string_pretty(&spec)?)?;
    Ok(config)
}

fn run_detached(t: &Setup, config: &Path, id: &str) -> anyhow::Result<()> {
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, "--config", s(config), id])?;
    ensure!(out.status.success(), "ctr run -d {id}: {}", describe(&out));
    Ok(())
}

/// The memory a cgroup is charged (v1 `memory.usage_in_bytes`, v2 `memory.current`).
fn memory_charged(cgroup: &str) -> u64 {
    ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"]
        .iter()
        .flat_map(|root| ["memory.usage_in_bytes", "memory.current"].map(|f| Path::new(root).join(cgroup).join(f)))
        .find_map(|file| std::fs::read_to_string(file).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn qemu_and_helpers_are_confined_in_the_sandbox_cgroup_and_a_later_rootfs_reaches_the_guest() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let first = pod_bundle(&t, "first", "confined", &["sleep", "3600"])?;
    run_detached(&t, &first, "first")?;
    let procs = vm_processes(&t);
    let dir = sandbox_dir(&t)?;
    let recorded = std::fs::read_to_string(dir.join("cgroup")).context("the sandbox cgroup is recorded")?;
    let name = dir.file_name().context("dir name")?.to_string_lossy().into_owned();
    assert!(recorded.ends_with(&format!("wisp-{name}")), "the cgroup is named from the state dir: {recorded}");
    let host_ns = std::fs::read_link("/proc/self/ns/mnt")?;

    let qemu: Vec<&Proc> = procs.iter().filter(|p| p.program.starts_with("qemu-system")).collect();
    let virtiofsd: Vec<&Proc> = procs.iter().filter(|p| p.program == "virtiofsd").collect();
    let vsock: Vec<&Proc> = procs.iter().filter(|p| p.program == "vhost-device-vsock").collect();
    ensure!(
        qemu.len() == 1 && !virtiofsd.is_empty() && vsock.len() == 1,
        "QEMU, virtiofsd, vhost-device-vsock: {procs:?}"
    );
    assert_eq!(qemu[0].status("Seccomp"), "2", "QEMU runs under its seccomp filter");
    for p in &virtiofsd {
        assert_ne!(p.mount_ns(), host_ns, "virtiofsd {} is in its own mount namespace", p.pid);
    }
    assert!(
        virtiofsd.iter().any(|p| p.status("Seccomp") == "2"),
        "the virtiofsd that serves the share runs under its seccomp filter: {:?}",
        virtiofsd.iter().map(|p| (p.pid, p.status("Seccomp"))).collect::<Vec<_>>()
    );
    assert_ne!(vsock[0].mount_ns(), host_ns, "vhost-device-vsock is in its own mount namespace");
    assert_eq!(vsock[0].status("CapEff"), "0000000000000000", "vhost-device-vsock has no capability");
    assert_eq!(vsock[0].status("NoNewPrivs"), "1");
    for p in &procs {
        assert_eq!(p.cgroup(), Some(format!("/{recorded}")), "{} {} runs in the sandbox cgroup", p.program, p.pid);
    }
    let charged = memory_charged(&recorded);
    assert!(charged > 16 << 20, "the VM's memory is charged to the sandbox cgroup: {charged} bytes");

    // A second container of the same sandbox: its rootfs is bound into the share after
    // virtiofsd entered its namespace, and the guest must still see it.
    let second = pod_bundle(&t, "second", "confined", &["cat", "/wisp-marker"])?;
    let marker = format!("bound after boot {}", std::process::id());
    std::fs::write(second.parent().context("bundle")?.join("rootfs/wisp-marker"), &marker)?;
    let out = t.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", s(&second), "second"])?;
    assert_eq!(text(&out.stdout).trim(), marker, "{}", describe(&out));

    t.kill_and_delete("first")?;
    let controller = Path::new("/sys/fs/cgroup/memory").join(&recorded);
    assert!(!controller.exists() && !Path::new("/sys/fs/cgroup").join(&recorded).exists(), "the cgroup is removed");
    Ok(())
}

/// Kills containerd (so nothing runs `delete` after the shim), then the shim with `signal`;
/// returns how long QEMU and the helpers took to be gone, and cleans what is left.
fn shim_dies_alone(t: &Setup, signal: Signal) -> anyhow::Result<(Duration, Vec<String>)> {
    let config = t.bundle("alone", &["sleep", "3600"])?;
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, "--config", s(&config), "alone"])?;
    ensure!(out.status.success(), "ctr run -d: {}", describe(&out));
    let shims = t.shims();
    ensure!(shims.len() == 1, "one shim expected: {shims:?}");
    let before = vm_processes(t);
    ensure!(before.len() >= 3, "QEMU and helpers running: {before:?}");
    let containerd = t.ctd.pid().context("containerd pid")?;
    kill(Pid::from_raw(containerd as i32), Signal::SIGKILL)?;
    while process_running(containerd) {
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(Pid::from_raw(shims[0] as i32), signal)?;
    let start = Instant::now();
    while !vm_processes(t).is_empty() && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = start.elapsed();
    let left: Vec<String> = vm_processes(t).iter().map(|p| format!("{} {}", p.program, p.pid)).collect();
    ensure!(left.is_empty(), "{signal} of the shim left {left:?} running after {took:?}");
    Ok((took, t.leftovers()))
}

/// Removes what a dead shim left (what `containerd-shim-wisp-v2 delete` would).
fn clean_after(t: &Setup) {
    let log = slog::Logger::root(slog::Discard, slog::o!());
    for entry in std::fs::read_dir(t.state()).into_iter().flatten().flatten() {
        if entry.path().is_dir() && entry.file_name() != "accel" {
            wisp_shim::sandbox::cleanup_dir(&entry.path(), &log);
        }
    }
}

#[test]
fn a_sigkilled_shim_with_no_containerd_takes_qemu_and_every_helper_along() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let result = shim_dies_alone(&t, Signal::SIGKILL);
    clean_after(&t);
    let (took, _) = result?;
    eprintln!("QEMU and helpers gone {took:?} after the shim's SIGKILL");
    assert!(took <= Duration::from_secs(2), "gone within 2 s, took {took:?}");
    Ok(())
}

#[test]
fn a_sigtermed_shim_with_no_containerd_stops_the_vm_and_cleans_up() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let result = shim_dies_alone(&t, Signal::SIGTERM);
    let (took, _) = result.inspect_err(|_| clean_after(&t))?;
    eprintln!("QEMU and helpers gone {took:?} after the shim's SIGTERM");
    let left = t.wait_no_leftovers(Duration::from_secs(5));
    clean_after(&t);
    assert!(left.is_empty(), "the shim unmounted and removed its state itself: {left:#?}");
    Ok(())
}

#[test]
fn rootless_qemu_and_vsock_helper_run_as_the_sandbox_user_and_a_container_runs() -> anyhow::Result<()> {
    let t = Setup::with_config("rootless = true", "")?;
    // The test's directory is 0700; the sandbox's own user must reach the state root inside.
    std::fs::set_permissions(t.dir.path(), std::fs::Permissions::from_mode(0o711))?;
    let config = t.bundle("rootless", &["sleep", "3600"])?;
    run_detached(&t, &config, "rootless")?;
    let out = t.ctr(&["tasks", "exec", "--exec-id", "e1", "rootless", "sh", "-c", "echo from-rootless"])?;
    assert_eq!(text(&out.stdout).trim(), "from-rootless", "{}", describe(&out));
    let procs = vm_processes(&t);
    let first = wisp_shim::hypervisor::confine::ROOTLESS_FIRST_ID;
    for p in &procs {
        match p.program.as_str() {
            "virtiofsd" => assert_eq!(p.uid(), 0, "virtiofsd stays root (sandboxed): it serves files of every owner"),
            _ => assert!(p.uid() >= first && p.uid() != u32::MAX, "{} {} runs as uid {}", p.program, p.pid, p.uid()),
        }
    }
    ensure!(procs.iter().any(|p| p.program.starts_with("qemu-system")), "QEMU found: {procs:?}");
    t.kill_and_delete("rootless")
}
