//! Dialing the guest agent from the host.
//!
//! The agent serves ttrpc on one of three byte streams. Three of the four host ends are unix
//! sockets; the host kernel's vhost-vsock is dialed as AF_VSOCK directly:
//!
//! | [`AgentAddr`] | string form | what is behind it |
//! |---|---|---|
//! | [`AgentAddr::Vsock`] | `vsock:CID:PORT` | the host kernel's vhost-vsock (`/dev/vhost-vsock`): an AF_VSOCK connect to guest `CID`, port `PORT` |
//! | [`AgentAddr::HybridVsock`] | `hvsock:PATH:PORT` | vhost-device-vsock (or Firecracker): send `CONNECT PORT\n`, read `OK ...\n`, then raw bytes to guest vsock port `PORT` |
//! | [`AgentAddr::Serial`] | `serial:PATH` | QEMU's chardev behind the virtio-serial port `agent.channel.0` |
//! | [`AgentAddr::Unix`] | `unix:PATH` | an agent run outside a VM with `--listen unix:PATH` |
//!
//! Every dial retries until the guest side is ready and is bounded by a caller-given timeout: a
//! guest that never comes up is an error that names the socket, the port, how long we waited,
//! and (as its [`source`](std::error::Error::source)) the last failure seen.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use protocols::agent_ttrpc::AgentServiceClient;
use protocols::health_ttrpc::HealthClient;
use protocols::ttrpc::asynchronous::transport::Socket;
use protocols::ttrpc::asynchronous::Client;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::{sleep, timeout_at, Instant};
use tokio_vsock::{VsockAddr, VsockStream};

use crate::agent_services::Offers;

/// The vsock port the agent listens on (Kata's default).
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The longest a single hybrid vsock attempt waits for the backend's `OK` line before the
/// connection is dropped and `CONNECT` is sent again on a fresh one.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause after the first failed attempt; doubled after every further failure up to a cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// The cap once the guest itself refuses (its vsock is up, the agent is not listening yet):
/// the agent is near, and the wait after it starts listening (half the cap on average) is paid
/// by every sandbox start; at 200 ms a 1 s boot lost ~100 ms here. A refused attempt costs a
/// TCG vCPU ~0.4 ms (measured).
const GUEST_UP_MAX_BACKOFF: Duration = Duration::from_millis(40);
/// The cap while the channel cannot reach a guest at all (the backend drops the CONNECT: the
/// guest's vsock driver is not up; the socket is not there yet). Slower: a CONNECT landing
/// while the guest's driver comes up is the suspect in the rare vhost-device-vsock stalls
/// (docs/protocol.md; Kata saw a guest driver race there too), and polling fast buys nothing
/// before the guest can answer. Not slower still: the guest refuses for only 50-100 ms
/// between its driver coming up and the agent listening, and an attempt that skips that
/// phase waits out this cap.
const GUEST_DOWN_MAX_BACKOFF: Duration = Duration::from_millis(100);

/// A backend answer longer than this is not an `OK <port>` line.
const MAX_REPLY_LEN: usize = 64;

/// Failure to reach the guest agent.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// An agent address string could not be parsed.
    #[error("invalid agent address {input:?}: {reason}")]
    InvalidAddr {
        /// The string given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `connect(2)` on the unix socket failed.
    #[error("cannot connect to {}", path.display())]
    Connect {
        /// The unix socket.
        path: PathBuf,
        /// The error from `connect(2)`.
        #[source]
        source: io::Error,
    },
    /// `connect(2)` on an AF_VSOCK socket failed.
    #[error("cannot connect to guest vsock cid {cid} port {port}{}", vsock_hint(source))]
    VsockConnect {
        /// The guest's context id.
        cid: u32,
        /// The guest vsock port.
        port: u32,
        /// The error from `connect(2)`.
        #[source]
        source: io::Error,
    },
    /// Writing `CONNECT` or reading the answer failed.
    #[error("hybrid vsock handshake for port {port} on {} failed", path.display())]
    Handshake {
        /// The hybrid vsock unix socket.
        path: PathBuf,
        /// The guest vsock port.
        port: u32,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The backend closed the connection without answering: nothing listens on the guest port
    /// (yet). Retried until the dial times out.
    #[error(
        "hybrid vsock socket {} closed the connection before answering CONNECT {port} (is the guest listening yet?)",
        path.display()
    )]
    BackendClosed {
        /// The hybrid vsock unix socket.
        path: PathBuf,
        /// The guest vsock port.
        port: u32,
    },
    /// The backend kept the connection open without answering within one attempt's bound.
    #[error(
        "hybrid vsock socket {} did not answer CONNECT {port} within {} ms",
        path.display(),
        waited.as_millis()
    )]
    NoAnswer {
        /// The hybrid vsock unix socket.
        path: PathBuf,
        /// The guest vsock port.
        port: u32,
        /// How long this attempt waited.
        waited: Duration,
    },
    /// The backend answered something other than `OK ...`: a protocol mismatch, not retried.
    #[error(
        "hybrid vsock socket {} answered CONNECT {port} with {answer:?}, expected \"OK <port>\"",
        path.display()
    )]
    Rejected {
        /// The hybrid vsock unix socket.
        path: PathBuf,
        /// The guest vsock port.
        port: u32,
        /// The answer line (without its newline; lossy UTF-8, at most 64 bytes).
        answer: String,
    },
    /// The whole dial took longer than its timeout; the source is the last attempt's failure.
    #[error(
        "gave up dialing the agent at {addr} after {} ms and {attempts} attempt{}",
        waited.as_millis(),
        if *attempts == 1 { "" } else { "s" }
    )]
    Timeout {
        /// The address dialed.
        addr: AgentAddr,
        /// How long the dial took.
        waited: Duration,
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's failure.
        #[source]
        last: Box<DialError>,
    },
}

