//! Who the container process is and what it may do: the user (resolved in
//! the container's /etc/passwd and /etc/group like runc), rlimits, and the
//! capability sets. The pure parts compute; [`apply_user_and_caps`] switches
//! identity in runc's order: bounding set, keep-caps across setuid, then the
//! other sets and ambient.

use std::collections::HashSet;
use std::str::FromStr as _;

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{LinuxCapabilities, PosixRlimitType, User};

use super::error::WireError;

/// One line of /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One line of /etc/group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Parses /etc/passwd; malformed lines are skipped, as libc does.
pub(crate) fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f.get(5).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// Parses /etc/group; malformed lines are skipped.
pub(crate) fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            let members = f.get(3).map(|m| m.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect());
            Some(GroupEntry { name: f[0].to_string(), gid: f[2].parse().ok()?, members: members.unwrap_or_default() })
        })
        .collect()
}

/// The identity the process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The home directory from /etc/passwd, for HOME when the env lacks it.
    pub home: String,
}

/// Resolves the spec's user against the container's passwd and group files.
///
/// `user.username` (Kata's `User.username`) wins over uid/gid when set; it is
/// `user`, `user:group`, `uid` or `uid:gid`, names looked up in the files.
/// Supplementary groups are `additionalGids` plus the groups of /etc/group
/// that list the user, as runc does.
pub(crate) fn resolve_user(
    user: &User,
    passwd: &[PasswdEntry],
    group: &[GroupEntry],
) -> Result<ResolvedUser, WireError> {
    let mut uid = user.uid();
    let mut gid = user.gid();
    let entry;
    if let Some(spec) = user.username().as_deref().filter(|s| !s.is_empty()) {
        let (u, g) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        match passwd.iter().find(|p| p.name == u) {
            Some(p) => {
                uid = p.uid;
                gid = p.gid;
                entry = Some(p);
            }
            None => {
                uid = u.parse().map_err(|_| WireError::not_found(format!("user {u:?} not found in /etc/passwd")))?;
                entry = passwd.iter().find(|p| p.uid == uid);
                gid = entry.map_or(0, |p| p.gid);
            }
        }
        if let Some(g) = g {
            gid = match group.iter().find(|e| e.name == g) {
                Some(e) => e.gid,
                None => g.parse().map_err(|_| WireError::not_found(format!("group {g:?} not found in /etc/group")))?,
            };
        }
    } else {
        entry = passwd.iter().find(|p| p.uid == uid);
    }
    let mut groups: Vec<u32> = user.additional_gids().clone().unwrap_or_default();
    if let Some(p) = entry {
        for g in group.iter().filter(|g| g.members.contains(&p.name)) {
            if !groups.contains(&g.gid) {
                groups.push(g.gid);
            }
        }
    }
    let home = entry.map_or_else(|| "/".to_string(), |p| p.home.clone());
    Ok(ResolvedUser { uid, gid, groups, home })
}

