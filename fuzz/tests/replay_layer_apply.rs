//! The `layer_apply` seeds and regressions, as the fuzz binary runs them: as root, in a
//! child process chrooted into a scratch directory, so an input that escapes the root cannot
//! write on the host; this process (no test harness) removes the directory afterwards.

use std::process::Command;

/// Set in the child: the directory it chroots into.
const BASE_ENV: &str = "WISP_FUZZ_LAYER_BASE";

fn main() {
    if let Some(base) = std::env::var_os(BASE_ENV) {
        return replay(std::path::Path::new(&base));
    }
    let scratch = tempfile::Builder::new().prefix("wisp-fuzz-layer.").tempdir().expect("scratch directory");
    let exe = std::env::current_exe().expect("own path");
    let status = Command::new(exe).env(BASE_ENV, scratch.path()).status().expect("start the replay child");
    assert!(status.success(), "layer_apply replay failed: {status}");
}

fn replay(base: &std::path::Path) {
    let inputs = wisp_fuzz::corpus::inputs("layer_apply");
    assert!(!inputs.is_empty(), "no layer_apply seeds");
    let harness = wisp_fuzz::layer::Harness::in_dir(base, true).expect("layer harness");
    for (path, data) in &inputs {
        let written = harness.run(data);
        eprintln!("layer_apply: {}: {written} entries written", path.display());
        assert!(written > 0, "{}: the applier wrote nothing", path.display());
    }
    println!("layer_apply: {} passed, 0 failed", inputs.len());
}
