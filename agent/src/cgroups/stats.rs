//! Statistics in Kata's `CgroupStats` shape, from the v1 or v2 files.
//!
//! Which file feeds which field follows what a Kata runtime expects (the same
//! fields its own agent fills). A missing or unparsable file reads as zero, and
//! nothing here can panic: statistics are advisory, the agent is PID 1.
//!
//! | field | v1 | v2 |
//! | --- | --- | --- |
//! | cpu_usage total / percpu | `cpuacct.usage`, `cpuacct.usage_percpu` | `cpu.stat` usage_usec ×1000 / none |
//! | cpu_usage kernel / user | `cpuacct.usage_sys`/`_user`, else `cpuacct.stat` ticks | `cpu.stat` system_usec / user_usec |
//! | throttling | `cpu.stat` nr_periods, nr_throttled, throttled_time | `cpu.stat` …, throttled_usec ×1000 |
//! | memory usage | `memory.{usage_in_bytes,max_usage_in_bytes,failcnt,limit_in_bytes}` | `memory.current`, `memory.peak`, `memory.events` max, `memory.max` |
//! | swap / kernel | `memory.memsw.*` / `memory.kmem.*` | `memory.swap.{current,peak,max}`, `memory.swap.events` fail / `memory.stat` kernel |
//! | cache, stats | `memory.stat` cache, all keys | `memory.stat` file, all keys |
//! | pids | `pids.current`, `pids.max` | same |
//! | blkio | `blkio.*_recursive` (throttle files when CFQ/BFQ ones are empty) | `io.stat` rbytes/wbytes, rios/wios |
//! | hugetlb | `hugetlb.<size>.{usage_in_bytes,max_usage_in_bytes,failcnt}` | `hugetlb.<size>.current`, `.events` max |

use std::collections::HashMap;
use std::path::Path;

use protocols::agent::{
    BlkioStats, BlkioStatsEntry, CgroupStats, CpuStats, CpuUsage, HugetlbStats, MemoryData, MemoryStats, PidsStats,
    ThrottlingData,
};

use super::Dirs;

/// USER_HZ: `cpuacct.stat` counts in these ticks; fixed at 100 in the kernel ABI.
const NS_PER_TICK: u64 = 1_000_000_000 / 100;

pub(super) fn collect(dirs: &Dirs) -> CgroupStats {
    let mut s = CgroupStats::new();
    let v2 = dirs.v2;
    let cpu_dir = dirs.get("cpu").or_else(|| v2.then(|| dirs.all[0].as_path()));
    if let Some(d) = cpu_dir {
        s.cpu_stats = protobuf::MessageField::some(cpu(d, dirs.get("cpuacct"), v2));
    }
    if let Some(d) = dirs.get("memory") {
        s.memory_stats = protobuf::MessageField::some(if v2 { memory_v2(d) } else { memory_v1(d) });
    }
    if let Some(d) = dirs.get("pids") {
        let mut p = PidsStats::new();
        p.current = read_u64(d, "pids.current");
        p.limit = read_u64(d, "pids.max");
        s.pids_stats = protobuf::MessageField::some(p);
    }
    if let Some(d) = dirs.get(if v2 { "io" } else { "blkio" }) {
        s.blkio_stats = protobuf::MessageField::some(if v2 { blkio_v2(d) } else { blkio_v1(d) });
    }
    if let Some(d) = dirs.get("hugetlb") {
        s.hugetlb_stats = hugetlb(d, v2);
    }
    s
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_default()
}

/// A single number; `max` and garbage read as 0, as Kata reports an unlimited value.
fn read_u64(dir: &Path, file: &str) -> u64 {
    read(dir, file).trim().parse().unwrap_or(0)
}

/// `key value` lines (`memory.stat`, `cpu.stat`, `memory.events`, ...).
pub(super) fn flat_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn cpu(cpu_dir: &Path, cpuacct_dir: Option<&Path>, v2: bool) -> CpuStats {
    let stat = flat_keyed(&read(cpu_dir, "cpu.stat"));
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    let mut usage = CpuUsage::new();
    let mut throttling = ThrottlingData::new();
    throttling.periods = get("nr_periods");
    throttling.throttled_periods = get("nr_throttled");
    if v2 {
        usage.total_usage = get("usage_usec").saturating_mul(1000);
        usage.usage_in_usermode = get("user_usec").saturating_mul(1000);
        usage.usage_in_kernelmode = get("system_usec").saturating_mul(1000);
        throttling.throttled_time = get("throttled_usec").saturating_mul(1000);
    } else {
        throttling.throttled_time = get("throttled_time");
        if let Some(d) = cpuacct_dir {
            usage.total_usage = read_u64(d, "cpuacct.usage");
            usage.percpu_usage =
                read(d, "cpuacct.usage_percpu").split_whitespace().filter_map(|v| v.parse().ok()).collect();
            if d.join("cpuacct.usage_user").exists() {
                usage.usage_in_usermode = read_u64(d, "cpuacct.usage_user");
                usage.usage_in_kernelmode = read_u64(d, "cpuacct.usage_sys");
            } else {
                let ticks = flat_keyed(&read(d, "cpuacct.stat"));
                usage.usage_in_usermode = ticks.get("user").copied().unwrap_or(0).saturating_mul(NS_PER_TICK);
                usage.usage_in_kernelmode = ticks.get("system").copied().unwrap_or(0).saturating_mul(NS_PER_TICK);
            }
        }
    }
    let mut c = CpuStats::new();
    c.cpu_usage = protobuf::MessageField::some(usage);
    c.throttling_data = protobuf::MessageField::some(throttling);
    c
}

