//! A disk plugged into a running container, or out of it (seed 004's `wisp block-volume`):
//! the VM plugs it, then our agent's `wisp.v1.BlockVolume` service makes the node and mounts
//! it. A plug the agent refuses is unplugged again through the [`Rollback`].

use std::sync::Arc;

use protocols::ttrpc::context;
use protocols::wisp::{HotPlugRequest, HotUnplugRequest};
use slog::Logger;

use super::{Rollback, AGENT_CALL_TIMEOUT};
use crate::error::Error;
use crate::hypervisor::{BlockSource, Plugged};
use crate::sandbox::Sandbox;

/// Refuses before anything is plugged if the guest agent has no BlockVolume service (Kata's).
pub async fn require_service(sandbox: &Sandbox) -> Result<(), Error> {
    let conn = sandbox.agent();
    Ok(conn.offers().require_block_volume(conn).await?)
}

/// Plugs `source` as disk `id`, then asks the agent to give it to the container as `request`
/// says (its `pci_path` is filled in here).
pub async fn plug(
    sandbox: &Arc<Sandbox>,
    id: &str,
    source: &BlockSource,
    mut request: HotPlugRequest,
    log: &Logger,
) -> Result<Plugged, Error> {
    let cid = request.container_id.clone();
    let mut rollback = Rollback::new(log);
    let plugged = super::hot_plug(sandbox, &cid, id, source, &mut rollback).await?;
    request.pci_path = plugged.pci_path.clone();
    let client = sandbox.agent().block_volume();
    match client.hot_plug(context::with_duration(AGENT_CALL_TIMEOUT), &request).await {
        Ok(_) => {
            rollback.commit();
            Ok(plugged)
        }
        Err(err) => {
            rollback.undo().await;
            Err(Error::agent("HotPlug", &cid, &err))
        }
    }
}

/// Asks the agent to unmount and forget the device `request` names, then unplugs disk `id`.
pub async fn unplug(sandbox: &Sandbox, id: &str, request: &HotUnplugRequest) -> Result<(), Error> {
    let client = sandbox.agent().block_volume();
    client
        .hot_unplug(context::with_duration(AGENT_CALL_TIMEOUT), request)
        .await
        .map_err(|err| Error::agent("HotUnplug", &request.container_id, &err))?;
    sandbox.hot_unplug(id).await.map_err(|source| Error::Disk {
        device: id.to_owned(),
        what: "unplug",
        source: Box::new(source),
    })
}
