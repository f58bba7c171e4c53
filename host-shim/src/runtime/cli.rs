//! runc's command line (runc 1.1, the flags Docker's containerd-shim-runc-v2 and Podman's conmon
//! pass; `/work/shared/notes/oci-runtime-cli.md` lists them): global flags before the command,
//! each command's flags after it, `--flag v` and `--flag=v` alike.
//!
//! runc parses with Go's flag package, which also takes a long flag with one dash (`-root DIR`):
//! [`normalize`] rewrites the global flags given that way before clap sees them, and finds
//! `--log` / `--log-format` so that even a usage error lands in the caller's log.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::str::FromStr as _;

use clap::{Args, Parser, Subcommand, ValueEnum};
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxPids, LinuxResources};

use super::log::LogFormat;
use super::RuntimeError;

/// The whole command line.
#[derive(Debug, Parser)]
#[command(
    name = "wisp-runtime",
    about = "OCI runtime with runc's command line: each container runs in its own wisp VM",
    disable_version_flag = true
)]
pub struct Cli {
    /// Directory of the containers' state [default: /run/wisp-runtime, or
    /// $XDG_RUNTIME_DIR/wisp-runtime for a user other than root].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Write log lines (and errors) to FILE instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Format of the log lines.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The bundle's cgroupsPath is systemd's `slice:prefix:name`.
    #[arg(long)]
    pub systemd_cgroup: bool,
    /// Debug lines in the log.
    #[arg(long)]
    pub debug: bool,
    /// Rootless mode: auto, true or false (accepted as runc does).
    #[arg(long, value_name = "MODE", value_parser = ["auto", "true", "false"])]
    pub rootless: Option<String>,
    /// CRIU binary (accepted and ignored: wisp does not checkpoint).
    #[arg(long, value_name = "PATH", hide = true)]
    pub criu: Option<PathBuf>,
    /// Print the version (runc's shape: version, commit, spec).
    #[arg(short = 'v', long)]
    pub version: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands, as runc names them.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container (its VM and a monitor process whose pid goes to --pid-file).
    Create(CreateArgs),
    /// Start the process of a created container.
    Start(IdArgs),
    /// Print the OCI state of a container.
    State(IdArgs),
    /// Send a signal (default SIGTERM) to the container's process.
    Kill(KillArgs),
    /// Delete a container and what it holds.
    Delete(DeleteArgs),
    /// Run a new process in a running container.
    Exec(ExecArgs),
    /// List the processes of a container.
    Ps(PsArgs),
    /// Pause all processes of a container.
    Pause(IdArgs),
    /// Resume a paused container.
    Resume(IdArgs),
    /// Change the resources of a container.
    Update(UpdateArgs),
    /// List the containers under --root.
    List(ListArgs),
    /// Create and start a container, wait for it and exit with its status.
    Run(RunArgs),
    /// Write a default config.json into a bundle.
    Spec(SpecArgs),
    /// Print what this runtime supports (the OCI features document).
    Features,
    /// The monitor `create` forks (internal).
    #[command(name = "__monitor", hide = true)]
    Monitor(MonitorArgs),
}

/// The monitor's arguments (`create` passes them).
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// The bundle directory, absolute.
    #[arg(long, value_name = "DIR")]
    pub bundle: PathBuf,
    /// Where the master of the container's host pty goes.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// The container id.
    pub id: String,
}

/// A command that takes only a container id.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// The container id.
    pub id: String,
}

/// `create` (and the first half of `run`).
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The bundle directory (config.json and usually rootfs).
    #[arg(short = 'b', long, value_name = "DIR", default_value = ".")]
    pub bundle: PathBuf,
    /// A unix socket that receives the master of the container's pty (SCM_RIGHTS).
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Where to write the monitor's pid (digits, no newline).
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Accepted as runc does (the container's pivot happens in the guest).
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted as runc does (no session keyring is made on the host).
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass this many fds beyond stdio (3, 4, ...) to the container: refused above 0 (the
    /// process runs in a VM, where no host descriptor can follow it).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
    /// The container id.
    pub id: String,
}

/// `kill [--all] ID [SIGNAL]`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal every process of the container, not only its init.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// The container id.
    pub id: String,
    /// A number or a name, with or without `SIG`, any case (runc's rules).
    #[arg(value_name = "SIGNAL", default_value = "SIGTERM", value_parser = signal_arg)]
    pub signal: i32,
}

/// `delete [--force] ID`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Kill a container that still runs, then delete it.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// The container id.
    pub id: String,
}

