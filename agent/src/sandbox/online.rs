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

/// Onlines CPUs (and memory unless `cpu_only`) below `sys` (normally /sys),
/// waiting up to `wait` until this call has brought `nb_cpus` CPUs online (0: no
/// check). That is Kata's reading: the host asks for the CPUs it has just plugged,
/// which the guest may not have added yet when the request arrives.
pub async fn online_cpu_mem(sys: &Path, nb_cpus: u32, cpu_only: bool, wait: Duration) -> Result<(), AgentError> {
    let cpu_dir = sys.join("devices/system/cpu");
    let deadline = tokio::time::Instant::now() + wait;
    let mut onlined = 0;
    loop {
        onlined += online_all(&cpu_dir, "cpu")?;
        if onlined >= nb_cpus as usize {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AgentError::Timeout {
                what: format!("{nb_cpus} CPUs brought online (did {onlined})"),
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
        online_cpu_mem(s, 1, false, CPU_WAIT).await.unwrap();
        let read = |p: &str| std::fs::read_to_string(s.join(p)).unwrap();
        assert_eq!(read("devices/system/cpu/cpu1/online"), "1");
        assert_eq!(read("devices/system/cpu/cpu2/online"), "1\n", "already online: untouched");
        assert_eq!(read("devices/system/cpu/cpufreq/online"), "0\n", "not a cpu");
        assert_eq!(read("devices/system/memory/memory8/online"), "1");
    }

    #[tokio::test]
    async fn cpus_the_guest_adds_while_the_call_waits_are_onlined_and_counted() {
        let sys = tempfile::tempdir().unwrap();
        let s = sys.path().to_owned();
        unit(&s, "devices/system/cpu/cpu0", "1");
        let late = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(120)).await;
            unit(&late, "devices/system/cpu/cpu1", "0");
            tokio::time::sleep(Duration::from_millis(120)).await;
            unit(&late, "devices/system/cpu/cpu2", "0");
        });
        online_cpu_mem(&s, 2, true, CPU_WAIT).await.unwrap();
        for cpu in ["cpu1", "cpu2"] {
            let online = std::fs::read_to_string(s.join("devices/system/cpu").join(cpu).join("online")).unwrap();
            assert_eq!(online, "1", "{cpu}");
        }
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
