//! Protocol tests: the real `wisp-agent` binary served on a unix socket (no VM),
//! driven by the generated Kata clients, including hostile bytes on the wire.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{code_of, ctx, Agent};

use protocols::agent::{
    AddARPNeighborsRequest, CreateSandboxRequest, DestroySandboxRequest, GetMetricsRequest, GuestDetailsRequest,
    ReseedRandomDevRequest, SetGuestDateTimeRequest, SetPolicyRequest, Storage,
};
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::health::CheckRequest;
use protocols::health_ttrpc::HealthClient;
use protocols::ttrpc::Code;

#[tokio::test]
async fn health_check_and_version() {
    let agent = Agent::start();
    agent.assert_serving().await;
    let health = HealthClient::new(agent.conn().await);
    let v = health.version(ctx(), &CheckRequest::new()).await.unwrap();
    assert_eq!(v.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(v.grpc_version, "0.0.1");
}

#[tokio::test]
async fn guest_details_describe_the_agent() {
    let agent = Agent::start();
    let client = AgentServiceClient::new(agent.conn().await);
    let mut req = GuestDetailsRequest::new();
    req.mem_block_size = true;
    let r = client.get_guest_details(ctx(), &req).await.unwrap();
    let details = r.agent_details.into_option().expect("agent_details present");
    assert_eq!(details.version, env!("CARGO_PKG_VERSION"));
    assert!(!details.init_daemon, "not PID 1 here");
    assert!(details.supports_seccomp, "libseccomp is linked in");
}

#[tokio::test]
async fn metrics_report_the_agents_own_memory() {
    let agent = Agent::start();
    let client = AgentServiceClient::new(agent.conn().await);
    let text = client.get_metrics(ctx(), &GetMetricsRequest::new()).await.unwrap().metrics;
    let value = |name: &str| -> f64 {
        let line =
            text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name} in {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let rss = value("wisp_agent_resident_memory_bytes");
    assert!(rss > 100_000.0 && rss < 100e6, "rss {rss}");
    assert!(value("wisp_agent_ready_seconds") >= value("wisp_agent_init_started_seconds"));
    assert!(value("wisp_guest_memory_total_bytes") > 0.0);
}

#[tokio::test]
async fn unimplemented_rpcs_say_so() {
    let agent = Agent::start();
    let client = AgentServiceClient::new(agent.conn().await);
    let (code, msg) = code_of(client.set_policy(ctx(), &SetPolicyRequest::new()).await.unwrap_err());
    assert_eq!(code, Code::UNIMPLEMENTED, "{msg}");
    assert!(msg.contains("SetPolicy"), "{msg}");
}

#[tokio::test]
async fn an_empty_reseed_is_accepted_as_kata_accepts_it() {
    // Kata's agent reseeds with whatever it is given, nothing included, and clients written
    // against it may rely on that. (Only the empty case here: the tests may run as root, and
    // real bytes would go into the host's pool.)
    let agent = Agent::start();
    let client = AgentServiceClient::new(agent.conn().await);
    client.reseed_random_dev(ctx(), &ReseedRandomDevRequest::new()).await.expect("an empty seed is a no-op");
    agent.assert_serving().await;
}

#[tokio::test]
async fn a_request_without_its_payload_is_an_invalid_argument_as_in_kata() {
    // Kata's agent refuses an AddARPNeighbors (UpdateRoutes, UpdateInterface) without its
    // message rather than reading it as empty. (Not UpdateRoutes here: read as empty, it
    // would replace the host's routes when the tests run as root.)
    let agent = Agent::start();
    let client = AgentServiceClient::new(agent.conn().await);
    let (code, msg) = code_of(client.add_arp_neighbors(ctx(), &AddARPNeighborsRequest::new()).await.unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("no neighbors"), "{msg}");
}

#[tokio::test]
async fn a_storage_mount_point_through_dotdot_is_refused_and_nothing_is_removed() {
    // `keep/nonexistent/..` is `keep`: a `local` storage there would be made, then removed
    // with everything in it when the sandbox goes (with `/nonexistent/..`, the guest's `/`).
    let mut agent = Agent::start();
    let client = agent.client().await;
    let keep = agent.state.join("keep");
    std::fs::create_dir_all(&keep).unwrap();
    std::fs::write(keep.join("precious"), "x").unwrap();
    let mut storage = Storage::new();
    storage.driver = "local".into();
    storage.mount_point = format!("{}/nonexistent/..", keep.display());
    let mut req = CreateSandboxRequest::new();
    req.storages = vec![storage];
    let (code, msg) = code_of(client.create_sandbox(ctx(), &req).await.expect_err("refused"));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("must be absolute, without `..`"), "{msg}");
    client.destroy_sandbox(ctx(), &DestroySandboxRequest::new()).await.unwrap();
    agent.wait_exit(Duration::from_secs(10)).expect("agent exits after DestroySandbox");
    assert!(keep.join("precious").exists(), "nothing was removed");
    assert!(!keep.join("nonexistent").exists(), "nothing was made");
}

#[tokio::test]
async fn bad_time_is_an_invalid_argument() {
    // Only invalid times: the tests may run as root, and a valid one would move
    // the host's clock.
    let agent = Agent::start();
    let client = AgentServiceClient::new(agent.conn().await);
    let mut req = SetGuestDateTimeRequest::new();
    req.Sec = 1;
    req.Usec = 2_000_000;
    let (code, msg) = code_of(client.set_guest_date_time(ctx(), &req).await.unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
}

fn raw_send(sock: &Path, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(bytes);
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    reply
}

#[tokio::test]
async fn garbage_bytes_drop_only_that_connection() {
    let agent = Agent::start();
    raw_send(&agent.sock, b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n");
    raw_send(&agent.sock, &[0xff; 64]);
    agent.assert_serving().await;
}

#[tokio::test]
async fn oversized_frame_is_refused_and_agent_survives() {
    let agent = Agent::start();
    // ttrpc header: length (BE u32), stream id (BE u32), type (1 = request), flags.
    let mut frame = Vec::new();
    frame.extend_from_slice(&(64u32 << 20).to_be_bytes());
    frame.extend_from_slice(&1u32.to_be_bytes());
    frame.extend_from_slice(&[1, 0]);
    frame.extend_from_slice(&[0u8; 4096]);
    raw_send(&agent.sock, &frame);
    agent.assert_serving().await;
}

#[tokio::test]
async fn undecodable_request_gets_an_error_not_a_crash() {
    let agent = Agent::start();
    let payload = [0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01];
    let mut frame = Vec::new();
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&1u32.to_be_bytes());
    frame.extend_from_slice(&[1, 0]);
    frame.extend_from_slice(&payload);
    let reply = raw_send(&agent.sock, &frame);
    assert!(reply.len() >= 10, "expected an error response frame, got {reply:?}");
    assert_eq!(reply[8], 2, "frame type 2 = response");
    agent.assert_serving().await;
}

#[tokio::test]
async fn destroy_sandbox_stops_the_agent_cleanly() {
    let mut agent = Agent::start();
    let client = AgentServiceClient::new(agent.conn().await);
    client.destroy_sandbox(ctx(), &DestroySandboxRequest::new()).await.expect("reply before stopping");
    let status = agent.wait_exit(Duration::from_secs(10)).expect("agent exits after DestroySandbox");
    assert!(status.success(), "{status}");
    assert!(!agent.sock.exists(), "socket removed");
}

#[test]
fn sigterm_stops_the_agent_cleanly() {
    let mut agent = Agent::start();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let status = agent.wait_exit(Duration::from_secs(10)).expect("agent exits on SIGTERM");
    assert!(status.success(), "{status}");
}

#[test]
fn bad_command_lines_fail_clearly() {
    for (args, want) in [
        (vec!["--listen", "tcp:1.2.3.4:5"], "expected unix:PATH"),
        (vec!["--log", "loud"], "bad --log"),
        (vec![], "give --listen"),
        (vec!["--frobnicate"], "frobnicate"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_wisp-agent")).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