impl DialError {
    /// Whether the channel answered, though not with `OK`: a hybrid vsock backend drops a
    /// CONNECT at once while the guest's vsock driver is not up (reset), and closes it when the
    /// guest refuses it because nothing listens yet; an AF_VSOCK connect is reset or refused by
    /// the guest. Measured on a healthy boot (vhost-device-vsock, docs/protocol.md): every CONNECT
    /// is answered within milliseconds. Silence (a CONNECT held unanswered) or a socket that is
    /// not there yet says nothing.
    fn channel_answered(&self) -> bool {
        // A backend dropping the CONNECT answered too, for the guest not being up.
        let dropped = matches!(self, Self::Handshake { source, .. } if matches!(
            source.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted
        ));
        self.guest_refused() || dropped
    }

    /// Whether the guest itself refused: its vsock is up, nothing listens on the port yet.
    fn guest_refused(&self) -> bool {
        match self {
            Self::BackendClosed { .. } => true,
            Self::VsockConnect { source, .. } => {
                matches!(source.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused)
            }
            _ => false,
        }
    }

    /// Whether a later attempt may succeed: the socket or the guest side is not ready yet.
    fn is_transient(&self) -> bool {
        match self {
            Self::Connect { source, .. } | Self::Handshake { source, .. } | Self::VsockConnect { source, .. } => {
                matches!(
                    source.kind(),
                    io::ErrorKind::NotFound
                        | io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::TimedOut
                )
            }
            Self::BackendClosed { .. } | Self::NoAnswer { .. } => true,
            Self::InvalidAddr { .. } | Self::Rejected { .. } | Self::Timeout { .. } => false,
        }
    }
}

/// Where the guest agent can be reached from the host.
///
/// Parses from and displays as `vsock:CID:PORT`, `hvsock:PATH:PORT`, `serial:PATH` or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AgentAddr {
    /// A guest behind the host kernel's vhost-vsock, dialed over AF_VSOCK.
    Vsock {
        /// The guest's context id.
        cid: u32,
        /// The guest vsock port.
        port: u32,
    },
    /// A hybrid vsock unix socket (vhost-device-vsock `uds-path`, Firecracker `uds_path`) and the
    /// guest vsock port behind it.
    HybridVsock {
        /// The hybrid vsock unix socket.
        path: PathBuf,
        /// The guest vsock port.
        port: u32,
    },
    /// The unix socket of QEMU's chardev behind the agent's virtio-serial port.
    Serial {
        /// The chardev's unix socket.
        path: PathBuf,
    },
    /// An agent listening on a unix socket directly (no VM).
    Unix {
        /// The agent's unix socket.
        path: PathBuf,
    },
}

impl AgentAddr {
    /// The host unix socket this address dials (none for AF_VSOCK).
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Vsock { .. } => None,
            Self::HybridVsock { path, .. } | Self::Serial { path } | Self::Unix { path } => Some(path),
        }
    }
}

impl fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Self::HybridVsock { path, port } => write!(f, "hvsock:{}:{port}", path.display()),
            Self::Serial { path } => write!(f, "serial:{}", path.display()),
            Self::Unix { path } => write!(f, "unix:{}", path.display()),
        }
    }
}

