//! Guest devices: which `/dev` node a device the host hot-plugged became.
//!
//! The host names a disk by where it plugged it (a PCI path, an MMIO node
//! name, a SCSI address), the guest kernel by `vdX`/`sdX`, and which one is
//! which is only known once the kernel announces the device. [`Devices`]
//! listens to those announcements (kernel uevents) from the moment it starts
//! and remembers every device it has seen, so a waiter that asks after the
//! device appeared still finds it; devices that existed before the listener
//! are read from sysfs at start. [`apply_devices`] (in `spec.rs`) then rewrites
//! a container spec from the host's device numbers to the guest's.
// The callers (the sandbox's and containers' storages and devices) come with
// CreateSandbox/CreateContainer; until they are merged the binary does not
// reach this module's public API, which the unit and host tests exercise.
#![allow(dead_code, unused_imports)]

mod pci;
mod spec;
mod uevent;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use protocols::ttrpc::Code;

pub use pci::{PciPath, PciPathError};
pub use spec::{apply_devices, GuestDevice};
pub use uevent::Uevent;

/// How often waiters re-read sysfs when the uevent socket could not be opened.
const POLL_WITHOUT_LISTENER: Duration = Duration::from_millis(50);
/// The listener only parses short messages and logs; only the pages it
/// touches count in the agent's RSS, so the margin costs nothing.
const LISTENER_STACK: usize = 128 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("timed out after {timeout:?} waiting for {what}; seen instead: {seen}")]
    Timeout { what: String, timeout: Duration, seen: String },
    #[error(transparent)]
    PciPath(#[from] PciPathError),
    #[error("invalid device: {0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot stat guest device {path}")]
    Stat { path: PathBuf, source: nix::Error },
    #[error("guest device {path} is not a block device")]
    NotBlock { path: PathBuf },
}

impl DeviceError {
    pub fn code(&self) -> Code {
        match self {
            DeviceError::Timeout { .. } => Code::DEADLINE_EXCEEDED,
            DeviceError::PciPath(PciPathError::Parse { .. }) | DeviceError::InvalidArgument(_) => {
                Code::INVALID_ARGUMENT
            }
            DeviceError::PciPath(PciPathError::NoBridge { .. }) => Code::NOT_FOUND,
            DeviceError::PciPath(PciPathError::Buses { .. }) | DeviceError::NotBlock { .. } => {
                Code::FAILED_PRECONDITION
            }
            DeviceError::Unsupported(_) => Code::UNIMPLEMENTED,
            DeviceError::Stat { source, .. } => crate::error::errno_code(*source),
        }
    }
}

/// Every device the kernel announced since [`Devices::start`] (and those
/// sysfs showed then), keyed by devpath; removed devices are forgotten.
#[derive(Debug)]
pub struct Devices {
    log: slog::Logger,
    sys: PathBuf,
    seen: Mutex<HashMap<String, Uevent>>,
    changed: Condvar,
    /// False when the uevent socket could not be opened: waiters poll sysfs.
    listening: bool,
}

impl Devices {
    /// Opens the uevent socket, reads the devices sysfs shows already, and
    /// starts the listener thread. Never fails: without a socket (a sandboxed
    /// test host) waiters fall back to polling sysfs, which is logged.
    pub fn start(log: &slog::Logger) -> Arc<Devices> {
        let log = log.new(slog::o!("module" => "device"));
        // The socket opens before the scan, so a device plugged in between is
        // in one or the other, never in neither.
        let socket = uevent::UeventSocket::open();
        if let Err(e) = &socket {
            slog::error!(log, "cannot open the uevent socket; polling sysfs instead"; "error" => %e);
        }
        let devices = Arc::new(Devices::with_sysfs(log, PathBuf::from("/sys"), socket.is_ok()));
        devices.rescan();
        if let Ok(socket) = socket {
            let weak = Arc::downgrade(&devices);
            let spawned = std::thread::Builder::new()
                .name("wisp-uevent".into())
                .stack_size(LISTENER_STACK)
                .spawn(move || listen(&socket, &weak));
            if let Err(e) = spawned {
                slog::error!(devices.log, "uevent listener not started"; "error" => %e);
            }
        }
        devices
    }