/// The setrlimit(2) resource of an OCI rlimit type.
pub(crate) fn rlimit_resource(typ: PosixRlimitType) -> Option<i32> {
    use PosixRlimitType as T;
    Some(match typ {
        T::RlimitCpu => libc::RLIMIT_CPU as i32,
        T::RlimitFsize => libc::RLIMIT_FSIZE as i32,
        T::RlimitData => libc::RLIMIT_DATA as i32,
        T::RlimitStack => libc::RLIMIT_STACK as i32,
        T::RlimitCore => libc::RLIMIT_CORE as i32,
        T::RlimitRss => libc::RLIMIT_RSS as i32,
        T::RlimitNproc => libc::RLIMIT_NPROC as i32,
        T::RlimitNofile => libc::RLIMIT_NOFILE as i32,
        T::RlimitMemlock => libc::RLIMIT_MEMLOCK as i32,
        T::RlimitAs => libc::RLIMIT_AS as i32,
        T::RlimitLocks => libc::RLIMIT_LOCKS as i32,
        T::RlimitSigpending => libc::RLIMIT_SIGPENDING as i32,
        T::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE as i32,
        T::RlimitNice => libc::RLIMIT_NICE as i32,
        T::RlimitRtprio => libc::RLIMIT_RTPRIO as i32,
        T::RlimitRttime => libc::RLIMIT_RTTIME as i32,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

/// Applies the process's rlimits.
pub(crate) fn apply_rlimits(process: &oci_spec::runtime::Process) -> Result<(), WireError> {
    for r in process.rlimits().iter().flatten() {
        let res =
            rlimit_resource(r.typ()).ok_or_else(|| WireError::invalid(format!("unknown rlimit {:?}", r.typ())))?;
        let lim = libc::rlimit { rlim_cur: r.soft(), rlim_max: r.hard() };
        // SAFETY: `lim` is a valid rlimit for the duration of the call.
        #[allow(clippy::useless_conversion)]
        let rc = unsafe { libc::setrlimit(res as _, &lim) };
        if rc != 0 {
            return Err(WireError::sys(format!("setrlimit {:?}", r.typ()), std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The ioprio_set(2) value of `process.ioPriority`: class in bits 13-15.
pub(crate) fn io_priority(p: &oci_spec::runtime::LinuxIOPriority) -> Result<i32, WireError> {
    use oci_spec::runtime::IOPriorityClass as C;
    let class = match p.class() {
        C::IoprioClassRt => 1,
        C::IoprioClassBe => 2,
        C::IoprioClassIdle => 3,
    };
    if !(0..=7).contains(&p.priority()) {
        return Err(WireError::invalid(format!("ioPriority.priority {} is not in 0..=7", p.priority())));
    }
    Ok((class << 13) | p.priority() as i32)
}

/// Applies `process.ioPriority` to the calling process.
pub(crate) fn apply_io_priority(process: &oci_spec::runtime::Process) -> Result<(), WireError> {
    let Some(p) = process.io_priority() else { return Ok(()) };
    let value = io_priority(p)?;
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    // SAFETY: ioprio_set takes plain integers and touches no memory.
    let rc =
        unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0 as libc::c_long, value as libc::c_long) };
    if rc != 0 {
        return Err(WireError::sys(format!("ioprio_set {value:#x}"), std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The five capability sets the process ends with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct CapSets {
    pub bounding: CapsHashSet,
    pub effective: CapsHashSet,
    pub permitted: CapsHashSet,
    pub inheritable: CapsHashSet,
    pub ambient: CapsHashSet,
}

/// Computes the capability sets; names this build does not know are
/// returned in the second element (runc logs and skips them).
pub(crate) fn cap_sets(spec: &LinuxCapabilities) -> (CapSets, Vec<String>) {
    let mut unknown = Vec::new();
    let mut conv = |set: &Option<oci_spec::runtime::Capabilities>| -> CapsHashSet {
        let mut out = HashSet::new();
        for c in set.iter().flatten() {
            let name = format!("CAP_{c}");
            match Capability::from_str(&name) {
                Ok(cap) => {
                    out.insert(cap);
                }
                Err(_) => {
                    if !unknown.contains(&name) {
                        unknown.push(name);
                    }
                }
            }
        }
        out
    };
    let sets = CapSets {
        bounding: conv(spec.bounding()),
        effective: conv(spec.effective()),
        permitted: conv(spec.permitted()),
        inheritable: conv(spec.inheritable()),
        ambient: conv(spec.ambient()),
    };
    (sets, unknown)
}

/// Drops the bounding set, switches to `user` keeping capabilities across
/// the uid change, then sets the permitted, inheritable, effective and
/// ambient sets. Without `caps`, capabilities are left as the kernel's
/// setuid rules make them. Returns warnings for the log.
pub(crate) fn apply_user_and_caps(user: &ResolvedUser, caps: Option<&CapSets>) -> Result<Vec<String>, WireError> {
    let mut warnings = Vec::new();
    let cap_err = |what: &str, e: caps::errors::CapsError| WireError::setup(format!("capabilities: {what}: {e}"));
    if let Some(c) = caps {
        for cap in caps::all() {
            if !c.bounding.contains(&cap) {
                // EINVAL: the running kernel does not know this capability.
                if let Err(e) = caps::drop(None, CapSet::Bounding, cap) {
                    if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                        return Err(cap_err(&format!("drop {cap} from the bounding set"), e));
                    }
                }
            }
        }
        set_keepcaps(true)?;
    }
    let groups: Vec<nix::unistd::Gid> = user.groups.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups).map_err(|e| WireError::sys(format!("setgroups {:?}", user.groups), e))?;
    let gid = nix::unistd::Gid::from_raw(user.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| WireError::sys(format!("setresgid {}", user.gid), e))?;
    let uid = nix::unistd::Uid::from_raw(user.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| WireError::sys(format!("setresuid {}", user.uid), e))?;
    if let Some(c) = caps {
        set_keepcaps(false)?;
        // Effective first: it must stay a subset of permitted at every step.
        caps::set(None, CapSet::Effective, &c.effective).map_err(|e| cap_err("set effective", e))?;
        caps::set(None, CapSet::Permitted, &c.permitted).map_err(|e| cap_err("set permitted", e))?;
        caps::set(None, CapSet::Inheritable, &c.inheritable).map_err(|e| cap_err("set inheritable", e))?;
        caps::clear(None, CapSet::Ambient).map_err(|e| cap_err("clear ambient", e))?;
        for cap in &c.ambient {
            // The kernel refuses an ambient capability that is not also
            // permitted and inheritable; runc warns and goes on.
            if let Err(e) = caps::raise(None, CapSet::Ambient, *cap) {
                warnings.push(format!("cannot raise ambient {cap}: {e}"));
            }
        }
    }
    Ok(warnings)
}

fn set_keepcaps(on: bool) -> Result<(), WireError> {
    // SAFETY: PR_SET_KEEPCAPS takes a plain integer and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, libc::c_ulong::from(on), 0, 0, 0) };
    if rc != 0 {
        return Err(WireError::sys("prctl(PR_SET_KEEPCAPS)", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Sets PR_SET_NO_NEW_PRIVS.
pub(crate) fn set_no_new_privs() -> Result<(), WireError> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(WireError::sys("prctl(PR_SET_NO_NEW_PRIVS)", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCapabilitiesBuilder, UserBuilder};

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nwheel:x:10:alice,bob\nalice:x:1000:\nvideo:x:44:bob\naudio:x:29:alice\nbad:x:nan:\n";

    #[test]
    fn files_parse_and_skip_garbage() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.len(), 2);
        assert_eq!(p[1], PasswdEntry { name: "alice".into(), uid: 1000, gid: 1000, home: "/home/alice".into() });
        let g = parse_group(GROUP);
        assert_eq!(g.len(), 5);
        assert_eq!(g[1].members, vec!["alice", "bob"]);
    }

    fn resolve(user: User) -> Result<ResolvedUser, WireError> {
        resolve_user(&user, &parse_passwd(PASSWD), &parse_group(GROUP))
    }

    #[test]
    fn a_username_is_looked_up_with_its_groups() {
        let u = UserBuilder::default().username("alice").additional_gids(vec![5u32]).build().unwrap();
        let r = resolve(u).unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (1000, 1000, "/home/alice"));
        assert_eq!(r.groups, vec![5, 10, 29]);
    }

    #[test]
    fn user_group_forms_and_numeric_ids() {
        let r = resolve(UserBuilder::default().username("alice:video").build().unwrap()).unwrap();
        assert_eq!((r.uid, r.gid), (1000, 44));
        let r = resolve(UserBuilder::default().username("4242:7").build().unwrap()).unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (4242, 7, "/"));
        let r = resolve(UserBuilder::default().uid(1000u32).gid(1000u32).build().unwrap()).unwrap();
        assert_eq!(r.groups, vec![10, 29], "a numeric uid in passwd still gets its groups");
        let e = resolve(UserBuilder::default().username("mallory").build().unwrap()).unwrap_err();
        assert!(e.msg.contains("mallory"), "{e}");
        let e = resolve(UserBuilder::default().username("alice:nogroup").build().unwrap()).unwrap_err();
        assert!(e.msg.contains("nogroup"), "{e}");
    }

    #[test]
    fn rlimit_names_map_to_resources() {
        assert_eq!(rlimit_resource(PosixRlimitType::RlimitNofile), Some(libc::RLIMIT_NOFILE as i32));
        assert_eq!(rlimit_resource(PosixRlimitType::RlimitCore), Some(libc::RLIMIT_CORE as i32));
        let t: PosixRlimitType = serde_json::from_str("\"RLIMIT_NPROC\"").unwrap();
        assert_eq!(rlimit_resource(t), Some(libc::RLIMIT_NPROC as i32));
    }

    #[test]
    fn io_priority_packs_class_and_level() {
        let p: oci_spec::runtime::LinuxIOPriority =
            serde_json::from_str(r#"{"class":"IOPRIO_CLASS_IDLE","priority":4}"#).unwrap();
        assert_eq!(io_priority(&p).unwrap(), (3 << 13) | 4);
        let p: oci_spec::runtime::LinuxIOPriority =
            serde_json::from_str(r#"{"class":"IOPRIO_CLASS_RT","priority":9}"#).unwrap();
        assert!(io_priority(&p).unwrap_err().msg.contains("priority 9"));
    }

    #[test]
    fn capability_sets_are_computed_per_set() {
        use oci_spec::runtime::Capability as C;
        let spec = LinuxCapabilitiesBuilder::default()
            .bounding([C::Chown, C::NetBindService, C::Kill].into_iter().collect::<HashSet<_>>())
            .effective([C::Chown].into_iter().collect::<HashSet<_>>())
            .permitted([C::Chown, C::Kill].into_iter().collect::<HashSet<_>>())
            .inheritable(HashSet::new())
            .ambient(HashSet::new())
            .build()
            .unwrap();
        let (sets, unknown) = cap_sets(&spec);
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!(
            sets.bounding,
            [Capability::CAP_CHOWN, Capability::CAP_NET_BIND_SERVICE, Capability::CAP_KILL].into()
        );
        assert_eq!(sets.effective, [Capability::CAP_CHOWN].into());
        assert_eq!(sets.permitted, [Capability::CAP_CHOWN, Capability::CAP_KILL].into());
        assert!(sets.inheritable.is_empty() && sets.ambient.is_empty());
    }
}
