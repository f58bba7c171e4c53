//! Reading container image tarballs, the two forms users have without a registry:
//!
//! - a **docker-archive** (`docker save`, and the `manifest.json` that `ctr images export` adds):
//!   `manifest.json` lists the config file and the layer tars in order;
//! - an **OCI image layout** (`ctr images export`, `skopeo copy ... oci-archive:`, our own
//!   `oci-image`): `oci-layout`, `index.json` → manifest → config and layers, all blobs under
//!   `blobs/<alg>/<hex>`; a nested index (multi-platform) picks this machine's platform.
//!
//! When both are present (ctr's export) the OCI index wins. The outer tarball may itself be
//! gzip/zstd/xz compressed; it is then decompressed to a temporary file first. Layers may be
//! gzip, zstd or plain tar, recognised by their magic number. OCI blobs are checked against
//! their digest while they stream.
//!
//! Only the image config's process defaults are taken (`Env`, `Cmd`, `Entrypoint`,
//! `WorkingDir`, `User`): the bundle builder lets explicit flags override them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::compress::{Codec, CompressError};

/// The largest JSON document (manifest, index, config) read into memory.
const MAX_JSON: u64 = 16 << 20;

/// Errors while reading an image tarball.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read image archive {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is not a container image archive: expected a docker-archive (manifest.json and layer tars) \
         or an OCI image layout (oci-layout and index.json) at the top of the tarball; found {found}",
        path.display()
    )]
    NotAnImage { path: PathBuf, found: String },
    #[error("{}: {what} is missing from the archive", path.display())]
    MissingEntry { path: PathBuf, what: String },
    #[error("{}: {what} is not valid JSON of the expected shape", path.display())]
    BadJson {
        path: PathBuf,
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
    #[error("{}: blob {digest} does not match its digest (got sha256:{actual})", path.display())]
    DigestMismatch { path: PathBuf, digest: String, actual: String },
    #[error(transparent)]
    Compress(#[from] CompressError),
}

/// A member of the outer tarball: where its data starts and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Member {
    offset: u64,
    size: u64,
}

/// One layer to apply, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    /// The member's name in the tarball, for messages.
    pub name: String,
    member: Member,
    /// `sha256:<hex>` the (compressed) blob must hash to, when the format says.
    digest: Option<String>,
}

/// The process defaults an image config gives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessDefaults {
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ProcessDefaults>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    layers: Vec<String>,
}

/// An opened image tarball.
#[derive(Debug)]
pub struct ImageArchive {
    path: PathBuf,
    file: File,
    members: BTreeMap<String, Member>,
    /// Keeps the decompressed copy of a compressed tarball alive.
    _decompressed: Option<tempfile::NamedTempFile>,
    /// `docker-archive` or `OCI image layout`.
    pub format: &'static str,
    /// Layers in application order (lowest first).
    pub layers: Vec<LayerRef>,
    /// Process defaults from the image config.
    pub defaults: ProcessDefaults,
}

/// Drops a leading `./` and trailing `/` so member names compare as written in manifests.
fn member_name(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut s = s.as_ref();
    while let Some(rest) = s.strip_prefix("./") {
        s = rest;
    }
    s.trim_end_matches('/').to_owned()
}

