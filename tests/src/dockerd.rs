//! A private dockerd for tests: its own data root, exec root, socket, pid file, daemon config,
//! cgroup parent and containerd, all in a temp dir.
//!
//! Docker is how many users meet a container runtime (`docker load`, `docker run --runtime
//! NAME`). Tests of what rootfs-builder writes and, later, of `wisp-runtime` under Docker drive
//! Debian's dockerd 20.10 (package docker.io) and its client, neither the host's Docker nor
//! another test's: each [`Dockerd`] starts dockerd with everything inside a fresh directory and
//! waits until `docker version` answers on its socket. dockerd supervises a containerd of its
//! own in there (`exec/containerd/containerd.sock`), whose containerd-shim-runc-v2 keeps the
//! runtimes' state under `exec/runtime-*`.
//!
//! What it leaves alone on the host: no `docker0`, iptables rules, ip_forward or masquerading
//! (`--iptables=false --ip-forward=false ...`); containers get a loopback only
//! (`--bridge=none`) unless [`DockerdOptions::bridge`] asks for a network: then the harness makes
//! a bridge of its own (`wd-XXXXXX`, the host address given) and dockerd attaches containers
//! to it (`--bridge=NAME`), so a container reaches the host at that address; no trust
//! key written to `/etc/docker` (`deprecated-key-path` in a `--config-file` of its own, so
//! `/etc/docker/daemon.json` is not read either); container cgroups under a parent of its own
//! (`--cgroup-parent /wisp-dockerd-XXXXXX`, cgroupfs driver).
//!
//! Dropping it — at the end of a test or while a failing test unwinds — stops what it started,
//! in an order that leaves nothing behind: dockerd is asked with SIGTERM (it stops its containers
//! and then its containerd) for up to [`STOP_GRACE`]; whatever still runs then gets SIGKILL
//! until none is left: every process whose argv names the directory (dockerd, containerd, the
//! shims, runc) with its descendants, and every process in the cgroup parent (a container whose
//! shim died). Then it detaches every mount under the directory (overlay2 layers, netns files,
//! the data root's private bind), removes the bridge, the cgroup parent in every hierarchy, the sockets
//! that containerd keeps in `/run/containerd/s` for the shims killed, `/run/docker/plugins`
//! (dockerd makes it whatever its exec root) when it was not there before, and the directory.
//!
//! Binaries: `/usr/sbin/dockerd` and `/usr/bin/docker` of Debian's docker.io (`make deps`),
//! named by path because another `docker` client may come first on `PATH`; `WISP_DOCKERD` and
//! `WISP_DOCKER` override them. Needs root: the tests using it run under `make test-containerd`.

use std::env;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::containerd::{descendants, find_on_path, kill_until_gone, mounts_under, process_table};

/// How long dockerd gets between SIGTERM and SIGKILL: its `--shutdown-timeout` for the
/// containers, then the time containerd takes to stop.
pub const STOP_GRACE: Duration = Duration::from_secs(20);
/// How long dockerd gets to answer `docker version` after its start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The seconds dockerd gives a running container between SIGTERM and SIGKILL when it stops.
const SHUTDOWN_TIMEOUT_SECS: u32 = 2;
/// The containerd namespace dockerd runs its containers in.
pub const CONTAINERD_NAMESPACE: &str = "moby";
/// Where containerd 1.6 keeps its shims' sockets, whatever its own state directory.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// The plugin socket directory dockerd makes at a fixed path.
const RUN_DOCKER: &str = "/run/docker";
const POLL: Duration = Duration::from_millis(50);
/// How long [`Dockerd::stop`] keeps killing leftovers, and then removing cgroups.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// The log lines quoted in errors.
const LOG_TAIL: usize = 60;

