//! Whose a sandbox's state directory is, and who may remove it.
//!
//! # Identity
//!
//! A sandbox is named by a [`SandboxKey`]: a scope (which front end runs it: the containerd shim,
//! or a future `wisp-runtime --root DIR` with that directory as its scope), the containerd
//! namespace and the id. Docker (`moby`), Kubernetes (`k8s.io`) and `ctr` (`default`) share one
//! containerd, so one id in two namespaces is two sandboxes. Its state directory under the state
//! root is `<namespace>_<id>-<hash>` ([`SandboxKey::dir_name`]): the readable part is cut short
//! and the hash (64-bit FNV-1a of every field, length-prefixed) tells keys apart, so the deepest
//! socket stays far below the 108-byte `sun_path` limit. Everything derived from the directory
//! (its sockets, QMP, the vsock context id, the helpers' cgroup) inherits the distinction.
//!
//! # Ownership
//!
//! A directory appears (by `rename`, [`claim`]) with its [`OWNER_FILE`] already inside: the key,
//! the pid of the shim that created it, that process's start time (field 22 of
//! `/proc/PID/stat`) and the host's boot id, so a recycled pid or a reboot reads as a dead owner.
//! Nothing removes or kills what a live process other than itself owns ([`lock_for_removal`]):
//! a Create whose directory belongs to a live shim is refused; one whose owner died takes the
//! leftovers over (the same cleanup `wisp gc` and containerd's `delete` run).
//! A removal holds an exclusive `flock` on the directory, checked to still be the one at the
//! path, so a sweep and a Create of the same key never remove each other's directory.

use std::fmt;
use std::fs::{self, DirBuilder, File};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// The ownership record inside every sandbox directory.
pub const OWNER_FILE: &str = "owner";
/// The scope of sandboxes run by the containerd shim.
pub const SHIM_SCOPE: &str = "";
/// Bytes of the namespace and the id kept readable in a directory name.
const READABLE_NAMESPACE: usize = 10;
const READABLE_ID: usize = 12;

/// What names a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SandboxKey {
    /// The front end's scope: [`SHIM_SCOPE`], or a `wisp-runtime --root` directory.
    pub scope: String,
    /// The containerd namespace.
    pub namespace: String,
    /// The sandbox id.
    pub id: String,
}

impl SandboxKey {
    /// Sandbox `id` of containerd namespace `namespace`, run by the shim.
    pub fn containerd(namespace: &str, id: &str) -> Self {
        Self { scope: SHIM_SCOPE.to_owned(), namespace: namespace.to_owned(), id: id.to_owned() }
    }

    /// The state directory's name: `<namespace>_<id>-<hash>`, at most 40 bytes of
    /// `[A-Za-z0-9_.-]`, never starting with a dot (those are [`claim`]'s work in progress).
    pub fn dir_name(&self) -> String {
        let hash = [&self.scope, &self.namespace, &self.id].iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, field| {
            let len = u64::try_from(field.len()).unwrap_or(u64::MAX).to_le_bytes();
            len.iter().chain(field.as_bytes()).fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
        });
        format!("{}_{}-{hash:016x}", readable(&self.namespace, READABLE_NAMESPACE), readable(&self.id, READABLE_ID))
    }

    /// The state directory under the state root `root`.
    pub fn dir(&self, root: &Path) -> PathBuf {
        root.join(self.dir_name())
    }
}

impl fmt::Display for SandboxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.scope.is_empty() {
            write!(f, "{}:", self.scope)?;
        }
        write!(f, "{}/{}", self.namespace, self.id)
    }
}

/// The first `max` bytes of `text` that are `[A-Za-z0-9.-]`, others as `-`.
fn readable(text: &str, max: usize) -> String {
    text.bytes().take(max).map(|b| if b.is_ascii_alphanumeric() || b == b'.' { char::from(b) } else { '-' }).collect()
}

/// A process as it can be told apart from a later one with the same pid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The sandbox the directory holds.
    pub key: SandboxKey,
    /// The owning shim's pid.
    pub pid: u32,
    /// Its start time in clock ticks after boot (field 22 of `/proc/PID/stat`).
    pub start_time: u64,
    /// The host boot it ran in.
    pub boot_id: String,
}

