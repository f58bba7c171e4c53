//! A private containerd for tests: its own root, state, socket and config in a temp dir.
//!
//! Tests that drive `ctr` (runc bundles, imported images, later the `io.containerd.wisp.v2`
//! shim) must neither depend on nor disturb the host's containerd or another test's: each
//! [`Containerd`] starts `containerd --config` on a fresh directory, waits until
//! `ctr version` answers, and hands out [`Containerd::ctr`] bound to its socket and a namespace.
//!
//! Dropping it — at the end of a test or while a failing test unwinds — kills what it started,
//! in an order that leaves nothing behind: the shims that serve this containerd (found by their
//! `-address` argument in `/proc`) and their container processes (SIGTERM, so a wisp shim
//! cleans up what it made on the host, then SIGKILL after [`STOP_GRACE`]), then containerd
//! itself (SIGTERM, then SIGKILL after [`STOP_GRACE`]); then it detaches every mount still under
//! its root or state (overlay snapshots, rootfs binds), forgets runc's records of its containers
//! ([`crate::runc_state`]) and removes the directory.
//!
//! The CRI plugin is disabled unless [`ContainerdOptions::cri`] asks for it: it opens a
//! streaming port and looks for CNI. When on, it listens on the same socket, its streaming
//! server on a free loopback port, its CNI configuration directory inside the temp dir (empty:
//! host-network pods only, unless [`CriOptions::cni`] gives a network list and the plugins'
//! directory), with `runc` and any runtime handlers given registered, and
//! `restrict_oom_score_adj` (the build machine has no CAP_SYS_RESOURCE to spare). The `opt`
//! plugin is pointed inside the directory so nothing lands in `/opt/containerd`.
//!
//! Needs root (containerd mounts snapshots and runc creates namespaces): the tests using it say
//! so and run under `make test-containerd`.

use std::collections::{BTreeMap, BTreeSet};
use std::env;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// How long containerd gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long containerd gets to answer `ctr version` after its start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The namespace [`Containerd::ctr`] uses unless [`ContainerdOptions::namespace`] says another.
pub const DEFAULT_NAMESPACE: &str = "wisp-test";
const POLL: Duration = Duration::from_millis(50);
/// How long [`Containerd::stop`] keeps killing shims and their containers.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the private containerd could not start.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// A binary the harness needs is not installed.
    #[error("{program} not found on PATH; install it with `make deps` (Debian packages containerd and runc)")]
    Missing {
        /// The missing program.
        program: &'static str,
    },
    /// The directory or a file in it could not be created.
    #[error("cannot create {}", path.display())]
    Create {
        /// What could not be created.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A program could not be started.
    #[error("cannot start {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The error from `spawn`.
        #[source]
        source: io::Error,
    },
    /// containerd exited before it answered.
    #[error("containerd exited with {status} before serving {}; its log:\n{log}", address.display())]
    Exited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The socket it should have served.
        address: PathBuf,
        /// Its stdout and stderr.
        log: String,
    },
    /// containerd did not answer in time.
    #[error("containerd did not answer `ctr version` on {} within {} s; its log:\n{log}", address.display(), READY_TIMEOUT.as_secs())]
    Timeout {
        /// The socket.
        address: PathBuf,
        /// Its stdout and stderr.
        log: String,
    },
    /// Waiting on containerd failed.
    #[error("waiting for containerd")]
    Wait(#[source] io::Error),
}

/// How to start a [`Containerd`].
#[derive(Debug, Clone, Default)]
pub struct ContainerdOptions {
    /// Directories put in front of containerd's `PATH`, where it looks for
    /// `containerd-shim-NAME-v2` binaries (e.g. the one serving `io.containerd.wisp.v2`).
    pub shim_dirs: Vec<PathBuf>,
    /// The namespace [`Containerd::ctr`] passes; [`DEFAULT_NAMESPACE`] when `None`.
    pub namespace: Option<String>,
    /// Turns containerd's CRI plugin on.
    pub cri: Option<CriOptions>,
    /// Snapshotters served out of process, as (name, gRPC socket): containerd's
    /// `[proxy_plugins.NAME] type = "snapshot"`, selected with `ctr --snapshotter NAME`
    /// (e.g. a `loop_snapshotter::LoopSnapshotter`'s name and socket).
    pub proxy_snapshotters: Vec<(String, PathBuf)>,
}

