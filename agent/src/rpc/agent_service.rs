//! `grpc.AgentService`: the Kata agent protocol's main service.

use std::sync::Arc;

use protocols::agent::{
    DestroySandboxRequest, GetMetricsRequest, GuestDetailsRequest, GuestDetailsResponse, Metrics,
    ReseedRandomDevRequest, SetGuestDateTimeRequest,
};
use protocols::agent_ttrpc::AgentService;
use protocols::protobuf::well_known_types::empty::Empty;
use protocols::ttrpc::{self, asynchronous::TtrpcContext};

use crate::sandbox::Sandbox;

#[derive(Debug)]
pub struct AgentRpc {
    sandbox: Arc<Sandbox>,
}

impl AgentRpc {
    pub fn new(sandbox: Arc<Sandbox>) -> Self {
        AgentRpc { sandbox }
    }
}

// The impl is one block (Rust requires it); its methods are grouped by the
// domain module they call, in the order of the sections below.
#[async_trait::async_trait]
impl AgentService for AgentRpc {
    // ---- sandbox and guest (sandbox.rs) ----
    async fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        req: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        Ok(self.sandbox.guest_details(req.mem_block_size, req.mem_hotplug_probe))
    }

    async fn set_guest_date_time(&self, _ctx: &TtrpcContext, req: SetGuestDateTimeRequest) -> ttrpc::Result<Empty> {
        self.sandbox.set_time(req.Sec, req.Usec)?;
        Ok(Empty::new())
    }

    async fn reseed_random_dev(&self, _ctx: &TtrpcContext, req: ReseedRandomDevRequest) -> ttrpc::Result<Empty> {
        self.sandbox.reseed(&req.data)?;
        Ok(Empty::new())
    }

    async fn get_metrics(&self, _ctx: &TtrpcContext, _req: GetMetricsRequest) -> ttrpc::Result<Metrics> {
        let mut m = Metrics::new();
        m.metrics = self.sandbox.metrics();
        Ok(m)
    }

    async fn destroy_sandbox(&self, _ctx: &TtrpcContext, _req: DestroySandboxRequest) -> ttrpc::Result<Empty> {
        self.sandbox.destroy();
        Ok(Empty::new())
    }

    // ---- containers, processes and stdio (container/, process/) ----

    // ---- cgroups: pause, resume, update, stats, OOM events (cgroups/) ----

    // ---- storage and devices (storage/, device/) ----

    // ---- networking (network/) ----
}
