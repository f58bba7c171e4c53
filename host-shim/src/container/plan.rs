//! What creating a container takes, decided before anything is mounted, booted or plugged:
//! the id checked, the rootfs chosen (a disk, containerd's mounts, or the bundle's directory),
//! the disks resolved and numbered, the VM the pod needs. [`plan`] only reads; bad input fails
//! here and leaves nothing behind. [`attach_disk`] then writes one plugged disk into the
//! guest's CreateContainer request, also without side effects.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use protocols::agent as pb;

use crate::config::Config;
use crate::error::Error;
use crate::hypervisor::{BlockSource, Plugged};
use crate::pod::PodSpec;
use crate::volumes::{self, Attach, Use};

/// One of containerd's rootfs mounts (a snapshotter's overlay, a bind, a block device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    /// The mount type (`overlay`, `bind`, `ext4`, ...).
    pub fstype: String,
    /// Its source.
    pub source: String,
    /// Its options.
    pub options: Vec<String>,
}

/// Where the container's root comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rootfs {
    /// A block device, plugged as the first of [`ContainerPlan::disks`] and mounted by the
    /// agent: never mounted on the host.
    Disk,
    /// containerd's mounts, mounted at `target` (`<bundle>/rootfs`) on the host, then shared.
    Mounted {
        /// The mounts, stacked in order.
        mounts: Vec<RootfsMount>,
        /// Where.
        target: PathBuf,
    },
    /// A directory on the host already (the spec's `root.path`), shared as it is.
    Directory(PathBuf),
}

impl Rootfs {
    /// The host directory shared as the container's root, if the rootfs is not a disk.
    pub fn host_dir(&self) -> Option<&Path> {
        match self {
            Self::Disk => None,
            Self::Mounted { target, .. } => Some(target),
            Self::Directory(dir) => Some(dir),
        }
    }
}

/// A disk of the container, numbered for the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The VM's device id (`wisp-blkN`).
    pub id: String,
    /// What backs it and what the container does with it.
    pub attach: Attach,
}

/// A direct volume a container uses, as the side API finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedVolume {
    /// The volume path (its key in the direct-volume root).
    pub volume: String,
    /// Where the guest mounted it.
    pub guest_path: String,
    /// The VM's device id.
    pub device: String,
}

/// Everything [`crate::container::create`] does, decided.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    /// The container id.
    pub cid: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The bundle's config.json.
    pub spec: Spec,
    /// The container's root.
    pub rootfs: Rootfs,
    /// Its disks, in plug order.
    pub disks: Vec<Disk>,
    /// What the pod asks of the VM, if this container boots it.
    pub pod: PodSpec,
    /// Whether the VM needs shared memory (a vhost-user disk).
    pub shared_memory: bool,
    /// Disks attached at boot, for a VM that cannot hot-plug and is booted by this container.
    pub boot_disks: Vec<(String, BlockSource)>,
}

/// Refuses an id outside the alphabet both ends accept.
pub fn check_id(cid: &str) -> Result<(), Error> {
    match protocols::id::invalid(cid) {
        Some(why) => Err(Error::InvalidId { id: cid.to_owned(), why }),
        None => Ok(()),
    }
}

/// The bundle's config.json.
pub fn load_spec(bundle: &Path) -> Result<Spec, Error> {
    let path = bundle.join("config.json");
    Spec::load(&path).map_err(|source| Error::Spec { path, source })
}

