//! Agent errors and the one place that decides which ttrpc code each becomes.
//!
//! A Kata runtime branches on the code (NOT_FOUND vs INVALID_ARGUMENT vs
//! INTERNAL), and a person reads the message: so the message carries the whole
//! source chain, and the code is chosen per variant, never a blanket INTERNAL.

use protocols::convert::from_pb::FromPbError;
use protocols::ttrpc::{self, Code};

use crate::launch::{HookError, LaunchError};
use crate::process::StdioError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error("process {exec_id:?} of container {container_id} not found")]
    ProcessNotFound { container_id: String, exec_id: String },
    #[error("container {0} already exists")]
    ContainerExists(String),
    #[error("exec {exec_id} already exists in container {container_id}")]
    ExecExists { container_id: String, exec_id: String },
    /// The request does not fit the container's or sandbox's state.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{what}: timed out after {secs}s")]
    Timeout { what: String, secs: u64 },
    /// ReadStdout/ReadStderr after the last byte. Kata's agent answers this
    /// with an error too, and the Kata shim ends its copy loop on any error.
    #[error("{stream} of {container_id}/{exec_id}: read meet eof")]
    Eof { container_id: String, exec_id: String, stream: &'static str },
    #[error("container {container_id}")]
    Spec { container_id: String, source: FromPbError },
    #[error("container {container_id}")]
    Launch { container_id: String, source: LaunchError },
    #[error("container {container_id}")]
    Hook { container_id: String, source: HookError },
    #[error("{container_id}/{exec_id}")]
    Stdio { container_id: String, exec_id: String, source: StdioError },
    #[error("container {container_id}")]
    Cgroup { container_id: String, source: crate::cgroups::CgroupError },
    #[error("{what}")]
    Sys { what: String, source: nix::Error },
    #[error("{what}")]
    Io { what: String, source: std::io::Error },
    #[error("cannot set the guest clock to {sec}.{usec:06}")]
    SetTime { sec: i64, usec: i64, source: nix::Error },
    #[error("cannot reseed the random device")]
    Reseed(#[from] wisp_init::entropy::EntropyError),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
}

impl AgentError {
    fn code(&self) -> Code {
        match self {
            AgentError::InvalidArgument(_) | AgentError::Spec { .. } => Code::INVALID_ARGUMENT,
            AgentError::PermissionDenied(_) => Code::PERMISSION_DENIED,
            AgentError::ContainerNotFound(_) | AgentError::ProcessNotFound { .. } => Code::NOT_FOUND,
            AgentError::ContainerExists(_) | AgentError::ExecExists { .. } => Code::ALREADY_EXISTS,
            AgentError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            AgentError::Timeout { .. } => Code::DEADLINE_EXCEEDED,
            AgentError::Eof { .. } | AgentError::Hook { .. } => Code::INTERNAL,
            AgentError::Launch { source, .. } => match source {
                LaunchError::InvalidSpec(_) => Code::INVALID_ARGUMENT,
                LaunchError::NotFound(_) => Code::NOT_FOUND,
                LaunchError::PermissionDenied(_) => Code::PERMISSION_DENIED,
                _ => Code::INTERNAL,
            },
            AgentError::Stdio { source, .. } => match source {
                StdioError::StdinClosed | StdioError::NoTerminal => Code::FAILED_PRECONDITION,
                StdioError::Write(e) if e.raw_os_error() == Some(libc::EPIPE) => Code::FAILED_PRECONDITION,
                _ => Code::INTERNAL,
            },
            AgentError::Cgroup { source, .. } => cgroup_code(source),
            AgentError::Sys { source, .. } => errno_code(*source),
            AgentError::Io { source, .. } => {
                source.raw_os_error().map_or(Code::INTERNAL, |e| errno_code(nix::Error::from_raw(e)))
            }
            AgentError::SetTime { source, .. } => errno_code(*source),
            AgentError::Reseed(wisp_init::entropy::EntropyError::Reseed(e)) => errno_code(*e),
            AgentError::Reseed(_) => Code::INTERNAL,
            AgentError::Device(e) => e.code(),
            AgentError::Storage(e) => e.code(),
            AgentError::Network(e) => e.code(),
        }
    }
}

impl From<crate::guest_path::BadPath> for AgentError {
    fn from(e: crate::guest_path::BadPath) -> Self {
        AgentError::InvalidArgument(e.to_string())
    }
}

pub(crate) fn errno_code(e: nix::Error) -> Code {
    match e {
        nix::Error::EPERM | nix::Error::EACCES => Code::PERMISSION_DENIED,
        nix::Error::EINVAL => Code::INVALID_ARGUMENT,
        nix::Error::ENOENT => Code::NOT_FOUND,
        nix::Error::EEXIST => Code::ALREADY_EXISTS,
        nix::Error::ETIMEDOUT => Code::DEADLINE_EXCEEDED,
        _ => Code::INTERNAL,
    }
}

fn cgroup_code(e: &crate::cgroups::CgroupError) -> Code {
    use crate::cgroups::CgroupError;
    match e {
        CgroupError::InvalidPath { .. } | CgroupError::InvalidResource(_) => Code::INVALID_ARGUMENT,
        CgroupError::NoHierarchy | CgroupError::Unsupported { .. } => Code::FAILED_PRECONDITION,
        CgroupError::Timeout { .. } => Code::DEADLINE_EXCEEDED,
        other => other.errno().map_or(Code::INTERNAL, |e| errno_code(nix::Error::from_raw(e))),
    }
}

/// `error: cause: cause`: the shim renders its errors the same way (one helper for both ends).
pub use protocols::error::chain;

impl From<AgentError> for ttrpc::Error {
    fn from(e: AgentError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), chain(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_carries_the_cause_and_code_follows_errno() {
        let e = AgentError::SetTime { sec: 5, usec: 7, source: nix::Error::EPERM };
        let ttrpc::Error::RpcStatus(status) = ttrpc::Error::from(e) else { panic!("not a status") };
        assert_eq!(status.code(), Code::PERMISSION_DENIED);
        assert_eq!(status.message(), "cannot set the guest clock to 5.000007: EPERM: Operation not permitted");
    }

    fn code(e: AgentError) -> Code {
        let ttrpc::Error::RpcStatus(s) = ttrpc::Error::from(e) else { panic!("not a status") };
        s.code()
    }

    #[test]
    fn each_failure_has_its_code() {
        let (c, e) = (String::from("c1"), String::from("e1"));
        assert_eq!(code(AgentError::ContainerNotFound(c.clone())), Code::NOT_FOUND);
        assert_eq!(code(AgentError::ProcessNotFound { container_id: c.clone(), exec_id: e.clone() }), Code::NOT_FOUND);
        assert_eq!(code(AgentError::ContainerExists(c.clone())), Code::ALREADY_EXISTS);
        assert_eq!(code(AgentError::FailedPrecondition("stopped".into())), Code::FAILED_PRECONDITION);
        assert_eq!(code(AgentError::Timeout { what: "remove".into(), secs: 1 }), Code::DEADLINE_EXCEEDED);
        assert_eq!(
            code(AgentError::Launch { container_id: c.clone(), source: LaunchError::InvalidSpec("x".into()) }),
            Code::INVALID_ARGUMENT
        );
        let closed = AgentError::Stdio { container_id: c, exec_id: e, source: StdioError::StdinClosed };
        assert_eq!(code(closed), Code::FAILED_PRECONDITION);
        let io = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(code(AgentError::Io { what: "x".into(), source: io }), Code::PERMISSION_DENIED);
    }

    #[test]
    fn invalid_argument_keeps_its_code() {
        let ttrpc::Error::RpcStatus(s) = ttrpc::Error::from(AgentError::InvalidArgument("x".into())) else { panic!() };
        assert_eq!(s.code(), Code::INVALID_ARGUMENT);
        assert_eq!(s.message(), "invalid argument: x");
    }
}
