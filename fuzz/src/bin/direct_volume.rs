//! AFL++ target `direct_volume`: see [`wisp_fuzz::shim::direct_volume`].

fn main() {
    afl::fuzz!(|data: &[u8]| wisp_fuzz::shim::direct_volume(data));
}
