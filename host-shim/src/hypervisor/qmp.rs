//! A small QMP client: connect, `qmp_capabilities`, `execute`, `quit`.
//!
//! QMP is line-delimited JSON over QEMU's `-qmp unix:...` socket: QEMU greets with `{"QMP":
//! ...}`, the client must send `qmp_capabilities` before anything else, then each command gets
//! one `{"return": ...}` or `{"error": {"class", "desc"}}`; asynchronous `{"event": ...}`
//! lines may arrive in between and are skipped here. The shim keeps the socket for hot-plug
//! (`blockdev-add`, `device_add` onto a free root port) and uses it for a clean `quit`.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// How long one QMP exchange may take.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// What can go wrong talking QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket failed.
    #[error("QMP socket {path}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU closed the connection.
    #[error("QMP socket {path} closed by QEMU")]
    Closed {
        /// The socket.
        path: PathBuf,
    },
    /// A line was not the JSON expected.
    #[error("QMP socket {path}: unexpected reply {line:?}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// The line.
        line: String,
    },
    /// QEMU answered with an error.
    #[error("QMP {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class.
        class: String,
        /// QEMU's message.
        desc: String,
    },
    /// A migration (a template's save or a clone's restore) failed or did not end in time.
    #[error("migration failed: {0}")]
    Migration(String),
    /// No answer in time.
    #[error("QMP socket {path}: no answer within {timeout:?}")]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// How long we waited.
        timeout: Duration,
    },
}

