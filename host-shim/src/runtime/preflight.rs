//! What the binary checks before a lifecycle command runs, with runc 1.1's answers: the
//! container must exist (`does not exist`, which containerd and podman match), `kill` needs a
//! container that is not stopped (`container not running`, which containerd's runc shim maps to
//! "not found" and so to success on a stop), and `delete` of an id with a directory but no
//! record (a `create` that died half-way) removes that directory, succeeding with `--force`.
//! `create` is refused before anything is made for a bad or used id, a bundle without a
//! config.json that parses, or a pid file whose directory is missing (so it leaves nothing);
//! `create`, `run` and `exec` refuse `--preserve-fds` above 0 (no host descriptor reaches a VM).

use std::io;
use std::path::Path;

use super::cli::CreateArgs;
use super::store::{validate_id, ContainerState, Status, Store};
use super::RuntimeError;
use crate::state::Processes;

/// `create`'s checks; the record the new container starts with.
pub fn creatable(store: &Store, args: &CreateArgs) -> Result<ContainerState, RuntimeError> {
    validate_id(&args.id)?;
    no_preserved_fds(args.preserve_fds)?;
    if std::fs::symlink_metadata(store.dir(&args.id)).is_ok() {
        return Err(RuntimeError::Exists(args.id.clone()));
    }
    if let Some(pid_file) = &args.pid_file {
        let dir = pid_file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(RuntimeError::Io {
                what: "no directory for the pid file",
                path: pid_file.clone(),
                source: io::ErrorKind::NotFound.into(),
            });
        }
    }
    ContainerState::from_bundle(&args.id, &args.bundle)
}

/// `--preserve-fds N` asks for the caller's descriptors 3..3+N in the container's process,
/// which runs in the VM: a host descriptor cannot follow it there. Refused by name rather than
/// dropped, so a socket-activated service fails at once instead of waiting on a descriptor it
/// never got.
pub fn no_preserved_fds(count: u32) -> Result<(), RuntimeError> {
    if count == 0 {
        return Ok(());
    }
    Err(RuntimeError::Usage(format!(
        "--preserve-fds {count}: the process runs in a VM, where the host's descriptors cannot follow it; \
         share a socket or file through a bind mount instead"
    )))
}

/// The record of a container a command acts on.
pub fn existing(store: &Store, id: &str) -> Result<ContainerState, RuntimeError> {
    store.load(id)
}

/// `kill`'s check: the container exists and is not stopped.
pub fn killable(store: &Store, id: &str, procs: &dyn Processes) -> Result<ContainerState, RuntimeError> {
    let record = store.load(id)?;
    if record.live_status(procs) == Status::Stopped {
        return Err(RuntimeError::NotRunning);
    }
    Ok(record)
}

/// What `delete` acts on: `Some(record)`, or `None` when nothing is left to do (an id whose
/// half-made directory was just removed, with `--force`).
pub fn deletable(store: &Store, id: &str, force: bool) -> Result<Option<ContainerState>, RuntimeError> {
    match store.load(id) {
        Ok(record) => Ok(Some(record)),
        Err(RuntimeError::NotExist(_)) => {
            match store.lock(id) {
                Ok(locked) if matches!(locked.load(), Err(RuntimeError::NotExist(_))) => locked.remove()?,
                Ok(_) | Err(RuntimeError::NotExist(_)) => {}
                Err(e) => return Err(e),
            }
            if force {
                Ok(None)
            } else {
                Err(RuntimeError::NotExist(id.to_owned()))
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::store::tests::record;
    use crate::runtime::store::Monitor;
    use crate::state::ProcFs;

    fn save(store: &Store, id: &str, monitor: Option<Monitor>, status: Status) {
        store.create(id).unwrap().save(&record(id, monitor, status)).unwrap();
    }

    fn create_args(id: &str, bundle: &Path, pid_file: Option<&Path>) -> CreateArgs {
        CreateArgs {
            bundle: bundle.to_owned(),
            console_socket: None,
            pid_file: pid_file.map(Path::to_owned),
            no_pivot: false,
            no_new_keyring: false,
            preserve_fds: 0,
            id: id.to_owned(),
        }
    }

    #[test]
    fn create_is_refused_before_anything_is_made() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(&tmp.path().join("root"));
        let bundle = tmp.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        let err = creatable(&store, &create_args("c1", &bundle, None)).unwrap_err();
        assert!(matches!(err, RuntimeError::NoSpec(_)), "{err}");
        std::fs::write(bundle.join("config.json"), r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#).unwrap();
        let ok = creatable(&store, &create_args("c1", &bundle, Some(&tmp.path().join("pid")))).unwrap();
        assert_eq!((ok.id.as_str(), ok.rootfs.clone()), ("c1", bundle.join("rootfs")));
        assert!(creatable(&store, &create_args("c1", &bundle, Some(Path::new("pid")))).is_ok(), "a relative pid file");
        let err = creatable(&store, &create_args("c1", &bundle, Some(&tmp.path().join("missing/pid")))).unwrap_err();
        assert!(err.to_string().starts_with("no directory for the pid file"), "{err}");
        assert!(matches!(creatable(&store, &create_args("a/b", &bundle, None)), Err(RuntimeError::InvalidId(_))));
        drop(store.create("c1").unwrap());
        assert!(matches!(creatable(&store, &create_args("c1", &bundle, None)), Err(RuntimeError::Exists(_))));
        assert!(!store.dir("a").exists() && std::fs::read_dir(store.root()).unwrap().count() == 1, "nothing else made");
        let mut preserving = create_args("c2", &bundle, None);
        preserving.preserve_fds = 2;
        let err = creatable(&store, &preserving).unwrap_err();
        assert!(err.to_string().starts_with("--preserve-fds 2: the process runs in a VM"), "{err}");
        assert!(!store.dir("c2").exists());
    }

    #[test]
    fn kill_needs_a_live_container() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        save(&store, "live", Monitor::of(std::process::id(), &ProcFs), Status::Running);
        save(&store, "dead", None, Status::Running);
        assert!(killable(&store, "live", &ProcFs).is_ok());
        assert_eq!(killable(&store, "dead", &ProcFs).unwrap_err().to_string(), "container not running");
        assert!(matches!(killable(&store, "none", &ProcFs), Err(RuntimeError::NotExist(_))));
        assert!(matches!(existing(&store, "none"), Err(RuntimeError::NotExist(_))));
        assert!(existing(&store, "dead").is_ok());
    }

    #[test]
    fn delete_clears_a_half_made_directory_and_force_forgives_a_missing_one() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        save(&store, "c1", None, Status::Stopped);
        assert_eq!(deletable(&store, "c1", false).unwrap().map(|r| r.id), Some("c1".to_owned()));
        assert!(matches!(deletable(&store, "none", false), Err(RuntimeError::NotExist(_))));
        assert!(deletable(&store, "none", true).unwrap().is_none());
        drop(store.create("half").unwrap());
        assert!(matches!(deletable(&store, "half", false), Err(RuntimeError::NotExist(_))));
        assert!(!store.dir("half").exists(), "the half-made directory is gone");
        drop(store.create("half").unwrap());
        assert!(deletable(&store, "half", true).unwrap().is_none());
        assert!(!store.dir("half").exists());
    }
}
