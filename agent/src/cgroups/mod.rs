//! One container's cgroup, on cgroup v1 or v2, through cgroups-rs.
//!
//! [`CgroupManager::create`] maps the OCI `linux.cgroupsPath` to a directory in
//! every mounted v1 hierarchy or in the v2 unified tree ([`layout`]), creates it
//! (v1: `cpuset.cpus`/`cpuset.mems` copied down from the parents, which the kernel
//! leaves empty; v2: the controllers enabled in every ancestor's
//! `cgroup.subtree_control`), and applies the resources ([`resources`]). The
//! manager then adds pids, updates resources, reads statistics in Kata's
//! `CgroupStats` shape ([`stats`]), freezes and thaws (waiting until the kernel
//! says the state settled), lists and signals the processes, streams OOM kills
//! ([`oom`]), and removes its directories on [`CgroupManager::destroy`].
//!
//! The file formats of each controller (which file, v1 or v2 name, value syntax)
//! come from cgroups-rs's controllers; what cgroups-rs gets wrong or does not do
//! is done here: the shares -> weight conversion, v2 swap (`memory.swap.max` is
//! swap alone, OCI gives memory+swap), v2 io weights, `unified`, freezer waits,
//! OOM streams, and statistics parsing that can never panic (the agent is PID 1
//! with `panic = "abort"`: a panic powers the VM off).
//!
//! # Blocking
//!
//! Every method but [`CgroupManager::oom_events`] does file I/O on cgroupfs and
//! `freeze`/`thaw`/`destroy` may sleep briefly while the kernel settles: call them
//! from `tokio::task::spawn_blocking` (or accept a few ms on the runtime thread).
//!
//! # Not done
//!
//! - cgroup v2 has no devices controller: access rules would need an eBPF
//!   `BPF_PROG_TYPE_CGROUP_DEVICE` program, which is out of scope. The rules are
//!   ignored on v2 with one warning per agent run; the container's device nodes
//!   are still limited to what its `/dev` holds.
//! - Network classes (`net_cls`, `net_prio`) and rdma are not applied.
//!
//! # Tests
//!
//! Unit tests run unprivileged on a fake tree in a temporary directory (a
//! [`Layout`] whose mount points are ordinary directories). `host_tests` runs as
//! root against the host's real cgroup v1 hierarchies (`cargo test -p wisp-agent`
//! fails them, never skips, when not root): this development host binds every
//! controller to v1, so cgroup v2 is only unit-tested here; a VM test with
//! `agent.unified_cgroup_hierarchy=1` covers it once the container RPCs exist.

mod layout;
mod oom;
mod resources;
mod stats;

#[cfg(test)]
mod host_tests;
#[cfg(test)]
mod test_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cgroups_rs::fs::freezer::FreezerController;
use oci_spec::runtime::LinuxResources;

pub use layout::{Layout, DEFAULT_PARENT};
pub use oom::{OomEvents, OomWatcher};

