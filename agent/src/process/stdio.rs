//! A process's stdio as the agent holds it: pipes, or a pty for a terminal.
//!
//! [`open`] makes the descriptors; the child's ends go to `launch` and the
//! agent keeps the other ends in a [`ProcessIo`]. Output is pumped into
//! bounded [`OutputBuffer`]s from the moment the process exists, so nothing is
//! lost when it exits before the host reads; stdin is written on demand.
//!
//! With a terminal, stdout and stderr are the same pty: everything arrives on
//! ReadStdout, and ReadStderr answers EOF at once rather than stealing half of
//! the terminal's output.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::stat::Mode;
use tokio::io::unix::AsyncFd;
use tokio::task::AbortHandle;

use super::buffer::{OutputBuffer, STREAM_CAPACITY};
use crate::launch::StdioFds;

/// The most a pump reads from a pipe at once.
const PUMP_CHUNK: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("cannot create the process's {what}")]
    Create { what: &'static str, source: nix::Error },
    #[error("stdin is closed")]
    StdinClosed,
    #[error("cannot write stdin")]
    Write(#[source] io::Error),
    #[error("the process has no terminal")]
    NoTerminal,
    #[error("cannot resize the terminal")]
    Resize(#[source] nix::Error),
}

/// The agent's ends of a process's stdio.
#[derive(Debug)]
pub struct ProcessIo {
    /// The write end of stdin (the pty master for a terminal); `None` once closed.
    stdin: tokio::sync::Mutex<Option<AsyncFd<OwnedFd>>>,
    pub stdout: Arc<OutputBuffer>,
    pub stderr: Arc<OutputBuffer>,
    /// For TtyWinResize.
    pty_master: Option<OwnedFd>,
    pumps: Vec<AbortHandle>,
}

fn cloexec_nonblock(fd: &OwnedFd, what: &'static str) -> Result<(), StdioError> {
    let create = |source| StdioError::Create { what, source };
    fcntl(fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)).map_err(create)?;
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(create)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(create)?;
    Ok(())
}

fn pipe(what: &'static str) -> Result<(OwnedFd, OwnedFd), StdioError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|source| StdioError::Create { what, source })
}

fn dup(fd: &OwnedFd, what: &'static str) -> Result<OwnedFd, StdioError> {
    // F_DUPFD_CLOEXEC: the copy must not leak into processes started meanwhile.
    let raw = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(3)).map_err(|source| StdioError::Create { what, source })?;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) just returned this new descriptor; nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

/// Sets a terminal's size.
fn set_winsize(fd: &impl AsFd, rows: u16, cols: u16) -> Result<(), nix::Error> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which points
    // to a live local; the descriptor is borrowed for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    nix::Error::result(rc).map(drop)
}

/// Opens a pty pair: master (agent side) and slave (the process's terminal).
fn openpty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd), StdioError> {
    let create = |source| StdioError::Create { what: "pty", source };
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).map_err(create)?;
    grantpt(&master).map_err(create)?;
    unlockpt(&master).map_err(create)?;
    let name = ptsname_r(&master).map_err(create)?;
    let slave = nix::fcntl::open(name.as_str(), OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(create)?;
    if rows > 0 && cols > 0 {
        set_winsize(&master, rows, cols).map_err(create)?;
    }
    Ok((master.into(), slave))
}

/// Opens a pty pair from the devpts instance at `dev/pts` below `root` (a
/// container's root, `/proc/<init>/root`), resolved inside it: the slave is
/// `/dev/pts/N` in the container, so ttyname(3) and `tty` find it there
/// (a pty of the agent's devpts is invisible in the container's own
/// `/dev/pts`; Kata's agent has that problem).
fn openpty_in(root: &Path, rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd), StdioError> {
    let create = |source| StdioError::Create { what: "pty in the container", source };
    let errno = |e: io::Error| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    let dir =
        nix::fcntl::open(root, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).map_err(create)?;
    let flags = libc::O_RDWR | libc::O_NOCTTY;
    let master = crate::launch::resolve::open_in_root(dir.as_fd(), Path::new("/dev/pts/ptmx"), flags, 0)
        .map_err(|e| create(errno(e)))?;
    // Only a devpts multiplexer (5:2) is used; anything else the container
    // put there is left alone.
    let st = nix::sys::stat::fstat(&master).map_err(create)?;
    if (st.st_mode & libc::S_IFMT) != libc::S_IFCHR || st.st_rdev != libc::makedev(5, 2) {
        return Err(create(nix::Error::ENOTTY));
    }
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through the pointer, a live local.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) };
    nix::Error::result(rc).map_err(create)?;
    // SAFETY: TIOCGPTPEER takes open(2) flags as its integer argument and
    // returns a new descriptor for the slave; no memory is passed.
    let rc =
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    let raw = nix::Error::result(rc).map_err(create)?;
    // SAFETY: the ioctl just returned this new descriptor; nothing else owns it.
    let slave = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    if rows > 0 && cols > 0 {
        set_winsize(&master, rows, cols).map_err(create)?;
    }
    Ok((master, slave))
}