/// Why the private dockerd could not start.
#[derive(Debug, thiserror::Error)]
pub enum DockerdError {
    /// A binary the harness needs is not installed.
    #[error("{} not found; install Debian's docker.io, containerd and runc with `make deps` (or set WISP_DOCKERD / WISP_DOCKER)", program.display())]
    Missing {
        /// The missing program.
        program: PathBuf,
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
    /// The bridge could not be made.
    #[error("cannot make bridge {name} with address {address}: {output}")]
    Bridge {
        /// The bridge.
        name: String,
        /// Its address.
        address: String,
        /// What `ip` said.
        output: String,
    },
    /// dockerd could not be started.
    #[error("cannot start {}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The error from `spawn`.
        #[source]
        source: io::Error,
    },
    /// dockerd exited before it answered.
    #[error("dockerd exited with {status} before serving {}; the end of its log:\n{log}", socket.display())]
    Exited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The socket it should have served.
        socket: PathBuf,
        /// The end of its log.
        log: String,
    },
    /// dockerd did not answer in time.
    #[error("dockerd did not answer `docker version` on {} within {} s; the end of its log:\n{log}", socket.display(), READY_TIMEOUT.as_secs())]
    Timeout {
        /// The socket.
        socket: PathBuf,
        /// The end of its log.
        log: String,
    },
    /// Waiting on dockerd failed.
    #[error("waiting for dockerd")]
    Wait(#[source] io::Error),
}

/// How to start a [`Dockerd`].
#[derive(Debug, Clone, Default)]
pub struct DockerdOptions {
    /// OCI runtimes besides runc, as (name, binary): `--add-runtime NAME=PATH`, chosen per
    /// container with `docker run --runtime NAME` (e.g. `wisp` and the built `wisp-runtime`).
    pub runtimes: Vec<(String, PathBuf)>,
    /// `--default-runtime NAME`; runc when `None`.
    pub default_runtime: Option<String>,
    /// A network for the containers: the host's address on a bridge the harness makes, with
    /// its prefix (e.g. `10.213.7.1/24`); dockerd gives containers addresses in that subnet.
    /// `None`: no network but the loopback (`--bridge=none`).
    pub bridge: Option<String>,
    /// More dockerd arguments, after the harness's own (for a flag given twice the later wins,
    /// e.g. `--bridge=NAME` for a bridge the test made).
    pub args: Vec<OsString>,
}

/// A dockerd of the test's own; see the module docs.
#[derive(Debug)]
pub struct Dockerd {
    child: Option<Child>,
    docker: PathBuf,
    base: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    cgroup_parent: String,
    server_version: String,
    /// `/run/docker` and `/run/docker/plugins` that were not there before the start.
    made_run_dirs: Vec<PathBuf>,
    /// The bridge the harness made, if any.
    bridge: Option<String>,
    dir: Option<TempDir>,
}

/// The binary at `var`'s path, else at `default`.
fn binary(var: &str, default: &str) -> Result<PathBuf, DockerdError> {
    installed(var, default).map_err(|program| DockerdError::Missing { program })
}

/// The path in `var`, else `default`: `Ok` if a file is there, else `Err` with the path.
pub(crate) fn installed(var: &str, default: &str) -> Result<PathBuf, PathBuf> {
    let path = env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    if path.is_file() {
        Ok(path)
    } else {
        Err(path)
    }
}

/// The processes whose argv names `base` (but this one) and those in the cgroup `parent`,
/// with all their descendants, children first.
pub(crate) fn processes_of(base: &Path, parent: &str) -> Vec<u32> {
    let table = process_table();
    let base = base.as_os_str().as_encoded_bytes();
    let own = std::process::id();
    let mut roots: Vec<u32> = table
        .iter()
        .filter(|(pid, p)| **pid != own && p.cmdline.iter().any(|arg| contains(arg, base)))
        .map(|(pid, _)| *pid)
        .collect();
    roots.extend(cgroup_tree(parent).iter().flat_map(|dir| cgroup_procs(dir)));
    roots.sort_unstable();
    roots.dedup();
    descendants(&table, roots.into_iter())
}

