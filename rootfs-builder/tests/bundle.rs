//! End-to-end tests of `rootfs-builder bundle` and `oci-image`: image tarballs are built here
//! (docker-archive and OCI layout, layers with whiteouts, malicious layers), the tool runs as a
//! user would, and the produced directory or tarball is read back.
//!
//! Runs unprivileged (owners are then not applied, which these tests do not check); the runs
//! under containerd live in `tests/tests/builder_ctr.rs`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Output;

use sha2::{Digest, Sha256, Sha512};

mod common;
use common::run;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(args: &[&str], env: &[(&str, &str)]) -> Output {
    let o = run(args, env);
    assert!(o.status.success(), "{args:?} failed: {}", stderr(&o));
    o
}

fn fails(args: &[&str]) -> String {
    let o = run(args, &[]);
    assert!(!o.status.success(), "{args:?} should fail");
    stderr(&o)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One layer entry: (raw name, kind, data or link target).
type E<'a> = (&'a str, tar::EntryType, &'a str);

/// A tar stream with the names written raw, so malicious names survive.
fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            h.set_link_name(data).unwrap();
            h.set_size(0);
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        } else {
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, data.as_bytes()).unwrap();
        }
    }
    b.into_inner().unwrap()
}

/// An outer tarball of (name, bytes) members.
fn tarball(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    tarball_with_links(members, &[])
}

/// An outer tarball of (name, bytes) members, then (name, kind, target) link members.
fn tarball_with_links(members: &[(&str, Vec<u8>)], links: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    for (name, kind, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, name, target).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

const CONFIG: &str = r#"{"architecture":"amd64","os":"linux",
  "config":{"Env":["PATH=/bin","FOO=img"],"Entrypoint":["/bin/tool"],"Cmd":["--flag"],"WorkingDir":"/etc","User":"0:0"},
  "rootfs":{"type":"layers","diff_ids":[]}}"#;

/// A docker-archive (`docker save` shape) of `layers`, the second gzip'd.
fn docker_archive(layers: &[Vec<u8>]) -> Vec<u8> {
    docker_archive_with(layers, CONFIG)
}

/// [`docker_archive`] with its own image config.
fn docker_archive_with(layers: &[Vec<u8>], config: &str) -> Vec<u8> {
    let mut members = vec![];
    let mut names = vec![];
    for (i, layer) in layers.iter().enumerate() {
        let name = format!("l{i}/layer.tar");
        members.push((name.clone(), if i == 1 { gzip(layer) } else { layer.clone() }));
        names.push(name);
    }
    let manifest = serde_json::json!([{ "Config": "cfg.json", "RepoTags": ["t:1"], "Layers": names }]);
    members.push(("manifest.json".into(), serde_json::to_vec(&manifest).unwrap()));
    members.push(("cfg.json".into(), config.as_bytes().to_vec()));
    let refs: Vec<(&str, Vec<u8>)> = members.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    tarball(&refs)
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_LAYER_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// The blobs of an OCI image layout being put together: (`alg/hex` path under blobs/, data).
#[derive(Default)]
struct Blobs(Vec<(String, Vec<u8>)>);

impl Blobs {
    /// Stores `data`; returns its descriptor.
    fn add(&mut self, media_type: &str, data: Vec<u8>) -> serde_json::Value {
        let desc = serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{}", sha(&data)), "size": data.len()});
        self.0.push((format!("sha256/{}", sha(&data)), data));
        desc
    }

    /// Stores an image manifest (of `media_type`) of CONFIG and `layers` (descriptors).
    fn manifest(&mut self, media_type: &str, layers: Vec<serde_json::Value>) -> serde_json::Value {
        let config = self.add("application/vnd.oci.image.config.v1+json", CONFIG.as_bytes().to_vec());
        let manifest =
            serde_json::json!({"schemaVersion": 2, "mediaType": media_type, "config": config, "layers": layers});
        self.add(media_type, serde_json::to_vec(&manifest).unwrap())
    }

    /// Stores an image index (of `media_type`) of `manifests`.
    fn index(&mut self, media_type: &str, manifests: Vec<serde_json::Value>) -> serde_json::Value {
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests});
        self.add(media_type, serde_json::to_vec(&index).unwrap())
    }

    /// The layout tarball: `index.json` listing `manifests`, the blobs and `extra` members.
    fn layout(self, manifests: Vec<serde_json::Value>, extra: Vec<(String, Vec<u8>)>) -> Vec<u8> {
        let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        let mut members: Vec<(String, Vec<u8>)> = vec![
            ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            ("index.json".into(), serde_json::to_vec(&index).unwrap()),
        ];
        members.extend(self.0.into_iter().map(|(p, d)| (format!("blobs/{p}"), d)));
        members.extend(extra);
        let refs: Vec<(&str, Vec<u8>)> = members.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
        tarball(&refs)
    }
}

/// Stores `layers` as blobs, the first gzip'd; returns their descriptors.
fn oci_layers(blobs: &mut Blobs, layers: &[Vec<u8>]) -> Vec<serde_json::Value> {
    let store = |(i, layer): (usize, &Vec<u8>)| {
        if i == 0 {
            blobs.add(OCI_LAYER_GZ, gzip(layer))
        } else {
            blobs.add(OCI_LAYER, layer.clone())
        }
    };
    layers.iter().enumerate().map(store).collect()
}

