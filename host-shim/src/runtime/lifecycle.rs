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
    let request =
        CreateRequest { root: ctx.root.clone(), record, pid_file: args.pid_file.clone(), monitor_args: ctx.log.args() };
    launch::create(&request)
}

/// `start`: start the created container's process.
pub fn start(ctx: &Ctx, args: &IdArgs) -> Result<(), RuntimeError> {
    launch::start(&Store::new(&ctx.root), &args.id)
}

/// `kill`: send `args.signal` to the container's process; `container not running` when it is
/// stopped.
pub fn kill(ctx: &Ctx, args: &KillArgs) -> Result<(), RuntimeError> {
    launch::ask(&Store::new(&ctx.root), &args.id, &Request::Kill { signal: args.signal, all: args.all }).map(drop)
}

/// `delete`: remove a stopped (or created) container, its VM and record; with `--force` one
/// that runs too.
pub fn delete(ctx: &Ctx, args: &DeleteArgs) -> Result<(), RuntimeError> {
    launch::delete(&Store::new(&ctx.root), &args.id, args.force)
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
    if let Err(err) = launch::start(&store, &args.create.id) {
        let _ = launch::delete(&store, &args.create.id, true);
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
        launch::delete(&store, &args.create.id, true)?;
    }
    Ok(code)
}
