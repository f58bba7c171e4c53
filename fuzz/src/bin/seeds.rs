//! `wisp-fuzz-seeds`: writes the seed corpus of every target (`fuzz/corpus/<target>/`) from
//! the project's own types: requests the shim sends, specs the shim converts, configuration
//! in the documented vocabulary, mountInfo.json as kata-ctl writes it, layers with the
//! entries containerd's applier meets, module packages as Debian ships them. Small on
//! purpose: AFL++ mutates them, it needs variety, not size.
//!
//! Run it after changing a seed here: `cargo run -p wisp-fuzz --bin wisp-fuzz-seeds`.

use std::collections::BTreeMap;

use anyhow::Context as _;
use protocols::agent::{ARPNeighbors, Routes};
use protocols::agent::{
    AddARPNeighborsRequest, CloseStdinRequest, CopyFileRequest, CreateContainerRequest, CreateSandboxRequest,
    DestroySandboxRequest, ExecProcessRequest, GetMetricsRequest, GetOOMEventRequest, GuestDetailsRequest,
    ListInterfacesRequest, ListRoutesRequest, OnlineCPUMemRequest, PauseContainerRequest, ReadStreamRequest,
    RemoveContainerRequest, ReseedRandomDevRequest, ResumeContainerRequest, SetGuestDateTimeRequest, SetPolicyRequest,
    SignalProcessRequest, StartContainerRequest, StatsContainerRequest, Storage, TtyWinResizeRequest,
    UpdateContainerRequest, UpdateInterfaceRequest, UpdateRoutesRequest, WaitProcessRequest, WriteStreamRequest,
};
use protocols::convert::to_pb;
use protocols::health::CheckRequest;
use protocols::protobuf::Message;
use protocols::ttrpc::Request;
use protocols::types::{ARPNeighbor, IPAddress, Interface, Route};
use protocols::wisp::{HotPlugRequest, HotUnplugRequest};
use rootfs_builder::compress::{compress, Compression};
use wisp_fuzz::layer::LAYER_SEPARATOR;
use wisp_fuzz::modules::{DEB, ELF, MODULES_DEP};

