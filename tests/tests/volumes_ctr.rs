//! Block storage through the shim under a real containerd: a vhost-user-blk disk named by a
//! `linux.devices` entry of major 241 (seed 000, SPDK's workflow, with qemu-storage-daemon as
//! the vhost-user-blk target), and Kata direct volumes mounted with `ctr run --mount
//! type=directvol|spdkvol` (seed 001), with `wisp direct-volume` managing them.
//!
//! Needs root, `make deps` (containerd, QEMU, qemu-storage-daemon, e2fsprogs) and `make all`.
//! Compiled only with `containerd-tests` and `vm-tests` (`make test-shim`).
#![cfg(all(feature = "containerd-tests", feature = "vm-tests"))]

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use tempfile::TempDir;
use wisp_tests::containerd::{describe, s, text, ContainerdOptions};
use wisp_tests::{artifacts, Containerd};

const RUNTIME: &str = "io.containerd.wisp.v2";
/// Kata's 3 s wait for a hot-plugged disk is short for TCG on a loaded 2-core host (PCI
/// enumeration of the new device runs in the emulated guest): the tests allow 30 s.
const HOTPLUG_TIMEOUT: &str = "kernel_params = \"agent.hotplug_timeout=30\"";

/// A release (else debug) binary of the workspace.
fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let target = artifacts::target_dir();
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found in {}/{{release,debug}}: run `make tools`", target.display()))
}

/// A private containerd finding our shim; the shim's state, vhost-user store and direct-volume
/// root all live in `dir`.
struct Setup {
    dir: TempDir,
    ctd: Containerd,
}

impl Setup {
    fn new() -> anyhow::Result<Self> {
        Self::with_qemu("")
    }

    /// Extra `[hypervisor.qemu]` lines.
    fn with_qemu(qemu: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("wisp-vol-").tempdir()?;
        let shim = binary("containerd-shim-wisp-v2")?;
        let config = dir.path().join("configuration.toml");
        // `qemu` may name its own kernel (microvm boots the PVH vmlinux).
        let kernel = if qemu.contains("kernel =") {
            String::new()
        } else {
            format!("kernel = \"{}\"\n", artifacts::kernel()?.display())
        };
        std::fs::write(
            &config,
            format!(
                "[hypervisor.qemu]\n{kernel}initrd = \"{}\"\n{HOTPLUG_TIMEOUT}\n{qemu}\n\n[agent.wisp]\ndial_timeout = 90\n",
                artifacts::initrd()?.display()
            ),
        )?;
        // containerd passes its environment on to the shims it starts.
        std::env::set_var("WISP_STATE_DIR", dir.path().join("state"));
        std::env::set_var("WISP_CONFIG", &config);
        std::env::set_var("WISP_VHOST_USER_STORE", dir.path().join("store"));
        std::env::set_var("WISP_DIRECT_VOLUMES_DIR", dir.path().join("direct-volumes"));
        for sub in ["store/block/devices", "store/block/sockets", "direct-volumes"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        let shim_dir = shim.parent().context("shim path has no directory")?.to_owned();
        let ctd = Containerd::start_with(ContainerdOptions { shim_dirs: vec![shim_dir], ..Default::default() })?;
        Ok(Self { dir, ctd })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A busybox bundle running `args`; `edit` changes its config.json.
    fn bundle(&self, name: &str, args: &[&str], edit: impl FnOnce(&mut serde_json::Value)) -> anyhow::Result<PathBuf> {
        let bundle = self.path(name);
        let builder = binary("rootfs-builder")?;
        let out = Command::new(&builder)
            .args(["bundle", "--from", "busybox", "-o", s(&bundle), "--args"])
            .args(args)
            .output()?;
        ensure!(out.status.success(), "rootfs-builder bundle: {}", describe(&out));
        let config = bundle.join("config.json");
        let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&config)?)?;
        edit(&mut json);
        std::fs::write(&config, serde_json::to_vec_pretty(&json)?)?;
        Ok(config)
    }

