//! `wisp-bench-runtimes` (part of `make bench`): what a container costs through each client
//! (issue 16's measure). In one run, against private instances of each (the test harnesses):
//! - the wall time of `docker run --rm IMG true` with `--runtime runc` (the host's runc, no
//!   VM: the yardstick) and `--runtime wisp` (`wisp-runtime` through containerd-shim-runc-v2),
//!   `podman run --rm --runtime wisp-runtime IMG true` (through conmon), and `ctr run --rm
//!   --runtime io.containerd.wisp.v2 IMG ID true` (our shim): median, min and max of N rounds,
//!   the clients interleaved in each round so a slow moment of the shared host hits them all,
//!   after one unmeasured run each;
//! - the resident memory (VmRSS) of what stays on the host per container besides QEMU and its
//!   helpers, while a container sleeps: `wisp-runtime`'s monitor (the pid-file process) under
//!   Docker and under podman, and `containerd-shim-wisp-v2` under ctr.
//!
//! Needs root, `make deps` (docker.io, containerd, runc, podman) and `make all`.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use wisp_shim::runtime::store::default_root;
use wisp_tests::containerd::{describe, s, text};
use wisp_tests::shim_setup::{runtime_binary, Setup, RUNTIME};
use wisp_tests::{artifacts, Dockerd, DockerdOptions, Podman, PodmanOptions};

/// `docker run` with runc and with wisp-runtime, `podman run` with wisp-runtime and `ctr run`
/// with the shim: wall time of a `true` container, and the per-container process's RSS.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Rounds timed (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

/// The image every client runs, as rootfs-builder names it.
const IMAGE: &str = "docker.io/library/wisp-bench-rt:1";

/// The clients measured, in table order.
#[derive(Debug, Clone, Copy)]
enum Client {
    DockerRunc,
    DockerWisp,
    PodmanWisp,
    CtrShim,
}

impl Client {
    const ALL: [Self; 4] = [Self::DockerRunc, Self::DockerWisp, Self::PodmanWisp, Self::CtrShim];

    fn label(self) -> &'static str {
        match self {
            Self::DockerRunc => "docker run --rm --runtime runc",
            Self::DockerWisp => "docker run --rm --runtime wisp (wisp-runtime)",
            Self::PodmanWisp => "podman run --rm --runtime wisp-runtime",
            Self::CtrShim => "ctr run --rm --runtime io.containerd.wisp.v2",
        }
    }
}

/// The three private instances, the image loaded in each.
struct Clients {
    /// Declared first: dropped before the shim's directory it shares state with.
    docker: Dockerd,
    podman: Podman,
    ctr: Setup,
}

impl Clients {
    fn start() -> Result<Self> {
        // Configures the runtime and the shim alike (WISP_CONFIG, WISP_STATE_DIR in its dir).
        let ctr = Setup::new()?;
        let runtime = runtime_binary()?;
        let image = ctr.dir.path().join("image.tar");
        let out = Command::new(artifacts::rootfs_builder()?)
            .args(["oci-image", "--from", "busybox", "--name", IMAGE, "-o", s(&image)])
            .output()?;
        ensure!(out.status.success(), "rootfs-builder oci-image: {}", describe(&out));
        let imported = ctr.ctr(&["images", "import", s(&image)])?;
        ensure!(imported.status.success(), "ctr images import: {}", describe(&imported));
        let docker = Dockerd::start_with(DockerdOptions {
            runtimes: vec![("wisp".into(), runtime.clone())],
            ..Default::default()
        })?;
        let loaded = docker.docker(["load", "-i", s(&image)])?;
        ensure!(loaded.status.success(), "docker load: {}", describe(&loaded));
        let podman = Podman::start_with(PodmanOptions {
            runtime: Some(runtime),
            runtime_root: Some(default_root(
                nix::unistd::geteuid().as_raw(),
                std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
            )),
            ..Default::default()
        })?;
        let loaded = podman.podman(["load", "-i", s(&image)])?;
        ensure!(loaded.status.success(), "podman load: {}", describe(&loaded));
        Ok(Self { docker, podman, ctr })
    }

    /// Runs `true` through `client` to its end; `id` names the ctr container.
    fn run_true(&self, client: Client, id: &str) -> Result<Output> {
        Ok(match client {
            Client::DockerRunc => self.docker.docker(["run", "--rm", "--runtime", "runc", IMAGE, "true"])?,
            Client::DockerWisp => self.docker.docker(["run", "--rm", "--runtime", "wisp", IMAGE, "true"])?,
            Client::PodmanWisp => self.podman.run(["--rm", IMAGE, "true"])?,
            Client::CtrShim => self.ctr.ctr(&["run", "--rm", "--runtime", RUNTIME, IMAGE, id, "true"])?,
        })
    }

