//! StratoVirt's argv for a [`StratoVirtSpec`], and the QMP arguments of a block hot-plug, in
//! the syntax of StratoVirt's `docs/config_guidebook.md` and `docs/qmp.md`:
//!
//! - `-machine microvm` (or `q35[,mem-share=on]`), `-smp N`, `-m MiB`, `-kernel`, `-initrd`,
//!   `-append`, `-qmp unix:PATH,server,nowait`, `-serial file,path=PATH` (the console FIFO the
//!   shim drains into a bounded log, [`crate::hypervisor::console`]);
//! - vsock: `-device vhost-vsock-device,id=vsock-0,guest-cid=N` (microvm) or
//!   `vhost-vsock-pci,...,bus=pcie.0,addr=0xS.0x0` (q35);
//! - block: `-drive id=ID,file=PATH,readonly=off,direct=off` +
//!   `-device virtio-blk-device,drive=ID,id=ID` (microvm: `/dev/vdX` by order) or
//!   `virtio-blk-pci,...,bus=pcie.0,addr=0xS.0x0`;
//! - q35 only: the pflash firmware `-drive file=FW,if=pflash,unit=0,readonly=true`,
//!   virtio-fs `-chardev socket,id=..,path=..` + `vhost-user-fs-pci` (guest memory shared:
//!   `mem-share=on`), and `pcie-root-port,port=0xS,addr=0xS,bus=pcie.0,id=pcie.S` for hot-plug.
//!
//! Every virtio-pci device gets its own slot on `pcie.0` (no bridges in StratoVirt), handed
//! out in argv order from slot 1.
//!
//! Never `-disable-seccomp`: StratoVirt's own seccomp filter (on by default) stays on.

use std::path::Path;

use serde_json::{json, Value};

use super::config::{BlockDriver, StratoVirtSpec};
use crate::config::StratoVirtMachine;
use crate::hypervisor::{SharedFs, VmPaths, SHARED_FS_TAG};

/// A block device attached at boot (microvm cannot hot-plug onto a full bus: cold-plug is the
/// reliable path there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// The drive and device id.
    pub id: String,
    /// The host file or block device.
    pub path: std::path::PathBuf,
    /// Read-only.
    pub readonly: bool,
}

/// The guest kernel command line: ours plus what StratoVirt's guide boots with
/// (`reboot=k panic=1`, `pci=off` on microvm, `tsc=reliable`, `no_timer_check`).
pub fn kernel_cmdline(spec: &StratoVirtSpec) -> String {
    let mut args: Vec<String> =
        ["console=ttyS0", "reboot=k", "panic=1", "printk.time=1", "tsc=reliable", "no_timer_check"]
            .map(str::to_owned)
            .to_vec();
    if spec.machine == StratoVirtMachine::Microvm {
        args.push("pci=off".to_owned());
    }
    if spec.debug_console {
        args.push("agent.debug_console".to_owned());
    }
    args.extend(spec.kernel_params.iter().cloned());
    args.join(" ")
}