type Seeds = Vec<(&'static str, Vec<u8>)>;

fn main() -> anyhow::Result<()> {
    let all: [(&str, Seeds); 7] = [
        ("agent_rpc", agent_rpc()?),
        ("oci_from_pb", oci_from_pb()?),
        ("oci_to_pb", oci_to_pb()),
        ("shim_config", shim_config()),
        ("direct_volume", direct_volume()),
        ("layer_apply", layer_apply()?),
        ("kernel_modules", kernel_modules()?),
    ];
    for (target, seeds) in all {
        let dir = wisp_fuzz::corpus::seeds_dir(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("cannot empty {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (name, data) in &seeds {
            std::fs::write(dir.join(name), data).with_context(|| format!("cannot write {target}/{name}"))?;
        }
        let bytes: usize = seeds.iter().map(|(_, d)| d.len()).sum();
        println!("{target}: {} seeds, {bytes} bytes", seeds.len());
    }
    Ok(())
}

// ---- agent_rpc: ttrpc frames ----

/// One REQUEST frame: ttrpc header (length, stream id, type 1, flags 0) + `Request`.
fn frame(stream_id: u32, service: &str, method: &str, payload: &impl Message) -> anyhow::Result<Vec<u8>> {
    let mut req = Request::new();
    req.service = service.to_owned();
    req.method = method.to_owned();
    req.payload = payload.write_to_bytes()?;
    raw_frame(stream_id, 1, &req.write_to_bytes()?)
}

fn raw_frame(stream_id: u32, type_: u8, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    out.extend_from_slice(&u32::try_from(payload.len())?.to_be_bytes());
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(&[type_, 0]);
    out.extend_from_slice(payload);
    Ok(out)
}

const AGENT: &str = "grpc.AgentService";

fn agent(stream_id: u32, method: &str, payload: &impl Message) -> anyhow::Result<Vec<u8>> {
    frame(stream_id, AGENT, method, payload)
}

fn storage(driver: &str, source: &str, fstype: &str, mount_point: &str) -> Storage {
    let mut s = Storage::new();
    s.driver = driver.to_owned();
    s.source = source.to_owned();
    s.fstype = fstype.to_owned();
    s.mount_point = mount_point.to_owned();
    s.options = vec!["nodev".to_owned()];
    s
}

fn agent_rpc() -> anyhow::Result<Seeds> {
    let spec = to_pb::spec(&serde_json::from_str(RICH_CONFIG_JSON)?);
    let mut seeds: Seeds = Vec::new();
    seeds.push(("health_check", frame(1, "grpc.Health", "Check", &CheckRequest::new())?));
    seeds.push(("health_version", frame(1, "grpc.Health", "Version", &CheckRequest::new())?));
    let mut details = GuestDetailsRequest::new();
    details.mem_block_size = true;
    details.mem_hotplug_probe = true;
    seeds.push(("guest_details", agent(1, "GetGuestDetails", &details)?));
    seeds.push((
        "metrics_and_lists",
        [
            agent(1, "GetMetrics", &GetMetricsRequest::new())?,
            agent(3, "ListInterfaces", &ListInterfacesRequest::new())?,
            agent(5, "ListRoutes", &ListRoutesRequest::new())?,
        ]
        .concat(),
    ));

    let mut sandbox = CreateSandboxRequest::new();
    sandbox.hostname = "fuzz".to_owned();
    sandbox.dns = vec!["nameserver 10.0.2.3".to_owned()];
    sandbox.sandbox_id = "sb".to_owned();
    sandbox.storages = vec![storage("ephemeral", "tmpfs", "tmpfs", "/run/kata-containers/sandbox/shm")];
    let mut create = CreateContainerRequest::new();
    create.container_id = "c1".to_owned();
    create.exec_id = "c1".to_owned();
    create.OCI = Some(spec.clone()).into();
    create.storages = vec![
        storage("virtio-fs", "kataShared", "virtiofs", "/run/kata-containers/shared/containers"),
        storage("local", "local", "local", "/run/kata-containers/shared/containers/c1/local"),
        storage("blk", "02/00", "ext4", "/run/kata-containers/c1/rootfs"),
    ];
    let mut start = StartContainerRequest::new();
    start.container_id = "c1".to_owned();
    let mut exec = ExecProcessRequest::new();
    exec.container_id = "c1".to_owned();
    exec.exec_id = "e1".to_owned();
    exec.process = spec.Process.clone();
    let mut signal = SignalProcessRequest::new();
    signal.container_id = "c1".to_owned();
    signal.exec_id = "e1".to_owned();
    signal.signal = 15;
    let mut wait = WaitProcessRequest::new();
    wait.container_id = "c1".to_owned();
    wait.exec_id = "e1".to_owned();
    let mut write = WriteStreamRequest::new();
    write.container_id = "c1".to_owned();
    write.exec_id = "e1".to_owned();
    write.data = b"echo hi\n".to_vec();
    let mut read = ReadStreamRequest::new();
    read.container_id = "c1".to_owned();
    read.exec_id = "e1".to_owned();
    read.len = 1024;
    let mut close = CloseStdinRequest::new();
    close.container_id = "c1".to_owned();
    close.exec_id = "e1".to_owned();
    let mut winsize = TtyWinResizeRequest::new();
    winsize.container_id = "c1".to_owned();
    winsize.exec_id = "e1".to_owned();
    winsize.row = 24;
    winsize.column = 80;
    let mut stats = StatsContainerRequest::new();
    stats.container_id = "c1".to_owned();
    let mut pause = PauseContainerRequest::new();
    pause.container_id = "c1".to_owned();
    let mut resume = ResumeContainerRequest::new();
    resume.container_id = "c1".to_owned();
    let mut update = UpdateContainerRequest::new();
    update.container_id = "c1".to_owned();
    update.resources = spec.Linux.as_ref().and_then(|l| l.Resources.clone().into_option()).into();
    let mut remove = RemoveContainerRequest::new();
    remove.container_id = "c1".to_owned();
    remove.timeout = 1;
    seeds.push(("create_sandbox", agent(1, "CreateSandbox", &sandbox)?));
    seeds.push(("create_container", agent(1, "CreateContainer", &create)?));
    seeds.push((
        "container_lifecycle",
        [
            agent(1, "CreateSandbox", &sandbox)?,
            agent(3, "CreateContainer", &create)?,
            agent(5, "StartContainer", &start)?,
            agent(7, "ExecProcess", &exec)?,
            agent(9, "WriteStdin", &write)?,
            agent(11, "CloseStdin", &close)?,
            agent(13, "ReadStdout", &read)?,
            agent(15, "TtyWinResize", &winsize)?,
            agent(17, "SignalProcess", &signal)?,
            agent(19, "WaitProcess", &wait)?,
            agent(21, "StatsContainer", &stats)?,
            agent(23, "PauseContainer", &pause)?,
            agent(25, "ResumeContainer", &resume)?,
            agent(27, "UpdateContainer", &update)?,
            agent(29, "RemoveContainer", &remove)?,
            agent(31, "DestroySandbox", &DestroySandboxRequest::new())?,
        ]
        .concat(),
    ));
    seeds.push(("exec_unknown_container", agent(1, "ExecProcess", &exec)?));

    let mut iface = Interface::new();
    iface.device = "eth0".to_owned();
    iface.name = "eth0".to_owned();
    iface.mtu = 1500;
    iface.hwAddr = "02:42:ac:11:00:02".to_owned();
    let mut addr = IPAddress::new();
    addr.address = "172.17.0.2".to_owned();
    addr.mask = "16".to_owned();
    iface.IPAddresses = vec![addr];
    let mut update_iface = UpdateInterfaceRequest::new();
    update_iface.interface = Some(iface).into();
    let mut route = Route::new();
    route.dest = "0.0.0.0/0".to_owned();
    route.gateway = "172.17.0.1".to_owned();
    route.device = "eth0".to_owned();
    let mut routes = Routes::new();
    routes.Routes = vec![route];
    let mut update_routes = UpdateRoutesRequest::new();
    update_routes.routes = Some(routes).into();
    let mut neighbor = ARPNeighbor::new();
    let mut to = IPAddress::new();
    to.address = "172.17.0.1".to_owned();
    neighbor.toIPAddress = Some(to).into();
    neighbor.device = "eth0".to_owned();
    neighbor.lladdr = "02:42:ac:11:00:01".to_owned();
    let mut neighbors = ARPNeighbors::new();
    neighbors.ARPNeighbors = vec![neighbor];
    let mut arp = AddARPNeighborsRequest::new();
    arp.neighbors = Some(neighbors).into();
    seeds.push((
        "network",
        [
            agent(1, "UpdateInterface", &update_iface)?,
            agent(3, "UpdateRoutes", &update_routes)?,
            agent(5, "AddARPNeighbors", &arp)?,
        ]
        .concat(),
    ));

    // Only invalid times: a valid one would move the clock of a fuzzer run as root.
    let mut time = SetGuestDateTimeRequest::new();
    time.Sec = 1;
    time.Usec = 2_000_000;
    let mut copy = CopyFileRequest::new();
    copy.path = "/run/kata-containers/shared/containers/c1/resolv.conf".to_owned();
    copy.file_size = 5;
    copy.file_mode = 0o644;
    copy.dir_mode = 0o755;
    copy.data = b"hello".to_vec();
    let mut online = OnlineCPUMemRequest::new();
    online.nb_cpus = 1;
    online.cpu_only = true;
    let mut reseed = ReseedRandomDevRequest::new();
    reseed.data = vec![0; 16];
    seeds.push((
        "guest_misc",
        [
            agent(1, "SetGuestDateTime", &time)?,
            agent(3, "CopyFile", &copy)?,
            agent(5, "OnlineCPUMem", &online)?,
            agent(7, "ReseedRandomDev", &reseed)?,
            agent(9, "GetOOMEvent", &GetOOMEventRequest::new())?,
            agent(11, "SetPolicy", &SetPolicyRequest::new())?,
        ]
        .concat(),
    ));

    let mut plug = HotPlugRequest::new();
    plug.container_id = "c1".to_owned();
    plug.pci_path = "02/00".to_owned();
    plug.device_path = "/dev/xvdb".to_owned();
    plug.mount_point = "/data".to_owned();
    plug.fstype = "ext4".to_owned();
    let mut unplug = HotUnplugRequest::new();
    unplug.container_id = "c1".to_owned();
    unplug.device_path = "/dev/xvdb".to_owned();
    unplug.mount_point = "/data".to_owned();
    seeds.push((
        "block_volume",
        [frame(1, "wisp.v1.BlockVolume", "HotPlug", &plug)?, frame(3, "wisp.v1.BlockVolume", "HotUnplug", &unplug)?]
            .concat(),
    ));

    // What the protocol tests send as hostile bytes: an even stream id, a DATA frame, an
    // undecodable Request, an oversized length.
    seeds.push((
        "hostile_frames",
        [
            agent(2, "GetGuestDetails", &details)?,
            raw_frame(1, 3, b"data")?,
            raw_frame(3, 1, &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01])?,
            agent(5, "NoSuchMethod", &details)?,
        ]
        .concat(),
    ));
    let mut oversized = Vec::new();
    oversized.extend_from_slice(&(64u32 << 20).to_be_bytes());
    oversized.extend_from_slice(&1u32.to_be_bytes());
    oversized.extend_from_slice(&[1, 0]);
    oversized.extend_from_slice(&[0u8; 64]);
    seeds.push(("hostile_oversized", oversized));
    Ok(seeds)
}

// ---- OCI specs ----

/// A config.json with most of what the conversion carries.
const RICH_CONFIG_JSON: &str = r#"{
  "ociVersion": "1.1.0",
  "process": {
    "terminal": true,
    "consoleSize": {"height": 24, "width": 80},
    "user": {"uid": 1000, "gid": 1000, "umask": 18, "additionalGids": [10, 20], "username": "u"},
    "args": ["/bin/sh", "-c", "echo hi"],
    "env": ["PATH=/usr/bin:/bin", "TERM=xterm"],
    "cwd": "/work",
    "capabilities": {
      "bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_CHOWN"],
      "inheritable": [], "permitted": ["CAP_CHOWN", "CAP_KILL"], "ambient": []
    },
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
    "noNewPrivileges": true,
    "apparmorProfile": "unconfined",
    "oomScoreAdj": 100,
    "selinuxLabel": "system_u:system_r:container_t:s0"
  },
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "fuzz",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]}
  ],
  "hooks": {
    "prestart": [{"path": "/usr/bin/hook", "args": ["hook", "prestart"], "env": ["A=1"], "timeout": 5}],
    "poststop": [{"path": "/usr/bin/hook"}]
  },
  "annotations": {"io.kubernetes.cri.container-type": "container", "io.katacontainers.pkg.oci.bundle_path": "/b"},
  "linux": {
    "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
    "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
    "sysctl": {"net.ipv4.ip_forward": "1"},
    "resources": {
      "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}],
      "memory": {"limit": 536870912, "reservation": 268435456, "swap": 1073741824, "swappiness": 60, "disableOOMKiller": false},
      "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "realtimeRuntime": 0, "realtimePeriod": 0, "cpus": "0-1", "mems": "0"},
      "pids": {"limit": 100},
      "blockIO": {"weight": 500, "leafWeight": 300,
        "weightDevice": [{"major": 8, "minor": 0, "weight": 600}],
        "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]},
      "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
      "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 5}]}
    },
    "cgroupsPath": "/kubepods/pod1/c1",
    "namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "user"}],
    "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438, "uid": 0, "gid": 0}],
    "seccomp": {
      "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "architectures": ["SCMP_ARCH_X86_64"],
      "flags": ["SECCOMP_FILTER_FLAG_LOG"],
      "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                   {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}]
    },
    "rootfsPropagation": "rslave",
    "maskedPaths": ["/proc/kcore", "/proc/keys"],
    "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
    "mountLabel": "system_u:object_r:container_file_t:s0"
  }
}"#;

