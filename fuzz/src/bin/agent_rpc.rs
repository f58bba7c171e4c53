//! AFL++ target `agent_rpc`: see [`wisp_fuzz::agent_rpc`]. Runs as `nobody` when started as root.

fn main() {
    wisp_fuzz::agent_rpc::run_agent_child_if_asked();
    let harness = std::panic::AssertUnwindSafe(wisp_fuzz::agent_rpc::Harness::new().expect("agent harness"));
    afl::fuzz!(|data: &[u8]| {
        harness.run(data);
    });
}
