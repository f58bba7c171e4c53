//! protobuf `oci.Spec` -> `oci_spec::runtime::Spec` (the agent side).
