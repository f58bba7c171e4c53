//! The sizes table: how big each artifact is, beside the project's targets for the agent binary
//! and the agent-only initrd.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use crate::inputs::{Inputs, Packed};
use crate::json::SizeEntry;

/// Target: the agent binary.
const AGENT_TARGET_BYTES: u64 = 3 * 1024 * 1024;
/// Target: the agent-only initrd.
const INITRD_TARGET_BYTES: u64 = 3 * 1024 * 1024 / 2;
/// Target: the true floor's initrd (issue 18: under 100 KB, no busybox).
const TRUE_FLOOR_TARGET_BYTES: u64 = 100 * 1000;

/// Every artifact's size, in the table's order.
pub fn sizes(inputs: &Inputs, packed: &Packed) -> Result<Vec<SizeEntry>> {
    let mut sizes = vec![
        size_entry("agent binary (static)", &inputs.agent, Some(AGENT_TARGET_BYTES))?,
        size_entry("initrd agent-only, uncompressed (make)", &inputs.initrd, None)?,
        size_entry("initrd agent-only, gzip -9", &packed.gzip_initrd, Some(INITRD_TARGET_BYTES))?,
        size_entry("initrd agent-only, zstd -19", &packed.zstd_initrd, Some(INITRD_TARGET_BYTES))?,
        size_entry("initrd agent-only, lz4 -l -9", &packed.lz4_initrd, Some(INITRD_TARGET_BYTES))?,
        size_entry("initrd agent-only, xz (crc32, 1 MiB dict)", &packed.xz_initrd, Some(INITRD_TARGET_BYTES))?,
        size_entry("initrd agent + busybox, gzip", &inputs.busybox_initrd, None)?,
    ];
    if inputs.cloud_initrd.is_file() {
        sizes.push(size_entry("initrd agent + cloud modules, gzip", &inputs.cloud_initrd, None)?);
    }
    sizes.push(size_entry("true floor /init (floor-init, static)", &inputs.floor_init, None)?);
    sizes.push(size_entry(
        "initrd true floor, uncompressed",
        &packed.true_floor_initrd,
        Some(TRUE_FLOOR_TARGET_BYTES),
    )?);
    sizes.push(size_entry("initrd busybox floor (script), gzip", &packed.floor_initrd, None)?);
    sizes.push(size_entry("kernel bzImage (q35)", &inputs.kernel, None)?);
    sizes.push(size_entry("kernel vmlinux (microvm, PVH)", &inputs.vmlinux, None)?);
    Ok(sizes)
}

fn size_entry(name: &'static str, path: &Path, target_bytes: Option<u64>) -> Result<SizeEntry> {
    let bytes = fs::metadata(path).with_context(|| format!("reading the size of {}", path.display()))?.len();
    Ok(SizeEntry { name, path: path.to_owned(), bytes, target_bytes })
}