/// StratoVirt's arguments (without the program name), with `blocks` cold-plugged.
pub fn stratovirt_args(spec: &StratoVirtSpec, paths: &VmPaths, blocks: &[BlockDevice]) -> Vec<String> {
    let q35 = spec.machine == StratoVirtMachine::Q35;
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| (*s).to_owned()));
    let machine = match (spec.machine, spec.shared_fs) {
        (StratoVirtMachine::Microvm, _) => "microvm",
        (StratoVirtMachine::Q35, Some(SharedFs::VirtioFs)) => "q35,mem-share=on",
        (StratoVirtMachine::Q35, _) => "q35",
    };
    push(&["-machine", machine]);
    if let Some(firmware) = spec.firmware.as_deref().filter(|_| q35) {
        push(&["-drive", &format!("file={},if=pflash,unit=0,readonly=true", p(firmware))]);
    }
    push(&[
        "-smp",
        &spec.vcpus.to_string(),
        "-m",
        &spec.memory_mib.to_string(),
        "-kernel",
        &p(&spec.kernel),
        "-initrd",
        &p(&spec.initrd),
        "-append",
        &kernel_cmdline(spec),
        "-qmp",
        &format!("unix:{},server,nowait", p(&paths.qmp_socket())),
        "-serial",
        &format!("file,path={}", p(&paths.console_fifo())),
    ]);
    let mut slot = 0u32;
    let pci = |slot: &mut u32| {
        *slot += 1;
        format!(",bus=pcie.0,addr={:#x}.0x0", *slot)
    };
    let vsock_at = if q35 { pci(&mut slot) } else { String::new() };
    let vsock_dev = if q35 { "vhost-vsock-pci" } else { "vhost-vsock-device" };
    let vhostfd = spec.vhost_fd.map(|fd| format!(",vhostfd={fd}")).unwrap_or_default();
    push(&["-device", &format!("{vsock_dev},id=vsock-0,guest-cid={}{vhostfd}{vsock_at}", spec.guest_cid)]);
    for block in blocks {
        push(&[
            "-drive",
            &format!(
                "id={},file={},readonly={},direct=off",
                block.id,
                p(&block.path),
                if block.readonly { "on" } else { "off" }
            ),
        ]);
        let device = match spec.block_driver {
            BlockDriver::Mmio if !q35 => format!("virtio-blk-device,drive={},id={}", block.id, block.id),
            _ => format!("virtio-blk-pci,drive={},id={}{}", block.id, block.id, pci(&mut slot)),
        };
        push(&["-device", &device]);
    }
    if q35 && spec.shared_fs == Some(SharedFs::VirtioFs) {
        let at = pci(&mut slot);
        push(&[
            "-chardev",
            &format!("socket,id=fs0,path={}", p(&paths.virtiofsd_socket())),
            "-device",
            &format!("vhost-user-fs-pci,id=fs-0,chardev=fs0,tag={SHARED_FS_TAG}{at}"),
        ]);
    }
    if q35 {
        for _ in 0..spec.root_ports {
            slot += 1;
            push(&["-device", &format!("pcie-root-port,port={slot:#x},addr={slot:#x},bus=pcie.0,id=pcie.{slot}")]);
        }
    }
    args
}

/// The ids of the free root ports [`stratovirt_args`] created (hot-plug targets on q35).
pub fn root_port_ids(spec: &StratoVirtSpec, blocks: usize) -> Vec<String> {
    if spec.machine != StratoVirtMachine::Q35 {
        return Vec::new();
    }
    let used = 1 + blocks as u32 + u32::from(spec.shared_fs == Some(SharedFs::VirtioFs));
    (used + 1..=used + spec.root_ports).map(|slot| format!("pcie.{slot}")).collect()
}

/// QMP `blockdev-add` then `device_add` arguments for hot-plugging `path` as `id`: on microvm
/// into virtio-mmio slot `slot` (`node-name` must equal the device id there), on q35 onto the
/// free root port `bus` at slot 0 (the only slot behind a root port).
pub fn hotplug_block(spec: &StratoVirtSpec, id: &str, path: &Path, readonly: bool, slot_or_bus: &str) -> [Value; 2] {
    let blockdev = json!({
        "node-name": id,
        "file": {"driver": "file", "filename": p(path)},
        "cache": {"direct": true},
        "read-only": readonly,
    });
    let device = match spec.machine {
        StratoVirtMachine::Microvm => json!({"id": id, "driver": "virtio-blk-mmio", "addr": slot_or_bus}),
        StratoVirtMachine::Q35 => {
            json!({"id": id, "driver": "virtio-blk-pci", "drive": id, "bus": slot_or_bus, "addr": "0x0"})
        }
    };
    [blockdev, device]
}