/// The smallest config.json a bundle may have.
const MINIMAL_CONFIG_JSON: &str = r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/"}}"#;

fn oci_specs() -> Vec<(&'static str, String)> {
    let default = serde_json::to_string_pretty(&oci_spec::runtime::Spec::default()).unwrap_or_default();
    vec![("rich", RICH_CONFIG_JSON.to_owned()), ("minimal", MINIMAL_CONFIG_JSON.to_owned()), ("runc_default", default)]
}

fn oci_from_pb() -> anyhow::Result<Seeds> {
    let mut seeds = Seeds::new();
    for (name, json) in oci_specs() {
        let spec: oci_spec::runtime::Spec = serde_json::from_str(&json)?;
        seeds.push((name, to_pb::spec(&spec).write_to_bytes()?));
    }
    Ok(seeds)
}

fn oci_to_pb() -> Seeds {
    oci_specs().into_iter().map(|(name, json)| (name, json.into_bytes())).collect()
}

// ---- the shim's configuration and mountInfo.json ----

fn shim_config() -> Seeds {
    let documented = r#"[hypervisor.qemu]
path = "qemu-system-x86_64"
kernel = "/usr/local/share/wisp/bzImage"
initrd = "/usr/local/share/wisp/wisp.initrd"
machine_type = "q35"
default_vcpus = 2
default_memory = 512
block_device_driver = "virtio-blk"
shared_fs = "virtio-fs"
virtio_fs_daemon = "virtiofsd"
kernel_params = "agent.log=debug quiet"
enable_vhost_user_store = true
disable_block_device_use = false
vhost_user_store_path = "/var/run/kata-containers/vhost-user"
pcie_root_port = 2
accel = "tcg"
tb_size = 64
vhost_device_vsock = "vhost-device-vsock"

[agent.wisp]
dial_timeout = 60
debug_console_enabled = true
channel = "hybrid-vsock"

[runtime]
direct_volumes_dir = "/run/kata-containers/shared/direct-volumes"
"#;
    let microvm = "[hypervisor.qemu]\nmachine_type = \"microvm\"\nblock_device_driver = \"virtio-mmio\"\nshared_fs = \"virtio-9p\"\naccel = \"auto\"\n\n[agent.wisp]\nchannel = \"serial\"\n";
    let stratovirt = r#"[hypervisor.stratovirt]
path = "/usr/bin/stratovirt"
kernel = "/var/lib/kata/kernel"
initrd = "/var/lib/kata/kata-containers-initrd.img"
machine_type = "microvm"
block_device_driver = "virtio-mmio"
use_vsock = true
enable_netmon = false
internetworking_model = "tcfilter"
sandbox_cgroup_with_emulator = false
disable_new_netns = false
disable_vhost_net = true
kernel_params = "quiet"
"#;
    let stratovirt_q35 = "[hypervisor.stratovirt]\nmachine_type = \"q35\"\nblock_device_driver = \"virtio-blk\"\nshared_fs = \"virtio-fs\"\nfirmware = \"/usr/share/edk2/ovmf/OVMF_CODE.fd\"\npcie_root_port = 4\ndefault_vcpus = 4\ndefault_memory = 1024\n";
    let invalid = "[hypervisor.qemu]\ndefault_vcpus = 0\n";
    vec![
        ("documented", documented.as_bytes().to_vec()),
        ("microvm", microvm.as_bytes().to_vec()),
        ("stratovirt_microvm", stratovirt.as_bytes().to_vec()),
        ("stratovirt_q35", stratovirt_q35.as_bytes().to_vec()),
        ("invalid_vcpus", invalid.as_bytes().to_vec()),
        ("empty", Vec::new()),
    ]
}

