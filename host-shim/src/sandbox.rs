//! One sandbox: its VM, the agent connection, the shared directory and its state directory.
//!
//! # State directory
//!
//! Everything a sandbox creates on the host lives under `<state root>/<namespace>_<id>-<hash>`
//! (state root: `$WISP_STATE_DIR`, else `/run/wisp`; the name and its owner record are
//! [`crate::state`]'s; the directory is 0700 and its sockets 0600, see [`crate::state_dir`]):
//! QEMU's console and logs, the pid files of QEMU and its helpers, every socket (QMP,
//! vhost-user, hybrid vsock, serial), `mounts/` and `shared/`.
//!
//! # The share
//!
//! The guest is untrusted, and the share is the one host directory it can write through, so
//! it is built in two trees ([`crate::share`], Kata's design): container rootfs and bind-mount
//! sources are bind-mounted (nosuid, nodev, and a `ro` bind source read-only) into the
//! host-only `mounts/<container>/`, which propagates into `shared/`, the read-only slave bind
//! of `mounts/` that virtiofsd or QEMU's 9p serves and the guest mounts under
//! [`GUEST_SHARED_DIR`]. The guest can write inside a rw bind but cannot rename, replace or
//! plant an entry in a directory the shim made. One cleanup path ([`Sandbox::shutdown`], or
//! [`cleanup_dir`] for a crashed shim's leftovers) unmounts them without following a symlink,
//! stops every process, and removes the directory without crossing a mount point.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocols::agent::{
    CreateSandboxRequest, DestroySandboxRequest, OnlineCPUMemRequest, ReseedRandomDevRequest, Routes,
    SetGuestDateTimeRequest, Storage, UpdateInterfaceRequest, UpdateRoutesRequest,
};
use protocols::health::CheckRequest;
use protocols::ttrpc::context;
use slog::{info, warn, Logger};
use tokio::sync::{watch, Mutex};

use crate::agent_dial::{self, AgentAddr, AgentConn, DialError, DialSigns};
use crate::config::Config;
use crate::hypervisor::factory::{HostVms, ResolvedVm, VmFactory};
use crate::hypervisor::qemu::config::TapNic;
use crate::hypervisor::qemu::lifecycle;
use crate::hypervisor::{BlockSource, Growth, Hypervisor, HypervisorError, Plugged, SharedFs, VmPaths, SHARED_FS_TAG};
use crate::pod_network::{PodNetwork, PodNetworkError};
pub use crate::share::mounts_under;
use crate::share::{ShareError, ShareTree};
use crate::state::{self, ProcFs, SandboxKey, StateError};

