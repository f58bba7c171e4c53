//! `oci_spec::runtime::Spec` (config.json) -> protobuf `oci.Spec` (the shim side).
//!
//! The shim reads a bundle's config.json with `oci-spec` and sends the agent Kata's protobuf
//! shape. Every field `oci.proto` carries is filled; fields config.json has and the protobuf
//! lacks (domainname, scheduler, io priority, personality, time offsets, rdma, unified, ...)
//! are dropped, as Kata's runtime drops them. Enumerations travel as the strings config.json
//! spells them (`CAP_CHOWN`, `RLIMIT_NOFILE`, `SCMP_ACT_ERRNO`, `pid`, `c`), which is what a
//! Go runtime puts on the wire, so the agent parses one vocabulary whoever sent the spec.
//! The conversion cannot fail: every config.json value has a protobuf home or is dropped.

use std::path::Path;

use oci_spec::runtime as oci;

use crate::oci as pb;

/// Converts a whole spec.
pub fn spec(spec: &oci::Spec) -> pb::Spec {
    pb::Spec {
        Version: spec.version().clone(),
        Process: spec.process().as_ref().map(process).into(),
        Root: spec.root().as_ref().map(root).into(),
        Hostname: spec.hostname().clone().unwrap_or_default(),
        Mounts: list(spec.mounts(), mount),
        Hooks: spec.hooks().as_ref().map(hooks).into(),
        Annotations: spec.annotations().clone().unwrap_or_default(),
        Linux: spec.linux().as_ref().map(linux).into(),
        ..Default::default()
    }
}

/// Converts a process (also the payload of ExecProcess).
pub fn process(process: &oci::Process) -> pb::Process {
    pb::Process {
        Terminal: process.terminal().unwrap_or(false),
        ConsoleSize: process
            .console_size()
            .as_ref()
            .map(|size| pb::Box {
                Height: clamp_u32(size.height()),
                Width: clamp_u32(size.width()),
                ..Default::default()
            })
            .into(),
        User: Some(user(process.user())).into(),
        Args: process.args().clone().unwrap_or_default(),
        Env: process.env().clone().unwrap_or_default(),
        Cwd: path(process.cwd()),
        Capabilities: process.capabilities().as_ref().map(capabilities).into(),
        Rlimits: list(process.rlimits(), |limit| pb::POSIXRlimit {
            Type: limit.typ().to_string(),
            Hard: limit.hard(),
            Soft: limit.soft(),
            ..Default::default()
        }),
        NoNewPrivileges: process.no_new_privileges().unwrap_or(false),
        ApparmorProfile: process.apparmor_profile().clone().unwrap_or_default(),
        OOMScoreAdj: process.oom_score_adj().map_or(0, i64::from),
        SelinuxLabel: process.selinux_label().clone().unwrap_or_default(),
        ..Default::default()
    }
}

fn user(user: &oci::User) -> pb::User {
    pb::User {
        UID: user.uid(),
        GID: user.gid(),
        AdditionalGids: user.additional_gids().clone().unwrap_or_default(),
        Username: user.username().clone().unwrap_or_default(),
        ..Default::default()
    }
}

fn capabilities(caps: &oci::LinuxCapabilities) -> pb::LinuxCapabilities {
    let names = |set: &Option<oci_spec::runtime::Capabilities>| -> Vec<String> {
        let mut names: Vec<String> = set.iter().flatten().map(|cap| format!("CAP_{cap}")).collect();
        // A HashSet has no order; a stable one keeps the wire deterministic.
        names.sort();
        names
    };
    pb::LinuxCapabilities {
        Bounding: names(caps.bounding()),
        Effective: names(caps.effective()),
        Inheritable: names(caps.inheritable()),
        Permitted: names(caps.permitted()),
        Ambient: names(caps.ambient()),
        ..Default::default()
    }
}

fn root(root: &oci::Root) -> pb::Root {
    pb::Root { Path: path(root.path()), Readonly: root.readonly().unwrap_or(false), ..Default::default() }
}

fn mount(mount: &oci::Mount) -> pb::Mount {
    pb::Mount {
        destination: path(mount.destination()),
        source: mount.source().as_deref().map(path).unwrap_or_default(),
        type_: mount.typ().clone().unwrap_or_default(),
        options: mount.options().clone().unwrap_or_default(),
        ..Default::default()
    }
}

