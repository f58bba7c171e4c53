#![cfg(feature = "vm-tests")]
//! The agent as PID 1 of a real VM (our kernel, or Debian's cloud kernel with the
//! modules the initrd ships), reached from the host the way a runtime reaches it:
//! hybrid vsock through vhost-device-vsock, or virtio-serial.
//!
//! Needs `make` (kernel, static agent, initrds).

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use protocols::agent::{
    DestroySandboxRequest, GetMetricsRequest, GuestDetailsRequest, RemoveStaleVirtiofsShareMountsRequest,
    ReseedRandomDevRequest, SetGuestDateTimeRequest, SetPolicyRequest,
};
use protocols::health::{health_check_response::ServingStatus, CheckRequest};
use protocols::ttrpc::{self, context, Code};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wisp_shim::agent_dial::{self, AgentAddr, AgentConn};
use wisp_tests::timeline::parse_prometheus_text;
use wisp_tests::{artifacts, Channel, Machine, Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(90);

fn one_vm_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn ctx() -> ttrpc::context::Context {
    context::with_timeout(20_000_000_000)
}

async fn assert_serving(agent: &AgentConn) -> Result<()> {
    let r = agent.health().check(ctx(), &CheckRequest::new()).await.context("Health.Check")?;
    ensure!(r.status.enum_value() == Ok(ServingStatus::SERVING), "status {:?}", r.status);
    Ok(())
}

/// DestroySandbox answers, then the guest powers off and QEMU exits by itself.
async fn destroy_and_see_qemu_exit(vm: &mut Vm, agent: &AgentConn) -> Result<()> {
    agent.agent().destroy_sandbox(ctx(), &DestroySandboxRequest::new()).await.context("DestroySandbox")?;
    let status = vm.wait_exit(Duration::from_secs(60))?;
    ensure!(status.success(), "qemu exit status {status}; console:\n{}", vm.console_tail(20));
    ensure!(vm.console().contains("powering off"), "no power-off line:\n{}", vm.console_tail(20));
    Ok(())
}

/// Boots `config`, checks the agent serves, waits for `console_line` if given,
/// and ends the VM through DestroySandbox. Returns the VM for console checks.
fn boot_check_destroy(config: VmConfig, console_line: Option<&str>) -> Result<Vm> {
    let mut vm = Vm::boot(config)?;
    rt().block_on(async {
        let agent = vm.connect_agent(BOOT).await?;
        assert_serving(&agent).await?;
        if let Some(line) = console_line {
            vm.wait_for_console(line, Duration::from_secs(30))?;
        }
        destroy_and_see_qemu_exit(&mut vm, &agent).await
    })?;
    Ok(vm)
}

fn rpc_code(e: ttrpc::Error) -> (Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_owned()),
        other => (Code::UNKNOWN, format!("{other:?}")),
    }
}

/// Raw bytes over a fresh hybrid-vsock connection; the answer, if any, is ignored.
async fn send_raw(addr: &AgentAddr, bytes: &[u8]) -> Result<()> {
    let AgentAddr::HybridVsock { path, port } = addr else { anyhow::bail!("not hybrid vsock: {addr}") };
    let mut s = agent_dial::dial_hybrid_vsock(path, *port, Duration::from_secs(30)).await?;
    s.write_all(bytes).await?;
    s.shutdown().await?;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut sink)).await;
    Ok(())
}