/// Creates a process's stdio: the child's ends for `launch`, and the agent's
/// ends already pumping. `console` is the initial (rows, columns) of a
/// terminal; `container_root` is where the process's root is seen from the
/// agent, when it exists already (an exec): its own `/dev/pts` provides the
/// pty then, the agent's when it has none.
pub fn open(
    terminal: bool,
    console: (u16, u16),
    container_root: Option<&Path>,
    log: &slog::Logger,
) -> Result<(ProcessIo, StdioFds), StdioError> {
    if terminal {
        let in_container = container_root.map(|root| openpty_in(root, console.0, console.1));
        let (master, slave) = match in_container {
            Some(Ok(pair)) => pair,
            Some(Err(e)) => {
                slog::debug!(log, "no pty from the container's /dev/pts; using the agent's"; "error" => %crate::error::chain(&e));
                openpty(console.0, console.1)?
            }
            None => openpty(console.0, console.1)?,
        };
        let reader = dup(&master, "pty")?;
        let writer = dup(&master, "pty")?;
        cloexec_nonblock(&reader, "pty")?;
        let stdout = Arc::new(OutputBuffer::new(STREAM_CAPACITY));
        let pumps = vec![spawn_pump(reader, stdout.clone(), "stdout", log)?];
        let child = StdioFds { stdin: dup(&slave, "pty")?, stdout: dup(&slave, "pty")?, stderr: slave, terminal: true };
        let io = ProcessIo {
            stdin: tokio::sync::Mutex::new(Some(async_fd(writer, "pty")?)),
            stdout,
            stderr: Arc::new(OutputBuffer::closed()),
            pty_master: Some(master),
            pumps,
        };
        return Ok((io, child));
    }
    let (stdin_r, stdin_w) = pipe("stdin pipe")?;
    let (stdout_r, stdout_w) = pipe("stdout pipe")?;
    let (stderr_r, stderr_w) = pipe("stderr pipe")?;
    let stdout = Arc::new(OutputBuffer::new(STREAM_CAPACITY));
    let stderr = Arc::new(OutputBuffer::new(STREAM_CAPACITY));
    let pumps = vec![
        spawn_pump(stdout_r, stdout.clone(), "stdout", log)?,
        spawn_pump(stderr_r, stderr.clone(), "stderr", log)?,
    ];
    let io = ProcessIo {
        stdin: tokio::sync::Mutex::new(Some(async_fd(stdin_w, "stdin pipe")?)),
        stdout,
        stderr,
        pty_master: None,
        pumps,
    };
    Ok((io, StdioFds { stdin: stdin_r, stdout: stdout_w, stderr: stderr_w, terminal: false }))
}

fn async_fd(fd: OwnedFd, what: &'static str) -> Result<AsyncFd<OwnedFd>, StdioError> {
    cloexec_nonblock(&fd, what)?;
    // SAFETY: an OwnedFd's as_raw_fd is the same open descriptor for as long
    // as it lives, and the AsyncFd owns it, so nothing can close it before the
    // registration is dropped.
    unsafe { AsyncFd::register(fd) }.map_err(|e| {
        let errno = io::Error::from(e).raw_os_error().map_or(nix::Error::EIO, nix::Error::from_raw);
        StdioError::Create { what, source: errno }
    })
}

fn spawn_pump(
    fd: OwnedFd,
    buf: Arc<OutputBuffer>,
    stream: &'static str,
    log: &slog::Logger,
) -> Result<AbortHandle, StdioError> {
    let fd = async_fd(fd, stream)?;
    let log = log.new(slog::o!("stream" => stream));
    Ok(tokio::spawn(pump(fd, buf, log)).abort_handle())
}

/// Copies a pipe into its buffer until EOF, never holding more than the buffer's capacity.
async fn pump(fd: AsyncFd<OwnedFd>, buf: Arc<OutputBuffer>, log: slog::Logger) {
    // Allocated on the first output: most processes of an idle sandbox never write to one of
    // their streams, and two idle chunks per process were most of what a container cost.
    let mut chunk = Vec::new();
    loop {
        let want = buf.room().await.min(PUMP_CHUNK);
        let mut ready = match fd.readable().await {
            Ok(r) => r,
            Err(e) => {
                slog::warn!(log, "output stream failed"; "error" => %e);
                break;
            }
        };
        if chunk.is_empty() {
            chunk = vec![0u8; PUMP_CHUNK];
        }
        match ready.try_io(|fd| nix::unistd::read(fd.get_ref(), &mut chunk[..want]).map_err(io::Error::from)) {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => buf.push(&chunk[..n]),
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EINTR) => {}
            // A pty master reads EIO once the last slave descriptor is closed: its EOF.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => break,
            Ok(Err(e)) => {
                slog::warn!(log, "output stream failed"; "error" => %e);
                break;
            }
            Err(_would_block) => {}
        }
    }
    buf.close();
}

