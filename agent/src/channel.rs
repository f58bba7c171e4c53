//! Where the agent listens: vsock (the Kata default), a virtio-serial port for
//! VMs without vsock, or a unix socket when the agent runs outside a VM for
//! protocol tests. Each becomes a ttrpc [`Listener`].
//!
//! A virtio-serial port is one byte stream, not a listener: a "connection" lasts
//! from when the host side attaches until it detaches (reads return EOF while it
//! is detached), and the same port carries the next one. [`serial_listener`] turns
//! that into a stream of connections.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use protocols::ttrpc::asynchronous::transport::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::unix::pipe;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_vsock::{VsockListener, VMADDR_CID_ANY};
use wisp_init::{BootOptions, Channel};

/// The virtio-serial port name Kata runtimes give the agent's port.
pub const SERIAL_PORT_NAME: &str = "agent.channel.0";
/// Connections the kernel completes before the agent accepts them (the `vsock` crate's).
const LISTEN_BACKLOG: i32 = 128;
/// virtio device id of a vsock device (virtio spec 5.10).
const VIRTIO_ID_VSOCK: &str = "0x0013";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Vsock { port: u32 },
    Serial { path: PathBuf },
    Unix { path: PathBuf },
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Vsock { port } => write!(f, "vsock:{port}"),
            ListenAddr::Serial { path } => write!(f, "serial:{}", path.display()),
            ListenAddr::Unix { path } => write!(f, "unix:{}", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("bad listen address {0:?}: expected unix:PATH, vsock:PORT or serial:PATH")]
    BadAddr(String),
    #[error("no agent channel: no virtio-vsock device and no virtio-serial port named {SERIAL_PORT_NAME} after {0:?}")]
    NoChannel(Duration),
    #[error("no virtio-serial port named {SERIAL_PORT_NAME} after {0:?}")]
    NoSerialPort(Duration),
    #[error("cannot listen on {addr}")]
    Listen { addr: ListenAddr, source: io::Error },
}

