//! Which of our own services (`wisp.v1.*`) the guest agent offers.
//!
//! Kata's protocol is the contract: Kata's own agent runs under this shim, and it serves
//! `grpc.AgentService` and `grpc.Health` only. What Kata lacks (hot-plug into a running
//! container) is an extension our agent adds as a service of its own package, and the shim asks
//! before relying on it: once per connection, with a call that changes nothing (an empty
//! request our agent refuses as invalid), before any host-side work such as a QMP hot-plug.
//!
//! A ttrpc server without the service answers from its router, never from a handler:
//! ttrpc-rust's async server `INVALID_ARGUMENT "<service> service does not exist"`, its sync
//! server `"<path> does not exist"`, Go's ttrpc `UNIMPLEMENTED`. Any other answer, an error
//! included, comes from a handler: the service is there.

use protocols::ttrpc::{self, context, Code};
use tokio::sync::OnceCell;

use crate::agent_dial::AgentConn;
use crate::sandbox::describe_ttrpc;

/// Our block-volume hot-plug service.
pub const BLOCK_VOLUME: &str = "wisp.v1.BlockVolume";

/// Bound on the probe: a healthy agent answers an invalid request at once.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// An extension the shim cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The agent has no such service (Kata's own agent, or an older one of ours).
    #[error("this guest agent does not offer {service} ({answer})")]
    NotOffered {
        /// The service.
        service: &'static str,
        /// What the agent's ttrpc server answered.
        answer: String,
    },
    /// The agent did not answer the question.
    #[error("cannot ask the guest agent whether it offers {service}: {}", describe_ttrpc(source))]
    Probe {
        /// The service.
        service: &'static str,
        /// The failed call.
        source: ttrpc::Error,
    },
}

/// What one agent connection offers, asked once and remembered.
#[derive(Debug, Default)]
pub struct Offers {
    block_volume: OnceCell<Result<(), String>>,
}

impl Offers {
    /// Ok if the agent behind `conn` serves [`BLOCK_VOLUME`]; asks it the first time only (a
    /// probe that failed in transport is asked again next time).
    pub async fn require_block_volume(&self, conn: &AgentConn) -> Result<(), ServiceError> {
        let answer = self
            .block_volume
            .get_or_try_init(|| async {
                let probe = protocols::wisp::HotUnplugRequest::new();
                let client = conn.block_volume();
                match client.hot_unplug(context::with_duration(PROBE_TIMEOUT), &probe).await {
                    Ok(_) => Ok(Ok(())),
                    Err(err) => match missing_service(&err, BLOCK_VOLUME) {
                        Some(answer) => Ok(Err(answer)),
                        None if matches!(err, ttrpc::Error::RpcStatus(_)) => Ok(Ok(())),
                        None => Err(err),
                    },
                }
            })
            .await
            .map_err(|source| ServiceError::Probe { service: BLOCK_VOLUME, source })?;
        answer.clone().map_err(|answer| ServiceError::NotOffered { service: BLOCK_VOLUME, answer })
    }
}

