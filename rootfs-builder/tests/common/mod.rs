//! Helpers shared by the integration tests.

use std::fs;
use std::path::Path;

/// A minimal static ELF64 executable header (no program headers, so no PT_INTERP).
pub fn tiny_static_elf() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    f[6] = 1;
    f[16] = 2; // ET_EXEC
    f[18] = 62; // x86-64
    f
}

/// The sorted entry names of `dir`.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}