    /// A device table over the sysfs at `sys` with no listener of its own:
    /// events arrive through [`Devices::record`].
    pub(crate) fn with_sysfs(log: slog::Logger, sys: PathBuf, listening: bool) -> Devices {
        Devices { log, sys, seen: Mutex::new(HashMap::new()), changed: Condvar::new(), listening }
    }

    pub fn log(&self) -> &slog::Logger {
        &self.log
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Uevent>> {
        // A waiter that panicked cannot leave the map half-updated: recover it.
        self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes in one uevent and wakes the waiters.
    pub(crate) fn record(&self, ev: Uevent) {
        slog::debug!(self.log, "uevent"; "action" => &ev.action, "devpath" => &ev.devpath, "devname" => &ev.devname);
        let mut seen = self.lock();
        if ev.action == "remove" {
            seen.remove(&ev.devpath);
        } else {
            let entry = seen.entry(ev.devpath.clone()).or_default();
            // `bind`/`change` events may omit what `add` said: keep it.
            merge(entry, ev);
        }
        drop(seen);
        self.changed.notify_all();
    }

    fn rescan(&self) {
        let found = uevent::scan(&self.sys);
        let mut seen = self.lock();
        for (devpath, ev) in found {
            seen.entry(devpath).or_insert(ev);
        }
        drop(seen);
        self.changed.notify_all();
    }

    /// Waits until a device matching `matches` has been seen; `what` names it
    /// in the timeout error, which also lists the block devices seen instead.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Uevent) -> bool,
    ) -> Result<Uevent, DeviceError> {
        let deadline = Instant::now() + timeout;
        let mut seen = self.lock();
        loop {
            if let Some(ev) = seen.values().find(|ev| matches(ev)) {
                return Ok(ev.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(DeviceError::Timeout { what: what.to_owned(), timeout, seen: block_devices(&seen) });
            }
            let slice = if self.listening { deadline - now } else { (deadline - now).min(POLL_WITHOUT_LISTENER) };
            seen = self.changed.wait_timeout(seen, slice).unwrap_or_else(|p| p.into_inner()).0;
            if !self.listening {
                drop(seen);
                self.rescan();
                seen = self.lock();
            }
        }
    }

    /// The `/dev` node of the virtio-blk disk at Kata PCI path `pci_path`
    /// (`02/00`: bridge slot 2 of the root bus, slot 0 behind it).
    pub fn wait_pci(&self, pci_path: &str, timeout: Duration) -> Result<PathBuf, DeviceError> {
        let path: PciPath = pci_path.parse()?;
        let devpath = path.to_devpath(&self.sys)?;
        let what = format!("the virtio-blk disk at PCI path {pci_path} (/sys{devpath}/virtio*/block/*)");
        let ev = self.wait_for(&what, timeout, |ev| is_disk(ev) && pci::is_virtio_disk_of(&devpath, &ev.devpath))?;
        Ok(Path::new("/dev").join(&ev.devname))
    }

    /// Waits for the virtio-mmio disk the host predicted as `vm_path` (`/dev/vdX`).
    pub fn wait_mmio(&self, vm_path: &str, timeout: Duration) -> Result<PathBuf, DeviceError> {
        let name = dev_name(vm_path)?;
        let suffix = format!("/block/{name}");
        self.wait_for(&format!("the virtio-mmio disk {vm_path}"), timeout, |ev| {
            is_disk(ev) && ev.devname == name && ev.devpath.ends_with(&suffix)
        })?;
        Ok(PathBuf::from(vm_path))
    }

    /// The `/dev` node of the SCSI disk at `addr` (`target:lun`, on channel 0
    /// of any host), asking every SCSI host to scan for it first.
    pub fn wait_scsi(&self, addr: &str, timeout: Duration) -> Result<PathBuf, DeviceError> {
        let (target, lun) = parse_scsi_addr(addr)?;
        self.scan_scsi_hosts(target, lun);
        let needle = format!("/0:0:{target}:{lun}/block/");
        let ev = self.wait_for(&format!("the SCSI disk at {addr}"), timeout, |ev| {
            is_disk(ev) && ev.devpath.split_once(&needle).is_some_and(|(_, name)| !name.contains('/'))
        })?;
        Ok(Path::new("/dev").join(&ev.devname))
    }

    /// Hot-plugged SCSI LUNs appear only once a host scans for them.
    fn scan_scsi_hosts(&self, target: u32, lun: u32) {
        let Ok(hosts) = std::fs::read_dir(self.sys.join("class/scsi_host")) else { return };
        for host in hosts.flatten() {
            let scan = host.path().join("scan");
            if let Err(e) = std::fs::write(&scan, format!("0 {target} {lun}")) {
                slog::warn!(self.log, "SCSI scan failed"; "path" => %scan.display(), "error" => %e);
            }
        }
    }
}

/// Reads uevents until the socket fails or the table is gone.
fn listen(socket: &uevent::UeventSocket, devices: &Weak<Devices>) {
    let mut buf = Vec::new();
    loop {
        let ev = socket.next(&mut buf);
        let Some(devices) = devices.upgrade() else { return };
        match ev {
            Ok(ev) => devices.record(ev),
            Err(e) => {
                slog::error!(devices.log, "uevent listener stopped"; "error" => %e);
                return;
            }
        }
    }
}

fn merge(into: &mut Uevent, ev: Uevent) {
    into.action = ev.action;
    into.devpath = ev.devpath;
    into.seqnum = ev.seqnum;
    if !ev.subsystem.is_empty() {
        into.subsystem = ev.subsystem;
    }
    if !ev.devname.is_empty() {
        into.devname = ev.devname;
    }
    into.major = ev.major.or(into.major);
    into.minor = ev.minor.or(into.minor);
}

fn is_disk(ev: &Uevent) -> bool {
    ev.subsystem == "block" && !ev.devname.is_empty()
}

/// `vda (/devices/...), loop0 (...)` or `no block device`, sorted by name.
fn block_devices(seen: &HashMap<String, Uevent>) -> String {
    let mut disks: Vec<_> = seen.values().filter(|ev| is_disk(ev)).map(Uevent::describe).collect();
    if disks.is_empty() {
        return "no block device".into();
    }
    disks.sort();
    disks.join(", ")
}

fn dev_name(vm_path: &str) -> Result<&str, DeviceError> {
    vm_path
        .strip_prefix("/dev/")
        .filter(|name| !name.is_empty() && !name.contains('/'))
        .ok_or_else(|| DeviceError::InvalidArgument(format!("guest path {vm_path:?} is not /dev/NAME")))
}

fn parse_scsi_addr(addr: &str) -> Result<(u32, u32), DeviceError> {
    let bad = || DeviceError::InvalidArgument(format!("SCSI address {addr:?} is not TARGET:LUN"));
    let (target, lun) = addr.split_once(':').ok_or_else(bad)?;
    Ok((target.parse().map_err(|_| bad())?, lun.parse().map_err(|_| bad())?))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn logger() -> slog::Logger {
        slog::Logger::root(slog::Discard, slog::o!())
    }

    pub(crate) fn disk(devpath: &str, name: &str, major: u32, minor: u32) -> Uevent {
        Uevent {
            action: "add".into(),
            devpath: devpath.into(),
            subsystem: "block".into(),
            devname: name.into(),
            major: Some(major),
            minor: Some(minor),
            seqnum: 1,
        }
    }

    fn table(sys: &Path) -> Arc<Devices> {
        Arc::new(Devices::with_sysfs(logger(), sys.to_path_buf(), true))
    }

    #[test]
    fn a_late_waiter_finds_a_device_seen_earlier() {
        let dir = tempfile::tempdir().expect("tempdir");
        let devices = table(dir.path());
        devices.record(disk("/devices/pci0000:00/0000:00:05.0/virtio2/block/vdb", "vdb", 254, 16));
        let got = devices.wait_pci("05", Duration::ZERO).expect("found");
        assert_eq!(got, PathBuf::from("/dev/vdb"));
    }

    #[test]
    fn a_waiter_wakes_when_the_device_arrives() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("devices/pci0000:00/0000:00:02.0/pci_bus/0000:01")).expect("mkdir");
        let devices = table(dir.path());
        let plugger = devices.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            plugger.record(disk("/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio4/block/vdc", "vdc", 254, 32));
        });
        let got = devices.wait_pci("02/00", Duration::from_secs(10)).expect("found");
        t.join().expect("plugger");
        assert_eq!(got, PathBuf::from("/dev/vdc"));
    }

    #[test]
    fn timeout_names_the_device_and_what_was_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let devices = table(dir.path());
        devices.record(disk("/devices/virtual/block/loop0", "loop0", 7, 0));
        let err = devices.wait_pci("03", Duration::from_millis(20)).expect_err("absent");
        assert_eq!(err.code(), Code::DEADLINE_EXCEEDED);
        let msg = err.to_string();
        assert!(msg.contains("PCI path 03") && msg.contains("0000:00:03.0"), "{msg}");
        assert!(msg.contains("loop0 (/devices/virtual/block/loop0)"), "{msg}");
    }

    #[test]
    fn removed_devices_are_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let devices = table(dir.path());
        let path = "/devices/platform/virtio-mmio.0/virtio0/block/vda";
        devices.record(disk(path, "vda", 254, 0));
        assert!(devices.wait_mmio("/dev/vda", Duration::ZERO).is_ok());
        devices.record(Uevent { action: "remove".into(), devpath: path.into(), ..Uevent::default() });
        assert!(devices.wait_mmio("/dev/vda", Duration::ZERO).is_err());
    }

    #[test]
    fn a_change_event_keeps_what_add_said() {
        let dir = tempfile::tempdir().expect("tempdir");
        let devices = table(dir.path());
        let path = "/devices/virtual/block/loop1";
        devices.record(disk(path, "loop1", 7, 1));
        devices.record(Uevent { action: "change".into(), devpath: path.into(), ..Uevent::default() });
        let ev = devices.wait_mmio("/dev/loop1", Duration::ZERO);
        assert_eq!(ev.expect("still known"), PathBuf::from("/dev/loop1"));
    }

    #[test]
    fn mmio_and_scsi_match_their_own_paths_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let devices = table(dir.path());
        devices.record(disk("/devices/platform/virtio-mmio.1/virtio1/block/vdb", "vdb", 254, 16));
        devices.record(disk(
            "/devices/pci0000:00/0000:00:04.0/virtio3/host0/target0:0:1/0:0:1:2/block/sda",
            "sda",
            8,
            0,
        ));
        devices.record(disk("/devices/x/0:0:1:2/block/sda/sda1", "sda1", 8, 1));
        assert_eq!(devices.wait_scsi("1:2", Duration::ZERO).expect("scsi"), PathBuf::from("/dev/sda"));
        assert!(devices.wait_scsi("1:3", Duration::ZERO).is_err());
        assert!(devices.wait_mmio("/dev/vdc", Duration::ZERO).is_err());
        assert!(matches!(devices.wait_mmio("vdb", Duration::ZERO), Err(DeviceError::InvalidArgument(_))));
        assert!(matches!(devices.wait_scsi("x", Duration::ZERO), Err(DeviceError::InvalidArgument(_))));
    }

    #[test]
    fn without_a_listener_waiters_poll_sysfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let devices = Arc::new(Devices::with_sysfs(logger(), dir.path().to_path_buf(), false));
        let sys = dir.path().to_path_buf();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(60));
            uevent::tests::fake_sysfs_disk(
                &sys,
                "devices/platform/virtio-mmio.2/virtio2/block/vdd",
                "MAJOR=254\nMINOR=48",
            );
        });
        let got = devices.wait_mmio("/dev/vdd", Duration::from_secs(10));
        t.join().expect("writer");
        assert_eq!(got.expect("found by polling"), PathBuf::from("/dev/vdd"));
    }
}
