//! Host side of wisp.
//!
//! For now this crate only knows how to reach the guest agent: [`agent_dial`] opens a byte
//! stream to it (hybrid vsock through vhost-device-vsock, QEMU virtio-serial, or a plain unix
//! socket for an agent run outside a VM) and wraps it in a ttrpc client exposing the agent's
//! `AgentService` and `Health` services. The containerd shim binary will be built on top.

pub mod agent_dial;
