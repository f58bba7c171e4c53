//! The rewrite of a container spec's devices from the host's numbers to the
//! guest's.
//!
//! The host wrote `linux.devices` (and the device cgroup rules of
//! `linux.resources.devices`) with the major/minor of the disk on the host,
//! but inside the VM the same disk is a virtio or SCSI disk with numbers of
//! its own. Every update is computed against the spec as the host wrote it
//! and applied in one pass: two devices whose numbers swap (host 8:0 becomes
//! guest 254:0 while host 254:0 becomes guest 8:16) must not rewrite each
//! other's rules.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::stat::{major, minor, stat, SFlag};
use oci_spec::runtime::{Linux, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceType, LinuxResources, Spec};
use protocols::agent::Device;

use super::{DeviceError, Devices};

/// Mode of a device node the spec did not list: what runc gives by default.
const ADDED_DEVICE_MODE: u32 = 0o660;

/// A guest block device, found and stat-ed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDevice {
    pub path: PathBuf,
    pub major: i64,
    pub minor: i64,
}

/// For each device, waits for the guest's node (up to `timeout` each), then
/// rewrites `spec`'s entry for its `container_path` to the guest's numbers,
/// adding one (and an allow rule) when the spec has none.
pub fn apply_devices(
    spec: &mut Spec,
    devices: &[Device],
    table: &Devices,
    timeout: Duration,
) -> Result<(), DeviceError> {
    let mut found = Vec::with_capacity(devices.len());
    for d in devices {
        if d.container_path.is_empty() {
            return Err(DeviceError::InvalidArgument(format!("device {:?} has no container_path", d.id)));
        }
        let path = find(d, table, timeout)?;
        found.push((d.container_path.clone(), stat_block(path)?));
    }
    update_spec(spec, &found);
    Ok(())
}

fn find(d: &Device, table: &Devices, timeout: Duration) -> Result<PathBuf, DeviceError> {
    match d.type_.as_str() {
        // Kata sends the PCI path in `id` (older runtimes in vm_path).
        "blk" => table.wait_pci(if d.id.is_empty() { &d.vm_path } else { &d.id }, timeout),
        "mmioblk" => table.wait_mmio(&d.vm_path, timeout),
        "scsi" => table.wait_scsi(&d.id, timeout),
        t if t.starts_with("vfio") => Err(DeviceError::Unsupported(format!(
            "device {:?}: {t} pass-through is not supported by this agent yet (only blk, mmioblk and scsi)",
            d.id
        ))),
        other => Err(DeviceError::InvalidArgument(format!(
            "device {:?}: unknown device type {other:?} (expected blk, mmioblk or scsi)",
            d.id
        ))),
    }
}

fn stat_block(path: PathBuf) -> Result<GuestDevice, DeviceError> {
    let st = stat(&path).map_err(|source| DeviceError::Stat { path: path.clone(), source })?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFBLK {
        return Err(DeviceError::NotBlock { path });
    }
    Ok(GuestDevice { major: major(st.st_rdev) as i64, minor: minor(st.st_rdev) as i64, path })
}

