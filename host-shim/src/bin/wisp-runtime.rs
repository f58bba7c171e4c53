//! `wisp-runtime`: runc's command line, each container in its own wisp VM
//! ([`wisp_shim::runtime`]; docs/runtime.md).
//!
//! Parses, dispatches and reports as runc does: a failed command writes one error line to the
//! log (`--log`, in `--log-format`), the message on stderr, and exits 1. `state`, `list`, `spec`,
//! `features` and `--version` are answered here; the commands that need a VM go to
//! [`wisp_shim::runtime::lifecycle`] once [`wisp_shim::runtime::preflight`] found the container.

use std::io::Write as _;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory as _, Parser as _};
use wisp_shim::runtime::cli::{normalize, Cli, Command, EarlyLog, ListArgs, ListFormat};
use wisp_shim::runtime::json_log::JsonLines;
use wisp_shim::runtime::log::{Log, LogFormat};
use wisp_shim::runtime::store::{default_root, Store};
use wisp_shim::runtime::{features, lifecycle, monitor, oci_state, preflight, spec_template, Ctx, RuntimeError};
use wisp_shim::state::ProcFs;

/// The commit built, when the build was given one (`make tools` passes `git describe`).
const COMMIT: Option<&str> = option_env!("WISP_COMMIT");

fn main() -> ExitCode {
    let (args, early) = normalize(std::env::args_os().collect());
    let argv = args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err, &early),
    };
    if cli.version {
        let version = format!(
            "wisp-runtime version {}\ncommit: {}\nspec: {}\n",
            env!("CARGO_PKG_VERSION"),
            COMMIT.unwrap_or("unknown"),
            oci_spec::runtime::VERSION
        );
        return exit(out(&version).map(|()| 0), &Log::stderr(LogFormat::Text, false));
    }
    let Some(command) = cli.command else {
        let help = Cli::command().render_help().to_string();
        return exit(out(&help).map(|()| 0), &Log::stderr(LogFormat::Text, false));
    };
    let log = match Log::open(cli.log.as_deref(), cli.log_format, cli.debug) {
        Ok(log) => log,
        Err(err) => {
            let log = Log::stderr(cli.log_format, cli.debug);
            log.fatal(&err);
            return ExitCode::from(1);
        }
    };
    let root = cli.root.unwrap_or_else(|| {
        default_root(nix::unistd::geteuid().as_raw(), std::env::var_os("XDG_RUNTIME_DIR").as_deref())
    });
    log.debug(format_args!("called as: {argv}"));
    let ctx = Ctx { root, log, systemd_cgroup: cli.systemd_cgroup, rootless: cli.rootless };
    let status = dispatch(&ctx, command);
    exit(status, &ctx.log)
}

