//! The record of each container: `<root>/<id>/state.json`.
//!
//! The root may be shared with other users of the machine (`--root` is the caller's choice), so
//! `<root>/<id>` is opened once without following a symlink and everything in it is reached
//! through that descriptor (`openat`, `renameat`). A record is replaced whole (a temporary file
//! renamed over it), so a reader never sees half of one and needs no lock; a command that reads,
//! changes and writes a record holds an exclusive `flock` on `<root>/<id>/lock` ([`Locked`]).
//!
//! The monitor's pid is kept with its start time (field 22 of `/proc/PID/stat`) and the boot
//! id, so a monitor that died without a word (SIGKILL) or whose pid went to another process reads
//! as `stopped` ([`ContainerState::live_status`]).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{DirBuilder, File};
use std::io::{self, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

use super::RuntimeError;
use crate::state::Processes;

/// runc's `--root` is `/run/runc`; ours (for root; see [`default_root`]).
pub const DEFAULT_ROOT: &str = "/run/wisp-runtime";

/// The root when `--root` is not given, by runc's rule: [`DEFAULT_ROOT`] for root, and for
/// another user `$XDG_RUNTIME_DIR/wisp-runtime` when that variable is set (`/run` is root's).
pub fn default_root(euid: u32, xdg_runtime_dir: Option<&std::ffi::OsStr>) -> PathBuf {
    match xdg_runtime_dir.filter(|d| euid != 0 && !d.is_empty()) {
        Some(dir) => Path::new(dir).join("wisp-runtime"),
        None => PathBuf::from(DEFAULT_ROOT),
    }
}
/// The record in a container's directory.
pub const STATE_FILE: &str = "state.json";
/// The file a command that changes the record locks.
pub const LOCK_FILE: &str = "lock";
const STATE_TMP: &str = "state.json.tmp";
/// Mode of the root and of each container's directory.
pub const DIR_MODE: u32 = 0o700;

/// A container's status, with the OCI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
        })
    }
}