/// How long freeze/thaw wait for the kernel to report the new state.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid cgroups path {path:?}: {why}")]
    InvalidPath { path: String, why: String },
    #[error("invalid resources: {0}")]
    InvalidResource(String),
    #[error("no cgroup hierarchy is mounted")]
    NoHierarchy,
    #[error("the {controller} controller is not available for cgroup {path:?}")]
    Unsupported { controller: &'static str, path: String },
    #[error("cannot access {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write {value:?} to {path}")]
    Write { path: PathBuf, value: String, source: std::io::Error },
    #[error("cgroup {dir}: {message}")]
    Controller { dir: PathBuf, message: String, errno: Option<i32> },
    #[error("cgroup {path} did not become {state} within {timeout:?}")]
    Timeout { path: PathBuf, state: &'static str, timeout: Duration },
    #[error("cannot remove cgroup {path}")]
    Remove { path: PathBuf, source: std::io::Error },
}

impl CgroupError {
    /// The errno behind the failure, for the caller's choice of ttrpc code.
    pub fn errno(&self) -> Option<i32> {
        match self {
            CgroupError::Io { source, .. } | CgroupError::Write { source, .. } | CgroupError::Remove { source, .. } => {
                source.raw_os_error()
            }
            CgroupError::Controller { errno, .. } => *errno,
            _ => None,
        }
    }

    fn controller(dir: &Path, e: cgroups_rs::fs::error::Error) -> CgroupError {
        use std::error::Error as _;
        let io = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        let message = match io {
            Some(io) => format!("{}: {io}", e.kind()),
            None => e.kind().to_string(),
        };
        CgroupError::Controller { dir: dir.to_owned(), message, errno: io.and_then(|io| io.raw_os_error()) }
    }
}

/// The directories of one cgroup, by controller.
#[derive(Debug, Clone)]
struct Dirs {
    v2: bool,
    /// Every directory the cgroup occupies: one per v1 hierarchy, or the v2 one.
    all: Vec<PathBuf>,
    /// Controller name -> the directory that holds its files.
    by_controller: Vec<(String, PathBuf)>,
}

impl Dirs {
    fn get(&self, controller: &str) -> Option<&Path> {
        self.by_controller.iter().find(|(c, _)| c == controller).map(|(_, d)| d.as_path())
    }
}

/// One container's cgroup.
#[derive(Debug)]
pub struct CgroupManager {
    /// The `cgroupsPath` as the spec gave it, for messages.
    path: String,
    dirs: Dirs,
}

impl CgroupManager {
    /// Creates the container's cgroup on the running system and applies `resources`.
    pub fn create(cgroups_path: &str, resources: Option<&LinuxResources>) -> Result<Self, CgroupError> {
        Self::create_in(&Layout::discover()?, DEFAULT_PARENT, cgroups_path, resources)
    }

    /// [`create`](Self::create) in a given layout; relative paths go under
    /// `parent` in the agent's own cgroup.
    pub fn create_in(
        layout: &Layout,
        parent: &str,
        cgroups_path: &str,
        resources: Option<&LinuxResources>,
    ) -> Result<Self, CgroupError> {
        // Leaves created here are removed again when a later step fails, so a
        // refused CreateContainer leaves no cgroup behind (pre-existing ones stay).
        let mut fresh = Vec::new();
        let result = Self::build(layout, parent, cgroups_path, &mut fresh).and_then(|manager| {
            if let Some(r) = resources {
                resources::apply(&manager.dirs, &manager.path, r)?;
            }
            Ok(manager)
        });
        if result.is_err() {
            for dir in fresh.iter().rev() {
                let _ = remove_tree(dir);
            }
        }
        result
    }

    fn build(layout: &Layout, parent: &str, cgroups_path: &str, fresh: &mut Vec<PathBuf>) -> Result<Self, CgroupError> {
        let dirs = match layout {
            Layout::V1(mounts) => {
                let mut dirs = Dirs { v2: false, all: Vec::new(), by_controller: Vec::new() };
                for m in mounts {
                    let rel = layout::resolve(cgroups_path, &m.own, parent)?;
                    let dir = m.mount.join(&rel);
                    if !dir.exists() {
                        std::fs::create_dir_all(&dir)
                            .map_err(|source| CgroupError::Io { path: dir.clone(), source })?;
                        fresh.push(dir.clone());
                    }
                    if m.controllers.iter().any(|c| c == "cpuset") {
                        inherit_cpuset(&m.mount, &rel)?;
                    }
                    for c in &m.controllers {
                        dirs.by_controller.push((c.clone(), dir.clone()));
                    }
                    dirs.all.push(dir);
                }
                dirs
            }
            Layout::V2 { mount, own } => {
                let rel = layout::resolve(cgroups_path, own, parent)?;
                let existed = mount.join(&rel).exists();
                let (dir, available) = create_v2(mount, &rel)?;
                if !existed {
                    fresh.push(dir.clone());
                }
                let mut by_controller: Vec<(String, PathBuf)> =
                    available.into_iter().map(|c| (c, dir.clone())).collect();
                // The freezer is core v2 (cgroup.freeze), not a controller.
                by_controller.push(("freezer".into(), dir.clone()));
                Dirs { v2: true, all: vec![dir], by_controller }
            }
        };
        Ok(CgroupManager { path: cgroups_path.to_owned(), dirs })
    }

    /// Whether this cgroup lives in the v2 unified hierarchy.
    pub fn is_v2(&self) -> bool {
        self.dirs.v2
    }

    /// The cgroup's directories (one per v1 hierarchy, or the v2 one).
    pub fn paths(&self) -> &[PathBuf] {
        &self.dirs.all
    }

    /// Moves process `pid` (and, as it has no children yet, its future descendants) in.
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        if pid <= 0 {
            return Err(CgroupError::InvalidResource(format!("pid {pid} cannot join a cgroup")));
        }
        for dir in &self.dirs.all {
            write_file(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Applies new resources (UpdateContainer); fields left unset keep their values.
    pub fn update(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        resources::apply(&self.dirs, &self.path, resources)
    }

    /// Statistics in the shape of Kata's `CgroupStats`; missing files read as zero.
    pub fn stats(&self) -> protocols::agent::CgroupStats {
        stats::collect(&self.dirs)
    }

    /// The processes in the cgroup (all hierarchies, deduplicated).
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .all
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| s.lines().filter_map(|l| l.trim().parse::<i32>().ok()).collect::<Vec<_>>())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Stops every process in the cgroup and returns once the kernel says they are frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.set_frozen(true, FREEZE_TIMEOUT)
    }

    /// Resumes the processes and returns once the kernel says they are thawed.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.set_frozen(false, FREEZE_TIMEOUT)
    }

    fn set_frozen(&self, frozen: bool, timeout: Duration) -> Result<(), CgroupError> {
        let Some(dir) = self.dirs.get("freezer") else {
            return Err(CgroupError::Unsupported { controller: "freezer", path: self.path.clone() });
        };
        let ctl = FreezerController::new(dir.to_owned(), PathBuf::new(), self.dirs.v2);
        let state = if frozen { "FROZEN" } else { "THAWED" };
        let request = || if frozen { ctl.freeze() } else { ctl.thaw() };
        request().map_err(|e| CgroupError::controller(dir, e))?;
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(1);
        let mut rounds = 0u32;
        loop {
            if freezer_settled(dir, self.dirs.v2, frozen) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::Timeout { path: dir.to_owned(), state, timeout });
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(20));
            rounds += 1;
            // A v1 freeze can stall on a task in an uninterruptible sleep; asking
            // again restarts it (runc does the same).
            if !self.dirs.v2 && frozen && rounds % 25 == 0 {
                request().map_err(|e| CgroupError::controller(dir, e))?;
            }
        }
    }

    /// Sends `signal` to every process in the cgroup (v2 with SIGKILL: `cgroup.kill`,
    /// which also catches processes forked meanwhile).
    pub fn kill_all(&self, signal: nix::sys::signal::Signal) -> Result<(), CgroupError> {
        if self.dirs.v2 && signal == nix::sys::signal::Signal::SIGKILL {
            let kill = self.dirs.all[0].join("cgroup.kill");
            if kill.exists() {
                return write_file(&kill, "1");
            }
        }
        for pid in self.pids() {
            match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(e) => {
                    return Err(CgroupError::Io { path: PathBuf::from(format!("/proc/{pid}")), source: e.into() })
                }
            }
        }
        Ok(())
    }

    /// An async stream that yields once per OOM kill in this cgroup.
    pub fn oom_events(&self) -> Result<OomEvents, CgroupError> {
        let Some(dir) = self.dirs.get("memory") else {
            return Err(CgroupError::Unsupported { controller: "memory", path: self.path.clone() });
        };
        OomEvents::new(dir, self.dirs.v2)
    }

    /// Removes the cgroup's directories (and any sub-cgroups), deepest first. The
    /// processes must be gone; the kernel may need a moment after the last one was
    /// reaped, so each removal is retried briefly.
    pub fn destroy(self) -> Result<(), CgroupError> {
        for dir in &self.dirs.all {
            remove_tree(dir)?;
        }
        Ok(())
    }
}