/// The plan for container `cid` of `bundle` with `spec` and containerd's `rootfs` mounts;
/// `next_id` numbers the disks.
pub fn plan(
    cid: &str,
    bundle: &Path,
    spec: Spec,
    rootfs: &[RootfsMount],
    config: &Config,
    mut next_id: impl FnMut() -> String,
) -> Result<ContainerPlan, Error> {
    check_id(cid)?;
    let mut attaches = volumes::plan(&spec, config).map_err(|source| Error::Volumes { cid: cid.to_owned(), source })?;
    // A rootfs that is one block device (devmapper) is plugged, never mounted on the host.
    let block = match rootfs {
        [m] if config.block_rootfs() => volumes::rootfs::from_mount(&m.fstype, &m.source, &m.options),
        _ => None,
    };
    let rootfs = match (block, rootfs, spec.root()) {
        (Some(disk), _, _) => {
            let usage = Use::Rootfs { fstype: disk.fstype, options: disk.options };
            attaches.insert(0, Attach { source: disk.source, usage });
            Rootfs::Disk
        }
        (None, [_, ..], _) => Rootfs::Mounted { mounts: rootfs.to_vec(), target: bundle.join("rootfs") },
        (None, [], Some(root)) if root.path().is_absolute() => Rootfs::Directory(root.path().clone()),
        (None, [], Some(root)) => Rootfs::Directory(bundle.join(root.path())),
        (None, [], None) => return Err(Error::NoRoot(bundle.join("config.json"))),
    };
    let disks: Vec<Disk> = attaches.into_iter().map(|attach| Disk { id: next_id(), attach }).collect();
    let boot_disks = if config.disks_at_boot() {
        disks.iter().map(|d| (d.id.clone(), d.attach.source.clone())).collect()
    } else {
        Vec::new()
    };
    Ok(ContainerPlan {
        cid: cid.to_owned(),
        bundle: bundle.to_owned(),
        pod: PodSpec::of(&spec),
        shared_memory: disks.iter().any(|d| matches!(d.attach.source, BlockSource::VhostUser { .. })),
        spec,
        rootfs,
        disks,
        boot_disks,
    })
}

