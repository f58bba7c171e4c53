//! Conversions between the OCI runtime spec as the agent protocol carries it
//! (`protocols::oci::Spec`, protobuf) and as config.json holds it
//! (`oci_spec::runtime::Spec`).
//!
//! The shim reads a bundle's config.json and sends protobuf ([`to_pb`]); the
//! agent receives protobuf and works on the `oci-spec` types ([`from_pb`]).
//! Both directions live here so a round trip can be tested in one place.

pub mod from_pb;
pub mod to_pb;