    fn ctr(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.ctd.ctr(args)?)
    }

    /// `ctr t exec` of `sh -c script` in `id`; its stdout.
    fn exec(&self, id: &str, exec_id: &str, script: &str) -> anyhow::Result<String> {
        let out = self.ctr(&["tasks", "exec", "--exec-id", exec_id, id, "sh", "-c", script])?;
        ensure!(out.status.success(), "ctr t exec {script:?}: {}", describe(&out));
        Ok(text(&out.stdout))
    }

    /// Kills and deletes task and container `id`.
    fn remove(&self, id: &str) -> anyhow::Result<()> {
        let _ = self.ctr(&["tasks", "kill", "-s", "KILL", id])?;
        let start = Instant::now();
        loop {
            let out = self.ctr(&["tasks", "delete", id])?;
            if out.status.success() {
                break;
            }
            ensure!(start.elapsed() < Duration::from_secs(15), "ctr t delete {id}: {}", describe(&out));
            std::thread::sleep(Duration::from_millis(200));
        }
        let out = self.ctr(&["containers", "delete", id])?;
        ensure!(out.status.success(), "ctr c delete {id}: {}", describe(&out));
        Ok(())
    }

    /// The processes still naming this test's directory (QEMU, helpers).
    fn processes(&self) -> Vec<String> {
        let needle = self.path("state").to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
                let cmdline = text(&std::fs::read(format!("/proc/{pid}/cmdline")).ok()?).replace('\0', " ");
                cmdline.contains(&needle).then(|| format!("{pid}: {cmdline}"))
            })
            .collect()
    }

    /// `wisp ARGS` with this test's environment.
    fn wisp(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(binary("wisp")?).args(args).output()?)
    }
}

/// qemu-storage-daemon exporting `image` as vhost-user-blk on `socket` (the SPDK stand-in);
/// killed on drop.
struct StorageDaemon(Child);

impl StorageDaemon {
    fn start(image: &Path, socket: &Path) -> anyhow::Result<Self> {
        let child = Command::new("qemu-storage-daemon")
            .args([
                "--blockdev",
                &format!("driver=file,node-name=f,filename={}", image.display()),
                "--export",
                &format!(
                    "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on",
                    socket.display()
                ),
            ])
            .stdin(Stdio::null())
            .spawn()
            .context("qemu-storage-daemon (make deps: qemu-system-x86 / qemu-utils)")?;
        let daemon = Self(child);
        let start = Instant::now();
        while !std::fs::metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
            ensure!(
                start.elapsed() < Duration::from_secs(10),
                "qemu-storage-daemon did not create {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(daemon)
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `size`-byte file starting with `head`.
fn image(path: &Path, size: u64, head: &[u8]) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)?;
    file.set_len(size)?;
    std::os::unix::fs::FileExt::write_all_at(&file, head, 0)?;
    Ok(())
}

/// Makes `<store>/block/devices/<name>` a block node `major:minor`.
fn store_node(t: &Setup, name: &str, major: u64, minor: u64) -> anyhow::Result<()> {
    let node = t.path("store/block/devices").join(name);
    let dev = nix::sys::stat::makedev(major, minor);
    nix::sys::stat::mknod(&node, nix::sys::stat::SFlag::S_IFBLK, nix::sys::stat::Mode::from_bits_truncate(0o600), dev)
        .with_context(|| format!("mknod {}", node.display()))?;
    Ok(())
}

/// Seed 000's device entry (and an allow rule, as the bundle denies every device).
fn with_device(major: i64, minor: i64) -> impl FnOnce(&mut serde_json::Value) {
    move |json| {
        json["linux"]["devices"] = serde_json::json!([{
            "path": "/dev/vda", "type": "b", "major": major, "minor": minor, "fileMode": 420, "uid": 0, "gid": 0
        }]);
        if let Some(rules) = json["linux"]["resources"]["devices"].as_array_mut() {
            rules
                .push(serde_json::json!({"allow": true, "type": "b", "major": major, "minor": minor, "access": "rwm"}));
        }
    }
}

/// Reads `len` bytes of `path` at `offset`.
fn read_at(path: &Path, offset: u64, len: usize) -> anyhow::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(path)?, &mut buf, offset)?;
    Ok(buf)
}