#[test]
fn q35_over_hybrid_vsock_serves_the_kata_protocol() -> Result<()> {
    let _one = one_vm_at_a_time();
    let mut vm = Vm::boot(VmConfig::wisp(Machine::Q35)?.channel(Channel::HybridVsock))?;
    rt().block_on(async {
        let agent = vm.connect_agent(BOOT).await?;
        assert_serving(&agent).await?;

        let v = agent.health().version(ctx(), &CheckRequest::new()).await?;
        ensure!(v.agent_version == env!("CARGO_PKG_VERSION"), "version {v:?}");

        let mut req = GuestDetailsRequest::new();
        req.mem_block_size = true;
        let d = agent.agent().get_guest_details(ctx(), &req).await?;
        let details = d.agent_details.into_option().context("agent_details")?;
        ensure!(details.init_daemon, "the agent is PID 1 in the VM");
        ensure!(details.supports_seccomp, "static libseccomp works in the guest");
        ensure!(d.mem_block_size_bytes > 0, "memory block size read from sysfs");

        let (code, msg) = rpc_code(agent.agent().set_policy(ctx(), &SetPolicyRequest::new()).await.unwrap_err());
        ensure!(code == Code::UNIMPLEMENTED, "{code:?}: {msg}");
        // Kata's runtime sends it at every container stop and fails the stop on an error.
        let stale = RemoveStaleVirtiofsShareMountsRequest::new();
        agent
            .agent()
            .remove_stale_virtiofs_share_mounts(ctx(), &stale)
            .await
            .context("RemoveStaleVirtiofsShareMounts")?;

        // The agent's own RSS, measured exactly, and the deferred setup (cgroups)
        // finishing after the agent became ready.
        let mut metrics = Default::default();
        for _ in 0..50 {
            let text = agent.agent().get_metrics(ctx(), &GetMetricsRequest::new()).await?.metrics;
            metrics = parse_prometheus_text(&text)?;
            if metrics.contains_key("wisp_guest_setup_done_seconds") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let rss = metrics.get("wisp_agent_resident_memory_bytes").copied().unwrap_or(0.0);
        ensure!((256.0 * 1024.0..16.0 * 1024.0 * 1024.0).contains(&rss), "agent RSS {rss} in {metrics:?}");
        let (ready, done) = (metrics.get("wisp_agent_ready_seconds"), metrics.get("wisp_guest_setup_done_seconds"));
        ensure!(matches!((ready, done), (Some(r), Some(d)) if d >= r), "ready {ready:?}, setup done {done:?}");

        let mut t = SetGuestDateTimeRequest::new();
        t.Sec = 1_900_000_000;
        agent.agent().set_guest_date_time(ctx(), &t).await.context("SetGuestDateTime as PID 1")?;
        let mut seed = ReseedRandomDevRequest::new();
        seed.data = vec![0x5a; 64];
        agent.agent().reseed_random_dev(ctx(), &seed).await.context("ReseedRandomDev")?;

        // Hostile clients: garbage, then a frame claiming 64 MiB. Each costs only
        // its own connection.
        let addr = vm.agent_addr().context("agent address")?;
        send_raw(&addr, b"\x00\x00\x00\x05garbage-that-is-not-ttrpc").await?;
        let mut oversized = (64u32 << 20).to_be_bytes().to_vec();
        oversized.extend_from_slice(&[0, 0, 0, 1, 1, 0]);
        oversized.extend_from_slice(&[0xab; 8192]);
        send_raw(&addr, &oversized).await?;
        let fresh = wisp_shim::agent_dial::connect(&addr, BOOT).await?;
        assert_serving(&fresh).await.context("a new client after hostile input")?;
        assert_serving(&agent).await.context("the first client after hostile input")?;

        destroy_and_see_qemu_exit(&mut vm, &agent).await
    })?;
    let console = vm.console();
    ensure!(console.contains("guest clock set"), "{console}");
    Ok(())
}

#[test]
fn microvm_over_hybrid_vsock() -> Result<()> {
    let _one = one_vm_at_a_time();
    boot_check_destroy(VmConfig::wisp(Machine::Microvm)?.channel(Channel::HybridVsock), None)?;
    Ok(())
}

#[test]
fn q35_over_virtio_serial_survives_reconnects() -> Result<()> {
    let _one = one_vm_at_a_time();
    let mut vm = Vm::boot(VmConfig::wisp(Machine::Q35)?.channel(Channel::Serial))?;
    rt().block_on(async {
        // A port carries one connection at a time: each client detaches before
        // the next attaches, as a restarted runtime would.
        for _ in 0..3 {
            let agent = vm.connect_agent(BOOT).await?;
            assert_serving(&agent).await?;
        }
        let agent = vm.connect_agent(BOOT).await?;
        let (code, _) = rpc_code(agent.agent().set_policy(ctx(), &SetPolicyRequest::new()).await.unwrap_err());
        ensure!(code == Code::UNIMPLEMENTED);
        destroy_and_see_qemu_exit(&mut vm, &agent).await
    })?;
    ensure!(vm.console().contains("channel=serial:/dev/vport"), "{}", vm.console_tail(20));
    Ok(())
}

/// Debian's cloud kernel builds virtio, vsock and virtio-console as modules: the
/// agent must load the ones the initrd ships before it can serve at all.
#[test]
fn debian_cloud_kernel_with_shipped_modules() -> Result<()> {
    let _one = one_vm_at_a_time();
    let release = std::fs::read_dir("/lib/modules")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("-cloud-amd64"))
        .max()
        .context("no Debian cloud kernel modules in /lib/modules (make deps installs linux-image-cloud-amd64)")?;
    let kernel = PathBuf::from(format!("/boot/vmlinuz-{release}"));
    let initrd = artifacts::target_dir().join("initrd/wisp-cloud.initrd");
    ensure!(initrd.exists(), "{} missing: run make", initrd.display());
    let config = VmConfig::new(Machine::Q35, &kernel).initrd(&initrd).memory_mib(512).channel(Channel::HybridVsock);
    // The channel's drivers load before the agent serves, the rest after.
    let vm = boot_check_destroy(config, Some("msg=\"kernel modules loaded\""))?;
    let console = vm.console();
    let at = |line: &str| console.find(line).with_context(|| format!("no {line:?}:\n{console}"));
    ensure!(at("agent channel modules loaded")? < at("agent ready")?, "channel modules after ready:\n{console}");
    ensure!(at("agent ready")? < at("msg=\"kernel modules loaded\"")?, "other modules before ready:\n{console}");
    ensure!(!console.contains("module not loaded"), "{console}");
    Ok(())
}