    /// The wall time of one `true` container through `client`.
    fn time(&self, client: Client, id: &str) -> Result<Duration> {
        let started = Instant::now();
        let out = self.run_true(client, id)?;
        let took = started.elapsed();
        ensure!(out.status.success(), "{} failed: {}", client.label(), describe(&out));
        Ok(took)
    }

    /// The VmRSS of the per-container process of each wisp client while a container sleeps.
    fn resident(&self) -> Result<Vec<(&'static str, u64)>> {
        let sleep = ["sleep", "3600"];
        let out = self.docker.docker(["run", "-d", "--runtime", "wisp", "--name", "rss", IMAGE, sleep[0], sleep[1]])?;
        ensure!(out.status.success(), "docker run -d: {}", describe(&out));
        let docker_pid = inspect_pid(self.docker.docker(["inspect", "--format", "{{.State.Pid}}", "rss"])?)?;
        let out = self.podman.run(["-d", "--name", "rss", IMAGE, sleep[0], sleep[1]])?;
        ensure!(out.status.success(), "podman run -d: {}", describe(&out));
        let podman_pid = inspect_pid(self.podman.podman(["inspect", "--format", "{{.State.Pid}}", "rss"])?)?;
        let out = self.ctr.ctr(&["run", "-d", "--runtime", RUNTIME, IMAGE, "rss", sleep[0], sleep[1]])?;
        ensure!(out.status.success(), "ctr run -d: {}", describe(&out));
        let shim = *self.ctr.shims().first().context("no containerd-shim-wisp-v2 runs")?;
        let found = vec![
            ("wisp-runtime monitor under docker", vm_rss(docker_pid)?),
            ("wisp-runtime monitor under podman", vm_rss(podman_pid)?),
            ("containerd-shim-wisp-v2 under ctr", vm_rss(shim)?),
        ];
        let removed = self.docker.docker(["rm", "-f", "rss"])?;
        ensure!(removed.status.success(), "docker rm -f: {}", describe(&removed));
        let removed = self.podman.podman(["rm", "--force", "--time", "0", "rss"])?;
        ensure!(removed.status.success(), "podman rm -f: {}", describe(&removed));
        self.ctr.kill_and_delete("rss")?;
        Ok(found)
    }
}

/// The pid `inspect --format {{.State.Pid}}` printed (the pid file's).
fn inspect_pid(out: Output) -> Result<u32> {
    ensure!(out.status.success(), "inspect: {}", describe(&out));
    text(&out.stdout).trim().parse().with_context(|| format!("inspect printed {:?}", text(&out.stdout)))
}

/// `VmRSS` of `pid`, in bytes.
fn vm_rss(pid: u32) -> Result<u64> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .with_context(|| format!("no VmRSS in {}", path.display()))?;
    Ok(kib * 1024)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.runs > 0, "--runs must be at least 1");
    let accel = format!("{}", wisp_tests::accel::detect()?).to_lowercase();
    let clients = Clients::start()?;
    for client in Client::ALL {
        clients.time(client, "warm")?;
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(args.runs); Client::ALL.len()];
    for round in 0..args.runs {
        for (i, client) in Client::ALL.into_iter().enumerate() {
            times[i].push(clients.time(client, &format!("round{round}"))?);
        }
    }
    let resident = clients.resident()?;
    drop(clients);

    println!(
        "wisp-bench-runtimes: {accel}, busybox image, `true`, wall time of the client command, {} rounds",
        args.runs
    );
    println!("  {:<48} {:>9} {:>9} {:>9}", "client", "median", "min", "max");
    for (client, mut t) in Client::ALL.into_iter().zip(times) {
        t.sort();
        let (min, median, max) = (t[0], t[t.len() / 2], t[t.len() - 1]);
        println!("  {:<48} {:>6.0} ms {:>6.0} ms {:>6.0} ms", client.label(), ms(median), ms(min), ms(max));
    }
    println!("  resident memory (VmRSS) while a container sleeps:");
    for (what, bytes) in resident {
        println!("    {what:<40} {:>6.2} MiB", bytes as f64 / (1024.0 * 1024.0));
    }
    Ok(())
}
