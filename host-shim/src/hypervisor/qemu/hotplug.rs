//! Hot-plug over QMP: disks (virtio-blk, vhost-user-blk) and VFIO functions into a running VM.
//!
//! q35 plugs each device onto a free pre-created `pcie-root-port` (`rpN`, see
//! [`super::cmdline`]); pc onto `pci.0` (ACPI hot-plug); microvm cannot hot-plug at all
//! (virtio-mmio buses do not support it), which is said plainly. The guest finds the device
//! by Kata's PCI path: the root port's slot on the root bus then slot 0 behind it (`05/00`),
//! or on pc the device's own slot (`05`). Slots are read back with `query-pci`, so they
//! follow whatever addresses QEMU gave the ports.
//!
//! The QMP commands are built by pure functions ([`plug_commands`], [`backend_delete`]) so
//! their arguments are unit-tested without QEMU.

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::config::TapNic;
use crate::config::MachineType;
use crate::hypervisor::qmp::{Qmp, QmpError};
use crate::hypervisor::{BlockSource, HypervisorError, Plugged};

/// How long an unplug may take before the backend is left to QEMU's exit.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(10);

/// What a plugged device holds in QEMU besides the device itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlugRecord {
    /// The root port it sits on (q35), freed on unplug.
    pub port: Option<String>,
    /// The QMP command and arguments that free its backend after `device_del`.
    pub backend: Option<(&'static str, Value)>,
    /// The blockdev node (virtio-blk), for `block_resize`.
    pub node: Option<String>,
}

/// The id of a hot-plugged pod NIC (its netdev, its device and the tap's name in QEMU).
pub const NIC_ID: &str = "net0";

/// The block node name of device `id`.
fn node_name(id: &str) -> String {
    format!("drv-{id}")
}

/// The chardev id of device `id`.
fn chardev_id(id: &str) -> String {
    format!("chr-{id}")
}

/// The QMP commands that plug `source` as device `id` on `bus` (in order), and what
/// unplugging must free afterwards.
pub fn plug_commands(id: &str, source: &BlockSource, bus: &str) -> (Vec<(&'static str, Value)>, PlugRecord) {
    let mut record = PlugRecord { port: None, backend: None, node: None };
    let commands = match source {
        BlockSource::File { path, read_only } => {
            let node = node_name(id);
            let host_device = std::fs::metadata(path).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_block_device()
            });
            let file = json!({
                "driver": if host_device { "host_device" } else { "file" },
                "filename": path.to_string_lossy(),
            });
            record.backend = Some(("blockdev-del", json!({ "node-name": node })));
            record.node = Some(node.clone());
            vec![
                ("blockdev-add", json!({ "driver": "raw", "node-name": node, "read-only": read_only, "file": file })),
                ("device_add", json!({ "driver": "virtio-blk-pci", "drive": node, "id": id, "bus": bus })),
            ]
        }
        BlockSource::VhostUser { socket } => {
            let chardev = chardev_id(id);
            record.backend = Some(("chardev-remove", json!({ "id": chardev })));
            vec![
                (
                    "chardev-add",
                    json!({
                        "id": chardev,
                        "backend": { "type": "socket", "data": {
                            "addr": { "type": "unix", "data": { "path": socket.to_string_lossy() } },
                            "server": false,
                        } },
                    }),
                ),
                ("device_add", json!({ "driver": "vhost-user-blk-pci", "chardev": chardev, "id": id, "bus": bus })),
            ]
        }
        BlockSource::Vfio { host } => {
            vec![("device_add", json!({ "driver": "vfio-pci", "host": host, "id": id, "bus": bus }))]
        }
    };
    (commands, record)
}

/// The slot on the root bus of the device whose qdev id is `qdev_id`, in a `query-pci` answer.
pub fn root_slot(query_pci: &Value, qdev_id: &str) -> Option<u64> {
    query_pci
        .as_array()?
        .iter()
        .filter(|bus| bus["bus"].as_u64() == Some(0))
        .flat_map(|bus| bus["devices"].as_array().into_iter().flatten())
        .find(|dev| dev["qdev_id"].as_str() == Some(qdev_id))
        .and_then(|dev| dev["slot"].as_u64())
}