#[test]
fn bad_kernel_options_are_reported_and_defaults_used() -> Result<()> {
    let _one = one_vm_at_a_time();
    let config = VmConfig::wisp(Machine::Q35)?
        .channel(Channel::HybridVsock)
        .cmdline_arg("agent.log=loud agent.frobnicate=1 agent.hotplug_timeout=soon");
    let vm = boot_check_destroy(config, None)?;
    let console = vm.console();
    for want in ["bad value \\\"loud\\\" for agent.log", "unknown option agent.frobnicate", "agent.hotplug_timeout"] {
        ensure!(console.contains(want), "console lacks {want:?}:\n{console}");
    }
    Ok(())
}

/// A fatal error (here: serial forced, but the VM has no serial port) must not
/// leave PID 1 dead and the VM hanging: the agent logs it and powers off.
#[test]
fn fatal_error_powers_the_vm_off() -> Result<()> {
    let _one = one_vm_at_a_time();
    let config = VmConfig::wisp(Machine::Q35)?.channel(Channel::None).cmdline_arg("agent.channel=serial");
    let mut vm = Vm::boot(config)?;
    let status = vm.wait_exit(BOOT)?;
    ensure!(status.success(), "qemu exit {status}");
    let console = vm.console();
    ensure!(console.contains("agent failed; powering off"), "{console}");
    ensure!(console.contains("agent.channel.0"), "the error names the missing port:\n{console}");
    ensure!(!console.contains("Kernel panic"), "{console}");
    Ok(())
}

#[test]
fn debug_console_starts_a_shell() -> Result<()> {
    let _one = one_vm_at_a_time();
    let initrd = artifacts::target_dir().join("initrd/wisp-busybox.initrd");
    let config =
        VmConfig::wisp(Machine::Q35)?.initrd(&initrd).channel(Channel::HybridVsock).cmdline_arg("agent.debug_console");
    // The shell's own prompt on the console, not just the agent's word for it.
    let vm = boot_check_destroy(config, Some("debug console started"))?;
    let console = vm.console();
    let after = &console[console.find("debug console started").unwrap_or(0)..];
    ensure!(after.contains("/ # "), "no shell prompt on the console:\n{}", vm.console_tail(20));
    Ok(())
}

/// cgroups are mounted after the agent serves: v1 controllers by default, the
/// unified hierarchy when the command line asks for it.
#[test]
fn cgroups_v1_by_default_and_v2_on_request() -> Result<()> {
    let _one = one_vm_at_a_time();
    for (extra, want) in [("", "cgroup v1 mounted"), ("agent.unified_cgroup_hierarchy=1", "cgroup v2 mounted")] {
        let mut config = VmConfig::wisp(Machine::Q35)?.channel(Channel::HybridVsock).cmdline_arg("agent.log=debug");
        if !extra.is_empty() {
            config = config.cmdline_arg(extra);
        }
        let vm = boot_check_destroy(config, Some(want))?;
        ensure!(!vm.console().contains("cannot mount cgroup"), "{}", vm.console());
    }
    Ok(())
}