/// The monitor process, named so that a recycled pid is not taken for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Monitor {
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat` (clock ticks after boot).
    pub start_time: u64,
    pub boot_id: String,
}

impl Monitor {
    /// Process `pid` as it runs now; `None` when it does not run (or is a zombie).
    pub fn of(pid: u32, procs: &dyn Processes) -> Option<Self> {
        Some(Self { pid, start_time: procs.start_time(pid)?, boot_id: procs.boot_id() })
    }

    /// Whether this very process still runs.
    pub fn alive(&self, procs: &dyn Processes) -> bool {
        self.boot_id == procs.boot_id() && procs.start_time(self.pid) == Some(self.start_time)
    }
}

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    /// The bundle directory, absolute.
    pub bundle: PathBuf,
    /// The bundle's `root.path`, absolute.
    pub rootfs: PathBuf,
    /// The monitor, once it runs.
    pub monitor: Option<Monitor>,
    /// The status last written; see [`Self::live_status`].
    pub status: Status,
    /// When the container was created, RFC 3339 with nanoseconds as runc writes it.
    pub created: String,
    /// The uid that created it.
    pub owner: u32,
    /// The bundle's annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The container's exit status once known (128+signal when a signal killed it).
    #[serde(default)]
    pub exit_status: Option<i32>,
}

impl ContainerState {
    /// A new record for `id` from `bundle`'s config.json: created now by this user, no monitor
    /// yet.
    pub fn from_bundle(id: &str, bundle: &Path) -> Result<Self, RuntimeError> {
        let bundle = std::path::absolute(bundle).map_err(RuntimeError::io("cannot resolve the bundle", bundle))?;
        let config = bundle.join("config.json");
        let spec = match oci_spec::runtime::Spec::load(&config) {
            Ok(spec) => spec,
            Err(oci_spec::OciSpecError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RuntimeError::NoSpec(config))
            }
            Err(source) => return Err(RuntimeError::BadSpec { path: config, source }),
        };
        let root = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_else(|| "rootfs".into());
        Ok(Self {
            id: id.to_owned(),
            rootfs: bundle.join(root),
            bundle,
            monitor: None,
            status: Status::Created,
            created: super::log::rfc3339(std::time::SystemTime::now(), true),
            owner: nix::unistd::geteuid().as_raw(),
            annotations: spec.annotations().clone().unwrap_or_default().into_iter().collect(),
            exit_status: None,
        })
    }

    /// The status as it is: `stopped` when the monitor is dead (or was never recorded) whatever
    /// the record says, since a monitor killed with SIGKILL never wrote it.
    pub fn live_status(&self, procs: &dyn Processes) -> Status {
        match self.status {
            Status::Stopped => Status::Stopped,
            status if self.monitor.as_ref().is_some_and(|m| m.alive(procs)) => status,
            _ => Status::Stopped,
        }
    }
}

/// runc's rule for ids: letters, digits and `_+,-.`, not `.` or `..` (so never a path).
pub fn validate_id(id: &str) -> Result<(), RuntimeError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_+,-.".contains(c);
    if id.is_empty() || id == "." || id == ".." || !id.chars().all(allowed) {
        return Err(RuntimeError::InvalidId(id.to_owned()));
    }
    Ok(())
}

/// The containers under one `--root`.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store at `root` (nothing is touched until a command needs it).
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_owned() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of container `id` (the monitor's control socket goes there too).
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Makes the directory of a new container, locked: refused for a bad id or one that
    /// exists. The root is made (0700) when missing.
    pub fn create(&self, id: &str) -> Result<Locked, RuntimeError> {
        validate_id(id)?;
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&self.root)
            .map_err(RuntimeError::io("cannot create the root", &self.root))?;
        let dir = self.dir(id);
        match DirBuilder::new().mode(DIR_MODE).create(&dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(RuntimeError::Exists(id.to_owned())),
            other => other.map_err(RuntimeError::io("cannot create", &dir))?,
        }
        self.lock(id)
    }

    /// Locks container `id`'s record for a change; `does not exist` when it has no directory.
    pub fn lock(&self, id: &str) -> Result<Locked, RuntimeError> {
        let (dir, path) = self.open_dir(id)?;
        let lock = openat(
            &dir,
            LOCK_FILE,
            OFlag::O_CREAT | OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .map_err(|e| RuntimeError::Io {
            what: "cannot open the lock in",
            path: path.clone(),
            source: e.into(),
        })?;
        let lock = Flock::lock(File::from(lock), FlockArg::LockExclusive).map_err(|(_, e)| RuntimeError::Io {
            what: "cannot lock",
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(Locked { id: id.to_owned(), path, dir, _lock: lock })
    }

    /// Container `id`'s record, without a lock (records are replaced whole).
    pub fn load(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        let (dir, path) = self.open_dir(id)?;
        read_state(&dir, id, &path)
    }

    /// Every container's record, by id. Directories without a record (a `create` half-way, a
    /// `delete` racing this) and entries that are not directories are left out.
    pub fn list(&self) -> Result<Vec<ContainerState>, RuntimeError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RuntimeError::Io { what: "cannot list", path: self.root.clone(), source: e }),
        };
        let mut states = Vec::new();
        for entry in entries {
            let entry = entry.map_err(RuntimeError::io("cannot list", &self.root))?;
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if validate_id(&id).is_err() {
                continue;
            }
            match self.load(&id) {
                Ok(state) => states.push(state),
                Err(RuntimeError::NotExist(_) | RuntimeError::NotADirectory { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        states.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(states)
    }

    /// `<root>/<id>` opened as a directory, never through a symlink.
    fn open_dir(&self, id: &str) -> Result<(OwnedFd, PathBuf), RuntimeError> {
        validate_id(id)?;
        let path = self.dir(id);
        let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        match nix::fcntl::open(&path, flags, Mode::empty()) {
            Ok(fd) => Ok((fd, path)),
            Err(Errno::ENOENT) => Err(RuntimeError::NotExist(id.to_owned())),
            Err(Errno::ELOOP | Errno::ENOTDIR) => Err(RuntimeError::NotADirectory { path }),
            Err(e) => Err(RuntimeError::Io { what: "cannot open", path, source: e.into() }),
        }
    }
}

fn read_state(dir: &OwnedFd, id: &str, path: &Path) -> Result<ContainerState, RuntimeError> {
    let file = match openat(dir, STATE_FILE, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(Errno::ENOENT) => return Err(RuntimeError::NotExist(id.to_owned())),
        Err(e) => {
            return Err(RuntimeError::Io { what: "cannot open the state in", path: path.to_owned(), source: e.into() })
        }
    };
    serde_json::from_reader(io::BufReader::new(file)).map_err(|source| RuntimeError::Json {
        what: "cannot parse the state in",
        path: path.to_owned(),
        source,
    })
}

/// A container's directory under its lock (released on drop).
#[derive(Debug)]
pub struct Locked {
    id: String,
    path: PathBuf,
    dir: OwnedFd,
    _lock: Flock<File>,
}

impl Locked {
    /// The container's directory.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The record; `does not exist` when there is none (yet, or any more).
    pub fn load(&self) -> Result<ContainerState, RuntimeError> {
        read_state(&self.dir, &self.id, &self.path)
    }

    /// Replaces the record whole: written to a temporary file, synced, renamed over it.
    pub fn save(&self, state: &ContainerState) -> Result<(), RuntimeError> {
        let fail =
            |source: io::Error| RuntimeError::Io { what: "cannot write the state in", path: self.path.clone(), source };
        let json = serde_json::to_vec(state).map_err(|source| RuntimeError::Json {
            what: "cannot serialize the state of",
            path: self.path.clone(),
            source,
        })?;
        let flags = OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut tmp =
            File::from(openat(&self.dir, STATE_TMP, flags, Mode::S_IRUSR | Mode::S_IWUSR).map_err(|e| fail(e.into()))?);
        tmp.write_all(&json).and_then(|()| tmp.sync_all()).map_err(fail)?;
        renameat(&self.dir, STATE_TMP, &self.dir, STATE_FILE).map_err(|e| fail(e.into()))
    }

    /// Removes the container's directory, if the path still names the directory that was
    /// locked (a directory swapped in behind it is left alone).
    pub fn remove(self) -> Result<(), RuntimeError> {
        let fail = |source: io::Error| RuntimeError::Io { what: "cannot remove", path: self.path.clone(), source };
        let meta = std::fs::symlink_metadata(&self.path).map_err(fail)?;
        let locked = nix::sys::stat::fstat(&self.dir).map_err(|e| fail(e.into()))?;
        if !meta.is_dir() || meta.dev() != locked.st_dev as u64 || meta.ino() != locked.st_ino {
            return Err(RuntimeError::NotADirectory { path: self.path.clone() });
        }
        std::fs::remove_dir_all(&self.path).map_err(fail)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::state::ProcFs;
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A record as runc showed one of its containers here (the tests of the modules beside
    /// this one use it too).
    pub(crate) fn record(id: &str, monitor: Option<Monitor>, status: Status) -> ContainerState {
        ContainerState {
            id: id.to_owned(),
            bundle: "/tmp/rc-probe/b".into(),
            rootfs: "/tmp/rc-probe/b/rootfs".into(),
            monitor,
            status,
            created: "2026-12-06T01:34:23.040327255Z".into(),
            owner: 0,
            annotations: BTreeMap::from([("a.b".to_owned(), "c".to_owned())]),
            exit_status: None,
        }
    }

    #[test]
    fn the_default_root_follows_runcs_rule() {
        let xdg = Some(std::ffi::OsStr::new("/run/user/1000"));
        assert_eq!(default_root(0, xdg), Path::new(DEFAULT_ROOT));
        assert_eq!(default_root(1000, xdg), Path::new("/run/user/1000/wisp-runtime"));
        assert_eq!(default_root(1000, None), Path::new(DEFAULT_ROOT));
        assert_eq!(default_root(1000, Some(std::ffi::OsStr::new(""))), Path::new(DEFAULT_ROOT));
    }

    #[test]
    fn ids_follow_runcs_rule() {
        for id in ["a", "c1", "A_b-c.d+e,f", "...", "x..y", &"7".repeat(64)] {
            validate_id(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        }
        for id in ["", ".", "..", "a/b", "../x", "/abs", "a b", "é", "a\n", "a:b", "a*"] {
            assert!(matches!(validate_id(id), Err(RuntimeError::InvalidId(_))), "{id:?}");
        }
    }

    #[test]
    fn a_record_round_trips_and_a_second_create_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(&tmp.path().join("root"));
        let locked = store.create("c1").unwrap();
        assert_eq!(std::fs::metadata(store.root()).unwrap().permissions().mode() & 0o7777, DIR_MODE);
        assert_eq!(std::fs::metadata(locked.dir()).unwrap().permissions().mode() & 0o7777, DIR_MODE);
        assert!(matches!(locked.load(), Err(RuntimeError::NotExist(ref id)) if id == "c1"), "no record yet");
        let state = record("c1", None, Status::Created);
        locked.save(&state).unwrap();
        assert_eq!(locked.load().unwrap(), state);
        assert_eq!(store.load("c1").unwrap(), state);
        drop(locked);
        let err = store.create("c1").unwrap_err();
        assert!(matches!(err, RuntimeError::Exists(_)), "{err}");
        assert_eq!(err.to_string(), "container with id exists: c1");
        assert!(matches!(store.create("../c1"), Err(RuntimeError::InvalidId(_))));
        let err = store.load("c2").unwrap_err();
        assert_eq!(err.to_string(), "container \"c2\" does not exist");
        assert!(matches!(store.lock("c2"), Err(RuntimeError::NotExist(_))));
    }

    #[test]
    fn a_save_replaces_the_record_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        let locked = store.create("c1").unwrap();
        let first = record("c1", None, Status::Created);
        locked.save(&first).unwrap();
        // A reader that opened the record before a save keeps reading the whole old one.
        let before = File::open(locked.dir().join(STATE_FILE)).unwrap();
        let second = ContainerState { status: Status::Running, exit_status: Some(3), ..first.clone() };
        locked.save(&second).unwrap();
        let old: ContainerState = serde_json::from_reader(before).unwrap();
        assert_eq!((old, store.load("c1").unwrap()), (first, second));
        let names: Vec<_> = std::fs::read_dir(locked.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(!names.iter().any(|n| n == STATE_TMP), "no temporary file left: {names:?}");
    }

    #[test]
    fn the_lock_excludes_a_second_writer_until_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        let first = store.create("c1").unwrap();
        let got = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (store, got) = (store.clone(), got.clone());
            std::thread::spawn(move || {
                let second = store.lock("c1").unwrap();
                got.store(true, Ordering::SeqCst);
                drop(second);
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(!got.load(Ordering::SeqCst), "a second lock was granted while the first was held");
        drop(first);
        waiter.join().unwrap();
        assert!(got.load(Ordering::SeqCst));
    }

    #[test]
    fn a_symlinked_container_directory_is_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(&tmp.path().join("root"));
        store.create("real").unwrap().save(&record("real", None, Status::Created)).unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join(STATE_FILE), serde_json::to_vec(&record("evil", None, Status::Running)).unwrap())
            .unwrap();
        std::os::unix::fs::symlink(&elsewhere, store.dir("evil")).unwrap();
        assert!(matches!(store.load("evil"), Err(RuntimeError::NotADirectory { .. })));
        assert!(matches!(store.lock("evil"), Err(RuntimeError::NotADirectory { .. })));
        assert!(matches!(store.create("evil"), Err(RuntimeError::Exists(_))));
        let ids: Vec<_> = store.list().unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["real"]);
        assert!(elsewhere.join(STATE_FILE).exists(), "the link's target is untouched");
    }

    #[test]
    fn list_skips_half_made_entries_and_remove_takes_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(&tmp.path().join("root"));
        assert!(store.list().unwrap().is_empty(), "a missing root lists nothing");
        for id in ["b", "a"] {
            store.create(id).unwrap().save(&record(id, None, Status::Created)).unwrap();
        }
        let half = store.create("half").unwrap();
        std::fs::write(store.root().join("not-a-dir"), "x").unwrap();
        std::fs::create_dir(store.root().join("bad id")).unwrap();
        let ids: Vec<_> = store.list().unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["a", "b"]);
        half.remove().unwrap();
        store.lock("a").unwrap().remove().unwrap();
        assert!(!store.dir("a").exists() && !store.dir("half").exists());
        let ids: Vec<_> = store.list().unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["b"]);
    }

    #[test]
    fn a_record_with_a_dead_monitor_reads_stopped() {
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let monitor = Monitor::of(child.id(), &ProcFs).expect("sleep runs");
        let state = record("c1", Some(monitor), Status::Running);
        assert_eq!(state.live_status(&ProcFs), Status::Running);
        assert_eq!(ContainerState { status: Status::Paused, ..state.clone() }.live_status(&ProcFs), Status::Paused);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(state.live_status(&ProcFs), Status::Stopped, "SIGKILLed and reaped");
        assert_eq!(record("c1", None, Status::Created).live_status(&ProcFs), Status::Stopped, "no monitor recorded");
    }

    #[test]
    fn a_reused_pid_is_not_the_monitor() {
        let me = Monitor::of(std::process::id(), &ProcFs).unwrap();
        assert_eq!(record("c1", Some(me.clone()), Status::Running).live_status(&ProcFs), Status::Running);
        let older = Monitor { start_time: me.start_time.saturating_sub(1), ..me.clone() };
        assert_eq!(record("c1", Some(older), Status::Running).live_status(&ProcFs), Status::Stopped);
        let rebooted = Monitor { boot_id: "another boot".into(), ..me };
        assert_eq!(record("c1", Some(rebooted), Status::Running).live_status(&ProcFs), Status::Stopped);
    }

    #[test]
    fn a_bundle_gives_the_rootfs_and_annotations() {
        let tmp = tempfile::tempdir().unwrap();
        let err = ContainerState::from_bundle("c1", tmp.path()).unwrap_err();
        assert!(matches!(err, RuntimeError::NoSpec(_)), "{err}");
        assert!(err.to_string().contains("config.json not found"), "{err}");
        std::fs::write(tmp.path().join("config.json"), "{not json").unwrap();
        assert!(matches!(ContainerState::from_bundle("c1", tmp.path()), Err(RuntimeError::BadSpec { .. })));
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "annotations": {"org.example": "yes"},
        });
        std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
        let state = ContainerState::from_bundle("c1", tmp.path()).unwrap();
        assert_eq!((state.bundle.as_path(), state.rootfs.clone()), (tmp.path(), tmp.path().join("rootfs")));
        assert_eq!(state.annotations, BTreeMap::from([("org.example".to_owned(), "yes".to_owned())]));
        assert_eq!(
            (state.status, state.owner, state.monitor),
            (Status::Created, nix::unistd::geteuid().as_raw(), None)
        );
        assert!(state.created.ends_with('Z') && state.created.len() >= 20, "{}", state.created);
    }
}
