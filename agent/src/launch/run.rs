//! `wisp-agent run BUNDLE [--id ID]`: runs a bundle's config.json in the
//! foreground like `runc run`, through exactly [`create`] and
//! [`StartHandle::start`], with the caller's stdio. The exit code is the
//! container's (128 + the signal when a signal killed it). It is how the
//! launcher is tested for real without the RPC layer.

use std::path::Path;

use oci_spec::runtime::{ContainerState, Spec};

use super::{create, run_hooks, state, InitRequest, LaunchError, StdioFds};

/// The namespace types the launcher knows (runc's names plus aliases).
const NAMESPACE_TYPES: [&str; 10] = ["pid", "network", "net", "mount", "mnt", "ipc", "uts", "user", "cgroup", "time"];

/// Reads `bundle/config.json`; an unknown namespace type is named in the
/// error rather than left to the JSON decoder's wording.
pub fn load_spec(bundle: &Path) -> Result<Spec, LaunchError> {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| LaunchError::NotFound(format!("cannot read {}: {e}", path.display())))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| LaunchError::InvalidSpec(format!("{}: {e}", path.display())))?;
    let namespaces = value.pointer("/linux/namespaces").and_then(|n| n.as_array()).cloned().unwrap_or_default();
    for ns in &namespaces {
        let typ = ns.get("type").and_then(|t| t.as_str()).unwrap_or("");
        if !NAMESPACE_TYPES.contains(&typ) {
            return Err(LaunchError::InvalidSpec(format!("{}: unknown namespace type {typ:?}", path.display())));
        }
    }
    let mut spec: Spec =
        serde_json::from_value(value).map_err(|e| LaunchError::InvalidSpec(format!("{}: {e}", path.display())))?;
    // Like runc, a relative root is relative to the bundle.
    if let Some(root) = spec.root_mut() {
        if root.path().is_relative() {
            let abs = bundle.join(root.path());
            root.set_path(abs);
        }
    }
    Ok(spec)
}

fn dup_stdio(fd: i32) -> Result<std::os::fd::OwnedFd, LaunchError> {
    // SAFETY: fds 0-2 of this process stay open for its whole life; the
    // borrow only lasts for the dup.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned().map_err(|source| LaunchError::Launcher { what: format!("dup fd {fd}"), source })
}

/// Runs the container to its end; returns its exit code.
pub fn run(bundle: &Path, id: &str) -> Result<i32, LaunchError> {
    let bundle = std::fs::canonicalize(bundle)
        .map_err(|e| LaunchError::NotFound(format!("bundle {}: {e}", bundle.display())))?;
    let spec = load_spec(&bundle)?;
    if spec.process().as_ref().and_then(|p| p.terminal()) == Some(true) {
        eprintln!("wisp-agent run: process.terminal is ignored; the container gets this command's stdio");
    }
    let stdio = StdioFds { stdin: dup_stdio(0)?, stdout: dup_stdio(1)?, stderr: dup_stdio(2)?, terminal: false };
    let hooks = spec.hooks().clone().unwrap_or_default();
    let req = InitRequest { container_id: id.to_string(), spec: spec.clone(), bundle: bundle.clone(), stdio };
    let created = create(req, |_| Ok(()))?;
    let pid = created.pid;
    created.start.start()?;
    let st = state(id, ContainerState::Running, pid, &bundle, &spec);
    if let Err(e) = run_hooks(&hooks.poststart().clone().unwrap_or_default(), &st) {
        eprintln!("wisp-agent run: poststart: {e}");
    }
    let code = wait(pid)?;
    let st = state(id, ContainerState::Stopped, pid, &bundle, &spec);
    if let Err(e) = run_hooks(&hooks.poststop().clone().unwrap_or_default(), &st) {
        eprintln!("wisp-agent run: poststop: {e}");
    }
    Ok(code)
}

fn wait(pid: i32) -> Result<i32, LaunchError> {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(e) => {
                return Err(LaunchError::Launcher { what: format!("wait for pid {pid}"), source: e.into() });
            }
        }
    }
}
