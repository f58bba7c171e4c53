//! `grpc.AgentService`: the Kata agent protocol's main service.

use std::sync::Arc;
use std::time::Duration;

use protocols::agent::{
    AddARPNeighborsRequest, Interfaces, ListInterfacesRequest, ListRoutesRequest, ResizeVolumeRequest, Routes,
    UpdateInterfaceRequest, UpdateRoutesRequest, VolumeStatsRequest,
};
use protocols::agent::{
    CloseStdinRequest, CopyFileRequest, CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest,
    ExecProcessRequest, GetMetricsRequest, GetOOMEventRequest, GuestDetailsRequest, GuestDetailsResponse, Metrics,
    OOMEvent, OnlineCPUMemRequest, PauseContainerRequest, ReadStreamRequest, ReadStreamResponse,
    RemoveContainerRequest, RemoveStaleVirtiofsShareMountsRequest, ReseedRandomDevRequest, ResumeContainerRequest,
    SetGuestDateTimeRequest, SignalProcessRequest, StartContainerRequest, StatsContainerRequest,
    StatsContainerResponse, TtyWinResizeRequest, UpdateContainerRequest, WaitProcessRequest, WaitProcessResponse,
    WriteStreamRequest, WriteStreamResponse,
};
use protocols::agent_ttrpc::AgentService;
use protocols::convert::from_pb;
use protocols::csi::VolumeStatsResponse;
use protocols::protobuf::well_known_types::empty::Empty;
use protocols::ttrpc::{self, asynchronous::TtrpcContext};
use protocols::types::Interface;

use crate::container;
use crate::error::AgentError;
use crate::process::Process;
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

    /// Logs a failed request with its ids, then hands the error to ttrpc.
    fn fail(&self, rpc: &str, container_id: &str, exec_id: &str, e: AgentError) -> ttrpc::Error {
        slog::warn!(self.sandbox.log(), "request failed"; "rpc" => rpc, "container_id" => container_id,
            "exec_id" => exec_id, "error" => %crate::error::chain(&e));
        e.into()
    }

    /// The process a stdio request names; an empty exec id is the init.
    fn process(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> Result<(Arc<container::Container>, Arc<Process>), AgentError> {
        let c = self.sandbox.container(container_id)?;
        let p = c.process(exec_id)?;
        Ok((c, p))
    }

    async fn read(&self, req: &ReadStreamRequest, stderr: bool) -> Result<ReadStreamResponse, AgentError> {
        let (c, p) = self.process(&req.container_id, &req.exec_id)?;
        match p.read_output(stderr, req.len as usize).await {
            Some(data) => {
                let mut r = ReadStreamResponse::new();
                r.data = data;
                Ok(r)
            }
            None => {
                c.forget_exec_if_done(&p.exec_id);
                Err(AgentError::Eof {
                    container_id: req.container_id.clone(),
                    exec_id: p.exec_id.clone(),
                    stream: if stderr { "stderr" } else { "stdout" },
                })
            }
        }
    }
}

