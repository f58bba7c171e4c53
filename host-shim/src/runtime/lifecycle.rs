//! The commands that need a container's VM: one function per command, each given the global
//! context and its parsed arguments, synchronous (a function that needs async I/O starts its
//! own tokio runtime).
//!
//! Not implemented yet: each returns [`RuntimeError::NotYet`]. What each must do for runc's
//! callers is in `docs/runtime.md` and `/work/shared/notes/oci-runtime-cli.md`; the record
//! lives in [`super::store`] (`Store::new(&ctx.root)`, `create`/`lock`, `save`,
//! `ContainerState::from_bundle`, `Monitor::of`), errors callers match are
//! [`RuntimeError::NotExist`], [`RuntimeError::Exists`] and [`RuntimeError::NotRunning`].
//!
//! Before these run, the binary has checked (runtime::preflight) that `create`'s id, bundle and
//! pid file's directory are usable, that the container of the other commands exists, that
//! `kill`'s is not stopped, and handled `delete` of an id that has no record.

use super::cli::{CreateArgs, DeleteArgs, ExecArgs, IdArgs, KillArgs, PsArgs, RunArgs, UpdateArgs};
use super::{Ctx, RuntimeError};

/// `create`: record the container, fork the monitor (it boots the VM and creates the
/// container in it), write the monitor's pid to `--pid-file` (digits, atomically) and, with
/// `--console-socket`, send the pty master; return once the container is created.
pub fn create(_ctx: &Ctx, _args: &CreateArgs) -> Result<(), RuntimeError> {
    Err(RuntimeError::NotYet("create"))
}

/// `start`: start the created container's process (poststart hooks done on return).
pub fn start(_ctx: &Ctx, _args: &IdArgs) -> Result<(), RuntimeError> {
    Err(RuntimeError::NotYet("start"))
}

/// `kill`: send `args.signal` to the container's process (every process with `--all`);
/// `container not running` when it is stopped.
pub fn kill(_ctx: &Ctx, _args: &KillArgs) -> Result<(), RuntimeError> {
    Err(RuntimeError::NotYet("kill"))
}

/// `delete`: remove a stopped (or created) container, its VM and record; with `--force` one
/// that runs too.
pub fn delete(_ctx: &Ctx, _args: &DeleteArgs) -> Result<(), RuntimeError> {
    Err(RuntimeError::NotYet("delete"))
}

/// `exec`: run a process in the container; with `--detach`, fork its relay (the pid in
/// `--pid-file`) and return once it started; without, wait and return its exit status.
pub fn exec(_ctx: &Ctx, _args: &ExecArgs) -> Result<i32, RuntimeError> {
    Err(RuntimeError::NotYet("exec"))
}

/// `ps`: the container's processes (`--format json`: a JSON array of pids on stdout).
pub fn ps(_ctx: &Ctx, _args: &PsArgs) -> Result<(), RuntimeError> {
    Err(RuntimeError::NotYet("ps"))
}

/// `pause`: freeze the container's processes; `state` then says paused.
pub fn pause(_ctx: &Ctx, _args: &IdArgs) -> Result<(), RuntimeError> {
    Err(RuntimeError::NotYet("pause"))
}

/// `resume`: thaw a paused container.
pub fn resume(_ctx: &Ctx, _args: &IdArgs) -> Result<(), RuntimeError> {
    Err(RuntimeError::NotYet("resume"))
}

/// `update`: apply new resources (`args.linux_resources(&mut std::io::stdin())` reads them as
/// runc does: `--resources FILE|-`, else the individual flags).
pub fn update(_ctx: &Ctx, _args: &UpdateArgs) -> Result<(), RuntimeError> {
    Err(RuntimeError::NotYet("update"))
}

/// `run`: create and start; without `--detach` wait for the container and return its exit
/// status (the process exits with it), deleting it unless `--keep`.
pub fn run(_ctx: &Ctx, _args: &RunArgs) -> Result<i32, RuntimeError> {
    Err(RuntimeError::NotYet("run"))
}
