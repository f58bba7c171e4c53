//! The true boot floor: what the smallest possible `/init` costs on top of the kernel and QEMU.
//!
//! `wisp-bench-boot` boots this `/init` in the same VM as the agent (same kernel, same QEMU
//! command line, only the initrd differs) and measures when it answers on the agent's channel:
//! it listens on vsock port [`PORT`], prints [`READY_MARKER`] with its `CLOCK_BOOTTIME` on the
//! console, and echoes whatever a connection sends. A host that sends a Health.Check gets bytes
//! back at the moment a guest userspace could first answer. When a connection that carried
//! bytes closes, it powers the VM off.
//!
//! No std, no libc, no allocator: raw x86_64 Linux syscalls ([`sys`]), so the binary is a few
//! KiB and the initrd holding it well under 100 KB; the busybox floor it sits beside is a shell
//! script in a 1 MB initrd, and the agent's initrd is bigger still.
//!
//! The library holds everything but the entry point, so it is unit-tested on the host (with std)
//! while the binary (`src/main.rs`) stays `#![no_std]`.

#![cfg_attr(not(test), no_std)]

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!("wisp-floor-init issues raw x86_64 Linux syscalls");

pub mod ready_line;
pub mod sys;

/// The agent's vsock port (the kata-agent's too): the bench dials it for both.
pub const PORT: u32 = 1024;

/// What the console line starts with: the same marker as the busybox floor's, so the bench's
/// timeline parser reads both (`WISP-FLOOR uptime=SECONDS`).
pub const READY_MARKER: &str = "WISP-FLOOR uptime=";

/// How a floor session ended, when it did not power off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The named syscall failed with this errno.
    Syscall(&'static str, i32),
}

/// Copies every byte read from `fd` back to it until end of file; returns how many bytes were
/// echoed. An interrupted read or write is retried.
pub fn echo(fd: i32) -> Result<usize, Failure> {
    let mut buf = [0u8; 4096];
    let mut echoed = 0;
    loop {
        let n = match sys::read(fd, &mut buf) {
            Ok(0) => return Ok(echoed),
            Ok(n) => n,
            Err(sys::EINTR) => continue,
            Err(errno) => return Err(Failure::Syscall("read", errno)),
        };
        write_all(fd, &buf[..n]).map_err(|errno| Failure::Syscall("write", errno))?;
        echoed += n;
    }
}

/// Writes all of `bytes` to `fd`, retrying short and interrupted writes.
pub fn write_all(fd: i32, mut bytes: &[u8]) -> Result<(), i32> {
    while !bytes.is_empty() {
        match sys::write(fd, bytes) {
            Ok(0) => return Err(sys::EIO),
            Ok(n) => bytes = &bytes[n..],
            Err(sys::EINTR) => {}
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
}

/// Listens on vsock [`PORT`] of any CID; returns the listening socket.
pub fn listen_vsock() -> Result<i32, Failure> {
    let fd = sys::socket(sys::AF_VSOCK, sys::SOCK_STREAM | sys::SOCK_CLOEXEC, 0)
        .map_err(|errno| Failure::Syscall("socket", errno))?;
    sys::bind(fd, &sys::SockaddrVm::any(PORT)).map_err(|errno| Failure::Syscall("bind", errno))?;
    sys::listen(fd, 4).map_err(|errno| Failure::Syscall("listen", errno))?;
    Ok(fd)
}

/// Accepts connections on `listener` and echoes each until one that carried bytes ends.
pub fn serve(listener: i32) -> Result<(), Failure> {
    loop {
        let conn = match sys::accept(listener) {
            Ok(conn) => conn,
            Err(sys::EINTR) | Err(sys::ECONNABORTED) => continue,
            Err(errno) => return Err(Failure::Syscall("accept", errno)),
        };
        let echoed = echo(conn);
        sys::close(conn);
        // A connection dropped before it carried anything (a dial attempt given up on) is not
        // the session: wait for the next one.
        if echoed? > 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::thread;

    #[test]
    fn echo_returns_every_byte_until_the_peer_closes() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = thread::spawn(move || echo(theirs.as_raw_fd()));
        let mut ours = ours;
        // More than one read buffer, so the loop runs more than once.
        let sent: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        ours.write_all(&sent).unwrap();
        let mut back = vec![0u8; sent.len()];
        ours.read_exact(&mut back).unwrap();
        assert_eq!(back, sent);
        ours.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(server.join().unwrap(), Ok(sent.len()));
    }

    #[test]
    fn echo_of_a_closed_descriptor_names_the_syscall() {
        assert_eq!(echo(-1), Err(Failure::Syscall("read", sys::EBADF)));
    }

    #[test]
    fn serve_skips_an_empty_connection_and_ends_after_a_real_one() {
        // vsock may be missing on the host running the tests: serve is protocol-agnostic, so a
        // unix listener stands in.
        let dir = std::env::temp_dir().join(format!("floor-init-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let fd = listener.as_raw_fd();
        let server = thread::spawn(move || serve(fd));
        drop(UnixStream::connect(&path).unwrap());
        let mut conn = UnixStream::connect(&path).unwrap();
        conn.write_all(b"check").unwrap();
        let mut back = [0u8; 5];
        conn.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"check");
        drop(conn);
        assert_eq!(server.join().unwrap(), Ok(()));
        drop(listener);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