fn memory_data(dir: &Path, prefix: &str) -> MemoryData {
    let mut m = MemoryData::new();
    m.usage = read_u64(dir, &format!("{prefix}.usage_in_bytes"));
    m.max_usage = read_u64(dir, &format!("{prefix}.max_usage_in_bytes"));
    m.failcnt = read_u64(dir, &format!("{prefix}.failcnt"));
    m.limit = read_u64(dir, &format!("{prefix}.limit_in_bytes"));
    m
}

fn memory_v1(dir: &Path) -> MemoryStats {
    let mut m = MemoryStats::new();
    m.usage = protobuf::MessageField::some(memory_data(dir, "memory"));
    m.swap_usage = protobuf::MessageField::some(memory_data(dir, "memory.memsw"));
    m.kernel_usage = protobuf::MessageField::some(memory_data(dir, "memory.kmem"));
    m.use_hierarchy = read_u64(dir, "memory.use_hierarchy") == 1;
    m.stats = flat_keyed(&read(dir, "memory.stat"));
    m.cache = m.stats.get("cache").copied().unwrap_or(0);
    m
}

fn memory_v2(dir: &Path) -> MemoryStats {
    let events = flat_keyed(&read(dir, "memory.events"));
    let swap_events = flat_keyed(&read(dir, "memory.swap.events"));
    let mut m = MemoryStats::new();
    m.stats = flat_keyed(&read(dir, "memory.stat"));
    let mut usage = MemoryData::new();
    usage.usage = read_u64(dir, "memory.current");
    usage.max_usage = read_u64(dir, "memory.peak");
    usage.failcnt = events.get("max").copied().unwrap_or(0);
    usage.limit = read_u64(dir, "memory.max");
    let mut swap = MemoryData::new();
    swap.usage = read_u64(dir, "memory.swap.current");
    swap.max_usage = read_u64(dir, "memory.swap.peak");
    swap.failcnt = swap_events.get("fail").copied().unwrap_or(0);
    swap.limit = read_u64(dir, "memory.swap.max");
    let mut kernel = MemoryData::new();
    kernel.usage = m.stats.get("kernel").copied().unwrap_or(0);
    m.usage = protobuf::MessageField::some(usage);
    m.swap_usage = protobuf::MessageField::some(swap);
    m.kernel_usage = protobuf::MessageField::some(kernel);
    m.use_hierarchy = true;
    m.cache = m.stats.get("file").copied().unwrap_or(0);
    m
}

/// `8:0 Read 4096` / `8:0 4096` lines; `Total` and malformed lines are skipped.
pub(super) fn blkio_entries(text: &str) -> Vec<BlkioStatsEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dev, op, value) = match f.as_slice() {
                [dev, op, value] => (*dev, *op, *value),
                [dev, value] => (*dev, "", *value),
                _ => return None,
            };
            let (major, minor) = dev.split_once(':')?;
            let mut e = BlkioStatsEntry::new();
            e.major = major.parse().ok()?;
            e.minor = minor.parse().ok()?;
            e.op = op.to_owned();
            e.value = value.parse().ok()?;
            Some(e)
        })
        .collect()
}

fn blkio_v1(dir: &Path) -> BlkioStats {
    // The CFQ/BFQ files are empty (or absent) with other schedulers, the
    // throttle ones always count.
    let first =
        |files: &[&str]| files.iter().map(|f| blkio_entries(&read(dir, f))).find(|e| !e.is_empty()).unwrap_or_default();
    let mut b = BlkioStats::new();
    b.io_service_bytes_recursive = first(&[
        "blkio.io_service_bytes_recursive",
        "blkio.throttle.io_service_bytes_recursive",
        "blkio.throttle.io_service_bytes",
    ]);
    b.io_serviced_recursive =
        first(&["blkio.io_serviced_recursive", "blkio.throttle.io_serviced_recursive", "blkio.throttle.io_serviced"]);
    b.io_queued_recursive = first(&["blkio.io_queued_recursive"]);
    b.io_service_time_recursive = first(&["blkio.io_service_time_recursive"]);
    b.io_wait_time_recursive = first(&["blkio.io_wait_time_recursive"]);
    b.io_merged_recursive = first(&["blkio.io_merged_recursive"]);
    b.io_time_recursive = first(&["blkio.time_recursive"]);
    b.sectors_recursive = first(&["blkio.sectors_recursive"]);
    b
}

