//! OCI `linux.resources` -> cgroup file writes, for v1 and v2.
//!
//! Each controller's file names and value syntax come from cgroups-rs; the
//! conversions OCI leaves to the runtime are done here, the way runc does them:
//! v1 `cpu.shares` -> v2 `cpu.weight`, OCI memory+swap -> v2 `memory.swap.max`
//! (swap alone), v1 `blkio.weight` -> v2 `io.weight`. A value for a controller
//! this cgroup does not have is an error naming the controller (the container
//! asked for a limit it would not get), except device rules on v2, which need an
//! eBPF program (not done; see the module above) and are skipped with one warning.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use cgroups_rs::fs::blkio::BlkIoController;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuset::CpuSetController;
use cgroups_rs::fs::devices::{DevicePermissions, DeviceType, DevicesController};
use cgroups_rs::fs::hugetlb::HugeTlbController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::MaxValue;
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxDeviceCgroup, LinuxMemory, LinuxResources};

use super::{write_file, CgroupError, Dirs};

static V2_DEVICES_WARNED: AtomicBool = AtomicBool::new(false);

/// Applies every resource that is set; unset ones are left as they are.
pub(super) fn apply(dirs: &Dirs, path: &str, r: &LinuxResources) -> Result<(), CgroupError> {
    let need = |controller: &'static str| {
        dirs.get(controller).map(Path::to_owned).ok_or(CgroupError::Unsupported { controller, path: path.to_owned() })
    };
    let v2 = dirs.v2;
    if let Some(m) = r.memory() {
        if has_memory(m) {
            memory(&need("memory")?, v2, m)?;
        }
    }
    if let Some(c) = r.cpu() {
        if c.shares().is_some()
            || c.quota().is_some()
            || c.period().is_some()
            || c.realtime_runtime().is_some()
            || c.realtime_period().is_some()
        {
            cpu(&need("cpu")?, v2, c)?;
        }
        if c.cpus().is_some() || c.mems().is_some() {
            cpuset(&need("cpuset")?, v2, c)?;
        }
    }
    if let Some(p) = r.pids() {
        let dir = need("pids")?;
        let max = if p.limit() > 0 { MaxValue::Value(p.limit()) } else { MaxValue::Max };
        ctl(&dir, PidController::new(dir.clone(), PathBuf::new(), v2).set_pid_max(max))?;
    }
    if let Some(b) = r.block_io() {
        if has_block_io(b) {
            block_io(&need(if v2 { "io" } else { "blkio" })?, v2, b)?;
        }
    }
    if let Some(limits) = r.hugepage_limits() {
        if !limits.is_empty() {
            let dir = need("hugetlb")?;
            let h = HugeTlbController::new(dir.clone(), PathBuf::new(), v2);
            for l in limits {
                let size = hugetlb_size(l.page_size())?;
                let limit = u64::try_from(l.limit())
                    .map_err(|_| CgroupError::InvalidResource(format!("hugetlb {size} limit {} < 0", l.limit())))?;
                ctl(&dir, h.set_limit_in_bytes(&size, limit))?;
            }
        }
    }
    if let Some(rules) = r.devices() {
        if !rules.is_empty() {
            if v2 {
                if !V2_DEVICES_WARNED.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "cgroup {path}: device rules are not enforced on cgroup v2 (needs an eBPF device program); \
                         logged once"
                    );
                }
            } else {
                devices(&need("devices")?, rules)?;
            }
        }
    }
    if let Some(unified) = r.unified() {
        if !unified.is_empty() {
            if !v2 {
                return Err(CgroupError::InvalidResource("linux.resources.unified needs cgroup v2".into()));
            }
            let dir = &dirs.all[0];
            for (key, value) in unified {
                if key.is_empty() || key.contains('/') || key.starts_with('.') {
                    return Err(CgroupError::InvalidResource(format!("unified key {key:?} is not a cgroup file name")));
                }
                write_file(&dir.join(key), value)?;
            }
        }
    }
    Ok(())
}

fn ctl(dir: &Path, r: cgroups_rs::fs::error::Result<()>) -> Result<(), CgroupError> {
    r.map_err(|e| CgroupError::controller(dir, e))
}