impl ImageArchive {
    /// Opens `path`, indexes its members and reads the manifest and config.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let open_err = |source| ImageError::Open { path: path.to_owned(), source };
        let mut file = File::open(path).map_err(open_err)?;
        let mut head = [0u8; 6];
        let n = read_up_to(&mut file, &mut head).map_err(open_err)?;
        file.seek(SeekFrom::Start(0)).map_err(open_err)?;
        let mut decompressed = None;
        if let Some(codec) = Codec::sniff(&head[..n]) {
            let mut tmp = tempfile::NamedTempFile::new().map_err(open_err)?;
            {
                let mut decoder = codec.decoder(BufReader::new(&file))?;
                io::copy(&mut decoder, tmp.as_file_mut()).map_err(|e| CompressError::Decode(codec, e))?;
            }
            file = tmp.reopen().map_err(open_err)?;
            decompressed = Some(tmp);
        }
        let members = index_members(path, &mut file)?;
        let mut archive = Self {
            path: path.to_owned(),
            file,
            members,
            _decompressed: decompressed,
            format: "",
            layers: Vec::new(),
            defaults: ProcessDefaults::default(),
        };
        if archive.members.contains_key("index.json") && archive.members.contains_key("oci-layout") {
            archive.read_oci()?;
        } else if archive.members.contains_key("manifest.json") {
            archive.read_docker()?;
        } else {
            let mut found: Vec<&str> = archive.members.keys().map(String::as_str).take(8).collect();
            if found.is_empty() {
                found.push("no files");
            }
            return Err(ImageError::NotAnImage { path: path.to_owned(), found: found.join(", ") });
        }
        Ok(archive)
    }

    fn member(&self, name: &str) -> Result<Member, ImageError> {
        self.members
            .get(name)
            .copied()
            .ok_or_else(|| ImageError::MissingEntry { path: self.path.clone(), what: name.to_owned() })
    }

    /// The raw bytes of member `name` (small JSON documents only).
    fn read_member(&mut self, name: &str) -> Result<Vec<u8>, ImageError> {
        let m = self.member(name)?;
        if m.size > MAX_JSON {
            return Err(ImageError::Invalid { path: self.path.clone(), what: format!("{name} is too large") });
        }
        let mut data = Vec::new();
        self.section(m)?
            .read_to_end(&mut data)
            .map_err(|source| ImageError::Open { path: self.path.clone(), source })?;
        Ok(data)
    }

    fn json<T: serde::de::DeserializeOwned>(&mut self, name: &str) -> Result<T, ImageError> {
        let data = self.read_member(name)?;
        serde_json::from_slice(&data).map_err(|source| ImageError::BadJson {
            path: self.path.clone(),
            what: name.to_owned(),
            source,
        })
    }

    fn section(&self, m: Member) -> Result<impl Read + '_, ImageError> {
        let mut f = &self.file;
        f.seek(SeekFrom::Start(m.offset)).map_err(|source| ImageError::Open { path: self.path.clone(), source })?;
        Ok(f.take(m.size))
    }

    fn read_docker(&mut self) -> Result<(), ImageError> {
        self.format = "docker-archive";
        let manifests: Vec<DockerManifest> = self.json("manifest.json")?;
        let manifest = manifests.into_iter().next().ok_or_else(|| ImageError::Invalid {
            path: self.path.clone(),
            what: "manifest.json lists no image".into(),
        })?;
        let config: ConfigFile = self.json(&member_name(manifest.config.as_bytes()))?;
        self.defaults = config.config.unwrap_or_default();
        for layer in manifest.layers {
            let name = member_name(layer.as_bytes());
            let member = self.member(&name)?;
            self.layers.push(LayerRef { name, member, digest: None });
        }
        Ok(())
    }

    fn blob_name(&self, desc: &Descriptor) -> String {
        format!("blobs/{}/{}", desc.digest().algorithm(), desc.digest().digest())
    }

    fn read_oci(&mut self) -> Result<(), ImageError> {
        self.format = "OCI image layout";
        let mut index: ImageIndex = self.json("index.json")?;
        // Follow nested indexes (multi-platform images) down to one manifest.
        let manifest_desc = loop {
            let desc = pick_manifest(index.manifests()).cloned().ok_or_else(|| ImageError::Invalid {
                path: self.path.clone(),
                what: "the image index lists no manifest".into(),
            })?;
            if is_index(desc.media_type()) {
                let name = self.blob_name(&desc);
                index = self.json(&name)?;
                continue;
            }
            break desc;
        };
        let name = self.blob_name(&manifest_desc);
        let manifest: ImageManifest = self.json(&name)?;
        let config_name = self.blob_name(manifest.config());
        let config: ConfigFile = self.json(&config_name)?;
        self.defaults = config.config.unwrap_or_default();
        for layer in manifest.layers() {
            let name = self.blob_name(layer);
            let member = self.member(&name)?;
            let digest = format!("{}:{}", layer.digest().algorithm(), layer.digest().digest());
            self.layers.push(LayerRef { name, member, digest: Some(digest) });
        }
        Ok(())
    }

    /// The uncompressed tar stream of `layer`; the digest (if any) is checked when it ends.
    pub fn layer_reader(&self, layer: &LayerRef) -> Result<Box<dyn Read + '_>, ImageError> {
        let mut head = [0u8; 6];
        let n = read_up_to(&mut self.section(layer.member)?, &mut head)
            .map_err(|source| ImageError::Open { path: self.path.clone(), source })?;
        let section = BufReader::with_capacity(1 << 16, self.section(layer.member)?);
        let raw = DigestReader::new(section, layer.digest.clone(), self.path.clone());
        Ok(match Codec::sniff(&head[..n]) {
            Some(codec) => codec.decoder(raw)?,
            None => Box::new(raw),
        })
    }
}

