//! OnlineCPUMem: after the host hot-plugs vCPUs or memory, the guest kernel
//! may leave them offline; the agent writes `1` to their sysfs `online` files.

use std::path::Path;
use std::time::Duration;

use crate::error::AgentError;

/// How long OnlineCPUMem waits for `nb_cpus` CPUs to show up.
pub const CPU_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);

/// Writes `1` to every `<dir>/<prefix>N/online` that reads `0`; returns how many.
fn online_all(dir: &Path, prefix: &str) -> Result<usize, AgentError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(AgentError::Io { what: format!("cannot list {}", dir.display()), source }),
    };
    let mut onlined = 0;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let is_unit = name.to_str().and_then(|n| n.strip_prefix(prefix)).is_some_and(|n| n.parse::<u32>().is_ok());
        let online = entry.path().join("online");
        if !is_unit || std::fs::read_to_string(&online).map(|s| s.trim() != "0").unwrap_or(true) {
            continue;
        }
        std::fs::write(&online, "1")
            .map_err(|source| AgentError::Io { what: format!("cannot online {}", online.display()), source })?;
        onlined += 1;
    }
    Ok(onlined)
}

/// CPUs online according to `<cpu_dir>/online` ("0-3,5").
fn count_online(cpu_dir: &Path) -> usize {
    let Ok(list) = std::fs::read_to_string(cpu_dir.join("online")) else { return 0 };
    list.trim()
        .split(',')
        .filter(|r| !r.is_empty())
        .map(|r| match r.split_once('-') {
            Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => 1,
        })
        .sum()
}

/// Onlines CPUs (and memory unless `cpu_only`) below `sys` (normally /sys),
/// then waits up to `wait` for `nb_cpus` CPUs (0: no check).
pub async fn online_cpu_mem(sys: &Path, nb_cpus: u32, cpu_only: bool, wait: Duration) -> Result<(), AgentError> {
    let cpu_dir = sys.join("devices/system/cpu");
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        online_all(&cpu_dir, "cpu")?;
        let online = count_online(&cpu_dir);
        if nb_cpus == 0 || online >= nb_cpus as usize {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AgentError::Timeout {
                what: format!("{nb_cpus} CPUs online (have {online})"),
                secs: wait.as_secs(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
    if !cpu_only {
        online_all(&sys.join("devices/system/memory"), "memory")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(root: &Path, path: &str, online: &str) {
        let d = root.join(path);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("online"), online).unwrap();
    }

    #[tokio::test]
    async fn offline_cpus_and_memory_are_onlined() {
        let sys = tempfile::tempdir().unwrap();
        let s = sys.path();
        unit(s, "devices/system/cpu/cpu1", "0\n");
        unit(s, "devices/system/cpu/cpu2", "1\n");
        unit(s, "devices/system/cpu/cpufreq", "0\n");
        std::fs::write(s.join("devices/system/cpu/online"), "0-2\n").unwrap();
        unit(s, "devices/system/memory/memory8", "0\n");
        online_cpu_mem(s, 3, false, CPU_WAIT).await.unwrap();
        let read = |p: &str| std::fs::read_to_string(s.join(p)).unwrap();
        assert_eq!(read("devices/system/cpu/cpu1/online"), "1");
        assert_eq!(read("devices/system/cpu/cpu2/online"), "1\n", "already online: untouched");
        assert_eq!(read("devices/system/cpu/cpufreq/online"), "0\n", "not a cpu");
        assert_eq!(read("devices/system/memory/memory8/online"), "1");
    }

    #[test]
    fn online_lists_are_counted() {
        let sys = tempfile::tempdir().unwrap();
        std::fs::write(sys.path().join("online"), "0-3,5,7-8\n").unwrap();
        assert_eq!(count_online(sys.path()), 7);
    }

    #[tokio::test]
    async fn too_few_cpus_is_a_timeout() {
        let sys = tempfile::tempdir().unwrap();
        unit(sys.path(), "devices/system/cpu/cpu0", "1");
        std::fs::write(sys.path().join("devices/system/cpu/online"), "0\n").unwrap();
        let e = online_cpu_mem(sys.path(), 4, true, Duration::from_millis(120)).await.unwrap_err();
        assert!(matches!(e, AgentError::Timeout { .. }), "{e}");
    }
}
