//! The `wisp-agent __launch` process: a fresh, single-threaded copy of the
//! agent that reads its [`Job`] from fd 3, enters or makes the namespaces,
//! forks (CLONE_PARENT) the final process into the pid namespace, and in
//! that process sets up the rootfs and identity before `execve`.
//!
//! Every error is sent to the parent as a [`WireError`] and the process
//! exits non-zero; nothing here panics on what the spec says.

use std::ffi::CString;
use std::io;
use std::os::fd::FromRawFd as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use oci_spec::runtime::{Process, Spec};

use super::error::WireError;
use super::identity::{self, CapSets, ResolvedUser};
use super::wire::{Channel, Job, ToChild, ToParent};
use super::{hooks, namespaces, rootfs, seccomp, LAUNCH_FD};

/// The PATH used when the container's env has none (runc's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(crate) fn main() -> ! {
    // SAFETY: fcntl on a descriptor number; harmless if it is not open.
    let rc = unsafe { libc::fcntl(LAUNCH_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    if rc != 0 {
        eprintln!("wisp-agent __launch: no launch socket on fd {LAUNCH_FD}; this mode is for the agent only");
        std::process::exit(2);
    }
    // SAFETY: the parent passed the socket as fd 3 (checked open above) and
    // nothing else in this fresh process owns it.
    let sock = unsafe { UnixStream::from_raw_fd(LAUNCH_FD) };
    let mut chan = match Channel::new(sock) {
        Ok(c) => c,
        Err(_) => std::process::exit(2),
    };
    let err = match run(&mut chan) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = chan.send(&ToParent::Error(err));
    std::process::exit(1)
}

fn protocol(what: &str) -> WireError {
    WireError::setup(format!("launch protocol: {what}"))
}

fn recv(chan: &mut Channel) -> Result<ToChild, WireError> {
    match chan.recv::<ToChild>() {
        Ok(Some(m)) => Ok(m),
        // The parent gave up (the container was deleted before start).
        Ok(None) => std::process::exit(1),
        Err(e) => Err(protocol(&format!("read: {e}"))),
    }
}

fn send(chan: &mut Channel, msg: &ToParent) -> Result<(), WireError> {
    chan.send(msg).map_err(|e| protocol(&format!("write: {e}")))
}

fn run(chan: &mut Channel) -> Result<std::convert::Infallible, WireError> {
    let ToChild::Job(job) = recv(chan)? else { return Err(protocol("expected the job")) };
    match *job {
        Job::Init { container_id: _, spec, bundle, terminal } => {
            let ns = namespaces::plan(&spec)?;
            if !ns.has(CloneFlags::CLONE_NEWNS) {
                return Err(WireError::invalid("the container needs a mount namespace"));
            }
            rootfs::root_path(&spec)?;
            let process = spec.process().clone().ok_or_else(|| WireError::invalid("the spec has no process"))?;
            namespaces::join_all(&ns.join)?;
            if ns.new.contains(CloneFlags::CLONE_NEWUSER) {
                namespaces::unshare(CloneFlags::CLONE_NEWUSER)?;
                send(chan, &ToParent::IdMaps)?;
                let ToChild::IdMapsDone = recv(chan)? else { return Err(protocol("expected the id maps")) };
                become_root()?;
            }
            namespaces::unshare(ns.new & !CloneFlags::CLONE_NEWUSER)?;
            fork_final(chan)?;
            let uts = if ns.new.contains(CloneFlags::CLONE_NEWUTS) {
                rootfs::Uts::New
            } else if ns.has(CloneFlags::CLONE_NEWUTS) {
                rootfs::Uts::Joined
            } else {
                rootfs::Uts::Host
            };
            init(chan, &spec, &process, &bundle, terminal, uts)
        }
        Job::Exec { container_id: _, init_pid, process, spec, terminal } => {
            namespaces::join_all(&namespaces::of_process(init_pid)?)?;
            fork_final(chan)?;
            exec(chan, &spec, &process, terminal)
        }
    }
}

/// In a new user namespace: uid and gid 0 of it (mapped by the parent).
fn become_root() -> Result<(), WireError> {
    let (u, g) = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
    nix::unistd::setresgid(g, g, g).map_err(|e| WireError::sys("setresgid 0 in the user namespace", e))?;
    nix::unistd::setresuid(u, u, u).map_err(|e| WireError::sys("setresuid 0 in the user namespace", e))
}

/// Forks the final process as a sibling (CLONE_PARENT: the agent is its
/// parent and reaper). This process reports its pid and exits; the new one
/// waits for that report to be sent before it says anything itself.
fn fork_final(chan: &mut Channel) -> Result<(), WireError> {
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| WireError::sys("pipe", e))?;
    // SAFETY: a raw clone without CLONE_VM and without a new stack behaves
    // like fork(); this process is single-threaded, so the child may go on
    // running ordinary code.
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::CLONE_PARENT | libc::SIGCHLD, 0, 0, 0, 0) };
    if pid < 0 {
        return Err(WireError::sys("clone", io::Error::last_os_error()));
    }
    if pid > 0 {
        drop(rd);
        if chan.send(&ToParent::Pid(pid as i32)).is_err() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
        }
        drop(wr);
        std::process::exit(0);
    }
    drop(wr);
    let mut buf = [0u8; 1];
    // EOF when the first process exited, after it sent the pid.
    let _ = nix::unistd::read(&rd, &mut buf);
    Ok(())
}

