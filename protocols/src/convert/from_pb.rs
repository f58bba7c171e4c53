//! protobuf `oci.Spec` -> `oci_spec::runtime::Spec` (the agent side).
//!
//! The conversion goes through the JSON shape of config.json: each protobuf
//! field is written under its config.json name, and `oci-spec`'s own
//! deserializer then parses the enumerations (namespace types, capabilities,
//! rlimits, seccomp actions, ...) exactly as it would parse a bundle on disk.
//! One parser for both paths means a value the agent accepts over the wire is
//! a value a runtime would accept in config.json, and an unknown one is
//! refused with the deserializer's message naming it.
//!
//! proto3 cannot tell an absent scalar from a zero. Where zero is not a
//! meaningful setting (a memory limit of 0 bytes, a CPU period of 0, a device
//! file mode of 0, an empty string) it reads as absent, which is what the
//! Kata runtime means when it leaves the field out.

use oci_spec::runtime::{Process, Spec};
use serde_json::{json, Map, Value};

use crate::oci;

/// Why a protobuf spec cannot become an OCI spec.
#[derive(Debug, thiserror::Error)]
pub enum FromPbError {
    /// A value the OCI runtime spec does not allow (unknown namespace type,
    /// capability, seccomp action, ...), or a number out of its range.
    #[error("invalid OCI spec: {0}")]
    Invalid(String),
}

/// Converts the spec carried by CreateContainer.
pub fn spec(pb: &oci::Spec) -> Result<Spec, FromPbError> {
    serde_json::from_value(spec_json(pb)?).map_err(invalid)
}

/// Converts the process carried by ExecProcess.
pub fn process(pb: &oci::Process) -> Result<Process, FromPbError> {
    serde_json::from_value(process_json(pb)).map_err(invalid)
}

fn invalid(e: serde_json::Error) -> FromPbError {
    FromPbError::Invalid(e.to_string())
}

/// A JSON object that leaves out absent values, so `oci-spec` sees `None`.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn put(mut self, key: &str, v: impl Into<Value>) -> Self {
        self.0.insert(key.to_owned(), v.into());
        self
    }
    fn str(self, key: &str, s: &str) -> Self {
        if s.is_empty() {
            self
        } else {
            self.put(key, s)
        }
    }
    fn list<T: Into<Value> + Clone>(self, key: &str, items: &[T]) -> Self {
        if items.is_empty() {
            self
        } else {
            self.put(key, Value::Array(items.iter().cloned().map(Into::into).collect()))
        }
    }
    fn nonzero<T: Into<Value> + Default + PartialEq>(self, key: &str, n: T) -> Self {
        if n == T::default() {
            self
        } else {
            self.put(key, n)
        }
    }
    fn opt(self, key: &str, v: Option<Value>) -> Self {
        match v {
            Some(v) => self.put(key, v),
            None => self,
        }
    }
    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

fn map_json(m: &std::collections::HashMap<String, String>) -> Option<Value> {
    (!m.is_empty()).then(|| Value::Object(m.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect()))
}

fn spec_json(pb: &oci::Spec) -> Result<Value, FromPbError> {
    let root = pb.Root.as_ref().map(|r| json!({"path": r.Path, "readonly": r.Readonly}));
    let mounts: Vec<Value> = pb
        .Mounts
        .iter()
        .map(|m| {
            Obj::default()
                .put("destination", m.destination.as_str())
                .str("source", &m.source)
                .str("type", &m.type_)
                .list("options", &m.options)
                .done()
        })
        .collect();
    Ok(Obj::default()
        .put("ociVersion", pb.Version.as_str())
        .opt("process", pb.Process.as_ref().map(process_json))
        .opt("root", root)
        .str("hostname", &pb.Hostname)
        .opt("mounts", (!mounts.is_empty()).then_some(Value::Array(mounts)))
        .opt("hooks", pb.Hooks.as_ref().map(hooks_json))
        .opt("annotations", map_json(&pb.Annotations))
        .opt("linux", pb.Linux.as_ref().map(linux_json).transpose()?)
        .done())
}