/// Whether a device with qdev id `qdev_id` is anywhere in a `query-pci` answer.
pub fn present(query_pci: &Value, qdev_id: &str) -> bool {
    fn walk(devices: &Value, qdev_id: &str) -> bool {
        devices
            .as_array()
            .into_iter()
            .flatten()
            .any(|dev| dev["qdev_id"].as_str() == Some(qdev_id) || walk(&dev["pci_bridge"]["devices"], qdev_id))
    }
    query_pci.as_array().into_iter().flatten().any(|bus| walk(&bus["devices"], qdev_id))
}

/// Why `machine` cannot hot-plug, if it cannot.
pub fn refuse(machine: MachineType) -> Option<HypervisorError> {
    (machine == MachineType::Microvm).then(|| {
        HypervisorError::Unsupported(
            "microvm machines cannot hot-plug devices (virtio-mmio buses do not support hotplugging): \
             use machine_type = \"q35\" or \"pc\""
                .to_owned(),
        )
    })
}

/// Where device `id` goes: on q35 the first root port not in `busy` (the port, and it as the
/// bus), on pc the root bus `pci.0` (no port).
fn slot(
    machine: MachineType,
    root_ports: u32,
    busy: &[String],
    id: &str,
) -> Result<(Option<String>, String), HypervisorError> {
    if machine != MachineType::Q35 {
        return Ok((None, "pci.0".to_owned()));
    }
    let port = (1..=root_ports).map(|n| format!("rp{n}")).find(|p| !busy.contains(p)).ok_or_else(|| {
        HypervisorError::Unsupported(format!(
            "no free PCIe root port for {id}: all {root_ports} are in use (raise hypervisor.qemu.pcie_root_port)"
        ))
    })?;
    Ok((Some(port.clone()), port))
}

