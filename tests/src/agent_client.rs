//! Running containers through the agent's Kata protocol: the client side the
//! VM tests, `make run` and the agent's host tests share.
//!
//! It speaks only the generated `AgentService` client, so it works the same
//! over a unix socket (host tests) and hybrid vsock (a VM). The agent's host
//! tests include this file by path, so it depends on nothing but `protocols`,
//! and `std`.

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::task::Poll;

use protocols::agent::{
    CloseStdinRequest, CreateContainerRequest, ExecProcessRequest, ReadStreamRequest, RemoveContainerRequest,
    SignalProcessRequest, StartContainerRequest, Storage, TtyWinResizeRequest, WaitProcessRequest, WriteStreamRequest,
};
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::oci;
use protocols::ttrpc::{self, context, Code};

/// Busybox applets the test containers use.
pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "stty", "dd", "head", "tr", "true", "wc", "ls", "mount", "ps", "uname", "tty", "id",
    "mkdir", "touch", "find", "grep",
];

/// Where `make deps` (busybox-static) puts a statically linked busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// Every RPC gets this long.
pub fn ctx() -> ttrpc::context::Context {
    context::with_timeout(30_000_000_000)
}

/// The status code and message of an RPC error (UNKNOWN for transport errors).
pub fn rpc_code(e: &ttrpc::Error) -> (Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_owned()),
        other => (Code::UNKNOWN, format!("{other:?}")),
    }
}

/// Whether a read failed because the stream ended: the agent answers EOF
/// the way Kata's does, as an INTERNAL error saying so.
pub fn is_eof(e: &ttrpc::Error) -> bool {
    let (code, msg) = rpc_code(e);
    code == Code::INTERNAL && msg.contains("eof")
}

/// Fills `dir` with a busybox root filesystem: `/bin/busybox`, its applets
/// as symlinks, and the directories a container mounts over.
pub fn busybox_rootfs(dir: &Path) -> std::io::Result<()> {
    let busybox = Path::new(BUSYBOX);
    if !busybox.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{BUSYBOX} is missing: run `make deps` (busybox-static)"),
        ));
    }
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    copy_executable(busybox, &bin.join("busybox"))?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    Ok(())
}

/// Copies a program that a test is about to run, in a `cp` of its own. Tests run in parallel
/// threads: a copy written by this process is open for writing while another test forks, the
/// child holds that descriptor until it execs, and an exec of the copy in that window fails
/// with ETXTBSY ("Text file busy": CI saw it once). The writer in its own process never is.
pub fn copy_executable(from: &Path, to: &Path) -> std::io::Result<()> {
    let status = std::process::Command::new("cp").arg("--").arg(from).arg(to).status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!("cp {} {}: {status}", from.display(), to.display())));
    }
    Ok(())
}

/// A process running `args` as root in `/` with `PATH=/bin`; a terminal is 24x80.
pub fn process(args: &[&str], terminal: bool) -> oci::Process {
    let mut p = oci::Process::new();
    p.Args = args.iter().map(|s| s.to_string()).collect();
    p.Env = vec!["PATH=/bin".into(), "HOME=/".into()];
    p.Cwd = "/".into();
    p.Terminal = terminal;
    if terminal {
        let mut size = oci::Box::new();
        size.Height = 24;
        size.Width = 80;
        p.ConsoleSize = Some(size).into();
    }
    p.User = Some(oci::User::new()).into();
    p
}

/// A minimal spec like `runc spec`'s: `root` as the rootfs, /proc, a tmpfs
/// /dev (device nodes cannot be made on every file system a rootfs comes
/// on, 9p for one) with its devpts, own pid, mount, ipc and uts namespaces.
pub fn spec(root: &str, args: &[&str], terminal: bool) -> oci::Spec {
    let mut s = oci::Spec::new();
    s.Version = "1.1.0".into();
    s.Process = Some(process(args, terminal)).into();
    let mut r = oci::Root::new();
    r.Path = root.into();
    s.Root = Some(r).into();
    let mount = |destination: &str, fstype: &str, options: &[&str]| {
        let mut m = oci::Mount::new();
        m.destination = destination.into();
        m.source = fstype.into();
        m.type_ = fstype.into();
        m.options = options.iter().map(|o| o.to_string()).collect();
        m
    };
    s.Mounts = vec![
        mount("/proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        mount("/dev/pts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]),
    ];
    let mut linux = oci::Linux::new();
    for t in ["pid", "mount", "ipc", "uts"] {
        let mut ns = oci::LinuxNamespace::new();
        ns.Type = t.into();
        linux.Namespaces.push(ns);
    }
    s.Linux = Some(linux).into();
    s
}

/// A host directory shared by 9p under `tag`, mounted at `mount_point` in the guest.
pub fn storage_9p(tag: &str, mount_point: &str) -> Storage {
    let mut s = Storage::new();
    s.driver = "9p".into();
    s.source = tag.into();
    s.fstype = "9p".into();
    s.options = vec!["trans=virtio".into(), "version=9p2000.L".into()];
    s.mount_point = mount_point.into();
    s
}

/// What a finished container left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// As WaitProcess reports it: the exit code, or 128 + the signal.
    pub status: i32,
}

/// One container of the agent, addressed by id.
#[derive(Debug)]
pub struct Container<'a> {
    client: &'a AgentServiceClient,
    pub id: String,
}

impl<'a> Container<'a> {
    /// A handle to a container that may or may not exist.
    pub fn named(client: &'a AgentServiceClient, id: &str) -> Self {
        Container { client, id: id.into() }
    }

