//! Sandboxes whose shim is gone: a shim SIGKILLed while containerd was down leaves QEMU, its
//! helpers, the shared-directory mounts and the state directory behind, and nobody calls the
//! shim's `delete` for it. `wisp gc` and every shim's start sweep them.
//!
//! [`survey`] reads the state root and judges each directory by its ownership record
//! ([`crate::state`]): a live owner (another shim, or this process) is never touched, a dead
//! one's directory is removed by the one sandbox cleanup ([`crate::sandbox::cleanup_dir`],
//! which checks the owner again under its lock), a directory without a record is reported and
//! left. Sweeping twice is harmless: the second finds nothing to do.

use std::fs;
use std::path::{Path, PathBuf};

use crate::state::{ownership, Owner, Ownership, Processes};

/// What a state-root entry is, as far as the sweep is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its shim runs: left alone.
    Live(Owner),
    /// Its shim is gone: to be removed.
    Orphaned(Owner),
    /// No usable ownership record (why): left alone.
    Unowned(String),
}

/// One sandbox directory under the state root and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The directory.
    pub dir: PathBuf,
    /// What to do with it.
    pub verdict: Verdict,
}

impl Found {
    /// One line for humans: the directory, the sandbox, and why it is (or is not) swept.
    pub fn describe(&self) -> String {
        match &self.verdict {
            Verdict::Live(owner) => format!("{} ({}): shim pid {} runs", self.dir.display(), owner.key, owner.pid),
            Verdict::Orphaned(owner) => {
                format!("{} ({}): shim pid {} is gone", self.dir.display(), owner.key, owner.pid)
            }
            Verdict::Unowned(why) => format!("{}: {why}", self.dir.display()),
        }
    }
}

/// Every directory under `root` (sandboxes and interrupted claims; files such as the
/// accelerator cache are not sandboxes), sorted by name, with its verdict.
pub fn survey(root: &Path, procs: &dyn Processes) -> Vec<Found> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        // The rootless id claims (hypervisor::confine) and the VM templates (crate::template)
        // live beside the sandboxes.
        .filter(|entry| entry.file_name() != ".rootless" && entry.file_name() != crate::template::DEFAULT_DIR_NAME)
        .map(|entry| entry.path())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .filter_map(|dir| {
            let verdict = match ownership(&dir, procs) {
                // Gone since the listing: nothing to say.
                Ownership::Absent => return None,
                Ownership::Mine(owner) | Ownership::Live(owner) => Verdict::Live(owner),
                Ownership::Dead(owner) => Verdict::Orphaned(owner),
                Ownership::Unowned(why) => Verdict::Unowned(why),
            };
            Some(Found { dir, verdict })
        })
        .collect()
}

/// An orphaned sandbox and what removing it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swept {
    /// The sandbox as [`survey`] found it.
    pub found: Found,
    /// What the cleanup did (processes killed, mounts and the directory removed).
    pub done: Vec<String>,
}