/// An OCI image layout tarball of `layers`, the first gzip'd.
fn oci_archive(layers: &[Vec<u8>]) -> Vec<u8> {
    let mut blobs = Blobs::default();
    let descs = oci_layers(&mut blobs, layers);
    let manifest = blobs.manifest(OCI_MANIFEST, descs);
    blobs.layout(vec![manifest], vec![])
}

fn two_layers() -> Vec<Vec<u8>> {
    use tar::EntryType::{Directory as D, Regular as F, Symlink as L};
    vec![
        tar_of(&[
            ("bin/", D, ""),
            ("bin/tool", F, "#!/bin/sh\n"),
            ("etc/", D, ""),
            ("etc/gone", F, "deleted by the upper layer"),
            ("etc/kept", F, "kept"),
            ("opq/", D, ""),
            ("opq/old", F, "hidden by the opaque marker"),
            ("opq/sub/", D, ""),
            ("opq/sub/deep", F, "also hidden"),
            ("lib", L, "usr/lib"),
            ("usr/lib/", D, ""),
        ]),
        tar_of(&[
            ("etc/.wh.gone", F, ""),
            ("opq/", D, ""),
            ("opq/new", F, "upper"),
            ("opq/.wh..wh..opq", F, ""),
            ("lib/libx.so", F, "through the merged-usr link"),
        ]),
    ]
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

fn check_two_layer_bundle(out: &Path) {
    let root = out.join("rootfs");
    assert!(!root.join("etc/gone").exists(), "whiteout deleted the lower file");
    assert!(!root.join("etc/.wh.gone").exists(), "whiteouts are not files");
    assert_eq!(fs::read_to_string(root.join("etc/kept")).unwrap(), "kept");
    assert_eq!(names(&root.join("opq")), ["new"], "the opaque dir holds only the upper content");
    assert_eq!(fs::read_to_string(root.join("usr/lib/libx.so")).unwrap(), "through the merged-usr link");
    assert!(fs::symlink_metadata(root.join("lib")).unwrap().file_type().is_symlink());

    let config: serde_json::Value = serde_json::from_slice(&fs::read(out.join("config.json")).unwrap()).unwrap();
    let p = &config["process"];
    assert_eq!(p["args"], serde_json::json!(["/bin/tool", "--flag"]), "Entrypoint + Cmd");
    assert_eq!(p["env"], serde_json::json!(["PATH=/bin", "FOO=flag"]), "image Env, --env wins");
    assert_eq!(p["cwd"], "/etc");
    assert_eq!(config["root"]["path"], s(&fs::canonicalize(&root).unwrap()));
}

#[test]
fn docker_archive_layers_and_whiteouts() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    fs::write(&archive, docker_archive(&two_layers())).unwrap();
    let out = dir.path().join("bundle");
    let o = ok(&["bundle", "--from-archive", s(&archive), "-o", s(&out), "--env", "FOO=flag"], &[]);
    assert!(stderr(&o).contains("docker-archive"), "{}", stderr(&o));
    check_two_layer_bundle(&out);

    // The same image, gzip'd as a whole (`docker save | gzip`).
    let gz = dir.path().join("img.tar.gz");
    fs::write(&gz, gzip(&fs::read(&archive).unwrap())).unwrap();
    let out2 = dir.path().join("bundle2");
    ok(&["bundle", "--from-archive", s(&gz), "-o", s(&out2), "--env", "FOO=flag"], &[]);
    check_two_layer_bundle(&out2);
}

#[test]
fn oci_layout_archive() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("oci.tar");
    fs::write(&archive, oci_archive(&two_layers())).unwrap();
    let out = dir.path().join("bundle");
    let o = ok(&["bundle", "--from-archive", s(&archive), "-o", s(&out), "--env", "FOO=flag"], &[]);
    assert!(stderr(&o).contains("OCI image layout"), "{}", stderr(&o));
    check_two_layer_bundle(&out);
    // Explicit flags replace the image's process.
    let out = dir.path().join("bundle-flags");
    ok(&["bundle", "--from-archive", s(&archive), "-o", s(&out), "--cwd", "/", "--args", "echo", "x"], &[]);
    let config: serde_json::Value = serde_json::from_slice(&fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["args"], serde_json::json!(["echo", "x"]));
    assert_eq!(config["process"]["cwd"], "/");
}

#[test]
fn corrupted_oci_blob_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = oci_archive(&two_layers());
    // Flip a byte inside the plain second layer's data ("upper" -> "Upper").
    let pos = bytes.windows(5).position(|w| w == b"upper").unwrap();
    bytes[pos] = b'U';
    let archive = dir.path().join("bad.tar");
    fs::write(&archive, bytes).unwrap();
    let out = dir.path().join("bundle");
    let err = fails(&["bundle", "--from-archive", s(&archive), "-o", s(&out)]);
    assert!(err.contains("does not match its digest"), "{err}");
    assert!(!out.exists(), "a failed build leaves no output");
}

