//! A started process's life as containerd sees it: its stdio pumps ([`crate::io`]), a waiter
//! that runs WaitProcess, lets the output drain, then records the exit and publishes TaskExit.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::events::task as events;
use containerd_shim_protos::topics;
use protocols::agent as pb;
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::ttrpc::context;
use slog::{info, warn};
use tokio::task::JoinHandle;

use super::{now, Exit, Inner, Proc, Status, CALL_TIMEOUT, VM_DIED_STATUS};
use crate::container;
use crate::error::Error;
use crate::io::{self, Output};
use crate::sandbox::Sandbox;

/// How long a finished process's output pumps may take to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the stdio pumps of `proc` (agent exec id `eid`) between containerd's FIFOs and the
/// agent: the output pumps, and the stdin pump if it has stdin.
fn pump_stdio(
    agent: &AgentServiceClient,
    proc: &Proc,
    eid: &str,
    log: &slog::Logger,
) -> (Vec<JoinHandle<()>>, Option<JoinHandle<()>>) {
    let cid = &proc.container;
    let output = |stream, path: &str| {
        let fifo = io::Endpoint::Fifo(PathBuf::from(path));
        io::pump_output(agent.clone(), cid.clone(), eid.to_owned(), stream, fifo, log.clone())
    };
    let mut pumps = Vec::new();
    if !proc.stdio.stdout.is_empty() {
        pumps.push(output(Output::Stdout, &proc.stdio.stdout));
    }
    if !proc.stdio.stderr.is_empty() && !proc.stdio.terminal {
        pumps.push(output(Output::Stderr, &proc.stdio.stderr));
    }
    let stdin = (!proc.stdio.stdin.is_empty()).then(|| {
        let fifo = io::Endpoint::Fifo(PathBuf::from(&proc.stdio.stdin));
        io::pump_stdin(agent.clone(), cid.clone(), eid.to_owned(), fifo, proc.stdin_close.clone(), log.clone())
    });
    (pumps, stdin)
}

impl Inner {
    /// Records an exit once and publishes TaskExit.
    pub(super) async fn finish(&self, proc: &Proc, status: u32, pid: u32) {
        let exit = Exit { status, at: now() };
        let first = proc.exit_tx.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            *slot = Some(exit.clone());
            true
        });
        if !first {
            return;
        }
        proc.set_status(Status::Stopped);
        info!(self.log, "process exited"; "container" => &proc.container, "exec" => &proc.exec_id, "status" => status);
        let event = events::TaskExit {
            container_id: proc.container.clone(),
            id: if proc.exec_id.is_empty() { proc.container.clone() } else { proc.exec_id.clone() },
            pid,
            exit_status: status,
            exited_at: Some(exit.at).into(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event)).await;
    }

    /// Starts a created process in the guest, its stdio pumps, and its waiter.
    pub(super) async fn start_process(self: &Arc<Self>, sandbox: Arc<Sandbox>, proc: Arc<Proc>) -> Result<(), Error> {
        let agent = sandbox.agent().agent();
        let log = self.log.new(slog::o!("container" => proc.container.clone(), "exec" => proc.exec_id.clone()));
        match &proc.exec_spec {
            None => {
                let request = pb::StartContainerRequest { container_id: proc.container.clone(), ..Default::default() };
                agent
                    .start_container(context::with_duration(CALL_TIMEOUT), &request)
                    .await
                    .map_err(|err| Error::agent("StartContainer", &proc.container, &err))?;
            }
            Some(spec) => {
                let request = container::guest::exec_request(&proc.container, &proc.exec_id, spec);
                agent
                    .exec_process(context::with_duration(CALL_TIMEOUT), &request)
                    .await
                    .map_err(|err| Error::agent("ExecProcess", &proc.exec_id, &err))?;
            }
        }
        proc.set_status(Status::Running);
        let cid = proc.container.clone();
        let eid = proc.agent_exec_id().to_owned();
        let (pumps, stdin) = pump_stdio(&agent, &proc, &eid, &log);
        let me = self.clone();
        tokio::spawn(async move {
            let mut vm_exit = sandbox.exited();
            let request =
                pb::WaitProcessRequest { container_id: cid.clone(), exec_id: eid.clone(), ..Default::default() };
            let status = tokio::select! {
                answer = agent.wait_process(context::with_duration(Duration::from_secs(365 * 24 * 3600)), &request) => {
                    match answer {
                        Ok(answer) => u32::try_from(answer.status).unwrap_or(VM_DIED_STATUS),
                        Err(err) => {
                            warn!(log, "WaitProcess failed"; "error" => %err);
                            VM_DIED_STATUS
                        }
                    }
                }
                _ = vm_exit.wait_for(Option::is_some) => VM_DIED_STATUS,
            };
            // All output reaches containerd before the exit does.
            for pump in pumps {
                let abort = pump.abort_handle();
                let drained = tokio::select! {
                    done = tokio::time::timeout(DRAIN_TIMEOUT, pump) => done.is_ok(),
                    _ = vm_exit.wait_for(Option::is_some) => false,
                };
                if !drained {
                    abort.abort();
                    warn!(log, "output not drained; the rest is dropped");
                }
            }
            if let Some(stdin) = stdin {
                stdin.abort();
            }
            me.finish(&proc, status, sandbox.vm_pid()).await;
        });
        Ok(())
    }
}