    /// CreateContainer, with the init's exec id equal to the container id (as
    /// the Kata runtime does).
    pub async fn create(
        client: &'a AgentServiceClient,
        id: &str,
        spec: oci::Spec,
        storages: Vec<Storage>,
    ) -> ttrpc::Result<Self> {
        let mut req = CreateContainerRequest::new();
        req.container_id = id.into();
        req.exec_id = id.into();
        req.OCI = Some(spec).into();
        req.storages = storages;
        client.create_container(ctx(), &req).await?;
        Ok(Container::named(client, id))
    }

    pub async fn start(&self) -> ttrpc::Result<()> {
        let mut req = StartContainerRequest::new();
        req.container_id = self.id.clone();
        self.client.start_container(ctx(), &req).await.map(drop)
    }

    /// Create then start.
    pub async fn run(
        client: &'a AgentServiceClient,
        id: &str,
        spec: oci::Spec,
        storages: Vec<Storage>,
    ) -> ttrpc::Result<Self> {
        let c = Container::create(client, id, spec, storages).await?;
        c.start().await?;
        Ok(c)
    }

    /// One ReadStdout/ReadStderr of up to 32 KiB.
    pub async fn read(&self, exec_id: &str, stderr: bool) -> ttrpc::Result<Vec<u8>> {
        let mut req = ReadStreamRequest::new();
        req.container_id = self.id.clone();
        req.exec_id = exec_id.into();
        req.len = 32 * 1024;
        let r = if stderr {
            self.client.read_stderr(ctx(), &req).await
        } else {
            self.client.read_stdout(ctx(), &req).await
        };
        r.map(|r| r.data)
    }

    /// Everything until EOF.
    pub async fn read_to_eof(&self, exec_id: &str, stderr: bool) -> ttrpc::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            match self.read(exec_id, stderr).await {
                Ok(data) => out.extend(data),
                Err(e) if is_eof(&e) => return Ok(out),
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn wait(&self, exec_id: &str) -> ttrpc::Result<i32> {
        let mut req = WaitProcessRequest::new();
        req.container_id = self.id.clone();
        req.exec_id = exec_id.into();
        self.client.wait_process(ctx(), &req).await.map(|r| r.status)
    }

    /// Both output streams to EOF, then the exit status.
    pub async fn output(&self, exec_id: &str) -> ttrpc::Result<Output> {
        // Both at once: a process blocked on a full stderr never ends its stdout.
        let (stdout, stderr) = both(self.read_to_eof(exec_id, false), self.read_to_eof(exec_id, true)).await;
        let status = self.wait(exec_id).await?;
        Ok(Output { stdout: stdout?, stderr: stderr?, status })
    }

    pub async fn signal(&self, exec_id: &str, signal: u32) -> ttrpc::Result<()> {
        let mut req = SignalProcessRequest::new();
        req.container_id = self.id.clone();
        req.exec_id = exec_id.into();
        req.signal = signal;
        self.client.signal_process(ctx(), &req).await.map(drop)
    }

    pub async fn exec(&self, exec_id: &str, args: &[&str]) -> ttrpc::Result<()> {
        self.exec_process(exec_id, process(args, false)).await
    }

    /// ExecProcess of any process (a terminal, another user, ...).
    pub async fn exec_process(&self, exec_id: &str, process: oci::Process) -> ttrpc::Result<()> {
        let mut req = ExecProcessRequest::new();
        req.container_id = self.id.clone();
        req.exec_id = exec_id.into();
        req.process = Some(process).into();
        self.client.exec_process(ctx(), &req).await.map(drop)
    }

    pub async fn write(&self, exec_id: &str, data: &[u8]) -> ttrpc::Result<u32> {
        let mut req = WriteStreamRequest::new();
        req.container_id = self.id.clone();
        req.exec_id = exec_id.into();
        req.data = data.to_vec();
        self.client.write_stdin(ctx(), &req).await.map(|r| r.len)
    }

    pub async fn close_stdin(&self, exec_id: &str) -> ttrpc::Result<()> {
        let mut req = CloseStdinRequest::new();
        req.container_id = self.id.clone();
        req.exec_id = exec_id.into();
        self.client.close_stdin(ctx(), &req).await.map(drop)
    }

    pub async fn resize(&self, exec_id: &str, rows: u32, columns: u32) -> ttrpc::Result<()> {
        let mut req = TtyWinResizeRequest::new();
        req.container_id = self.id.clone();
        req.exec_id = exec_id.into();
        req.row = rows;
        req.column = columns;
        self.client.tty_win_resize(ctx(), &req).await.map(drop)
    }

    /// RemoveContainer, giving the processes 10 s to die.
    pub async fn remove(self) -> ttrpc::Result<()> {
        let mut req = RemoveContainerRequest::new();
        req.container_id = self.id.clone();
        req.timeout = 10;
        self.client.remove_container(ctx(), &req).await.map(drop)
    }
}

/// Runs two futures concurrently to completion (`join` without the macro feature).
async fn both<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none() {
            if let Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        match (ra.take(), rb.take()) {
            (Some(x), Some(y)) => Poll::Ready((x, y)),
            (x, y) => {
                (ra, rb) = (x, y);
                Poll::Pending
            }
        }
    })
    .await
}

/// Creates, starts, collects the output and exit status of, and removes one container.
pub async fn run_to_completion(
    client: &AgentServiceClient,
    id: &str,
    spec: oci::Spec,
    storages: Vec<Storage>,
) -> ttrpc::Result<Output> {
    let c = Container::run(client, id, spec, storages).await?;
    let out = c.output(id).await?;
    c.remove().await?;
    Ok(out)
}