/// The CRI plugin's settings (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct CriOptions {
    /// The pause image reference (`sandbox_image`), imported beforehand into `k8s.io`.
    pub sandbox_image: String,
    /// Runtime handlers besides `runc`: (handler name, `runtime_type`: a shim name such as
    /// `io.containerd.wisp.v2` or the absolute path of its binary).
    pub runtimes: Vec<(String, String)>,
    /// A CNI network for pods without host networking.
    pub cni: Option<CniOptions>,
}

/// The CNI network the CRI plugin sets pods up with.
#[derive(Debug, Clone, Default)]
pub struct CniOptions {
    /// Where the plugin binaries are (`/usr/lib/cni` with Debian's containernetworking-plugins).
    pub bin_dir: PathBuf,
    /// The network list (`.conflist` JSON), written into the CNI configuration directory.
    pub conflist: String,
}

/// A containerd of the test's own; see the module docs.
#[derive(Debug)]
pub struct Containerd {
    child: Option<Child>,
    address: PathBuf,
    namespace: String,
    root: PathBuf,
    state: PathBuf,
    log: PathBuf,
    config: PathBuf,
    /// The `PATH` containerd runs with (the shim directories first).
    path: OsString,
    dir: Option<TempDir>,
}

impl Containerd {
    /// Starts a containerd with default options.
    pub fn start() -> Result<Self, ContainerdError> {
        Self::start_with(ContainerdOptions::default())
    }

    /// Starts a containerd and waits until `ctr version` answers through its socket.
    pub fn start_with(options: ContainerdOptions) -> Result<Self, ContainerdError> {
        for program in ["containerd", "ctr", "runc", "containerd-shim-runc-v2"] {
            if find_on_path(OsStr::new(program)).is_none() {
                return Err(ContainerdError::Missing { program });
            }
        }
        crate::runc_state::forget_stale();
        let dir = tempfile::Builder::new()
            .prefix("wisp-ctd-")
            .tempdir()
            .map_err(|source| ContainerdError::Create { path: env::temp_dir(), source })?;
        let base = dir.path().to_owned();
        let root = base.join("root");
        let state = base.join("state");
        let address = base.join("containerd.sock");
        let log = base.join("containerd.log");
        let config = base.join("config.toml");
        fs::write(
            &config,
            config_toml(&base, &root, &state, &address, options.cri.as_ref(), &options.proxy_snapshotters),
        )
        .map_err(|source| ContainerdError::Create { path: config.clone(), source })?;
        if let Some(cni) = options.cri.as_ref().and_then(|cri| cri.cni.as_ref()) {
            let conf_dir = base.join("cni/conf");
            let conflist = conf_dir.join("10-wisp-test.conflist");
            fs::create_dir_all(&conf_dir)
                .and_then(|()| fs::write(&conflist, &cni.conflist))
                .map_err(|source| ContainerdError::Create { path: conflist, source })?;
        }
        let mut path = options.shim_dirs.clone();
        path.extend(env::var_os("PATH").iter().flat_map(env::split_paths));
        let path = env::join_paths(path).unwrap_or_else(|_| env::var_os("PATH").unwrap_or_default());
        let mut containerd = Self {
            child: None,
            address,
            namespace: options.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            root,
            state,
            log,
            config,
            path,
            dir: Some(dir),
        };
        containerd.spawn_daemon()?;
        containerd.wait_ready()?;
        Ok(containerd)
    }