/// `exec`: the process from `--process FILE` (an OCI process JSON), or from the trailing
/// command and the flags.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// A unix socket that receives the master of the process's pty.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Working directory of the process.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// An environment variable (repeatable).
    #[arg(short = 'e', long, value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Allocate a pty.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// UID[:GID] of the process.
    #[arg(short = 'u', long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// An additional group id (repeatable).
    #[arg(short = 'g', long, value_name = "GID")]
    pub additional_gids: Vec<u32>,
    /// The process as an OCI process JSON file (the caller deletes it once exec returns).
    #[arg(short = 'p', long, value_name = "FILE")]
    pub process: Option<PathBuf>,
    /// Return once the process started; its relay's pid goes to --pid-file.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Where to write the pid the caller waits for.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Accepted as runc does (the guest has no LSM).
    #[arg(long, value_name = "LABEL", hide = true)]
    pub process_label: Option<String>,
    /// Accepted as runc does (the guest has no LSM).
    #[arg(long, value_name = "PROFILE", hide = true)]
    pub apparmor: Option<String>,
    /// Set no_new_privs for the process.
    #[arg(long)]
    pub no_new_privs: bool,
    /// A capability to add (repeatable).
    #[arg(short = 'c', long, value_name = "CAP")]
    pub cap: Vec<String>,
    /// Pass this many fds beyond stdio to the process: refused above 0, as for `create`.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
    /// The container id.
    pub id: String,
    /// The command and its arguments, when there is no --process.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl ExecArgs {
    /// runc's rule: a process comes from `--process` or from the trailing command.
    pub fn check(&self) -> Result<(), RuntimeError> {
        if self.process.is_none() && self.command.is_empty() {
            return Err(RuntimeError::Usage("exec: process args cannot be empty (give a command or --process)".into()));
        }
        super::preflight::no_preserved_fds(self.preserve_fds)
    }
}

/// Output format of `ps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PsFormat {
    Table,
    Json,
}

/// `ps [--format table|json] ID [PS_ARGS...]`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// `table` (ps's output) or `json` (an array of pids).
    #[arg(short = 'f', long, value_enum, default_value_t = PsFormat::Table)]
    pub format: PsFormat,
    /// The container id.
    pub id: String,
    /// Arguments for ps (table format only; default `-ef`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "PS_ARGS")]
    pub ps_args: Vec<String>,
}

/// `update [--resources FILE|-] [FLAGS] ID`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// A LinuxResources JSON file, or `-` for stdin (Docker's way).
    #[arg(short = 'r', long, value_name = "FILE|-")]
    pub resources: Option<PathBuf>,
    /// Block IO weight (10-1000).
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    /// CPU CFS period in microseconds.
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPU CFS quota in microseconds.
    #[arg(long, allow_negative_numbers = true)]
    pub cpu_quota: Option<i64>,
    /// CPU shares (relative weight).
    #[arg(long)]
    pub cpu_share: Option<u64>,
    /// CPUs to use (e.g. 0-3,5).
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes to use.
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Memory limit in bytes (suffixes k, m, g).
    #[arg(long, value_parser = bytes_arg, allow_negative_numbers = true)]
    pub memory: Option<i64>,
    /// Memory soft limit in bytes (suffixes k, m, g).
    #[arg(long, value_parser = bytes_arg, allow_negative_numbers = true)]
    pub memory_reservation: Option<i64>,
    /// Memory plus swap limit in bytes (suffixes k, m, g; -1 unlimited).
    #[arg(long, value_parser = bytes_arg, allow_negative_numbers = true)]
    pub memory_swap: Option<i64>,
    /// Maximum number of pids (-1 unlimited).
    #[arg(long, allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,
    /// The container id.
    pub id: String,
}