/// Whether the freezer reports the wanted state.
fn freezer_settled(dir: &Path, v2: bool, frozen: bool) -> bool {
    if v2 {
        let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
        let want = if frozen { "1" } else { "0" };
        events.lines().any(|l| l.split_once(' ').is_some_and(|(k, v)| k == "frozen" && v.trim() == want))
    } else {
        let state = std::fs::read_to_string(dir.join("freezer.state")).unwrap_or_default();
        state.trim() == if frozen { "FROZEN" } else { "THAWED" }
    }
}

/// Creates `rel` under the v2 `mount`, enabling in every ancestor the controllers
/// it has, so the leaf can use them. Returns the leaf and its controllers (what
/// its parent's `cgroup.subtree_control` delegates, which is what the kernel
/// shows in the leaf's `cgroup.controllers`).
fn create_v2(mount: &Path, rel: &str) -> Result<(PathBuf, Vec<String>), CgroupError> {
    let mut cur = mount.to_owned();
    let mut available = words(&std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default());
    for comp in rel.split('/') {
        available = enable_subtree_controllers(&cur, &available);
        cur.push(comp);
        match std::fs::create_dir(&cur) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CgroupError::Io { path: cur, source }),
        }
    }
    Ok((cur, available))
}

/// Controller names in a `cgroup.controllers` or `cgroup.subtree_control` text.
fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(|w| w.trim_start_matches('+').to_owned()).collect()
}

