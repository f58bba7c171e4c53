//! The committed inputs of each target: the seed corpus (`fuzz/corpus/<target>/`, where
//! AFL++ starts) and the inputs that once crashed (`fuzz/regressions/<target>/`, each named
//! after what it found; the tests replay both).

use std::path::{Path, PathBuf};

/// Every target, as named by its binary and its corpus directory.
pub const TARGETS: [&str; 7] =
    ["agent_rpc", "oci_from_pb", "oci_to_pb", "shim_config", "direct_volume", "layer_apply", "kernel_modules"];

/// The fuzz crate's directory.
pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The seed corpus directory of `target`.
pub fn seeds_dir(target: &str) -> PathBuf {
    crate_dir().join("corpus").join(target)
}

/// The regression directory of `target`.
pub fn regressions_dir(target: &str) -> PathBuf {
    crate_dir().join("regressions").join(target)
}

/// The seeds and regressions of `target`, sorted by path; a missing directory is empty.
pub fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in [seeds_dir(target), regressions_dir(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() && path.file_name().is_some_and(|n| n != "README.md") {
                let data = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                out.push((path, data));
            }
        }
    }
    out.sort();
    out
}
