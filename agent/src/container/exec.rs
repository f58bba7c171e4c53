//! ExecProcess: one more process inside a running container.

use std::sync::Arc;

use super::{id, Container};
use crate::error::AgentError;
use crate::launch::{self, ExecRequest};
use crate::process::{reaper, stdio, Process};

/// Starts `process` in `container` under `exec_id`.
pub async fn exec(container: &Container, exec_id: &str, process: oci_spec::runtime::Process) -> Result<(), AgentError> {
    id::validate("exec", exec_id)?;
    // One exec creation at a time per container, so an id is checked and
    // taken atomically even though the launch in between awaits.
    let _creating = container.exec_creation.lock().await;
    container.check_running().await?;
    if container.has_exec(exec_id) {
        return Err(AgentError::ExecExists { container_id: container.id.clone(), exec_id: exec_id.to_owned() });
    }
    let log = container.log().new(slog::o!("exec_id" => exec_id.to_owned()));
    let terminal = process.terminal().unwrap_or(false);
    let console = process.console_size().map_or((0, 0), |b| {
        (u16::try_from(b.height()).unwrap_or(u16::MAX), u16::try_from(b.width()).unwrap_or(u16::MAX))
    });
    let root = std::path::PathBuf::from(format!("/proc/{}/root", container.init_pid()));
    let (io, fds) = stdio::open(terminal, console, Some(&root), &log).map_err(|source| AgentError::Stdio {
        container_id: container.id.clone(),
        exec_id: exec_id.to_owned(),
        source,
    })?;
    let req = ExecRequest {
        container_id: container.id.clone(),
        init_pid: container.init_pid(),
        process,
        spec: container.spec().clone(),
        stdio: fds,
    };
    let exits = container.exits().clone();
    let ticket = exits.ticket();
    let cgroup = container.cgroup();
    let pid = tokio::task::spawn_blocking(move || {
        let _own = reaper::own_children();
        let place = |pid: i32| match &cgroup {
            Some(cg) => cg.add_pid(pid).map_err(|e| crate::error::chain(&e)),
            None => Ok(()),
        };
        launch::exec(req, place)
    })
    .await
    .map_err(|e| AgentError::FailedPrecondition(format!("exec {exec_id} in {}: {e}", container.id)))?
    .map_err(|source| AgentError::Launch { container_id: container.id.clone(), source })?;
    let exit = exits.register(pid, ticket);
    slog::info!(log, "exec started"; "child_pid" => pid, "terminal" => terminal);
    container.add_exec(Arc::new(Process::new(exec_id.to_owned(), pid, io, exit, log)))
}
