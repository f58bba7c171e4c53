//! The share against a hostile guest, on the host, without a VM: every test runs in a thread
//! with a private mount namespace on a tmpfs of its own, makes a sandbox's share with
//! [`ShareTree`], then does what a guest (or a guest that got further than it should) can do
//! to it, and checks that teardown neither follows what was planted nor reaches outside the
//! state directory. Needs root (mounts), like CI; `tests/tests/hostile_guest_ctr.rs` does
//! the same through a real VM.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt as _};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use wisp_shim::sandbox::cleanup_dir;
use wisp_shim::share::{mounts_under, remove_tree, ShareTree};

fn log() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// Runs `body` in a new thread with a private mount namespace, on a fresh tmpfs (its argument).
fn in_private_mounts(body: impl FnOnce(&Path) + Send + 'static) {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "share_host needs root (mounts in a private namespace); run it as root like CI does");
    let scratch = tempfile::tempdir().expect("tempdir");
    let root = scratch.path().to_owned();
    std::thread::spawn(move || {
        nix::sched::unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
            .expect("make / private");
        mount(Some("tmpfs"), &root, Some("tmpfs"), MsFlags::empty(), None::<&str>).expect("tmpfs");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&root)));
        let _ = umount2(&root, MntFlags::MNT_DETACH);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

/// The mount options (per-mount and superblock) of the mount at `path`, from mountinfo.
fn mount_options(path: &Path) -> Option<String> {
    let info = fs::read_to_string("/proc/thread-self/mountinfo").expect("mountinfo");
    let path = path.to_str().expect("utf-8");
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&path)).then(|| f.get(5).map(ToString::to_string).unwrap_or_default())
    })
}

fn is_mounted(path: &Path) -> bool {
    mounts_under(path).iter().any(|p| p == path)
}

/// The host side of the attack: a directory tree standing for host data, a tmpfs mount
/// standing for `/var/lib/kubelet`, a file standing for `/etc/shadow`.
struct Host {
    rootfs: PathBuf,
    volume: PathBuf,
    victim_mount: PathBuf,
    victim_file: PathBuf,
}

