//! Agent errors and the one place that decides which ttrpc code each becomes.
//!
//! A Kata runtime branches on the code (NOT_FOUND vs INVALID_ARGUMENT vs
//! INTERNAL), and a person reads the message: so the message carries the whole
//! source chain, and the code is chosen per variant, never a blanket INTERNAL.

use protocols::ttrpc::{self, Code};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
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
            AgentError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            AgentError::SetTime { source, .. } => errno_code(*source),
            AgentError::Reseed(wisp_init::entropy::EntropyError::Reseed(e)) => errno_code(*e),
            AgentError::Reseed(_) => Code::INTERNAL,
            AgentError::Device(e) => e.code(),
            AgentError::Storage(e) => e.code(),
            AgentError::Network(e) => e.code(),
        }
    }
}

pub(crate) fn errno_code(e: nix::Error) -> Code {
    match e {
        nix::Error::EPERM | nix::Error::EACCES => Code::PERMISSION_DENIED,
        nix::Error::EINVAL => Code::INVALID_ARGUMENT,
        nix::Error::ENOENT => Code::NOT_FOUND,
        _ => Code::INTERNAL,
    }
}

/// `error: cause: cause`, the form a person reading a ctr or kata log needs.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

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

    #[test]
    fn invalid_argument_keeps_its_code() {
        let ttrpc::Error::RpcStatus(s) = ttrpc::Error::from(AgentError::InvalidArgument("x".into())) else { panic!() };
        assert_eq!(s.code(), Code::INVALID_ARGUMENT);
        assert_eq!(s.message(), "invalid argument: x");
    }
}
