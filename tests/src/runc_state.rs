//! runc's own records of the containers a private [`crate::Containerd`] ran.
//!
//! containerd-shim-runc-v2 keeps runc's state at its default root, `/run/containerd/runc/<ns>`,
//! outside the private containerd's directory; ctr offers no way to move it for
//! `io.containerd.runc.v2`. A shim killed without its `delete` (which is how the harness stops
//! what a test left running) leaves `<ns>/<id>` behind, and the next `runc create` of that id in
//! that namespace fails with "container with given ID already exists": a test then fails because
//! an earlier one ran. So the harness forgets, with `runc delete --force`, exactly the records
//! whose bundle lay in a containerd directory of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

/// containerd-shim-runc-v2's default `--root` parent: one directory per namespace below it.
pub const RUNC_ROOT: &str = "/run/containerd/runc";

/// One entry of `runc list --format json`.
#[derive(Debug, Deserialize)]
struct Listed {
    id: String,
    status: String,
    bundle: PathBuf,
}

/// Every runc record in every namespace, as (runc root, entry).
fn records() -> Vec<(PathBuf, Listed)> {
    let Ok(namespaces) = std::fs::read_dir(RUNC_ROOT) else { return Vec::new() };
    let mut found = Vec::new();
    for root in namespaces.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
        let Ok(out) = Command::new("runc").arg("--root").arg(&root).args(["list", "--format", "json"]).output() else {
            continue;
        };
        // An empty root lists as `null`.
        let listed: Option<Vec<Listed>> = serde_json::from_slice(&out.stdout).ok().flatten();
        found.extend(listed.unwrap_or_default().into_iter().map(|entry| (root.clone(), entry)));
    }
    found
}

fn delete(root: &Path, id: &str) {
    let _ = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["delete", "--force", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Forgets the records of containers whose bundle lies under `dir` (a private containerd's
/// state), once their shims are gone.
pub fn forget_under(dir: &Path) {
    for (root, entry) in records() {
        if entry.bundle.starts_with(dir) {
            delete(&root, &entry.id);
        }
    }
}

/// Forgets stopped records whose bundle is gone and was a private containerd's (its temp
/// directory `wisp-ctd-*`): what a harness killed before its drop left behind.
pub fn forget_stale() {
    for (root, entry) in records() {
        let ours = entry.bundle.components().any(|c| c.as_os_str().to_string_lossy().starts_with("wisp-ctd-"));
        if ours && entry.status == "stopped" && !entry.bundle.exists() {
            delete(&root, &entry.id);
        }
    }
}
