//! Kernel uevents: the parser of NETLINK_KOBJECT_UEVENT messages, the socket
//! that receives them, and the sysfs scan that finds devices which appeared
//! before the socket was open.
//!
//! Only the kernel's own multicast group (1) is joined, and a message is
//! accepted only from netlink port 0 (the kernel): a process in the guest can
//! neither forge nor replay a device arrival.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{self, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType};

/// The kernel's uevent multicast group (udevd re-broadcasts on group 2).
const KERNEL_GROUP: u32 = 1;
/// Enough for any uevent: the kernel caps one at 2 KiB of environment.
const RECV_BUF: usize = 8192;

/// One device as the kernel described it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    /// Sysfs path below `/sys`, e.g. `/devices/pci0000:00/0000:00:02.0/virtio1/block/vda`.
    pub devpath: String,
    pub subsystem: String,
    /// Name below `/dev` (`vda`, `loop0`), empty for devices without a node.
    pub devname: String,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub seqnum: u64,
}

impl Uevent {
    /// Parses one netlink message: `action@devpath\0KEY=VALUE\0...`. Returns
    /// None for anything else (libudev's re-broadcasts, truncated garbage).
    pub fn parse(msg: &[u8]) -> Option<Uevent> {
        let mut fields = msg.split(|b| *b == 0).filter(|f| !f.is_empty());
        let header = std::str::from_utf8(fields.next()?).ok()?;
        let (action, path) = header.split_once('@')?;
        let mut ev = Uevent::from_env(fields.filter_map(|f| std::str::from_utf8(f).ok()));
        if ev.action.is_empty() {
            ev.action = action.to_owned();
        }
        if ev.devpath.is_empty() {
            ev.devpath = path.to_owned();
        }
        (!ev.devpath.is_empty()).then_some(ev)
    }

    /// Builds an event from `KEY=VALUE` lines (a netlink message's body or a
    /// sysfs `uevent` file).
    pub fn from_env<'a>(lines: impl Iterator<Item = &'a str>) -> Uevent {
        let mut ev = Uevent::default();
        for line in lines {
            let Some((key, value)) = line.split_once('=') else { continue };
            match key {
                "ACTION" => ev.action = value.to_owned(),
                "DEVPATH" => ev.devpath = value.to_owned(),
                "SUBSYSTEM" => ev.subsystem = value.to_owned(),
                "DEVNAME" => ev.devname = value.to_owned(),
                "MAJOR" => ev.major = value.parse().ok(),
                "MINOR" => ev.minor = value.parse().ok(),
                "SEQNUM" => ev.seqnum = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        ev
    }

    /// `vda (/devices/.../block/vda)`, for error messages.
    pub fn describe(&self) -> String {
        if self.devname.is_empty() {
            self.devpath.clone()
        } else {
            format!("{} ({})", self.devname, self.devpath)
        }
    }
}

/// The kernel's uevent socket, bound to its multicast group.
#[derive(Debug)]
pub struct UeventSocket {
    fd: OwnedFd,
}

impl UeventSocket {
    pub fn open() -> nix::Result<UeventSocket> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        )?;
        // Port 0 lets the kernel pick a unique one; several listeners may coexist.
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP))?;
        // Bursts of hot-plug events must not overflow the default 200 KiB.
        let _ = socket::setsockopt(&fd, socket::sockopt::RcvBuf, &(1 << 20));
        Ok(UeventSocket { fd })
    }

    /// Blocks until the next kernel uevent. Messages not from the kernel and
    /// messages that do not parse are skipped.
    pub fn next(&self, buf: &mut Vec<u8>) -> nix::Result<Uevent> {
        buf.resize(RECV_BUF, 0);
        loop {
            let (len, from) = match socket::recvfrom::<NetlinkAddr>(self.fd.as_raw_fd(), buf) {
                Ok(r) => r,
                // The receive buffer overflowed: events were lost, the socket still works.
                Err(nix::Error::ENOBUFS) | Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e),
            };
            if from.map(|a| a.pid()) != Some(0) {
                continue;
            }
            if let Some(ev) = Uevent::parse(&buf[..len]) {
                return Ok(ev);
            }
        }
    }
}

/// Devices that exist already: every entry of the sysfs classes and buses
/// below `sys` (normally `/sys`) that have a `uevent` file, keyed by devpath.
pub fn scan(sys: &Path) -> HashMap<String, Uevent> {
    let mut found = HashMap::new();
    for dir in ["class/block", "bus/pci/devices", "bus/scsi/devices", "bus/virtio/devices"] {
        let Ok(entries) = std::fs::read_dir(sys.join(dir)) else { continue };
        for entry in entries.flatten() {
            if let Some(ev) = read_sysfs_device(sys, &entry.path()) {
                found.insert(ev.devpath.clone(), ev);
            }
        }
    }
    found
}

