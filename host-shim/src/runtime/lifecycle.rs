//! The commands that need a container's VM: one function per command, each given the global
//! context and its parsed arguments, synchronous (a function that needs async I/O starts its
//! own tokio runtime).
//!
//! The work is [`super::launch`]'s (the monitor forked, the control socket asked); what is not
//! implemented yet (`exec`, `ps`, `update`, a terminal) returns [`RuntimeError::NotYet`].
//!
//! Before these run, the binary has checked (runtime::preflight) that `create`'s id, bundle and
//! pid file's directory are usable, that the container of the other commands exists, that
//! `kill`'s is not stopped, and handled `delete` of an id that has no record.

use super::cli::{CreateArgs, DeleteArgs, ExecArgs, IdArgs, KillArgs, PsArgs, RunArgs, UpdateArgs};
use super::control::Request;
use super::hooks::{self, HookKind, HookState};
use super::launch::{self, CreateRequest};
use super::store::{ContainerState, Store};
use super::{Ctx, RuntimeError};

/// `create`: record the container, fork the monitor (it boots the VM and creates the
/// container in it), write the monitor's pid to `--pid-file` (digits, atomically); return once
/// the container is created. The monitor is left running: the caller reaps it.
pub fn create(ctx: &Ctx, args: &CreateArgs) -> Result<(), RuntimeError> {
    launch_monitor(ctx, args).map(drop)
}

fn launch_monitor(ctx: &Ctx, args: &CreateArgs) -> Result<std::process::Child, RuntimeError> {
    if args.console_socket.is_some() {
        return Err(RuntimeError::NotYet("create --console-socket (a terminal)"));
    }
    let record = ContainerState::from_bundle(&args.id, &args.bundle)?;
    let mut monitor_args = ctx.log.args();
    if ctx.systemd_cgroup {
        monitor_args.push("--systemd-cgroup".to_owned());
    }
    let request = CreateRequest { root: ctx.root.clone(), record, pid_file: args.pid_file.clone(), monitor_args };
    launch::create(&request)
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
        let kill = Request::Kill { signal: libc::SIGKILL, all: true };
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
    launch::ask(&Store::new(&ctx.root), &args.id, &Request::Kill { signal: args.signal, all: args.all }).map(drop)
}

/// `delete`: remove a stopped (or created) container, its VM and record; with `--force` one
/// that runs too.
pub fn delete(ctx: &Ctx, args: &DeleteArgs) -> Result<(), RuntimeError> {
    delete_container(ctx, &Store::new(&ctx.root), &args.id, args.force)
}

/// `exec`: not yet.
pub fn exec(_ctx: &Ctx, _args: &ExecArgs) -> Result<i32, RuntimeError> {
    Err(RuntimeError::NotYet("exec"))
}

/// `ps`: not yet.
pub fn ps(_ctx: &Ctx, _args: &PsArgs) -> Result<(), RuntimeError> {
    Err(RuntimeError::NotYet("ps"))
}

/// `pause`: freeze the container's processes; `state` then says paused.
pub fn pause(ctx: &Ctx, args: &IdArgs) -> Result<(), RuntimeError> {
    launch::ask(&Store::new(&ctx.root), &args.id, &Request::Pause).map(drop)
}

/// `resume`: thaw a paused container.
pub fn resume(ctx: &Ctx, args: &IdArgs) -> Result<(), RuntimeError> {
    launch::ask(&Store::new(&ctx.root), &args.id, &Request::Resume).map(drop)
}

/// `update`: not yet.
pub fn update(_ctx: &Ctx, _args: &UpdateArgs) -> Result<(), RuntimeError> {
    Err(RuntimeError::NotYet("update"))
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
