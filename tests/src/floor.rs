//! The boot floors: the cost of the kernel and QEMU alone, booted on the same VM as the agent.
//!
//! - The **true floor** ([`true_floor_initrd`]): `floor-init/`'s static `/init` of a few KiB in
//!   an initrd of about 2 KB, listening on the agent's vsock port and echoing; it prints
//!   [`FLOOR_MARKER`](crate::timeline::FLOOR_MARKER) with its `CLOCK_BOOTTIME` once it listens.
//!   The best any `/init` could do, with the kernel unpacking next to nothing.
//! - The **busybox floor** ([`initrd`]): a busybox script in a 1 MB initrd that prints the
//!   guest's uptime and powers off. Older, kept beside the true floor for comparison: its
//!   initrd's size and the shell hide part of what a big initrd costs the agent.
//!
//! The harness tests and `wisp-bench-boot` both boot them, so they are defined once, here.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::artifacts;
use crate::rootfs_builder::{self, PackError};

/// The floor's `/init`: mount proc, print the uptime on the console (the line
/// [`FLOOR_MARKER`](crate::timeline::FLOOR_MARKER) finds), power off. Nothing else.
pub const FLOOR_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev
[ -c /dev/console ] && exec >/dev/console 2>&1
echo "WISP-FLOOR uptime=$(/bin/busybox cat /proc/uptime)"
/bin/busybox poweroff -f
"#;

/// Why a busybox initrd could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// The `/init` script could not be written.
    #[error("writing {}", path.display())]
    Script {
        /// Where it was to be written.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// `rootfs-builder` is missing or failed.
    #[error(transparent)]
    Pack(#[from] PackError),
}

/// Packs the true floor's `/init` (`floor-init/`, [`artifacts::floor_init`]) alone into `out`,
/// compressed as `compression` says (`gzip`, `zstd`, `none`: `rootfs-builder --compress`).
pub fn true_floor_initrd(compression: &str, out: &Path) -> Result<(), FloorError> {
    let init = artifacts::floor_init().map_err(PackError::from)?;
    rootfs_builder::initrd(
        [OsStr::new("--init"), init.as_os_str(), OsStr::new("--compress"), OsStr::new(compression)],
        out,
    )?;
    Ok(())
}

/// Packs the busybox floor ([`FLOOR_INIT`]) into `out`; see [`busybox_initrd`].
pub fn initrd(out: &Path) -> Result<(), FloorError> {
    busybox_initrd(FLOOR_INIT, out)
}

/// Packs `init_script` as `/init` beside a static busybox (`/bin/busybox` and its applets) into
/// the gzip initrd `out`, with `rootfs-builder initrd --init SCRIPT --busybox`. The script is
/// written beside `out` ([`script_path`]) and kept, so the initrd can be rebuilt by hand.
pub fn busybox_initrd(init_script: &str, out: &Path) -> Result<(), FloorError> {
    let script = script_path(out);
    let write = || {
        fs::write(&script, init_script)?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))
    };
    write().map_err(|source| FloorError::Script { path: script.clone(), source })?;
    rootfs_builder::initrd([OsStr::new("--init"), script.as_os_str(), OsStr::new("--busybox")], out)?;
    Ok(())
}

/// Where [`busybox_initrd`] writes the script for `out`: `DIR/floor.initrd` gets `DIR/floor-init.sh`.
pub fn script_path(out: &Path) -> PathBuf {
    let stem = out.file_stem().map_or_else(|| "initrd".into(), |s| s.to_string_lossy());
    out.with_file_name(format!("{stem}-init.sh"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::{BootTimeline, FLOOR_MARKER};

    #[test]
    fn floor_prints_the_marker_and_powers_off() {
        assert!(FLOOR_INIT.contains(&format!("echo \"{FLOOR_MARKER}$(")), "{FLOOR_INIT}");
        assert!(FLOOR_INIT.trim_end().ends_with("poweroff -f"), "{FLOOR_INIT}");
        // What the script prints is what the timeline reads.
        let console = "[    1.5] Run /init as init process\nWISP-FLOOR uptime=1.62 0.20\n";
        assert_eq!(BootTimeline::parse(console).floor_uptime, Some(1.62));
    }

    #[test]
    fn the_script_is_written_beside_the_initrd() {
        assert_eq!(script_path(Path::new("/t/bench/floor.initrd")), Path::new("/t/bench/floor-init.sh"));
        assert_eq!(script_path(Path::new("idle.cpio")), Path::new("idle-init.sh"));
    }
}
