//! The exact argv of QEMU, vhost-device-vsock and virtiofsd for a [`QemuSpec`].
//!
//! Every VM gets `-nographic -nodefaults -no-reboot` (no default devices; QEMU exits when the
//! guest powers off or panics, `panic=-1`), the console (`ttyS0`) written into the FIFO
//! `console.fifo` that the shim drains into a bounded `console.log` ([`crate::hypervisor::console`]),
//! a QMP socket (kept for hot-plug), and:
//! - `-accel kvm -cpu host`, or `-accel tcg,tb-size=N`: TCG's translation cache defaults to
//!   1 GiB of host memory per VM; 64 MiB keeps a VM's RSS small at no measurable boot cost;
//! - a shared memfd as guest RAM when a vhost-user device (vhost-user-vsock, virtio-fs,
//!   vhost-user-blk) must map it;
//! - on q35, `N` free `pcie-root-port`s so devices can be hot-plugged later (microvm cannot
//!   hot-plug; pc hot-plugs on `pci.0`);
//! - under TCG, `tsc_early_khz` at the host's measured TSC rate (crate::tsc; a loaded host's
//!   guests calibrated it 12 times too low), and on microvm `tsc=reliable`, without which TSC
//!   calibration hangs (2 GHz is assumed there when the rate is unknown);
//! - QEMU's own seccomp filter, [`SECCOMP_SANDBOX`]: no obsolete system calls, no setuid, no
//!   fork/exec, no scheduler or affinity changes (QEMU 7.2 checked: hot-plug over QMP,
//!   vhost-user, 9p and a tap fd all work under it).

use std::path::Path;

use crate::accel::Accel;
use crate::agent_dial::{AgentAddr, AGENT_VSOCK_PORT};
use crate::config::MachineType;
use crate::hypervisor::{AgentChannel, SharedFs, VmPaths, GUEST_CID, SHARED_FS_TAG};

use super::config::{TemplateRole, TEMPLATE_DIMM_SLOTS, TEMPLATE_MAX_MEMORY_MIB};
use super::QemuSpec;

/// QEMU's `-sandbox` (seccomp) policy: everything it can deny, denied.
pub const SECCOMP_SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The virtio-serial port name the agent looks for.
pub const SERIAL_PORT_NAME: &str = "agent.channel.0";

/// The `-machine` type name.
pub fn machine_name(machine: MachineType) -> &'static str {
    match machine {
        MachineType::Q35 => "q35",
        MachineType::Pc => "pc",
        MachineType::Microvm => "microvm",
    }
}

/// The suffix of virtio device names: `pci`, or `device` on virtio-mmio.
fn virtio_suffix(machine: MachineType) -> &'static str {
    match machine {
        MachineType::Q35 | MachineType::Pc => "pci",
        MachineType::Microvm => "device",
    }
}

/// The guest kernel command line.
///
/// `no_timer_check` (as Kata's defaults): the kernel otherwise checks at boot that the IO-APIC
/// timer ticks within a few busy loops, and a vCPU starved by a loaded host (TCG with many
/// sandboxes booting at once) fails that check and panics ("IO-APIC + timer doesn't work").
pub fn kernel_cmdline(spec: &QemuSpec) -> String {
    let mut args: Vec<String> =
        ["console=ttyS0", "panic=-1", "printk.time=1", "no_timer_check"].map(str::to_owned).to_vec();
    if spec.accel == Accel::Tcg {
        // The guest's TSC is the host's: its rate, measured on the host, spares the guest a
        // calibration that a loaded host gets wrong (crate::tsc). microvm has no reference
        // clock to check the TSC against, so it is also declared reliable there.
        match (spec.tsc_khz, spec.machine) {
            (Some(khz), MachineType::Microvm) => args.extend([format!("tsc_early_khz={khz}"), "tsc=reliable".into()]),
            (Some(khz), _) => args.push(format!("tsc_early_khz={khz}")),
            (None, MachineType::Microvm) => args.extend(["tsc_early_khz=2000000", "tsc=reliable"].map(str::to_owned)),
            (None, _) => {}
        }
    }
    if spec.channel == Some(AgentChannel::Serial) {
        args.push("agent.channel=serial".to_owned());
    }
    if spec.template.is_some() {
        // RAM a clone gets by hot-plug is online as soon as the kernel has added it.
        args.push("memhp_default_state=online".to_owned());
    }
    if spec.debug_console {
        args.push("agent.debug_console".to_owned());
    }
    args.extend(spec.kernel_params.iter().cloned());
    args.join(" ")
}

