//! Writing a local image: one tarball that both `ctr images import` and `docker load` accept,
//! so `ctr run IMAGE` and `docker run IMAGE` work without a registry.
//!
//! The tarball is an OCI image layout — `oci-layout`, `index.json` (one manifest, annotated with
//! `io.containerd.image.name` = the full reference, e.g. `docker.io/library/NAME:TAG`, which ctr
//! names the image after, and `org.opencontainers.image.ref.name` = the tag), and under
//! `blobs/sha256/` the manifest, the config (whose `rootfs.diff_ids` is the sha256 of the
//! uncompressed layer) and one gzip layer — and at the same time a docker-archive: a
//! `manifest.json` naming the same config and layer blobs, with `RepoTags` = the reference as
//! docker prints it (`NAME:TAG`). Docker 20.10's `docker load` reads only `manifest.json` (it
//! fails with `blobs/json: no such file` on a bare OCI layout) and inflates a gzip layer itself;
//! containerd prefers `index.json` when both are there. `docker save` writes the same pair since
//! Docker 25, so one file serves both tools and no `--format` choice is needed. The legacy
//! `repositories` file is not written: Docker reads it only when `manifest.json` is absent.
//!
//! Deterministic: the layer tar lists entries sorted, owned by 0:0, stamped with the given mtime
//! (`SOURCE_DATE_EPOCH`), with no user or group names; gzip has a fixed header; JSON documents
//! are written with sorted keys (the annotations are a hash map in oci-spec); the outer tar is
//! stamped like the layer.

use std::collections::HashMap;
use std::str::FromStr;

use oci_spec::image::{
    Arch, ConfigBuilder, DescriptorBuilder, Digest, ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder,
    MediaType, Os, PlatformBuilder, RootFsBuilder, SCHEMA_VERSION,
};

use crate::archive::{Archive, NodeKind};
use crate::compress::{self, CompressError, Compression};
use crate::image::sha256_digest;

/// The annotation containerd names an imported image after.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for the tag.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Errors while writing an OCI image.
#[derive(Debug, thiserror::Error)]
pub enum OciImageError {
    #[error("image name {name:?} is not valid: {reason} (expected NAME[:TAG], e.g. busybox:latest or example.com/team/app:1.0)")]
    BadName { name: String, reason: &'static str },
    #[error("/{path} is a device node; image layers built here hold files, directories and symlinks only")]
    DeviceNode { path: String },
    #[error("cannot write the tar stream")]
    Tar(#[source] std::io::Error),
    #[error("cannot describe the image")]
    Spec(#[source] oci_spec::OciSpecError),
    #[error("cannot serialise the image metadata")]
    Json(#[source] serde_json::Error),
    #[error(transparent)]
    Compress(#[from] CompressError),
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Full name with registry, e.g. `docker.io/library/busybox`.
    pub repository: String,
    /// The tag, e.g. `latest`.
    pub tag: String,
}

impl Reference {
    /// Parses `NAME[:TAG]` the way docker does: no registry means `docker.io`, and a one-part
    /// name on docker.io lives under `library/`; no tag means `latest`.
    pub fn parse(name: &str) -> Result<Self, OciImageError> {
        let bad = |reason| OciImageError::BadName { name: name.to_owned(), reason };
        if name.contains('@') {
            return Err(bad("digests are not supported"));
        }
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (repo, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], &name[last_slash + i + 1..]),
            None => (name, "latest"),
        };
        if tag.is_empty() || tag.len() > 128 || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
            return Err(bad("the tag must be 1-128 letters, digits, '_', '.' or '-'"));
        }
        if tag.starts_with(['.', '-']) {
            return Err(bad("the tag must not start with '.' or '-'"));
        }
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("empty name component"));
        }
        let has_domain = parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost");
        let path = if has_domain { &parts[1..] } else { &parts[..] };
        for p in path {
            if !p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)) {
                return Err(bad("name components are lower-case letters, digits, '.', '_' and '-'"));
            }
        }
        let repository = match (has_domain, parts.len()) {
            (true, _) => repo.to_owned(),
            (false, 1) => format!("docker.io/library/{repo}"),
            (false, _) => format!("docker.io/{repo}"),
        };
        Ok(Self { repository, tag: tag.to_owned() })
    }

    /// `repository:tag`.
    pub fn full(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }

    /// The reference as docker prints it (`docker images`, `docker save`'s `RepoTags`): without
    /// `docker.io/`, and without `library/` for an official-style one-part name.
    pub fn familiar(&self) -> String {
        let short = match self.repository.strip_prefix("docker.io/") {
            Some(rest) => rest.strip_prefix("library/").filter(|name| !name.contains('/')).unwrap_or(rest),
            None => &self.repository,
        };
        format!("{short}:{}", self.tag)
    }
}

