//! AFL++ target `layer_apply`: see [`wisp_fuzz::layer`]. Chroots into its scratch directory
//! when started as root.

fn main() {
    let harness = wisp_fuzz::layer::Harness::new(true).expect("layer harness");
    afl::fuzz!(|data: &[u8]| {
        harness.run(data);
    });
}
