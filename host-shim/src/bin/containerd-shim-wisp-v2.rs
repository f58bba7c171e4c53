//! `containerd-shim-wisp-v2`: the containerd shim v2 of wisp (runtime `io.containerd.wisp.v2`).
//!
//! containerd runs it with `start`, `delete`, or (through `start`) as the daemon serving the
//! task API; see [`wisp_shim::shim`]. `--version` prints the version and exits.

use wisp_shim::shim::RUNTIME_ID;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "-version" || a == "-v") {
        println!("containerd-shim-wisp-v2 {} (runtime {RUNTIME_ID})", env!("CARGO_PKG_VERSION"));
        return;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{RUNTIME_ID}: cannot start the async runtime: {err}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(wisp_shim::shim::main(&args));
    // Blocking FIFO opens may still wait for a peer that will never come: do not wait for them.
    runtime.shutdown_background();
    std::process::exit(code);
}
