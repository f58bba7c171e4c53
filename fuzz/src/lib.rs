//! Coverage-guided fuzz targets for the inputs wisp takes from someone else.
//!
//! Each module holds one target as a plain function of the input bytes (`run`): the AFL++
//! binaries in `src/bin/` wrap it in `afl::fuzz!`, and the tests in `tests/` replay the
//! committed seed corpus (`fuzz/corpus/<target>/`) and every input that once crashed
//! (`fuzz/regressions/<target>/`) through the same function, uninstrumented, so
//! `cargo test` fails on a crash that comes back. A target panics (= a crash for AFL++) when
//! the code under test panics or when a property it checks does not hold.
//!
//! | target | input | code under test |
//! | --- | --- | --- |
//! | [`agent_rpc`] | ttrpc frames | the agent's request decoding and RPC handlers, in process |
//! | [`oci`] `oci_from_pb` | protobuf `oci.Spec` | `protocols::convert`, protobuf -> OCI -> protobuf |
//! | [`oci`] `oci_to_pb` | config.json | `protocols::convert`, OCI -> protobuf -> OCI |
//! | [`shim`] `shim_config` | TOML | the shim's `Config::parse` and validation |
//! | [`shim`] `direct_volume` | volume path + mountInfo.json | Kata direct-volume parsing and layout |
//! | [`layer`] | tar streams | rootfs-builder's layer applier, never writing outside its root |
//! | [`modules`] | modules.dep / ELF / .deb | rootfs-builder's kernel-module readers |
//!
//! See docs/testing.md (Fuzzing) for how to run them.

pub mod agent_rpc;
pub mod corpus;
pub mod layer;
pub mod modules;
pub mod oci;
pub mod privileges;
pub mod shim;

/// The agent's modules, compiled here from `agent/src` as they are: `wisp-agent` is a binary
/// crate, and the fuzz target drives its RPC handlers in this process. The list mirrors the
/// `mod` lines of `agent/src/main.rs`; the `use` below puts them at this crate's root, where
/// the agent's `crate::` paths look for them.
#[path = "../../agent/src"]
#[allow(dead_code, unused_imports, clippy::all)]
mod agent_src {
    pub(crate) mod cgroups;
    pub(crate) mod channel;
    pub(crate) mod container;
    pub(crate) mod device;
    pub(crate) mod error;
    pub(crate) mod guest_path;
    pub(crate) mod hotplug;
    pub(crate) mod launch;
    pub(crate) mod logging;
    pub(crate) mod metrics;
    pub(crate) mod mountinfo;
    pub(crate) mod network;
    pub(crate) mod process;
    pub(crate) mod rpc;
    pub(crate) mod sandbox;
    pub(crate) mod server;
    pub(crate) mod storage;
}

#[allow(unused_imports)]
use agent_src::{
    cgroups, channel, container, device, error, guest_path, hotplug, launch, logging, metrics, mountinfo, network,
    process, rpc, sandbox, server, storage,
};