#[test]
fn spdk_vhost_user_blk_device_from_config_json() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let img = t.path("spdk.img");
    image(&img, 8 << 20, b"WISP-SPDK-DISK")?;
    let _daemon = StorageDaemon::start(&img, &t.path("store/block/sockets/vhostblk0"))?;
    store_node(&t, "vhostblk0", 241, 0)?;
    let config = t.bundle("spdk", &["sleep", "3600"], with_device(241, 0))?;

    let started = Instant::now();
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, "--config", s(&config), "spdk_container"])?;
    ensure!(out.status.success(), "ctr run -d: {}", describe(&out));
    eprintln!("ctr run -d with a vhost-user-blk disk: {:?}", started.elapsed());

    let listing = t.exec("spdk_container", "1", "ls -l /dev/vda")?;
    assert!(listing.starts_with('b'), "/dev/vda is a block device in the container: {listing}");
    let read =
        t.exec("spdk_container", "2", "dd if=/dev/vda of=/tmp/ddtest bs=4k count=20 2>&1; head -c 14 /tmp/ddtest")?;
    assert!(read.contains("20+0 records in"), "dd read 20 blocks: {read}");
    assert!(read.ends_with("WISP-SPDK-DISK"), "the disk's first bytes reach the container: {read}");
    let wrote = t.exec(
        "spdk_container",
        "3",
        "printf WRITTEN-IN-GUEST | dd of=/dev/vda bs=4096 seek=1 conv=notrunc,fsync 2>&1 && sync && echo ok",
    )?;
    assert!(wrote.trim_end().ends_with("ok"), "{wrote}");
    t.remove("spdk_container")?;
    assert_eq!(read_at(&img, 4096, 16)?, b"WRITTEN-IN-GUEST", "the container's write is in the backing file");
    let start = Instant::now();
    while !t.processes().is_empty() {
        ensure!(start.elapsed() < Duration::from_secs(10), "left running: {:#?}", t.processes());
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[test]
fn vhost_user_store_errors_name_the_path_and_boot_nothing() -> anyhow::Result<()> {
    let t = Setup::new()?;
    // No node with 241:3 at all.
    let config = t.bundle("nonode", &["true"], with_device(241, 3))?;
    let out = t.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", s(&config), "nonode"])?;
    ensure!(!out.status.success(), "a 241 device with no node must fail: {}", describe(&out));
    let devices = t.path("store/block/devices");
    assert!(
        text(&out.stderr).contains(&format!("no node with rdev 241:3 in {}", devices.display())),
        "{}",
        describe(&out)
    );
    let _ = t.ctr(&["containers", "delete", "nonode"]);
    // A node, but its socket is missing.
    store_node(&t, "vhostblk1", 241, 1)?;
    let config = t.bundle("nosock", &["true"], with_device(241, 1))?;
    let out = t.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", s(&config), "nosock"])?;
    ensure!(!out.status.success(), "a missing socket must fail: {}", describe(&out));
    let socket = t.path("store/block/sockets/vhostblk1");
    assert!(text(&out.stderr).contains(&format!("no vhost-user socket at {}", socket.display())), "{}", describe(&out));
    let _ = t.ctr(&["containers", "delete", "nosock"]);
    // vhost-user-scsi is refused.
    let config = t.bundle("scsi", &["true"], with_device(242, 0))?;
    let out = t.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", s(&config), "scsi"])?;
    ensure!(!out.status.success(), "242 must be refused: {}", describe(&out));
    assert!(text(&out.stderr).contains("vhost-user-scsi (major 242)"), "{}", describe(&out));
    let _ = t.ctr(&["containers", "delete", "scsi"]);
    assert!(t.processes().is_empty(), "no VM was booted for bad input: {:#?}", t.processes());
    Ok(())
}

/// An ext4 image of `size` holding `files` (name, content), built without loop mounts.
fn ext4_image(t: &Setup, name: &str, size: &str, files: &[(&str, &str)]) -> anyhow::Result<PathBuf> {
    let content = t.path(&format!("{name}.d"));
    std::fs::create_dir_all(&content)?;
    for (file, text) in files {
        std::fs::write(content.join(file), text)?;
    }
    let img = t.path(name);
    let out = Command::new("mkfs.ext4").args(["-q", "-F", "-d", s(&content), s(&img), size]).output()?;
    ensure!(out.status.success(), "mkfs.ext4: {}", describe(&out));
    Ok(img)
}

/// A file of an ext4 image, read on the host with debugfs.
fn ext4_cat(img: &Path, file: &str) -> anyhow::Result<String> {
    let out = Command::new("debugfs").args(["-R", &format!("cat /{file}"), s(img)]).output()?;
    ensure!(out.status.success(), "debugfs: {}", describe(&out));
    Ok(text(&out.stdout))
}

/// A busybox OCI image imported into the test's containerd; its name.
fn import_busybox(t: &Setup) -> anyhow::Result<&'static str> {
    let image = t.path("image.tar");
    let out = Command::new(binary("rootfs-builder")?)
        .args(["oci-image", "--from", "busybox", "--name", "wisp-bb:vol", "-o", s(&image)])
        .output()?;
    ensure!(out.status.success(), "rootfs-builder oci-image: {}", describe(&out));
    let out = t.ctr(&["images", "import", s(&image)])?;
    ensure!(out.status.success(), "ctr images import: {}", describe(&out));
    Ok("docker.io/library/wisp-bb:vol")
}