/// The event a device's `uevent` file describes, as if it had just been added.
fn read_sysfs_device(sys: &Path, link: &Path) -> Option<Uevent> {
    let real = std::fs::canonicalize(link).ok()?;
    let sys = std::fs::canonicalize(sys).ok()?;
    let devpath = format!("/{}", real.strip_prefix(&sys).ok()?.to_str()?);
    let text = std::fs::read_to_string(real.join("uevent")).ok()?;
    let mut ev = Uevent::from_env(text.lines());
    ev.action = "add".into();
    ev.devpath = devpath;
    if ev.subsystem.is_empty() {
        let subsystem = std::fs::read_link(real.join("subsystem")).ok()?;
        ev.subsystem = subsystem.file_name()?.to_str()?.to_owned();
    }
    Some(ev)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const ADD_VDA: &[u8] = b"add@/devices/pci0000:00/0000:00:02.0/virtio1/block/vda\0ACTION=add\0\
DEVPATH=/devices/pci0000:00/0000:00:02.0/virtio1/block/vda\0SUBSYSTEM=block\0MAJOR=254\0MINOR=0\0\
DEVNAME=vda\0DEVTYPE=disk\0SEQNUM=1234\0";

    #[test]
    fn parses_a_kernel_block_event() {
        let ev = Uevent::parse(ADD_VDA).expect("parses");
        assert_eq!(ev.action, "add");
        assert_eq!(ev.devpath, "/devices/pci0000:00/0000:00:02.0/virtio1/block/vda");
        assert_eq!(ev.subsystem, "block");
        assert_eq!(ev.devname, "vda");
        assert_eq!((ev.major, ev.minor), (Some(254), Some(0)));
        assert_eq!(ev.seqnum, 1234);
    }

    #[test]
    fn header_fills_in_a_missing_body() {
        let ev = Uevent::parse(b"remove@/devices/virtual/block/loop3\0SUBSYSTEM=block\0").expect("parses");
        assert_eq!(ev.action, "remove");
        assert_eq!(ev.devpath, "/devices/virtual/block/loop3");
        assert_eq!(ev.major, None);
    }

    #[test]
    fn rejects_libudev_and_garbage() {
        assert_eq!(Uevent::parse(b"libudev\0\xfe\xed\xca\xfe"), None);
        assert_eq!(Uevent::parse(b""), None);
        assert_eq!(Uevent::parse(b"\xff\xff@x"), None);
        assert_eq!(Uevent::parse(b"add@\0"), None);
    }

    #[test]
    fn bad_numbers_are_absent_not_zero() {
        let ev = Uevent::parse(b"add@/d\0MAJOR=x\0MINOR=-1\0SEQNUM=?\0").expect("parses");
        assert_eq!((ev.major, ev.minor, ev.seqnum), (None, None, 0));
    }

    /// A block device as sysfs shows it: its directory with a `uevent` file
    /// (`DEVNAME` added from the last path element), a `subsystem` link, and
    /// its entry in `class/block`.
    pub(crate) fn fake_sysfs_disk(sys: &Path, devpath: &str, uevent: &str) {
        let dev = sys.join(devpath);
        let name = dev.file_name().and_then(|n| n.to_str()).expect("a device name").to_owned();
        std::fs::create_dir_all(&dev).expect("mkdir");
        std::fs::write(dev.join("uevent"), format!("{uevent}\nDEVNAME={name}\n")).expect("write");
        std::fs::create_dir_all(sys.join("class/block")).expect("mkdir");
        std::os::unix::fs::symlink(sys.join("class/block"), dev.join("subsystem")).expect("link");
        std::os::unix::fs::symlink(&dev, sys.join("class/block").join(name)).expect("link");
    }

    #[test]
    fn scan_reads_uevent_files_through_class_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sys = dir.path();
        fake_sysfs_disk(sys, "devices/pci0000:00/0000:00:03.0/virtio2/block/vdb", "MAJOR=254\nMINOR=16\nDEVTYPE=disk");

        let found = scan(sys);
        let ev = &found["/devices/pci0000:00/0000:00:03.0/virtio2/block/vdb"];
        assert_eq!(ev.devname, "vdb");
        assert_eq!(ev.subsystem, "block");
        assert_eq!((ev.major, ev.minor), (Some(254), Some(16)));
        assert_eq!(ev.action, "add");
    }
}
