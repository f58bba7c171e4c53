//! `regex` for the wisp workspace, answered by `regex-lite`.
//!
//! The users of `regex` in the workspace are oci-spec, which checks one
//! field (`process.execCPUAffinity`, a pattern of ASCII digits, commas and
//! dashes) with it, and prost-build (the tests' CRI client, at build time:
//! two ASCII patterns over doc comments). The full `regex` crate costs the static guest agent about
//! 400 KiB; `regex-lite` offers the same API for patterns like this one
//! (ASCII classes, no Unicode tables) at a fraction of the size. The root
//! Cargo.toml's `[patch.crates-io]` routes `regex` here; remove the patch if a
//! dependency ever needs Unicode-aware matching.

pub use regex_lite::*;