impl FromStr for ListenAddr {
    type Err = ChannelError;
    fn from_str(s: &str) -> Result<Self, ChannelError> {
        let bad = || ChannelError::BadAddr(s.to_owned());
        let (scheme, rest) = s.split_once(':').ok_or_else(bad)?;
        match scheme {
            "unix" if !rest.is_empty() => Ok(ListenAddr::Unix { path: rest.into() }),
            "serial" if !rest.is_empty() => Ok(ListenAddr::Serial { path: rest.into() }),
            "vsock" => rest.parse().ok().filter(|p| *p > 0).map(|port| ListenAddr::Vsock { port }).ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

/// Does the VM have a virtio-vsock device? Built-in and module drivers have both
/// probed by the time init asks, so one look suffices.
pub fn has_vsock_device(sys: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(sys.join("bus/virtio/devices")) else { return false };
    entries.flatten().any(|e| {
        std::fs::read_to_string(e.path().join("device")).map(|id| id.trim() == VIRTIO_ID_VSOCK).unwrap_or(false)
    })
}

/// The `/dev` node of the virtio-serial port with `name`, if it exists yet.
pub fn find_serial_port(sys: &Path, name: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sys.join("class/virtio-ports")).ok()?;
    entries.flatten().find_map(|e| {
        let port_name = std::fs::read_to_string(e.path().join("name")).ok()?;
        (port_name.trim() == name).then(|| Path::new("/dev").join(e.file_name()))
    })
}

/// Chooses the channel from the boot options and the devices the VM has. A port's
/// name arrives from the host shortly after the device, hence the bounded wait.
pub fn choose(opts: &BootOptions, wait: Duration) -> Result<ListenAddr, ChannelError> {
    let sys = Path::new("/sys");
    let vsock = ListenAddr::Vsock { port: opts.vsock_port };
    match opts.channel {
        Channel::Vsock => return Ok(vsock),
        Channel::Auto if has_vsock_device(sys) => return Ok(vsock),
        _ => {}
    }
    let deadline = Instant::now() + wait;
    loop {
        if let Some(path) = find_serial_port(sys, SERIAL_PORT_NAME) {
            return Ok(ListenAddr::Serial { path });
        }
        if Instant::now() >= deadline {
            return Err(match opts.channel {
                Channel::Serial => ChannelError::NoSerialPort(wait),
                _ => ChannelError::NoChannel(wait),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A channel bound before the async runtime exists (see [`bind`]).
#[derive(Debug)]
pub struct Bound(Opened);

#[derive(Debug)]
enum Opened {
    /// Listening already.
    Vsock {
        port: u32,
        socket: OwnedFd,
    },
    /// Opened by [`listen`], inside the runtime.
    Unix(PathBuf),
    Serial(PathBuf),
}

impl Bound {
    pub fn addr(&self) -> ListenAddr {
        match &self.0 {
            Opened::Vsock { port, .. } => ListenAddr::Vsock { port: *port },
            Opened::Unix(path) => ListenAddr::Unix { path: path.clone() },
            Opened::Serial(path) => ListenAddr::Serial { path: path.clone() },
        }
    }
}

/// Binds `addr` now, before the runtime and the server exist. A vsock socket listens from here
/// on: the guest kernel completes the host's connects into its backlog while init goes on, so a
/// host polling for the agent stops polling (and costing the vCPU a refused connect each time)
/// as soon as this runs, and its first request waits in the socket for the server. Unix
/// sockets and serial ports are opened by [`listen`].
pub fn bind(addr: ListenAddr) -> Result<Bound, ChannelError> {
    Ok(Bound(match addr {
        ListenAddr::Vsock { port } => Opened::Vsock {
            port,
            socket: bind_vsock(port).map_err(|errno| ChannelError::Listen { addr, source: errno.into() })?,
        },
        ListenAddr::Unix { path } => Opened::Unix(path),
        ListenAddr::Serial { path } => Opened::Serial(path),
    }))
}

fn bind_vsock(port: u32) -> nix::Result<OwnedFd> {
    use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType};
    let fd = socket::socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::bind(fd.as_raw_fd(), &socket::VsockAddr::new(VMADDR_CID_ANY, port))?;
    socket::listen(&fd, Backlog::new(LISTEN_BACKLOG)?)?;
    Ok(fd)
}

/// The channel [`choose`] would pick, bound, if that needs no kernel module first: the VM has
/// a vsock device and the options allow it. `None` means choose and bind after the modules.
pub fn bind_early(opts: &BootOptions) -> Option<Bound> {
    let vsock_allowed = matches!(opts.channel, Channel::Vsock | Channel::Auto);
    if !vsock_allowed || !has_vsock_device(Path::new("/sys")) {
        return None;
    }
    bind(ListenAddr::Vsock { port: opts.vsock_port }).ok()
}

/// Turns `bound` into a ttrpc listener (inside the runtime).
pub fn listen(bound: Bound) -> Result<Listener, ChannelError> {
    match bound.0 {
        Opened::Vsock { socket, .. } => {
            // tokio-vsock panics only if epoll refuses the descriptor (out of memory).
            Ok(Listener::new(VsockListener::from(socket).incoming()))
        }
        Opened::Unix(path) => {
            let l = tokio::net::UnixListener::bind(&path)
                .map_err(|source| ChannelError::Listen { addr: ListenAddr::Unix { path }, source })?;
            Ok(Listener::new(stream::unfold(l, |l| async move {
                let next = l.accept().await.map(|(s, _)| s);
                Some((next, l))
            })))
        }
        Opened::Serial(path) => Ok(serial_listener(path)),
    }
}

/// Yields one connection each time the host side of the port is attached.
///
/// The port admits a single opener, so the next connection is only opened once
/// ttrpc has dropped the previous one (it holds the only semaphore permit).
fn serial_listener(path: PathBuf) -> Listener {
    let permits = Arc::new(Semaphore::new(1));
    let conns = stream::unfold((path, permits), |(path, permits)| async move {
        let permit = permits.clone().acquire_owned().await.ok()?;
        let conn = loop {
            match open_when_attached(&path).await {
                Ok(io) => break Ok(SerialConn { io, _permit: permit }),
                // The port went away (hot-unplug) or cannot be opened: back off
                // instead of spinning, and let ttrpc log it.
                Err(e) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if !path.exists() {
                        break Err(e);
                    }
                }
            }
        };
        Some((conn, (path, permits)))
    });
    Listener::new(conns.boxed())
}

type PortIo = tokio::io::Join<pipe::Receiver, pipe::Sender>;

/// One attachment of the host to the port; releases the port when dropped.
struct SerialConn {
    io: PortIo,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for SerialConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for SerialConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

async fn open_when_attached(path: &Path) -> io::Result<PortIo> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let fd: OwnedFd = file.into();
    // While the host is detached the port reports HUP (and reads return EOF at
    // once): wait for it to attach rather than hand ttrpc a dead stream.
    while host_detached(&fd) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rx = pipe::Receiver::from_owned_fd_unchecked(fd.try_clone()?)?;
    let tx = pipe::Sender::from_owned_fd_unchecked(fd)?;
    Ok(tokio::io::join(rx, tx))
}

/// virtio_console sets EPOLLHUP exactly while the host side is not connected.
fn host_detached(fd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match nix::poll::poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0].revents().unwrap_or(PollFlags::empty()).contains(PollFlags::POLLHUP),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!("unix:/tmp/a.sock".parse::<ListenAddr>().unwrap(), ListenAddr::Unix { path: "/tmp/a.sock".into() });
        assert_eq!("vsock:1024".parse::<ListenAddr>().unwrap(), ListenAddr::Vsock { port: 1024 });
        assert_eq!(
            "serial:/dev/vport1p1".parse::<ListenAddr>().unwrap(),
            ListenAddr::Serial { path: "/dev/vport1p1".into() }
        );
        for bad in ["", "unix:", "vsock:0", "vsock:x", "tcp:1.2.3.4:5", "/tmp/a.sock"] {
            let e = bad.parse::<ListenAddr>().unwrap_err();
            assert!(e.to_string().contains("expected unix:PATH"), "{bad}: {e}");
        }
    }

    #[test]
    fn devices_are_found_through_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        let dev = sys.path().join("bus/virtio/devices/virtio0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("device"), "0x0003\n").unwrap();
        assert!(!has_vsock_device(sys.path()));
        std::fs::write(dev.join("device"), "0x0013\n").unwrap();
        assert!(has_vsock_device(sys.path()));

        let port = sys.path().join("class/virtio-ports/vport2p1");
        std::fs::create_dir_all(&port).unwrap();
        std::fs::write(port.join("name"), "org.qemu.guest_agent.0\n").unwrap();
        assert_eq!(find_serial_port(sys.path(), SERIAL_PORT_NAME), None);
        std::fs::write(port.join("name"), "agent.channel.0\n").unwrap();
        assert_eq!(find_serial_port(sys.path(), SERIAL_PORT_NAME), Some(PathBuf::from("/dev/vport2p1")));
    }
}
