//! The bundle's host hooks, run on the host as runc runs them: `prestart` and `createRuntime`
//! by the monitor once the container's network namespace exists and before the VM boots
//! (Docker's `libnetwork-setkey` moves the container's veth into `/proc/<state.pid>/ns/net`
//! there), `poststart` by `start` once the container's process runs, `poststop` by `delete`.
//! `createContainer` and `startContainer` belong to the container's namespaces, which are the
//! guest's: like every hook they are left out of the spec the agent gets
//! ([`crate::container::guest::guest_spec`]).
//!
//! Each hook gets the OCI state on stdin (`ociVersion, id, status, pid, bundle, annotations`;
//! status `creating` for prestart/createRuntime, `running` for poststart, `stopped` with pid 0
//! for poststop, as runc gives them), runs with its `args` (`args[0]` is its argv\[0\]: Docker's
//! hook is `/proc/<dockerd>/exe` called `libnetwork-setkey`), exactly its `env` when it has one
//! (else the runtime's, as runc's Go `exec.Cmd` with a nil environment) and is killed past its
//! `timeout`. Its output is kept in memory files (a hook that leaves a daemon holding a pipe
//! cannot hang the runtime) and quoted when it fails, in runc's words: `error running
//! prestart hook #0 (PATH): exit status 1, stdout: ..., stderr: ...`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Spec};
use serde::Serialize;

/// How often a running hook is looked at.
const POLL: Duration = Duration::from_millis(10);
/// How much of a failed hook's stdout and stderr the error quotes (the end of each).
const OUTPUT_TAIL: usize = 2048;

/// The hook kinds that run on the host, in the spec's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Prestart,
    CreateRuntime,
    Poststart,
    Poststop,
}

impl HookKind {
    /// The spec's name of the kind (runc's error messages use it).
    pub fn name(self) -> &'static str {
        match self {
            Self::Prestart => "prestart",
            Self::CreateRuntime => "createRuntime",
            Self::Poststart => "poststart",
            Self::Poststop => "poststop",
        }
    }

    /// The hooks of this kind in `spec`, in order.
    pub fn of(self, spec: &Spec) -> Vec<Hook> {
        let Some(hooks) = spec.hooks() else { return Vec::new() };
        let list = match self {
            // Deprecated by the spec, still what Docker 20.10 sends.
            #[allow(deprecated)]
            Self::Prestart => hooks.prestart(),
            Self::CreateRuntime => hooks.create_runtime(),
            Self::Poststart => hooks.poststart(),
            Self::Poststop => hooks.poststop(),
        };
        list.clone().unwrap_or_default()
    }
}

/// Why a hook failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("error running {kind} hook #{index} ({}): {why}", path.display())]
    Failed { kind: &'static str, index: usize, path: PathBuf, why: String },
}

/// The OCI state a hook reads on stdin (the spec's `State`; runc's field order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookState {
    pub oci_version: String,
    pub id: String,
    /// `creating`, `created`, `running` or `stopped`.
    pub status: &'static str,
    /// The monitor's pid (0 once stopped): its network namespace is the container's.
    #[serde(skip_serializing_if = "is_zero")]
    pub pid: u32,
    pub bundle: PathBuf,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn is_zero(pid: &u32) -> bool {
    *pid == 0
}

impl HookState {
    /// The state of container `id` of `bundle` (absolute) with `spec`'s annotations.
    pub fn new(id: &str, status: &'static str, pid: u32, bundle: &Path, spec: &Spec) -> Self {
        Self {
            oci_version: oci_spec::runtime::VERSION.to_owned(),
            id: id.to_owned(),
            status,
            pid,
            bundle: bundle.to_owned(),
            annotations: spec.annotations().clone().unwrap_or_default().into_iter().collect(),
        }
    }
}

/// Runs `spec`'s hooks of each of `kinds`, in order; stops at the first failure.
pub fn run_kinds(kinds: &[HookKind], spec: &Spec, state: &HookState) -> Result<(), HookError> {
    for kind in kinds {
        run_all(*kind, &kind.of(spec), state)?;
    }
    Ok(())
}

/// Runs `hooks` (of `kind`) one after the other; stops at the first failure.
pub fn run_all(kind: HookKind, hooks: &[Hook], state: &HookState) -> Result<(), HookError> {
    if hooks.is_empty() {
        return Ok(());
    }
    // Strings, numbers and a map of strings always serialize.
    let json = serde_json::to_vec(state).unwrap_or_default();
    for (index, hook) in hooks.iter().enumerate() {
        run_one(hook, &json).map_err(|why| HookError::Failed {
            kind: kind.name(),
            index,
            path: hook.path().clone(),
            why,
        })?;
    }
    Ok(())
}

