//! An in-process [`Hypervisor`] for the sandbox core's unit tests: no VMM, no guest. Its
//! [`Hypervisor::start`] serves a fake agent (Kata's `grpc.AgentService` and `grpc.Health`)
//! on a unix socket in the state directory and hands back that address, so
//! [`crate::sandbox::Sandbox::boot_in`] dials it as it would a guest. It fails where a test
//! says ([`FailAt`]), and every VM and agent call lands in one [`Journal`], in order, so a
//! test can assert what was undone.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use protocols::agent::{CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest};
use protocols::agent_ttrpc::{create_agent_service, AgentService};
use protocols::empty::Empty;
use protocols::health::health_check_response::ServingStatus;
use protocols::health::{CheckRequest, HealthCheckResponse};
use protocols::health_ttrpc::{create_health, Health};
use protocols::ttrpc::asynchronous::{Server, TtrpcContext};
use protocols::ttrpc::{self, Code};
use slog::Logger;
use tokio::sync::watch;

use super::factory::{ResolvedVm, VmFactory};
use super::qemu::config::TapNic;
use super::{BlockSource, Capabilities, Hypervisor, HypervisorError, Plugged, SharedFs, VmPaths};
use crate::agent_dial::AgentAddr;
use crate::config::Config;

/// Where the fake fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailAt {
    /// Nowhere.
    #[default]
    Nothing,
    /// `start` returns an error (the VMM did not start).
    Start,
    /// `start` succeeds, but no agent ever listens on the address it returns.
    AgentSilent,
    /// The agent refuses CreateSandbox.
    CreateSandbox,
    /// The agent refuses CreateContainer.
    CreateContainer,
    /// The VM refuses the `n`th hot-plug (1-based).
    HotPlug(usize),
}

/// What happened, in order: `start`, `stop`, `plug ID`, `unplug ID`, and the agent calls by
/// name (`CreateSandbox`, ...).
#[derive(Debug, Clone, Default)]
pub struct Journal(Arc<Mutex<Vec<String>>>);

impl Journal {
    fn push(&self, entry: impl Into<String>) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(entry.into());
    }

    /// The entries so far.
    pub fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The factory of fake VMs; each one shares [`FakeVms::journal`].
#[derive(Debug, Clone, Default)]
pub struct FakeVms {
    /// Where its VMs fail.
    pub fail: FailAt,
    /// What they did.
    pub journal: Journal,
}

impl FakeVms {
    /// VMs that fail at `fail`.
    pub fn failing_at(fail: FailAt) -> Self {
        Self { fail, journal: Journal::default() }
    }
}

#[async_trait]
impl VmFactory for FakeVms {
    async fn resolve(&self, _: &Config, _: &std::path::Path) -> Result<Box<dyn ResolvedVm>, HypervisorError> {
        Ok(Box::new(self.clone()))
    }
}

impl ResolvedVm for FakeVms {
    fn describe(&self) -> String {
        format!("fake, failing at {:?}", self.fail)
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn attach_tap(&mut self, _: Option<TapNic>) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported("the fake takes no pod network".to_owned()))
    }

    fn build(self: Box<Self>, paths: &VmPaths, _: &Logger) -> Box<dyn Hypervisor> {
        Box::new(FakeVm {
            paths: paths.clone(),
            fail: self.fail,
            journal: self.journal.clone(),
            server: Mutex::new(None),
            exited: watch::channel(None).0,
            plugs: 0,
        })
    }
}

/// A PCI machine's: it hot-plugs.
const CAPABILITIES: Capabilities = Capabilities { hot_plug_block: true, boot_disks: false, pod_network: false };

/// One fake VM.
pub struct FakeVm {
    paths: VmPaths,
    fail: FailAt,
    journal: Journal,
    /// The agent's server (a mutex: a ttrpc server is not `Sync`, a hypervisor is).
    server: Mutex<Option<Server>>,
    exited: watch::Sender<Option<String>>,
    plugs: usize,
}

