//! Optional busybox userland for debugging images: one static binary at
//! `/bin/busybox` plus a symlink per applet, exactly as `busybox --list-full`
//! reports them (so `bin/sh`, `sbin/ifconfig`, `usr/bin/env`, ...).
//!
//! The binary must be statically linked because the initrd carries no dynamic
//! loader or shared libraries; a dynamic busybox would leave every applet
//! failing with a confusing "not found". Debian's `busybox-static` package
//! installs a suitable one at `/bin/busybox`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::archive::{self, Archive, ArchiveError};
use crate::elf::{Elf, ElfError};

/// Where Debian's busybox-static installs the binary.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";
/// Where the binary goes in the image (and what every applet link points to).
pub const IMAGE_PATH: &str = "/bin/busybox";

const HINT: &str = "install a static busybox (Debian: apt-get install busybox-static) or pass --busybox-bin PATH";

/// Errors while preparing busybox.
#[derive(Debug, thiserror::Error)]
pub enum BusyboxError {
    #[error("busybox binary {path} not found; {HINT}")]
    Missing { path: PathBuf },
    #[error("cannot read busybox binary {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not an ELF executable; {HINT}")]
    NotExecutable {
        path: PathBuf,
        #[source]
        source: Option<ElfError>,
    },
    #[error(
        "{path} is dynamically linked (interpreter {interpreter}) and would not run in the initrd, \
         which has no shared libraries; {HINT}"
    )]
    Dynamic { path: PathBuf, interpreter: String },
    #[error("cannot run `{path} --list-full` to list the applets (is it built for this machine's architecture?)")]
    Run { path: PathBuf, source: io::Error },
    #[error("`{path} --list-full` failed ({status}): {stderr}")]
    ListFailed { path: PathBuf, status: String, stderr: String },
    #[error("`{path} --list-full` printed no applets")]
    NoApplets { path: PathBuf },
    #[error("`{path} --list-full` printed an unusable applet path {line:?}")]
    BadApplet { path: PathBuf, line: String },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

/// A checked static busybox and its applet list.
#[derive(Debug, Clone)]
pub struct Busybox {
    pub binary: Vec<u8>,
    /// Applet paths relative to `/`, e.g. `bin/sh`, sorted and deduplicated.
    pub applets: Vec<String>,
}

/// Checks that `data` is a statically linked ELF executable.
pub fn check_static(path: &Path, data: &[u8]) -> Result<(), BusyboxError> {
    let elf = Elf::parse(data).map_err(|e| BusyboxError::NotExecutable { path: path.to_owned(), source: Some(e) })?;
    if !elf.is_executable_type() {
        return Err(BusyboxError::NotExecutable { path: path.to_owned(), source: None });
    }
    match elf.interpreter() {
        Ok(None) => Ok(()),
        Ok(Some(interpreter)) => Err(BusyboxError::Dynamic { path: path.to_owned(), interpreter }),
        Err(e) => Err(BusyboxError::NotExecutable { path: path.to_owned(), source: Some(e) }),
    }
}

/// Parses `busybox --list-full` output into normalised applet paths.
pub fn parse_applet_list(path: &Path, text: &str) -> Result<Vec<String>, BusyboxError> {
    let mut applets = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let applet = archive::normalize(line)
            .map_err(|_| BusyboxError::BadApplet { path: path.to_owned(), line: line.to_owned() })?;
        applets.push(applet);
    }
    applets.sort();
    applets.dedup();
    if applets.is_empty() {
        return Err(BusyboxError::NoApplets { path: path.to_owned() });
    }
    Ok(applets)
}

