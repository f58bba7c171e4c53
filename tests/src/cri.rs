//! A CRI client for the pod tests: kubelet's side of the Container Runtime Interface, spoken
//! to a private containerd's CRI plugin over its unix socket.
//!
//! No `crictl` and no registry exist on the build machine, so the tests are their own CRI
//! client: the `k8s-cri` crate's generated `runtime.v1` clients (containerd 1.6 serves v1
//! and v1alpha2 on the same socket; the v1 messages this build sends are the cri-api 0.25
//! ones plus fields 1.6 ignores) on a tonic channel whose connector dials the socket. The
//! calls are async; [`Cri::block_on`] runs them on the client's own single-threaded runtime so
//! the tests stay plain `#[test]` functions.

use std::future::Future;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
pub use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Why the CRI client could not connect.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The client's runtime could not be built.
    #[error("cannot build the CRI client's runtime")]
    Runtime(#[source] std::io::Error),
    /// containerd's socket did not accept the gRPC connection.
    #[error("cannot connect to the CRI socket {}", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
}

/// A connection to a CRI runtime (see the module docs).
#[derive(Debug)]
pub struct Cri {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
}

impl Cri {
    /// Connects to the CRI socket `socket` (containerd's gRPC address).
    pub fn connect(socket: &Path) -> Result<Self, CriError> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(CriError::Runtime)?;
        let channel = runtime
            .block_on(unix_channel(socket))
            .map_err(|source| CriError::Connect { socket: socket.to_owned(), source })?;
        Ok(Self { runtime, channel })
    }

    /// The RuntimeService client (pods, containers, exec).
    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    /// The ImageService client.
    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// Runs `call` (a client call) to completion.
    pub fn block_on<F: Future>(&self, call: F) -> F::Output {
        self.runtime.block_on(call)
    }
}

/// A gRPC channel to the server on the unix socket `socket`.
pub async fn unix_channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = socket.to_owned();
    // The URI is required by tonic and ignored by the connector.
    let endpoint = Endpoint::from_static("http://[::]:50051");
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
}

/// What a streamed exec printed, and its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamedExec {
    /// Bytes of the stdout channel.
    pub stdout: Vec<u8>,
    /// Bytes of the stderr channel.
    pub stderr: Vec<u8>,
    /// The exit code the error channel reported (0 for `Success`).
    pub exit_code: i32,
}

/// Why a streamed exec failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The URL from Exec is not `http://HOST:PORT/PATH`.
    #[error("unexpected streaming URL {0:?}")]
    Url(String),
    /// Talking to the streaming server failed.
    #[error("streaming server I/O")]
    Io(#[from] std::io::Error),
    /// The server refused the WebSocket upgrade.
    #[error("the streaming server refused the upgrade: {0}")]
    Refused(String),
    /// The error channel said something other than success or an exit code.
    #[error("exec failed: {0}")]
    Failed(String),
}

/// Runs the exec behind `url` (an ExecResponse's, stdin off) through containerd's streaming
/// server as kubelet's clients do, over a WebSocket with Kubernetes' `v4.channel.k8s.io`
/// protocol: every binary message starts with its channel (1 stdout, 2 stderr, 3 error); the
/// error channel ends with a `metav1.Status` carrying the exit code. The WebSocket client is
/// the minimum this needs (one upgrade, unmasked server frames, no writes but the close).
pub fn stream_exec(url: &str, timeout: std::time::Duration) -> Result<StreamedExec, StreamError> {
    use std::io::{BufRead, BufReader, Read, Write};
    let rest = url.strip_prefix("http://").ok_or_else(|| StreamError::Url(url.to_owned()))?;
    let (host, path) = rest.split_once('/').ok_or_else(|| StreamError::Url(url.to_owned()))?;
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: d2lzcC1jcmktdGVzdHMtMQ==\r\n\
         Sec-WebSocket-Protocol: v4.channel.k8s.io\r\nOrigin: http://{host}\r\n\r\n"
    )?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    if !status.starts_with("HTTP/1.1 101") {
        let mut body = String::new();
        let _ = reader.read_to_string(&mut body);
        return Err(StreamError::Refused(format!("{}{body}", status.trim_end())));
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    let (mut stdout, mut stderr, mut error) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        let mut head = [0u8; 2];
        match reader.read_exact(&mut head) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(err) => return Err(err.into()),
        }
        let opcode = head[0] & 0x0f;
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                reader.read_exact(&mut b)?;
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                reader.read_exact(&mut b)?;
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut mask = [0u8; 4];
        if head[1] & 0x80 != 0 {
            reader.read_exact(&mut mask)?;
        }
        let mut payload = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        reader.read_exact(&mut payload)?;
        if head[1] & 0x80 != 0 {
            payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= mask[i % 4]);
        }
        match opcode {
            // Close: answer with an empty masked close frame and stop.
            0x8 => {
                let _ = stream.write_all(&[0x88, 0x80, 0, 0, 0, 0]);
                break;
            }
            // Continuation, text or binary: channel byte + data.
            0x0..=0x2 => match payload.split_first() {
                Some((1, data)) => stdout.extend_from_slice(data),
                Some((2, data)) => stderr.extend_from_slice(data),
                Some((3, data)) => error.extend_from_slice(data),
                _ => {}
            },
            _ => {}
        }
    }
    let error = String::from_utf8_lossy(&error).into_owned();
    let exit_code = exit_code_of(&error).ok_or(StreamError::Failed(error))?;
    Ok(StreamedExec { stdout, stderr, exit_code })
}

/// The exit code in the error channel's `metav1.Status` (none written, or `Success`: 0).
fn exit_code_of(status: &str) -> Option<i32> {
    if status.trim().is_empty() {
        return Some(0);
    }
    let value: serde_json::Value = serde_json::from_str(status).ok()?;
    if value["status"] == "Success" {
        return Some(0);
    }
    value["details"]["causes"]
        .as_array()?
        .iter()
        .find(|cause| cause["reason"] == "ExitCode")
        .and_then(|cause| cause["message"].as_str())
        .and_then(|code| code.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_come_from_the_status() {
        assert_eq!(exit_code_of(""), Some(0));
        assert_eq!(exit_code_of(r#"{"metadata":{},"status":"Success"}"#), Some(0));
        let failed = r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(exit_code_of(failed), Some(3));
        assert_eq!(exit_code_of(r#"{"status":"Failure","message":"no such container"}"#), None);
    }
}
