//! AFL++ target `oci_from_pb`: see [`wisp_fuzz::oci::from_pb`].

fn main() {
    afl::fuzz!(|data: &[u8]| wisp_fuzz::oci::from_pb(data));
}
