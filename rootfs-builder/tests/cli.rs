//! End-to-end tests of the `rootfs-builder` binary: runs it as a user would and
//! reads the produced initrd back with the `cpio` crate's reader.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{cloud_module_tree, dir_names, run, tiny_static_elf, Fixture};

/// One archive entry as read back.
#[derive(Debug, Clone)]
struct Entry {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    ino: u32,
    mtime: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(args: &[&str]) -> Output {
    let o = run(args, &[]);
    assert!(o.status.success(), "{args:?} failed: {}", stderr(&o));
    o
}

/// Decompresses (by magic) and parses a newc archive, in archive order.
fn read_initrd(path: &Path) -> Vec<(String, Entry)> {
    let raw = fs::read(path).unwrap();
    let cpio = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).unwrap();
        out
    } else if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::decode_all(&raw[..]).unwrap()
    } else {
        raw
    };
    let mut rest = &cpio[..];
    let mut out = Vec::new();
    loop {
        let mut r = cpio::NewcReader::new(rest).unwrap();
        if r.entry().is_trailer() {
            rest = r.finish().unwrap();
            break;
        }
        let e = r.entry().clone();
        let mut data = Vec::new();
        r.read_to_end(&mut data).unwrap();
        out.push((
            e.name().to_owned(),
            Entry {
                mode: e.mode(),
                uid: e.uid(),
                gid: e.gid(),
                nlink: e.nlink(),
                ino: e.ino(),
                mtime: e.mtime(),
                rdev: (e.rdev_major(), e.rdev_minor()),
                data,
            },
        ));
        rest = r.finish().unwrap();
    }
    // Only zero padding after the trailer.
    assert!(rest.iter().all(|&b| b == 0));
    out
}

fn as_map(entries: &[(String, Entry)]) -> BTreeMap<String, Entry> {
    entries.iter().cloned().collect()
}

#[test]
fn an_initrd_over_another_users_file_is_refused() {
    let f = Fixture::new();
    if !nix::unistd::geteuid().is_root() {
        // Unprivileged, root's `/` stands in for another user's path.
        let o = run(&["initrd", "--agent", &f.p("agent"), "-o", "/"], &[]);
        assert!(stderr(&o).contains("output / belongs to uid 0"), "{}", stderr(&o));
        return;
    }
    let theirs = f.dir.path().join("theirs.img");
    fs::write(&theirs, b"theirs").unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
    let o = run(&["initrd", "--agent", &f.p("agent"), "-o", theirs.to_str().unwrap()], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&format!("output {} belongs to uid 65534", theirs.display())), "{}", stderr(&o));
    assert_eq!(fs::read(&theirs).unwrap(), b"theirs", "not replaced");
}

