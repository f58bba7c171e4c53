//! Mount options as `mount(8)` writes them (`ro,nosuid,size=64m`), split into
//! the flags `mount(2)` takes and the data string the file system parses.
//!
//! The option tables ([`flag`], [`propagation`]) are the agent's one copy:
//! the launcher's OCI mount parser reads them too.

use nix::mount::MsFlags;

/// What `mount(2)` needs from an option list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Propagation (`private`, `rshared`, ...): a separate `mount(2)` call.
    pub propagation: MsFlags,
    /// Everything else, for the file system, in order.
    pub data: Vec<String>,
}

impl MountOptions {
    /// Parses options; an element may itself hold a comma-separated list.
    pub fn parse<S: AsRef<str>>(options: &[S]) -> MountOptions {
        let mut out = MountOptions { flags: MsFlags::empty(), propagation: MsFlags::empty(), data: Vec::new() };
        for opt in options.iter().flat_map(|o| o.as_ref().split(',')).map(str::trim).filter(|o| !o.is_empty()) {
            if let Some((set, flag)) = flag(opt) {
                out.flags.set(flag, set);
            } else if let Some(p) = propagation(opt) {
                out.propagation = p;
            } else if opt != "defaults" {
                out.data.push(opt.to_owned());
            }
        }
        out
    }

    /// The data string for `mount(2)`.
    pub fn data(&self) -> String {
        self.data.join(",")
    }

    /// The value of `key=value` in the data options, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.data.iter().find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
    }

    /// Removes `key` / `key=value` from the data options and returns its value.
    pub fn take(&mut self, key: &str) -> Option<String> {
        let i = self.data.iter().position(|o| o == key || o.strip_prefix(key).is_some_and(|r| r.starts_with('=')))?;
        let opt = self.data.remove(i);
        Some(opt.split_once('=').map(|(_, v)| v.to_owned()).unwrap_or_default())
    }

    /// Adds `key=value` unless the caller gave `key` already.
    pub fn set_default(&mut self, key: &str, value: &str) {
        if self.get(key).is_none() && !self.data.iter().any(|o| o == key) {
            self.data.push(format!("{key}={value}"));
        }
    }
}

/// `(true, flag)` sets the flag, `(false, flag)` clears it.
pub(crate) fn flag(opt: &str) -> Option<(bool, MsFlags)> {
    Some(match opt {
        "ro" => (true, MsFlags::MS_RDONLY),
        "rw" => (false, MsFlags::MS_RDONLY),
        "nosuid" => (true, MsFlags::MS_NOSUID),
        "suid" => (false, MsFlags::MS_NOSUID),
        "nodev" => (true, MsFlags::MS_NODEV),
        "dev" => (false, MsFlags::MS_NODEV),
        "noexec" => (true, MsFlags::MS_NOEXEC),
        "exec" => (false, MsFlags::MS_NOEXEC),
        "sync" => (true, MsFlags::MS_SYNCHRONOUS),
        "async" => (false, MsFlags::MS_SYNCHRONOUS),
        "dirsync" => (true, MsFlags::MS_DIRSYNC),
        "remount" => (true, MsFlags::MS_REMOUNT),
        "mand" => (true, MsFlags::MS_MANDLOCK),
        "nomand" => (false, MsFlags::MS_MANDLOCK),
        "noatime" => (true, MsFlags::MS_NOATIME),
        "atime" => (false, MsFlags::MS_NOATIME),
        "nodiratime" => (true, MsFlags::MS_NODIRATIME),
        "diratime" => (false, MsFlags::MS_NODIRATIME),
        "relatime" => (true, MsFlags::MS_RELATIME),
        "norelatime" => (false, MsFlags::MS_RELATIME),
        "strictatime" => (true, MsFlags::MS_STRICTATIME),
        "nostrictatime" => (false, MsFlags::MS_STRICTATIME),
        "bind" => (true, MsFlags::MS_BIND),
        "rbind" => (true, MsFlags::MS_BIND | MsFlags::MS_REC),
        "silent" => (true, MsFlags::MS_SILENT),
        "loud" => (false, MsFlags::MS_SILENT),
        _ => return None,
    })
}

/// A propagation option (`rprivate`, `slave`, ...) as mount(2) flags.
pub(crate) fn propagation(opt: &str) -> Option<MsFlags> {
    let rec = MsFlags::MS_REC;
    Some(match opt {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | rec,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | rec,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | rec,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | rec,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_flags_from_data_and_later_options_win() {
        let o = MountOptions::parse(&["ro,nosuid", "nodev", "size=64m", "rw", "mode=0755", "defaults", ""]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
        assert_eq!(o.data(), "size=64m,mode=0755");
        assert_eq!(o.propagation, MsFlags::empty());
    }

    #[test]
    fn bind_and_propagation() {
        let o = MountOptions::parse(&["rbind", "ro", "rprivate"]);
        assert_eq!(o.flags, MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY);
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert!(o.data.is_empty());
    }

    #[test]
    fn get_take_and_default() {
        let mut o = MountOptions::parse(&["trans=virtio", "mode=0777", "cache=mmap", "dax"]);
        assert_eq!(o.get("mode"), Some("0777"));
        assert_eq!(o.get("mod"), None);
        assert_eq!(o.take("mode").as_deref(), Some("0777"));
        assert_eq!(o.take("dax").as_deref(), Some(""));
        o.set_default("trans", "fd");
        o.set_default("msize", "8192");
        assert_eq!(o.data(), "trans=virtio,cache=mmap,msize=8192");
    }
}
