//! AFL++ target `oci_to_pb`: see [`wisp_fuzz::oci::to_pb`].

fn main() {
    afl::fuzz!(|data: &[u8]| wisp_fuzz::oci::to_pb(data));
}
