//! `wisp-agent`: the one binary of the wisp guest. As PID 1 of a VM it is the
//! init (mounts, modules, cgroups, reaping, power-off, from the `wisp-init` crate)
//! and the Kata agent-protocol server; run as an ordinary process it serves the
//! protocol on a unix socket so the protocol can be tested without a VM.

mod cgroups;
mod channel;
mod container;
mod device;
mod error;
mod guest_path;
mod hotplug;
mod launch;
mod logging;
mod metrics;
mod mountinfo;
mod network;
mod process;
mod rpc;
mod sandbox;
mod server;
mod storage;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use wisp_init::{BootOptions, LogLevel};

use crate::channel::ListenAddr;
use crate::sandbox::{Role, Sandbox};

/// How long init waits for the virtio-serial port's name when there is no vsock.
const CHANNEL_WAIT: Duration = Duration::from_secs(5);

const HELP: &str = "\
wisp-agent: the wisp guest agent (Kata agent protocol over ttrpc)

As PID 1 (the /init of a wisp initrd) it sets up the VM and serves on vsock
port 1024, or on the virtio-serial port named agent.channel.0 when the VM has
no vsock device. Options then come from the kernel command line:
  agent.log=LEVEL            critical|error|warning|info|debug|trace (default info)
  agent.channel=CHANNEL      auto|vsock|serial (default auto)
  agent.port=PORT            vsock port (default 1024); also agent.server_addr=vsock://-1:PORT
  agent.hotplug_timeout=SEC  how long to wait for hot-plugged devices (default 3)
  agent.debug_console        start a shell on the console
  agent.unified_cgroup_hierarchy=1   use cgroup v2
  agent.hostname=NAME        hostname before CreateSandbox sets one

Run as an ordinary process it serves until SIGTERM, for protocol tests:
  wisp-agent --listen unix:/tmp/agent.sock [--log debug]

Run a bundle in the foreground like `runc run` (debugging and host tests;
needs root; stdio is this command's, the exit code is the container's, 128+N
when signal N killed it):
  wisp-agent run BUNDLE_DIR [--id ID]

Options:
  --listen ADDR   unix:PATH, vsock:PORT or serial:/dev/vportNpM
  --log LEVEL     log level (default info)
  --state-dir DIR container state directories (default /run/wisp/containers)
  -V, --version   print the version
  -h, --help      print this help
";

