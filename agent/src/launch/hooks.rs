//! OCI hooks: run one hook with the container's state JSON on stdin, its own
//! args and env, under its timeout. The launcher runs createRuntime,
//! createContainer and startContainer; the container module calls
//! [`run_hooks`] for poststart and poststop.

use std::io::Write as _;
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
    cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn { path: path.clone(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook may exit without reading its stdin: EPIPE is not a failure.
        let _ = stdin.write_all(state_json);
    }
    let status = match hook.timeout() {
        Some(secs) if secs > 0 => {
            let deadline = Instant::now() + Duration::from_secs(secs as u64);
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => break status,
                    Ok(None) if Instant::now() >= deadline => {
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
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
    }
    let stderr = stderr.trim();
    let msg = if stderr.is_empty() { format!("{status}") } else { format!("{status}: {stderr}") };
    Err(HookError::Failed { path, msg })
}