/// One image of a docker-archive's `manifest.json` (moby's `tarexport.manifestItem`): member
/// paths of the config and of the layers, bottom first.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestItem {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// What goes in the image besides the file tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub reference: Reference,
    /// The image's default command (`Cmd`).
    pub cmd: Vec<String>,
    /// The image's environment (`Env`).
    pub env: Vec<String>,
    /// Timestamp of every tar entry.
    pub mtime: u32,
}

/// A written image.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The tarball (OCI layout and docker-archive at once).
    pub bytes: Vec<u8>,
    /// `sha256:` digest of the manifest (what `ctr images ls` shows).
    pub manifest_digest: String,
    /// Size of the compressed layer.
    pub layer_size: u64,
}

/// Serialises `tree` as a deterministic tar stream (see the module docs).
pub fn layer_tar(tree: &Archive, mtime: u32) -> Result<Vec<u8>, OciImageError> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, node) in tree.iter() {
        let mut h = tar::Header::new_ustar();
        h.set_mode(node.perm);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(u64::from(mtime));
        match &node.kind {
            NodeKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                builder.append_data(&mut h, format!("{path}/"), std::io::empty()).map_err(OciImageError::Tar)?;
            }
            NodeKind::File(data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                builder.append_data(&mut h, path, data.as_slice()).map_err(OciImageError::Tar)?;
            }
            NodeKind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                builder.append_link(&mut h, path, target).map_err(OciImageError::Tar)?;
            }
            NodeKind::CharDevice { .. } => return Err(OciImageError::DeviceNode { path: path.to_owned() }),
        }
    }
    builder.into_inner().map_err(OciImageError::Tar)
}

/// JSON with object keys sorted at every level, whatever map type the value came from.
fn canonical_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, OciImageError> {
    fn sort(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(sort).collect()),
            other => other,
        }
    }
    let value = serde_json::to_value(value).map_err(OciImageError::Json)?;
    serde_json::to_vec(&sort(value)).map_err(OciImageError::Json)
}

fn digest(data: &[u8]) -> Result<Digest, OciImageError> {
    Digest::from_str(&sha256_digest(data)).map_err(OciImageError::Spec)
}

fn host_arch() -> Arch {
    match std::env::consts::ARCH {
        "aarch64" => Arch::ARM64,
        _ => Arch::Amd64,
    }
}

