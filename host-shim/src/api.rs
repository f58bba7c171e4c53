//! The shim's side API: what the `wisp` CLI asks a running sandbox that containerd's task API
//! has no words for (direct-volume stats and resize, block-volume hot-plug).
//!
//! One unix socket per sandbox, `api.sock` in its state directory (so it goes with the
//! sandbox), one JSON request per line, one JSON [`Response`] line back. Only root can reach
//! it: the state directory is root's. A request line is at most [`MAX_REQUEST_BYTES`]: a
//! longer one is refused with an error line and the connection closed, so a client cannot make
//! the shim buffer without end.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

/// The socket's name in the sandbox state directory.
pub const SOCKET_NAME: &str = "api.sock";
/// How long the CLI waits for an answer (hot-plug waits for the guest).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest request line the shim reads (the largest real one is a few hundred bytes).
pub const MAX_REQUEST_BYTES: u64 = 64 << 10;
/// How much of a bad request an error quotes.
const QUOTED_BYTES: usize = 200;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// GetVolumeStats of the direct volume `volume` in the guest.
    VolumeStats {
        /// The volume path.
        volume: String,
    },
    /// Grow the direct volume's disk and its ext4 file system to `size` bytes.
    VolumeResize {
        /// The volume path.
        volume: String,
        /// The new size in bytes.
        size: u64,
    },
    /// Plug a disk into running container `container` as `device_path`, mounted at `mount`
    /// (if not empty) with `fstype` and `options`.
    BlockHotPlug {
        /// The container.
        container: String,
        /// A raw image, a host block device, or a vhost-user-blk socket (absolute).
        block_volume: String,
        /// The node in the container (`/dev/xvdb`).
        device_path: String,
        /// Where to mount it in the container; empty: no mount.
        #[serde(default)]
        mount: String,
        /// The file system type for `mount`.
        #[serde(default)]
        fstype: String,
        /// Mount options.
        #[serde(default)]
        options: Vec<String>,
    },
    /// Reverse a [`Request::BlockHotPlug`].
    BlockHotUnplug {
        /// The container.
        container: String,
        /// The node given at hot-plug.
        device_path: String,
    },
}

/// What a request returns when it works (the `data` of its [`Response`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// [`Request::VolumeStats`]: the agent's usage and condition, as kata-ctl prints them.
    VolumeStats(Value),
    /// [`Request::VolumeResize`] done.
    Resized {
        /// The volume path.
        volume: String,
        /// Its size in bytes.
        size: u64,
    },
    /// [`Request::BlockHotPlug`] done.
    Plugged {
        /// The VM's device id.
        id: String,
        /// Where the guest found it.
        pci_path: String,
        /// The node in the container.
        device_path: String,
    },
    /// [`Request::BlockHotUnplug`] done.
    Unplugged {
        /// The VM's device id.
        id: String,
    },
}

/// The answer: `error` empty when it worked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Why it failed; empty on success.
    #[serde(default)]
    pub error: String,
    /// What it returned.
    #[serde(default)]
    pub data: Value,
}

impl Response {
    /// A success carrying `data`.
    pub fn ok(data: Value) -> Self {
        Self { error: String::new(), data }
    }

    /// A failure.
    pub fn fail(error: impl Into<String>) -> Self {
        Self { error: error.into(), data: Value::Null }
    }

    /// The answer to a handled request: its reply, or its error with the cause chain.
    pub fn of(result: Result<Reply, crate::error::Error>) -> Self {
        match result {
            Ok(reply) => match serde_json::to_value(reply) {
                Ok(data) => Self::ok(data),
                Err(err) => Self::fail(format!("cannot encode the reply: {err}")),
            },
            Err(err) => Self::fail(crate::error_chain(&err)),
        }
    }
}

/// What the CLI can run into.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be reached.
    #[error("cannot reach the shim at {path} (is the sandbox running?)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("talking to the shim at {path}: {why}")]
    Exchange {
        /// The socket.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The shim answered with an error.
    #[error("{0}")]
    Failed(String),
}

/// The API socket of the sandbox whose state directory is `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_NAME)
}

/// Sends `request` to the shim at `socket` and returns its data.
pub fn call(socket: &Path, request: &Request) -> Result<Value, ApiError> {
    let stream = UnixStream::connect(socket).map_err(|source| ApiError::Connect { path: socket.to_owned(), source })?;
    let fail = |why: String| ApiError::Exchange { path: socket.to_owned(), why };
    stream.set_read_timeout(Some(CALL_TIMEOUT)).map_err(|e| fail(e.to_string()))?;
    let mut line = serde_json::to_string(request).map_err(|e| fail(e.to_string()))?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(|e| fail(e.to_string()))?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(|e| fail(e.to_string()))?;
    let response: Response =
        serde_json::from_str(answer.trim_end()).map_err(|e| fail(format!("bad answer {answer:?}: {e}")))?;
    if response.error.is_empty() {
        Ok(response.data)
    } else {
        Err(ApiError::Failed(response.error))
    }
}

