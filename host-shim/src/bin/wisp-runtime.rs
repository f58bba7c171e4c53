//! `wisp-runtime`: runc's command line, each container in a VM (the lead's first cut; the
//! full command line is being written beside it).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use slog::Drain;
use wisp_shim::runtime::json_log::JsonLines;
use wisp_shim::runtime::launch::{self, CreateRequest};
use wisp_shim::runtime::monitor::{self, MonitorArgs};

#[derive(Parser, Debug)]
#[command(name = "wisp-runtime", version)]
struct Cli {
    #[arg(long, global = true, default_value = "/run/wisp-runtime")]
    root: PathBuf,
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    Create {
        #[arg(long, short, default_value = ".")]
        bundle: PathBuf,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        #[arg(long = "no-pivot")]
        no_pivot: bool,
        #[arg(long = "no-new-keyring")]
        no_new_keyring: bool,
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: u32,
        id: String,
    },
    Start {
        id: String,
    },
    Kill {
        #[arg(long, short)]
        all: bool,
        id: String,
        signal: Option<String>,
    },
    Delete {
        #[arg(long, short)]
        force: bool,
        id: String,
    },
    Run {
        #[arg(long, short, default_value = ".")]
        bundle: PathBuf,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        #[arg(long, short)]
        detach: bool,
        id: String,
    },
    #[command(name = "__monitor", hide = true)]
    Monitor {
        #[arg(long)]
        bundle: PathBuf,
        id: String,
    },
}

fn logger(cli: &Cli, dir: Option<&std::path::Path>) -> slog::Logger {
    let path = cli.log.clone().or_else(|| dir.map(|d| d.join("monitor.log")));
    match path.map(|p| JsonLines::open(&p)) {
        Some(Ok(drain)) => slog::Logger::root(drain.fuse(), slog::o!()),
        _ => slog::Logger::root(slog::Discard, slog::o!()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match run(&cli) {
        Ok(code) => code,
        Err(err) => {
            let text = format!("{err:#}");
            slog::error!(logger(&cli, None), "{}", text);
            eprintln!("wisp-runtime: {text}");
            1
        }
    };
    ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1))
}

fn run(cli: &Cli) -> anyhow::Result<i32> {
    let mut passed = Vec::new();
    if let Some(log) = &cli.log {
        passed.extend(["--log".to_owned(), log.display().to_string()]);
    }
    match &cli.command {
        Cmd::Monitor { bundle, id } => {
            let args = MonitorArgs { root: cli.root.clone(), id: id.clone(), bundle: bundle.clone() };
            Ok(monitor::main(&args, &logger(cli, Some(&cli.root.join(id)))))
        }
        Cmd::Create { bundle, pid_file, id, .. } => {
            create(cli, bundle, pid_file.clone(), id, passed)?;
            Ok(0)
        }
        Cmd::Run { bundle, pid_file, detach, id } => {
            let mut child = create(cli, bundle, pid_file.clone(), id, passed)?;
            launch::start(&cli.root.join(id))?;
            if *detach {
                return Ok(0);
            }
            let status = child.wait()?;
            let code = status.code().unwrap_or(1);
            launch::delete(&cli.root.join(id), true)?;
            Ok(code)
        }
        Cmd::Start { id } => {
            launch::start(&cli.root.join(id))?;
            Ok(0)
        }
        Cmd::Kill { id, signal, .. } => {
            let signo = match signal.as_deref() {
                None => 15,
                Some(s) => s.parse::<i32>().or_else(|_| {
                    let name = s.to_uppercase();
                    let name = if name.starts_with("SIG") { name } else { format!("SIG{name}") };
                    name.parse::<nix::sys::signal::Signal>().map(|s| s as i32)
                })?,
            };
            launch::ask(&cli.root.join(id), &wisp_shim::runtime::control::Request::Kill { signal: signo, all: false })?;
            Ok(0)
        }
        Cmd::Delete { id, force } => {
            launch::delete(&cli.root.join(id), *force)?;
            Ok(0)
        }
    }
}

fn create(
    cli: &Cli,
    bundle: &std::path::Path,
    pid_file: Option<PathBuf>,
    id: &str,
    monitor_args: Vec<String>,
) -> anyhow::Result<std::process::Child> {
    let bundle = std::fs::canonicalize(bundle)?;
    std::fs::create_dir_all(&cli.root)?;
    std::fs::create_dir(cli.root.join(id)).map_err(|e| anyhow::anyhow!("container with id exists: {id} ({e})"))?;
    let request = CreateRequest { root: cli.root.clone(), id: id.to_owned(), bundle, pid_file, monitor_args };
    match launch::create(&request) {
        Ok(child) => Ok(child),
        Err(err) => {
            let _ = std::fs::remove_dir_all(cli.root.join(id));
            Err(err.into())
        }
    }
}
