//! The launcher's errors. The variant says which ttrpc code the RPC layer
//! returns (a bad spec, something missing, or a failure of the setup itself);
//! the message names the path, syscall or binary at fault.

use std::io;

use serde::{Deserialize, Serialize};

/// Why a container process could not be created, started or exec'd.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The spec or request cannot be run as given (INVALID_ARGUMENT).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// A binary, path, user or namespace the spec names does not exist (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The kernel refused an operation (PERMISSION_DENIED).
    #[error("{0}")]
    PermissionDenied(String),
    /// A step of the setup failed (INTERNAL); the message names the step.
    #[error("{0}")]
    Setup(String),
    /// The launcher process could not be started or talked to (INTERNAL).
    #[error("launcher: {what}")]
    Launcher {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The launcher broke the protocol (died, or sent garbage) (INTERNAL).
    #[error("launcher: {0}")]
    Protocol(String),
    /// The caller's `place` callback (cgroup placement) failed (INTERNAL).
    #[error("cannot place pid {pid} into the container's cgroup: {msg}")]
    Place { pid: i32, msg: String },
    /// An OCI hook failed (the class follows the hook error).
    #[error(transparent)]
    Hook(#[from] super::hooks::HookError),
}

/// The serializable form of an error raised inside the launcher child,
/// sent over the socket and turned back into a [`LaunchError`] by the parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireError {
    pub kind: ErrorKind,
    pub msg: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ErrorKind {
    InvalidSpec,
    NotFound,
    PermissionDenied,
    Setup,
}

impl WireError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        WireError { kind: ErrorKind::InvalidSpec, msg: msg.into() }
    }

    pub fn not_found(msg: impl Into<String>) -> Self {
        WireError { kind: ErrorKind::NotFound, msg: msg.into() }
    }

    pub fn setup(msg: impl Into<String>) -> Self {
        WireError { kind: ErrorKind::Setup, msg: msg.into() }
    }

    /// A failed syscall: the class follows the errno (ENOENT is "not found",
    /// EPERM/EACCES "permission denied", EINVAL a bad spec).
    pub fn sys(what: impl std::fmt::Display, err: impl Into<io::Error>) -> Self {
        let err: io::Error = err.into();
        let kind = match err.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => ErrorKind::NotFound,
            Some(libc::EPERM) | Some(libc::EACCES) => ErrorKind::PermissionDenied,
            Some(libc::EINVAL) => ErrorKind::InvalidSpec,
            _ => ErrorKind::Setup,
        };
        WireError { kind, msg: format!("{what}: {err}") }
    }
}

impl From<WireError> for LaunchError {
    fn from(e: WireError) -> Self {
        match e.kind {
            ErrorKind::InvalidSpec => LaunchError::InvalidSpec(e.msg),
            ErrorKind::NotFound => LaunchError::NotFound(e.msg),
            ErrorKind::PermissionDenied => LaunchError::PermissionDenied(e.msg),
            ErrorKind::Setup => LaunchError::Setup(e.msg),
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}