/// `wisp direct-volume stats`: the byte usage's total.
fn volume_total(t: &Setup, volume: &str) -> anyhow::Result<u64> {
    let out = t.wisp(&["direct-volume", "stats", volume])?;
    ensure!(out.status.success(), "wisp direct-volume stats: {}", describe(&out));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    stats["usage"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["unit"] == "BYTES"))
        .and_then(|u| u["total"].as_u64())
        .with_context(|| format!("no byte usage in {stats}"))
}

#[test]
fn directvol_mounted_written_stats_and_resize() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let img = ext4_image(&t, "vol.img", "16M", &[("hello.txt", "hello from the host\n")])?;
    let volume = "/kubelet/kata-test-vol-001/volume001";
    // kata-ctl's arguments and mountInfo keys, as seed 001 types them.
    let info = serde_json::json!({"volume-type": "directvol", "device": s(&img), "fstype": "ext4",
                                  "metadata": {}, "options": []});
    let out = t.wisp(&["direct-volume", "add", volume, &info.to_string()])?;
    ensure!(out.status.success(), "wisp direct-volume add: {}", describe(&out));
    let image = import_busybox(&t)?;
    let mount = format!("type=directvol,src={volume},dst=/disk,options=rbind:rw");
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, "--mount", &mount, image, "dv", "sleep", "3600"])?;
    ensure!(out.status.success(), "ctr run --mount type=directvol: {}", describe(&out));

    assert_eq!(t.exec("dv", "1", "cat /disk/hello.txt")?, "hello from the host\n");
    assert!(t.exec("dv", "2", "grep ' /disk ' /proc/mounts")?.contains("ext4"), "/disk is the ext4 volume");
    t.exec("dv", "3", "echo written in the guest > /disk/new.txt && sync")?;
    let out = t.wisp(&["direct-volume", "list"])?;
    let listed = text(&out.stdout);
    assert!(listed.contains(&format!("{volume}\tdirectvol\t{}\text4\tdv", img.display())), "{listed}");

    let before = volume_total(&t, volume)?;
    let out = t.wisp(&["direct-volume", "resize", volume, &(32u64 << 20).to_string()])?;
    ensure!(out.status.success(), "wisp direct-volume resize: {}", describe(&out));
    let after = volume_total(&t, volume)?;
    assert!(after > before + (12 << 20), "the guest file system grew: {before} -> {after}");
    assert_eq!(std::fs::metadata(&img)?.len(), 32 << 20, "the disk grew on the host too");

    t.remove("dv")?;
    assert_eq!(ext4_cat(&img, "new.txt")?, "written in the guest\n", "the guest's write is in the image");
    let out = t.wisp(&["direct-volume", "stats", volume])?;
    assert!(text(&out.stderr).contains("not used by a running sandbox"), "{}", describe(&out));
    let out = t.wisp(&["direct-volume", "remove", volume])?;
    ensure!(out.status.success(), "wisp direct-volume remove: {}", describe(&out));
    assert_eq!(std::fs::read_dir(t.path("direct-volumes"))?.count(), 0, "the volume's directory is gone");
    Ok(())
}

