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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

impl Output {
    fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// Where a process's output goes, where its input comes from.
#[derive(Debug)]
pub enum Endpoint {
    /// A FIFO of containerd's, opened by path.
    Fifo(PathBuf),
    /// A descriptor handed to us (`wisp-runtime`'s caller's pipe, file or terminal), used
    /// through blocking reads and writes on tokio's blocking pool, which suit all of them.
    File(std::fs::File),
}

/// Starts pumping one output stream of `container`/`exec_id` into `target`.
pub fn pump_output(
    agent: AgentServiceClient,
    container: String,
    exec_id: String,
    stream: Output,
    target: Endpoint,
    log: Logger,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let log =
            log.new(slog::o!("container" => container.clone(), "exec" => exec_id.clone(), "stream" => stream.name()));
        let mut sink = OutputSink::new(target, &log);
        let mut first = true;
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
                    debug!(log, "output stream ended"; "reason" => %err);
                    break;
                }
            };
            if first {
                first = false;
                crate::timeline::mark(&log, "first output");
            }
            sink.write(&data, &log).await;
        }
    })
}

/// The shim's end of an output FIFO, opened without waiting for a reader.
///
/// containerd's clients (ctr, CRI, dockerd) open their read end before they ask for the task,
/// so a reader is there when the shim opens, unless the client has gone: `ctr run -d` exits
/// right after Start. A blocking open would then wait forever, the pump would stop draining
/// the agent, the process would block on a full pipe and its exit would wait for the drain
/// timeout. Without a reader the output is dropped, and the open is tried again with the
/// next output, so a reader that comes later gets the output from then on.
/// A descriptor it was given is written as it is, and dropped once writing fails.
struct OutputSink {
    /// The FIFO to (re)open, `None` for a given descriptor.
    fifo: Option<PathBuf>,
    writer: Option<Box<dyn AsyncWrite + Unpin + Send>>,
    /// Whether the last attempt found no reader (logged once, not per chunk).
    readerless: bool,
}

impl OutputSink {
    /// Opens the FIFO at once: a stream that never writes must still reach its reader as an
    /// open then a close (containerd's reader waits for that EOF, CRI's ExecSync with it).
    fn new(target: Endpoint, log: &Logger) -> Self {
        let mut sink = match target {
            Endpoint::Fifo(fifo) => Self { fifo: Some(fifo), writer: None, readerless: false },
            Endpoint::File(file) => {
                Self { fifo: None, writer: Some(Box::new(tokio::fs::File::from_std(file))), readerless: false }
            }
        };
        sink.open(log);
        sink
    }

    /// Opens the FIFO without waiting if it is not open; whether a writer is there.
    fn open(&mut self, log: &Logger) -> bool {
        if let (None, Some(fifo)) = (&self.writer, &self.fifo) {
            match pipe::OpenOptions::new().open_sender(fifo) {
                Ok(writer) => {
                    self.writer = Some(Box::new(writer));
                    self.readerless = false;
                }
                Err(err) => {
                    if !self.readerless {
                        debug!(log, "no reader on the output FIFO; output is dropped until one comes";
                               "fifo" => %fifo.display(), "error" => %err);
                    }
                    self.readerless = true;
                }
            }
        }
        self.writer.is_some()
    }

    async fn write(&mut self, data: &[u8], log: &Logger) {
        if !self.open(log) {
            return;
        }
        if let Some(writer) = self.writer.as_mut() {
            // A file of tokio's completes a write only on flush.
            if let Err(err) = async {
                writer.write_all(data).await?;
                writer.flush().await
            }
            .await
            {
                debug!(log, "containerd's reader went away; dropping output until another comes"; "error" => %err);
                self.writer = None;
                self.readerless = true;
            }
        }
    }
}

/// How long a CloseIO waits for the stdin FIFO's open to return before deciding no writer came.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Starts relaying `source` to the process's stdin; `close` (CloseIO) ends it once what the
/// source holds was relayed.
pub fn pump_stdin(
    agent: AgentServiceClient,
    container: String,
    exec_id: String,
    source: Endpoint,
    close: std::sync::Arc<Notify>,
    log: Logger,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let source = match source {
            Endpoint::Fifo(fifo) => open_stdin_fifo(&fifo, &close).await,
            Endpoint::File(file) => Some(Ok((Box::new(tokio::fs::File::from_std(file)) as Input, false))),
        };
        match source.transpose() {
            Ok(None) => {}
            Ok(Some((mut source, closing_already))) => {
                let mut buf = vec![0u8; 32 * 1024];
                let mut closing = closing_already;
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
                warn!(log, "cannot open stdin"; "error" => %err, "container" => &container, "exec" => &exec_id);
            }
        }
        let request =
            CloseStdinRequest { container_id: container.clone(), exec_id: exec_id.clone(), ..Default::default() };
        if let Err(err) = agent.close_stdin(context::with_duration(Duration::from_secs(10)), &request).await {
            debug!(log, "CloseStdin failed"; "error" => %err, "container" => &container, "exec" => &exec_id);
        }
    })
}