impl Dockerd {
    /// Starts a dockerd with default options (runc only).
    pub fn start() -> Result<Self, DockerdError> {
        Self::start_with(DockerdOptions::default())
    }

    /// Starts a dockerd and waits until `docker version` answers through its socket.
    pub fn start_with(options: DockerdOptions) -> Result<Self, DockerdError> {
        let dockerd = binary("WISP_DOCKERD", "/usr/sbin/dockerd")?;
        let docker = binary("WISP_DOCKER", "/usr/bin/docker")?;
        for program in ["containerd", "runc", "containerd-shim-runc-v2"] {
            if find_on_path(OsStr::new(program)).is_none() {
                return Err(DockerdError::Missing { program: program.into() });
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("wisp-dockerd-")
            .tempdir()
            .map_err(|source| DockerdError::Create { path: env::temp_dir(), source })?;
        let base = dir.path().to_owned();
        // Unique while the directory exists, and says whose it is.
        let cgroup_parent = format!("/{}", base.file_name().unwrap_or_default().to_string_lossy());
        let config = base.join("daemon.json");
        fs::write(&config, daemon_json(&base))
            .map_err(|source| DockerdError::Create { path: config.clone(), source })?;
        let log = base.join("dockerd.log");
        let log_file = File::create(&log).map_err(|source| DockerdError::Create { path: log.clone(), source })?;
        let log_err = log_file.try_clone().map_err(|source| DockerdError::Create { path: log.clone(), source })?;
        let made_run_dirs =
            [RUN_DOCKER, "/run/docker/plugins"].iter().map(PathBuf::from).filter(|p| !p.exists()).collect();
        let suffix = cgroup_parent.rsplit('-').next().unwrap_or_default().to_owned();
        // From here on, dropping `this` on an error undoes what was made.
        let mut this = Self {
            child: None,
            docker,
            socket: base.join("docker.sock"),
            base,
            log,
            cgroup_parent,
            server_version: String::new(),
            made_run_dirs,
            bridge: None,
            dir: Some(dir),
        };
        if let Some(address) = &options.bridge {
            let name = format!("wd-{suffix}");
            this.bridge = Some(name.clone());
            make_bridge(&name, address)?;
        }
        let child = Command::new(&dockerd)
            .args(dockerd_args(&this.base, &this.cgroup_parent, this.bridge.as_deref(), &options))
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|source| DockerdError::Spawn { program: dockerd.clone(), source })?;
        this.child = Some(child);
        this.wait_ready()?;
        Ok(this)
    }

    /// The bridge containers are attached to, when [`DockerdOptions::bridge`] asked for one.
    pub fn bridge(&self) -> Option<&str> {
        self.bridge.as_deref()
    }

    fn wait_ready(&mut self) -> Result<(), DockerdError> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().map_err(DockerdError::Wait)? {
                    self.child = None;
                    return Err(DockerdError::Exited {
                        status,
                        socket: self.socket.clone(),
                        log: self.log_tail(LOG_TAIL),
                    });
                }
            }
            if self.socket.exists() {
                if let Ok(out) = self.docker(["version", "--format", "{{.Server.Version}}"]) {
                    if out.status.success() {
                        self.server_version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                        return Ok(());
                    }
                }
            }
            if start.elapsed() >= READY_TIMEOUT {
                return Err(DockerdError::Timeout { socket: self.socket.clone(), log: self.log_tail(LOG_TAIL) });
            }
            thread::sleep(POLL);
        }
    }

    /// The API socket (`docker -H unix://...`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The socket of the containerd dockerd started (`ctr --address`, namespace
    /// [`CONTAINERD_NAMESPACE`]).
    pub fn containerd_socket(&self) -> PathBuf {
        self.base.join("exec/containerd/containerd.sock")
    }

    /// The cgroup (relative to each hierarchy's root) the containers' cgroups go under.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// The version the daemon reported (`docker version`), e.g. `20.10.24+dfsg1`.
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    /// dockerd's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The temp directory holding everything (gone after drop).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(TempDir::path)
    }

    /// The daemon's log so far (dockerd's and its containerd's, debug level).
    pub fn log(&self) -> String {
        fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The last `lines` lines of [`Self::log`], for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A `docker -H unix://SOCKET` command (the client's own config in the directory too) to
    /// add arguments to.
    pub fn docker_command(&self) -> Command {
        let mut command = Command::new(&self.docker);
        command.arg("-H").arg(format!("unix://{}", self.socket.display()));
        command.env("DOCKER_CONFIG", self.base.join("client"));
        command.stdin(Stdio::null());
        command
    }

    /// Runs `docker -H unix://SOCKET ARGS...` to completion and returns what it printed.
    pub fn docker<I, S>(&self, args: I) -> io::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.docker_command().args(args).output()
    }

    /// Every process of this daemon: those whose argv names its directory (dockerd,
    /// containerd, shims, runc) and those in its cgroup parent, with all their descendants,
    /// children first.
    pub fn processes(&self) -> Vec<u32> {
        processes_of(&self.base, &self.cgroup_parent)
    }

    /// The cgroup parent's directories in every hierarchy, deepest first (empty once removed).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_tree(&self.cgroup_parent)
    }

    /// The sockets containerd made in `/run/containerd/s` for this daemon's running shims,
    /// as containerd 1.6 names them: the sha256 of `ADDRESS/NAMESPACE/ID`.
    pub fn shim_sockets(&self) -> Vec<PathBuf> {
        let address = self.containerd_socket();
        process_table().values().filter_map(|p| shim_socket(&p.cmdline, &address)).collect()
    }

    /// Stops everything (see the module docs); idempotent, called by `Drop`.
    pub fn stop(&mut self) {
        let mut sockets = self.shim_sockets();
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let asked = Instant::now();
            while asked.elapsed() < STOP_GRACE && matches!(child.try_wait(), Ok(None)) {
                thread::sleep(POLL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // What dockerd did not stop: containerd and shims orphaned by a SIGKILLed dockerd,
        // containers whose shim died.
        sockets.extend(self.shim_sockets());
        kill_until_gone(|| self.processes(), KILL_TIMEOUT);
        for mount in mounts_under(&[&self.base]) {
            let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
        }
        remove_cgroup_tree(&self.cgroup_parent, KILL_TIMEOUT);
        if let Some(bridge) = self.bridge.take() {
            let _ = Command::new("ip").args(["link", "del", &bridge]).stderr(Stdio::null()).status();
        }
        // Shims that were killed could not remove their sockets; a name is this daemon's
        // alone (its address is in the hash).
        for socket in sockets {
            let _ = fs::remove_file(socket);
        }
        // Only if empty: a Docker of the host's may have started meanwhile.
        for dir in self.made_run_dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            if dir.close().is_err() {
                let _ = fs::remove_dir_all(path);
            }
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes the bridge `name` with the host address `address` (`A.B.C.D/N`), up.
fn make_bridge(name: &str, address: &str) -> Result<(), DockerdError> {
    let steps: [&[&str]; 3] = [
        &["link", "add", name, "type", "bridge"],
        &["addr", "add", address, "dev", name],
        &["link", "set", name, "up"],
    ];
    for args in steps {
        let failed =
            |output: String| DockerdError::Bridge { name: name.to_owned(), address: address.to_owned(), output };
        let out = Command::new("ip").args(args).output().map_err(|e| failed(e.to_string()))?;
        if !out.status.success() {
            return Err(failed(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
        }
    }
    Ok(())
}

/// dockerd's arguments: everything inside `base`, no host networking changes, containers on
/// `bridge` (none: loopback only), cgroups under `cgroup_parent`, then the options' runtimes
/// and extra arguments.
fn dockerd_args(base: &Path, cgroup_parent: &str, bridge: Option<&str>, options: &DockerdOptions) -> Vec<OsString> {
    let path = |flag: &str, name: &str| {
        let mut arg = OsString::from(format!("--{flag}="));
        arg.push(base.join(name));
        arg
    };
    let mut args = vec![
        path("config-file", "daemon.json"),
        path("data-root", "data"),
        path("exec-root", "exec"),
        path("pidfile", "dockerd.pid"),
        {
            let mut host = OsString::from("--host=unix://");
            host.push(base.join("docker.sock"));
            host
        },
        format!("--cgroup-parent={cgroup_parent}").into(),
        "--exec-opt=native.cgroupdriver=cgroupfs".into(),
        format!("--bridge={}", bridge.unwrap_or("none")).into(),
        "--iptables=false".into(),
        "--ip6tables=false".into(),
        "--ip-forward=false".into(),
        "--ip-masq=false".into(),
        "--userland-proxy=false".into(),
        format!("--shutdown-timeout={SHUTDOWN_TIMEOUT_SECS}").into(),
        "--debug".into(),
    ];
    for (name, binary) in &options.runtimes {
        let mut arg = OsString::from(format!("--add-runtime={name}="));
        arg.push(binary);
        args.push(arg);
    }
    if let Some(name) = &options.default_runtime {
        args.push(format!("--default-runtime={name}").into());
    }
    args.extend(options.args.iter().cloned());
    args
}

/// dockerd's configuration file: only where its trust key goes (the daemon's ID), a setting
/// dockerd 20.10 takes from the file alone; `/etc/docker/key.json` otherwise.
fn daemon_json(base: &Path) -> String {
    format!("{}\n", serde_json::json!({ "deprecated-key-path": base.join("key.json") }))
}

/// Whether `haystack` contains `needle`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The socket of a containerd-shim-runc-v2 whose argv is `cmdline` when it serves `address`:
/// `/run/containerd/s/<sha256 of ADDRESS/NAMESPACE/ID>` (containerd 1.6's `SocketAddress`).
fn shim_socket(cmdline: &[Vec<u8>], address: &Path) -> Option<PathBuf> {
    let value = |flag: &[u8]| cmdline.windows(2).find(|w| w[0] == flag).map(|w| w[1].as_slice());
    if value(b"-address")? != address.as_os_str().as_encoded_bytes() {
        return None;
    }
    let mut key = address.as_os_str().as_encoded_bytes().to_vec();
    for part in [value(b"-namespace")?, value(b"-id")?] {
        key.push(b'/');
        key.extend_from_slice(part);
    }
    let hex: String = Sha256::digest(&key).iter().map(|b| format!("{b:02x}")).collect();
    Some(Path::new(SHIM_SOCKET_DIR).join(hex))
}

/// Mount points of the cgroup (v1) and cgroup2 hierarchies.
fn cgroup_mounts() -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    info.lines()
        .filter(|line| {
            let fstype = line.split_once(" - ").and_then(|(_, rest)| rest.split(' ').next());
            matches!(fstype, Some("cgroup" | "cgroup2"))
        })
        .filter_map(|line| line.split(' ').nth(4).map(PathBuf::from))
        .collect()
}

/// The directories of the cgroup `parent` (relative to each hierarchy's root) in every
/// hierarchy, deepest first (empty once removed).
pub(crate) fn cgroup_tree(parent: &str) -> Vec<PathBuf> {
    let relative = parent.trim_start_matches('/');
    let mut dirs = Vec::new();
    for mount in cgroup_mounts() {
        collect_dirs(&mount.join(relative), &mut dirs);
    }
    dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    dirs
}

/// Removes the cgroup `parent` in every hierarchy, retrying for up to `within`: a cgroup is
/// removable once its last process is reaped, a moment after the kill.
pub(crate) fn remove_cgroup_tree(parent: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        for dir in cgroup_tree(parent) {
            let _ = fs::remove_dir(dir);
        }
        if cgroup_tree(parent).is_empty() || Instant::now() >= deadline {
            break;
        }
        thread::sleep(POLL);
    }
}

/// `dir` and every directory below it, if it exists.
fn collect_dirs(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    found.push(dir.to_owned());
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), found);
        }
    }
}

