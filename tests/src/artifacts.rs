//! Where the built artifacts are.
//!
//! `make` builds them under the workspace's `target/`; each path can be overridden by an
//! environment variable (to test another kernel, say):
//!
//! | [`Artifact`] | default path (under the workspace root) | override |
//! |---|---|---|
//! | [`Artifact::Kernel`] | `target/kernel/bzImage` | `WISP_KERNEL` |
//! | [`Artifact::Vmlinux`] | `target/kernel/vmlinux` (PVH entry, for microvm) | `WISP_VMLINUX` |
//! | [`Artifact::Initrd`] | `target/initrd/wisp.initrd` (gzip newc cpio) | `WISP_INITRD` |
//! | [`Artifact::Agent`] | `target/x86_64-unknown-linux-gnu/release/wisp-agent` | `WISP_AGENT` |
//! | [`Artifact::RootfsBuilder`] | `target/release/rootfs-builder` (else `target/debug/`) | `WISP_ROOTFS_BUILDER` |
//! | [`Artifact::FloorInit`] | `target/floor-init/release/wisp-floor-init` (the true floor's `/init`) | `WISP_FLOOR_INIT` |

use std::env;
use std::fmt;
use std::path::{Path, PathBuf};

/// A missing artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The artifact's file does not exist.
    #[error("{artifact} not found at {}: {hint}", path.display())]
    Missing {
        /// Which artifact.
        artifact: Artifact,
        /// Where it was looked for.
        path: PathBuf,
        /// How to get it.
        hint: String,
    },
}

/// A file built by `make` that VM tests need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Artifact {
    /// The guest kernel as a bzImage (pc, q35).
    Kernel,
    /// The guest kernel as an uncompressed ELF with a PVH entry (microvm).
    Vmlinux,
    /// The guest initrd with wisp-init and the agent.
    Initrd,
    /// The static agent binary.
    Agent,
    /// The host tool that packs initrds (`rootfs-builder`).
    RootfsBuilder,
    /// The true floor's `/init` (`floor-init/`, built by `make floor-init`).
    FloorInit,
}

impl Artifact {
    /// All artifacts.
    pub const ALL: [Artifact; 6] =
        [Self::Kernel, Self::Vmlinux, Self::Initrd, Self::Agent, Self::RootfsBuilder, Self::FloorInit];

    /// The environment variable overriding this artifact's path.
    pub fn env_var(self) -> &'static str {
        match self {
            Self::Kernel => "WISP_KERNEL",
            Self::Vmlinux => "WISP_VMLINUX",
            Self::Initrd => "WISP_INITRD",
            Self::Agent => "WISP_AGENT",
            Self::RootfsBuilder => "WISP_ROOTFS_BUILDER",
            Self::FloorInit => "WISP_FLOOR_INIT",
        }
    }

    /// The default path, relative to the workspace root.
    pub fn default_relative_path(self) -> &'static str {
        match self {
            Self::Kernel => "target/kernel/bzImage",
            Self::Vmlinux => "target/kernel/vmlinux",
            Self::Initrd => "target/initrd/wisp.initrd",
            Self::Agent => "target/x86_64-unknown-linux-gnu/release/wisp-agent",
            Self::RootfsBuilder => "target/release/rootfs-builder",
            Self::FloorInit => "target/floor-init/release/wisp-floor-init",
        }
    }

    /// Where this artifact is expected: the override if its variable is set, else the default.
    /// Does not check that the file exists.
    pub fn expected_path(self) -> PathBuf {
        match env::var_os(self.env_var()) {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => workspace_root().join(self.default_relative_path()),
        }
    }

    /// The artifact's path, or an error telling how to build it.
    pub fn path(self) -> Result<PathBuf, ArtifactError> {
        self.check(self.expected_path(), self.overridden())
    }

    /// Whether this artifact's variable is set (to something non-empty).
    fn overridden(self) -> bool {
        env::var_os(self.env_var()).is_some_and(|v| !v.is_empty())
    }

    fn check(self, path: PathBuf, overridden: bool) -> Result<PathBuf, ArtifactError> {
        if path.is_file() {
            return Ok(path);
        }
        let hint = if overridden {
            format!("it was given by {}", self.env_var())
        } else {
            format!("run `make` in {} (or point {} at one)", workspace_root().display(), self.env_var())
        };
        Err(ArtifactError::Missing { artifact: self, path, hint })
    }
}