/// Every path under `dir`, relative.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn absolute_and_climbing_names_are_written_inside_as_containerd_does() {
    use tar::EntryType::{Link as H, Regular as F};
    let cases = [
        ("../../evil-dotdot", "evil-dotdot", true),
        ("../../../evil-dotdot", "evil-dotdot", true),
        ("/evil-absolute", "evil-absolute", false),
        ("/etc/evil-absolute", "etc/evil-absolute", false),
        ("a/../../../evil-mixed", "evil-mixed", true),
        ("a/b/../../evil-lexical", "evil-lexical", false),
    ];
    for (evil, inside, climbs) in cases {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("evil.tar");
        let layer = tar_of(&[("ok", F, "fine"), (evil, F, "pwned"), ("hard", H, evil)]);
        fs::write(&archive, docker_archive(&[layer])).unwrap();
        let out = dir.path().join("work/out");
        let o = ok(&["bundle", "--from-archive", s(&archive), "-o", s(&out)], &[]);
        let root = out.join("rootfs");
        assert_eq!(fs::read_to_string(root.join(inside)).unwrap(), "pwned", "{evil}");
        assert_eq!(fs::read_to_string(root.join("hard")).unwrap(), "pwned", "{evil}: a link to the same name");
        assert_eq!(stderr(&o).contains("climbed above the root"), climbs, "{evil}: {}", stderr(&o));
        let beside: Vec<String> = walk(dir.path()).into_iter().filter(|p| !p.starts_with("work/out")).collect();
        assert_eq!(beside, ["evil.tar", "work"], "{evil}: nothing written beside the bundle");
        let name = evil.rsplit('/').next().unwrap();
        assert!(!Path::new("/").join(name).exists() && !Path::new("/tmp").join(name).exists());
    }
}

#[test]
fn symlink_then_write_stays_inside() {
    use tar::EntryType::{Regular as F, Symlink as L};
    let dir = tempfile::tempdir().unwrap();
    // A unique target name in /tmp, so a write through the link would be visible there.
    let target = format!("/tmp/wisp-evil-{}", std::process::id());
    let _ = fs::remove_dir_all(&target);
    let layer1 = tar_of(&[("link", L, &target), ("rel", L, "../../../../../../tmp")]);
    let layer2 = tar_of(&[("link/file", F, "through the link"), ("rel/wisp-evil-rel", F, "relative")]);
    let archive = dir.path().join("evil.tar");
    fs::write(&archive, docker_archive(&[layer1, layer2])).unwrap();
    let out = dir.path().join("out");
    ok(&["bundle", "--from-archive", s(&archive), "-o", s(&out)], &[]);
    assert!(!Path::new(&target).exists(), "{target} was written through the symlink");
    assert!(!Path::new("/tmp/wisp-evil-rel").exists());
    let root = out.join("rootfs");
    assert_eq!(fs::read_link(root.join("link")).unwrap(), Path::new(&target), "the link is kept as is");
    let inside = root.join(target.trim_start_matches('/')).join("file");
    assert_eq!(fs::read_to_string(inside).unwrap(), "through the link");
    assert_eq!(fs::read_to_string(root.join("tmp/wisp-evil-rel")).unwrap(), "relative");
    assert_eq!(names(dir.path()), ["evil.tar", "out"]);
}

#[test]
fn busybox_bundle_shape() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bb");
    let o = ok(
        &[
            "bundle",
            "--from",
            "busybox",
            "-o",
            s(&out),
            "--hostname",
            "h1",
            "--terminal",
            "--readonly",
            "--device",
            "/dev/vda:b:241:0",
            "--mount",
            "type=bind,src=/srv,dst=/data,options=ro",
            "--user",
            "65534",
            "--args",
            "sh",
            "-c",
            "id -u",
        ],
        &[],
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("ctr run --rm --runtime io.containerd.runc.v2 --config"));
    let root = out.join("rootfs");
    assert!(fs::symlink_metadata(root.join("bin/sh")).unwrap().file_type().is_symlink());
    assert!(root.join("bin/busybox").is_file());
    assert!(root.join("etc/passwd").is_file());
    let c: serde_json::Value = serde_json::from_slice(&fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(c["hostname"], "h1");
    assert_eq!(c["root"]["readonly"], true);
    assert_eq!(c["process"]["terminal"], true);
    assert_eq!(c["process"]["args"], serde_json::json!(["sh", "-c", "id -u"]));
    assert_eq!(c["process"]["user"]["uid"], 65534);
    assert_eq!(c["process"]["user"]["gid"], 65534, "primary group from the rootfs's /etc/passwd");
    assert!(c["process"]["env"].as_array().unwrap().contains(&"TERM=xterm".into()));
    assert_eq!(c["linux"]["devices"][0]["type"], "b");
    let data = c["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/data").unwrap();
    assert_eq!(data["options"], serde_json::json!(["rbind", "ro"]));
    assert!(Path::new(c["root"]["path"].as_str().unwrap()).is_absolute());

    // A second build into the same (now full) directory is refused and leaves it alone.
    let err = fails(&["bundle", "--from", "busybox", "-o", s(&out)]);
    assert!(err.contains("not empty"), "{err}");
    assert!(out.join("config.json").exists());
}