/// Delegates `available` (what `dir` has) to `dir`'s children and returns what
/// its `cgroup.subtree_control` then holds. All at once first; if the kernel
/// refuses the set (a threaded subtree, a busy cpuset), one by one, so one
/// refused controller does not keep the others away. A refusal is not an error
/// here: asking for that controller's resources later reports it.
fn enable_subtree_controllers(dir: &Path, available: &[String]) -> Vec<String> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = words(&std::fs::read_to_string(&file).unwrap_or_default());
    let missing: Vec<&String> = available.iter().filter(|c| !enabled.contains(c)).collect();
    if !missing.is_empty() {
        let all: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
        if std::fs::write(&file, all.join(" ")).is_err() {
            for c in missing {
                if let Err(e) = std::fs::write(&file, format!("+{c}")) {
                    log::debug!("cannot enable the {c} controller in {}: {e}", dir.display());
                }
            }
        }
    }
    words(&std::fs::read_to_string(&file).unwrap_or_default())
}

/// A new v1 cpuset cgroup starts with empty `cpuset.cpus` and `cpuset.mems`, and
/// a task cannot join it until both are set: copy them down from the nearest
/// ancestor, level by level, for every level under `mount` down to `rel`.
fn inherit_cpuset(mount: &Path, rel: &str) -> Result<(), CgroupError> {
    let mut parent = mount.to_owned();
    for comp in rel.split('/') {
        let child = parent.join(comp);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let Ok(parent_value) = std::fs::read_to_string(parent.join(file)) else { continue };
            let child_value = std::fs::read_to_string(child.join(file)).unwrap_or_default();
            if child_value.trim().is_empty() && !parent_value.trim().is_empty() {
                write_file(&child.join(file), parent_value.trim())?;
            }
        }
        parent = child;
    }
    Ok(())
}

/// Removes `dir` after its sub-directories, retrying while the kernel finishes
/// with the cgroup's last processes.
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(CgroupError::Io { path: dir.to_owned(), source }),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    let mut delay = Duration::from_millis(5);
    let mut attempt = 0;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // A fake tree in tests holds regular files; cgroupfs never does.
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) && !is_cgroupfs(dir) => {
                return std::fs::remove_dir_all(dir)
                    .map_err(|source| CgroupError::Remove { path: dir.to_owned(), source })
            }
            Err(source) if attempt >= 6 => return Err(CgroupError::Remove { path: dir.to_owned(), source }),
            Err(_) => {
                std::thread::sleep(delay);
                delay *= 2;
                attempt += 1;
            }
        }
    }
}