#[test]
fn same_inputs_same_bytes() {
    let f = Fixture::new();
    for compress in ["gzip", "zstd", "none"] {
        let (a, b) = (f.p(&format!("a.{compress}")), f.p(&format!("b.{compress}")));
        ok(&["initrd", "--agent", &f.p("agent"), "--compress", compress, "-o", &a]);
        ok(&["initrd", "--agent", &f.p("agent"), "--compress", compress, "-o", &b]);
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap(), "{compress}");
    }
    // gzip header: no name, mtime 0.
    let gz = fs::read(f.p("a.gzip")).unwrap();
    assert_eq!(&gz[..8], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);

    // SOURCE_DATE_EPOCH stamps every entry, deterministically.
    let e1 = f.p("epoch1");
    let e2 = f.p("epoch2");
    for out in [&e1, &e2] {
        let o = run(&["initrd", "--agent", &f.p("agent"), "-o", out], &[("SOURCE_DATE_EPOCH", "1700000000")]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(fs::read(&e1).unwrap(), fs::read(&e2).unwrap());
    assert_ne!(fs::read(&e1).unwrap(), fs::read(f.p("a.gzip")).unwrap());
    assert!(read_initrd(Path::new(&e1)).iter().all(|(_, e)| e.mtime == 1_700_000_000));
    assert!(read_initrd(Path::new(&f.p("a.gzip"))).iter().all(|(_, e)| e.mtime == 0));
}

#[test]
fn layout_of_agent_image() {
    let f = Fixture::new();
    let out = f.p("initrd.img");
    let o = ok(&["initrd", "--agent", &f.p("agent"), "-o", &out]);
    let err = stderr(&o);
    assert!(err.contains("initrd.img") && err.contains("9 entries"), "{err}");
    assert!(err.contains("uncompressed") && err.contains("gzip"), "{err}");

    let entries = read_initrd(Path::new(&out));
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, ["dev", "dev/console", "etc", "init", "proc", "root", "run", "sys", "tmp"]);
    for (i, (_, e)) in entries.iter().enumerate() {
        assert_eq!((e.uid, e.gid), (0, 0));
        assert_eq!(e.ino, i as u32 + 1);
    }
    let m = as_map(&entries);
    assert_eq!(m["init"].mode, 0o100755);
    assert_eq!(m["init"].data, tiny_static_elf());
    assert_eq!(m["init"].nlink, 1);
    assert_eq!(m["dev/console"].mode, 0o020600, "char device, 0600");
    assert_eq!(m["dev/console"].rdev, (5, 1));
    assert_eq!(m["tmp"].mode, 0o041777);
    for d in ["dev", "proc", "sys", "run", "etc", "root"] {
        assert_eq!(m[d].mode, 0o040755, "{d}");
        assert_eq!(m[d].nlink, 2, "{d}");
    }
}

#[test]
fn init_file_and_busybox() {
    let f = Fixture::new();
    let out = f.p("floor.img");
    let o = ok(&["initrd", "--init", &f.p("floor.sh"), "-o", &out]);
    assert!(stderr(&o).contains("/bin/sh"), "warns that /bin/sh is missing");
    let m = as_map(&read_initrd(Path::new(&out)));
    assert_eq!(m["init"].data, b"#!/bin/sh\necho floor\npoweroff -f\n");
    assert_eq!(m["init"].mode, 0o100755);

    assert!(Path::new("/bin/busybox").exists(), "busybox-static must be installed (apt-get install busybox-static)");
    let out = f.p("floor-bb.img");
    let o = ok(&["initrd", "--init", &f.p("floor.sh"), "--busybox", "--compress", "zstd", "-o", &out]);
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    let m = as_map(&read_initrd(Path::new(&out)));
    assert_eq!(m["bin/sh"].mode, 0o120777);
    assert_eq!(m["bin/sh"].data, b"/bin/busybox");
    assert_eq!(m["bin/busybox"].mode, 0o100755);
    assert_eq!(m["bin/busybox"].data, fs::read("/bin/busybox").unwrap());
    assert_eq!(m["init"].data, b"#!/bin/sh\necho floor\npoweroff -f\n", "/init untouched");
    assert!(m.contains_key("usr/bin/env") || m.contains_key("sbin/ifconfig"));
    // Every symlink points to busybox.
    for (name, e) in &m {
        if e.mode & 0o170000 == 0o120000 {
            assert_eq!(e.data, b"/bin/busybox", "{name}");
        }
    }
}