/// A process's input, as read.
type Input = Box<dyn AsyncRead + Unpin + Send>;

/// Opens containerd's stdin FIFO; with it whether CloseIO came already. containerd opens its end
/// of the FIFO in the background: wait for it. CloseIO can overtake the open's result (the
/// writer wrote, closed and called CloseIO before this task saw its open return): then give
/// the open a moment and relay what the writer left in the FIFO; only a writer that never came
/// means there is nothing to relay (`None`).
async fn open_stdin_fifo(fifo: &Path, close: &Notify) -> Option<std::io::Result<(Input, bool)>> {
    let mut open = std::pin::pin!(open_fifo(fifo, false));
    let opened = tokio::select! {
        biased;
        file = &mut open => Some((file, false)),
        () = close.notified() => match tokio::time::timeout(CLOSE_GRACE, &mut open).await {
            Ok(file) => Some((file, true)),
            Err(_) => None,
        },
    };
    opened.map(|(file, closing)| file.and_then(pipe::Receiver::from_file).map(|f| (Box::new(f) as Input, closing)))
}

/// Opens a FIFO the blocking way (an open for reading waits for a writer and vice versa, which
/// is how both ends find each other), on a blocking thread.
async fn open_fifo(path: &Path, write: bool) -> std::io::Result<File> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || OpenOptions::new().read(!write).write(write).open(path))
        .await
        .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use protocols::agent::{ReadStreamResponse, WriteStreamResponse};
    use protocols::agent_ttrpc::{create_agent_service, AgentService};
    use protocols::empty::Empty;
    use protocols::ttrpc::asynchronous::{Server, TtrpcContext};
    use protocols::ttrpc::{self, Code};
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::agent_dial::{connect, AgentAddr};

    /// A fake agent: stdout is `chunks` then Kata's EOF error; stdin is recorded.
    struct Fake {
        chunks: Mutex<Vec<Vec<u8>>>,
        stdin: Arc<Mutex<Vec<u8>>>,
        closed: Arc<Mutex<bool>>,
    }

    #[async_trait]
    impl AgentService for Fake {
        async fn read_stdout(&self, _: &TtrpcContext, req: ReadStreamRequest) -> ttrpc::Result<ReadStreamResponse> {
            assert_eq!((req.container_id.as_str(), req.exec_id.as_str()), ("c1", "c1"));
            let mut chunks = self.chunks.lock().unwrap();
            if chunks.is_empty() {
                return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(Code::INTERNAL, "read meet eof")));
            }
            Ok(ReadStreamResponse { data: chunks.remove(0), ..Default::default() })
        }

        async fn write_stdin(&self, _: &TtrpcContext, req: WriteStreamRequest) -> ttrpc::Result<WriteStreamResponse> {
            self.stdin.lock().unwrap().extend_from_slice(&req.data);
            Ok(WriteStreamResponse { len: u32::try_from(req.data.len()).unwrap(), ..Default::default() })
        }

        async fn close_stdin(&self, _: &TtrpcContext, _: CloseStdinRequest) -> ttrpc::Result<Empty> {
            *self.closed.lock().unwrap() = true;
            Ok(Empty::new())
        }
    }

    /// Serves `fake` on a socket in `dir` and connects to it.
    async fn serve(dir: &Path, fake: Fake) -> (Server, crate::agent_dial::AgentConn) {
        let sock = dir.join("agent.sock");
        let mut server = Server::new()
            .bind(&format!("unix://{}", sock.display()))
            .unwrap()
            .register_service(create_agent_service(Arc::new(fake)));
        server.start().await.unwrap();
        let conn = connect(&AgentAddr::Unix { path: sock }, Duration::from_secs(5)).await.unwrap();
        (server, conn)
    }

    fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    #[tokio::test]
    async fn output_is_delivered_whole_and_stdin_eof_becomes_close_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let stdin = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(Mutex::new(false));
        let big = vec![b'x'; 200_000];
        let fake = Fake {
            chunks: Mutex::new(vec![b"hello ".to_vec(), big.clone(), b"bye\n".to_vec()]),
            stdin: stdin.clone(),
            closed: closed.clone(),
        };
        let (mut server, conn) = serve(dir.path(), fake).await;
        let log = Logger::root(slog::Discard, slog::o!());

        // stdout: containerd's reader opens the FIFO first (without waiting for a writer, as
        // containerd's cio does); the pump ends only after the EOF error.
        let out_fifo = dir.path().join("stdout");
        mkfifo(&out_fifo);
        let early_reader = pipe::OpenOptions::new().open_receiver(&out_fifo).unwrap();
        let pump = pump_output(
            conn.agent(),
            "c1".into(),
            "c1".into(),
            Output::Stdout,
            Endpoint::Fifo(out_fifo.clone()),
            log.clone(),
        );
        let mut reader = pipe::Receiver::from_file(open_fifo(&out_fifo, false).await.unwrap()).unwrap();
        drop(early_reader);
        let mut got = Vec::new();
        let (read, pumped) = tokio::join!(reader.read_to_end(&mut got), pump);
        read.unwrap();
        pumped.unwrap();
        let mut want = b"hello ".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"bye\n");
        assert_eq!(got.len(), want.len());
        assert!(got == want, "output arrives whole and in order");

        // stdin: bytes are relayed, the writer's close becomes CloseStdin.
        let in_fifo = dir.path().join("stdin");
        mkfifo(&in_fifo);
        let close = Arc::new(Notify::new());
        let pump = pump_stdin(conn.agent(), "c1".into(), "c1".into(), Endpoint::Fifo(in_fifo.clone()), close, log);
        let mut writer = pipe::Sender::from_file(open_fifo(&in_fifo, true).await.unwrap()).unwrap();
        writer.write_all(b"hi\n").await.unwrap();
        drop(writer);
        tokio::time::timeout(Duration::from_secs(5), pump).await.unwrap().unwrap();
        assert_eq!(stdin.lock().unwrap().as_slice(), b"hi\n");
        assert!(*closed.lock().unwrap(), "CloseStdin was sent");

        // CloseIO that overtakes the FIFO's open (ctr writes, closes and calls CloseIO at
        // once): what the writer left is still relayed.
        stdin.lock().unwrap().clear();
        *closed.lock().unwrap() = false;
        let late_fifo = dir.path().join("stdin-late");
        mkfifo(&late_fifo);
        let close = Arc::new(Notify::new());
        close.notify_one();
        let pump = pump_stdin(
            conn.agent(),
            "c1".into(),
            "c1".into(),
            Endpoint::Fifo(late_fifo.clone()),
            close,
            Logger::root(slog::Discard, slog::o!()),
        );
        let mut writer = pipe::Sender::from_file(open_fifo(&late_fifo, true).await.unwrap()).unwrap();
        writer.write_all(b"late\n").await.unwrap();
        drop(writer);
        tokio::time::timeout(Duration::from_secs(5), pump).await.unwrap().unwrap();
        assert_eq!(stdin.lock().unwrap().as_slice(), b"late\n");
        assert!(*closed.lock().unwrap(), "CloseStdin was sent");
        server.shutdown().await.unwrap();
    }

    /// A stream that never writes still opens and closes the FIFO: its reader sees EOF (CRI's
    /// ExecSync waits for it on stderr of a process that wrote only to stdout).
    #[tokio::test]
    async fn a_silent_stream_ends_its_reader() {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake { chunks: Mutex::default(), stdin: Arc::default(), closed: Arc::default() };
        let (mut server, conn) = serve(dir.path(), fake).await;
        let fifo = dir.path().join("stderr");
        mkfifo(&fifo);
        let reader = pipe::OpenOptions::new().open_receiver(&fifo).unwrap();
        let log = Logger::root(slog::Discard, slog::o!());
        let pump = pump_output(conn.agent(), "c1".into(), "c1".into(), Output::Stderr, Endpoint::Fifo(fifo), log);
        tokio::time::timeout(Duration::from_secs(5), pump).await.unwrap().unwrap();
        // A FIFO's reader polls POLLHUP only once a writer came and went, not before any came.
        let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap();
        let events = fds[0].revents().unwrap_or(PollFlags::empty());
        assert!(events.contains(PollFlags::POLLHUP), "the reader of a silent stream saw no writer come and go");
        server.shutdown().await.unwrap();
    }

    /// `ctr run -d` exits right after Start: the pump finds no reader and must still drain
    /// the agent to its end, or the process blocks on a full pipe and its exit waits.
    #[tokio::test]
    async fn output_without_a_reader_is_drained_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = Mutex::new(vec![vec![b'x'; 100_000], vec![b'y'; 100_000], b"last\n".to_vec()]);
        let fake = Fake { chunks, stdin: Arc::default(), closed: Arc::default() };
        let (mut server, conn) = serve(dir.path(), fake).await;
        let fifo = dir.path().join("stdout");
        mkfifo(&fifo);
        let log = Logger::root(slog::Discard, slog::o!());
        let pump = pump_output(conn.agent(), "c1".into(), "c1".into(), Output::Stdout, Endpoint::Fifo(fifo), log);
        tokio::time::timeout(Duration::from_secs(5), pump)
            .await
            .expect("a pump without a reader still reaches the end of the stream")
            .unwrap();
        server.shutdown().await.unwrap();
    }
}