#[test]
fn spdkvol_from_a_vhost_user_socket() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let img = ext4_image(&t, "spdk.img", "16M", &[("id.txt", "spdk volume\n")])?;
    let socket = t.path("spdk.sock");
    let _daemon = StorageDaemon::start(&img, &socket)?;
    let volume = "/kubelet/kata-test-vol-001/volume002";
    let info = serde_json::json!({"volume-type": "spdkvol", "device": format!("spdk://{}", socket.display()),
                                  "fstype": "ext4", "metadata": {}, "options": []});
    let out = t.wisp(&["direct-volume", "add", "--volume-path", volume, "--mount-info", &info.to_string()])?;
    ensure!(out.status.success(), "wisp direct-volume add: {}", describe(&out));
    let image = import_busybox(&t)?;
    let mount = format!("type=spdkvol,src={volume},dst=/disk001,options=rbind:rw");
    let out = t.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--mount",
        &mount,
        image,
        "sv",
        "sh",
        "-c",
        "cat /disk001/id.txt && echo via vhost-user > /disk001/w.txt && sync",
    ])?;
    ensure!(out.status.success(), "ctr run --mount type=spdkvol: {}", describe(&out));
    assert_eq!(text(&out.stdout), "spdk volume\n");
    drop(_daemon);
    assert_eq!(ext4_cat(&img, "w.txt")?, "via vhost-user\n");
    Ok(())
}

