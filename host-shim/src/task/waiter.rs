//! A started process's life as containerd sees it: its stdio pumps ([`crate::io`]), a waiter
//! that runs WaitProcess, lets the output drain, then records the exit and publishes TaskExit.

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim_protos::events::task as events;
use containerd_shim_protos::topics;
use protocols::agent as pb;
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::ttrpc::context;
use slog::info;

use super::{now, Exit, Inner, Proc, Status, CALL_TIMEOUT, VM_DIED_STATUS};
use crate::container;
use crate::error::Error;
use crate::io;
use crate::process_relay;
use crate::sandbox::Sandbox;

/// The pumps of `proc` (agent exec id `eid`) between containerd's FIFOs and the agent: the
/// output pumps, and the stdin pump if it has stdin (a terminal's stderr is its stdout).
fn pump_stdio(agent: &AgentServiceClient, proc: &Proc, eid: &str, log: &slog::Logger) -> process_relay::Pumps {
    let fifo = |path: &str| (!path.is_empty()).then(|| io::Endpoint::Fifo(PathBuf::from(path)));
    let stdio = process_relay::Stdio {
        stdin: fifo(&proc.stdio.stdin),
        stdout: fifo(&proc.stdio.stdout),
        stderr: if proc.stdio.terminal { None } else { fifo(&proc.stdio.stderr) },
    };
    process_relay::start(agent, &proc.container, eid, stdio, proc.stdin_close.clone(), log)
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
        let log = self.log.new(slog::o!("container" => proc.container.clone(), "exec" => proc.exec_id.clone()));
        crate::timeline::mark(&log, "process exited");
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
        let pumps = pump_stdio(&agent, &proc, &eid, &log);
        let me = self.clone();
        tokio::spawn(async move {
            let status = process_relay::wait(&agent, &cid, &eid, pumps, sandbox.exited(), &log).await;
            let status = status.and_then(|status| u32::try_from(status).ok()).unwrap_or(VM_DIED_STATUS);
            me.finish(&proc, status, sandbox.vm_pid()).await;
        });
        Ok(())
    }
}
