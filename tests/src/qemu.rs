//! QEMU command lines: a [`VmConfig`] builder for test VMs.
//!
//! The argv itself comes from the shim's builder ([`wisp_shim::hypervisor::qemu::cmdline`]):
//! a test VM is a [`QemuSpec`] without the shim's shared directory and, where a test asks,
//! without an agent channel, initrd or QMP, so tests boot exactly what the shim boots.
//!
//! Nothing here starts a process; [`crate::vm::Vm::boot`] does. Every VM gets:
//! - `-nographic -nodefaults -no-reboot`: no default devices, and QEMU exits when the guest
//!   powers off, reboots or panics (`panic=-1`);
//! - the guest console (`ttyS0`) written into `console.fifo`, drained into a bounded `console.log`;
//! - `-accel kvm -cpu host`, or `-accel tcg,tb-size=64` (a 64 MiB translation cache instead of
//!   QEMU's default 1 GiB, to bound host memory when several VMs run at once);
//! - pc/q35: `-bios /usr/share/qemu/qboot.rom` when it exists (boots a bzImage as fast as
//!   SeaBIOS under TCG and faster under KVM); microvm: the PVH vmlinux and QEMU's own firmware.
//!
//! Channels to the agent ([`Channel`]):
//! - [`Channel::HybridVsock`]: a `vhost-device-vsock` helper serves the device over vhost-user;
//!   guest memory is a shared memfd so the helper can map it. The host reaches guest vsock
//!   ports through the helper's hybrid socket (`CONNECT <port>`).
//! - [`Channel::Serial`]: a virtio-serial port named `agent.channel.0` whose host end is a unix
//!   socket QEMU listens on.

use std::env;
use std::path::{Path, PathBuf};

use wisp_shim::agent_dial::AgentAddr;
use wisp_shim::config::MachineType;
use wisp_shim::hypervisor::qemu::{cmdline, QemuSpec};
use wisp_shim::hypervisor::AgentChannel;

use crate::accel::Accel;
use crate::artifacts::{self, Artifact, ArtifactError};

/// The guest's vsock context id.
pub const GUEST_CID: u32 = wisp_shim::hypervisor::GUEST_CID;
/// Guest RAM unless [`VmConfig::memory_mib`] says otherwise.
pub const DEFAULT_MEMORY_MIB: u32 = 256;
/// The fast pc/q35 firmware shipped with Debian's QEMU.
pub const QBOOT: &str = wisp_shim::hypervisor::qemu::config::QBOOT;
/// TCG's translation cache for test VMs, in MiB (the shim's default; QEMU's own is 1 GiB).
pub const TB_SIZE_MIB: u32 = 64;
/// The virtio-serial port name the agent looks for.
pub const SERIAL_PORT_NAME: &str = cmdline::SERIAL_PORT_NAME;

/// The QEMU binary: `$WISP_QEMU`, else `qemu-system-x86_64` from `PATH`.
pub fn qemu_binary() -> PathBuf {
    env::var_os("WISP_QEMU")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("qemu-system-x86_64"), PathBuf::from)
}

/// The vhost-user vsock backend: `$WISP_VHOST_DEVICE_VSOCK`, else `vhost-device-vsock` from
/// `PATH`, else from `~/.cargo/bin` (where `cargo install` puts it), else the bare name.
pub fn vhost_device_vsock_binary() -> PathBuf {
    const NAME: &str = "vhost-device-vsock";
    if let Some(path) = env::var_os("WISP_VHOST_DEVICE_VSOCK").filter(|v| !v.is_empty()) {
        return PathBuf::from(path);
    }
    let on_path = env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(NAME));
    let in_cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .map(|cargo_home| cargo_home.join("bin").join(NAME));
    on_path.chain(in_cargo_home).find(|candidate| candidate.is_file()).unwrap_or_else(|| PathBuf::from(NAME))
}

/// The QEMU machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Machine {
    /// `q35` (PCIe); boots the bzImage.
    #[default]
    Q35,
    /// `pc` (i440fx, PCI); boots the bzImage.
    Pc,
    /// `microvm` (virtio-mmio, no PCI); boots the PVH vmlinux.
    Microvm,
}

