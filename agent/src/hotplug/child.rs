//! `wisp-agent __hotplug`: a fresh single-threaded process that creates or removes a device
//! node in a running container, and mounts or unmounts it there.
//!
//! Every path the container could steer (the node's directory, the mount point) is resolved
//! from the container's own root (`/proc/PID/root`) with `openat2(RESOLVE_IN_ROOT)`, as the
//! launcher resolves mount destinations, so no symlink or `..` the container planted leads
//! outside it, and the node is made and removed with `*at` calls on the resolved directory.
//! Only then is the container's mount namespace entered (`setns(CLONE_NEWNS)` refuses
//! multi-threaded callers, hence this process) for the mount itself, which names the target
//! by its descriptor and the disk by its guest path, both through the agent's root: nothing
//! of the container's tree is looked up by name once inside.
//!
//! `__hotplug plug PID NODE MAJOR MINOR [SOURCE MOUNT FSTYPE OPTIONS]`
//! `__hotplug unplug PID NODE [MOUNT]` (prints the removed node's `major:minor`)

use std::fs::File;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::Path;

use nix::fcntl::AtFlags;
use nix::mount::{mount, umount2, MntFlags};
use nix::sched::{setns, CloneFlags};
use nix::sys::stat::{fstatat, makedev, mknodat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::launch::resolve::{mkdir_all_in_root, open_in_root, proc_fd_path};
use crate::storage::options::MountOptions;

/// Runs the helper and exits: 0, or 1 with the error on stderr.
pub fn main() -> ! {
    let args: Vec<String> = std::env::args().skip(2).collect();
    match run(&args) {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
}

/// What the helper holds before it enters the container's mount namespace.
struct Opened {
    /// The container's mount namespace.
    ns: File,
    /// The container's root, as its processes see it.
    root: OwnedFd,
    /// The agent's root, to come back to after `setns` (which moves the root to the
    /// namespace's).
    agent_root: OwnedFd,
}

fn run(args: &[String]) -> Result<String, String> {
    let arg = |i: usize, what: &str| args.get(i).cloned().ok_or_else(|| format!("__hotplug: missing {what}"));
    let op = arg(0, "operation")?;
    let pid = arg(1, "pid")?;
    let node = arg(2, "device path")?;
    let ns = format!("/proc/{pid}/ns/mnt");
    let ns = File::open(&ns).map_err(|e| format!("cannot open {ns}: {e}"))?;
    let opened = Opened { ns, root: open_dir(&format!("/proc/{pid}/root"))?, agent_root: open_dir("/")? };
    let node = Path::new(&node);
    match op.as_str() {
        "plug" => {
            let num = |i: usize, what: &str| -> Result<u64, String> {
                arg(i, what)?.parse().map_err(|e| format!("bad {what}: {e}"))
            };
            let dev = makedev(num(3, "major")?, num(4, "minor")?);
            let mounted = match args.get(5) {
                Some(source) => Some(Mount {
                    source,
                    target: args.get(6).ok_or("__hotplug: missing mount point")?,
                    fstype: args.get(7).ok_or("__hotplug: missing fstype")?,
                    options: args.get(8).cloned().unwrap_or_default(),
                }),
                None => None,
            };
            plug(&opened, node, dev, mounted.as_ref()).map(|()| String::new())
        }
        "unplug" => unplug(&opened, node, args.get(3).map(String::as_str)),
        other => Err(format!("__hotplug: unknown operation {other:?}")),
    }
}

/// The mount a plug asks for.
struct Mount<'a> {
    /// The disk, by its path in the agent's (the guest's) tree.
    source: &'a str,
    /// The mount point inside the container.
    target: &'a str,
    fstype: &'a str,
    options: String,
}

fn plug(o: &Opened, node: &Path, dev: libc::dev_t, m: Option<&Mount<'_>>) -> Result<(), String> {
    let (parent, name) = split(node)?;
    let dir = mkdir_all_in_root(o.root.as_fd(), parent, 0o755)
        .map_err(|e| format!("cannot create {} in the container: {e}", parent.display()))?;
    let target = match m {
        Some(m) => Some(
            mkdir_all_in_root(o.root.as_fd(), Path::new(m.target), 0o755)
                .map_err(|e| format!("cannot create {} in the container: {e}", m.target))?,
        ),
        None => None,
    };
    mknodat(&dir, name, SFlag::S_IFBLK, Mode::from_bits_truncate(0o660), dev)
        .map_err(|e| format!("cannot create {} in the container: {e}", node.display()))?;
    let (Some(m), Some(target)) = (m, target) else { return Ok(()) };
    let mounted = enter(o).and_then(|()| {
        let opts = MountOptions::parse(std::slice::from_ref(&m.options));
        let data = opts.data();
        mount(Some(m.source), &proc_fd_path(&target), Some(m.fstype), opts.flags, Some(data.as_str())).map_err(|e| {
            format!("cannot mount {} ({}) at {} in the container: {e}", node.display(), m.fstype, m.target)
        })
    });
    if mounted.is_err() {
        let _ = unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir);
    }
    mounted
}