fn p(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::hypervisor::qemu::cmdline::shell_line;

    fn spec(machine: StratoVirtMachine) -> StratoVirtSpec {
        StratoVirtSpec {
            binary: "stratovirt".into(),
            machine,
            kernel: "/k/vmlinux".into(),
            initrd: "/k/wisp.initrd".into(),
            vcpus: 1,
            memory_mib: 256,
            kernel_params: Vec::new(),
            guest_cid: 7,
            vhost_fd: None,
            block_driver: if machine == StratoVirtMachine::Microvm { BlockDriver::Mmio } else { BlockDriver::Pci },
            firmware: None,
            shared_fs: None,
            root_ports: 0,
            virtiofsd: "virtiofsd".into(),
            debug_console: false,
            cgroups_path: None,
        }
    }

    fn disk(id: &str) -> BlockDevice {
        BlockDevice { id: id.to_owned(), path: PathBuf::from(format!("/dev/mapper/{id}")), readonly: false }
    }

    #[test]
    fn microvm_vsock_and_mmio_blocks_as_the_guidebook_writes_them() {
        let s = spec(StratoVirtMachine::Microvm);
        let line = shell_line("stratovirt", &stratovirt_args(&s, &VmPaths::new("/run/s"), &[disk("rootfs")]));
        assert_eq!(
            line,
            "stratovirt -machine microvm -smp 1 -m 256 -kernel /k/vmlinux -initrd /k/wisp.initrd \
             -append 'console=ttyS0 reboot=k panic=1 printk.time=1 tsc=reliable no_timer_check pci=off' \
             -qmp unix:/run/s/qmp.sock,server,nowait -serial file,path=/run/s/console.fifo \
             -device vhost-vsock-device,id=vsock-0,guest-cid=7 \
             -drive id=rootfs,file=/dev/mapper/rootfs,readonly=off,direct=off \
             -device virtio-blk-device,drive=rootfs,id=rootfs"
        );
        assert!(!line.contains("-disable-seccomp"), "StratoVirt keeps its seccomp filter");
        assert!(root_port_ids(&s, 1).is_empty());
    }

    #[test]
    fn standard_machine_firmware_pci_slots_virtio_fs_and_root_ports() {
        let mut s = spec(StratoVirtMachine::Q35);
        s.firmware = Some("/fw/OVMF_CODE.fd".into());
        s.shared_fs = Some(SharedFs::VirtioFs);
        s.root_ports = 2;
        s.debug_console = true;
        let line = shell_line("stratovirt", &stratovirt_args(&s, &VmPaths::new("/run/s"), &[disk("d1")]));
        assert_eq!(
            line,
            "stratovirt -machine q35,mem-share=on -drive file=/fw/OVMF_CODE.fd,if=pflash,unit=0,readonly=true \
             -smp 1 -m 256 -kernel /k/vmlinux -initrd /k/wisp.initrd \
             -append 'console=ttyS0 reboot=k panic=1 printk.time=1 tsc=reliable no_timer_check agent.debug_console' \
             -qmp unix:/run/s/qmp.sock,server,nowait -serial file,path=/run/s/console.fifo \
             -device vhost-vsock-pci,id=vsock-0,guest-cid=7,bus=pcie.0,addr=0x1.0x0 \
             -drive id=d1,file=/dev/mapper/d1,readonly=off,direct=off \
             -device virtio-blk-pci,drive=d1,id=d1,bus=pcie.0,addr=0x2.0x0 \
             -chardev socket,id=fs0,path=/run/s/virtiofsd.sock \
             -device vhost-user-fs-pci,id=fs-0,chardev=fs0,tag=kataShared,bus=pcie.0,addr=0x3.0x0 \
             -device pcie-root-port,port=0x4,addr=0x4,bus=pcie.0,id=pcie.4 \
             -device pcie-root-port,port=0x5,addr=0x5,bus=pcie.0,id=pcie.5"
        );
        assert_eq!(root_port_ids(&s, 1), ["pcie.4", "pcie.5"]);
    }

    #[test]
    fn hotplug_arguments_follow_qmp_md() {
        let micro = spec(StratoVirtMachine::Microvm);
        let [blockdev, device] = hotplug_block(&micro, "drive-0", Path::new("/path/to/block"), false, "0x0");
        assert_eq!(
            blockdev,
            json!({"node-name": "drive-0", "file": {"driver": "file", "filename": "/path/to/block"},
                   "cache": {"direct": true}, "read-only": false})
        );
        assert_eq!(device, json!({"id": "drive-0", "driver": "virtio-blk-mmio", "addr": "0x0"}));
        let std_vm = spec(StratoVirtMachine::Q35);
        let [_, device] = hotplug_block(&std_vm, "d2", Path::new("/b"), true, "pcie.4");
        assert_eq!(
            device,
            json!({"id": "d2", "driver": "virtio-blk-pci", "drive": "d2", "bus": "pcie.4", "addr": "0x0"})
        );
    }
}