impl UpdateArgs {
    /// The resources to apply, as runc's `update` reads them: the LinuxResources JSON of
    /// `--resources` (a file, or `stdin` for `-`), else the individual flags (runc ignores the
    /// flags when `--resources` is given).
    pub fn linux_resources(&self, stdin: &mut dyn std::io::Read) -> Result<LinuxResources, RuntimeError> {
        let json = |path: &std::path::Path| {
            let path = path.to_owned();
            move |source| RuntimeError::Json { what: "cannot parse the resources in", path, source }
        };
        match &self.resources {
            Some(path) if path.as_os_str() == "-" => {
                return serde_json::from_reader(std::io::BufReader::new(stdin)).map_err(json("stdin".as_ref()))
            }
            Some(path) => {
                let file = std::fs::File::open(path).map_err(RuntimeError::io("cannot open", path))?;
                return serde_json::from_reader(std::io::BufReader::new(file)).map_err(json(path));
            }
            None => {}
        }
        let mut resources = LinuxResources::default();
        if self.memory.is_some() || self.memory_reservation.is_some() || self.memory_swap.is_some() {
            let mut memory = LinuxMemory::default();
            memory.set_limit(self.memory).set_reservation(self.memory_reservation).set_swap(self.memory_swap);
            resources.set_memory(Some(memory));
        }
        let cpu_flags = (self.cpu_period, self.cpu_quota, self.cpu_share, &self.cpuset_cpus, &self.cpuset_mems);
        if cpu_flags != (None, None, None, &None, &None) {
            let mut cpu = LinuxCpu::default();
            cpu.set_period(self.cpu_period)
                .set_quota(self.cpu_quota)
                .set_shares(self.cpu_share)
                .set_cpus(self.cpuset_cpus.clone())
                .set_mems(self.cpuset_mems.clone());
            resources.set_cpu(Some(cpu));
        }
        if let Some(limit) = self.pids_limit {
            let mut pids = LinuxPids::default();
            pids.set_limit(limit);
            resources.set_pids(Some(pids));
        }
        if let Some(weight) = self.blkio_weight {
            let mut block_io = LinuxBlockIo::default();
            block_io.set_weight(Some(weight));
            resources.set_block_io(Some(block_io));
        }
        Ok(resources)
    }
}

/// Output format of `list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

/// `list [--format table|json] [--quiet]`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// `table` or `json`.
    #[arg(short = 'f', long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
    /// Only the ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// `run`: `create`'s flags and `--detach`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Return once started instead of waiting for the container.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep the container's state after it exits.
    #[arg(long)]
    pub keep: bool,
    /// Accepted as runc does.
    #[arg(long)]
    pub no_subreaper: bool,
}

/// `spec [--bundle DIR] [--rootless]`.
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Where to write config.json (default: the current directory).
    #[arg(short = 'b', long, value_name = "DIR", default_value = ".")]
    pub bundle: PathBuf,
    /// A spec for a container run by an unprivileged user.
    #[arg(long)]
    pub rootless: bool,
}

/// A signal as runc's `kill` reads it: a number, or a name in any case with or without `SIG`
/// (`9`, `KILL`, `SIGKILL`, `sigterm`, `RTMIN+3`).
pub fn parse_signal(raw: &str) -> Result<i32, RuntimeError> {
    let bad = || RuntimeError::BadSignal(raw.to_owned());
    let max = libc::SIGRTMAX();
    if let Ok(n) = raw.parse::<i32>() {
        return if (0..=max).contains(&n) { Ok(n) } else { Err(bad()) };
    }
    let upper = raw.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let realtime = |base: i32, rest: &str, sign: char| -> Option<i32> {
        if rest.is_empty() {
            return Some(base);
        }
        let n: i32 = rest.strip_prefix(sign)?.parse().ok()?;
        let sig = if sign == '+' { base + n } else { base - n };
        (libc::SIGRTMIN()..=max).contains(&sig).then_some(sig)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return realtime(libc::SIGRTMIN(), rest, '+').ok_or_else(bad);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return realtime(max, rest, '-').ok_or_else(bad);
    }
    nix::sys::signal::Signal::from_str(&format!("SIG{name}")).map(|s| s as i32).map_err(|_| bad())
}

fn signal_arg(raw: &str) -> Result<i32, String> {
    parse_signal(raw).map_err(|e| e.to_string())
}

/// A size as runc's `update` reads it: bytes, or with a binary suffix (`k`, `m`, `g`, `t`,
/// optionally followed by `b`, any case); `-1` for unlimited.
pub fn parse_bytes(raw: &str) -> Result<i64, String> {
    if raw == "-1" {
        return Ok(-1);
    }
    let lower = raw.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (digits, shift) = match lower.char_indices().last() {
        Some((i, 'k')) => (&lower[..i], 10),
        Some((i, 'm')) => (&lower[..i], 20),
        Some((i, 'g')) => (&lower[..i], 30),
        Some((i, 't')) => (&lower[..i], 40),
        _ => (lower, 0),
    };
    let n: i64 = digits.parse().map_err(|_| format!("invalid size {raw:?}"))?;
    if n < 0 {
        return Err(format!("invalid size {raw:?}"));
    }
    n.checked_mul(1 << shift).ok_or_else(|| format!("size {raw:?} is too large"))
}

