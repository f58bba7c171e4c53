//! `wisp-agent __hotplug`: a fresh single-threaded process that enters a container's mount
//! namespace (`setns(CLONE_NEWNS)` refuses multi-threaded callers) and creates or removes a
//! device node there, mounting or unmounting it.
//!
//! `__hotplug plug PID NODE MAJOR MINOR [MOUNT FSTYPE OPTIONS]`
//! `__hotplug unplug PID NODE [MOUNT]` (prints the removed node's `major:minor`)

use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags};
use nix::sched::{setns, CloneFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

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

fn run(args: &[String]) -> Result<String, String> {
    let arg = |i: usize, what: &str| args.get(i).cloned().ok_or_else(|| format!("__hotplug: missing {what}"));
    let op = arg(0, "operation")?;
    let pid = arg(1, "pid")?;
    let node = arg(2, "device path")?;
    let ns = format!("/proc/{pid}/ns/mnt");
    let f = File::open(&ns).map_err(|e| format!("cannot open {ns}: {e}"))?;
    setns(&f, CloneFlags::CLONE_NEWNS).map_err(|e| format!("cannot enter the container's mount namespace: {e}"))?;
    match op.as_str() {
        "plug" => {
            let num = |i: usize, what: &str| -> Result<u64, String> {
                arg(i, what)?.parse().map_err(|e| format!("bad {what}: {e}"))
            };
            let (maj, min) = (num(3, "major")?, num(4, "minor")?);
            if let Some(parent) = Path::new(&node).parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            mknod(Path::new(&node), SFlag::S_IFBLK, Mode::from_bits_truncate(0o660), makedev(maj, min))
                .map_err(|e| format!("cannot create {node} in the container: {e}"))?;
            if let Some(target) = args.get(5) {
                let fstype = arg(6, "fstype")?;
                let opts = MountOptions::parse(&[arg(7, "options").unwrap_or_default()]);
                std::fs::create_dir_all(target).map_err(|e| format!("cannot create {target}: {e}"))?;
                let data = opts.data();
                if let Err(e) =
                    mount(Some(node.as_str()), target.as_str(), Some(fstype.as_str()), opts.flags, Some(data.as_str()))
                {
                    let _ = std::fs::remove_file(&node);
                    return Err(format!("cannot mount {node} ({fstype}) at {target} in the container: {e}"));
                }
            }
            Ok(String::new())
        }
        "unplug" => {
            if let Some(target) = args.get(3) {
                umount2(target.as_str(), MntFlags::MNT_DETACH)
                    .map_err(|e| format!("cannot unmount {target} in the container: {e}"))?;
            }
            let meta = std::fs::metadata(&node).map_err(|e| format!("{node} in the container: {e}"))?;
            if !meta.file_type().is_block_device() {
                return Err(format!("{node} in the container is not a block device"));
            }
            use std::os::unix::fs::MetadataExt;
            let rdev = meta.rdev();
            std::fs::remove_file(&node).map_err(|e| format!("cannot remove {node}: {e}"))?;
            Ok(format!("{}:{}", nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev)))
        }
        other => Err(format!("__hotplug: unknown operation {other:?}")),
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
}
