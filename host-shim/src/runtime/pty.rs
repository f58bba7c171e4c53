//! A host terminal for a container's or an exec's pty, as runc gives one to its caller: a pty
//! pair whose master goes over `--console-socket` (`SCM_RIGHTS`, the pty's name as the
//! message, as runc sends it), while the slave stays with the process that relays it to the
//! guest. The slave is that process's controlling terminal, so a resize the caller makes on the
//! master arrives as SIGWINCH; it is raw, because the guest's pty already does what a terminal
//! does (echo, line editing, ^C): the host one only carries bytes.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::termios;

/// Failures to set up the host terminal.
#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error("cannot open a pty")]
    Open(#[source] nix::Error),
    #[error("cannot make the pty raw")]
    Raw(#[source] nix::Error),
    #[error("cannot make the pty the controlling terminal")]
    Controlling(#[source] nix::Error),
    #[error("cannot send the pty's master to the console socket {}", path.display())]
    Send { path: PathBuf, source: std::io::Error },
}

/// The slave of a pty whose master went to the caller.
#[derive(Debug)]
pub struct Terminal {
    slave: OwnedFd,
}

impl Terminal {
    /// Opens a raw pty pair and sends its master to the console socket at `socket`.
    pub fn open_for(socket: &Path) -> Result<Self, PtyError> {
        let pair = nix::pty::openpty(None, None).map_err(PtyError::Open)?;
        let mut attrs = termios::tcgetattr(&pair.slave).map_err(PtyError::Raw)?;
        termios::cfmakeraw(&mut attrs);
        termios::tcsetattr(&pair.slave, termios::SetArg::TCSANOW, &attrs).map_err(PtyError::Raw)?;
        let name = nix::unistd::ttyname(&pair.slave).unwrap_or_else(|_| PathBuf::from("/dev/ptmx"));
        send_master(socket, &pair.master, &name)
            .map_err(|source| PtyError::Send { path: socket.to_owned(), source })?;
        Ok(Self { slave: pair.slave })
    }

    /// Makes the slave the controlling terminal of this process, which must lead a session
    /// that has none: its resizes then arrive as SIGWINCH.
    pub fn control(&self) -> Result<(), PtyError> {
        // SAFETY: TIOCSCTTY takes an int argument (0: do not steal) and the slave is open.
        let done = unsafe { libc::ioctl(self.slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
        nix::errno::Errno::result(done).map(drop).map_err(PtyError::Controlling)
    }

    /// A copy of the slave, for one direction of the relay.
    pub fn file(&self) -> std::io::Result<std::fs::File> {
        self.slave.try_clone().map(std::fs::File::from)
    }

    /// The slave's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.slave.as_fd()
    }
}

/// The window size of terminal `fd` as (rows, columns); `None` when it is not a terminal or
/// has no size yet.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct passed, which lives on this stack.
    let done = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (done == 0 && size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}

/// Sends `master` over the unix socket at `socket`, with the pty's name as the message.
fn send_master(socket: &Path, master: &OwnedFd, name: &Path) -> std::io::Result<()> {
    let stream = UnixStream::connect(socket)?;
    let name = name.as_os_str().as_encoded_bytes();
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(name)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    use std::io::{IoSliceMut, Read, Write};
    use std::os::fd::FromRawFd;
    use std::os::unix::net::UnixListener;

    /// Receives the master as go-runc's console socket does.
    fn receive(listener: &UnixListener) -> (String, std::fs::File) {
        let (stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()).unwrap();
        let mut fd = None;
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(raw) = c {
                fd = raw.first().copied();
            }
        }
        let len = msg.bytes;
        let name = String::from_utf8_lossy(&buf[..len]).into_owned();
        // SAFETY: the descriptor was just received for this process.
        (name, unsafe { std::fs::File::from_raw_fd(fd.expect("a descriptor")) })
    }

    /// A terminal and the master, its name, as a caller's console socket got them.
    fn terminal() -> (Terminal, String, std::fs::File) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("console.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let receiver = std::thread::spawn(move || receive(&listener));
        let terminal = Terminal::open_for(&socket).unwrap();
        let (name, master) = receiver.join().unwrap();
        (terminal, name, master)
    }

    #[test]
    fn the_master_reaches_the_console_socket_and_bytes_cross_raw() {
        let (terminal, name, mut master) = terminal();
        assert!(name.starts_with("/dev/pts/"), "the pty's name: {name:?}");

        // Raw: what the caller types reaches the slave unchanged and is not echoed back.
        master.write_all(b"ab\x03\r").unwrap();
        let mut slave = terminal.file().unwrap();
        let mut got = [0u8; 4];
        slave.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ab\x03\r");
        // No ONLCR: a newline from the guest stays one byte.
        slave.write_all(b"x\n").unwrap();
        let mut out = [0u8; 2];
        master.read_exact(&mut out).unwrap();
        assert_eq!(&out, b"x\n");
    }

    #[test]
    fn the_size_set_on_the_master_is_read_on_the_slave() {
        let (terminal, _, master) = terminal();
        assert_eq!(window_size(terminal.fd()), None, "a new pty has no size");
        let size = libc::winsize { ws_row: 40, ws_col: 132, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one `winsize` from the struct passed.
        assert_eq!(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) }, 0);
        assert_eq!(window_size(terminal.fd()), Some((40, 132)));
    }

    #[test]
    fn a_missing_console_socket_is_named() {
        let err = Terminal::open_for(Path::new("/nonexistent/console.sock")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/console.sock"), "{err}");
    }
}