/// Applies `(container_path, guest device)` pairs to `spec` in one pass.
pub(crate) fn update_spec(spec: &mut Spec, found: &[(String, GuestDevice)]) {
    let linux = spec.linux_mut().get_or_insert_with(Linux::default);
    let entries = linux.devices_mut().get_or_insert_with(Vec::new);
    // (host type, major, minor) -> guest device, from the spec as written.
    let mut renumbered = Vec::new();
    let mut added = Vec::new();
    for (container_path, guest) in found {
        match entries.iter_mut().find(|e| e.path().as_os_str() == container_path.as_str()) {
            Some(entry) => {
                renumbered.push((entry.typ(), entry.major(), entry.minor(), guest));
                entry.set_major(guest.major);
                entry.set_minor(guest.minor);
            }
            None => added.push((container_path, guest)),
        }
    }
    for (container_path, guest) in &added {
        let entry = LinuxDeviceBuilder::default()
            .path(container_path.as_str())
            .typ(LinuxDeviceType::B)
            .major(guest.major)
            .minor(guest.minor)
            .file_mode(ADDED_DEVICE_MODE)
            .uid(0u32)
            .gid(0u32)
            .build();
        // The builder cannot fail with every field set; skip rather than panic.
        if let Ok(entry) = entry {
            entries.push(entry);
        }
    }

    let resources = linux.resources_mut().get_or_insert_with(LinuxResources::default);
    let rules = resources.devices_mut().get_or_insert_with(Vec::new);
    for rule in rules.iter_mut() {
        let hit = renumbered.iter().find(|(typ, maj, min, _)| {
            rule.typ().is_some_and(|t| t == *typ) && rule.major() == Some(*maj) && rule.minor() == Some(*min)
        });
        if let Some((_, _, _, guest)) = hit {
            rule.set_major(Some(guest.major));
            rule.set_minor(Some(guest.minor));
        }
    }
    for (_, guest) in &added {
        let mut rule = LinuxDeviceCgroup::default();
        rule.set_allow(true);
        rule.set_typ(Some(LinuxDeviceType::B));
        rule.set_major(Some(guest.major));
        rule.set_minor(Some(guest.minor));
        rule.set_access(Some("rwm".into()));
        rules.push(rule);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::tests::{disk, logger};

    fn spec_json(json: &str) -> Spec {
        serde_json::from_str(json).expect("spec parses")
    }

    fn guest(path: &str, major: i64, minor: i64) -> GuestDevice {
        GuestDevice { path: path.into(), major, minor }
    }

    #[test]
    fn rewrites_the_entry_and_its_cgroup_rule_without_crosstalk() {
        let mut spec = spec_json(
            r#"{"ociVersion":"1.1.0","linux":{
                "devices":[{"path":"/dev/xda","type":"b","major":8,"minor":0},
                           {"path":"/dev/xdb","type":"b","major":254,"minor":0}],
                "resources":{"devices":[{"allow":false,"access":"rwm"},
                    {"allow":true,"type":"b","major":8,"minor":0,"access":"rw"},
                    {"allow":true,"type":"b","major":254,"minor":0,"access":"r"},
                    {"allow":true,"type":"c","major":8,"minor":0,"access":"rw"}]}}}"#,
        );
        update_spec(
            &mut spec,
            &[("/dev/xda".into(), guest("/dev/vda", 254, 0)), ("/dev/xdb".into(), guest("/dev/sda", 8, 16))],
        );
        let linux = spec.linux().as_ref().expect("linux");
        let devs = linux.devices().as_ref().expect("devices");
        assert_eq!((devs[0].major(), devs[0].minor()), (254, 0));
        assert_eq!((devs[1].major(), devs[1].minor()), (8, 16));
        let rules = linux.resources().as_ref().and_then(|r| r.devices().as_ref()).expect("rules");
        assert_eq!((rules[0].major(), rules[0].minor()), (None, None), "the deny-all rule is untouched");
        assert_eq!(
            (rules[1].major(), rules[1].minor(), rules[1].access().as_deref()),
            (Some(254), Some(0), Some("rw"))
        );
        assert_eq!((rules[2].major(), rules[2].minor(), rules[2].access().as_deref()), (Some(8), Some(16), Some("r")));
        assert_eq!((rules[3].major(), rules[3].minor()), (Some(8), Some(0)), "a char rule is not a block device's");
    }

    #[test]
    fn a_device_the_spec_lacks_is_added_with_an_allow_rule() {
        let mut spec = spec_json(r#"{"ociVersion":"1.1.0"}"#);
        update_spec(&mut spec, &[("/dev/data".into(), guest("/dev/vdc", 254, 32))]);
        let linux = spec.linux().as_ref().expect("linux");
        let dev = &linux.devices().as_ref().expect("devices")[0];
        assert_eq!(dev.path(), &PathBuf::from("/dev/data"));
        assert_eq!((dev.typ(), dev.major(), dev.minor(), dev.file_mode()), (LinuxDeviceType::B, 254, 32, Some(0o660)));
        let rule = &linux.resources().as_ref().and_then(|r| r.devices().as_ref()).expect("rules")[0];
        assert!(rule.allow());
        assert_eq!((rule.typ(), rule.major(), rule.minor()), (Some(LinuxDeviceType::B), Some(254), Some(32)));
        assert_eq!(rule.access().as_deref(), Some("rwm"));
    }

    #[test]
    fn refuses_vfio_and_unknown_types_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = Devices::with_sysfs(logger(), dir.path().to_path_buf(), true);
        let mut spec = spec_json(r#"{"ociVersion":"1.1.0"}"#);
        let mut d = Device::new();
        d.container_path = "/dev/x".into();
        d.type_ = "vfio-pci".into();
        let err = apply_devices(&mut spec, &[d.clone()], &table, Duration::ZERO).expect_err("vfio");
        assert_eq!(err.code(), protocols::ttrpc::Code::UNIMPLEMENTED);
        assert!(err.to_string().contains("vfio-pci"), "{err}");
        d.type_ = "floppy".into();
        let err = apply_devices(&mut spec, &[d.clone()], &table, Duration::ZERO).expect_err("unknown");
        assert!(err.to_string().contains("\"floppy\""), "{err}");
        d.type_ = "mmioblk".into();
        d.container_path.clear();
        let err = apply_devices(&mut spec, &[d], &table, Duration::ZERO).expect_err("no container path");
        assert_eq!(err.code(), protocols::ttrpc::Code::INVALID_ARGUMENT);
    }

    #[test]
    fn a_found_device_that_is_not_a_block_node_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = Devices::with_sysfs(logger(), dir.path().to_path_buf(), true);
        // /dev/null exists everywhere and is a character device.
        table.record(disk("/devices/virtual/mem/block/null", "null", 1, 3));
        let mut d = Device::new();
        d.container_path = "/dev/x".into();
        d.type_ = "mmioblk".into();
        d.vm_path = "/dev/null".into();
        let mut spec = spec_json(r#"{"ociVersion":"1.1.0"}"#);
        let err = apply_devices(&mut spec, &[d], &table, Duration::ZERO).expect_err("char device");
        assert!(matches!(err, DeviceError::NotBlock { .. }), "{err}");
    }
}