/// A path of another user: an empty directory (or file) chowned to nobody when the tests run
/// as root; unprivileged, root's `/` stands in for it. With the uid it belongs to.
fn someone_elses(dir: &Path, name: &str, file: bool) -> (std::path::PathBuf, u32) {
    if !nix::unistd::geteuid().is_root() {
        return ("/".into(), 0);
    }
    let path = dir.join(name);
    if file {
        fs::write(&path, b"theirs").unwrap();
    } else {
        fs::create_dir(&path).unwrap();
    }
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    (path, 65534)
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_bundle_is_private_to_the_caller_and_keeps_its_files_modes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new/bb");
    ok(&["bundle", "--from", "busybox", "-o", s(&out)], &[]);
    assert_eq!(mode(&out), 0o700, "no other local user reaches the tree");
    assert_eq!(mode(&out.join("rootfs")), 0o755, "the container's / keeps its mode");
    assert_eq!(mode(&out.join("rootfs/bin/busybox")), 0o755);
    assert_eq!(mode(&out.join("rootfs/tmp")), 0o1777);

    // An empty directory the caller made (umask modes) is made private too.
    let mine = dir.path().join("mine");
    fs::create_dir(&mine).unwrap();
    fs::set_permissions(&mine, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    ok(&["bundle", "--from", "busybox", "-o", s(&mine)], &[]);
    assert_eq!(mode(&mine), 0o700);
}

#[test]
fn an_output_of_another_user_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (theirs, uid) = someone_elses(dir.path(), "theirs", false);
    let err = fails(&["bundle", "--from", "busybox", "-o", s(&theirs)]);
    assert!(err.contains(&format!("output {} belongs to uid {uid}", theirs.display())), "{err}");
    assert!(err.contains("not to the caller"), "{err}");
    if uid != 0 {
        assert_eq!(fs::read_dir(&theirs).unwrap().count(), 0, "nothing written into it");
    }

    let (file, uid) = someone_elses(dir.path(), "theirs.tar", true);
    let err = fails(&["oci-image", "--from", "busybox", "--name", "x:1", "-o", s(&file)]);
    assert!(err.contains(&format!("output {} belongs to uid {uid}", file.display())), "{err}");
    if uid != 0 {
        assert_eq!(fs::read(&file).unwrap(), b"theirs", "not replaced");
    }
}

#[test]
fn missing_busybox_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bb");
    let err = fails(&["bundle", "--from", "busybox", "--busybox-bin", "/nonexistent/busybox", "-o", s(&out)]);
    assert!(err.contains("/nonexistent/busybox not found") && err.contains("busybox-static"), "{err}");
    assert!(!out.exists());
    let img = dir.path().join("i.tar");
    let err = fails(&[
        "oci-image",
        "--from",
        "busybox",
        "--busybox-bin",
        "/nonexistent/busybox",
        "--name",
        "x",
        "-o",
        s(&img),
    ]);
    assert!(err.contains("busybox-static"), "{err}");
    assert!(!img.exists());
    // A dynamic binary is not a usable busybox either.
    let err = fails(&["bundle", "--from", "busybox", "--busybox-bin", "/bin/ls", "-o", s(&out)]);
    assert!(err.contains("dynamically linked"), "{err}");
}

#[test]
fn a_tarball_that_is_not_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("notimage.tar");
    fs::write(&archive, tarball(&[("README", b"hello".to_vec()), ("src/main.rs", b"fn main() {}".to_vec())])).unwrap();
    let out = dir.path().join("b");
    let err = fails(&["bundle", "--from-archive", s(&archive), "-o", s(&out)]);
    assert!(err.contains("is not a container image archive"), "{err}");
    assert!(err.contains("manifest.json") && err.contains("index.json") && err.contains("README"), "{err}");
    let text = dir.path().join("text.tar");
    fs::write(&text, "not a tarball\n".repeat(100)).unwrap();
    let err = fails(&["bundle", "--from-archive", s(&text), "-o", s(&out)]);
    assert!(err.contains("is not a container image archive"), "{err}");
    let err = fails(&["bundle", "--from-archive", s(&dir.path().join("missing.tar")), "-o", s(&out)]);
    assert!(err.contains("missing.tar"), "{err}");
    assert!(!out.exists());
}

/// The members of a tar file and their mtimes.
fn members(path: &Path) -> BTreeMap<String, (u64, Vec<u8>)> {
    let data = fs::read(path).unwrap();
    let mut a = tar::Archive::new(data.as_slice());
    let mut out = BTreeMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let mut d = vec![];
        e.read_to_end(&mut d).unwrap();
        out.insert(e.path().unwrap().to_string_lossy().into_owned(), (e.header().mtime().unwrap(), d));
    }
    out
}