fn bytes_arg(raw: &str) -> Result<i64, String> {
    parse_bytes(raw)
}

/// The global flags that take a value (`--name VALUE` or `--name=VALUE`).
const GLOBAL_WITH_VALUE: &[&str] = &["root", "log", "log-format", "rootless", "criu"];
/// The global flags that take none.
const GLOBAL_SWITCHES: &[&str] = &["systemd-cgroup", "debug", "version", "help"];

/// Where errors go before clap has parsed anything: `--log` and `--log-format` as found by
/// [`normalize`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EarlyLog {
    pub file: Option<PathBuf>,
    pub json: bool,
}

/// Rewrites the global flags given with one dash (`-root DIR`, `-log=F`) to two, as Go's flag
/// package accepts both; stops at the command (its own arguments are left alone: `exec`'s
/// command line may hold anything). Also returns the log destination for early errors.
pub fn normalize(args: Vec<OsString>) -> (Vec<OsString>, EarlyLog) {
    let mut out = Vec::with_capacity(args.len());
    let mut early = EarlyLog::default();
    let mut iter = args.into_iter();
    out.extend(iter.next());
    let mut pending: Option<String> = None;
    for arg in iter.by_ref() {
        if let Some(name) = pending.take() {
            early.note(&name, &arg);
            out.push(arg);
            continue;
        }
        let Some(text) = arg.to_str() else {
            out.push(arg);
            break;
        };
        let Some(flag) = text.strip_prefix('-') else {
            out.push(arg);
            break;
        };
        let flag = flag.strip_prefix('-').unwrap_or(flag);
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (flag, None),
        };
        if GLOBAL_WITH_VALUE.contains(&name) {
            match value {
                Some(value) => early.note(name, OsStr::new(value)),
                None => pending = Some(name.to_owned()),
            }
            out.push(format!("--{flag}").into());
        } else if GLOBAL_SWITCHES.contains(&name) && value.is_none() {
            out.push(format!("--{name}").into());
        } else {
            out.push(arg);
        }
    }
    out.extend(iter);
    (out, early)
}