#[test]
fn bad_direct_volumes_fail_create_and_leave_nothing() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let image = import_busybox(&t)?;
    let root = t.path("direct-volumes");
    let add = |volume: &str, info: &str| -> anyhow::Result<()> {
        // Written by hand, as a CSI driver would: `wisp direct-volume add` checks what it writes.
        let dir = root.join(wisp_shim::volumes::direct::encode(volume.as_bytes()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("mountInfo.json"), info)?;
        Ok(())
    };
    add("/v/unknown", r#"{"volume-type":"nfsvol","device":"/x","fstype":"ext4"}"#)?;
    add("/v/nodevice", r#"{"volume-type":"directvol","device":"/nonexistent/disk.img","fstype":"ext4"}"#)?;
    add("/v/notjson", "volume-type: directvol")?;
    let cases = [
        ("directvol", "/v/unknown", "unknown volume-type \"nfsvol\""),
        ("directvol", "/v/nodevice", "device /nonexistent/disk.img"),
        ("directvol", "/v/notjson", "is not a valid mountInfo"),
        ("directvol", "/v/../etc", "must be absolute and must not contain `..`"),
        ("spdkvol", "/v/missing", "mountInfo.json (add it with `wisp direct-volume add`)"),
    ];
    for (index, (kind, volume, expected)) in cases.iter().enumerate() {
        let id = format!("bad{index}");
        let mount = format!("type={kind},src={volume},dst=/disk,options=rbind:rw");
        let out = t.ctr(&["run", "--rm", "--runtime", RUNTIME, "--mount", &mount, image, &id, "true"])?;
        ensure!(!out.status.success(), "{volume} must fail: {}", describe(&out));
        assert!(text(&out.stderr).contains(expected), "{volume}: expected {expected:?} in {}", describe(&out));
        let _ = t.ctr(&["containers", "delete", &id]);
    }
    assert!(t.processes().is_empty(), "no VM for bad volumes: {:#?}", t.processes());
    let state = std::fs::read_dir(t.path("state")).map(|d| d.flatten().filter(|e| e.file_name() != "accel").count());
    assert_eq!(state.unwrap_or(0), 0, "no sandbox state left");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(!mountinfo.contains(s(t.dir.path())), "nothing mounted under the test dir");
    Ok(())
}

#[test]
fn hot_plug_into_a_running_container_then_unplug() -> anyhow::Result<()> {
    let t = Setup::new()?;
    let img = ext4_image(&t, "hot.img", "16M", &[("hot.txt", "plugged while running\n")])?;
    let image = import_busybox(&t)?;
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, image, "hp", "sleep", "3600"])?;
    ensure!(out.status.success(), "ctr run -d: {}", describe(&out));
    assert_eq!(t.exec("hp", "1", "test -e /dev/xvdb || echo none")?, "none\n");

    let plug = ["block-volume", "hot-plug", "--sandbox", "hp", "--container", "hp", "--block-volume", s(&img)];
    let started = Instant::now();
    let out = t.wisp(&[&plug[..], &["--device-path", "/dev/xvdb", "--mount", "/data", "--fstype", "ext4"]].concat())?;
    ensure!(out.status.success(), "wisp block-volume hot-plug: {}", describe(&out));
    eprintln!("hot-plug into the running container: {:?}", started.elapsed());
    assert!(t.exec("hp", "2", "ls -l /dev/xvdb")?.starts_with('b'), "/dev/xvdb is a block device");
    assert_eq!(t.exec("hp", "3", "cat /data/hot.txt")?, "plugged while running\n");
    t.exec("hp", "4", "echo from the container > /data/c.txt && dd if=/dev/xvdb of=/dev/null bs=4k count=4 && sync")?;
    let out = t.wisp(&[&plug[..], &["--device-path", "/dev/xvdb"]].concat())?;
    assert!(!out.status.success() && text(&out.stderr).contains("already hot-plugged"), "{}", describe(&out));

    let started = Instant::now();
    let out =
        t.wisp(&["block-volume", "hot-unplug", "--sandbox", "hp", "--container", "hp", "--device-path", "/dev/xvdb"])?;
    ensure!(out.status.success(), "wisp block-volume hot-unplug: {}", describe(&out));
    eprintln!("hot-unplug: {:?}", started.elapsed());
    assert_eq!(t.exec("hp", "5", "test -e /dev/xvdb || grep -q ' /data ' /proc/mounts || echo gone")?, "gone\n");
    assert_eq!(ext4_cat(&img, "c.txt")?, "from the container\n", "the write reached the image before unplug");
    t.remove("hp")?;
    Ok(())
}

#[test]
fn hot_plug_of_a_vhost_user_disk_on_a_pc_machine() -> anyhow::Result<()> {
    // pc plugs on pci.0 (ACPI hot-plug) instead of a PCIe root port; vhost-user needs the
    // shared memory the store setting asks for at boot.
    let t = Setup::with_qemu("machine_type = \"pc\"\nenable_vhost_user_store = true")?;
    let img = ext4_image(&t, "pc.img", "16M", &[("pc.txt", "on pci.0\n")])?;
    let socket = t.path("pc.sock");
    let daemon = StorageDaemon::start(&img, &socket)?;
    let image = import_busybox(&t)?;
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, image, "pc", "sleep", "3600"])?;
    ensure!(out.status.success(), "ctr run -d: {}", describe(&out));
    let out = t.wisp(&[
        "block-volume",
        "hot-plug",
        "--sandbox",
        "pc",
        "--container",
        "pc",
        "--block-volume",
        s(&socket),
        "--device-path",
        "/dev/vdx",
        "--mount",
        "/mnt/pc",
    ])?;
    ensure!(out.status.success(), "wisp block-volume hot-plug of a socket on pc: {}", describe(&out));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let path = answer["pci_path"].as_str().unwrap_or_default();
    assert!(path.len() == 2 && !path.contains('/'), "pc: one slot on pci.0, got {answer}");
    assert_eq!(t.exec("pc", "1", "cat /mnt/pc/pc.txt")?, "on pci.0\n");
    let out =
        t.wisp(&["block-volume", "hot-unplug", "--sandbox", "pc", "--container", "pc", "--device-path", "/dev/vdx"])?;
    ensure!(out.status.success(), "hot-unplug on pc: {}", describe(&out));
    assert_eq!(t.exec("pc", "2", "test -e /dev/vdx || echo gone")?, "gone\n");
    t.remove("pc")?;
    drop(daemon);
    Ok(())
}