#[test]
fn oci_image_is_deterministic_and_honours_source_date_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let build = |name: &str, env: &[(&str, &str)]| {
        let out = dir.path().join(name);
        ok(&["oci-image", "--from", "busybox", "--name", "wisp-bb:test", "-o", s(&out), "--args", "echo", "hi"], env);
        fs::read(out).unwrap()
    };
    let a = build("a.tar", &[]);
    let b = build("b.tar", &[]);
    assert_eq!(a, b, "two builds give the same bytes");
    let e1 = build("e1.tar", &[("SOURCE_DATE_EPOCH", "1700000000")]);
    let e2 = build("e2.tar", &[("SOURCE_DATE_EPOCH", "1700000000")]);
    assert_eq!(e1, e2);
    assert_ne!(a, e1, "SOURCE_DATE_EPOCH changes the stamps");

    let m = members(&dir.path().join("e1.tar"));
    assert!(m.values().all(|(t, _)| *t == 1_700_000_000), "outer entries stamped");
    let index: serde_json::Value = serde_json::from_slice(&m["index.json"].1).unwrap();
    let ann = &index["manifests"][0]["annotations"];
    assert_eq!(ann["io.containerd.image.name"], "docker.io/library/wisp-bb:test");
    assert_eq!(ann["org.opencontainers.image.ref.name"], "test");
    let blob = |d: &serde_json::Value| m[&format!("blobs/sha256/{}", &d.as_str().unwrap()[7..])].1.clone();
    let manifest: serde_json::Value = serde_json::from_slice(&blob(&index["manifests"][0]["digest"])).unwrap();
    let gz = blob(&manifest["layers"][0]["digest"]);
    let mut layer = vec![];
    flate2::read::GzDecoder::new(gz.as_slice()).read_to_end(&mut layer).unwrap();
    let mut a = tar::Archive::new(layer.as_slice());
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        assert_eq!(e.header().mtime().unwrap(), 1_700_000_000, "{:?}", e.path());
        assert_eq!((e.header().uid().unwrap(), e.header().gid().unwrap()), (0, 0));
    }
    let config: serde_json::Value = serde_json::from_slice(&blob(&manifest["config"]["digest"])).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0], format!("sha256:{}", sha(&layer)));
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["echo", "hi"]));
    // The same blobs as a docker-archive, for `docker load`.
    let docker: serde_json::Value = serde_json::from_slice(&m["manifest.json"].1).unwrap();
    let path = |d: &serde_json::Value| format!("blobs/sha256/{}", &d.as_str().unwrap()[7..]);
    assert_eq!(docker[0]["RepoTags"], serde_json::json!(["wisp-bb:test"]));
    assert_eq!(docker[0]["Config"], path(&manifest["config"]["digest"]));
    assert_eq!(docker[0]["Layers"], serde_json::json!([path(&manifest["layers"][0]["digest"])]));

    // The image is also a valid --from-archive input.
    let out = dir.path().join("bundle");
    ok(&["bundle", "--from-archive", s(&dir.path().join("a.tar")), "-o", s(&out)], &[]);
    assert!(out.join("rootfs/bin/busybox").is_file());
}

#[test]
fn bad_image_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("i.tar");
    let err = fails(&["oci-image", "--from", "busybox", "--name", "Upper/Case", "-o", s(&out)]);
    assert!(err.contains("NAME[:TAG]"), "{err}");
    assert!(!out.exists());
}

#[test]
fn oci_image_add_file_puts_host_files_in_the_image() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("pause");
    fs::write(&host, b"\x7fELF not really").unwrap();
    let img = dir.path().join("p.tar");
    let add = format!("{}:/pause", host.display());
    ok(
        &["oci-image", "--from", "busybox", "--name", "p:1", "--add-file", &add, "-o", s(&img), "--args", "/pause"],
        &[],
    );
    let out = dir.path().join("bundle");
    ok(&["bundle", "--from-archive", s(&img), "-o", s(&out)], &[]);
    assert_eq!(fs::read(out.join("rootfs/pause")).unwrap(), b"\x7fELF not really");
    assert_eq!(fs::metadata(out.join("rootfs/pause")).unwrap().permissions().mode() & 0o777, 0o755);
    let config: serde_json::Value = serde_json::from_slice(&fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["args"], serde_json::json!(["/pause"]));

    for bad in ["no-colon", "host:relative", ":/empty-host"] {
        let err = fails(&["oci-image", "--from", "busybox", "--name", "p:1", "--add-file", bad, "-o", s(&img)]);
        assert!(err.contains("HOST:PATH"), "{bad}: {err}");
    }
    let err =
        fails(&["oci-image", "--from", "busybox", "--name", "p:1", "--add-file", "/nonexistent:/x", "-o", s(&img)]);
    assert!(err.contains("/nonexistent"), "{err}");
}

/// This machine's OCI architecture and another one.
fn host_and_other_arch() -> (&'static str, &'static str) {
    if cfg!(target_arch = "aarch64") {
        ("arm64", "amd64")
    } else {
        ("amd64", "arm64")
    }
}

/// `desc` with a platform.
fn on(mut desc: serde_json::Value, os: &str, arch: &str) -> serde_json::Value {
    desc["platform"] = serde_json::json!({"os": os, "architecture": arch});
    desc
}

