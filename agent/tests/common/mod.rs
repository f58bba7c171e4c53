//! What the agent's integration tests share: the real `wisp-agent` binary
//! serving on a unix socket in a temp directory, killed when the test ends.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocols::agent_ttrpc::AgentServiceClient;
use protocols::health::{health_check_response::ServingStatus, CheckRequest};
use protocols::health_ttrpc::HealthClient;
use protocols::ttrpc::{self, asynchronous::Client, context, Code};

/// A running agent that is killed when the test ends, however it ends.
pub struct Agent {
    pub child: Child,
    pub sock: PathBuf,
    /// Its container state directory (`--state-dir`).
    pub state: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    pub fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let state = dir.path().join("state");
        let child = Command::new(env!("CARGO_BIN_EXE_wisp-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--state-dir")
            .arg(&state)
            .args(["--log", "debug"])
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "agent did not listen on {}", sock.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        Agent { child, sock, state, _dir: dir }
    }

    pub async fn conn(&self) -> Client {
        Client::connect(&format!("unix://{}", self.sock.display())).await.unwrap()
    }

    pub async fn client(&self) -> AgentServiceClient {
        AgentServiceClient::new(self.conn().await)
    }

    pub async fn assert_serving(&self) {
        let health = HealthClient::new(self.conn().await);
        let r = health.check(ctx(), &CheckRequest::new()).await.expect("Health.Check");
        assert_eq!(r.status.enum_value(), Ok(ServingStatus::SERVING));
    }

    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn ctx() -> ttrpc::context::Context {
    context::with_timeout(20_000_000_000)
}

pub fn code_of(e: ttrpc::Error) -> (Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_owned()),
        other => panic!("expected an RPC status, got {other:?}"),
    }
}
