//! `wisp-run` (what `make run` calls): boot one VM with the wisp kernel and initrd,
//! share a busybox rootfs into it over virtio-9p, run one container through the
//! agent (Kata's protocol, as a runtime would), power the VM off through the
//! agent, and print what the container printed and the timeline on both clocks.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use protocols::agent::{CreateSandboxRequest, DestroySandboxRequest, GetMetricsRequest, GuestDetailsRequest};
use protocols::health::CheckRequest;
use protocols::ttrpc::context;
use wisp_tests::agent_client::{self, spec, storage_9p, Container};
use wisp_tests::timeline::{parse_prometheus_text, BootTimeline};
use wisp_tests::{accel, Channel, Machine, Vm, VmConfig};

/// Boot a wisp VM, run one busybox container in it, show what it printed and how long each step took.
///
/// Uses the artifacts `make` builds (kernel in target/kernel, initrd in target/initrd)
/// and the host's static busybox (/bin/busybox) as the container's rootfs, shared
/// into the guest over virtio-9p; KVM when it runs a guest on this host, else TCG.
/// Everything it starts (QEMU, vhost-device-vsock, sockets, temp dirs) is gone when
/// it exits.
///
/// Example: wisp-run -- /bin/sh -c "echo hi from $(hostname); cat /proc/1/cmdline"
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Machine type: q35 and pc boot bzImage, microvm boots the PVH vmlinux.
    #[arg(long, value_enum, default_value_t = MachineArg::Q35)]
    machine: MachineArg,
    /// Agent channel: vsock (hybrid vsock via vhost-device-vsock) or virtio-serial.
    #[arg(long, value_enum, default_value_t = ChannelArg::Vsock)]
    channel: ChannelArg,
    /// Kernel to boot instead of the one `make` built.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initrd to boot instead of target/initrd/wisp.initrd.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u32,
    /// Extra kernel command-line arguments, e.g. "agent.log=debug".
    #[arg(long)]
    append: Vec<String>,
    /// Also print the guest's serial console (kernel and agent log).
    #[arg(long)]
    console: bool,
    /// Seconds to wait for the agent.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// The container's command (after `--`); busybox applets are on its PATH.
    #[arg(last = true, default_values_t = DEFAULT_COMMAND.map(String::from))]
    command: Vec<String>,
}

const DEFAULT_COMMAND: [&str; 3] =
    ["/bin/sh", "-c", "echo hello from a busybox container in a wisp VM; uname -sr; id; hostname"];
/// The 9p mount tag of the shared rootfs, and where the agent mounts it.
const ROOTFS_TAG: &str = "wisprootfs";
const ROOTFS_IN_GUEST: &str = "/run/kata-containers/shared/containers/busybox/rootfs";
const CONTAINER_ID: &str = "busybox";

