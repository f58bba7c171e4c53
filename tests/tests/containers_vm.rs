#![cfg(feature = "vm-tests")]
//! Containers in a real VM: the agent as PID 1 runs busybox containers whose
//! rootfs is a host directory shared by virtio-9p and mounted as a sandbox
//! storage, driven over hybrid vsock exactly as a Kata runtime would.
//!
//! Each test function boots one VM (two for the cgroup versions) and checks
//! several behaviours in it: a boot is the expensive part.
//!
//! Needs `make` (kernel, static agent, initrd), `make deps` (busybox-static,
//! e2fsprogs for the block device test).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use protocols::agent::{
    CopyFileRequest, PauseContainerRequest, ResumeContainerRequest, StatsContainerRequest, Storage,
};
use protocols::health::{health_check_response::ServingStatus, CheckRequest};
use protocols::oci;
use protocols::ttrpc::Code;
use wisp_shim::agent_dial::AgentConn;
use wisp_tests::agent_client::{ctx, process, rpc_code, run_to_completion, spec, Container, Output};
use wisp_tests::sandbox_vm::{SandboxVm, ROOTFS};

/// A file in the rootfs that a masked-path test hides.
const SECRET: &str = "etc/secret";

fn no_prepare(_: &std::path::Path) -> std::io::Result<()> {
    Ok(())
}

async fn assert_serving(conn: &AgentConn) -> Result<()> {
    let r = conn.health().check(ctx(), &CheckRequest::new()).await.context("Health.Check")?;
    ensure!(r.status.enum_value() == Ok(ServingStatus::SERVING), "status {:?}", r.status);
    Ok(())
}

