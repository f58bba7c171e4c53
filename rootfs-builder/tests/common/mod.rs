//! Helpers shared by the integration tests.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_rootfs-builder");

/// Runs the built rootfs-builder with `env` on top of a clean SOURCE_DATE_EPOCH.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("SOURCE_DATE_EPOCH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run rootfs-builder")
}

/// A temp dir holding a fake static agent (`agent`) and a floor script (`floor.sh`).
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("agent"), tiny_static_elf()).unwrap();
        fs::write(dir.path().join("floor.sh"), b"#!/bin/sh\necho floor\npoweroff -f\n").unwrap();
        Fixture { dir }
    }

    /// The path of `name` in the fixture, as a string for command lines.
    pub fn p(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }
}

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
