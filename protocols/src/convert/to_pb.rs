//! `oci_spec::runtime::Spec` (config.json) -> protobuf `oci.Spec` (the shim side).
