//! The commands that need a container's VM: one function per command, each given the global
//! context and its parsed arguments, synchronous (a function that needs async I/O starts its
//! own tokio runtime).
//!
//! The work is [`super::launch`]'s (the monitor forked, the control socket asked) and
//! [`super::exec`]'s (the exec relay).
//!
//! Before these run, the binary has checked (runtime::preflight) that `create`'s id, bundle and
//! pid file's directory are usable, that the container of the other commands exists, that
//! `kill`'s is not stopped, and handled `delete` of an id that has no record.

use super::cli::{CreateArgs, DeleteArgs, ExecArgs, IdArgs, KillArgs, PsArgs, PsFormat, RunArgs, UpdateArgs};
use super::control::{Answer, Request};
use super::hooks::{self, HookKind, HookState};
use super::launch::{self, CreateRequest, LaunchError};
use super::store::{ContainerState, Store};
use super::{Ctx, RuntimeError};

/// `create`: record the container, fork the monitor (it boots the VM and creates the
/// container in it), write the monitor's pid to `--pid-file` (digits, atomically); return once
/// the container is created. The monitor is left running: the caller reaps it.
pub fn create(ctx: &Ctx, args: &CreateArgs) -> Result<(), RuntimeError> {
    launch_monitor(ctx, args).map(drop)
}

fn launch_monitor(ctx: &Ctx, args: &CreateArgs) -> Result<std::process::Child, RuntimeError> {
    let record = ContainerState::from_bundle(&args.id, &args.bundle)?;
    let console_socket = match &args.console_socket {
        Some(socket) => {
            if !wants_terminal(&record.bundle) {
                return Err(RuntimeError::Usage(
                    "cannot use console socket if runc will not detach or allocate tty".into(),
                ));
            }
            Some(std::path::absolute(socket).map_err(RuntimeError::io("cannot resolve the console socket", socket))?)
        }
        None => None,
    };
    let mut monitor_args = ctx.log.args();
    if ctx.systemd_cgroup {
        monitor_args.push("--systemd-cgroup".to_owned());
    }
    let request =
        CreateRequest { root: ctx.root.clone(), record, pid_file: args.pid_file.clone(), monitor_args, console_socket };
    launch::create(&request)
}

/// Whether the bundle's process asks for a terminal.
fn wants_terminal(bundle: &std::path::Path) -> bool {
    oci_spec::runtime::Spec::load(bundle.join("config.json"))
        .ok()
        .and_then(|spec| spec.process().as_ref().and_then(|p| p.terminal()))
        .unwrap_or(false)
}

/// `start`: start the created container's process, then run the bundle's poststart hooks on
/// the host.
pub fn start(ctx: &Ctx, args: &IdArgs) -> Result<(), RuntimeError> {
    start_container(ctx, &Store::new(&ctx.root), &args.id)
}

/// Starts container `id`; its poststart hooks follow (state `running`, the monitor's pid). A
/// failing one fails `start` and kills the container, as runc does.
fn start_container(ctx: &Ctx, store: &Store, id: &str) -> Result<(), RuntimeError> {
    launch::start(store, id)?;
    let record = store.load(id)?;
    let Some(spec) = bundle_spec(ctx, &record) else { return Ok(()) };
    let pid = record.monitor.as_ref().map_or(0, |m| m.pid);
    let state = HookState::new(id, "running", pid, &record.bundle, &spec);
    if let Err(err) = hooks::run_kinds(&[HookKind::Poststart], &spec, &state) {
        let kill = Request::Kill { signal: libc::SIGKILL, all: true, exec_id: String::new() };
        if let Err(killed) = launch::ask(store, id, &kill) {
            ctx.log.warn(format_args!("cannot kill container {id} after its poststart hook failed: {killed}"));
        }
        return Err(err.into());
    }
    Ok(())
}

/// Deletes container `id`, then runs its poststop hooks (state `stopped`, pid 0); a failing one
/// is logged, as the OCI spec asks.
fn delete_container(ctx: &Ctx, store: &Store, id: &str, force: bool) -> Result<(), RuntimeError> {
    let record = store.load(id)?;
    launch::delete(store, id, force)?;
    if let Some(spec) = bundle_spec(ctx, &record) {
        let state = HookState::new(id, "stopped", 0, &record.bundle, &spec);
        if let Err(err) = hooks::run_kinds(&[HookKind::Poststop], &spec, &state) {
            ctx.log.warn(format_args!("container {id}: {err}"));
        }
    }
    Ok(())
}

/// The config.json of `record`'s bundle, for its hooks; a bundle gone or broken since `create`
/// is logged and runs none.
fn bundle_spec(ctx: &Ctx, record: &ContainerState) -> Option<oci_spec::runtime::Spec> {
    match crate::container::plan::load_spec(&record.bundle) {
        Ok(spec) => Some(spec),
        Err(err) => {
            ctx.log.warn(format_args!("container {}: no hooks run: {}", record.id, protocols::error::chain(&err)));
            None
        }
    }
}

/// `kill`: send `args.signal` to the container's process; `container not running` when it is
/// stopped.
pub fn kill(ctx: &Ctx, args: &KillArgs) -> Result<(), RuntimeError> {
    launch::ask(
        &Store::new(&ctx.root),
        &args.id,
        &Request::Kill { signal: args.signal, all: args.all, exec_id: String::new() },
    )
    .map(drop)
}