/// QEMU's arguments (without the program name).
pub fn qemu_args(spec: &QemuSpec, paths: &VmPaths) -> Vec<String> {
    let shared_memory = spec.shared_memory();
    let mut machine = machine_name(spec.machine).to_owned();
    if shared_memory || spec.template.is_some() {
        machine.push_str(",memory-backend=mem");
    }
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| (*s).to_owned()));
    push(&["-machine", &machine]);
    match spec.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", &format!("tcg,tb-size={}", spec.tb_size_mib)]),
    }
    push(&["-sandbox", SECCOMP_SANDBOX]);
    let (memory, vcpus) = match spec.template {
        // Room for a clone to grow into by hot-plug: the clone's command line must be its
        // template's, so every template has it.
        Some(_) => (
            format!(
                "{}M,slots={TEMPLATE_DIMM_SLOTS},maxmem={}M",
                spec.memory_mib,
                TEMPLATE_MAX_MEMORY_MIB.max(spec.memory_mib)
            ),
            format!("{},maxcpus={}", spec.vcpus, spec.max_vcpus.max(spec.vcpus)),
        ),
        None => (format!("{}M", spec.memory_mib), spec.vcpus.to_string()),
    };
    push(&[
        "-m",
        &memory,
        "-smp",
        &vcpus,
        "-nographic",
        "-nodefaults",
        "-no-reboot",
        "-serial",
        &format!("file:{}", opt_path(&paths.console_fifo())),
    ]);
    if spec.qmp {
        push(&["-qmp", &format!("unix:{},server=on,wait=off", opt_path(&paths.qmp_socket()))]);
    }
    if let Some(role) = &spec.template {
        let template = template_args(spec, role);
        push(&template.iter().map(String::as_str).collect::<Vec<_>>());
    } else if shared_memory {
        push(&["-object", &format!("memory-backend-memfd,id=mem,size={}M,share=on", spec.memory_mib)]);
    }
    if let Some(bios) = spec.bios.as_deref().filter(|_| spec.machine != MachineType::Microvm) {
        push(&["-bios", &path_arg(bios)]);
    }
    push(&["-kernel", &path_arg(&spec.kernel)]);
    if let Some(initrd) = &spec.initrd {
        push(&["-initrd", &path_arg(initrd)]);
    }
    push(&["-append", &kernel_cmdline(spec)]);

    let suffix = virtio_suffix(spec.machine);
    args.extend(channel_args(spec, paths, suffix));
    args.extend(device_args(spec, paths, suffix));
    args.extend(spec.extra_args.iter().cloned());
    args
}

/// A template's or a clone's RAM file and migration stream (Kata's VM templating): the template
/// maps the file shared, so its RAM lands there and `x-ignore-shared` leaves it out of the
/// stream; a clone maps it privately (its writes stay its own) and waits for the shim to
/// restore the stream from the descriptor it inherits ([`super::lifecycle`]): the
/// `x-ignore-shared` capability has no command-line form in QEMU 7.2, so the restore is
/// `-incoming defer`, then QMP.
fn template_args(spec: &QemuSpec, role: &TemplateRole) -> Vec<String> {
    let share = match role {
        TemplateRole::Save { .. } => "on",
        TemplateRole::Restore { .. } => "off",
    };
    let mut args = vec![
        "-object".to_owned(),
        format!(
            "memory-backend-file,id=mem,size={}M,mem-path={},share={share}",
            spec.memory_mib,
            opt_path(role.memory())
        ),
    ];
    if let TemplateRole::Restore { .. } = role {
        args.extend(["-incoming".to_owned(), "defer".to_owned()]);
    }
    args
}

/// The agent channel's devices.
fn channel_args(spec: &QemuSpec, paths: &VmPaths, suffix: &str) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| (*s).to_owned()));
    match spec.channel {
        None => {}
        Some(AgentChannel::VhostVsock { cid }) => {
            let fd = spec.vhost_vsock_fd.map(|fd| format!(",vhostfd={fd}")).unwrap_or_default();
            push(&["-device", &format!("vhost-vsock-{suffix},guest-cid={cid}{fd}")]);
        }
        Some(AgentChannel::HybridVsock) => push(&[
            "-chardev",
            &format!("socket,id=vs0,path={}", opt_path(&paths.vhost_vsock_socket())),
            "-device",
            // event_idx=off: with notification suppression, one used-buffer signal that
            // vhost-device-vsock 0.3 misses stalls the queue for good (the guest's used_event is
            // never crossed again): seen as an agent that logged "ready" but never answered
            // CONNECT, about once per 80 TCG boots under load. Without it every buffer is
            // signalled; the agent channel carries a few messages per RPC, so the cost is nil.
            &format!("vhost-user-vsock-{suffix},chardev=vs0,event_idx=off"),
        ]),
        Some(AgentChannel::Serial) => push(&[
            "-device",
            &format!("virtio-serial-{suffix}"),
            "-chardev",
            &format!("socket,id=ch0,path={},server=on,wait=off", opt_path(&paths.serial_socket())),
            "-device",
            &format!("virtserialport,chardev=ch0,name={SERIAL_PORT_NAME}"),
        ]),
    }
    args
}

