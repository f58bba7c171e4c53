//! [`Setup`]: a private containerd that runs our shim, with the shim's own state directory and
//! configuration, for the tests that drive `containerd-shim-wisp-v2` through `ctr`
//! (`tests/shim_ctr.rs` on q35/pc, `tests/microvm_ctr.rs` on QEMU microvm).
//!
//! Shared so every machine type is tested through the same harness: the configuration file,
//! the bundle builder and the leftover scan (processes, mounts, state) are one code path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Context};
use tempfile::TempDir;

use crate::containerd::ContainerdOptions;
use crate::{artifacts, leftovers, Containerd};

/// The runtime name containerd resolves to `containerd-shim-wisp-v2`.
pub const RUNTIME: &str = "io.containerd.wisp.v2";

pub use crate::containerd::{describe, s, text};

/// The shim binary: `WISP_SHIM`, else the release build, else the debug build.
pub fn shim_binary() -> anyhow::Result<PathBuf> {
    host_binary("containerd-shim-wisp-v2", "WISP_SHIM")
}

/// The `wisp` CLI that came with the shim (its sibling).
pub fn wisp_binary() -> anyhow::Result<PathBuf> {
    Ok(shim_binary()?.with_file_name("wisp"))
}

/// The `wisp-runtime` binary: `WISP_RUNTIME`, else the release build, else the debug build.
pub fn runtime_binary() -> anyhow::Result<PathBuf> {
    host_binary("wisp-runtime", "WISP_RUNTIME")
}

/// Host binary `name`: the path in `var`, else the release build, else the debug build.
fn host_binary(name: &str, var: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let target = artifacts::target_dir();
    ["release", "debug"].iter().map(|profile| target.join(profile).join(name)).find(|p| p.is_file()).with_context(
        || format!("{name} not found in {}/{{release,debug}}: run `make tools` (or set {var})", target.display()),
    )
}

/// Writes the shim's and the runtime's configuration into `dir` (`kernel`, our initrd, the
/// extra lines for `[hypervisor.qemu]` and `[agent.wisp]`) and points `WISP_CONFIG` at it and
/// `WISP_STATE_DIR` at `dir/state`, for every process started from here on (containerd and
/// dockerd pass their environment down to shims and runtimes).
pub fn configure(dir: &Path, kernel: &Path, qemu: &str, agent: &str) -> anyhow::Result<PathBuf> {
    let config = dir.join("configuration.toml");
    std::fs::write(
        &config,
        format!(
            "[hypervisor.qemu]\nkernel = \"{}\"\ninitrd = \"{}\"\n{qemu}\n\n[agent.wisp]\ndial_timeout = 90\n{agent}\n",
            kernel.display(),
            artifacts::initrd()?.display()
        ),
    )?;
    std::env::set_var("WISP_STATE_DIR", dir.join("state"));
    std::env::set_var("WISP_CONFIG", &config);
    Ok(config)
}

/// A private containerd that finds our shim, with the shim's state and config in `dir`.
#[derive(Debug)]
pub struct Setup {
    /// The private containerd (declared first: dropped first, so its shims have stopped and
    /// unmounted before the directory they work in is removed).
    pub ctd: Containerd,
    /// The test's directory (state, configuration, bundles).
    pub dir: TempDir,
}

impl Setup {
    /// The default configuration (q35, our bzImage and initrd).
    pub fn new() -> anyhow::Result<Self> {
        Self::with_config("", "")
    }

    /// Extra lines for `[hypervisor.qemu]` and `[agent.wisp]`, booting our bzImage.
    pub fn with_config(qemu: &str, agent: &str) -> anyhow::Result<Self> {
        Self::with_kernel(&artifacts::kernel()?, qemu, agent)
    }

    /// Like [`Setup::with_config`] with another guest kernel (the PVH `vmlinux` for microvm).
    pub fn with_kernel(kernel: &Path, qemu: &str, agent: &str) -> anyhow::Result<Self> {
        Self::with_containerd(kernel, qemu, agent, ContainerdOptions::default())
    }

    /// Like [`Setup::with_kernel`], with containerd started from `options` (a proxy
    /// snapshotter, ...); the shim's directory is put on its `PATH` either way.
    pub fn with_containerd(
        kernel: &Path,
        qemu: &str,
        agent: &str,
        mut options: ContainerdOptions,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("wisp-shim-").tempdir()?;
        let shim = shim_binary()?;
        configure(dir.path(), kernel, qemu, agent)?;
        let shim_dir = shim.parent().context("shim path has no directory")?.to_owned();
        options.shim_dirs.push(shim_dir);
        let ctd = Containerd::start_with(options)?;
        Ok(Self { dir, ctd })
    }

