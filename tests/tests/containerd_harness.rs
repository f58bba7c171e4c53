//! The private containerd of the harness: it answers `ctr`, and leaves nothing behind.
//!
//! Needs root and `make deps` (containerd, runc); compiled only with feature `containerd-tests`.
#![cfg(feature = "containerd-tests")]

use std::path::PathBuf;

use wisp_tests::containerd::find_on_path;
use wisp_tests::{Containerd, ContainerdOptions};

#[test]
fn ctr_version_answers_and_drop_cleans_up() -> anyhow::Result<()> {
    let ctd = Containerd::start()?;
    let out = ctd.ctr(["version"])?;
    assert!(out.status.success(), "ctr version failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Server:"), "ctr version did not reach the server:\n{text}");
    let out = ctd.ctr(["namespaces", "ls"])?;
    assert!(out.status.success());

    let pid = ctd.pid().expect("containerd runs");
    let dir: PathBuf = ctd.dir().expect("dir exists").to_owned();
    assert!(ctd.address().starts_with(&dir));
    drop(ctd);

    assert!(!dir.exists(), "{} remains after drop", dir.display());
    assert!(!PathBuf::from(format!("/proc/{pid}")).exists(), "containerd {pid} still runs after drop");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(!mounts.contains(dir.to_str().unwrap_or("?")), "mounts remain under {}", dir.display());
    Ok(())
}

#[test]
fn two_instances_do_not_share_anything() -> anyhow::Result<()> {
    assert!(find_on_path("ctr".as_ref()).is_some());
    let a = Containerd::start()?;
    let b = Containerd::start()?;
    assert_ne!(a.address(), b.address());
    assert!(a.ctr(["version"])?.status.success());
    assert!(b.ctr(["version"])?.status.success());
    Ok(())
}

#[test]
fn shim_dirs_come_first_on_containerds_path() -> anyhow::Result<()> {
    let shims = tempfile::tempdir()?;
    let ctd = Containerd::start_with(ContainerdOptions {
        shim_dirs: vec![shims.path().to_owned()],
        namespace: Some("wisp-ns".into()),
        ..Default::default()
    })?;
    assert_eq!(ctd.namespace(), "wisp-ns");
    let pid = ctd.pid().expect("containerd runs");
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    let path = environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(b"PATH="))
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .expect("containerd has a PATH");
    let first = path.split(':').next().unwrap_or_default();
    assert_eq!(first, shims.path().to_str().unwrap_or("?"), "PATH={path}");
    // ctr talks to this namespace: an image list of an empty namespace is empty, and works.
    let out = ctd.ctr(["images", "ls", "-q"])?;
    assert!(out.status.success() && out.stdout.is_empty());
    Ok(())
}
