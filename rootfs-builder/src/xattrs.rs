//! Extended attributes of layer entries (file capabilities, SELinux labels), applied as
//! containerd's applier does: each PAX `SCHILY.xattr.NAME` record becomes `lsetxattr(NAME)` on
//! the entry's path, after the chown (which clears `security.capability`) and before the
//! chmod. As in containerd, a file system without support for an attribute (`ENOTSUP`), or a
//! `user.*` attribute on what is neither a file nor a directory (`EPERM`), skips it; any other
//! failure fails the build. `LIBARCHIVE.xattr.*` records (base64 values) are not applied,
//! as containerd ignores them too.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::XattrFlags;

const SCHILY: &[u8] = b"SCHILY.xattr.";
const LIBARCHIVE: &[u8] = b"LIBARCHIVE.xattr.";

/// The extended attributes one layer entry carries.
#[derive(Debug, Default)]
pub struct EntryXattrs {
    /// (name, value) of each `SCHILY.xattr.*` record, in tar order.
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether the entry also has records in a form not applied (`LIBARCHIVE.xattr.*`).
    pub unapplied: bool,
}

impl EntryXattrs {
    /// Whether the entry carries any extended attribute.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && !self.unapplied
    }
}

/// The extended attributes in `entry`'s PAX header (none when it has no PAX header).
pub fn of_entry<R: Read>(entry: &mut tar::Entry<'_, R>) -> EntryXattrs {
    let mut found = EntryXattrs::default();
    let Ok(Some(pax)) = entry.pax_extensions() else { return found };
    for record in pax.flatten() {
        let key = record.key_bytes();
        if let Some(name) = key.strip_prefix(SCHILY).filter(|n| !n.is_empty()) {
            found.records.push((name.to_owned(), record.value_bytes().to_owned()));
        } else if key.starts_with(LIBARCHIVE) {
            found.unapplied = true;
        }
    }
    found
}

/// Sets `xattrs` on `path` without following a symlink; returns whether some were skipped
/// (unsupported here, see the module docs).
pub fn apply(path: &Path, xattrs: &EntryXattrs) -> io::Result<bool> {
    let mut skipped = xattrs.unapplied;
    for (name, value) in &xattrs.records {
        match rustix::fs::lsetxattr(path, OsStr::from_bytes(name), value, XattrFlags::empty()) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOTSUP) => skipped = true,
            Err(rustix::io::Errno::PERM)
                if name.starts_with(b"user.")
                    && std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) =>
            {
                skipped = true
            }
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("cannot set the extended attribute {}: {e}", String::from_utf8_lossy(name)),
                ))
            }
        }
    }
    Ok(skipped)
}
