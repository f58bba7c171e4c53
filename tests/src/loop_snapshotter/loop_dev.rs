//! Loop devices through util-linux `losetup`, and which ones the kernel has backed by a file.
//!
//! `losetup` rather than the loop ioctls: `--find` allocates a free device and binds it in one
//! step and retries when another process (another helper's test) grabs the same device first,
//! which a hand-rolled `LOOP_CTL_GET_FREE` + `LOOP_CONFIGURE` would have to redo; it needs no
//! `unsafe`; and its command line is what a human types to reproduce a failure. The cost, a
//! process per attach, is nothing next to `mkfs.ext4`. The kernel's own view (sysfs) is what
//! the leak checks read, so they do not trust the snapshotter's bookkeeping.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a loop device could not be attached or detached.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// `losetup` could not be run.
    #[error("cannot run losetup (util-linux)")]
    Spawn(#[source] io::Error),
    /// `losetup` failed.
    #[error("losetup {args} failed: {stderr}")]
    Failed {
        /// Its arguments.
        args: String,
        /// What it printed.
        stderr: String,
    },
}

fn losetup(args: &[&std::ffi::OsStr]) -> Result<String, LoopError> {
    let out = Command::new("losetup").args(args).output().map_err(LoopError::Spawn)?;
    if !out.status.success() {
        let args = args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
        return Err(LoopError::Failed { args, stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Binds `image` to a free loop device (read-only if asked) and returns the device's path.
pub fn attach(image: &Path, read_only: bool) -> Result<PathBuf, LoopError> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["--find".as_ref(), "--show".as_ref()];
    if read_only {
        args.push("--read-only".as_ref());
    }
    args.push(image.as_os_str());
    losetup(&args).map(PathBuf::from)
}

/// Unbinds `device`. Still mounted somewhere, the kernel unbinds it when the last user lets go.
pub fn detach(device: &Path) -> Result<(), LoopError> {
    losetup(&["-d".as_ref(), device.as_os_str()]).map(drop)
}

/// Loop devices (`/dev/loopN`) whose backing file lies under `dir`, per `/sys/block`.
///
/// A backing file deleted while bound still counts: the kernel reports it as `PATH (deleted)`.
pub fn backed_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/sys/block") else { return Vec::new() };
    let mut devices: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter(|e| {
            fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|backing| Path::new(backing.trim_end()).starts_with(dir))
        })
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect();
    devices.sort();
    devices
}

/// The host's mounts (lines of `/proc/self/mountinfo`) whose source is `device`.
pub fn host_mounts_of(device: &str) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // After the " - " separator: filesystem type, then source.
    info.lines()
        .filter(|l| l.split(" - ").nth(1).and_then(|t| t.split(' ').nth(1)) == Some(device))
        .map(str::to_owned)
        .collect()
}

/// The root file system's line of a `/proc/mounts` text (device, mount point, type, options),
/// as a container printed it.
pub fn root_mount(mounts: &str) -> Option<Vec<String>> {
    mounts
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && f[1] == "/")
}
