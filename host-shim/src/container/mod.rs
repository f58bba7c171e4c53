//! The sandbox core: a container's life in a booted [`Sandbox`], with nothing of containerd in
//! it, so every front end (the containerd task API, the side API of the `wisp` CLI, a future
//! OCI runtime command line) shares one implementation.
//!
//! Create is decided first, by a pure function ([`plan::plan`]: validation, rootfs choice,
//! disks, the VM the pod needs), then carried out by [`mount_rootfs`] (before the VM boots)
//! and [`create`] (shares, disks, the guest's CreateContainer). Each step that changes the host
//! or the VM is recorded in one [`Rollback`], which undoes exactly those steps, in reverse, if
//! a later one fails. Hot-plug ([`hotplug`]) follows the same rule.
//!
//! | module | holds |
//! |---|---|
//! | [`plan`] | the [`ContainerPlan`] and the guest request's devices and storages (pure) |
//! | [`rollback`] | the one undo path of create and hot-plug |
//! | [`guest`] | the spec and process requests as the guest agent takes them |
//! | [`hotplug`] | a disk plugged into or out of a running container |
//! | `namespaces` | the namespaces a spec keeps in the guest (Kata's rule) |
//! | [`vm`] | the VM a plan needs, booted |

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use protocols::ttrpc::context;
use slog::{warn, Logger};

use crate::error::Error;
use crate::hypervisor::Plugged;
use crate::sandbox::Sandbox;
use crate::volumes;

#[cfg(test)]
mod failure_paths;
pub mod guest;
pub mod hotplug;
#[cfg(test)]
mod kata_conformance;
mod namespaces;
pub mod plan;
pub mod rollback;
pub mod vm;

pub use plan::{ContainerPlan, Rootfs, RootfsMount, UsedVolume};
pub use rollback::Rollback;

/// Bound on ordinary agent calls.
pub const AGENT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What a created container holds in its sandbox, released when it is deleted.
#[derive(Debug, Default)]
pub struct Created {
    /// Disks plugged for it (the VM's device ids), in plug order.
    pub plugged: Vec<String>,
    /// The direct volumes it uses.
    pub volumes: Vec<UsedVolume>,
}

/// Mounts containerd's rootfs at `<bundle>/rootfs` if `plan` says so, before the VM boots.
pub fn mount_planned_rootfs(plan: &ContainerPlan, rollback: &mut Rollback) -> Result<(), Error> {
    if let Rootfs::Mounted { mounts, target } = &plan.rootfs {
        mount_rootfs(mounts, target)?;
        rollback.mounted(target.clone());
    }
    Ok(())
}

/// Creates the planned container in `sandbox`: its rootfs and bind sources shared, its disks
/// plugged (or taken from those attached at boot), then CreateContainer. Every step is
/// recorded in `rollback`; the caller commits it or undoes it.
pub async fn create(
    sandbox: &Arc<Sandbox>,
    plan: &ContainerPlan,
    rollback: &mut Rollback,
    log: &Logger,
) -> Result<Created, Error> {
    let cid = plan.cid.as_str();
    rollback.sharing(sandbox.clone(), cid);
    let share = |what: &str, source: &Path, read_only: bool| {
        sandbox.share(cid, what, source, read_only).map_err(|source| Error::Share {
            cid: cid.to_owned(),
            what: what.to_owned(),
            source: Box::new(source),
        })
    };
    let rootfs_guest = match plan.rootfs.host_dir() {
        Some(dir) => share("rootfs", dir, rootfs_on_host(dir, plan, log)?)?,
        None => volumes::rootfs::guest_mount_point(cid),
    };
    let mut request = guest::create_request(cid, &plan.spec, &plan.bundle, rootfs_guest, share)?;
    let mut created = Created::default();
    for disk in &plan.disks {
        let (plugged, mmio) = plug(sandbox, cid, &disk.id, &disk.attach.source, rollback).await?;
        created.plugged.push(disk.id.clone());
        created.volumes.extend(plan::attach_disk(&mut request, cid, disk, plugged, mmio));
    }
    sandbox
        .agent()
        .agent()
        .create_container(context::with_duration(AGENT_CALL_TIMEOUT), &request)
        .await
        .map_err(|err| Error::agent("CreateContainer", cid, &err))?;
    Ok(created)
}

