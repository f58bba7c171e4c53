//! The monitor's side of `exec`: an exec's relay (the process the caller waits for, see
//! [`super::exec`]) hands over its stdio with the request; the monitor starts the process in
//! the guest (ExecProcess), relays those descriptors through the agent as it does the
//! container's own, answers `ok`, and when the process exited and its output drained, a second
//! line with the status. A relay that goes away first (SIGKILL) gets its process killed, as
//! runc's exec process dies with it.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use protocols::agent as pb;
use protocols::ttrpc::context;
use slog::{info, warn, Logger};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::Notify;

use super::control::{self, Answer};
use crate::io::Endpoint;
use crate::process_relay::{self, Pumps, Stdio};
use crate::sandbox::Sandbox;

/// Bound on ExecProcess and on the kill of an abandoned exec.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The status of an exec whose VM died under it (as the shim reports it).
const VM_DIED_STATUS: i32 = 255;

/// One exec request, as the control socket brought it.
#[derive(Debug)]
pub struct ExecRequest {
    pub cid: String,
    pub exec_id: String,
    pub process: serde_json::Value,
    /// stdin, stdout, stderr; or one terminal.
    pub fds: Vec<OwnedFd>,
}

/// Runs the exec of `request` to its end, answering on `stream`.
pub async fn serve(sandbox: Arc<Sandbox>, request: ExecRequest, mut stream: UnixStream, log: &Logger) {
    let log = log.new(slog::o!("exec" => request.exec_id.clone()));
    let (cid, exec_id) = (request.cid.clone(), request.exec_id.clone());
    let pumps = match start(&sandbox, request, &log).await {
        Ok(pumps) => pumps,
        Err(why) => {
            warn!(log, "exec refused"; "error" => &why);
            control::write_answer(stream, &Answer::Error(why)).await;
            return;
        }
    };
    info!(log, "exec started");
    let agent = sandbox.agent().agent();
    let wait = process_relay::wait(&agent, &cid, &exec_id, pumps, sandbox.exited(), &log);
    tokio::pin!(wait);
    let told = control::write_line(&mut stream, &Answer::Ok).await.is_ok();
    let code = if told {
        tokio::select! {
            code = &mut wait => code,
            () = caller_gone(&mut stream) => {
                warn!(log, "the exec's relay went away; its process is killed");
                kill(&sandbox, &cid, &exec_id).await;
                wait.await
            }
        }
    } else {
        kill(&sandbox, &cid, &exec_id).await;
        wait.await
    };
    let code = code.unwrap_or(VM_DIED_STATUS);
    info!(log, "exec exited"; "status" => code);
    control::write_answer(stream, &Answer::Exited(code)).await;
}

/// ExecProcess, then the pumps of the descriptors handed over.
async fn start(sandbox: &Sandbox, request: ExecRequest, log: &Logger) -> Result<Pumps, String> {
    let spec: oci_spec::runtime::Process = serde_json::from_value(request.process)
        .map_err(|err| format!("the exec's process is not an OCI process: {err}"))?;
    let terminal = spec.terminal().unwrap_or(false);
    let stdio = stdio_of(request.fds, terminal)?;
    let process = crate::container::guest::exec_process(&spec, terminal);
    let exec = crate::container::guest::exec_request(&request.cid, &request.exec_id, &process);
    let agent = sandbox.agent().agent();
    agent
        .exec_process(context::with_duration(CALL_TIMEOUT), &exec)
        .await
        .map_err(|err| format!("ExecProcess: {}", crate::sandbox::describe_ttrpc(&err)))?;
    Ok(process_relay::start(&agent, &request.cid, &request.exec_id, stdio, Arc::new(Notify::new()), log))
}

/// The relay's descriptors as the process's stdio: a terminal is stdin and stdout (its
/// stderr is the same terminal in the guest); otherwise stdin, stdout and stderr.
fn stdio_of(fds: Vec<OwnedFd>, terminal: bool) -> Result<Stdio, String> {
    let file = |fd: OwnedFd| Endpoint::File(std::fs::File::from(fd));
    let mut fds = fds.into_iter();
    match (terminal, fds.next(), fds.next(), fds.next()) {
        (true, Some(tty), None, None) => {
            let input = tty.try_clone().map_err(|err| format!("cannot copy the exec's terminal: {err}"))?;
            Ok(Stdio { stdin: Some(file(input)), stdout: Some(file(tty)), stderr: None })
        }
        (false, Some(stdin), Some(stdout), Some(stderr)) => {
            Ok(Stdio { stdin: Some(file(stdin)), stdout: Some(file(stdout)), stderr: Some(file(stderr)) })
        }
        (true, ..) => Err("an exec with a terminal hands over one descriptor".to_owned()),
        (false, ..) => Err("an exec hands over three descriptors (stdin, stdout, stderr)".to_owned()),
    }
}

/// Returns once the relay closed its end of the connection.
async fn caller_gone(stream: &mut UnixStream) {
    let mut buf = [0u8; 64];
    while let Ok(1..) = stream.read(&mut buf).await {}
}

/// SIGKILL to exec `exec_id` (it may have exited already: nothing to report then).
async fn kill(sandbox: &Sandbox, cid: &str, exec_id: &str) {
    let request = pb::SignalProcessRequest {
        container_id: cid.to_owned(),
        exec_id: exec_id.to_owned(),
        signal: libc::SIGKILL as u32,
        ..Default::default()
    };
    let _ = sandbox.agent().agent().signal_process(context::with_duration(CALL_TIMEOUT), &request).await;
}
