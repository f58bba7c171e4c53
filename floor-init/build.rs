//! Links the binary as the kernel runs `/init`: static, no C start files (the entry point is
//! `_start` in `src/main.rs`), no libc, no build id.

fn main() {
    for arg in ["-nostartfiles", "-static", "-nostdlib", "-Wl,--build-id=none", "-Wl,--gc-sections"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
