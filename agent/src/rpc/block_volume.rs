//! `wisp.v1.BlockVolume`: our own service (Kata's stays byte-identical) for block devices
//! plugged into a running container; the work is in [`crate::hotplug`].

use std::sync::Arc;

use protocols::protobuf::well_known_types::empty::Empty;
use protocols::ttrpc::{self, asynchronous::TtrpcContext};
use protocols::wisp::{HotPlugRequest, HotUnplugRequest};
use protocols::wisp_ttrpc::BlockVolume;

use crate::hotplug;
use crate::sandbox::Sandbox;

#[derive(Debug)]
pub struct BlockVolumeRpc {
    pub sandbox: Arc<Sandbox>,
}

impl BlockVolumeRpc {
    fn fail(&self, rpc: &str, container_id: &str, e: crate::error::AgentError) -> ttrpc::Error {
        slog::warn!(self.sandbox.log(), "request failed"; "rpc" => rpc, "container_id" => container_id,
            "error" => %crate::error::chain(&e));
        e.into()
    }
}

#[async_trait::async_trait]
impl BlockVolume for BlockVolumeRpc {
    async fn hot_plug(&self, _ctx: &TtrpcContext, req: HotPlugRequest) -> ttrpc::Result<Empty> {
        hotplug::plug(&self.sandbox, &req).await.map_err(|e| self.fail("HotPlug", &req.container_id, e))?;
        Ok(Empty::new())
    }

    async fn hot_unplug(&self, _ctx: &TtrpcContext, req: HotUnplugRequest) -> ttrpc::Result<Empty> {
        hotplug::unplug(&self.sandbox, &req).await.map_err(|e| self.fail("HotUnplug", &req.container_id, e))?;
        Ok(Empty::new())
    }
}
