//! The core's failure paths on the fake hypervisor ([`crate::hypervisor::fake`]): a boot that
//! fails once the VM runs, a CreateContainer refused after the rootfs was shared, a hot-plug
//! refused after a first disk was plugged. Each asserts what was undone and that nothing is
//! left behind: no state directory, no mount under the test's directory (the share needs
//! root, as the shim does).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use slog::Logger;

use super::plan::tests::numbered;
use super::{create, plan, Rollback};
use crate::config::Config;
use crate::hypervisor::fake::{FailAt, FakeVms};
use crate::sandbox::{sandbox_dir, BootOn, Sandbox, SandboxError};
use crate::state::SandboxKey;
use crate::volumes::direct;

fn log() -> Logger {
    Logger::root(slog::Discard, slog::o!())
}

fn key() -> SandboxKey {
    SandboxKey::containerd("default", "sb")
}

/// The default configuration with a short dial timeout and direct volumes under `dir`.
fn config(dir: &Path) -> Config {
    let mut config = Config::default();
    config.agent.dial_timeout = 1;
    config.runtime.direct_volumes_dir = dir.join("direct");
    config
}

/// A test's directory; dropped, it first cleans the sandbox state up as a crashed shim's
/// would be, so a failing test leaves no mount behind either.
struct TestDir(tempfile::TempDir);

impl TestDir {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        crate::sandbox::cleanup_dir(&sandbox_dir(&self.path().join("state"), &key()), &log());
    }
}

/// Every mount point under `dir`, from this process's mount table.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().filter_map(|line| line.split(' ').nth(4)).map(PathBuf::from).filter(|p| p.starts_with(dir)).collect()
}

/// Boots the sandbox on `vms` under `dir/state`.
async fn boot(dir: &Path, vms: &FakeVms) -> Result<Sandbox, SandboxError> {
    let on = BootOn { root: &dir.join("state"), vms };
    Sandbox::boot_in(&config(dir), on, &key(), None, &[], &log()).await
}

/// Asserts that the sandbox under `dir` left nothing behind.
fn assert_nothing_left(dir: &Path) {
    assert!(!sandbox_dir(&dir.join("state"), &key()).exists(), "the state dir is removed");
    assert_eq!(mounts_under(dir), Vec::<PathBuf>::new(), "nothing stays mounted");
}

#[tokio::test]
async fn a_boot_that_fails_stops_the_vm_and_leaves_nothing() {
    let cases: [(FailAt, &str, &[&str]); 3] = [
        (FailAt::Start, "cannot start the VM", &["start", "stop"]),
        (FailAt::AgentSilent, "the guest agent did not answer", &["start", "stop"]),
        (FailAt::CreateSandbox, "agent CreateSandbox failed", &["start", "CreateSandbox", "DestroySandbox", "stop"]),
    ];
    for (fail, message, journal) in cases {
        let dir = TestDir::new();
        let vms = FakeVms::failing_at(fail);
        let err = boot(dir.path(), &vms).await.unwrap_err();
        assert!(err.to_string().contains(message), "{fail:?}: {err}");
        assert_eq!(vms.journal.entries(), journal, "{fail:?}");
        assert_nothing_left(dir.path());
    }
}

/// A bundle in `dir/bundle` with a `rootfs/` directory and a config.json with `mounts`.
fn bundle(dir: &Path, mounts: &str) -> (PathBuf, oci_spec::runtime::Spec) {
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs/etc")).unwrap();
    std::fs::write(bundle.join("rootfs/etc/hostname"), "fake\n").unwrap();
    let json = format!(
        r#"{{"ociVersion": "1.0.2", "root": {{"path": "rootfs"}},
            "process": {{"user": {{"uid": 0, "gid": 0}}, "args": ["true"], "cwd": "/"}},
            "mounts": {mounts}}}"#
    );
    std::fs::write(bundle.join("config.json"), json).unwrap();
    let spec = plan::load_spec(&bundle).unwrap();
    (bundle, spec)
}

