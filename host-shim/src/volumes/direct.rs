//! Kata's direct volumes: a disk handed to the sandbox as is, described by `mountInfo.json`.
//!
//! Layout (kata-ctl's): `<root>/<base64 URL-safe, padded, of the volume path>/mountInfo.json`
//! with the keys `volume-type`, `device`, `fstype`, `metadata`, `options`. Kata's own docs
//! write `volume_type` and `fs_type`, so both spellings are read; the canonical one is
//! written. The root is `$WISP_DIRECT_VOLUMES_DIR`, else `[runtime] direct_volumes_dir`
//! (default `/run/kata-containers/shared/direct-volumes`).
//!
//! A sandbox that uses a volume writes a file named after its sandbox id next to
//! `mountInfo.json` (as Kata's runtime does), so `stats` and `resize` find the shim to ask.
//!
//! Types: `directvol` (a raw file or host block device, plugged as virtio-blk), `spdkvol` (a
//! vhost-user-blk socket, `device` a bare path or `spdk:///path.sock`), `vfiovol` (a host PCI
//! function: `45:00.1`, `0000:45:00.1` or `/dev/vfio/N`).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::hypervisor::BlockSource;

/// The environment variable naming the root.
pub use crate::env::DIRECT_VOLUMES_ENV as ROOT_ENV;
/// The file in each volume's directory.
pub const MOUNT_INFO: &str = "mountInfo.json";
/// The mount types `ctr run --mount type=...` uses for direct volumes.
pub const VOLUME_TYPES: [&str; 3] = ["directvol", "spdkvol", "vfiovol"];

/// What can go wrong with a direct volume.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// The volume path is not absolute or climbs with `..`.
    #[error("volume path {0:?} must be absolute and must not contain `..`")]
    BadPath(String),
    /// No mountInfo.json.
    #[error("volume {volume}: no {file} (add it with `wisp direct-volume add`)")]
    NotFound {
        /// The volume path.
        volume: String,
        /// The file looked for.
        file: PathBuf,
    },
    /// mountInfo.json is not what Kata writes.
    #[error("volume {volume}: {file} is not a valid mountInfo: {why}")]
    BadJson {
        /// The volume path.
        volume: String,
        /// The file (or `--mount-info` argument).
        file: PathBuf,
        /// serde's message.
        why: String,
    },
    /// An unknown `volume-type`.
    #[error("volume {volume}: unknown volume-type {kind:?} (expected directvol, spdkvol or vfiovol)")]
    UnknownType {
        /// The volume path.
        volume: String,
        /// What was given.
        kind: String,
    },
    /// The device does not exist or is not what the type needs.
    #[error("volume {volume}: {why}")]
    BadDevice {
        /// The volume path.
        volume: String,
        /// Why.
        why: String,
    },
    /// Host filesystem work failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Kata's `mountInfo.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountInfo {
    /// `directvol`, `spdkvol` or `vfiovol`.
    #[serde(rename = "volume-type", alias = "volume_type")]
    pub volume_type: String,
    /// The file, device, socket or PCI address.
    pub device: String,
    /// The guest filesystem type.
    #[serde(alias = "fs_type", alias = "fs-type", default)]
    pub fstype: String,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Guest mount options.
    #[serde(default)]
    pub options: Vec<String>,
}

/// The root directory for `config`.
pub fn root(config: &Config) -> PathBuf {
    crate::env::path(ROOT_ENV).unwrap_or_else(|| config.runtime.direct_volumes_dir.clone())
}

/// Base64 with the URL-safe alphabet and `=` padding (Go's `base64.URLEncoding`).
pub fn encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The inverse of [`encode`]; `None` for anything else: padding only in the last group and
/// at most `==`, no bits set past the last byte (so a directory listing never finds one
/// volume under two names, or a volume under a name kata-ctl would not write).
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    };
    if text.len() % 4 != 0 {
        return None;
    }
    let groups = text.len() / 4;
    let mut out = Vec::new();
    for (i, chunk) in text.as_bytes().chunks(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != groups) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | u32::from(value(c)?);
        }
        n <<= 6 * pad;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let (data, rest) = bytes.split_at(3 - pad);
        if rest.iter().any(|&b| b != 0) {
            return None;
        }
        out.extend_from_slice(data);
    }
    Some(out)
}

/// Checks that `volume` is absolute and free of `..`.
pub fn check_path(volume: &str) -> Result<(), DirectError> {
    let path = Path::new(volume);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(DirectError::BadPath(volume.to_owned()));
    }
    Ok(())
}

