//! The containerd task API (`containerd.task.v2.Task`), relayed to the guest agent.
//!
//! The shim keeps no container logic: each call becomes the agent RPC Kata's runtime would
//! send (Create → CreateContainer, Start → StartContainer or ExecProcess, Kill →
//! SignalProcess, Wait → WaitProcess, ...). What the shim does own is host plumbing: booting
//! the sandbox on the first Create, sharing the bundle rootfs into the guest, the stdio pumps
//! ([`crate::io`]), the events containerd expects, and the cleanup when QEMU dies.
//!
//! Process ids: containerd's init process has exec id `""`; the agent knows it by the
//! container id (Kata's convention, set in CreateContainer), so `""` is mapped to the container
//! id on the way in. The pid containerd sees for every process is QEMU's (as with Kata): the
//! guest's pids mean nothing on the host.
//!
//! Exit: a waiter task per started process runs WaitProcess, then waits for the process's
//! output pumps to finish (all output delivered), then records the exit and publishes
//! TaskExit; Wait returns only after that. If QEMU dies, every process not yet exited gets
//! status 255 at once, TaskExit is published, and the sandbox is cleaned up.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::util::{convert_to_any, timestamp};
use containerd_shim_protos::api;
use containerd_shim_protos::events::task as events;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::{self as shim_ttrpc, Code};
use nix::mount::{umount2, MntFlags};
use protocols::agent as pb;
use protocols::convert::to_pb;
use protocols::ttrpc::context;
use slog::{info, warn, Logger};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::api as side;
use crate::config::{Config, MachineType};
use crate::hypervisor::BlockSource;
use crate::io::{self, Output};
use crate::pod::PodSpec;
use crate::sandbox::{Sandbox, SandboxError};
use crate::state::SandboxKey;
use crate::volumes;

mod guest;
#[cfg(test)]
mod kata_conformance;
mod namespaces;
mod oom;
mod process;
mod stats;

use guest::mount_rootfs;
use process::{Container, Exit, Proc, Status, Stdio};
use stats::{metrics_of, volume_stats_json};

type TtrpcResult<T> = Result<T, shim_ttrpc::Error>;

/// Bound on ordinary agent calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a finished process's output pumps may take to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The exit status reported when the VM died under a process.
pub const VM_DIED_STATUS: u32 = 255;

/// The task service of one shim (one sandbox).
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TaskService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskService").field("sandbox", &self.inner.sandbox_id).finish_non_exhaustive()
    }
}

struct Inner {
    sandbox_id: String,
    namespace: String,
    config: Config,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    log: Logger,
    sandbox: Mutex<Option<Arc<Sandbox>>>,
    containers: Mutex<HashMap<String, Container>>,
    /// Ids whose Create is under way (not yet in `containers`): a second Create of one is
    /// refused rather than racing the first into the VM.
    creating: std::sync::Mutex<HashSet<String>>,
    /// Numbers the devices plugged into the VM (`wisp-blkN`).
    next_device: AtomicU32,
}

/// An id claimed in [`Inner::creating`] for as long as its Create runs.
struct CreateClaim<'a> {
    inner: &'a Inner,
    id: String,
}

impl<'a> CreateClaim<'a> {
    /// Claims `id`; `None` if another Create of it is under way.
    fn take(inner: &'a Inner, id: &str) -> Option<Self> {
        let mut creating = inner.creating.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        creating.insert(id.to_owned()).then(|| Self { inner, id: id.to_owned() })
    }
}

impl Drop for CreateClaim<'_> {
    fn drop(&mut self) {
        self.inner.creating.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.id);
    }
}

fn error(code: Code, message: impl Into<String>) -> shim_ttrpc::Error {
    shim_ttrpc::Error::RpcStatus(shim_ttrpc::get_status(code, message.into()))
}

/// An agent error as a task API error: the agent's own status code is kept.
fn agent_error(call: &str, id: &str, err: protocols::ttrpc::Error) -> shim_ttrpc::Error {
    match err {
        protocols::ttrpc::Error::RpcStatus(status) => {
            let code = status.code();
            error(code, format!("agent {call} of {id:?}: {}", status.message))
        }
        other => {
            error(Code::UNAVAILABLE, format!("agent {call} of {id:?}: {}", crate::sandbox::describe_ttrpc(&other)))
        }
    }
}

fn now() -> Timestamp {
    timestamp().unwrap_or_default()
}

impl TaskService {
    /// A service for sandbox `sandbox_id` in containerd namespace `namespace`.
    pub fn new(
        sandbox_id: &str,
        namespace: &str,
        config: Config,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
        log: Logger,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                sandbox_id: sandbox_id.to_owned(),
                namespace: namespace.to_owned(),
                config,
                publisher,
                exit,
                log,
                sandbox: Mutex::new(None),
                containers: Mutex::new(HashMap::new()),
                creating: std::sync::Mutex::new(HashSet::new()),
                next_device: AtomicU32::new(0),
            }),
        }
    }
}

impl TaskService {
    /// The shim was told to stop (SIGTERM, SIGINT) without containerd asking: stops the VM
    /// and its helpers, unmounts what the shim mounted (the sandbox's shares, the bundles'
    /// rootfs), removes the state, and lets the daemon exit.
    pub async fn terminate(&self) {
        let inner = &self.inner;
        if let Some(sandbox) = inner.sandbox.lock().await.take() {
            sandbox.shutdown().await;
        }
        for (id, container) in inner.containers.lock().await.drain() {
            if let Some(target) = container.mounted_rootfs {
                if let Err(err) = umount2(&target, MntFlags::MNT_DETACH) {
                    warn!(inner.log, "cannot unmount rootfs"; "container" => &id, "path" => %target.display(), "error" => %err);
                }
            }
        }
        inner.exit.signal();
    }
}

