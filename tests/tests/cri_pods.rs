//! Kubernetes pods through containerd 1.6's CRI plugin with the `wisp` runtime handler: one
//! VM per pod, driven the way kubelet drives it, by the test's own CRI client
//! ([`wisp_tests::cri`]).
//!
//! Each test runs a private containerd with CRI on, a locally built pause image (a static
//! binary calling pause(), `tests/pause/pause.c`) as `sandbox_image` and a busybox image,
//! both imported into `k8s.io`, and `wisp` registered with the shim's absolute path. Pods use
//! the host network, so their hostname is empty, except in the CNI test: there containerd runs
//! Debian's CNI plugins (bridge + host-local from `/usr/lib/cni`) on a bridge and a private
//! /24 of the test's own, and the pod's address must show up inside its VM.
//!
//! Needs root, `make deps` (containerd, runc, QEMU, gcc, vhost-device-vsock, virtiofsd) and
//! `make all`. Compiled with features `containerd-tests` + `vm-tests` (`make test-shim`).
#![cfg(all(feature = "containerd-tests", feature = "vm-tests"))]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use tempfile::TempDir;
use wisp_tests::containerd::{CniOptions, ContainerdOptions, CriOptions};
use wisp_tests::cri::{api, stream_exec, Cri};
use wisp_tests::{artifacts, leftovers, Containerd};

const PAUSE_IMAGE: &str = "docker.io/library/wisp-pause:1";
const BUSYBOX_IMAGE: &str = "docker.io/library/wisp-busybox:1";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command, failing with its output unless it succeeds.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?}: {}\n{}{}", out.status, text(&out.stdout), text(&out.stderr));
    Ok(text(&out.stdout))
}

/// The shim binary: `WISP_SHIM`, else the release build.
fn shim_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("WISP_SHIM")
        .filter(|v| !v.is_empty())
        .map_or_else(|| artifacts::target_dir().join("release/containerd-shim-wisp-v2"), PathBuf::from);
    ensure!(path.is_file(), "{} not found: run `make tools` (or set WISP_SHIM)", path.display());
    Ok(path)
}

/// containerd with CRI, the images imported, and a CRI client.
struct Pods {
    dir: TempDir,
    ctd: Containerd,
    cri: Cri,
}

impl Pods {
    fn new() -> anyhow::Result<Self> {
        Self::start(None, false)
    }

    /// With `cni`, pods without host networking get that network. With `template`, the shim
    /// clones each pod's VM from a template made here first (`[factory] template = true`).
    fn start(cni: Option<CniOptions>, template: bool) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("wisp-cri-").tempdir()?;
        let shim = shim_binary()?;
        let factory = if template { "\n[factory]\ntemplate = true\n" } else { "" };
        let config = wisp_tests::shim_setup::configure(dir.path(), &artifacts::kernel()?, "", factory)?;
        if template {
            run(Command::new(wisp_tests::shim_setup::wisp_binary()?)
                .args(["template", "create", "--config"])
                .arg(&config))?;
        }

        let pause = dir.path().join("pause");
        let source = artifacts::workspace_root().join("tests/pause/pause.c");
        run(Command::new("cc").args(["-static", "-Os", "-s", "-o"]).arg(&pause).arg(&source))
            .context("building the pause binary (gcc and libc6-dev: make deps)")?;
        let builder = artifacts::rootfs_builder()?;
        let (pause_tar, busybox_tar) = (dir.path().join("pause.tar"), dir.path().join("busybox.tar"));
        let add = format!("{}:/pause", pause.display());
        run(Command::new(&builder)
            .args(["oci-image", "--from", "busybox", "--name", PAUSE_IMAGE, "--add-file", &add, "-o"])
            .arg(&pause_tar)
            .args(["--args", "/pause"]))?;
        run(Command::new(&builder)
            .args(["oci-image", "--from", "busybox", "--name", BUSYBOX_IMAGE, "-o"])
            .arg(&busybox_tar))?;

