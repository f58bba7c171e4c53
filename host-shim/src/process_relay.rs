//! A started guest process as every front end relays it: its stdio pumps ([`crate::io`]) and
//! its end: WaitProcess, then the output drained (all of it reaches the caller before the exit
//! does), then the stdin pump stopped. The shim's waiter and `wisp-runtime`'s monitor (the
//! container's init and each exec) share it.

use std::sync::Arc;
use std::time::Duration;

use protocols::agent as pb;
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::ttrpc::context;
use slog::{warn, Logger};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::io::{self, Endpoint, Output};

/// How long a finished process's output may take to reach the caller.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// WaitProcess lasts as long as the process: no deadline of its own.
const WAIT_FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// Where a process's streams go; a stream without an endpoint is not relayed.
#[derive(Debug, Default)]
pub struct Stdio {
    pub stdin: Option<Endpoint>,
    pub stdout: Option<Endpoint>,
    pub stderr: Option<Endpoint>,
}

/// The running pumps of one process.
#[derive(Debug)]
pub struct Pumps {
    outputs: Vec<JoinHandle<()>>,
    stdin: Option<JoinHandle<()>>,
}

/// Starts the pumps of process `eid` of container `cid` (`eid` empty: the container's init);
/// `stdin_close` ends the stdin relay once what it holds was sent (CloseIO).
pub fn start(
    agent: &AgentServiceClient,
    cid: &str,
    eid: &str,
    stdio: Stdio,
    stdin_close: Arc<Notify>,
    log: &Logger,
) -> Pumps {
    let output = |stream, endpoint| {
        io::pump_output(agent.clone(), cid.to_owned(), eid.to_owned(), stream, endpoint, log.clone())
    };
    let mut outputs = Vec::new();
    outputs.extend(stdio.stdout.map(|endpoint| output(Output::Stdout, endpoint)));
    outputs.extend(stdio.stderr.map(|endpoint| output(Output::Stderr, endpoint)));
    let stdin = stdio.stdin.map(|endpoint| {
        io::pump_stdin(agent.clone(), cid.to_owned(), eid.to_owned(), endpoint, stdin_close, log.clone())
    });
    Pumps { outputs, stdin }
}

/// Waits until process `eid` of `cid` exited and its output drained. `None` when the VM
/// exited first (`vm_exit` became `Some`) or WaitProcess failed.
pub async fn wait(
    agent: &AgentServiceClient,
    cid: &str,
    eid: &str,
    pumps: Pumps,
    mut vm_exit: watch::Receiver<Option<String>>,
    log: &Logger,
) -> Option<i32> {
    let request =
        pb::WaitProcessRequest { container_id: cid.to_owned(), exec_id: eid.to_owned(), ..Default::default() };
    let status = tokio::select! {
        answer = agent.wait_process(context::with_duration(WAIT_FOREVER), &request) => match answer {
            Ok(answer) => Some(answer.status),
            Err(err) => {
                warn!(log, "WaitProcess failed"; "error" => %err);
                None
            }
        },
        _ = vm_exit.wait_for(Option::is_some) => None,
    };
    for pump in pumps.outputs {
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
    if let Some(stdin) = pumps.stdin {
        stdin.abort();
    }
    status
}