fn is_index(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageIndex => true,
        MediaType::Other(s) => s.contains("manifest.list"),
        _ => false,
    }
}

/// The manifest for this machine (linux and the host architecture), else the first.
fn pick_manifest(manifests: &[Descriptor]) -> Option<&Descriptor> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    manifests
        .iter()
        .find(|d| {
            d.platform().as_ref().is_some_and(|p| p.os().to_string() == "linux" && p.architecture().to_string() == arch)
        })
        .or_else(|| manifests.first())
}

/// Indexes the members of an uncompressed tar file by name.
fn index_members(path: &Path, file: &mut File) -> Result<BTreeMap<String, Member>, ImageError> {
    let not_image = |found: String| ImageError::NotAnImage { path: path.to_owned(), found };
    let mut archive = tar::Archive::new(&*file);
    let mut members = BTreeMap::new();
    // Seek over member data instead of reading it: layers can be gigabytes.
    let entries = archive.entries_with_seek().map_err(|e| not_image(format!("no tar archive ({e})")))?;
    for entry in entries {
        let entry = entry.map_err(|e| not_image(format!("no valid tar archive ({e})")))?;
        if entry.header().entry_type().is_file() {
            let name = member_name(&entry.path_bytes());
            members.insert(name, Member { offset: entry.raw_file_position(), size: entry.size() });
        }
    }
    Ok(members)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Passes bytes through and, at the end of the stream, fails if they do not hash to `expected`.
struct DigestReader<R> {
    inner: R,
    hasher: Sha256,
    expected: Option<String>,
    path: PathBuf,
}

impl<R: Read> DigestReader<R> {
    fn new(inner: R, expected: Option<String>, path: PathBuf) -> Self {
        Self { inner, hasher: Sha256::new(), expected, path }
    }
}

impl<R: Read> Read for DigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        if n == 0 && !buf.is_empty() {
            if let Some(expected) = self.expected.take() {
                let actual = hex(&std::mem::take(&mut self.hasher).finalize());
                if expected.strip_prefix("sha256:").is_some_and(|hexd| hexd != actual) {
                    let err = ImageError::DigestMismatch { path: self.path.clone(), digest: expected, actual };
                    return Err(io::Error::new(io::ErrorKind::InvalidData, err));
                }
            }
        }
        Ok(n)
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_normalised() {
        assert_eq!(member_name(b"./manifest.json"), "manifest.json");
        assert_eq!(member_name(b"blobs/sha256/"), "blobs/sha256");
    }

    #[test]
    fn not_an_image_names_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.tar");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "hello.txt", &b"hi"[..]).unwrap();
        std::fs::write(&p, b.into_inner().unwrap()).unwrap();
        let err = ImageArchive::open(&p).unwrap_err().to_string();
        assert!(err.contains("manifest.json") && err.contains("index.json") && err.contains("hello.txt"), "{err}");
        std::fs::write(&p, b"just text, not a tarball at all, not even close....").unwrap();
        let err = ImageArchive::open(&p).unwrap_err();
        assert!(matches!(err, ImageError::NotAnImage { .. }), "{err}");
    }

    #[test]
    fn digest_reader_checks_at_end() {
        let good = sha256_digest(b"abc");
        let mut out = Vec::new();
        DigestReader::new(&b"abc"[..], Some(good), PathBuf::new()).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");
        let bad = sha256_digest(b"abd");
        let err = DigestReader::new(&b"abc"[..], Some(bad), PathBuf::new()).read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }
}
