//! The monitor's control socket, `<root>/<id>/monitor.sock`: how the other `wisp-runtime`
//! commands reach the container a monitor holds. One JSON request per connection, one JSON
//! answer; the socket is the monitor's own, so a command that finds no monitor there knows
//! the container is not running.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The socket's name in the container's directory.
pub const SOCKET: &str = "monitor.sock";
/// The most a request or answer may hold.
const MAX_MESSAGE: u64 = 1 << 20;
/// How long a command waits for the monitor's answer (a start boots nothing: the VM runs).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What a command asks of the monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Start the created container.
    Start,
    /// Send `signal` to the container's init, or to all its processes.
    Kill { signal: i32, all: bool },
    /// Freeze the container.
    Pause,
    /// Thaw it.
    Resume,
    /// Stop the VM and exit (delete of a created or a stopped container, `delete --force`).
    Shutdown,
}

/// The monitor's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Done.
    Ok,
    /// Refused or failed, with why.
    Error(String),
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

/// Sends `request` to the monitor of the container in `dir` and returns its answer.
pub fn call(dir: &Path, request: &Request) -> Result<Answer, ControlError> {
    let path = dir.join(SOCKET);
    let unreachable = |source| ControlError::Unreachable { path: path.clone(), source };
    let (_dir_fd, short) = short_path(dir).map_err(unreachable)?;
    let mut stream = UnixStream::connect(&short).map_err(unreachable)?;
    let io = |source| ControlError::Io { path: path.clone(), source };
    stream.set_read_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
    let bytes = serde_json::to_vec(request).map_err(|source| ControlError::Garbled { path: path.clone(), source })?;
    stream.write_all(&bytes).map_err(io)?;
    stream.shutdown(std::net::Shutdown::Write).map_err(io)?;
    let mut answer = Vec::new();
    stream.take(MAX_MESSAGE).read_to_end(&mut answer).map_err(io)?;
    serde_json::from_slice(&answer).map_err(|source| ControlError::Garbled { path, source })
}

/// Reads one request from a connection (`None` if it is not one).
pub async fn read_request(stream: &mut tokio::net::UnixStream) -> Option<Request> {
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(CALL_TIMEOUT, (&mut *stream).take(MAX_MESSAGE).read_to_end(&mut bytes)).await;
    match read {
        Ok(Ok(_)) => serde_json::from_slice(&bytes).ok(),
        _ => None,
    }
}

/// Writes `answer` on a connection and closes it (a caller that went away is not an error).
pub async fn write_answer(mut stream: tokio::net::UnixStream, answer: &Answer) {
    if let Ok(bytes) = serde_json::to_vec(answer) {
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await;
    }
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
            let request = read_request(&mut stream).await;
            write_answer(stream, &Answer::Error("refused".into())).await;
            request
        });
        let path = dir.clone();
        let answer = tokio::task::spawn_blocking(move || call(&path, &Request::Kill { signal: 15, all: true }))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, Answer::Error("refused".into()));
        assert_eq!(server.await.unwrap(), Some(Request::Kill { signal: 15, all: true }));
    }

    #[test]
    fn no_monitor_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(call(dir.path(), &Request::Start), Err(ControlError::Unreachable { .. })));
    }
}