fn process_json(p: &oci::Process) -> Value {
    let user = p.User.as_ref().map_or_else(
        || json!({"uid": 0, "gid": 0}),
        |u| {
            Obj::default()
                .put("uid", u.UID)
                .put("gid", u.GID)
                .list("additionalGids", &u.AdditionalGids)
                .str("username", &u.Username)
                .done()
        },
    );
    let caps = p.Capabilities.as_ref().map(|c| {
        json!({
            "bounding": c.Bounding, "effective": c.Effective, "inheritable": c.Inheritable,
            "permitted": c.Permitted, "ambient": c.Ambient,
        })
    });
    let rlimits: Vec<Value> =
        p.Rlimits.iter().map(|r| json!({"type": r.Type, "hard": r.Hard, "soft": r.Soft})).collect();
    Obj::default()
        .put("terminal", p.Terminal)
        .opt("consoleSize", p.ConsoleSize.as_ref().map(|b| json!({"height": b.Height, "width": b.Width})))
        .put("user", user)
        .list("args", &p.Args)
        .list("env", &p.Env)
        .put("cwd", if p.Cwd.is_empty() { "/" } else { p.Cwd.as_str() })
        .opt("capabilities", caps)
        .opt("rlimits", (!rlimits.is_empty()).then_some(Value::Array(rlimits)))
        .put("noNewPrivileges", p.NoNewPrivileges)
        .str("apparmorProfile", &p.ApparmorProfile)
        .opt("oomScoreAdj", (p.OOMScoreAdj != 0).then(|| Value::from(p.OOMScoreAdj)))
        .str("selinuxLabel", &p.SelinuxLabel)
        .done()
}

fn hooks_json(h: &oci::Hooks) -> Value {
    let list = |hooks: &[oci::Hook]| -> Option<Value> {
        (!hooks.is_empty()).then(|| {
            Value::Array(
                hooks
                    .iter()
                    .map(|h| {
                        Obj::default()
                            .put("path", h.Path.as_str())
                            .list("args", &h.Args)
                            .list("env", &h.Env)
                            .nonzero("timeout", h.Timeout)
                            .done()
                    })
                    .collect(),
            )
        })
    };
    Obj::default()
        .opt("prestart", list(&h.Prestart))
        .opt("createRuntime", list(&h.CreateRuntime))
        .opt("createContainer", list(&h.CreateContainer))
        .opt("startContainer", list(&h.StartContainer))
        .opt("poststart", list(&h.Poststart))
        .opt("poststop", list(&h.Poststop))
        .done()
}

fn id_mappings(m: &[oci::LinuxIDMapping]) -> Option<Value> {
    (!m.is_empty())
        .then(|| m.iter().map(|m| json!({"hostID": m.HostID, "containerID": m.ContainerID, "size": m.Size})).collect())
}

fn linux_json(l: &oci::Linux) -> Result<Value, FromPbError> {
    let namespaces: Vec<Value> =
        l.Namespaces.iter().map(|n| Obj::default().put("type", n.Type.as_str()).str("path", &n.Path).done()).collect();
    let devices: Vec<Value> = l
        .Devices
        .iter()
        .map(|d| {
            Obj::default()
                .put("path", d.Path.as_str())
                .put("type", d.Type.as_str())
                .put("major", d.Major)
                .put("minor", d.Minor)
                .nonzero("fileMode", d.FileMode)
                .put("uid", d.UID)
                .put("gid", d.GID)
                .done()
        })
        .collect();
    Ok(Obj::default()
        .opt("uidMappings", id_mappings(&l.UIDMappings))
        .opt("gidMappings", id_mappings(&l.GIDMappings))
        .opt("sysctl", map_json(&l.Sysctl))
        .opt("resources", l.Resources.as_ref().map(resources_json).transpose()?)
        .str("cgroupsPath", &l.CgroupsPath)
        .opt("namespaces", (!namespaces.is_empty()).then_some(Value::Array(namespaces)))
        .opt("devices", (!devices.is_empty()).then_some(Value::Array(devices)))
        .opt("seccomp", l.Seccomp.as_ref().map(seccomp_json))
        .str("rootfsPropagation", &l.RootfsPropagation)
        .list("maskedPaths", &l.MaskedPaths)
        .list("readonlyPaths", &l.ReadonlyPaths)
        .str("mountLabel", &l.MountLabel)
        .opt("intelRdt", l.IntelRdt.as_ref().map(|r| Obj::default().str("l3CacheSchema", &r.L3CacheSchema).done()))
        .done())
}

/// The resources of a spec, also what UpdateContainer carries.
pub fn resources(pb: &oci::LinuxResources) -> Result<oci_spec::runtime::LinuxResources, FromPbError> {
    serde_json::from_value(resources_json(pb)?).map_err(invalid)
}

fn u16_of(what: &str, v: u32) -> Result<u16, FromPbError> {
    u16::try_from(v).map_err(|_| FromPbError::Invalid(format!("{what} {v} is over {}", u16::MAX)))
}

