//! A hostile guest against the share, through the shim under a real containerd (issue 14).
//!
//! The container stands for a guest whose kernel is owned: it runs as root with
//! CAP_SYS_ADMIN and CAP_MKNOD and has the guest's whole share
//! (`/run/kata-containers/shared/containers`, which virtiofsd or QEMU's 9p serves from the
//! sandbox's state directory) bind-mounted at `/share`. From there it
//! - writes a read-only volume through the share and after remounting its own view rw;
//! - renames its own share directory and plants `<cid>/rootfs -> a host tmpfs mount` and
//!   `<cid>/mounts/<volume> -> a host file` (the CVE-2020-2026 exploit), then the container
//!   is deleted and the sandbox stopped;
//! - makes a set-uid root file and a device node in its rw rootfs;
//! - with a read-only rootfs (`root.readonly`), remounts its `/` rw and writes it, and plants
//!   a directory and a link where the shim will bind the pod's next container's volume
//!   (`<cid2>/mounts/0-volume`) before that container is created.
//!
//! The host must come out unchanged: the tmpfs still mounted, the files as they were, nothing
//! outside the sandbox's state removed, the share unreachable by another local user and bound
//! nosuid,nodev. Each test prints what every attack achieved (the before/after record).
//!
//! Needs root, `make deps` and `make all`; compiled only with `containerd-tests` and
//! `vm-tests` (`make test-shim`).
#![cfg(all(feature = "containerd-tests", feature = "vm-tests"))]

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use wisp_tests::shim_setup::{describe, s, text, Setup, RUNTIME};

const CID: &str = "hostile";
/// Where the guest mounts the share (Kata's path; absent on the host, so the shim leaves a
/// bind of it to the guest).
const GUEST_SHARE: &str = "/run/kata-containers/shared/containers";
/// The read-only volume's index among the spec's mounts, hence its name in the share.
const VOLUME_INDEX: usize = 0;

/// What the guest does; each line it prints names an attack that worked.
fn script(victim_mount: &Path, victim_file: &Path) -> String {
    let vol = format!("/share/{CID}/mounts/{VOLUME_INDEX}-volume");
    format!(
        "exec >/result 2>&1
         echo pwned-through-share > {vol}/data && echo ATTACK wrote the ro volume through the share
         mount -o remount,rw,bind /vol && echo pwned-remount > /vol/data && echo ATTACK wrote the ro volume after a remount
         mv /share/{CID} /share/{CID}.old && echo ATTACK renamed the share dir
         mkdir -p /share/{CID}/mounts && ln -s {mount} /share/{CID}/rootfs && ln -s {file} {vol} \
           && echo ATTACK planted symlinks
         cp /bin/busybox /suid && chmod 4755 /suid && echo made a set-uid file
         mknod /dev-null-copy c 1 3 && chmod 666 /dev-null-copy && echo made a device node
         echo DONE",
        mount = victim_mount.display(),
        file = victim_file.display(),
    )
}

/// The host side: a tmpfs mount and a file the guest aims at, and the ro volume.
struct Victims {
    mount: PathBuf,
    file: PathBuf,
    volume: PathBuf,
}

impl Victims {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        let v = Self { mount: dir.join("kubelet"), file: dir.join("shadow"), volume: dir.join("volume") };
        std::fs::create_dir_all(&v.mount)?;
        std::fs::create_dir_all(&v.volume)?;
        mount(Some("tmpfs"), &v.mount, Some("tmpfs"), MsFlags::empty(), None::<&str>).context("tmpfs")?;
        std::fs::write(v.mount.join("pod-volume"), "keep")?;
        std::fs::write(&v.file, "secret")?;
        std::fs::write(v.volume.join("data"), "original")?;
        Ok(v)
    }

    /// Whether the host mount is still there.
    fn mounted(&self) -> bool {
        let needle = format!(" {} ", self.mount.display());
        std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines().any(|l| l.contains(&needle))
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|e| format!("<{e}>"))
    }
}