impl FromStr for AgentAddr {
    type Err = DialError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| DialError::InvalidAddr { input: s.to_owned(), reason };
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| invalid("expected vsock:CID:PORT, hvsock:PATH:PORT, serial:PATH or unix:PATH"))?;
        let path = |p: &str| {
            if p.is_empty() {
                Err(invalid("empty socket path"))
            } else {
                Ok(PathBuf::from(p))
            }
        };
        match scheme {
            "vsock" => {
                let (cid, port) =
                    rest.split_once(':').ok_or_else(|| invalid("missing :PORT after the vsock context id"))?;
                let cid = cid.parse().map_err(|_| invalid("the vsock context id is not a number below 2^32"))?;
                let port = port.parse().map_err(|_| invalid("the vsock port is not a number below 2^32"))?;
                Ok(Self::Vsock { cid, port })
            }
            "hvsock" => {
                let (p, port) =
                    rest.rsplit_once(':').ok_or_else(|| invalid("missing :PORT after the hybrid vsock socket path"))?;
                let port = port.parse().map_err(|_| invalid("the hybrid vsock port is not a number below 2^32"))?;
                Ok(Self::HybridVsock { path: path(p)?, port })
            }
            "serial" => Ok(Self::Serial { path: path(rest)? }),
            "unix" => Ok(Self::Unix { path: path(rest)? }),
            _ => Err(invalid("unknown scheme, expected vsock, hvsock, serial or unix")),
        }
    }
}

