//! Host tests of devices, storages and networking against the real kernel.
//!
//! **Needs root** (CI runs as root): loop devices, mounts, network
//! namespaces. A test run without root fails, it never skips. Each test that
//! mounts first moves its own thread into a private mount namespace, so
//! nothing it mounts is visible on the host, even if it panics halfway; the
//! network test runs the agent inside a fresh network namespace
//! (`unshare -n`) on a tap device.
//!
//! `device/` and `storage/` are compiled into this test from the agent's
//! sources (the agent is a binary crate); the network test drives the real
//! `wisp-agent` binary over its protocol.

// The agent's modules, with the one item they use from the agent's error module;
// this test calls only part of their API.
#[allow(dead_code)]
#[path = "../src/device/mod.rs"]
mod device;
#[allow(dead_code)]
#[path = "../src/guest_path.rs"]
mod guest_path;
#[allow(dead_code)]
#[path = "../src/mountinfo.rs"]
mod mountinfo;
#[allow(dead_code)]
#[path = "../src/storage/mod.rs"]
mod storage;
mod error {
    use protocols::ttrpc::Code;

    pub fn errno_code(e: nix::Error) -> Code {
        match e {
            nix::Error::ENOENT => Code::NOT_FOUND,
            nix::Error::EPERM => Code::PERMISSION_DENIED,
            _ => Code::INTERNAL,
        }
    }
}

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use protocols::agent::{
    ARPNeighbors, AddARPNeighborsRequest, ListInterfacesRequest, ListRoutesRequest, Routes, Storage,
    UpdateInterfaceRequest, UpdateRoutesRequest,
};
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::ttrpc::{asynchronous::Client, context, Code};
use protocols::types::{ARPNeighbor, IPAddress, Interface, Route};

use device::Devices;

const WAIT: Duration = Duration::from_secs(10);

fn require_root() {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "storage_host needs root (loop devices, mounts, network namespaces); run it as root like CI does"
    );
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// Moves this thread into a mount namespace of its own, private from the host.
fn private_mounts() {
    require_root();
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
    nix::mount::mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .expect("make / private");
}

fn mount_of(path: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/thread-self/mountinfo").expect("mountinfo");
    let path = path.to_str().expect("utf-8");
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let dash = f.iter().position(|x| *x == "-")?;
        (f.get(4) == Some(&path)).then(|| f.get(dash + 1).map(|s| s.to_string()).unwrap_or_default())
    })
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e} (make deps)"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A loop device over a sparse file, detached on drop.
struct Loop {
    dev: String,
    image: PathBuf,
    _dir: tempfile::TempDir,
}

impl Loop {
    fn new(mib: u64) -> Loop {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image).and_then(|f| f.set_len(mib << 20)).expect("image");
        let dev = run("losetup", &["-f", "--show", image.to_str().expect("utf-8")]);
        Loop { dev, image, _dir: dir }
    }

    fn name(&self) -> &str {
        self.dev.trim_start_matches("/dev/")
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// capability(7) number of CAP_SYS_RESOURCE.
const CAP_SYS_RESOURCE: u32 = 24;

fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("CapEff");
    u64::from_str_radix(eff.trim(), 16).expect("hex") & (1 << CAP_SYS_RESOURCE) != 0
}

fn storage(driver: &str, source: &str, fstype: &str, options: &[&str], mount_point: &Path) -> Storage {
    let mut s = Storage::new();
    s.driver = driver.into();
    s.source = source.into();
    s.fstype = fstype.into();
    s.options = options.iter().map(|o| o.to_string()).collect();
    s.mount_point = mount_point.to_str().expect("utf-8").into();
    s
}

