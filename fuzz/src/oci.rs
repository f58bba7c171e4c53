//! `protocols::convert` in both directions, with the round trips that must hold.
//!
//! - [`from_pb`]: the agent's side. Bytes decode as a protobuf `oci.Spec` (what
//!   CreateContainer carries). A spec the agent accepts must survive
//!   `OCI -> protobuf -> OCI` unchanged: the shim and the agent then agree on every value the
//!   agent acts on. The same for ExecProcess's `oci.Process` and UpdateContainer's resources.
//! - [`to_pb`]: the shim's side. Bytes parse as config.json. Its protobuf form must encode and
//!   decode to itself, and whatever the agent makes of it must convert back to the same
//!   protobuf (the conversion is a fixpoint after one trip).

use oci_spec::runtime::Spec;
use protocols::convert::{from_pb, to_pb};
use protocols::oci;
use protocols::protobuf::Message as _;

/// Target `oci_from_pb`.
pub fn from_pb(data: &[u8]) {
    let Ok(pb) = oci::Spec::parse_from_bytes(data) else { return };
    if let Ok(spec) = from_pb::spec(&pb) {
        let again = from_pb::spec(&to_pb::spec(&spec))
            .unwrap_or_else(|e| panic!("the agent accepted a spec, but not its own protobuf form: {e}"));
        assert_eq!(again, spec, "OCI -> protobuf -> OCI changed a spec the agent accepted");
    }
    if let Some(process) = pb.Process.as_ref() {
        if let Ok(p) = from_pb::process(process) {
            let again = from_pb::process(&to_pb::process(&p))
                .unwrap_or_else(|e| panic!("the agent accepted a process, but not its own protobuf form: {e}"));
            assert_eq!(again, p, "OCI -> protobuf -> OCI changed a process the agent accepted");
        }
    }
    if let Some(resources) = pb.Linux.as_ref().and_then(|l| l.Resources.as_ref()) {
        if let Ok(r) = from_pb::resources(resources) {
            let again = from_pb::resources(&to_pb::resources(&r))
                .unwrap_or_else(|e| panic!("the agent accepted resources, but not their protobuf form: {e}"));
            assert_eq!(again, r, "OCI -> protobuf -> OCI changed resources the agent accepted");
        }
    }
}

/// Target `oci_to_pb`.
pub fn to_pb(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<Spec>(data) else { return };
    let pb = to_pb::spec(&spec);
    let bytes = pb.write_to_bytes().expect("a converted spec encodes");
    let decoded = oci::Spec::parse_from_bytes(&bytes).expect("an encoded spec decodes");
    assert_eq!(decoded, pb, "protobuf encode/decode changed the spec");
    if let Ok(agent_side) = from_pb::spec(&pb) {
        assert_eq!(to_pb::spec(&agent_side), pb, "protobuf -> OCI -> protobuf is not a fixpoint");
    }
}
