//! The side API of the `wisp` CLI ([`crate::api`]) as a second adapter over the task service's
//! containers and the sandbox core: direct-volume stats and resize, block-volume hot-plug.
//! Each request is one typed call returning a typed [`Reply`] or the shim's [`Error`].

use std::sync::Arc;

use protocols::agent as pb;
use protocols::ttrpc::context;
use protocols::wisp::{HotPlugRequest, HotUnplugRequest};
use slog::info;

use super::process::HotDisk;
use super::stats::volume_stats_json;
use super::{Inner, CALL_TIMEOUT};
use crate::api::{Reply, Request, Response};
use crate::container::{hotplug, UsedVolume};
use crate::error::Error;
use crate::sandbox::Sandbox;
use crate::volumes;

impl Inner {
    /// One request of the side API.
    pub(super) async fn handle_api(self: Arc<Self>, request: Request) -> Response {
        Response::of(self.side_call(request).await)
    }

    async fn side_call(&self, request: Request) -> Result<Reply, Error> {
        match request {
            Request::VolumeStats { volume } => self.volume_stats(volume).await,
            Request::VolumeResize { volume, size } => self.volume_resize(volume, size).await,
            Request::BlockHotPlug { container, block_volume, device_path, mount, fstype, options } => {
                let request = HotPlugRequest {
                    container_id: container,
                    device_path,
                    mount_point: mount,
                    fstype,
                    options,
                    ..Default::default()
                };
                self.block_hot_plug(&block_volume, request).await
            }
            Request::BlockHotUnplug { container, device_path } => self.block_hot_unplug(container, device_path).await,
        }
    }

    /// The sandbox if its VM runs, for side API call `what`.
    async fn running(&self, what: &'static str) -> Result<Arc<Sandbox>, Error> {
        self.live_sandbox().await.ok_or_else(|| Error::NotRunning { what, sandbox: self.sandbox_id.clone() })
    }

    /// The direct volume `volume` as a container of the sandbox uses it.
    async fn used_volume(&self, volume: &str) -> Result<UsedVolume, Error> {
        let containers = self.containers.lock().await;
        let found = containers.values().flat_map(|c| c.volumes.iter()).find(|v| v.volume == volume);
        found
            .cloned()
            .ok_or_else(|| Error::VolumeUnused { volume: volume.to_owned(), sandbox: self.sandbox_id.clone() })
    }

    async fn volume_stats(&self, volume: String) -> Result<Reply, Error> {
        let used = self.used_volume(&volume).await?;
        let sandbox = self.running("volume stats").await?;
        let request = pb::VolumeStatsRequest { volume_guest_path: used.guest_path, ..Default::default() };
        let stats = (sandbox.agent().agent())
            .get_volume_stats(context::with_duration(CALL_TIMEOUT), &request)
            .await
            .map_err(|err| Error::agent("GetVolumeStats", &volume, &err))?;
        Ok(Reply::VolumeStats(volume_stats_json(&stats)))
    }

    async fn volume_resize(&self, volume: String, size: u64) -> Result<Reply, Error> {
        let used = self.used_volume(&volume).await?;
        let sandbox = self.running("volume resize").await?;
        (sandbox.resize_block(&used.device, size).await).map_err(|source| Error::Disk {
            device: used.device.clone(),
            what: "resize",
            source: Box::new(source),
        })?;
        let request = pb::ResizeVolumeRequest { volume_guest_path: used.guest_path, size, ..Default::default() };
        (sandbox.agent().agent())
            .resize_volume(context::with_duration(CALL_TIMEOUT), &request)
            .await
            .map_err(|err| Error::agent("ResizeVolume", &volume, &err))?;
        Ok(Reply::Resized { volume, size })
    }

    /// Hot-plugs `block_volume` into a running container as `request` says (seed 004).
    async fn block_hot_plug(&self, block_volume: &str, request: HotPlugRequest) -> Result<Reply, Error> {
        let sandbox = self.running("block hot-plug").await?;
        // Kata's agent has no such service: say so before QMP plugs anything.
        hotplug::require_service(&sandbox).await?;
        let (container, device_path) = (request.container_id.clone(), request.device_path.clone());
        {
            let containers = self.containers.lock().await;
            let c = containers.get(&container).ok_or_else(|| Error::ContainerNotFound(container.clone()))?;
            if c.hot.iter().any(|d| d.device_path == device_path) {
                return Err(Error::AlreadyPlugged { container, device: device_path });
            }
        }
        let source = volumes::hot_plug_source(block_volume).map_err(Error::BlockVolume)?;
        let id = self.next_device_id();
        let mount = request.mount_point.clone();
        let plugged = hotplug::plug(&sandbox, &id, &source, request, &self.log).await?;
        let mut containers = self.containers.lock().await;
        let c = containers
            .get_mut(&container)
            .ok_or_else(|| Error::Internal(format!("container {container:?} went away during the hot-plug")))?;
        c.hot.push(HotDisk { device_path: device_path.clone(), mount, id: id.clone() });
        c.plugged.push(id.clone());
        info!(self.log, "disk hot-plugged"; "container" => &container, "device" => &device_path, "id" => &id);
        Ok(Reply::Plugged { id, pci_path: plugged.pci_path, device_path })
    }

    /// Reverses [`Inner::block_hot_plug`].
    async fn block_hot_unplug(&self, container: String, device_path: String) -> Result<Reply, Error> {
        let sandbox = self.running("block hot-unplug").await?;
        hotplug::require_service(&sandbox).await?;
        let disk = {
            let containers = self.containers.lock().await;
            let c = containers.get(&container).ok_or_else(|| Error::ContainerNotFound(container.clone()))?;
            let disk = c.hot.iter().find(|d| d.device_path == device_path).cloned();
            disk.ok_or_else(|| Error::NotPlugged { container: container.clone(), device: device_path.clone() })?
        };
        let request = HotUnplugRequest {
            container_id: container.clone(),
            device_path: device_path.clone(),
            mount_point: disk.mount,
            ..Default::default()
        };
        hotplug::unplug(&sandbox, &disk.id, &request).await?;
        if let Some(c) = self.containers.lock().await.get_mut(&container) {
            c.hot.retain(|d| d.device_path != device_path);
            c.plugged.retain(|p| *p != disk.id);
        }
        info!(self.log, "disk hot-unplugged"; "container" => &container, "device" => &device_path, "id" => &disk.id);
        Ok(Reply::Unplugged { id: disk.id })
    }
}