/// What a dial has heard from the channel so far, for a caller telling a guest still booting
/// from a channel that went silent after it had answered (a stalled backend). Cheap to clone;
/// clones share what was heard.
#[derive(Debug, Clone, Default)]
pub struct DialSigns {
    last_answer: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl DialSigns {
    /// When an attempt last got an answer other than `OK` (a CONNECT dropped or refused, a
    /// vsock connect reset), if ever.
    pub fn last_answer(&self) -> Option<std::time::Instant> {
        *self.last_answer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn heard(&self, err: &DialError) {
        if err.channel_answered() {
            *self.last_answer.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(std::time::Instant::now());
        }
    }
}

/// Connects to a hybrid vsock unix socket and opens a stream to guest vsock `port`.
///
/// Sends `CONNECT <port>\n` and requires a reply line starting with `OK `; the returned stream is
/// positioned right after that line (the line is read byte by byte, so no payload byte is lost).
/// A backend that closes the connection (nothing listens on the guest port yet) or stays silent
/// for [`HANDSHAKE_TIMEOUT`] is retried with backoff until `timeout` has passed.
pub async fn dial_hybrid_vsock(
    uds_path: impl AsRef<Path>,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, DialError> {
    let path = uds_path.as_ref();
    let addr = AgentAddr::HybridVsock { path: path.to_owned(), port };
    retry(&addr, timeout, &DialSigns::default(), |deadline| hybrid_attempt(path, port, deadline)).await
}

/// Connects to QEMU's virtio-serial chardev socket, retrying until it exists and accepts or
/// `timeout` has passed.
pub async fn dial_serial(path: impl AsRef<Path>, timeout: Duration) -> Result<UnixStream, DialError> {
    let path = path.as_ref();
    let addr = AgentAddr::Serial { path: path.to_owned() };
    retry(&addr, timeout, &DialSigns::default(), |deadline| unix_attempt(path, deadline)).await
}

/// Connects to an agent listening on a unix socket (`wisp-agent --listen unix:PATH`), retrying
/// until the socket exists and accepts or `timeout` has passed.
pub async fn dial_unix(path: impl AsRef<Path>, timeout: Duration) -> Result<UnixStream, DialError> {
    let path = path.as_ref();
    let addr = AgentAddr::Unix { path: path.to_owned() };
    retry(&addr, timeout, &DialSigns::default(), |deadline| unix_attempt(path, deadline)).await
}

/// Connects to guest vsock `port` of context `cid` through the host kernel's vhost-vsock,
/// retrying while nothing listens there yet or until `timeout` has passed.
pub async fn dial_vsock(cid: u32, port: u32, timeout: Duration) -> Result<VsockStream, DialError> {
    let addr = AgentAddr::Vsock { cid, port };
    retry(&addr, timeout, &DialSigns::default(), |deadline| vsock_attempt(cid, port, deadline)).await
}

/// Opens a byte stream to the agent at `addr`, bounded by `timeout`.
pub async fn dial(addr: &AgentAddr, timeout: Duration) -> Result<AgentStream, DialError> {
    dial_watched(addr, timeout, &DialSigns::default()).await
}

/// [`dial`], recording in `signs` what the guest's end answers meanwhile.
pub async fn dial_watched(addr: &AgentAddr, timeout: Duration, signs: &DialSigns) -> Result<AgentStream, DialError> {
    Ok(match addr {
        AgentAddr::Vsock { cid, port } => {
            let (cid, port) = (*cid, *port);
            AgentStream::Vsock(retry(addr, timeout, signs, |deadline| vsock_attempt(cid, port, deadline)).await?)
        }
        AgentAddr::HybridVsock { path, port } => {
            let port = *port;
            AgentStream::Unix(retry(addr, timeout, signs, |deadline| hybrid_attempt(path, port, deadline)).await?)
        }
        AgentAddr::Serial { path } | AgentAddr::Unix { path } => {
            AgentStream::Unix(retry(addr, timeout, signs, |deadline| unix_attempt(path, deadline)).await?)
        }
    })
}

/// A dialed byte stream to the agent: a unix socket, or AF_VSOCK for vhost-vsock guests.
#[derive(Debug)]
pub enum AgentStream {
    /// Hybrid vsock, virtio-serial or a plain unix socket.
    Unix(UnixStream),
    /// The host kernel's vhost-vsock.
    Vsock(VsockStream),
}

impl AsyncRead for AgentStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::Vsock(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AgentStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Self::Vsock(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            Self::Vsock(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Self::Vsock(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Dials the agent at `addr` (bounded by `timeout`) and starts a ttrpc client on the stream.
///
/// Must be called inside a tokio runtime: the client runs a background task.
pub async fn connect(addr: &AgentAddr, timeout: Duration) -> Result<AgentConn, DialError> {
    connect_watched(addr, timeout, &DialSigns::default()).await
}

/// [`connect`], recording in `signs` what the guest's end answers while it dials.
pub async fn connect_watched(addr: &AgentAddr, timeout: Duration, signs: &DialSigns) -> Result<AgentConn, DialError> {
    let stream = dial_watched(addr, timeout, signs).await?;
    Ok(AgentConn::new(addr.clone(), stream))
}

/// A ttrpc connection to the guest agent.
///
/// Cheap to clone; clones share the connection. The service clients it hands out share it too.
#[derive(Clone)]
pub struct AgentConn {
    addr: AgentAddr,
    client: Client,
    offers: Arc<Offers>,
}

impl fmt::Debug for AgentConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConn").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl AgentConn {
    /// Starts a ttrpc client on an already dialed stream.
    ///
    /// # Panics
    ///
    /// Panics outside a tokio runtime (the ttrpc client spawns its connection task).
    pub fn new(addr: AgentAddr, stream: impl Into<AgentStream>) -> Self {
        let stream: AgentStream = stream.into();
        Self { addr, client: Client::new(Socket::new(stream)), offers: Arc::default() }
    }

    /// Where this connection was dialed.
    pub fn addr(&self) -> &AgentAddr {
        &self.addr
    }

    /// The underlying ttrpc client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A client of the agent's `grpc.Health` service.
    pub fn health(&self) -> HealthClient {
        HealthClient::new(self.client.clone())
    }

    /// A client of the agent's `grpc.AgentService`.
    pub fn agent(&self) -> AgentServiceClient {
        AgentServiceClient::new(self.client.clone())
    }

    /// A client of the agent's `wisp.v1.BlockVolume` (ours, not Kata's: see [`Self::offers`]).
    pub fn block_volume(&self) -> protocols::wisp_ttrpc::BlockVolumeClient {
        protocols::wisp_ttrpc::BlockVolumeClient::new(self.client.clone())
    }

    /// Which of our own services this agent offers (asked once, shared by the clones).
    pub fn offers(&self) -> &Offers {
        &self.offers
    }
}

/// Runs `attempt` until it succeeds, fails for good, or `timeout` has passed.
async fn retry<F, Fut, S>(
    addr: &AgentAddr,
    timeout: Duration,
    signs: &DialSigns,
    mut attempt: F,
) -> Result<S, DialError>
where
    F: FnMut(Instant) -> Fut,
    Fut: Future<Output = Result<S, DialError>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let err = match attempt(deadline).await {
            Ok(stream) => return Ok(stream),
            Err(err) if err.is_transient() => err,
            Err(err) => return Err(err),
        };
        signs.heard(&err);
        let (pause, next) = pause_after(backoff, &err);
        let remaining = deadline.saturating_duration_since(Instant::now());
        if !remaining.is_zero() {
            sleep(pause.min(remaining)).await;
        }
        if Instant::now() >= deadline {
            return Err(DialError::Timeout {
                addr: addr.clone(),
                waited: start.elapsed(),
                attempts,
                last: Box::new(err),
            });
        }
        backoff = next;
    }
}

/// The pause after an attempt that failed with `err` when the backoff stood at `backoff`, and
/// the backoff for the next failure: doubling, capped by what the failure says of the guest.
fn pause_after(backoff: Duration, err: &DialError) -> (Duration, Duration) {
    let cap = if err.guest_refused() { GUEST_UP_MAX_BACKOFF } else { GUEST_DOWN_MAX_BACKOFF };
    let pause = backoff.min(cap);
    (pause, (pause * 2).min(cap))
}

/// One connect, bounded by `deadline`.
async fn unix_attempt(path: &Path, deadline: Instant) -> Result<UnixStream, DialError> {
    let connect_error = |source| DialError::Connect { path: path.to_owned(), source };
    match timeout_at(deadline, UnixStream::connect(path)).await {
        Ok(result) => result.map_err(connect_error),
        Err(_) => Err(connect_error(io::ErrorKind::TimedOut.into())),
    }
}

/// One AF_VSOCK connect, bounded by `deadline`.
async fn vsock_attempt(cid: u32, port: u32, deadline: Instant) -> Result<VsockStream, DialError> {
    let connect_error = |source| DialError::VsockConnect { cid, port, source };
    match timeout_at(deadline, VsockStream::connect(VsockAddr::new(cid, port))).await {
        Ok(result) => result.map_err(connect_error),
        Err(_) => Err(connect_error(io::ErrorKind::TimedOut.into())),
    }
}

/// What to fix when AF_VSOCK itself is missing (not merely a guest that is not up yet).
fn vsock_hint(source: &io::Error) -> &'static str {
    match source.raw_os_error() {
        Some(libc::ENODEV) | Some(libc::EAFNOSUPPORT) => {
            " (this host has no vsock transport to guests: load vhost_vsock, or use channel = \"hybrid-vsock\")"
        }
        _ => "",
    }
}

impl From<UnixStream> for AgentStream {
    fn from(stream: UnixStream) -> Self {
        Self::Unix(stream)
    }
}

impl From<VsockStream> for AgentStream {
    fn from(stream: VsockStream) -> Self {
        Self::Vsock(stream)
    }
}

/// One connect + `CONNECT`/`OK` exchange, bounded by [`HANDSHAKE_TIMEOUT`] and `deadline`.
async fn hybrid_attempt(path: &Path, port: u32, deadline: Instant) -> Result<UnixStream, DialError> {
    let start = Instant::now();
    let attempt_deadline = deadline.min(start + HANDSHAKE_TIMEOUT);
    match timeout_at(attempt_deadline, hybrid_handshake(path, port)).await {
        Ok(result) => result,
        Err(_) => Err(DialError::NoAnswer { path: path.to_owned(), port, waited: start.elapsed() }),
    }
}

async fn hybrid_handshake(path: &Path, port: u32) -> Result<UnixStream, DialError> {
    let mut stream =
        UnixStream::connect(path).await.map_err(|source| DialError::Connect { path: path.to_owned(), source })?;
    let handshake_error = |source| DialError::Handshake { path: path.to_owned(), port, source };
    stream.write_all(format!("CONNECT {port}\n").as_bytes()).await.map_err(handshake_error)?;

    // Byte by byte: whatever follows the newline belongs to the agent's stream.
    let mut line = Vec::with_capacity(16);
    let mut byte = [0u8; 1];
    loop {
        let n = stream.read(&mut byte).await.map_err(handshake_error)?;
        if n == 0 {
            return Err(DialError::BackendClosed { path: path.to_owned(), port });
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_REPLY_LEN {
            break;
        }
    }
    if line.starts_with(b"OK ") && line.len() <= MAX_REPLY_LEN {
        Ok(stream)
    } else {
        Err(DialError::Rejected {
            path: path.to_owned(),
            port,
            answer: String::from_utf8_lossy(&line[..line.len().min(MAX_REPLY_LEN)]).into_owned(),
        })
    }
}

/// Stand-ins for a hybrid vsock backend, for this module's tests and the sandbox's.
#[cfg(test)]
pub(crate) mod fake_backend {
    use std::path::Path;

    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// A backend whose guest refuses the first `refused` CONNECTs (nothing listens yet: the
    /// connection is closed) and then holds every later one unanswered (a stalled backend).
    pub(crate) fn stalling(path: &Path, refused: usize) -> tokio::task::JoinHandle<()> {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            for i in 0.. {
                let Ok((mut conn, _)) = listener.accept().await else { return };
                let mut byte = [0u8; 1];
                while matches!(conn.read(&mut byte).await, Ok(1)) && byte[0] != b'\n' {}
                if i >= refused {
                    held.push(conn);
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::error::Error as _;
    use std::sync::Arc;
    use std::time::Instant as StdInstant;

    use protocols::health::health_check_response::ServingStatus;
    use protocols::health::{CheckRequest, HealthCheckResponse};
    use protocols::health_ttrpc::{create_health, Health};
    use protocols::ttrpc::asynchronous::{Server, TtrpcContext};
    use protocols::ttrpc::context::with_timeout;
    use tokio::net::UnixListener;

    #[test]
    fn polls_slower_until_the_guest_itself_refuses_then_fast() {
        let path = PathBuf::from("/s");
        let dropped = DialError::Handshake { path: path.clone(), port: 1024, source: io::ErrorKind::BrokenPipe.into() };
        let refused = DialError::BackendClosed { path, port: 1024 };
        let ms = Duration::from_millis;
        let mut backoff = FIRST_BACKOFF;
        let mut pauses = Vec::new();
        for err in [&dropped, &dropped, &dropped, &dropped, &dropped, &dropped, &refused, &refused, &dropped, &dropped]
        {
            let (pause, next) = pause_after(backoff, err);
            pauses.push(pause);
            backoff = next;
        }
        assert_eq!(pauses, [ms(10), ms(20), ms(40), ms(80), ms(100), ms(100), ms(40), ms(40), ms(40), ms(80)]);
        let reset = DialError::VsockConnect { cid: 3, port: 1024, source: io::ErrorKind::ConnectionReset.into() };
        assert!(reset.guest_refused(), "an AF_VSOCK reset comes from the guest");
        assert!(!dropped.guest_refused());
    }

    /// A fake hybrid vsock backend: closes the first `close_first` connections at once, then
    /// checks the `CONNECT` line and answers each later connection with `reply`.
    fn fake_backend(path: &Path, close_first: usize, reply: &'static [u8]) -> tokio::task::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let mut requests = Vec::new();
            for i in 0.. {
                let (mut conn, _) = listener.accept().await.unwrap();
                if i < close_first {
                    drop(conn);
                    continue;
                }
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while conn.read(&mut byte).await.unwrap() == 1 && byte[0] != b'\n' {
                    request.push(byte[0]);
                }
                requests.push(String::from_utf8(request).unwrap());
                conn.write_all(reply).await.unwrap();
                conn.shutdown().await.unwrap();
                return requests;
            }
            unreachable!()
        })
    }

    #[tokio::test]
    async fn hybrid_vsock_retries_until_ok_and_keeps_payload() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("hvsock.sock");
        let backend = fake_backend(&sock, 2, b"OK 1024\nPAYLOAD\x00\x01");

        let mut stream = dial_hybrid_vsock(&sock, 1024, Duration::from_secs(5)).await.unwrap();
        let mut payload = Vec::new();
        stream.read_to_end(&mut payload).await.unwrap();

        assert_eq!(payload, b"PAYLOAD\x00\x01");
        assert_eq!(backend.await.unwrap(), ["CONNECT 1024"]);
    }

    #[tokio::test]
    async fn hybrid_vsock_waits_for_the_socket_to_appear() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("late.sock");
        let dial = tokio::spawn({
            let sock = sock.clone();
            async move { dial_hybrid_vsock(&sock, 7, Duration::from_secs(5)).await }
        });
        sleep(Duration::from_millis(100)).await;
        let backend = fake_backend(&sock, 0, b"OK 7\n");

        dial.await.unwrap().unwrap();
        assert_eq!(backend.await.unwrap(), ["CONNECT 7"]);
    }

    #[tokio::test]
    async fn hybrid_vsock_silent_backend_times_out_within_bound() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("silent.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        // Accept and hold every connection open without answering.
        let _backend = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                held.push(listener.accept().await.unwrap().0);
            }
        });

        let start = StdInstant::now();
        let err = dial_hybrid_vsock(&sock, 1024, Duration::from_millis(300)).await.unwrap_err();
        let took = start.elapsed();

        assert!(took >= Duration::from_millis(300), "gave up early: {took:?}");
        assert!(took < Duration::from_millis(1500), "not bounded: {took:?}");
        let DialError::Timeout { ref addr, ref last, .. } = err else {
            panic!("expected a timeout, got {err:?}");
        };
        assert_eq!(addr.path(), Some(sock.as_path()));
        assert!(matches!(**last, DialError::NoAnswer { port: 1024, .. }), "{last:?}");
        let message = err.to_string();
        assert!(message.contains(&sock.display().to_string()), "{message}");
        assert!(message.contains(":1024"), "{message}");
        assert!(err.source().is_some());
    }

