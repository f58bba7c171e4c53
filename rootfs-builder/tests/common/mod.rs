//! Helpers shared by the integration tests.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

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

/// The newest Debian cloud kernel's module tree (`/lib/modules/*-cloud-amd64`).
///
/// `make deps` installs linux-image-cloud-amd64. Without it these tests fail and
/// say so, rather than pass without looking; the version is not pinned, because
/// Debian bumps its ABI number with every kernel update.
pub fn cloud_module_tree() -> (String, String) {
    let version = fs::read_dir("/lib/modules")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|v| v.ends_with("-cloud-amd64") && Path::new("/lib/modules").join(v).join("modules.dep").exists())
        .max()
        .expect("no Debian cloud kernel modules in /lib/modules: run `make deps` (linux-image-cloud-amd64)");
    (format!("/lib/modules/{version}"), version)
}
