//! The sandbox of the task service: booted by the first Create, watched until QEMU exits (every
//! process still running then gets [`VM_DIED_STATUS`]), its OOM events relayed, its side API
//! ([`super::side_api`]) served on `api.sock`.

use std::sync::Arc;

use slog::warn;

use super::{Inner, Proc, VM_DIED_STATUS};
use crate::api as side;
use crate::error::Error;
use crate::hypervisor::BlockSource;
use crate::pod::PodSpec;
use crate::sandbox::{Sandbox, SandboxError};
use crate::state::SandboxKey;

impl Inner {
    /// The running sandbox, booting it on first use: sized as `pod` asks, with shared guest
    /// memory if `shared_memory` (a vhost-user disk will be plugged), `boot_disks` attached
    /// at boot (microvm: they are the booting container's disks).
    pub(super) async fn sandbox(
        self: &Arc<Self>,
        pod: &PodSpec,
        shared_memory: bool,
        boot_disks: &[(String, BlockSource)],
    ) -> Result<Arc<Sandbox>, Error> {
        let mut slot = self.sandbox.lock().await;
        if let Some(sandbox) = slot.as_ref() {
            if sandbox.exited().borrow().is_some() {
                return Err(Error::NotRunning { what: "Create", sandbox: self.sandbox_id.clone() });
            }
            return Ok(sandbox.clone());
        }
        let mut config = pod.vm_config(&self.config);
        if shared_memory {
            config.hypervisor.share_guest_memory();
        }
        let netns = pod.netns.as_deref();
        let key = SandboxKey::containerd(&self.namespace, &self.sandbox_id);
        let mut booted = Sandbox::boot(&config, &key, netns, boot_disks, &self.log).await;
        if let Err(err @ SandboxError::AgentStalled { .. }) = &booted {
            // The first VM and its helpers are gone already; a fresh one gets a fresh channel.
            warn!(self.log, "the agent channel stalled; booting the VM once more"; "error" => %err);
            booted = Sandbox::boot(&config, &key, netns, boot_disks, &self.log).await;
        }
        let sandbox =
            Arc::new(booted.map_err(|source| Error::Boot { id: self.sandbox_id.clone(), source: Box::new(source) })?);
        *slot = Some(sandbox.clone());
        self.watch(&sandbox);
        Ok(sandbox)
    }

    /// Starts the watchers of a booted sandbox: its exit, its OOM events, its side API.
    fn watch(self: &Arc<Self>, sandbox: &Arc<Sandbox>) {
        let (me, watched) = (self.clone(), sandbox.clone());
        tokio::spawn(async move { me.watch_vm(watched).await });
        let (me, watched) = (self.clone(), sandbox.clone());
        tokio::spawn(async move { super::oom::relay(&watched.agent().agent(), watched.exited(), &*me, &me.log).await });
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
}