impl Drop for Victims {
    fn drop(&mut self) {
        let _ = umount2(&self.mount, MntFlags::MNT_DETACH);
    }
}

/// The mount options of the mount at `path` (the last one there), from mountinfo.
fn mount_options(path: &Path) -> String {
    let needle = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4) == Some(&needle.as_str())).then(|| f.get(5).map(ToString::to_string).unwrap_or_default())
        })
        .unwrap_or_else(|| "<not a mount point>".to_owned())
}

/// Gives the container of `spec` root's powers over its guest (CAP_SYS_ADMIN, CAP_MKNOD, no
/// seccomp, no masked paths) and the guest's whole share at `/share`.
fn make_hostile(spec: &mut serde_json::Value) -> anyhow::Result<()> {
    let caps = ["CAP_SYS_ADMIN", "CAP_MKNOD", "CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE", "CAP_SETFCAP", "CAP_KILL"];
    for set in ["bounding", "effective", "permitted", "inheritable"] {
        spec["process"]["capabilities"][set] = serde_json::json!(caps);
    }
    if let Some(c) = spec["process"]["capabilities"].as_object_mut() {
        c.remove("ambient");
    }
    spec["process"]["noNewPrivileges"] = serde_json::json!(false);
    if let Some(linux) = spec["linux"].as_object_mut() {
        linux.remove("seccomp");
        linux.remove("maskedPaths");
        linux.remove("readonlyPaths");
    }
    let mounts = spec["mounts"].as_array_mut().context("the bundle has no mounts")?;
    mounts.push(
        serde_json::json!({"destination": "/share", "type": "bind", "source": GUEST_SHARE, "options": ["rbind"]}),
    );
    Ok(())
}