impl EarlyLog {
    fn note(&mut self, name: &str, value: &OsStr) {
        match name {
            "log" => self.file = Some(PathBuf::from(value)),
            "log-format" => self.json = value == "json",
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let args = std::iter::once("wisp-runtime").chain(args.iter().copied()).map(OsString::from).collect();
        Cli::try_parse_from(normalize(args).0)
    }

    #[test]
    fn global_flags_parse_with_a_space_an_equals_sign_or_one_dash() {
        for args in [
            &["--root", "/r", "--log", "/l.json", "--log-format", "json", "--systemd-cgroup", "state", "x"][..],
            &["--root=/r", "--log=/l.json", "--log-format=json", "--systemd-cgroup", "state", "x"][..],
            &["-root", "/r", "-log=/l.json", "-log-format", "json", "-systemd-cgroup", "state", "x"][..],
        ] {
            let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(cli.root, Some(PathBuf::from("/r")), "{args:?}");
            assert_eq!(cli.log, Some(PathBuf::from("/l.json")), "{args:?}");
            assert_eq!(cli.log_format, LogFormat::Json, "{args:?}");
            assert!(cli.systemd_cgroup, "{args:?}");
            assert!(matches!(cli.command, Some(Command::State(IdArgs { ref id })) if id == "x"), "{args:?}");
        }
        let cli = parse(&["list"]).unwrap();
        assert_eq!(cli.root, None, "the default is decided by store::default_root");
        assert_eq!(cli.log_format, LogFormat::Text);
        assert!(!cli.systemd_cgroup && !cli.debug && cli.log.is_none());
    }

    #[test]
    fn early_log_is_found_before_a_usage_error() {
        let args = ["wisp-runtime", "-log", "/l.json", "--log-format=json", "kill"].map(OsString::from).to_vec();
        let (_, early) = normalize(args);
        assert_eq!(early, EarlyLog { file: Some("/l.json".into()), json: true });
        let args = ["wisp-runtime", "--log=/t.log", "state", "--log", "x"].map(OsString::from).to_vec();
        let (args, early) = normalize(args);
        assert_eq!(early, EarlyLog { file: Some("/t.log".into()), json: false });
        assert_eq!(args[3], OsString::from("--log"), "a command's own arguments are left alone");
    }

    #[test]
    fn create_takes_containerds_and_conmons_flags() {
        let cli = parse(&[
            "create",
            "--bundle",
            "/b",
            "--pid-file=/p",
            "--console-socket",
            "/s",
            "--no-pivot",
            "--no-new-keyring",
            "--preserve-fds",
            "2",
            "c1",
        ])
        .unwrap();
        let Some(Command::Create(c)) = cli.command else { panic!("not create") };
        assert_eq!(
            (c.bundle.to_str(), c.pid_file.as_deref(), c.console_socket.as_deref()),
            (Some("/b"), Some("/p".as_ref()), Some("/s".as_ref()))
        );
        assert!(c.no_pivot && c.no_new_keyring);
        assert_eq!((c.preserve_fds, c.id.as_str()), (2, "c1"));
        let Some(Command::Create(c)) = parse(&["create", "-b", "/b", "c2"]).unwrap().command else { panic!() };
        assert_eq!((c.bundle.to_str(), c.pid_file, c.preserve_fds), (Some("/b"), None, 0));
        let Some(Command::Run(r)) = parse(&["run", "-d", "--bundle=/b", "demo"]).unwrap().command else { panic!() };
        assert!(r.detach);
        assert_eq!(r.create.id, "demo");
    }

    #[test]
    fn exec_takes_a_process_file_or_a_trailing_command() {
        let Some(Command::Exec(e)) =
            parse(&["exec", "--process", "/f.json", "--detach", "--pid-file", "/p", "--tty", "c1"]).unwrap().command
        else {
            panic!()
        };
        assert_eq!((e.process.as_deref(), e.detach, e.tty, e.command.len()), (Some("/f.json".as_ref()), true, true, 0));
        e.check().unwrap();
        let Some(Command::Exec(e)) = parse(&[
            "exec",
            "-t",
            "-e",
            "A=1",
            "-e=B=2",
            "-u",
            "1000:1000",
            "--cwd",
            "/tmp",
            "c1",
            "ls",
            "-la",
            "--root",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!(e.env, ["A=1", "B=2"]);
        assert_eq!((e.user.as_deref(), e.cwd.as_deref()), (Some("1000:1000"), Some("/tmp")));
        assert_eq!(e.command, ["ls", "-la", "--root"], "the command's own flags stay its own");
        let Some(Command::Exec(e)) = parse(&["exec", "c1"]).unwrap().command else { panic!() };
        assert!(e.check().unwrap_err().to_string().contains("cannot be empty"));
    }

    #[test]
    fn kill_delete_ps_update_list_and_spec_take_runcs_flags() {
        let Some(Command::Kill(k)) = parse(&["kill", "--all", "c1", "KILL"]).unwrap().command else { panic!() };
        assert_eq!((k.all, k.id.as_str(), k.signal), (true, "c1", libc::SIGKILL));
        let Some(Command::Kill(k)) = parse(&["kill", "c1"]).unwrap().command else { panic!() };
        assert_eq!(k.signal, libc::SIGTERM, "SIGTERM by default");
        let Some(Command::Kill(k)) = parse(&["kill", "-a", "c1", "9"]).unwrap().command else { panic!() };
        assert_eq!((k.all, k.signal), (true, 9));
        let err = parse(&["kill", "c1", "SIGNOPE"]).unwrap_err().to_string();
        assert!(err.contains("unknown signal \"SIGNOPE\""), "{err}");
        let Some(Command::Delete(d)) = parse(&["delete", "-f", "c1"]).unwrap().command else { panic!() };
        assert!(d.force);
        let Some(Command::Ps(p)) = parse(&["ps", "--format", "json", "c1"]).unwrap().command else { panic!() };
        assert_eq!((p.format, p.ps_args.len()), (PsFormat::Json, 0));
        let Some(Command::Ps(p)) = parse(&["ps", "c1", "-o", "pid"]).unwrap().command else { panic!() };
        assert_eq!((p.format, p.ps_args), (PsFormat::Table, vec!["-o".to_owned(), "pid".to_owned()]));
        let Some(Command::Update(u)) =
            parse(&["update", "--resources", "-", "--memory=512m", "--pids-limit", "-1", "c1"]).unwrap().command
        else {
            panic!()
        };
        assert_eq!((u.resources.as_deref(), u.memory, u.pids_limit), (Some("-".as_ref()), Some(512 << 20), Some(-1)));
        let Some(Command::List(l)) = parse(&["list", "-f", "json", "-q"]).unwrap().command else { panic!() };
        assert_eq!((l.format, l.quiet), (ListFormat::Json, true));
        let Some(Command::Spec(s)) = parse(&["spec", "--rootless", "-b", "/b"]).unwrap().command else { panic!() };
        assert!(s.rootless);
        assert!(parse(&["features"]).is_ok());
        assert!(parse(&["--version"]).unwrap().version);
        assert!(parse(&["-v"]).unwrap().version);
        assert!(parse(&["state"]).is_err(), "an id is required");
        assert!(parse(&["--log-format", "xml", "list"]).is_err());
    }

    fn update(args: &[&str]) -> UpdateArgs {
        let args: Vec<&str> = ["update"].iter().chain(args).copied().collect();
        match parse(&args).unwrap().command {
            Some(Command::Update(u)) => u,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn update_reads_resources_from_stdin_a_file_or_the_flags() {
        let json = r#"{"memory":{"limit":536870912},"cpu":{"shares":512},"pids":{"limit":64}}"#;
        let from_stdin = update(&["--resources", "-", "c1"]).linux_resources(&mut json.as_bytes()).unwrap();
        assert_eq!(from_stdin.memory().unwrap().limit(), Some(512 << 20));
        assert_eq!(from_stdin.cpu().as_ref().unwrap().shares(), Some(512));
        assert_eq!(from_stdin.pids().unwrap().limit(), 64);
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("r.json");
        std::fs::write(&file, json).unwrap();
        let arg = format!("--resources={}", file.display());
        let from_file = update(&[&arg, "--memory", "1g", "c1"]).linux_resources(&mut std::io::empty()).unwrap();
        assert_eq!(from_file, from_stdin, "the flags are ignored with --resources, as runc");
        let flags = update(&[
            "--memory=256m",
            "--memory-swap",
            "-1",
            "--cpu-quota",
            "50000",
            "--cpuset-cpus",
            "0-1",
            "--pids-limit",
            "10",
            "--blkio-weight",
            "300",
            "c1",
        ])
        .linux_resources(&mut std::io::empty())
        .unwrap();
        let memory = flags.memory().unwrap();
        assert_eq!((memory.limit(), memory.swap(), memory.reservation()), (Some(256 << 20), Some(-1), None));
        let cpu = flags.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.cpus().as_deref(), cpu.shares()), (Some(50_000), Some("0-1"), None));
        assert_eq!((flags.pids().unwrap().limit(), flags.block_io().as_ref().unwrap().weight()), (10, Some(300)));
        let none = update(&["c1"]).linux_resources(&mut std::io::empty()).unwrap();
        assert_eq!(none, LinuxResources::default());
        let err = update(&["-r", "-", "c1"]).linux_resources(&mut "{bad".as_bytes()).unwrap_err();
        assert!(err.to_string().starts_with("cannot parse the resources in stdin"), "{err}");
        assert!(update(&["-r", "/nonexistent.json", "c1"]).linux_resources(&mut std::io::empty()).is_err());
    }

    #[test]
    fn signals_parse_as_runc_reads_them() {
        for (raw, want) in [
            ("9", 9),
            ("0", 0),
            ("KILL", libc::SIGKILL),
            ("SIGKILL", libc::SIGKILL),
            ("sigterm", libc::SIGTERM),
            ("term", libc::SIGTERM),
            ("SigHup", libc::SIGHUP),
            ("WINCH", libc::SIGWINCH),
            ("RTMIN", libc::SIGRTMIN()),
            ("SIGRTMIN+3", libc::SIGRTMIN() + 3),
            ("rtmax-1", libc::SIGRTMAX() - 1),
        ] {
            assert_eq!(parse_signal(raw).unwrap_or_else(|e| panic!("{raw}: {e}")), want, "{raw}");
        }
        for raw in ["", "-1", "65", "99999999999", "SIG", "NOPE", "SIGKILLX", "9x", "RTMIN+99", "RTMAX+1", "KILL "] {
            let err = parse_signal(raw).map(|s| s.to_string());
            assert!(
                matches!(err, Err(RuntimeError::BadSignal(ref r)) if r == raw),
                "{raw:?} must be refused, got {err:?}"
            );
        }
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        for (raw, want) in
            [("100", 100), ("1k", 1024), ("512m", 512 << 20), ("2G", 2 << 30), ("1gb", 1 << 30), ("-1", -1)]
        {
            assert_eq!(parse_bytes(raw), Ok(want), "{raw}");
        }
        for raw in ["", "m", "-5", "1.5g", "10x", "99999999999t"] {
            assert!(parse_bytes(raw).is_err(), "{raw:?}");
        }
    }
}