/// Whether the shared rootfs `dir` is read-only on the host: `root.readonly` makes it so, once
/// the spec's mount points were made in it ([`crate::share::mount_points`]).
fn rootfs_on_host(dir: &Path, plan: &ContainerPlan, log: &Logger) -> Result<bool, Error> {
    let access = crate::share::mount_points::prepare(dir, &plan.spec, &plan.bundle)
        .map_err(|source| Error::MountPoints { cid: plan.cid.clone(), source: Box::new(source) })?;
    if let crate::share::mount_points::RootfsAccess::GuestReadOnly { why } = &access {
        warn!(log, "the rootfs is read-only in the guest only"; "container" => &plan.cid, "why" => why);
    }
    Ok(access.on_host())
}

/// Disk `id` of container `cid`: attached at boot (virtio-mmio: `true`), else hot-plugged now
/// and recorded in `rollback`.
async fn plug(
    sandbox: &Arc<Sandbox>,
    cid: &str,
    id: &str,
    source: &crate::hypervisor::BlockSource,
    rollback: &mut Rollback,
) -> Result<(Plugged, bool), Error> {
    match sandbox.boot_disk(id) {
        Some(plugged) => Ok((plugged, true)),
        None => Ok((hot_plug(sandbox, cid, id, source, rollback).await?, false)),
    }
}

/// Hot-plugs `source` as disk `id` of container `cid` and records it in `rollback`.
async fn hot_plug(
    sandbox: &Arc<Sandbox>,
    cid: &str,
    id: &str,
    source: &crate::hypervisor::BlockSource,
    rollback: &mut Rollback,
) -> Result<Plugged, Error> {
    let plugged = sandbox.hot_plug(id, source).await.map_err(|source| Error::Plug {
        cid: cid.to_owned(),
        device: id.to_owned(),
        source: Box::new(source),
    })?;
    rollback.plugged(sandbox.clone(), id);
    Ok(plugged)
}

/// Mounts containerd's rootfs mounts (a snapshotter's overlay, bind, ...) at `target`.
pub fn mount_rootfs(mounts: &[RootfsMount], target: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(target).map_err(|source| Error::CreateDir { path: target.to_owned(), source })?;
    for (done, m) in mounts.iter().enumerate() {
        let mut flags = MsFlags::empty();
        let mut data = Vec::new();
        for option in &m.options {
            match option.as_str() {
                "ro" => flags |= MsFlags::MS_RDONLY,
                "rw" => {}
                "bind" => flags |= MsFlags::MS_BIND,
                "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
                "nosuid" => flags |= MsFlags::MS_NOSUID,
                "nodev" => flags |= MsFlags::MS_NODEV,
                "noexec" => flags |= MsFlags::MS_NOEXEC,
                other => data.push(other.to_owned()),
            }
        }
        let data = data.join(",");
        let fstype = if m.fstype == "bind" { None } else { Some(m.fstype.as_str()) };
        // A new bind ignores every flag but MS_REC: `ro`, nosuid, nodev and noexec take a
        // remount of the bind (as runc does), or a read-only snapshot would be bound writable.
        let per_mount = flags & (MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
        let mounted =
            mount(Some(m.source.as_str()), target, fstype, flags, (!data.is_empty()).then_some(data.as_str()))
                .and_then(|()| {
                    if !flags.contains(MsFlags::MS_BIND) || per_mount.is_empty() {
                        return Ok(());
                    }
                    let remount = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | per_mount;
                    mount(None::<&str>, target, None::<&str>, remount, None::<&str>).inspect_err(|_| {
                        let _ = umount2(target, MntFlags::MNT_DETACH);
                    })
                });
        if let Err(source) = mounted {
            // The mounts so far stack on `target`: take them all down, leave nothing behind.
            for _ in 0..done {
                let _ = umount2(target, MntFlags::MNT_DETACH);
            }
            return Err(Error::Mount {
                mount_source: m.source.clone(),
                fstype: m.fstype.clone(),
                target: target.to_owned(),
                source,
            });
        }
    }
    Ok(())
}