/// A QMP session in command mode.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects, reads the greeting and negotiates capabilities.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        let stream =
            UnixStream::connect(path).await.map_err(|source| QmpError::Io { path: path.to_owned(), source })?;
        let (read, writer) = stream.into_split();
        let mut qmp = Self { path: path.to_owned(), reader: BufReader::new(read), writer };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol { path: qmp.path.clone(), line: greeting.to_string() });
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments` and returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let line = request_line(command, arguments);
        let io = |source| QmpError::Io { path: self.path.clone(), source };
        self.writer.write_all(line.as_bytes()).await.map_err(io)?;
        self.answer(command).await
    }

    /// Hands QEMU a descriptor it will know as `name` (`getfd`: the descriptor travels with
    /// the command as SCM_RIGHTS), for a later `fd:NAME` argument.
    pub async fn send_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), QmpError> {
        let line = request_line("getfd", Some(json!({ "fdname": name })));
        let io = |source| QmpError::Io { path: self.path.clone(), source };
        let socket = self.writer.as_ref();
        let fds = [fd.as_raw_fd()];
        loop {
            socket.writable().await.map_err(io)?;
            let sent = socket.try_io(tokio::io::Interest::WRITABLE, || {
                let iov = [std::io::IoSlice::new(line.as_bytes())];
                let cmsg = [ControlMessage::ScmRights(&fds)];
                sendmsg::<()>(socket.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(std::io::Error::from)
            });
            match sent {
                // A QMP command is far smaller than a socket buffer: all of it or nothing.
                Ok(n) if n == line.len() => break,
                Ok(n) => return Err(io(std::io::Error::other(format!("getfd sent {n} of {} bytes", line.len())))),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(io(err)),
            }
        }
        self.answer("getfd").await.map(drop)
    }

    /// Leaves shared RAM (a template's RAM file) out of migrations (`x-ignore-shared`): set on
    /// both ends, before `migrate` and before `migrate-incoming`.
    pub async fn ignore_shared_memory(&mut self) -> Result<(), QmpError> {
        let capabilities = json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] });
        self.execute("migrate-set-capabilities", Some(capabilities)).await.map(drop)
    }

    /// Polls `query-migrate` until the migration completed, failed, or `timeout` passed.
    pub async fn wait_migration(&mut self, timeout: Duration) -> Result<(), QmpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.execute("query-migrate", None).await?;
            match status.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed" | "cancelled") => {
                    let why = status.get("error-desc").and_then(Value::as_str).unwrap_or("no reason given");
                    return Err(QmpError::Migration(why.to_owned()));
                }
                _ if tokio::time::Instant::now() > deadline => {
                    return Err(QmpError::Migration(format!("not done within {timeout:?}")));
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    /// Reads the answer to `command`, skipping events.
    async fn answer(&mut self, command: &str) -> Result<Value, QmpError> {
        loop {
            let message = self.read_message().await?;
            if message.get("event").is_some() {
                continue;
            }
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                let text = |key: &str| error.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
                return Err(QmpError::Command {
                    command: command.to_owned(),
                    class: text("class"),
                    desc: text("desc"),
                });
            }
            return Err(QmpError::Protocol { path: self.path.clone(), line: message.to_string() });
        }
    }

    /// Asks QEMU to exit. QEMU may close the socket before or after answering; both are fine.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let read = tokio::time::timeout(QMP_TIMEOUT, self.reader.read_line(&mut line))
            .await
            .map_err(|_| QmpError::Timeout { path: self.path.clone(), timeout: QMP_TIMEOUT })?
            .map_err(|source| QmpError::Io { path: self.path.clone(), source })?;
        if read == 0 {
            return Err(QmpError::Closed { path: self.path.clone() });
        }
        serde_json::from_str(line.trim_end()).map_err(|_| QmpError::Protocol { path: self.path.clone(), line })
    }
}

fn request_line(command: &str, arguments: Option<Value>) -> String {
    let mut request = json!({ "execute": command });
    if let Some(arguments) = arguments {
        request["arguments"] = arguments;
    }
    let mut line = request.to_string();
    line.push('\n');
    line
}

/// A scripted QEMU on the QMP socket, for the tests of what speaks QMP.
#[cfg(test)]
pub(crate) mod fake {
    use serde_json::Value;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    /// A fake QEMU: greets, then answers each request line with the next scripted reply lines,
    /// and records what it received.
    pub(crate) async fn fake_qemu(listener: UnixListener, script: Vec<Vec<&'static str>>) -> Vec<Value> {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        write.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n").await.unwrap();
        let mut seen = Vec::new();
        for replies in script {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap() == 0 {
                break;
            }
            seen.push(serde_json::from_str(&line).unwrap());
            for reply in replies {
                write.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixListener;

    use super::fake::fake_qemu;
    use super::*;

    #[tokio::test]
    async fn dialogue_capabilities_execute_error_quit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(fake_qemu(
            listener,
            vec![
                vec![r#"{"return": {}}"#],
                vec![
                    r#"{"event": "RESUME", "timestamp": {}}"#,
                    r#"{"return": {"status": "running", "running": true}}"#,
                ],
                vec![r#"{"error": {"class": "GenericError", "desc": "Bus 'rp9' not found"}}"#],
                vec![r#"{"return": {}}"#],
            ],
        ));
        let mut qmp = Qmp::connect(&path).await.unwrap();
        let status = qmp.execute("query-status", None).await.unwrap();
        assert_eq!(status["status"], "running");
        let err = qmp
            .execute("device_add", Some(json!({"driver": "virtio-blk-pci", "drive": "d1", "bus": "rp9"})))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "QMP device_add failed: GenericError: Bus 'rp9' not found");
        qmp.quit().await.unwrap();
        let seen = server.await.unwrap();
        assert_eq!(seen[0], json!({"execute": "qmp_capabilities"}));
        assert_eq!(seen[1], json!({"execute": "query-status"}));
        assert_eq!(seen[2]["arguments"]["bus"], "rp9");
        assert_eq!(seen[3], json!({"execute": "quit"}));
    }

    #[tokio::test]
    async fn quit_tolerates_qemu_closing_first_and_bad_greeting_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(fake_qemu(listener, vec![vec![r#"{"return": {}}"#], vec![]]));
        let mut qmp = Qmp::connect(&path).await.unwrap();
        qmp.quit().await.unwrap();
        drop(server.await.unwrap());

        let path2 = dir.path().join("bad.sock");
        let listener = UnixListener::bind(&path2).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(b"hello\n").await.unwrap();
        });
        let err = Qmp::connect(&path2).await.unwrap_err();
        assert!(matches!(err, QmpError::Protocol { .. }), "{err:?}");
    }
}
