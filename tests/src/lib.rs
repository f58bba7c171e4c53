//! The VM test harness of wisp, in the spirit of Cloud Hypervisor's `test_infra`.
//!
//! # Test tiers
//!
//! 1. **Unit tests** live next to the code in every crate, run unprivileged with fakes, and are
//!    what plain `cargo test` runs.
//! 2. **Protocol tests** drive the agent and the shim over a unix socket or socketpair in one
//!    process: no VM, also part of plain `cargo test`.
//! 3. **VM tests** (this crate's `tests/*.rs`) boot the real kernel and initrd in QEMU. They are
//!    compiled only with the `vm-tests` feature: every such file starts with
//!    `#![cfg(feature = "vm-tests")]`, so plain `cargo test` builds them as empty binaries and
//!    never boots a VM. Run them with `make test-vm`
//!    (`cargo test -p wisp-tests --features vm-tests`), after `make` built the kernel and initrd;
//!    `cargo clippy --all-features` lints them.
//!
//! Why a compile-time switch rather than an environment variable: a test that silently passes
//! when a variable is unset looks green while testing nothing; with the feature, a run without it
//! shows no VM tests at all, and a run with it cannot skip one. Why a feature rather than
//! `--cfg` in RUSTFLAGS: a feature of this crate rebuilds only this crate.
//!
//! # Pieces
//!
//! - [`agent_client`]: running containers through the agent's protocol (busybox rootfs, specs,
//!   9p storages, create/start/read/wait/remove), shared with the agent's host tests.
//! - [`artifacts`]: where `make` put the kernel, initrd and agent (`WISP_*` overrides).
//! - [`accel`]: KVM when a probe guest really runs under it, else TCG (`WISP_ACCEL` overrides).
//! - [`qemu`]: [`VmConfig`], a builder producing the exact QEMU argv (unit-tested without booting).
//! - [`vm`]: [`Vm`], which boots a config, watches its console, hands out the agent address and
//!   kills everything it started when dropped.
//! - [`rootfs_builder`]: packs initrds with the workspace's `rootfs-builder`.
//! - [`containerd`]: [`Containerd`], a private containerd (own root, state, socket) with a
//!   `ctr` wrapper, for the tests of feature `containerd-tests` (`make test-containerd`, root).
//! - [`dockerd`]: [`Dockerd`], a private dockerd (Debian's docker.io: own data and exec roots,
//!   socket, containerd, cgroup parent) with a `docker` wrapper and `--add-runtime`, for the
//!   Docker tests of feature `containerd-tests` (`make test-containerd`, root).
//! - [`podman`]: [`Podman`], a private podman (Debian's podman 4.3: own storage and run roots,
//!   configuration files, runtime root, cgroup parent) with `--runtime`, for the podman tests
//!   of `wisp-runtime` (`make test-shim`, root).
//! - [`shim_setup`]: a private containerd running our shim with its own configuration, for the
//!   `ctr` tests of the shim on every machine type.
//! - `cri` (feature `containerd-tests`): a CRI client (kubelet's side) for containerd's CRI
//!   plugin, used by the pod tests.
//! - `loop_snapshotter` (feature `containerd-tests`): a containerd proxy snapshotter whose
//!   snapshots are ext4 images on loop devices, standing in for devmapper (block-device rootfs).
//! - [`runc_state`]: forgets runc's records of the containers a private containerd ran, so an
//!   id can be reused by the next test.
//! - [`leftovers`]: what a sandbox left under the shim's state root (processes, mounts, files).
//! - [`floor`]: the boot floor, a busybox `/init` that prints the uptime and powers off, and its
//!   initrd.
//!
//! ```no_run
//! use std::time::Duration;
//! use wisp_tests::{Channel, Machine, Vm, VmConfig};
//!
//! # fn main() -> anyhow::Result<()> {
//! let config = VmConfig::wisp(Machine::Microvm)?.channel(Channel::HybridVsock);
//! let mut vm = Vm::boot(config)?;
//! // The time from QEMU's spawn to the kernel starting /init.
//! let to_init = vm.wait_for_console("Run /init as init process", Duration::from_secs(60))?;
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! // Fails early, with the console, if the guest dies first.
//! let agent = runtime.block_on(vm.connect_agent(Duration::from_secs(60)))?;
//! let _health = agent.health();
//! # let _ = to_init;
//! # Ok(())
//! # }
//! ```

pub mod accel;
pub mod agent_client;
pub mod artifacts;
pub mod containerd;
#[cfg(feature = "containerd-tests")]
pub mod cri;
pub mod dockerd;
pub mod floor;
pub mod leftovers;
#[cfg(feature = "containerd-tests")]
pub mod loop_snapshotter;
pub mod podman;
pub mod qemu;
pub mod rootfs_builder;
pub mod runc_state;
pub mod runtime_fixtures;
pub mod sandbox_vm;
pub mod shim_setup;
pub mod shim_timeline;
pub mod timeline;
pub mod vm;

pub use accel::Accel;
pub use artifacts::{Artifact, ArtifactError};
pub use containerd::{Containerd, ContainerdError, ContainerdOptions};
pub use dockerd::{Dockerd, DockerdError, DockerdOptions};
pub use podman::{Podman, PodmanError, PodmanOptions};
pub use qemu::{Bios, Channel, Machine, VmConfig, VmPaths};
pub use vm::{Vm, VmError};