/// Runs `hook` with `state` on its stdin; why it failed, in runc's words.
fn run_one(hook: &Hook, state: &[u8]) -> Result<(), String> {
    let mut stdin = memory_file().map_err(|err| format!("cannot make its stdin: {err}"))?;
    stdin.write_all(state).and_then(|()| stdin.seek(SeekFrom::Start(0)).map(drop)).map_err(|err| err.to_string())?;
    let (stdout, stderr) = match (memory_file(), memory_file()) {
        (Ok(out), Ok(err)) => (out, err),
        (Err(err), _) | (_, Err(err)) => return Err(format!("cannot capture its output: {err}")),
    };
    let mut command = Command::new(hook.path());
    let args = hook.args().as_deref().unwrap_or_default();
    if let Some((argv0, rest)) = args.split_first() {
        command.arg0(argv0).args(rest);
    }
    if let Some(env) = hook.env() {
        command.env_clear();
        command.envs(env.iter().filter_map(|kv| kv.split_once('=')));
    }
    let clone = |file: &File| file.try_clone().map(Stdio::from).map_err(|err| err.to_string());
    command.stdin(Stdio::from(stdin)).stdout(clone(&stdout)?).stderr(clone(&stderr)?);
    let mut child = command.spawn().map_err(|err| err.to_string())?;
    let timeout = hook.timeout().filter(|t| *t > 0).map(|t| Duration::from_secs(t.unsigned_abs()));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(err) => return Err(err.to_string()),
        }
        if let Some(limit) = timeout.filter(|limit| started.elapsed() >= *limit) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("hook ran past specified timeout of {:.1}s", limit.as_secs_f64()));
        }
        std::thread::sleep(POLL);
    };
    if status.success() {
        return Ok(());
    }
    Err(format!("{}, stdout: {}, stderr: {}", describe(status), tail(stdout), tail(stderr)))
}

/// An exit status as Go prints it (`exit status 1`, `signal: killed` spelled by number).
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("signal: {signal}"),
        (None, None) => status.to_string(),
    }
}

/// The end of what the hook wrote to `file`, trimmed.
fn tail(mut file: File) -> String {
    let mut bytes = Vec::new();
    let _ = file.seek(SeekFrom::Start(0)).and_then(|_| file.read_to_end(&mut bytes));
    let start = bytes.len().saturating_sub(OUTPUT_TAIL);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}

/// An anonymous file in memory (close-on-exec; a child gets a duplicate as its stdio).
fn memory_file() -> io::Result<File> {
    // SAFETY: memfd_create reads the static NUL-terminated name and returns a new descriptor
    // or -1; it touches no other memory.
    let fd = unsafe { libc::memfd_create(c"wisp-hook".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(hooks: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {"a": "b"},
            "hooks": hooks,
        }))
        .unwrap()
    }

    fn state(spec: &Spec) -> HookState {
        HookState::new("c1", "creating", 42, Path::new("/b"), spec)
    }

    #[test]
    fn the_state_is_runcs_json() {
        let s = spec(serde_json::json!({}));
        let json = serde_json::to_value(state(&s)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"ociVersion": oci_spec::runtime::VERSION, "id": "c1", "status": "creating",
                               "pid": 42, "bundle": "/b", "annotations": {"a": "b"}})
        );
        let stopped = HookState { pid: 0, status: "stopped", ..state(&s) };
        assert!(serde_json::to_value(stopped).unwrap().get("pid").is_none(), "pid left out once stopped");
    }

    #[test]
    fn a_hook_reads_the_state_and_gets_its_argv0_args_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        // A variable of the runtime's environment that the hook's own env must hide.
        let shell_own = ["PATH", "PWD", "SHLVL", "_", "OLDPWD"];
        let inherited = std::env::vars().map(|(k, _)| k).find(|k| !shell_own.contains(&k.as_str()) && !k.contains('-'));
        let probe = inherited.clone().unwrap_or_else(|| "NOT_SET_ANYWHERE".into());
        let script = format!(
            "echo \"$(tr '\\0' ' ' < /proc/$$/cmdline | cut -d' ' -f1) $0 $1 $FOO ${{{probe}:-hidden}}\" > {0}; cat >> {0}",
            out.display()
        );
        let s = spec(serde_json::json!({
            "prestart": [{"path": "/bin/sh", "args": ["my-hook", "-c", script, "zero", "first"], "env": ["FOO=bar"]}]
        }));
        run_kinds(&[HookKind::Prestart, HookKind::CreateRuntime], &s, &state(&s)).unwrap();
        let written = std::fs::read_to_string(&out).unwrap();
        let (line, json) = written.split_once('\n').unwrap();
        assert_eq!(line, "my-hook zero first bar hidden", "argv0, args, exactly its env ({inherited:?} hidden)");
        let read: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(read["pid"], 42);
        assert_eq!(read["status"], "creating");
    }

    #[test]
    fn a_failing_hook_is_named_with_its_output_and_stops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let later = dir.path().join("later");
        let s = spec(serde_json::json!({
            "createRuntime": [
                {"path": "/bin/true"},
                {"path": "/bin/sh", "args": ["sh", "-c", "echo out; echo boom >&2; exit 7"]},
                {"path": "/bin/sh", "args": ["sh", "-c", format!("touch {}", later.display())]}
            ]
        }));
        let err = run_kinds(&[HookKind::CreateRuntime], &s, &state(&s)).unwrap_err().to_string();
        assert_eq!(err, "error running createRuntime hook #1 (/bin/sh): exit status 7, stdout: out, stderr: boom");
        assert!(!later.exists(), "the hooks after a failure do not run");
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed() {
        let s = spec(serde_json::json!({"poststart": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]}));
        let started = Instant::now();
        let err = run_all(HookKind::Poststart, &HookKind::Poststart.of(&s), &state(&s)).unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        assert!(err.contains("poststart hook #0 (/bin/sleep): hook ran past specified timeout of 1.0s"), "{err}");
    }

    #[test]
    fn a_missing_hook_binary_is_an_error_and_no_hooks_is_fine() {
        let s = spec(serde_json::json!({"poststop": [{"path": "/nonexistent/hook"}]}));
        let err = run_all(HookKind::Poststop, &HookKind::Poststop.of(&s), &state(&s)).unwrap_err().to_string();
        assert!(err.starts_with("error running poststop hook #0 (/nonexistent/hook): "), "{err}");
        assert!(run_kinds(&[HookKind::Prestart], &spec(serde_json::json!({})), &state(&s)).is_ok());
    }
}
