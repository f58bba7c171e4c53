//! `wisp-bench-containers` (part of `make bench`): what a container costs
//! inside a booted VM. Boots one VM with the busybox rootfs shared by 9p (the
//! setup of the container VM tests), then measures
//! - create+start+exit latency: CreateContainer, StartContainer and
//!   WaitProcess of `/bin/true`, timed from the host, median of N runs
//!   (RemoveContainer is outside the timing);
//! - the agent's resident memory (GetMetrics, from its smaps_rollup) in the
//!   sandbox once the timed containers are gone, and with 10 idle containers
//!   (`sleep`) running.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use protocols::agent::GetMetricsRequest;
use protocols::agent_ttrpc::AgentServiceClient;
use wisp_tests::agent_client::{ctx, spec, Container};
use wisp_tests::sandbox_vm::{SandboxVm, ROOTFS};
use wisp_tests::timeline::parse_prometheus_text;

/// Container create+start+exit latency and agent RSS with idle containers, in a booted VM.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Containers timed for the latency (the median is reported).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Idle containers running while the agent's RSS is read.
    #[arg(long, default_value_t = 10)]
    idle: usize,
}

/// What one bench run measured.
#[derive(Debug)]
struct Numbers {
    latencies: Vec<Duration>,
    rss_empty: Rss,
    rss_idle: Rss,
}

/// The agent's resident memory, in bytes.
#[derive(Debug, Clone, Copy)]
struct Rss {
    total: f64,
    /// Heap and stacks; the rest is the binary's pages as touched.
    anonymous: f64,
}

impl std::fmt::Display for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: f64| b / (1024.0 * 1024.0);
        write!(f, "{:.2} MiB ({:.2} MiB anonymous)", mib(self.total), mib(self.anonymous))
    }
}

async fn agent_rss(agent: &AgentServiceClient) -> Result<Rss> {
    let text = agent.get_metrics(ctx(), &GetMetricsRequest::new()).await.context("GetMetrics")?.metrics;
    let metrics = parse_prometheus_text(&text).context("GetMetrics text")?;
    let get = |name: &str| metrics.get(name).copied().with_context(|| format!("no {name} in GetMetrics"));
    Ok(Rss { total: get("wisp_agent_resident_memory_bytes")?, anonymous: get("wisp_agent_anonymous_memory_bytes")? })
}

async fn measure(agent: &AgentServiceClient, args: &Args) -> Result<Numbers> {
    // One unmeasured run: the first container pays for the page cache of the rootfs.
    let warm = Container::run(agent, "warm", spec(ROOTFS, &["/bin/true"], false), vec![]).await?;
    warm.wait("warm").await?;
    warm.remove().await?;

    let mut latencies = Vec::with_capacity(args.runs);
    for i in 0..args.runs {
        let id = format!("lat{i}");
        let started = Instant::now();
        let c = Container::run(agent, &id, spec(ROOTFS, &["/bin/true"], false), vec![]).await?;
        let status = c.wait(&id).await?;
        latencies.push(started.elapsed());
        ensure!(status == 0, "{id} exited {status}");
        c.remove().await?;
    }

    let rss_empty = agent_rss(agent).await?;
    let mut idle = Vec::with_capacity(args.idle);
    for i in 0..args.idle {
        let id = format!("idle{i}");
        idle.push(Container::run(agent, &id, spec(ROOTFS, &["/bin/sleep", "100000"], false), vec![]).await?);
    }
    let rss_idle = agent_rss(agent).await?;
    for c in idle {
        c.remove().await?;
    }
    Ok(Numbers { latencies, rss_empty, rss_idle })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.runs > 0, "--runs must be at least 1");
    let mut vm = SandboxVm::boot(vec![], &[], |_| Ok(()))?;
    let accel = vm.vm.accel();
    let conn = vm.connect()?;
    let mut n = vm.block_on(measure(&conn.agent(), &args))?;
    vm.finish(&conn)?;
    n.latencies.sort();
    let median = n.latencies[n.latencies.len() / 2];
    println!("wisp-bench-containers: q35, {}, busybox rootfs over 9p, /bin/true", format!("{accel:?}").to_lowercase());
    println!(
        "  create+start+exit latency, median of {}: {:.1} ms (min {:.1}, max {:.1})",
        n.latencies.len(),
        ms(median),
        ms(n.latencies[0]),
        ms(n.latencies[n.latencies.len() - 1])
    );
    println!("  agent RSS, no container left (after {} came and went): {}", n.latencies.len() + 1, n.rss_empty);
    println!("  agent RSS with {} idle containers: {}", args.idle, n.rss_idle);
    Ok(())
}