fn has_memory(m: &LinuxMemory) -> bool {
    m.limit().is_some()
        || m.reservation().is_some()
        || m.swap().is_some()
        || m.kernel().is_some()
        || m.kernel_tcp().is_some()
        || m.swappiness().is_some()
        || m.disable_oom_killer() == Some(true)
}

fn memory(dir: &Path, v2: bool, m: &LinuxMemory) -> Result<(), CgroupError> {
    let mem = MemController::new(dir.to_owned(), PathBuf::new(), v2);
    // As in runc: 0 means "not set"; swap 0 with an unlimited memory means
    // unlimited swap too.
    let limit = m.limit().filter(|l| *l != 0).map(|l| if l < 0 { -1 } else { l });
    let swap = match (m.swap(), limit) {
        (Some(0), Some(-1)) => Some(-1),
        (Some(0), _) => None,
        (s, _) => s.map(|s| if s < 0 { -1 } else { s }),
    };
    let reservation = m.reservation().filter(|r| *r != 0);
    if v2 {
        // OCI's swap is memory+swap; v2 limits swap alone.
        if let Some(swap) = swap {
            let value = match (swap, limit) {
                (-1, _) => "max".to_owned(),
                (s, Some(l)) if l > 0 => {
                    if s < l {
                        return Err(CgroupError::InvalidResource(format!(
                            "memory+swap limit {s} is below the memory limit {l}"
                        )));
                    }
                    (s - l).to_string()
                }
                (s, _) => {
                    return Err(CgroupError::InvalidResource(format!(
                        "memory+swap limit {s} needs a memory limit on cgroup v2"
                    )))
                }
            };
            write_file(&dir.join("memory.swap.max"), &value)?;
        }
        if let Some(limit) = limit {
            ctl(dir, mem.set_limit(limit))?;
        }
        if let Some(r) = reservation {
            ctl(dir, mem.set_soft_limit(r.max(0)))?;
        }
        // kernel, kernel_tcp, swappiness and disable_oom_killer do not exist on v2.
        return Ok(());
    }
    // Without swap accounting (swapaccount=0) there is no memsw file: nothing to limit.
    let swap = swap.filter(|_| {
        let accounted = dir.join("memory.memsw.limit_in_bytes").exists() || !super::is_cgroupfs(dir);
        if !accounted {
            log::warn!("{}: no swap accounting in this kernel; the swap limit is not applied", dir.display());
        }
        accounted
    });
    // v1 refuses memory.limit_in_bytes above memory.memsw.limit_in_bytes and the
    // reverse, so the order depends on whether the limit grows.
    let current = std::fs::read_to_string(dir.join("memory.limit_in_bytes"))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(-1);
    let swap_first = match (limit, swap) {
        (Some(l), Some(_)) => l == -1 || (current != -1 && l > current),
        _ => false,
    };
    if swap_first {
        if let Some(s) = swap {
            ctl(dir, mem.set_memswap_limit(s))?;
        }
    }
    if let Some(l) = limit {
        ctl(dir, mem.set_limit(l))?;
    }
    if !swap_first {
        if let Some(s) = swap {
            ctl(dir, mem.set_memswap_limit(s))?;
        }
    }
    if let Some(r) = reservation {
        ctl(dir, mem.set_soft_limit(r))?;
    }
    if let Some(k) = m.kernel().filter(|k| *k != 0) {
        ctl(dir, mem.set_kmem_limit(k))?;
    }
    if let Some(k) = m.kernel_tcp().filter(|k| *k != 0) {
        ctl(dir, mem.set_tcp_limit(k))?;
    }
    if let Some(s) = m.swappiness() {
        if s > 100 {
            return Err(CgroupError::InvalidResource(format!("swappiness {s} is above 100")));
        }
        ctl(dir, mem.set_swappiness(s))?;
    }
    if m.disable_oom_killer() == Some(true) {
        ctl(dir, mem.disable_oom_killer())?;
    }
    Ok(())
}

/// runc's mapping of v1 shares (2..262144) onto v2 weight (1..10000).
pub(super) fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

