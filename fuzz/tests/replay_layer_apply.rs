//! The `layer_apply` seeds and regressions, as the fuzz binary runs them: a process of its
//! own (no test harness), because as root it chroots into its scratch directory first, so
//! an input that escapes the root cannot write on the host.

fn main() {
    let inputs = wisp_fuzz::corpus::inputs("layer_apply");
    assert!(!inputs.is_empty(), "no layer_apply seeds");
    let harness = wisp_fuzz::layer::Harness::new(true).expect("layer harness");
    for (path, data) in &inputs {
        let written = harness.run(data);
        eprintln!("layer_apply: {}: {written} entries written", path.display());
        assert!(written > 0, "{}: the applier wrote nothing", path.display());
    }
    println!("layer_apply: {} passed, 0 failed", inputs.len());
}