fn hooks(hooks: &oci::Hooks) -> pb::Hooks {
    let convert = |list: &Option<Vec<oci::Hook>>| {
        self::list(list, |hook: &oci::Hook| pb::Hook {
            Path: path(hook.path()),
            Args: hook.args().clone().unwrap_or_default(),
            Env: hook.env().clone().unwrap_or_default(),
            Timeout: hook.timeout().unwrap_or(0),
            ..Default::default()
        })
    };
    pb::Hooks {
        Prestart: convert(hooks.prestart()),
        Poststart: convert(hooks.poststart()),
        Poststop: convert(hooks.poststop()),
        CreateRuntime: convert(hooks.create_runtime()),
        CreateContainer: convert(hooks.create_container()),
        StartContainer: convert(hooks.start_container()),
        ..Default::default()
    }
}

fn linux(linux: &oci::Linux) -> pb::Linux {
    let id_mapping = |m: &oci::LinuxIdMapping| pb::LinuxIDMapping {
        HostID: m.host_id(),
        ContainerID: m.container_id(),
        Size: m.size(),
        ..Default::default()
    };
    pb::Linux {
        UIDMappings: list(linux.uid_mappings(), id_mapping),
        GIDMappings: list(linux.gid_mappings(), id_mapping),
        Sysctl: linux.sysctl().clone().unwrap_or_default(),
        Resources: linux.resources().as_ref().map(resources).into(),
        CgroupsPath: linux.cgroups_path().as_deref().map(path).unwrap_or_default(),
        Namespaces: list(linux.namespaces(), |ns| pb::LinuxNamespace {
            Type: namespace_type(ns.typ()).to_owned(),
            Path: ns.path().as_deref().map(path).unwrap_or_default(),
            ..Default::default()
        }),
        Devices: list(linux.devices(), |dev| pb::LinuxDevice {
            Path: path(dev.path()),
            Type: dev.typ().as_str().to_owned(),
            Major: dev.major(),
            Minor: dev.minor(),
            FileMode: dev.file_mode().unwrap_or(0),
            UID: dev.uid().unwrap_or(0),
            GID: dev.gid().unwrap_or(0),
            ..Default::default()
        }),
        Seccomp: linux.seccomp().as_ref().map(seccomp).into(),
        RootfsPropagation: linux.rootfs_propagation().clone().unwrap_or_default(),
        MaskedPaths: linux.masked_paths().clone().unwrap_or_default(),
        ReadonlyPaths: linux.readonly_paths().clone().unwrap_or_default(),
        MountLabel: linux.mount_label().clone().unwrap_or_default(),
        IntelRdt: linux
            .intel_rdt()
            .as_ref()
            .map(|rdt| pb::LinuxIntelRdt {
                L3CacheSchema: rdt.l3_cache_schema().clone().unwrap_or_default(),
                ..Default::default()
            })
            .into(),
        ..Default::default()
    }
}