fn cpu(dir: &Path, v2: bool, c: &LinuxCpu) -> Result<(), CgroupError> {
    let cpu = CpuController::new(dir.to_owned(), PathBuf::new(), v2);
    if let Some(shares) = c.shares() {
        if shares > 0 {
            ctl(dir, cpu.set_shares(if v2 { shares_to_weight(shares) } else { shares }))?;
        }
    }
    if c.quota().is_some() || c.period().is_some() {
        let period = c.period().filter(|p| *p > 0);
        if v2 {
            // One number updates only the quota; a period alone must repeat the quota.
            let quota = |q: i64| if q <= 0 { "max".to_owned() } else { q.to_string() };
            let value = match (c.quota(), period) {
                (Some(q), Some(p)) => format!("{} {p}", quota(q)),
                (Some(q), None) => quota(q),
                (None, Some(p)) => {
                    let current = std::fs::read_to_string(dir.join("cpu.max")).unwrap_or_default();
                    format!("{} {p}", current.split_whitespace().next().unwrap_or("max"))
                }
                (None, None) => String::new(),
            };
            if !value.is_empty() {
                write_file(&dir.join("cpu.max"), &value)?;
            }
        } else {
            // v1 refuses a period that makes the current quota invalid: period first.
            if let Some(p) = period {
                ctl(dir, cpu.set_cfs_period(p))?;
            }
            if let Some(q) = c.quota() {
                ctl(dir, cpu.set_cfs_quota(if q <= 0 { -1 } else { q }))?;
            }
        }
    }
    if c.realtime_period().is_some() || c.realtime_runtime().is_some() {
        if v2 {
            return Err(CgroupError::InvalidResource("realtime cpu limits need cgroup v1".into()));
        }
        // The period must be set before a runtime that only fits the new period.
        if let Some(p) = c.realtime_period() {
            ctl(dir, cpu.set_rt_period_us(p))?;
        }
        if let Some(r) = c.realtime_runtime() {
            ctl(dir, cpu.set_rt_runtime(r))?;
        }
    }
    Ok(())
}

fn cpuset(dir: &Path, v2: bool, c: &LinuxCpu) -> Result<(), CgroupError> {
    let cs = CpuSetController::new(dir.to_owned(), PathBuf::new(), v2);
    // mems before cpus: a v1 cpuset with cpus but no mems cannot hold tasks, and
    // the kernel checks both against the parent.
    if let Some(mems) = c.mems().as_deref().filter(|m| !m.is_empty()) {
        ctl(dir, cs.set_mems(mems))?;
    }
    if let Some(cpus) = c.cpus().as_deref().filter(|m| !m.is_empty()) {
        ctl(dir, cs.set_cpus(cpus))?;
    }
    Ok(())
}

fn has_block_io(b: &LinuxBlockIo) -> bool {
    b.weight().is_some()
        || b.weight_device().as_ref().is_some_and(|v| !v.is_empty())
        || [
            b.throttle_read_bps_device(),
            b.throttle_write_bps_device(),
            b.throttle_read_iops_device(),
            b.throttle_write_iops_device(),
        ]
        .iter()
        .any(|v| v.as_ref().is_some_and(|v| !v.is_empty()))
}

/// runc's mapping of blkio weight (10..1000) onto io.weight (1..10000).
pub(super) fn blkio_to_io_weight(w: u16) -> u64 {
    1 + (u64::from(w).clamp(10, 1000) - 10) * 9999 / 990
}

