//! The sandbox: guest-wide state and operations that are not about one container.
//!
//! The guest's identity (GetGuestDetails, CreateSandbox's hostname and DNS),
//! its clock and entropy, the registry of containers with what they share (the
//! sandbox pid namespace, guest hooks), CopyFile, OnlineCPUMem, and the end of
//! its life: DestroySandbox removes every container and asks the server loop to
//! stop; init powers the VM off once the reply has been sent.

mod copy_file;
mod online;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use protocols::agent::{
    AgentDetails, CopyFileRequest, CreateContainerRequest, CreateSandboxRequest, GuestDetailsResponse,
    OnlineCPUMemRequest, Storage,
};
use protocols::convert::from_pb;
use tokio::sync::watch;

use crate::cgroups::{OomWatcher, DEFAULT_PARENT};
use crate::container::{self, Container, GuestHooks, PidNs};
use crate::device::{self, Devices};
use crate::error::AgentError;
use crate::logging::boot_clock;
use crate::metrics;
use crate::process::ExitTable;
use crate::storage::{self, Mounted};

/// Where container state directories live in the guest.
pub const DEFAULT_STATE_ROOT: &str = "/run/wisp/containers";
/// Kata's runtime copies files and shares volumes below this directory.
const KATA_GUEST_DIR: &str = "/run/kata-containers";
/// How long DestroySandbox waits for each container's processes to die.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long CreateContainer waits for the deferred guest setup.
const SETUP_WAIT: Duration = Duration::from_secs(10);
/// Kata's default wait for a hot-plugged device (`agent.hotplug_timeout`).
const DEFAULT_HOTPLUG_TIMEOUT: Duration = Duration::from_secs(3);

/// What the agent does when the sandbox is destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// PID 1 of a VM: power off.
    Init,
    /// A process on a host (protocol tests): exit.
    Standalone,
}

#[derive(Debug)]
pub struct Sandbox {
    log: slog::Logger,
    role: Role,
    shutdown: watch::Sender<bool>,
    /// Boot clock when the process started, and when it began serving.
    started: f64,
    ready: OnceLock<f64>,
    /// Boot clock when the guest setup deferred past readiness (cgroups)
    /// finished; container creation will have to wait for it.
    setup_done: OnceLock<f64>,
    /// Where every exit the reaper collects is routed.
    exits: Arc<ExitTable>,
    /// Parent of the containers' state directories.
    state_root: PathBuf,
    containers: Mutex<Registry>,
    guest: Mutex<GuestConfig>,
    /// The uevent listener, started by the first storage or device that needs it.
    devices: OnceLock<Arc<Devices>>,
    hotplug_timeout: Duration,
    /// Below the agent's own cgroup, where containers' relative cgroups go:
    /// per agent on a host, so test agents side by side never share one.
    cgroup_parent: String,
    /// Every container's OOM kills, for GetOOMEvent.
    ooms: OomWatcher,
}

/// The containers, and the ids being created (so a duplicate is refused
/// while the first one is still launching).
#[derive(Debug, Default)]
struct Registry {
    live: HashMap<String, Arc<Container>>,
    creating: HashSet<String>,
}

/// What CreateSandbox set up for every container.
#[derive(Debug, Default)]
struct GuestConfig {
    created: bool,
    sandbox_id: String,
    hostname: String,
    hooks: Option<GuestHooks>,
    pidns: SharedPidNs,
    /// CreateSandbox asked for one pid namespace for every container (else only the
    /// containers whose CreateContainer asks join it: a CRI pod's choice per container).
    pidns_for_all: bool,
    /// CreateSandbox's storages, released by DestroySandbox.
    storages: Vec<Mounted>,
}

/// The sandbox-wide pid namespace: the sandbox's first container creates it (or, once its
/// holder is gone, the next one that asks), and later ones that ask join it through its init.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum SharedPidNs {
    #[default]
    Off,
    Wanted,
    Held {
        container_id: String,
        pid: i32,
    },
}