/// The host's processes, behind a trait so ownership decisions are testable without them.
pub trait Processes {
    /// This host boot's id.
    fn boot_id(&self) -> String;
    /// The calling process's pid.
    fn me(&self) -> u32;
    /// The start time of running process `pid`, `None` if there is none or it is a zombie or
    /// exiting.
    fn start_time(&self, pid: u32) -> Option<u64>;
}

/// The real host: `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcFs;

impl Processes for ProcFs {
    fn boot_id(&self) -> String {
        fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|id| id.trim().to_owned()).unwrap_or_default()
    }

    fn me(&self) -> u32 {
        std::process::id()
    }

    fn start_time(&self, pid: u32) -> Option<u64> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_stat(&stat)
    }
}

/// The kernel's `PF_EXITING` task flag: set when the task enters `do_exit`, before it closes
/// its descriptors, so long before it is a zombie.
const PF_EXITING: u64 = 0x4;

/// The start time in a `/proc/PID/stat` line, `None` for a process that is a zombie or exiting
/// (it will never run its own code again) or a line that does not parse.
///
/// Exiting counts as dead because containerd runs `delete` for a SIGKILLed shim as soon as its
/// socket closes, which the kernel does while the shim is still exiting: a live reading then
/// left the state alone, and nobody came back for it.
/// The command name (field 2) may hold spaces and parentheses: fields are counted after its
/// last `)`, where field 3 (the state) comes first, field 9 (the flags) 7th and field 22 (the
/// start time) 20th.
fn parse_stat(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if matches!(*fields.first()?, "Z" | "X") {
        return None;
    }
    let flags: u64 = fields.get(6)?.parse().ok()?;
    if flags & PF_EXITING != 0 {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl Owner {
    /// The calling process, as the owner of `key`.
    pub fn me(key: &SandboxKey, procs: &dyn Processes) -> Self {
        let pid = procs.me();
        Self { key: key.clone(), pid, start_time: procs.start_time(pid).unwrap_or(0), boot_id: procs.boot_id() }
    }

    /// Whether the process this records still runs.
    pub fn alive(&self, procs: &dyn Processes) -> bool {
        self.boot_id == procs.boot_id() && procs.start_time(self.pid) == Some(self.start_time)
    }
}

/// Who a directory belongs to, as far as removing it is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// There is no such directory.
    Absent,
    /// The calling process owns it.
    Mine(Owner),
    /// Another running process owns it: hands off.
    Live(Owner),
    /// Its owner is gone: its leftovers may be removed.
    Dead(Owner),
    /// It has no readable ownership record: not ours to judge.
    Unowned(String),
}

/// Who owns the sandbox directory `dir`.
pub fn ownership(dir: &Path, procs: &dyn Processes) -> Ownership {
    let file = dir.join(OWNER_FILE);
    let text = match fs::read(&file) {
        Ok(text) => text,
        Err(err) if err.kind() == ErrorKind::NotFound && !dir.exists() => return Ownership::Absent,
        Err(err) => return Ownership::Unowned(format!("cannot read {}: {err}", file.display())),
    };
    let owner: Owner = match serde_json::from_slice(&text) {
        Ok(owner) => owner,
        Err(err) => return Ownership::Unowned(format!("{} does not parse: {err}", file.display())),
    };
    if !owner.alive(procs) {
        Ownership::Dead(owner)
    } else if owner.pid == procs.me() {
        Ownership::Mine(owner)
    } else {
        Ownership::Live(owner)
    }
}

/// What can go wrong claiming or removing a sandbox directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The directory belongs to a running shim.
    #[error(
        "sandbox {key} is already running: {dir} belongs to the live shim pid {} (of sandbox {})",
        owner.pid, owner.key
    )]
    Busy {
        /// The sandbox asked for.
        key: SandboxKey,
        /// Its directory.
        dir: PathBuf,
        /// Who holds it.
        owner: Box<Owner>,
    },
    /// The directory has no ownership record: it is left alone.
    #[error("{dir} exists without a usable ownership record ({why}); not touching it: remove it by hand")]
    Unowned {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with the record.
        why: String,
    },
    /// No running sandbox has the id.
    #[error("no running sandbox {id:?} under {root}")]
    NotRunning {
        /// The id asked for.
        id: String,
        /// The state root searched.
        root: PathBuf,
    },
    /// Several namespaces run a sandbox of that id.
    #[error("sandbox id {id:?} runs in several namespaces ({}): name one as NAMESPACE/ID", keys.join(", "))]
    Ambiguous {
        /// The id asked for.
        id: String,
        /// The sandboxes of that id.
        keys: Vec<String>,
    },
    /// Filesystem work failed.
    #[error("cannot {what} {path}")]
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