#[test]
fn uevent_listener_sees_a_loop_device_attach() {
    require_root();
    let devices = Devices::start(&logger());
    let disk = Loop::new(8);
    // Attaching announces a change on the loop device: only the netlink
    // listener (not the start-up scan, whose entries have no sequence number)
    // can have seen it.
    let name = disk.name().to_owned();
    let ev = devices
        .wait_for(&format!("a kernel uevent for {name}"), WAIT, |ev| ev.devname == name && ev.seqnum > 0)
        .expect("the listener saw the attach");
    assert_eq!(ev.subsystem, "block");
    assert!(ev.devpath.ends_with(&format!("/block/{name}")), "{ev:?}");
    // A late waiter still finds it, under its /dev path.
    assert_eq!(devices.wait_mmio(&disk.dev, Duration::ZERO).expect("remembered"), PathBuf::from(&disk.dev));

    // The spec rewrite reads the real node's numbers.
    let mut spec: oci_spec::runtime::Spec = serde_json::from_str(
        r#"{"ociVersion":"1.1.0","linux":{"devices":[{"path":"/dev/data","type":"b","major":250,"minor":9}],
        "resources":{"devices":[{"allow":true,"type":"b","major":250,"minor":9,"access":"rw"}]}}}"#,
    )
    .expect("spec");
    let mut d = protocols::agent::Device::new();
    d.type_ = "mmioblk".into();
    d.vm_path = disk.dev.clone();
    d.container_path = "/dev/data".into();
    device::apply_devices(&mut spec, &[d], &devices, WAIT).expect("apply");
    let rdev = nix::sys::stat::stat(disk.dev.as_str()).expect("stat").st_rdev;
    let linux = spec.linux().as_ref().expect("linux");
    let entry = &linux.devices().as_ref().expect("devices")[0];
    assert_eq!(
        (entry.major(), entry.minor()),
        (nix::sys::stat::major(rdev) as i64, nix::sys::stat::minor(rdev) as i64)
    );
    let rule = &linux.resources().as_ref().and_then(|r| r.devices().as_ref()).expect("rules")[0];
    assert_eq!((rule.major(), rule.minor()), (Some(entry.major()), Some(entry.minor())));

    // A disk that never comes names itself in the error.
    let err = devices.wait_mmio("/dev/vdzz", Duration::from_millis(100)).expect_err("absent");
    assert_eq!(err.code(), Code::DEADLINE_EXCEEDED);
    assert!(err.to_string().contains("/dev/vdzz") && err.to_string().contains(&name), "{err}");
}

