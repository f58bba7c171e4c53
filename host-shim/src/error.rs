//! The shim's one error type: every failure a front end reports (the containerd task API, the
//! side API of `wisp block-volume` / `direct-volume`), with the ttrpc code each variant maps to,
//! as the agent's `error.rs` does. Messages are lowercase and keep their cause chain
//! ([`protocols::error::chain`]) when they cross the process boundary.

use std::path::PathBuf;

use protocols::ttrpc::{self, Code};

use crate::agent_services::ServiceError;
use crate::hypervisor::HypervisorError;
use crate::sandbox::{describe_ttrpc, SandboxError};
use crate::state::StateError;
use crate::volumes::VolumeError;

/// What a task or side API call can run into.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A container id outside the alphabet both ends accept.
    #[error("container id {id:?}: {why}")]
    InvalidId {
        /// The id.
        id: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// A container of that id exists or is being created.
    #[error("container {0:?} already exists")]
    ContainerExists(String),
    /// No container of that id.
    #[error("container {0:?} not found")]
    ContainerNotFound(String),
    /// No exec of that id in the container.
    #[error("exec {exec:?} of container {container:?} not found")]
    ExecNotFound {
        /// The container.
        container: String,
        /// The exec id.
        exec: String,
    },
    /// An exec of that id exists already.
    #[error("exec {exec:?} already exists in {container:?}")]
    ExecExists {
        /// The container.
        container: String,
        /// The exec id.
        exec: String,
    },
    /// An exec without an id.
    #[error("exec id must not be empty")]
    EmptyExecId,
    /// Start of a process that is not in the created state.
    #[error("process {exec:?} of {container:?} was already started")]
    AlreadyStarted {
        /// The container.
        container: String,
        /// The exec id (`""`: init).
        exec: String,
    },
    /// Kill of a process that has exited.
    #[error("process {exec:?} of {container:?} already finished")]
    AlreadyFinished {
        /// The container.
        container: String,
        /// The exec id (`""`: init).
        exec: String,
    },
    /// Delete of a running process.
    #[error("{what} is still running{hint}")]
    StillRunning {
        /// The process (`exec "e1"`, `container "c1"`).
        what: String,
        /// What to do first.
        hint: &'static str,
    },
    /// The bundle's config.json cannot be read.
    #[error("cannot read {}", path.display())]
    Spec {
        /// config.json.
        path: PathBuf,
        /// Why.
        source: oci_spec::OciSpecError,
    },
    /// A JSON document of the request is not what it should be.
    #[error("{what}: not valid OCI JSON")]
    Json {
        /// Which document.
        what: String,
        /// Why.
        source: serde_json::Error,
    },
    /// Neither a rootfs mount nor `root.path`.
    #[error("{} has no root and no rootfs mounts were given", .0.display())]
    NoRoot(PathBuf),
    /// The container's block storage cannot be resolved.
    #[error("container {cid:?}")]
    Volumes {
        /// The container.
        cid: String,
        /// Why.
        source: VolumeError,
    },
    /// A host path cannot be made.
    #[error("cannot create {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// containerd's rootfs mount failed.
    #[error("cannot mount {mount_source} ({fstype}) at {}", target.display())]
    Mount {
        /// The mount's source.
        mount_source: String,
        /// Its type.
        fstype: String,
        /// Where.
        target: PathBuf,
        /// Why.
        source: nix::errno::Errno,
    },
    /// A host path cannot be shared with the guest.
    #[error("container {cid:?}: cannot share {what}")]
    Share {
        /// The container.
        cid: String,
        /// What was shared.
        what: String,
        /// Why.
        source: Box<SandboxError>,
    },
    /// `root.readonly`: the spec's mount points cannot be made in the rootfs before it is
    /// shared read-only.
    #[error("container {cid:?}: cannot prepare the read-only rootfs")]
    MountPoints {
        /// The container.
        cid: String,
        /// Why.
        source: Box<crate::share::mount_points::MountPointError>,
    },
    /// A disk cannot be plugged.
    #[error("container {cid:?}: cannot plug {device}")]
    Plug {
        /// The container.
        cid: String,
        /// The device id.
        device: String,
        /// Why.
        source: Box<HypervisorError>,
    },
    /// A disk cannot be unplugged or resized.
    #[error("disk {device}: cannot {what}")]
    Disk {
        /// The device id.
        device: String,
        /// What was being done.
        what: &'static str,
        /// Why.
        source: Box<HypervisorError>,
    },
    /// The guest agent refused or did not answer; an RPC status keeps the agent's code.
    #[error("agent {call} of {id:?}: {detail}")]
    Agent {
        /// The RPC.
        call: &'static str,
        /// The container, exec or volume it concerned.
        id: String,
        /// The agent's code, or UNAVAILABLE when no status came back.
        code: Code,
        /// The agent's message.
        detail: String,
    },
    /// The guest agent does not offer a service we need (Kata's agent).
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The sandbox VM cannot be booted.
    #[error("sandbox {id:?} cannot boot")]
    Boot {
        /// The sandbox.
        id: String,
        /// Why.
        source: Box<SandboxError>,
    },
    /// The sandbox VM has exited or was never booted.
    #[error("{what}: the VM of sandbox {sandbox:?} is not running")]
    NotRunning {
        /// The call.
        what: &'static str,
        /// The sandbox.
        sandbox: String,
    },
    /// A path given to hot-plug is not a disk.
    #[error("{0}")]
    BlockVolume(String),
    /// Hot-plug of a device path the container has already.
    #[error("{device} is already hot-plugged into {container:?}")]
    AlreadyPlugged {
        /// The container.
        container: String,
        /// The node in the container.
        device: String,
    },
    /// Hot-unplug of a device path that was not hot-plugged.
    #[error("{device} was not hot-plugged into {container:?}")]
    NotPlugged {
        /// The container.
        container: String,
        /// The node in the container.
        device: String,
    },
    /// A direct volume no container of the sandbox uses.
    #[error("volume {volume} is not used by a container of sandbox {sandbox:?}")]
    VolumeUnused {
        /// The volume path.
        volume: String,
        /// The sandbox.
        sandbox: String,
    },
    /// Something of the shim itself broke (a task panicked, a channel closed, an encoding failed).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// An agent RPC's failure, its status code kept.
    pub fn agent(call: &'static str, id: &str, err: &ttrpc::Error) -> Self {
        let (code, detail) = match err {
            ttrpc::Error::RpcStatus(status) => (status.code(), status.message.clone()),
            other => (Code::UNAVAILABLE, describe_ttrpc(other)),
        };
        Self::Agent { call, id: id.to_owned(), code, detail }
    }

    /// The ttrpc code containerd sees.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidId { .. }
            | Self::EmptyExecId
            | Self::Spec { .. }
            | Self::Json { .. }
            | Self::NoRoot(_)
            | Self::Volumes { .. }
            | Self::BlockVolume(_) => Code::INVALID_ARGUMENT,
            Self::ContainerExists(_) | Self::ExecExists { .. } | Self::AlreadyPlugged { .. } => Code::ALREADY_EXISTS,
            Self::ContainerNotFound(_)
            | Self::ExecNotFound { .. }
            | Self::AlreadyFinished { .. }
            | Self::NotPlugged { .. }
            | Self::VolumeUnused { .. } => Code::NOT_FOUND,
            Self::AlreadyStarted { .. }
            | Self::StillRunning { .. }
            | Self::NotRunning { .. }
            | Self::MountPoints { .. }
            | Self::Plug { .. } => Code::FAILED_PRECONDITION,
            Self::Service(_) => Code::UNIMPLEMENTED,
            Self::Agent { code, .. } => *code,
            Self::Boot { source, .. } if matches!(**source, SandboxError::State(StateError::Busy { .. })) => {
                Code::ALREADY_EXISTS
            }
            Self::Boot { .. } => Code::UNAVAILABLE,
            Self::CreateDir { .. }
            | Self::Mount { .. }
            | Self::Share { .. }
            | Self::Disk { .. }
            | Self::Internal(_) => Code::INTERNAL,
        }
    }
}