/// Serves `listener` until it fails: each connection's request lines go to `handler`.
pub async fn serve<H, F>(listener: UnixListener, handler: Arc<H>)
where
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Response> + Send,
{
    while let Ok((stream, _)) = listener.accept().await {
        let handler = handler.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut reader = tokio::io::BufReader::new(read);
            loop {
                let (response, go_on) = match read_request(&mut reader).await {
                    Ok(None) => return,
                    Ok(Some(line)) => match serde_json::from_str::<Request>(&line) {
                        Ok(request) => (handler(request).await, true),
                        Err(err) => (Response::fail(format!("bad request {}: {err}", quote(&line))), true),
                    },
                    Err(refusal) => (Response::fail(refusal), false),
                };
                let mut out = serde_json::to_string(&response).unwrap_or_default();
                out.push('\n');
                if write.write_all(out.as_bytes()).await.is_err() || !go_on {
                    return;
                }
            }
        });
    }
}

/// The next request line (without its newline), `None` at the end of the connection, or why
/// it is refused: longer than [`MAX_REQUEST_BYTES`], or not UTF-8. Reads at most
/// [`MAX_REQUEST_BYTES`] + 1 bytes.
async fn read_request<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Option<String>, String> {
    let mut line = Vec::new();
    let read = reader.take(MAX_REQUEST_BYTES + 1).read_until(b'\n', &mut line).await;
    match read {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(err) => return Err(format!("cannot read the request: {err}")),
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() as u64 > MAX_REQUEST_BYTES {
        return Err(format!(
            "request refused: longer than {MAX_REQUEST_BYTES} bytes (one JSON request per line is expected)"
        ));
    }
    String::from_utf8(line).map(Some).map_err(|_| "request refused: not UTF-8".to_owned())
}

/// `text` for an error message: debug-quoted, cut after [`QUOTED_BYTES`].
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTED_BYTES) {
        Some((at, _)) => format!("{:?}... ({} bytes)", &text[..at], text.len()),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_request_round_trips_and_errors_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let socket = socket_path(dir.path());
        let listener = UnixListener::bind(&socket).unwrap();
        let handler = Arc::new(|request: Request| async move {
            match request {
                Request::VolumeStats { volume } => Response::ok(serde_json::json!({ "volume": volume })),
                _ => Response::fail("no such volume"),
            }
        });
        tokio::spawn(serve(listener, handler));
        let path = socket.clone();
        let (stats, resize) = tokio::task::spawn_blocking(move || {
            (
                call(&path, &Request::VolumeStats { volume: "/v/1".into() }),
                call(&path, &Request::VolumeResize { volume: "/v/1".into(), size: 1 }),
            )
        })
        .await
        .unwrap();
        assert_eq!(stats.unwrap()["volume"], "/v/1");
        assert_eq!(resize.unwrap_err().to_string(), "no such volume");
        assert_eq!(
            serde_json::to_value(Request::VolumeResize { volume: "/v".into(), size: 9 }).unwrap(),
            serde_json::json!({"op": "volume-resize", "volume": "/v", "size": 9})
        );
        let err = call(&dir.path().join("missing.sock"), &Request::VolumeStats { volume: "/v".into() }).unwrap_err();
        assert!(err.to_string().contains("is the sandbox running?"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_oversized_request_is_refused_and_the_shim_keeps_serving() {
        use tokio::io::AsyncWriteExt as _;
        let dir = tempfile::tempdir().unwrap();
        let socket = socket_path(dir.path());
        let listener = UnixListener::bind(&socket).unwrap();
        let handler = Arc::new(|request: Request| async move { Response::ok(serde_json::to_value(request).unwrap()) });
        tokio::spawn(serve(listener, handler));

        // 16 MiB with no newline: refused after the bound, not buffered whole.
        let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
        let (read, mut write) = stream.split();
        let flood = async {
            let block = vec![b'x'; 1 << 20];
            for _ in 0..16 {
                if write.write_all(&block).await.is_err() {
                    return;
                }
            }
        };
        let answer = async {
            let mut answer = String::new();
            tokio::io::BufReader::new(read).read_line(&mut answer).await.unwrap();
            answer
        };
        let ((), answer) = tokio::join!(flood, answer);
        let response: Response = serde_json::from_str(&answer).unwrap();
        assert!(response.error.contains("longer than 65536 bytes"), "{answer}");
        drop(stream);

        // A long but bounded bad line is quoted only in part.
        let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
        let mut bad = "y".repeat(10_000);
        bad.push('\n');
        stream.write_all(bad.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tokio::io::BufReader::new(&mut stream).read_line(&mut answer).await.unwrap();
        assert!(answer.contains("bad request") && answer.len() < 1000, "{answer}");
        drop(stream);

        // The shim still answers.
        let path = socket.clone();
        let data = tokio::task::spawn_blocking(move || call(&path, &Request::VolumeStats { volume: "/v/2".into() }))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(data["volume"], "/v/2");
    }
}