/// Runs `command`; the exit status on success (0, or the container's for `run` and `exec`).
fn dispatch(ctx: &Ctx, command: Command) -> Result<i32, RuntimeError> {
    let store = Store::new(&ctx.root);
    match command {
        Command::State(args) => out(&oci_state::state_json(&store.load(&args.id)?, &ProcFs)).map(|()| 0),
        Command::List(args) => list(&store, &args).map(|()| 0),
        Command::Spec(args) => spec_template::write(&args.bundle, args.rootless).map(|_| 0),
        Command::Features => out(&(features::features_json()? + "\n")).map(|()| 0),
        Command::Create(args) => {
            preflight::creatable(&store, &args)?;
            lifecycle::create(ctx, &args).map(|()| 0)
        }
        Command::Start(args) => {
            preflight::existing(&store, &args.id)?;
            lifecycle::start(ctx, &args).map(|()| 0)
        }
        Command::Kill(args) => {
            preflight::killable(&store, &args.id, &ProcFs)?;
            lifecycle::kill(ctx, &args).map(|()| 0)
        }
        Command::Delete(args) => match preflight::deletable(&store, &args.id, args.force)? {
            Some(_) => lifecycle::delete(ctx, &args).map(|()| 0),
            None => Ok(0),
        },
        Command::Exec(args) => {
            args.check()?;
            preflight::existing(&store, &args.id)?;
            lifecycle::exec(ctx, &args)
        }
        Command::Ps(args) => {
            preflight::existing(&store, &args.id)?;
            out(&lifecycle::ps(ctx, &args)?).map(|()| 0)
        }
        Command::Pause(args) => {
            preflight::existing(&store, &args.id)?;
            lifecycle::pause(ctx, &args).map(|()| 0)
        }
        Command::Resume(args) => {
            preflight::existing(&store, &args.id)?;
            lifecycle::resume(ctx, &args).map(|()| 0)
        }
        Command::Update(args) => {
            preflight::existing(&store, &args.id)?;
            lifecycle::update(ctx, &args).map(|()| 0)
        }
        Command::Run(args) => {
            preflight::creatable(&store, &args.create)?;
            lifecycle::run(ctx, &args)
        }
        Command::Monitor(args) => {
            let monitor = monitor::MonitorArgs {
                root: ctx.root.clone(),
                id: args.id,
                bundle: args.bundle,
                console_socket: args.console_socket,
                systemd_cgroup: ctx.systemd_cgroup,
            };
            Ok(monitor::main(&monitor, &monitor_log(ctx, &store.dir(&monitor.id))))
        }
    }
}

/// The monitor's log: runc's JSON lines in `--log` when the caller reads JSON there, else a
/// file in the container's directory.
fn monitor_log(ctx: &Ctx, dir: &std::path::Path) -> slog::Logger {
    use slog::Drain as _;
    let path = match (ctx.log.path(), ctx.log.format()) {
        (Some(path), LogFormat::Json) => path.to_owned(),
        _ => dir.join("monitor.log"),
    };
    match JsonLines::open(&path) {
        Ok(drain) => slog::Logger::root(drain.fuse(), slog::o!()),
        Err(_) => slog::Logger::root(slog::Discard, slog::o!()),
    }
}

fn list(store: &Store, args: &ListArgs) -> Result<(), RuntimeError> {
    let records = store.list()?;
    out(&match (args.quiet, args.format) {
        (true, _) => oci_state::list_quiet(&records),
        (false, ListFormat::Json) => oci_state::list_json(&records, &ProcFs),
        (false, ListFormat::Table) => oci_state::list_table(&records, &ProcFs),
    })
}

/// Writes `text` to stdout (a closed stdout is an error, not a panic).
fn out(text: &str) -> Result<(), RuntimeError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(RuntimeError::io("cannot write to", "stdout"))
}

/// The process's exit status: the command's, or 1 after reporting its error as runc does.
fn exit(status: Result<i32, RuntimeError>, log: &Log) -> ExitCode {
    match status {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)),
        Err(err) => {
            log.fatal(&err);
            ExitCode::from(1)
        }
    }
}

/// A command line clap refused: its message on stderr and, when the caller gave a log, the
/// error line there too (callers read only the log); exit 1 as runc. Help is not an error.
fn usage_error(err: &clap::Error, early: &EarlyLog) -> ExitCode {
    if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    let _ = err.print();
    if let Some(file) = &early.file {
        let format = if early.json { LogFormat::Json } else { LogFormat::Text };
        if let Ok(log) = Log::open(Some(file), format, false) {
            log.error(usage_message(&err.render().to_string()));
        }
    }
    ExitCode::from(1)
}

/// clap's error without its usage and hint, on one line: `error: a:\n  <ID>\n\nUsage: ...`
/// gives `a: <ID>`.
fn usage_message(rendered: &str) -> String {
    let head = rendered.split("\n\n").next().unwrap_or_default();
    let head = head.strip_prefix("error: ").unwrap_or(head);
    head.split_whitespace().collect::<Vec<_>>().join(" ")
}