/// Polls the guest script's output file `result` in container `cid` until it says DONE.
fn wait_done(t: &Setup, cid: &str, result: &str) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        let out = t.ctr(&["tasks", "exec", "--exec-id", "cat", cid, "cat", result])?;
        let text = text(&out.stdout);
        if text.contains("DONE") {
            return Ok(text);
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the guest script did not finish: {text} {}", describe(&out));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Kills and deletes container `cid`.
fn kill_and_remove(t: &Setup, cid: &str) -> anyhow::Result<()> {
    let _ = t.ctr(&["tasks", "kill", "-s", "KILL", cid])?;
    let start = Instant::now();
    while !t.ctr(&["tasks", "delete", cid])?.status.success() {
        ensure!(start.elapsed() < Duration::from_secs(15), "ctr t delete {cid} did not succeed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = t.ctr(&["containers", "delete", cid])?;
    ensure!(out.status.success(), "ctr c delete {cid}: {}", describe(&out));
    Ok(())
}

/// Whether `nobody` can stat `path` on the host.
fn nobody_reaches(path: &Path) -> bool {
    Command::new("stat").arg(path).uid(65534).gid(65534).output().is_ok_and(|o| o.status.success())
}

fn run_attacks(qemu: &str) -> anyhow::Result<()> {
    ensure!(!Path::new(GUEST_SHARE).exists(), "{GUEST_SHARE} exists on this host: the test needs it absent");
    let t = Setup::with_config(qemu, "")?;
    let victims = Victims::new(t.dir.path())?;
    let config = t.bundle(CID, &["sh", "-c", "sleep 3600"])?;
    let mut spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config)?)?;
    let script = script(&victims.mount, &victims.file);
    spec["process"]["args"] = serde_json::json!(["sh", "-c", format!("{script}\nsleep 3600")]);
    make_hostile(&mut spec)?;
    let mounts = spec["mounts"].as_array_mut().context("the bundle has no mounts")?;
    mounts.insert(
        VOLUME_INDEX,
        serde_json::json!({"destination": "/vol", "type": "bind", "source": s(&victims.volume), "options": ["rbind", "ro"]}),
    );
    std::fs::write(&config, serde_json::to_string_pretty(&spec)?)?;

    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, "--config", s(&config), CID])?;
    ensure!(out.status.success(), "ctr run -d: {}", describe(&out));
    let result = wait_done(&t, CID, "/result")?;
    let sandboxes: Vec<PathBuf> =
        std::fs::read_dir(t.state())?.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    let sandbox = sandboxes.iter().find(|p| p.join("shared").is_dir()).context("no sandbox state dir")?.clone();
    // Where the rootfs is now (a guest that could rename its share dir moved it).
    let moved = sandbox.join("shared").join(format!("{CID}.old"));
    let shared_rootfs = if moved.is_dir() { moved } else { sandbox.join("shared").join(CID) }.join("rootfs");
    let host_rootfs = sandbox.join("mounts").join(CID).join("rootfs");
    let state_mode = std::fs::metadata(&sandbox)?.permissions().mode() & 0o7777;
    let suid_reached = nobody_reaches(&shared_rootfs.join("suid"));
    let node_reached = nobody_reaches(&shared_rootfs.join("dev-null-copy"));
    let opts = mount_options(if host_rootfs.exists() { &host_rootfs } else { &shared_rootfs });
    let volume_during = Victims::read(&victims.volume.join("data"));

    kill_and_remove(&t, CID)?;
    let left = t.wait_no_leftovers(Duration::from_secs(10));

    eprintln!(
        "hostile guest ({}):\n  guest said:\n    {}\n  state dir mode {state_mode:o}; nobody reaches the set-uid file: \
         {suid_reached}, the device node: {node_reached}\n  host bind options: {opts}\n  ro volume while running: \
         {volume_during:?}, after: {:?}\n  host tmpfs still mounted: {}, its file: {:?}, host file: {:?}\n  left: {left:?}",
        if qemu.is_empty() { "virtio-fs" } else { qemu },
        result.trim().replace('\n', "\n    "),
        Victims::read(&victims.volume.join("data")),
        victims.mounted(),
        Victims::read(&victims.mount.join("pod-volume")),
        Victims::read(&victims.file),
    );
    assert!(victims.mounted(), "the guest made the shim detach a host mount");
    assert_eq!(Victims::read(&victims.mount.join("pod-volume")), "keep");
    assert_eq!(Victims::read(&victims.file), "secret", "the guest changed a host file");
    assert_eq!(Victims::read(&victims.volume.join("data")), "original", "the guest wrote a read-only volume");
    assert_eq!(volume_during, "original");
    assert!(!result.contains("ATTACK"), "attacks that worked:\n{result}");
    // The set-uid file proves the guest wrote in its rw share; a device node is refused by
    // QEMU's 9p (ENXIO) and by virtiofsd, which runs without CAP_MKNOD (`--modcaps=-mknod`).
    assert!(result.contains("made a set-uid file"), "{result}");
    if qemu.is_empty() {
        assert!(!result.contains("made a device node"), "virtiofsd runs without CAP_MKNOD: {result}");
    }
    assert_eq!(state_mode, 0o700, "the sandbox state dir is private");
    assert!(!suid_reached && !node_reached, "another local user reaches what the guest made");
    for flag in ["nosuid", "nodev"] {
        assert!(opts.split(',').any(|o| o == flag), "the host bind of the rootfs is not {flag}: {opts}");
    }
    assert!(left.is_empty(), "{left:#?}");
    Ok(())
}

#[test]
fn a_hostile_guest_cannot_turn_the_virtio_fs_share_against_the_host() -> anyhow::Result<()> {
    run_attacks("")
}

#[test]
fn a_hostile_guest_cannot_turn_the_9p_share_against_the_host() -> anyhow::Result<()> {
    run_attacks("shared_fs = \"virtio-9p\"")
}

