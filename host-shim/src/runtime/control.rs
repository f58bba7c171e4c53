//! The monitor's control socket, `<root>/<id>/monitor.sock`: how the other `wisp-runtime`
//! commands reach the container a monitor holds. A request is one JSON line, sent with the
//! descriptors it hands over (an exec's stdio, `SCM_RIGHTS`); the answer is one JSON line, and
//! for an exec a second one when the process exited. The socket is the monitor's own, so a
//! command that finds no monitor there knows the container is not running.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};

/// The socket's name in the container's directory.
pub const SOCKET: &str = "monitor.sock";
/// The most a request or answer may hold.
const MAX_MESSAGE: u64 = 1 << 20;
/// The most descriptors a request hands over (an exec's stdin, stdout and stderr).
const MAX_FDS: usize = 3;
/// How long a command waits for the monitor's answer (a start boots nothing: the VM runs).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What a command asks of the monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Start the created container.
    Start,
    /// Send `signal` to the container's init (`exec_id` empty), to one of its execs, or
    /// with `all` (and no `exec_id`) to every process of the container.
    Kill {
        signal: i32,
        all: bool,
        #[serde(default)]
        exec_id: String,
    },
    /// Freeze the container.
    Pause,
    /// Thaw it.
    Resume,
    /// Stop the VM and exit (delete of a created or a stopped container, `delete --force`).
    Shutdown,
    /// Start `process` (an OCI process) in the container as `exec_id`. Its stdio are the
    /// descriptors sent with the request: stdin, stdout and stderr, or one terminal for all
    /// three when `process.terminal`. The connection stays open: a second answer line brings
    /// the exit status, and a caller that closes it first gets the process killed.
    Exec { exec_id: String, process: serde_json::Value },
    /// The terminal of the init (`exec_id` empty) or of an exec changed size.
    Resize { exec_id: String, rows: u16, cols: u16 },
    /// The host processes of the container (its VM).
    Pids,
    /// Apply `resources` (OCI `LinuxResources`) to the container.
    Update { resources: serde_json::Value },
}

/// The monitor's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Done.
    Ok,
    /// Refused or failed, with why.
    Error(String),
    /// The host pids of `Pids`.
    Pids(Vec<u32>),
    /// An exec's process exited with this status (128+N for signal N).
    Exited(i32),
}

/// Failures to reach a monitor.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no monitor answers on {}", path.display())]
    Unreachable { path: PathBuf, source: std::io::Error },
    #[error("the monitor's answer on {} is unreadable", path.display())]
    Garbled { path: PathBuf, source: serde_json::Error },
    #[error("cannot talk to the monitor on {}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// The socket of `dir` by a path short enough for `sockaddr_un` whatever `dir`'s length
/// (Docker's runtime root and 64-character ids exceed its 108 bytes): through a descriptor of
/// the directory, valid while the returned descriptor lives.
pub fn short_path(dir: &Path) -> std::io::Result<(std::os::fd::OwnedFd, PathBuf)> {
    use std::os::fd::AsRawFd;
    let flags = nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(dir, flags, nix::sys::stat::Mode::empty()).map_err(std::io::Error::from)?;
    let path = PathBuf::from(format!("/proc/self/fd/{}/{SOCKET}", fd.as_raw_fd()));
    Ok((fd, path))
}

/// Binds the control socket of `dir`.
pub fn bind(dir: &Path) -> std::io::Result<tokio::net::UnixListener> {
    let (_dir_fd, path) = short_path(dir)?;
    tokio::net::UnixListener::bind(path)
}

/// Connects to the monitor of the container in `dir` (blocking, with [`CALL_TIMEOUT`] on
/// each read and write).
pub fn connect(dir: &Path) -> Result<UnixStream, ControlError> {
    let path = dir.join(SOCKET);
    let unreachable = |source| ControlError::Unreachable { path: path.clone(), source };
    let (_dir_fd, short) = short_path(dir).map_err(unreachable)?;
    let stream = UnixStream::connect(&short).map_err(unreachable)?;
    let io = |source| ControlError::Io { path: path.clone(), source };
    stream.set_read_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
    Ok(stream)
}

