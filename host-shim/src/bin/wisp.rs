//! `wisp`: the host CLI of wisp.
//!
//! `wisp check [--config FILE]` validates the configuration and the host (QEMU present, KVM
//! usable or not, the agent channel and shared filesystem helpers present, kernel and initrd
//! built, with `[factory] template = true` whether a template matches) and says what to fix;
//! it exits 1 when something blocks running a sandbox. With
//! `[hypervisor.stratovirt]` configured it reports StratoVirt's binary and images instead of QEMU's.
//!
//! `wisp gc [--dry-run]` removes the sandboxes whose shim is gone (their VM, helpers, mounts
//! and state: [`wisp_shim::gc`]); `--dry-run` only lists them. Live sandboxes are never touched.
//!
//! `wisp template create|list|remove` manages the VM templates sandboxes are cloned from
//! ([`template`]).
//!
//! `wisp bench boot [ARGS]` runs the boot benchmark (`wisp-bench-boot` next to this binary).
//!
//! `wisp direct-volume add|remove|stats|resize|list` manages Kata direct volumes
//! ([`direct_volume`]); `wisp block-volume hot-plug|hot-unplug` plugs a disk into a running
//! container ([`block_volume`]).

#[path = "wisp/block_volume.rs"]
mod block_volume;
#[path = "wisp/direct_volume.rs"]
mod direct_volume;
#[path = "wisp/template.rs"]
mod template;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};
use wisp_shim::config::{find_program, locate_program, Config, HypervisorConfig, QemuSection, StratoVirtSection};
use wisp_shim::hypervisor::qemu::config::QemuSpec;
use wisp_shim::hypervisor::vhost_vsock::{GuestCid, DEVICE as VHOST_VSOCK_DEVICE, FIRST_GUEST_CID};
use wisp_shim::sandbox::{cleanup_dir, state_root};
use wisp_shim::state::ProcFs;

#[derive(Debug, Parser)]
#[command(name = "wisp", version, about = "Host CLI of the wisp sandbox runtime")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Validate the configuration and the host, and say what to fix.
    Check {
        /// The configuration file (default: the shim's lookup order).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Kata direct volumes (kata-ctl's layout): add, remove, stats, resize, list.
    DirectVolume {
        /// The configuration file (default: the shim's lookup order).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: direct_volume::Cmd,
    },
    /// Hot-plug a disk into a running container, or unplug it.
    BlockVolume {
        #[command(subcommand)]
        command: block_volume::Cmd,
    },
    /// VM templates sandboxes are cloned from ([factory] template = true): create, list, remove.
    Template {
        /// The configuration file (default: the shim's lookup order).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: template::Cmd,
    },
    /// Remove the sandboxes whose shim is gone: VMs, helpers, mounts, state.
    Gc {
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Benchmarks (`make bench`).
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCmd {
    /// Boot time and sizes: floor vs agent per configuration, phases, memory; table, JSON and
    /// SVG (runs `wisp-bench-boot` from this binary's directory; `wisp bench boot --help`
    /// lists its options, e.g. `--quick`, `--runs N`, `--all`).
    #[command(disable_help_flag = true)]
    Boot {
        /// Passed on to wisp-bench-boot.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Replaces this process with `wisp-bench-boot` from the same directory (the bench lives in
/// the test crate, beside the VM harness it drives).
fn exec_bench_boot(args: &[String]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let sibling = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join("wisp-bench-boot")));
    let Some(program) = sibling.filter(|p| p.is_file()) else {
        eprintln!("wisp bench boot: wisp-bench-boot not found next to this binary; run `make tools` (it is a build of the tests crate)");
        return ExitCode::from(2);
    };
    let err = Command::new(&program).args(args).exec();
    eprintln!("wisp bench boot: cannot run {}: {err}", program.display());
    ExitCode::from(2)
}

#[derive(Debug, Default)]
struct Report {
    failed: bool,
}

impl Report {
    fn ok(&mut self, what: &str, detail: impl AsRef<str>) {
        println!("ok    {what}: {}", detail.as_ref());
    }
    fn warn(&mut self, what: &str, detail: impl AsRef<str>) {
        println!("warn  {what}: {}", detail.as_ref());
    }
    fn fail(&mut self, what: &str, detail: impl AsRef<str>) {
        println!("FAIL  {what}: {}", detail.as_ref());
        self.failed = true;
    }
}

/// Reports where helper `what` (configured as `configured`) is found: the configured path, a
/// fallback to the build-time `cargo install` directory (a warning: install it), or nowhere.
/// Returns the path found.
fn helper(r: &mut Report, what: &str, configured: &Path, without: &str) -> Option<PathBuf> {
    let found = locate_program(configured);
    match &found {
        Some(found) if !found.fallback => r.ok(what, found.path.display().to_string()),
        Some(found) => r.warn(
            what,
            format!(
                "{} missing; using the build-time fallback {} — `make install` (or set the path in the configuration)",
                configured.display(),
                found.path.display()
            ),
        ),
        None => r.warn(what, format!("{} not found — {without}", configured.display())),
    }
    found.map(|found| found.path)
}

fn check(config_path: Option<&Path>) -> bool {
    let mut r = Report::default();
    let config = match config_path.map_or_else(Config::load, Config::from_file) {
        Ok(config) => {
            r.ok("configuration", config.source_name());
            config
        }
        Err(err) => {
            r.fail("configuration", format!("{} — fix the file or unset WISP_CONFIG", wisp_shim::error_chain(&err)));
            return false;
        }
    };
    // Only the chosen VMM is checked: the other's section is not read.
    match &config.hypervisor {
        HypervisorConfig::Qemu(q) => {
            check_qemu(&mut r, &config, q);
            check_host_devices(&mut r);
            check_helpers(&mut r, q);
        }
        HypervisorConfig::StratoVirt(section) => {
            check_host_devices(&mut r);
            check_stratovirt(&mut r, section);
        }
    }
    check_sandbox_vm(&mut r, &config);
    if !r.failed {
        println!("wisp is ready: ctr run --runtime io.containerd.wisp.v2 ...");
    }
    !r.failed
}

/// QEMU's binary and version, and the guest kernel and initrd it boots.
fn check_qemu(r: &mut Report, config: &Config, q: &QemuSection) {
    match find_program(&q.path) {
        Some(qemu) => {
            let version = Command::new(&qemu)
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_owned())
                .unwrap_or_default();
            r.ok("qemu", format!("{} ({version})", qemu.display()));
        }
        None => r.fail(
            "qemu",
            format!(
                "{} not found — `make deps` (apt-get install qemu-system-x86) or set hypervisor.qemu.path",
                q.path.display()
            ),
        ),
    }
    for (what, path) in [("kernel", config.kernel()), ("initrd", config.initrd())] {
        if path.is_file() {
            r.ok(what, path.display().to_string());
        } else {
            r.fail(
                what,
                format!("{} missing — run `make kernel initrd` or set hypervisor.qemu.{what}", path.display()),
            );
        }
    }
}

/// `/dev/kvm` and `/dev/vhost-vsock`: what the host kernel offers.
fn check_host_devices(r: &mut Report) {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => r.ok("/dev/kvm", "opens (whether a guest really runs under KVM is probed below)"),
        Err(err) => r.warn("/dev/kvm", format!("{err} — VMs run under TCG (slower); load kvm_intel/kvm_amd for KVM")),
    }
    if Path::new(VHOST_VSOCK_DEVICE).exists() {
        // Claiming a context id is the real test (the claim ends when the descriptor closes).
        match GuestCid::claim(Path::new(VHOST_VSOCK_DEVICE), FIRST_GUEST_CID) {
            Ok(claimed) => r.ok(
                VHOST_VSOCK_DEVICE,
                format!("usable (context id {} free): channel \"auto\" uses vhost-vsock", claimed.cid()),
            ),
            Err(err) => r.warn(VHOST_VSOCK_DEVICE, format!("{err} — channel \"auto\" will fail; set channel")),
        }
    } else {
        r.ok(VHOST_VSOCK_DEVICE, "absent (fine: vhost-user-vsock or virtio-serial is used)");
    }
}