impl ProcessIo {
    /// Writes all of `data` to stdin, waiting while the pipe is full.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<usize, StdioError> {
        let guard = self.stdin.lock().await;
        let fd = guard.as_ref().ok_or(StdioError::StdinClosed)?;
        write_all(fd, data).await
    }

    /// Closes stdin so the process reads EOF. A terminal has no separate
    /// stdin to close (the master stays open for output and resizing): its
    /// end-of-file character (VEOF, ^D) is typed instead, which ends a read
    /// at the start of a line with 0 bytes, as closing a pipe would.
    pub async fn close_stdin(&self) -> Result<(), StdioError> {
        let mut guard = self.stdin.lock().await;
        let Some(master) = &self.pty_master else {
            guard.take();
            return Ok(());
        };
        let Some(fd) = guard.as_ref() else { return Ok(()) };
        let eof = nix::sys::termios::tcgetattr(master)
            .map(|t| t.control_chars[nix::sys::termios::SpecialCharacterIndices::VEOF as usize])
            .unwrap_or(0x04);
        write_all(fd, &[eof]).await?;
        guard.take();
        Ok(())
    }

    pub fn is_terminal(&self) -> bool {
        self.pty_master.is_some()
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), StdioError> {
        let master = self.pty_master.as_ref().ok_or(StdioError::NoTerminal)?;
        set_winsize(master, rows, cols).map_err(StdioError::Resize)
    }
}

/// Writes all of `data`, waiting while the pipe or pty is full.
async fn write_all(fd: &AsyncFd<OwnedFd>, data: &[u8]) -> Result<usize, StdioError> {
    let mut done = 0;
    while done < data.len() {
        let mut ready = fd.writable().await.map_err(StdioError::Write)?;
        match ready.try_io(|fd| nix::unistd::write(fd.get_ref(), &data[done..]).map_err(io::Error::from)) {
            Ok(Ok(n)) => done += n,
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EINTR) => {}
            Ok(Err(e)) => return Err(StdioError::Write(e)),
            Err(_would_block) => {}
        }
    }
    Ok(done)
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        for p in &self.pumps {
            p.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> slog::Logger {
        slog::Logger::root(slog::Discard, slog::o!())
    }

    #[tokio::test]
    async fn pipes_carry_both_ways_and_keep_output_after_the_writer_is_gone() {
        let (io, child) = open(false, (0, 0), None, &log()).unwrap();
        assert!(!child.terminal);
        // Play the process: read stdin, write stdout and stderr, then vanish.
        assert_eq!(io.write_stdin(b"ping").await.unwrap(), 4);
        let mut got = [0u8; 4];
        assert_eq!(nix::unistd::read(&child.stdin, &mut got).unwrap(), 4);
        assert_eq!(&got, b"ping");
        nix::unistd::write(&child.stdout, b"out").unwrap();
        nix::unistd::write(&child.stderr, b"err").unwrap();
        drop(child);
        assert_eq!(io.stdout.read(100).await.as_deref(), Some(&b"out"[..]));
        assert_eq!(io.stdout.read(100).await, None);
        assert_eq!(io.stderr.read(100).await.as_deref(), Some(&b"err"[..]));
        assert!(matches!(io.resize(10, 10), Err(StdioError::NoTerminal)));
        io.close_stdin().await.unwrap();
        assert!(matches!(io.write_stdin(b"x").await, Err(StdioError::StdinClosed)));
    }

    #[tokio::test]
    async fn a_pty_has_the_console_size_and_resizes() {
        let (io, child) = open(true, (33, 77), None, &log()).unwrap();
        assert!(child.terminal && io.pty_master.is_some());
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one winsize into the live local.
        let rc = unsafe { libc::ioctl(child.stdin.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 77));
        io.resize(50, 100).unwrap();
        // SAFETY: as above.
        let rc = unsafe { libc::ioctl(child.stdout.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (50, 100));
        nix::unistd::write(&child.stdout, b"tty").unwrap();
        drop(child);
        let mut out = Vec::new();
        while let Some(chunk) = io.stdout.read(100).await {
            out.extend(chunk);
        }
        assert!(out.starts_with(b"tty"), "{out:?}");
        assert_eq!(io.stderr.read(1).await, None, "a terminal's stderr is its stdout");
    }

    #[tokio::test]
    async fn closing_a_terminals_stdin_types_end_of_file() {
        let (io, child) = open(true, (24, 80), None, &log()).unwrap();
        io.write_stdin(b"line\n").await.unwrap();
        io.close_stdin().await.unwrap();
        let mut got = [0u8; 16];
        assert_eq!(nix::unistd::read(&child.stdin, &mut got).unwrap(), 5, "the line first");
        assert_eq!(nix::unistd::read(&child.stdin, &mut got).unwrap(), 0, "then end-of-file");
        assert!(matches!(io.write_stdin(b"x").await, Err(StdioError::StdinClosed)));
        io.close_stdin().await.unwrap();
    }
}
