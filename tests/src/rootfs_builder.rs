//! Packs initrds with the workspace's own `rootfs-builder`, the tool `make` packs the real ones
//! with: a test or the bench then boots the same archive layout (skeleton, `/dev/console`,
//! modes) as production images, not a hand-rolled cpio.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use crate::artifacts::{self, ArtifactError};

/// Why an initrd could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// `rootfs-builder` is not built (the message says to run `make`).
    #[error(transparent)]
    NoBuilder(#[from] ArtifactError),
    /// `rootfs-builder` could not be started.
    #[error("running {}", builder.display())]
    Spawn {
        /// The binary.
        builder: PathBuf,
        /// Why it did not start.
        #[source]
        source: io::Error,
    },
    /// `rootfs-builder` ran and failed.
    #[error("{} failed with {status}:\n{stderr}", builder.display())]
    Failed {
        /// The binary.
        builder: PathBuf,
        /// How it exited.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// Runs `rootfs-builder initrd ARGS... -o OUT`, e.g. with `["--agent", AGENT, "--compress",
/// "zstd"]`. The builder writes `out` atomically: nothing is left behind on error.
pub fn initrd<I, S>(args: I, out: &Path) -> Result<(), PackError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let builder = artifacts::rootfs_builder()?;
    let output = Command::new(&builder)
        .arg("initrd")
        .args(args)
        .arg("-o")
        .arg(out)
        .output()
        .map_err(|source| PackError::Spawn { builder: builder.clone(), source })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        return Err(PackError::Failed { builder, status: output.status, stderr });
    }
    Ok(())
}