/// Sends `request` as one line on `stream`, with `fds` attached to its first bytes.
pub fn send(stream: &mut UnixStream, dir: &Path, request: &Request, fds: &[RawFd]) -> Result<(), ControlError> {
    let path = dir.join(SOCKET);
    let mut line =
        serde_json::to_vec(request).map_err(|source| ControlError::Garbled { path: path.clone(), source })?;
    line.push(b'\n');
    let io = |source| ControlError::Io { path: path.clone(), source };
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<()>(stream.as_raw_fd(), &[IoSlice::new(&line)], cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(|errno| io(errno.into()))?;
    stream.write_all(&line[sent..]).map_err(io)
}

/// Sends `request` to the monitor of the container in `dir` and returns its answer.
pub fn call(dir: &Path, request: &Request) -> Result<Answer, ControlError> {
    let path = dir.join(SOCKET);
    let mut stream = connect(dir)?;
    send(&mut stream, dir, request, &[])?;
    let io = |source| ControlError::Io { path: path.clone(), source };
    stream.shutdown(std::net::Shutdown::Write).map_err(io)?;
    let mut answer = Vec::new();
    stream.take(MAX_MESSAGE).read_to_end(&mut answer).map_err(io)?;
    parse_answer(&answer).map_err(|source| ControlError::Garbled { path, source })
}

/// One answer line (its newline optional).
pub fn parse_answer(line: &[u8]) -> Result<Answer, serde_json::Error> {
    serde_json::from_slice(line.trim_ascii())
}

/// Reads one request line from a connection and the descriptors sent with it (`None` if it
/// is not one). The descriptors are close-on-exec.
pub async fn read_request(stream: &mut tokio::net::UnixStream) -> Option<(Request, Vec<OwnedFd>)> {
    let read = async {
        let (mut bytes, fds) = recv_with_fds(stream).await.ok()?;
        while !bytes.contains(&b'\n') && (bytes.len() as u64) < MAX_MESSAGE {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await.ok()? {
                0 => break,
                n => bytes.extend_from_slice(&chunk[..n]),
            }
        }
        let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
        Some((serde_json::from_slice(line).ok()?, fds))
    };
    tokio::time::timeout(CALL_TIMEOUT, read).await.ok().flatten()
}

/// The first bytes of a connection and the descriptors that came with them.
async fn recv_with_fds(stream: &tokio::net::UnixStream) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    loop {
        stream.readable().await?;
        let received = stream.try_io(Interest::READABLE, || {
            let mut buf = vec![0u8; 4096];
            let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
                .map_err(std::io::Error::from)?;
            let mut fds = Vec::new();
            for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    // SAFETY: the kernel just installed these descriptors in this process for
                    // this message; nothing else owns them.
                    fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
            let len = msg.bytes;
            buf.truncate(len);
            Ok((buf, fds))
        });
        match received {
            Ok(received) => return Ok(received),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Writes `answer` as one line (a caller that went away is not an error).
pub async fn write_line(stream: &mut tokio::net::UnixStream, answer: &Answer) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(answer).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

/// Writes `answer` on a connection and closes it.
pub async fn write_answer(mut stream: tokio::net::UnixStream, answer: &Answer) {
    let _ = write_line(&mut stream, answer).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_and_its_answer_cross_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        // Longer than sockaddr_un holds, as Docker's are.
        let dir = dir.path().join("x".repeat(120));
        std::fs::create_dir(&dir).unwrap();
        let listener = bind(&dir).unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let request = read_request(&mut stream).await.map(|(request, _)| request);
            write_answer(stream, &Answer::Error("refused".into())).await;
            request
        });
        let path = dir.clone();
        let answer = tokio::task::spawn_blocking(move || {
            call(&path, &Request::Kill { signal: 15, all: true, exec_id: String::new() })
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(answer, Answer::Error("refused".into()));
        assert_eq!(server.await.unwrap(), Some(Request::Kill { signal: 15, all: true, exec_id: String::new() }));
    }

    #[tokio::test]
    async fn an_execs_descriptors_cross_with_its_request_and_the_connection_stays_open() {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind(dir.path()).unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let (request, fds) = read_request(&mut stream).await.unwrap();
            write_line(&mut stream, &Answer::Ok).await.unwrap();
            write_answer(stream, &Answer::Exited(7)).await;
            (request, fds)
        });
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        let path = dir.path().to_owned();
        let lines = tokio::task::spawn_blocking(move || {
            let mut stream = connect(&path).unwrap();
            let request =
                Request::Exec { exec_id: "e1".into(), process: serde_json::json!({"args": ["x".repeat(9000)]}) };
            let fd = write_end.as_raw_fd();
            send(&mut stream, &path, &request, &[fd, fd, fd]).unwrap();
            let mut answers = String::new();
            stream.read_to_string(&mut answers).unwrap();
            answers
        })
        .await
        .unwrap();
        let (request, fds) = server.await.unwrap();
        assert!(matches!(request, Request::Exec { ref exec_id, .. } if exec_id == "e1"), "{request:?}");
        assert_eq!(fds.len(), 3);
        let answers: Vec<Answer> = lines.lines().map(|l| parse_answer(l.as_bytes()).unwrap()).collect();
        assert_eq!(answers, [Answer::Ok, Answer::Exited(7)]);
        // The descriptor received is the pipe's write end.
        std::fs::File::from(fds.into_iter().next().unwrap()).write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        std::fs::File::from(read_end).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }

    #[test]
    fn no_monitor_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(call(dir.path(), &Request::Start), Err(ControlError::Unreachable { .. })));
    }
}