/// Builds the image tarball of `tree` as `spec` says (both shapes, see the module docs).
pub fn build(tree: &Archive, spec: &ImageSpec) -> Result<BuiltImage, OciImageError> {
    let layer = layer_tar(tree, spec.mtime)?;
    let diff_id = sha256_digest(&layer);
    let layer_gz = compress::compress(&layer, Compression::Gzip)?;

    let mut config = ConfigBuilder::default().env(spec.env.clone()).working_dir("/");
    if !spec.cmd.is_empty() {
        config = config.cmd(spec.cmd.clone());
    }
    let config = config.build().map_err(OciImageError::Spec)?;
    let image_config = ImageConfigurationBuilder::default()
        .architecture(host_arch())
        .os(Os::Linux)
        .config(config)
        .rootfs(RootFsBuilder::default().typ("layers").diff_ids(vec![diff_id]).build().map_err(OciImageError::Spec)?)
        .build()
        .map_err(OciImageError::Spec)?;
    let config_json = canonical_json(&image_config)?;

    let descriptor = |media_type: MediaType, data: &[u8]| -> Result<_, OciImageError> {
        DescriptorBuilder::default()
            .media_type(media_type)
            .size(data.len() as u64)
            .digest(digest(data)?)
            .build()
            .map_err(OciImageError::Spec)
    };
    let manifest = ImageManifestBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MediaType::ImageConfig, &config_json)?)
        .layers(vec![descriptor(MediaType::ImageLayerGzip, &layer_gz)?])
        .build()
        .map_err(OciImageError::Spec)?;
    let manifest_json = canonical_json(&manifest)?;

    let annotations = HashMap::from([
        (ANNOTATION_IMAGE_NAME.to_owned(), spec.reference.full()),
        (ANNOTATION_REF_NAME.to_owned(), spec.reference.tag.clone()),
    ]);
    let platform =
        PlatformBuilder::default().architecture(host_arch()).os(Os::Linux).build().map_err(OciImageError::Spec)?;
    let manifest_desc = DescriptorBuilder::default()
        .media_type(MediaType::ImageManifest)
        .size(manifest_json.len() as u64)
        .digest(digest(&manifest_json)?)
        .annotations(annotations)
        .platform(platform)
        .build()
        .map_err(OciImageError::Spec)?;
    let index = ImageIndexBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_desc])
        .build()
        .map_err(OciImageError::Spec)?;
    let index_json = canonical_json(&index)?;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();

    let blob = |data: &[u8]| format!("blobs/sha256/{}", sha256_digest(data).trim_start_matches("sha256:"));
    let docker_manifest = canonical_json(&[DockerManifestItem {
        config: blob(&config_json),
        repo_tags: vec![spec.reference.familiar()],
        layers: vec![blob(&layer_gz)],
    }])?;
    let mut outer = Archive::new();
    outer.add_file("oci-layout", 0o644, layout).map_err(archive_bug)?;
    outer.add_file("index.json", 0o644, index_json).map_err(archive_bug)?;
    outer.add_file("manifest.json", 0o644, docker_manifest).map_err(archive_bug)?;
    outer.add_file(&blob(&manifest_json), 0o644, manifest_json.clone()).map_err(archive_bug)?;
    outer.add_file(&blob(&config_json), 0o644, config_json).map_err(archive_bug)?;
    let layer_size = layer_gz.len() as u64;
    outer.add_file(&blob(&layer_gz), 0o644, layer_gz).map_err(archive_bug)?;
    let bytes = layer_tar(&outer, spec.mtime)?;
    Ok(BuiltImage { bytes, manifest_digest: sha256_digest(&manifest_json), layer_size })
}