#[test]
fn docker_save_with_a_repeated_layer_linked_to_its_first_copy() {
    // `docker save` writes a layer it already wrote (same diff ID, e.g. two empty layers) as a
    // symlink to the first copy; `tar -C dir -cf x .` prefixes every name with `./`.
    let layers = two_layers();
    let empty = tar_of(&[]);
    let manifest = serde_json::json!([{ "Config": "cfg.json", "RepoTags": ["t:1"],
        "Layers": ["l0/layer.tar", "e0/layer.tar", "l1/layer.tar", "e1/layer.tar", "e2/layer.tar"] }]);
    let bytes = tarball_with_links(
        &[
            ("./l0/layer.tar", layers[0].clone()),
            ("./e0/layer.tar", empty),
            ("./l1/layer.tar", gzip(&layers[1])),
            ("./manifest.json", serde_json::to_vec(&manifest).unwrap()),
            ("./cfg.json", CONFIG.as_bytes().to_vec()),
        ],
        &[
            ("./e1/layer.tar", tar::EntryType::Symlink, "../e0/layer.tar"),
            ("./e2/layer.tar", tar::EntryType::Link, "./e0/layer.tar"),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    fs::write(&archive, bytes).unwrap();
    let out = dir.path().join("bundle");
    let o = ok(&["bundle", "--from-archive", s(&archive), "-o", s(&out), "--env", "FOO=flag"], &[]);
    assert!(stderr(&o).contains("applied 5 layer(s)"), "{}", stderr(&o));
    check_two_layer_bundle(&out);
}

/// The docker 25+ `docker save` shape: an OCI layout whose index.json names a multi-platform
/// index (this machine's image, another platform's, and a buildx attestation), plus the
/// legacy manifest.json pointing into blobs/. `platforms` are the (os, arch) of the images.
fn docker25_archive(platforms: &[(&str, &str)]) -> Vec<u8> {
    let mut blobs = Blobs::default();
    let mut entries = vec![];
    let mut legacy_layers = vec![];
    for (os, arch) in platforms {
        let descs = oci_layers(&mut blobs, &two_layers());
        legacy_layers = descs.iter().map(|d| format!("blobs/sha256/{}", &d["digest"].as_str().unwrap()[7..])).collect();
        entries.push(on(blobs.manifest(OCI_MANIFEST, descs), os, arch));
    }
    let sbom = blobs.add("application/vnd.in-toto+json", b"{}".to_vec());
    entries.push(on(blobs.manifest(OCI_MANIFEST, vec![sbom]), "unknown", "unknown"));
    let index = blobs.index(OCI_INDEX, entries);
    let manifest = serde_json::json!([{ "Config": "blobs/sha256/unused", "Layers": legacy_layers }]);
    blobs.layout(vec![index], vec![("manifest.json".into(), serde_json::to_vec(&manifest).unwrap())])
}

#[test]
fn docker_25_save_picks_this_platform_and_names_the_others_when_absent() {
    let (host, other) = host_and_other_arch();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    fs::write(&archive, docker25_archive(&[("linux", other), ("linux", host)])).unwrap();
    let out = dir.path().join("bundle");
    let o = ok(&["bundle", "--from-archive", s(&archive), "-o", s(&out), "--env", "FOO=flag"], &[]);
    assert!(stderr(&o).contains("OCI image layout"), "{}", stderr(&o));
    check_two_layer_bundle(&out);

    // `ctr images export --platform linux/OTHER`: the index lists both, only OTHER's blobs are in.
    let mut blobs = Blobs::default();
    let descs = oci_layers(&mut blobs, &two_layers());
    let theirs = on(blobs.manifest(OCI_MANIFEST, descs), "linux", other);
    let mut missing = Blobs::default();
    let descs = oci_layers(&mut missing, &[tar_of(&[("only-here", tar::EntryType::Regular, "")])]);
    let ours = on(missing.manifest(OCI_MANIFEST, descs), "linux", host);
    let index = blobs.index(OCI_INDEX, vec![theirs, ours]);
    fs::write(&archive, blobs.layout(vec![index], vec![])).unwrap();
    let err = fails(&["bundle", "--from-archive", s(&archive), "-o", s(&dir.path().join("bundle3"))]);
    assert!(err.contains(&format!("manifest for linux/{host}")) && err.contains("not in the archive"), "{err}");

    fs::write(&archive, docker25_archive(&[("linux", other), ("windows", host)])).unwrap();
    let out = dir.path().join("bundle2");
    let err = fails(&["bundle", "--from-archive", s(&archive), "-o", s(&out)]);
    assert!(err.contains(&format!("no manifest for linux/{host}")), "{err}");
    assert!(err.contains(&format!("linux/{other}, windows/{host}")) && !err.contains("unknown"), "{err}");
    assert!(!out.exists());
}

#[test]
fn docker_media_types_and_a_manifest_list() {
    let (host, _) = host_and_other_arch();
    let mut blobs = Blobs::default();
    let layers = two_layers();
    let descs = vec![
        blobs.add("application/vnd.docker.image.rootfs.diff.tar.gzip", gzip(&layers[0])),
        blobs.add("application/vnd.docker.image.rootfs.diff.tar", layers[1].clone()),
    ];
    let manifest = blobs.manifest("application/vnd.docker.distribution.manifest.v2+json", descs);
    let list =
        blobs.index("application/vnd.docker.distribution.manifest.list.v2+json", vec![on(manifest, "linux", host)]);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    fs::write(&archive, blobs.layout(vec![list], vec![])).unwrap();
    let out = dir.path().join("bundle");
    ok(&["bundle", "--from-archive", s(&archive), "-o", s(&out), "--env", "FOO=flag"], &[]);
    check_two_layer_bundle(&out);
}

/// An OCI layout of one manifest listing `layer` as one layer of `media_type` and `digest`
/// (`alg:hex`), stored under that digest; `edit` may then change the blobs.
fn oci_with(layer: &[u8], media_type: &str, digest: &str, edit: impl FnOnce(&mut Blobs)) -> Vec<u8> {
    let mut blobs = Blobs::default();
    blobs.0.push((digest.replace(':', "/"), layer.to_vec()));
    let desc = serde_json::json!({"mediaType": media_type, "digest": digest, "size": layer.len()});
    let manifest = blobs.manifest(OCI_MANIFEST, vec![desc]);
    edit(&mut blobs);
    blobs.layout(vec![manifest], vec![])
}

#[test]
fn blobs_that_are_not_what_their_descriptor_says_are_refused() {
    let layer = two_layers().remove(0);
    let sha256 = format!("sha256:{}", sha(&layer));
    let sha512 = |data: &[u8]| -> String { Sha512::digest(data).iter().map(|b| format!("{b:02x}")).collect() };
    let text = b"plain text, not a tar stream".repeat(40);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a Helm chart",
            oci_with(&layer, "application/vnd.cncf.helm.chart.content.v1.tar+gzip", &sha256, |_| {}),
            "is not a file system layer",
        ),
        (
            "a config blob changed after its digest was taken",
            oci_with(&layer, OCI_LAYER, &sha256, |b| {
                let config = b.0.iter_mut().find(|(_, d)| d.as_slice() == CONFIG.as_bytes()).unwrap();
                config.1 = CONFIG.replace("img", "IMG").into_bytes();
            }),
            "does not match its digest",
        ),
        (
            "a sha512 layer that does not match",
            oci_with(&layer, OCI_LAYER, &format!("sha512:{}", sha512(b"other")), |_| {}),
            "does not match its digest",
        ),
        (
            "a digest algorithm nobody can check",
            oci_with(&layer, OCI_LAYER, &format!("md5:{}", &sha(&layer)[..32]), |_| {}),
            "digest algorithm",
        ),
        (
            "a layer that is not a tar",
            oci_with(&text, OCI_LAYER, &format!("sha256:{}", sha(&text)), |_| {}),
            "is not a valid tar stream",
        ),
    ];
    for (what, bytes, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("img.tar");
        fs::write(&archive, bytes).unwrap();
        let out = dir.path().join("bundle");
        let err = fails(&["bundle", "--from-archive", s(&archive), "-o", s(&out)]);
        assert!(err.contains(expected), "{what}: {err}");
        assert!(!out.exists(), "{what}");
    }
    // A matching sha512 layer is fine.
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    fs::write(&archive, oci_with(&layer, OCI_LAYER, &format!("sha512:{}", sha512(&layer)), |_| {})).unwrap();
    ok(&["bundle", "--from-archive", s(&archive), "-o", s(&dir.path().join("bundle"))], &[]);
}