fn block_io(dir: &Path, v2: bool, b: &LinuxBlockIo) -> Result<(), CgroupError> {
    let io = BlkIoController::new(dir.to_owned(), PathBuf::new(), v2);
    let dev = |major: i64, minor: i64| match (u64::try_from(major), u64::try_from(minor)) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        _ => Err(CgroupError::InvalidResource(format!("block device {major}:{minor}"))),
    };
    if let Some(w) = b.weight() {
        if v2 {
            // BFQ takes the v1 range as is; without BFQ, io.weight takes 1..10000.
            let bfq = dir.join("io.bfq.weight");
            if bfq.exists() {
                write_file(&bfq, &w.to_string())?;
            } else {
                write_file(&dir.join("io.weight"), &format!("default {}", blkio_to_io_weight(w)))?;
            }
        } else {
            ctl(dir, io.set_weight(u64::from(w)))?;
        }
    }
    for d in b.weight_device().iter().flatten() {
        let (major, minor) = dev(d.major(), d.minor())?;
        if let Some(w) = d.weight() {
            if v2 {
                write_file(&dir.join("io.bfq.weight"), &format!("{major}:{minor} {w}"))?;
            } else {
                ctl(dir, io.set_weight_for_device(major, minor, u64::from(w)))?;
            }
        }
        if let Some(w) = d.leaf_weight().filter(|_| !v2) {
            ctl(dir, io.set_leaf_weight_for_device(major, minor, u64::from(w)))?;
        }
    }
    type Setter = fn(&BlkIoController, u64, u64, u64) -> cgroups_rs::fs::error::Result<()>;
    let throttles: [(&Option<Vec<_>>, Setter); 4] = [
        (b.throttle_read_bps_device(), BlkIoController::throttle_read_bps_for_device),
        (b.throttle_write_bps_device(), BlkIoController::throttle_write_bps_for_device),
        (b.throttle_read_iops_device(), BlkIoController::throttle_read_iops_for_device),
        (b.throttle_write_iops_device(), BlkIoController::throttle_write_iops_for_device),
    ];
    for (list, set) in throttles {
        for t in list.iter().flatten() {
            let (major, minor) = dev(t.major(), t.minor())?;
            ctl(dir, set(&io, major, minor, t.rate()))?;
        }
    }
    Ok(())
}

/// OCI page sizes are `2MB`, `1GB`, `64KB` (cgroup file names use the same form).
fn hugetlb_size(page_size: &str) -> Result<String, CgroupError> {
    // On bytes: the size comes from the request, and slicing a str at a byte offset inside a
    // multi-byte character panics.
    let ok = match page_size.as_bytes() {
        [digits @ .., unit, b'B'] => {
            !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) && matches!(unit, b'K' | b'M' | b'G')
        }
        _ => false,
    };
    if ok {
        Ok(page_size.to_owned())
    } else {
        Err(CgroupError::InvalidResource(format!("hugepage size {page_size:?} (expected e.g. 2MB or 1GB)")))
    }
}