/// Writes plugged `disk` into `request` (a Kata `Device` or `Storage`, and a volume's mount
/// made a bind of it); `mmio` when it was attached at boot (microvm's virtio-mmio). Returns the
/// direct volume it serves, if any.
pub fn attach_disk(
    request: &mut pb::CreateContainerRequest,
    cid: &str,
    disk: &Disk,
    plugged: Plugged,
    mmio: bool,
) -> Option<UsedVolume> {
    let pb::CreateContainerRequest { OCI: pb_spec, devices, storages, .. } = request;
    let blk = if mmio { "mmioblk" } else { "blk" };
    match &disk.attach.usage {
        Use::Device { container_path } if mmio => devices.push(pb::Device {
            type_: blk.to_owned(),
            vm_path: plugged.pci_path,
            container_path: container_path.clone(),
            ..Default::default()
        }),
        Use::Device { container_path } => devices.push(pb::Device {
            id: plugged.pci_path,
            type_: blk.to_owned(),
            container_path: container_path.clone(),
            ..Default::default()
        }),
        Use::Volume { mount_index, volume, info } => {
            let mount_point = volumes::guest_mount_point(cid, *mount_index);
            let driver = if matches!(disk.attach.source, BlockSource::Vfio { .. }) { "vfio-pci" } else { blk };
            storages.push(pb::Storage {
                driver: driver.to_owned(),
                source: plugged.pci_path,
                fstype: info.fstype.clone(),
                options: info.options.clone(),
                mount_point: mount_point.clone(),
                ..Default::default()
            });
            if let Some(m) = pb_spec.mut_or_insert_default().Mounts.get_mut(*mount_index) {
                m.type_ = "bind".to_owned();
                m.source = mount_point.clone();
                if !m.options.iter().any(|o| o == "bind" || o == "rbind") {
                    m.options.push("rbind".to_owned());
                }
            }
            return Some(UsedVolume { volume: volume.clone(), guest_path: mount_point, device: disk.id.clone() });
        }
        Use::Rootfs { fstype, options } => storages.push(pb::Storage {
            driver: blk.to_owned(),
            source: plugged.pci_path,
            fstype: fstype.clone(),
            options: options.clone(),
            mount_point: volumes::rootfs::guest_mount_point(cid),
            ..Default::default()
        }),
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::MachineType;
    use crate::volumes::direct;

    /// A bundle whose config.json has `root` (JSON or `null`) and `mounts`.
    fn bundle(root: &str, mounts: &str) -> (tempfile::TempDir, Spec) {
        let dir = tempfile::tempdir().unwrap();
        let json = format!(
            r#"{{"ociVersion": "1.0.2", "root": {root}, "mounts": {mounts},
                "process": {{"args": ["sh"], "cwd": "/", "user": {{"uid": 0, "gid": 0}}}}}}"#
        );
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        let spec = load_spec(dir.path()).unwrap();
        (dir, spec)
    }

    /// Disk ids as the task service numbers them.
    pub(crate) fn numbered() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("wisp-blk{n}")
        }
    }

    fn overlay() -> RootfsMount {
        RootfsMount { fstype: "overlay".into(), source: "overlay".into(), options: vec!["lowerdir=/l".into()] }
    }

    /// A config whose direct-volume root holds one `directvol` volume `/vol/a` backed by a file.
    fn with_volume(dir: &Path) -> Config {
        let mut config = Config::default();
        config.runtime.direct_volumes_dir = dir.join("direct");
        let image = dir.join("disk.img");
        std::fs::write(&image, [0u8; 512]).unwrap();
        let volume_dir = direct::volume_dir(&config.runtime.direct_volumes_dir, "/vol/a").unwrap();
        std::fs::create_dir_all(&volume_dir).unwrap();
        let info = format!(r#"{{"volume-type": "directvol", "device": "{}", "fstype": "ext4"}}"#, image.display());
        std::fs::write(volume_dir.join(direct::MOUNT_INFO), info).unwrap();
        config
    }

    #[test]
    fn a_bad_id_is_refused_before_anything_is_read() {
        let err = plan("../x", Path::new("/nowhere"), Spec::default(), &[], &Config::default(), numbered());
        assert!(matches!(err, Err(Error::InvalidId { .. })), "{err:?}");
    }

    #[test]
    fn containerds_mounts_are_mounted_in_the_bundle() {
        let (dir, spec) = bundle(r#"{"path": "rootfs"}"#, "[]");
        let plan = plan("c1", dir.path(), spec, &[overlay()], &Config::default(), numbered()).unwrap();
        assert_eq!(plan.rootfs, Rootfs::Mounted { mounts: vec![overlay()], target: dir.path().join("rootfs") });
        assert_eq!(plan.rootfs.host_dir(), Some(dir.path().join("rootfs").as_path()));
        assert!(plan.disks.is_empty() && plan.boot_disks.is_empty() && !plan.shared_memory);
    }

    #[test]
    fn without_mounts_the_spec_root_is_shared_as_it_is() {
        let (dir, spec) = bundle(r#"{"path": "rootfs"}"#, "[]");
        let relative = plan("c1", dir.path(), spec, &[], &Config::default(), numbered()).unwrap();
        assert_eq!(relative.rootfs, Rootfs::Directory(dir.path().join("rootfs")));
        let (dir, spec) = bundle(r#"{"path": "/srv/root"}"#, "[]");
        let absolute = plan("c1", dir.path(), spec, &[], &Config::default(), numbered()).unwrap();
        assert_eq!(absolute.rootfs, Rootfs::Directory("/srv/root".into()));
        let (dir, spec) = bundle("null", "[]");
        let none = plan("c1", dir.path(), spec, &[], &Config::default(), numbered());
        assert!(matches!(none, Err(Error::NoRoot(ref p)) if p == &dir.path().join("config.json")), "{none:?}");
    }

    #[test]
    fn a_direct_volume_becomes_a_numbered_disk_attached_at_boot_only_on_microvm() {
        let (dir, spec) =
            bundle(r#"{"path": "rootfs"}"#, r#"[{"destination": "/data", "type": "directvol", "source": "/vol/a"}]"#);
        let mut config = with_volume(dir.path());
        let planned = plan("c1", dir.path(), spec.clone(), &[], &config, numbered()).unwrap();
        assert_eq!(planned.disks.len(), 1);
        assert_eq!(planned.disks[0].id, "wisp-blk1");
        assert!(matches!(planned.disks[0].attach.usage, Use::Volume { mount_index: 0, .. }));
        assert!(planned.boot_disks.is_empty(), "q35 hot-plugs");
        config.qemu_mut().unwrap().machine_type = MachineType::Microvm;
        let planned = plan("c1", dir.path(), spec, &[], &config, numbered()).unwrap();
        assert_eq!(planned.boot_disks, [("wisp-blk1".to_owned(), planned.disks[0].attach.source.clone())]);
    }

    #[test]
    fn a_missing_volume_fails_the_plan() {
        let (dir, spec) =
            bundle(r#"{"path": "rootfs"}"#, r#"[{"destination": "/data", "type": "directvol", "source": "/vol/b"}]"#);
        let config = with_volume(dir.path());
        let err = plan("c1", dir.path(), spec, &[], &config, numbered());
        assert!(matches!(err, Err(Error::Volumes { .. })), "{err:?}");
    }

    #[test]
    fn a_plugged_volume_becomes_a_storage_and_its_mount_a_bind_of_it() {
        let (dir, spec) =
            bundle(r#"{"path": "rootfs"}"#, r#"[{"destination": "/data", "type": "directvol", "source": "/vol/a"}]"#);
        let config = with_volume(dir.path());
        let planned = plan("c1", dir.path(), spec, &[], &config, numbered()).unwrap();
        let mut request = pb::CreateContainerRequest::default();
        request.OCI.mut_or_insert_default().Mounts.push(protocols::oci::Mount {
            destination: "/data".into(),
            type_: "directvol".into(),
            source: "/vol/a".into(),
            ..Default::default()
        });
        let plugged = Plugged { id: "wisp-blk1".into(), pci_path: "02/00".into() };
        let used = attach_disk(&mut request, "c1", &planned.disks[0], plugged, false).unwrap();
        let mount_point = volumes::guest_mount_point("c1", 0);
        assert_eq!(
            used,
            UsedVolume { volume: "/vol/a".into(), guest_path: mount_point.clone(), device: "wisp-blk1".into() }
        );
        assert_eq!(request.storages.len(), 1);
        assert_eq!((request.storages[0].driver.as_str(), request.storages[0].source.as_str()), ("blk", "02/00"));
        assert_eq!(request.storages[0].fstype, "ext4");
        let mount = &request.OCI.Mounts[0];
        assert_eq!((mount.type_.as_str(), mount.source.as_str()), ("bind", mount_point.as_str()));
        assert_eq!(mount.options, ["rbind"]);
    }

    #[test]
    fn devices_and_a_rootfs_disk_reach_the_guest_by_bus() {
        let device = Disk {
            id: "wisp-blk1".into(),
            attach: Attach {
                source: BlockSource::VhostUser { socket: "/s".into() },
                usage: Use::Device { container_path: "/dev/vda".into() },
            },
        };
        let mut request = pb::CreateContainerRequest::default();
        let on_pci = Plugged { id: "wisp-blk1".into(), pci_path: "02/00".into() };
        assert_eq!(attach_disk(&mut request, "c1", &device, on_pci, false), None);
        let on_mmio = Plugged { id: "wisp-blk1".into(), pci_path: "/dev/vdb".into() };
        attach_disk(&mut request, "c1", &device, on_mmio, true);
        assert_eq!((request.devices[0].type_.as_str(), request.devices[0].id.as_str()), ("blk", "02/00"));
        assert_eq!((request.devices[1].type_.as_str(), request.devices[1].vm_path.as_str()), ("mmioblk", "/dev/vdb"));
        let root = Disk {
            id: "wisp-blk2".into(),
            attach: Attach {
                source: BlockSource::File { path: "/dev/dm-1".into(), read_only: true },
                usage: Use::Rootfs { fstype: "ext4".into(), options: vec!["ro".into()] },
            },
        };
        attach_disk(&mut request, "c1", &root, Plugged { id: "wisp-blk2".into(), pci_path: "03/00".into() }, false);
        assert_eq!(request.storages[0].mount_point, volumes::rootfs::guest_mount_point("c1"));
        assert_eq!(request.storages[0].options, ["ro"]);
    }
}
