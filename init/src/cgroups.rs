//! Mounting the cgroup hierarchy containers will be placed in.
//!
//! cgroup v2 is used when the command line asks for it or when the kernel has no
//! v1 controller enabled; otherwise each v1 controller listed in `/proc/cgroups`
//! gets its own hierarchy, with `cpu` and `cpuacct` co-mounted the way systemd and
//! runc expect (`cpu,cpuacct` plus two symlinks).

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

const ROOT: &str = "/sys/fs/cgroup";

/// The chosen layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupPlan {
    V2,
    /// One entry per hierarchy: the mount options (controller list) and the
    /// symlinks that point at it.
    V1(Vec<V1Hierarchy>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Hierarchy {
    pub controllers: String,
    pub aliases: Vec<String>,
}

/// Enabled v1 controller names from `/proc/cgroups` text, in file order.
pub fn enabled_controllers(proc_cgroups: &str) -> Vec<String> {
    proc_cgroups
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[3] == "1").then(|| f[0].to_owned())
        })
        .collect()
}

/// Decides the layout from the command line's wish and the kernel's controllers.
pub fn plan(want_v2: Option<bool>, proc_cgroups: &str) -> CgroupPlan {
    let controllers = enabled_controllers(proc_cgroups);
    if want_v2 == Some(true) || controllers.is_empty() {
        return CgroupPlan::V2;
    }
    let has = |c: &str| controllers.iter().any(|x| x == c);
    let mut hierarchies = Vec::new();
    for c in &controllers {
        match c.as_str() {
            "cpu" if has("cpuacct") => hierarchies
                .push(V1Hierarchy { controllers: "cpu,cpuacct".into(), aliases: vec!["cpu".into(), "cpuacct".into()] }),
            "cpuacct" if has("cpu") => {}
            _ => hierarchies.push(V1Hierarchy { controllers: c.clone(), aliases: vec![] }),
        }
    }
    CgroupPlan::V1(hierarchies)
}

/// Mounts the hierarchy; failures are logged, not fatal (the agent reports a
/// missing controller when a container asks for it).
pub fn mount(log: &slog::Logger, want_v2: Option<bool>) {
    let proc_cgroups = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match plan(want_v2, &proc_cgroups) {
        CgroupPlan::V2 => {
            if let Err(e) = mount_one("cgroup2", ROOT, flags, None) {
                slog::warn!(log, "cannot mount cgroup2"; "error" => %e);
                return;
            }
            enable_v2_controllers(log, Path::new(ROOT));
            slog::debug!(log, "cgroup v2 mounted");
        }
        CgroupPlan::V1(hierarchies) => {
            if let Err(e) = mount_tmpfs(ROOT) {
                slog::warn!(log, "cannot mount tmpfs for cgroup v1"; "error" => %e);
                return;
            }
            for h in &hierarchies {
                let dir = format!("{ROOT}/{}", h.controllers);
                if let Err(e) = mount_one("cgroup", &dir, flags, Some(&h.controllers)) {
                    slog::warn!(log, "cannot mount cgroup v1 controller"; "controllers" => &h.controllers, "error" => %e);
                    continue;
                }
                for alias in &h.aliases {
                    let _ = std::os::unix::fs::symlink(&h.controllers, PathBuf::from(ROOT).join(alias));
                }
            }
            slog::debug!(log, "cgroup v1 mounted"; "hierarchies" => hierarchies.len());
        }
    }
}

fn mount_tmpfs(dir: &str) -> Result<(), std::io::Error> {
    std::fs::create_dir_all(dir)?;
    nix::mount::mount(
        Some("cgroup_root"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755"),
    )
    .map_err(std::io::Error::from)
}

fn mount_one(fstype: &str, dir: &str, flags: MsFlags, data: Option<&str>) -> Result<(), std::io::Error> {
    std::fs::create_dir_all(dir)?;
    nix::mount::mount(Some(fstype), dir, Some(fstype), flags, data).map_err(std::io::Error::from)
}

/// Delegates every available controller to children, so container cgroups created
/// under the root can use them.
fn enable_v2_controllers(log: &slog::Logger, root: &Path) {
    let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let request: Vec<String> = available.split_whitespace().map(|c| format!("+{c}")).collect();
    if request.is_empty() {
        return;
    }
    if let Err(e) = std::fs::write(root.join("cgroup.subtree_control"), request.join(" ")) {
        slog::warn!(log, "cannot enable cgroup v2 controllers"; "controllers" => available.trim(), "error" => %e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_CGROUPS: &str = "#subsys_name\thierarchy\tnum_cgroups\tenabled\n\
        cpuset\t0\t1\t1\ncpu\t0\t1\t1\ncpuacct\t0\t1\t1\nblkio\t0\t1\t1\nmemory\t0\t1\t1\n\
        devices\t0\t1\t1\nfreezer\t0\t1\t1\nperf_event\t0\t1\t0\nhugetlb\t0\t1\t1\npids\t0\t1\t1\n";

    #[test]
    fn disabled_controllers_are_skipped() {
        let c = enabled_controllers(PROC_CGROUPS);
        assert!(!c.contains(&"perf_event".to_string()));
        assert_eq!(c.len(), 9);
    }

    #[test]
    fn v1_co_mounts_cpu_and_cpuacct() {
        let CgroupPlan::V1(h) = plan(None, PROC_CGROUPS) else { panic!("expected v1") };
        let names: Vec<&str> = h.iter().map(|h| h.controllers.as_str()).collect();
        assert_eq!(names, ["cpuset", "cpu,cpuacct", "blkio", "memory", "devices", "freezer", "hugetlb", "pids"]);
        assert_eq!(h[1].aliases, ["cpu", "cpuacct"]);
    }

    #[test]
    fn v2_when_asked_or_when_v1_is_absent() {
        assert_eq!(plan(Some(true), PROC_CGROUPS), CgroupPlan::V2);
        assert_eq!(plan(None, "#subsys_name\thierarchy\tnum_cgroups\tenabled\n"), CgroupPlan::V2);
        assert_eq!(plan(Some(false), ""), CgroupPlan::V2, "v1 cannot be forced without controllers");
    }
}