fn devices(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<(), CgroupError> {
    let ctl_ = DevicesController::new(dir.to_owned(), PathBuf::new());
    for rule in rules {
        let typ = match rule.typ().map(|t| t.as_str().to_owned()).as_deref() {
            None | Some("a") => DeviceType::All,
            Some("c") | Some("u") => DeviceType::Char,
            Some("b") => DeviceType::Block,
            Some(other) => {
                return Err(CgroupError::InvalidResource(format!("device type {other:?} cannot be in a cgroup rule")))
            }
        };
        let access = rule.access().as_deref().unwrap_or("rwm");
        let perms = DevicePermissions::from_str(access)
            .map_err(|_| CgroupError::InvalidResource(format!("device access {access:?} (expected r, w, m)")))?;
        let major = rule.major().unwrap_or(-1);
        let minor = rule.minor().unwrap_or(-1);
        let r = if rule.allow() {
            ctl_.allow_device(typ, major, minor, &perms)
        } else {
            ctl_.deny_device(typ, major, minor, &perms)
        };
        ctl(dir, r)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{read, resources, FakeTree};
    use super::*;

    #[test]
    fn v1_memory_writes_every_file() {
        let t = FakeTree::v1();
        let m = t.create(
            "/c1",
            Some(&resources(
                r#"{"memory":{"limit":104857600,"reservation":52428800,"swap":209715200,"kernel":1048576,
                "kernelTCP":65536,"swappiness":10,"disableOOMKiller":true}}"#,
            )),
        );
        let d = t.dir("memory", "c1");
        assert_eq!(read(&d, "memory.limit_in_bytes"), "104857600");
        assert_eq!(read(&d, "memory.soft_limit_in_bytes"), "52428800");
        assert_eq!(read(&d, "memory.memsw.limit_in_bytes"), "209715200");
        assert_eq!(read(&d, "memory.kmem.limit_in_bytes"), "1048576");
        assert_eq!(read(&d, "memory.kmem.tcp.limit_in_bytes"), "65536");
        assert_eq!(read(&d, "memory.swappiness"), "10");
        assert_eq!(read(&d, "memory.oom_control"), "1");
        drop(m);
    }

    #[test]
    fn v2_memory_converts_swap_and_skips_v1_only_knobs() {
        let t = FakeTree::v2();
        t.create(
            "/c1",
            Some(&resources(
                r#"{"memory":{"limit":104857600,"reservation":52428800,"swap":209715200,"swappiness":10}}"#,
            )),
        );
        let d = t.dir("", "c1");
        assert_eq!(read(&d, "memory.max"), "104857600");
        assert_eq!(read(&d, "memory.low"), "52428800");
        assert_eq!(read(&d, "memory.swap.max"), "104857600", "swap alone = memory+swap - memory");
        assert!(!d.join("memory.swappiness").exists());
        t.create("/c2", Some(&resources(r#"{"memory":{"limit":-1,"swap":-1}}"#)));
        assert_eq!(read(&t.dir("", "c2"), "memory.max"), "max");
        assert_eq!(read(&t.dir("", "c2"), "memory.swap.max"), "max");
        t.create("/c4", Some(&resources(r#"{"memory":{"limit":1000,"swap":0}}"#)));
        assert!(!t.dir("", "c4").join("memory.swap.max").exists(), "swap 0 means not set");
        t.create("/c5", Some(&resources(r#"{"memory":{"limit":-1,"swap":0}}"#)));
        assert_eq!(read(&t.dir("", "c5"), "memory.swap.max"), "max", "unlimited memory, unlimited swap");
        let e = t.try_create("/c3", Some(&resources(r#"{"memory":{"limit":200,"swap":100}}"#))).unwrap_err();
        assert!(e.to_string().contains("below the memory limit"), "{e}");
    }

    #[test]
    fn cpu_shares_become_weight_on_v2() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        let json = r#"{"cpu":{"shares":1024,"quota":50000,"period":100000,"cpus":"0-1","mems":"0"}}"#;
        let v1 = FakeTree::v1();
        v1.create("/c1", Some(&resources(json)));
        let d = v1.dir("cpu,cpuacct", "c1");
        assert_eq!(read(&d, "cpu.shares"), "1024");
        assert_eq!(read(&d, "cpu.cfs_quota_us"), "50000");
        assert_eq!(read(&d, "cpu.cfs_period_us"), "100000");
        let s = v1.dir("cpuset", "c1");
        assert_eq!((read(&s, "cpuset.cpus").as_str(), read(&s, "cpuset.mems").as_str()), ("0-1", "0"));

        let v2 = FakeTree::v2();
        v2.create("/c1", Some(&resources(json)));
        let d = v2.dir("", "c1");
        assert_eq!(read(&d, "cpu.weight"), "39");
        assert_eq!(read(&d, "cpu.max"), "50000 100000");
        assert_eq!((read(&d, "cpuset.cpus").as_str(), read(&d, "cpuset.mems").as_str()), ("0-1", "0"));
    }

    #[test]
    fn realtime_cpu_is_v1_only() {
        let v1 = FakeTree::v1();
        v1.create("/c1", Some(&resources(r#"{"cpu":{"realtimeRuntime":950000,"realtimePeriod":1000000}}"#)));
        let d = v1.dir("cpu,cpuacct", "c1");
        assert_eq!(read(&d, "cpu.rt_runtime_us"), "950000");
        assert_eq!(read(&d, "cpu.rt_period_us"), "1000000");
        let e = FakeTree::v2().try_create("/c1", Some(&resources(r#"{"cpu":{"realtimeRuntime":1}}"#))).unwrap_err();
        assert!(e.to_string().contains("realtime"), "{e}");
    }

    #[test]
    fn pids_limit_and_unlimited() {
        let t = FakeTree::v1();
        t.create("/c1", Some(&resources(r#"{"pids":{"limit":42}}"#)));
        assert_eq!(read(&t.dir("pids", "c1"), "pids.max"), "42");
        t.create("/c2", Some(&resources(r#"{"pids":{"limit":-1}}"#)));
        assert_eq!(read(&t.dir("pids", "c2"), "pids.max"), "max");
    }

    #[test]
    fn blkio_v1_and_io_v2() {
        let json = r#"{"blockIO":{"weight":500,"weightDevice":[{"major":8,"minor":0,"weight":300}],
            "throttleReadBpsDevice":[{"major":8,"minor":0,"rate":1048576}],
            "throttleWriteIOPSDevice":[{"major":8,"minor":16,"rate":100}]}}"#;
        let v1 = FakeTree::v1();
        v1.create("/c1", Some(&resources(json)));
        let d = v1.dir("blkio", "c1");
        assert_eq!(read(&d, "blkio.weight"), "500");
        assert_eq!(read(&d, "blkio.weight_device"), "8:0 300");
        assert_eq!(read(&d, "blkio.throttle.read_bps_device"), "8:0 1048576");
        assert_eq!(read(&d, "blkio.throttle.write_iops_device"), "8:16 100");

        let v2 = FakeTree::v2();
        v2.create("/c1", Some(&resources(r#"{"blockIO":{"weight":500}}"#)));
        assert_eq!(read(&v2.dir("", "c1"), "io.weight"), "default 4950", "no BFQ: converted to io.weight");
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(1000), 10_000);
        v2.create(
            "/c2",
            Some(&resources(r#"{"blockIO":{"throttleWriteIOPSDevice":[{"major":8,"minor":16,"rate":100}]}}"#)),
        );
        assert_eq!(read(&v2.dir("", "c2"), "io.max"), "8:16 wiops=100");
    }

    #[test]
    fn hugetlb_limits_by_page_size() {
        let json = r#"{"hugepageLimits":[{"pageSize":"2MB","limit":4194304}]}"#;
        let v1 = FakeTree::v1();
        v1.create("/c1", Some(&resources(json)));
        assert_eq!(read(&v1.dir("hugetlb", "c1"), "hugetlb.2MB.limit_in_bytes"), "4194304");
        let v2 = FakeTree::v2();
        v2.create("/c1", Some(&resources(json)));
        assert_eq!(read(&v2.dir("", "c1"), "hugetlb.2MB.max"), "4194304");
        for bad in ["../x", "1€B", "€MB", "MB", "2mB", "2M"] {
            let json = format!(r#"{{"hugepageLimits":[{{"pageSize":"{bad}","limit":1}}]}}"#);
            let e = v1.try_create("/c2", Some(&resources(&json)));
            assert!(e.unwrap_err().to_string().contains("hugepage size"), "{bad}");
        }
    }

    #[test]
    fn v1_device_rules_in_order() {
        let t = FakeTree::v1();
        // The fake file keeps only the last write, so check each rule's text by
        // applying one rule at a time.
        t.create("/c1", Some(&resources(r#"{"devices":[{"allow":false,"access":"rwm"}]}"#)));
        assert_eq!(read(&t.dir("devices", "c1"), "devices.deny"), "a *:* rwm");
        t.create(
            "/c2",
            Some(&resources(r#"{"devices":[{"allow":true,"type":"c","major":1,"minor":3,"access":"rw"}]}"#)),
        );
        assert_eq!(read(&t.dir("devices", "c2"), "devices.allow"), "c 1:3 rw");
        let e = t.try_create("/c3", Some(&resources(r#"{"devices":[{"allow":true,"access":"rwx"}]}"#)));
        assert!(e.unwrap_err().to_string().contains("device access"));
        // v2: ignored (with one warning), not an error.
        FakeTree::v2().create("/c1", Some(&resources(r#"{"devices":[{"allow":false,"access":"rwm"}]}"#)));
    }

    #[test]
    fn unified_is_v2_only_and_names_files_in_the_cgroup() {
        let v2 = FakeTree::v2();
        v2.create("/c1", Some(&resources(r#"{"unified":{"memory.high":"1000000"}}"#)));
        assert_eq!(read(&v2.dir("", "c1"), "memory.high"), "1000000");
        assert!(v2.try_create("/c2", Some(&resources(r#"{"unified":{"../cgroup.procs":"1"}}"#))).is_err());
        assert!(FakeTree::v1().try_create("/c1", Some(&resources(r#"{"unified":{"a":"1"}}"#))).is_err());
    }

    #[test]
    fn a_missing_controller_is_named() {
        let t = FakeTree::v1_without("hugetlb");
        let e = t.try_create("/c1", Some(&resources(r#"{"hugepageLimits":[{"pageSize":"2MB","limit":1}]}"#)));
        let e = e.unwrap_err();
        assert!(matches!(e, CgroupError::Unsupported { controller: "hugetlb", .. }), "{e}");
    }
}