#[test]
fn ephemeral_local_and_bind_storages_mount_and_release() {
    private_mounts();
    let devices = Devices::start(&logger());
    let dir = tempfile::tempdir().expect("tempdir");

    let tmp = dir.path().join("eph");
    let mut eph = storage::mount(&storage("ephemeral", "tmpfs", "tmpfs", &["size=1m", "nodev"], &tmp), &devices, WAIT)
        .expect("ephemeral");
    assert_eq!(mount_of(&tmp).as_deref(), Some("tmpfs"));
    // The same storage again is shared, not mounted twice.
    let mut again =
        storage::mount(&storage("ephemeral", "tmpfs", "tmpfs", &["size=1m"], &tmp), &devices, WAIT).expect("shared");
    eph.release().expect("release");
    assert_eq!(mount_of(&tmp).as_deref(), Some("tmpfs"), "still used by the second");
    again.release().expect("release");
    again.release().expect("idempotent");
    assert_eq!(mount_of(&tmp), None);

    let local = dir.path().join("local/vol");
    let mut l = storage::mount(&storage("local", "", "", &["mode=0750"], &local), &devices, WAIT).expect("local");
    assert_eq!(std::fs::metadata(&local).expect("dir").permissions().mode() & 0o7777, 0o750);
    l.release().expect("release");
    assert!(!local.exists());

    let src = dir.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::write(src.join("f"), "shared").expect("write");
    let dst = dir.path().join("bound");
    let mut b =
        storage::mount(&storage("bind", src.to_str().expect("utf-8"), "", &["rbind", "ro"], &dst), &devices, WAIT)
            .expect("bind");
    assert_eq!(std::fs::read_to_string(dst.join("f")).expect("read through the bind"), "shared");
    let err = std::fs::write(dst.join("g"), "x").expect_err("read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    // A busy mount is detached lazily rather than left behind.
    let held = std::fs::File::open(dst.join("f")).expect("open");
    b.release().expect("release");
    drop(held);
    assert_eq!(mount_of(&dst), None);
}

#[test]
fn a_block_storage_mounts_reports_stats_and_grows() {
    private_mounts();
    let devices = Devices::start(&logger());
    let disk = Loop::new(16);
    run("mkfs.ext4", &["-q", "-F", &disk.dev]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mp = dir.path().join("vol");
    let mut m = storage::mount(&storage("mmioblk", &disk.dev, "ext4", &["nodev"], &mp), &devices, WAIT).expect("mount");
    assert_eq!(mount_of(&mp).as_deref(), Some("ext4"));

    let path = mp.to_str().expect("utf-8");
    let before = storage::volume::stats(path).expect("stats");
    let bytes = &before.usage[0];
    assert!(bytes.total > 10 << 20 && bytes.total <= 16 << 20, "{bytes:?}");
    assert!(before.usage[1].total > 0);

    // The host grows the disk; the guest grows the file system online.
    std::fs::OpenOptions::new().write(true).open(&disk.image).and_then(|f| f.set_len(32 << 20)).expect("grow");
    run("losetup", &["-c", &disk.dev]);
    if has_cap_sys_resource() {
        storage::volume::resize(path, 0).expect("resize");
        let after = storage::volume::stats(path).expect("stats");
        assert!(after.usage[0].total > 24 << 20, "{:?}", after.usage[0]);
    } else {
        // Some container hosts (this project's CI machines among them) drop
        // CAP_SYS_RESOURCE even from root; ext4 then refuses online growth,
        // and the refusal must say so with the right code.
        let err = storage::volume::resize(path, 0).expect_err("no CAP_SYS_RESOURCE");
        assert_eq!(err.code(), Code::PERMISSION_DENIED, "{err}");
        assert!(err.to_string().contains("EXT4_IOC_RESIZE_FS to 32768 blocks"), "{err}");
        eprintln!("note: no CAP_SYS_RESOURCE here: online ext4 growth checked for its refusal only");
    }
    m.release().expect("release");
    assert_eq!(mount_of(&mp), None);
}

#[test]
fn loopback_up_in_a_fresh_network_namespace() {
    require_root();
    // A network namespace is per thread: this one's own, gone with it.
    std::thread::spawn(|| {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        // Binding 127.0.0.1 works with lo down; reaching it does not.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let err = TcpStream::connect(addr).expect_err("lo starts down in a new namespace");
        assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}");
        wisp_init::net::loopback_up().expect("lo up");
        wisp_init::net::loopback_up().expect("again: a no-op");
        TcpStream::connect(addr).expect("connect over lo");
    })
    .join()
    .expect("namespace thread");
}

/// `wisp-agent --listen` inside a new network namespace holding a tap device.
struct NetnsAgent {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

const TAP_MAC: &str = "52:54:00:aa:bb:cc";

impl NetnsAgent {
    fn start() -> NetnsAgent {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("agent.sock");
        let script = format!(
            "ip tuntap add t0 mode tap && ip link set t0 address {TAP_MAC} && exec {} --listen unix:{}",
            env!("CARGO_BIN_EXE_wisp-agent"),
            sock.display()
        );
        let child = Command::new("unshare")
            .args(["-n", "sh", "-c", &script])
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare (make deps)");
        let deadline = Instant::now() + WAIT;
        while UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "agent did not listen on {}", sock.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        NetnsAgent { child, sock, _dir: dir }
    }

    async fn client(&self) -> AgentServiceClient {
        AgentServiceClient::new(Client::connect(&format!("unix://{}", self.sock.display())).await.expect("connect"))
    }

    /// `ip ARGS` inside the agent's network namespace.
    fn ip(&self, args: &[&str]) -> String {
        let pid = self.child.id().to_string();
        let mut all = vec!["-t", &pid, "-n", "ip"];
        all.extend_from_slice(args);
        run("nsenter", &all)
    }
}

impl Drop for NetnsAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctx() -> context::Context {
    context::with_timeout(10_000_000_000)
}

fn route(dest: &str, gateway: &str, device: &str) -> Route {
    let mut r = Route::new();
    r.dest = dest.into();
    r.gateway = gateway.into();
    r.device = device.into();
    r
}

fn routes_req(routes: Vec<Route>) -> UpdateRoutesRequest {
    let mut req = UpdateRoutesRequest::new();
    let mut r = Routes::new();
    r.Routes = routes;
    req.routes = Some(r).into();
    req
}

#[tokio::test]
async fn interfaces_routes_and_neighbours_in_a_network_namespace() {
    let agent = NetnsAgent::start();
    let c = agent.client().await;

    let listed = c.list_interfaces(ctx(), &ListInterfacesRequest::new()).await.expect("list").Interfaces;
    let tap = listed.iter().find(|i| i.name == "t0").expect("t0 listed");
    assert_eq!(tap.hwAddr, TAP_MAC);
    assert!(listed.iter().any(|i| i.name == "lo"));

    let mut iface = Interface::new();
    iface.hwAddr = TAP_MAC.into();
    iface.name = "eth7".into();
    iface.mtu = 1400;
    let mut addr = IPAddress::new();
    addr.address = "10.9.0.2".into();
    addr.mask = "24".into();
    iface.IPAddresses = vec![addr];
    let mut req = UpdateInterfaceRequest::new();
    req.interface = Some(iface).into();
    let got = c.update_interface(ctx(), &req).await.expect("update");
    assert_eq!((got.name.as_str(), got.mtu), ("eth7", 1400));
    assert!(got.raw_flags & libc::IFF_UP as u32 != 0, "up: {:#x}", got.raw_flags);
    assert!(got.IPAddresses.iter().any(|a| a.address == "10.9.0.2" && a.mask == "24"), "{:?}", got.IPAddresses);
    assert!(agent.ip(&["-br", "addr", "show", "eth7"]).contains("10.9.0.2/24"));

    // The gateway route comes first in the request: the agent must reorder.
    let req = routes_req(vec![route("", "10.9.0.1", "eth7"), route("10.9.1.0/24", "", "eth7")]);
    c.update_routes(ctx(), &req).await.expect("routes");
    let listed = c.list_routes(ctx(), &ListRoutesRequest::new()).await.expect("list").Routes;
    assert!(listed.iter().any(|r| r.dest.is_empty() && r.gateway == "10.9.0.1" && r.device == "eth7"), "{listed:?}");
    assert!(listed.iter().any(|r| r.dest == "10.9.1.0/24" && r.gateway.is_empty()), "{listed:?}");
    let table = agent.ip(&["route"]);
    assert!(table.contains("default via 10.9.0.1 dev eth7"), "{table}");

    // Replacing drops the old routes but not the kernel's own.
    c.update_routes(ctx(), &routes_req(vec![route("10.9.2.0/24", "", "eth7")])).await.expect("replace");
    let table = agent.ip(&["route"]);
    assert!(!table.contains("default") && !table.contains("10.9.1.0"), "{table}");
    assert!(table.contains("10.9.2.0/24 dev eth7") && table.contains("10.9.0.0/24 dev eth7"), "{table}");

    let mut n = ARPNeighbor::new();
    let mut to = IPAddress::new();
    to.address = "10.9.0.1".into();
    n.toIPAddress = Some(to).into();
    n.device = "eth7".into();
    n.lladdr = "52:54:00:00:00:01".into();
    let mut req = AddARPNeighborsRequest::new();
    let mut ns = ARPNeighbors::new();
    ns.ARPNeighbors = vec![n];
    req.neighbors = Some(ns).into();
    c.add_arp_neighbors(ctx(), &req).await.expect("neighbours");
    let neigh = agent.ip(&["neigh", "show", "dev", "eth7"]);
    assert!(neigh.contains("10.9.0.1 lladdr 52:54:00:00:00:01 PERMANENT"), "{neigh}");

    let mut iface = Interface::new();
    iface.hwAddr = "52:54:00:00:00:99".into();
    let mut req = UpdateInterfaceRequest::new();
    req.interface = Some(iface).into();
    // An unknown MAC may be a NIC still being hot-plugged: the agent waits for it first.
    let started = std::time::Instant::now();
    let err = c.update_interface(context::with_timeout(30_000_000_000), &req).await.expect_err("no such MAC");
    // (network::LINK_WAIT, 5 s)
    assert!(started.elapsed() >= std::time::Duration::from_secs(5), "waited {:?}", started.elapsed());
    let protocols::ttrpc::Error::RpcStatus(s) = err else { panic!("not a status: {err:?}") };
    assert_eq!(s.code(), Code::NOT_FOUND, "{}", s.message());
    assert!(s.message().contains("52:54:00:00:00:99"), "{}", s.message());
}
