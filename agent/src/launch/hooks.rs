//! OCI hooks: run one hook with the container's state JSON on stdin, its own
//! args and env, under its timeout. The launcher runs createRuntime,
//! createContainer and startContainer; the container module calls
//! [`run_hooks`] for poststart and poststop.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::fd::FromRawFd as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, State};

/// Why a hook failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook {path}: cannot start it")]
    Spawn {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("hook {path}: {msg}")]
    Failed { path: String, msg: String },
    #[error("hook {path}: timed out after {secs}s")]
    Timeout { path: String, secs: i64 },
    #[error("cannot encode the container state for hooks")]
    State(#[source] serde_json::Error),
}

/// Runs `hooks` in order with `state` on stdin; stops at the first failure.
pub fn run_hooks(hooks: &[Hook], state: &State) -> Result<(), HookError> {
    let json = serde_json::to_vec(state).map_err(HookError::State)?;
    hooks.iter().try_for_each(|h| run_hook(h, &json))
}

/// How much of a failed hook's stderr goes into the error.
const STDERR_KEPT: u64 = 4096;

/// An anonymous, close-on-exec memory file.
fn memfd(name: &str) -> std::io::Result<File> {
    let name = std::ffi::CString::new(name).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `name` is NUL-terminated and outlives the call.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// How often a hook with a timeout is polled for its exit.
const POLL: Duration = Duration::from_millis(10);

/// Runs one hook: `path` with `args` (args[0] is argv[0]) and exactly `env`.
pub fn run_hook(hook: &Hook, state_json: &[u8]) -> Result<(), HookError> {
    let path = hook.path().display().to_string();
    let mut cmd = Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some((argv0, rest)) = args.split_first() {
            std::os::unix::process::CommandExt::arg0(&mut cmd, argv0);
            cmd.args(rest);
        }
    }
    cmd.env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    // stderr goes to a memory file, not a pipe: a chatty hook cannot block
    // on a full pipe, and a daemon it leaves behind cannot hold us up.
    let errfile = memfd("hook-stderr").map_err(|source| HookError::Spawn { path: path.clone(), source })?;
    let errfile_for_child = errfile.try_clone().map_err(|source| HookError::Spawn { path: path.clone(), source })?;
    cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::from(errfile_for_child));
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn { path: path.clone(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook may exit without reading its stdin: EPIPE is not a failure.
        let _ = stdin.write_all(state_json);
    }
    let status = match hook.timeout() {
        Some(secs) if secs > 0 => {
            // A timeout past what Instant can count (the spec allows any i64) never comes.
            let deadline = Instant::now().checked_add(Duration::from_secs(secs.unsigned_abs()));
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => break status,
                    Ok(None) if deadline.is_some_and(|d| Instant::now() >= d) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(HookError::Timeout { path, secs });
                    }
                    Ok(None) => std::thread::sleep(POLL),
                    Err(e) => return Err(HookError::Failed { path, msg: format!("wait: {e}") }),
                }
            }
        }
        Some(secs) => return Err(HookError::Failed { path, msg: format!("timeout must be positive, got {secs}") }),
        None => child.wait().map_err(|e| HookError::Failed { path: path.clone(), msg: format!("wait: {e}") })?,
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = Vec::new();
    let mut errfile = errfile;
    let _ = errfile.seek(SeekFrom::Start(0));
    let _ = errfile.take(STDERR_KEPT).read_to_end(&mut stderr);
    let stderr = String::from_utf8_lossy(&stderr);
    let stderr = stderr.trim();
    let msg = if stderr.is_empty() { format!("{status}") } else { format!("{status}: {stderr}") };
    Err(HookError::Failed { path, msg })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::HookBuilder;

    fn sh(script: &str, timeout: Option<i64>) -> Hook {
        let mut b = HookBuilder::default()
            .path("/bin/sh")
            .args(vec!["sh".to_string(), "-c".to_string(), script.to_string()])
            .env(vec!["WHO=hook".to_string()]);
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        b.build().unwrap()
    }

    #[test]
    fn the_state_arrives_on_stdin_with_the_hooks_env() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let hook = sh(&format!("cat > {0}; echo \" $WHO ${{HOME:-nohome}}\" >> {0}", out.display()), None);
        let state = State::default();
        run_hooks(&[hook], &state).unwrap();
        let text = std::fs::read_to_string(out).unwrap();
        assert_eq!(text, format!("{} hook nohome\n", serde_json::to_string(&state).unwrap()));
    }

    #[test]
    fn a_failure_carries_the_status_and_stderr_even_when_it_is_huge() {
        let e = run_hook(&sh("head -c 1000000 /dev/zero | tr '\\0' x >&2; exit 4", Some(30)), b"{}").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("hook /bin/sh: exit status: 4: xxx"), "{}", &msg[..80.min(msg.len())]);
        assert!(msg.len() < 5000, "stderr is cut: {} bytes", msg.len());
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed() {
        let started = Instant::now();
        let e = run_hook(&sh("sleep 20", Some(1)), b"{}").unwrap_err();
        assert!(matches!(e, HookError::Timeout { secs: 1, .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let e = run_hook(&sh("true", Some(0)), b"{}").unwrap_err();
        assert!(e.to_string().contains("timeout must be positive"), "{e}");
        run_hook(&sh("true", Some(i64::MAX)), b"{}").expect("a timeout too far to count is no timeout");
    }

    #[test]
    fn a_missing_hook_binary_is_named() {
        let hook = HookBuilder::default().path("/no/such/hook").build().unwrap();
        let e = run_hook(&hook, b"{}").unwrap_err();
        assert!(e.to_string().contains("/no/such/hook"), "{e}");
    }
}
