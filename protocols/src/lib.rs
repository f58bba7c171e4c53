//! Wire protocol of the wisp guest agent.
//!
//! # The wire is Kata's
//!
//! wisp is a drop-in guest agent for Kata Containers: an unmodified Kata
//! runtime (the Go `containerd-shim-kata-v2` or runtime-rs) must be able to
//! boot a wisp guest and drive it. The runtime talks to the guest over
//! [ttrpc] and encodes every request with the protobuf schema of Kata's own
//! agent, so this crate speaks exactly that: the `grpc.AgentService` and
//! `grpc.Health` services of Kata Containers 4.1, with the same package,
//! service, method, message and field names, and the same field numbers and
//! types. A ttrpc request is routed by the strings `grpc.AgentService` and
//! `CreateContainer` and decoded by field number, so any drift in those is a
//! silent incompatibility.
//!
//! # The `.proto` files are ours
//!
//! The schemas in `protos/` were written for wisp, checked field by field
//! against Kata's published definitions, with Kata's Go-only options
//! (gogoproto) dropped since they do not affect the encoding. `build.rs`
//! compiles them at build time with the pure-Rust `ttrpc-codegen` (no
//! `protoc` needed) into rust-protobuf 3 messages plus async ttrpc servers
//! and clients. The tests in `tests/` pin the method list and several field
//! numbers so a typo fails CI.
//!
//! # Layout
//!
//! | module | contents |
//! | --- | --- |
//! | [`agent`] | `AgentService` requests and responses |
//! | [`agent_ttrpc`] | [`AgentService`](agent_ttrpc::AgentService) trait, [`AgentServiceClient`](agent_ttrpc::AgentServiceClient), [`create_agent_service`](agent_ttrpc::create_agent_service) |
//! | [`health`] | `CheckRequest`, `HealthCheckResponse`, `VersionCheckResponse` |
//! | [`health_ttrpc`] | [`Health`](health_ttrpc::Health) trait, [`HealthClient`](health_ttrpc::HealthClient), [`create_health`](health_ttrpc::create_health) |
//! | [`types`] | network types (`Interface`, `Route`, `ARPNeighbor`, ...) |
//! | [`oci`] | the OCI spec subset (`Spec`, `Process`, `LinuxResources`, ...) |
//! | [`csi`] | volume statistics |
//! | [`convert`] | the agent's protobuf `oci.Spec` <-> the `oci-spec` crate's `Spec` (config.json) |
//! | [`empty`] | `google.protobuf.Empty`, an alias of the protobuf well-known type |
//! | [`error`] | an error and its causes on one line, as both ends render them |
//!
//! Service traits are async (`#[async_trait]`); every method has a default
//! body that answers `ttrpc::Code::UNIMPLEMENTED`, so a server only overrides
//! what it supports. [`ttrpc`] and [`protobuf`] are re-exported: depend on
//! them through this crate so the whole workspace uses one version of each.
//!
//! # Adding a wisp-only service later
//!
//! Never add methods or fields to `grpc.AgentService` or its messages: Kata
//! owns that namespace, and a future Kata release could assign the same name
//! or number to something else. Put wisp extensions in a new file such as
//! `protos/wisp.proto` with its own package (e.g. `package wisp.v1;` and
//! `service Wisp { ... }`), add it to `PROTOS`/`GENERATED` in `build.rs`,
//! include the generated `wisp.rs`/`wisp_ttrpc.rs` below like the others,
//! and register its `create_wisp(...)` map on the same ttrpc server next to
//! `create_agent_service(...)`. ttrpc routes by fully qualified service
//! name, so the Kata services stay byte-identical and a Kata runtime never
//! notices the extra service.

pub use protobuf;
pub use ttrpc;

/// Applies the lint exemptions generated code needs to an included module.
///
/// Generated files normally carry these as inner attributes; `build.rs`
/// strips those (they cannot pass through `include!`), so they are restored
/// here on the module instead.
macro_rules! generated_module {
    ($(#[$meta:meta])* $name:ident, $file:literal) => {
        $(#[$meta])*
        #[allow(
            clippy::all,
            clippy::pedantic,
            dead_code,
            missing_debug_implementations,
            missing_docs,
            non_camel_case_types,
            non_snake_case,
            non_upper_case_globals,
            trivial_casts,
            unused_imports,
            unused_mut,
            unused_results
        )]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/gen/", $file));
        }
    };
}

generated_module!(
    /// Messages of `agent.proto` (package `grpc`).
    agent,
    "agent.rs"
);
generated_module!(
    /// Async ttrpc bindings of `grpc.AgentService`.
    agent_ttrpc,
    "agent_ttrpc.rs"
);
generated_module!(
    /// Messages of `health.proto` (package `grpc`).
    health,
    "health.rs"
);
generated_module!(
    /// Async ttrpc bindings of `grpc.Health`.
    health_ttrpc,
    "health_ttrpc.rs"
);
generated_module!(
    /// Messages of `types.proto` (package `types`).
    types,
    "types.rs"
);
generated_module!(
    /// Messages of `oci.proto` (package `grpc`).
    oci,
    "oci.rs"
);
generated_module!(
    /// Messages of `csi.proto` (package `grpc`).
    csi,
    "csi.rs"
);

generated_module!(
    /// Messages of `wisp.proto` (package `wisp.v1`, ours: not Kata's).
    wisp,
    "wisp.rs"
);
generated_module!(
    /// Async ttrpc bindings of `wisp.v1.BlockVolume`.
    wisp_ttrpc,
    "wisp_ttrpc.rs"
);

pub mod convert;
pub mod error;
pub mod id;

/// `google.protobuf.Empty`.
///
/// The generated code uses the protobuf runtime's well-known type directly;
/// this alias only offers the shorter `protocols::empty::Empty` path.
pub mod empty {
    pub use protobuf::well_known_types::empty::Empty;
}

// The generated clients only derive `Clone`; give them opaque `Debug` impls
// so types embedding them can satisfy `missing_debug_implementations`.
impl std::fmt::Debug for agent_ttrpc::AgentServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentServiceClient").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for health_ttrpc::HealthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthClient").finish_non_exhaustive()
    }
}
