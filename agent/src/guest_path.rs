//! The one rule for a path a request names inside the guest or a container: absolute, and
//! without `..`.
//!
//! The kernel resolves `..` against the real tree, after any symlink on the way, so a path
//! with `..` names a place its text does not show: `/nonexistent/..` is `/`, and a `local`
//! storage there, created and then released, would remove the guest's root. Storage mount
//! points, hot-plugged device nodes and their mount points, and container mount destinations
//! all pass through [`check`]; where the path is then opened inside a container's root,
//! `openat2(RESOLVE_IN_ROOT)` keeps symlinks inside it too (`launch/resolve.rs`).

use std::path::{Component, Path, PathBuf};

/// A path the rule refuses, with what it was meant to be.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path:?} must be absolute, without `..`")]
pub struct BadPath {
    pub what: &'static str,
    pub path: PathBuf,
}

/// `path` if it is absolute and has no `..` component; `what` names it in the refusal.
pub fn check<'a>(what: &'static str, path: &'a Path) -> Result<&'a Path, BadPath> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(BadPath { what, path: path.to_owned() });
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_without_parent_hops_pass() {
        for good in ["/", "/dev/xvdb", "/run/kata-containers/shared/x", "/a/./b", "/a//b"] {
            assert_eq!(check("mount point", Path::new(good)).expect(good), Path::new(good));
        }
    }

    #[test]
    fn relative_paths_and_parent_hops_are_refused_and_named() {
        for bad in ["", "dev/xvdb", "./x", "/dev/../etc/passwd", "/nonexistent/..", "/a/b/../../.."] {
            let err = check("mount point", Path::new(bad)).expect_err(bad);
            assert_eq!(err.to_string(), format!("mount point {bad:?} must be absolute, without `..`"));
        }
    }
}