impl std::fmt::Debug for FakeVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeVm").field("fail", &self.fail).field("plugs", &self.plugs).finish()
    }
}

#[async_trait]
impl Hypervisor for FakeVm {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    async fn start(&mut self) -> Result<AgentAddr, HypervisorError> {
        self.journal.push("start");
        if self.fail == FailAt::Start {
            return Err(HypervisorError::Unsupported("the fake VMM refuses to start".to_owned()));
        }
        let sock = self.paths.dir().join("fake-agent.sock");
        if self.fail != FailAt::AgentSilent {
            let agent = Arc::new(FakeAgent { fail: self.fail, journal: self.journal.clone() });
            let serve = |err: ttrpc::Error| HypervisorError::Unsupported(format!("the fake agent: {err}"));
            let mut server = Server::new()
                .bind(&format!("unix://{}", sock.display()))
                .map_err(serve)?
                .register_service(create_agent_service(agent.clone()))
                .register_service(create_health(agent));
            server.start().await.map_err(serve)?;
            *self.server.get_mut().unwrap_or_else(PoisonError::into_inner) = Some(server);
        }
        Ok(AgentAddr::Unix { path: sock })
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    fn exited(&self) -> watch::Receiver<Option<String>> {
        self.exited.subscribe()
    }

    fn console_tail(&self, _: usize) -> String {
        "the fake VM has no console".to_owned()
    }

    fn shared(&self) -> (PathBuf, SharedFs) {
        (self.paths.shared_dir(), SharedFs::NineP)
    }

    async fn stop(&mut self) {
        self.journal.push("stop");
        if let Some(mut server) = self.server.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = server.shutdown().await;
        }
        self.exited.send_replace(Some("the fake VM stopped".to_owned()));
    }

    async fn hot_plug(&mut self, id: &str, _: &BlockSource) -> Result<Plugged, HypervisorError> {
        self.journal.push(format!("plug {id}"));
        self.plugs += 1;
        if self.fail == FailAt::HotPlug(self.plugs) {
            return Err(HypervisorError::Unsupported(format!("the fake VM refuses to plug {id}")));
        }
        Ok(Plugged { id: id.to_owned(), pci_path: format!("02/{:02}", self.plugs) })
    }

    async fn hot_unplug(&mut self, id: &str) -> Result<(), HypervisorError> {
        self.journal.push(format!("unplug {id}"));
        Ok(())
    }
}

/// The agent of a fake VM: healthy, and refusing what [`FailAt`] says.
struct FakeAgent {
    fail: FailAt,
    journal: Journal,
}

impl FakeAgent {
    /// Records `call`; refuses it if the fake fails at `refuse_at`.
    fn answer(&self, call: &str, refuse_at: Option<FailAt>) -> ttrpc::Result<Empty> {
        self.journal.push(call);
        if refuse_at == Some(self.fail) {
            return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(Code::INTERNAL, format!("the fake refuses {call}"))));
        }
        Ok(Empty::new())
    }
}

#[async_trait]
impl AgentService for FakeAgent {
    async fn create_sandbox(&self, _: &TtrpcContext, _: CreateSandboxRequest) -> ttrpc::Result<Empty> {
        self.answer("CreateSandbox", Some(FailAt::CreateSandbox))
    }

    async fn destroy_sandbox(&self, _: &TtrpcContext, _: DestroySandboxRequest) -> ttrpc::Result<Empty> {
        self.answer("DestroySandbox", None)
    }

    async fn create_container(&self, _: &TtrpcContext, _: CreateContainerRequest) -> ttrpc::Result<Empty> {
        self.answer("CreateContainer", Some(FailAt::CreateContainer))
    }
}

#[async_trait]
impl Health for FakeAgent {
    async fn check(&self, _: &TtrpcContext, _: CheckRequest) -> ttrpc::Result<HealthCheckResponse> {
        let mut resp = HealthCheckResponse::new();
        resp.set_status(ServingStatus::SERVING);
        Ok(resp)
    }
}