/// A fake module tree with modules.dep: a -> b -> c, and a compressed d -> c.
fn fake_tree(root: &Path) -> PathBuf {
    let v = root.join("lib/modules/9.9.9-fake");
    fs::create_dir_all(v.join("kernel/x")).unwrap();
    for m in ["a", "b", "c"] {
        fs::write(v.join(format!("kernel/x/{m}.ko")), format!("\x7fELF module {m}")).unwrap();
    }
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.write_all(b"\x7fELF module d").unwrap();
    fs::write(v.join("kernel/x/d-mod.ko.zst"), enc.finish().unwrap()).unwrap();
    fs::write(
        v.join("modules.dep"),
        "kernel/x/a.ko: kernel/x/b.ko kernel/x/c.ko\nkernel/x/b.ko: kernel/x/c.ko\n\
         kernel/x/c.ko:\nkernel/x/d-mod.ko.zst: kernel/x/c.ko\n",
    )
    .unwrap();
    fs::write(v.join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").unwrap();
    v
}

#[test]
fn modules_from_fake_tree() {
    let f = Fixture::new();
    let tree = tempfile::tempdir().unwrap();
    let v = fake_tree(tree.path());
    let out = f.p("m.img");
    // Pass the root directory (contains lib/modules/<version>/).
    let o = ok(&[
        "initrd",
        "--agent",
        &f.p("agent"),
        "--modules-from",
        &tree.path().to_string_lossy(),
        "--module",
        "a",
        "--module",
        "d_mod",
        "--module",
        "ext4",
        "-o",
        &out,
    ]);
    assert!(stderr(&o).contains("ext4 is built into"), "{}", stderr(&o));
    let m = as_map(&read_initrd(Path::new(&out)));
    let base = "lib/modules/9.9.9-fake";
    assert_eq!(
        String::from_utf8_lossy(&m[&format!("{base}/modules.dep")].data),
        "kernel/x/a.ko: kernel/x/b.ko kernel/x/c.ko\nkernel/x/b.ko: kernel/x/c.ko\n\
         kernel/x/c.ko:\nkernel/x/d-mod.ko: kernel/x/c.ko\n"
    );
    assert_eq!(m[&format!("{base}/modules.dep")].mode, 0o100644);
    assert_eq!(m[&format!("{base}/modules.builtin")].data, b"kernel/fs/ext4/ext4.ko\n");
    assert_eq!(m[&format!("{base}/kernel/x/d-mod.ko")].data, b"\x7fELF module d");
    assert_eq!(m[&format!("{base}/kernel/x/a.ko")].mode, 0o100644);
    assert!(!m.keys().any(|k| k.ends_with(".zst")));

    // Pointing at the version directory itself works the same.
    let out2 = f.p("m2.img");
    ok(&[
        "initrd",
        "--agent",
        &f.p("agent"),
        "--modules-from",
        &v.to_string_lossy(),
        "--module",
        "a,d-mod,ext4",
        "-o",
        &out2,
    ]);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&out2).unwrap());
}

#[test]
fn modules_from_real_tree() {
    let (real_tree, _) = cloud_module_tree();
    let f = Fixture::new();
    // Default module list, uncompressed (fast in debug builds).
    let out = f.p("real.cpio");
    let o = ok(&["initrd", "--agent", &f.p("agent"), "--modules-from", &real_tree, "--compress", "none", "-o", &out]);
    assert!(stderr(&o).contains("ext4 is built into"), "{}", stderr(&o));
    let m = as_map(&read_initrd(Path::new(&out)));
    let base = format!("{real_tree}/").trim_start_matches('/').to_owned();
    let dep = String::from_utf8(m[&format!("{base}modules.dep")].data.clone()).unwrap();
    for line in dep.lines() {
        let (module, deps) = line.split_once(':').unwrap();
        assert!(m.contains_key(&format!("{base}{module}")), "{module} shipped");
        for d in deps.split_whitespace() {
            assert!(m.contains_key(&format!("{base}{d}")), "{d} shipped");
        }
    }
    for ko in [
        "kernel/drivers/virtio/virtio_pci.ko",
        "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko",
        "kernel/fs/fuse/virtiofs.ko",
        "kernel/fs/overlayfs/overlay.ko",
    ] {
        let data = &m[&format!("{base}{ko}")].data;
        assert_eq!(data, &fs::read(format!("{real_tree}/{ko}")).unwrap(), "{ko}");
    }
    assert!(dep.contains(
        "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko \
         kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko \
         kernel/drivers/virtio/virtio_ring.ko\n"
    ));

    // One module, zstd: exactly its closure, and a kernel-friendly window.
    let out = f.p("real.zst");
    ok(&[
        "initrd",
        "--agent",
        &f.p("agent"),
        "--modules-from",
        &real_tree,
        "--module",
        "virtio_pci",
        "--compress",
        "zstd",
        "-o",
        &out,
    ]);
    let raw = fs::read(&out).unwrap();
    assert!(rootfs_builder::compress::zstd_window_size(&raw).unwrap() <= 8 << 20);
    let m = as_map(&read_initrd(Path::new(&out)));
    let mut kos: Vec<&str> = m.keys().filter(|k| k.ends_with(".ko")).map(|k| k.rsplit('/').next().unwrap()).collect();
    kos.sort();
    assert_eq!(
        kos,
        ["virtio.ko", "virtio_pci.ko", "virtio_pci_legacy_dev.ko", "virtio_pci_modern_dev.ko", "virtio_ring.ko"]
    );
}

