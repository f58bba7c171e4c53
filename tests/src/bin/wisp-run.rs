//! `wisp-run` (what `make run` calls): boot one VM with the wisp kernel and initrd,
//! ask the agent what a runtime would ask first, power the VM off through the
//! agent, and print the answers and the boot timeline on both clocks.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use protocols::agent::{DestroySandboxRequest, GetMetricsRequest, GuestDetailsRequest};
use protocols::health::CheckRequest;
use protocols::ttrpc::context;
use wisp_tests::timeline::{parse_prometheus_text, BootTimeline};
use wisp_tests::{accel, Channel, Machine, Vm, VmConfig};

/// Boot a wisp VM and show what its agent answers.
///
/// Uses the artifacts `make` builds (kernel in target/kernel, initrd in target/initrd);
/// KVM when it runs a guest on this host, else TCG. Everything it starts (QEMU,
/// vhost-device-vsock, sockets, temp dirs) is gone when it exits.
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
}

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
    config = config.channel(channel).memory_mib(args.memory);
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

    let (answers, first_check, destroyed) = runtime.block_on(async {
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
        let m = agent.agent().get_metrics(ctx(), &GetMetricsRequest::new()).await.context("GetMetrics")?;
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
        agent.agent().destroy_sandbox(ctx(), &DestroySandboxRequest::new()).await.context("DestroySandbox")?;
        answers.push(("DestroySandbox", "ok, the guest powers off".to_owned()));
        anyhow::Ok((answers, first_check, Instant::now()))
    })?;
    let status = vm.wait_exit(Duration::from_secs(60))?;
    let exited = spawned.elapsed();

    if args.console {
        println!("guest console:\n{}", vm.console());
    }
    println!("agent answered:");
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
    println!("  {:>8.3}  DestroySandbox answered", destroyed.duration_since(spawned).as_secs_f64());
    println!("  {:>8.3}  QEMU exited ({status})", exited.as_secs_f64());
    Ok(())
}