    /// Starts the containerd process on this directory (its log appended to).
    fn spawn_daemon(&mut self) -> Result<(), ContainerdError> {
        let log = &self.log;
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| ContainerdError::Create { path: log.clone(), source })?;
        let log_err = log_file.try_clone().map_err(|source| ContainerdError::Create { path: log.clone(), source })?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&self.config)
            .env("PATH", &self.path)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|source| ContainerdError::Spawn { program: "containerd".into(), source })?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the containerd process alone (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and
    /// starts it again on the same directory: its shims and their containers run on, as when
    /// an operator restarts containerd.
    pub fn restart(&mut self) -> Result<(), ContainerdError> {
        self.stop_daemon();
        self.spawn_daemon()?;
        self.wait_ready()
    }

    fn stop_daemon(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < STOP_GRACE {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                thread::sleep(POLL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn wait_ready(&mut self) -> Result<(), ContainerdError> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().map_err(ContainerdError::Wait)? {
                    self.child = None;
                    return Err(ContainerdError::Exited { status, address: self.address.clone(), log: self.log() });
                }
            }
            if self.address.exists() {
                if let Ok(out) = self.ctr(["version"]) {
                    if out.status.success() {
                        return Ok(());
                    }
                }
            }
            if start.elapsed() >= READY_TIMEOUT {
                return Err(ContainerdError::Timeout { address: self.address.clone(), log: self.log() });
            }
            thread::sleep(POLL);
        }
    }

    /// The gRPC socket (`ctr --address`).
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// containerd's `--root`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// containerd's `--state`.
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// The namespace [`Self::ctr`] uses.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// containerd's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// containerd's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// A `ctr --address A --namespace N` command to add arguments to (for stdin or env tweaks).
    pub fn ctr_command(&self) -> Command {
        let mut command = Command::new("ctr");
        command.arg("--address").arg(&self.address).arg("--namespace").arg(&self.namespace);
        command.stdin(Stdio::null());
        command
    }

    /// Runs `ctr --address A --namespace N ARGS...` to completion and returns what it printed.
    pub fn ctr<I, S>(&self, args: I) -> io::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.ctr_command().args(args).output()
    }

    /// The processes serving this containerd: its shims (by their `-address` argument) and all
    /// their descendants (runc, container processes).
    pub fn shim_processes(&self) -> Vec<u32> {
        let table = process_table();
        let address = self.address.as_os_str().as_encoded_bytes();
        let shims = table
            .iter()
            .filter(|(_, p)| p.cmdline.windows(2).any(|w| w[0] == b"-address" && w[1] == address))
            .map(|(pid, _)| *pid);
        descendants(&table, shims)
    }

    /// Stops everything (see the module docs); idempotent, called by `Drop`.
    pub fn stop(&mut self) {
        // Shims outlive containerd by design, so they go first, with their containers: asked
        // with SIGTERM first (wisp's shim then stops its VM and removes what it made on the
        // host, its sandbox cgroup included), for up to STOP_GRACE.
        let shims = self.shim_processes();
        for pid in &shims {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
        }
        let asked = Instant::now();
        while !shims.is_empty() && asked.elapsed() < STOP_GRACE && shims.iter().any(|pid| process_running(*pid)) {
            thread::sleep(POLL);
        }
        kill_until_gone(|| self.shim_processes(), KILL_TIMEOUT);
        self.stop_daemon();
        // Shims may have been forked while containerd was stopping.
        for pid in self.shim_processes() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        for mount in mounts_under(&[&self.root, &self.state]) {
            let _ = umount2(&mount, MntFlags::MNT_DETACH);
        }
        crate::runc_state::forget_under(&self.state);
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            if dir.close().is_err() {
                // A shim-created file with odd permissions or a busy mount: try once more.
                let _ = fs::remove_dir_all(path);
            }
        }
    }

    /// The temp directory holding root, state, socket, config and log (gone after drop).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(TempDir::path)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// containerd's config: everything inside `base`, CRI off unless `cri`, overlayfs snapshots
