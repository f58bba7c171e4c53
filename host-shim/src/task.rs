//! The containerd task API (`containerd.task.v2.Task`), an adapter over the sandbox core
//! ([`crate::container`]) and the guest agent.
//!
//! The shim keeps no container logic: each call becomes the agent RPC Kata's runtime would
//! send (Create → CreateContainer, Start → StartContainer or ExecProcess, Kill →
//! SignalProcess, Wait → WaitProcess, ...). What this adapter owns is what containerd sees:
//! booting the sandbox on the first Create ([`boot`]), the stdio pumps and exit waiters
//! ([`waiter`]), the events containerd expects, and the cleanup when QEMU dies. The side API of
//! the `wisp` CLI is a second adapter over the same state ([`side_api`]).
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
use containerd_shim_protos::ttrpc::{self as shim_ttrpc};
use nix::mount::{umount2, MntFlags};
use protocols::agent as pb;
use protocols::convert::to_pb;
use protocols::ttrpc::context;
use slog::{warn, Logger};
use tokio::sync::Mutex;

use crate::config::Config;
use crate::container::{self, Created, Rollback, RootfsMount, AGENT_CALL_TIMEOUT as CALL_TIMEOUT};
use crate::error::Error;
use crate::sandbox::Sandbox;

mod boot;
mod delete;
mod oom;
mod process;
mod side_api;
mod stats;
mod waiter;

use process::{Container, Exit, Proc, Status, Stdio};
use stats::metrics_of;

type TtrpcResult<T> = Result<T, shim_ttrpc::Error>;

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

    /// The next device id (`wisp-blkN`).
    fn next_device_id(&self) -> String {
        format!("wisp-blk{}", self.next_device.fetch_add(1, Ordering::Relaxed))
    }

    /// The running sandbox, if any (no boot).
    async fn current_sandbox(&self) -> Option<Arc<Sandbox>> {
        self.sandbox.lock().await.clone()
    }

    /// The sandbox if its VM still runs.
    async fn live_sandbox(&self) -> Option<Arc<Sandbox>> {
        self.current_sandbox().await.filter(|s| s.exited().borrow().is_none())
    }

    /// The VM's pid, 0 before the boot.
    async fn vm_pid(&self) -> u32 {
        self.current_sandbox().await.map_or(0, |s| s.vm_pid())
    }

    async fn live_agent(
        &self,
        what: &'static str,
    ) -> Result<(Arc<Sandbox>, protocols::agent_ttrpc::AgentServiceClient), Error> {
        let sandbox =
            self.live_sandbox().await.ok_or_else(|| Error::NotRunning { what, sandbox: self.sandbox_id.clone() })?;
        let agent = sandbox.agent().agent();
        Ok((sandbox, agent))
    }

    async fn find(&self, id: &str, exec_id: &str) -> Result<Arc<Proc>, Error> {
        let containers = self.containers.lock().await;
        let container = containers.get(id).ok_or_else(|| Error::ContainerNotFound(id.to_owned()))?;
        container.process(exec_id)
    }

    /// Carries out a Create's plan: containerd's rootfs mounted, the sandbox booted if this is
    /// its first container, the container created in it; undone as one if a step fails.
    async fn create_planned(
        self: &Arc<Self>,
        plan: &container::ContainerPlan,
    ) -> Result<(Arc<Sandbox>, Created), Error> {
        let log = self.log.new(slog::o!("container" => plan.cid.clone()));
        let mut rollback = Rollback::new(&log);
        let done = async {
            container::mount_planned_rootfs(plan, &mut rollback)?;
            let sandbox = self.sandbox(&plan.pod, plan.shared_memory, &plan.boot_disks).await?;
            let created = container::create(&sandbox, plan, &mut rollback, &log).await?;
            Ok((sandbox, created))
        }
        .await;
        match done {
            Ok(done) => {
                rollback.commit();
                Ok(done)
            }
            Err(err) => {
                rollback.undo().await;
                Err(err)
            }
        }
    }
}