fn direct_volume() -> Seeds {
    let with = |volume: &str, json: &str| format!("{volume}\n{json}").into_bytes();
    vec![
        (
            "directvol",
            with(
                "/vol/disk1",
                r#"{"volume-type":"directvol","device":"/dev/sdb","fstype":"ext4","metadata":{"a":"b"},"options":["ro"]}"#,
            ),
        ),
        (
            "kata_docs_spelling",
            with("/vol/x", r#"{"volume_type":"directvol","device":"/tmp/disk.img","fs_type":"xfs"}"#),
        ),
        (
            "spdkvol",
            with("/vol/spdk", r#"{"volume-type":"spdkvol","device":"spdk:///var/run/spdk/vhost.0","fstype":"ext4"}"#),
        ),
        ("vfiovol", with("/vol/vfio", r#"{"volume-type":"vfiovol","device":"45:00.1","options":[]}"#)),
        ("vfio_group", with("/vol/vfio", r#"{"volume-type":"vfiovol","device":"/dev/vfio/12"}"#)),
        ("encoded_name", with("L3ZvbC9kaXNrMQ==", r#"{"volume-type":"nfsvol","device":"x"}"#)),
        ("relative_path", with("../etc", "{}")),
    ]
}

// ---- layers ----

/// A ustar/GNU header with `name` (and `link`) written as is, without the tar crate's
/// refusal of `..`: hostile names are the point.
fn entry(name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8], mode: u32) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(0);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn tar_of(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = entries.concat();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn layer_apply() -> anyhow::Result<Seeds> {
    use tar::EntryType::{Block, Char, Directory, Fifo, Link, Regular, Symlink};
    let basic = tar_of(&[
        entry(b"bin/", Directory, b"", b"", 0o755),
        entry(b"bin/busybox", Regular, b"", b"\x7fELF fake busybox", 0o755),
        entry(b"bin/sh", Symlink, b"/bin/busybox", b"", 0o777),
        entry(b"bin/ls", Link, b"bin/busybox", b"", 0o755),
        entry(b"etc/passwd", Regular, b"", b"root:x:0:0::/root:/bin/sh\n", 0o644),
        entry(b"tmp/", Directory, b"", b"", 0o1777),
        entry(b"readonly/", Directory, b"", b"", 0o555),
        entry(b"readonly/file", Regular, b"", b"x", 0o444),
    ]);
    let escapes = tar_of(&[
        entry(b"../../escape", Regular, b"", b"1", 0o644),
        entry(b"/abs/file", Regular, b"", b"2", 0o644),
        entry(b"up", Symlink, b"../../..", b"", 0o777),
        entry(b"up/through-link", Regular, b"", b"3", 0o644),
        entry(b"outside", Symlink, b"/a/b/outside", b"", 0o777),
        entry(b"outside/x", Regular, b"", b"4", 0o644),
        entry(b"hard", Link, b"../../../etc/passwd", b"", 0o644),
        entry(b"loop1", Symlink, b"loop2", b"", 0o777),
        entry(b"loop2", Symlink, b"loop1", b"", 0o777),
        entry(b"loop1/f", Regular, b"", b"5", 0o644),
    ]);
    let lower = tar_of(&[
        entry(b"dir/", Directory, b"", b"", 0o755),
        entry(b"dir/a", Regular, b"", b"a", 0o644),
        entry(b"dir/sub/b", Regular, b"", b"b", 0o644),
        entry(b"keep", Regular, b"", b"k", 0o644),
    ]);
    let upper = tar_of(&[
        entry(b"dir/.wh.a", Regular, b"", b"", 0o644),
        entry(b"dir/sub/.wh..wh..opq", Regular, b"", b"", 0o644),
        entry(b"dir/sub/new", Regular, b"", b"n", 0o644),
        entry(b"gone/.wh.nothing", Regular, b"", b"", 0o644),
        entry(b".wh.keep", Regular, b"", b"", 0o644),
    ]);
    let specials = tar_of(&[
        entry(b"dev/null", Char, b"", b"", 0o666),
        entry(b"dev/sda", Block, b"", b"", 0o660),
        entry(b"run/fifo", Fifo, b"", b"", 0o600),
        entry(b"setuid", Regular, b"", b"s", 0o4755),
        entry(b"a\0nul", Regular, b"", b"", 0o644),
    ]);
    // A PAX header with an extended attribute (file capabilities, VFS v2: magic with the
    // effective bit, then permitted/inheritable low and high words), as images carry.
    const CAP_NET_RAW_V2: [u8; 20] = [1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut pax = tar::Builder::new(Vec::new());
    pax.mode(tar::HeaderMode::Deterministic);
    pax.append_pax_extensions([("SCHILY.xattr.security.capability", CAP_NET_RAW_V2.as_slice())])?;
    let mut h = tar::Header::new_ustar();
    h.set_size(4);
    h.set_mode(0o755);
    h.set_entry_type(Regular);
    pax.append_data(&mut h, "usr/bin/ping", b"ping".as_slice())?;
    let long = "deep/".repeat(30) + "file";
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_entry_type(Regular);
    pax.append_data(&mut h, &long, b"l".as_slice())?;
    let pax = pax.into_inner()?;
    Ok(vec![
        ("basic", basic),
        ("escapes", escapes),
        ("whiteouts", [lower.as_slice(), LAYER_SEPARATOR, upper.as_slice()].concat()),
        ("specials", specials),
        ("pax_xattrs_longname", pax),
    ])
}

// ---- kernel modules ----

/// A minimal ELF64 relocatable (`ET_REL`, x86-64) whose only sections are `.modinfo` (with
/// `modinfo`) and `.shstrtab`: what rootfs-builder reads of a `.ko`.
fn ko(modinfo: &str) -> Vec<u8> {
    let shstrtab = b"\0.modinfo\0.shstrtab\0";
    let info = modinfo.as_bytes();
    let info_off = 64u64;
    let strtab_off = info_off + info.len() as u64;
    let shoff = (strtab_off + shstrtab.len() as u64).div_ceil(8) * 8;
    let mut out = Vec::new();
    out.extend_from_slice(b"\x7fELF\x02\x01\x01\0");
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&1u16.to_le_bytes()); // e_type: ET_REL
    out.extend_from_slice(&62u16.to_le_bytes()); // e_machine: x86-64
    out.extend_from_slice(&1u32.to_le_bytes()); // e_version
    out.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    out.extend_from_slice(&0u64.to_le_bytes()); // e_phoff
    out.extend_from_slice(&shoff.to_le_bytes()); // e_shoff
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    out.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    out.extend_from_slice(&0u16.to_le_bytes()); // e_phentsize
    out.extend_from_slice(&0u16.to_le_bytes()); // e_phnum
    out.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    out.extend_from_slice(&3u16.to_le_bytes()); // e_shnum
    out.extend_from_slice(&2u16.to_le_bytes()); // e_shstrndx
    out.extend_from_slice(info);
    out.extend_from_slice(shstrtab);
    out.resize(usize::try_from(shoff).unwrap_or_default(), 0);
    let section = |out: &mut Vec<u8>, name: u32, kind: u32, off: u64, size: u64| {
        out.extend_from_slice(&name.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // flags
        out.extend_from_slice(&0u64.to_le_bytes()); // addr
        out.extend_from_slice(&off.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&[0; 8]); // link, info
        out.extend_from_slice(&1u64.to_le_bytes()); // addralign
        out.extend_from_slice(&0u64.to_le_bytes()); // entsize
    };
    section(&mut out, 0, 0, 0, 0);
    section(&mut out, 1, 1, info_off, info.len() as u64);
    section(&mut out, 10, 3, strtab_off, shstrtab.len() as u64);
    out
}

fn deb(data_tar_name: &str, data_tar: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut ar = ar::Builder::new(Vec::new());
    ar.append(&ar::Header::new(b"debian-binary".to_vec(), 4), b"2.0\n".as_slice())?;
    ar.append(&ar::Header::new(data_tar_name.as_bytes().to_vec(), data_tar.len() as u64), data_tar)?;
    Ok(ar.into_inner()?)
}

fn kernel_modules() -> anyhow::Result<Seeds> {
    let dep = "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko\n\
               kernel/drivers/virtio/virtio_ring.ko:\n\
               kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_ring.ko\n\
               # a comment\n";
    let virtio_blk = ko("name=virtio_blk\0depends=virtio_ring\0license=GPL\0");
    let virtio_ring = ko("name=virtio_ring\0depends=\0");
    let base = b"lib/modules/6.1.0-fuzz-amd64/";
    let files: BTreeMap<String, Vec<u8>> = [
        ("modules.dep", b"kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/virtio/virtio_ring.ko:\n".to_vec()),
        ("modules.builtin", b"kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/virtio/virtio_mmio.ko\n".to_vec()),
        ("kernel/drivers/block/virtio_blk.ko", virtio_blk.clone()),
        ("kernel/drivers/virtio/virtio_ring.ko", virtio_ring.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut entries = Vec::new();
    for (path, data) in &files {
        let name = [base.as_slice(), path.as_bytes()].concat();
        entries.push(entry(&name, tar::EntryType::Regular, b"", data, 0o644));
    }
    let with_dep = tar_of(&entries);
    // A package without modules.dep: dependencies come from .modinfo.
    let without_dep: Vec<Vec<u8>> =
        entries.iter().zip(files.keys()).filter(|(_, path)| path.ends_with(".ko")).map(|(e, _)| e.clone()).collect();
    let without_dep = tar_of(&without_dep);
    let tag = |mode: u8, data: &[u8]| [&[mode][..], data].concat();
    Ok(vec![
        ("modules_dep", tag(MODULES_DEP, dep.as_bytes())),
        ("ko_virtio_blk", tag(ELF, &virtio_blk)),
        ("deb_plain_tar", tag(DEB, &deb("data.tar", &with_dep)?)),
        ("deb_gz_modinfo_only", tag(DEB, &deb("data.tar.gz", &compress(&without_dep, Compression::Gzip)?)?)),
        ("deb_zst", tag(DEB, &deb("data.tar.zst", &compress(&with_dep, Compression::Zstd)?)?)),
    ])
}