/// Converts cgroup resources (also the payload of UpdateContainer).
pub fn resources(res: &oci::LinuxResources) -> pb::LinuxResources {
    pb::LinuxResources {
        Devices: list(res.devices(), |dev| pb::LinuxDeviceCgroup {
            Allow: dev.allow(),
            Type: dev.typ().map(|t| t.as_str().to_owned()).unwrap_or_default(),
            Major: dev.major().unwrap_or(-1),
            Minor: dev.minor().unwrap_or(-1),
            Access: dev.access().clone().unwrap_or_default(),
            ..Default::default()
        }),
        Memory: res
            .memory()
            .as_ref()
            .map(|mem| pb::LinuxMemory {
                Limit: mem.limit().unwrap_or(0),
                Reservation: mem.reservation().unwrap_or(0),
                Swap: mem.swap().unwrap_or(0),
                Kernel: mem.kernel().unwrap_or(0),
                KernelTCP: mem.kernel_tcp().unwrap_or(0),
                Swappiness: mem.swappiness().unwrap_or(0),
                DisableOOMKiller: mem.disable_oom_killer().unwrap_or(false),
                ..Default::default()
            })
            .into(),
        CPU: res
            .cpu()
            .as_ref()
            .map(|cpu| pb::LinuxCPU {
                Shares: cpu.shares().unwrap_or(0),
                Quota: cpu.quota().unwrap_or(0),
                Period: cpu.period().unwrap_or(0),
                RealtimeRuntime: cpu.realtime_runtime().unwrap_or(0),
                RealtimePeriod: cpu.realtime_period().unwrap_or(0),
                Cpus: cpu.cpus().clone().unwrap_or_default(),
                Mems: cpu.mems().clone().unwrap_or_default(),
                ..Default::default()
            })
            .into(),
        Pids: res.pids().as_ref().map(|pids| pb::LinuxPids { Limit: pids.limit(), ..Default::default() }).into(),
        BlockIO: res.block_io().as_ref().map(block_io).into(),
        HugepageLimits: list(res.hugepage_limits(), |limit| pb::LinuxHugepageLimit {
            Pagesize: limit.page_size().clone(),
            Limit: u64::try_from(limit.limit()).unwrap_or(0),
            ..Default::default()
        }),
        Network: res
            .network()
            .as_ref()
            .map(|net| pb::LinuxNetwork {
                ClassID: net.class_id().unwrap_or(0),
                Priorities: list(net.priorities(), |p| pb::LinuxInterfacePriority {
                    Name: p.name().clone(),
                    Priority: p.priority(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .into(),
        ..Default::default()
    }
}

fn block_io(io: &oci::LinuxBlockIo) -> pb::LinuxBlockIO {
    let throttle = |list: &Option<Vec<oci::LinuxThrottleDevice>>| {
        self::list(list, |dev: &oci::LinuxThrottleDevice| pb::LinuxThrottleDevice {
            Major: dev.major(),
            Minor: dev.minor(),
            Rate: dev.rate(),
            ..Default::default()
        })
    };
    pb::LinuxBlockIO {
        Weight: io.weight().map_or(0, u32::from),
        LeafWeight: io.leaf_weight().map_or(0, u32::from),
        WeightDevice: list(io.weight_device(), |dev| pb::LinuxWeightDevice {
            Major: dev.major(),
            Minor: dev.minor(),
            Weight: dev.weight().map_or(0, u32::from),
            LeafWeight: dev.leaf_weight().map_or(0, u32::from),
            ..Default::default()
        }),
        ThrottleReadBpsDevice: throttle(io.throttle_read_bps_device()),
        ThrottleWriteBpsDevice: throttle(io.throttle_write_bps_device()),
        ThrottleReadIOPSDevice: throttle(io.throttle_read_iops_device()),
        ThrottleWriteIOPSDevice: throttle(io.throttle_write_iops_device()),
        ..Default::default()
    }
}

fn seccomp(seccomp: &oci::LinuxSeccomp) -> pb::LinuxSeccomp {
    pb::LinuxSeccomp {
        DefaultAction: seccomp.default_action().to_string(),
        Architectures: list(seccomp.architectures(), ToString::to_string),
        Flags: list(seccomp.flags(), ToString::to_string),
        Syscalls: list(seccomp.syscalls(), |call| pb::LinuxSyscall {
            Names: call.names().clone(),
            Action: call.action().to_string(),
            ErrnoRet: call.errno_ret().map(pb::linux_syscall::ErrnoRet::Errnoret),
            Args: call
                .args()
                .iter()
                .flatten()
                .map(|arg| pb::LinuxSeccompArg {
                    Index: u64::try_from(arg.index()).unwrap_or(u64::MAX),
                    Value: arg.value(),
                    ValueTwo: arg.value_two().unwrap_or(0),
                    Op: arg.op().to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// config.json's spelling (`network`, `mount`), which Kata sends; the type's `Display` says
/// `net`/`mnt` (the /proc names).
fn namespace_type(typ: oci::LinuxNamespaceType) -> &'static str {
    match typ {
        oci::LinuxNamespaceType::Mount => "mount",
        oci::LinuxNamespaceType::Cgroup => "cgroup",
        oci::LinuxNamespaceType::Uts => "uts",
        oci::LinuxNamespaceType::Ipc => "ipc",
        oci::LinuxNamespaceType::User => "user",
        oci::LinuxNamespaceType::Pid => "pid",
        oci::LinuxNamespaceType::Network => "network",
        oci::LinuxNamespaceType::Time => "time",
    }
}

fn list<T, U>(items: &Option<Vec<T>>, convert: impl FnMut(&T) -> U) -> Vec<U> {
    items.iter().flatten().map(convert).collect()
}

fn path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn clamp_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config.json touching every section the protobuf carries.
    const FULL: &str = r#"{
      "ociVersion": "1.0.2",
      "process": {
        "terminal": true,
        "consoleSize": {"height": 24, "width": 80},
        "user": {"uid": 1, "gid": 2, "additionalGids": [3, 4], "username": "u"},
        "args": ["sh", "-c", "echo hi"],
        "env": ["PATH=/bin"],
        "cwd": "/work",
        "capabilities": {"bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_NET_BIND_SERVICE"],
                         "permitted": ["CAP_SYS_ADMIN"], "ambient": ["CAP_AUDIT_WRITE"]},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
        "noNewPrivileges": true,
        "apparmorProfile": "ap",
        "oomScoreAdj": -500,
        "selinuxLabel": "sl"
      },
      "root": {"path": "/run/rootfs", "readonly": true},
      "hostname": "box",
      "mounts": [{"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid"]},
                 {"destination": "/tmp"}],
      "hooks": {"prestart": [{"path": "/bin/pre", "args": ["pre", "x"], "env": ["A=1"], "timeout": 5}],
                "poststop": [{"path": "/bin/post"}], "createRuntime": [{"path": "/bin/cr"}],
                "createContainer": [{"path": "/bin/cc"}], "startContainer": [{"path": "/bin/sc"}],
                "poststart": [{"path": "/bin/ps"}]},
      "annotations": {"io.kubernetes.cri.container-type": "sandbox"},
      "linux": {
        "uidMappings": [{"hostID": 1000, "containerID": 0, "size": 10}],
        "gidMappings": [{"hostID": 2000, "containerID": 0, "size": 20}],
        "sysctl": {"net.ipv4.ip_forward": "1"},
        "resources": {
          "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"}],
          "memory": {"limit": 536870912, "reservation": 1, "swap": 2, "kernel": 3, "kernelTCP": 4, "swappiness": 60,
                     "disableOOMKiller": true},
          "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "realtimeRuntime": 7, "realtimePeriod": 8,
                  "cpus": "0-1", "mems": "0"},
          "pids": {"limit": 64},
          "blockIO": {"weight": 500, "leafWeight": 300,
                      "weightDevice": [{"major": 8, "minor": 0, "weight": 100, "leafWeight": 50}],
                      "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1000}],
                      "throttleWriteBpsDevice": [{"major": 8, "minor": 1, "rate": 2000}],
                      "throttleReadIOPSDevice": [{"major": 8, "minor": 2, "rate": 30}],
                      "throttleWriteIOPSDevice": [{"major": 8, "minor": 3, "rate": 40}]},
          "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
          "network": {"classID": 7, "priorities": [{"name": "eth0", "priority": 3}]}
        },
        "cgroupsPath": "/wisp/c1",
        "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network", "path": "/proc/1/ns/net"}],
        "devices": [{"path": "/dev/vda", "type": "b", "major": 241, "minor": 0, "fileMode": 438, "uid": 0, "gid": 6}],
        "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                    "flags": ["SECCOMP_FILTER_FLAG_LOG"],
                    "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                                 {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                                  "args": [{"index": 1, "value": 9, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]}]},
        "rootfsPropagation": "rslave",
        "maskedPaths": ["/proc/kcore"],
        "readonlyPaths": ["/proc/sys"],
        "mountLabel": "ml",
        "intelRdt": {"l3CacheSchema": "L3:0=ff"}
      }
    }"#;

    /// Parses config.json text the way the shim does (through a file).
    fn parse(json: &str) -> oci::Spec {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).expect("write config.json");
        oci::Spec::load(&path).expect("test spec parses")
    }

    fn full() -> pb::Spec {
        super::spec(&parse(FULL))
    }

    #[test]
    fn top_level_and_process() {
        let s = full();
        assert_eq!(s.Version, "1.0.2");
        assert_eq!(s.Hostname, "box");
        assert_eq!(s.Annotations["io.kubernetes.cri.container-type"], "sandbox");
        assert_eq!((s.Root.Path.as_str(), s.Root.Readonly), ("/run/rootfs", true));
        let p = &s.Process;
        assert!(p.Terminal);
        assert_eq!((p.ConsoleSize.Height, p.ConsoleSize.Width), (24, 80));
        assert_eq!(
            (p.User.UID, p.User.GID, p.User.AdditionalGids.clone(), p.User.Username.as_str()),
            (1, 2, vec![3, 4], "u")
        );
        assert_eq!(p.Args, ["sh", "-c", "echo hi"]);
        assert_eq!(p.Env, ["PATH=/bin"]);
        assert_eq!(p.Cwd, "/work");
        assert_eq!(p.Capabilities.Bounding, ["CAP_CHOWN", "CAP_KILL"]);
        assert_eq!(p.Capabilities.Effective, ["CAP_NET_BIND_SERVICE"]);
        assert_eq!(p.Capabilities.Permitted, ["CAP_SYS_ADMIN"]);
        assert_eq!(p.Capabilities.Ambient, ["CAP_AUDIT_WRITE"]);
        assert!(p.Capabilities.Inheritable.is_empty());
        assert_eq!((p.Rlimits[0].Type.as_str(), p.Rlimits[0].Hard, p.Rlimits[0].Soft), ("RLIMIT_NOFILE", 1024, 512));
        assert!(p.NoNewPrivileges);
        assert_eq!((p.ApparmorProfile.as_str(), p.OOMScoreAdj, p.SelinuxLabel.as_str()), ("ap", -500, "sl"));
    }

    #[test]
    fn mounts_and_hooks() {
        let s = full();
        assert_eq!(s.Mounts.len(), 2);
        let m = &s.Mounts[0];
        assert_eq!((m.destination.as_str(), m.source.as_str(), m.type_.as_str()), ("/proc", "proc", "proc"));
        assert_eq!(m.options, ["nosuid"]);
        assert_eq!((s.Mounts[1].destination.as_str(), s.Mounts[1].type_.as_str()), ("/tmp", ""));
        let h = &s.Hooks;
        assert_eq!(h.Prestart[0].Path, "/bin/pre");
        assert_eq!(h.Prestart[0].Args, ["pre", "x"]);
        assert_eq!(h.Prestart[0].Env, ["A=1"]);
        assert_eq!(h.Prestart[0].Timeout, 5);
        for (hooks, want) in [
            (&h.Poststart, "/bin/ps"),
            (&h.Poststop, "/bin/post"),
            (&h.CreateRuntime, "/bin/cr"),
            (&h.CreateContainer, "/bin/cc"),
            (&h.StartContainer, "/bin/sc"),
        ] {
            assert_eq!(hooks[0].Path, want);
        }
    }

    #[test]
    fn linux_section() {
        let s = full();
        let l = &s.Linux;
        assert_eq!((l.UIDMappings[0].HostID, l.UIDMappings[0].ContainerID, l.UIDMappings[0].Size), (1000, 0, 10));
        assert_eq!(l.GIDMappings[0].Size, 20);
        assert_eq!(l.Sysctl["net.ipv4.ip_forward"], "1");
        assert_eq!(l.CgroupsPath, "/wisp/c1");
        let ns: Vec<_> = l.Namespaces.iter().map(|n| (n.Type.as_str(), n.Path.as_str())).collect();
        assert_eq!(ns, [("pid", ""), ("mount", ""), ("network", "/proc/1/ns/net")]);
        let d = &l.Devices[0];
        assert_eq!(
            (d.Path.as_str(), d.Type.as_str(), d.Major, d.Minor, d.FileMode, d.UID, d.GID),
            ("/dev/vda", "b", 241, 0, 438, 0, 6)
        );
        assert_eq!(l.RootfsPropagation, "rslave");
        assert_eq!(l.MaskedPaths, ["/proc/kcore"]);
        assert_eq!(l.ReadonlyPaths, ["/proc/sys"]);
        assert_eq!(l.MountLabel, "ml");
        assert_eq!(l.IntelRdt.L3CacheSchema, "L3:0=ff");
        let sc = &l.Seccomp;
        assert_eq!(sc.DefaultAction, "SCMP_ACT_ERRNO");
        assert_eq!(sc.Architectures, ["SCMP_ARCH_X86_64"]);
        assert_eq!(sc.Flags, ["SECCOMP_FILTER_FLAG_LOG"]);
        assert_eq!(sc.Syscalls[0].Names, ["read", "write"]);
        assert_eq!(sc.Syscalls[0].Action, "SCMP_ACT_ALLOW");
        assert!(!sc.Syscalls[0].has_errnoret());
        assert_eq!(sc.Syscalls[1].errnoret(), 1);
        let a = &sc.Syscalls[1].Args[0];
        assert_eq!((a.Index, a.Value, a.ValueTwo, a.Op.as_str()), (1, 9, 0, "SCMP_CMP_EQ"));
    }

    #[test]
    fn resources_section() {
        let s = full();
        let r = &s.Linux.Resources;
        assert_eq!((r.Devices[0].Allow, r.Devices[0].Type.as_str(), r.Devices[0].Major), (false, "", -1));
        assert_eq!(
            (r.Devices[1].Type.as_str(), r.Devices[1].Major, r.Devices[1].Minor, r.Devices[1].Access.as_str()),
            ("c", 1, 3, "rw")
        );
        let m = &r.Memory;
        assert_eq!(
            (m.Limit, m.Reservation, m.Swap, m.Kernel, m.KernelTCP, m.Swappiness, m.DisableOOMKiller),
            (536870912, 1, 2, 3, 4, 60, true)
        );
        let c = &r.CPU;
        assert_eq!(
            (c.Shares, c.Quota, c.Period, c.RealtimeRuntime, c.RealtimePeriod, c.Cpus.as_str(), c.Mems.as_str()),
            (1024, 50000, 100000, 7, 8, "0-1", "0")
        );
        assert_eq!(r.Pids.Limit, 64);
        let b = &r.BlockIO;
        assert_eq!((b.Weight, b.LeafWeight), (500, 300));
        let w = &b.WeightDevice[0];
        assert_eq!((w.Major, w.Minor, w.Weight, w.LeafWeight), (8, 0, 100, 50));
        assert_eq!(b.ThrottleReadBpsDevice[0].Rate, 1000);
        assert_eq!(b.ThrottleWriteBpsDevice[0].Minor, 1);
        assert_eq!(b.ThrottleReadIOPSDevice[0].Rate, 30);
        assert_eq!(b.ThrottleWriteIOPSDevice[0].Rate, 40);
        assert_eq!((r.HugepageLimits[0].Pagesize.as_str(), r.HugepageLimits[0].Limit), ("2MB", 4194304));
        assert_eq!(r.Network.ClassID, 7);
        assert_eq!((r.Network.Priorities[0].Name.as_str(), r.Network.Priorities[0].Priority), ("eth0", 3));
    }

    #[test]
    fn enumerations_use_config_json_spelling() {
        // What oci-spec itself writes to config.json is the vocabulary on the wire.
        let spec = oci::Spec::default();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        spec.save(&path).expect("save");
        let json = std::fs::read_to_string(&path).expect("read");
        let s = super::spec(&spec);
        let quoted = |v: &str| json.contains(&format!("\"{v}\""));
        for ns in &s.Linux.Namespaces {
            assert!(quoted(&ns.Type), "namespace {} not spelled as in config.json:\n{json}", ns.Type);
        }
        let caps = &s.Process.Capabilities;
        for cap in caps.Bounding.iter().chain(&caps.Effective).chain(&caps.Permitted) {
            assert!(quoted(cap), "capability {cap} not spelled as in config.json");
        }
        for limit in &s.Process.Rlimits {
            assert!(quoted(&limit.Type), "rlimit {} not spelled as in config.json", limit.Type);
        }
    }

    #[test]
    fn the_agent_reads_back_what_the_shim_sends() {
        // to_pb then the agent's from_pb: every field the protobuf carries survives, so a
        // second trip gives the same message (a fixed point).
        let sent = full();
        let received = crate::convert::from_pb::spec(&sent).expect("the agent accepts the shim's spec");
        assert_eq!(super::spec(&received), sent);
        let default = super::spec(&oci::Spec::default());
        let received = crate::convert::from_pb::spec(&default).expect("the agent accepts runc's default spec");
        assert_eq!(super::spec(&received), default);
    }

    #[test]
    fn minimal_spec_leaves_absent_sections_unset() {
        let s = super::spec(&parse(r#"{"ociVersion": "1.0.0", "root": {"path": "rootfs"}}"#));
        assert_eq!(s.Root.Path, "rootfs");
        assert!(s.Process.is_none());
        assert!(s.Linux.is_none());
        assert!(s.Hooks.is_none());
        assert!(s.Mounts.is_empty());
    }

    #[test]
    fn runc_default_spec_converts() {
        // `oci_spec`'s default is runc's `runc spec` output.
        let s = super::spec(&oci::Spec::default());
        assert_eq!(s.Process.Args, ["sh"]);
        assert!(s.Process.Capabilities.Bounding.contains(&"CAP_AUDIT_WRITE".to_owned()));
        assert!(s.Linux.Namespaces.iter().any(|n| n.Type == "mount"));
        assert!(s.Mounts.iter().any(|m| m.destination == "/proc" && m.type_ == "proc"));
    }
}