/// and the proxy snapshotters `proxies` (name, socket).
fn config_toml(
    base: &Path,
    root: &Path,
    state: &Path,
    address: &Path,
    cri: Option<&CriOptions>,
    proxies: &[(String, PathBuf)],
) -> String {
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let cri_section = cri.map_or_else(String::new, |cri| {
        let plugin = "[plugins.\"io.containerd.grpc.v1.cri\"";
        let mut text = format!(
            "{plugin}]\n  sandbox_image = {image:?}\n  restrict_oom_score_adj = true\n  \
             disable_tcp_service = true\n  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n\
             {plugin}.containerd]\n  snapshotter = \"overlayfs\"\n  default_runtime_name = \"runc\"\n\
             {plugin}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
             {plugin}.cni]\n  bin_dir = {cni_bin}\n  conf_dir = {cni_conf}\n",
            image = cri.sandbox_image,
            cni_bin = q(&cri.cni.as_ref().map_or_else(|| base.join("cni/bin"), |cni| cni.bin_dir.clone())),
            cni_conf = q(&base.join("cni/conf")),
        );
        for (name, runtime_type) in &cri.runtimes {
            text.push_str(&format!("{plugin}.containerd.runtimes.{name}]\n  runtime_type = {runtime_type:?}\n"));
        }
        text
    });
    let proxy_section: String = proxies
        .iter()
        .map(|(name, socket)| format!("[proxy_plugins.{name:?}]\n  type = \"snapshot\"\n  address = {}\n", q(socket)))
        .collect();
    let disabled = if cri.is_some() { "" } else { "\"io.containerd.grpc.v1.cri\"" };
    format!(
        "version = 2\n\
         root = {root}\n\
         state = {state}\n\
         disabled_plugins = [{disabled}]\n\
         [grpc]\n  address = {address}\n\
         [ttrpc]\n  address = {ttrpc}\n\
         [debug]\n  address = {debug}\n\
         [metrics]\n  address = \"\"\n\
         [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n\
         [plugins.\"io.containerd.snapshotter.v1.overlayfs\"]\n  root_path = {overlay}\n\
         {cri_section}\
         {proxy_section}",
        root = q(root),
        state = q(state),
        address = q(address),
        ttrpc = q(&base.join("containerd.sock.ttrpc")),
        debug = q(&base.join("debug.sock")),
        opt = q(&base.join("opt")),
        overlay = q(&root.join("io.containerd.snapshotter.v1.overlayfs")),
    )
}

/// Bytes as text (lossy), for assertions on `ctr` output.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A command's status, stdout and stderr, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!("status {}\nstdout:\n{}\nstderr:\n{}", out.status, text(&out.stdout), text(&out.stderr))
}

/// A path as a `ctr` argument (empty if not UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// `program` on `PATH`, if there.
pub fn find_on_path(program: &OsStr) -> Option<PathBuf> {
    env::var_os("PATH")
        .iter()
        .flat_map(env::split_paths)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// SIGKILLs what `find` lists until none of it runs or `timeout` has passed: a SIGKILLed
/// process takes a moment to die on a loaded host, and a parent may fork meanwhile (zombies do
/// not count).
pub(crate) fn kill_until_gone(find: impl Fn() -> Vec<u32>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let leftovers: Vec<u32> = find().into_iter().filter(|pid| process_running(*pid)).collect();
        if leftovers.is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in leftovers {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        thread::sleep(POLL);
    }
}

/// Whether `pid` runs: a zombie waiting for its reaper does not count, nor a reaped process.
pub fn process_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// A process's parent and argv, as [`process_table`] read them.
#[derive(Debug)]
pub(crate) struct ProcInfo {
    pub(crate) ppid: u32,
    pub(crate) cmdline: Vec<Vec<u8>>,
}

/// Every process's parent and argv, from `/proc` (processes that vanish while read are skipped).
pub(crate) fn process_table() -> BTreeMap<u32, ProcInfo> {
    let mut table = BTreeMap::new();
    let Ok(entries) = fs::read_dir("/proc") else { return table };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
        // The command name may hold spaces and parentheses: the fields follow the last ')'.
        let Some(ppid) =
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|s| s.parse().ok())
        else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(<[u8]>::to_vec).collect();
        table.insert(pid, ProcInfo { ppid, cmdline });
    }
    table
}

/// `roots` and all their descendants, children first (so parents cannot respawn them).
pub(crate) fn descendants(table: &BTreeMap<u32, ProcInfo>, roots: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut found: Vec<u32> = roots.collect();
    let mut seen: BTreeSet<u32> = found.iter().copied().collect();
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        for (pid, info) in table {
            if info.ppid == parent && seen.insert(*pid) {
                found.push(*pid);
            }
        }
        i += 1;
    }
    found.reverse();
    found
}