    /// The last `lines` lines of containerd's log, where the shim's log lines land: for
    /// failure messages of waits that timed out.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.ctd.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Polls until task `id` is STOPPED; fails after `within` with the log's tail.
    pub fn wait_stopped(&self, id: &str, within: Duration) -> anyhow::Result<Duration> {
        let start = std::time::Instant::now();
        loop {
            let status = self.task_status(id)?;
            if status == "STOPPED" {
                return Ok(start.elapsed());
            }
            ensure!(
                start.elapsed() < within,
                "{id} is {status:?}, not STOPPED, after {} s; the log:\n{}",
                within.as_secs(),
                self.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The shim's state root (`WISP_STATE_DIR`).
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A busybox bundle running `args`.
    pub fn bundle(&self, name: &str, args: &[&str]) -> anyhow::Result<PathBuf> {
        let bundle = self.dir.path().join(name);
        let builder = artifacts::rootfs_builder()?;
        let mut cmd = Command::new(&builder);
        cmd.args(["bundle", "--from", "busybox", "-o", s(&bundle), "--args"]).args(args);
        let out = cmd.output()?;
        ensure!(out.status.success(), "{} bundle failed (run `make tools`?):\n{}", builder.display(), describe(&out));
        Ok(bundle.join("config.json"))
    }

    /// A busybox OCI image made by rootfs-builder and imported as `docker.io/library/wisp-bb:<tag>`;
    /// its name.
    pub fn import_busybox(&self, tag: &str) -> anyhow::Result<String> {
        let image = self.dir.path().join(format!("image-{tag}.tar"));
        let name = format!("wisp-bb:{tag}");
        let out = Command::new(artifacts::rootfs_builder()?)
            .args(["oci-image", "--from", "busybox", "--name", &name, "-o", crate::containerd::s(&image)])
            .output()?;
        ensure!(out.status.success(), "rootfs-builder oci-image: {}", describe(&out));
        let out = self.ctr(&["images", "import", crate::containerd::s(&image)])?;
        ensure!(out.status.success(), "ctr images import: {}", describe(&out));
        Ok(format!("docker.io/library/{name}"))
    }

    /// Runs `ctr` against this containerd.
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.ctd.ctr(args)?)
    }

    /// Everything of the sandboxes still on the host (see [`leftovers::under_state_root`]).
    pub fn leftovers(&self) -> Vec<String> {
        leftovers::under_state_root(&self.state())
    }

    /// Polls [`Setup::leftovers`] until nothing is left or `within` passed; what is left.
    pub fn wait_no_leftovers(&self, within: Duration) -> Vec<String> {
        leftovers::wait_until_empty(within, || self.leftovers())
    }

    /// The `ctr t ls` STATUS of task `id`.
    pub fn task_status(&self, id: &str) -> anyhow::Result<String> {
        Ok(status_in_listing(&self.ctr(&["tasks", "ls"])?, id))
    }

    /// Kills a detached task, deletes it and its container, and checks nothing of the sandbox
    /// remains.
    pub fn kill_and_delete(&self, id: &str) -> anyhow::Result<()> {
        let out = self.ctr(&["tasks", "kill", "-s", "KILL", id])?;
        ensure!(out.status.success(), "ctr t kill: {}", describe(&out));
        let start = std::time::Instant::now();
        while self.task_status(id)? != "STOPPED" {
            ensure!(start.elapsed() < Duration::from_secs(10), "{id} not STOPPED 10 s after SIGKILL");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.ctr(&["tasks", "delete", id])?;
        self.ctr(&["containers", "delete", id])?;
        let left = self.wait_no_leftovers(Duration::from_secs(5));
        ensure!(left.is_empty(), "after delete nothing of the sandbox remains: {left:#?}");
        Ok(())
    }

    /// The wisp shim daemons serving this containerd (not their QEMU and helpers).
    pub fn shims(&self) -> Vec<u32> {
        self.ctd
            .shim_processes()
            .into_iter()
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                text(&cmdline).contains("containerd-shim-wisp-v2")
            })
            .collect()
    }

    /// The pid of the QEMU serving this test's sandbox.
    pub fn qemu_pid(&self) -> Option<u32> {
        self.qemu_pids().into_iter().next()
    }

    /// The pids of the QEMUs serving this test's sandboxes.
    pub fn qemu_pids(&self) -> Vec<u32> {
        let needle = self.state().to_string_lossy().into_owned();
        let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
        procs
            .filter_map(|entry| {
                let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
                let cmdline = text(&std::fs::read(format!("/proc/{pid}/cmdline")).ok()?);
                (cmdline.starts_with("qemu-system") || cmdline.contains("/qemu-system")).then_some(())?;
                cmdline.contains(&needle).then_some(pid)
            })
            .collect()
    }
}

/// The STATUS column of task `id` in the output of `ctr tasks ls` (empty if it is not listed).
pub fn status_in_listing(ls: &Output, id: &str) -> String {
    text(&ls.stdout)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("")
        .to_owned()
}
