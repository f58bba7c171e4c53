//! Host tests of the launcher through `wisp-agent run BUNDLE` (exactly
//! `launch::create` + `start`, like `runc run`): a busybox rootfs in a temp
//! directory, a config.json like `runc spec` writes, and what the container
//! prints or how it exits.
//!
//! These tests NEED ROOT (namespaces, mounts, pivot_root, mknod) and the
//! static busybox of `make deps` (busybox-static); without either they fail,
//! saying so. CI runs them as root.

// For `copy_executable`, shared with the VM tests.
#[path = "../../tests/src/agent_client.rs"]
#[allow(dead_code)]
mod agent_client;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const APPLETS: &[&str] = &["sh", "echo", "ls", "cat", "id", "mkdir", "hostname", "grep", "touch", "wc", "kill", "true"];

/// A bundle in a temp dir: `dir/bundle/{config.json,rootfs}`; `dir` itself
/// is there to see whether anything escaped the rootfs.
struct Bundle {
    dir: tempfile::TempDir,
    config: Value,
}

fn require_root_and_busybox() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "launch_host tests need root (namespaces, mounts, pivot_root)");
    let bb = PathBuf::from("/bin/busybox");
    assert!(bb.is_file(), "/bin/busybox is missing: run `make deps` (busybox-static)");
    bb
}

