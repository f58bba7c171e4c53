//! Running a target as `nobody`.
//!
//! The agent's handlers and the layer applier are written for a VM and for a build
//! directory. Fuzzed as root on a developer's machine or in CI, a handler that works would
//! set the host's clock or hostname, add routes or mount things. So those targets give up
//! root before the first input: every privileged call then fails with EPERM, as it would for
//! an unprivileged agent, and the fuzzer still reaches the code that decides to make it.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The uid and gid of `nobody` (Debian's 65534).
pub const NOBODY: u32 = 65534;

/// If this process is root: hands `dirs` to `nobody`, then drops every group and
/// switches real, effective and saved ids to `nobody`. Does nothing otherwise.
/// Call it before starting threads: it changes the ids of the calling thread's process only
/// as far as glibc broadcasts it.
pub fn drop_root(dirs: &[&Path]) -> io::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    for dir in dirs {
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        if unsafe { libc::chown(c.as_ptr(), NOBODY, NOBODY) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: a zero-length group list with a null pointer is valid for setgroups.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: setresgid/setresuid take plain ids; the gid goes first while still root.
    if unsafe { libc::setresgid(NOBODY, NOBODY, NOBODY) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::setresuid(NOBODY, NOBODY, NOBODY) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