fn resources_json(r: &oci::LinuxResources) -> Result<Value, FromPbError> {
    let devices: Vec<Value> = r
        .Devices
        .iter()
        .map(|d| {
            // A negative major/minor is the wildcard `*`, which config.json spells by leaving it out.
            Obj::default()
                .put("allow", d.Allow)
                .str("type", &d.Type)
                .opt("major", (d.Major >= 0).then(|| Value::from(d.Major)))
                .opt("minor", (d.Minor >= 0).then(|| Value::from(d.Minor)))
                .str("access", &d.Access)
                .done()
        })
        .collect();
    let memory = r.Memory.as_ref().map(|m| {
        Obj::default()
            .nonzero("limit", m.Limit)
            .nonzero("reservation", m.Reservation)
            .nonzero("swap", m.Swap)
            .nonzero("kernel", m.Kernel)
            .nonzero("kernelTCP", m.KernelTCP)
            .nonzero("swappiness", m.Swappiness)
            .nonzero("disableOOMKiller", m.DisableOOMKiller)
            .done()
    });
    let cpu = r.CPU.as_ref().map(|c| {
        Obj::default()
            .nonzero("shares", c.Shares)
            .nonzero("quota", c.Quota)
            .nonzero("period", c.Period)
            .nonzero("realtimeRuntime", c.RealtimeRuntime)
            .nonzero("realtimePeriod", c.RealtimePeriod)
            .str("cpus", &c.Cpus)
            .str("mems", &c.Mems)
            .done()
    });
    let block_io = r.BlockIO.as_ref().map(block_io_json).transpose()?;
    let hugepages: Vec<Value> =
        r.HugepageLimits.iter().map(|h| json!({"pageSize": h.Pagesize, "limit": h.Limit})).collect();
    let network = r.Network.as_ref().map(|n| {
        let prios: Vec<Value> = n.Priorities.iter().map(|p| json!({"name": p.Name, "priority": p.Priority})).collect();
        Obj::default()
            .nonzero("classID", n.ClassID)
            .opt("priorities", (!prios.is_empty()).then_some(Value::Array(prios)))
            .done()
    });
    Ok(Obj::default()
        .opt("devices", (!devices.is_empty()).then_some(Value::Array(devices)))
        .opt("memory", memory)
        .opt("cpu", cpu)
        .opt("pids", r.Pids.as_ref().map(|p| json!({"limit": p.Limit})))
        .opt("blockIO", block_io)
        .opt("hugepageLimits", (!hugepages.is_empty()).then_some(Value::Array(hugepages)))
        .opt("network", network)
        .done())
}

fn block_io_json(b: &oci::LinuxBlockIO) -> Result<Value, FromPbError> {
    let throttle = |list: &[oci::LinuxThrottleDevice]| -> Option<Value> {
        (!list.is_empty())
            .then(|| list.iter().map(|t| json!({"major": t.Major, "minor": t.Minor, "rate": t.Rate})).collect())
    };
    let mut weights = Vec::new();
    for w in &b.WeightDevice {
        weights.push(
            Obj::default()
                .put("major", w.Major)
                .put("minor", w.Minor)
                .nonzero("weight", u16_of("blkio weight", w.Weight)?)
                .nonzero("leafWeight", u16_of("blkio leaf weight", w.LeafWeight)?)
                .done(),
        );
    }
    Ok(Obj::default()
        .nonzero("weight", u16_of("blkio weight", b.Weight)?)
        .nonzero("leafWeight", u16_of("blkio leaf weight", b.LeafWeight)?)
        .opt("weightDevice", (!weights.is_empty()).then_some(Value::Array(weights)))
        .opt("throttleReadBpsDevice", throttle(&b.ThrottleReadBpsDevice))
        .opt("throttleWriteBpsDevice", throttle(&b.ThrottleWriteBpsDevice))
        .opt("throttleReadIOPSDevice", throttle(&b.ThrottleReadIOPSDevice))
        .opt("throttleWriteIOPSDevice", throttle(&b.ThrottleWriteIOPSDevice))
        .done())
}

