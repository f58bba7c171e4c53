//! The agent's event loop: serve ttrpc on the chosen channel, reap every child
//! (as PID 1, or as a child subreaper on a host), and return when the sandbox
//! is destroyed or the process is told to stop.

use std::sync::Arc;
use std::time::Duration;

use protocols::ttrpc::asynchronous::Server;
use tokio::signal::unix::{signal, SignalKind};

use crate::channel::{self, Bound, ChannelError, ListenAddr};
use crate::process::reaper;
use crate::rpc;
use crate::sandbox::{Role, Sandbox};

/// Time for the DestroySandbox reply to reach the wire before connections close.
const REPLY_GRACE: Duration = Duration::from_millis(50);
/// How soon the reaper tries again while a helper waits for its own child.
const REAP_RETRY: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("ttrpc server failed to start")]
    Start(#[source] protocols::ttrpc::Error),
    #[error("cannot install signal handler")]
    Signal(#[source] std::io::Error),
    #[error("cannot become a child subreaper")]
    Subreaper(#[source] nix::Error),
}

/// Serves until DestroySandbox (or SIGTERM/SIGINT when not PID 1). `after_ready`
/// runs on a thread of its own once the server listens: setup the first
/// Health.Check need not wait for.
pub async fn serve(
    bound: Bound,
    sandbox: Arc<Sandbox>,
    role: Role,
    after_ready: impl FnOnce() + Send + 'static,
) -> Result<(), ServeError> {
    let log = sandbox.log().clone();
    // Handlers first: a client may signal as soon as it can connect.
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signal)?;
    let mut sigchld = signal(SignalKind::child()).map_err(ServeError::Signal)?;
    let addr = bound.addr();
    let listener = channel::listen(bound)?;
    let mut server = rpc::register(Server::new().add_listener(listener), sandbox.clone());
    server.start().await.map_err(ServeError::Start)?;
    sandbox.mark_ready();
    slog::info!(log, "agent ready"; "channel" => %addr);
    // A thread of its own rather than tokio's blocking pool, whose idle thread
    // would linger for seconds and count in the agent's RSS.
    let setup = sandbox.clone();
    let spawned = std::thread::Builder::new().name("wisp-setup".into()).spawn(move || {
        after_ready();
        setup.mark_setup_done();
    });
    if let Err(e) = spawned {
        slog::error!(log, "deferred guest setup not started"; "error" => %e);
    }

    // Containers' processes are the agent's children (or orphans that come
    // back to it): reap them all and route the statuses to their waiters. On a
    // host the agent is a subreaper so it sees the same as PID 1 in the VM.
    if role == Role::Standalone {
        nix::sys::prctl::set_child_subreaper(true).map_err(ServeError::Subreaper)?;
    }
    let (exits, reaper_log) = (sandbox.exits().clone(), log.clone());
    tokio::spawn(async move {
        loop {
            while !reaper::reap_into(&exits, &reaper_log) {
                tokio::time::sleep(REAP_RETRY).await;
            }
            if sigchld.recv().await.is_none() {
                break;
            }
        }
    });

    let mut destroyed = sandbox.shutdown_requested();
    tokio::select! {
        _ = destroyed.wait_for(|d| *d) => tokio::time::sleep(REPLY_GRACE).await,
        _ = term.recv(), if role == Role::Standalone => {
            slog::info!(log, "SIGTERM; removing the containers and stopping");
            sandbox.remove_all().await;
        }
        _ = int.recv(), if role == Role::Standalone => {
            slog::info!(log, "SIGINT; removing the containers and stopping");
            sandbox.remove_all().await;
        }
    }
    let _ = server.shutdown().await;
    if let ListenAddr::Unix { path } = &addr {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
