//! Host side of wisp: the containerd shim v2 `containerd-shim-wisp-v2`, the `wisp` CLI, and
//! what they share.
//!
//! | module | holds |
//! |---|---|
//! | [`api`] | the shim's side API (volume stats/resize, hot-plug) for the `wisp` CLI |
//! | [`agent_dial`] | dialing the guest agent (AF_VSOCK, hybrid vsock, virtio-serial, unix) with retries |
//! | [`agent_services`] | which of our own services (`wisp.v1.*`) the guest agent offers (Kata's offers none) |
//! | [`accel`] | KVM or TCG, decided by a probe guest (shared with the test harness) |
//! | [`config`] | the TOML configuration in Kata's vocabulary and its lookup order |
//! | [`container`] | the sandbox core: a container's plan, creation with one rollback, hot-plug (no containerd) |
//! | [`env`] | the environment variables that override the configuration, read in one place |
//! | [`error`] | the shim's one error type and the ttrpc code of each variant |
//! | [`hypervisor`] | the VMM seam and its QEMU backend (argv, QMP, hot-plug, process lifecycle) |
//! | [`volumes`] | block storage of a container: the vhost-user store and Kata's direct volumes |
//! | [`netns`] | commands and a tap inside a network namespace named by path |
//! | [`state`] | a sandbox's key (namespace + id), its state directory's name and owner |
//! | [`gc`] | finding and removing sandboxes whose shim is gone (`wisp gc`, shim start) |
//! | [`share`] | the share: a host-only mount tree and the guest's read-only view of it |
//! | [`state_dir`] | a sandbox state directory's permissions (0700, sockets 0600) |
//! | [`pod_network`] | a CRI pod's CNI interface wired to the VM by tap + tc, configured in the guest |
//! | [`runtime`] | `wisp-runtime`: runc's command line (flags, state records, `state`/`list`/`spec`/`features`) |

pub mod accel;
pub mod agent_dial;
pub mod agent_services;
pub mod api;
pub mod config;
pub mod container;
pub mod env;
pub mod error;
pub mod gc;
pub mod hypervisor;
pub mod io;
pub mod netns;
pub mod pod;
pub mod pod_network;
pub mod process_relay;
pub mod runtime;
pub mod sandbox;
pub mod share;
pub mod shim;
pub mod state;
pub mod state_dir;
pub mod task;
pub mod template;
pub mod timeline;
pub mod tsc;
pub mod volumes;

/// An error and its causes on one line, for messages that cross a process boundary.
pub use protocols::error::chain as error_chain;
