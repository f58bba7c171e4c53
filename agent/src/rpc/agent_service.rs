//! `grpc.AgentService`: the Kata agent protocol's main service.

use std::sync::Arc;

use protocols::agent::{
    AddARPNeighborsRequest, Interfaces, ListInterfacesRequest, ListRoutesRequest, ResizeVolumeRequest, Routes,
    UpdateInterfaceRequest, UpdateRoutesRequest, VolumeStatsRequest,
};
use protocols::agent::{
    DestroySandboxRequest, GetMetricsRequest, GuestDetailsRequest, GuestDetailsResponse, Metrics,
    ReseedRandomDevRequest, SetGuestDateTimeRequest,
};
use protocols::agent_ttrpc::AgentService;
use protocols::csi::VolumeStatsResponse;
use protocols::protobuf::well_known_types::empty::Empty;
use protocols::ttrpc::{self, asynchronous::TtrpcContext};
use protocols::types::Interface;

use crate::error::AgentError;
use crate::sandbox::Sandbox;
use crate::{network, storage};

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
    async fn get_volume_stats(
        &self,
        _ctx: &TtrpcContext,
        req: VolumeStatsRequest,
    ) -> ttrpc::Result<VolumeStatsResponse> {
        let path = volume_path(&req.volume_guest_path)?;
        Ok(storage::volume::stats(path).map_err(AgentError::from)?)
    }

    async fn resize_volume(&self, _ctx: &TtrpcContext, req: ResizeVolumeRequest) -> ttrpc::Result<Empty> {
        let path = volume_path(&req.volume_guest_path)?;
        let blocks = storage::volume::resize(path, req.size).map_err(AgentError::from)?;
        slog::info!(self.sandbox.log(), "volume resized"; "path" => path, "blocks" => blocks);
        Ok(Empty::new())
    }

    // ---- networking (network/) ----
    async fn update_interface(&self, _ctx: &TtrpcContext, req: UpdateInterfaceRequest) -> ttrpc::Result<Interface> {
        let iface = req.interface.as_ref().ok_or_else(|| AgentError::InvalidArgument("no interface".into()))?;
        let updated = network::update_interface(iface).map_err(AgentError::from)?;
        slog::info!(self.sandbox.log(), "interface updated"; "name" => &updated.name, "addresses" => updated.IPAddresses.len());
        Ok(updated)
    }

    async fn update_routes(&self, _ctx: &TtrpcContext, req: UpdateRoutesRequest) -> ttrpc::Result<Routes> {
        let wanted = req.routes.as_ref().map(|r| r.Routes.as_slice()).unwrap_or_default();
        let mut routes = Routes::new();
        routes.Routes = network::update_routes(wanted).map_err(AgentError::from)?;
        slog::info!(self.sandbox.log(), "routes replaced"; "routes" => routes.Routes.len());
        Ok(routes)
    }

    async fn list_interfaces(&self, _ctx: &TtrpcContext, _req: ListInterfacesRequest) -> ttrpc::Result<Interfaces> {
        let mut r = Interfaces::new();
        r.Interfaces = network::list_interfaces().map_err(AgentError::from)?;
        Ok(r)
    }

    async fn list_routes(&self, _ctx: &TtrpcContext, _req: ListRoutesRequest) -> ttrpc::Result<Routes> {
        let mut r = Routes::new();
        r.Routes = network::list_routes().map_err(AgentError::from)?;
        Ok(r)
    }

    async fn add_arp_neighbors(&self, _ctx: &TtrpcContext, req: AddARPNeighborsRequest) -> ttrpc::Result<Empty> {
        let neighbors = req.neighbors.as_ref().map(|n| n.ARPNeighbors.as_slice()).unwrap_or_default();
        network::add_arp_neighbors(neighbors).map_err(AgentError::from)?;
        Ok(Empty::new())
    }
}

/// A volume path the storage handlers accept: absolute, nothing else is checked
/// here (the volume module names what it cannot read).
fn volume_path(path: &str) -> Result<&str, AgentError> {
    if !path.starts_with('/') {
        return Err(AgentError::InvalidArgument(format!("volume_guest_path {path:?} is not absolute")));
    }
    Ok(path)
}