/// The read-only rootfs's container, and the pod's next container, whose volume path the
/// first one tries to plant.
const RO_CID: &str = "hostile-ro";
const NEXT_CID: &str = "hostile-next";
const POD: &str = "hostile-pod";

/// What the container with a read-only rootfs does; each line it prints names an attack that
/// worked. Its output goes to its own tmpfs `/dev`.
fn read_only_script(victim_file: &Path) -> String {
    let next = format!("/share/{NEXT_CID}/mounts/{VOLUME_INDEX}-volume");
    format!(
        "exec >/dev/result 2>&1
         echo pwned > /pwned && echo ATTACK wrote the read-only rootfs
         mount -o remount,rw,bind / && echo remounted / rw
         echo pwned > /pwned && echo ATTACK wrote the read-only rootfs after a remount
         mount -o remount,rw,bind /share && echo remounted /share rw
         echo pwned > /share/{RO_CID}/rootfs/pwned-share && echo ATTACK wrote the rootfs through the share
         mkdir -p {next} && echo ATTACK made the volume path of the next container
         mkdir -p /share/{NEXT_CID}/mounts && ln -s {file} {next} && echo ATTACK planted a link at it
         ln -s {file} /share/{NEXT_CID} && echo ATTACK planted a link for the next container
         echo DONE",
        file = victim_file.display(),
    )
}

/// A bundle of `cid` in pod [`POD`] running `script`.
fn pod_bundle(t: &Setup, cid: &str, script: &str) -> anyhow::Result<(PathBuf, serde_json::Value)> {
    let config = t.bundle(cid, &["sh", "-c", script])?;
    let mut spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config)?)?;
    spec["annotations"] = serde_json::json!({"io.kubernetes.cri.sandbox-id": POD});
    Ok((config, spec))
}

/// `root.readonly` (CRI's pause container, `ctr run --read-only`) holds on the host against a
/// guest with CAP_SYS_ADMIN, and the path where the shim will bind the pod's next container's
/// volume cannot be planted before that container comes: the next container gets its volume.
fn read_only_rootfs(qemu: &str) -> anyhow::Result<()> {
    ensure!(!Path::new(GUEST_SHARE).exists(), "{GUEST_SHARE} exists on this host: the test needs it absent");
    let t = Setup::with_config(qemu, "")?;
    let victims = Victims::new(t.dir.path())?;
    let (config, mut spec) = pod_bundle(&t, RO_CID, &format!("{}\nsleep 3600", read_only_script(&victims.file)))?;
    make_hostile(&mut spec)?;
    spec["root"]["readonly"] = serde_json::json!(true);
    let host_rootfs = PathBuf::from(spec["root"]["path"].as_str().context("no root.path")?);
    // `/share` binds a guest path: its mount point cannot be made on the host, the image has it.
    std::fs::create_dir(host_rootfs.join("share"))?;
    std::fs::write(&config, serde_json::to_string_pretty(&spec)?)?;
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, "--config", s(&config), RO_CID])?;
    ensure!(out.status.success(), "ctr run -d (read-only rootfs): {}", describe(&out));
    let result = wait_done(&t, RO_CID, "/dev/result")?;
    let sandbox = std::fs::read_dir(t.state())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("shared").is_dir())
        .context("no sandbox state dir")?;
    let opts = mount_options(&sandbox.join("mounts").join(RO_CID).join("rootfs"));

    // The pod's next container, with a rw volume where the first one tried to plant.
    let (next_config, mut next) = pod_bundle(&t, NEXT_CID, "cat /vol/data && echo from-next > /vol/from-next")?;
    let mounts = next["mounts"].as_array_mut().context("the bundle has no mounts")?;
    mounts.insert(
        VOLUME_INDEX,
        serde_json::json!({"destination": "/vol", "type": "bind", "source": s(&victims.volume), "options": ["rbind"]}),
    );
    std::fs::write(&next_config, serde_json::to_string_pretty(&next)?)?;
    let out = t.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", s(&next_config), NEXT_CID])?;
    let next_said = text(&out.stdout);
    kill_and_remove(&t, RO_CID)?;
    let left = t.wait_no_leftovers(Duration::from_secs(10));

    eprintln!(
        "read-only rootfs ({}):\n  guest said:\n    {}\n  host bind options: {opts}\n  rootfs written: {}, \
         through the share: {}\n  next container said {next_said:?}; host file: {:?}; the volume got: {:?}\n  left: {left:?}",
        if qemu.is_empty() { "virtio-fs" } else { qemu },
        result.trim().replace('\n', "\n    "),
        host_rootfs.join("pwned").exists(),
        host_rootfs.join("pwned-share").exists(),
        Victims::read(&victims.file),
        Victims::read(&victims.volume.join("from-next")),
    );
    assert!(result.contains("remounted / rw"), "the guest could not even remount: {result}");
    assert!(!result.contains("ATTACK"), "attacks that worked:\n{result}");
    assert!(!host_rootfs.join("pwned").exists() && !host_rootfs.join("pwned-share").exists());
    assert!(opts.split(',').any(|o| o == "ro"), "the host bind of the rootfs is not read-only: {opts}");
    assert!(out.status.success(), "the next container: {}", describe(&out));
    assert_eq!(next_said.trim(), "original", "{}", describe(&out));
    assert_eq!(Victims::read(&victims.volume.join("from-next")), "from-next\n");
    assert_eq!(Victims::read(&victims.file), "secret", "the guest changed a host file");
    assert!(victims.mounted());
    assert!(left.is_empty(), "{left:#?}");
    Ok(())
}

