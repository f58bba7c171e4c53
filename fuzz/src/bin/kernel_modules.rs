//! AFL++ target `kernel_modules`: see [`wisp_fuzz::modules`].

fn main() {
    let harness = wisp_fuzz::modules::Harness::new().expect("modules harness");
    afl::fuzz!(|data: &[u8]| harness.run(data));
}
