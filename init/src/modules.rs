//! Loading the kernel modules an image ships, for distro kernels that build
//! virtio, vsock and file systems as modules.
//!
//! The image carries `/lib/modules/<release>/modules.dep` listing exactly the
//! modules it ships (rootfs-builder writes it); every one of them is loaded,
//! dependencies first. modprobe lists a module's dependencies so that the *last*
//! one must be loaded first; a depth-first walk over the reversed list gives a
//! valid order for any acyclic file and terminates on a cyclic one.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::ModuleInitFlags;

/// Load order for the modules of a `modules.dep` text, as paths relative to
/// the modules directory. Unknown dependencies are still listed (loading will
/// report them), duplicates and cycles are not.
pub fn load_order(modules_dep: &str) -> Vec<String> {
    let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut order_in_file = Vec::new();
    for line in modules_dep.lines() {
        let Some((module, rest)) = line.split_once(':') else { continue };
        let module = module.trim();
        if module.is_empty() {
            continue;
        }
        order_in_file.push(module);
        deps.insert(module, rest.split_whitespace().collect());
    }

    fn visit<'a>(
        m: &'a str,
        deps: &HashMap<&'a str, Vec<&'a str>>,
        seen: &mut HashSet<&'a str>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(m) {
            return;
        }
        for d in deps.get(m).map(Vec::as_slice).unwrap_or_default().iter().rev() {
            visit(d, deps, seen, out);
        }
        out.push(m.to_owned());
    }

    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for m in order_in_file {
        visit(m, &deps, &mut seen, &mut out);
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("cannot open {path}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("kernel refused {path}")]
    Load { path: PathBuf, source: Errno },
}

/// Loads one module file; an already loaded module is not an error.
pub fn load(path: &Path) -> Result<(), ModuleError> {
    let file = std::fs::File::open(path).map_err(|source| ModuleError::Open { path: path.to_owned(), source })?;
    let no_params = CString::default();
    match nix::kmod::finit_module(&file, &no_params, ModuleInitFlags::empty()) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(source) => Err(ModuleError::Load { path: path.to_owned(), source }),
    }
}

/// Loads every module listed in `dir/modules.dep`. A failing module is logged and
/// skipped: the device it drives will be missing, and whatever waits for that
/// device names it.
pub fn load_all(log: &slog::Logger, dir: &Path) {
    let dep = match std::fs::read_to_string(dir.join("modules.dep")) {
        Ok(text) => text,
        Err(e) => {
            slog::warn!(log, "cannot read modules.dep"; "dir" => %dir.display(), "error" => %e);
            return;
        }
    };
    let mut loaded = 0;
    for rel in load_order(&dep) {
        match load(&dir.join(&rel)) {
            Ok(()) => loaded += 1,
            Err(e) => slog::warn!(log, "module not loaded"; "module" => &rel, "error" => %e, "cause" => e_source(&e)),
        }
    }
    slog::info!(log, "kernel modules loaded"; "count" => loaded, "dir" => %dir.display());
}

fn e_source(e: &ModuleError) -> String {
    match e {
        ModuleError::Open { source, .. } => source.to_string(),
        ModuleError::Load { source, .. } => source.desc().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_come_first_in_modprobe_order() {
        let dep = "kernel/virtio.ko:\n\
                   kernel/virtio_ring.ko:\n\
                   kernel/virtio_pci.ko: kernel/legacy.ko kernel/modern.ko kernel/virtio.ko kernel/virtio_ring.ko\n\
                   kernel/legacy.ko:\nkernel/modern.ko:\n";
        let order = load_order(dep);
        let pos = |m: &str| order.iter().position(|x| x == m).unwrap();
        assert_eq!(order.len(), 5);
        for dep in ["kernel/legacy.ko", "kernel/modern.ko", "kernel/virtio.ko", "kernel/virtio_ring.ko"] {
            assert!(pos(dep) < pos("kernel/virtio_pci.ko"), "{dep} after virtio_pci in {order:?}");
        }
    }

    #[test]
    fn cycles_and_garbage_terminate() {
        let order = load_order("a.ko: b.ko\nb.ko: a.ko\n\n: x\nnot a dep line\nc.ko:");
        assert_eq!(order.len(), 3);
    }

    #[test]
    fn missing_module_file_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(&dir.path().join("nope.ko")).unwrap_err();
        assert!(matches!(err, ModuleError::Open { .. }));
        assert!(err.to_string().contains("nope.ko"));
    }
}