/// Creates the state directory of `key` under `root`, owned by the calling process. A
/// directory left by a dead owner goes first, through `clean` (the sandbox cleanup); a live
/// owner's, or one without a record, is refused and left as it is.
pub fn claim(
    root: &Path,
    key: &SandboxKey,
    procs: &dyn Processes,
    mut clean: impl FnMut(&Path),
) -> Result<PathBuf, StateError> {
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| StateError::Io { what, path, source }
    };
    // The root enterable but not listable, each sandbox's directory private (crate::state_dir).
    DirBuilder::new().recursive(true).mode(crate::state_dir::ROOT_MODE).create(root).map_err(io("create", root))?;
    let dir = key.dir(root);
    let owner = Owner::me(key, procs);
    let record = serde_json::to_vec(&owner).map_err(|err| StateError::Io {
        what: "encode the owner of",
        path: dir.clone(),
        source: err.into(),
    })?;
    // Two rounds: a dead owner's leftovers, then a rename that lost to a concurrent claim.
    for _ in 0..2 {
        match ownership(&dir, procs) {
            Ownership::Absent => {}
            Ownership::Mine(_) | Ownership::Dead(_) => clean(&dir),
            Ownership::Live(holder) => return Err(StateError::Busy { key: key.clone(), dir, owner: Box::new(holder) }),
            Ownership::Unowned(why) => return Err(StateError::Unowned { dir, why }),
        }
        let staging = root.join(format!(".{}.{}.claim", key.dir_name(), owner.pid));
        let _ = fs::remove_dir_all(&staging);
        DirBuilder::new().mode(crate::state_dir::DIR_MODE).create(&staging).map_err(io("create", &staging))?;
        let staged = fs::write(staging.join(OWNER_FILE), &record).map_err(io("write the owner of", &staging));
        match staged.and_then(|()| fs::rename(&staging, &dir).map_err(io("rename into place", &dir))) {
            Ok(()) => return Ok(dir),
            Err(err) => {
                let _ = fs::remove_dir_all(&staging);
                let taken = matches!(&err, StateError::Io { source, .. }
                    if matches!(source.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)));
                if !taken {
                    return Err(err);
                }
            }
        }
    }
    match ownership(&dir, procs) {
        Ownership::Live(holder) | Ownership::Mine(holder) | Ownership::Dead(holder) => {
            Err(StateError::Busy { key: key.clone(), dir, owner: Box::new(holder) })
        }
        Ownership::Unowned(why) => Err(StateError::Unowned { dir, why }),
        Ownership::Absent => Err(StateError::Unowned { dir, why: "it kept changing while being claimed".to_owned() }),
    }
}

/// An exclusive lock on a sandbox directory that may be removed: its owner is the caller or
/// is dead. Held for the whole cleanup.
#[derive(Debug)]
pub struct RemovalLock {
    _lock: Flock<File>,
    /// Who owned the directory.
    pub owner: Owner,
}