/// Reads and checks the busybox binary at `path` and asks it for its applets.
pub fn load(path: &Path) -> Result<Busybox, BusyboxError> {
    let binary = std::fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => BusyboxError::Missing { path: path.to_owned() },
        _ => BusyboxError::Read { path: path.to_owned(), source },
    })?;
    check_static(path, &binary)?;

    // A bare name would be looked up in $PATH; run exactly the file we checked.
    let exe = if path.is_absolute() { path.to_owned() } else { Path::new(".").join(path) };
    let output = Command::new(&exe)
        .arg("--list-full")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BusyboxError::Run { path: path.to_owned(), source })?;
    if !output.status.success() {
        return Err(BusyboxError::ListFailed {
            path: path.to_owned(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let applets = parse_applet_list(path, &String::from_utf8_lossy(&output.stdout))?;
    Ok(Busybox { binary, applets })
}

impl Busybox {
    /// Adds `/bin/busybox` and its applet links to `image`. Paths already in the
    /// image (notably `/init`) are never replaced; they are returned instead.
    pub fn install(&self, image: &mut Archive) -> Result<Vec<String>, BusyboxError> {
        image.add_file(IMAGE_PATH, 0o755, self.binary.clone())?;
        let own = archive::normalize(IMAGE_PATH)?;
        let mut skipped = Vec::new();
        for applet in &self.applets {
            if *applet == own {
                continue;
            }
            if image.contains(applet) {
                skipped.push(applet.clone());
                continue;
            }
            image.add_symlink(applet, IMAGE_PATH)?;
        }
        Ok(skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::testutil;

    #[test]
    fn static_check() {
        let p = Path::new("bb");
        check_static(p, &testutil::build(2, None, None)).unwrap();
        let err = check_static(p, &testutil::build(3, Some("/lib/ld.so"), None)).unwrap_err();
        assert!(matches!(err, BusyboxError::Dynamic { .. }));
        assert!(err.to_string().contains("busybox-static"), "{err}");
        assert!(matches!(check_static(p, b"#!/bin/sh\n"), Err(BusyboxError::NotExecutable { .. })));
        // A relocatable object is not an executable.
        assert!(matches!(check_static(p, &testutil::build(1, None, None)), Err(BusyboxError::NotExecutable { .. })));
    }

    #[test]
    fn missing_binary_says_what_to_install() {
        let err = load(Path::new("/nonexistent/busybox")).unwrap_err();
        assert!(matches!(err, BusyboxError::Missing { .. }));
        assert!(err.to_string().contains("busybox-static"));
    }

    #[test]
    fn applet_list_parsing() {
        let p = Path::new("bb");
        let list = parse_applet_list(p, "bin/sh\nsbin/ifconfig\n\nusr/bin/env\nbin/sh\n").unwrap();
        assert_eq!(list, ["bin/sh", "sbin/ifconfig", "usr/bin/env"]);
        assert!(parse_applet_list(p, "bin/../../etc/passwd\n").is_err());
        assert!(parse_applet_list(p, "\n").is_err());
    }

    #[test]
    fn install_never_replaces_init() {
        let bb =
            Busybox { binary: b"bb".to_vec(), applets: vec!["bin/busybox".into(), "bin/sh".into(), "init".into()] };
        let mut image = Archive::new();
        image.add_file("init", 0o755, b"agent".to_vec()).unwrap();
        let skipped = bb.install(&mut image).unwrap();
        assert_eq!(skipped, ["init"]);
        assert_eq!(image.get("init").unwrap().kind, archive::NodeKind::File(b"agent".to_vec()));
        assert_eq!(image.get("bin/sh").unwrap().kind, archive::NodeKind::Symlink("/bin/busybox".into()));
        assert_eq!(image.get("bin/busybox").unwrap().kind, archive::NodeKind::File(b"bb".to_vec()));
    }

    #[test]
    fn real_busybox() {
        let bb = load(Path::new(DEFAULT_BUSYBOX)).expect("busybox-static is installed on this machine");
        assert!(bb.applets.iter().any(|a| a == "bin/sh"));
        let mut image = Archive::new();
        bb.install(&mut image).unwrap();
        assert!(image.contains("bin/sh"));
    }
}