impl Machine {
    /// The `-machine` type name.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Self::Q35 => "q35",
            Self::Pc => "pc",
            Self::Microvm => "microvm",
        }
    }

    /// The kernel image this machine boots.
    pub fn kernel_artifact(self) -> Artifact {
        match self {
            Self::Q35 | Self::Pc => Artifact::Kernel,
            Self::Microvm => Artifact::Vmlinux,
        }
    }

    /// The QEMU device `base` (`virtio-9p`, `vhost-user-fs`, ...) on this machine's virtio
    /// transport: microvm has no PCI bus, its virtio devices are the virtio-mmio `-device` kind.
    pub fn virtio_device(self, base: &str) -> String {
        match self {
            Self::Q35 | Self::Pc => format!("{base}-pci"),
            Self::Microvm => format!("{base}-device"),
        }
    }

    /// The QEMU arguments sharing `dir` by virtio-9p under `tag`.
    pub fn share_9p_args(self, dir: &Path, tag: &str) -> Vec<String> {
        vec![
            "-fsdev".into(),
            format!("local,id={tag},path={},security_model=none", dir.display()),
            "-device".into(),
            format!("{},fsdev={tag},mount_tag={tag}", self.virtio_device("virtio-9p")),
        ]
    }

    /// The shim's name for this machine type.
    pub fn machine_type(self) -> MachineType {
        match self {
            Self::Q35 => MachineType::Q35,
            Self::Pc => MachineType::Pc,
            Self::Microvm => MachineType::Microvm,
        }
    }
}

/// How the host reaches the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Channel {
    /// No agent channel (console only).
    #[default]
    None,
    /// virtio-vsock through a `vhost-device-vsock` helper; the host dials its hybrid socket.
    HybridVsock,
    /// A virtio-serial port named `agent.channel.0` behind a unix socket.
    Serial,
}

/// The firmware of a pc/q35 VM.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Bios {
    /// [`QBOOT`] when it exists, else QEMU's default; microvm always uses QEMU's default.
    #[default]
    Auto,
    /// QEMU's default firmware (SeaBIOS; qboot for microvm).
    QemuDefault,
    /// This file.
    File(PathBuf),
}

/// The files of one VM inside its private directory: the shim's layout.
pub use wisp_shim::hypervisor::VmPaths;

/// What to boot and how; build it with the chained setters, then [`crate::vm::Vm::boot`] it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    machine: Machine,
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: Vec<String>,
    memory_mib: u32,
    vcpus: u32,
    channel: Channel,
    qmp: bool,
    accel: Option<Accel>,
    bios: Bios,
    extra_args: Vec<String>,
}

impl VmConfig {
    /// A `machine` VM booting `kernel` (a bzImage for pc/q35, a PVH vmlinux for microvm) with
    /// no initrd, [`DEFAULT_MEMORY_MIB`], one vCPU and no agent channel.
    pub fn new(machine: Machine, kernel: impl Into<PathBuf>) -> Self {
        Self {
            machine,
            kernel: kernel.into(),
            initrd: None,
            cmdline: Vec::new(),
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: 1,
            channel: Channel::None,
            qmp: false,
            accel: None,
            bios: Bios::Auto,
            extra_args: Vec::new(),
        }
    }

    /// [`VmConfig::new`] with the built kernel for `machine` (see [`crate::artifacts`]).
    pub fn for_machine(machine: Machine) -> Result<Self, ArtifactError> {
        Ok(Self::new(machine, machine.kernel_artifact().path()?))
    }

    /// The built kernel for `machine` and the wisp initrd (see [`crate::artifacts`]).
    pub fn wisp(machine: Machine) -> Result<Self, ArtifactError> {
        Ok(Self::for_machine(machine)?.initrd(artifacts::initrd()?))
    }

    /// Boots this initrd.
    #[must_use]
    pub fn initrd(mut self, initrd: impl Into<PathBuf>) -> Self {
        self.initrd = Some(initrd.into());
        self
    }

    /// Appends one argument to the kernel command line.
    #[must_use]
    pub fn cmdline_arg(mut self, arg: impl Into<String>) -> Self {
        self.cmdline.push(arg.into());
        self
    }

