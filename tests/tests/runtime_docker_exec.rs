//! `wisp-runtime`'s processes beyond the container's own, under Debian's dockerd 20.10:
//! `docker exec` (output, exit code, stdin, a terminal), `docker top`, `docker update`, and
//! `docker run -it` through a real pty (keys in, output out, the window size passed on).
//!
//! Needs root, `make deps` and `make all`. Compiled only with both features
//! `containerd-tests` and `vm-tests` (`make test-shim`).
#![cfg(all(feature = "containerd-tests", feature = "vm-tests"))]

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use wisp_tests::containerd::{describe, s, text};
use wisp_tests::runtime_fixtures::{configure, image, left_on_host};
use wisp_tests::shim_setup::runtime_binary;
use wisp_tests::{Dockerd, DockerdOptions};

/// A private dockerd with the `wisp` runtime and the busybox image `tag` loaded.
fn dockerd(dir: &std::path::Path, tag: &str) -> anyhow::Result<Dockerd> {
    configure(dir)?;
    let image = image(dir, tag)?;
    let docker = Dockerd::start_with(DockerdOptions {
        runtimes: vec![("wisp".into(), runtime_binary()?)],
        ..Default::default()
    })?;
    let out = docker.docker(["load", "-i", s(&image)])?;
    ensure!(out.status.success(), "docker load: {}", describe(&out));
    Ok(docker)
}

#[test]
fn docker_exec_top_and_update_reach_the_container_in_its_vm() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-exec-").tempdir()?;
    let docker = dockerd(dir.path(), "wisp-rt:exec")?;
    let out = docker.docker(["run", "-d", "--runtime", "wisp", "--name", "box", "wisp-rt:exec", "sleep", "3600"])?;
    ensure!(out.status.success(), "docker run -d: {}\n{}", describe(&out), docker.log_tail(30));

    // Output and exit code of an exec; it runs in the container (its hostname, its VM's kernel).
    let out = docker.docker(["exec", "box", "sh", "-c", "echo out; echo err >&2; cat /proc/1/cmdline; exit 4"])?;
    let context = || format!("{}\ndaemon log:\n{}", describe(&out), docker.log_tail(30));
    assert_eq!(out.status.code(), Some(4), "the exec's exit code: {}", context());
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("out\nsleep"), "the exec's stdout, in the container's pid namespace: {}", context());
    assert_eq!(text(&out.stderr), "err\n", "{}", context());

    // stdin reaches the exec and its end ends it.
    let mut cat = docker
        .docker_command()
        .args(["exec", "-i", "box", "sh", "-c", "tr a-z A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    cat.stdin.take().expect("stdin").write_all(b"through stdin\n")?;
    let out = cat.wait_with_output()?;
    assert_eq!(text(&out.stdout), "THROUGH STDIN\n", "{}", describe(&out));
    assert!(out.status.success(), "{}", describe(&out));

    // A terminal: the exec's stdout is a pty in the guest.
    let out = docker.docker(["exec", "-t", "box", "tty"])?;
    assert!(text(&out.stdout).starts_with("/dev/pts/"), "exec -t: {}", describe(&out));

    // An exec killed by a signal: 128+9 (`docker exec` reports the exec's status).
    let out = docker.docker(["exec", "box", "sh", "-c", "kill -9 $$"])?;
    assert_eq!(out.status.code(), Some(137), "{}", describe(&out));

    // `docker top`: the container's host process is its VM.
    let out = docker.docker(["top", "box"])?;
    ensure!(out.status.success(), "docker top: {}\n{}", describe(&out), docker.log_tail(20));
    assert!(text(&out.stdout).contains("qemu-system"), "docker top shows the VM: {}", describe(&out));

    // `docker update`: the memory limit lands in the container's cgroup in the guest.
    let out = docker.docker(["update", "--memory", "96m", "--memory-swap", "-1", "box"])?;
    ensure!(out.status.success(), "docker update: {}\n{}", describe(&out), docker.log_tail(20));
    // The container's own cgroup (its path from /proc/self/cgroup), v2 or v1.
    let limit = "v2=$(sed -n 's/^0:://p' /proc/self/cgroup); v1=$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup); \
                 cat /sys/fs/cgroup$v2/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory$v1/memory.limit_in_bytes";
    let out = docker.docker(["exec", "box", "sh", "-c", limit])?;
    assert_eq!(text(&out.stdout).trim(), (96u64 << 20).to_string(), "the guest's limit: {}", describe(&out));

    let out = docker.docker(["rm", "-f", "box"])?;
    ensure!(out.status.success(), "docker rm -f: {}", describe(&out));
    let left = left_on_host(dir.path(), Duration::from_secs(10));
    assert!(left.is_empty(), "left after rm -f: {left:#?}");
    Ok(())
}

/// What a pty's master has shown so far.
#[derive(Clone, Default)]
struct Screen(Arc<Mutex<Vec<u8>>>);

impl Screen {
    /// Copies what `master` shows until it closes.
    fn follow(&self, mut master: std::fs::File) {
        let screen = self.0.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = master.read(&mut buf) {
                screen.lock().expect("screen").extend_from_slice(&buf[..n]);
            }
        });
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("screen")).into_owned()
    }

    /// Waits until the screen shows `what`.
    fn wait_for(&self, what: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while !self.text().contains(what) {
            if Instant::now() > deadline {
                bail!("{what:?} not shown within {within:?}; the screen:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

#[test]
fn docker_run_it_through_a_pty_passes_keys_output_and_the_window_size() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wisp-rt-tty-").tempdir()?;
    let docker = dockerd(dir.path(), "wisp-rt:tty")?;
    let pty = nix::pty::openpty(Some(&nix::pty::Winsize { ws_row: 31, ws_col: 97, ws_xpixel: 0, ws_ypixel: 0 }), None)?;
    let slave = std::fs::File::from(pty.slave);
    // The size arrives after the start (docker resizes once attached): wait for it, then show it.
    // (Busybox's `stty size` prints nothing and fails while the size is 0x0.)
    let script = "until stty size 2>/dev/null | grep -q '^[1-9]'; do sleep 0.1; done; echo size=$(stty size); \
                  read line; echo got:$line; exit 6";
    let mut cmd = docker.docker_command();
    cmd.args(["run", "--rm", "-it", "--runtime", "wisp", "wisp-rt:tty", "sh", "-c", script])
        .stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave.try_clone()?);
    let slave_fd = slave.as_raw_fd();
    // SAFETY: between fork and exec only setsid and ioctl, both async-signal-safe, on a
    // descriptor the child inherited.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            if nix::libc::ioctl(slave_fd, nix::libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut client = cmd.spawn()?;
    drop(slave);
    let screen = Screen::default();
    let mut master = std::fs::File::from(pty.master);
    screen.follow(master.try_clone()?);
    let shown = screen.wait_for("size=31 97", Duration::from_secs(90));
    if let Err(err) = shown {
        let _ = client.kill();
        bail!("{err}\ndaemon log:\n{}", docker.log_tail(30));
    }
    // Keys typed on the client's terminal reach the guest's shell (echoed by the guest's pty).
    master.write_all(b"hello tty\r")?;
    screen.wait_for("got:hello tty", Duration::from_secs(30))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = client.try_wait()? {
            break status;
        }
        ensure!(Instant::now() < deadline, "docker run -it did not exit; the screen:\n{}", screen.text());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(6), "the exit code through the terminal; the screen:\n{}", screen.text());
    let left = left_on_host(dir.path(), Duration::from_secs(10));
    assert!(left.is_empty(), "left after run --rm -it: {left:#?}");
    Ok(())
}
