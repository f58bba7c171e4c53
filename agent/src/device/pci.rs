//! Kata's PCI paths (`02/00`): where a hot-plugged device sits, as the host
//! sees the topology, and its translation into a sysfs path in the guest.
//!
//! A PCI path lists one slot (optionally `.function`) per bus from the root
//! bus down: `02/00` is slot 2 of the root bus, which is a bridge, then slot 0
//! of the bus behind it. The host knows slots but not the bus numbers the
//! guest firmware gave each bridge, so the guest reads them from sysfs: the
//! `pci_bus/` directory of a bridge holds one entry named after its
//! secondary bus (`0000:01`).

use std::fmt;
use std::path::Path;

/// The guest's root complex, the one Kata's paths start from.
pub const ROOT_BUS: &str = "pci0000:00";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciPathError {
    #[error("bad PCI path {path:?}: {why} (expected slots like 02/00, each optionally .function)")]
    Parse { path: String, why: &'static str },
    #[error("PCI path {path}: no bridge at {sysfs} (cannot read its pci_bus)")]
    NoBridge { path: String, sysfs: String },
    #[error("PCI path {path}: the bridge at {sysfs} has {count} child buses, expected one")]
    Buses { path: String, sysfs: String, count: usize },
}

/// One hop of a PCI path: a slot (device) and function on one bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotFn {
    pub slot: u8,
    pub function: u8,
}

impl fmt::Display for SlotFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}.{:x}", self.slot, self.function)
    }
}

/// A parsed PCI path, root first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciPath(pub Vec<SlotFn>);

impl fmt::Display for PciPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, hop) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            write!(f, "{:02x}", hop.slot)?;
            if hop.function != 0 {
                write!(f, ".{:x}", hop.function)?;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for PciPath {
    type Err = PciPathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| PciPathError::Parse { path: s.to_owned(), why };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let mut hops = Vec::new();
        for part in s.split('/') {
            let (slot, function) = match part.split_once('.') {
                Some((slot, function)) => (slot, function),
                None => (part, "0"),
            };
            let hex = |t: &str| {
                if t.is_empty() || t.len() > 2 {
                    None
                } else {
                    u8::from_str_radix(t, 16).ok()
                }
            };
            let slot = hex(slot).filter(|s| *s <= 0x1f).ok_or_else(|| bad("slot is not hex 00..1f"))?;
            let function = hex(function).filter(|f| *f <= 7).ok_or_else(|| bad("function is not 0..7"))?;
            hops.push(SlotFn { slot, function });
        }
        if hops.len() > 256 {
            return Err(bad("more than 256 hops"));
        }
        Ok(PciPath(hops))
    }
}

impl PciPath {
    /// The device's sysfs directory relative to `/sys` (for matching uevent
    /// devpaths), reading bridges' bus numbers from the sysfs at `sys`:
    /// `/devices/pci0000:00/0000:00:02.0/0000:01:00.0`.
    pub fn to_devpath(&self, sys: &Path) -> Result<String, PciPathError> {
        let mut devpath = format!("/devices/{ROOT_BUS}");
        let mut bus = "0000:00".to_owned();
        for (i, hop) in self.0.iter().enumerate() {
            devpath.push_str(&format!("/{bus}:{hop}"));
            if i + 1 == self.0.len() {
                break;
            }
            let buses = sys.join(devpath.trim_start_matches('/')).join("pci_bus");
            let sysfs = buses.display().to_string();
            let entries: Vec<_> = std::fs::read_dir(&buses)
                .map_err(|_| PciPathError::NoBridge { path: self.to_string(), sysfs: sysfs.clone() })?
                .flatten()
                .collect();
            match entries.as_slice() {
                [one] => bus = one.file_name().to_string_lossy().into_owned(),
                many => return Err(PciPathError::Buses { path: self.to_string(), sysfs, count: many.len() }),
            }
        }
        Ok(devpath)
    }
}

/// Whether `devpath` is the whole-disk block device of the virtio device at
/// `pci_devpath`: `<pci_devpath>/virtioN/block/<name>`, not a partition.
pub fn is_virtio_disk_of(pci_devpath: &str, devpath: &str) -> bool {
    let Some(rest) = devpath.strip_prefix(pci_devpath).and_then(|r| r.strip_prefix("/virtio")) else {
        return false;
    };
    let Some((index, rest)) = rest.split_once('/') else { return false };
    !index.is_empty()
        && index.bytes().all(|b| b.is_ascii_digit())
        && rest.strip_prefix("block/").is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> PciPath {
        s.parse().expect("valid PCI path")
    }

    #[test]
    fn parses_slots_and_functions() {
        assert_eq!(parse("02").0, vec![SlotFn { slot: 2, function: 0 }]);
        assert_eq!(parse("02/1f.3").0, vec![SlotFn { slot: 2, function: 0 }, SlotFn { slot: 0x1f, function: 3 }]);
        assert_eq!(parse("0a/00").to_string(), "0a/00");
        assert_eq!(parse("0a/01.2").to_string(), "0a/01.2");
    }

    #[test]
    fn rejects_bad_paths() {
        for bad in ["", "/", "02/", "20", "xyz", "02.8", "123", "02/00.", "-1"] {
            assert!(matches!(bad.parse::<PciPath>(), Err(PciPathError::Parse { .. })), "{bad:?} accepted");
        }
    }

    #[test]
    fn root_bus_device_needs_no_sysfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(parse("02").to_devpath(dir.path()), Ok("/devices/pci0000:00/0000:00:02.0".into()));
    }

    #[test]
    fn bridge_bus_number_comes_from_sysfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("devices/pci0000:00/0000:00:02.0/pci_bus/0000:01")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("devices/pci0000:00/0000:00:02.0/0000:01:00.0/pci_bus/0000:05"))
            .expect("mkdir");
        assert_eq!(parse("02/00").to_devpath(dir.path()), Ok("/devices/pci0000:00/0000:00:02.0/0000:01:00.0".into()));
        assert_eq!(
            parse("02/00/03.1").to_devpath(dir.path()),
            Ok("/devices/pci0000:00/0000:00:02.0/0000:01:00.0/0000:05:03.1".into())
        );
    }

    #[test]
    fn missing_or_ambiguous_bridge_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = parse("04/00").to_devpath(dir.path()).expect_err("no bridge");
        assert!(err.to_string().contains("0000:00:04.0/pci_bus"), "{err}");
        std::fs::create_dir_all(dir.path().join("devices/pci0000:00/0000:00:04.0/pci_bus/0000:01")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("devices/pci0000:00/0000:00:04.0/pci_bus/0000:02")).expect("mkdir");
        let err = parse("04/00").to_devpath(dir.path()).expect_err("two buses");
        assert!(matches!(err, PciPathError::Buses { count: 2, .. }), "{err}");
    }

    #[test]
    fn matches_only_the_whole_virtio_disk_below_the_device() {
        let dev = "/devices/pci0000:00/0000:00:02.0/0000:01:00.0";
        assert!(is_virtio_disk_of(dev, &format!("{dev}/virtio3/block/vda")));
        assert!(!is_virtio_disk_of(dev, &format!("{dev}/virtio3/block/vda/vda1")));
        assert!(!is_virtio_disk_of(dev, &format!("{dev}/virtio/block/vda")));
        assert!(!is_virtio_disk_of(dev, &format!("{dev}0/virtio3/block/vda")));
        assert!(!is_virtio_disk_of(dev, &format!("{dev}/virtio3/net/eth0")));
        assert!(!is_virtio_disk_of(dev, "/devices/pci0000:00/0000:00:02.0/virtio3/block/vda"));
    }
}
