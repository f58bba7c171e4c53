//! Host tests of the hot-plug helper (`wisp-agent __hotplug`, what `BlockVolume.HotPlug` runs
//! once the disk is there), as root: a stand-in container (busybox `sleep` in its own mount
//! namespace, chrooted into a temp directory by `unshare --root`) gets a device node and a
//! mount, and they land inside its root however the container laid out the paths.
//!
//! Needs root (setns, mknod, mount) and a static busybox at /bin/busybox (`make deps`).

// For `copy_executable`, shared with the VM tests.
#[path = "../../tests/src/agent_client.rs"]
#[allow(dead_code)]
mod agent_client;

use std::os::unix::fs::{symlink, FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// A process chrooted into `dir/root` in a private mount namespace; killed on drop.
struct StandIn {
    child: Child,
    dir: tempfile::TempDir,
}

impl StandIn {
    fn start() -> StandIn {
        assert_eq!(nix::unistd::geteuid().as_raw(), 0, "hotplug_host tests need root");
        assert!(Path::new("/bin/busybox").is_file(), "/bin/busybox is missing: run `make deps` (busybox-static)");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        agent_client::copy_executable(Path::new("/bin/busybox"), &root.join("busybox")).unwrap();
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--root"])
            .arg(&root)
            .args(["/busybox", "sleep", "1000"])
            .spawn()
            .expect("unshare (util-linux)");
        let me = StandIn { child, dir };
        let want = std::fs::canonicalize(&root).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(format!("/proc/{}/root", me.pid())).ok().as_deref() != Some(want.as_path()) {
            assert!(Instant::now() < deadline, "the stand-in container did not chroot into {}", want.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        me
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Its mount points, as it sees them.
    fn mount_points(&self) -> Vec<String> {
        let info = std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid())).unwrap();
        info.lines().filter_map(|l| l.split(' ').nth(4)).map(str::to_owned).collect()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes a host path a broken helper could have created.
struct Scrub(PathBuf);

impl Drop for Scrub {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn helper(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wisp-agent")).arg("__hotplug").args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "__hotplug failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_node_is_made_in_the_containers_root_and_removed_again() {
    let c = StandIn::start();
    let host_dir = PathBuf::from(format!("/tmp/wisp-hotplug-test-{}", std::process::id()));
    let _scrub = Scrub(host_dir.clone());
    let node = format!("{}/xvdz", host_dir.display());

    ok(&helper(&["plug", &c.pid(), &node, "7", "250"]));
    let inside = c.root().join(node.trim_start_matches('/'));
    let meta = std::fs::symlink_metadata(&inside).expect("the node is inside the container's root");
    assert!(meta.file_type().is_block_device());
    assert_eq!((nix::sys::stat::major(meta.rdev()), nix::sys::stat::minor(meta.rdev())), (7, 250));
    assert!(!host_dir.exists(), "the node was made in the host's {}", host_dir.display());

    assert_eq!(ok(&helper(&["unplug", &c.pid(), &node])), "7:250");
    assert!(!inside.exists(), "unplug removed the node");
}

#[test]
fn planted_symlinks_stay_inside_the_containers_root() {
    let c = StandIn::start();
    let root = c.root();
    // Both try to climb out of the root into `dir/outside`: `..` stops at the container's
    // root, and an absolute target starts there. (A dangling link is not followed into a
    // new directory, as in the launcher: the target exists inside.)
    std::fs::create_dir_all(root.join("outside/abs")).unwrap();
    symlink("../../outside", root.join("tmp/up")).unwrap();
    symlink("/outside/abs", root.join("tmp/abs")).unwrap();
    let outside = c.dir.path().join("outside");

    ok(&helper(&["plug", &c.pid(), "/tmp/abs/xvdz", "7", "251", "/dev/null", "/tmp/up/vol", "tmpfs", "size=1m"]));
    assert!(root.join("outside/abs/xvdz").exists(), "the node followed the symlink inside the root");
    assert!(root.join("outside/vol").is_dir(), "the mount point followed the symlink inside the root");
    assert!(!outside.exists(), "nothing was made outside the root");
    assert!(c.mount_points().contains(&"/outside/vol".to_owned()), "mounted where the container sees it");

    assert_eq!(ok(&helper(&["unplug", &c.pid(), "/tmp/abs/xvdz", "/tmp/up/vol"])), "7:251");
    assert!(!c.mount_points().contains(&"/outside/vol".to_owned()), "unmounted");
    assert!(!root.join("outside/abs/xvdz").exists(), "node removed");
}

#[test]
fn unplug_refuses_what_is_not_a_block_device() {
    let c = StandIn::start();
    std::fs::write(c.root().join("tmp/plain"), "x").unwrap();
    let out = helper(&["unplug", &c.pid(), "/tmp/plain"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a block device"));
    assert!(c.root().join("tmp/plain").exists(), "left alone");
}
