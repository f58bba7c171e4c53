//! Block devices plugged into a RUNNING container (`wisp.v1.BlockVolume`; Kata has no such
//! RPC).
//!
//! HotPlug waits for the disk the host plugged (its PCI path, through the uevent table),
//! allows it in the container's device cgroup, then creates the node (and mounts it if
//! asked) inside the container, every path resolved inside the container's root. Entering a
//! mount namespace with `setns(CLONE_NEWNS)` fails in a multi-threaded process, and the agent
//! is one, so that part runs in a fresh single-threaded copy of the agent,
//! `/proc/self/exe __hotplug` ([`child`]), as the container launcher does. HotUnplug reverses
//! every step.

pub mod child;

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::stat::{major, minor, stat};
use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxResourcesBuilder};
use protocols::wisp::{HotPlugRequest, HotUnplugRequest};

use crate::error::AgentError;
use crate::guest_path;
use crate::sandbox::Sandbox;

/// The argument that starts the helper.
pub const CHILD_ARG: &str = "__hotplug";

/// HotPlug: see the module docs.
pub async fn plug(sandbox: &Sandbox, req: &HotPlugRequest) -> Result<PathBuf, AgentError> {
    guest_path::check("device_path", Path::new(&req.device_path))?;
    if !req.mount_point.is_empty() {
        guest_path::check("mount_point", Path::new(&req.mount_point))?;
    }
    let c = sandbox.container(&req.container_id)?;
    let (devices, timeout) = (sandbox.device_table(), sandbox.hotplug_timeout());
    let pci = req.pci_path.clone();
    let guest = tokio::task::spawn_blocking(move || devices.wait_pci(&pci, timeout))
        .await
        .map_err(|e| AgentError::FailedPrecondition(format!("device wait task: {e}")))??;
    let st = stat(&guest).map_err(|e| AgentError::FailedPrecondition(format!("stat {}: {e}", guest.display())))?;
    let (maj, min) = (major(st.st_rdev) as i64, minor(st.st_rdev) as i64);
    cgroup_rule(&c, true, maj, min)?;
    let mut args =
        vec!["plug".to_owned(), c.init_pid().to_string(), req.device_path.clone(), maj.to_string(), min.to_string()];
    if !req.mount_point.is_empty() {
        let source = guest.to_string_lossy().into_owned();
        args.extend([source, req.mount_point.clone(), req.fstype.clone(), req.options.join(",")]);
    }
    if let Err(e) = run_child(&args).await {
        let _ = cgroup_rule(&c, false, maj, min);
        return Err(e);
    }
    slog::info!(c.log(), "block device plugged into the running container"; "guest" => %guest.display(),
        "device_path" => &req.device_path, "mount_point" => &req.mount_point);
    Ok(guest)
}

/// HotUnplug: unmount, remove the node, deny the device again.
pub async fn unplug(sandbox: &Sandbox, req: &HotUnplugRequest) -> Result<(), AgentError> {
    guest_path::check("device_path", Path::new(&req.device_path))?;
    let c = sandbox.container(&req.container_id)?;
    let mut args = vec!["unplug".to_owned(), c.init_pid().to_string(), req.device_path.clone()];
    if !req.mount_point.is_empty() {
        guest_path::check("mount_point", Path::new(&req.mount_point))?;
        args.push(req.mount_point.clone());
    }
    let rdev = run_child(&args).await?;
    if let Some((maj, min)) = rdev {
        cgroup_rule(&c, false, maj, min)?;
    }
    slog::info!(c.log(), "block device unplugged from the running container"; "device_path" => &req.device_path);
    Ok(())
}

/// Allows (or denies) block device `maj:min` in the container's device cgroup.
fn cgroup_rule(c: &crate::container::Container, allow: bool, maj: i64, min: i64) -> Result<(), AgentError> {
    let Some(cg) = c.cgroup() else { return Ok(()) };
    let rule = LinuxDeviceCgroupBuilder::default()
        .allow(allow)
        .typ(LinuxDeviceType::B)
        .major(maj)
        .minor(min)
        .access("rwm")
        .build()
        .map_err(|e| AgentError::InvalidArgument(format!("device rule: {e}")))?;
    let resources = LinuxResourcesBuilder::default()
        .devices(vec![rule])
        .build()
        .map_err(|e| AgentError::InvalidArgument(format!("device rule: {e}")))?;
    cg.update(&resources).map_err(|e| AgentError::FailedPrecondition(format!("device cgroup: {e}")))
}

/// Runs the helper; its stdout is the node's `major:minor` (for unplug), stderr its error.
async fn run_child(args: &[String]) -> Result<Option<(i64, i64)>, AgentError> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(CHILD_ARG).args(args);
    let out = tokio::task::spawn_blocking(move || {
        // The reaper would collect the helper before `output` waits for it (ECHILD).
        let _own = crate::process::reaper::own_children();
        cmd.output()
    })
    .await
    .map_err(|e| AgentError::FailedPrecondition(format!("hot-plug helper task: {e}")))?
    .map_err(|e| AgentError::FailedPrecondition(format!("cannot start /proc/self/exe {CHILD_ARG}: {e}")))?;
    if !out.status.success() {
        return Err(AgentError::FailedPrecondition(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.trim().split_once(':').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?))))
}
