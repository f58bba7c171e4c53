//! The ttrpc services: thin handlers that validate, call a domain module and map
//! its error. No logic lives here.
//!
//! RPCs the agent does not implement yet fall through to the generated defaults,
//! which answer UNIMPLEMENTED with the method's name.

mod agent_service;
mod block_volume;
mod health;

use std::collections::HashMap;
use std::sync::Arc;

use protocols::ttrpc::asynchronous::{Server, Service};

use crate::sandbox::Sandbox;

/// Registers Kata's `grpc.Health` and `grpc.AgentService`, and our `wisp.v1.BlockVolume`, on
/// `server`.
pub fn register(server: Server, sandbox: Arc<Sandbox>) -> Server {
    server.register_service(services(sandbox))
}

/// The services [`register`] serves, by fully qualified name: also what the fuzz harness
/// (`fuzz/src/agent.rs`) dispatches decoded frames to, without a socket.
pub fn services(sandbox: Arc<Sandbox>) -> HashMap<String, Service> {
    let mut services = protocols::health_ttrpc::create_health(Arc::new(health::HealthService));
    services
        .extend(protocols::agent_ttrpc::create_agent_service(Arc::new(agent_service::AgentRpc::new(sandbox.clone()))));
    services.extend(protocols::wisp_ttrpc::create_block_volume(Arc::new(block_volume::BlockVolumeRpc { sandbox })));
    services
}
