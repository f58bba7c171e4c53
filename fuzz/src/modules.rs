//! Target `kernel_modules`: rootfs-builder's readers of kernel module sources, the inputs of
//! `rootfs-builder initrd --modules-from` (a module tree or a Debian kernel package).
//!
//! The first byte of an input chooses the reader, the rest is its input:
//! - `0`: `modules.dep` text; what parses must render and parse back to the same entries;
//! - `1`: an ELF file (a `.ko`): header, sections, `.modinfo`, interpreter;
//! - `2`: a `.deb` (an ar archive with a gz/xz/zst/plain `data.tar`): opened as a module
//!   source and selected from, as the initrd build does (dependency closure, decompression).

use std::io;
use std::path::Path;

use rootfs_builder::elf::{self, Elf};
use rootfs_builder::modules::{self, ModulesDep};

/// Selector byte values.
pub const MODULES_DEP: u8 = 0;
/// See [`MODULES_DEP`].
pub const ELF: u8 = 1;
/// See [`MODULES_DEP`].
pub const DEB: u8 = 2;

/// One process's state: where a package input is written to be opened.
#[derive(Debug)]
pub struct Harness {
    dir: tempfile::TempDir,
}

impl Harness {
    /// Creates the scratch directory.
    pub fn new() -> io::Result<Self> {
        Ok(Self { dir: tempfile::Builder::new().prefix("wisp-fuzz-modules.").tempdir()? })
    }

    /// Runs one input.
    pub fn run(&self, data: &[u8]) {
        let Some((&mode, rest)) = data.split_first() else { return };
        match mode {
            MODULES_DEP => modules_dep(rest),
            ELF => elf_file(rest),
            DEB => self.deb(rest),
            _ => {}
        }
    }

    fn deb(&self, data: &[u8]) {
        let path = self.dir.path().join("linux-image.deb");
        std::fs::write(&path, data).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        let Ok(tree) = modules::open(&path) else { return };
        let _ = (tree.version(), tree.has_modules_dep());
        if let Ok(selection) = tree.select(&[]) {
            // What the initrd gets must itself be a valid modules.dep.
            ModulesDep::parse(&selection.modules_dep, Path::new("selected"))
                .unwrap_or_else(|e| panic!("the selection's modules.dep does not parse: {e}"));
        }
    }
}

fn modules_dep(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let origin = Path::new("modules.dep");
    let Ok(dep) = ModulesDep::parse(text, origin) else { return };
    let rendered = dep.render();
    let again = ModulesDep::parse(&rendered, origin).unwrap_or_else(|e| panic!("rendered modules.dep: {e}"));
    assert_eq!(again, dep, "modules.dep changed on render and parse");
    for entry in &dep.entries {
        let _ = modules::module_name(&entry.path);
    }
}

fn elf_file(data: &[u8]) {
    let _ = elf::modinfo(data);
    if let Ok(elf) = Elf::parse(data) {
        let _ = (elf.is_executable_type(), elf.interpreter(), elf.section(".modinfo"), elf.section(".interp"));
    }
}