fn seccomp_json(s: &oci::LinuxSeccomp) -> Value {
    let syscalls: Vec<Value> = s
        .Syscalls
        .iter()
        .map(|c| {
            let args: Vec<Value> = c
                .Args
                .iter()
                .map(|a| {
                    Obj::default()
                        .put("index", a.Index)
                        .put("value", a.Value)
                        .nonzero("valueTwo", a.ValueTwo)
                        .put("op", a.Op.as_str())
                        .done()
                })
                .collect();
            let errno = match c.ErrnoRet {
                Some(oci::linux_syscall::ErrnoRet::Errnoret(e)) => Some(Value::from(e)),
                _ => None,
            };
            Obj::default()
                .put("names", c.Names.clone())
                .put("action", c.Action.as_str())
                .opt("errnoRet", errno)
                .opt("args", (!args.is_empty()).then_some(Value::Array(args)))
                .done()
        })
        .collect();
    Obj::default()
        .put("defaultAction", s.DefaultAction.as_str())
        .list("architectures", &s.Architectures)
        .list("flags", &s.Flags)
        .opt("syscalls", (!syscalls.is_empty()).then_some(Value::Array(syscalls)))
        .done()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{Capability, LinuxNamespaceType, LinuxSeccompAction, PosixRlimitType};

    fn full() -> oci::Spec {
        let mut s = oci::Spec::new();
        s.Version = "1.1.0".into();
        s.Hostname = "box".into();
        s.Annotations.insert("a".into(), "b".into());
        let mut p = oci::Process::new();
        p.Terminal = true;
        let mut size = oci::Box::new();
        size.Height = 40;
        size.Width = 120;
        p.ConsoleSize = Some(size).into();
        let mut user = oci::User::new();
        user.UID = 1000;
        user.GID = 100;
        user.AdditionalGids = vec![10, 11];
        p.User = Some(user).into();
        p.Args = vec!["sh".into(), "-c".into(), "echo hi".into()];
        p.Env = vec!["PATH=/bin".into()];
        p.Cwd = "/work".into();
        let mut caps = oci::LinuxCapabilities::new();
        caps.Bounding = vec!["CAP_KILL".into(), "CAP_CHOWN".into()];
        caps.Effective = vec!["CAP_KILL".into()];
        p.Capabilities = Some(caps).into();
        let mut rl = oci::POSIXRlimit::new();
        rl.Type = "RLIMIT_NOFILE".into();
        rl.Hard = 1024;
        rl.Soft = 512;
        p.Rlimits = vec![rl];
        p.NoNewPrivileges = true;
        p.OOMScoreAdj = -500;
        s.Process = Some(p).into();
        let mut root = oci::Root::new();
        root.Path = "/run/rootfs".into();
        root.Readonly = true;
        s.Root = Some(root).into();
        let mut m = oci::Mount::new();
        m.destination = "/proc".into();
        m.source = "proc".into();
        m.type_ = "proc".into();
        m.options = vec!["nosuid".into()];
        s.Mounts = vec![m];
        let mut hook = oci::Hook::new();
        hook.Path = "/bin/hook".into();
        hook.Args = vec!["hook".into(), "x".into()];
        hook.Timeout = 5;
        let mut hooks = oci::Hooks::new();
        hooks.Poststop = vec![hook.clone()];
        hooks.CreateRuntime = vec![hook];
        s.Hooks = Some(hooks).into();
        let mut l = oci::Linux::new();
        let mut map = oci::LinuxIDMapping::new();
        map.HostID = 100000;
        map.Size = 65536;
        l.UIDMappings = vec![map];
        l.Sysctl.insert("net.ipv4.ip_forward".into(), "1".into());
        l.CgroupsPath = "/wisp/c1".into();
        for t in ["pid", "mount", "ipc", "uts", "network", "cgroup"] {
            let mut ns = oci::LinuxNamespace::new();
            ns.Type = t.into();
            l.Namespaces.push(ns);
        }
        l.Namespaces[4].Path = "/proc/1/ns/net".into();
        let mut dev = oci::LinuxDevice::new();
        dev.Path = "/dev/fuse".into();
        dev.Type = "c".into();
        dev.Major = 10;
        dev.Minor = 229;
        dev.FileMode = 0o666;
        l.Devices = vec![dev];
        let mut r = oci::LinuxResources::new();
        let mut mem = oci::LinuxMemory::new();
        mem.Limit = 64 << 20;
        r.Memory = Some(mem).into();
        let mut cpu = oci::LinuxCPU::new();
        cpu.Quota = 50_000;
        cpu.Period = 100_000;
        cpu.Cpus = "0-1".into();
        r.CPU = Some(cpu).into();
        let mut pids = oci::LinuxPids::new();
        pids.Limit = 100;
        r.Pids = Some(pids).into();
        let mut dc = oci::LinuxDeviceCgroup::new();
        dc.Allow = false;
        dc.Major = -1;
        dc.Minor = -1;
        dc.Access = "rwm".into();
        r.Devices = vec![dc];
        let mut bio = oci::LinuxBlockIO::new();
        bio.Weight = 500;
        let mut t = oci::LinuxThrottleDevice::new();
        t.Major = 8;
        t.Rate = 1 << 20;
        bio.ThrottleReadBpsDevice = vec![t];
        r.BlockIO = Some(bio).into();
        let mut hp = oci::LinuxHugepageLimit::new();
        hp.Pagesize = "2MB".into();
        hp.Limit = 4 << 20;
        r.HugepageLimits = vec![hp];
        l.Resources = Some(r).into();
        let mut sc = oci::LinuxSeccomp::new();
        sc.DefaultAction = "SCMP_ACT_ERRNO".into();
        sc.Architectures = vec!["SCMP_ARCH_X86_64".into()];
        let mut call = oci::LinuxSyscall::new();
        call.Names = vec!["read".into(), "write".into()];
        call.Action = "SCMP_ACT_ALLOW".into();
        let mut arg = oci::LinuxSeccompArg::new();
        arg.Index = 1;
        arg.Value = 2;
        arg.Op = "SCMP_CMP_EQ".into();
        call.Args = vec![arg];
        let mut denied = oci::LinuxSyscall::new();
        denied.Names = vec!["mount".into()];
        denied.Action = "SCMP_ACT_ERRNO".into();
        denied.ErrnoRet = Some(oci::linux_syscall::ErrnoRet::Errnoret(1));
        sc.Syscalls = vec![call, denied];
        l.Seccomp = Some(sc).into();
        l.MaskedPaths = vec!["/proc/kcore".into()];
        l.ReadonlyPaths = vec!["/proc/sys".into()];
        l.RootfsPropagation = "rslave".into();
        s.Linux = Some(l).into();
        s
    }

    #[test]
    fn every_field_arrives() {
        let s = spec(&full()).unwrap();
        assert_eq!(s.version(), "1.1.0");
        assert_eq!(s.hostname().as_deref(), Some("box"));
        assert_eq!(s.annotations().as_ref().unwrap()["a"], "b");
        let root = s.root().as_ref().unwrap();
        assert_eq!(root.path().to_str(), Some("/run/rootfs"));
        assert_eq!(root.readonly(), Some(true));
        let m = &s.mounts().as_ref().unwrap()[0];
        assert_eq!(m.destination().to_str(), Some("/proc"));
        assert_eq!(m.typ().as_deref(), Some("proc"));
        assert_eq!(m.options().as_ref().unwrap(), &["nosuid"]);

        let p = s.process().as_ref().unwrap();
        assert_eq!(p.terminal(), Some(true));
        let size = p.console_size().unwrap();
        assert_eq!((size.height(), size.width()), (40, 120));
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 100));
        assert_eq!(p.user().additional_gids().as_ref().unwrap(), &[10, 11]);
        assert_eq!(p.args().as_ref().unwrap()[2], "echo hi");
        assert_eq!(p.cwd().to_str(), Some("/work"));
        let caps = p.capabilities().as_ref().unwrap();
        assert!(caps.bounding().as_ref().unwrap().contains(&Capability::Chown));
        assert_eq!(caps.effective().as_ref().unwrap().len(), 1);
        assert!(caps.ambient().as_ref().unwrap().is_empty());
        let rl = &p.rlimits().as_ref().unwrap()[0];
        assert_eq!((rl.typ(), rl.hard(), rl.soft()), (PosixRlimitType::RlimitNofile, 1024, 512));
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.oom_score_adj(), Some(-500));

        let hooks = s.hooks().as_ref().unwrap();
        let h = &hooks.poststop().as_ref().unwrap()[0];
        assert_eq!(h.path().to_str(), Some("/bin/hook"));
        assert_eq!(h.timeout(), Some(5));
        assert_eq!(hooks.create_runtime().as_ref().unwrap().len(), 1);
        assert!(hooks.poststart().is_none());

        let l = s.linux().as_ref().unwrap();
        assert_eq!(l.uid_mappings().as_ref().unwrap()[0].host_id(), 100000);
        assert_eq!(l.sysctl().as_ref().unwrap()["net.ipv4.ip_forward"], "1");
        assert_eq!(l.cgroups_path().as_ref().unwrap().to_str(), Some("/wisp/c1"));
        let ns = l.namespaces().as_ref().unwrap();
        let types: Vec<_> = ns.iter().map(|n| n.typ()).collect();
        assert_eq!(
            types,
            [
                LinuxNamespaceType::Pid,
                LinuxNamespaceType::Mount,
                LinuxNamespaceType::Ipc,
                LinuxNamespaceType::Uts,
                LinuxNamespaceType::Network,
                LinuxNamespaceType::Cgroup
            ]
        );
        assert_eq!(ns[4].path().as_ref().unwrap().to_str(), Some("/proc/1/ns/net"));
        assert!(ns[0].path().is_none());
        let dev = &l.devices().as_ref().unwrap()[0];
        assert_eq!((dev.major(), dev.minor(), dev.file_mode()), (10, 229, Some(0o666)));
        let r = l.resources().as_ref().unwrap();
        assert_eq!(r.memory().unwrap().limit(), Some(64 << 20));
        assert_eq!(r.memory().unwrap().swap(), None, "0 reads as absent");
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(r.cpu().as_ref().unwrap().cpus().as_deref(), Some("0-1"));
        assert_eq!(r.pids().unwrap().limit(), 100);
        let dc = &r.devices().as_ref().unwrap()[0];
        assert_eq!((dc.allow(), dc.major(), dc.access().as_deref()), (false, None, Some("rwm")));
        let bio = r.block_io().as_ref().unwrap();
        assert_eq!(bio.weight(), Some(500));
        assert_eq!(bio.throttle_read_bps_device().as_ref().unwrap()[0].rate(), 1 << 20);
        assert_eq!(r.hugepage_limits().as_ref().unwrap()[0].page_size(), "2MB");
        let sc = l.seccomp().as_ref().unwrap();
        assert_eq!(sc.default_action(), LinuxSeccompAction::ScmpActErrno);
        let calls = sc.syscalls().as_ref().unwrap();
        assert_eq!(calls[0].names(), &["read", "write"]);
        assert_eq!(calls[0].args().as_ref().unwrap()[0].value(), 2);
        assert_eq!(calls[1].errno_ret(), Some(1));
        assert_eq!(calls[0].errno_ret(), None);
        assert_eq!(l.masked_paths().as_ref().unwrap(), &["/proc/kcore"]);
        assert_eq!(l.readonly_paths().as_ref().unwrap(), &["/proc/sys"]);
        assert_eq!(l.rootfs_propagation().as_deref(), Some("rslave"));
    }

    #[test]
    fn an_empty_spec_is_empty_not_defaulted() {
        let s = spec(&oci::Spec::new()).unwrap();
        assert!(s.process().is_none() && s.root().is_none() && s.linux().is_none() && s.mounts().is_none());
        let mut pb = oci::Spec::new();
        pb.Linux = Some(oci::Linux::new()).into();
        let s = spec(&pb).unwrap();
        assert!(s.linux().as_ref().unwrap().namespaces().is_none(), "no namespaces were asked for");
    }

    #[test]
    fn unknown_names_are_refused_with_the_name() {
        let mut pb = full();
        pb.Linux.as_mut().unwrap().Namespaces[0].Type = "bogus".into();
        let e = spec(&pb).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");

        let mut pb = full();
        pb.Process.as_mut().unwrap().Capabilities.as_mut().unwrap().Bounding.push("CAP_FLY".into());
        assert!(spec(&pb).unwrap_err().to_string().contains("FLY"));

        let mut pb = full();
        pb.Process.as_mut().unwrap().Rlimits[0].Type = "RLIMIT_BOGUS".into();
        assert!(spec(&pb).is_err());

        let mut pb = full();
        pb.Linux.as_mut().unwrap().Seccomp.as_mut().unwrap().DefaultAction = "SCMP_ACT_MAYBE".into();
        assert!(spec(&pb).is_err());

        let mut pb = full();
        pb.Linux.as_mut().unwrap().Resources.as_mut().unwrap().BlockIO.as_mut().unwrap().Weight = 70_000;
        assert!(spec(&pb).unwrap_err().to_string().contains("70000"));
    }

    #[test]
    fn exec_process_converts_alone() {
        let mut p = oci::Process::new();
        p.Args = vec!["ls".into()];
        let p = process(&p).unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["ls"]);
        assert_eq!(p.cwd().to_str(), Some("/"), "an empty cwd is the root");
        assert_eq!(p.terminal(), Some(false));
        assert_eq!(p.user().uid(), 0);
    }
}