#[test]
fn an_image_without_layers_or_command_builds_and_says_so() {
    let mut blobs = Blobs::default();
    let config = br#"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config = blobs.add("application/vnd.oci.image.config.v1+json", config.to_vec());
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": []});
    let manifest = blobs.add(OCI_MANIFEST, serde_json::to_vec(&manifest).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    fs::write(&archive, blobs.layout(vec![manifest], vec![])).unwrap();
    let out = dir.path().join("bundle");
    let o = ok(&["bundle", "--from-archive", s(&archive), "-o", s(&out)], &[]);
    let err = stderr(&o);
    assert!(err.contains("no layers") && err.contains("no Entrypoint or Cmd"), "{err}");
    assert!(names(&out.join("rootfs")).is_empty());
    let config: serde_json::Value = serde_json::from_slice(&fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["args"], serde_json::json!(["sh"]));
}

#[test]
fn a_truncated_archive_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    for mut bytes in [docker_archive(&two_layers()), oci_archive(&two_layers())] {
        // Cut inside a member, as an interrupted download would: once in its data, once in
        // the padding after it.
        let mut padding_cut = bytes.clone();
        padding_cut.truncate(700);
        fs::write(&archive, &padding_cut).unwrap();
        let err = fails(&["bundle", "--from-archive", s(&archive), "-o", s(&dir.path().join("b"))]);
        assert!(err.contains("the archive is truncated"), "{err}");
        let half = bytes.len() / 2;
        bytes.truncate(half);
        fs::write(&archive, &bytes).unwrap();
        let err = fails(&["bundle", "--from-archive", s(&archive), "-o", s(&dir.path().join("b"))]);
        assert!(err.contains("the archive is truncated"), "{err}");
    }
}