impl Bundle {
    fn new(args: &[&str]) -> Bundle {
        let bb = require_root_and_busybox();
        let dir = tempfile::tempdir().unwrap();
        // Reachable by a container root mapped to another host uid.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let rootfs = dir.path().join("bundle/rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        agent_client::copy_executable(&bb, &rootfs.join("bin/busybox")).unwrap();
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
        }
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "cwd": "/",
                "capabilities": {
                    "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                    "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                    "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "wisp-test",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                 "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware", "/proc/scsi"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
            }
        });
        Bundle { dir, config }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    fn rootfs(&self) -> PathBuf {
        self.path().join("rootfs")
    }

    fn set(&mut self, pointer: &str, value: Value) -> &mut Self {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let target = self.config.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent} in the config"));
        target.as_object_mut().unwrap().insert(key.to_string(), value);
        self
    }

    fn push(&mut self, pointer: &str, value: Value) -> &mut Self {
        self.config.pointer_mut(pointer).and_then(Value::as_array_mut).unwrap().push(value);
        self
    }

    /// Runs the bundle; (exit code, stdout, stderr). A run that hangs is
    /// killed after a minute and fails the test.
    fn run(&self) -> (i32, String, String) {
        std::fs::write(self.path().join("config.json"), serde_json::to_vec_pretty(&self.config).unwrap()).unwrap();
        let (out_path, err_path) = (self.dir.path().join("stdout"), self.dir.path().join("stderr"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_wisp-agent"))
            .arg("run")
            .arg(self.path())
            .arg("--id")
            .arg("launch-host-test")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("wisp-agent run hung; stderr: {}", std::fs::read_to_string(&err_path).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let code = status.code().expect("wisp-agent run was killed by a signal");
        (code, std::fs::read_to_string(&out_path).unwrap(), std::fs::read_to_string(&err_path).unwrap())
    }
}

/// Runs `b` and asserts that `wisp-agent run` refused it (125) saying `why`.
fn assert_refused(b: &Bundle, why: &str) {
    let (code, _, err) = b.run();
    assert_eq!(code, 125, "stderr: {err}");
    assert!(err.contains(why), "expected {why:?} in stderr: {err}");
}

fn sh(script: &str) -> Bundle {
    Bundle::new(&["sh", "-c", script])
}

#[test]
fn echo_reaches_stdout() {
    let (code, out, err) = Bundle::new(&["echo", "hello from the container"]).run();
    assert_eq!((code, out.as_str()), (0, "hello from the container\n"), "stderr: {err}");
}

#[test]
fn the_exit_code_is_the_containers() {
    let (code, _, err) = sh("exit 3").run();
    assert_eq!(code, 3, "stderr: {err}");
}

#[test]
fn death_by_signal_is_128_plus_the_signal() {
    // Without a pid namespace: the kernel ignores SIGKILL that a pid
    // namespace's init sends itself.
    let mut b = sh("kill -9 $$; echo survived");
    b.set("/linux/namespaces", json!([{"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]));
    let (code, out, err) = b.run();
    assert_eq!((code, out.as_str()), (137, ""), "stderr: {err}");
}

#[test]
fn the_process_is_pid_1_of_its_own_pid_namespace_with_its_hostname() {
    let (code, out, err) = sh("echo pid=$$; hostname").run();
    assert_eq!((code, out.as_str()), (0, "pid=1\nwisp-test\n"), "stderr: {err}");
}

#[test]
fn a_readonly_rootfs_refuses_writes_but_tmpfs_mounts_accept_them() {
    let (code, out, err) = sh("touch /tmp/ok && echo tmp-ok; touch /nope && echo root-writable").run();
    assert_eq!((code, out.as_str()), (1, "tmp-ok\n"), "stderr: {err}");
    assert!(err.contains("Read-only file system"), "stderr: {err}");
}

#[test]
fn masked_and_readonly_paths() {
    // /proc/kcore when the host kernel has it; /proc/timer_list (root-only,
    // non-empty) always does, and /sys/firmware is a masked directory.
    let masked = if Path::new("/proc/kcore").exists() { "/proc/kcore" } else { "/proc/timer_list" };
    assert!(std::fs::read(masked).map(|d| !d.is_empty()).unwrap_or(true), "{masked} should have content on the host");
    let script = format!(
        "wc -c < {masked}; ls -A /sys/firmware | wc -l; echo 1 > /proc/sys/kernel/domainname && echo sys-writable"
    );
    let (code, out, err) = sh(&script).run();
    assert_eq!((code, out.as_str()), (1, "0\n0\n"), "stderr: {err}");
    assert!(err.contains("Read-only file system"), "stderr: {err}");
}

#[test]
fn a_mount_destination_cannot_escape_the_rootfs() {
    let mut b = sh("ls -d /escaped && touch /escaped/inside && echo made");
    b.push("/mounts", json!({"destination": "../../escaped", "type": "tmpfs", "source": "tmpfs"}));
    let (code, out, err) = b.run();
    assert_eq!((code, out.as_str()), (0, "/escaped\nmade\n"), "stderr: {err}");
    assert!(!b.dir.path().join("escaped").exists(), "the mount point was created outside the rootfs");
    assert!(!b.path().join("escaped").exists(), "the mount point was created in the bundle");
    assert!(b.rootfs().join("escaped").is_dir(), "the mount point should be inside the rootfs");
}

#[test]
fn seccomp_makes_mkdir_fail_with_eperm_while_ls_works() {
    let mut b = sh("ls / > /dev/null && echo ls-ok; mkdir /tmp/d || echo mkdir-refused");
    b.set(
        "/linux/seccomp",
        json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
               "flags": ["SECCOMP_FILTER_FLAG_LOG"],
               "syscalls": [{"names": ["mkdir", "mkdirat", "no_such_syscall"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}),
    );
    let (code, out, err) = b.run();
    assert_eq!((code, out.as_str()), (0, "ls-ok\nmkdir-refused\n"), "stderr: {err}");
    assert!(err.contains("Operation not permitted"), "mkdir should fail with EPERM; stderr: {err}");
}

#[test]
fn a_non_root_user_with_additional_groups() {
    let mut b = Bundle::new(&["id"]);
    b.set("/process/user", json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20]}));
    let (code, out, err) = b.run();
    assert_eq!((code, out.trim()), (0, "uid=1000 gid=1000 groups=10,20"), "stderr: {err}");
}

#[test]
fn a_user_name_is_resolved_in_the_containers_passwd() {
    let mut b = Bundle::new(&["id"]);
    std::fs::write(
        b.rootfs().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1002::/home/alice:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(b.rootfs().join("etc/group"), "root:x:0:\nalice:x:1002:\nwheel:x:10:alice\n").unwrap();
    b.set("/process/user", json!({"uid": 0, "gid": 0, "username": "alice"}));
    let (code, out, err) = b.run();
    assert_eq!((code, out.trim()), (0, "uid=1001(alice) gid=1002(alice) groups=10(wheel)"), "stderr: {err}");
}

#[test]
fn capabilities_are_dropped_to_the_spec() {
    let (code, out, err) = sh("grep -E '^Cap(Eff|Bnd|Prm|Inh)' /proc/self/status").run();
    assert_eq!(code, 0, "stderr: {err}");
    // CAP_KILL (5), CAP_NET_BIND_SERVICE (10), CAP_AUDIT_WRITE (29).
    let want = format!("{:016x}", (1u64 << 5) | (1 << 10) | (1 << 29));
    for line in ["CapPrm", "CapEff", "CapBnd"] {
        assert!(out.contains(&format!("{line}:\t{want}")), "{line} should be {want}: {out}");
    }
    assert!(out.contains("CapInh:\t0000000000000000"), "{out}");
}

#[test]
fn rlimits_are_applied() {
    let mut b = sh("ulimit -n");
    b.set("/process/rlimits", json!([{"type": "RLIMIT_NOFILE", "hard": 517, "soft": 513}]));
    let (code, out, err) = b.run();
    assert_eq!((code, out.as_str()), (0, "513\n"), "stderr: {err}");
}

#[test]
fn an_unknown_namespace_type_is_refused_clearly() {
    let mut b = Bundle::new(&["true"]);
    b.push("/linux/namespaces", json!({"type": "bogus"}));
    assert_refused(&b, "unknown namespace type \"bogus\"");
}

#[test]
fn a_missing_binary_is_named() {
    assert_refused(&Bundle::new(&["nosuchbinary", "x"]), "\"nosuchbinary\": executable file not found in $PATH");
}

#[test]
fn a_missing_rootfs_is_named() {
    // `run` makes a relative root.path bundle-relative, like runc.
    let mut b = Bundle::new(&["true"]);
    b.set("/root", json!({"path": "no-such-rootfs"}));
    assert_refused(&b, "no-such-rootfs");
}

#[test]
fn hooks_run_where_the_spec_says_with_the_state_on_stdin() {
    let mut b = Bundle::new(&["cat", "/tmp/started"]);
    let out = b.dir.path().to_path_buf();
    let write =
        |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}/{name}", out.display())]});
    b.set(
        "/hooks",
        json!({
            "createRuntime": [write("create-runtime.json")],
            "createContainer": [write("create-container.json")],
            // Inside the container, after pivot_root: its /tmp is the container's tmpfs.
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /dev/null; echo hook > /tmp/started"]}],
            "poststop": [write("poststop.json")]
        }),
    );
    let (code, stdout, err) = b.run();
    assert_eq!((code, stdout.as_str()), (0, "hook\n"), "stderr: {err}");
    for (file, status) in
        [("create-runtime.json", "created"), ("create-container.json", "created"), ("poststop.json", "stopped")]
    {
        let text = std::fs::read_to_string(out.join(file)).unwrap_or_else(|e| panic!("{file}: {e}; stderr: {err}"));
        let state: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(state["id"], "launch-host-test", "{file}: {text}");
        assert_eq!(state["status"], status, "{file}: {text}");
        assert!(state["pid"].as_i64().is_some_and(|p| p > 1), "{file}: {text}");
        assert_eq!(state["bundle"].as_str().map(PathBuf::from), Some(std::fs::canonicalize(b.path()).unwrap()));
    }
}

#[test]
fn a_failing_hook_fails_the_container_and_is_named() {
    let mut b = Bundle::new(&["true"]);
    b.set("/hooks", json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo broken >&2; exit 7"]}]}));
    assert_refused(&b, "hook /bin/sh: exit status: 7: broken");
}

#[test]
fn a_user_namespace_maps_root_to_the_given_host_ids() {
    let mut b = sh("id -u; cat /proc/self/uid_map /proc/self/gid_map");
    b.push("/linux/namespaces", json!({"type": "user"}));
    b.set("/linux/uidMappings", json!([{"containerID": 0, "hostID": 200000, "size": 1000}]));
    b.set("/linux/gidMappings", json!([{"containerID": 0, "hostID": 300000, "size": 1000}]));
    // As with runc, the rootfs belongs to the mapped root (mount points are made in it).
    for entry in ["", "bin", "etc"] {
        std::os::unix::fs::lchown(b.rootfs().join(entry), Some(200000), Some(300000)).unwrap();
    }
    let (code, out, err) = b.run();
    assert_eq!(code, 0, "stderr: {err}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words, ["0", "0", "200000", "1000", "0", "300000", "1000"], "stdout: {out}");
}

#[test]
fn sysctl_domainname_and_bind_mounts_of_a_dir_and_a_file() {
    let mut b = sh("cat /proc/sys/net/ipv4/ip_forward; cat /proc/sys/kernel/domainname; \
                    cat /data/dir/hello /etc/motd; touch /data/dir/x || echo bind-ro");
    let host = b.dir.path().join("host");
    std::fs::create_dir_all(host.join("dir")).unwrap();
    std::fs::write(host.join("dir/hello"), "from a host dir\n").unwrap();
    std::fs::write(host.join("motd"), "from a host file\n").unwrap();
    b.set("/linux/sysctl", json!({"net.ipv4.ip_forward": "1"}));
    b.set("/domainname", json!("wisp.example"));
    b.push(
        "/mounts",
        json!({"destination": "/data", "type": "bind", "source": host, "options": ["rbind", "ro", "rprivate"]}),
    );
    b.push(
        "/mounts",
        json!({"destination": "/etc/motd", "type": "bind", "source": host.join("motd"), "options": ["bind"]}),
    );
    let (code, out, err) = b.run();
    assert_eq!(
        (code, out.as_str()),
        (0, "1\nwisp.example\nfrom a host dir\nfrom a host file\nbind-ro\n"),
        "stderr: {err}"
    );
    assert!(!host.join("dir/x").exists());
}

#[test]
fn a_user_namespace_without_maps_is_refused_without_hanging() {
    let mut b = Bundle::new(&["true"]);
    b.push("/linux/namespaces", json!({"type": "user"}));
    assert_refused(&b, "a new user namespace needs linux.uidMappings");
}

#[test]
fn a_joined_uts_namespace_keeps_its_hostname() {
    use std::os::unix::fs::MetadataExt as _;
    // A uts namespace of a helper process stands for Kata's sandbox-wide
    // one; unshare copies the host's hostname into it.
    let mut holder = Command::new("unshare").args(["--uts", "sleep", "60"]).spawn().expect("unshare (util-linux)");
    let ns = format!("/proc/{}/ns/uts", holder.id());
    let ours = std::fs::metadata("/proc/self/ns/uts").unwrap().ino();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&ns).map(|m| m.ino()).unwrap_or(ours) == ours {
        assert!(Instant::now() < deadline, "unshare --uts did not make a namespace");
        std::thread::sleep(Duration::from_millis(10));
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let mut b = sh("hostname");
    b.set("/linux/namespaces", json!([{"type": "pid"}, {"type": "mount"}, {"type": "uts", "path": ns}]));
    let (code, out, err) = b.run();
    let _ = holder.kill();
    let _ = holder.wait();
    assert_ne!(host, "wisp-test");
    assert_eq!((code, out.trim()), (0, host.as_str()), "the spec's hostname must not be set; stderr: {err}");
}

#[test]
fn a_namespace_path_that_does_not_exist_is_named() {
    let mut b = Bundle::new(&["true"]);
    b.push("/linux/namespaces", json!({"type": "cgroup", "path": "/proc/999999999/ns/cgroup"}));
    assert_refused(&b, "open namespace /proc/999999999/ns/cgroup: No such file or directory");
}