/// The environment variable naming the state root.
pub use crate::env::STATE_DIR_ENV;
/// The state root without [`STATE_DIR_ENV`].
pub const DEFAULT_STATE_DIR: &str = "/run/wisp";
/// Where the guest mounts the shared directory (Kata's path).
pub const GUEST_SHARED_DIR: &str = "/run/kata-containers/shared/containers";
/// Lines of guest console quoted in errors.
const CONSOLE_TAIL_LINES: usize = 20;
/// How long a channel may stay silent after the guest's end was known to be up before the boot
/// counts as stalled (generous: under TCG on a loaded host the answer takes milliseconds).
const STALL_AFTER_READY: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 15 });
/// How often the stall is judged while dialing.
const STALL_POLL: Duration = Duration::from_millis(250);
/// Console lines that say an agent listens (hints only: the channel is the signal): ours
/// (logfmt), and Kata's agent's (JSON, `ttRPC server started`).
const LISTENING_HINTS: [&str; 2] = ["msg=\"agent ready\"", "\"msg\":\"ttRPC server started\""];
/// Host randomness a clone's guest gets before anything runs (Kata sends 512 bytes too).
const CLONE_SEED_BYTES: usize = 512;
/// Bound on agent calls made during setup and teardown.
const SETUP_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What can go wrong with a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The VM could not be resolved or started.
    #[error("cannot start the VM")]
    Hypervisor(#[from] HypervisorError),
    /// The agent did not answer in time (the console tail says why).
    #[error("the guest agent did not answer on {addr} within {waited:?}; last guest console lines:\n{console}")]
    AgentTimeout {
        /// Where we dialed.
        addr: AgentAddr,
        /// How long we waited.
        waited: Duration,
        /// The tail of the guest console.
        console: String,
        /// The last dial error.
        #[source]
        source: Box<DialError>,
    },
    /// The channel had answered (or the console said the agent listens), then it stayed
    /// silent: a stalled vsock backend (seen, rarely, with vhost-device-vsock under load).
    /// Worth a second boot.
    #[error(
        "{addr} had answered but then did not answer for {waited:?} (a stalled channel); last \
         guest console lines:\n{console}"
    )]
    AgentStalled {
        /// Where we dialed.
        addr: AgentAddr,
        /// How long the channel stayed silent after the agent was ready.
        waited: Duration,
        /// The tail of the guest console.
        console: String,
    },
    /// QEMU exited while we waited for the agent.
    #[error("{exit} before the agent answered; last guest console lines:\n{console}")]
    VmExited {
        /// QEMU's exit description.
        exit: String,
        /// The tail of the guest console.
        console: String,
    },
    /// An agent call failed.
    #[error("agent {call} failed: {}", describe_ttrpc(source))]
    Agent {
        /// The RPC.
        call: &'static str,
        /// Why.
        source: protocols::ttrpc::Error,
    },
    /// The pod's network namespace could not be wired to the VM.
    #[error("cannot connect the pod network to the VM")]
    Network(#[from] PodNetworkError),
    /// No template stands for this sandbox's VM (why).
    #[error("no template: {0}")]
    NoTemplate(String),
    /// No host randomness for a clone's guest.
    #[error("cannot read host randomness for the clone's guest")]
    Seed(#[source] std::io::Error),
    /// The state directory is another live shim's, or cannot be made.
    #[error("cannot take the sandbox state directory")]
    State(#[from] StateError),
    /// The share (host-only tree and the guest's view of it) could not be set up.
    #[error("cannot share with the guest")]
    Share(#[from] ShareError),
    /// Host filesystem work failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A ttrpc error as one readable line: the status code and message of an RPC status.
pub fn describe_ttrpc(err: &protocols::ttrpc::Error) -> String {
    match err {
        protocols::ttrpc::Error::RpcStatus(status) => format!("{:?}: {}", status.code(), status.message),
        other => other.to_string(),
    }
}

/// The state root: `$WISP_STATE_DIR`, else [`DEFAULT_STATE_DIR`].
pub fn state_root() -> PathBuf {
    crate::env::path(STATE_DIR_ENV).unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// The state directory of sandbox `key` under `root` (named as [`crate::state`] says).
pub fn sandbox_dir(root: &Path, key: &SandboxKey) -> PathBuf {
    key.dir(root)
}

/// Where a sandbox boots: its state root and the factory of its VM.
#[derive(Debug, Clone, Copy)]
pub struct BootOn<'a> {
    /// The state root.
    pub root: &'a Path,
    /// Makes the VM ([`HostVms`] in production).
    pub vms: &'a dyn VmFactory,
}

/// A running sandbox.
#[derive(Debug)]
pub struct Sandbox {
    id: String,
    paths: VmPaths,
    vm: Mutex<Box<dyn Hypervisor>>,
    exited: watch::Receiver<Option<String>>,
    vm_pid: u32,
    agent: AgentConn,
    shared_fs: SharedFs,
    share: ShareTree,
    /// Disks attached at boot (microvm), by id.
    boot_disks: HashMap<String, Plugged>,
    /// Set by the first [`Sandbox::shutdown`] to finish: the later ones (Delete, then
    /// Shutdown) have nothing left to do.
    stopped: std::sync::atomic::AtomicBool,
    log: Logger,
}

impl Sandbox {
    /// Boots the VM for sandbox `id`, waits for its agent, and sends CreateSandbox with the
    /// shared directory as a storage.
    /// With `netns` (a CRI pod's network namespace, set up by CNI), the pod's interface becomes
    /// the guest's ([`crate::pod_network`]).
    /// `boot_disks` are attached before the VM starts (microvm, which cannot hot-plug: see
    /// [`Sandbox::boot_disk`]); other machines get their disks by [`Sandbox::hot_plug`].
    pub async fn boot(
        config: &Config,
        key: &SandboxKey,
        netns: Option<&Path>,
        boot_disks: &[(String, BlockSource)],
        log: &Logger,
    ) -> Result<Self, SandboxError> {
        let on = BootOn { root: &state_root(), vms: &HostVms };
        Self::boot_in(config, on, key, netns, boot_disks, log).await
    }

    /// [`Sandbox::boot`] under another state root, with VMs from another factory.
    ///
    /// With `[factory] template = true`, a sandbox without boot disks is first cloned from its
    /// template (a pod network's NIC is hot-plugged into the clone) ([`crate::template`]); when there is none, or the clone fails,
    /// it boots cold.
    pub async fn boot_in(
        config: &Config,
        on: BootOn<'_>,
        key: &SandboxKey,
        netns: Option<&Path>,
        boot_disks: &[(String, BlockSource)],
        log: &Logger,
    ) -> Result<Self, SandboxError> {
        let log = log.new(slog::o!("sandbox" => key.id.clone(), "namespace" => key.namespace.clone()));
        if config.factory.template {
            let why_not = if !boot_disks.is_empty() {
                "disks are given at boot".to_owned()
            } else {
                match Self::boot_once(config, &on, key, netns, &[], true, &log).await {
                    Ok(sandbox) => return Ok(sandbox),
                    Err(SandboxError::NoTemplate(why)) => why,
                    Err(err) => format!("the clone failed: {}", crate::error_chain(&err)),
                }
            };
            info!(log, "booting cold, not from a template"; "why" => why_not);
        }
        Self::boot_once(config, &on, key, netns, boot_disks, false, &log).await
    }

    /// One boot: cold, or (`clone`) from the template, which must exist.
    async fn boot_once(
        config: &Config,
        on: &BootOn<'_>,
        key: &SandboxKey,
        netns: Option<&Path>,
        boot_disks: &[(String, BlockSource)],
        clone: bool,
        log: &Logger,
    ) -> Result<Self, SandboxError> {
        let root = on.root.to_owned();
        let id = key.id.as_str();
        let mut resolved = on.vms.resolve(config, &root).await?;
        let template = match clone {
            true => {
                let templates = crate::template::templates_dir(config, &root);
                Some(resolved.clone_template(&templates).map_err(SandboxError::NoTemplate)?)
            }
            false => None,
        };
        let log = log.clone();
        let mut network = wire_network(netns, resolved.as_mut(), &log).await?;
        // A previous shim of the same key may have died: its leftovers go first. A live one's
        // directory is refused and left alone.
        let dir = state::claim(&root, key, &ProcFs, |leftover| {
            let done = cleanup_dir(leftover, &log);
            info!(log, "a dead shim's leftovers removed"; "dir" => %leftover.display(), "done" => ?done);
        })?;
        let share = match ShareTree::create(&dir) {
            Ok(share) => share,
            Err(err) => {
                cleanup_dir(&dir, &log);
                return Err(err.into());
            }
        };
        let paths = VmPaths::new(&dir);
        info!(log, "booting VM"; "vm" => resolved.describe(), "dir" => %dir.display(), "config" => config.source_name());
        let vm = resolved.build(&paths, &log);
        let shared_fs = vm.shared().1;
        let started = Instant::now();
        let (mut vm, attached, addr) = match start_vm(vm, boot_disks).await {
            Ok(started) => started,
            Err(err) => {
                cleanup_dir(&dir, &log);
                return Err(err);
            }
        };
        // QEMU holds the tap now: it goes when QEMU does.
        if let Some(network) = network.as_mut() {
            network.release_tap();
        }
        let exited = vm.exited();
        let vm_pid = vm.pid().unwrap_or(0);
        let agent = match wait_agent(vm.as_ref(), &addr, config.agent.dial_timeout()).await {
            Ok(agent) => agent,
            Err(err) => {
                // The error already quotes the console: the state can go.
                vm.stop().await;
                cleanup_dir(&dir, &log);
                return Err(err);
            }
        };
        let template_key = template.as_ref().map(|(key, _)| key.as_str());
        info!(log, "agent ready"; "ms" => started.elapsed().as_millis(), "addr" => %addr, "template" => template_key);
        crate::timeline::mark(&log, "agent ready");
        // QEMU and its helpers have made their sockets by now.
        crate::state_dir::restrict_sockets(&dir, &log);
        let sandbox = Self {
            id: id.to_owned(),
            paths,
            vm: Mutex::new(vm),
            exited,
            vm_pid,
            agent,
            shared_fs,
            share,
            boot_disks: attached,
            stopped: Default::default(),
            log,
        };
        let refreshed = match template {
            Some((_, growth)) => sandbox.refresh_clone(growth).await,
            None => Ok(()),
        };
        if let Err(err) = refreshed.and(sandbox.create_in_guest(network.as_ref()).await) {
            // The guest's side of a refused or hung call is on its console, gone with the state
            // directory: the log keeps it.
            warn!(sandbox.log, "the sandbox's setup in the guest failed"; "error" => %err,
                  "console_tail" => sandbox.console_tail());
            sandbox.shutdown().await;
            return Err(err);
        }
        Ok(sandbox)
    }

    /// Makes a clone its own before anything runs in it: every clone of a template starts
    /// with the template's RNG state and clock, and one bigger than its template has the
    /// vCPUs it got by hot-plug onlined (its added RAM the kernel onlines itself).
    async fn refresh_clone(&self, growth: Growth) -> Result<(), SandboxError> {
        let agent = self.agent.agent();
        let ctx = || context::with_duration(SETUP_CALL_TIMEOUT);
        let mut data = vec![0; CLONE_SEED_BYTES];
        let urandom =
            std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut data));
        urandom.map_err(SandboxError::Seed)?;
        let request = ReseedRandomDevRequest { data, ..Default::default() };
        let reseeded = agent.reseed_random_dev(ctx(), &request).await;
        reseeded.map_err(|source| SandboxError::Agent { call: "ReseedRandomDev", source })?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let request = SetGuestDateTimeRequest {
            Sec: now.as_secs() as i64,
            Usec: now.subsec_micros().into(),
            ..Default::default()
        };
        let set = agent.set_guest_date_time(ctx(), &request).await;
        set.map_err(|source| SandboxError::Agent { call: "SetGuestDateTime", source })?;
        if !growth.is_none() {
            // Kata's reading: nb_cpus is how many CPUs this call must bring online.
            let request = OnlineCPUMemRequest {
                wait: true,
                nb_cpus: growth.vcpus,
                cpu_only: growth.memory_mib == 0,
                ..Default::default()
            };
            let asked = Instant::now();
            let onlined = agent.online_cpu_mem(ctx(), &request).await;
            onlined.map_err(|source| SandboxError::Agent { call: "OnlineCPUMem", source })?;
            info!(self.log, "the clone's added resources online"; "vcpus" => growth.vcpus,
                  "memory_mib" => growth.memory_mib, "ms" => asked.elapsed().as_millis());
        }
        Ok(())
    }

    /// CreateSandbox with the shared directory as a storage, then the pod network if any.
    async fn create_in_guest(&self, network: Option<&PodNetwork>) -> Result<(), SandboxError> {
        let request = CreateSandboxRequest {
            hostname: String::new(),
            storages: vec![self.shared_storage()],
            sandbox_id: self.id.clone(),
            ..Default::default()
        };
        let created = self.agent.agent().create_sandbox(context::with_duration(SETUP_CALL_TIMEOUT), &request).await;
        created.map_err(|source| SandboxError::Agent { call: "CreateSandbox", source })?;
        crate::timeline::mark(&self.log, "sandbox created");
        match network {
            Some(network) => self.configure_network(network).await,
            None => Ok(()),
        }
    }

    /// Gives the guest NIC the pod interface's addresses and MTU, then its routes.
    async fn configure_network(&self, network: &PodNetwork) -> Result<(), SandboxError> {
        let agent = self.agent.agent();
        let request = UpdateInterfaceRequest { interface: Some(network.interface()).into(), ..Default::default() };
        let ctx = || context::with_duration(SETUP_CALL_TIMEOUT);
        let iface = agent
            .update_interface(ctx(), &request)
            .await
            .map_err(|source| SandboxError::Agent { call: "UpdateInterface", source })?;
        let routes = Routes { Routes: network.routes.clone(), ..Default::default() };
        let request = UpdateRoutesRequest { routes: Some(routes).into(), ..Default::default() };
        agent
            .update_routes(ctx(), &request)
            .await
            .map_err(|source| SandboxError::Agent { call: "UpdateRoutes", source })?;
        info!(self.log, "guest network configured"; "interface" => &iface.name,
              "addresses" => ?iface.IPAddresses.iter().map(|a| format!("{}/{}", a.address, a.mask)).collect::<Vec<_>>(),
              "routes" => network.routes.len());
        Ok(())
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The agent connection.
    pub fn agent(&self) -> &AgentConn {
        &self.agent
    }

    /// QEMU's pid (what containerd sees as the task's pid, as with Kata).
    pub fn vm_pid(&self) -> u32 {
        self.vm_pid
    }

    /// Becomes `Some` when QEMU has exited.
    pub fn exited(&self) -> watch::Receiver<Option<String>> {
        self.exited.clone()
    }

    /// The last lines of the guest console.
    pub fn console_tail(&self) -> String {
        crate::hypervisor::tail(&self.paths.console(), CONSOLE_TAIL_LINES)
    }

    /// Plugs `source` into the running VM as device `id`.
    pub async fn hot_plug(&self, id: &str, source: &BlockSource) -> Result<Plugged, HypervisorError> {
        self.vm.lock().await.hot_plug(id, source).await
    }

    /// Disk `id` if it was attached at boot.
    pub fn boot_disk(&self, id: &str) -> Option<Plugged> {
        self.boot_disks.get(id).cloned()
    }

    /// Unplugs device `id`.
    pub async fn hot_unplug(&self, id: &str) -> Result<(), HypervisorError> {
        self.vm.lock().await.hot_unplug(id).await
    }

    /// Resizes the virtio-blk disk `id` to `size` bytes.
    pub async fn resize_block(&self, id: &str, size: u64) -> Result<(), HypervisorError> {
        self.vm.lock().await.resize_block(id, size).await
    }

    /// The sandbox's state directory.
    pub fn dir(&self) -> &Path {
        self.paths.dir()
    }

    /// The storage the guest mounts the shared directory with.
    fn shared_storage(&self) -> Storage {
        Storage {
            driver: self.shared_fs.storage_driver().to_owned(),
            source: SHARED_FS_TAG.to_owned(),
            fstype: self.shared_fs.fstype().to_owned(),
            options: self.shared_fs.mount_options(),
            mount_point: format!("{GUEST_SHARED_DIR}/"),
            ..Default::default()
        }
    }

    /// Bind-mounts host path `source` (a directory or a file) into the share as
    /// `<container>/<name>` (read-only on the host when `read_only`) and returns its path in the
    /// guest.
    pub fn share(&self, container: &str, name: &str, source: &Path, read_only: bool) -> Result<String, SandboxError> {
        let rel = self.share.bind(container, name, source, read_only)?;
        Ok(format!("{GUEST_SHARED_DIR}/{}", rel.display()))
    }

    /// Unmounts and removes everything shared for `container`.
    pub fn unshare(&self, container: &str) {
        self.share.release(container, &self.log);
    }

    /// Stops the sandbox: DestroySandbox (best effort, while the VM runs), QEMU and helpers
    /// stopped, shares unmounted, the state directory removed. Idempotent: a call after one
    /// that finished (Delete, then Shutdown) returns at once.
    pub async fn shutdown(&self) {
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if self.exited.borrow().is_none() {
            let client = self.agent.agent();
            let request = DestroySandboxRequest::new();
            let destroy = client.destroy_sandbox(context::with_duration(Duration::from_secs(2)), &request);
            // The agent powers the VM off once it replied, and the reply can be lost with the
            // VM (still queued in the guest when QEMU exits): the VM's exit answers as well.
            let mut exited = self.exited.clone();
            tokio::select! {
                reply = tokio::time::timeout(Duration::from_secs(3), destroy) => {
                    if let Ok(Err(err)) = reply {
                        info!(self.log, "DestroySandbox failed (the VM is stopped anyway)"; "error" => %err);
                    }
                }
                _ = exited.wait_for(Option::is_some) => {}
            }
        }
        self.vm.lock().await.stop().await;
        self.share.teardown(&self.log);
        cleanup_dir(self.paths.dir(), &self.log);
        if !self.stopped.swap(true, std::sync::atomic::Ordering::SeqCst) {
            info!(self.log, "sandbox stopped and cleaned up");
            crate::timeline::mark(&self.log, "vm stopped");
        }
    }
}

/// Wires the pod network namespace `netns` (if any, and not the host's) to a tap NIC of `vm`.
async fn wire_network(
    netns: Option<&Path>,
    vm: &mut dyn ResolvedVm,
    log: &Logger,
) -> Result<Option<PodNetwork>, SandboxError> {
    let Some(netns) = netns else { return Ok(None) };
    let path = netns.to_owned();
    let network = tokio::task::spawn_blocking(move || PodNetwork::setup(&path))
        .await
        .map_err(|err| HypervisorError::Unsupported(format!("the network setup panicked: {err}")))??;
    let Some(network) = network else {
        info!(log, "the network namespace is the host's: host networking"; "netns" => %netns.display());
        return Ok(None);
    };
    if !vm.capabilities().pod_network {
        return Err(HypervisorError::Unsupported("pod networking needs the QEMU backend".to_owned()).into());
    }
    vm.attach_tap(network.tap_fd().map(|fd| TapNic { fd, mac: network.mac.clone() }))?;
    info!(log, "pod network wired to a tap"; "netns" => %netns.display(), "interface" => &network.ifname,
          "mac" => &network.mac, "addresses" => ?network.addresses);
    Ok(Some(network))
}

/// How long the channel has been silent since it last answered, if that is
/// [`STALL_AFTER_READY`] or more: a healthy hybrid vsock backend answers every CONNECT at once
/// (dropped while the guest's vsock is not up, refused while nothing listens, `OK`), so silence
/// after an answer is a stalled backend. A console line saying an agent listens starts the same
/// window (a hint, for a channel that never answered). Silence before either is a VM still
/// starting, never a stall.
fn stalled_for(last_answer: Option<Instant>, hinted: Option<Instant>) -> Option<Duration> {
    let up_at = last_answer.into_iter().chain(hinted).max()?;
    let silent = up_at.elapsed();
    (silent >= STALL_AFTER_READY).then_some(silent)
}

/// Resolves when the channel stalled ([`stalled_for`]): never for a guest that does not answer
/// and does not say it listens.
async fn channel_stalled(vm: &dyn Hypervisor, signs: &DialSigns) -> Duration {
    let mut hinted = None;
    loop {
        tokio::time::sleep(STALL_POLL).await;
        if hinted.is_none() {
            let console = vm.console_tail(CONSOLE_TAIL_LINES);
            if LISTENING_HINTS.iter().any(|hint| console.contains(hint)) {
                hinted = Some(Instant::now());
            }
        }
        if let Some(silent) = stalled_for(signs.last_answer(), hinted) {
            return silent;
        }
    }
}

/// Attaches `boot_disks` to `vm` and starts it; a VM that failed to start is stopped again.
async fn start_vm(
    mut vm: Box<dyn Hypervisor>,
    boot_disks: &[(String, BlockSource)],
) -> Result<(Box<dyn Hypervisor>, HashMap<String, Plugged>, AgentAddr), SandboxError> {
    let mut attached = HashMap::new();
    for (disk, source) in boot_disks {
        attached.insert(disk.clone(), vm.cold_plug(disk, source)?);
    }
    match vm.start().await {
        Ok(addr) => Ok((vm, attached, addr)),
        Err(err) => {
            vm.stop().await;
            Err(err.into())
        }
    }
}

/// Dials the agent until `timeout`, giving up early if QEMU exits or the channel stalls
/// ([`channel_stalled`]); then checks its health: the agent is ready when Health.Check answers.
pub(crate) async fn wait_agent(
    vm: &dyn Hypervisor,
    addr: &AgentAddr,
    timeout: Duration,
) -> Result<AgentConn, SandboxError> {
    let start = Instant::now();
    let mut exited = vm.exited();
    let vm_gone = |exit: String| SandboxError::VmExited { exit, console: vm.console_tail(CONSOLE_TAIL_LINES) };
    let signs = DialSigns::default();
    let conn = tokio::select! {
        conn = agent_dial::connect_watched(addr, timeout, &signs) => conn.map_err(|source| SandboxError::AgentTimeout {
            addr: addr.clone(),
            waited: start.elapsed(),
            console: vm.console_tail(CONSOLE_TAIL_LINES),
            source: Box::new(source),
        })?,
        exit = exited.wait_for(Option::is_some) => {
            return Err(vm_gone(exit.ok().and_then(|e| e.clone()).unwrap_or_default()));
        }
        waited = channel_stalled(vm, &signs) => {
            return Err(SandboxError::AgentStalled {
                addr: addr.clone(),
                waited,
                console: vm.console_tail(CONSOLE_TAIL_LINES),
            });
        }
    };
    // A serial chardev accepts before the guest listens: the first answer proves the agent.
    let remaining = timeout.saturating_sub(start.elapsed()).max(Duration::from_secs(1));
    let health = conn.health();
    let request = CheckRequest::new();
    let check = health.check(context::with_duration(remaining), &request);
    tokio::select! {
        answer = check => answer.map_err(|source| SandboxError::Agent { call: "Health.Check", source })?,
        exit = exited.wait_for(Option::is_some) => {
            return Err(vm_gone(exit.ok().and_then(|e| e.clone()).unwrap_or_default()));
        }
    };
    Ok(conn)
}

/// Removes a sandbox state directory and everything in it: kills recorded processes, unmounts
/// whatever is mounted below it (deepest first), deletes the files. Nothing is followed out of
/// `dir`: unmounts and removal never follow a symlink, and removal never enters a mount point
/// that is still there (what the guest could have planted in its share stays harmless).
/// Harmless when `dir` does not exist. Only a directory this process or a dead one owns is touched ([`state`]); another
/// is left alone and said so. Returns what it did, for logs.
pub fn cleanup_dir(dir: &Path, log: &Logger) -> Vec<String> {
    let mut done = Vec::new();
    let _lock = match state::lock_for_removal(dir, &ProcFs) {
        Ok(Some(lock)) => lock,
        Ok(None) => return done,
        Err(err) => {
            let reason = crate::error_chain(&err);
            warn!(log, "state dir left alone"; "path" => %dir.display(), "reason" => &reason);
            done.push(format!("left {} alone: {reason}", dir.display()));
            return done;
        }
    };
    for killed in lifecycle::kill_recorded(dir) {
        done.push(format!("killed {killed}"));
    }
    done.extend(crate::share::unmount_all(dir, log));
    match crate::share::remove_tree(dir) {
        Ok(kept) if kept.is_empty() => done.push(format!("removed {}", dir.display())),
        Ok(kept) => warn!(log, "mount points left in the state dir, not entered"; "path" => %dir.display(),
                          "kept" => ?kept),
        Err(err) => warn!(log, "cannot remove state dir"; "path" => %dir.display(), "error" => %err),
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Processes;

    fn key(id: &str) -> SandboxKey {
        SandboxKey::containerd("default", id)
    }

    /// A fake QEMU: writes `console` to the file given by `-serial file:PATH`, then runs `then`.
    fn fake_qemu(dir: &Path, console: &str, then: &str) -> Config {
        let script = dir.join("fake-qemu");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in file:*) printf '{console}' > \"${{a#file:}}\";; esac; done\n{then}\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        for image in ["bzImage", "wisp.initrd"] {
            std::fs::write(dir.join(image), b"").unwrap();
        }
        let mut config = Config::default();
        let q = config.qemu_mut().unwrap();
        q.path = script;
        q.kernel = Some(dir.join("bzImage"));
        q.initrd = Some(dir.join("wisp.initrd"));
        q.accel = crate::config::AccelChoice::Tcg;
        q.shared_fs = crate::config::SharedFsKind::NineP;
        config.agent.channel = crate::config::ChannelKind::Serial;
        config.agent.dial_timeout = 1;
        config
    }

    #[tokio::test]
    async fn agent_timeout_quotes_the_console_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let config = fake_qemu(dir.path(), "booting\\nKernel panic - not syncing: no init\\n", "exec sleep 30");
        let root = dir.path().join("state");
        let log = Logger::root(slog::Discard, slog::o!());
        let start = Instant::now();
        let err = Sandbox::boot_in(&config, BootOn { root: &root, vms: &HostVms }, &key("sb1"), None, &[], &log)
            .await
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(10), "bounded by dial_timeout");
        let message = err.to_string();
        assert!(message.contains("did not answer on serial:"), "{message}");
        assert!(message.contains("Kernel panic - not syncing: no init"), "the console tail is quoted: {message}");
        assert!(!sandbox_dir(&root, &key("sb1")).exists(), "the state dir is removed");
    }

    #[tokio::test]
    async fn qemu_exiting_early_is_reported_at_once_with_the_console() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = fake_qemu(dir.path(), "early death\\n", "echo 'qemu: could not load kernel' >&2; exit 1");
        config.agent.dial_timeout = 30;
        let root = dir.path().join("state");
        let log = Logger::root(slog::Discard, slog::o!());
        let start = Instant::now();
        let err = Sandbox::boot_in(&config, BootOn { root: &root, vms: &HostVms }, &key("sb2"), None, &[], &log)
            .await
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5), "no wait for the dial timeout: {:?}", start.elapsed());
        let message = err.to_string();
        assert!(message.contains("QEMU exited"), "{message}");
        assert!(message.contains("could not load kernel"), "QEMU's last words: {message}");
        assert!(message.contains("early death"), "the console tail: {message}");
        assert!(!sandbox_dir(&root, &key("sb2")).exists(), "the state dir is removed");
    }

    #[tokio::test]
    async fn a_channel_silent_after_the_agent_said_ready_is_a_stall() {
        let dir = tempfile::tempdir().unwrap();
        let console = "Run /init\\nwisp-agent t=3.1 level=info msg=\"agent ready\" channel=vsock:1024\\n";
        let mut config = fake_qemu(dir.path(), console, "exec sleep 60");
        config.agent.dial_timeout = 30;
        let root = dir.path().join("state");
        let log = Logger::root(slog::Discard, slog::o!());
        let start = Instant::now();
        let err = Sandbox::boot_in(&config, BootOn { root: &root, vms: &HostVms }, &key("sb3"), None, &[], &log)
            .await
            .unwrap_err();
        assert!(matches!(err, SandboxError::AgentStalled { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10), "not the 30 s dial timeout: {:?}", start.elapsed());
        assert!(!sandbox_dir(&root, &key("sb3")).exists(), "the state dir is removed, ready for a second boot");
    }

    /// A running VM as far as [`wait_agent`] looks: a console, never an exit.
    #[derive(Debug)]
    struct Booted {
        console: String,
        exited: tokio::sync::watch::Sender<Option<String>>,
    }

    impl Booted {
        fn new(console: &str) -> Self {
            Self { console: console.to_owned(), exited: tokio::sync::watch::channel(None).0 }
        }
    }

    #[async_trait::async_trait]
    impl Hypervisor for Booted {
        fn capabilities(&self) -> crate::hypervisor::Capabilities {
            crate::hypervisor::stratovirt::CAPABILITIES
        }
        async fn start(&mut self) -> Result<AgentAddr, HypervisorError> {
            Err(HypervisorError::Unsupported("a stand-in".to_owned()))
        }
        fn pid(&self) -> Option<u32> {
            None
        }
        fn exited(&self) -> tokio::sync::watch::Receiver<Option<String>> {
            self.exited.subscribe()
        }
        fn console_tail(&self, _: usize) -> String {
            self.console.clone()
        }
        fn shared(&self) -> (PathBuf, SharedFs) {
            (PathBuf::from("/nonexistent"), SharedFs::NineP)
        }
        async fn stop(&mut self) {}
    }

    /// [`wait_agent`] on a hybrid vsock backend whose guest refuses `refused` CONNECTs, then
    /// holds every one unanswered; the console says `console`.
    async fn wait_on_stalling_backend(refused: usize, console: &str) -> (SandboxError, Duration) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("hvsock.sock");
        let _backend = crate::agent_dial::fake_backend::stalling(&sock, refused);
        let addr = AgentAddr::HybridVsock { path: sock, port: crate::agent_dial::AGENT_VSOCK_PORT };
        let start = Instant::now();
        let err = wait_agent(&Booted::new(console), &addr, Duration::from_secs(4)).await.unwrap_err();
        (err, start.elapsed())
    }

    #[tokio::test]
    async fn a_channel_silent_after_the_guest_refused_a_connect_is_a_stall_whatever_the_console() {
        let (err, took) = wait_on_stalling_backend(2, "Run /init\n{\"msg\":\"some other agent\"}\n").await;
        assert!(matches!(err, SandboxError::AgentStalled { .. }), "{err}");
        assert!(took < Duration::from_secs(3), "one stall window, not the dial timeout: {took:?}");
        assert!(err.to_string().contains("a stalled channel"), "{err}");
    }

    #[tokio::test]
    async fn a_channel_that_never_answered_is_a_vm_starting_unless_the_console_says_it_listens() {
        let (err, took) = wait_on_stalling_backend(0, "Run /init\n").await;
        assert!(matches!(err, SandboxError::AgentTimeout { .. }), "no answer, no hint, no stall: {err}");
        assert!(took >= Duration::from_secs(4), "{took:?}");
        // Kata's agent's line is a hint as good as ours.
        let kata = r#"{"msg":"ttRPC server started","level":"INFO","address":"vsock://-1:1024"}"#;
        let (err, took) = wait_on_stalling_backend(0, kata).await;
        assert!(matches!(err, SandboxError::AgentStalled { .. }), "{err}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[test]
    fn a_stall_counts_from_the_last_sign_of_the_guest() {
        let long_ago = Instant::now().checked_sub(STALL_AFTER_READY * 2);
        let just_now = Some(Instant::now());
        assert_eq!(stalled_for(None, None), None, "no sign of the guest yet");
        assert!(stalled_for(long_ago, None).is_some());
        assert!(stalled_for(None, long_ago).is_some());
        assert_eq!(stalled_for(long_ago, just_now), None, "a later hint restarts the window");
        assert_eq!(stalled_for(just_now, long_ago), None, "a later refusal too: the agent is not up yet");
    }

    #[test]
    fn cleanup_of_a_missing_dir_is_harmless() {
        let log = Logger::root(slog::Discard, slog::o!());
        let dir = tempfile::tempdir().unwrap();
        let gone = sandbox_dir(dir.path(), &key("c1"));
        assert!(cleanup_dir(&gone, &log).is_empty());
        let claimed = state::claim(dir.path(), &key("c1"), &ProcFs, |_| {}).unwrap();
        assert_eq!(claimed, gone);
        std::fs::write(gone.join("qemu.pid"), "999999999").unwrap();
        let done = cleanup_dir(&gone, &log);
        assert_eq!(done, [format!("removed {}", gone.display())]);
        assert!(!gone.exists());
        assert!(cleanup_dir(&gone, &log).is_empty(), "a second cleanup does nothing");
    }

    #[test]
    fn cleanup_leaves_a_live_owners_directory_alone() {
        let log = Logger::root(slog::Discard, slog::o!());
        let root = tempfile::tempdir().unwrap();
        // Another live process (our parent, the test runner's shell or init) owns it.
        let parent = nix::unistd::getppid().as_raw().unsigned_abs();
        let owner = state::Owner {
            key: key("theirs"),
            pid: parent,
            start_time: ProcFs.start_time(parent).unwrap(),
            boot_id: ProcFs.boot_id(),
        };
        let dir = sandbox_dir(root.path(), &key("theirs"));
        std::fs::create_dir_all(dir.join("shared")).unwrap();
        std::fs::write(dir.join(state::OWNER_FILE), serde_json::to_vec(&owner).unwrap()).unwrap();
        std::fs::write(dir.join("qemu.pid"), parent.to_string()).unwrap();
        let done = cleanup_dir(&dir, &log);
        assert_eq!(done.len(), 1, "{done:?}");
        assert!(done[0].contains("belongs to the live shim pid"), "{done:?}");
        assert!(dir.join("shared").exists() && dir.join("qemu.pid").exists(), "nothing removed");
        // Not even with no directory of a dead owner in the way: an unowned one stays too.
        std::fs::remove_file(dir.join(state::OWNER_FILE)).unwrap();
        assert!(cleanup_dir(&dir, &log)[0].contains("without a usable ownership record"));
        assert!(dir.join("shared").exists());
    }
}
