//! AFL++ target `shim_config`: see [`wisp_fuzz::shim::shim_config`].

fn main() {
    wisp_fuzz::shim::shim_config_init();
    afl::fuzz!(|data: &[u8]| wisp_fuzz::shim::shim_config(data));
}
