//! [`StratoVirt`]: one StratoVirt VM: spawn, watch, hot-plug block devices over QMP, stop
//! (QMP `quit`, then SIGKILL).
//!
//! The agent is reached over AF_VSOCK (StratoVirt has no vhost-user-vsock and no
//! virtio-serial agent port): [`Hypervisor::start`] claims a context id on the host's
//! `/dev/vhost-vsock` first and hands the descriptor to StratoVirt (`vhostfd=`), so a host
//! without vhost_vsock fails before anything is spawned.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use slog::{info, Logger};
use tokio::sync::watch;

use super::cmdline::{self, BlockDevice};
use super::StratoVirtSpec;
use crate::agent_dial::AgentAddr;
use crate::agent_dial::AGENT_VSOCK_PORT;
use crate::hypervisor::cgroup::{self, SandboxCgroup};
use crate::hypervisor::confine::Confinement;
use crate::hypervisor::console::{ConsoleDrain, CONSOLE_SETTLE};
use crate::hypervisor::process::{self, Launch};
use crate::hypervisor::qemu::cmdline::shell_line;
use crate::hypervisor::qmp::Qmp;
use crate::hypervisor::vhost_vsock::{GuestCid, DEVICE as VHOST_VSOCK_DEVICE};
use crate::hypervisor::{tail, Capabilities, Hypervisor, HypervisorError, SharedFs, VmPaths};

/// How long QMP `quit` (and the exit after it) may take before StratoVirt is killed.
const QUIT_TIMEOUT: Duration = Duration::from_secs(1);
/// The name of StratoVirt's log and pid file in the VM directory.
const NAME: &str = "stratovirt";

/// A StratoVirt VM.
#[derive(Debug)]
pub struct StratoVirt {
    spec: StratoVirtSpec,
    paths: VmPaths,
    blocks: Vec<BlockDevice>,
    log: Logger,
    /// The vsock context id, held until the VM is stopped.
    guest_cid: Option<GuestCid>,
    pid: Option<u32>,
    exited_tx: watch::Sender<Option<String>>,
    exited_rx: watch::Receiver<Option<String>>,
    /// The sandbox cgroup, once started.
    cgroup: Option<SandboxCgroup>,
    /// Copies the guest console into its bounded log while StratoVirt runs.
    console: Option<ConsoleDrain>,
}

impl StratoVirt {
    /// A VM described by `spec`, `blocks` attached at boot, files in `paths`.
    pub fn new(spec: StratoVirtSpec, paths: VmPaths, blocks: Vec<BlockDevice>, log: Logger) -> Self {
        let (exited_tx, exited_rx) = watch::channel(None);
        Self { spec, paths, blocks, log, guest_cid: None, pid: None, exited_tx, exited_rx, cgroup: None, console: None }
    }

    /// The full argv, for logs and `wisp check`.
    pub fn command_line(&self) -> String {
        shell_line(
            &self.spec.binary.to_string_lossy(),
            &cmdline::stratovirt_args(&self.spec, &self.paths, &self.blocks),
        )
    }

    /// A fresh QMP session.
    pub async fn qmp(&self) -> Result<Qmp, HypervisorError> {
        Ok(Qmp::connect(&self.paths.qmp_socket()).await?)
    }

    /// Hot-plugs `path` as block device `id` (`blockdev-add`, `device_add`) into the
    /// virtio-mmio slot or onto the root port `slot_or_bus`.
    pub async fn hotplug_block(
        &self,
        id: &str,
        path: &Path,
        readonly: bool,
        slot_or_bus: &str,
    ) -> Result<(), HypervisorError> {
        let [blockdev, device] = cmdline::hotplug_block(&self.spec, id, path, readonly, slot_or_bus);
        let mut qmp = self.qmp().await?;
        qmp.execute("blockdev-add", Some(blockdev)).await?;
        qmp.execute("device_add", Some(device)).await?;
        info!(self.log, "block device hot-plugged"; "id" => id, "path" => %path.display());
        Ok(())
    }

    /// Unplugs block device `id` (`device_del`, whose `DEVICE_DELETED` event StratoVirt sends
    /// before the return, then `blockdev-del`).
    pub async fn unplug_block(&self, id: &str) -> Result<(), HypervisorError> {
        let mut qmp = self.qmp().await?;
        qmp.execute("device_del", Some(serde_json::json!({ "id": id }))).await?;
        qmp.execute("blockdev-del", Some(serde_json::json!({ "node-name": id }))).await?;
        Ok(())
    }

    /// Claims the guest's context id (from the derived one on) for StratoVirt to inherit;
    /// the agent then answers on AF_VSOCK `cid`:1024.
    fn claim_cid(&mut self) -> Result<AgentAddr, HypervisorError> {
        let claimed = GuestCid::claim(Path::new(VHOST_VSOCK_DEVICE), self.spec.guest_cid).map_err(|err| {
            HypervisorError::Unsupported(format!(
                "StratoVirt reaches the agent over vhost-vsock only: {err}; \
                 [hypervisor.qemu] (machine_type = \"microvm\") runs the same virtio-mmio guest without it"
            ))
        })?;
        info!(self.log, "claimed a vsock context id"; "cid" => claimed.cid());
        self.spec.guest_cid = claimed.cid();
        self.spec.vhost_fd = Some(claimed.fd());
        self.guest_cid = Some(claimed);
        Ok(AgentAddr::Vsock { cid: self.spec.guest_cid, port: AGENT_VSOCK_PORT })
    }

