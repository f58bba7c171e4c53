//! The agent's request path, without a socket or a VM.
//!
//! An input is what a client writes on the agent's connection: ttrpc frames. They are read
//! with ttrpc's own frame reader, decoded and routed as ttrpc's server does
//! (`ttrpc::asynchronous::server`: odd stream ids, REQUEST frames, `Request` protobuf,
//! service then method, the client's timeout), and handled by the agent's real services
//! (`rpc::services`, what `wisp-agent` registers), on a fresh standalone [`Sandbox`] per
//! input, in a current-thread runtime as in the agent. Responses are encoded as the server
//! would. A panic anywhere is a crash.
//!
//! The process runs as `nobody` ([`crate::privileges`]): RPCs that would change the host
//! (clock, hostname, interfaces, mounts) fail with EPERM instead. Handlers that wait (for an
//! OOM event, a process exit) are cut after [`HANDLER_TIMEOUT`], as a client deadline would.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use protocols::protobuf::Message as _;
use protocols::ttrpc::asynchronous::{Service, TtrpcContext};
use protocols::ttrpc::proto::{GenMessage, GenMessageError, Message, MESSAGE_TYPE_REQUEST};
use protocols::ttrpc::{Request, Response};

use crate::sandbox::{Role, Sandbox};

/// At most this many frames of one input are handled.
pub const MAX_FRAMES: usize = 16;
/// How long one handler may take before it counts as a client deadline.
pub const HANDLER_TIMEOUT: Duration = Duration::from_millis(100);

/// One process's fuzzing state: the runtime and the state directory, reused across inputs.
#[derive(Debug)]
pub struct Harness {
    runtime: tokio::runtime::Runtime,
    state: tempfile::TempDir,
}

impl Harness {
    /// Creates the state directory, drops root, starts the runtime.
    pub fn new() -> std::io::Result<Self> {
        detach_from_afl();
        let state = tempfile::Builder::new().prefix("wisp-fuzz-agent.").tempdir()?;
        crate::privileges::drop_root(&[state.path()])?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Self { runtime, state })
    }

    /// Handles the frames of `data` on a fresh sandbox; returns how many reached a handler
    /// and finished in time (with a reply or an error).
    pub fn run(&self, data: &[u8]) -> usize {
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let sandbox =
            Arc::new(Sandbox::new(log, Role::Standalone, 0.0).with_state_root(self.state.path().join("containers")));
        let services = crate::rpc::services(sandbox.clone());
        self.runtime.block_on(async {
            let mut handled = 0;
            let mut input = data;
            for _ in 0..MAX_FRAMES {
                let msg = match GenMessage::read_from(&mut input).await {
                    Ok(msg) => msg,
                    // An oversized frame: the server answers with an error and reads on.
                    Err(GenMessageError::ReturnError(..)) => continue,
                    // End of input: the connection is gone.
                    Err(GenMessageError::InternalError(_)) => break,
                };
                if let Some(reply) = dispatch(&services, msg).await {
                    handled += 1;
                    // The server encodes every response it sends.
                    if let Ok(response) = reply {
                        let _ = response.write_to_bytes();
                    }
                }
            }
            sandbox.remove_all().await;
            handled
        })
    }
}

/// One frame through ttrpc's routing to a handler and its reply; `None` where the server
/// answers with a status of its own (or nothing), or the handler took too long.
async fn dispatch(services: &HashMap<String, Service>, msg: GenMessage) -> Option<protocols::ttrpc::Result<Response>> {
    if msg.header.stream_id % 2 != 1 || msg.header.type_ != MESSAGE_TYPE_REQUEST {
        return None;
    }
    let req_msg = Message::<Request>::try_from(msg).ok()?;
    let req = &req_msg.payload;
    let method = services.get(&req.service)?.methods.get(&req.method)?;
    let ctx = TtrpcContext {
        mh: req_msg.header,
        metadata: protocols::ttrpc::context::from_pb(&req.metadata),
        timeout_nano: req.timeout_nano,
        connection_data: Arc::default(),
    };
    tokio::time::timeout(HANDLER_TIMEOUT, method.handler(ctx, req_msg.payload)).await.ok()
}

/// The agent starts copies of itself (`/proc/self/exe __launch`): under afl-fuzz they would
/// inherit the fork-server pipes (fds 198 and 199) and the coverage map, start a fork server
/// of their own and break afl-fuzz's ("unable to request new process from fork server").
/// So the pipes are closed on exec and the map's id is not passed on.
fn detach_from_afl() {
    for fd in [198, 199] {
        // SAFETY: F_SETFD on a descriptor number only changes its close-on-exec flag; an fd
        // that is not open makes fcntl fail with EBADF, which is ignored.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    for var in ["__AFL_SHM_ID", "__AFL_SHM_FUZZ_ID", "__AFL_CMPLOG_SHM_ID"] {
        // SAFETY: called from Harness::new, before this process starts any thread.
        unsafe { std::env::remove_var(var) };
    }
}

/// What `wisp-agent`'s `main` does first: a process started as `/proc/self/exe __launch`
/// (a container's launcher) or `__hotplug` runs that job and never returns. The fuzz binary
/// and the corpus test call this so the agent's re-executions of itself behave as in the
/// agent.
pub fn run_agent_child_if_asked() {
    let first = std::env::args_os().nth(1);
    if first.as_deref().is_some_and(|a| a == "__launch") {
        crate::launch::child_main();
    }
    if first.as_deref().is_some_and(|a| a == crate::hotplug::CHILD_ARG) {
        crate::hotplug::child::main();
    }
}
