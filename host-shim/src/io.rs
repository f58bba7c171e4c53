//! Pumps between containerd's stdio FIFOs and the agent's stdio RPCs.
//!
//! - stdout/stderr: `ReadStdout`/`ReadStderr` in a loop, each answer written to the FIFO, until
//!   the agent reports the end of the stream (an error, or empty data). The pump task ends
//!   only then, so whoever awaits it knows that all output was delivered: the shim answers
//!   Wait and publishes TaskExit after the pumps of the process finished. If containerd's
//!   reader went away the pump keeps draining the agent (and drops the bytes) so the guest
//!   process never blocks on a full pipe.
//! - stdin: FIFO reads relayed by `WriteStdin`; the FIFO's EOF (the writer closed it) or the
//!   task API's CloseIO, after what is already in the FIFO was relayed, becomes `CloseStdin`.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocols::agent::{CloseStdinRequest, ReadStreamRequest, WriteStreamRequest};
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::ttrpc::context;
use slog::{debug, warn, Logger};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How much one ReadStdout asks for.
const READ_CHUNK: u32 = 64 * 1024;
/// Bound on one stdio RPC: a read blocks in the agent until output or EOF, so it is long.
const STREAM_CALL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// stdout.
    Stdout,
    /// stderr.
    Stderr,
}

/// Starts pumping one output stream of `container`/`exec_id` into the FIFO at `fifo`.
pub fn pump_output(
    agent: AgentServiceClient,
    container: String,
    exec_id: String,
    stream: Output,
    fifo: PathBuf,
    log: Logger,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut sink = match open_fifo(&fifo, true).await.and_then(pipe::Sender::from_file) {
            Ok(sink) => Some(sink),
            Err(err) => {
                warn!(log, "cannot open output FIFO; output is dropped"; "fifo" => %fifo.display(), "error" => %err,
                      "container" => &container, "exec" => &exec_id);
                None
            }
        };
        let request = ReadStreamRequest {
            container_id: container.clone(),
            exec_id: exec_id.clone(),
            len: READ_CHUNK,
            ..Default::default()
        };
        loop {
            let ctx = context::with_duration(STREAM_CALL_TIMEOUT);
            let answer = match stream {
                Output::Stdout => agent.read_stdout(ctx, &request).await,
                Output::Stderr => agent.read_stderr(ctx, &request).await,
            };
            let data = match answer {
                Ok(answer) if !answer.data.is_empty() => answer.data,
                Ok(_) => break,
                Err(err) => {
                    debug!(log, "output stream ended"; "stream" => ?stream, "reason" => %err, "container" => &container, "exec" => &exec_id);
                    break;
                }
            };
            if let Some(writer) = sink.as_mut() {
                if let Err(err) = writer.write_all(&data).await {
                    warn!(log, "containerd's reader went away; dropping further output"; "error" => %err,
                          "container" => &container, "exec" => &exec_id);
                    sink = None;
                }
            }
        }
    })
}

/// Starts relaying the FIFO at `fifo` to the process's stdin; `close` (CloseIO) ends it once
/// what the FIFO holds was relayed.
pub fn pump_stdin(
    agent: AgentServiceClient,
    container: String,
    exec_id: String,
    fifo: PathBuf,
    close: std::sync::Arc<Notify>,
    log: Logger,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // containerd opens its end of the FIFO in the background: wait for it, unless CloseIO
        // comes first (then there is nothing to relay).
        let source = tokio::select! {
            file = open_fifo(&fifo, false) => Some(file.and_then(pipe::Receiver::from_file)),
            () = close.notified() => None,
        };
        match source.transpose() {
            Ok(None) => {}
            Ok(Some(mut source)) => {
                let mut buf = vec![0u8; 32 * 1024];
                let mut closing = false;
                loop {
                    let read = if closing {
                        // CloseIO: relay what is already buffered, then stop.
                        match tokio::time::timeout(Duration::from_millis(50), source.read(&mut buf)).await {
                            Ok(read) => read,
                            Err(_) => break,
                        }
                    } else {
                        tokio::select! {
                            read = source.read(&mut buf) => read,
                            () = close.notified() => { closing = true; continue; }
                        }
                    };
                    let n = match read {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(err) => {
                            warn!(log, "stdin FIFO read failed"; "error" => %err, "container" => &container, "exec" => &exec_id);
                            break;
                        }
                    };
                    let request = WriteStreamRequest {
                        container_id: container.clone(),
                        exec_id: exec_id.clone(),
                        data: buf[..n].to_vec(),
                        ..Default::default()
                    };
                    if let Err(err) = agent.write_stdin(context::with_duration(Duration::from_secs(60)), &request).await
                    {
                        warn!(log, "WriteStdin failed; stdin closed"; "error" => %err, "container" => &container, "exec" => &exec_id);
                        break;
                    }
                }
            }
            Err(err) => {
                warn!(log, "cannot open stdin FIFO"; "fifo" => %fifo.display(), "error" => %err, "container" => &container, "exec" => &exec_id);
            }
        }
        let request =
            CloseStdinRequest { container_id: container.clone(), exec_id: exec_id.clone(), ..Default::default() };
        if let Err(err) = agent.close_stdin(context::with_duration(Duration::from_secs(10)), &request).await {
            debug!(log, "CloseStdin failed"; "error" => %err, "container" => &container, "exec" => &exec_id);
        }
    })
}

/// Opens a FIFO the blocking way (an open for reading waits for a writer and vice versa, which
/// is how both ends find each other), on a blocking thread.
async fn open_fifo(path: &Path, write: bool) -> std::io::Result<File> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || OpenOptions::new().read(!write).write(write).open(path))
        .await
        .map_err(std::io::Error::other)?
}