#[test]
fn layers_are_checked_against_the_configs_diff_ids() {
    let layers = two_layers();
    let diff_ids: Vec<String> = layers.iter().map(|l| format!("sha256:{}", sha(l))).collect();
    let config = CONFIG.replace(r#""diff_ids":[]"#, &format!(r#""diff_ids":{}"#, serde_json::json!(diff_ids)));
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    fs::write(&archive, docker_archive_with(&layers, &config)).unwrap();
    ok(&["bundle", "--from-archive", s(&archive), "-o", s(&dir.path().join("good")), "--env", "FOO=flag"], &[]);
    check_two_layer_bundle(&dir.path().join("good"));

    // A docker-archive has no other digest: a flipped byte in a plain layer is caught here.
    let mut bytes = docker_archive_with(&layers, &config);
    let pos = bytes.windows(10).position(|w| w == b"deleted by").unwrap();
    bytes[pos] = b'D';
    fs::write(&archive, bytes).unwrap();
    let out = dir.path().join("bad");
    let err = fails(&["bundle", "--from-archive", s(&archive), "-o", s(&out)]);
    assert!(err.contains("does not match its digest"), "{err}");
    assert!(!out.exists());

    // The compressed blob of an OCI layer is checked too, gzip or zstd.
    let zstd_layer = zstd::encode_all(layers[0].as_slice(), 3).unwrap();
    for (data, media_type) in
        [(gzip(&layers[0]), OCI_LAYER_GZ), (zstd_layer, "application/vnd.oci.image.layer.v1.tar+zstd")]
    {
        let wrong = format!("sha256:{}", sha(b"something else"));
        fs::write(&archive, oci_with(&data, media_type, &wrong, |_| {})).unwrap();
        let err = fails(&["bundle", "--from-archive", s(&archive), "-o", s(&out)]);
        assert!(err.contains("does not match its digest"), "{media_type}: {err}");
    }
}

#[test]
fn an_archive_of_several_images_is_refused_unless_image_names_one() {
    use tar::EntryType::Regular as F;
    let dir = tempfile::tempdir().unwrap();
    // `docker save alpine:3.20 example.com/bb:1 <id>`: three images, one saved by id.
    let mut members = vec![];
    let mut manifest = vec![];
    for (i, tags) in
        [serde_json::json!(["alpine:3.20"]), serde_json::json!(["example.com/bb:1"]), serde_json::Value::Null]
            .into_iter()
            .enumerate()
    {
        // An image is told apart by its config (docker's image id).
        members.push((format!("cfg{i}.json"), CONFIG.as_bytes().to_vec()));
        members.push((format!("l{i}.tar"), tar_of(&[(&format!("from-{i}"), F, "")])));
        let layers = [format!("l{i}.tar")];
        manifest.push(serde_json::json!({ "Config": format!("cfg{i}.json"), "RepoTags": tags, "Layers": layers }));
    }
    let manifest = serde_json::Value::Array(manifest);
    members.push(("manifest.json".into(), serde_json::to_vec(&manifest).unwrap()));
    let refs: Vec<(&str, Vec<u8>)> = members.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let archive = dir.path().join("saved.tar");
    fs::write(&archive, tarball(&refs)).unwrap();

    let out = dir.path().join("b");
    let err = fails(&["bundle", "--from-archive", s(&archive), "-o", s(&out)]);
    assert!(err.contains("manifest.json lists several images"), "{err}");
    assert!(err.contains("alpine:3.20, example.com/bb:1, an untagged image (cfg2.json)"), "{err}");
    assert!(err.contains("--image NAME[:TAG]"), "{err}");
    assert!(!out.exists());
    let err = fails(&["bundle", "--from-archive", s(&archive), "--image", "alpine", "-o", s(&out)]);
    assert!(err.contains("no image named alpine (docker.io/library/alpine:latest)"), "{err}");

    for (name, file) in [("example.com/bb:1", "from-1"), ("docker.io/library/alpine:3.20", "from-0")] {
        let out = dir.path().join(file);
        ok(&["bundle", "--from-archive", s(&archive), "--image", name, "-o", s(&out)], &[]);
        let names = names(&out.join("rootfs"));
        assert!(
            names.contains(&file.to_owned()) && names.iter().filter(|n| n.starts_with("from-")).count() == 1,
            "{names:?}"
        );
    }

    // `ctr images export out.tar a b`: an OCI layout naming two images in index.json.
    let mut blobs = Blobs::default();
    let mut entries = vec![];
    for (i, name) in ["docker.io/library/alpine:3.20", "example.com/bb:1"].iter().enumerate() {
        let descs = oci_layers(&mut blobs, &[tar_of(&[(&format!("oci-{i}"), F, "")])]);
        let mut desc = blobs.manifest(OCI_MANIFEST, descs);
        desc["annotations"] = serde_json::json!({ "io.containerd.image.name": name });
        entries.push(desc);
    }
    fs::write(&archive, blobs.layout(entries, vec![])).unwrap();
    let err = fails(&["bundle", "--from-archive", s(&archive), "-o", s(&dir.path().join("o"))]);
    assert!(err.contains("index.json lists several images: docker.io/library/alpine:3.20, example.com/bb:1"), "{err}");
    let out = dir.path().join("oci");
    ok(&["bundle", "--from-archive", s(&archive), "--image", "example.com/bb:1", "-o", s(&out)], &[]);
    assert!(out.join("rootfs/oci-1").exists() && !out.join("rootfs/oci-0").exists());
}
