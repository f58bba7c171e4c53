//! rootfs-builder's image under a real Docker (Debian's dockerd 20.10 and runc, no VM): what
//! `rootfs-builder oci-image` writes is what `docker load` accepts and `docker run` runs, and
//! the private dockerd of the harness leaves nothing behind, even when a test stops half-way.
//!
//! Needs root, `make deps` (docker.io, containerd, runc, busybox-static) and a built
//! rootfs-builder (`make tools`; `WISP_ROOTFS_BUILDER` overrides). Compiled only with feature
//! `containerd-tests` (`make test-containerd`).
#![cfg(feature = "containerd-tests")]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use wisp_tests::containerd::{describe, find_on_path, mounts_under, process_running, s, text};
use wisp_tests::{artifacts, Dockerd, DockerdOptions};

/// Writes the busybox image `name` with rootfs-builder into `dir`; returns the tarball.
fn image(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let bin = artifacts::rootfs_builder()?;
    let out = dir.join("image.tar");
    let run = Command::new(&bin).args(["oci-image", "--from", "busybox", "--name", name, "-o", s(&out)]).output()?;
    anyhow::ensure!(run.status.success(), "{} oci-image: {}", bin.display(), describe(&run));
    Ok(out)
}

/// `docker load -i image`, checked.
fn load(docker: &Dockerd, image: &Path, name: &str) -> anyhow::Result<()> {
    let out = docker.docker(["load", "-i", s(image)])?;
    anyhow::ensure!(
        out.status.success() && text(&out.stdout).contains(&format!("Loaded image: {name}")),
        "docker load: {}\ndaemon log:\n{}",
        describe(&out),
        docker.log_tail(40)
    );
    Ok(())
}

#[test]
fn oci_image_loads_into_docker_and_runs_under_runc() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let image = image(dir.path(), "wisp-bb:docker")?;
    // runc once more under a name of its own, as `--runtime wisp` will be registered.
    let runc = find_on_path(OsStr::new("runc")).context("runc not on PATH (make deps)")?;
    let options = DockerdOptions { runtimes: vec![("alt-runc".into(), runc)], ..DockerdOptions::default() };
    let docker = Dockerd::start_with(options)?;
    assert!(docker.server_version().starts_with("20.10."), "Debian 12's dockerd: {}", docker.server_version());
    load(&docker, &image, "wisp-bb:docker")?;
    let listed = docker.docker(["images", "--format", "{{.Repository}}:{{.Tag}}"])?;
    assert!(text(&listed.stdout).lines().any(|l| l == "wisp-bb:docker"), "{}", describe(&listed));

    let out = docker.docker(["run", "--rm", "wisp-bb:docker", "sh", "-c", "echo hi; exit 3"])?;
    let context = || format!("{}\ndaemon log:\n{}", describe(&out), docker.log_tail(40));
    assert_eq!(text(&out.stdout), "hi\n", "{}", context());
    assert_eq!(out.status.code(), Some(3), "the container's exit code reaches docker: {}", context());
    let left = docker.docker(["ps", "-a", "-q"])?;
    assert_eq!(text(&left.stdout).trim(), "", "--rm removed the container: {}", describe(&left));

    // Through the runtime added with --add-runtime.
    let out =
        docker.docker(["run", "--rm", "--runtime", "alt-runc", "wisp-bb:docker", "sh", "-c", "echo alt; exit 4"])?;
    assert_eq!((text(&out.stdout).as_str(), out.status.code()), ("alt\n", Some(4)), "{}", describe(&out));
    let out = docker.docker(["run", "--rm", "--runtime", "no-such-runtime", "wisp-bb:docker", "true"])?;
    assert!(!out.status.success(), "an unregistered runtime is refused: {}", describe(&out));
    Ok(())
}

#[test]
fn dropping_a_dockerd_killed_half_way_leaves_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let image = image(dir.path(), "wisp-bb:drop")?;
    let run_docker_before = Path::new("/run/docker").exists();
    let docker = Dockerd::start()?;
    load(&docker, &image, "wisp-bb:drop")?;
    let out = docker.docker(["run", "-d", "--name", "sleeper", "wisp-bb:drop", "sleep", "600"])?;
    assert!(out.status.success(), "{}", describe(&out));
    let inspect = docker.docker(["inspect", "--format", "{{.State.Pid}}", "sleeper"])?;
    let container: u32 = text(&inspect.stdout).trim().parse()?;
    assert!(process_running(container), "{}", describe(&inspect));

    // What a test stopped half-way leaves: a running container, its shim and socket, its
    // cgroup and mounts, and a dockerd that died without stopping any of it.
    let sockets = docker.shim_sockets();
    assert_eq!(sockets.len(), 1, "one shim: {sockets:?}");
    assert!(sockets[0].exists(), "containerd's name for the shim socket: {}", sockets[0].display());
    let processes = docker.processes();
    assert!(processes.contains(&container), "{container} not among {processes:?}");
    let cgroups = docker.cgroup_dirs();
    assert!(cgroups.iter().any(|d| d.ends_with(docker.cgroup_parent().trim_start_matches('/'))), "{cgroups:?}");
    let base = docker.dir().map(Path::to_owned).unwrap_or_default();
    assert!(!mounts_under(&[&base]).is_empty(), "the container's root is mounted");
    let dockerd = docker.pid().unwrap_or_default();
    kill(Pid::from_raw(dockerd as i32), Signal::SIGKILL)?;
    let start = Instant::now();
    while process_running(dockerd) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        processes.iter().any(|p| *p != dockerd && process_running(*p)),
        "containerd and the container outlive dockerd"
    );

    let cgroup_parent = docker.cgroup_parent().to_owned();
    drop(docker);
    for pid in &processes {
        assert!(!process_running(*pid), "process {pid} survived the drop");
    }
    assert!(!base.exists(), "{} remains", base.display());
    assert!(mounts_under(&[&base]).is_empty(), "{:?}", mounts_under(&[&base]));
    let left: Vec<_> = cgroups.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "cgroups of {cgroup_parent} remain: {left:?}");
    assert!(!sockets[0].exists(), "{} remains", sockets[0].display());
    if !run_docker_before {
        assert!(!Path::new("/run/docker").exists(), "/run/docker remains");
    }
    Ok(())
}

#[test]
fn a_container_on_the_harness_bridge_reaches_the_host() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let image = image(dir.path(), "wisp-bb:net")?;
    // A subnet of this test process's own, should two runs overlap.
    let net = format!("10.213.{}", std::process::id() % 200 + 20);
    let options = DockerdOptions { bridge: Some(format!("{net}.1/24")), ..DockerdOptions::default() };
    let docker = Dockerd::start_with(options)?;
    let bridge = docker.bridge().unwrap_or_default().to_owned();
    load(&docker, &image, "wisp-bb:net")?;
    let script = format!("ip -4 addr show eth0 && ping -c 1 -W 5 {net}.1");
    let out = docker.docker(["run", "--rm", "wisp-bb:net", "sh", "-c", &script])?;
    let context = || format!("{}\ndaemon log:\n{}", describe(&out), docker.log_tail(40));
    assert!(out.status.success(), "{}", context());
    assert!(text(&out.stdout).contains(&format!("inet {net}.")), "an address on the bridge: {}", context());
    assert!(text(&out.stdout).contains("1 packets received"), "{}", context());
    drop(docker);
    let link = Command::new("ip").args(["link", "show", &bridge]).output()?;
    assert!(!link.status.success(), "bridge {bridge} outlived the drop: {}", describe(&link));
    Ok(())
}