/// Mount points at or under any of `dirs`, deepest first, from `/proc/self/mountinfo`.
pub fn mounts_under(dirs: &[&Path]) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| dirs.iter().any(|d| p.starts_with(d)))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts.dedup();
    mounts
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = bytes[i + 1..i + 4].iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), OsString::from("/a b\\c"));
        assert_eq!(unescape_mountinfo(r"/plain\04"), OsString::from(r"/plain\04"));
    }

    #[test]
    fn descendants_are_children_first() {
        let mut table = BTreeMap::new();
        for (pid, ppid) in [(10, 1), (11, 10), (12, 11), (20, 1), (13, 10)] {
            table.insert(pid, ProcInfo { ppid, cmdline: Vec::new() });
        }
        let found = descendants(&table, [10].into_iter());
        assert_eq!(found.len(), 4);
        assert_eq!(found.last(), Some(&10));
        let pos = |p| found.iter().position(|x| *x == p);
        assert!(pos(12) < pos(11));
        assert!(!found.contains(&20));
    }

    #[test]
    fn config_keeps_everything_inside_the_directory() {
        let base = Path::new("/tmp/wisp-ctd-x");
        let text = config_toml(base, &base.join("root"), &base.join("state"), &base.join("c.sock"), None, &[]);
        assert!(text.contains("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]"));
        for line in text.lines().filter(|l| l.contains("= \"/")) {
            assert!(line.contains("\"/tmp/wisp-ctd-x/"), "{line}");
        }
    }

    #[test]
    fn cri_config_registers_the_handlers_and_keeps_cni_inside() {
        let base = Path::new("/tmp/wisp-ctd-x");
        let cri = CriOptions {
            sandbox_image: "docker.io/library/wisp-pause:1".into(),
            runtimes: vec![("wisp".into(), "/opt/bin/containerd-shim-wisp-v2".into())],
            cni: None,
        };
        let text = config_toml(base, &base.join("root"), &base.join("state"), &base.join("c.sock"), Some(&cri), &[]);
        assert!(text.contains("disabled_plugins = []"), "{text}");
        assert!(text.contains("sandbox_image = \"docker.io/library/wisp-pause:1\""), "{text}");
        assert!(text.contains("restrict_oom_score_adj = true"), "{text}");
        assert!(
            text.contains(
                "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wisp]\n  runtime_type = \"/opt/bin/containerd-shim-wisp-v2\""
            ),
            "{text}"
        );
        for line in text.lines().filter(|l| l.contains("_dir = \"/")) {
            assert!(line.contains("\"/tmp/wisp-ctd-x/"), "{line}");
        }
        let cni = CniOptions { bin_dir: "/usr/lib/cni".into(), conflist: "{}".into() };
        let with_cni = CriOptions { cni: Some(cni), ..cri };
        let text =
            config_toml(base, &base.join("root"), &base.join("state"), &base.join("c.sock"), Some(&with_cni), &[]);
        assert!(text.contains("bin_dir = \"/usr/lib/cni\""), "the plugins are the system's: {text}");
        assert!(text.contains("conf_dir = \"/tmp/wisp-ctd-x/cni/conf\""), "the network list is the test's: {text}");
    }

    #[test]
    fn proxy_snapshotters_are_rendered_as_proxy_plugins() {
        let base = Path::new("/tmp/wisp-ctd-x");
        let proxies = [
            ("wisp-loop".to_owned(), PathBuf::from("/tmp/wisp-loopsnap-a/snapshots.sock")),
            ("other".to_owned(), PathBuf::from("/run/other.sock")),
        ];
        let text = config_toml(base, &base.join("root"), &base.join("state"), &base.join("c.sock"), None, &proxies);
        assert!(
            text.contains(
                "[proxy_plugins.\"wisp-loop\"]\n  type = \"snapshot\"\n  address = \"/tmp/wisp-loopsnap-a/snapshots.sock\"\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("[proxy_plugins.\"other\"]\n  type = \"snapshot\"\n  address = \"/run/other.sock\"\n"),
            "{text}"
        );
        let none = config_toml(base, &base.join("root"), &base.join("state"), &base.join("c.sock"), None, &[]);
        assert!(!none.contains("proxy_plugins"), "{none}");
    }
}