/// `io.stat`: `8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0` per device.
fn blkio_v2(dir: &Path) -> BlkioStats {
    let mut b = BlkioStats::new();
    for line in read(dir, "io.stat").lines() {
        let mut f = line.split_whitespace();
        let Some((major, minor)) = f.next().and_then(|d| d.split_once(':')) else { continue };
        let (Ok(major), Ok(minor)) = (major.parse::<u64>(), minor.parse::<u64>()) else { continue };
        for kv in f {
            let Some((k, v)) = kv.split_once('=') else { continue };
            let Ok(value) = v.parse::<u64>() else { continue };
            let (list, op) = match k {
                "rbytes" => (&mut b.io_service_bytes_recursive, "Read"),
                "wbytes" => (&mut b.io_service_bytes_recursive, "Write"),
                "rios" => (&mut b.io_serviced_recursive, "Read"),
                "wios" => (&mut b.io_serviced_recursive, "Write"),
                _ => continue,
            };
            let mut e = BlkioStatsEntry::new();
            e.major = major;
            e.minor = minor;
            e.op = op.to_owned();
            e.value = value;
            list.push(e);
        }
    }
    b
}

fn hugetlb(dir: &Path, v2: bool) -> HashMap<String, HugetlbStats> {
    let usage_suffix = if v2 { ".current" } else { ".usage_in_bytes" };
    let Ok(entries) = std::fs::read_dir(dir) else { return HashMap::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let size = name.strip_prefix("hugetlb.")?.strip_suffix(usage_suffix)?.to_owned();
            if size.contains('.') {
                return None;
            }
            let mut h = HugetlbStats::new();
            h.usage = read_u64(dir, &name);
            if v2 {
                h.failcnt = flat_keyed(&read(dir, &format!("hugetlb.{size}.events"))).get("max").copied().unwrap_or(0);
            } else {
                h.max_usage = read_u64(dir, &format!("hugetlb.{size}.max_usage_in_bytes"));
                h.failcnt = read_u64(dir, &format!("hugetlb.{size}.failcnt"));
            }
            Some((size, h))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{write, FakeTree};
    use super::*;

    #[test]
    fn v1_stats_from_every_controller() {
        let t = FakeTree::v1();
        let m = t.create("/c1", None);
        let acct = t.dir("cpu,cpuacct", "c1");
        write(&acct, "cpuacct.usage", "5000\n");
        write(&acct, "cpuacct.usage_percpu", "3000 2000 \n");
        write(&acct, "cpuacct.stat", "user 3\nsystem 1\n");
        write(&acct, "cpu.stat", "nr_periods 10\nnr_throttled 2\nthrottled_time 777\n");
        let mem = t.dir("memory", "c1");
        for (f, v) in [
            ("memory.usage_in_bytes", "4096"),
            ("memory.max_usage_in_bytes", "8192"),
            ("memory.failcnt", "3"),
            ("memory.limit_in_bytes", "1048576"),
            ("memory.memsw.usage_in_bytes", "5000"),
            ("memory.kmem.usage_in_bytes", "100"),
            ("memory.use_hierarchy", "1"),
            ("memory.stat", "cache 123\nrss 456\ntotal_cache 789\nbogus line here\n"),
        ] {
            write(&mem, f, v);
        }
        write(&t.dir("pids", "c1"), "pids.current", "2\n");
        write(&t.dir("pids", "c1"), "pids.max", "max\n");
        let blk = t.dir("blkio", "c1");
        write(&blk, "blkio.io_service_bytes_recursive", "Total 0\n");
        write(&blk, "blkio.throttle.io_service_bytes_recursive", "8:0 Read 4096\n8:0 Write 512\nTotal 4608\n");
        write(&blk, "blkio.sectors_recursive", "8:0 9\n");
        let huge = t.dir("hugetlb", "c1");
        write(&huge, "hugetlb.2MB.usage_in_bytes", "2097152");
        write(&huge, "hugetlb.2MB.max_usage_in_bytes", "4194304");
        write(&huge, "hugetlb.2MB.failcnt", "1");
        write(&huge, "hugetlb.2MB.limit_in_bytes", "4194304");

        let s = m.stats();
        let cpu = s.cpu_stats.cpu_usage.clone().unwrap();
        assert_eq!((cpu.total_usage, cpu.percpu_usage.as_slice()), (5000, &[3000, 2000][..]));
        assert_eq!((cpu.usage_in_usermode, cpu.usage_in_kernelmode), (30_000_000, 10_000_000), "ticks -> ns");
        let th = s.cpu_stats.throttling_data.clone().unwrap();
        assert_eq!((th.periods, th.throttled_periods, th.throttled_time), (10, 2, 777));
        let mem = s.memory_stats.clone().unwrap();
        let u = mem.usage.clone().unwrap();
        assert_eq!((u.usage, u.max_usage, u.failcnt, u.limit), (4096, 8192, 3, 1_048_576));
        assert_eq!(mem.swap_usage.usage, 5000);
        assert_eq!(mem.kernel_usage.usage, 100);
        assert!(mem.use_hierarchy);
        assert_eq!(mem.cache, 123);
        assert_eq!(mem.stats.get("total_cache"), Some(&789));
        assert_eq!(mem.stats.len(), 3, "the bogus line is skipped: {:?}", mem.stats);
        assert_eq!((s.pids_stats.current, s.pids_stats.limit), (2, 0));
        let b = &s.blkio_stats.io_service_bytes_recursive;
        assert_eq!(b.len(), 2, "the empty CFQ file falls back to the throttle one: {b:?}");
        assert_eq!((b[0].major, b[0].minor, b[0].op.as_str(), b[0].value), (8, 0, "Read", 4096));
        assert_eq!((s.blkio_stats.sectors_recursive[0].op.as_str(), s.blkio_stats.sectors_recursive[0].value), ("", 9));
        let h = &s.hugetlb_stats["2MB"];
        assert_eq!((h.usage, h.max_usage, h.failcnt), (2_097_152, 4_194_304, 1));
        assert_eq!(s.hugetlb_stats.len(), 1);
    }

    #[test]
    fn v2_stats_from_unified_files() {
        let t = FakeTree::v2();
        let m = t.create("/c1", None);
        let d = t.dir("", "c1");
        write(
            &d,
            "cpu.stat",
            "usage_usec 50\nuser_usec 30\nsystem_usec 20\nnr_periods 4\nnr_throttled 1\nthrottled_usec 7\n",
        );
        write(&d, "memory.current", "4096\n");
        write(&d, "memory.peak", "8192\n");
        write(&d, "memory.max", "max\n");
        write(&d, "memory.events", "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n");
        write(&d, "memory.swap.current", "10\n");
        write(&d, "memory.stat", "anon 100\nfile 200\nkernel 300\n");
        write(&d, "pids.current", "3\n");
        write(&d, "pids.max", "64\n");
        write(&d, "io.stat", "8:0 rbytes=4096 wbytes=512 rios=2 wios=1 dbytes=0 dios=0\n");
        write(&d, "hugetlb.2MB.current", "2097152\n");
        write(&d, "hugetlb.2MB.events", "max 2\n");
        write(&d, "hugetlb.2MB.events.local", "max 2\n");

        let s = m.stats();
        let cpu = s.cpu_stats.cpu_usage.clone().unwrap();
        assert_eq!((cpu.total_usage, cpu.usage_in_usermode, cpu.usage_in_kernelmode), (50_000, 30_000, 20_000));
        assert_eq!(s.cpu_stats.throttling_data.throttled_time, 7000);
        let mem = s.memory_stats.clone().unwrap();
        let u = mem.usage.clone().unwrap();
        assert_eq!((u.usage, u.max_usage, u.failcnt, u.limit), (4096, 8192, 5, 0));
        assert_eq!((mem.cache, mem.kernel_usage.usage, mem.swap_usage.usage), (200, 300, 10));
        assert!(mem.use_hierarchy);
        assert_eq!((s.pids_stats.current, s.pids_stats.limit), (3, 64));
        let bytes = &s.blkio_stats.io_service_bytes_recursive;
        assert_eq!(
            bytes.iter().map(|e| (e.op.as_str(), e.value)).collect::<Vec<_>>(),
            [("Read", 4096), ("Write", 512)]
        );
        assert_eq!(s.blkio_stats.io_serviced_recursive.len(), 2);
        assert_eq!(s.hugetlb_stats.len(), 1);
        assert_eq!((s.hugetlb_stats["2MB"].usage, s.hugetlb_stats["2MB"].failcnt), (2_097_152, 2));
    }

    #[test]
    fn garbage_never_panics() {
        assert!(blkio_entries("x\n8:0 Read\n:: a b\n8:x Read 1\n8:0 Read -1\n").is_empty());
        assert_eq!(flat_keyed("a\nb 1 2\nc 3\n").len(), 1);
        let t = FakeTree::v2();
        let m = t.create("/c1", None);
        write(&t.dir("", "c1"), "io.stat", "junk\n8:0 rbytes=x wbytes=\n");
        let s = m.stats();
        assert!(s.blkio_stats.io_service_bytes_recursive.is_empty());
    }
}