#[async_trait]
impl oom::OomSink for Inner {
    async fn is_ours(&self, container_id: &str) -> bool {
        self.containers.lock().await.contains_key(container_id)
    }

    async fn publish_oom(&self, oom: events::TaskOOM) {
        self.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(oom)).await;
    }
}

impl Inner {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(err) = self.publisher.publish(Default::default(), topic, &self.namespace, event).await {
            warn!(self.log, "cannot publish event"; "topic" => topic, "error" => %err);
        }
    }

    /// The running sandbox, booting it on first use: sized as `pod` asks, with shared guest
    /// memory if `shared_memory` (a vhost-user disk will be plugged), `boot_disks` attached
    /// at boot (microvm: they are the booting container's disks).
    async fn sandbox(
        self: &Arc<Self>,
        pod: &PodSpec,
        shared_memory: bool,
        boot_disks: &[(String, BlockSource)],
    ) -> TtrpcResult<Arc<Sandbox>> {
        let mut slot = self.sandbox.lock().await;
        if let Some(sandbox) = slot.as_ref() {
            if sandbox.exited().borrow().is_some() {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!("the VM of sandbox {:?} has exited", self.sandbox_id),
                ));
            }
            return Ok(sandbox.clone());
        }
        let mut config = pod.vm_config(&self.config);
        config.qemu.enable_vhost_user_store |= shared_memory;
        let netns = pod.netns.as_deref();
        let key = SandboxKey::containerd(&self.namespace, &self.sandbox_id);
        let mut booted = Sandbox::boot(&config, &key, netns, boot_disks, &self.log).await;
        if let Err(err @ SandboxError::AgentStalled { .. }) = &booted {
            // The first VM and its helpers are gone already; a fresh one gets a fresh channel.
            warn!(self.log, "the agent channel stalled; booting the VM once more"; "error" => %err);
            booted = Sandbox::boot(&config, &key, netns, boot_disks, &self.log).await;
        }
        let sandbox = booted.map_err(|err| {
            let code = match err {
                SandboxError::State(crate::state::StateError::Busy { .. }) => Code::ALREADY_EXISTS,
                _ => Code::UNAVAILABLE,
            };
            error(code, crate::error_chain(&err))
        })?;
        let sandbox = Arc::new(sandbox);
        *slot = Some(sandbox.clone());
        let me = self.clone();
        let watched = sandbox.clone();
        tokio::spawn(async move { me.watch_vm(watched).await });
        let me = self.clone();
        let watched = sandbox.clone();
        tokio::spawn(async move { me.relay_oom_events(watched).await });
        let socket = side::socket_path(sandbox.dir());
        match tokio::net::UnixListener::bind(&socket) {
            Ok(listener) => {
                let me = self.clone();
                let handler = Arc::new(move |request| {
                    let me = me.clone();
                    async move { me.handle_api(request).await }
                });
                tokio::spawn(side::serve(listener, handler));
            }
            Err(err) => warn!(self.log, "side API not served"; "socket" => %socket.display(), "error" => %err),
        }
        Ok(sandbox)
    }

    /// One request of the side API ([`crate::api`]).
    async fn handle_api(self: Arc<Self>, request: side::Request) -> side::Response {
        let volume = match &request {
            side::Request::VolumeStats { volume } | side::Request::VolumeResize { volume, .. } => volume.clone(),
            side::Request::BlockHotPlug { .. } | side::Request::BlockHotUnplug { .. } => {
                return match self.hot_block(request).await {
                    Ok(data) => side::Response::ok(data),
                    Err(err) => side::Response::fail(err),
                };
            }
        };
        let found = self.containers.lock().await.values().find_map(|c| {
            c.volumes.iter().find(|(v, _, _)| *v == volume).map(|(_, guest, id)| (guest.clone(), id.clone()))
        });
        let Some((guest, id)) = found else {
            return side::Response::fail(format!(
                "volume {volume} is not used by a container of sandbox {:?}",
                self.sandbox_id
            ));
        };
        let Some(sandbox) = self.live_sandbox().await else {
            return side::Response::fail(format!("the VM of sandbox {:?} is not running", self.sandbox_id));
        };
        let agent = sandbox.agent().agent();
        match request {
            side::Request::VolumeStats { .. } => {
                let request = pb::VolumeStatsRequest { volume_guest_path: guest, ..Default::default() };
                match agent.get_volume_stats(context::with_duration(CALL_TIMEOUT), &request).await {
                    Ok(stats) => side::Response::ok(volume_stats_json(&stats)),
                    Err(err) => side::Response::fail(format!(
                        "agent GetVolumeStats of {volume}: {}",
                        crate::sandbox::describe_ttrpc(&err)
                    )),
                }
            }
            side::Request::BlockHotPlug { .. } | side::Request::BlockHotUnplug { .. } => {
                side::Response::fail("not a volume request")
            }
            side::Request::VolumeResize { size, .. } => {
                if let Err(err) = sandbox.resize_block(&id, size).await {
                    return side::Response::fail(format!(
                        "resizing the disk of {volume}: {}",
                        crate::error_chain(&err)
                    ));
                }
                let request = pb::ResizeVolumeRequest { volume_guest_path: guest, size, ..Default::default() };
                match agent.resize_volume(context::with_duration(CALL_TIMEOUT), &request).await {
                    Ok(_) => side::Response::ok(serde_json::json!({ "volume": volume, "size": size })),
                    Err(err) => side::Response::fail(format!(
                        "agent ResizeVolume of {volume}: {}",
                        crate::sandbox::describe_ttrpc(&err)
                    )),
                }
            }
        }
    }

    /// The running sandbox, if any (no boot).
    async fn current_sandbox(&self) -> Option<Arc<Sandbox>> {
        self.sandbox.lock().await.clone()
    }

    /// When QEMU exits: every process not yet exited gets [`VM_DIED_STATUS`], then cleanup.
    async fn watch_vm(self: Arc<Self>, sandbox: Arc<Sandbox>) {
        let mut exited = sandbox.exited();
        let description = match exited.wait_for(Option::is_some).await {
            Ok(description) => description.clone().unwrap_or_default(),
            Err(_) => return,
        };
        let procs: Vec<Arc<Proc>> = {
            let containers = self.containers.lock().await;
            containers.values().flat_map(|c| std::iter::once(c.init.clone()).chain(c.execs.values().cloned())).collect()
        };
        let dying: Vec<_> = procs.into_iter().filter(|p| p.exit().is_none()).collect();
        if !dying.is_empty() {
            warn!(self.log, "the VM died under running processes"; "exit" => &description, "console" => sandbox.console_tail());
        }
        for proc in dying {
            self.finish(&proc, VM_DIED_STATUS, sandbox.vm_pid()).await;
        }
        sandbox.shutdown().await;
    }

    /// Hot-plugs a disk into a running container, or unplugs it (seed 004).
    async fn hot_block(&self, request: side::Request) -> Result<serde_json::Value, String> {
        let sandbox = self
            .live_sandbox()
            .await
            .ok_or_else(|| format!("the VM of sandbox {:?} is not running", self.sandbox_id))?;
        // Kata's agent has no such service: say so before QMP plugs anything.
        let conn = sandbox.agent();
        conn.offers().require_block_volume(conn).await.map_err(|err| err.to_string())?;
        let client = conn.block_volume();
        match request {
            side::Request::BlockHotPlug { container, block_volume, device_path, mount, fstype, options } => {
                {
                    let containers = self.containers.lock().await;
                    let c = containers.get(&container).ok_or_else(|| format!("container {container:?} not found"))?;
                    if c.hot.iter().any(|(d, _, _)| *d == device_path) {
                        return Err(format!("{device_path} is already hot-plugged into {container:?}"));
                    }
                }
                let source = volumes::hot_plug_source(&block_volume)?;
                let id = format!("wisp-blk{}", self.next_device.fetch_add(1, Ordering::Relaxed));
                let plugged = sandbox.hot_plug(&id, &source).await.map_err(|e| crate::error_chain(&e))?;
                let request = protocols::wisp::HotPlugRequest {
                    container_id: container.clone(),
                    pci_path: plugged.pci_path.clone(),
                    device_path: device_path.clone(),
                    mount_point: mount.clone(),
                    fstype,
                    options,
                    ..Default::default()
                };
                if let Err(err) = client.hot_plug(context::with_duration(CALL_TIMEOUT), &request).await {
                    let _ = sandbox.hot_unplug(&id).await;
                    return Err(format!("agent HotPlug: {}", crate::sandbox::describe_ttrpc(&err)));
                }
                let mut containers = self.containers.lock().await;
                match containers.get_mut(&container) {
                    Some(c) => {
                        c.hot.push((device_path.clone(), mount, id.clone()));
                        c.plugged.push(id.clone());
                    }
                    None => return Err(format!("container {container:?} went away during the hot-plug")),
                }
                info!(self.log, "disk hot-plugged"; "container" => &container, "device" => &device_path, "id" => &id);
                Ok(serde_json::json!({ "id": id, "pci_path": plugged.pci_path, "device_path": device_path }))
            }
            side::Request::BlockHotUnplug { container, device_path } => {
                let (mount, id) = {
                    let containers = self.containers.lock().await;
                    let c = containers.get(&container).ok_or_else(|| format!("container {container:?} not found"))?;
                    c.hot
                        .iter()
                        .find(|(d, _, _)| *d == device_path)
                        .map(|(_, m, id)| (m.clone(), id.clone()))
                        .ok_or_else(|| format!("{device_path} was not hot-plugged into {container:?}"))?
                };
                let request = protocols::wisp::HotUnplugRequest {
                    container_id: container.clone(),
                    device_path: device_path.clone(),
                    mount_point: mount,
                    ..Default::default()
                };
                client
                    .hot_unplug(context::with_duration(CALL_TIMEOUT), &request)
                    .await
                    .map_err(|err| format!("agent HotUnplug: {}", crate::sandbox::describe_ttrpc(&err)))?;
                sandbox.hot_unplug(&id).await.map_err(|e| crate::error_chain(&e))?;
                if let Some(c) = self.containers.lock().await.get_mut(&container) {
                    c.hot.retain(|(d, _, _)| *d != device_path);
                    c.plugged.retain(|p| *p != id);
                }
                info!(self.log, "disk hot-unplugged"; "container" => &container, "device" => &device_path, "id" => &id);
                Ok(serde_json::json!({ "id": id }))
            }
            _ => Err("not a block-volume request".to_owned()),
        }
    }

    /// Relays the agent's OOM events as TaskOOM ([`oom`]), until the VM exits or the agent
    /// does not offer them.
    async fn relay_oom_events(self: Arc<Self>, sandbox: Arc<Sandbox>) {
        oom::relay(&sandbox.agent().agent(), sandbox.exited(), &*self, &self.log).await;
    }

    /// Records an exit once and publishes TaskExit.
    async fn finish(&self, proc: &Proc, status: u32, pid: u32) {
        let exit = Exit { status, at: now() };
        let first = proc.exit_tx.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            *slot = Some(exit.clone());
            true
        });
        if !first {
            return;
        }
        proc.set_status(Status::Stopped);
        info!(self.log, "process exited"; "container" => &proc.container, "exec" => &proc.exec_id, "status" => status);
        let event = events::TaskExit {
            container_id: proc.container.clone(),
            id: if proc.exec_id.is_empty() { proc.container.clone() } else { proc.exec_id.clone() },
            pid,
            exit_status: status,
            exited_at: Some(exit.at).into(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event)).await;
    }

    /// Starts a created process in the guest, its stdio pumps, and its waiter.
    async fn start_process(self: &Arc<Self>, sandbox: Arc<Sandbox>, proc: Arc<Proc>) -> TtrpcResult<()> {
        let agent = sandbox.agent().agent();
        let log = self.log.new(slog::o!("container" => proc.container.clone(), "exec" => proc.exec_id.clone()));
        match &proc.exec_spec {
            None => {
                let request = pb::StartContainerRequest { container_id: proc.container.clone(), ..Default::default() };
                agent
                    .start_container(context::with_duration(CALL_TIMEOUT), &request)
                    .await
                    .map_err(|err| agent_error("StartContainer", &proc.container, err))?;
            }
            Some(spec) => {
                let request = guest::exec_request(&proc.container, &proc.exec_id, spec);
                agent
                    .exec_process(context::with_duration(CALL_TIMEOUT), &request)
                    .await
                    .map_err(|err| agent_error("ExecProcess", &proc.exec_id, err))?;
            }
        }
        proc.set_status(Status::Running);
        let cid = proc.container.clone();
        let eid = proc.agent_exec_id().to_owned();
        let mut pumps: Vec<JoinHandle<()>> = Vec::new();
        if !proc.stdio.stdout.is_empty() {
            let fifo = PathBuf::from(&proc.stdio.stdout);
            pumps.push(io::pump_output(agent.clone(), cid.clone(), eid.clone(), Output::Stdout, fifo, log.clone()));
        }
        if !proc.stdio.stderr.is_empty() && !proc.stdio.terminal {
            let fifo = PathBuf::from(&proc.stdio.stderr);
            pumps.push(io::pump_output(agent.clone(), cid.clone(), eid.clone(), Output::Stderr, fifo, log.clone()));
        }
        let stdin = (!proc.stdio.stdin.is_empty()).then(|| {
            let fifo = PathBuf::from(&proc.stdio.stdin);
            io::pump_stdin(agent.clone(), cid.clone(), eid.clone(), fifo, proc.stdin_close.clone(), log.clone())
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut vm_exit = sandbox.exited();
            let request =
                pb::WaitProcessRequest { container_id: cid.clone(), exec_id: eid.clone(), ..Default::default() };
            let status = tokio::select! {
                answer = agent.wait_process(context::with_duration(Duration::from_secs(365 * 24 * 3600)), &request) => {
                    match answer {
                        Ok(answer) => u32::try_from(answer.status).unwrap_or(VM_DIED_STATUS),
                        Err(err) => {
                            warn!(log, "WaitProcess failed"; "error" => %err);
                            VM_DIED_STATUS
                        }
                    }
                }
                _ = vm_exit.wait_for(Option::is_some) => VM_DIED_STATUS,
            };
            // All output reaches containerd before the exit does.
            for pump in pumps {
                let abort = pump.abort_handle();
                let drained = tokio::select! {
                    done = tokio::time::timeout(DRAIN_TIMEOUT, pump) => done.is_ok(),
                    _ = vm_exit.wait_for(Option::is_some) => false,
                };
                if !drained {
                    abort.abort();
                    warn!(log, "output not drained; the rest is dropped");
                }
            }
            if let Some(stdin) = stdin {
                stdin.abort();
            }
            me.finish(&proc, status, sandbox.vm_pid()).await;
        });
        Ok(())
    }

    async fn find(&self, id: &str, exec_id: &str) -> TtrpcResult<Arc<Proc>> {
        let containers = self.containers.lock().await;
        let container =
            containers.get(id).ok_or_else(|| error(Code::NOT_FOUND, format!("container {id:?} not found")))?;
        container.process(exec_id)
    }

    /// The sandbox if its VM still runs.
    async fn live_sandbox(&self) -> Option<Arc<Sandbox>> {
        self.current_sandbox().await.filter(|s| s.exited().borrow().is_none())
    }

    async fn live_agent(&self, what: &str) -> TtrpcResult<(Arc<Sandbox>, protocols::agent_ttrpc::AgentServiceClient)> {
        let sandbox = self
            .live_sandbox()
            .await
            .ok_or_else(|| error(Code::FAILED_PRECONDITION, format!("{what}: the sandbox VM is not running")))?;
        let agent = sandbox.agent().agent();
        Ok((sandbox, agent))
    }
}