/// The helper binaries and, when asked for, rootless mode.
fn check_helpers(r: &mut Report, q: &QemuSection) {
    let vsock_backend = helper(
        r,
        "vhost-device-vsock",
        &q.vhost_device_vsock,
        "the agent channel falls back to virtio-serial; `make deps install` for vsock",
    );
    if let Some(path) = vsock_backend {
        check_vsock_backend_patch(r, &path);
    }
    let _ = helper(
        r,
        "virtiofsd",
        &q.virtio_fs_daemon,
        "the rootfs is shared by virtio-9p; `make deps install` for virtio-fs",
    );
    if q.rootless {
        r.ok(
            "rootless",
            format!(
                "QEMU and vhost-device-vsock run as a uid of their own from {} (virtiofsd stays root, sandboxed); \
                 the state root must be traversable by them",
                wisp_shim::hypervisor::confine::ROOTLESS_FIRST_ID
            ),
        );
    }
}

/// Whether the vhost-device-vsock at `path` carries our fix for the stall at the guest's boot
/// (third_party/vhost-device-vsock: its `--version` ends in `+wisp.N`).
fn check_vsock_backend_patch(r: &mut Report, path: &Path) {
    let version = std::process::Command::new(path).arg("--version").output();
    let version = version.map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned()).unwrap_or_default();
    if version.contains("+wisp.") {
        r.ok("vhost-device-vsock patch", version);
    } else {
        r.warn(
            "vhost-device-vsock patch",
            format!(
                "{:?} lacks wisp's fix: a connect while the guest boots can stall the agent channel \
                 (15 s, then a second boot) — `make deps install` (third_party/vhost-device-vsock)",
                if version.is_empty() { "no --version" } else { version.as_str() }
            ),
        );
    }
}