fn stdio_of(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Stdio {
    Stdio { stdin: stdin.to_owned(), stdout: stdout.to_owned(), stderr: stderr.to_owned(), terminal }
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json { what: what(), source })
}

#[async_trait]
impl Task for TaskService {
    async fn connect(&self, _ctx: &TtrpcContext, _req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.inner.vm_pid().await,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }

    async fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        let inner = &self.inner;
        let cid = req.id.clone();
        crate::timeline::mark(&inner.log, "create received");
        container::plan::check_id(&cid)?;
        let claim = CreateClaim::take(inner, &cid);
        if claim.is_none() || inner.containers.lock().await.contains_key(&cid) {
            return Err(Error::ContainerExists(cid).into());
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = container::plan::load_spec(&bundle)?;
        let rootfs: Vec<RootfsMount> = (req.rootfs.iter())
            .map(|m| RootfsMount { fstype: m.type_.clone(), source: m.source.clone(), options: m.options.clone() })
            .collect();
        let plan = container::plan::plan(&cid, &bundle, spec, &rootfs, &inner.config, || inner.next_device_id())?;
        let (sandbox, created) = inner.create_planned(&plan).await?;
        let volume_root = crate::volumes::direct::root(&inner.config);
        for used in &created.volumes {
            if let Err(err) = crate::volumes::direct::record_sandbox(&volume_root, &used.volume, &inner.sandbox_id) {
                warn!(inner.log, "cannot record the volume's sandbox"; "volume" => &used.volume, "error" => %err);
            }
        }
        let stdio = stdio_of(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let mounted_rootfs = match plan.rootfs {
            container::Rootfs::Mounted { target, .. } => Some(target),
            _ => None,
        };
        let init = Proc::new(&cid, "", stdio.clone(), None);
        let Created { plugged, volumes } = created;
        let record = Container {
            bundle: req.bundle.clone(),
            mounted_rootfs,
            init,
            execs: HashMap::new(),
            plugged,
            volumes,
            hot: Vec::new(),
        };
        inner.containers.lock().await.insert(cid.clone(), record);
        crate::timeline::mark(&inner.log.new(slog::o!("container" => cid.clone())), "container created");
        let pid = sandbox.vm_pid();
        let io = events::TaskIO {
            stdin: stdio.stdin,
            stdout: stdio.stdout,
            stderr: stdio.stderr,
            terminal: stdio.terminal,
            ..Default::default()
        };
        let event = events::TaskCreate {
            container_id: cid,
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(io).into(),
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
            return Err(Error::AlreadyStarted { container: req.id.clone(), exec: req.exec_id.clone() }.into());
        }
        let (sandbox, _) = inner.live_agent("Start").await?;
        inner.start_process(sandbox.clone(), proc.clone()).await?;
        let log = inner.log.new(slog::o!("container" => req.id.clone(), "exec" => req.exec_id.clone()));
        crate::timeline::mark(&log, "process started");
        let pid = sandbox.vm_pid();
        if req.exec_id.is_empty() {
            let event = events::TaskStart { container_id: req.id.clone(), pid, ..Default::default() };
            inner.publish(topics::TASK_START_EVENT_TOPIC, Box::new(event)).await;
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
            let container = containers.get(&req.id).ok_or_else(|| Error::ContainerNotFound(req.id.clone()))?;
            (container.process(&req.exec_id)?, container.bundle.clone())
        };
        let status = match proc.status() {
            Status::Created => api::Status::CREATED,
            Status::Running => api::Status::RUNNING,
            Status::Paused => api::Status::PAUSED,
            Status::Stopped => api::Status::STOPPED,
        };
        let exit = proc.exit();
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle,
            pid: self.inner.vm_pid().await,
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
            return Err(Error::AlreadyFinished { container: req.id.clone(), exec: req.exec_id.clone() }.into());
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
        let agent = sandbox.agent().agent();
        agent
            .signal_process(context::with_duration(CALL_TIMEOUT), &request)
            .await
            .map_err(|err| Error::agent("SignalProcess", &req.id, &err))?;
        Ok(api::Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let spec: oci_spec::runtime::Process =
            parse_json(&req.spec.value, || format!("exec {:?}: the process spec", req.exec_id))?;
        if req.exec_id.is_empty() {
            return Err(Error::EmptyExecId.into());
        }
        {
            let mut containers = self.inner.containers.lock().await;
            let container = containers.get_mut(&req.id).ok_or_else(|| Error::ContainerNotFound(req.id.clone()))?;
            if container.execs.contains_key(&req.exec_id) || req.exec_id == req.id {
                return Err(Error::ExecExists { container: req.id.clone(), exec: req.exec_id.clone() }.into());
            }
            let stdio = stdio_of(&req.stdin, &req.stdout, &req.stderr, req.terminal);
            let process = container::guest::exec_process(&spec, req.terminal);
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
            .map_err(|_| Error::Internal("the process's exit channel closed".to_owned()))?
            .clone()
            .unwrap_or(Exit { status: VM_DIED_STATUS, at: now() });
        Ok(api::WaitResponse { exit_status: exit.status, exited_at: Some(exit.at).into(), ..Default::default() })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        // Run to the end even if containerd stops waiting: ttrpc drops a handler whose deadline
        // passed, and a delete cut short would leave the container's disks and mounts behind.
        let inner = Arc::clone(&self.inner);
        let deleted = tokio::spawn(async move { inner.delete(req).await })
            .await
            .map_err(|err| Error::Internal(format!("delete failed: {err}")))?;
        Ok(deleted?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        self.inner.find(&req.id, "").await?;
        let pid = self.inner.vm_pid().await;
        Ok(api::PidsResponse { processes: vec![api::ProcessInfo { pid, ..Default::default() }], ..Default::default() })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let proc = self.inner.find(&req.id, "").await?;
        let (_, agent) = self.inner.live_agent("Pause").await?;
        let request = pb::PauseContainerRequest { container_id: req.id.clone(), ..Default::default() };
        agent
            .pause_container(context::with_duration(CALL_TIMEOUT), &request)
            .await
            .map_err(|err| Error::agent("PauseContainer", &req.id, &err))?;
        proc.set_status(Status::Paused);
        let event = events::TaskPaused { container_id: req.id.clone(), ..Default::default() };
        self.inner.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(event)).await;
        Ok(api::Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let proc = self.inner.find(&req.id, "").await?;
        let (_, agent) = self.inner.live_agent("Resume").await?;
        let request = pb::ResumeContainerRequest { container_id: req.id.clone(), ..Default::default() };
        agent
            .resume_container(context::with_duration(CALL_TIMEOUT), &request)
            .await
            .map_err(|err| Error::agent("ResumeContainer", &req.id, &err))?;
        proc.set_status(Status::Running);
        let event = events::TaskResumed { container_id: req.id.clone(), ..Default::default() };
        self.inner.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(event)).await;
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
            .map_err(|err| Error::agent("TtyWinResize", &req.id, &err))?;
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
            parse_json(&req.resources.value, || format!("update of {:?}: resources", req.id))?;
        let (_, agent) = self.inner.live_agent("Update").await?;
        let request = pb::UpdateContainerRequest {
            container_id: req.id.clone(),
            resources: Some(to_pb::resources(&resources)).into(),
            ..Default::default()
        };
        agent
            .update_container(context::with_duration(CALL_TIMEOUT), &request)
            .await
            .map_err(|err| Error::agent("UpdateContainer", &req.id, &err))?;
        Ok(api::Empty::new())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        self.inner.find(&req.id, "").await?;
        let (_, agent) = self.inner.live_agent("Stats").await?;
        let request = pb::StatsContainerRequest { container_id: req.id.clone(), ..Default::default() };
        let answer = agent
            .stats_container(context::with_duration(CALL_TIMEOUT), &request)
            .await
            .map_err(|err| Error::agent("StatsContainer", &req.id, &err))?;
        let any = convert_to_any(Box::new(metrics_of(&answer.cgroup_stats)))
            .map_err(|err| Error::Internal(format!("cannot encode metrics of {:?}: {err}", req.id)))?;
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