    fn check_inputs(&self) -> Result<(), HypervisorError> {
        for path in [&self.spec.kernel, &self.spec.initrd] {
            if !path.is_file() {
                return Err(HypervisorError::Io {
                    what: "missing guest image (set hypervisor.stratovirt.kernel/initrd)",
                    path: path.clone(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
        }
        Ok(())
    }

    async fn spawn(&mut self) -> Result<(), HypervisorError> {
        let confine_err = |err: &dyn std::error::Error| HypervisorError::Confine(crate::error_chain(err));
        let dir = self.paths.dir();
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let path = cgroup::sandbox_path(self.spec.cgroups_path.as_deref(), &name);
        let created = SandboxCgroup::create(&path, dir).map_err(|err| confine_err(&err))?;
        let confinement =
            Confinement { cgroup_procs: created.procs_files().map_err(|err| confine_err(&err))?, ..Default::default() };
        self.cgroup = Some(created);
        let args = cmdline::stratovirt_args(&self.spec, &self.paths, &self.blocks);
        self.console = Some(ConsoleDrain::start(&self.paths, &self.log).map_err(|source| HypervisorError::Io {
            what: "cannot drain the guest console into",
            path: self.paths.console(),
            source,
        })?);
        let inherit: Vec<i32> = self.spec.vhost_fd.into_iter().collect();
        let launch = Launch {
            name: NAME,
            program: &self.spec.binary,
            args: &args,
            env: &[("STRATOVIRT_LOG_LEVEL", "info")],
            inherit: &inherit,
        };
        let child = process::spawn(&self.paths, &self.log, launch, confinement)?;
        self.pid = child.id();
        process::watch_exit(child, "StratoVirt", self.paths.helper_log(NAME), self.exited_tx.clone());
        Ok(())
    }
}

#[async_trait]
impl Hypervisor for StratoVirt {
    fn capabilities(&self) -> Capabilities {
        super::CAPABILITIES
    }

    async fn start(&mut self) -> Result<AgentAddr, HypervisorError> {
        self.check_inputs()?;
        let addr = self.claim_cid()?;
        self.spawn().await?;
        Ok(addr)
    }

    fn pid(&self) -> Option<u32> {
        self.pid.filter(|_| self.exited_rx.borrow().is_none())
    }

    fn exited(&self) -> watch::Receiver<Option<String>> {
        self.exited_rx.clone()
    }

    fn console_tail(&self, lines: usize) -> String {
        // Once StratoVirt is gone, what it wrote last may still be in the FIFO: let the drain end.
        if let Some(console) = self.console.as_ref().filter(|_| self.exited_rx.borrow().is_some()) {
            console.wait_ended(CONSOLE_SETTLE);
        }
        tail(&self.paths.console(), lines)
    }

    fn shared(&self) -> (PathBuf, SharedFs) {
        (self.paths.shared_dir(), self.spec.shared_fs.unwrap_or(SharedFs::VirtioFs))
    }

    async fn stop(&mut self) {
        if self.pid().is_some() {
            let quit = async { self.qmp().await?.quit().await.map_err(HypervisorError::from) };
            if let Ok(Ok(())) = tokio::time::timeout(QUIT_TIMEOUT, quit).await {
                let mut exited = self.exited_rx.clone();
                let _ = tokio::time::timeout(QUIT_TIMEOUT, exited.wait_for(Option::is_some)).await;
            }
        }
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)), Signal::SIGKILL);
            let mut exited = self.exited_rx.clone();
            let _ = tokio::time::timeout(QUIT_TIMEOUT * 2, exited.wait_for(Option::is_some)).await;
        }
        let _ = fs::remove_file(self.paths.dir().join(format!("{NAME}.pid")));
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.remove();
            let _ = fs::remove_file(self.paths.dir().join("cgroup"));
        }
        self.console.take();
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    use super::*;
    use crate::config::StratoVirtSection;

    /// StratoVirt's greeting, verbatim from its docs/qmp.md.
    const GREETING: &str =
        r#"{"QMP":{"version":{"StratoVirt":{"micro":1,"minor":0,"major":0},"package":""},"capabilities":[]}}"#;