/// `delete`: remove a stopped (or created) container, its VM and record; with `--force` one
/// that runs too.
pub fn delete(ctx: &Ctx, args: &DeleteArgs) -> Result<(), RuntimeError> {
    delete_container(ctx, &Store::new(&ctx.root), &args.id, args.force)
}

/// `exec`: a process in the running container; its exit status, or 0 once a detached one
/// started.
pub fn exec(ctx: &Ctx, args: &ExecArgs) -> Result<i32, RuntimeError> {
    super::exec::exec(ctx, args)
}

/// `ps`: the container's host processes (its VM, as Kata's runtime reports them): a JSON
/// array of pids, or the host's `ps` lines of those pids (runc's table, `ps -ef` by default).
pub fn ps(ctx: &Ctx, args: &PsArgs) -> Result<String, RuntimeError> {
    let pids = match launch::ask(&Store::new(&ctx.root), &args.id, &Request::Pids)? {
        Answer::Pids(pids) => pids,
        other => return Err(LaunchError::Refused(format!("the monitor answered {other:?} to ps")).into()),
    };
    match args.format {
        PsFormat::Json => Ok(serde_json::to_string(&pids).unwrap_or_else(|_| "[]".to_owned()) + "\n"),
        PsFormat::Table => {
            let ps_args = if args.ps_args.is_empty() { vec!["-ef".to_owned()] } else { args.ps_args.clone() };
            let output = std::process::Command::new("ps")
                .args(&ps_args)
                .output()
                .map_err(RuntimeError::io("cannot run", "ps"))?;
            ps_table(&String::from_utf8_lossy(&output.stdout), &pids)
        }
    }
}

/// runc's filter of `ps` output: the header, and the lines whose PID column is one of `pids`.
fn ps_table(output: &str, pids: &[u32]) -> Result<String, RuntimeError> {
    let mut lines = output.lines();
    let header = lines.next().unwrap_or_default();
    let column = header
        .split_whitespace()
        .position(|field| field == "PID")
        .ok_or_else(|| RuntimeError::Usage("couldn't find PID field in ps output".into()))?;
    let mut table = format!("{header}\n");
    for line in lines {
        let pid = line.split_whitespace().nth(column).and_then(|field| field.parse::<u32>().ok());
        if pid.is_some_and(|pid| pids.contains(&pid)) {
            table.push_str(line);
            table.push('\n');
        }
    }
    Ok(table)
}

/// `pause`: freeze the container's processes; `state` then says paused.
pub fn pause(ctx: &Ctx, args: &IdArgs) -> Result<(), RuntimeError> {
    launch::ask(&Store::new(&ctx.root), &args.id, &Request::Pause).map(drop)
}

/// `resume`: thaw a paused container.
pub fn resume(ctx: &Ctx, args: &IdArgs) -> Result<(), RuntimeError> {
    launch::ask(&Store::new(&ctx.root), &args.id, &Request::Resume).map(drop)
}

/// `update`: the container's resources (the LinuxResources of `--resources`, a file or `-`
/// for stdin, else the flags), applied in the guest.
pub fn update(ctx: &Ctx, args: &UpdateArgs) -> Result<(), RuntimeError> {
    let resources = args.linux_resources(&mut std::io::stdin().lock())?;
    let resources = serde_json::to_value(&resources).map_err(|source| RuntimeError::Json {
        what: "cannot encode the resources of",
        path: args.id.clone().into(),
        source,
    })?;
    launch::ask(&Store::new(&ctx.root), &args.id, &Request::Update { resources }).map(drop)
}

/// `run`: create and start; without `--detach` wait for the container and return its exit
/// status (the process exits with it), deleting it unless `--keep`.
pub fn run(ctx: &Ctx, args: &RunArgs) -> Result<i32, RuntimeError> {
    let mut monitor = launch_monitor(ctx, &args.create)?;
    let store = Store::new(&ctx.root);
    if let Err(err) = start_container(ctx, &store, &args.create.id) {
        let _ = delete_container(ctx, &store, &args.create.id, true);
        let _ = monitor.wait();
        return Err(err);
    }
    if args.detach {
        return Ok(0);
    }
    let status =
        monitor.wait().map_err(RuntimeError::io("cannot wait for the monitor of", store.dir(&args.create.id)))?;
    // The monitor exits with the container's status; a signal that killed it counts as runc's.
    let code =
        status.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0));
    if !args.keep {
        delete_container(ctx, &store, &args.create.id, true)?;
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_table_keeps_the_header_and_the_containers_lines() {
        let output = "UID PID PPID C STIME TTY TIME CMD\nroot 1 0 0 10:00 ? 00:00:01 init\nroot 4242 1 9 10:01 ? 00:00:09 qemu-system-x86_64 -name x\nroot 42 1 0 10:02 ? 00:00:00 sh\n";
        let table = ps_table(output, &[4242]).unwrap();
        assert_eq!(
            table,
            "UID PID PPID C STIME TTY TIME CMD\nroot 4242 1 9 10:01 ? 00:00:09 qemu-system-x86_64 -name x\n"
        );
    }

    #[test]
    fn ps_table_without_a_pid_column_is_an_error() {
        assert!(ps_table("USER COMMAND\nroot init\n", &[1]).is_err());
    }
}
