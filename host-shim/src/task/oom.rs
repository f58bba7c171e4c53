//! The guest's OOM kills (the agent's GetOOMEvent) as containerd's TaskOOM events.
//!
//! GetOOMEvent answers with whatever container id the guest names, and containerd takes a
//! TaskOOM's container id at its word (a CRI marks that container OOM-killed, a restart policy
//! acts on it). A hostile guest naming a container of another sandbox must not reach it: only
//! ids this shim created are published, the rest are logged and dropped.

use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::events::task::TaskOOM;
use protocols::agent::GetOOMEventRequest;
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::ttrpc::{self, context, Code};
use slog::{warn, Logger};
use tokio::sync::watch;

/// How long one GetOOMEvent may wait for a kill.
const WAIT: Duration = Duration::from_secs(3600);
/// The pause after a failed GetOOMEvent.
const RETRY: Duration = Duration::from_secs(1);

/// Where the relay asks whom a container id belongs to and publishes.
#[async_trait]
pub(super) trait OomSink: Send + Sync {
    /// Whether this shim created `container_id` (and has not deleted it).
    async fn is_ours(&self, container_id: &str) -> bool;
    async fn publish_oom(&self, oom: TaskOOM);
}

/// Relays the agent's OOM events until the VM exits (`exited` holds a reason) or the agent
/// turns out not to offer them.
pub(super) async fn relay(
    agent: &AgentServiceClient,
    mut exited: watch::Receiver<Option<String>>,
    sink: &dyn OomSink,
    log: &Logger,
) {
    let request = GetOOMEventRequest::new();
    loop {
        let event = tokio::select! {
            event = agent.get_oom_event(context::with_duration(WAIT), &request) => event,
            _ = exited.wait_for(Option::is_some) => return,
        };
        match event {
            Ok(event) if sink.is_ours(&event.container_id).await => {
                warn!(log, "OOM kill in the guest"; "container" => &event.container_id);
                sink.publish_oom(TaskOOM { container_id: event.container_id, ..Default::default() }).await;
            }
            Ok(event) => {
                warn!(log, "the guest reported an OOM kill of a container this shim did not create; not published";
                    "container" => &event.container_id);
                // A hostile guest answers at once, forever: bound the log and the loop.
                tokio::time::sleep(RETRY).await;
            }
            Err(ttrpc::Error::RpcStatus(status)) if unsupported(status.code()) => return,
            Err(_) => tokio::time::sleep(RETRY).await,
        }
    }
}

/// Whether the agent lacks GetOOMEvent: UNIMPLEMENTED from ours, NOT_FOUND from Kata's (the
/// ttrpc-rust default, which Kata's own shim takes to mean the same).
fn unsupported(code: Code) -> bool {
    matches!(code, Code::UNIMPLEMENTED | Code::NOT_FOUND)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use protocols::agent::OOMEvent;
    use protocols::agent_ttrpc::{create_agent_service, AgentService};
    use protocols::ttrpc::asynchronous::{Server, TtrpcContext};

    use super::*;
    use crate::agent_dial::{connect, AgentAddr};

    /// A guest that reports `events` in turn, then says it has no OOM events.
    struct Guest {
        events: Mutex<VecDeque<&'static str>>,
        end: Code,
    }

    #[async_trait]
    impl AgentService for Guest {
        async fn get_oom_event(&self, _: &TtrpcContext, _: GetOOMEventRequest) -> ttrpc::Result<OOMEvent> {
            match self.events.lock().unwrap().pop_front() {
                Some(id) => Ok(OOMEvent { container_id: id.into(), ..Default::default() }),
                None => Err(ttrpc::Error::RpcStatus(ttrpc::get_status(self.end, "GetOOMEvent is not supported"))),
            }
        }
    }

    /// A shim that created `ours` and records what it publishes.
    struct Shim {
        ours: Vec<&'static str>,
        published: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl OomSink for Shim {
        async fn is_ours(&self, container_id: &str) -> bool {
            self.ours.contains(&container_id)
        }
        async fn publish_oom(&self, oom: TaskOOM) {
            self.published.lock().unwrap().push(oom.container_id);
        }
    }

    async fn relayed(events: &[&'static str], end: Code) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let guest = Guest { events: Mutex::new(events.iter().copied().collect()), end };
        let mut server = Server::new()
            .bind(&format!("unix://{}", sock.display()))
            .unwrap()
            .register_service(create_agent_service(Arc::new(guest)));
        server.start().await.unwrap();
        let conn = connect(&AgentAddr::Unix { path: sock }, Duration::from_secs(5)).await.unwrap();
        let shim = Shim { ours: vec!["web", "db"], published: Mutex::new(Vec::new()) };
        let (_vm, exited) = watch::channel(None);
        let log = Logger::root(slog::Discard, slog::o!());
        // Ends when the guest runs out of events: the unsupported answer stops the relay.
        tokio::time::timeout(Duration::from_secs(10), relay(&conn.agent(), exited, &shim, &log))
            .await
            .expect("the relay stops at the unsupported answer");
        let published = shim.published.lock().unwrap().clone();
        published
    }

    #[tokio::test]
    async fn only_containers_of_this_shim_become_task_oom() {
        let published = relayed(&["web", "another-sandboxes-container", "db", "", "web"], Code::UNIMPLEMENTED).await;
        assert_eq!(published, ["web", "db", "web"]);
    }

    #[tokio::test]
    async fn kata_agents_not_found_also_means_no_oom_events() {
        assert_eq!(relayed(&["db"], Code::NOT_FOUND).await, ["db"]);
    }
}