    /// Guest RAM in MiB.
    #[must_use]
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Number of vCPUs.
    #[must_use]
    pub fn vcpus(mut self, vcpus: u32) -> Self {
        self.vcpus = vcpus;
        self
    }

    /// The agent channel.
    #[must_use]
    pub fn channel(mut self, channel: Channel) -> Self {
        self.channel = channel;
        self
    }

    /// Whether QEMU serves QMP on [`VmPaths::qmp_socket`].
    #[must_use]
    pub fn qmp(mut self, qmp: bool) -> Self {
        self.qmp = qmp;
        self
    }

    /// Uses this accelerator instead of [`crate::accel::detect`]'s choice.
    #[must_use]
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = Some(accel);
        self
    }

    /// The firmware of pc/q35.
    #[must_use]
    pub fn bios(mut self, bios: Bios) -> Self {
        self.bios = bios;
        self
    }

    /// Appends raw QEMU arguments (devices a test needs, say).
    #[must_use]
    pub fn qemu_args_extra<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The machine type.
    pub fn machine_type(&self) -> Machine {
        self.machine
    }

    /// The agent channel.
    pub fn agent_channel(&self) -> Channel {
        self.channel
    }

    /// The accelerator set with [`VmConfig::accel`], if any.
    pub fn accel_override(&self) -> Option<Accel> {
        self.accel
    }

    /// The kernel image.
    pub fn kernel_path(&self) -> &Path {
        &self.kernel
    }

    /// The initrd, if any.
    pub fn initrd_path(&self) -> Option<&Path> {
        self.initrd.as_deref()
    }

    /// Whether QMP is on.
    pub fn has_qmp(&self) -> bool {
        self.qmp
    }

    /// The shim's spec of this VM under `accel`.
    pub fn spec(&self, accel: Accel) -> QemuSpec {
        QemuSpec {
            qemu: qemu_binary(),
            machine: self.machine.machine_type(),
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            kernel_params: self.cmdline.clone(),
            accel,
            tb_size_mib: TB_SIZE_MIB,
            channel: match self.channel {
                Channel::None => None,
                Channel::HybridVsock => Some(AgentChannel::HybridVsock),
                Channel::Serial => Some(AgentChannel::Serial),
            },
            vhost_vsock_fd: None,
            tap_nic: None,
            shared_fs: None,
            qmp: self.qmp,
            root_ports: 0,
            bios: self.bios_file(),
            debug_console: false,
            vhost_user_devices: false,
            vhost_device_vsock: vhost_device_vsock_binary(),
            virtiofsd: PathBuf::from("virtiofsd"),
            extra_args: self.extra_args.clone(),
            confine: Default::default(),
            template: None,
            // As the shim: the guest's TSC rate, so that the floors and the agent boot alike.
            tsc_khz: (accel == Accel::Tcg).then(wisp_shim::tsc::host_khz).flatten(),
            max_vcpus: wisp_shim::hypervisor::qemu::config::host_cpus(),
        }
    }

    /// The kernel command line under `accel` (the shim's: `console=ttyS0 panic=-1
    /// printk.time=1 no_timer_check`, the TSC fix for microvm under TCG, `agent.channel=serial` on a serial
    /// channel, then the arguments of [`VmConfig::cmdline_arg`]).
    pub fn kernel_cmdline(&self, accel: Accel) -> String {
        cmdline::kernel_cmdline(&self.spec(accel))
    }

    /// The firmware file for `-bios`, if any.
    fn bios_file(&self) -> Option<PathBuf> {
        if self.machine == Machine::Microvm {
            return None;
        }
        match &self.bios {
            Bios::Auto => Some(PathBuf::from(QBOOT)).filter(|p| p.is_file()),
            Bios::QemuDefault => None,
            Bios::File(path) => Some(path.clone()),
        }
    }

    /// The QEMU arguments (without the program name) for a VM whose files live in `paths`,
    /// running under `accel`.
    pub fn qemu_args(&self, paths: &VmPaths, accel: Accel) -> Vec<String> {
        cmdline::qemu_args(&self.spec(accel), paths)
    }

    /// The arguments of the `vhost-device-vsock` helper ([`Channel::HybridVsock`] only).
    pub fn vsock_helper_args(&self, paths: &VmPaths) -> Option<Vec<String>> {
        cmdline::vsock_helper_args(&self.spec(crate::accel::Accel::Tcg), paths)
    }

    /// Where the host reaches the agent of a VM whose files live in `paths`.
    pub fn agent_addr(&self, paths: &VmPaths) -> Option<AgentAddr> {
        cmdline::agent_addr(&self.spec(crate::accel::Accel::Tcg), paths)
    }

    /// The paths QEMU (or a helper) receives as text; [`crate::vm::Vm::boot`] refuses
    /// configurations where one of them is not UTF-8.
    pub fn text_paths<'a>(&'a self, paths: &'a VmPaths) -> impl Iterator<Item = &'a Path> + 'a {
        [Some(self.kernel.as_path()), self.initrd.as_deref(), Some(paths.dir())].into_iter().flatten()
    }
}