/// Delete of a container or exec (see [`TaskService::delete`]).
async fn delete_container(inner: &Inner, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
    let pid = inner.current_sandbox().await.map_or(0, |s| s.vm_pid());
    if !req.exec_id.is_empty() {
        let mut containers = inner.containers.lock().await;
        let container = containers
            .get_mut(&req.id)
            .ok_or_else(|| error(Code::NOT_FOUND, format!("container {:?} not found", req.id)))?;
        let proc = container.process(&req.exec_id)?;
        if proc.status() == Status::Running {
            return Err(error(Code::FAILED_PRECONDITION, format!("exec {:?} is still running", req.exec_id)));
        }
        container.execs.remove(&req.exec_id);
        let exit = proc.exit().unwrap_or(Exit { status: 0, at: now() });
        return Ok(api::DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(exit.at).into(),
            ..Default::default()
        });
    }
    let proc = inner.find(&req.id, "").await?;
    if matches!(proc.status(), Status::Running | Status::Paused) {
        return Err(error(
            Code::FAILED_PRECONDITION,
            format!("container {:?} is still running; kill it first", req.id),
        ));
    }
    if let Some(sandbox) = inner.live_sandbox().await {
        let request = pb::RemoveContainerRequest { container_id: req.id.clone(), timeout: 10, ..Default::default() };
        if let Err(err) = sandbox.agent().agent().remove_container(context::with_duration(CALL_TIMEOUT), &request).await
        {
            warn!(inner.log, "RemoveContainer failed"; "container" => &req.id, "error" => %err);
        }
    }
    let container = inner.containers.lock().await.remove(&req.id);
    if let Some(sandbox) = inner.current_sandbox().await {
        sandbox.unshare(&req.id);
        let plugged = container.as_ref().map(|c| c.plugged.clone()).unwrap_or_default();
        if sandbox.exited().borrow().is_none() {
            for id in plugged.iter().rev() {
                if let Err(err) = sandbox.hot_unplug(id).await {
                    warn!(inner.log, "cannot unplug"; "container" => &req.id, "device" => id, "error" => %err);
                }
            }
        }
    }
    let volume_root = volumes::direct::root(&inner.config);
    for (volume, _, _) in container.iter().flat_map(|c| c.volumes.iter()) {
        volumes::direct::forget_sandbox(&volume_root, volume, &inner.sandbox_id);
    }
    if let Some(target) = container.and_then(|c| c.mounted_rootfs) {
        if let Err(err) = umount2(&target, MntFlags::MNT_DETACH) {
            warn!(inner.log, "cannot unmount rootfs"; "container" => &req.id, "path" => %target.display(), "error" => %err);
        }
    }
    let exit = proc.exit().unwrap_or(Exit { status: 0, at: now() });
    let event = events::TaskDelete {
        container_id: req.id.clone(),
        id: req.id.clone(),
        pid,
        exit_status: exit.status,
        exited_at: Some(exit.at.clone()).into(),
        ..Default::default()
    };
    inner.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(event)).await;
    info!(inner.log, "container deleted"; "container" => &req.id);
    Ok(api::DeleteResponse { pid, exit_status: exit.status, exited_at: Some(exit.at).into(), ..Default::default() })
}