#[test]
fn microvm_refuses_hot_plug_plainly() -> anyhow::Result<()> {
    let qemu = format!("machine_type = \"microvm\"\nkernel = \"{}\"", artifacts::vmlinux()?.display());
    let t = Setup::with_qemu(&qemu)?;
    let img = ext4_image(&t, "mv.img", "8M", &[])?;
    let image = import_busybox(&t)?;
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, image, "mv", "sleep", "3600"])?;
    ensure!(out.status.success(), "ctr run -d on microvm: {}", describe(&out));
    let out = t.wisp(&[
        "block-volume",
        "hot-plug",
        "--sandbox",
        "mv",
        "--container",
        "mv",
        "--block-volume",
        s(&img),
        "--device-path",
        "/dev/vdb",
    ])?;
    assert!(!out.status.success(), "microvm cannot hot-plug: {}", describe(&out));
    assert!(text(&out.stderr).contains("microvm machines cannot hot-plug devices"), "{}", describe(&out));
    assert_eq!(t.exec("mv", "1", "test -e /dev/vdb || echo none")?, "none\n", "the container is unharmed");
    t.remove("mv")?;
    Ok(())
}

/// microvm cannot hot-plug, so the container that boots the VM brings its disk along: a
/// directvol attached at boot as `virtio-blk-device`, mounted by the agent as Kata's `mmioblk`.
#[test]
fn microvm_takes_a_directvol_at_boot_as_mmioblk() -> anyhow::Result<()> {
    let qemu = format!("machine_type = \"microvm\"\nkernel = \"{}\"", artifacts::vmlinux()?.display());
    let t = Setup::with_qemu(&qemu)?;
    let img = ext4_image(&t, "mmio.img", "16M", &[("hello.txt", "hello over mmio\n")])?;
    let volume = "/kubelet/microvm/volume";
    let info = serde_json::json!({"volume-type": "directvol", "device": s(&img), "fstype": "ext4",
                                  "metadata": {}, "options": []});
    let out = t.wisp(&["direct-volume", "add", "--volume-path", volume, "--mount-info", &info.to_string()])?;
    ensure!(out.status.success(), "wisp direct-volume add: {}", describe(&out));
    let image = import_busybox(&t)?;
    let mount = format!("type=directvol,src={volume},dst=/disk,options=rbind:rw");
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, "--mount", &mount, image, "mmio", "sleep", "3600"])?;
    ensure!(out.status.success(), "ctr run --mount type=directvol on microvm: {}", describe(&out));

    assert_eq!(t.exec("mmio", "1", "cat /disk/hello.txt")?, "hello over mmio\n");
    let mounts = t.exec("mmio", "2", "grep ' /disk ' /proc/mounts")?;
    assert!(mounts.starts_with("/dev/vda /disk ext4"), "the virtio-mmio disk is /disk: {mounts}");
    t.exec("mmio", "3", "echo written over mmio > /disk/new.txt && sync")?;
    t.remove("mmio")?;
    assert_eq!(ext4_cat(&img, "new.txt")?, "written over mmio\n", "the guest's write is in the image");
    let out = t.wisp(&["direct-volume", "remove", "--volume-path", volume])?;
    ensure!(out.status.success(), "wisp direct-volume remove: {}", describe(&out));
    Ok(())
}