/// Plugs `source` as `id`: on q35 onto the first root port not in `busy`, on pc onto `pci.0`.
pub async fn plug(
    qmp: &mut Qmp,
    machine: MachineType,
    root_ports: u32,
    busy: &[String],
    id: &str,
    source: &BlockSource,
) -> Result<(Plugged, PlugRecord), HypervisorError> {
    if let Some(err) = refuse(machine) {
        return Err(err);
    }
    if let BlockSource::File { path, .. } = source {
        if !Path::new(path).exists() {
            return Err(HypervisorError::Io {
                what: "cannot plug",
                path: path.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
    }
    let (port, bus) = slot(machine, root_ports, busy, id)?;
    let (commands, mut record) = plug_commands(id, source, &bus);
    record.port = port.clone();
    let mut done: Vec<&str> = Vec::new();
    for (command, args) in commands {
        if let Err(err) = qmp.execute(command, Some(args)).await {
            // Undo the backend added before the device failed.
            if done.contains(&"blockdev-add") || done.contains(&"chardev-add") {
                if let Some((undo, args)) = &record.backend {
                    let _ = qmp.execute(undo, Some(args.clone())).await;
                }
            }
            return Err(err.into());
        }
        done.push(command);
    }
    match pci_path(qmp, id, port.as_deref()).await {
        Ok(pci_path) => Ok((Plugged { id: id.to_owned(), pci_path }, record)),
        Err(err) => {
            // Plugged but not found where the guest would look: take it out again.
            let _ = unplug(qmp, id, &record).await;
            Err(err)
        }
    }
}

/// Plugs a pod's NIC on `tap` as `net0`, where [`plug`] would put a disk (the first root port
/// not in `busy` on q35, `pci.0` on pc). The tap travels over the QMP socket (`getfd`).
pub async fn plug_nic(
    qmp: &mut Qmp,
    machine: MachineType,
    root_ports: u32,
    busy: &[String],
    tap: &TapNic,
) -> Result<PlugRecord, HypervisorError> {
    if let Some(err) = refuse(machine) {
        return Err(err);
    }
    let (port, bus) = slot(machine, root_ports, busy, NIC_ID)?;
    // SAFETY: the tap stays open in `tap`'s owner (the pod network) until QEMU holds its own
    // copy, which `getfd` makes before this call returns.
    let fd = unsafe { BorrowedFd::borrow_raw(tap.fd) };
    qmp.send_fd(NIC_ID, fd).await?;
    qmp.execute("netdev_add", Some(json!({ "type": "tap", "id": NIC_ID, "fd": NIC_ID }))).await?;
    let device = json!({ "driver": "virtio-net-pci", "id": NIC_ID, "netdev": NIC_ID, "mac": tap.mac, "bus": bus });
    if let Err(err) = qmp.execute("device_add", Some(device)).await {
        let _ = qmp.execute("netdev_del", Some(json!({ "id": NIC_ID }))).await;
        return Err(err.into());
    }
    Ok(PlugRecord { port, backend: Some(("netdev_del", json!({ "id": NIC_ID }))), node: None })
}

/// Kata's PCI path of device `id` plugged onto root port `port` (q35), or onto the root bus.
async fn pci_path(qmp: &mut Qmp, id: &str, port: Option<&str>) -> Result<String, HypervisorError> {
    let pci = qmp.execute("query-pci", None).await?;
    let slot_of = port.unwrap_or(id);
    let slot = root_slot(&pci, slot_of).ok_or_else(|| {
        HypervisorError::Unsupported(format!("{slot_of} is not on the root PCI bus after plugging {id}"))
    })?;
    Ok(if port.is_some() { format!("{slot:02x}/00") } else { format!("{slot:02x}") })
}

/// Unplugs `id` (`device_del`), waits until the guest let go of it, then frees its backend.
pub async fn unplug(qmp: &mut Qmp, id: &str, record: &PlugRecord) -> Result<(), HypervisorError> {
    qmp.execute("device_del", Some(json!({ "id": id }))).await?;
    let start = Instant::now();
    loop {
        let pci = qmp.execute("query-pci", None).await?;
        if !present(&pci, id) {
            break;
        }
        if start.elapsed() >= UNPLUG_TIMEOUT {
            return Err(HypervisorError::Unsupported(format!(
                "the guest did not release device {id} within {UNPLUG_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The device leaves query-pci a moment before QEMU lets go of its backend.
    if let Some((command, args)) = &record.backend {
        loop {
            match qmp.execute(command, Some(args.clone())).await {
                Ok(_) => break,
                Err(err @ QmpError::Command { .. }) if start.elapsed() >= UNPLUG_TIMEOUT => return Err(err.into()),
                Err(QmpError::Command { .. }) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(err) => return Err(err.into()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tokio::net::UnixListener;

    use crate::hypervisor::qmp::fake::fake_qemu;

    use super::*;

    #[test]
    fn virtio_blk_from_a_file_is_a_raw_blockdev_and_a_device_on_the_port() {
        let source = BlockSource::File { path: PathBuf::from("/img/disk.raw"), read_only: true };
        let (commands, record) = plug_commands("vol1", &source, "rp2");
        assert_eq!(commands.len(), 2);
        assert_eq!(commands[0].0, "blockdev-add");
        assert_eq!(
            commands[0].1,
            json!({"driver": "raw", "node-name": "drv-vol1", "read-only": true,
                   "file": {"driver": "file", "filename": "/img/disk.raw"}})
        );
        assert_eq!(
            commands[1],
            ("device_add", json!({"driver": "virtio-blk-pci", "drive": "drv-vol1", "id": "vol1", "bus": "rp2"}))
        );
        assert_eq!(record.backend, Some(("blockdev-del", json!({"node-name": "drv-vol1"}))));
        assert_eq!(record.node.as_deref(), Some("drv-vol1"));
    }

    #[test]
    fn vhost_user_blk_is_a_client_chardev_and_a_device() {
        let source = BlockSource::VhostUser { socket: PathBuf::from("/store/block/sockets/vhostblk0") };
        let (commands, record) = plug_commands("spdk0", &source, "pci.0");
        assert_eq!(
            commands[0],
            (
                "chardev-add",
                json!({"id": "chr-spdk0", "backend": {"type": "socket", "data": {
                    "addr": {"type": "unix", "data": {"path": "/store/block/sockets/vhostblk0"}}, "server": false}}})
            )
        );
        assert_eq!(
            commands[1],
            (
                "device_add",
                json!({"driver": "vhost-user-blk-pci", "chardev": "chr-spdk0", "id": "spdk0", "bus": "pci.0"})
            )
        );
        assert_eq!(record.backend, Some(("chardev-remove", json!({"id": "chr-spdk0"}))));
        assert_eq!(record.node, None);
    }

    #[test]
    fn vfio_is_one_device_add_with_the_host_address() {
        let source = BlockSource::Vfio { host: "0000:45:00.1".into() };
        let (commands, record) = plug_commands("nvme0", &source, "rp1");
        assert_eq!(
            commands,
            [("device_add", json!({"driver": "vfio-pci", "host": "0000:45:00.1", "id": "nvme0", "bus": "rp1"}))]
        );
        assert_eq!(record.backend, None);
    }

    #[test]
    fn slots_and_presence_from_query_pci() {
        let pci = json!([{"bus": 0, "devices": [
            {"bus": 0, "slot": 1, "function": 0, "qdev_id": ""},
            {"bus": 0, "slot": 5, "function": 0, "qdev_id": "rp1",
             "pci_bridge": {"bus": {"number": 1}, "devices": [{"bus": 1, "slot": 0, "qdev_id": "vol1"}]}},
            {"bus": 0, "slot": 6, "function": 0, "qdev_id": "rp2", "pci_bridge": {"bus": {"number": 2}, "devices": []}}
        ]}]);
        assert_eq!(root_slot(&pci, "rp1"), Some(5));
        assert_eq!(root_slot(&pci, "rp2"), Some(6));
        assert_eq!(root_slot(&pci, "vol1"), None, "behind a bridge, not on the root bus");
        assert!(present(&pci, "vol1") && present(&pci, "rp2"));
        assert!(!present(&pci, "gone"));
    }

    #[test]
    fn disks_and_the_pod_nic_take_the_first_free_root_port_on_q35_and_pci0_on_pc() {
        let port = |p: &str| (Some(p.to_owned()), p.to_owned());
        assert_eq!(slot(MachineType::Q35, 3, &[], "net0").unwrap(), port("rp1"));
        assert_eq!(slot(MachineType::Q35, 3, &["rp1".into()], "d").unwrap(), port("rp2"));
        let full = slot(MachineType::Q35, 1, &["rp1".into()], "d").unwrap_err().to_string();
        assert!(full.contains("no free PCIe root port for d"), "{full}");
        assert_eq!(slot(MachineType::Pc, 0, &[], "d").unwrap(), (None, "pci.0".to_owned()));
    }

    #[test]
    fn microvm_is_refused_plainly() {
        let err = refuse(MachineType::Microvm).unwrap().to_string();
        assert!(err.contains("microvm machines cannot hot-plug"), "{err}");
        assert!(refuse(MachineType::Q35).is_none() && refuse(MachineType::Pc).is_none());
    }

    const OK: &str = r#"{"return": {}}"#;

    /// Plugs a file-backed disk on pc into a scripted QEMU; returns the result and the commands
    /// QEMU received.
    async fn plug_into_fake(
        script: Vec<Vec<&'static str>>,
    ) -> (Result<(Plugged, PlugRecord), HypervisorError>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::write(&image, [0u8; 512]).unwrap();
        let socket = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let qemu = tokio::spawn(fake_qemu(listener, script));
        let mut qmp = Qmp::connect(&socket).await.unwrap();
        let source = BlockSource::File { path: image, read_only: false };
        let plugged = plug(&mut qmp, MachineType::Pc, 0, &[], "wisp-blk0", &source).await;
        drop(qmp);
        let seen = qemu.await.unwrap();
        (plugged, seen.iter().map(|v| v["execute"].as_str().unwrap_or_default().to_owned()).collect())
    }

    #[tokio::test]
    async fn a_device_refused_after_blockdev_add_leaves_no_backend() {
        let refused = r#"{"error": {"class": "GenericError", "desc": "Bus 'pci.0' is full"}}"#;
        let script = vec![vec![OK], vec![OK], vec![refused], vec![OK]];
        let (plugged, seen) = plug_into_fake(script).await;
        assert!(matches!(plugged, Err(HypervisorError::Qmp(_))), "{plugged:?}");
        assert_eq!(seen, ["qmp_capabilities", "blockdev-add", "device_add", "blockdev-del"]);
    }

    #[tokio::test]
    async fn a_device_missing_from_the_bus_after_plugging_is_unplugged_again() {
        let empty_bus = r#"{"return": [{"bus": 0, "devices": []}]}"#;
        let script = vec![vec![OK], vec![OK], vec![OK], vec![empty_bus], vec![OK], vec![empty_bus], vec![OK]];
        let (plugged, seen) = plug_into_fake(script).await;
        assert!(matches!(plugged, Err(HypervisorError::Unsupported(_))), "{plugged:?}");
        assert_eq!(
            seen,
            ["qmp_capabilities", "blockdev-add", "device_add", "query-pci", "device_del", "query-pci", "blockdev-del"]
        );
    }
}
