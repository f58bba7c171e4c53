//! A private podman for tests: its own storage root, run root, temp dir, configuration files,
//! runtime root and cgroup parent, all in a temp dir.
//!
//! Podman has no daemon: every `podman` command reads the configuration and the storage
//! again, and conmon (one per container, a child subreaper) runs the OCI runtime's `create`,
//! waits for the pid-file process and runs `podman container cleanup` when it exits. So the
//! harness is the set of flags, files and environment variables that keep every one of those
//! processes off the host's podman state:
//! - `--root`, `--runroot`, `--tmpdir`, `--network-config-dir` inside the directory, storage
//!   driver `vfs` (no overlay mounts to leak), cgroup manager `cgroupfs` (systemd is not PID 1
//!   here), events in a file;
//! - `CONTAINERS_CONF`, `CONTAINERS_STORAGE_CONF`, `CONTAINERS_REGISTRIES_CONF` pointing at
//!   files of its own, so neither `/etc/containers` nor `/usr/share/containers` settings apply:
//!   no network by default (`netns = "none"`, the CNI backend never called), file locks in
//!   the temp dir rather than the host-wide `/dev/shm/libpod_lock`, image copies in the
//!   directory rather than `/var/tmp`, and conmon's environment (`conmon_env_vars`) carrying
//!   those variables (podman's cleanup, run by conmon, reads the same files) and the
//!   runtime's own (e.g. `WISP_CONFIG`, `WISP_STATE_DIR`);
//! - the OCI runtime given with `--runtime PATH`. Its records stay in its default root
//!   ([`PodmanOptions::runtime_root`], e.g. `/run/wisp-runtime`): podman 4.3's
//!   `--runtime-flag root=DIR` reaches conmon's `create` and podman's own calls but not the
//!   `delete --force` of `podman container cleanup` (the exit command conmon runs, whose
//!   argv podman builds without runtime flags), and containers.conf has no per-runtime flags
//!   before podman 4.5 (`[engine.runtimes_flags]`). The harness notes what the root held at
//!   its start: [`Podman::new_runtime_records`] is what its containers added;
//! - containers under a cgroup parent of its own (`/wisp-podman-XXXXXX`), through
//!   [`Podman::run`] and [`Podman::create`] (`--cgroup-parent`; containers.conf has no such
//!   setting).
//!
//! Dropping it — at the end of a test or while a failing test unwinds — removes every
//! container (`podman rm --all --force --time 0`, so the runtime stops what it started), then
//! SIGKILLs whatever still runs (every process whose argv names the directory: conmon,
//! podman's cleanup, the runtime's monitors; every process in the cgroup parent; their
//! descendants), detaches the mounts under the directory (each container's `/dev/shm`),
//! removes the records its containers left in the runtime's root (and the root if it made it
//! and it is empty), the cgroup parent in every hierarchy, `/var/lib/containers/cache` when
//! podman made it (its blob info cache has a fixed path for root), and the directory.
//!
//! Binaries: `/usr/bin/podman` and `conmon` of Debian's podman package (`make deps`);
//! `WISP_PODMAN` overrides the first. Needs root: the tests using it run under `make test-shim`.

use std::collections::BTreeSet;
use std::env;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::containerd::{find_on_path, kill_until_gone, mounts_under};
use crate::dockerd::{cgroup_tree, installed, processes_of, remove_cgroup_tree};

/// How long `podman rm --all --force` gets when the harness stops.
pub const REMOVE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`Podman::stop`] keeps killing leftovers, and then removing cgroups.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);
/// Where podman keeps its blob info cache when it runs as root, whatever `--root` says.
const BLOB_INFO_CACHE: &str = "/var/lib/containers/cache";
/// The blob info cache's file in [`BLOB_INFO_CACHE`].
const BLOB_INFO_CACHE_FILE: &str = "blob-info-cache-v1.boltdb";