        let ctd = Containerd::start_with(ContainerdOptions {
            namespace: Some("k8s.io".into()),
            cri: Some(CriOptions {
                sandbox_image: PAUSE_IMAGE.into(),
                runtimes: vec![("wisp".into(), shim.display().to_string())],
                cni,
            }),
            ..Default::default()
        })?;
        for tar in [&pause_tar, &busybox_tar] {
            let out = ctd.ctr([Path::new("images"), Path::new("import"), tar])?;
            ensure!(out.status.success(), "ctr images import {}: {}", tar.display(), text(&out.stderr));
        }
        let cri = Cri::connect(ctd.address())?;
        Ok(Self { dir, ctd, cri })
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The mount options of the mount under the state root whose path ends with `suffix`.
    fn state_mount_options(&self, suffix: &str) -> String {
        let state = self.state();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        info.lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| f.get(4).is_some_and(|p| Path::new(p).starts_with(&state) && p.ends_with(suffix)))
            .and_then(|f| f.get(5).map(ToString::to_string))
            .unwrap_or_else(|| format!("<no mount ending with {suffix} under {}>", state.display()))
    }

    /// A host-network pod's config; its log directory is created (kubelet's job).
    fn pod_config(
        &self,
        name: &str,
        resources: Option<api::LinuxContainerResources>,
    ) -> anyhow::Result<api::PodSandboxConfig> {
        let logs = self.dir.path().join("logs").join(name);
        std::fs::create_dir_all(&logs)?;
        Ok(api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            // A host-network pod must not set one: containerd 1.6 refuses it.
            hostname: String::new(),
            log_directory: logs.display().to_string(),
            linux: Some(api::LinuxPodSandboxConfig {
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(api::NamespaceOption {
                        network: api::NamespaceMode::Node as i32,
                        pid: api::NamespaceMode::Pod as i32,
                        ipc: api::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                resources,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn run_pod(&self, config: &api::PodSandboxConfig, handler: &str) -> anyhow::Result<String> {
        let request = api::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: handler.into() };
        let answer = self.cri.block_on(self.cri.runtime().run_pod_sandbox(request));
        let answer = answer.map_err(|status| anyhow::anyhow!("RunPodSandbox: {status}\n{}", self.ctd.log()))?;
        Ok(answer.into_inner().pod_sandbox_id)
    }

    /// CreateContainer + StartContainer of a busybox container running `command`, in the
    /// pod's pid namespace.
    fn start_container(
        &self,
        pod: &str,
        pod_config: &api::PodSandboxConfig,
        name: &str,
        command: &[&str],
    ) -> anyhow::Result<String> {
        self.start_container_in(pod, pod_config, name, command, api::NamespaceMode::Pod)
    }

    /// [`Pods::start_container`] with the pid namespace `pid` (Container: its own, as kubelet
    /// asks unless the pod shares its process namespace).
    fn start_container_in(
        &self,
        pod: &str,
        pod_config: &api::PodSandboxConfig,
        name: &str,
        command: &[&str],
        pid: api::NamespaceMode,
    ) -> anyhow::Result<String> {
        let namespaces = api::NamespaceOption { pid: pid as i32, ..Default::default() };
        let config = api::ContainerConfig {
            metadata: Some(api::ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(api::ImageSpec { image: BUSYBOX_IMAGE.into(), ..Default::default() }),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(api::LinuxContainerConfig {
                security_context: Some(api::LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let request = api::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        let id = self
            .cri
            .block_on(self.cri.runtime().create_container(request))
            .map_err(|status| anyhow::anyhow!("CreateContainer {name}: {status}"))?
            .into_inner()
            .container_id;
        self.cri
            .block_on(self.cri.runtime().start_container(api::StartContainerRequest { container_id: id.clone() }))
            .map_err(|status| anyhow::anyhow!("StartContainer {name}: {status}"))?;
        Ok(id)
    }

    /// ContainerStatus until the container exited; its exit code.
    fn wait_exit(&self, id: &str, within: Duration) -> anyhow::Result<i32> {
        let start = Instant::now();
        loop {
            let request = api::ContainerStatusRequest { container_id: id.into(), verbose: false };
            let status = self.cri.block_on(self.cri.runtime().container_status(request))?.into_inner();
            let status = status.status.context("ContainerStatus without a status")?;
            if status.state == api::ContainerState::ContainerExited as i32 {
                return Ok(status.exit_code);
            }
            ensure!(start.elapsed() < within, "container {id} still {:?} after {within:?}", status.state);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn exec_sync(&self, id: &str, cmd: &[&str]) -> anyhow::Result<api::ExecSyncResponse> {
        let request = api::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout: 60,
        };
        Ok(self
            .cri
            .block_on(self.cri.runtime().exec_sync(request))
            .map_err(|s| anyhow::anyhow!("ExecSync: {s}"))?
            .into_inner())
    }

    fn stop_and_remove(&self, pod: &str) -> anyhow::Result<()> {
        let id = pod.to_owned();
        self.cri
            .block_on(self.cri.runtime().stop_pod_sandbox(api::StopPodSandboxRequest { pod_sandbox_id: id.clone() }))
            .map_err(|s| anyhow::anyhow!("StopPodSandbox: {s}"))?;
        self.cri
            .block_on(self.cri.runtime().remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: id }))
            .map_err(|s| anyhow::anyhow!("RemovePodSandbox: {s}"))?;
        Ok(())
    }

    /// Processes serving this containerd's pods, by their command line.
    fn shim_cmdlines(&self) -> Vec<(u32, String)> {
        self.ctd
            .shim_processes()
            .into_iter()
            .map(|pid| {
                (pid, text(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " "))
            })
            .collect()
    }

    /// How many of the shims' processes have `needle` in their command line; the KVM probe
    /// guest a shim may run in the background (once per state root) is not a pod's VM.
    fn count(&self, needle: &str) -> usize {
        self.shim_cmdlines().iter().filter(|(_, c)| c.contains(needle) && !c.contains("wisp-kvm-probe")).count()
    }

    /// Everything of the wisp pods still on the host: shims, and what
    /// [`leftovers::under_state_root`] finds (QEMU and helpers, mounts, state).
    fn leftovers(&self) -> Vec<String> {
        let mut found = leftovers::under_state_root(&self.state());
        let shims = self.shim_cmdlines().into_iter().filter(|(_, c)| c.contains("containerd-shim-wisp-v2"));
        found.extend(shims.map(|(pid, c)| format!("process {pid}: {c}")));
        found
    }

    fn wait_no_leftovers(&self, within: Duration) -> Vec<String> {
        leftovers::wait_until_empty(within, || self.leftovers())
    }
}

/// The CRI log file's lines as (stream, text), full lines only.
fn cri_log(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let content = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    content
        .lines()
        .map(|line| {
            // TIMESTAMP STREAM TAG MESSAGE (CRI log format).
            let mut parts = line.splitn(4, ' ');
            let (Some(_), Some(stream), Some(tag), Some(message)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                bail!("not a CRI log line: {line:?}");
            };
            ensure!(tag == "F", "partial line in {}: {line:?}", path.display());
            Ok((stream.to_owned(), message.to_owned()))
        })
        .collect()
}

/// A pod's resources as kubelet sends them: its VM gets 1 vCPU (0.5 rounded up) and 64 MiB
/// more than the configured one.
fn half_a_cpu_and_64_mib() -> api::LinuxContainerResources {
    api::LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        ..Default::default()
    }
}

#[test]
fn a_pod_of_two_containers_is_one_vm() -> anyhow::Result<()> {
    let t = Pods::new()?;
    let version = t.cri.block_on(t.cri.runtime().version(api::VersionRequest { version: "v1".into() }))?.into_inner();
    assert_eq!(version.runtime_name, "containerd", "{version:?}");
    assert_eq!(version.runtime_api_version, "v1", "{version:?}");

    let mut config = t.pod_config("pod1", Some(half_a_cpu_and_64_mib()))?;
    // kubelet's pod cgroup (cgroupfs driver): the VM's cgroup goes under it.
    let pod_cgroup = format!("wisp-test-{}/pod-uid-pod1", std::process::id());
    let removed_pod_cgroups = PodCgroups(pod_cgroup.clone());
    if let Some(linux) = config.linux.as_mut() {
        linux.cgroup_parent = format!("/{pod_cgroup}");
    }
    let pod = t.run_pod(&config, "wisp")?;
    assert_eq!(t.count("containerd-shim-wisp-v2"), 1, "one shim for the pod: {:#?}", t.shim_cmdlines());
    assert_eq!(t.count("qemu-system"), 1, "one VM for the pod: {:#?}", t.shim_cmdlines());
    let (qemu_pid, qemu) = t.shim_cmdlines().into_iter().find(|(_, c)| c.contains("qemu-system")).unwrap_or_default();
    let qemu_cgroup = wisp_shim::hypervisor::cgroup::of_process(qemu_pid, "memory").unwrap_or_default();
    assert!(
        qemu_cgroup.starts_with(&format!("/{pod_cgroup}/wisp-")),
        "QEMU runs in the sandbox cgroup under the pod's: {qemu_cgroup}"
    );
    assert!(qemu.contains("-m 320"), "256 MiB + the pod's 64 MiB: {qemu}");
    assert!(qemu.contains("-smp 2"), "1 vCPU + the pod's 0.5 (rounded up): {qemu}");
    assert!(
        t.shim_cmdlines().iter().all(|(_, c)| !c.contains("/pause")),
        "the pause process runs in the guest, not on the host: {:#?}",
        t.shim_cmdlines()
    );
    // CRI makes the pause container's root read-only: so is its rootfs's bind on the host, which
    // the shim gave its mount points (`/etc/resolv.conf`, `/proc`, ...) first.
    let pause_rootfs = t.state_mount_options(&format!("/mounts/{pod}/rootfs"));
    assert!(pause_rootfs.split(',').any(|o| o == "ro"), "the pause rootfs on the host: {pause_rootfs:?}");

    let sleeper = t.start_container(&pod, &config, "sleeper", &["sh", "-c", "echo sleeper-up; exec sleep 3600"])?;
    let worker = t.start_container(
        &pod,
        &config,
        "worker",
        &[
            "sh",
            "-c",
            // The sleeper's shell may not have exec'd `sleep` yet when this starts: look for up
            // to 5 s (seen once boots got fast).
            "echo to-stdout; echo to-stderr >&2; i=0; \
             until ps -o args | grep -q '^sleep 3600' || [ $i -ge 50 ]; do sleep 0.1; i=$((i+1)); done; \
             ps -o args | grep -q '^sleep 3600' && echo sees-sleeper; exit 7",
        ],
    )?;
    assert_eq!(t.wait_exit(&worker, Duration::from_secs(60))?, 7, "the worker's exact exit code");
    assert_eq!(t.count("containerd-shim-wisp-v2"), 1, "the containers share the pod's shim");
    assert_eq!(t.count("qemu-system"), 1, "the containers run in the pod's VM");

    let log = cri_log(&t.dir.path().join("logs/pod1/worker.log"))?;
    let has = |stream: &str, message: &str| log.iter().any(|(s, m)| s == stream && m == message);
    assert!(has("stdout", "to-stdout"), "{log:?}");
    assert!(has("stderr", "to-stderr"), "{log:?}");
    assert!(has("stdout", "sees-sleeper"), "the pod shares one pid namespace: {log:?}");
    let log = cri_log(&t.dir.path().join("logs/pod1/sleeper.log"))?;
    assert_eq!(log, [("stdout".to_owned(), "sleeper-up".to_owned())]);

    let answer = t.exec_sync(&sleeper, &["sh", "-c", "echo exec-out; echo exec-err >&2; exit 5"])?;
    assert_eq!(text(&answer.stdout), "exec-out\n");
    assert_eq!(text(&answer.stderr), "exec-err\n");
    assert_eq!(answer.exit_code, 5);
    // Streaming Exec (kubectl exec): through containerd's streaming server.
    let request = api::ExecRequest {
        container_id: sleeper.clone(),
        cmd: ["sh", "-c", "echo stream-out; echo stream-err >&2; exit 9"].map(String::from).to_vec(),
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let url = t.cri.block_on(t.cri.runtime().exec(request)).map_err(|s| anyhow::anyhow!("Exec: {s}"))?.into_inner().url;
    let streamed = stream_exec(&url, Duration::from_secs(60))?;
    assert_eq!(text(&streamed.stdout), "stream-out\n");
    assert_eq!(text(&streamed.stderr), "stream-err\n");
    assert_eq!(streamed.exit_code, 9);
    let ps = t.exec_sync(&sleeper, &["ps", "-o", "pid,args"])?;
    let ps = text(&ps.stdout);
    let pids: HashMap<&str, &str> =
        ps.lines().skip(1).filter_map(|l| l.trim().split_once(' ')).map(|(pid, args)| (args.trim(), pid)).collect();
    assert_eq!(pids.get("/pause"), Some(&"1"), "the pause process is PID 1 of the pod, in the guest:\n{ps}");
    assert!(pids.contains_key("sleep 3600"), "{ps}");

    // A container with its own pid namespace (kubelet's default) still shares the pod's ipc
    // and uts namespaces.
    let namespaces = "for n in ipc uts pid; do readlink /proc/self/ns/$n; done";
    let script = format!("{namespaces}; ps -o args | grep -q '^sleep 3600' && echo sees-sleeper || echo own-pids");
    let loner = t.start_container_in(&pod, &config, "loner", &["sh", "-c", &script], api::NamespaceMode::Container)?;
    assert_eq!(t.wait_exit(&loner, Duration::from_secs(60))?, 0);
    let loner_out: Vec<String> =
        cri_log(&t.dir.path().join("logs/pod1/loner.log"))?.into_iter().map(|(_, line)| line).collect();
    let sleeper_ns = t.exec_sync(&sleeper, &["sh", "-c", namespaces])?;
    let sleeper_ns: Vec<String> = text(&sleeper_ns.stdout).lines().map(str::to_owned).collect();
    assert_eq!(loner_out.len(), 4, "{loner_out:?}");
    assert_eq!(sleeper_ns.len(), 3, "{sleeper_ns:?}");
    assert_eq!(loner_out[..2], sleeper_ns[..2], "the pod's ipc and uts namespaces are shared");
    assert_ne!(loner_out[2], sleeper_ns[2], "the pid namespace is its own");
    assert_eq!(loner_out[3], "own-pids");

    t.stop_and_remove(&pod)?;
    let left = t.wait_no_leftovers(Duration::from_secs(10));
    assert!(left.is_empty(), "after RemovePodSandbox nothing of the pod remains: {left:#?}\n{}", t.ctd.log());
    let leaf = Path::new("/sys/fs/cgroup/memory").join(qemu_cgroup.trim_start_matches('/'));
    assert!(!leaf.exists(), "the sandbox cgroup is removed: {}", leaf.display());
    drop(removed_pod_cgroups);
    Ok(())
}

/// The test's stand-in for kubelet's pod cgroups (`wisp-test-<pid>/<pod>`), removed on drop in
/// every hierarchy, as kubelet would.
struct PodCgroups(String);

impl Drop for PodCgroups {
    fn drop(&mut self) {
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let base = hierarchy.path();
            let _ = std::fs::remove_dir(base.join(&self.0));
            if let Some(top) = Path::new(&self.0).components().next() {
                let _ = std::fs::remove_dir(base.join(top));
            }
        }
    }
}

/// PSS of process `pid` in KiB (smaps_rollup).
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
        .unwrap_or(0)
}

/// One-container pod: RunPodSandbox → the container exited, on `handler`.
fn one_pod(t: &Pods, name: &str, handler: &str) -> anyhow::Result<(Duration, String)> {
    let config = t.pod_config(name, None)?;
    let start = Instant::now();
    let pod = t.run_pod(&config, handler)?;
    let c = t.start_container(&pod, &config, "main", &["true"])?;
    let code = t.wait_exit(&c, Duration::from_secs(120))?;
    let took = start.elapsed();
    ensure!(code == 0, "pod {name}: exit {code}");
    Ok((took, pod))
}

#[test]
fn pod_start_wisp_vs_runc_and_five_pods_at_once() -> anyhow::Result<()> {
    let t = Pods::new()?;
    let mut wisp = Vec::new();
    let mut runc = Vec::new();
    for round in 0..3 {
        let (took, pod) = one_pod(&t, &format!("runc-{round}"), "runc")?;
        runc.push(took);
        t.stop_and_remove(&pod)?;
        let (took, pod) = one_pod(&t, &format!("wisp-{round}"), "wisp")?;
        wisp.push(took);
        t.stop_and_remove(&pod)?;
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (w, r) = (median(&mut wisp), median(&mut runc));
    println!(
        "one-container pod, RunPodSandbox → container exited (median of 3): wisp {:.2} s, runc {:.2} s, ratio {:.1}",
        w.as_secs_f64(),
        r.as_secs_f64(),
        w.as_secs_f64() / r.as_secs_f64()
    );

    // Five pods at once (the sandbox: VM + pause), each from its own CRI connection.
    let configs = (0..5).map(|i| t.pod_config(&format!("many-{i}"), None)).collect::<anyhow::Result<Vec<_>>>()?;
    let address = t.ctd.address().to_owned();
    let start = Instant::now();
    let pods: Vec<anyhow::Result<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = configs
            .iter()
            .map(|config| {
                let address = &address;
                scope.spawn(move || -> anyhow::Result<String> {
                    let cri = Cri::connect(address)?;
                    let request =
                        api::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: "wisp".into() };
                    Ok(cri.block_on(cri.runtime().run_pod_sandbox(request))?.into_inner().pod_sandbox_id)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("thread panicked")))).collect()
    });
    let wall = start.elapsed();
    let pods = pods.into_iter().collect::<anyhow::Result<Vec<_>>>().map_err(|err| {
        let log = t.ctd.log();
        let tail: Vec<&str> = log.lines().rev().take(300).collect();
        err.context(format!(
            "containerd's log, last 300 lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    })?;
    let pss: u64 = t
        .shim_cmdlines()
        .into_iter()
        .filter(|(_, cmdline)| !cmdline.contains("containerd-shim-runc"))
        .map(|(pid, _)| pss_kib(pid))
        .sum();
    println!(
        "5 pods started in parallel (RunPodSandbox, pause in the guest): wall {:.2} s; host PSS {:.1} MiB per pod (shim + QEMU + helpers)",
        wall.as_secs_f64(),
        pss as f64 / 1024.0 / 5.0
    );
    assert_eq!(t.count("qemu-system"), 5, "one VM per pod");
    for pod in &pods {
        t.stop_and_remove(pod)?;
    }
    let left = t.wait_no_leftovers(Duration::from_secs(20));
    assert!(left.is_empty(), "{left:#?}");
    Ok(())
}

/// The test's CNI bridge: deleted at the end whatever happens (the bridge plugin creates it in
/// the host namespace and CNI DEL leaves it, as with every bridge network).
struct Bridge(String);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

/// The pod's network namespace path from PodSandboxStatus's verbose info (containerd 1.6
/// puts the sandbox's runtime spec there).
fn netns_path(info: &HashMap<String, String>) -> Option<PathBuf> {
    let info: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    let namespaces = info.pointer("/runtimeSpec/linux/namespaces")?.as_array()?;
    let network = namespaces.iter().find(|ns| ns["type"] == "network")?;
    network["path"].as_str().filter(|p| !p.is_empty()).map(PathBuf::from)
}

#[test]
fn a_pod_gets_its_cni_address_inside_the_vm() -> anyhow::Result<()> {
    cni_pod(false)
}

/// The same pod in a VM cloned from a template: its NIC is hot-plugged into the clone.
#[test]
fn a_pod_cloned_from_a_template_gets_its_cni_address_inside_the_vm() -> anyhow::Result<()> {
    cni_pod(true)
}

fn cni_pod(template: bool) -> anyhow::Result<()> {
    ensure!(
        Path::new("/usr/lib/cni/bridge").is_file(),
        "no /usr/lib/cni/bridge: make deps (containernetworking-plugins)"
    );
    let pid = std::process::id();
    let bridge = Bridge(format!("wispbr{}", pid % 100_000));
    let net = format!("10.213.{}", pid % 200 + 20);
    let gateway = format!("{net}.1");
    let ipam = tempfile::Builder::new().prefix("wisp-ipam-").tempdir()?;
    let conflist = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": format!("wisp-test-{pid}"),
        "plugins": [{
            "type": "bridge",
            "bridge": bridge.0,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": format!("{net}.0/24"), "gateway": gateway}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": ipam.path(),
            },
        }],
    });
    let t = Pods::start(Some(CniOptions { bin_dir: "/usr/lib/cni".into(), conflist: conflist.to_string() }), template)?;

    // Sized (half a CPU, 64 MiB): a cold VM boots with 2 vCPUs, a clone of the 1-vCPU template
    // gets its second one by hot-plug; either way the pod sees two.
    let mut config = t.pod_config("netpod", Some(half_a_cpu_and_64_mib()))?;
    config.hostname = "netpod".into();
    if let Some(options) =
        config.linux.as_mut().and_then(|l| l.security_context.as_mut()).and_then(|s| s.namespace_options.as_mut())
    {
        options.network = api::NamespaceMode::Pod as i32;
    }
    let started = Instant::now();
    let pod = t.run_pod(&config, "wisp")?;
    let run_pod = started.elapsed();
    let request = api::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: true };
    let status = t.cri.block_on(t.cri.runtime().pod_sandbox_status(request))?.into_inner();
    let ip = status.status.as_ref().and_then(|s| s.network.as_ref()).map(|n| n.ip.clone()).unwrap_or_default();
    ensure!(ip.starts_with(&format!("{net}.")), "CRI reports the pod IP from the CNI range {net}.0/24: {ip:?}");
    let netns = netns_path(&status.info).context("the pod's network namespace in PodSandboxStatus")?;
    let ns_name = netns.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tap = run(Command::new("ip").args(["-n", &ns_name, "-j", "link", "show", "tap0_wisp"]))?;
    ensure!(tap.contains("tap0_wisp"), "the tap lives in the pod's namespace: {tap}");
    let host_tap = Command::new("ip").args(["link", "show", "tap0_wisp"]).output()?;
    ensure!(!host_tap.status.success(), "no tap of ours in the host namespace");
    // QEMU alone holds the tap: not the shim (it closed its copy), not virtiofsd or vsock.
    let holders: Vec<String> = t
        .shim_cmdlines()
        .into_iter()
        .filter(|(pid, _)| {
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten();
            fds.filter_map(|fd| std::fs::read_link(fd.path()).ok()).any(|target| target == Path::new("/dev/net/tun"))
        })
        .map(|(_, cmdline)| cmdline)
        .collect();
    // A clone's QEMU got the tap over QMP after the restore; a cold one on its command line.
    let how = if template { "-incoming defer" } else { "-netdev tap,id=net0,fd=" };
    ensure!(
        holders.len() == 1 && holders[0].contains("qemu-system") && holders[0].contains(how),
        "only QEMU holds the tap: {holders:#?}"
    );
    ensure!(
        t.ctd.log().contains("pod NIC plugged into the clone") == template
            && t.ctd.log().contains("the clone grown by hot-plug") == template,
        "the pod's VM is a clone with its NIC plugged and grown to the pod's size: {template}\n{}",
        t.ctd.log()
    );

    // A listener on the bridge (the pod's gateway): the guest connects to it.
    let listener = std::net::TcpListener::bind((gateway.as_str(), 0))?;
    let port = listener.local_addr()?.port();
    let server = std::thread::spawn(move || -> anyhow::Result<(String, String)> {
        let (mut stream, peer) = listener.accept()?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut stream), &mut line)?;
        Ok((peer.ip().to_string(), line.trim().to_owned()))
    });
    let script = format!(
        "ip addr show eth0; ip route; ping -c 1 -W 10 {gateway} >/dev/null && echo ping-ok; \
         echo hello-from-pod | nc {gateway} {port} && echo nc-ok; echo cpus=$(nproc)"
    );
    let c = t.start_container(&pod, &config, "net", &["sh", "-c", &script])?;
    let code = t.wait_exit(&c, Duration::from_secs(120))?;
    let total = started.elapsed();
    let log = cri_log(&t.dir.path().join("logs/netpod/net.log"))?;
    let out: Vec<&str> = log.iter().filter(|(s, _)| s == "stdout").map(|(_, m)| m.as_str()).collect();
    ensure!(code == 0, "exit {code}: {log:#?}");
    ensure!(
        out.iter().any(|l| l.trim().starts_with(&format!("inet {ip}/24"))),
        "the guest's eth0 has the pod IP {ip}: {out:#?}"
    );
    ensure!(out.iter().any(|l| l.starts_with(&format!("default via {gateway} dev eth0"))), "{out:#?}");
    ensure!(out.contains(&"ping-ok") && out.contains(&"nc-ok"), "the guest reaches the gateway: {out:#?}");
    ensure!(out.contains(&"cpus=2"), "the pod's VM has its 2 vCPUs: {out:#?}");
    let (peer, message) = server.join().map_err(|_| anyhow::anyhow!("listener thread panicked"))??;
    assert_eq!(message, "hello-from-pod");
    assert_eq!(peer, ip, "the host sees the connection come from the pod IP");
    println!(
        "CNI pod{}: RunPodSandbox {:.2} s (CNI + tap + VM + UpdateInterface/Routes), to container exit {:.2} s",
        if template { " cloned from a template" } else { "" },
        run_pod.as_secs_f64(),
        total.as_secs_f64()
    );

    t.stop_and_remove(&pod)?;
    let left = t.wait_no_leftovers(Duration::from_secs(20));
    assert!(left.is_empty(), "after RemovePodSandbox nothing of the pod remains: {left:#?}\n{}", t.ctd.log());
    ensure!(!netns.exists(), "containerd removed the pod's namespace {}", netns.display());
    let ports = run(Command::new("ip").args(["-j", "link", "show", "master", &bridge.0]))?;
    ensure!(ports.trim().is_empty() || ports.trim() == "[]", "CNI DEL removed the veth: {ports}");
    let host_tap = Command::new("ip").args(["link", "show", "tap0_wisp"]).output()?;
    ensure!(!host_tap.status.success(), "no tap of ours in the host namespace");
    Ok(())
}