#[derive(Debug)]
struct Args {
    listen: Option<ListenAddr>,
    log: LogLevel,
    state_dir: Option<std::path::PathBuf>,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    use lexopt::prelude::*;
    let mut args = Args { listen: None, log: LogLevel::Info, state_dir: None };
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("listen") => args.listen = Some(parser.value()?.string()?.parse()?),
            Long("state-dir") => args.state_dir = Some(parser.value()?.into()),
            Long("log") => {
                let v = parser.value()?.string()?;
                args.log = v.parse().map_err(|()| {
                    anyhow::anyhow!("bad --log {v:?}: expected critical|error|warning|info|debug|trace")
                })?;
            }
            Short('V') | Long("version") => {
                println!("wisp-agent {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            Short('h') | Long("help") => {
                print!("{HELP}");
                return Ok(None);
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    Ok(Some(args))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // One thread: the agent is I/O bound, and every thread costs RSS in a VM
    // whose memory the user pays for.
    // One malloc arena: glibc gives each thread that allocates (tokio's blocking pool) an
    // arena of its own, whose touched pages stay in the RSS after the thread is gone.
    // SAFETY: mallopt only sets an allocator parameter, under glibc's own lock.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")
}

/// PID 1: never returns; every way out powers the VM off.
fn run_as_init() -> ! {
    let started = logging::boot_clock();
    wisp_init::power::install_panic_hook();
    if let Err(e) = wisp_init::early() {
        eprintln!("wisp-agent: fatal: {}; powering off", error::chain(&e));
        wisp_init::power::power_off();
    }
    let (opts, diagnostics) = wisp_init::read_cmdline();
    // First, so the host's connects succeed while the rest of init runs.
    let early = channel::bind_early(&opts);
    let log = logging::logger(opts.log_level);
    logging::bridge_log_crate(&log, opts.log_level);
    slog::info!(log, "init started"; "version" => env!("CARGO_PKG_VERSION"), "boot_clock" => format!("{started:.6}"),
        "listening_early" => early.is_some());
    for d in &diagnostics {
        slog::warn!(log, "kernel command line: {}", d);
    }
    let deferred = wisp_init::boot(&log, &opts);

    if let Err(e) = serve_as_init(&log, &opts, early, started, deferred) {
        slog::crit!(log, "agent failed; powering off"; "error" => format!("{e:#}"));
    } else {
        slog::info!(log, "powering off");
    }
    wisp_init::power::power_off();
}

fn serve_as_init(
    log: &slog::Logger,
    opts: &BootOptions,
    early: Option<channel::Bound>,
    started: f64,
    deferred: wisp_init::Deferred,
) -> anyhow::Result<()> {
    let bound = match early {
        Some(bound) => bound,
        None => channel::bind(channel::choose(opts, CHANNEL_WAIT)?)?,
    };
    let sandbox = Arc::new(Sandbox::new(log.clone(), Role::Init, started).with_hotplug_timeout(opts.hotplug_timeout));
    let (late_log, late_opts) = (log.clone(), opts.clone());
    let after_ready = move || wisp_init::after_ready(&late_log, &late_opts, deferred);
    runtime()?.block_on(server::serve(bound, sandbox, Role::Init, after_ready))?;
    Ok(())
}

fn run_standalone(args: Args) -> anyhow::Result<()> {
    let addr = args.listen.context("not PID 1: give --listen ADDR (see --help)")?;
    let log = logging::logger(args.log);
    logging::bridge_log_crate(&log, args.log);
    let mut sandbox = Sandbox::new(log, Role::Standalone, logging::boot_clock());
    if let Some(dir) = args.state_dir {
        sandbox = sandbox.with_state_root(dir);
    }
    let sandbox = Arc::new(sandbox);
    runtime()?.block_on(server::serve(channel::bind(addr)?, sandbox, Role::Standalone, || {}))?;
    Ok(())
}

/// `wisp-agent run BUNDLE_DIR [--id ID]`.
fn run_bundle() -> ExitCode {
    let parsed = (|| -> anyhow::Result<(std::path::PathBuf, String)> {
        use lexopt::prelude::*;
        let mut parser = lexopt::Parser::from_iter(std::env::args_os().skip(1));
        let (mut bundle, mut id) = (None, None);
        while let Some(arg) = parser.next()? {
            match arg {
                Value(v) if bundle.is_none() => bundle = Some(std::path::PathBuf::from(v)),
                Long("id") => id = Some(parser.value()?.string()?),
                _ => return Err(arg.unexpected().into()),
            }
        }
        let bundle = bundle.context("usage: wisp-agent run BUNDLE_DIR [--id ID]")?;
        Ok((bundle, id.unwrap_or_else(|| format!("run-{}", std::process::id()))))
    })();
    let result = parsed.and_then(|(bundle, id)| Ok(launch::run::run(&bundle, &id)?));
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            eprintln!("wisp-agent run: {e:#}");
            ExitCode::from(125)
        }
    }
}

fn main() -> ExitCode {
    // First: a container's init is PID 1 of its own pid namespace, so the
    // launcher child must be recognised before the PID-1 check below.
    if std::env::args_os().nth(1).is_some_and(|a| a == "__launch") {
        launch::child_main();
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == hotplug::CHILD_ARG) {
        hotplug::child::main();
    }
    if std::process::id() == 1 {
        run_as_init();
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "run") {
        return run_bundle();
    }
    let result = parse_args().and_then(|args| match args {
        Some(args) => run_standalone(args),
        None => Ok(()),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wisp-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