#[async_trait]
impl Task for TaskService {
    async fn connect(&self, _ctx: &TtrpcContext, _req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.inner.current_sandbox().await.map_or(0, |s| s.vm_pid());
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }

    async fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        let inner = &self.inner;
        let cid = req.id.clone();
        if let Some(why) = protocols::id::invalid(&cid) {
            return Err(error(Code::INVALID_ARGUMENT, format!("container id {cid:?}: {why}")));
        }
        let claim = CreateClaim::take(inner, &cid);
        if claim.is_none() || inner.containers.lock().await.contains_key(&cid) {
            return Err(error(Code::ALREADY_EXISTS, format!("container {cid:?} already exists")));
        }
        let bundle = PathBuf::from(&req.bundle);
        let config_json = bundle.join("config.json");
        let spec = oci_spec::runtime::Spec::load(&config_json)
            .map_err(|err| error(Code::INVALID_ARGUMENT, format!("cannot read {}: {err}", config_json.display())))?;
        let undo_rootfs = |mounted: &Option<PathBuf>| {
            if let Some(target) = mounted {
                let _ = umount2(target, MntFlags::MNT_DETACH);
            }
        };
        // Block storage is resolved before anything is mounted or booted: bad input leaves nothing.
        let mut attaches = volumes::plan(&spec, &inner.config)
            .map_err(|err| error(Code::INVALID_ARGUMENT, format!("container {cid:?}: {}", crate::error_chain(&err))))?;
        // A rootfs that is one block device (devmapper) is plugged, never mounted on the host.
        let block_rootfs = match req.rootfs.as_slice() {
            [m] if inner.config.block_rootfs() => volumes::rootfs::from_mount(&m.type_, &m.source, &m.options),
            _ => None,
        };
        if let Some(disk) = &block_rootfs {
            let usage = volumes::Use::Rootfs { fstype: disk.fstype.clone(), options: disk.options.clone() };
            attaches.insert(0, volumes::Attach { source: disk.source.clone(), usage });
        }
        let mounted_rootfs = if req.rootfs.is_empty() || block_rootfs.is_some() {
            None
        } else {
            let target = bundle.join("rootfs");
            mount_rootfs(&req.rootfs, &target)?;
            Some(target)
        };
        let host_rootfs = match (&block_rootfs, &mounted_rootfs, spec.root()) {
            (Some(_), _, _) => None,
            (None, Some(target), _) => Some(target.clone()),
            (None, None, Some(root)) if root.path().is_absolute() => Some(root.path().clone()),
            (None, None, Some(root)) => Some(bundle.join(root.path())),
            (None, None, None) => {
                return Err(error(
                    Code::INVALID_ARGUMENT,
                    format!("{} has no root and no rootfs mounts were given", config_json.display()),
                ))
            }
        };
        let pod = PodSpec::of(&spec);
        let ids: Vec<String> =
            attaches.iter().map(|_| format!("wisp-blk{}", inner.next_device.fetch_add(1, Ordering::Relaxed))).collect();
        // microvm cannot hot-plug: the container that boots the VM brings its disks along.
        let boot_disks: Vec<(String, BlockSource)> =
            if inner.config.qemu.machine_type == MachineType::Microvm && inner.config.stratovirt.is_none() {
                ids.iter().cloned().zip(attaches.iter().map(|a| a.source.clone())).collect()
            } else {
                Vec::new()
            };
        let sandbox = match inner.sandbox(&pod, volumes::need_shared_memory(&attaches), &boot_disks).await {
            Ok(sandbox) => sandbox,
            Err(err) => {
                undo_rootfs(&mounted_rootfs);
                return Err(err);
            }
        };
        let mut plugged: Vec<String> = Vec::new();
        let mut used_volumes: Vec<(String, String, String)> = Vec::new();
        let result = async {
            let rootfs_guest = match &host_rootfs {
                Some(host_rootfs) => {
                    // `root.readonly`: read-only on the host, its mount points made first.
                    let access = crate::share::mount_points::prepare(host_rootfs, &spec, &bundle)
                        .map_err(|err| error(Code::FAILED_PRECONDITION, crate::error_chain(&err)))?;
                    if let crate::share::mount_points::RootfsAccess::GuestReadOnly { why } = &access {
                        warn!(inner.log, "the rootfs is read-only in the guest only"; "container" => &cid, "why" => why);
                    }
                    sandbox
                        .share(&cid, "rootfs", host_rootfs, access.on_host())
                        .map_err(|err| error(Code::INTERNAL, crate::error_chain(&err)))?
                }
                None => volumes::rootfs::guest_mount_point(&cid),
            };
            let mut request = guest::create_request(&cid, &spec, &bundle, rootfs_guest, |name, source, read_only| {
                sandbox
                    .share(&cid, name, source, read_only)
                    .map_err(|err| error(Code::INTERNAL, crate::error_chain(&err)))
            })?;
            let pb::CreateContainerRequest { OCI: pb_spec, devices, storages, .. } = &mut request;
            let pb_spec = pb_spec.mut_or_insert_default();
            for (attach, id) in attaches.iter().zip(&ids) {
                let (done, mmio) = match sandbox.boot_disk(id) {
                    Some(done) => (done, true),
                    None => {
                        let done = sandbox.hot_plug(id, &attach.source).await.map_err(|err| {
                            error(Code::FAILED_PRECONDITION, format!("container {cid:?}: {}", crate::error_chain(&err)))
                        })?;
                        (done, false)
                    }
                };
                plugged.push(id.clone());
                match &attach.usage {
                    volumes::Use::Device { container_path } if mmio => devices.push(pb::Device {
                        type_: "mmioblk".to_owned(),
                        vm_path: done.pci_path,
                        container_path: container_path.clone(),
                        ..Default::default()
                    }),
                    volumes::Use::Device { container_path } => devices.push(pb::Device {
                        id: done.pci_path,
                        type_: "blk".to_owned(),
                        container_path: container_path.clone(),
                        ..Default::default()
                    }),
                    volumes::Use::Volume { mount_index, volume, info } => {
                        let mount_point = volumes::guest_mount_point(&cid, *mount_index);
                        let driver = match attach.source {
                            BlockSource::Vfio { .. } => "vfio-pci",
                            _ if mmio => "mmioblk",
                            _ => "blk",
                        };
                        storages.push(pb::Storage {
                            driver: driver.to_owned(),
                            source: done.pci_path,
                            fstype: info.fstype.clone(),
                            options: info.options.clone(),
                            mount_point: mount_point.clone(),
                            ..Default::default()
                        });
                        if let Some(m) = pb_spec.Mounts.get_mut(*mount_index) {
                            m.type_ = "bind".to_owned();
                            m.source = mount_point.clone();
                            if !m.options.iter().any(|o| o == "bind" || o == "rbind") {
                                m.options.push("rbind".to_owned());
                            }
                        }
                        used_volumes.push((volume.clone(), mount_point, id.clone()));
                    }
                    volumes::Use::Rootfs { fstype, options } => storages.push(pb::Storage {
                        driver: if mmio { "mmioblk" } else { "blk" }.to_owned(),
                        source: done.pci_path,
                        fstype: fstype.clone(),
                        options: options.clone(),
                        mount_point: volumes::rootfs::guest_mount_point(&cid),
                        ..Default::default()
                    }),
                }
            }
            sandbox
                .agent()
                .agent()
                .create_container(context::with_duration(CALL_TIMEOUT), &request)
                .await
                .map_err(|err| agent_error("CreateContainer", &cid, err))
        }
        .await;
        if let Err(err) = result {
            for id in plugged.iter().rev() {
                if let Err(e) = sandbox.hot_unplug(id).await {
                    warn!(inner.log, "cannot unplug after a failed create"; "container" => &cid, "device" => id, "error" => %e);
                }
            }
            sandbox.unshare(&cid);
            undo_rootfs(&mounted_rootfs);
            return Err(err);
        }
        let volume_root = volumes::direct::root(&inner.config);
        for (volume, _, _) in &used_volumes {
            if let Err(err) = volumes::direct::record_sandbox(&volume_root, volume, &inner.sandbox_id) {
                warn!(inner.log, "cannot record the volume's sandbox"; "volume" => volume, "error" => %err);
            }
        }
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let init = Proc::new(&cid, "", stdio.clone(), None);
        inner.containers.lock().await.insert(
            cid.clone(),
            Container {
                bundle: req.bundle.clone(),
                mounted_rootfs,
                init,
                execs: HashMap::new(),
                plugged,
                volumes: used_volumes,
                hot: Vec::new(),
            },
        );
        info!(inner.log, "container created"; "container" => &cid);
        let pid = sandbox.vm_pid();
        let event = events::TaskCreate {
            container_id: cid.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(events::TaskIO {
                stdin: stdio.stdin,
                stdout: stdio.stdout,
                stderr: stdio.stderr,
                terminal: stdio.terminal,
                ..Default::default()
            })
            .into(),
            pid,
            ..Default::default()
        };
        inner.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(event)).await;
        Ok(api::CreateTaskResponse { pid, ..Default::default() })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        let inner = &self.inner;
        let proc = inner.find(&req.id, &req.exec_id).await?;
        if proc.status() != Status::Created {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("process {:?} of {:?} was already started", req.exec_id, req.id),
            ));
        }
        let (sandbox, _) = inner.live_agent("Start").await?;
        inner.start_process(sandbox.clone(), proc.clone()).await?;
        let pid = sandbox.vm_pid();
        if req.exec_id.is_empty() {
            inner
                .publish(
                    topics::TASK_START_EVENT_TOPIC,
                    Box::new(events::TaskStart { container_id: req.id.clone(), pid, ..Default::default() }),
                )
                .await;
        } else {
            let event = events::TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            };
            inner.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(event)).await;
        }
        Ok(api::StartResponse { pid, ..Default::default() })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        let (proc, bundle) = {
            let containers = self.inner.containers.lock().await;
            let container = containers
                .get(&req.id)
                .ok_or_else(|| error(Code::NOT_FOUND, format!("container {:?} not found", req.id)))?;
            (container.process(&req.exec_id)?, container.bundle.clone())
        };
        let status = match proc.status() {
            Status::Created => api::Status::CREATED,
            Status::Running => api::Status::RUNNING,
            Status::Paused => api::Status::PAUSED,
            Status::Stopped => api::Status::STOPPED,
        };
        let exit = proc.exit();
        let pid = self.inner.current_sandbox().await.map_or(0, |s| s.vm_pid());
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle,
            pid,
            status: status.into(),
            stdin: proc.stdio.stdin.clone(),
            stdout: proc.stdio.stdout.clone(),
            stderr: proc.stdio.stderr.clone(),
            terminal: proc.stdio.terminal,
            exit_status: exit.as_ref().map_or(0, |e| e.status),
            exited_at: exit.map(|e| e.at).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let proc = self.inner.find(&req.id, &req.exec_id).await?;
        if proc.exit().is_some() {
            return Err(error(Code::NOT_FOUND, format!("process {:?} of {:?} already finished", req.exec_id, req.id)));
        }
        let Some(sandbox) = self.inner.live_sandbox().await else {
            // The VM is gone: so is the process; the watcher reports its exit.
            return Ok(api::Empty::new());
        };
        let request = pb::SignalProcessRequest {
            container_id: req.id.clone(),
            // Empty means every process of the container (Kata's `all`).
            exec_id: if req.all && req.exec_id.is_empty() { String::new() } else { proc.agent_exec_id().to_owned() },
            signal: req.signal,
            ..Default::default()
        };
        sandbox
            .agent()
            .agent()
            .signal_process(context::with_duration(CALL_TIMEOUT), &request)
            .await
            .map_err(|err| agent_error("SignalProcess", &req.id, err))?;
        Ok(api::Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let spec: oci_spec::runtime::Process = serde_json::from_slice(&req.spec.value).map_err(|err| {
            error(
                Code::INVALID_ARGUMENT,
                format!("exec {:?}: the process spec is not valid OCI JSON: {err}", req.exec_id),
            )
        })?;
        if req.exec_id.is_empty() {
            return Err(error(Code::INVALID_ARGUMENT, "exec id must not be empty"));
        }
        {
            let mut containers = self.inner.containers.lock().await;
            let container = containers
                .get_mut(&req.id)
                .ok_or_else(|| error(Code::NOT_FOUND, format!("container {:?} not found", req.id)))?;
            if container.execs.contains_key(&req.exec_id) || req.exec_id == req.id {
                return Err(error(
                    Code::ALREADY_EXISTS,
                    format!("exec {:?} already exists in {:?}", req.exec_id, req.id),
                ));
            }
            let stdio = Stdio {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            let process = guest::exec_process(&spec, req.terminal);
            container.execs.insert(req.exec_id.clone(), Proc::new(&req.id, &req.exec_id, stdio, Some(process)));
        }
        let event =
            events::TaskExecAdded { container_id: req.id.clone(), exec_id: req.exec_id.clone(), ..Default::default() };
        self.inner.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(event)).await;
        Ok(api::Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let proc = self.inner.find(&req.id, &req.exec_id).await?;
        let mut exit = proc.exit_tx.subscribe();
        let exit = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| error(Code::INTERNAL, "the process's exit channel closed"))?
            .clone()
            .unwrap_or(Exit { status: VM_DIED_STATUS, at: now() });
        Ok(api::WaitResponse { exit_status: exit.status, exited_at: Some(exit.at).into(), ..Default::default() })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        // Run to the end even if containerd stops waiting: ttrpc drops a handler whose deadline
        // passed, and a delete cut short would leave the container's disks and mounts behind.
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move { delete_container(&inner, req).await })
            .await
            .map_err(|err| error(Code::INTERNAL, format!("delete failed: {err}")))?
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        self.inner.find(&req.id, "").await?;
        let pid = self.inner.current_sandbox().await.map_or(0, |s| s.vm_pid());
        Ok(api::PidsResponse { processes: vec![api::ProcessInfo { pid, ..Default::default() }], ..Default::default() })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let proc = self.inner.find(&req.id, "").await?;
        let (_, agent) = self.inner.live_agent("Pause").await?;
        let request = pb::PauseContainerRequest { container_id: req.id.clone(), ..Default::default() };
        agent
            .pause_container(context::with_duration(CALL_TIMEOUT), &request)
            .await
            .map_err(|err| agent_error("PauseContainer", &req.id, err))?;
        proc.set_status(Status::Paused);
        self.inner
            .publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(events::TaskPaused { container_id: req.id.clone(), ..Default::default() }),
            )
            .await;
        Ok(api::Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let proc = self.inner.find(&req.id, "").await?;
        let (_, agent) = self.inner.live_agent("Resume").await?;
        let request = pb::ResumeContainerRequest { container_id: req.id.clone(), ..Default::default() };
        agent
            .resume_container(context::with_duration(CALL_TIMEOUT), &request)
            .await
            .map_err(|err| agent_error("ResumeContainer", &req.id, err))?;
        proc.set_status(Status::Running);
        self.inner
            .publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(events::TaskResumed { container_id: req.id.clone(), ..Default::default() }),
            )
            .await;
        Ok(api::Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        let proc = self.inner.find(&req.id, &req.exec_id).await?;
        let (_, agent) = self.inner.live_agent("ResizePty").await?;
        let request = pb::TtyWinResizeRequest {
            container_id: req.id.clone(),
            exec_id: proc.agent_exec_id().to_owned(),
            row: req.height,
            column: req.width,
            ..Default::default()
        };
        agent
            .tty_win_resize(context::with_duration(CALL_TIMEOUT), &request)
            .await
            .map_err(|err| agent_error("TtyWinResize", &req.id, err))?;
        Ok(api::Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let proc = self.inner.find(&req.id, &req.exec_id).await?;
        if req.stdin {
            // The stdin pump relays what is buffered, then sends CloseStdin.
            proc.stdin_close.notify_one();
        }
        Ok(api::Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        self.inner.find(&req.id, "").await?;
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(&req.resources.value).map_err(|err| {
                error(
                    Code::INVALID_ARGUMENT,
                    format!("update of {:?}: resources are not valid OCI JSON: {err}", req.id),
                )
            })?;
        let (_, agent) = self.inner.live_agent("Update").await?;
        let request = pb::UpdateContainerRequest {
            container_id: req.id.clone(),
            resources: Some(to_pb::resources(&resources)).into(),
            ..Default::default()
        };
        agent
            .update_container(context::with_duration(CALL_TIMEOUT), &request)
            .await
            .map_err(|err| agent_error("UpdateContainer", &req.id, err))?;
        Ok(api::Empty::new())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        self.inner.find(&req.id, "").await?;
        let (_, agent) = self.inner.live_agent("Stats").await?;
        let request = pb::StatsContainerRequest { container_id: req.id.clone(), ..Default::default() };
        let answer = agent
            .stats_container(context::with_duration(CALL_TIMEOUT), &request)
            .await
            .map_err(|err| agent_error("StatsContainer", &req.id, err))?;
        let any = convert_to_any(Box::new(metrics_of(&answer.cgroup_stats)))
            .map_err(|err| error(Code::INTERNAL, format!("cannot encode metrics of {:?}: {err}", req.id)))?;
        Ok(api::StatsResponse { stats: Some(any).into(), ..Default::default() })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        let inner = Arc::clone(&self.inner);
        if !inner.containers.lock().await.is_empty() {
            // Other containers of the sandbox still live: containerd asks again after their delete.
            return Ok(api::Empty::new());
        }
        // Detached from this request: containerd gives Shutdown 3 s, and when ttrpc drops the
        // handler at that deadline a half-stopped VM must still be stopped and the shim exit.
        let stop = tokio::spawn(async move {
            if let Some(sandbox) = inner.sandbox.lock().await.take() {
                sandbox.shutdown().await;
            }
            inner.exit.signal();
        });
        let _ = stop.await;
        Ok(api::Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_status_codes_survive() {
        let err = agent_error(
            "StartContainer",
            "c1",
            protocols::ttrpc::Error::RpcStatus(protocols::ttrpc::get_status(
                protocols::ttrpc::Code::NOT_FOUND,
                "no such container",
            )),
        );
        match err {
            shim_ttrpc::Error::RpcStatus(status) => {
                assert_eq!(status.code(), Code::NOT_FOUND);
                assert_eq!(status.message, "agent StartContainer of \"c1\": no such container");
            }
            other => panic!("{other:?}"),
        }
    }
}