/// Locks `dir` for removal if the caller may remove it; `Ok(None)` if there is no such
/// directory; `Err` (with the reason) if it belongs to another live process or has no record.
pub fn lock_for_removal(dir: &Path, procs: &dyn Processes) -> Result<Option<RemovalLock>, StateError> {
    // A concurrent claim may replace the directory between open and lock: then look again.
    for _ in 0..3 {
        let file = match File::open(dir) {
            Ok(file) => file,
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { what: "open", path: dir.to_owned(), source }),
        };
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| StateError::Io {
            what: "lock",
            path: dir.to_owned(),
            source: errno.into(),
        })?;
        let same = match (lock.metadata(), fs::metadata(dir)) {
            (Ok(held), Ok(now)) => held.ino() == now.ino() && held.dev() == now.dev(),
            _ => false,
        };
        if !same {
            continue;
        }
        return match ownership(dir, procs) {
            Ownership::Absent => Ok(None),
            Ownership::Mine(owner) | Ownership::Dead(owner) => Ok(Some(RemovalLock { _lock: lock, owner })),
            Ownership::Live(owner) => {
                Err(StateError::Busy { key: owner.key.clone(), dir: dir.to_owned(), owner: Box::new(owner) })
            }
            Ownership::Unowned(why) => Err(StateError::Unowned { dir: dir.to_owned(), why }),
        };
    }
    Err(StateError::Unowned { dir: dir.to_owned(), why: "it kept changing while being locked".to_owned() })
}