/// The directory of `volume` under `root`.
pub fn volume_dir(root: &Path, volume: &str) -> Result<PathBuf, DirectError> {
    check_path(volume)?;
    Ok(root.join(encode(volume.as_bytes())))
}

/// Parses and checks mountInfo JSON for `volume` (`file` names it in errors).
pub fn parse(volume: &str, text: &[u8], file: &Path) -> Result<MountInfo, DirectError> {
    let info: MountInfo = serde_json::from_slice(text).map_err(|err| DirectError::BadJson {
        volume: volume.to_owned(),
        file: file.to_owned(),
        why: err.to_string(),
    })?;
    if !VOLUME_TYPES.contains(&info.volume_type.as_str()) {
        return Err(DirectError::UnknownType { volume: volume.to_owned(), kind: info.volume_type });
    }
    Ok(info)
}

/// Reads the mountInfo of `volume`.
pub fn read(root: &Path, volume: &str) -> Result<MountInfo, DirectError> {
    let file = volume_dir(root, volume)?.join(MOUNT_INFO);
    let text = match std::fs::read(&file) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(DirectError::NotFound { volume: volume.to_owned(), file })
        }
        Err(source) => return Err(DirectError::Io { what: "cannot read", path: file, source }),
    };
    parse(volume, &text, &file)
}

/// Writes `info` for `volume` (canonical keys); the directory is removed again on failure.
pub fn add(root: &Path, volume: &str, info: &MountInfo) -> Result<PathBuf, DirectError> {
    let dir = volume_dir(root, volume)?;
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| DirectError::Io { what, path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
    let file = dir.join(MOUNT_INFO);
    let text = serde_json::to_vec(info).unwrap_or_default();
    if let Err(err) = std::fs::write(&file, text).map_err(io("cannot write", &file)) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(err);
    }
    Ok(file)
}

/// Removes `volume`'s directory.
pub fn remove(root: &Path, volume: &str) -> Result<(), DirectError> {
    let dir = volume_dir(root, volume)?;
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            Err(DirectError::NotFound { volume: volume.to_owned(), file: dir.join(MOUNT_INFO) })
        }
        Err(source) => Err(DirectError::Io { what: "cannot remove", path: dir, source }),
    }
}

/// Every volume under `root`: its path and its mountInfo (or why it cannot be read).
pub fn list(root: &Path) -> Vec<(String, Result<MountInfo, DirectError>)> {
    let mut out: Vec<_> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let volume = String::from_utf8(decode(name.to_str()?)?).ok()?;
            let info = read(root, &volume);
            Some((volume, info))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Records that sandbox `sandbox` uses `volume` (a file named after it in the volume's dir).
pub fn record_sandbox(root: &Path, volume: &str, sandbox: &str) -> Result<(), DirectError> {
    let file = volume_dir(root, volume)?.join(sandbox);
    std::fs::write(&file, b"").map_err(|source| DirectError::Io { what: "cannot write", path: file, source })
}

/// Forgets that sandbox `sandbox` uses `volume`.
pub fn forget_sandbox(root: &Path, volume: &str, sandbox: &str) {
    if let Ok(dir) = volume_dir(root, volume) {
        let _ = std::fs::remove_file(dir.join(sandbox));
    }
}

/// The sandboxes recorded as using `volume`.
pub fn sandboxes(root: &Path, volume: &str) -> Result<Vec<String>, DirectError> {
    let dir = volume_dir(root, volume)?;
    Ok(std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name != MOUNT_INFO)
        .collect())
}

/// A PCI address as VFIO wants it (`0000:45:00.1`), from `45:00.1`, `0000:45:00.1` or
/// `/dev/vfio/N` (the one device of IOMMU group N, read from sysfs under `sys`).
pub fn vfio_host(device: &str, sys: &Path) -> Result<String, String> {
    if let Some(group) = device.strip_prefix("/dev/vfio/") {
        let dir = sys.join("kernel/iommu_groups").join(group).join("devices");
        let mut devices: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|err| format!("{device}: cannot read {}: {err}", dir.display()))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        devices.sort();
        return match devices.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(format!("{device}: IOMMU group {group} has no device")),
            many => Err(format!("{device}: IOMMU group {group} has {} devices; name one by its address", many.len())),
        };
    }
    let full = if device.matches(':').count() == 1 { format!("0000:{device}") } else { device.to_owned() };
    let valid = full.len() == 12
        && full.char_indices().all(|(i, c)| match i {
            4 | 7 => c == ':',
            10 => c == '.',
            11 => ('0'..='7').contains(&c),
            _ => c.is_ascii_hexdigit(),
        });
    if valid {
        Ok(full.to_ascii_lowercase())
    } else {
        Err(format!("{device:?} is not a PCI address (45:00.1, 0000:45:00.1) or /dev/vfio/N"))
    }
}

