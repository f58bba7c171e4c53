//! Reading container image tarballs, the two forms users have without a registry:
//!
//! - a **docker-archive** (`docker save`, and the `manifest.json` that `ctr images export` adds):
//!   `manifest.json` lists the config file and the layer tars in order;
//! - an **OCI image layout** (`ctr images export`, `skopeo copy ... oci-archive:`, our own
//!   `oci-image`): `oci-layout`, `index.json` → manifest → config and layers, all blobs under
//!   `blobs/<alg>/<hex>`; a nested index (multi-platform) picks this machine's platform
//!   (linux and the host architecture; an image for other platforms only is refused, naming
//!   them).
//!
//! An archive holding several images (manifest.json entries with different configs, or
//! index.json entries naming different images in `io.containerd.image.name`) yields the one
//! the caller names, and is refused, listing them, when none is named (see [`crate::select`]).
//!
//! When both are present (ctr's export, `docker save` since 25.0) the OCI index wins. A member
//! may be a symlink or hard link to another (`docker save` writes a repeated layer as
//! `<id>/layer.tar -> ../<first id>/layer.tar`). The outer tarball may itself be
//! gzip/zstd/xz compressed; it is then decompressed to a temporary file first. Layers may be
//! gzip, zstd or plain tar, recognised by their magic number. OCI blobs (index, manifest,
//! config and layers) are checked against their digest (sha256, sha384 or sha512), layers while
//! they stream; every layer's uncompressed tar is checked against the config's
//! `rootfs.diff_ids` (when it lists one per layer), as containerd does, which is the only check
//! a docker-archive's layers get. A manifest layer whose media type is not a file system layer
//! (a Helm chart, an SBOM, a signature) is refused rather than unpacked as one.
//!
//! Only the image config's process defaults are taken (`Env`, `Cmd`, `Entrypoint`,
//! `WorkingDir`, `User`): the bundle builder lets explicit flags override them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, DigestAlgorithm, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;
use sha2::{Digest as _, Sha256, Sha384, Sha512};

use crate::compress::{Codec, CompressError};
use crate::select::{self, Candidate};

/// The annotation `ctr images export` and docker 25+ name an OCI layout's images by.
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

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
    #[error("{}: blob {digest} does not match its digest (got {actual})", path.display())]
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
    /// `alg:<hex>` the uncompressed tar must hash to (the config's `rootfs.diff_ids`), as
    /// containerd checks when it unpacks; the only check a docker-archive layer gets.
    diff_id: Option<String>,
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
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