/// The processes in the cgroup `dir` itself.
fn cgroup_procs(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|procs| procs.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_inside_the_directory_and_the_host_network_is_left_alone() {
        let base = Path::new("/tmp/wisp-dockerd-x");
        let args = dockerd_args(base, "/wisp-dockerd-x", None, &DockerdOptions::default());
        let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        for flag in ["--config-file=", "--data-root=", "--exec-root=", "--pidfile="] {
            let arg = args.iter().find(|a| a.starts_with(flag)).unwrap_or_else(|| panic!("{flag} missing: {args:?}"));
            assert!(arg[flag.len()..].starts_with("/tmp/wisp-dockerd-x/"), "{arg}");
        }
        assert!(args.contains(&"--host=unix:///tmp/wisp-dockerd-x/docker.sock".to_owned()), "{args:?}");
        for flag in ["--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false"] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing: {args:?}");
        }
        assert!(args.contains(&"--cgroup-parent=/wisp-dockerd-x".to_owned()), "{args:?}");
        assert!(!args.iter().any(|a| a.starts_with("--add-runtime") || a.starts_with("--default-runtime")));
    }

    #[test]
    fn the_trust_key_stays_inside_the_directory() {
        let config: serde_json::Value = serde_json::from_str(&daemon_json(Path::new("/tmp/wisp-dockerd-x"))).unwrap();
        assert_eq!(config, serde_json::json!({ "deprecated-key-path": "/tmp/wisp-dockerd-x/key.json" }));
    }

    #[test]
    fn runtimes_and_extra_arguments_come_last() {
        let options = DockerdOptions {
            runtimes: vec![("wisp".into(), "/opt/wisp/bin/wisp-runtime".into())],
            default_runtime: Some("wisp".into()),
            args: vec!["--ipv6".into()],
            ..DockerdOptions::default()
        };
        let args = dockerd_args(Path::new("/tmp/d"), "/d", Some("wd-abc"), &options);
        assert!(args.iter().any(|a| a == "--bridge=wd-abc"), "{args:?}");
        assert!(!args.iter().any(|a| a == "--bridge=none"), "{args:?}");
        let n = args.len();
        assert_eq!(args[n - 3], "--add-runtime=wisp=/opt/wisp/bin/wisp-runtime");
        assert_eq!(args[n - 2], "--default-runtime=wisp");
        assert_eq!(args[n - 1], "--ipv6", "a test's own flag follows (and overrides) the harness's");
    }

    #[test]
    fn shim_sockets_are_named_as_containerd_names_them() {
        let address = Path::new("/tmp/d/exec/containerd/containerd.sock");
        let argv = |address: &str| -> Vec<Vec<u8>> {
            ["/usr/bin/containerd-shim-runc-v2", "-namespace", "moby", "-id", "abc", "-address", address, "-debug"]
                .iter()
                .map(|a| a.as_bytes().to_vec())
                .collect()
        };
        let expected: String = Sha256::digest(b"/tmp/d/exec/containerd/containerd.sock/moby/abc")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            shim_socket(&argv(address.to_str().unwrap()), address),
            Some(Path::new(SHIM_SOCKET_DIR).join(expected))
        );
        assert_eq!(shim_socket(&argv("/run/containerd/containerd.sock"), address), None, "another containerd's shim");
        assert_eq!(shim_socket(&argv(address.to_str().unwrap())[..5], address), None, "no -address");
    }

    #[test]
    fn argv_matching_is_by_substring() {
        assert!(contains(b"--data-root=/tmp/wisp-dockerd-x/data", b"/tmp/wisp-dockerd-x"));
        assert!(!contains(b"/tmp/wisp-dockerd-y", b"/tmp/wisp-dockerd-x"));
        assert!(!contains(b"anything", b""));
    }
}