#[tokio::test]
async fn a_refused_create_container_unshares_the_rootfs_and_its_bind_sources() {
    let dir = TestDir::new();
    let vms = FakeVms::failing_at(FailAt::CreateContainer);
    let sandbox = Arc::new(boot(dir.path(), &vms).await.unwrap());
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mounts = format!(r#"[{{"destination": "/data", "type": "bind", "source": "{}"}}]"#, data.display());
    let (bundle, spec) = bundle(dir.path(), &mounts);
    let planned = plan::plan("c1", &bundle, spec, &[], &config(dir.path()), numbered()).unwrap();

    let mut rollback = Rollback::new(&log());
    let err = create(&sandbox, &planned, &mut rollback, &log()).await.unwrap_err();
    assert!(err.to_string().contains("CreateContainer"), "{err}");
    let shared = mounts_under(&sandbox.dir().join("mounts/c1"));
    assert_eq!(shared.len(), 2, "the rootfs and /data were shared before the agent refused: {shared:?}");
    rollback.undo().await;
    assert_eq!(mounts_under(&sandbox.dir().join("mounts/c1")), Vec::<PathBuf>::new(), "the rollback unshared");
    assert_eq!(mounts_under(&sandbox.dir().join("shared/c1")), Vec::<PathBuf>::new());

    sandbox.shutdown().await;
    assert_eq!(vms.journal.entries(), ["start", "CreateSandbox", "CreateContainer", "DestroySandbox", "stop"]);
    assert_nothing_left(dir.path());
}

/// Direct volume `volume` backed by an image file, under the config's direct-volume root.
fn direct_volume(dir: &Path, volume: &str) {
    let image = dir.join(format!("{}.img", volume.replace('/', "_")));
    std::fs::write(&image, [0u8; 512]).unwrap();
    let volume_dir = direct::volume_dir(&config(dir).runtime.direct_volumes_dir, volume).unwrap();
    std::fs::create_dir_all(&volume_dir).unwrap();
    let info = format!(r#"{{"volume-type": "directvol", "device": "{}", "fstype": "ext4"}}"#, image.display());
    std::fs::write(volume_dir.join(direct::MOUNT_INFO), info).unwrap();
}

#[tokio::test]
async fn a_refused_second_hot_plug_unplugs_the_first_and_unshares() {
    let dir = TestDir::new();
    let vms = FakeVms::failing_at(FailAt::HotPlug(2));
    let sandbox = Arc::new(boot(dir.path(), &vms).await.unwrap());
    direct_volume(dir.path(), "/vol/a");
    direct_volume(dir.path(), "/vol/b");
    let (bundle, spec) = bundle(
        dir.path(),
        r#"[{"destination": "/a", "type": "directvol", "source": "/vol/a"},
            {"destination": "/b", "type": "directvol", "source": "/vol/b"}]"#,
    );
    let planned = plan::plan("c1", &bundle, spec, &[], &config(dir.path()), numbered()).unwrap();
    assert_eq!(planned.disks.len(), 2);

    let mut rollback = Rollback::new(&log());
    let err = create(&sandbox, &planned, &mut rollback, &log()).await.unwrap_err();
    assert!(err.to_string().contains("wisp-blk2"), "{err}");
    rollback.undo().await;
    let journal = vms.journal.entries();
    assert_eq!(journal[2..], ["plug wisp-blk1", "plug wisp-blk2", "unplug wisp-blk1"], "{journal:?}");
    assert!(!journal.iter().any(|e| e == "CreateContainer"), "the agent was never asked: {journal:?}");
    assert_eq!(mounts_under(&sandbox.dir().join("mounts/c1")), Vec::<PathBuf>::new(), "the rootfs is unshared");

    sandbox.shutdown().await;
    assert_nothing_left(dir.path());
}

#[tokio::test]
async fn a_create_cut_short_is_undone_by_the_dropped_rollback() {
    let dir = TestDir::new();
    let vms = FakeVms::failing_at(FailAt::CreateContainer);
    let sandbox = Arc::new(boot(dir.path(), &vms).await.unwrap());
    let (bundle, spec) = bundle(dir.path(), "[]");
    let planned = plan::plan("c1", &bundle, spec, &[], &config(dir.path()), numbered()).unwrap();
    let mut rollback = Rollback::new(&log());
    assert!(create(&sandbox, &planned, &mut rollback, &log()).await.is_err());
    assert_eq!(mounts_under(&sandbox.dir().join("mounts/c1")).len(), 1, "the rootfs is shared");
    drop(rollback);
    let mut left = mounts_under(&sandbox.dir().join("mounts/c1"));
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        left = mounts_under(&sandbox.dir().join("mounts/c1"));
    }
    assert_eq!(left, Vec::<PathBuf>::new(), "the dropped rollback unshared on a task of its own");
    sandbox.shutdown().await;
    assert_nothing_left(dir.path());
}