impl Host {
    fn new(root: &Path) -> Self {
        let host = Self {
            rootfs: root.join("bundle/rootfs"),
            volume: root.join("volume"),
            victim_mount: root.join("kubelet"),
            victim_file: root.join("shadow"),
        };
        for dir in [&host.rootfs, &host.volume, &host.victim_mount] {
            fs::create_dir_all(dir).unwrap();
        }
        fs::write(host.rootfs.join("hello"), b"rootfs").unwrap();
        fs::write(host.volume.join("data"), b"original").unwrap();
        mount(Some("tmpfs"), &host.victim_mount, Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap();
        fs::write(host.victim_mount.join("pod-volume"), b"keep").unwrap();
        fs::write(&host.victim_file, b"secret").unwrap();
        host
    }

    /// Everything outside the state directory is as it was.
    fn assert_untouched(&self) {
        assert!(is_mounted(&self.victim_mount), "the host mount was detached");
        assert_eq!(fs::read(self.victim_mount.join("pod-volume")).unwrap(), b"keep");
        assert_eq!(fs::read(&self.victim_file).unwrap(), b"secret", "the host file changed");
        assert_eq!(fs::read(self.rootfs.join("hello")).unwrap(), b"rootfs", "the rootfs source lost a file");
        assert_eq!(fs::read(self.volume.join("data")).unwrap(), b"original");
    }
}

/// The host side and a sandbox's share in a state directory under `root/state`, claimed by
/// this process as a shim claims it (only an owned directory is ever cleaned up).
fn sandbox(root: &Path) -> (Host, PathBuf, ShareTree) {
    let host = Host::new(root);
    let key = wisp_shim::state::SandboxKey::containerd("default", "sb1");
    let state = wisp_shim::state::claim(&root.join("state"), &key, &wisp_shim::state::ProcFs, |_| {}).unwrap();
    let share = ShareTree::create(&state).unwrap();
    (host, state, share)
}

/// Stops the sandbox as the shim does and checks that the state went and the host is intact.
fn stop(host: &Host, state: &Path, share: &ShareTree) {
    share.teardown(&log());
    let done = cleanup_dir(state, &log());
    assert!(!state.exists(), "{done:?}");
    host.assert_untouched();
}

#[test]
fn a_read_only_bind_is_read_only_on_the_host_and_the_share_is_read_only_to_the_guest() {
    in_private_mounts(|root| {
        let (host, state, share) = sandbox(root);
        let rel = share.bind("c1", "mounts/1-volume", &host.volume, true).unwrap();
        assert_eq!(rel, Path::new("c1/mounts/1-volume"));
        share.bind("c1", "rootfs", &host.rootfs, false).unwrap();
        let shared = state.join("shared");

        // What the guest sees (virtiofsd and QEMU serve shared/): the binds, propagated.
        assert_eq!(fs::read(shared.join("c1/rootfs/hello")).unwrap(), b"rootfs");
        assert_eq!(fs::read(shared.join("c1/mounts/1-volume/data")).unwrap(), b"original");
        // The ro volume is ro on the host, through either tree.
        for path in [shared.join("c1/mounts/1-volume/data"), state.join("mounts/c1/mounts/1-volume/data")] {
            let err = fs::write(&path, b"pwned").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{}: {err}", path.display());
        }
        assert_eq!(fs::read(host.volume.join("data")).unwrap(), b"original");
        // Every host bind is nosuid,nodev; the ro one ro.
        let volume_opts = mount_options(&shared.join("c1/mounts/1-volume")).unwrap();
        let rootfs_opts = mount_options(&shared.join("c1/rootfs")).unwrap();
        for flag in ["ro", "nosuid", "nodev"] {
            assert!(volume_opts.split(',').any(|o| o == flag), "volume: {volume_opts}");
        }
        for flag in ["rw", "nosuid", "nodev"] {
            assert!(rootfs_opts.split(',').any(|o| o == flag), "rootfs: {rootfs_opts}");
        }
        // The guest writes inside a rw bind, but cannot touch the directories the shim made.
        fs::write(shared.join("c1/rootfs/new"), b"guest").unwrap();
        assert_eq!(fs::read(host.rootfs.join("new")).unwrap(), b"guest");
        for attempt in [
            fs::rename(shared.join("c1"), shared.join("c1.old")),
            fs::create_dir(shared.join("c2")),
            symlink(&host.victim_mount, shared.join("c1/planted")),
            fs::remove_dir(shared.join("c1/mounts")),
        ] {
            assert_eq!(attempt.unwrap_err().raw_os_error(), Some(libc::EROFS));
        }
        // Only root can reach the tree on the host.
        assert_eq!(fs::metadata(state.join("mounts")).unwrap().permissions().mode() & 0o777, 0o700);

        share.release("c1", &log());
        assert!(!state.join("mounts/c1").exists(), "release removes what the shim made");
        assert!(mounts_under(&state).iter().all(|p| !p.starts_with(state.join("mounts/c1"))));
        assert!(mounts_under(&state).iter().all(|p| !p.starts_with(shared.join("c1"))), "propagated away");
        share.teardown(&log());
        let done = cleanup_dir(&state, &log());
        assert!(!state.exists(), "{done:?}");
        fs::remove_file(host.rootfs.join("new")).unwrap();
        host.assert_untouched();
    });
}

#[test]
fn planted_symlinks_are_not_followed_by_release_or_cleanup() {
    in_private_mounts(|root| {
        let (host, state, share) = sandbox(root);
        share.bind("c1", "rootfs", &host.rootfs, false).unwrap();
        share.bind("c1", "mounts/1-x", &host.volume, false).unwrap();
        // The worst case: a guest that could write in the host-only tree does what the
        // CVE-2020-2026 exploit did through the old share (rename the container's directory,
        // recreate it, plant links to host targets), and plants links inside the rw binds.
        let mounts = state.join("mounts");
        fs::rename(mounts.join("c1"), mounts.join("c1.old")).unwrap();
        fs::create_dir_all(mounts.join("c1/mounts")).unwrap();
        symlink(&host.victim_mount, mounts.join("c1/rootfs")).unwrap();
        symlink(&host.victim_file, mounts.join("c1/mounts/1-x")).unwrap();
        symlink(&host.victim_mount, host.rootfs.join("etc")).unwrap();
        symlink(&host.victim_file, host.volume.join("link")).unwrap();

        share.release("c1", &log());
        host.assert_untouched();
        // The planted links were refused, not followed; the moved binds are still there.
        assert!(fs::symlink_metadata(mounts.join("c1/rootfs")).unwrap().file_type().is_symlink());
        assert!(is_mounted(&mounts.join("c1.old/rootfs")));

        // Teardown and the crashed-shim cleanup unmount the binds where they really are, and
        // remove the state without following a link.
        share.teardown(&log());
        let done = cleanup_dir(&state, &log());
        assert!(!state.exists(), "{done:?}");
        host.assert_untouched();
        assert!(fs::symlink_metadata(host.rootfs.join("etc")).unwrap().file_type().is_symlink());
        assert!(fs::symlink_metadata(host.volume.join("link")).unwrap().file_type().is_symlink());
    });
}

#[test]
fn a_crashed_shims_share_is_unmounted_and_removed_without_touching_the_sources() {
    in_private_mounts(|root| {
        let (host, state, share) = sandbox(root);
        share.bind("c1", "rootfs", &host.rootfs, true).unwrap();
        share.bind("c1", "mounts/1-shadow", &host.victim_file, false).unwrap();
        share.bind("c2", "rootfs", &host.volume, false).unwrap();
        // The shim dies here: nothing is released; `delete` finds the directory.
        drop(share);
        assert!(mounts_under(&state).len() >= 5, "{:?}", mounts_under(&state));
        let done = cleanup_dir(&state, &log());
        assert!(!state.exists(), "{done:?}");
        assert!(mounts_under(&root.join("state")).is_empty());
        host.assert_untouched();
    });
}

#[test]
fn removal_stops_at_a_mount_point_and_removes_links_not_targets() {
    in_private_mounts(|root| {
        let host = Host::new(root);
        let dir = root.join("state/sb1");
        fs::create_dir_all(dir.join("a/b")).unwrap();
        // A bind left mounted (an unmount that failed): `remove_dir_all` would empty the host
        // directory through it.
        mount(Some(&host.volume), &dir.join("a/b"), None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        symlink(&host.victim_mount, dir.join("to-mount")).unwrap();
        symlink(&host.victim_file, dir.join("a/to-file")).unwrap();
        fs::write(dir.join("console.log"), b"x").unwrap();
        let kept = remove_tree(&dir).unwrap();
        assert_eq!(kept, [dir.join("a/b")]);
        host.assert_untouched();
        assert!(!dir.join("console.log").exists() && !dir.join("to-mount").exists());
        assert!(!dir.join("a/to-file").exists());
        umount2(&dir.join("a/b"), MntFlags::MNT_DETACH).unwrap();
        assert!(remove_tree(&dir).unwrap().is_empty());
        assert!(!dir.exists());
        assert!(remove_tree(&dir).unwrap().is_empty(), "a second removal is harmless");
        assert_eq!(fs::read_dir(&host.volume).unwrap().count(), 1);
    });
}

#[test]
fn a_host_mount_made_later_under_a_volume_source_does_not_reach_the_guest() {
    in_private_mounts(|root| {
        let (host, state, share) = sandbox(root);
        // The volume's source on a shared mount, as on a systemd host (`/` is shared there):
        // a bind of it would be a peer of that mount, and receive what is mounted under it.
        mount(Some(&host.volume), &host.volume, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        mount(None::<&str>, &host.volume, None::<&str>, MsFlags::MS_SHARED, None::<&str>).unwrap();
        fs::create_dir(host.volume.join("sub")).unwrap();
        share.bind("c1", "mounts/1-volume", &host.volume, true).unwrap();
        let shared = state.join("shared/c1/mounts/1-volume");
        let private = state.join("mounts/c1/mounts/1-volume");
        assert!(shared.join("sub").is_dir());

        // Later, on the host, a writable mount under the (read-only) volume's source.
        mount(Some("tmpfs"), &host.volume.join("sub"), Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap();
        fs::write(host.volume.join("sub/later"), b"host").unwrap();
        for view in [&shared, &private] {
            assert!(!is_mounted(&view.join("sub")), "{} received the host's later mount", view.display());
            assert!(!view.join("sub/later").exists(), "{}", view.display());
            let err = fs::write(view.join("sub/guest"), b"x").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{}: {err}", view.display());
        }
        // The bind still reaches the guest, and goes with the container.
        assert_eq!(fs::read(shared.join("data")).unwrap(), b"original");
        share.release("c1", &log());
        assert!(!shared.exists() && !private.exists());
        assert!(is_mounted(&host.volume.join("sub")), "the host's own mount is left alone");
        umount2(&host.volume.join("sub"), MntFlags::MNT_DETACH).unwrap();
        umount2(&host.volume, MntFlags::MNT_DETACH).unwrap();
        fs::remove_dir(host.volume.join("sub")).unwrap();
        stop(&host, &state, &share);
    });
}

#[test]
fn a_path_planted_for_the_next_container_is_neither_followed_nor_mounted_through() {
    in_private_mounts(|root| {
        let (host, state, share) = sandbox(root);
        share.bind("c1", "rootfs", &host.rootfs, false).unwrap();
        let (shared, mounts) = (state.join("shared"), state.join("mounts"));
        // What a guest can do: nothing outside its rw binds; the next container's path cannot
        // be made.
        for attempt in
            [fs::create_dir_all(shared.join("c2/mounts/0-volume")), symlink(&host.victim_file, shared.join("c2"))]
        {
            assert_eq!(attempt.unwrap_err().raw_os_error(), Some(libc::EROFS));
        }
        // Worse than any guest can do: plants in the host-only tree itself, one level at a time.
        // Each bind of the next container is refused, nothing is mounted on or through a plant.
        let plants: [(&str, &dyn Fn()); 4] = [
            ("a link at the bind's path", &|| {
                fs::create_dir_all(mounts.join("c2/mounts")).unwrap();
                symlink(&host.victim_file, mounts.join("c2/mounts/0-volume")).unwrap();
            }),
            ("a directory at the bind's path", &|| {
                fs::create_dir_all(mounts.join("c2/mounts/0-volume")).unwrap();
            }),
            ("a link for the container's mounts/", &|| {
                fs::create_dir_all(mounts.join("c2")).unwrap();
                symlink(&host.victim_mount, mounts.join("c2/mounts")).unwrap();
            }),
            ("a link for the container's directory", &|| symlink(&host.victim_mount, mounts.join("c2")).unwrap()),
        ];
        for (what, plant) in plants {
            plant();
            let err = share.bind("c2", "mounts/0-volume", &host.volume, false).unwrap_err();
            let message = wisp_shim::error_chain(&err);
            assert!(message.contains("c2"), "{what}: {message}");
            assert!(mounts_under(&mounts).iter().all(|p| !p.starts_with(mounts.join("c2"))), "{what}: mounted");
            assert!(mounts_under(&host.victim_mount).len() == 1, "{what}: mounted on the host");
            assert_eq!(fs::read_dir(&host.victim_mount).unwrap().count(), 1, "{what}: made in the host mount");
            share.release("c2", &log());
            host.assert_untouched();
            remove_tree(&mounts.join("c2")).unwrap();
        }
        // With the plants gone, the next container's bind is made.
        share.bind("c2", "mounts/0-volume", &host.volume, false).unwrap();
        assert_eq!(fs::read(shared.join("c2/mounts/0-volume/data")).unwrap(), b"original");
        stop(&host, &state, &share);
    });
}

#[test]
fn a_read_only_bind_rootfs_from_a_snapshotter_is_read_only_on_the_host() {
    use wisp_shim::container::{mount_rootfs, plan::RootfsMount};
    in_private_mounts(|root| {
        let snapshot = root.join("snapshot");
        fs::create_dir_all(&snapshot).unwrap();
        fs::write(snapshot.join("file"), b"image").unwrap();
        let target = root.join("bundle/rootfs");
        let bind = |options: &[&str]| RootfsMount {
            fstype: "bind".into(),
            source: snapshot.to_string_lossy().into_owned(),
            options: options.iter().map(|o| (*o).to_owned()).collect(),
        };
        mount_rootfs(&[bind(&["rbind", "ro", "nosuid"])], &target).expect("mount the rootfs");
        let options = mount_options(&target).expect("the rootfs is mounted");
        assert!(options.split(',').any(|o| o == "ro"), "a ro bind is ro: {options}");
        assert!(options.split(',').any(|o| o == "nosuid"), "{options}");
        let err = fs::write(target.join("file"), b"written").expect_err("a write through a ro bind");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        assert_eq!(fs::read(snapshot.join("file")).unwrap(), b"image");
        umount2(&target, MntFlags::MNT_DETACH).unwrap();

        mount_rootfs(&[bind(&["rbind", "rw"])], &target).expect("mount rw");
        fs::write(target.join("file"), b"written").expect("a rw bind stays writable");
        umount2(&target, MntFlags::MNT_DETACH).unwrap();
    });
}