    /// A fake StratoVirt QMP peer: greets as docs/qmp.md shows, answers each request with the
    /// documented reply lines (events where StratoVirt sends them), records the requests.
    async fn fake_stratovirt(listener: UnixListener, script: Vec<Vec<&'static str>>) -> Vec<Value> {
        let mut seen = Vec::new();
        let mut script = script.into_iter();
        // One connection per QMP session the client opens.
        while let Ok((stream, _)) = listener.accept().await {
            let (read, mut write) = stream.into_split();
            let mut reader = BufReader::new(read);
            write.write_all(format!("{GREETING}\n").as_bytes()).await.unwrap();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).await.unwrap() == 0 {
                    break;
                }
                seen.push(serde_json::from_str::<Value>(&line).unwrap());
                let Some(replies) = script.next() else { return seen };
                for reply in replies {
                    write.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
                }
            }
            if script.len() == 0 {
                return seen;
            }
        }
        seen
    }

    fn vm(dir: &Path) -> StratoVirt {
        let spec = StratoVirtSpec::resolve(&StratoVirtSection::default(), dir, false);
        StratoVirt::new(spec, VmPaths::new(dir), Vec::new(), Logger::root(slog::Discard, slog::o!()))
    }

    #[tokio::test]
    async fn hotplug_and_unplug_dialogue_as_qmp_md_documents_it() {
        let dir = tempfile::tempdir().unwrap();
        let vm = vm(dir.path());
        let listener = UnixListener::bind(VmPaths::new(dir.path()).qmp_socket()).unwrap();
        let ok = r#"{"return":{}}"#;
        let server = tokio::spawn(fake_stratovirt(
            listener,
            vec![
                vec![ok],
                vec![ok],
                vec![ok],
                vec![ok],
                vec![
                    r#"{"event":"DEVICE_DELETED","data":{"device":"drive-0","path":"drive-0"},"timestamp":{"seconds":1614310541,"microseconds":554250}}"#,
                    ok,
                ],
                vec![ok],
            ],
        ));
        vm.hotplug_block("drive-0", Path::new("/dev/mapper/c1"), false, "0x0").await.unwrap();
        vm.unplug_block("drive-0").await.unwrap();
        let seen = server.await.unwrap();
        assert_eq!(seen[0], json!({"execute": "qmp_capabilities"}));
        assert_eq!(seen[1]["execute"], "blockdev-add");
        assert_eq!(seen[1]["arguments"]["node-name"], "drive-0");
        assert_eq!(
            seen[2],
            json!({"execute": "device_add", "arguments": {"id": "drive-0", "driver": "virtio-blk-mmio", "addr": "0x0"}})
        );
        assert_eq!(seen[3], json!({"execute": "qmp_capabilities"}), "a new session per operation");
        assert_eq!(seen[4], json!({"execute": "device_del", "arguments": {"id": "drive-0"}}));
        assert_eq!(seen[5], json!({"execute": "blockdev-del", "arguments": {"node-name": "drive-0"}}));
    }

    #[tokio::test]
    async fn errors_and_quit_with_its_shutdown_event() {
        let dir = tempfile::tempdir().unwrap();
        let vm = vm(dir.path());
        let listener = UnixListener::bind(VmPaths::new(dir.path()).qmp_socket()).unwrap();
        let server = tokio::spawn(fake_stratovirt(
            listener,
            vec![
                vec![r#"{"return":{}}"#],
                vec![r#"{ "return": { "running": true,"singlestep": false,"status": "running" } }"#],
                vec![r#"{"error":{"class":"GenericError","desc":"Failed to add device: duplicate id"}}"#],
                vec![
                    r#"{"return":{}}"#,
                    r#"{"event":"SHUTDOWN","data":{"guest":false,"reason":"host-qmp-quit"},"timestamp":{"ds":1590563776,"microseconds":519808}}"#,
                ],
            ],
        ));
        let mut qmp = vm.qmp().await.unwrap();
        assert_eq!(qmp.execute("query-status", None).await.unwrap()["status"], "running");
        let err = qmp.execute("device_add", Some(json!({"id": "x"}))).await.unwrap_err();
        assert_eq!(err.to_string(), "QMP device_add failed: GenericError: Failed to add device: duplicate id");
        qmp.quit().await.unwrap();
        drop(qmp);
        let seen = server.await.unwrap();
        assert_eq!(seen.last().unwrap(), &json!({"execute": "quit"}));
    }

    #[tokio::test]
    async fn start_without_vhost_vsock_refuses_before_spawning() {
        if Path::new(VHOST_VSOCK_DEVICE).exists() {
            return; // the claim would succeed here; the refusal is for hosts without vhost_vsock
        }
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        let initrd = dir.path().join("wisp.initrd");
        fs::write(&kernel, b"k").unwrap();
        fs::write(&initrd, b"i").unwrap();
        let section = StratoVirtSection {
            path: dir.path().join("no-such-stratovirt"),
            kernel: Some(kernel),
            initrd: Some(initrd),
            ..StratoVirtSection::default()
        };
        let spec = StratoVirtSpec::resolve(&section, dir.path(), false);
        let mut vm =
            StratoVirt::new(spec, VmPaths::new(dir.path()), Vec::new(), Logger::root(slog::Discard, slog::o!()));
        let err = vm.start().await.unwrap_err();
        assert!(err.to_string().contains("vhost-vsock only") && err.to_string().contains(VHOST_VSOCK_DEVICE), "{err}");
        assert_eq!(vm.pid(), None, "nothing was spawned");
        vm.stop().await;
        assert!(vm.command_line().contains("vhost-vsock-device,id=vsock-0,guest-cid="));
    }
}