fn oom_score_adj(process: &Process) -> Result<(), WireError> {
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| WireError::sys(format!("oom_score_adj {adj}"), e))?;
    }
    Ok(())
}

fn controlling_terminal(terminal: bool) -> Result<(), WireError> {
    if terminal {
        // SAFETY: TIOCSCTTY on fd 0 takes an integer argument; no memory is passed.
        let rc = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
        if rc != 0 {
            return Err(WireError::sys(
                "make the pty the controlling terminal (TIOCSCTTY)",
                io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// The container's init, in its pid namespace: rootfs, hooks, identity,
/// "created", wait for "start", exec.
fn init(
    chan: &mut Channel,
    spec: &Spec,
    process: &Process,
    bundle: &Path,
    terminal: bool,
    uts: rootfs::Uts,
) -> Result<std::convert::Infallible, WireError> {
    nix::unistd::setsid().map_err(|e| WireError::sys("setsid", e))?;
    controlling_terminal(terminal)?;
    oom_score_adj(process)?;
    let mut logs = Vec::new();
    let root = rootfs::prepare(spec, bundle, &mut |l| logs.push(l))?;
    for l in logs {
        send(chan, &ToParent::Log(l))?;
    }
    send(chan, &ToParent::RuntimeHooks)?;
    let ToChild::RuntimeHooksDone { state } = recv(chan)? else { return Err(protocol("expected runtime hooks done")) };
    let container_hooks = spec.hooks().as_ref().and_then(|h| h.create_container().clone()).unwrap_or_default();
    for h in &container_hooks {
        hooks::run_hook(h, state.as_bytes()).map_err(|e| WireError::setup(format!("createContainer {e}")))?;
    }
    if rootfs::pivot(&root)? {
        send(
            chan,
            &ToParent::Log("the agent runs from an initramfs: rootfs moved over / and chrooted (no pivot_root)".into()),
        )?;
    }
    drop(root);
    rootfs::finish(spec, uts)?;
    if terminal {
        rootfs::reopen_console()?;
    }
    personality(spec)?;
    let ready = prepare(chan, spec, process)?;
    send(chan, &ToParent::Created)?;
    let ToChild::Start = recv(chan)? else { return Err(protocol("expected start")) };
    let start_hooks = spec.hooks().as_ref().and_then(|h| h.start_container().clone()).unwrap_or_default();
    for h in &start_hooks {
        hooks::run_hook(h, state.as_bytes()).map_err(|e| WireError::setup(format!("startContainer {e}")))?;
    }
    ready.exec()
}

/// `linux.personality`: the execution domain (LINUX or LINUX32), like runc.
fn personality(spec: &Spec) -> Result<(), WireError> {
    let Some(p) = spec.linux().as_ref().and_then(|l| l.personality().clone()) else { return Ok(()) };
    if p.flags().as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(WireError::invalid("linux.personality.flags are not supported"));
    }
    let domain: libc::c_ulong = match p.domain() {
        oci_spec::runtime::LinuxPersonalityDomain::PerLinux => 0x0000,
        oci_spec::runtime::LinuxPersonalityDomain::PerLinux32 => 0x0008,
    };
    // SAFETY: personality(2) takes a plain integer and touches no memory.
    let rc = unsafe { libc::personality(domain) };
    if rc == -1 {
        return Err(WireError::sys(format!("personality {:?}", p.domain()), io::Error::last_os_error()));
    }
    Ok(())
}

/// An extra process in a running container (already in its namespaces).
fn exec(
    chan: &mut Channel,
    spec: &Spec,
    process: &Process,
    terminal: bool,
) -> Result<std::convert::Infallible, WireError> {
    if terminal {
        nix::unistd::setsid().map_err(|e| WireError::sys("setsid", e))?;
        controlling_terminal(true)?;
    }
    oom_score_adj(process)?;
    prepare(chan, spec, process)?.exec()
}

/// A process whose identity is switched and whose binary is found: only
/// the no_new_privs seccomp filter and execve remain.
#[derive(Debug)]
struct Ready {
    path: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    late_seccomp: Option<seccomp::Plan>,
}

impl Ready {
    fn exec(self) -> Result<std::convert::Infallible, WireError> {
        if let Some(plan) = &self.late_seccomp {
            seccomp::load(plan)?;
        }
        let err = nix::unistd::execve(&self.path, &self.args, &self.env).unwrap_err();
        Err(WireError::sys(format!("exec {}", self.path.to_string_lossy()), err))
    }
}

fn cstring(s: &str, what: &str) -> Result<CString, WireError> {
    CString::new(s).map_err(|_| WireError::invalid(format!("{what} {s:?} contains a NUL byte")))
}

fn read_optional(path: &str) -> Result<String, WireError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(WireError::sys(format!("read the container's {path}"), e)),
    }
}

/// runc's order from here: rlimits, seccomp (before the caps go, unless
/// no_new_privs lets an unprivileged process load it later), bounding set,
/// user, capabilities, cwd, umask, no_new_privs, binary lookup.
fn prepare(chan: &mut Channel, spec: &Spec, process: &Process) -> Result<Ready, WireError> {
    let args = process.args().clone().unwrap_or_default();
    let Some(argv0) = args.first() else { return Err(WireError::invalid("process.args is empty")) };
    for (what, set) in [("apparmor profile", process.apparmor_profile()), ("selinux label", process.selinux_label())] {
        if let Some(v) = set.as_deref().filter(|v| !v.is_empty()) {
            send(chan, &ToParent::Log(format!("{what} {v:?} ignored: this guest has no LSM for it")))?;
        }
    }
    let passwd = identity::parse_passwd(&read_optional("/etc/passwd")?);
    let group = identity::parse_group(&read_optional("/etc/group")?);
    let user: ResolvedUser = identity::resolve_user(process.user(), &passwd, &group)?;
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    let caps: Option<CapSets> = match process.capabilities() {
        Some(c) => {
            let (sets, unknown) = identity::cap_sets(c);
            for u in unknown {
                send(chan, &ToParent::Log(format!("unknown capability {u} ignored")))?;
            }
            Some(sets)
        }
        None => None,
    };
    let seccomp_plan = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(s) => {
            let plan = seccomp::plan(s)?;
            for name in &plan.skipped {
                send(chan, &ToParent::Log(format!("seccomp: unknown syscall {name:?} skipped")))?;
            }
            Some(plan)
        }
        None => None,
    };
    let nnp = process.no_new_privileges() == Some(true);
    identity::apply_rlimits(process)?;
    identity::apply_io_priority(process)?;
    let late_seccomp = if nnp {
        seccomp_plan
    } else {
        if let Some(plan) = &seccomp_plan {
            seccomp::load(plan)?;
        }
        None
    };
    for w in identity::apply_user_and_caps(&user, caps.as_ref())? {
        send(chan, &ToParent::Log(w))?;
    }
    let cwd = if process.cwd().as_os_str().is_empty() { Path::new("/") } else { process.cwd().as_path() };
    nix::unistd::chdir(cwd).map_err(|e| WireError::sys(format!("chdir {}", cwd.display()), e))?;
    let umask = process.user().umask().unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask as libc::mode_t));
    if nnp {
        identity::set_no_new_privs()?;
    }
    let path_var = env.iter().rev().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
    let path = look_path(argv0, path_var)?;
    Ok(Ready {
        path: CString::new(path.as_os_str().as_bytes()).map_err(|_| WireError::invalid("binary path has a NUL"))?,
        args: args.iter().map(|a| cstring(a, "argument")).collect::<Result<_, _>>()?,
        env: env.iter().map(|e| cstring(e, "env entry")).collect::<Result<_, _>>()?,
        late_seccomp,
    })
}

fn executable(p: &Path) -> Result<bool, io::Error> {
    let meta = std::fs::metadata(p)?;
    Ok(meta.is_file() && nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok())
}

/// The binary `name` resolves to: itself if it has a `/`, else the first
/// executable in `path_var`'s directories, like execvp and runc.
fn look_path(name: &str, path_var: &str) -> Result<PathBuf, WireError> {
    if name.contains('/') {
        return match executable(Path::new(name)) {
            Ok(true) => Ok(PathBuf::from(name)),
            Ok(false) => Err(WireError {
                kind: super::error::ErrorKind::PermissionDenied,
                msg: format!("exec {name}: not an executable file"),
            }),
            Err(e) => Err(WireError::sys(format!("exec {name}"), e)),
        };
    }
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(name);
        if let Ok(true) = executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(WireError::not_found(format!("exec {name:?}: executable file not found in $PATH ({path_var})")))
}