    #[tokio::test]
    async fn a_refused_connect_is_the_guest_answering_silence_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("hvsock.sock");
        let _backend = fake_backend::stalling(&sock, 2);
        let addr = AgentAddr::HybridVsock { path: sock, port: AGENT_VSOCK_PORT };
        let signs = DialSigns::default();
        let err = dial_watched(&addr, Duration::from_millis(800), &signs).await.unwrap_err();
        let DialError::Timeout { ref last, .. } = err else { panic!("expected a timeout, got {err:?}") };
        assert!(matches!(**last, DialError::NoAnswer { .. }), "{last:?}");
        let heard = signs.last_answer().expect("the refused CONNECTs were heard");
        assert!(heard.elapsed() >= Duration::from_millis(500), "the silence after them was not: {:?}", heard.elapsed());

        let silent = dir.path().join("silent.sock");
        let _backend = fake_backend::stalling(&silent, 0);
        let addr = AgentAddr::HybridVsock { path: silent, port: AGENT_VSOCK_PORT };
        let signs = DialSigns::default();
        dial_watched(&addr, Duration::from_millis(300), &signs).await.unwrap_err();
        assert_eq!(signs.last_answer(), None, "a channel that never answered");

        let path = PathBuf::from("/x");
        let io = |kind: io::ErrorKind| io::Error::from(kind);
        let reset = DialError::Handshake { path: path.clone(), port: 1024, source: io(io::ErrorKind::ConnectionReset) };
        assert!(reset.channel_answered(), "no guest driver yet: the backend drops the CONNECT");
        let absent = DialError::Connect { path: path.clone(), source: io(io::ErrorKind::NotFound) };
        assert!(!absent.channel_answered(), "no backend yet");
        let silent = DialError::NoAnswer { path, port: 1024, waited: Duration::from_secs(2) };
        assert!(!silent.channel_answered());
    }

    #[tokio::test]
    async fn hybrid_vsock_missing_socket_times_out_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("never.sock");

        let err = dial_hybrid_vsock(&sock, 1024, Duration::from_millis(100)).await.unwrap_err();

        let DialError::Timeout { attempts, ref last, .. } = err else {
            panic!("expected a timeout, got {err:?}");
        };
        assert!(attempts >= 2, "{attempts}");
        assert!(matches!(**last, DialError::Connect { .. }), "{last:?}");
        assert!(err.to_string().contains("never.sock"), "{err}");
    }

    #[tokio::test]
    async fn hybrid_vsock_wrong_answer_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nope.sock");
        let _backend = fake_backend(&sock, 0, b"NOPE\n");

        let err = dial_hybrid_vsock(&sock, 1024, Duration::from_secs(5)).await.unwrap_err();

        let DialError::Rejected { ref answer, port, .. } = err else {
            panic!("expected a rejection, got {err:?}");
        };
        assert_eq!((answer.as_str(), port), ("NOPE", 1024));
        assert!(err.to_string().contains("\"NOPE\""), "{err}");
    }

    #[tokio::test]
    async fn hybrid_vsock_overlong_answer_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("long.sock");
        let _backend = fake_backend(&sock, 0, &[b'O'; 200]);

        let err = dial_hybrid_vsock(&sock, 1024, Duration::from_secs(5)).await.unwrap_err();

        assert!(matches!(err, DialError::Rejected { ref answer, .. } if answer.len() == MAX_REPLY_LEN), "{err:?}");
    }

    #[tokio::test]
    async fn unix_and_serial_dial_wait_for_the_listener() {
        let dir = tempfile::tempdir().unwrap();
        for serial in [false, true] {
            let sock = dir.path().join(format!("agent-{serial}.sock"));
            let dial = tokio::spawn({
                let sock = sock.clone();
                async move {
                    if serial {
                        dial_serial(&sock, Duration::from_secs(5)).await
                    } else {
                        dial_unix(&sock, Duration::from_secs(5)).await
                    }
                }
            });
            sleep(Duration::from_millis(60)).await;
            let listener = UnixListener::bind(&sock).unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            let mut client = dial.await.unwrap().unwrap();
            client.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            server.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
        }
    }

    #[tokio::test]
    async fn unix_dial_times_out_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("absent.sock");
        let err = dial(&AgentAddr::Unix { path: sock.clone() }, Duration::from_millis(80)).await.unwrap_err();
        assert!(matches!(err, DialError::Timeout { .. }), "{err:?}");
        assert!(err.to_string().contains("unix:") && err.to_string().contains("absent.sock"), "{err}");
    }

    struct Serving;

    #[async_trait::async_trait]
    impl Health for Serving {
        async fn check(
            &self,
            _ctx: &TtrpcContext,
            _req: CheckRequest,
        ) -> protocols::ttrpc::Result<HealthCheckResponse> {
            let mut resp = HealthCheckResponse::new();
            resp.set_status(ServingStatus::SERVING);
            Ok(resp)
        }
    }

    #[tokio::test]
    async fn connect_speaks_ttrpc_over_unix_and_hybrid_vsock() {
        let dir = tempfile::tempdir().unwrap();
        let agent_sock = dir.path().join("agent.sock");
        let mut server = Server::new()
            .bind(&format!("unix://{}", agent_sock.display()))
            .unwrap()
            .register_service(create_health(Arc::new(Serving)));
        server.start().await.unwrap();

        // A hybrid vsock backend that refuses once, then answers OK and relays to the agent.
        let hvsock = dir.path().join("hvsock.sock");
        let listener = UnixListener::bind(&hvsock).unwrap();
        let relay_to = agent_sock.clone();
        tokio::spawn(async move {
            drop(listener.accept().await.unwrap());
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut byte = [0u8; 1];
            while conn.read(&mut byte).await.unwrap() == 1 && byte[0] != b'\n' {}
            conn.write_all(b"OK 1024\n").await.unwrap();
            let mut agent = UnixStream::connect(relay_to).await.unwrap();
            let _ = tokio::io::copy_bidirectional(&mut conn, &mut agent).await;
        });

        for addr in
            [AgentAddr::Unix { path: agent_sock }, AgentAddr::HybridVsock { path: hvsock, port: AGENT_VSOCK_PORT }]
        {
            let conn = connect(&addr, Duration::from_secs(5)).await.unwrap();
            assert_eq!(conn.addr(), &addr);
            let resp = conn.health().check(with_timeout(5_000_000_000), &CheckRequest::new()).await.unwrap();
            assert_eq!(resp.status(), ServingStatus::SERVING, "{addr}");
        }
        server.shutdown().await.unwrap();
    }

    #[test]
    fn agent_addr_parses_and_round_trips() {
        let cases = [
            (
                "hvsock:/run/vm/hvsock.sock:1024",
                AgentAddr::HybridVsock { path: "/run/vm/hvsock.sock".into(), port: 1024 },
            ),
            ("hvsock:/odd:dir/h.sock:5", AgentAddr::HybridVsock { path: "/odd:dir/h.sock".into(), port: 5 }),
            ("serial:/run/vm/serial.sock", AgentAddr::Serial { path: "/run/vm/serial.sock".into() }),
            ("unix:relative/agent.sock", AgentAddr::Unix { path: "relative/agent.sock".into() }),
            ("vsock:3:1024", AgentAddr::Vsock { cid: 3, port: 1024 }),
        ];
        for (text, want) in cases {
            let got: AgentAddr = text.parse().unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string(), text);
        }
    }

    /// No guest has this context id: the dial is bounded by its timeout (or fails at once where
    /// the host has no vsock transport at all) and names what it dialed. A host that is itself a
    /// VM routes the connect to its parent, which may stay silent: that must not hang either.
    #[tokio::test]
    async fn vsock_dial_without_a_guest_is_bounded_and_named() {
        let start = StdInstant::now();
        let err = dial_vsock(u32::MAX - 1, AGENT_VSOCK_PORT, Duration::from_millis(600)).await.unwrap_err();
        let elapsed = start.elapsed();
        let last = match &err {
            DialError::Timeout { addr, last, .. } => {
                assert_eq!(addr, &AgentAddr::Vsock { cid: u32::MAX - 1, port: AGENT_VSOCK_PORT });
                last.as_ref()
            }
            other => other,
        };
        assert!(matches!(last, DialError::VsockConnect { cid, port: 1024, .. } if *cid == u32::MAX - 1), "{err:?}");
        assert!(elapsed < Duration::from_secs(3), "bounded by the timeout: {elapsed:?}");
    }

    #[test]
    fn agent_addr_rejects_bad_strings_clearly() {
        let cases = [
            ("/just/a/path", "expected vsock:CID:PORT, hvsock:PATH:PORT"),
            ("hvsock:/no/port", "missing :PORT"),
            ("hvsock:/x.sock:", "port is not a number"),
            ("hvsock:/x.sock:99999999999", "port is not a number"),
            ("hvsock::1024", "empty socket path"),
            ("serial:", "empty socket path"),
            ("vsock:3", "missing :PORT"),
            ("vsock:x:1024", "context id is not a number"),
            ("vsock:3:-1", "port is not a number"),
            ("tcp:1.2.3.4:5", "unknown scheme"),
        ];
        for (text, reason) in cases {
            let err = text.parse::<AgentAddr>().unwrap_err();
            let message = err.to_string();
            assert!(message.contains(reason), "{text}: {message}");
            assert!(message.contains(&format!("{text:?}")), "{text}: {message}");
        }
    }
}
