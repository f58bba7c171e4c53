//! `features`: the OCI runtime-spec features document, saying what a container run by
//! `wisp-runtime` gets. The container itself is set up by the guest agent's launcher inside
//! the VM (docs/agent-runtime.md), so the lists are the launcher's: the hooks it runs, the
//! mount options it knows (`tmpcopyup` and id-mapped mounts are ignored there, so not listed),
//! every namespace, the capabilities, seccomp without `SCMP_ACT_NOTIFY` (refused). The guest
//! has no LSM: AppArmor and SELinux are reported disabled. systemd is never driven, so its cgroup
//! driver is reported absent: `--systemd-cgroup`'s `slice:prefix:name` is only mapped to the cgroup
//! systemd would make ([`super::cgroup`]).

use oci_spec::runtime::Features;

use super::RuntimeError;

/// The launcher's mount options (agent/src/storage/options.rs: flags and propagation).
const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "loud",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "private",
    "rbind",
    "relatime",
    "remount",
    "ro",
    "rprivate",
    "rshared",
    "rslave",
    "runbindable",
    "rw",
    "shared",
    "silent",
    "slave",
    "strictatime",
    "suid",
    "sync",
    "unbindable",
];

/// Capabilities up to Linux 5.9 (the guest kernel knows them all).
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The features document, typed (so a misspelt field cannot pass).
pub fn features() -> Result<Features, serde_json::Error> {
    serde_json::from_value(serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": oci_spec::runtime::VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": MOUNT_OPTIONS,
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts", "time"],
            "capabilities": CAPABILITIES,
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
            "seccomp": {
                "enabled": true,
                "actions": [
                    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP",
                ],
                "operators": [
                    "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ",
                    "SCMP_CMP_NE",
                ],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32"],
            },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
        },
        "annotations": { "org.wisp.runtime.version": env!("CARGO_PKG_VERSION") },
    }))
}

/// `features`' output (pretty, as runc prints it).
pub fn features_json() -> Result<String, RuntimeError> {
    let json = features().and_then(|f| serde_json::to_string_pretty(&f));
    json.map_err(|source| RuntimeError::Json { what: "cannot build", path: "the features document".into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_has_the_oci_shape_and_says_what_wisp_does_not_do() {
        let out = features_json().unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["ociVersionMin"], "1.0.0");
        assert_eq!(v["ociVersionMax"], oci_spec::runtime::VERSION);
        assert_eq!(v["hooks"].as_array().unwrap().len(), 6);
        let options: Vec<&str> = v["mountOptions"].as_array().unwrap().iter().map(|o| o.as_str().unwrap()).collect();
        assert!(options.contains(&"rbind") && options.contains(&"rprivate") && !options.contains(&"tmpcopyup"));
        let linux = &v["linux"];
        assert_eq!(linux["namespaces"].as_array().unwrap().len(), 8);
        assert_eq!(linux["capabilities"].as_array().unwrap().len(), 41);
        assert_eq!(linux["cgroup"]["systemd"], false);
        assert_eq!(linux["seccomp"]["enabled"], true);
        assert!(!linux["seccomp"]["actions"].as_array().unwrap().iter().any(|a| a == "SCMP_ACT_NOTIFY"));
        assert_eq!((&linux["apparmor"]["enabled"], &linux["selinux"]["enabled"]), (&false.into(), &false.into()));
    }
}