/// Why the private podman could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    /// A binary the harness needs is not installed.
    #[error("{} not found; install Debian's podman with `make deps` (or set WISP_PODMAN)", program.display())]
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
    /// `podman info` could not run.
    #[error("cannot run podman info")]
    Spawn(#[source] io::Error),
    /// `podman info` failed: the configuration or the runtime is not usable.
    #[error("podman info failed with {status}: {stderr}")]
    Info {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// How to set up a [`Podman`].
#[derive(Debug, Clone, Default)]
pub struct PodmanOptions {
    /// The OCI runtime binary (`--runtime PATH`, e.g. the built `wisp-runtime`); podman's
    /// default (runc) when `None`.
    pub runtime: Option<PathBuf>,
    /// Environment variables conmon runs the runtime with, besides `PATH` and the harness's
    /// `CONTAINERS_*` (conmon gets only `conmon_env_vars`, not podman's environment).
    /// `WISP_CONFIG` and `WISP_STATE_DIR` are passed on from this process when set.
    pub conmon_env: Vec<(String, OsString)>,
    /// Where the runtime keeps its records when given no `--root` (runc's `/run/runc`,
    /// wisp-runtime's `/run/wisp-runtime`): watched and cleaned, see the module docs.
    pub runtime_root: Option<PathBuf>,
}

/// A podman of the test's own; see the module docs.
#[derive(Debug)]
pub struct Podman {
    podman: PathBuf,
    base: PathBuf,
    /// The global flags every command gets.
    global: Vec<OsString>,
    /// The environment every command gets (the configuration files).
    env: Vec<(String, OsString)>,
    /// The runtime's root and the entries it held before the start (`None`: it did not exist).
    runtime_root: Option<(PathBuf, Option<BTreeSet<OsString>>)>,
    cgroup_parent: String,
    version: String,
    /// Whether `/var/lib/containers` was absent before the start.
    made_blob_info_cache: bool,
    dir: Option<TempDir>,
}

impl Podman {
    /// Sets up a podman with default options (runc).
    pub fn start() -> Result<Self, PodmanError> {
        Self::start_with(PodmanOptions::default())
    }

    /// Writes the configuration and checks that `podman info` works with it (it runs the
    /// runtime's `--version`).
    pub fn start_with(options: PodmanOptions) -> Result<Self, PodmanError> {
        let podman = installed("WISP_PODMAN", "/usr/bin/podman").map_err(|program| PodmanError::Missing { program })?;
        if find_on_path(OsStr::new("conmon")).is_none() {
            return Err(PodmanError::Missing { program: "conmon".into() });
        }
        let dir = tempfile::Builder::new()
            .prefix("wisp-podman-")
            .tempdir()
            .map_err(|source| PodmanError::Create { path: env::temp_dir(), source })?;
        let base = dir.path().to_owned();
        let cgroup_parent = format!("/{}", base.file_name().unwrap_or_default().to_string_lossy());
        for sub in ["tmp", "images-tmp", "cni"] {
            let path = base.join(sub);
            fs::create_dir_all(&path).map_err(|source| PodmanError::Create { path, source })?;
        }
        let env = config_env(&base);
        let mut conmon_env = vec![("PATH".to_owned(), env::var_os("PATH").unwrap_or_default())];
        conmon_env.extend(env.iter().cloned());
        for var in ["WISP_CONFIG", "WISP_STATE_DIR"] {
            if let Some(value) = env::var_os(var) {
                conmon_env.push((var.to_owned(), value));
            }
        }
        conmon_env.extend(options.conmon_env.iter().cloned());
        let runtime_name = options.runtime.as_deref().and_then(Path::file_name).map(|n| n.to_string_lossy());
        let files = [
            ("containers.conf", containers_conf(&base, runtime_name.as_deref(), &conmon_env)),
            ("storage.conf", storage_conf(&base)),
            ("registries.conf", "unqualified-search-registries = []\n".to_owned()),
        ];
        for (name, text) in files {
            let path = base.join(name);
            fs::write(&path, text).map_err(|source| PodmanError::Create { path, source })?;
        }
        let runtime_root = options.runtime_root.map(|root| {
            let before = fs::read_dir(&root).ok().map(|dir| dir.flatten().map(|e| e.file_name()).collect());
            (root, before)
        });
        let mut this = Self {
            podman,
            global: global_args(&base, options.runtime.as_deref()),
            env,
            base,
            runtime_root,
            cgroup_parent,
            version: String::new(),
            made_blob_info_cache: !Path::new(BLOB_INFO_CACHE).parent().is_some_and(Path::exists),
            dir: Some(dir),
        };
        let out = this.podman(["info", "--format", "{{.Version.Version}}"]).map_err(PodmanError::Spawn)?;
        if !out.status.success() {
            return Err(PodmanError::Info {
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        this.version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(this)
    }

    /// podman's version (`podman info`), e.g. `4.3.1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The entries of the runtime's root ([`PodmanOptions::runtime_root`]) that were not
    /// there at the start: the records of this podman's containers.
    pub fn new_runtime_records(&self) -> Vec<PathBuf> {
        let Some((root, before)) = &self.runtime_root else { return Vec::new() };
        let entries = fs::read_dir(root).into_iter().flatten().flatten();
        entries
            .filter(|e| !before.as_ref().is_some_and(|before| before.contains(&e.file_name())))
            .map(|e| e.path())
            .collect()
    }

    /// The cgroup (relative to each hierarchy's root) [`Self::run`]'s containers go under.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// The temp directory holding everything (gone after drop).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(TempDir::path)
    }

    /// A `podman GLOBAL-FLAGS` command with the harness's environment, to add arguments to.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.podman);
        command.args(&self.global);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command.env("TMPDIR", self.base.join("images-tmp"));
        command.stdin(Stdio::null());
        command
    }

    /// Runs `podman GLOBAL-FLAGS ARGS...` to completion and returns what it printed.
    pub fn podman<I, S>(&self, args: I) -> io::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command().args(args).output()
    }

    /// Runs `podman run --cgroup-parent PARENT ARGS...` (the harness's cgroup parent).
    pub fn run<I, S>(&self, args: I) -> io::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command().arg("run").arg(format!("--cgroup-parent={}", self.cgroup_parent)).args(args).output()
    }

    /// Runs `podman create --cgroup-parent PARENT ARGS...`.
    pub fn create<I, S>(&self, args: I) -> io::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command().arg("create").arg(format!("--cgroup-parent={}", self.cgroup_parent)).args(args).output()
    }

    /// Every process of this podman: those whose argv names its directory (conmon, podman's
    /// cleanup, the runtime's monitors) and those in its cgroup parent, with all their
    /// descendants, children first.
    pub fn processes(&self) -> Vec<u32> {
        processes_of(&self.base, &self.cgroup_parent)
    }

    /// The cgroup parent's directories in every hierarchy, deepest first (empty once removed).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_tree(&self.cgroup_parent)
    }

    /// Removes every container and everything the harness made (see the module docs);
    /// idempotent, called by `Drop`.
    pub fn stop(&mut self) {
        if self.dir.is_none() {
            return;
        }
        if let Ok(mut child) = self
            .command()
            .args(["rm", "--all", "--force", "--time", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            let asked = Instant::now();
            while asked.elapsed() < REMOVE_TIMEOUT && matches!(child.try_wait(), Ok(None)) {
                thread::sleep(POLL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_until_gone(|| self.processes(), KILL_TIMEOUT);
        for mount in mounts_under(&[&self.base]) {
            let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
        }
        for record in self.new_runtime_records() {
            let _ = fs::remove_dir_all(record);
        }
        if let Some((root, None)) = &self.runtime_root {
            let _ = fs::remove_dir(root);
        }
        remove_cgroup_tree(&self.cgroup_parent, KILL_TIMEOUT);
        if self.made_blob_info_cache {
            let cache = Path::new(BLOB_INFO_CACHE);
            let _ = fs::remove_file(cache.join(BLOB_INFO_CACHE_FILE));
            let _ = fs::remove_dir(cache);
            if let Some(parent) = cache.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            if dir.close().is_err() {
                let _ = fs::remove_dir_all(path);
            }
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The global flags: everything inside `base`, vfs, cgroupfs, events in a file, `runtime`
/// when given.
fn global_args(base: &Path, runtime: Option<&Path>) -> Vec<OsString> {
    let path = |flag: &str, name: &str| {
        let mut arg = OsString::from(format!("--{flag}="));
        arg.push(base.join(name));
        arg
    };
    let mut args = vec![
        path("root", "root"),
        path("runroot", "runroot"),
        path("tmpdir", "tmp"),
        path("network-config-dir", "cni"),
        "--storage-driver=vfs".into(),
        "--cgroup-manager=cgroupfs".into(),
        "--events-backend=file".into(),
    ];
    if let Some(runtime) = runtime {
        let mut arg = OsString::from("--runtime=");
        arg.push(runtime);
        args.push(arg);
    }
    args
}

/// The variables naming the harness's configuration files.
fn config_env(base: &Path) -> Vec<(String, OsString)> {
    [
        ("CONTAINERS_CONF", "containers.conf"),
        ("CONTAINERS_STORAGE_CONF", "storage.conf"),
        ("CONTAINERS_REGISTRIES_CONF", "registries.conf"),
    ]
    .into_iter()
    .map(|(var, file)| (var.to_owned(), base.join(file).into_os_string()))
    .collect()
}

/// A TOML basic string.
fn quote(value: &OsStr) -> String {
    serde_json::to_string(&value.to_string_lossy()).unwrap_or_default()
}

/// `containers.conf`: no network by default, file locks and image copies in `base`, the
/// runtime named `runtime_name` speaking runc's JSON log, conmon's environment `conmon_env`.
fn containers_conf(base: &Path, runtime_name: Option<&str>, conmon_env: &[(String, OsString)]) -> String {
    let env: Vec<String> = conmon_env
        .iter()
        .map(|(k, v)| {
            let mut pair = OsString::from(format!("{k}="));
            pair.push(v);
            quote(&pair)
        })
        .collect();
    let mut json_runtimes = vec![quote(OsStr::new("runc")), quote(OsStr::new("crun"))];
    json_runtimes.extend(runtime_name.map(|n| quote(OsStr::new(n))));
    format!(
        "[containers]\nnetns = \"none\"\n\n\
         [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nlock_type = \"file\"\n\
         image_copy_tmp_dir = {images_tmp}\ntmp_dir = {tmp}\n\
         runtime_supports_json = [{json}]\nconmon_env_vars = [{env}]\n\n\
         [network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = {cni}\n",
        images_tmp = quote(base.join("images-tmp").as_os_str()),
        tmp = quote(base.join("tmp").as_os_str()),
        json = json_runtimes.join(", "),
        env = env.join(", "),
        cni = quote(base.join("cni").as_os_str()),
    )
}

/// `storage.conf`: vfs, both roots in `base`.
fn storage_conf(base: &Path) -> String {
    format!(
        "[storage]\ndriver = \"vfs\"\ngraphroot = {}\nrunroot = {}\n",
        quote(base.join("root").as_os_str()),
        quote(base.join("runroot").as_os_str())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_inside_the_directory() {
        let base = Path::new("/tmp/wisp-podman-x");
        let args = global_args(base, Some(Path::new("/opt/wisp-runtime")));
        let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        for flag in ["--root=", "--runroot=", "--tmpdir=", "--network-config-dir="] {
            let arg = args.iter().find(|a| a.starts_with(flag)).unwrap_or_else(|| panic!("{flag} missing: {args:?}"));
            assert!(arg[flag.len()..].starts_with("/tmp/wisp-podman-x/"), "{arg}");
        }
        for flag in ["--storage-driver=vfs", "--cgroup-manager=cgroupfs", "--runtime=/opt/wisp-runtime"] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing: {args:?}");
        }
        let storage = storage_conf(base);
        for line in storage.lines().filter(|l| l.contains('/')) {
            assert!(line.contains("\"/tmp/wisp-podman-x/"), "{line}");
        }
        for (_, value) in config_env(base) {
            assert!(Path::new(&value).starts_with(base), "{value:?}");
        }
    }

    #[test]
    fn containers_conf_is_toml_with_the_runtime_and_conmon_environment() {
        let base = Path::new("/tmp/wisp-podman-x");
        let env = [("WISP_CONFIG".to_owned(), OsString::from("/tmp/a \"b\"/wisp.toml"))];
        let text = containers_conf(base, Some("wisp-runtime"), &env);
        assert!(text.contains("runtime_supports_json = [\"runc\", \"crun\", \"wisp-runtime\"]"), "{text}");
        assert!(text.contains(r#"conmon_env_vars = ["WISP_CONFIG=/tmp/a \"b\"/wisp.toml"]"#), "{text}");
        assert!(text.contains("netns = \"none\"") && text.contains("lock_type = \"file\""), "{text}");
        for line in text.lines().filter(|l| l.contains("= \"/")) {
            assert!(line.contains("\"/tmp/wisp-podman-x/"), "{line}");
        }
    }
}