/// The shared file system, the pod's NIC and q35's hot-plug root ports.
fn device_args(spec: &QemuSpec, paths: &VmPaths, suffix: &str) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| (*s).to_owned()));
    match spec.shared_fs {
        None => {}
        Some(SharedFs::VirtioFs) => push(&[
            "-chardev",
            &format!("socket,id=fs0,path={}", opt_path(&paths.virtiofsd_socket())),
            "-device",
            &format!("vhost-user-fs-{suffix},chardev=fs0,tag={SHARED_FS_TAG},queue-size=1024"),
        ]),
        Some(SharedFs::NineP) => push(&[
            "-fsdev",
            &format!("local,id=fs0,path={},security_model=none", opt_path(&paths.shared_dir())),
            "-device",
            &format!("virtio-9p-{suffix},fsdev=fs0,mount_tag={SHARED_FS_TAG}"),
        ]),
    }
    if let Some(nic) = spec.nic_at_boot() {
        push(&[
            "-netdev",
            &format!("tap,id=net0,fd={}", nic.fd),
            "-device",
            &format!("virtio-net-{suffix},netdev=net0,mac={}", nic.mac),
        ]);
    }
    if spec.machine == MachineType::Q35 {
        for port in 1..=spec.root_ports {
            push(&["-device", &format!("pcie-root-port,id=rp{port},bus=pcie.0,chassis={port},slot={port}")]);
        }
    }
    args
}

/// The `vhost-device-vsock` arguments ([`AgentChannel::HybridVsock`] only).
pub fn vsock_helper_args(spec: &QemuSpec, paths: &VmPaths) -> Option<Vec<String>> {
    (spec.channel == Some(AgentChannel::HybridVsock)).then(|| {
        vec![
            "--vm".to_owned(),
            format!(
                "guest-cid={GUEST_CID},socket={},uds-path={}",
                opt_path(&paths.vhost_vsock_socket()),
                opt_path(&paths.hybrid_vsock_socket())
            ),
        ]
    })
}

/// The `virtiofsd` arguments ([`SharedFs::VirtioFs`] only).
///
/// - `--sandbox=namespace`: virtiofsd forks into new mount, pid and network namespaces and
///   pivots into the shared directory, so the host's other files are out of its reach; binds
///   made under the share after it started reach it because the shim makes the share a
///   shared mount first (`confine::propagate_into_namespaces`);
/// - `--seccomp=kill`: a system call outside its allow-list kills it;
/// - `--modcaps=-mknod`: of virtiofsd's default capabilities (chown, dac_override, fowner,
///   fsetid, setgid, setuid, mknod, setfcap) it gives up mknod, so a guest cannot create device
///   nodes on the host's filesystem (FIFOs and sockets need no capability).
///
/// No `--tag`: QEMU 7.1-8.0 crash on it.
pub fn virtiofsd_args(spec: &QemuSpec, paths: &VmPaths) -> Option<Vec<String>> {
    (spec.shared_fs == Some(SharedFs::VirtioFs)).then(|| {
        vec![
            format!("--socket-path={}", path_arg(&paths.virtiofsd_socket())),
            format!("--shared-dir={}", path_arg(&paths.shared_dir())),
            "--cache=auto".to_owned(),
            "--sandbox=namespace".to_owned(),
            "--seccomp=kill".to_owned(),
            "--modcaps=-mknod".to_owned(),
        ]
    })
}

/// Where the host reaches the agent.
pub fn agent_addr(spec: &QemuSpec, paths: &VmPaths) -> Option<AgentAddr> {
    match spec.channel? {
        AgentChannel::VhostVsock { cid } => Some(AgentAddr::Vsock { cid, port: AGENT_VSOCK_PORT }),
        AgentChannel::HybridVsock => {
            Some(AgentAddr::HybridVsock { path: paths.hybrid_vsock_socket(), port: AGENT_VSOCK_PORT })
        }
        AgentChannel::Serial => Some(AgentAddr::Serial { path: paths.serial_socket() }),
    }
}