/// Removes every orphaned sandbox under `root` with `remove` (the sandbox cleanup; it returns
/// what it did); the rest is returned untouched for the report.
pub fn sweep(
    root: &Path,
    procs: &dyn Processes,
    mut remove: impl FnMut(&Path) -> Vec<String>,
) -> (Vec<Swept>, Vec<Found>) {
    let (orphaned, kept): (Vec<Found>, Vec<Found>) =
        survey(root, procs).into_iter().partition(|f| matches!(f.verdict, Verdict::Orphaned(_)));
    let swept = orphaned
        .into_iter()
        .map(|found| {
            let done = remove(&found.dir);
            Swept { found, done }
        })
        .collect();
    (swept, kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::FakeHost;
    use crate::state::{SandboxKey, OWNER_FILE};

    fn sandbox(root: &Path, id: &str, pid: u32, start_time: u64) -> PathBuf {
        let key = SandboxKey::containerd("default", id);
        let dir = key.dir(root);
        fs::create_dir_all(dir.join("shared")).unwrap();
        let owner = Owner { key, pid, start_time, boot_id: "boot-1".to_owned() };
        fs::write(dir.join(OWNER_FILE), serde_json::to_vec(&owner).unwrap()).unwrap();
        dir
    }

    /// A state root with a live sandbox, a dead one, one whose pid was reused, one without a
    /// record, an interrupted claim of a dead shim, and the accelerator cache.
    fn state_root() -> (tempfile::TempDir, FakeHost, [PathBuf; 5]) {
        let root = tempfile::tempdir().unwrap();
        let mut host = FakeHost::new(10);
        host.running.insert(20, 5);
        host.running.insert(30, 9);
        let live = sandbox(root.path(), "live", 20, 5);
        let dead = sandbox(root.path(), "dead", 21, 5);
        let reused = sandbox(root.path(), "reused", 30, 8);
        let unowned = root.path().join("default_legacy-0000000000000000");
        fs::create_dir_all(&unowned).unwrap();
        let claim = root.path().join(".default_half-1111111111111111.22.claim");
        fs::create_dir_all(&claim).unwrap();
        let owner =
            Owner { key: SandboxKey::containerd("default", "half"), pid: 22, start_time: 1, boot_id: "boot-1".into() };
        fs::write(claim.join(OWNER_FILE), serde_json::to_vec(&owner).unwrap()).unwrap();
        fs::write(root.path().join("accel"), "boot-1 tcg cached\n").unwrap();
        (root, host, [live, dead, reused, unowned, claim])
    }

    #[test]
    fn the_survey_judges_every_sandbox_by_its_owner() {
        let (root, host, [live, dead, reused, unowned, claim]) = state_root();
        let found = survey(root.path(), &host);
        let verdict = |dir: &Path| found.iter().find(|f| f.dir == dir).map(|f| f.verdict.clone());
        assert!(matches!(verdict(&live), Some(Verdict::Live(o)) if o.pid == 20));
        assert!(matches!(verdict(&dead), Some(Verdict::Orphaned(o)) if o.pid == 21));
        assert!(matches!(verdict(&reused), Some(Verdict::Orphaned(o)) if o.pid == 30), "pid 30 is another process now");
        assert!(matches!(verdict(&unowned), Some(Verdict::Unowned(_))));
        assert!(matches!(verdict(&claim), Some(Verdict::Orphaned(o)) if o.pid == 22), "a dead shim's half claim");
        assert_eq!(found.len(), 5, "the accel cache is no sandbox: {found:?}");
        let line = found.iter().find(|f| f.dir == dead).unwrap().describe();
        assert!(line.ends_with("(default/dead): shim pid 21 is gone"), "{line}");
    }

    #[test]
    fn a_sweep_removes_only_the_orphans_and_a_second_finds_nothing() {
        let (root, host, [live, dead, reused, unowned, claim]) = state_root();
        let remove = |dir: &Path| {
            fs::remove_dir_all(dir).unwrap();
            vec![format!("removed {}", dir.display())]
        };
        let (swept, kept) = sweep(root.path(), &host, remove);
        let mut removed: Vec<PathBuf> = swept.iter().map(|s| s.found.dir.clone()).collect();
        removed.sort();
        let mut expected = vec![dead, reused, claim];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(swept.iter().all(|s| s.done.len() == 1));
        assert!(live.join("shared").exists() && unowned.exists(), "live and unowned are untouched");
        assert_eq!(kept.len(), 2);
        let (again, _) = sweep(root.path(), &host, |_| panic!("nothing left to remove"));
        assert!(again.is_empty());
        assert!(root.path().join("accel").exists());
    }

    #[test]
    fn a_missing_state_root_is_an_empty_one() {
        let root = tempfile::tempdir().unwrap();
        assert!(survey(&root.path().join("never"), &FakeHost::new(1)).is_empty());
    }
}