/// A .deb built from real modules, xz-compressed like Debian trixie ships them,
/// without modules.dep (as Debian packages are).
#[test]
fn modules_from_deb() {
    let (real_tree, version) = cloud_module_tree();
    let f = Fixture::new();
    let xz = |data: &[u8]| {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let mut tar = tar::Builder::new(Vec::new());
    for ko in [
        "drivers/virtio/virtio_pci.ko",
        "drivers/virtio/virtio_pci_legacy_dev.ko",
        "drivers/virtio/virtio_pci_modern_dev.ko",
        "drivers/virtio/virtio.ko",
        "drivers/virtio/virtio_ring.ko",
        "drivers/block/virtio_blk.ko",
    ] {
        let data = xz(&fs::read(format!("{real_tree}/kernel/{ko}")).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        tar.append_data(&mut h, format!("./lib/modules/{version}/kernel/{ko}.xz"), &data[..]).unwrap();
    }
    let builtin = fs::read(format!("{real_tree}/modules.builtin")).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(builtin.len() as u64);
    h.set_cksum();
    tar.append_data(&mut h, format!("./lib/modules/{version}/modules.builtin"), &builtin[..]).unwrap();
    let data_tar = xz(&tar.into_inner().unwrap());
    let deb = f.dir.path().join("linux-image-test_amd64.deb");
    let mut ar = ar::Builder::new(fs::File::create(&deb).unwrap());
    ar.append(&ar::Header::new(b"debian-binary".to_vec(), 4), &b"2.0\n"[..]).unwrap();
    ar.append(&ar::Header::new(b"data.tar.xz".to_vec(), data_tar.len() as u64), &data_tar[..]).unwrap();
    drop(ar);

    let out = f.p("deb.img");
    ok(&[
        "initrd",
        "--agent",
        &f.p("agent"),
        "--modules-from",
        &deb.to_string_lossy(),
        "--module",
        "virtio_pci",
        "--module",
        "virtio_blk",
        "-o",
        &out,
    ]);
    let m = as_map(&read_initrd(Path::new(&out)));
    let base = format!("lib/modules/{version}");
    let dep = String::from_utf8(m[&format!("{base}/modules.dep")].data.clone()).unwrap();
    assert_eq!(dep.lines().count(), 6, "{dep}");
    let pci = dep.lines().find(|l| l.starts_with("kernel/drivers/virtio/virtio_pci.ko:")).unwrap();
    for d in ["virtio_pci_legacy_dev.ko", "virtio_pci_modern_dev.ko", "virtio.ko", "virtio_ring.ko"] {
        assert!(pci.contains(&format!("kernel/drivers/virtio/{d}")), "{pci}");
    }
    // virtio depends on virtio_ring, so virtio_ring is listed after it (loaded first).
    assert!(pci.find("virtio.ko").unwrap() < pci.find("virtio_ring.ko").unwrap(), "{pci}");
    assert_eq!(
        m[&format!("{base}/kernel/drivers/virtio/virtio_pci.ko")].data,
        fs::read(format!("{real_tree}/kernel/drivers/virtio/virtio_pci.ko")).unwrap()
    );
}

/// Runs a failing invocation in a fresh directory and checks it left nothing.
fn fails(f: &Fixture, args: &[&str], env: &[(&str, &str)], expect: &str) {
    let before = dir_names(f.dir.path());
    let o = run(args, env);
    let err = stderr(&o);
    assert!(!o.status.success(), "{args:?} should fail");
    assert!(err.contains(expect), "{args:?}: expected {expect:?} in:\n{err}");
    assert_eq!(dir_names(f.dir.path()), before, "{args:?} left files behind");
}

#[test]
fn bad_inputs_fail_cleanly() {
    let f = Fixture::new();
    let out = f.p("out.img");
    fails(&f, &["initrd", "--agent", &f.p("missing"), "-o", &out], &[], "not found");
    fails(
        &f,
        &["initrd", "--agent", &f.p("agent"), "--init", &f.p("floor.sh"), "-o", &out],
        &[],
        "cannot be used with",
    );
    fails(&f, &["initrd", "-o", &out], &[], "--agent");
    fails(&f, &["initrd", "--agent", &f.p("agent"), "--compress", "lz4", "-o", &out], &[], "invalid value 'lz4'");
    fails(&f, &["initrd", "--agent", &f.p("floor.sh"), "-o", &out], &[], "not an ELF executable");
    fails(
        &f,
        &["initrd", "--agent", &f.p("agent"), "-o", &out],
        &[("SOURCE_DATE_EPOCH", "abc")],
        "SOURCE_DATE_EPOCH=\"abc\" is not valid",
    );
    fails(
        &f,
        &["initrd", "--agent", &f.p("agent"), "--busybox-bin", &f.p("no-busybox"), "-o", &out],
        &[],
        "busybox-static",
    );
    fails(
        &f,
        &["initrd", "--agent", &f.p("agent"), "--busybox-bin", &f.p("floor.sh"), "-o", &out],
        &[],
        "is not an ELF executable",
    );

    let tree = tempfile::tempdir().unwrap();
    let v = fake_tree(tree.path());
    fails(
        &f,
        &[
            "initrd",
            "--agent",
            &f.p("agent"),
            "--modules-from",
            &v.to_string_lossy(),
            "--module",
            "a,no_such_mod",
            "-o",
            &out,
        ],
        &[],
        "module(s) not found in kernel 9.9.9-fake: no_such_mod",
    );
    fs::remove_file(v.join("modules.dep")).unwrap();
    fails(
        &f,
        &["initrd", "--agent", &f.p("agent"), "--modules-from", &tree.path().to_string_lossy(), "-o", &out],
        &[],
        "has no modules.dep",
    );
    fails(
        &f,
        &["initrd", "--agent", &f.p("agent"), "--modules-from", &v.to_string_lossy(), "-o", &out],
        &[],
        "contains neither modules.dep",
    );

    // A failed build never replaces an existing output.
    fs::write(&out, b"previous").unwrap();
    fails(&f, &["initrd", "--agent", &f.p("missing"), "-o", &out], &[], "not found");
    assert_eq!(fs::read(&out).unwrap(), b"previous");

    // Errors are printed with their cause chain.
    let o = run(&["initrd", "--agent", &f.p("agent"), "-o", &f.p("no/such/dir/out.img")], &[]);
    let err = stderr(&o);
    assert!(err.contains("cannot write initrd") && err.contains("caused by"), "{err}");
}

#[test]
fn help_and_version() {
    let o = ok(&["initrd", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--agent",
        "--init",
        "--busybox",
        "--busybox-bin",
        "--modules-from",
        "--module",
        "--compress",
        "--output",
        "SOURCE_DATE_EPOCH",
    ] {
        assert!(help.contains(flag), "{flag} missing from help:\n{help}");
    }
    let o = ok(&["--version"]);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("rootfs-builder "));
}