/// A path as a whole argument.
fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A path inside a QEMU `key=value,...` option: commas are doubled.
fn opt_path(path: &Path) -> String {
    path_arg(path).replace(',', ",,")
}

/// Renders an argv as one shell-quoted line, for logs and error messages.
pub fn shell_line<S: AsRef<str>>(program: &str, args: &[S]) -> String {
    std::iter::once(program)
        .chain(args.iter().map(AsRef::as_ref))
        .map(|arg| {
            if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=,.:/+@%".contains(&b)) {
                arg.to_owned()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::config::TapNic;
    use super::*;

    fn spec(machine: MachineType, accel: Accel, channel: AgentChannel, shared_fs: SharedFs) -> QemuSpec {
        QemuSpec {
            qemu: "qemu".into(),
            machine,
            kernel: "/k/kernel".into(),
            initrd: Some("/k/wisp.initrd".into()),
            vcpus: 1,
            memory_mib: 256,
            kernel_params: Vec::new(),
            accel,
            tb_size_mib: 64,
            channel: Some(channel),
            vhost_vsock_fd: None,
            tap_nic: None,
            shared_fs: Some(shared_fs),
            qmp: true,
            root_ports: if machine == MachineType::Q35 { 2 } else { 0 },
            bios: Some("/fw/qboot.rom".into()),
            debug_console: false,
            vhost_user_devices: false,
            vhost_device_vsock: "vhost-device-vsock".into(),
            virtiofsd: "virtiofsd".into(),
            extra_args: Vec::new(),
            confine: Default::default(),
            template: None,
            tsc_khz: None,
            max_vcpus: 16,
        }
    }

    fn line(spec: &QemuSpec) -> String {
        shell_line("qemu", &qemu_args(spec, &VmPaths::new("/run/s")))
    }

    #[test]
    fn a_template_shares_its_ram_file_and_a_clone_maps_it_privately_and_waits_to_restore() {
        let mut template = spec(MachineType::Q35, Accel::Tcg, AgentChannel::Serial, SharedFs::NineP);
        template.template = Some(TemplateRole::Save { memory: "/t/k/memory".into() });
        let saved = line(&template);
        assert!(saved.contains("-machine q35,memory-backend=mem "), "{saved}");
        assert!(saved.contains("memory-backend-file,id=mem,size=256M,mem-path=/t/k/memory,share=on"), "{saved}");
        assert!(!saved.contains("-incoming") && !saved.contains("memfd"), "{saved}");
        let mut clone = template.clone();
        let growth = crate::hypervisor::Growth { vcpus: 2, memory_mib: 256 };
        clone.template =
            Some(TemplateRole::Restore { memory: "/t/k/memory".into(), state: "/t/k/state".into(), growth });
        let restored = line(&clone);
        assert!(restored.contains("mem-path=/t/k/memory,share=off"), "{restored}");
        // Both have room for a clone to grow into by hot-plug (its growth is plugged over QMP).
        assert!(saved.contains(" -m 256M,slots=4,maxmem=65536M -smp 1,maxcpus=16 "), "{saved}");
        assert!(saved.contains(" memhp_default_state=online"), "{saved}");
        assert!(restored.contains("-incoming defer"), "{restored}");
        // Everything else is the template's: the devices must be the ones saved.
        let strip = |l: &str| l.replace("share=off", "share=on").replace(" -incoming defer", "");
        assert_eq!(strip(&restored), saved);
    }

    #[test]
    fn q35_tcg_hybrid_vsock_virtio_fs() {
        let s = spec(MachineType::Q35, Accel::Tcg, AgentChannel::HybridVsock, SharedFs::VirtioFs);
        assert_eq!(
            line(&s),
            "qemu -machine q35,memory-backend=mem -accel tcg,tb-size=64 \
             -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -m 256M -smp 1 -nographic -nodefaults \
             -no-reboot -serial file:/run/s/console.fifo -qmp unix:/run/s/qmp.sock,server=on,wait=off \
             -object memory-backend-memfd,id=mem,size=256M,share=on -bios /fw/qboot.rom -kernel /k/kernel \
             -initrd /k/wisp.initrd -append 'console=ttyS0 panic=-1 printk.time=1 no_timer_check' \
             -chardev socket,id=vs0,path=/run/s/vhost.sock -device vhost-user-vsock-pci,chardev=vs0,event_idx=off \
             -chardev socket,id=fs0,path=/run/s/virtiofsd.sock \
             -device vhost-user-fs-pci,chardev=fs0,tag=kataShared,queue-size=1024 \
             -device pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1 \
             -device pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2"
        );
        let paths = VmPaths::new("/run/s");
        assert_eq!(
            vsock_helper_args(&s, &paths).unwrap(),
            ["--vm", "guest-cid=3,socket=/run/s/vhost.sock,uds-path=/run/s/hvsock.sock"]
        );
        assert_eq!(
            virtiofsd_args(&s, &paths).unwrap(),
            [
                "--socket-path=/run/s/virtiofsd.sock",
                "--shared-dir=/run/s/shared",
                "--cache=auto",
                "--sandbox=namespace",
                "--seccomp=kill",
                "--modcaps=-mknod"
            ]
        );
        assert_eq!(agent_addr(&s, &paths).unwrap().to_string(), "hvsock:/run/s/hvsock.sock:1024");
    }

    #[test]
    fn pc_kvm_serial_9p_needs_no_shared_memory_and_no_helpers() {
        let mut s = spec(MachineType::Pc, Accel::Kvm, AgentChannel::Serial, SharedFs::NineP);
        s.kernel_params = vec!["agent.log=debug".into()];
        s.debug_console = true;
        assert_eq!(
            line(&s),
            "qemu -machine pc -accel kvm -cpu host \
             -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -m 256M -smp 1 -nographic -nodefaults -no-reboot \
             -serial file:/run/s/console.fifo -qmp unix:/run/s/qmp.sock,server=on,wait=off -bios /fw/qboot.rom \
             -kernel /k/kernel -initrd /k/wisp.initrd \
             -append 'console=ttyS0 panic=-1 printk.time=1 no_timer_check agent.channel=serial agent.debug_console agent.log=debug' \
             -device virtio-serial-pci -chardev socket,id=ch0,path=/run/s/serial.sock,server=on,wait=off \
             -device virtserialport,chardev=ch0,name=agent.channel.0 \
             -fsdev local,id=fs0,path=/run/s/shared,security_model=none \
             -device virtio-9p-pci,fsdev=fs0,mount_tag=kataShared"
        );
        let paths = VmPaths::new("/run/s");
        assert_eq!(vsock_helper_args(&s, &paths), None);
        assert_eq!(virtiofsd_args(&s, &paths), None);
        assert_eq!(agent_addr(&s, &paths).unwrap(), AgentAddr::Serial { path: PathBuf::from("/run/s/serial.sock") });
    }

    #[test]
    fn a_tcg_guest_gets_the_hosts_tsc_rate_and_only_microvm_declares_it_reliable() {
        let mut q35 = spec(MachineType::Q35, Accel::Tcg, AgentChannel::HybridVsock, SharedFs::VirtioFs);
        assert!(!kernel_cmdline(&q35).contains("tsc"), "unknown rate: the guest calibrates");
        q35.tsc_khz = Some(2_599_985);
        let line = kernel_cmdline(&q35);
        assert!(line.contains(" tsc_early_khz=2599985") && !line.contains("tsc=reliable"), "{line}");
        let mut microvm = spec(MachineType::Microvm, Accel::Tcg, AgentChannel::HybridVsock, SharedFs::NineP);
        microvm.tsc_khz = Some(2_599_985);
        assert!(kernel_cmdline(&microvm).contains(" tsc_early_khz=2599985 tsc=reliable"));
        let mut kvm = spec(MachineType::Q35, Accel::Kvm, AgentChannel::HybridVsock, SharedFs::VirtioFs);
        kvm.tsc_khz = Some(2_599_985);
        assert!(!kernel_cmdline(&kvm).contains("tsc"), "KVM tells the guest its TSC rate itself");
    }

    #[test]
    fn microvm_uses_mmio_devices_no_bios_no_root_ports_and_the_tsc_fix() {
        let s = spec(MachineType::Microvm, Accel::Tcg, AgentChannel::HybridVsock, SharedFs::NineP);
        let l = line(&s);
        assert!(l.starts_with("qemu -machine microvm,memory-backend=mem "), "{l}");
        assert!(l.contains("-device vhost-user-vsock-device,chardev=vs0,event_idx=off"), "{l}");
        assert!(l.contains("-device virtio-9p-device,fsdev=fs0,mount_tag=kataShared"), "{l}");
        assert!(l.contains("tsc_early_khz=2000000 tsc=reliable"), "{l}");
        assert!(!l.contains("-bios") && !l.contains("pcie-root-port"), "{l}");
        let kvm = spec(MachineType::Microvm, Accel::Kvm, AgentChannel::Serial, SharedFs::VirtioFs);
        assert!(!kernel_cmdline(&kvm).contains("tsc_early_khz"));
        assert!(line(&kvm).contains("-device virtio-serial-device"));
        assert!(line(&kvm).contains("vhost-user-fs-device,chardev=fs0"));
    }

    #[test]
    fn vhost_vsock_and_vhost_user_store() {
        let mut s = spec(MachineType::Q35, Accel::Kvm, AgentChannel::VhostVsock { cid: 7 }, SharedFs::NineP);
        assert!(line(&s).contains("-device vhost-vsock-pci,guest-cid=7 "), "no fd until one is claimed");
        s.vhost_vsock_fd = Some(9);
        assert!(line(&s).contains("-device vhost-vsock-pci,guest-cid=7,vhostfd=9 "), "{}", line(&s));
        assert!(!line(&s).contains("memory-backend"), "vhost-vsock needs no shared memory");
        s.vhost_user_devices = true;
        assert!(line(&s).contains("-machine q35,memory-backend=mem"));
        assert!(line(&s).contains("memory-backend-memfd,id=mem,size=256M,share=on"));
        assert_eq!(agent_addr(&s, &VmPaths::new("/x")), Some(AgentAddr::Vsock { cid: 7, port: 1024 }));
    }

    #[test]
    fn a_pod_tap_becomes_a_virtio_net_nic_with_its_mac() {
        let mut s = spec(MachineType::Q35, Accel::Tcg, AgentChannel::Serial, SharedFs::NineP);
        s.tap_nic = Some(TapNic { fd: 11, mac: "aa:bb:cc:dd:ee:01".into() });
        assert!(
            line(&s).contains("-netdev tap,id=net0,fd=11 -device virtio-net-pci,netdev=net0,mac=aa:bb:cc:dd:ee:01 "),
            "{}",
            line(&s)
        );
        s.machine = MachineType::Microvm;
        assert!(line(&s).contains("-device virtio-net-device,netdev=net0,mac=aa:bb:cc:dd:ee:01"), "{}", line(&s));
    }

    #[test]
    fn tb_size_and_root_ports_follow_the_spec() {
        let mut s = spec(MachineType::Q35, Accel::Tcg, AgentChannel::Serial, SharedFs::NineP);
        s.tb_size_mib = 16;
        s.root_ports = 0;
        let l = line(&s);
        assert!(l.contains("-accel tcg,tb-size=16"), "{l}");
        assert!(!l.contains("pcie-root-port"), "{l}");
    }

    #[test]
    fn console_only_vm_without_initrd_qmp_or_share() {
        let mut s = spec(MachineType::Q35, Accel::Tcg, AgentChannel::Serial, SharedFs::NineP);
        s.channel = None;
        s.shared_fs = None;
        s.initrd = None;
        s.qmp = false;
        s.root_ports = 0;
        s.extra_args = vec!["-device".into(), "virtio-rng-pci".into()];
        assert_eq!(
            line(&s),
            "qemu -machine q35 -accel tcg,tb-size=64 \
             -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -m 256M -smp 1 -nographic -nodefaults -no-reboot \
             -serial file:/run/s/console.fifo -bios /fw/qboot.rom -kernel /k/kernel \
             -append 'console=ttyS0 panic=-1 printk.time=1 no_timer_check' -device virtio-rng-pci"
        );
        assert_eq!(agent_addr(&s, &VmPaths::new("/run/s")), None);
    }

    #[test]
    fn commas_in_paths_are_escaped_inside_options_only() {
        let mut s = spec(MachineType::Q35, Accel::Tcg, AgentChannel::Serial, SharedFs::NineP);
        s.kernel = "/k,1/bzImage".into();
        let args = qemu_args(&s, &VmPaths::new("/run/a,b"));
        assert!(args.contains(&"file:/run/a,,b/console.fifo".to_owned()), "{args:?}");
        assert!(args.contains(&"/k,1/bzImage".to_owned()), "{args:?}");
        assert!(args.contains(&"local,id=fs0,path=/run/a,,b/shared,security_model=none".to_owned()), "{args:?}");
    }
}