#[derive(Debug, Clone, Copy, ValueEnum)]
enum MachineArg {
    Q35,
    Pc,
    Microvm,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ChannelArg {
    Vsock,
    Serial,
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("wisp-run: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let machine = match args.machine {
        MachineArg::Q35 => Machine::Q35,
        MachineArg::Pc => Machine::Pc,
        MachineArg::Microvm => Machine::Microvm,
    };
    let channel = match args.channel {
        ChannelArg::Vsock => Channel::HybridVsock,
        ChannelArg::Serial => Channel::Serial,
    };
    let mut config = match &args.kernel {
        Some(kernel) => VmConfig::new(machine, kernel).initrd(wisp_tests::artifacts::initrd()?),
        None => VmConfig::wisp(machine)?,
    };
    if let Some(initrd) = &args.initrd {
        config = config.initrd(initrd);
    }
    let rootfs = tempfile::tempdir().context("cannot make a temp dir for the container's rootfs")?;
    agent_client::busybox_rootfs(rootfs.path())
        .with_context(|| format!("cannot build a busybox rootfs from {} (make deps)", agent_client::BUSYBOX))?;
    config = config
        .channel(channel)
        .memory_mib(args.memory)
        .qemu_args_extra(machine.share_9p_args(rootfs.path(), ROOTFS_TAG));
    for a in &args.append {
        config = config.cmdline_arg(a.clone());
    }
    let decision = accel::decision();
    eprintln!(
        "wisp-run: booting {machine:?} under {:?}, kernel {}, initrd {}",
        decision.accel,
        config.kernel_path().display(),
        config.initrd_path().map(|p| p.display().to_string()).unwrap_or_default()
    );

    let mut vm = Vm::boot(config)?;
    let spawned = vm.spawned_at();
    let timeout = Duration::from_secs(args.timeout);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let ctx = || context::with_timeout(30_000_000_000);

    let (answers, first_check, steps, output) = runtime.block_on(async {
        let agent = vm.connect_agent(timeout).await?;
        let mut answers = Vec::new();
        let check = agent.health().check(ctx(), &CheckRequest::new()).await.context("Health.Check")?;
        let first_check = spawned.elapsed();
        answers.push(("Health.Check", format!("{:?}", check.status.enum_value_or_default())));
        let v = agent.health().version(ctx(), &CheckRequest::new()).await.context("Health.Version")?;
        answers.push(("Health.Version", format!("agent {}, protocol {}", v.agent_version, v.grpc_version)));
        let mut req = GuestDetailsRequest::new();
        req.mem_block_size = true;
        let d = agent.agent().get_guest_details(ctx(), &req).await.context("GetGuestDetails")?;
        let details = d.agent_details.clone().into_option().unwrap_or_default();
        answers.push((
            "GetGuestDetails",
            format!(
                "agent {}, init_daemon={}, seccomp={}, memory block {}",
                details.version,
                details.init_daemon,
                details.supports_seccomp,
                mib(d.mem_block_size_bytes as f64)
            ),
        ));
        let mut sandbox = CreateSandboxRequest::new();
        sandbox.sandbox_id = "wisp-run".into();
        sandbox.hostname = "wisp".into();
        sandbox.storages = vec![storage_9p(ROOTFS_TAG, ROOTFS_IN_GUEST)];
        agent.agent().create_sandbox(ctx(), &sandbox).await.context("CreateSandbox (9p rootfs)")?;
        let mut steps = vec![("CreateSandbox answered (9p rootfs mounted)", spawned.elapsed())];
        let argv: Vec<&str> = args.command.iter().map(String::as_str).collect();
        let client = agent.agent();
        let container = Container::create(&client, CONTAINER_ID, spec(ROOTFS_IN_GUEST, &argv, false), vec![])
            .await
            .context("CreateContainer")?;
        steps.push(("CreateContainer answered", spawned.elapsed()));
        container.start().await.context("StartContainer")?;
        steps.push(("StartContainer answered", spawned.elapsed()));
        let output = container.output(CONTAINER_ID).await.context("reading the container's output")?;
        steps.push(("container exited, its output read", spawned.elapsed()));
        let m = client.get_metrics(ctx(), &GetMetricsRequest::new()).await.context("GetMetrics")?;
        container.remove().await.context("RemoveContainer")?;
        steps.push(("RemoveContainer answered", spawned.elapsed()));
        let metrics = parse_prometheus_text(&m.metrics).unwrap_or_default();
        let get = |k: &str| metrics.get(k).copied().unwrap_or(f64::NAN);
        answers.push((
            "GetMetrics",
            format!(
                "agent RSS {}, guest memory {} total / {} available",
                mib(get("wisp_agent_resident_memory_bytes")),
                mib(get("wisp_guest_memory_total_bytes")),
                mib(get("wisp_guest_memory_available_bytes"))
            ),
        ));
        client.destroy_sandbox(ctx(), &DestroySandboxRequest::new()).await.context("DestroySandbox")?;
        steps.push(("DestroySandbox answered", spawned.elapsed()));
        anyhow::Ok((answers, first_check, steps, output))
    })?;
    let status = vm.wait_exit(Duration::from_secs(60))?;
    let exited = spawned.elapsed();

    if args.console {
        println!("guest console:\n{}", vm.console());
    }
    println!("the container ({}) printed:", args.command.join(" "));
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        println!("  | {line}");
    }
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        println!("  ! {line}");
    }
    println!("  exit status {}", output.status);
    println!("\nagent answered:");
    for (rpc, answer) in &answers {
        println!("  {rpc:<17} {answer}");
    }
    println!("\nboot timeline, guest clock (seconds since the guest booted: printk and CLOCK_BOOTTIME):");
    for event in BootTimeline::parse(&vm.console()).events() {
        println!("  {:>8.3}  {}", event.at, event.name);
    }
    println!("\nboot timeline, host clock (monotonic seconds since QEMU was spawned):");
    println!("  {:>8.3}  QEMU spawned", 0.0);
    println!("  {:>8.3}  first Health.Check answered", first_check.as_secs_f64());
    for (step, at) in &steps {
        println!("  {:>8.3}  {step}", at.as_secs_f64());
    }
    println!("  {:>8.3}  QEMU exited ({status})", exited.as_secs_f64());
    Ok(())
}