/// What to plug for `info`, checking that the device is there.
pub fn source(volume: &str, info: &MountInfo) -> Result<BlockSource, DirectError> {
    let bad = |why: String| DirectError::BadDevice { volume: volume.to_owned(), why };
    match info.volume_type.as_str() {
        "directvol" => {
            let path = PathBuf::from(&info.device);
            let meta = std::fs::metadata(&path).map_err(|err| bad(format!("device {}: {err}", info.device)))?;
            use std::os::unix::fs::FileTypeExt;
            if !(meta.is_file() || meta.file_type().is_block_device()) {
                return Err(bad(format!("device {} is neither a file nor a block device", info.device)));
            }
            let read_only = info.options.iter().any(|o| o == "ro");
            Ok(BlockSource::File { path, read_only })
        }
        "spdkvol" => {
            let socket = PathBuf::from(info.device.strip_prefix("spdk://").unwrap_or(&info.device));
            use std::os::unix::fs::FileTypeExt;
            if !std::fs::metadata(&socket).is_ok_and(|m| m.file_type().is_socket()) {
                return Err(bad(format!("device {}: no vhost-user socket at {}", info.device, socket.display())));
            }
            Ok(BlockSource::VhostUser { socket })
        }
        "vfiovol" => Ok(BlockSource::Vfio { host: vfio_host(&info.device, Path::new("/sys")).map_err(bad)? }),
        other => Err(DirectError::UnknownType { volume: volume.to_owned(), kind: other.to_owned() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_url_safe_and_padded_like_kata() {
        // Go: base64.URLEncoding.EncodeToString([]byte("/kubelet/kata-test-vol-001/volume001"))
        assert_eq!(encode(b"/kubelet/kata-test-vol-001/volume001"), "L2t1YmVsZXQva2F0YS10ZXN0LXZvbC0wMDEvdm9sdW1lMDAx");
        assert_eq!(encode(b"/a"), "L2E=");
        assert_eq!(encode(b"/ab"), "L2Fi");
        assert_eq!(encode(b"/?>"), "Lz8-");
        assert_eq!(encode(b"\xff\xff"), "__8=");
        for text in ["/a", "/ab", "/abc", "/x/y/z?>~", ""] {
            assert_eq!(decode(&encode(text.as_bytes())).unwrap(), text.as_bytes(), "{text}");
        }
        assert_eq!(decode("L2E"), None);
        assert_eq!(decode("L2E+"), None, "standard alphabet is not URL-safe");
    }

    #[test]
    fn only_what_encode_writes_decodes() {
        // Caught by the direct_volume fuzz target's property (fuzz/regressions/direct_volume/):
        // each of these decoded to bytes whose encoding is another name.
        for text in ["====", "A===", "AA==AAAA", "L2E=L2E=", "L2F=", "AB=="] {
            assert_eq!(decode(text), None, "{text}");
        }
        for bytes in [&b""[..], b"\0", b"/a", b"/ab", b"\xff\xfe\xfd\xfc"] {
            let name = encode(bytes);
            assert_eq!(decode(&name).as_deref(), Some(bytes), "{name}");
        }
    }

    #[test]
    fn both_spellings_read_canonical_written() {
        let kata_docs =
            br#"{"volume_type":"directvol","device":"/dev/sdb","fs_type":"ext4","metadata":{},"options":[]}"#;
        let canonical = br#"{"volume-type":"spdkvol","device":"spdk:///s.sock","fstype":"xfs","metadata":{"a":"b"},"options":["rw"]}"#;
        let a = parse("/v", kata_docs, Path::new("x")).unwrap();
        assert_eq!((a.volume_type.as_str(), a.fstype.as_str()), ("directvol", "ext4"));
        let b = parse("/v", canonical, Path::new("x")).unwrap();
        assert_eq!(b.metadata.get("a").map(String::as_str), Some("b"));
        let written = serde_json::to_value(&a).unwrap();
        assert_eq!(written["volume-type"], "directvol");
        assert_eq!(written["fstype"], "ext4");
        assert!(written.get("volume_type").is_none() && written.get("fs_type").is_none());
    }

    #[test]
    fn bad_input_is_named() {
        let err = parse("/v", b"not json", Path::new("/r/x/mountInfo.json")).unwrap_err().to_string();
        assert!(err.contains("/r/x/mountInfo.json is not a valid mountInfo"), "{err}");
        let err = parse("/v", br#"{"device":"/d"}"#, Path::new("f")).unwrap_err().to_string();
        assert!(err.contains("missing field `volume-type`"), "{err}");
        let err = parse("/v", br#"{"volume-type":"nfsvol","device":"/d"}"#, Path::new("f")).unwrap_err();
        assert!(err.to_string().contains("unknown volume-type \"nfsvol\""), "{err}");
        for bad in ["relative/vol", "/a/../etc", "/.."] {
            assert!(matches!(volume_dir(Path::new("/r"), bad), Err(DirectError::BadPath(_))), "{bad}");
        }
    }

    #[test]
    fn add_read_list_record_remove() {
        let root = tempfile::tempdir().unwrap();
        let info = MountInfo {
            volume_type: "directvol".into(),
            device: "/img/a.raw".into(),
            fstype: "ext4".into(),
            metadata: BTreeMap::new(),
            options: vec!["rw".into()],
        };
        let file = add(root.path(), "/k/vol1", &info).unwrap();
        assert_eq!(file, root.path().join("L2svdm9sMQ==/mountInfo.json"));
        assert_eq!(read(root.path(), "/k/vol1").unwrap(), info);
        record_sandbox(root.path(), "/k/vol1", "sb1").unwrap();
        assert_eq!(sandboxes(root.path(), "/k/vol1").unwrap(), ["sb1"]);
        std::fs::create_dir(root.path().join("not-base64!")).unwrap();
        let listed = list(root.path());
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, "/k/vol1");
        forget_sandbox(root.path(), "/k/vol1", "sb1");
        assert!(sandboxes(root.path(), "/k/vol1").unwrap().is_empty());
        remove(root.path(), "/k/vol1").unwrap();
        assert!(!root.path().join("L2svdm9sMQ==").exists());
        assert!(matches!(remove(root.path(), "/k/vol1"), Err(DirectError::NotFound { .. })));
        assert!(matches!(read(root.path(), "/k/vol1"), Err(DirectError::NotFound { .. })));
    }

    #[test]
    fn devices_by_type() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.raw");
        std::fs::write(&img, [0u8; 512]).unwrap();
        let mut info = MountInfo {
            volume_type: "directvol".into(),
            device: img.to_string_lossy().into_owned(),
            fstype: "ext4".into(),
            metadata: BTreeMap::new(),
            options: vec!["ro".into()],
        };
        assert_eq!(source("/v", &info).unwrap(), BlockSource::File { path: img.clone(), read_only: true });
        info.device = "/nonexistent/disk".into();
        assert!(source("/v", &info).unwrap_err().to_string().contains("device /nonexistent/disk"));
        let sock = dir.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        info.volume_type = "spdkvol".into();
        info.device = format!("spdk://{}", sock.display());
        assert_eq!(source("/v", &info).unwrap(), BlockSource::VhostUser { socket: sock.clone() });
        info.device = sock.to_string_lossy().into_owned();
        assert_eq!(source("/v", &info).unwrap(), BlockSource::VhostUser { socket: sock });
        info.volume_type = "vfiovol".into();
        info.device = "45:00.1".into();
        assert_eq!(source("/v", &info).unwrap(), BlockSource::Vfio { host: "0000:45:00.1".into() });
    }

    #[test]
    fn vfio_addresses() {
        let sys = tempfile::tempdir().unwrap();
        assert_eq!(vfio_host("45:00.1", sys.path()).unwrap(), "0000:45:00.1");
        assert_eq!(vfio_host("0000:AF:1f.7", sys.path()).unwrap(), "0000:af:1f.7");
        assert!(vfio_host("45:00", sys.path()).is_err());
        assert!(vfio_host("0000:45:00.8", sys.path()).is_err());
        let group = sys.path().join("kernel/iommu_groups/12/devices");
        std::fs::create_dir_all(group.join("0000:45:00.1")).unwrap();
        assert_eq!(vfio_host("/dev/vfio/12", sys.path()).unwrap(), "0000:45:00.1");
        std::fs::create_dir_all(group.join("0000:45:00.2")).unwrap();
        assert!(vfio_host("/dev/vfio/12", sys.path()).unwrap_err().contains("has 2 devices"));
        assert!(vfio_host("/dev/vfio/13", sys.path()).unwrap_err().contains("cannot read"));
    }
}