/// The status a ttrpc front end answers with (the containerd task API's ttrpc is the same crate).
impl From<Error> for ttrpc::Error {
    fn from(err: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(err.code(), protocols::error::chain(&err)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(err: Error) -> (Code, String) {
        match ttrpc::Error::from(err) {
            ttrpc::Error::RpcStatus(status) => (status.code(), status.message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn agent_status_codes_survive() {
        let err = ttrpc::Error::RpcStatus(ttrpc::get_status(Code::NOT_FOUND, "no such container"));
        let (code, message) = status(Error::agent("StartContainer", "c1", &err));
        assert_eq!(code, Code::NOT_FOUND);
        assert_eq!(message, "agent StartContainer of \"c1\": no such container");
    }

    #[test]
    fn a_lost_agent_is_unavailable() {
        let err = ttrpc::Error::LocalClosed;
        let (code, message) = status(Error::agent("WaitProcess", "c1", &err));
        assert_eq!(code, Code::UNAVAILABLE);
        assert!(message.starts_with("agent WaitProcess of \"c1\": "), "{message}");
    }

    #[test]
    fn the_cause_chain_reaches_containerd() {
        let source = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let (code, message) = status(Error::Json { what: "exec \"e1\": the process spec".into(), source });
        assert_eq!(code, Code::INVALID_ARGUMENT);
        assert!(message.starts_with("exec \"e1\": the process spec: not valid OCI JSON: EOF"), "{message}");
    }

    #[test]
    fn a_busy_state_directory_is_already_exists() {
        let key = crate::state::SandboxKey::containerd("k8s.io", "s");
        let owner = crate::state::Owner { key: key.clone(), pid: 1, start_time: 2, boot_id: "b".into() };
        let busy = SandboxError::State(StateError::Busy { key, dir: "/run/wisp/x".into(), owner: Box::new(owner) });
        assert_eq!(Error::Boot { id: "s".into(), source: Box::new(busy) }.code(), Code::ALREADY_EXISTS);
        let io = SandboxError::Io { what: "x", path: "/p".into(), source: std::io::Error::other("y") };
        assert_eq!(Error::Boot { id: "s".into(), source: Box::new(io) }.code(), Code::UNAVAILABLE);
    }
}