/// Renders an argv as one shell-quoted line, for logs and error messages.
pub use wisp_shim::hypervisor::qemu::cmdline::shell_line;

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> VmPaths {
        VmPaths::new("/run/vm")
    }

    fn argv(config: &VmConfig, accel: Accel) -> String {
        shell_line("qemu", &config.qemu_args(&paths(), accel))
    }

    #[test]
    fn q35_tcg_console_only() {
        let config =
            VmConfig::new(Machine::Q35, "/k/bzImage").initrd("/k/floor.cpio").bios(Bios::File("/fw/qboot.rom".into()));
        // The host's TSC rate as a TCG guest is given it (measured here: it varies by host).
        let tsc = wisp_shim::tsc::host_khz().map(|khz| format!(" tsc_early_khz={khz}")).unwrap_or_default();
        assert_eq!(
            argv(&config, Accel::Tcg),
            format!(
                "qemu -machine q35 -accel tcg,tb-size=64 \
                 -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -m 256M -smp 1 -nographic -nodefaults \
                 -no-reboot -serial file:/run/vm/console.fifo -bios /fw/qboot.rom -kernel /k/bzImage \
                 -initrd /k/floor.cpio -append 'console=ttyS0 panic=-1 printk.time=1 no_timer_check{tsc}'"
            )
        );
        assert_eq!(config.agent_addr(&paths()), None);
        assert_eq!(config.vsock_helper_args(&paths()), None);
    }

    #[test]
    fn q35_kvm_hybrid_vsock_shares_memory() {
        let config = VmConfig::new(Machine::Q35, "/k/bzImage")
            .bios(Bios::QemuDefault)
            .channel(Channel::HybridVsock)
            .memory_mib(512)
            .vcpus(2)
            .qmp(true)
            .cmdline_arg("agent.log=debug");
        assert_eq!(
            argv(&config, Accel::Kvm),
            "qemu -machine q35,memory-backend=mem -accel kvm -cpu host \
             -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -m 512M -smp 2 \
             -nographic -nodefaults -no-reboot -serial file:/run/vm/console.fifo \
             -qmp unix:/run/vm/qmp.sock,server=on,wait=off \
             -object memory-backend-memfd,id=mem,size=512M,share=on -kernel /k/bzImage \
             -append 'console=ttyS0 panic=-1 printk.time=1 no_timer_check agent.log=debug' \
             -chardev socket,id=vs0,path=/run/vm/vhost.sock -device vhost-user-vsock-pci,chardev=vs0,event_idx=off"
        );
        assert_eq!(
            config.vsock_helper_args(&paths()).unwrap(),
            ["--vm", "guest-cid=3,socket=/run/vm/vhost.sock,uds-path=/run/vm/hvsock.sock"]
        );
        assert_eq!(config.agent_addr(&paths()).unwrap().to_string(), "hvsock:/run/vm/hvsock.sock:1024");
    }

    #[test]
    fn a_9p_share_is_a_pci_device_on_q35_and_pc_and_an_mmio_one_on_microvm() {
        let args = |m: Machine| m.share_9p_args(Path::new("/r"), "t").join(" ");
        let pci = "-fsdev local,id=t,path=/r,security_model=none -device virtio-9p-pci,fsdev=t,mount_tag=t";
        assert_eq!(args(Machine::Q35), pci);
        assert_eq!(args(Machine::Pc), pci);
        assert_eq!(
            args(Machine::Microvm),
            "-fsdev local,id=t,path=/r,security_model=none -device virtio-9p-device,fsdev=t,mount_tag=t"
        );
    }

    #[test]
    fn microvm_tcg_hybrid_vsock_uses_mmio_and_tsc_workaround() {
        let config = VmConfig::new(Machine::Microvm, "/k/vmlinux")
            .bios(Bios::File("/ignored/for/microvm".into()))
            .channel(Channel::HybridVsock);
        let khz = wisp_shim::tsc::host_khz().unwrap_or(2_000_000);
        assert_eq!(
            argv(&config, Accel::Tcg),
            format!(
                "qemu -machine microvm,memory-backend=mem -accel tcg,tb-size=64 \
                 -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -m 256M -smp 1 \
                 -nographic -nodefaults -no-reboot -serial file:/run/vm/console.fifo \
                 -object memory-backend-memfd,id=mem,size=256M,share=on -kernel /k/vmlinux \
                 -append 'console=ttyS0 panic=-1 printk.time=1 no_timer_check tsc_early_khz={khz} tsc=reliable' \
                 -chardev socket,id=vs0,path=/run/vm/vhost.sock -device vhost-user-vsock-device,chardev=vs0,event_idx=off"
            )
        );
        // Under KVM the TSC is calibrated properly: no invented frequency.
        assert_eq!(config.kernel_cmdline(Accel::Kvm), "console=ttyS0 panic=-1 printk.time=1 no_timer_check");
    }

    #[test]
    fn serial_channel_on_pci_and_mmio() {
        for (machine, bus) in [(Machine::Pc, "pci"), (Machine::Microvm, "device")] {
            let config = VmConfig::new(machine, "/k/kernel").bios(Bios::QemuDefault).channel(Channel::Serial);
            let args = config.qemu_args(&paths(), Accel::Tcg);
            assert_eq!(
                args[args.len() - 6..],
                [
                    "-device".to_owned(),
                    format!("virtio-serial-{bus}"),
                    "-chardev".to_owned(),
                    "socket,id=ch0,path=/run/vm/serial.sock,server=on,wait=off".to_owned(),
                    "-device".to_owned(),
                    "virtserialport,chardev=ch0,name=agent.channel.0".to_owned(),
                ]
            );
            assert!(!args.iter().any(|a| a.contains("memory-backend")), "{machine:?}");
            assert_eq!(config.agent_addr(&paths()).unwrap(), AgentAddr::Serial { path: "/run/vm/serial.sock".into() });
        }
    }

    #[test]
    fn commas_in_paths_are_escaped_inside_options_only() {
        let config = VmConfig::new(Machine::Q35, "/k,1/bzImage").bios(Bios::QemuDefault).channel(Channel::Serial);
        let args = config.qemu_args(&VmPaths::new("/run/a,b"), Accel::Tcg);
        assert!(args.contains(&"file:/run/a,,b/console.fifo".to_owned()), "{args:?}");
        assert!(args.contains(&"/k,1/bzImage".to_owned()), "{args:?}");
        assert!(args.iter().any(|a| a.starts_with("socket,id=ch0,path=/run/a,,b/serial.sock,")), "{args:?}");
    }

    #[test]
    fn extra_qemu_args_come_last() {
        let config = VmConfig::new(Machine::Q35, "/k/bzImage")
            .qemu_args_extra(["-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1"]);
        let args = config.qemu_args(&paths(), Accel::Tcg);
        assert_eq!(args[args.len() - 2..], ["-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1"]);
    }

    #[test]
    fn shell_line_quotes_what_needs_it() {
        assert_eq!(
            shell_line("qemu", &["-append", "a b", "it's", "plain,x=1"]),
            r"qemu -append 'a b' 'it'\''s' plain,x=1"
        );
    }
}