/// The state root, and the VM a sandbox would boot (the KVM probe included).
fn check_sandbox_vm(r: &mut Report, config: &Config) {
    let root = state_root();
    match std::fs::create_dir_all(&root) {
        Ok(()) => r.ok("state dir", root.display().to_string()),
        Err(err) => {
            r.fail("state dir", format!("cannot create {}: {err} — run as root or set WISP_STATE_DIR", root.display()))
        }
    }
    if config.qemu().is_none() {
        return;
    }
    match QemuSpec::resolve(config, &root, true) {
        Ok(spec) => {
            r.ok(
                "sandbox VM",
                format!(
                    "{:?}, {} vCPU, {} MiB, accel {}, agent over {}, rootfs over {}",
                    spec.machine,
                    spec.vcpus,
                    spec.memory_mib,
                    spec.accel,
                    spec.channel.map_or_else(|| "nothing".to_owned(), |c| c.to_string()),
                    spec.shared_fs.map_or_else(|| "nothing".to_owned(), |f| f.to_string())
                ),
            );
            check_template(r, config, &root, &spec);
        }
        Err(err) => r.fail("sandbox VM", wisp_shim::error_chain(&err)),
    }
}

/// With `[factory] template = true`: whether sandboxes of this configuration will be clones.
fn check_template(r: &mut Report, config: &Config, root: &Path, spec: &QemuSpec) {
    if !config.factory.template {
        return;
    }
    let templates = wisp_shim::template::templates_dir(config, root);
    match wisp_shim::template::find(spec, &templates) {
        Ok((found, _)) => r.ok("template", format!("sandboxes are cloned from {}", found.dir.display())),
        Err(why) => r.warn("template", format!("sandboxes boot cold: {why} — `wisp template create`")),
    }
}

/// The configuration at `path`, else the shim's lookup order.
fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(path.map_or_else(Config::load, Config::from_file)?)
}

/// Prints `err` with its causes and fails.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wisp: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `[hypervisor.stratovirt]` is configured: StratoVirt's binary, its images, and what it needs
/// from the host (KVM, `/dev/vhost-vsock`).
fn check_stratovirt(r: &mut Report, section: &StratoVirtSection) {
    match find_program(&section.path) {
        Some(path) => {
            let version = Command::new(&path)
                .arg("-version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_owned())
                .unwrap_or_default();
            r.ok("stratovirt", format!("{} ({version})", path.display()));
        }
        None => r.fail(
            "stratovirt",
            format!(
                "{} not found — install StratoVirt (openEuler: yum install stratovirt) or set hypervisor.stratovirt.path",
                section.path.display()
            ),
        ),
    }
    for (what, path) in [("stratovirt kernel", section.kernel()), ("stratovirt initrd", section.initrd())] {
        if path.is_file() {
            r.ok(what, path.display().to_string());
        } else {
            r.fail(what, format!("{} missing — set hypervisor.stratovirt.kernel/initrd", path.display()));
        }
    }
    if Path::new(VHOST_VSOCK_DEVICE).exists() {
        r.ok("stratovirt vsock", format!("{VHOST_VSOCK_DEVICE} present (the agent channel)"));
    } else {
        r.fail(
            "stratovirt vsock",
            format!(
                "{VHOST_VSOCK_DEVICE} missing — StratoVirt's agent channel needs `modprobe vhost_vsock` \
                 (or remove [hypervisor.stratovirt]: QEMU machine_type = \"microvm\" runs the same virtio-mmio guest)"
            ),
        );
    }
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => r.ok("stratovirt kvm", "/dev/kvm opens (StratoVirt has no TCG)"),
        Err(err) => r.fail("stratovirt kvm", format!("/dev/kvm: {err} — StratoVirt runs only under KVM")),
    }
}

/// `wisp gc`: one line per sandbox directory (removed / would remove / kept, and why);
/// fails if an orphan could not be removed completely.
fn gc(dry_run: bool) -> ExitCode {
    let root = state_root();
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let mut failed = false;
    let (swept, kept) =
        wisp_shim::gc::sweep(&root, &ProcFs, |dir| if dry_run { Vec::new() } else { cleanup_dir(dir, &log) });
    for s in &swept {
        if dry_run {
            println!("would remove {}", s.found.describe());
            continue;
        }
        let gone = !s.found.dir.exists();
        failed |= !gone;
        let what = if gone { "removed" } else { "NOT removed" };
        println!("{what} {}: {}", s.found.describe(), s.done.join(", "));
    }
    for found in &kept {
        println!("kept {}", found.describe());
    }
    if swept.is_empty() {
        println!("nothing to remove under {}", root.display());
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Bench { what: BenchCmd::Boot { args } } => exec_bench_boot(&args),
        Cmd::BlockVolume { command } => report(block_volume::run(command)),
        Cmd::Gc { dry_run } => gc(dry_run),
        Cmd::DirectVolume { config, command } => {
            report(load_config(config.as_deref()).and_then(|config| direct_volume::run(command, &config)))
        }
        Cmd::Template { config, command } => {
            report(load_config(config.as_deref()).and_then(|config| template::run(command, &config)))
        }
        Cmd::Check { config } => {
            if check(config.as_deref()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
