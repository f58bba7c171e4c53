//! The ttrpc services: thin handlers that validate, call a domain module and map
//! its error. No logic lives here.
//!
//! RPCs the agent does not implement yet fall through to the generated defaults,
//! which answer UNIMPLEMENTED with the method's name.

mod agent_service;
mod block_volume;
mod health;

use std::sync::Arc;

use protocols::ttrpc::asynchronous::Server;

use crate::sandbox::Sandbox;

/// Registers Kata's `grpc.Health` and `grpc.AgentService`, and our `wisp.v1.BlockVolume`, on
/// `server`.
pub fn register(server: Server, sandbox: Arc<Sandbox>) -> Server {
    server
        .register_service(protocols::health_ttrpc::create_health(Arc::new(health::HealthService)))
        .register_service(protocols::agent_ttrpc::create_agent_service(Arc::new(agent_service::AgentRpc::new(
            sandbox.clone(),
        ))))
        .register_service(protocols::wisp_ttrpc::create_block_volume(Arc::new(block_volume::BlockVolumeRpc {
            sandbox,
        })))
}
