//! A `virtiofsd` per VM for the virtio-fs configurations: it must listen before QEMU starts and
//! it exits when QEMU disconnects, so each boot gets a fresh one, killed when the run ends.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wisp_shim::config::find_program;

/// How long virtiofsd gets to create its socket.
const READY: Duration = Duration::from_secs(5);

/// A running virtiofsd, killed on drop.
#[derive(Debug)]
pub struct Virtiofsd {
    child: Child,
}

impl Virtiofsd {
    /// Serves `dir` on `socket` (replacing a stale one); its output goes to `<socket>.log`.
    pub fn start(socket: &Path, dir: &Path) -> Result<Self> {
        let program = find_program(Path::new("virtiofsd")).context("virtiofsd not found: run `make deps`")?;
        let _ = fs::remove_file(socket);
        let log = PathBuf::from(format!("{}.log", socket.display()));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(program)
            .arg(format!("--socket-path={}", socket.display()))
            .arg(format!("--shared-dir={}", dir.display()))
            .args(["--cache=auto", "--sandbox=none", "--seccomp=none"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting virtiofsd")?;
        let mut helper = Self { child };
        let started = Instant::now();
        while !socket.exists() {
            if helper.child.try_wait()?.is_some() || started.elapsed() > READY {
                bail!(
                    "virtiofsd did not create {}: {}",
                    socket.display(),
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(helper)
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