impl fmt::Display for Artifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kernel => "guest kernel (bzImage)",
            Self::Vmlinux => "guest kernel (PVH vmlinux)",
            Self::Initrd => "guest initrd",
            Self::Agent => "agent binary",
            Self::RootfsBuilder => "rootfs-builder",
            Self::FloorInit => "true floor /init (wisp-floor-init)",
        })
    }
}

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
}

/// The workspace's `target/` directory (`CARGO_TARGET_DIR` is not consulted: `make` puts the
/// guest artifacts under `target/` whatever cargo's own target directory is).
pub fn target_dir() -> PathBuf {
    workspace_root().join("target")
}

/// The bzImage for pc/q35 ([`Artifact::Kernel`]).
pub fn kernel() -> Result<PathBuf, ArtifactError> {
    Artifact::Kernel.path()
}

/// The PVH vmlinux for microvm ([`Artifact::Vmlinux`]).
pub fn vmlinux() -> Result<PathBuf, ArtifactError> {
    Artifact::Vmlinux.path()
}

/// The wisp initrd ([`Artifact::Initrd`]).
pub fn initrd() -> Result<PathBuf, ArtifactError> {
    Artifact::Initrd.path()
}

/// The agent binary ([`Artifact::Agent`]).
pub fn agent() -> Result<PathBuf, ArtifactError> {
    Artifact::Agent.path()
}

/// The true floor's `/init` ([`Artifact::FloorInit`]).
pub fn floor_init() -> Result<PathBuf, ArtifactError> {
    Artifact::FloorInit.path()
}

/// The `rootfs-builder` binary ([`Artifact::RootfsBuilder`]): the release build `make` makes,
/// else a debug build, unless `WISP_ROOTFS_BUILDER` names one.
pub fn rootfs_builder() -> Result<PathBuf, ArtifactError> {
    Artifact::RootfsBuilder.path().or_else(|err| {
        let debug = target_dir().join("debug/rootfs-builder");
        if !Artifact::RootfsBuilder.overridden() && debug.is_file() {
            Ok(debug)
        } else {
            Err(err)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }

    #[test]
    fn defaults_live_under_the_workspace_target_dir() {
        for artifact in Artifact::ALL {
            // Only meaningful when the variable is not set by whoever runs the tests.
            if env::var_os(artifact.env_var()).is_none() {
                assert!(artifact.expected_path().starts_with(target_dir()), "{artifact}");
            }
        }
    }

    #[test]
    fn missing_artifact_says_what_and_how() {
        let root = workspace_root().display().to_string();
        let err = Artifact::Vmlinux.check("/nowhere/vmlinux".into(), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "guest kernel (PVH vmlinux) not found at /nowhere/vmlinux: run `make` in {root} (or point WISP_VMLINUX at one)"
            )
        );
        let err = Artifact::RootfsBuilder.check("/nowhere/rootfs-builder".into(), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("rootfs-builder not found at /nowhere/rootfs-builder: run `make` in {root} (or point WISP_ROOTFS_BUILDER at one)")
        );
        let err = Artifact::Agent.check("/given/agent".into(), true).unwrap_err();
        assert_eq!(err.to_string(), "agent binary not found at /given/agent: it was given by WISP_AGENT");
    }

    #[test]
    fn existing_artifact_is_returned() {
        let manifest = workspace_root().join("Cargo.toml");
        assert_eq!(Artifact::Kernel.check(manifest.clone(), true).unwrap(), manifest);
    }
}