/// The state directory of the running sandbox `name` under `root`: `NAMESPACE/ID`, or an `ID`
/// that only one namespace runs (what the `wisp` CLI and Kata's direct-volume records name).
pub fn locate(root: &Path, name: &str, procs: &dyn Processes) -> Result<PathBuf, StateError> {
    let (namespace, id) = match name.split_once('/') {
        Some((namespace, id)) => (Some(namespace), id),
        None => (None, name),
    };
    let mut matches: Vec<(PathBuf, Owner)> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|dir| !dir.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .filter_map(|dir| match ownership(&dir, procs) {
            Ownership::Mine(owner) | Ownership::Live(owner) => Some((dir, owner)),
            _ => None,
        })
        .filter(|(_, owner)| owner.key.id == id && namespace.map_or(true, |ns| owner.key.namespace == ns))
        .collect();
    match matches.len() {
        0 => Err(StateError::NotRunning { id: name.to_owned(), root: root.to_owned() }),
        1 => Ok(matches.remove(0).0),
        _ => Err(StateError::Ambiguous {
            id: name.to_owned(),
            keys: matches.iter().map(|(_, owner)| owner.key.to_string()).collect(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A host with the given running processes (pid -> start time); this process is `me`.
    #[derive(Debug, Clone)]
    pub(crate) struct FakeHost {
        pub(crate) me: u32,
        pub(crate) running: HashMap<u32, u64>,
        pub(crate) boot_id: String,
    }

    impl FakeHost {
        pub(crate) fn new(me: u32) -> Self {
            Self { me, running: HashMap::from([(me, 100)]), boot_id: "boot-1".to_owned() }
        }
    }

    impl Processes for FakeHost {
        fn boot_id(&self) -> String {
            self.boot_id.clone()
        }
        fn me(&self) -> u32 {
            self.me
        }
        fn start_time(&self, pid: u32) -> Option<u64> {
            self.running.get(&pid).copied()
        }
    }

    #[test]
    fn one_id_in_two_namespaces_is_two_directories() {
        let root = Path::new("/run/wisp");
        let a = SandboxKey::containerd("nsa", "same");
        let b = SandboxKey::containerd("nsb", "same");
        assert_ne!(a.dir(root), b.dir(root));
        assert_eq!(a.dir(root), SandboxKey::containerd("nsa", "same").dir(root), "stable");
        assert!(a.dir_name().starts_with("nsa_same-"), "{}", a.dir_name());
        // Fields cannot run into each other.
        assert_ne!(SandboxKey::containerd("a_b", "c").dir_name(), SandboxKey::containerd("a", "b_c").dir_name());
        assert_ne!(SandboxKey::containerd("ab", "").dir_name(), SandboxKey::containerd("a", "b").dir_name());
        let scoped = SandboxKey { scope: "/var/lib/wisp-runtime".to_owned(), ..a.clone() };
        assert_ne!(scoped.dir_name(), a.dir_name(), "a runtime root is part of the key");
        assert_eq!(scoped.to_string(), "/var/lib/wisp-runtime:nsa/same");
    }

    #[test]
    fn names_stay_short_and_safe() {
        let root = Path::new("/run/wisp");
        let long = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for (ns, id) in [("k8s.io", long), ("default", ".."), ("x", "a/b"), ("", ""), ("moby", "x y"), (long, long)] {
            let key = SandboxKey::containerd(ns, id);
            let name = key.dir_name();
            assert!(name.len() <= 40, "{name}");
            assert!(!name.starts_with('.'), "{name}");
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)), "{name}");
            assert_eq!(key.dir(root).parent(), Some(root));
            // The deepest socket stays well under the 108-byte sun_path limit.
            assert!(key.dir(root).join("hvsock.sock_1024").to_string_lossy().len() < 70, "{name}");
        }
        assert_ne!(
            SandboxKey::containerd("k8s.io", long).dir_name(),
            SandboxKey::containerd("k8s.io", &long[1..]).dir_name()
        );
    }

    #[test]
    fn stat_lines_parse_to_start_times() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(line), Some(987_654));
        assert_eq!(parse_stat(&line.replace(") S ", ") Z ")), None, "a zombie is dead");
        // 4194560 | PF_EXITING
        assert_eq!(parse_stat(&line.replace(" 4194560 ", " 4194564 ")), None, "an exiting process is dead");
        assert_eq!(parse_stat("garbage"), None);
        let me = std::process::id();
        assert!(ProcFs.start_time(me).is_some(), "this process runs");
    }

    fn record(dir: &Path, owner: &Owner) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join(OWNER_FILE), serde_json::to_vec(owner).unwrap()).unwrap();
    }

    #[test]
    fn ownership_tells_mine_live_dead_and_unowned() {
        let root = tempfile::tempdir().unwrap();
        let key = SandboxKey::containerd("default", "web");
        let dir = key.dir(root.path());
        let mut host = FakeHost::new(10);
        host.running.insert(20, 555);
        assert_eq!(ownership(&dir, &host), Ownership::Absent);

        let mine = Owner::me(&key, &host);
        record(&dir, &mine);
        assert_eq!(ownership(&dir, &host), Ownership::Mine(mine));

        let other = Owner { key: key.clone(), pid: 20, start_time: 555, boot_id: "boot-1".to_owned() };
        record(&dir, &other);
        assert_eq!(ownership(&dir, &host), Ownership::Live(other.clone()));

        let recycled = Owner { start_time: 554, ..other.clone() };
        record(&dir, &recycled);
        assert_eq!(ownership(&dir, &host), Ownership::Dead(recycled), "a reused pid is not the owner");

        let rebooted = Owner { boot_id: "boot-0".to_owned(), ..other.clone() };
        record(&dir, &rebooted);
        assert_eq!(ownership(&dir, &host), Ownership::Dead(rebooted), "an owner from an earlier boot is dead");

        fs::write(dir.join(OWNER_FILE), b"{").unwrap();
        assert!(matches!(ownership(&dir, &host), Ownership::Unowned(why) if why.contains("does not parse")));
        fs::remove_file(dir.join(OWNER_FILE)).unwrap();
        assert!(matches!(ownership(&dir, &host), Ownership::Unowned(why) if why.contains("cannot read")));
    }

    #[test]
    fn a_claim_refuses_a_live_owner_and_takes_over_a_dead_one() {
        let root = tempfile::tempdir().unwrap();
        let key = SandboxKey::containerd("nsa", "same");
        let mut host = FakeHost::new(10);
        host.running.insert(20, 7);
        let cleaned = std::cell::RefCell::new(Vec::new());
        let clean = |dir: &Path| {
            cleaned.borrow_mut().push(dir.to_owned());
            fs::remove_dir_all(dir).unwrap();
        };

        // The other shim (pid 20) holds the directory: refused, untouched.
        let dir = key.dir(root.path());
        let other = Owner { key: key.clone(), pid: 20, start_time: 7, boot_id: "boot-1".to_owned() };
        record(&dir, &other);
        fs::write(dir.join("qmp.sock"), b"").unwrap();
        let err = claim(root.path(), &key, &host, clean).unwrap_err();
        assert!(matches!(&err, StateError::Busy { owner, .. } if owner.pid == 20), "{err}");
        assert!(err.to_string().contains("belongs to the live shim pid 20"), "{err}");
        assert!(dir.join("qmp.sock").exists(), "nothing of the live sandbox is removed");
        assert!(cleaned.borrow().is_empty());

        // The other namespace's sandbox of the same id is its own directory.
        let beside = claim(root.path(), &SandboxKey::containerd("nsb", "same"), &host, clean).unwrap();
        assert_ne!(beside, dir);
        assert_eq!(
            ownership(&beside, &host),
            Ownership::Mine(Owner::me(&SandboxKey::containerd("nsb", "same"), &host))
        );

        // Its shim dies: the leftovers are cleaned, then the directory is ours.
        host.running.remove(&20);
        let claimed = claim(root.path(), &key, &host, clean).unwrap();
        assert_eq!(claimed, dir);
        assert_eq!(*cleaned.borrow(), std::slice::from_ref(&dir));
        assert_eq!(ownership(&dir, &host), Ownership::Mine(Owner::me(&key, &host)));
        assert!(!dir.join("qmp.sock").exists());

        // No claim leaves its staging directory behind.
        let names: Vec<String> =
            fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    }

    #[test]
    fn a_directory_without_a_record_is_never_claimed_or_removed() {
        let root = tempfile::tempdir().unwrap();
        let key = SandboxKey::containerd("default", "old");
        let dir = key.dir(root.path());
        fs::create_dir_all(&dir).unwrap();
        let host = FakeHost::new(10);
        let err = claim(root.path(), &key, &host, |_| panic!("no cleanup of an unowned directory")).unwrap_err();
        assert!(matches!(err, StateError::Unowned { .. }), "{err}");
        assert!(matches!(lock_for_removal(&dir, &host), Err(StateError::Unowned { .. })));
        assert!(dir.exists());
    }

    #[test]
    fn the_cli_finds_a_running_sandbox_by_id_or_namespace_and_id() {
        let root = tempfile::tempdir().unwrap();
        let mut host = FakeHost::new(10);
        host.running.insert(20, 1);
        let owned = |ns: &str, id: &str, pid| {
            let key = SandboxKey::containerd(ns, id);
            record(&key.dir(root.path()), &Owner { key: key.clone(), pid, start_time: 1, boot_id: "boot-1".into() });
            key.dir(root.path())
        };
        let a = owned("nsa", "same", 20);
        let b = owned("nsb", "same", 20);
        owned("nsa", "gone", 21);
        assert!(
            matches!(locate(root.path(), "same", &host), Err(StateError::Ambiguous { keys, .. }) if keys.len() == 2)
        );
        assert_eq!(locate(root.path(), "nsa/same", &host).unwrap(), a);
        assert_eq!(locate(root.path(), "nsb/same", &host).unwrap(), b);
        assert!(
            matches!(locate(root.path(), "gone", &host), Err(StateError::NotRunning { .. })),
            "a dead one is not running"
        );
        assert!(matches!(locate(root.path(), "nsc/same", &host), Err(StateError::NotRunning { .. })));
    }

    #[test]
    fn removal_locks_only_mine_or_dead() {
        let root = tempfile::tempdir().unwrap();
        let key = SandboxKey::containerd("default", "x");
        let dir = key.dir(root.path());
        let mut host = FakeHost::new(10);
        host.running.insert(20, 1);
        assert!(lock_for_removal(&dir, &host).unwrap().is_none(), "nothing to remove");
        record(&dir, &Owner::me(&key, &host));
        assert_eq!(lock_for_removal(&dir, &host).unwrap().unwrap().owner.pid, 10);
        let live = Owner { key: key.clone(), pid: 20, start_time: 1, boot_id: "boot-1".to_owned() };
        record(&dir, &live);
        assert!(matches!(lock_for_removal(&dir, &host), Err(StateError::Busy { .. })));
        host.running.remove(&20);
        assert_eq!(lock_for_removal(&dir, &host).unwrap().unwrap().owner, live);
    }
}
