//! Delete of an exec or a container: a container's guest side removed (RemoveContainer), then
//! what the shim holds for it released (its shares, its disks, its direct-volume records, the
//! rootfs it mounted), and TaskDelete published.

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as events;
use containerd_shim_protos::topics;
use nix::mount::{umount2, MntFlags};
use protocols::agent as pb;
use protocols::ttrpc::context;
use slog::{info, warn};

use super::{now, Container, Exit, Inner, Status, CALL_TIMEOUT};
use crate::error::Error;
use crate::volumes;

impl Inner {
    /// Delete of a container or exec (see [`super::TaskService`]'s `delete`).
    pub(super) async fn delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse, Error> {
        let pid = self.vm_pid().await;
        let exit = if req.exec_id.is_empty() {
            self.delete_container(&req.id, pid).await?
        } else {
            self.delete_exec(&req.id, &req.exec_id).await?
        };
        Ok(api::DeleteResponse { pid, exit_status: exit.status, exited_at: Some(exit.at).into(), ..Default::default() })
    }

    async fn delete_exec(&self, id: &str, exec_id: &str) -> Result<Exit, Error> {
        let mut containers = self.containers.lock().await;
        let container = containers.get_mut(id).ok_or_else(|| Error::ContainerNotFound(id.to_owned()))?;
        let proc = container.process(exec_id)?;
        if proc.status() == Status::Running {
            return Err(Error::StillRunning { what: format!("exec {exec_id:?}"), hint: "" });
        }
        container.execs.remove(exec_id);
        Ok(proc.exit().unwrap_or(Exit { status: 0, at: now() }))
    }

    async fn delete_container(&self, id: &str, pid: u32) -> Result<Exit, Error> {
        let proc = self.find(id, "").await?;
        if matches!(proc.status(), Status::Running | Status::Paused) {
            return Err(Error::StillRunning { what: format!("container {id:?}"), hint: "; kill it first" });
        }
        if let Some(sandbox) = self.live_sandbox().await {
            let request = pb::RemoveContainerRequest { container_id: id.to_owned(), timeout: 10, ..Default::default() };
            let agent = sandbox.agent().agent();
            if let Err(err) = agent.remove_container(context::with_duration(CALL_TIMEOUT), &request).await {
                warn!(self.log, "RemoveContainer failed"; "container" => id, "error" => %err);
            }
        }
        let container = self.containers.lock().await.remove(id);
        self.release(id, container).await;
        let exit = proc.exit().unwrap_or(Exit { status: 0, at: now() });
        let event = events::TaskDelete {
            container_id: id.to_owned(),
            id: id.to_owned(),
            pid,
            exit_status: exit.status,
            exited_at: Some(exit.at.clone()).into(),
            ..Default::default()
        };
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(event)).await;
        info!(self.log, "container deleted"; "container" => id);
        Ok(exit)
    }

    /// Releases what the shim holds for deleted container `id`: its shares, its disks (while
    /// the VM runs), its direct-volume records, the rootfs it mounted.
    async fn release(&self, id: &str, container: Option<Container>) {
        if let Some(sandbox) = self.current_sandbox().await {
            sandbox.unshare(id);
            let plugged = container.as_ref().map(|c| c.plugged.clone()).unwrap_or_default();
            if sandbox.exited().borrow().is_none() {
                for device in plugged.iter().rev() {
                    if let Err(err) = sandbox.hot_unplug(device).await {
                        warn!(self.log, "cannot unplug"; "container" => id, "device" => device, "error" => %err);
                    }
                }
            }
        }
        let volume_root = volumes::direct::root(&self.config);
        for used in container.iter().flat_map(|c| c.volumes.iter()) {
            volumes::direct::forget_sandbox(&volume_root, &used.volume, &self.sandbox_id);
        }
        if let Some(target) = container.and_then(|c| c.mounted_rootfs) {
            if let Err(err) = umount2(&target, MntFlags::MNT_DETACH) {
                warn!(self.log, "cannot unmount rootfs"; "container" => id, "path" => %target.display(), "error" => %err);
            }
        }
    }
}
