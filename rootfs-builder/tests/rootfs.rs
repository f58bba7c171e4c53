//! End-to-end tests of `rootfs-builder rootfs`: runs the binary as a user would
//! and reads the ext4 / erofs images back with e2fsprogs (`debugfs`, `e2fsck`)
//! and erofs-utils (`dump.erofs`, `fsck.erofs`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{dir_names, run, tiny_static_elf, Fixture};

const MIB: u64 = 1024 * 1024;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(args: &[&str], env: &[(&str, &str)]) -> Output {
    let o = run(args, env);
    assert!(o.status.success(), "{args:?} failed: {}", text(&o.stderr));
    o
}

/// Runs a file system tool (from PATH or /usr/sbin) and returns stdout + stderr.
fn tool(name: &str, args: &[&str]) -> (bool, String) {
    let bin = ["/usr/sbin", "/sbin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| name.into());
    let o = Command::new(bin).args(args).output().unwrap_or_else(|e| panic!("run {name}: {e}"));
    (o.status.success(), format!("{}{}", text(&o.stdout), text(&o.stderr)))
}

/// `debugfs -R 'stat PATH'` of an ext4 image.
fn ext4_stat(img: &str, path: &str) -> String {
    let (_, out) = tool("debugfs", &["-R", &format!("stat {path}"), img]);
    out
}

/// `dump.erofs --path=PATH` of an erofs image.
fn erofs_stat(img: &str, path: &str) -> String {
    let (ok, out) = tool("dump.erofs", &[&format!("--path={path}"), img]);
    assert!(ok, "dump.erofs {path}: {out}");
    out
}

#[test]
fn same_inputs_same_bytes() {
    let f = Fixture::new();
    for format in ["ext4", "erofs"] {
        let (a, b, c) = (f.p(&format!("a.{format}")), f.p(&format!("b.{format}")), f.p(&format!("c.{format}")));
        let o = ok(&["rootfs", "--agent", &f.p("agent"), "--format", format, "-o", &a], &[]);
        let mode = if format == "ext4" { "rw" } else { "ro" };
        assert_eq!(text(&o.stdout), format!("root=/dev/vda {mode} rootfstype={format} init=/sbin/init\n"));
        assert!(text(&o.stderr).contains(&format!("{format} image")), "{}", text(&o.stderr));
        // Different staging directories, a later wall clock: the same bytes.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        ok(&["rootfs", "--agent", &f.p("agent"), "--format", format, "-o", &b], &[]);
        assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap(), "{format}: two builds differ");
        ok(&["rootfs", "--agent", &f.p("agent"), "--format", format, "-o", &c], &[("SOURCE_DATE_EPOCH", "1700000000")]);
        assert!(fs::read(&a).unwrap() != fs::read(&c).unwrap(), "{format}: SOURCE_DATE_EPOCH ignored");
    }
    let (_, out) = tool("dumpe2fs", &["-h", &f.p("c.ext4")]);
    assert!(out.contains("Last write time:          Tue Nov 14 22:13:20 2023"), "{out}");
    assert!(ext4_stat(&f.p("c.ext4"), "/sbin/init").contains("mtime: 0x6553f100"));
}

#[test]
fn ext4_layout() {
    let f = Fixture::new();
    let img = f.p("root.img");
    ok(&["rootfs", "--agent", &f.p("agent"), "-o", &img], &[]);
    let len = fs::metadata(&img).unwrap().len();
    assert_eq!(len % MIB, 0);
    assert!((16 * MIB..=18 * MIB).contains(&len), "size {len}");
    let (clean, out) = tool("e2fsck", &["-fn", &img]);
    assert!(clean, "{out}");

    let init = ext4_stat(&img, "/sbin/init");
    assert!(init.contains("Type: regular    Mode:  0755"), "{init}");
    assert!(init.contains("User:     0   Group:     0"), "{init}");
    assert!(init.contains(&format!("Size: {}", tiny_static_elf().len())), "{init}");
    assert!(ext4_stat(&img, "/tmp").contains("Type: directory    Mode:  01777"));
    for d in ["/dev", "/proc", "/sys", "/run", "/etc", "/root", "/sbin"] {
        let s = ext4_stat(&img, d);
        assert!(s.contains("Type: directory    Mode:  0755"), "{d}: {s}");
        assert!(s.contains("User:     0   Group:     0"), "{d}: {s}");
    }
    assert!(ext4_stat(&img, "/init").contains("File not found"));
    assert!(ext4_stat(&img, "/dev/console").contains("File not found"));

    // An explicit size is honoured exactly, and stays reproducible.
    let big = f.p("big.img");
    ok(&["rootfs", "--agent", &f.p("agent"), "--size", "200", "-o", &big], &[]);
    assert_eq!(fs::metadata(&big).unwrap().len(), 200 * MIB);
    let big2 = f.p("big2.img");
    ok(&["rootfs", "--agent", &f.p("agent"), "--size", "200", "-o", &big2], &[]);
    assert!(fs::read(&big).unwrap() == fs::read(&big2).unwrap(), "multi-group ext4 differs");
}