pub(super) fn is_cgroupfs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir).is_ok_and(|s| {
        s.filesystem_type() == nix::sys::statfs::CGROUP_SUPER_MAGIC
            || s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC
    })
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::test_support::{read, resources, write, FakeTree};
    use super::*;

    #[test]
    fn v1_creates_the_path_in_every_hierarchy_and_inherits_cpusets() {
        let t = FakeTree::v1();
        let m = t.create("/kata/c1", None);
        assert_eq!(m.paths().len(), test_support::V1_MOUNTS.len());
        assert!(!m.is_v2());
        for mount in test_support::V1_MOUNTS {
            assert!(t.dir(mount, "kata/c1").is_dir(), "{mount}");
        }
        for level in ["kata", "kata/c1"] {
            assert_eq!(read(&t.dir("cpuset", level), "cpuset.cpus"), "0-3");
            assert_eq!(read(&t.dir("cpuset", level), "cpuset.mems"), "0");
        }
        // A relative path goes under the parent in the agent's own cgroup.
        t.create("c2", None);
        assert!(t.dir("memory", "wisp/c2").is_dir());
    }

    #[test]
    fn v2_delegates_controllers_down_to_the_leaf() {
        let t = FakeTree::v2();
        let m = t.create("/c1", Some(&resources(r#"{"pids":{"limit":10}}"#)));
        assert!(m.is_v2());
        assert_eq!(read(&t.dir("", ""), "cgroup.subtree_control"), "+cpuset +cpu +io +memory +hugetlb +pids");
        assert_eq!(read(&t.dir("", "c1"), "pids.max"), "10");
        let err = t.try_create("/..", None).unwrap_err();
        assert!(matches!(err, CgroupError::InvalidPath { .. }), "{err}");
    }

    #[test]
    fn add_pid_writes_every_hierarchy_and_pids_merges_them() {
        let t = FakeTree::v1();
        let m = t.create("/c1", None);
        m.add_pid(4242).unwrap();
        assert_eq!(read(&t.dir("memory", "c1"), "cgroup.procs"), "4242");
        assert_eq!(read(&t.dir("freezer", "c1"), "cgroup.procs"), "4242");
        write(&t.dir("pids", "c1"), "cgroup.procs", "7\n4242\n");
        assert_eq!(m.pids(), [7, 4242]);
        assert!(m.add_pid(0).is_err());
    }

    #[test]
    fn v2_freeze_waits_for_cgroup_events() {
        let t = FakeTree::v2();
        let m = t.create("/c1", None);
        let d = t.dir("", "c1");
        write(&d, "cgroup.events", "populated 1\nfrozen 0\n");
        let events = d.join("cgroup.events");
        let flip = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(events, "populated 1\nfrozen 1\n").unwrap();
        });
        let started = Instant::now();
        m.freeze().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(40), "returned before the kernel said frozen");
        assert_eq!(read(&d, "cgroup.freeze"), "1");
        flip.join().unwrap();
        // Nobody flips it back: thaw times out and says which cgroup.
        let e = m.set_frozen(false, Duration::from_millis(50)).unwrap_err();
        assert!(e.to_string().contains("did not become THAWED"), "{e}");
        assert_eq!(read(&d, "cgroup.freeze"), "0");
    }

    #[test]
    fn v1_freeze_reads_freezer_state() {
        let t = FakeTree::v1();
        let m = t.create("/c1", None);
        m.freeze().unwrap();
        assert_eq!(read(&t.dir("freezer", "c1"), "freezer.state"), "FROZEN");
        m.thaw().unwrap();
        assert_eq!(read(&t.dir("freezer", "c1"), "freezer.state"), "THAWED");
        let no_freezer = FakeTree::v1_without("freezer").create("/c1", None);
        assert!(matches!(no_freezer.freeze(), Err(CgroupError::Unsupported { controller: "freezer", .. })));
    }

    #[test]
    fn a_refused_create_leaves_no_new_directory() {
        let t = FakeTree::v1_without("hugetlb");
        std::fs::create_dir(t.dir("memory", "old")).unwrap();
        for path in ["/new", "/old"] {
            let r = resources(r#"{"hugepageLimits":[{"pageSize":"2MB","limit":1}]}"#);
            assert!(t.try_create(path, Some(&r)).is_err());
        }
        assert!(!t.dir("memory", "new").exists() && !t.dir("cpuset", "new").exists());
        assert!(t.dir("memory", "old").is_dir(), "a cgroup that was there stays");
    }

    #[test]
    fn destroy_removes_the_leaf_and_keeps_the_parents() {
        let t = FakeTree::v1();
        let m = t.create("/kata/c1", None);
        std::fs::create_dir(t.dir("memory", "kata/c1/sub")).unwrap();
        m.destroy().unwrap();
        for mount in test_support::V1_MOUNTS {
            assert!(!t.dir(mount, "kata/c1").exists(), "{mount}");
            assert!(t.dir(mount, "kata").is_dir(), "{mount}");
        }
    }
}