fn stdio_err(container_id: &str, exec_id: &str) -> impl FnOnce(crate::process::StdioError) -> AgentError {
    let (container_id, exec_id) = (container_id.to_owned(), exec_id.to_owned());
    move |source| AgentError::Stdio { container_id, exec_id, source }
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

    async fn remove_stale_virtiofs_share_mounts(
        &self,
        _ctx: &TtrpcContext,
        _req: RemoveStaleVirtiofsShareMountsRequest,
    ) -> ttrpc::Result<Empty> {
        let log = self.sandbox.log().clone();
        let revalidated = tokio::task::spawn_blocking(move || crate::storage::virtiofs::revalidate_shared_mounts(&log));
        if let Err(e) = revalidated.await {
            slog::warn!(self.sandbox.log(), "shared mounts not revalidated"; "error" => %e);
        }
        Ok(Empty::new())
    }

    async fn get_metrics(&self, _ctx: &TtrpcContext, _req: GetMetricsRequest) -> ttrpc::Result<Metrics> {
        let mut m = Metrics::new();
        m.metrics = self.sandbox.metrics();
        Ok(m)
    }

    async fn destroy_sandbox(&self, _ctx: &TtrpcContext, _req: DestroySandboxRequest) -> ttrpc::Result<Empty> {
        self.sandbox.destroy().await;
        Ok(Empty::new())
    }

    async fn create_sandbox(&self, _ctx: &TtrpcContext, req: CreateSandboxRequest) -> ttrpc::Result<Empty> {
        self.sandbox.create_sandbox(&req).await.map_err(|e| self.fail("CreateSandbox", "", "", e))?;
        Ok(Empty::new())
    }

    async fn copy_file(&self, _ctx: &TtrpcContext, req: CopyFileRequest) -> ttrpc::Result<Empty> {
        self.sandbox.copy_file(&req).map_err(|e| self.fail("CopyFile", "", "", e))?;
        Ok(Empty::new())
    }

    async fn online_cpu_mem(&self, _ctx: &TtrpcContext, req: OnlineCPUMemRequest) -> ttrpc::Result<Empty> {
        self.sandbox.online_cpu_mem(&req).await.map_err(|e| self.fail("OnlineCPUMem", "", "", e))?;
        Ok(Empty::new())
    }

    // ---- containers, processes and stdio (container/, process/) ----

    async fn create_container(&self, _ctx: &TtrpcContext, req: CreateContainerRequest) -> ttrpc::Result<Empty> {
        let id = &req.container_id;
        self.sandbox.create_container(&req).await.map_err(|e| self.fail("CreateContainer", id, &req.exec_id, e))?;
        Ok(Empty::new())
    }

    async fn start_container(&self, _ctx: &TtrpcContext, req: StartContainerRequest) -> ttrpc::Result<Empty> {
        let id = &req.container_id;
        let started = async { self.sandbox.container(id)?.start().await };
        started.await.map_err(|e| self.fail("StartContainer", id, "", e))?;
        Ok(Empty::new())
    }

    async fn remove_container(&self, _ctx: &TtrpcContext, req: RemoveContainerRequest) -> ttrpc::Result<Empty> {
        let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout.into()));
        let id = &req.container_id;
        self.sandbox.remove_container(id, timeout).await.map_err(|e| self.fail("RemoveContainer", id, "", e))?;
        Ok(Empty::new())
    }

    async fn exec_process(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let (id, exec_id) = (&req.container_id, &req.exec_id);
        let run = async {
            let c = self.sandbox.container(id)?;
            let pb = req
                .process
                .as_ref()
                .ok_or_else(|| AgentError::InvalidArgument(format!("exec {exec_id}: no process")))?;
            let process =
                from_pb::process(pb).map_err(|source| AgentError::Spec { container_id: id.clone(), source })?;
            container::exec(&c, exec_id, process).await
        };
        run.await.map_err(|e| self.fail("ExecProcess", id, exec_id, e))?;
        Ok(Empty::new())
    }

    async fn signal_process(&self, _ctx: &TtrpcContext, req: SignalProcessRequest) -> ttrpc::Result<Empty> {
        let (id, exec_id) = (&req.container_id, &req.exec_id);
        let sent = self.sandbox.container(id).and_then(|c| c.signal(exec_id, req.signal));
        sent.map_err(|e| self.fail("SignalProcess", id, exec_id, e))?;
        Ok(Empty::new())
    }

    async fn wait_process(&self, _ctx: &TtrpcContext, req: WaitProcessRequest) -> ttrpc::Result<WaitProcessResponse> {
        let (id, exec_id) = (&req.container_id, &req.exec_id);
        let waited = async { self.sandbox.container(id)?.wait(exec_id).await };
        let status = waited.await.map_err(|e| self.fail("WaitProcess", id, exec_id, e))?;
        let mut r = WaitProcessResponse::new();
        r.status = status;
        Ok(r)
    }

    async fn write_stdin(&self, _ctx: &TtrpcContext, req: WriteStreamRequest) -> ttrpc::Result<WriteStreamResponse> {
        let (id, exec_id) = (&req.container_id, &req.exec_id);
        let written = async {
            let (_, p) = self.process(id, exec_id)?;
            // Kata's agent reads an empty write as the end of stdin.
            if req.data.is_empty() {
                p.io.close_stdin().await.map_err(stdio_err(id, &p.exec_id))?;
                return Ok(0);
            }
            p.io.write_stdin(&req.data).await.map_err(stdio_err(id, &p.exec_id))
        };
        let n = written.await.map_err(|e| self.fail("WriteStdin", id, exec_id, e))?;
        let mut r = WriteStreamResponse::new();
        r.len = u32::try_from(n).unwrap_or(u32::MAX);
        Ok(r)
    }

    async fn read_stdout(&self, _ctx: &TtrpcContext, req: ReadStreamRequest) -> ttrpc::Result<ReadStreamResponse> {
        // EOF is an error (Kata's answer), and routine: not logged as a failure.
        self.read(&req, false).await.map_err(Into::into)
    }

    async fn read_stderr(&self, _ctx: &TtrpcContext, req: ReadStreamRequest) -> ttrpc::Result<ReadStreamResponse> {
        self.read(&req, true).await.map_err(Into::into)
    }

    async fn close_stdin(&self, _ctx: &TtrpcContext, req: CloseStdinRequest) -> ttrpc::Result<Empty> {
        let (id, exec_id) = (&req.container_id, &req.exec_id);
        let closed = async {
            let (_, p) = self.process(id, exec_id)?;
            p.io.close_stdin().await.map_err(stdio_err(id, &p.exec_id))
        };
        closed.await.map_err(|e| self.fail("CloseStdin", id, exec_id, e))?;
        Ok(Empty::new())
    }

    async fn tty_win_resize(&self, _ctx: &TtrpcContext, req: TtyWinResizeRequest) -> ttrpc::Result<Empty> {
        let (id, exec_id) = (&req.container_id, &req.exec_id);
        let resized = (|| {
            let (_, p) = self.process(id, exec_id)?;
            let dim = |v: u32| {
                u16::try_from(v).map_err(|_| AgentError::InvalidArgument(format!("terminal size {v} is too large")))
            };
            p.io.resize(dim(req.row)?, dim(req.column)?).map_err(stdio_err(id, &p.exec_id))
        })();
        resized.map_err(|e| self.fail("TtyWinResize", id, exec_id, e))?;
        Ok(Empty::new())
    }

    // ---- cgroups: pause, resume, update, stats, OOM events (cgroups/) ----

    async fn pause_container(&self, _ctx: &TtrpcContext, req: PauseContainerRequest) -> ttrpc::Result<Empty> {
        let id = &req.container_id;
        let paused = async { self.sandbox.container(id)?.with_cgroup("pause", |cg| cg.freeze()).await };
        paused.await.map_err(|e| self.fail("PauseContainer", id, "", e))?;
        Ok(Empty::new())
    }

    async fn resume_container(&self, _ctx: &TtrpcContext, req: ResumeContainerRequest) -> ttrpc::Result<Empty> {
        let id = &req.container_id;
        let resumed = async { self.sandbox.container(id)?.with_cgroup("resume", |cg| cg.thaw()).await };
        resumed.await.map_err(|e| self.fail("ResumeContainer", id, "", e))?;
        Ok(Empty::new())
    }

    async fn update_container(&self, _ctx: &TtrpcContext, req: UpdateContainerRequest) -> ttrpc::Result<Empty> {
        let id = &req.container_id;
        let updated = async {
            let c = self.sandbox.container(id)?;
            let Some(pb) = req.resources.as_ref() else { return Ok(()) };
            let r = from_pb::resources(pb).map_err(|source| AgentError::Spec { container_id: id.clone(), source })?;
            c.with_cgroup("update", move |cg| cg.update(&r)).await
        };
        updated.await.map_err(|e| self.fail("UpdateContainer", id, "", e))?;
        Ok(Empty::new())
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        let id = &req.container_id;
        let stats = async { self.sandbox.container(id)?.with_cgroup("read stats", |cg| Ok(cg.stats())).await };
        let stats = stats.await.map_err(|e| self.fail("StatsContainer", id, "", e))?;
        let mut r = StatsContainerResponse::new();
        r.cgroup_stats = Some(stats).into();
        Ok(r)
    }

    async fn get_oom_event(&self, _ctx: &TtrpcContext, _req: GetOOMEventRequest) -> ttrpc::Result<OOMEvent> {
        let id = self.sandbox.next_oom().await.map_err(|e| self.fail("GetOOMEvent", "", "", e))?;
        slog::info!(self.sandbox.log(), "OOM kill"; "container_id" => &id);
        let mut r = OOMEvent::new();
        r.container_id = id;
        Ok(r)
    }

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
        let iface = required(&req.interface, "interface")?.clone();
        // It may wait for a hot-plugged NIC: off the RPC threads.
        let updated = tokio::task::spawn_blocking(move || network::update_interface(&iface))
            .await
            .map_err(|e| AgentError::FailedPrecondition(format!("update_interface did not finish: {e}")))?
            .map_err(AgentError::from)?;
        slog::info!(self.sandbox.log(), "interface updated"; "name" => &updated.name, "addresses" => updated.IPAddresses.len());
        Ok(updated)
    }

    async fn update_routes(&self, _ctx: &TtrpcContext, req: UpdateRoutesRequest) -> ttrpc::Result<Routes> {
        let wanted = required(&req.routes, "routes")?.Routes.as_slice();
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
        let neighbors = required(&req.neighbors, "neighbors")?.ARPNeighbors.as_slice();
        network::add_arp_neighbors(neighbors).map_err(AgentError::from)?;
        Ok(Empty::new())
    }
}

/// A message field the request must carry. As in Kata's agent, an absent one is refused
/// (INVALID_ARGUMENT) rather than read as empty: an UpdateRoutes without `routes` would
/// otherwise replace the guest's routes with none.
fn required<'a, T>(field: &'a protobuf::MessageField<T>, name: &str) -> Result<&'a T, AgentError> {
    field.as_ref().ok_or_else(|| AgentError::InvalidArgument(format!("the request has no {name}")))
}

/// A volume path the storage handlers accept: absolute, nothing else is checked
/// here (the volume module names what it cannot read).
fn volume_path(path: &str) -> Result<&str, AgentError> {
    if !path.starts_with('/') {
        return Err(AgentError::InvalidArgument(format!("volume_guest_path {path:?} is not absolute")));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::agent::Routes;

    #[test]
    fn an_absent_field_is_refused_and_an_empty_one_passes() {
        let absent = protobuf::MessageField::<Routes>::none();
        let err = required(&absent, "routes").unwrap_err();
        assert_eq!(err.to_string(), "invalid argument: the request has no routes");
        let empty = protobuf::MessageField::some(Routes::new());
        assert!(required(&empty, "routes").unwrap().Routes.is_empty(), "present but empty: replace with none");
    }
}