/// Through virtio-fs, then QEMU's 9p.
#[test]
fn a_read_only_rootfs_is_read_only_on_the_host_and_the_next_containers_path_cannot_be_planted() -> anyhow::Result<()> {
    for qemu in ["", "shared_fs = \"virtio-9p\""] {
        read_only_rootfs(qemu)?;
    }
    Ok(())
}

/// The mount options of every mount whose path ends with `suffix`, from mountinfo.
fn options_of_mounts_ending_with(suffix: &str) -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').map(ToString::to_string).collect::<Vec<_>>())
        .filter(|f| f.get(4).is_some_and(|p| p.ends_with(suffix)))
        .map(|f| (f[4].clone(), f.get(5).cloned().unwrap_or_default()))
        .collect()
}

/// `ctr run --read-only` of an image: the spec says `root.readonly` (containerd 1.6's ctr still
/// hands over a rw snapshot); the share's bind of the rootfs is read-only on the host.
#[test]
fn ctr_run_read_only_shares_the_image_read_only() -> anyhow::Result<()> {
    const ID: &str = "hostile-image-ro";
    let t = Setup::new()?;
    let image = t.import_busybox("ro")?;
    let out = t.ctr(&["run", "-d", "--read-only", "--runtime", RUNTIME, &image, ID, "sleep", "3600"])?;
    ensure!(out.status.success(), "ctr run --read-only: {}", describe(&out));
    let binds = options_of_mounts_ending_with(&format!("/{ID}/rootfs"));
    let out = t.ctr(&["tasks", "exec", "--exec-id", "w", ID, "sh", "-c", "echo x > /written; echo rc=$?"])?;
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    kill_and_remove(&t, ID)?;
    let left = t.wait_no_leftovers(Duration::from_secs(10));
    eprintln!("ctr run --read-only: mounts {binds:#?}\n  the guest said {said:?}\n  left: {left:?}");
    let share = binds.iter().find(|(p, _)| p.contains("/mounts/")).context("no bind of the rootfs in the share")?;
    assert!(share.1.split(',').any(|o| o == "ro"), "the rootfs bind in the share: {share:?}");
    assert!(said.contains("Read-only file system") && said.contains("rc=1"), "{said}");
    assert!(left.is_empty(), "{left:#?}");
    Ok(())
}
