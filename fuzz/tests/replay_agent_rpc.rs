//! The `agent_rpc` seeds and regressions through the agent's handlers, as the fuzz binary
//! runs them: a process of its own (no test harness), because it gives up root for good
//! first ([`wisp_fuzz::privileges`]) and the agent may re-execute it as its launcher.

fn main() {
    wisp_fuzz::agent_rpc::run_agent_child_if_asked();
    let inputs = wisp_fuzz::corpus::inputs("agent_rpc");
    assert!(!inputs.is_empty(), "no agent_rpc seeds");
    let harness = wisp_fuzz::agent_rpc::Harness::new().expect("agent harness");
    for (path, data) in &inputs {
        let handled = harness.run(data);
        eprintln!("agent_rpc: {}: {handled} frames handled", path.display());
        // A seed that reaches no handler seeds nothing: only the hostile-bytes ones may.
        let hostile = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("hostile_"));
        assert!(hostile || handled > 0, "{}: no frame reached a handler", path.display());
    }
    println!("agent_rpc: {} passed, 0 failed", inputs.len());
}