/// The router's answer if `err` says the server has no `service`.
fn missing_service(err: &ttrpc::Error, service: &str) -> Option<String> {
    let ttrpc::Error::RpcStatus(status) = err else { return None };
    let message = status.message.as_str();
    let routed = status.code() == Code::UNIMPLEMENTED
        || (status.code() == Code::INVALID_ARGUMENT
            && message.ends_with("does not exist")
            && (message.starts_with(service) || message.starts_with(&format!("/{service}/"))));
    routed.then(|| format!("{:?}: {message}", status.code()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use protocols::health::health_check_response::ServingStatus;
    use protocols::health::{CheckRequest, HealthCheckResponse};
    use protocols::health_ttrpc::{create_health, Health};
    use protocols::ttrpc::asynchronous::{Server, TtrpcContext};
    use protocols::wisp::{HotPlugRequest, HotUnplugRequest};
    use protocols::wisp_ttrpc::{create_block_volume, BlockVolume};

    use super::*;
    use crate::agent_dial::{connect, AgentAddr};

    /// Kata's agent as far as this question goes: Health, no wisp services.
    struct KataHealth;

    #[async_trait::async_trait]
    impl Health for KataHealth {
        async fn check(&self, _: &TtrpcContext, _: CheckRequest) -> ttrpc::Result<HealthCheckResponse> {
            let mut resp = HealthCheckResponse::new();
            resp.set_status(ServingStatus::SERVING);
            Ok(resp)
        }
    }

    /// Our agent's block-volume service as far as the probe goes: it refuses the empty request.
    #[derive(Default)]
    struct Ours {
        calls: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl BlockVolume for Ours {
        async fn hot_plug(&self, _: &TtrpcContext, _: HotPlugRequest) -> ttrpc::Result<protocols::empty::Empty> {
            Err(ttrpc::Error::RpcStatus(ttrpc::get_status(Code::INTERNAL, "the probe must not plug anything")))
        }

        async fn hot_unplug(&self, _: &TtrpcContext, req: HotUnplugRequest) -> ttrpc::Result<protocols::empty::Empty> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                Code::INVALID_ARGUMENT,
                format!("device_path {:?} must be absolute, without `..`", req.device_path),
            )))
        }
    }

    async fn serve(dir: &std::path::Path, ours: Option<Arc<Ours>>) -> (Server, AgentConn) {
        let sock = dir.join("agent.sock");
        let mut server = Server::new()
            .bind(&format!("unix://{}", sock.display()))
            .unwrap()
            .register_service(create_health(Arc::new(KataHealth)));
        if let Some(ours) = ours {
            server = server.register_service(create_block_volume(ours));
        }
        server.start().await.unwrap();
        let conn = connect(&AgentAddr::Unix { path: sock }, Duration::from_secs(5)).await.unwrap();
        (server, conn)
    }

    #[tokio::test]
    async fn an_agent_without_the_service_is_told_apart_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut server, conn) = serve(dir.path(), None).await;
        let err = conn.offers().require_block_volume(&conn).await.unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("this guest agent does not offer wisp.v1.BlockVolume"), "{message}");
        assert!(message.contains("service does not exist"), "the router's answer is quoted: {message}");
        assert!(matches!(conn.offers().require_block_volume(&conn).await, Err(ServiceError::NotOffered { .. })));
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn our_agent_offers_it_and_is_asked_once() {
        let dir = tempfile::tempdir().unwrap();
        let ours = Arc::new(Ours::default());
        let (mut server, conn) = serve(dir.path(), Some(ours.clone())).await;
        for _ in 0..3 {
            conn.offers().require_block_volume(&conn).await.unwrap();
        }
        assert_eq!(ours.calls.load(Ordering::SeqCst), 1, "asked once per connection");
        assert_eq!(
            conn.clone().offers().require_block_volume(&conn).await.map_err(|e| e.to_string()),
            Ok(()),
            "clones share the answer"
        );
        assert_eq!(ours.calls.load(Ordering::SeqCst), 1);
        server.shutdown().await.unwrap();
    }

    #[test]
    fn only_the_routers_answers_mean_missing() {
        let status = |code, message: &str| ttrpc::Error::RpcStatus(ttrpc::get_status(code, message));
        let go = status(Code::UNIMPLEMENTED, "service wisp.v1.BlockVolume");
        assert!(missing_service(&go, BLOCK_VOLUME).is_some());
        let sync = status(Code::INVALID_ARGUMENT, "/wisp.v1.BlockVolume/HotUnplug does not exist");
        assert!(missing_service(&sync, BLOCK_VOLUME).is_some());
        let handler = status(Code::INVALID_ARGUMENT, "device_path \"\" must be absolute, without `..`");
        assert!(missing_service(&handler, BLOCK_VOLUME).is_none());
        let other = status(Code::INVALID_ARGUMENT, "grpc.AgentService service does not exist");
        assert!(missing_service(&other, BLOCK_VOLUME).is_none());
        assert!(missing_service(&ttrpc::Error::LocalClosed, BLOCK_VOLUME).is_none());
    }
}