impl Sandbox {
    /// `started` is the boot clock when the process started.
    pub fn new(log: slog::Logger, role: Role, started: f64) -> Self {
        Sandbox {
            log,
            role,
            shutdown: watch::channel(false).0,
            started,
            ready: OnceLock::new(),
            setup_done: OnceLock::new(),
            exits: Arc::new(ExitTable::new()),
            state_root: PathBuf::from(DEFAULT_STATE_ROOT),
            containers: Mutex::new(Registry::default()),
            guest: Mutex::new(GuestConfig::default()),
            devices: OnceLock::new(),
            hotplug_timeout: DEFAULT_HOTPLUG_TIMEOUT,
            cgroup_parent: match role {
                Role::Init => DEFAULT_PARENT.to_owned(),
                Role::Standalone => format!("{DEFAULT_PARENT}-{}", std::process::id()),
            },
            ooms: OomWatcher::new(),
        }
    }

    /// Waits (a few seconds at most) for the deferred guest setup, which mounts
    /// the cgroup hierarchies a container's cgroup goes into.
    async fn setup_finished(&self) -> Result<(), AgentError> {
        if self.role != Role::Init {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + SETUP_WAIT;
        while self.setup_done.get().is_none() {
            if tokio::time::Instant::now() >= deadline {
                return Err(AgentError::Timeout { what: "guest setup (cgroups)".into(), secs: SETUP_WAIT.as_secs() });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// GetOOMEvent: the id of the next container with an OOM kill.
    pub async fn next_oom(&self) -> Result<String, AgentError> {
        self.ooms.next().await.ok_or_else(|| AgentError::FailedPrecondition("the agent is stopping".into()))
    }

    /// How long storages and devices wait for a hot-plugged disk.
    pub fn with_hotplug_timeout(mut self, timeout: Duration) -> Self {
        self.hotplug_timeout = timeout;
        self
    }

    /// The uevent table (started on first use).
    pub(crate) fn device_table(&self) -> Arc<Devices> {
        self.devices()
    }

    /// How long a hot-plugged disk is waited for.
    pub(crate) fn hotplug_timeout(&self) -> Duration {
        self.hotplug_timeout
    }

    fn devices(&self) -> Arc<Devices> {
        self.devices.get_or_init(|| Devices::start(&self.log)).clone()
    }

    /// Mounts `storages` in order on a blocking thread (they may wait for a
    /// disk); on a failure the ones already mounted are released again.
    async fn mount_storages(&self, storages: &[Storage]) -> Result<Vec<Mounted>, AgentError> {
        if storages.is_empty() {
            return Ok(Vec::new());
        }
        let (devices, timeout, log) = (self.devices(), self.hotplug_timeout, self.log.clone());
        let storages = storages.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut mounted = Vec::with_capacity(storages.len());
            for s in &storages {
                match storage::mount(s, &devices, timeout) {
                    Ok(m) => mounted.push(m),
                    Err(e) => {
                        release_all(&mut mounted, &log);
                        return Err(AgentError::from(e));
                    }
                }
            }
            Ok(mounted)
        })
        .await
        .map_err(|e| AgentError::FailedPrecondition(format!("storage mount task: {e}")))?
    }

    /// Keeps container state below `dir` instead of [`DEFAULT_STATE_ROOT`]
    /// (host tests run several agents side by side).
    pub fn with_state_root(mut self, dir: PathBuf) -> Self {
        self.state_root = dir;
        self
    }

    pub fn exits(&self) -> &Arc<ExitTable> {
        &self.exits
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // Every critical section is a few map operations: consistent after a panic.
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn guest(&self) -> std::sync::MutexGuard<'_, GuestConfig> {
        self.guest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the server accepts connections.
    pub fn mark_ready(&self) {
        let _ = self.ready.set(boot_clock());
    }

    /// Records that the deferred guest setup has finished.
    pub fn mark_setup_done(&self) {
        let _ = self.setup_done.set(boot_clock());
    }

    pub fn metrics(&self) -> String {
        metrics::collect(metrics::Timeline {
            init_started: self.started,
            ready: self.ready.get().copied(),
            setup_done: self.setup_done.get().copied(),
        })
    }

    pub fn log(&self) -> &slog::Logger {
        &self.log
    }

    /// Resolves when DestroySandbox has been called.
    pub fn shutdown_requested(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn guest_details(&self, want_block_size: bool, want_probe: bool) -> GuestDetailsResponse {
        let mut r = GuestDetailsResponse::new();
        let memory = Path::new("/sys/devices/system/memory");
        if want_block_size {
            r.mem_block_size_bytes = std::fs::read_to_string(memory.join("block_size_bytes"))
                .ok()
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .unwrap_or(0);
        }
        if want_probe {
            r.support_mem_hotplug_probe = memory.join("probe").exists();
        }
        let mut details = AgentDetails::new();
        details.version = env!("CARGO_PKG_VERSION").to_owned();
        details.init_daemon = self.role == Role::Init;
        details.supports_seccomp = libseccomp::get_api() > 0;
        r.agent_details = Some(details).into();
        r
    }

    pub fn set_time(&self, sec: i64, usec: i64) -> Result<(), AgentError> {
        if !(0..1_000_000).contains(&usec) || sec < 0 {
            return Err(AgentError::InvalidArgument(format!("time {sec}s {usec}us out of range")));
        }
        let ts = nix::sys::time::TimeSpec::new(sec, usec * 1000);
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts).map_err(|source| AgentError::SetTime {
            sec,
            usec,
            source,
        })?;
        slog::info!(self.log, "guest clock set"; "sec" => sec);
        Ok(())
    }

    pub fn reseed(&self, data: &[u8]) -> Result<(), AgentError> {
        if data.is_empty() {
            // Kata's agent accepts an empty seed (it adds nothing and asks for a reseed), so
            // clients written against it may send one: a no-op here.
            slog::debug!(self.log, "empty seed: nothing added to the random device");
            return Ok(());
        }
        wisp_init::entropy::reseed(data)?;
        slog::debug!(self.log, "random device reseeded"; "bytes" => data.len());
        Ok(())
    }

    /// Removes every container (processes killed, state and mounts released).
    pub async fn remove_all(&self) {
        let all: Vec<Arc<Container>> = self.registry().live.values().cloned().collect();
        for c in all {
            if let Err(e) = self.remove_container(&c.id, Some(DESTROY_TIMEOUT)).await {
                slog::warn!(c.log(), "not removed with the sandbox"; "error" => %crate::error::chain(&e));
            }
        }
    }

    /// DestroySandbox: every container goes, then the sandbox's storages, then the agent stops.
    pub async fn destroy(&self) {
        self.remove_all().await;
        self.remove_cgroup_parent();
        let mut storages = std::mem::take(&mut self.guest().storages);
        let log = self.log.clone();
        let released = tokio::task::spawn_blocking(move || release_all(&mut storages, &log)).await;
        if let Err(e) = released {
            slog::warn!(self.log, "sandbox storages not released"; "error" => %e);
        }
        slog::info!(self.log, "sandbox destroyed; stopping"; "role" => ?self.role, "sandbox_id" => self.guest().sandbox_id.clone());
        self.shutdown.send_replace(true);
    }

    /// On a host, the agent's own parent cgroup goes with the sandbox (rmdir:
    /// only if empty, and only the per-agent one).
    fn remove_cgroup_parent(&self) {
        if self.role != Role::Standalone {
            return;
        }
        let dirs: Vec<PathBuf> = match crate::cgroups::Layout::discover() {
            Ok(crate::cgroups::Layout::V1(mounts)) => {
                mounts.iter().map(|m| m.mount.join(&m.own).join(&self.cgroup_parent)).collect()
            }
            Ok(crate::cgroups::Layout::V2 { mount, own }) => vec![mount.join(own).join(&self.cgroup_parent)],
            Err(_) => return,
        };
        for dir in dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// The file CreateSandbox's DNS lines go to: the guest's own, or one in
    /// the state directory when the agent runs on a host it must not change.
    fn resolv_conf(&self) -> PathBuf {
        match self.role {
            Role::Init => PathBuf::from("/etc/resolv.conf"),
            Role::Standalone => self.state_root.join("resolv.conf"),
        }
    }

    /// CreateSandbox: hostname, DNS, guest hooks, the shared pid namespace, storages.
    pub async fn create_sandbox(&self, req: &CreateSandboxRequest) -> Result<(), AgentError> {
        if self.guest().created {
            return Err(AgentError::FailedPrecondition(format!("sandbox {} already created", self.guest().sandbox_id)));
        }
        let mut mounted = self.mount_storages(&req.storages).await?;
        if let Err(e) = self.configure(req, &mut mounted) {
            release_all(&mut mounted, &self.log);
            return Err(e);
        }
        Ok(())
    }

    /// The rest of CreateSandbox once its storages are mounted; keeps them on success.
    fn configure(&self, req: &CreateSandboxRequest, mounted: &mut Vec<Mounted>) -> Result<(), AgentError> {
        let mut guest = self.guest();
        if guest.created {
            return Err(AgentError::FailedPrecondition(format!("sandbox {} already created", guest.sandbox_id)));
        }
        if let Some(bad) = req.dns.iter().find(|l| l.contains('\n')) {
            return Err(AgentError::InvalidArgument(format!("DNS entry {bad:?} spans several lines")));
        }
        let hooks = if req.guest_hook_path.is_empty() {
            None
        } else {
            match container::create::load_guest_hooks(Path::new(&req.guest_hook_path)) {
                Ok(h) => Some(h),
                Err(e) => {
                    slog::warn!(self.log, "guest hooks not loaded"; "path" => &req.guest_hook_path, "error" => %e);
                    None
                }
            }
        };
        if !req.hostname.is_empty() {
            if self.role == Role::Init {
                nix::unistd::sethostname(&req.hostname).map_err(|source| AgentError::Sys {
                    what: format!("cannot set the hostname to {:?}", req.hostname),
                    source,
                })?;
            } else {
                slog::info!(self.log, "hostname not applied to a host"; "hostname" => &req.hostname);
            }
        }
        if !req.dns.is_empty() {
            let path = self.resolv_conf();
            let mut text = req.dns.iter().map(|l| l.trim()).collect::<Vec<_>>().join("\n");
            text.push('\n');
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|source| AgentError::Io { what: format!("cannot create {}", dir.display()), source })?;
            }
            std::fs::write(&path, text)
                .map_err(|source| AgentError::Io { what: format!("cannot write {}", path.display()), source })?;
        }
        for m in &req.kernel_modules {
            slog::warn!(self.log, "kernel module requests are not supported; ignored"; "module" => &m.name);
        }
        guest.created = true;
        guest.sandbox_id = req.sandbox_id.clone();
        guest.hostname = req.hostname.clone();
        guest.hooks = hooks;
        guest.storages = std::mem::take(mounted);
        if req.sandbox_pidns {
            guest.pidns = SharedPidNs::Wanted;
            guest.pidns_for_all = true;
        }
        slog::info!(self.log, "sandbox created"; "sandbox_id" => &req.sandbox_id, "hostname" => &req.hostname,
            "sandbox_pidns" => req.sandbox_pidns, "guest_hooks" => guest.hooks.is_some());
        Ok(())
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>, AgentError> {
        self.registry().live.get(id).cloned().ok_or_else(|| AgentError::ContainerNotFound(id.to_owned()))
    }

    /// The pid namespace a new container gets, whether it will hold the shared one, and the
    /// holder's `/proc/PID/ns` (whose ipc and uts it joins) if there is one.
    ///
    /// Kata's agent's rule (`update_container_namespaces` and `Sandbox::update_shared_pidns` in
    /// its `rpc.rs` and `sandbox.rs`): the spec's own pid entry never counts; a container that
    /// asks (`sandbox_pidns`) joins the sandbox's pid namespace, any other gets a new one; the
    /// first container of the sandbox holds the sandbox's, whatever it asked (Kata's runtime
    /// sends a CRI pod's pause container without `sandbox_pidns`).
    fn pid_namespace(&self, wants_shared: bool) -> (PidNs, bool, Option<PathBuf>) {
        let first = self.registry().live.is_empty();
        let guest = self.guest();
        let wants_shared = wants_shared || guest.pidns_for_all;
        let holder = match &guest.pidns {
            SharedPidNs::Held { pid, .. } => Some(PathBuf::from(format!("/proc/{pid}/ns"))),
            _ => None,
        };
        match (holder, wants_shared) {
            (Some(dir), true) => (PidNs::Join(dir.join("pid")), false, Some(dir)),
            (None, true) => (PidNs::New, true, None),
            (None, false) => (PidNs::New, first, None),
            (holder, false) => (PidNs::New, false, holder),
        }
    }

    /// CreateContainer.
    pub async fn create_container(&self, req: &CreateContainerRequest) -> Result<(), AgentError> {
        let id = req.container_id.clone();
        container::id::validate("container", &id)?;
        if !req.exec_id.is_empty() {
            container::id::validate("exec", &req.exec_id)?;
        }
        {
            let mut reg = self.registry();
            if reg.live.contains_key(&id) || !reg.creating.insert(id.clone()) {
                return Err(AgentError::ContainerExists(id));
            }
        }
        let result = self.create_reserved(req).await;
        let mut reg = self.registry();
        reg.creating.remove(&id);
        let c = result?;
        reg.live.insert(id, c);
        Ok(())
    }

    async fn create_reserved(&self, req: &CreateContainerRequest) -> Result<Arc<Container>, AgentError> {
        let id = &req.container_id;
        self.setup_finished().await?;
        let pb = req.OCI.as_ref().ok_or_else(|| AgentError::InvalidArgument(format!("container {id}: no OCI spec")))?;
        let spec = from_pb::spec(pb).map_err(|source| AgentError::Spec { container_id: id.clone(), source })?;
        // The rootfs and volumes first: the spec's root and mounts point into them.
        let mut mounted = self.mount_storages(&req.storages).await?;
        match self.create_mounted(req, spec).await {
            Ok(c) => {
                c.adopt_mounts(mounted);
                Ok(c)
            }
            Err(e) => {
                release_all(&mut mounted, &self.log);
                Err(e)
            }
        }
    }

    async fn create_mounted(
        &self,
        req: &CreateContainerRequest,
        mut spec: oci_spec::runtime::Spec,
    ) -> Result<Arc<Container>, AgentError> {
        let id = &req.container_id;
        if !req.devices.is_empty() {
            let (devices, timeout, wanted) = (self.devices(), self.hotplug_timeout, req.devices.clone());
            spec = tokio::task::spawn_blocking(move || {
                device::apply_devices(&mut spec, &wanted, &devices, timeout).map(|()| spec)
            })
            .await
            .map_err(|e| AgentError::FailedPrecondition(format!("container {id}: device task: {e}")))??;
        }
        let wants_shared = req.sandbox_pidns;
        let (pidns, holds, pod_ns) = self.pid_namespace(wants_shared);
        let hooks = self.guest().hooks.clone();
        let log = self.log.new(slog::o!("container_id" => id.clone()));
        let exec_id = if req.exec_id.is_empty() { id.clone() } else { req.exec_id.clone() };
        let c = container::create(container::CreateParams {
            container_id: id.clone(),
            exec_id,
            spec,
            state_root: &self.state_root,
            guest_hooks: hooks.as_ref(),
            pidns,
            pod_ns,
            cgroup_parent: &self.cgroup_parent,
            exits: self.exits.clone(),
            log,
        })
        .await?;
        if let Some(cg) = c.cgroup() {
            match cg.oom_events() {
                Ok(events) => self.ooms.watch(id, events),
                Err(e) => slog::warn!(c.log(), "OOM kills not watched"; "error" => %crate::error::chain(&e)),
            }
        }
        if holds {
            self.guest().pidns = SharedPidNs::Held { container_id: id.clone(), pid: c.init_pid() };
        }
        Ok(Arc::new(c))
    }

    /// RemoveContainer: see [`Container::remove`]; then the container is forgotten.
    pub async fn remove_container(&self, id: &str, timeout: Option<Duration>) -> Result<(), AgentError> {
        let c = self.container(id)?;
        c.remove(timeout).await?;
        self.ooms.unwatch(id);
        let empty = {
            let mut reg = self.registry();
            reg.live.remove(id);
            reg.live.is_empty()
        };
        if empty {
            self.remove_cgroup_parent();
        }
        let mut guest = self.guest();
        if matches!(&guest.pidns, SharedPidNs::Held { container_id, .. } if container_id == id) {
            guest.pidns = SharedPidNs::Wanted;
        }
        Ok(())
    }

    /// CopyFile, below Kata's shared directory or this sandbox's state.
    pub fn copy_file(&self, req: &CopyFileRequest) -> Result<(), AgentError> {
        copy_file::copy_file(req, &[PathBuf::from(KATA_GUEST_DIR), self.state_root.clone()])
    }

    pub async fn online_cpu_mem(&self, req: &OnlineCPUMemRequest) -> Result<(), AgentError> {
        online::online_cpu_mem(Path::new("/sys"), req.nb_cpus, req.cpu_only, online::CPU_WAIT).await
    }
}

/// Releases mounts newest first (a later mount may sit inside an earlier one);
/// failures are logged, the others still go.
pub fn release_all(mounts: &mut Vec<Mounted>, log: &slog::Logger) {
    while let Some(mut m) = mounts.pop() {
        if let Err(e) = m.release() {
            slog::warn!(log, "storage not released"; "mount_point" => %m.mount_point().display(),
                "error" => %crate::error::chain(&e));
        }
    }
}
