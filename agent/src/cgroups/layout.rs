//! Where the cgroup hierarchies are and where a container's cgroup goes in them.
//!
//! A [`Layout`] is the list of mounted hierarchies (one per v1 mount, or the v2
//! unified tree) together with the agent's own cgroup in each, read from
//! `/proc/self/mountinfo` and `/proc/self/cgroup`. It is plain data, so unit tests
//! build one over a temporary directory and the whole manager runs against that
//! fake tree unprivileged: this is the seam between the manager and the kernel.
//!
//! [`resolve`] turns an OCI `linux.cgroupsPath` into a path relative to a
//! hierarchy's mount point: absolute paths are taken from the hierarchy root,
//! relative ones go under the agent's own cgroup in that hierarchy plus a parent
//! directory (`wisp`), as runc does, and systemd's `slice:prefix:name` is mapped to
//! the directory systemd would have used (there is no systemd in the guest).

use std::path::{Component, Path, PathBuf};

use super::CgroupError;

/// Where a relative `cgroupsPath` goes, under the agent's own cgroup.
pub const DEFAULT_PARENT: &str = "wisp";

/// The v1 controllers the manager drives (others, such as `net_cls`, are ignored).
pub const V1_CONTROLLERS: &[&str] =
    &["cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer", "hugetlb"];

/// One mounted v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Mount {
    /// The controllers bound to this hierarchy (`["cpu", "cpuacct"]` when co-mounted).
    pub controllers: Vec<String>,
    /// Its mount point, e.g. `/sys/fs/cgroup/memory`.
    pub mount: PathBuf,
    /// The agent's own cgroup in it, relative to the mount point (`""` at the root).
    pub own: String,
}

/// The mounted cgroup hierarchies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    V1(Vec<V1Mount>),
    V2 {
        /// The unified mount point, e.g. `/sys/fs/cgroup`.
        mount: PathBuf,
        /// The agent's own cgroup, relative to the mount point.
        own: String,
    },
}

impl Layout {
    /// Reads the layout of the running system.
    pub fn discover() -> Result<Layout, CgroupError> {
        let read =
            |p: &str| std::fs::read_to_string(p).map_err(|source| CgroupError::Io { path: PathBuf::from(p), source });
        Layout::parse(&read("/proc/self/mountinfo")?, &read("/proc/self/cgroup")?)
    }

    /// The layout described by `/proc/self/mountinfo` and `/proc/self/cgroup` texts.
    ///
    /// v2 when `/sys/fs/cgroup` itself is a cgroup2 mount; otherwise every v1 mount
    /// with a controller we drive (a hybrid host's `/sys/fs/cgroup/unified` is v1
    /// for our purposes: its controllers are all bound to v1).
    pub fn parse(mountinfo: &str, proc_self_cgroup: &str) -> Result<Layout, CgroupError> {
        let mut v1 = Vec::new();
        let mut v2_mount = None;
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else { continue };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.len() < 5 || post.len() < 3 {
                continue;
            }
            let mount = PathBuf::from(crate::mountinfo::unescape(pre[4]));
            match post[0] {
                "cgroup2" if mount == Path::new("/sys/fs/cgroup") => v2_mount = Some(mount),
                "cgroup" => {
                    let controllers: Vec<String> =
                        post[2].split(',').filter(|o| V1_CONTROLLERS.contains(o)).map(str::to_owned).collect();
                    if !controllers.is_empty() {
                        v1.push(V1Mount { controllers, mount, own: String::new() });
                    }
                }
                _ => {}
            }
        }
        if let Some(mount) = v2_mount {
            let own = proc_self_cgroup
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(|p| p.trim_start_matches('/').to_owned())
                .unwrap_or_default();
            return Ok(Layout::V2 { mount, own });
        }
        if v1.is_empty() {
            return Err(CgroupError::NoHierarchy);
        }
        for m in &mut v1 {
            m.own = own_v1_cgroup(proc_self_cgroup, &m.controllers);
        }
        Ok(Layout::V1(v1))
    }

    #[cfg(test)]
    pub fn is_v2(&self) -> bool {
        matches!(self, Layout::V2 { .. })
    }
}

/// The agent's cgroup in the v1 hierarchy holding `controllers`, from a
/// `/proc/self/cgroup` line such as `4:memory:/process_api/abc` or `2:cpu,cpuacct:/`.
fn own_v1_cgroup(proc_self_cgroup: &str, controllers: &[String]) -> String {
    proc_self_cgroup
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, names, path) = (f.next()?, f.next()?, f.next()?);
            names.split(',').any(|n| controllers.iter().any(|c| c == n)).then_some(path)
        })
        .next()
        .map(|p| p.trim_start_matches('/').to_owned())
        .unwrap_or_default()
}

/// Where `cgroups_path` lives in a hierarchy whose own cgroup is `own`: a
/// normalized path relative to the mount point, never empty, never escaping it.
pub fn resolve(cgroups_path: &str, own: &str, parent: &str) -> Result<String, CgroupError> {
    let invalid = |why: &str| CgroupError::InvalidPath { path: cgroups_path.to_owned(), why: why.to_owned() };
    if cgroups_path.is_empty() {
        return Err(invalid("empty (pass the container id when the spec has none)"));
    }
    let joined = if let Some(path) = systemd_path(cgroups_path).map_err(|w| invalid(&w))? {
        path
    } else if cgroups_path.starts_with('/') {
        cgroups_path.to_owned()
    } else {
        format!("{own}/{parent}/{cgroups_path}")
    };
    let mut parts = Vec::new();
    for c in Path::new(&joined).components() {
        match c {
            Component::Normal(p) => {
                parts.push(p.to_str().ok_or_else(|| invalid("not UTF-8"))?.to_owned());
            }
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err(invalid("'..' is not allowed")),
            Component::Prefix(_) => return Err(invalid("not a Linux path")),
        }
    }
    if parts.is_empty() {
        return Err(invalid("names the root cgroup"));
    }
    Ok(parts.join("/"))
}