/// Reads a terminal's output until it contains `want`.
async fn read_until(c: &Container<'_>, exec_id: &str, want: &str) -> Result<String> {
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(want) {
        let chunk = c
            .read(exec_id, false)
            .await
            .with_context(|| format!("reading {exec_id} until {want:?}; so far {:?}", String::from_utf8_lossy(&out)))?;
        out.extend(chunk);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn with_linux(mut s: oci::Spec, f: impl FnOnce(&mut oci::Linux)) -> oci::Spec {
    f(s.Linux.as_mut().expect("spec() has linux"));
    s
}

fn mount(destination: &str, source: &str, type_: &str, options: &[&str]) -> oci::Mount {
    let mut m = oci::Mount::new();
    m.destination = destination.into();
    m.source = source.into();
    m.type_ = type_.into();
    m.options = options.iter().map(|o| o.to_string()).collect();
    m
}

#[test]
fn busybox_containers_run_in_the_vm() -> Result<()> {
    let mut vm = SandboxVm::boot(vec![], &[], no_prepare)?;
    let conn = &vm.connect()?;
    vm.block_on(async {
        let agent = conn.agent();
        let out = run_to_completion(&agent, "echo", spec(ROOTFS, &["/bin/echo", "hello from the vm"], false), vec![])
            .await
            .context("echo")?;
        ensure!(out.stdout == b"hello from the vm\n" && out.status == 0, "{out:?}");

        let three = spec(ROOTFS, &["/bin/sh", "-c", "echo err >&2; exit 3"], false);
        let out = run_to_completion(&agent, "three", three, vec![]).await.context("exit 3")?;
        ensure!(out.status == 3 && out.stderr == b"err\n", "{out:?}");

        let cat = Container::run(&agent, "cat", spec(ROOTFS, &["/bin/cat"], false), vec![]).await.context("cat")?;
        cat.write("cat", b"through stdin\n").await?;
        cat.close_stdin("cat").await?;
        let out = cat.output("cat").await?;
        ensure!(out.stdout == b"through stdin\n" && out.status == 0, "{out:?}");
        cat.remove().await?;

        let sleeper = Container::run(&agent, "sleeper", spec(ROOTFS, &["/bin/sleep", "100"], false), vec![])
            .await
            .context("sleeper")?;
        sleeper.exec("ps", &["/bin/sh", "-c", "echo $$; cat /proc/1/cmdline"]).await.context("ExecProcess")?;
        let out = sleeper.output("ps").await?;
        ensure!(out.status == 0, "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(text.contains("/bin/sleep"), "the exec shares the container's pid namespace: {text:?}");

        // Killing one exec leaves the container and its other processes alone.
        sleeper.exec("doomed", &["/bin/sleep", "1000"]).await.context("ExecProcess doomed")?;
        sleeper.signal("doomed", 9).await?;
        ensure!(sleeper.wait("doomed").await? == 137, "the killed exec reports SIGKILL");
        sleeper.exec("after", &["/bin/cat", "/proc/1/cmdline"]).await.context("exec after the kill")?;
        let out = sleeper.output("after").await?;
        ensure!(out.status == 0 && out.stdout.starts_with(b"/bin/sleep"), "the init lives on: {out:?}");

        // The container has its cgroup in the guest: statistics come from it.
        let mut stats = StatsContainerRequest::new();
        stats.container_id = "sleeper".into();
        let cg = agent.stats_container(ctx(), &stats).await.context("StatsContainer")?.cgroup_stats;
        let pids = cg.into_option().and_then(|c| c.pids_stats.into_option()).context("pids stats")?;
        ensure!(pids.current >= 1, "the sleeper is in its cgroup: {pids:?}");
        sleeper.signal("sleeper", 9).await?;
        ensure!(sleeper.wait("sleeper").await? == 137, "SIGKILL is 128+9");
        sleeper.remove().await?;
        Ok(())
    })?;
    vm.finish(conn)
}

#[test]
fn terminals_in_the_vm() -> Result<()> {
    let mut vm = SandboxVm::boot(vec![], &[], no_prepare)?;
    let conn = &vm.connect()?;
    vm.block_on(async {
        let agent = conn.agent();
        // An init with a terminal: its own pty, 24x80, then resized.
        let script = "tty; stty size; read x; stty size";
        let c = Container::run(&agent, "tty", spec(ROOTFS, &["/bin/sh", "-c", script], true), vec![])
            .await
            .context("tty container")?;
        let first = read_until(&c, "tty", "24 80").await?;
        // The agent's pty is bound onto /dev/console, as runc does for an init.
        ensure!(first.starts_with("/dev/console"), "tty in the init: {first:?}");
        c.resize("tty", 30, 100).await.context("TtyWinResize")?;
        c.write("tty", b"go\n").await?;
        let rest = String::from_utf8_lossy(&c.read_to_eof("tty", false).await?).into_owned();
        ensure!(rest.contains("30 100"), "after the resize: {rest:?}");
        ensure!(c.wait("tty").await? == 0, "tty container status");
        c.remove().await?;

        // An exec with a terminal gets a pty of its own, sized from its spec.
        let box_ = Container::run(&agent, "box", spec(ROOTFS, &["/bin/sleep", "1000"], false), vec![]).await?;
        box_.exec_process("t", process(&["/bin/sh", "-c", "tty; stty size"], true)).await.context("exec tty")?;
        let out = String::from_utf8_lossy(&box_.read_to_eof("t", false).await?).into_owned();
        ensure!(out.contains("/dev/pts/") && out.contains("24 80"), "tty in an exec: {out:?}");
        ensure!(box_.wait("t").await? == 0);

        // CloseStdin on a terminal delivers end-of-file: cat ends.
        box_.exec_process("cat", process(&["/bin/cat"], true)).await.context("exec cat on a tty")?;
        box_.write("cat", b"typed\n").await?;
        read_until(&box_, "cat", "typed").await?;
        box_.close_stdin("cat").await.context("CloseStdin on a tty")?;
        let status = tokio::time::timeout(Duration::from_secs(10), box_.wait("cat"))
            .await
            .context("cat on a terminal did not end after CloseStdin")??;
        ensure!(status == 0, "cat status {status}");
        box_.remove().await?;
        Ok(())
    })?;
    vm.finish(conn)
}

/// The seccomp filter of the issue: mkdir and mkdirat fail with EPERM.
fn deny_mkdir() -> oci::LinuxSeccomp {
    let mut sc = oci::LinuxSeccomp::new();
    sc.DefaultAction = "SCMP_ACT_ALLOW".into();
    sc.Architectures = vec!["SCMP_ARCH_X86_64".into()];
    let mut call = oci::LinuxSyscall::new();
    call.Names = vec!["mkdir".into(), "mkdirat".into()];
    call.Action = "SCMP_ACT_ERRNO".into();
    call.ErrnoRet = Some(oci::linux_syscall::ErrnoRet::Errnoret(1)); // EPERM
    sc.Syscalls = vec![call];
    sc
}

async fn run(agent: &protocols::agent_ttrpc::AgentServiceClient, id: &str, s: oci::Spec) -> Result<Output> {
    run_to_completion(agent, id, s, vec![]).await.with_context(|| format!("container {id}"))
}

/// A raw ext4 image of `mib` MiB holding `/in.txt`, made by mkfs.ext4 -d.
fn ext4_image(dir: &std::path::Path, mib: u32) -> Result<std::path::PathBuf> {
    let content = dir.join("content");
    std::fs::create_dir_all(&content)?;
    std::fs::write(content.join("in.txt"), "from the host\n")?;
    let img = dir.join("disk.img");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&img)
        .arg(format!("{mib}M"))
        .output()
        .context("mkfs.ext4 (e2fsprogs, make deps)")?;
    ensure!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
    Ok(img)
}

/// The contents of `path` in an ext4 image, read on the host by debugfs.
fn debugfs_cat(img: &std::path::Path, path: &str) -> Result<String> {
    let out = Command::new("debugfs").args(["-R", &format!("cat {path}")]).arg(img).output().context("debugfs")?;
    ensure!(out.status.success(), "debugfs: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The root bus slot of the test disk: Kata PCI path "0a".
const DISK_SLOT: &str = "0a";

#[test]
fn security_identity_and_a_block_device_in_the_vm() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let img = ext4_image(scratch.path(), 16)?;
    let disk = vec![
        "-drive".to_owned(),
        format!("file={},if=none,id=disk0,format=raw,cache=none", img.display()),
        "-device".to_owned(),
        format!("virtio-blk-pci,drive=disk0,bus=pcie.0,addr=0x{DISK_SLOT}"),
    ];
    let mut vm = SandboxVm::boot(disk, &[], |root| std::fs::write(root.join(SECRET), "hidden\n"))?;
    let conn = &vm.connect()?;
    vm.block_on(async {
        let agent = conn.agent();
        // seccomp: mkdir is EPERM, everything else works.
        let script = "ls / > /dev/null && echo ls-ok; mkdir /dev/d || echo mkdir-refused";
        let s = with_linux(spec(ROOTFS, &["/bin/sh", "-c", script], false), |l| {
            l.Seccomp = Some(deny_mkdir()).into();
        });
        let out = run(&agent, "seccomp", s).await?;
        ensure!(out.stdout == b"ls-ok\nmkdir-refused\n", "{out:?}");
        ensure!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"), "EPERM: {out:?}");
        // The same script without the filter makes its directory.
        let out = run(&agent, "no-seccomp", spec(ROOTFS, &["/bin/sh", "-c", script], false)).await?;
        ensure!(out.stdout == b"ls-ok\n" && out.status == 0, "{out:?}");

        // A read-only rootfs: writes fail with EROFS, the tmpfs /dev takes them.
        let mut s = spec(ROOTFS, &["/bin/sh", "-c", "touch /dev/ok && echo dev-ok; touch /nope && echo rw"], false);
        s.Root.as_mut().expect("root").Readonly = true;
        let out = run(&agent, "ro", s).await?;
        ensure!(out.stdout == b"dev-ok\n" && out.status == 1, "{out:?}");
        ensure!(String::from_utf8_lossy(&out.stderr).contains("Read-only file system"), "EROFS: {out:?}");

        // A masked file reads empty; unmasked, the same file has its content.
        let read_secret = ["/bin/sh", "-c", "wc -c < /etc/secret"];
        let s = with_linux(spec(ROOTFS, &read_secret, false), |l| {
            l.MaskedPaths = vec!["/etc/secret".into(), "/proc/kcore".into()];
        });
        let out = run(&agent, "masked", s).await?;
        ensure!(out.stdout == b"0\n" && out.status == 0, "masked: {out:?}");
        let out = run(&agent, "unmasked", spec(ROOTFS, &read_secret, false)).await?;
        ensure!(out.stdout == b"7\n", "unmasked: {out:?}");

        // A non-root user with additional groups.
        let mut s = spec(ROOTFS, &["/bin/id"], false);
        let mut user = oci::User::new();
        user.UID = 1000;
        user.GID = 1000;
        user.AdditionalGids = vec![10, 20];
        s.Process.as_mut().expect("process").User = Some(user).into();
        let out = run(&agent, "user", s).await?;
        ensure!(out.stdout == b"uid=1000 gid=1000 groups=10,20\n", "{out:?}");

        // A virtio-blk disk given as a `blk` storage by PCI path, bound into the container.
        let mut blk = Storage::new();
        blk.driver = "blk".into();
        blk.source = DISK_SLOT.into();
        blk.fstype = "ext4".into();
        blk.mount_point = "/run/kata-containers/sandbox/storage/disk0".into();
        let script = "grep ' /data ' /proc/mounts; cat /data/in.txt; echo from the guest > /data/out.txt";
        let mut s = spec(ROOTFS, &["/bin/sh", "-c", script], false);
        s.Mounts.push(mount("/data", &blk.mount_point, "bind", &["rbind", "rw"]));
        let out = run_to_completion(&agent, "disk", s, vec![blk]).await.context("blk storage")?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status == 0 && text.contains(" ext4 ") && text.ends_with("from the host\n"), "{out:?}");
        Ok(())
    })?;
    vm.finish(conn)?;
    // RemoveContainer unmounted the disk and the guest powered off: the write is on it.
    ensure!(debugfs_cat(&img, "/out.txt")? == "from the guest\n", "the guest's write reached the image");
    Ok(())
}

/// Waits for the ticker to go quiet: true when it prints nothing for `quiet`
/// after what was in flight is drained.
async fn stays_silent(c: &Container<'_>, quiet: Duration) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::time::timeout(Duration::from_millis(300), c.read("ticker", false)).await.is_ok() {
        ensure!(Instant::now() < deadline, "the ticker never went quiet");
    }
    Ok(tokio::time::timeout(quiet, c.read("ticker", false)).await.is_err())
}

/// OOM kill and GetOOMEvent, pause/resume, stats, in the cgroup version the
/// kernel command line picks.
async fn cgroup_checks(conn: &AgentConn, v2: bool) -> Result<()> {
    let agent = conn.agent();
    let out = run(&agent, "which", spec(ROOTFS, &["/bin/cat", "/proc/self/cgroup"], false)).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(text.starts_with("0::/") == v2, "cgroup v2 expected {v2}: {text:?}");

    let mut s = spec(ROOTFS, &["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"], false);
    let mut resources = oci::LinuxResources::new();
    let mut memory = oci::LinuxMemory::new();
    memory.Limit = 32 << 20;
    resources.Memory = Some(memory).into();
    s.Linux.as_mut().expect("linux").Resources = Some(resources).into();
    let hog = Container::run(&agent, "hog", s, vec![]).await.context("hog")?;
    let req = Default::default();
    let oom = agent.get_oom_event(ctx(), &req);
    let oom = tokio::time::timeout(Duration::from_secs(20), oom).await.context("no OOM event in 20 s")?;
    ensure!(oom.context("GetOOMEvent")?.container_id == "hog", "the OOM event names the container");
    ensure!(hog.wait("hog").await? == 137, "the OOM killer's SIGKILL");
    hog.remove().await?;

    let script = "while true; do echo t; sleep 0.05; done";
    let c = Container::run(&agent, "ticker", spec(ROOTFS, &["/bin/sh", "-c", script], false), vec![]).await?;
    read_until(&c, "ticker", "t").await?;
    let pause = PauseContainerRequest { container_id: "ticker".into(), ..Default::default() };
    agent.pause_container(ctx(), &pause).await.context("PauseContainer")?;
    ensure!(stays_silent(&c, Duration::from_secs(1)).await?, "a paused container prints nothing");
    let resume = ResumeContainerRequest { container_id: "ticker".into(), ..Default::default() };
    agent.resume_container(ctx(), &resume).await.context("ResumeContainer")?;
    let again = tokio::time::timeout(Duration::from_secs(10), c.read("ticker", false)).await;
    ensure!(matches!(again, Ok(Ok(_))), "a resumed container prints again: {again:?}");

    let stats = StatsContainerRequest { container_id: "ticker".into(), ..Default::default() };
    let cg = agent.stats_container(ctx(), &stats).await.context("StatsContainer")?.cgroup_stats;
    let cg = cg.into_option().context("cgroup stats")?;
    let pids = cg.pids_stats.into_option().context("pids stats")?;
    ensure!(pids.current >= 1, "{pids:?}");
    let mem = cg.memory_stats.into_option().and_then(|m| m.usage.into_option()).context("memory usage")?;
    ensure!(mem.usage > 0, "{mem:?}");
    let cpu = cg.cpu_stats.into_option().and_then(|c| c.cpu_usage.into_option()).context("cpu usage")?;
    ensure!(cpu.total_usage > 0, "{cpu:?}");
    c.remove().await?;
    Ok(())
}

#[test]
fn cgroups_v1_and_v2_in_the_vm() -> Result<()> {
    for (cmdline, v2) in [(&[][..], false), (&["agent.unified_cgroup_hierarchy=1"][..], true)] {
        let mut vm = SandboxVm::boot(vec![], cmdline, no_prepare)?;
        let conn = &vm.connect()?;
        vm.block_on(cgroup_checks(conn, v2)).with_context(|| format!("cgroup v2: {v2}"))?;
        vm.finish(conn)?;
    }
    Ok(())
}

/// What the guest holds, seen from a container that has the guest's /proc
/// and cgroup tree bound in: PID 1's (the agent's) mount table, every user
/// process's command line, and the cgroup directories named `leak*`.
#[derive(Debug, PartialEq, Eq)]
struct GuestView {
    mounts: Vec<String>,
    processes: Vec<String>,
    cgroups: Vec<String>,
}

/// The probe's own processes carry this word in their command line.
const PROBE: &str = "wisp-probe";

async fn guest_view(agent: &protocols::agent_ttrpc::AgentServiceClient, id: &str) -> Result<GuestView> {
    let script = format!(
        ": {PROBE}; sed 's/^/mount /' /host/proc/1/mounts; \
         for d in /host/proc/[0-9]*; do c=$(tr '\\0' ' ' < $d/cmdline 2>/dev/null); \
         [ -n \"$c\" ] && echo \"proc $c\"; done; \
         find /host/cgroup -type d -name 'leak*' | sed 's/^/cgroup /'"
    );
    let mut s = spec(ROOTFS, &["/bin/sh", "-c", &script], false);
    s.Mounts.push(mount("/host/proc", "/proc", "bind", &["rbind", "ro"]));
    s.Mounts.push(mount("/host/cgroup", "/sys/fs/cgroup", "bind", &["rbind", "ro"]));
    let out = run(agent, id, s).await?;
    ensure!(out.status == 0, "probe {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut view = GuestView { mounts: vec![], processes: vec![], cgroups: vec![] };
    for line in text.lines() {
        let (kind, rest) = line.split_once(' ').context("probe line")?;
        match kind {
            "mount" => view.mounts.push(rest.into()),
            "proc" if !rest.contains(PROBE) && !rest.starts_with("tr ") => view.processes.push(rest.into()),
            "proc" => {}
            "cgroup" => view.cgroups.push(rest.into()),
            other => bail!("probe line {other:?}"),
        }
    }
    view.processes.sort();
    Ok(view)
}

#[test]
fn twenty_containers_leave_no_mounts_processes_or_cgroups_in_the_vm() -> Result<()> {
    let mut vm = SandboxVm::boot(vec![], &[], no_prepare)?;
    let conn = &vm.connect()?;
    vm.block_on(async {
        let agent = conn.agent();
        let before = guest_view(&agent, "probe-before").await?;
        ensure!(before.processes.iter().any(|p| p.contains("init") || p.contains("agent")), "{before:?}");
        let mut all = Vec::new();
        for i in 0..20 {
            let id = format!("leak{i}");
            let mut scratch = Storage::new();
            scratch.driver = "ephemeral".into();
            scratch.source = "tmpfs".into();
            scratch.fstype = "tmpfs".into();
            scratch.mount_point = format!("/run/kata-containers/sandbox/ephemeral/{id}");
            let s = spec(ROOTFS, &["/bin/sleep", "1001"], false);
            all.push(Container::run(&agent, &id, s, vec![scratch]).await.with_context(|| id.clone())?);
        }
        // The probe sees the 20: otherwise its "nothing left" would prove nothing.
        let during = guest_view(&agent, "probe-during").await?;
        let sleeping = during.processes.iter().filter(|p| p.starts_with("/bin/sleep 1001")).count();
        ensure!(sleeping == 20, "20 sleepers seen: {during:?}");
        ensure!(during.mounts.iter().filter(|m| m.contains("/ephemeral/leak")).count() == 20, "{during:?}");
        ensure!(during.cgroups.len() >= 20, "a cgroup per container: {:?}", during.cgroups);
        for c in all {
            c.remove().await?;
        }
        let after = guest_view(&agent, "probe-after").await?;
        ensure!(after == before, "the guest after 20 containers differs:\nbefore {before:#?}\nafter {after:#?}");
        Ok(())
    })?;
    vm.finish(conn)
}

/// The code and message of a failed RPC, or an error when it succeeded.
fn refused<T: std::fmt::Debug>(what: &str, r: protocols::ttrpc::Result<T>) -> Result<(Code, String)> {
    match r {
        Ok(v) => bail!("{what} was accepted: {v:?}"),
        Err(e) => Ok(rpc_code(&e)),
    }
}

#[test]
fn bad_requests_get_their_codes_and_the_agent_keeps_serving_in_the_vm() -> Result<()> {
    let mut vm = SandboxVm::boot(vec![], &[], no_prepare)?;
    let conn = &vm.connect()?;
    vm.block_on(async {
        let agent = conn.agent();
        let expect = |what: &str, got: (Code, String), code: Code, words: &str| -> Result<()> {
            ensure!(got.0 == code && got.1.contains(words), "{what}: {got:?}, expected {code:?} naming {words:?}");
            Ok(())
        };

        let s = with_linux(spec(ROOTFS, &["/bin/true"], false), |l| l.Namespaces[0].Type = "bogus".into());
        let got = refused("unknown namespace", Container::create(&agent, "ns", s, vec![]).await)?;
        expect("unknown namespace", got, Code::INVALID_ARGUMENT, "bogus")?;
        assert_serving(conn).await?;

        let got = refused(
            "relative rootfs",
            Container::create(&agent, "rel", spec("rootfs", &["/bin/true"], false), vec![]).await,
        )?;
        expect("relative rootfs", got, Code::INVALID_ARGUMENT, "not absolute")?;
        assert_serving(conn).await?;

        let mut s = spec(ROOTFS, &["/bin/true"], false);
        s.Mounts.push(mount("../../etc", "tmpfs", "tmpfs", &[]));
        let got = refused("mount destination ../../etc", Container::create(&agent, "up", s, vec![]).await)?;
        expect("mount destination ../../etc", got, Code::INVALID_ARGUMENT, "../../etc")?;
        assert_serving(conn).await?;

        let mut copy = CopyFileRequest::new();
        copy.path = "/etc/passwd".into();
        copy.data = b"root::0:0::/:/bin/sh\n".to_vec();
        copy.file_size = copy.data.len() as i64;
        copy.file_mode = 0o644;
        let got = refused("CopyFile /etc/passwd", agent.copy_file(ctx(), &copy).await)?;
        expect("CopyFile /etc/passwd", got, Code::PERMISSION_DENIED, "/etc/passwd")?;
        assert_serving(conn).await?;

        let first = Container::create(&agent, "dup", spec(ROOTFS, &["/bin/true"], false), vec![]).await?;
        let again = Container::create(&agent, "dup", spec(ROOTFS, &["/bin/true"], false), vec![]).await;
        expect("duplicate id", refused("duplicate id", again)?, Code::ALREADY_EXISTS, "dup")?;
        assert_serving(conn).await?;
        first.remove().await?;

        let ghost = Container::named(&agent, "ghost");
        expect(
            "exec into a missing container",
            refused("exec", ghost.exec("e", &["/bin/true"]).await)?,
            Code::NOT_FOUND,
            "ghost",
        )?;
        assert_serving(conn).await?;

        // 64 MiB is over ttrpc's 4 MiB frame: the ttrpc client refuses to
        // send it (Go's ttrpc too, as RESOURCE_EXHAUSTED; Rust's as a local
        // error without a code). A raw oversized frame only drops its own
        // connection (agent/tests/protocol.rs). Either way the agent and
        // this connection go on.
        let cat = Container::run(&agent, "wc", spec(ROOTFS, &["/bin/wc", "-c"], false), vec![]).await?;
        let got = refused("64 MiB WriteStdin", cat.write("wc", &vec![b'x'; 64 << 20]).await)?;
        ensure!(got.1.contains("exceed maximum message size"), "64 MiB WriteStdin: {got:?}");
        assert_serving(conn).await?;
        ensure!(cat.write("wc", &vec![b'x'; 3 << 20]).await? == 3 << 20, "3 MiB goes through");
        cat.close_stdin("wc").await?;
        let out = cat.output("wc").await?;
        ensure!(String::from_utf8_lossy(&out.stdout).trim() == (3u32 << 20).to_string(), "{out:?}");
        cat.remove().await?;
        assert_serving(conn).await?;
        Ok(())
    })?;
    vm.finish(conn)
}