impl ConfigFile {
    /// The digest of each uncompressed layer, when the config lists one per layer.
    fn diff_ids(&self, layers: usize) -> Vec<Option<String>> {
        match &self.rootfs {
            Some(r) if r.diff_ids.len() == layers => r.diff_ids.iter().cloned().map(Some).collect(),
            _ => vec![None; layers],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    layers: Vec<String>,
    /// The image's names (`null` for an image saved by id).
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
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
    /// Opens `path`, indexes its members and reads the manifest and config of its image, or of
    /// the image named `image` (`NAME[:TAG]`) when it holds several.
    pub fn open(path: &Path, image: Option<&str>) -> Result<Self, ImageError> {
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
            archive.read_oci(image)?;
        } else if archive.members.contains_key("manifest.json") {
            archive.read_docker(image)?;
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

    fn read_docker(&mut self, image: Option<&str>) -> Result<(), ImageError> {
        self.format = "docker-archive";
        let mut manifests: Vec<DockerManifest> = self.json("manifest.json")?;
        if manifests.is_empty() {
            return Err(ImageError::Invalid { path: self.path.clone(), what: "manifest.json lists no image".into() });
        }
        let candidates: Vec<Candidate> = manifests
            .iter()
            .map(|m| Candidate { names: m.repo_tags.clone().unwrap_or_default(), identity: m.config.clone() })
            .collect();
        let chosen = select::choose(&candidates, image, "manifest.json")
            .map_err(|what| ImageError::Invalid { path: self.path.clone(), what })?;
        let manifest = manifests.swap_remove(chosen[0]);
        let config: ConfigFile = self.json(&member_name(manifest.config.as_bytes()))?;
        let diff_ids = config.diff_ids(manifest.layers.len());
        self.defaults = config.config.unwrap_or_default();
        for (layer, diff_id) in manifest.layers.into_iter().zip(diff_ids) {
            let name = member_name(layer.as_bytes());
            let member = self.member(&name)?;
            self.layers.push(LayerRef { name, member, digest: None, diff_id });
        }
        Ok(())
    }

    fn blob_name(&self, desc: &Descriptor) -> String {
        format!("blobs/{}/{}", desc.digest().algorithm(), desc.digest().digest())
    }

    /// The JSON blob `desc` names, checked against its digest.
    fn blob_json<T: serde::de::DeserializeOwned>(&mut self, desc: &Descriptor) -> Result<T, ImageError> {
        let name = self.blob_name(desc);
        let expected = self.expected_digest(desc)?;
        let data = self.read_member(&name)?;
        let mut check = DigestReader::new(data.as_slice(), Some(expected), self.path.clone());
        io::copy(&mut check, &mut io::sink()).map_err(|e| {
            match e.into_inner().map(|e| e.downcast::<ImageError>()) {
                Some(Ok(err)) => *err,
                _ => ImageError::Invalid { path: self.path.clone(), what: format!("cannot check {name}") },
            }
        })?;
        serde_json::from_slice(&data).map_err(|source| ImageError::BadJson {
            path: self.path.clone(),
            what: name,
            source,
        })
    }

    /// `alg:hex` of `desc`, refused when this reader cannot check that algorithm.
    fn expected_digest(&self, desc: &Descriptor) -> Result<String, ImageError> {
        let alg = desc.digest().algorithm();
        if BlobHasher::new(alg.as_ref()).is_none() {
            return Err(ImageError::Invalid {
                path: self.path.clone(),
                what: format!(
                    "blob {} uses the digest algorithm {:?}; only sha256, sha384 and sha512 can be checked",
                    desc.digest(),
                    alg.as_ref()
                ),
            });
        }
        Ok(format!("{alg}:{}", desc.digest().digest()))
    }

    /// The entries of index.json that make up the image to build: the one named `image`, or
    /// all of them when they name at most one image (unnamed entries are platforms of it).
    fn top_level(&self, index: &ImageIndex, image: Option<&str>) -> Result<Vec<Descriptor>, ImageError> {
        let name_of = |d: &Descriptor| {
            d.annotations().as_ref().and_then(|a| a.get(ANNOTATION_IMAGE_NAME)).cloned().into_iter().collect()
        };
        let all = index.manifests();
        let candidates: Vec<Candidate> =
            all.iter().map(|d| Candidate { names: name_of(d), identity: d.digest().to_string() }).collect();
        let invalid = |what| ImageError::Invalid { path: self.path.clone(), what };
        match image {
            Some(_) => Ok(select::choose(&candidates, image, "index.json")
                .map_err(invalid)?
                .into_iter()
                .map(|i| all[i].clone())
                .collect()),
            None => {
                let named: Vec<Candidate> = candidates.into_iter().filter(|c| !c.names.is_empty()).collect();
                select::choose(&named, None, "index.json").map_err(invalid)?;
                Ok(all.clone())
            }
        }
    }

    fn read_oci(&mut self, image: Option<&str>) -> Result<(), ImageError> {
        self.format = "OCI image layout";
        let index: ImageIndex = self.json("index.json")?;
        let mut manifests = self.top_level(&index, image)?;
        // Follow nested indexes (multi-platform images) down to one manifest; a loop of
        // indexes is cut short.
        let mut depth = 0;
        let manifest_desc = loop {
            let desc = pick_manifest(&manifests, host_arch())
                .map_err(|what| ImageError::Invalid { path: self.path.clone(), what })?
                .clone();
            // `ctr images export --platform` keeps the whole index but only that platform's
            // blobs: say which manifest is absent rather than which blob.
            if let Some(p) = desc.platform().as_ref().filter(|_| !self.members.contains_key(&self.blob_name(&desc))) {
                return Err(ImageError::Invalid {
                    path: self.path.clone(),
                    what: format!(
                        "the image index lists a manifest for {}/{}, but its blob {} is not in the archive \
                         (exported for another platform?)",
                        p.os(),
                        p.architecture(),
                        desc.digest()
                    ),
                });
            }
            if is_index(desc.media_type()) {
                depth += 1;
                if depth > 8 {
                    return Err(ImageError::Invalid {
                        path: self.path.clone(),
                        what: "image indexes nest more than 8 deep".into(),
                    });
                }
                let nested: ImageIndex = self.blob_json(&desc)?;
                manifests = nested.manifests().clone();
                continue;
            }
            break desc;
        };
        let manifest: ImageManifest = self.blob_json(&manifest_desc)?;
        let config: ConfigFile = self.blob_json(manifest.config())?;
        let diff_ids = config.diff_ids(manifest.layers().len());
        self.defaults = config.config.unwrap_or_default();
        for ((i, layer), diff_id) in manifest.layers().iter().enumerate().zip(diff_ids) {
            let name = self.blob_name(layer);
            if !is_layer(layer.media_type()) {
                return Err(ImageError::Invalid {
                    path: self.path.clone(),
                    what: format!(
                        "layer {} ({name}) has media type {}, which is not a file system layer; \
                         this is not a container image",
                        i + 1,
                        layer.media_type()
                    ),
                });
            }
            let digest = self.expected_digest(layer)?;
            let member = self.member(&name)?;
            self.layers.push(LayerRef { name, member, digest: Some(digest), diff_id });
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
        let tar: Box<dyn Read> = match Codec::sniff(&head[..n]) {
            Some(codec) => codec.decoder(raw)?,
            None => Box::new(raw),
        };
        Ok(Box::new(DigestReader::new(tar, layer.diff_id.clone(), self.path.clone())))
    }
}

fn is_index(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageIndex => true,
        MediaType::Other(s) => s.contains("manifest.list"),
        _ => false,
    }
}

/// Whether a manifest's layer of `media_type` is a (possibly compressed) tar of files, as
/// containerd's unpacker accepts: OCI layers (also non-distributable) and docker's rootfs diffs.
fn is_layer(media_type: &MediaType) -> bool {
    let m = media_type.to_string();
    m.starts_with("application/vnd.oci.image.layer.") || m.starts_with("application/vnd.docker.image.rootfs.")
}

/// This machine's architecture as OCI platforms spell it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The manifest for linux/`arch`; else the first without a platform (one image, or a nested
/// index); else an error naming the platforms the image offers.
fn pick_manifest<'a>(manifests: &'a [Descriptor], arch: &str) -> Result<&'a Descriptor, String> {
    let platform = |d: &Descriptor| d.platform().as_ref().map(|p| (p.os().to_string(), p.architecture().to_string()));
    if manifests.is_empty() {
        return Err("the image index lists no manifest".into());
    }
    if let Some(d) = manifests.iter().find(|d| platform(d).is_some_and(|(os, a)| os == "linux" && a == arch)) {
        return Ok(d);
    }
    if let Some(d) = manifests.iter().find(|d| d.platform().is_none()) {
        return Ok(d);
    }
    // Attestations (buildx's SBOM and provenance) are listed as unknown/unknown.
    let offered: Vec<String> = manifests
        .iter()
        .filter_map(platform)
        .filter(|(os, a)| os != "unknown" && a != "unknown")
        .map(|(os, a)| format!("{os}/{a}"))
        .collect();
    Err(format!(
        "the image has no manifest for linux/{arch}, the platform of this machine; it offers {}",
        if offered.is_empty() { "none".to_owned() } else { offered.join(", ") }
    ))
}

/// Indexes the members of an uncompressed tar file by name.
fn index_members(path: &Path, file: &mut File) -> Result<BTreeMap<String, Member>, ImageError> {
    let not_image = |found: String| ImageError::NotAnImage { path: path.to_owned(), found };
    let len = file.metadata().map_err(|source| ImageError::Open { path: path.to_owned(), source })?.len();
    let mut archive = tar::Archive::new(&*file);
    let mut members = BTreeMap::new();
    // (link, member it names), resolved once every file is known.
    let mut links: Vec<(String, String)> = Vec::new();
    // Seek over member data instead of reading it: layers can be gigabytes.
    let entries = archive.entries_with_seek().map_err(|e| not_image(format!("no tar archive ({e})")))?;
    for entry in entries {
        let entry = entry.map_err(|e| not_image(format!("no valid tar archive ({e})")))?;
        let kind = entry.header().entry_type();
        let name = member_name(&entry.path_bytes());
        if kind.is_file() {
            let member = Member { offset: entry.raw_file_position(), size: entry.size() };
            // Seeking past the end succeeds and the reader then sees a clean end: a cut-off
            // file would otherwise look like an archive with members missing.
            let padded = member.size.checked_next_multiple_of(512);
            if padded.and_then(|p| member.offset.checked_add(p)).map_or(true, |end| end > len) {
                return Err(ImageError::Invalid {
                    path: path.to_owned(),
                    what: format!(
                        "the archive is truncated: {name} needs {} bytes (padded to 512) from offset {}, but the \
                         file has {len} bytes (an interrupted download or copy?)",
                        member.size, member.offset
                    ),
                });
            }
            members.insert(name, member);
        } else if kind.is_symlink() || kind.is_hard_link() {
            let Some(target) = entry.link_name_bytes() else { continue };
            // A symlink is relative to its own directory, a hard link names a member.
            let target = if kind.is_symlink() { link_target(&name, &target) } else { Some(member_name(&target)) };
            links.extend(target.map(|t| (name, t)));
        }
    }
    // Chains resolve over passes; a dangling or looping link stays missing.
    for _ in 0..links.len().min(40) {
        let mut resolved_any = false;
        for (link, target) in &links {
            if !members.contains_key(link) {
                if let Some(m) = members.get(target).copied() {
                    members.insert(link.clone(), m);
                    resolved_any = true;
                }
            }
        }
        if !resolved_any {
            break;
        }
    }
    Ok(members)
}

/// The member a symlink member `link` points at with `target`, or `None` when the target is
/// absolute or climbs out of the archive.
fn link_target(link: &str, target: &[u8]) -> Option<String> {
    let target = String::from_utf8_lossy(target);
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
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

/// The digest algorithms of the OCI image spec that blobs are checked with.
enum BlobHasher {
    Sha256(Sha256),
    Sha384(Sha384),
    Sha512(Sha512),
}

impl BlobHasher {
    fn new(algorithm: &str) -> Option<Self> {
        Some(match DigestAlgorithm::from(algorithm) {
            DigestAlgorithm::Sha256 => Self::Sha256(Sha256::new()),
            DigestAlgorithm::Sha384 => Self::Sha384(Sha384::new()),
            DigestAlgorithm::Sha512 => Self::Sha512(Sha512::new()),
            _ => return None,
        })
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Sha384(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    fn finish(self) -> String {
        match self {
            Self::Sha256(h) => hex(&h.finalize()),
            Self::Sha384(h) => hex(&h.finalize()),
            Self::Sha512(h) => hex(&h.finalize()),
        }
    }
}

/// Passes bytes through and, at the end of the stream, fails if they do not hash to `expected`
/// (`alg:hex`; an algorithm [`BlobHasher`] does not know fails too, never passes unchecked).
struct DigestReader<R> {
    inner: R,
    check: Option<(String, Option<BlobHasher>)>,
    path: PathBuf,
}

impl<R: Read> DigestReader<R> {
    fn new(inner: R, expected: Option<String>, path: PathBuf) -> Self {
        let check = expected.map(|e| {
            let hasher = e.split_once(':').and_then(|(alg, _)| BlobHasher::new(alg));
            (e, hasher)
        });
        Self { inner, check, path }
    }
}

impl<R: Read> Read for DigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some((_, Some(hasher))) = &mut self.check {
            hasher.update(&buf[..n]);
        }
        if n == 0 && !buf.is_empty() {
            if let Some((expected, hasher)) = self.check.take() {
                let (algorithm, hexd) = expected.split_once(':').unwrap_or(("", ""));
                let actual = hasher.map(BlobHasher::finish).unwrap_or_default();
                if hexd != actual {
                    let actual = format!("{algorithm}:{actual}");
                    let err = ImageError::DigestMismatch { path: self.path.clone(), digest: expected.clone(), actual };
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
    fn link_members_resolve_inside_the_archive() {
        assert_eq!(link_target("b/layer.tar", b"../a/layer.tar").as_deref(), Some("a/layer.tar"));
        assert_eq!(link_target("b/layer.tar", b"./x//y").as_deref(), Some("b/x/y"));
        assert_eq!(link_target("b/layer.tar", b"../../etc/passwd"), None);
        assert_eq!(link_target("layer.tar", b"/etc/passwd"), None);
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
        let err = ImageArchive::open(&p, None).unwrap_err().to_string();
        assert!(err.contains("manifest.json") && err.contains("index.json") && err.contains("hello.txt"), "{err}");
        std::fs::write(&p, b"just text, not a tarball at all, not even close....").unwrap();
        let err = ImageArchive::open(&p, None).unwrap_err();
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