/// The outer tree only holds fixed, valid names; a failure here is a tar-level error.
fn archive_bug(e: crate::archive::ArchiveError) -> OciImageError {
    OciImageError::Tar(std::io::Error::other(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.full(), "docker.io/library/busybox:latest");
        assert_eq!(Reference::parse("wisp/bb:v1").unwrap().full(), "docker.io/wisp/bb:v1");
        assert_eq!(Reference::parse("localhost:5000/x:y").unwrap().full(), "localhost:5000/x:y");
        assert_eq!(Reference::parse("example.com/a/b").unwrap().full(), "example.com/a/b:latest");
        for bad in ["Busybox", "bb:", "bb:-x", "a//b", "bb@sha256:00", "bb:a b"] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn familiar_names_are_what_docker_prints() {
        let familiar = |name| Reference::parse(name).unwrap().familiar();
        assert_eq!(familiar("busybox"), "busybox:latest");
        assert_eq!(familiar("docker.io/library/bb:1"), "bb:1");
        assert_eq!(familiar("wisp/bb:v1"), "wisp/bb:v1");
        assert_eq!(familiar("docker.io/library/a/b:2"), "library/a/b:2");
        assert_eq!(familiar("localhost:5000/x:y"), "localhost:5000/x:y");
        assert_eq!(familiar("example.com/a/b"), "example.com/a/b:latest");
    }

    fn tree() -> Archive {
        let mut a = Archive::new();
        a.add_file("bin/busybox", 0o755, b"bb".to_vec()).unwrap();
        a.add_symlink("bin/sh", "/bin/busybox").unwrap();
        a.add_dir("tmp", 0o1777).unwrap();
        a
    }

    fn spec(mtime: u32) -> ImageSpec {
        ImageSpec {
            reference: Reference::parse("bb:t").unwrap(),
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
            mtime,
        }
    }

    /// The members of an image tarball by name, each checked to be stamped `mtime`.
    fn members(bytes: &[u8], mtime: u64) -> HashMap<String, Vec<u8>> {
        let mut files = HashMap::new();
        let mut outer = tar::Archive::new(bytes);
        for e in outer.entries().unwrap() {
            let mut e = e.unwrap();
            assert_eq!(e.header().mtime().unwrap(), mtime);
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            files.insert(e.path().unwrap().to_string_lossy().trim_end_matches('/').to_owned(), data);
        }
        files
    }

    #[test]
    fn docker_manifest_names_the_oci_blobs() {
        let built = build(&tree(), &spec(5)).unwrap();
        let files = members(&built.bytes, 5);
        let (mut blobs, mut top): (Vec<&str>, Vec<&str>) =
            files.keys().map(String::as_str).partition(|n| n.starts_with("blobs/sha256/"));
        top.sort_unstable();
        assert_eq!(top, ["blobs", "blobs/sha256", "index.json", "manifest.json", "oci-layout"]);
        blobs.sort_unstable();
        assert_eq!(blobs.len(), 3, "manifest, config and layer: {blobs:?}");

        let json = |name: &str| -> serde_json::Value { serde_json::from_slice(&files[name]).unwrap() };
        let index = json("index.json");
        let oci = json(&format!("blobs/sha256/{}", &index["manifests"][0]["digest"].as_str().unwrap()[7..]));
        let path_of = |d: &serde_json::Value| format!("blobs/sha256/{}", &d["digest"].as_str().unwrap()[7..]);
        let docker = json("manifest.json");
        let items = docker.as_array().unwrap();
        assert_eq!(items.len(), 1, "{docker}");
        let item = &items[0];
        assert_eq!(item["Config"], path_of(&oci["config"]), "{docker}");
        assert_eq!(item["Layers"], serde_json::json!([path_of(&oci["layers"][0])]), "{docker}");
        assert_eq!(item["RepoTags"], serde_json::json!(["bb:t"]), "{docker}");
        for name in [&item["Config"], &item["Layers"][0]] {
            assert!(files.contains_key(name.as_str().unwrap()), "{name} is a member");
        }
    }

    #[test]
    fn the_docker_archive_alone_reads_as_one() {
        // Without index.json and oci-layout, what remains is a docker-archive on its own: the
        // reader (which prefers the OCI index) takes it as one, layer and Cmd included.
        let built = build(&tree(), &spec(5)).unwrap();
        let mut docker_only = tar::Builder::new(Vec::new());
        let mut outer = tar::Archive::new(built.bytes.as_slice());
        for e in outer.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            if name != "index.json" && name != "oci-layout" {
                let mut header = e.header().clone();
                docker_only.append_data(&mut header, &name, &mut e).unwrap();
            }
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), docker_only.into_inner().unwrap()).unwrap();
        let image = crate::image::ImageArchive::open(file.path(), None).unwrap();
        assert_eq!(image.format, "docker-archive");
        assert_eq!(image.layers.len(), 1);
        assert_eq!(image.defaults.cmd, Some(vec!["sh".to_owned()]));
        let mut layer = Vec::new();
        std::io::Read::read_to_end(&mut image.layer_reader(&image.layers[0]).unwrap(), &mut layer).unwrap();
        assert_eq!(layer, layer_tar(&tree(), 5).unwrap(), "the reader inflated and checked the layer");
    }

    #[test]
    fn deterministic_and_consistent() {
        let a = build(&tree(), &spec(5)).unwrap();
        let b = build(&tree(), &spec(5)).unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_ne!(a.bytes, build(&tree(), &spec(6)).unwrap().bytes, "mtime matters");

        let files = members(&a.bytes, 5);
        let json = |name: &str| -> serde_json::Value { serde_json::from_slice(&files[name]).unwrap() };
        let index = json("index.json");
        let m = &index["manifests"][0];
        assert_eq!(m["annotations"][ANNOTATION_IMAGE_NAME], "docker.io/library/bb:t");
        assert_eq!(m["annotations"][ANNOTATION_REF_NAME], "t");
        let mdigest = m["digest"].as_str().unwrap();
        assert_eq!(mdigest, a.manifest_digest);
        let manifest = json(&format!("blobs/sha256/{}", &mdigest[7..]));
        assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        let layer = &manifest["layers"][0];
        assert_eq!(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
        let gz = &files[&format!("blobs/sha256/{}", &layer["digest"].as_str().unwrap()[7..])];
        assert_eq!(layer["size"].as_u64().unwrap(), gz.len() as u64);
        let config = json(&format!("blobs/sha256/{}", &manifest["config"]["digest"].as_str().unwrap()[7..]));
        let plain = crate::compress::Codec::Gzip.decompress(gz).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], sha256_digest(&plain));
        assert_eq!(config["config"]["Cmd"][0], "sh");
        assert_eq!(config["os"], "linux");
    }
}
