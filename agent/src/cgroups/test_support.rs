//! A fake cgroup tree in a temporary directory: v1 hierarchies or a v2 root as
//! ordinary directories with the files the kernel would show at the root, so the
//! manager's writes and reads are checked without root and without a kernel.

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use super::layout::V1Mount;
use super::{CgroupError, CgroupManager, Layout};

pub const V1_MOUNTS: &[&str] = &["cpu,cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer", "hugetlb"];

#[derive(Debug)]
pub struct FakeTree {
    pub tmp: tempfile::TempDir,
    pub layout: Layout,
}

impl FakeTree {
    pub fn v1() -> FakeTree {
        FakeTree::v1_without("")
    }

    pub fn v1_without(skip: &str) -> FakeTree {
        let tmp = tempfile::tempdir().unwrap();
        let mut mounts = Vec::new();
        for name in V1_MOUNTS.iter().filter(|n| **n != skip) {
            let mount = tmp.path().join(name);
            std::fs::create_dir(&mount).unwrap();
            mounts.push(V1Mount {
                controllers: name.split(',').map(str::to_owned).collect(),
                mount,
                own: String::new(),
            });
        }
        std::fs::write(tmp.path().join("cpuset/cpuset.cpus"), "0-3\n").unwrap();
        std::fs::write(tmp.path().join("cpuset/cpuset.mems"), "0\n").unwrap();
        FakeTree { tmp, layout: Layout::V1(mounts) }
    }

    pub fn v2() -> FakeTree {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("cgroup.controllers"), "cpuset cpu io memory hugetlb pids\n").unwrap();
        std::fs::write(tmp.path().join("cgroup.subtree_control"), "").unwrap();
        let layout = Layout::V2 { mount: tmp.path().to_owned(), own: String::new() };
        FakeTree { tmp, layout }
    }

    pub fn try_create(&self, path: &str, r: Option<&LinuxResources>) -> Result<CgroupManager, CgroupError> {
        CgroupManager::create_in(&self.layout, "wisp", path, r)
    }

    pub fn create(&self, path: &str, r: Option<&LinuxResources>) -> CgroupManager {
        self.try_create(path, r).unwrap_or_else(|e| panic!("create {path}: {}", crate::error::chain(&e)))
    }

    /// `rel` under the hierarchy mounted at `mount` (`""` for v2).
    pub fn dir(&self, mount: &str, rel: &str) -> PathBuf {
        self.tmp.path().join(mount).join(rel)
    }
}

pub fn resources(json: &str) -> LinuxResources {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("bad test resources {json}: {e}"))
}

pub fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
}

pub fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap();
}