fn unplug(o: &Opened, node: &Path, mount_point: Option<&str>) -> Result<String, String> {
    let (parent, name) = split(node)?;
    let dir = open_in_root(o.root.as_fd(), parent, libc::O_PATH | libc::O_DIRECTORY, 0)
        .map_err(|e| format!("{} in the container: {e}", parent.display()))?;
    let target = match mount_point {
        Some(mp) => Some(
            open_in_root(o.root.as_fd(), Path::new(mp), libc::O_PATH | libc::O_DIRECTORY, 0)
                .map_err(|e| format!("{mp} in the container: {e}"))?,
        ),
        None => None,
    };
    if let (Some(mp), Some(target)) = (mount_point, target) {
        enter(o)?;
        umount2(&proc_fd_path(&target), MntFlags::MNT_DETACH)
            .map_err(|e| format!("cannot unmount {mp} in the container: {e}"))?;
    }
    let st = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| format!("{} in the container: {e}", node.display()))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFBLK {
        return Err(format!("{} in the container is not a block device", node.display()));
    }
    unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir).map_err(|e| format!("cannot remove {}: {e}", node.display()))?;
    Ok(format!("{}:{}", nix::sys::stat::major(st.st_rdev), nix::sys::stat::minor(st.st_rdev)))
}

/// Enters the container's mount namespace and goes back to the agent's root: mount(2) then
/// acts in the container's namespace on targets named through the agent's `/proc`.
fn enter(o: &Opened) -> Result<(), String> {
    setns(&o.ns, CloneFlags::CLONE_NEWNS).map_err(|e| format!("cannot enter the container's mount namespace: {e}"))?;
    nix::unistd::fchdir(&o.agent_root)
        .and_then(|()| nix::unistd::chroot("."))
        .map_err(|e| format!("cannot return to the agent's root: {e}"))
}

fn open_dir(path: &str) -> Result<OwnedFd, String> {
    nix::fcntl::open(path, nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY, Mode::empty())
        .map_err(|e| format!("cannot open {path}: {e}"))
}

/// A node's directory and name.
fn split(node: &Path) -> Result<(&Path, &std::ffi::OsStr), String> {
    match (node.parent(), node.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(format!("device path {} names no file", node.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn bad_arguments_are_named_before_anything_is_entered() {
        assert_eq!(run(&args(&[])).unwrap_err(), "__hotplug: missing operation");
        assert_eq!(run(&args(&["plug", "1"])).unwrap_err(), "__hotplug: missing device path");
        let err = run(&args(&["plug", "999999999", "/dev/x"])).unwrap_err();
        assert!(err.starts_with("cannot open /proc/999999999/ns/mnt"), "{err}");
    }

    #[test]
    fn a_node_needs_a_name() {
        assert!(split(Path::new("/")).is_err());
        assert_eq!(split(Path::new("/dev/xvdb")).unwrap(), (Path::new("/dev"), std::ffi::OsStr::new("xvdb")));
    }
}
