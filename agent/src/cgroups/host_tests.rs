//! Root-only tests against the host's real cgroup hierarchies.
//!
//! They FAIL when not run as root (CI runs as root); they never skip. This
//! development host is cgroup v1 (every controller bound to a v1 hierarchy,
//! memory nested under the sandbox's own cgroup), so these tests cover v1 only:
//! the test cgroups are created with relative paths, i.e. beneath this process's
//! own cgroup in each hierarchy, under a parent unique to each test that the
//! test removes again. A cgroup v2 test belongs in a VM booted with
//! `agent.unified_cgroup_hierarchy=1`.

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::test_support::resources;
use super::{CgroupManager, Layout};

struct Fixture {
    layout: Layout,
    parent: String,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        assert!(
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("/proc is mounted")) == 0,
            "the cgroup host tests need root (CI runs as root; `make deps` then `sudo cargo test -p wisp-agent`)"
        );
        let layout = Layout::discover().expect("cgroups are mounted");
        assert!(!layout.is_v2(), "these tests are written for the v1 host; a v2 host needs the VM test");
        Fixture { layout, parent: format!("wisp-test-{}-{name}", std::process::id()) }
    }

    fn create(&self, path: &str, json: Option<&str>) -> CgroupManager {
        let r = json.map(resources);
        CgroupManager::create_in(&self.layout, &self.parent, path, r.as_ref())
            .unwrap_or_else(|e| panic!("create: {}", crate::error::chain(&e)))
    }
}

/// Removes the test's parent cgroup, also after a failed test: kills what is
/// still inside, then removes the tree deepest first.
impl Drop for Fixture {
    fn drop(&mut self) {
        let Layout::V1(mounts) = &self.layout else { return };
        for m in mounts {
            let parent = m.mount.join(&m.own).join(&self.parent);
            kill_inside(&parent);
            if let Err(e) = super::remove_tree(&parent) {
                eprintln!("cleanup: {}", crate::error::chain(&e));
            }
        }
    }
}

fn kill_inside(dir: &std::path::Path) {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            kill_inside(&entry.path());
        }
    }
}

/// A shell that waits for one line on stdin before running `script`, so it can
/// be moved into the cgroup first and everything `script` allocates is charged there.
fn gated_shell(script: &str) -> Child {
    Command::new("sh")
        .args(["-c", &format!("read _go; {script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn sh")
}

fn release(child: &mut Child) {
    child.stdin.as_mut().expect("stdin").write_all(b"go\n").expect("release the child");
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn lifecycle_pids_limits_freeze_stats_destroy() {
    let f = Fixture::new("life");
    let m = f.create("c1", Some(r#"{"pids":{"limit":20},"cpu":{"shares":512}}"#));
    let mut child = gated_shell("exec sleep 30");
    let pid = i32::try_from(child.id()).expect("pid fits");
    m.add_pid(pid).expect("add pid");
    release(&mut child);
    assert!(m.pids().contains(&pid), "pids() = {:?}", m.pids());

    m.update(&resources(r#"{"memory":{"limit":67108864}}"#)).expect("update memory");
    let mem_dir = m.paths().iter().find(|p| p.starts_with("/sys/fs/cgroup/memory")).expect("memory dir").clone();
    let limit = std::fs::read_to_string(mem_dir.join("memory.limit_in_bytes")).unwrap();
    assert_eq!(limit.trim(), "67108864");

    m.freeze().expect("freeze");
    let freezer = m.paths().iter().find(|p| p.starts_with("/sys/fs/cgroup/freezer")).expect("freezer dir").clone();
    assert_eq!(std::fs::read_to_string(freezer.join("freezer.state")).unwrap().trim(), "FROZEN");
    m.thaw().expect("thaw");
    assert_eq!(std::fs::read_to_string(freezer.join("freezer.state")).unwrap().trim(), "THAWED");

    // The exec of sleep after the move charged its pages to this cgroup.
    wait_until("sleep has exec'd", Duration::from_secs(3), || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    });
    let s = m.stats();
    assert!(s.memory_stats.usage.usage > 0, "memory usage {:?}", s.memory_stats.usage);
    assert_eq!(s.memory_stats.usage.limit, 67_108_864);
    assert_eq!((s.pids_stats.current, s.pids_stats.limit), (1, 20));

    m.kill_all(nix::sys::signal::Signal::SIGKILL).expect("kill");
    child.wait().expect("reap");
    let paths = m.paths().to_vec();
    m.destroy().expect("destroy");
    for p in paths {
        assert!(!p.exists(), "{} is still there", p.display());
    }
}

#[test]
fn oom_kill_is_reported() {
    let f = Fixture::new("oom");
    let m = f.create("c1", Some(r#"{"memory":{"limit":16777216}}"#));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut events = m.oom_events().expect("oom events");
        // dd's 64 MiB buffer cannot fit in 16 MiB (this host has no swap).
        let mut child = gated_shell("exec dd if=/dev/zero of=/dev/null bs=64M count=1");
        let pid = i32::try_from(child.id()).expect("pid fits");
        m.add_pid(pid).expect("add pid");
        release(&mut child);
        tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("an OOM event within 5 s")
            .expect("the stream is live");
        let status = child.wait().expect("reap");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{status:?}");
    });
    m.destroy().expect("destroy");
}