#[test]
fn erofs_layout() {
    let f = Fixture::new();
    let img = f.p("root.erofs");
    ok(&["rootfs", "--agent", &f.p("agent"), "--format", "erofs", "-o", &img], &[]);
    let (clean, out) = tool("fsck.erofs", &[&img]);
    assert!(clean, "{out}");
    let init = erofs_stat(&img, "/sbin/init");
    assert!(init.contains("Access: 0755/rwxr-xr-x"), "{init}");
    assert!(init.contains("Uid: 0   Gid: 0"), "{init}");
    // dump.erofs masks the sticky bit; extracting shows the stored mode.
    let x = f.p("x");
    let (extracted, out) = tool("fsck.erofs", &[&format!("--extract={x}"), "--preserve-perms", &img]);
    assert!(extracted, "{out}");
    let mode = |p: &str| fs::symlink_metadata(Path::new(&x).join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("sbin/init"), 0o755);
    assert_eq!(fs::read(Path::new(&x).join("sbin/init")).unwrap(), tiny_static_elf());
    for d in ["/dev", "/proc", "/sys", "/run", "/etc", "/root"] {
        assert!(erofs_stat(&img, d).contains("Access: 0755/rwxr-xr-x"), "{d}");
    }
    assert!(!Path::new(&x).join("init").exists(), "no /init in a disk image");
    assert!(!Path::new(&x).join("dev/console").exists());
}

/// A fake module tree with modules.dep: a -> b.
fn fake_tree(root: &Path) {
    let v = root.join("lib/modules/9.9.9-fake");
    fs::create_dir_all(v.join("kernel/x")).unwrap();
    for m in ["a", "b"] {
        fs::write(v.join(format!("kernel/x/{m}.ko")), format!("\x7fELF module {m}")).unwrap();
    }
    let mut dep = fs::File::create(v.join("modules.dep")).unwrap();
    dep.write_all(b"kernel/x/a.ko: kernel/x/b.ko\nkernel/x/b.ko:\n").unwrap();
}

#[test]
fn busybox_and_modules() {
    let f = Fixture::new();
    fake_tree(f.dir.path());
    let img = f.p("root.img");
    let agent = f.p("agent");
    let mut args = vec!["rootfs", "--agent", &agent, "--modules-from", f.dir.path().to_str().unwrap()];
    args.extend(["--module", "a", "-o", &img]);
    let busybox = Path::new("/bin/busybox").exists();
    if busybox {
        args.push("--busybox");
    }
    let o = ok(&args, &[]);
    for m in ["a", "b"] {
        let s = ext4_stat(&img, &format!("/lib/modules/9.9.9-fake/kernel/x/{m}.ko"));
        assert!(s.contains("Mode:  0644"), "{m}: {s}");
    }
    assert!(ext4_stat(&img, "/lib/modules/9.9.9-fake/modules.dep").contains("Type: regular"));
    if busybox {
        assert!(ext4_stat(&img, "/bin/busybox").contains("Mode:  0755"));
        assert!(ext4_stat(&img, "/bin/sh").contains("Type: symlink"));
        // busybox's own init applet never replaces the agent.
        assert!(text(&o.stderr).contains("/sbin/init not linked"), "{}", text(&o.stderr));
        assert!(ext4_stat(&img, "/sbin/init").contains("Type: regular"));
    }
}

/// Runs a failing invocation and checks it left nothing behind.
fn fails(f: &Fixture, args: &[&str], expect: &str) {
    let before = dir_names(f.dir.path());
    let o = run(args, &[]);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{args:?} should fail");
    assert!(err.contains(expect), "{args:?}: expected {expect:?} in:\n{err}");
    assert!(o.stdout.is_empty(), "no command line printed on failure");
    assert_eq!(dir_names(f.dir.path()), before, "{args:?} left files behind");
}

#[test]
fn bad_inputs_fail_cleanly() {
    let f = Fixture::new();
    fs::write(f.p("script"), b"#!/bin/sh\n").unwrap();
    let out = f.p("out.img");
    fails(&f, &["rootfs", "--agent", &f.p("missing"), "-o", &out], "agent binary");
    fails(&f, &["rootfs", "--agent", &f.p("missing"), "-o", &out], "not found");
    fails(&f, &["rootfs", "--agent", &f.p("script"), "-o", &out], "not an ELF executable");
    fails(&f, &["rootfs", "--agent", &f.p("agent"), "--format", "xfs", "-o", &out], "invalid value 'xfs'");
    fails(&f, &["rootfs", "-o", &out], "--agent");
    fails(&f, &["rootfs", "--agent", &f.p("agent"), "--format", "erofs", "--size", "64", "-o", &out], "ext4 only");
    fails(&f, &["rootfs", "--agent", &f.p("agent"), "--size", "1", "-o", &out], "too small");
    fails(&f, &["rootfs", "--agent", &f.p("agent"), "-o", &f.p("no-dir/out.img")], "cannot write");
    fails(&f, &["rootfs", "--agent", &f.p("agent"), "-o", f.dir.path().to_str().unwrap()], "is a directory");
    fails(&f, &["rootfs", "--agent", &f.p("agent"), "--busybox-bin", &f.p("no-busybox"), "-o", &out], "no-busybox");
}