/// `slice:prefix:name` -> `Some("a.slice/a-b.slice/prefix-name.scope")`, as systemd
/// would place a transient scope; `None` for a plain path.
fn systemd_path(cgroups_path: &str) -> Result<Option<String>, String> {
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    if parts.len() != 3 || cgroups_path.starts_with('/') {
        return Ok(None);
    }
    let (slice, prefix, name) = (parts[0], parts[1], parts[2]);
    if name.is_empty() {
        return Err("systemd path has no unit name".into());
    }
    let slice = if slice.is_empty() { "system.slice" } else { slice };
    let mut path = expand_slice(slice)?;
    if !path.is_empty() {
        path.push('/');
    }
    if name.ends_with(".slice") {
        // A slice as the unit: the container is the slice itself.
        path.push_str(&expand_slice(name)?);
    } else if prefix.is_empty() {
        path.push_str(&format!("{name}.scope"));
    } else {
        path.push_str(&format!("{prefix}-{name}.scope"));
    }
    Ok(Some(path))
}

/// systemd's slice nesting: `a-b-c.slice` -> `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
fn expand_slice(slice: &str) -> Result<String, String> {
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(format!("{slice:?} is not a slice name (no .slice suffix)"));
    };
    if stem == "-" {
        return Ok(String::new());
    }
    if stem.is_empty() || stem.contains('/') || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return Err(format!("{slice:?} is not a valid slice name"));
    }
    let mut out = Vec::new();
    let mut acc = String::new();
    for comp in stem.split('-') {
        if !acc.is_empty() {
            acc.push('-');
        }
        acc.push_str(comp);
        out.push(format!("{acc}.slice"));
    }
    Ok(out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /mnt/with\\040space rw - ext4 /dev/vda rw
";
    const HOST_CGROUP: &str = "9:name=systemd:/\n4:memory:/process_api/bbca\n1:cpu,cpuacct:/\n0::/\n";

    #[test]
    fn v1_mounts_and_own_cgroups_per_hierarchy() {
        let Layout::V1(m) = Layout::parse(HOST_MOUNTINFO, HOST_CGROUP).unwrap() else { panic!("expected v1") };
        assert_eq!(m.len(), 2, "name=systemd and the hybrid unified mount are not ours: {m:?}");
        assert_eq!(m[0].controllers, ["cpu", "cpuacct"]);
        assert_eq!(m[0].own, "");
        assert_eq!(m[1].mount, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(m[1].own, "process_api/bbca");
    }

    #[test]
    fn v2_when_the_root_is_cgroup2() {
        let mi = "25 23 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let l = Layout::parse(mi, "0::/agent.scope\n").unwrap();
        assert_eq!(l, Layout::V2 { mount: "/sys/fs/cgroup".into(), own: "agent.scope".into() });
        assert!(matches!(Layout::parse("", ""), Err(CgroupError::NoHierarchy)));
    }

    #[test]
    fn absolute_paths_start_at_the_root() {
        assert_eq!(resolve("/kata/c1", "process_api/x", "wisp").unwrap(), "kata/c1");
        assert_eq!(resolve("//a/./b/", "", "wisp").unwrap(), "a/b");
    }

    #[test]
    fn relative_paths_go_under_the_own_cgroup_and_parent() {
        assert_eq!(resolve("c1", "process_api/x", "wisp").unwrap(), "process_api/x/wisp/c1");
        assert_eq!(resolve("pod/c1", "", "wisp").unwrap(), "wisp/pod/c1");
    }

    #[test]
    fn systemd_paths_map_to_scopes_in_expanded_slices() {
        assert_eq!(resolve("system.slice:docker:abc", "", "wisp").unwrap(), "system.slice/docker-abc.scope");
        assert_eq!(
            resolve("kubepods-besteffort.slice:cri:abc", "", "wisp").unwrap(),
            "kubepods.slice/kubepods-besteffort.slice/cri-abc.scope"
        );
        assert_eq!(resolve(":cri:abc", "", "wisp").unwrap(), "system.slice/cri-abc.scope");
        assert_eq!(resolve("-.slice::abc", "", "wisp").unwrap(), "abc.scope");
        assert_eq!(resolve("a.slice:p:b-c.slice", "", "wisp").unwrap(), "a.slice/b.slice/b-c.slice");
    }

    #[test]
    fn bad_paths_are_refused_with_the_reason() {
        for (p, why) in [
            ("", "empty"),
            ("/", "root"),
            ("/a/../../etc", ".."),
            ("../x", ".."),
            ("notaslice:p:n", "not a slice"),
            ("a--b.slice:p:n", "not a valid slice"),
            ("a.slice:p:", "no unit name"),
        ] {
            let e = resolve(p, "", "wisp").unwrap_err().to_string();
            assert!(e.contains(why), "{p:?}: {e}");
        }
    }
}
