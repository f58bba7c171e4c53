//! Mount options as the OCI spec writes them (`ro,nosuid,rbind,rprivate,mode=755`)
//! turned into mount(2) flags, propagation changes and the filesystem's data
//! string, following runc's table.

use nix::mount::MsFlags;

/// A parsed option list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountOptions {
    /// Flags for the mount itself (MS_BIND, MS_REC, MS_RDONLY, ...).
    pub flags: MsFlags,
    /// Propagation changes applied after the mount, in order.
    pub propagation: Vec<MsFlags>,
    /// Filesystem-specific options, comma-joined for mount(2)'s data.
    pub data: String,
    /// Options the runtime knows but does not implement (logged).
    pub ignored: Vec<String>,
}

impl MountOptions {
    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }
}

/// Parses `options` for a mount of type `typ` (type `bind` implies MS_BIND).
pub(crate) fn parse(typ: &str, options: &[String]) -> MountOptions {
    let mut out =
        MountOptions { flags: MsFlags::empty(), propagation: Vec::new(), data: String::new(), ignored: Vec::new() };
    if typ == "bind" {
        out.flags |= MsFlags::MS_BIND;
    }
    let mut data: Vec<&str> = Vec::new();
    for opt in options {
        let opt = opt.as_str();
        if let Some((set, flag)) = flag_of(opt) {
            if set {
                out.flags |= flag;
            } else {
                out.flags &= !flag;
            }
        } else if let Some(p) = propagation_of(opt) {
            out.propagation.push(p);
        } else if matches!(opt, "tmpcopyup" | "idmap" | "ridmap") {
            out.ignored.push(opt.to_string());
        } else if !opt.is_empty() {
            data.push(opt);
        }
    }
    out.data = data.join(",");
    out
}

/// `(set, flag)`: whether the option sets or clears `flag` (`defaults` changes nothing).
fn flag_of(opt: &str) -> Option<(bool, MsFlags)> {
    if opt == "defaults" {
        return Some((true, MsFlags::empty()));
    }
    crate::storage::options::flag(opt)
}

pub(crate) use crate::storage::options::propagation as propagation_of;

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &str) -> Vec<String> {
        s.split(',').map(str::to_string).collect()
    }

    #[test]
    fn flags_propagation_and_data_are_separated() {
        let o = parse("none", &opts("ro,nosuid,rbind,rprivate,mode=755,size=64k"));
        assert_eq!(o.flags, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(o.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        assert_eq!(o.data, "mode=755,size=64k");
        assert!(o.is_bind());
    }

    #[test]
    fn later_options_override_earlier_ones() {
        let o = parse("tmpfs", &opts("ro,rw,noexec,exec,nodev"));
        assert_eq!(o.flags, MsFlags::MS_NODEV);
    }

    #[test]
    fn bind_type_implies_a_bind_and_devpts_data_passes_through() {
        assert!(parse("bind", &[]).is_bind());
        assert!(!parse("tmpfs", &[]).is_bind());
        let o = parse("devpts", &opts("nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5"));
        assert_eq!(o.data, "newinstance,ptmxmode=0666,mode=0620,gid=5");
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
    }

    #[test]
    fn unimplemented_options_are_reported_not_passed_to_the_kernel() {
        let o = parse("tmpfs", &opts("tmpcopyup,slave"));
        assert_eq!(o.ignored, vec!["tmpcopyup"]);
        assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE]);
        assert_eq!(o.data, "");
    }
}
