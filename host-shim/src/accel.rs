//! KVM or TCG: the one place that decides, shared by the shim and the test harness.
//!
//! `/dev/kvm` opening is not enough: on some hosts (nested virtualisation without the right
//! CPU features, as on the machines this project is developed on) it opens, QEMU starts, the
//! firmware even runs, and then the guest kernel hangs for ever. So KVM is chosen only when a
//! probe guest really gets through early kernel boot ([`decide`]):
//!
//! 1. `/dev/kvm` cannot be opened read-write → TCG.
//! 2. No kernel to probe with → TCG.
//! 3. A decision cached for this host boot (a file keyed by `/proc/sys/kernel/random/boot_id`)
//!    is reused.
//! 4. Probe: `qemu-system-x86_64 -accel kvm -machine q35 -kernel bzImage -append 'console=ttyS0
//!    panic=-1'` with no initrd; KVM if the console shows the kernel's `Linux version` banner
//!    within [`PROBE_TIMEOUT`], else TCG. QEMU is killed as soon as the answer is known (and
//!    with the thread that started it: `PR_SET_PDEATHSIG`).
//!
//! [`ACCEL_ENV`] (`WISP_ACCEL=kvm|tcg`) overrides everything; callers check it with
//! [`from_env`] before probing.
//!
//! Cost: on a host with working KVM the probe takes well under a second; where KVM hangs it takes
//! the whole [`PROBE_TIMEOUT`] (5 s), once per host boot thanks to the file cache. That wait is
//! kept off the user's path: the shim asks [`decide_in_background`], which answers at once —
//! the cached decision, or TCG while one probe (an exclusive `flock` on the cache file) runs on
//! a thread and caches its answer for the next sandboxes. `wisp check` ([`decide`]) waits for
//! the probe, so running it after installing settles the question before the first sandbox.

use std::env;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// The environment variable that overrides the choice.
pub use crate::env::ACCEL_ENV;
/// How long the KVM probe guest gets to print its first kernel line.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// What the probe waits for on the console.
const PROBE_BANNER: &str = "Linux version";
/// The device KVM is used through.
const KVM_DEVICE: &str = "/dev/kvm";

/// A KVM probe: `(qemu, kernel, timeout)` to a decision ([`probe_kvm`], a fake in tests).
type Probe = fn(&Path, &Path, Duration) -> Decision;

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's binary translator.
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        })
    }
}

impl FromStr for Accel {
    type Err = AccelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            _ => Err(AccelError::Unknown { value: s.to_owned() }),
        }
    }
}

/// A bad accelerator name.
#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    /// Not `kvm` or `tcg` (from [`ACCEL_ENV`] or a string).
    #[error("unknown accelerator {value:?}, expected kvm or tcg (set by {ACCEL_ENV}?)")]
    Unknown {
        /// The value given.
        value: String,
    },
}

/// An accelerator and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The accelerator.
    pub accel: Accel,
    /// Why, for logs.
    pub reason: String,
}

/// [`ACCEL_ENV`] if it is set and not empty.
pub fn from_env() -> Option<Result<Accel, AccelError>> {
    crate::env::text(ACCEL_ENV).map(|v| v.parse())
}

/// Decides KVM or TCG for `qemu`, probing with `kernel` (a bzImage) and caching the answer for
/// this host boot in `cache` (best effort: without the cache the next process probes again).
/// Waits for the probe when the cache has no answer (`wisp check`, the test harness).
pub fn decide(qemu: &Path, kernel: Option<&Path>, cache: Option<&Path>) -> Decision {
    decide_with(Path::new(KVM_DEVICE), qemu, kernel, cache, true, probe_kvm).0
}

/// [`decide`] without waiting: when the cache has no answer yet, TCG at once while a probe runs
/// on a background thread and caches its answer for the next sandboxes (one probe at a time
/// per cache file). Where KVM works, the first sandbox of a host boot runs under TCG.
pub fn decide_in_background(qemu: &Path, kernel: Option<&Path>, cache: Option<&Path>) -> Decision {
    decide_with(Path::new(KVM_DEVICE), qemu, kernel, cache, false, probe_kvm).0
}

/// [`decide`] (`wait`) or [`decide_in_background`] with `kvm` as the device and `probe` as the
/// probe; the background probe's thread, if one was started.
fn decide_with(
    kvm: &Path,
    qemu: &Path,
    kernel: Option<&Path>,
    cache: Option<&Path>,
    wait: bool,
    probe: Probe,
) -> (Decision, Option<JoinHandle<()>>) {
    let tcg = |reason: String| Decision { accel: Accel::Tcg, reason };
    if let Err(err) = OpenOptions::new().read(true).write(true).open(kvm) {
        return (tcg(format!("cannot open {}: {err}", kvm.display())), None);
    }
    let Some(kernel) = kernel.filter(|k| k.is_file()) else {
        return (tcg("no kernel to probe KVM with".to_owned()), None);
    };
    let boot_id =
        fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|id| id.trim().to_owned()).unwrap_or_default();
    let cache = cache.filter(|_| !boot_id.is_empty());
    if let Some(cached) = cache.and_then(|cache| read_cache(cache, &boot_id)) {
        return (cached, None);
    }
    if wait {
        return (probe_and_cache(qemu, kernel, cache, &boot_id, FlockArg::LockExclusive, probe), None);
    }
    let (qemu, kernel, cache) = (qemu.to_owned(), kernel.to_owned(), cache.map(Path::to_owned));
    let spawned = thread::Builder::new().name("kvm-probe".to_owned()).spawn(move || {
        let _ = probe_and_cache(&qemu, &kernel, cache.as_deref(), &boot_id, FlockArg::LockExclusiveNonblock, probe);
    });
    let reason = "KVM not probed yet on this host boot: TCG for this sandbox while a probe runs in the \
                  background for the next ones (`wisp check` probes and waits)";
    match spawned {
        Ok(handle) => (tcg(reason.to_owned()), Some(handle)),
        Err(err) => (tcg(format!("KVM not probed yet; cannot start the probe thread: {err}")), None),
    }
}

/// Runs `probe` under a `lock` (blocking or not) on `cache` and caches its answer; a decision
/// another process cached meanwhile is taken instead. Without the lock (another probe runs),
/// TCG.
fn probe_and_cache(
    qemu: &Path,
    kernel: &Path,
    cache: Option<&Path>,
    boot_id: &str,
    lock: FlockArg,
    probe: Probe,
) -> Decision {
    let Some(cache) = cache else { return probe(qemu, kernel, PROBE_TIMEOUT) };
    let _ = fs::create_dir_all(cache.parent().unwrap_or(cache));
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(cache);
    let _held = match file.map(|file| Flock::lock(file, lock)) {
        Ok(Ok(held)) => Some(held),
        Ok(Err((_, errno))) if errno == nix::errno::Errno::EWOULDBLOCK => {
            return Decision { accel: Accel::Tcg, reason: "another process is probing KVM".to_owned() };
        }
        // No lock (a read-only cache dir): probe anyway, as before the lock existed.
        _ => None,
    };
    if let Some(cached) = read_cache(cache, boot_id) {
        return cached;
    }
    let decision = probe(qemu, kernel, PROBE_TIMEOUT);
    let _ = fs::write(cache, format!("{boot_id} {} {}\n", decision.accel, decision.reason));
    decision
}

/// The decision cached in `cache` for the host boot `boot_id`, if any.
pub fn read_cache(cache: &Path, boot_id: &str) -> Option<Decision> {
    let text = fs::read_to_string(cache).ok()?;
    let mut fields = text.trim_end().splitn(3, ' ');
    if fields.next()? != boot_id {
        return None;
    }
    let accel = fields.next()?.parse().ok()?;
    let reason = fields.next().unwrap_or_default();
    Some(Decision { accel, reason: format!("{reason} (cached for this host boot in {})", cache.display()) })
}

/// Boots `kernel` (a bzImage) with `qemu -accel kvm` without an initrd and waits up to `timeout`
/// for its banner on the serial console. QEMU is killed as soon as the answer is known.
pub fn probe_kvm(qemu: &Path, kernel: &Path, timeout: Duration) -> Decision {
    let decision = |accel, reason| Decision { accel, reason };
    let dir = match tempfile_dir() {
        Ok(dir) => dir,
        Err(err) => return decision(Accel::Tcg, format!("cannot create a probe directory: {err}")),
    };
    let result = probe_in(qemu, kernel, timeout, &dir);
    let _ = fs::remove_dir_all(&dir);
    result
}

fn probe_in(qemu: &Path, kernel: &Path, timeout: Duration, dir: &Path) -> Decision {
    let decision = |accel, reason| Decision { accel, reason };
    let console = dir.join("console.log");
    let stderr_path = dir.join("qemu.log");
    let stderr = match File::create(&stderr_path) {
        Ok(file) => file,
        Err(err) => return decision(Accel::Tcg, format!("cannot create {}: {err}", stderr_path.display())),
    };
    let start = Instant::now();
    let mut command = Command::new(qemu);
    // SAFETY: between fork and exec only the async-signal-safe prctl(2) runs; it touches no
    // memory of the parent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            // The probe guest dies with the thread waiting for it (a shim that exits mid-probe).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = command
        .args(["-accel", "kvm", "-cpu", "host", "-machine", "q35", "-m", "128M"])
        .args(["-nographic", "-nodefaults", "-no-reboot", "-serial"])
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => return decision(Accel::Tcg, format!("cannot start {}: {err}", qemu.display())),
    };
    let result = loop {
        let printed = fs::read(&console).unwrap_or_default();
        if printed.windows(PROBE_BANNER.len()).any(|w| w == PROBE_BANNER.as_bytes()) {
            break decision(
                Accel::Kvm,
                format!("a probe guest printed its banner after {} ms", start.elapsed().as_millis()),
            );
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = fs::read_to_string(&stderr_path).unwrap_or_default();
            let last = log.lines().last().unwrap_or("").to_owned();
            break decision(
                Accel::Tcg,
                format!(
                    "qemu -accel kvm exited with {status} after {} ms, before the guest printed anything: {last}",
                    start.elapsed().as_millis()
                ),
            );
        }
        if start.elapsed() >= timeout {
            break decision(
                Accel::Tcg,
                format!("/dev/kvm opens but a probe guest printed no kernel line within {} s", timeout.as_secs()),
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    // Already exited is fine; a kill error leaves nothing to clean up.
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// A fresh private directory under the system temp dir.
fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let base = env::temp_dir();
    for attempt in 0..100u32 {
        let dir = base.join(format!("wisp-kvm-probe-{}-{attempt}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "no free probe directory name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accel_names_round_trip() {
        for accel in [Accel::Kvm, Accel::Tcg] {
            assert_eq!(accel.to_string().parse::<Accel>().unwrap(), accel);
        }
        let err = "hvf".parse::<Accel>().unwrap_err();
        assert_eq!(err.to_string(), "unknown accelerator \"hvf\", expected kvm or tcg (set by WISP_ACCEL?)");
    }

    #[test]
    fn cache_is_keyed_by_boot_id() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("accel");
        fs::write(&cache, "boot-a tcg probe said no\n").unwrap();

        let hit = read_cache(&cache, "boot-a").unwrap();
        assert_eq!(hit.accel, Accel::Tcg);
        assert!(hit.reason.starts_with("probe said no (cached"), "{}", hit.reason);
        assert_eq!(read_cache(&cache, "boot-b"), None);

        fs::write(&cache, "boot-a bogus x\n").unwrap();
        assert_eq!(read_cache(&cache, "boot-a"), None);
    }

    /// A fake probe that takes 300 ms and says KVM works; counts its runs (one test uses it).
    fn slow_kvm_probe(_: &Path, _: &Path, _: Duration) -> Decision {
        PROBES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        thread::sleep(Duration::from_millis(300));
        Decision { accel: Accel::Kvm, reason: "fake probe".to_owned() }
    }
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    #[test]
    fn the_first_decision_does_not_wait_for_the_probe_and_the_next_ones_use_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        let (kvm, kernel, cache) = (dir.path().join("kvm"), dir.path().join("bzImage"), dir.path().join("accel"));
        fs::write(&kvm, b"").unwrap();
        fs::write(&kernel, b"").unwrap();
        let qemu = Path::new("qemu");
        let before = PROBES.load(std::sync::atomic::Ordering::SeqCst);

        let start = Instant::now();
        let (first, probing) = decide_with(&kvm, qemu, Some(&kernel), Some(&cache), false, slow_kvm_probe);
        assert!(start.elapsed() < Duration::from_millis(200), "answered before the probe ended: {:?}", start.elapsed());
        assert_eq!(first.accel, Accel::Tcg, "{first:?}");
        assert!(first.reason.contains("probe runs in the background"), "{first:?}");

        // A second sandbox while the probe runs: TCG too, and no second probe.
        thread::sleep(Duration::from_millis(50));
        let (second, again) = decide_with(&kvm, qemu, Some(&kernel), Some(&cache), false, slow_kvm_probe);
        assert_eq!(second.accel, Accel::Tcg);
        again.unwrap().join().unwrap();
        probing.unwrap().join().unwrap();
        assert_eq!(PROBES.load(std::sync::atomic::Ordering::SeqCst) - before, 1, "one probe per cache");

        // Once cached, KVM is the answer, without a probe and without waiting.
        let start = Instant::now();
        let (third, none) = decide_with(&kvm, qemu, Some(&kernel), Some(&cache), false, slow_kvm_probe);
        assert_eq!(third.accel, Accel::Kvm, "{third:?}");
        assert!(third.reason.contains("cached for this host boot"), "{third:?}");
        assert!(none.is_none() && start.elapsed() < Duration::from_millis(200));
    }

    #[test]
    fn waiting_decisions_probe_once_and_cache() {
        let dir = tempfile::tempdir().unwrap();
        let (kvm, kernel, cache) = (dir.path().join("kvm"), dir.path().join("bzImage"), dir.path().join("accel"));
        fs::write(&kvm, b"").unwrap();
        fs::write(&kernel, b"").unwrap();
        let probe = |_: &Path, _: &Path, _: Duration| Decision { accel: Accel::Kvm, reason: "fake probe".to_owned() };
        let (decision, thread) = decide_with(&kvm, Path::new("qemu"), Some(&kernel), Some(&cache), true, probe);
        assert!(thread.is_none());
        assert_eq!(decision, Decision { accel: Accel::Kvm, reason: "fake probe".to_owned() });
        assert!(fs::read_to_string(&cache).unwrap().contains(" kvm fake probe"));
        // Without a KVM device: TCG, no probe.
        let (no_kvm, _) =
            decide_with(&dir.path().join("absent"), Path::new("qemu"), Some(&kernel), None, false, |_, _, _| {
                panic!("no probe without a KVM device")
            });
        assert_eq!(no_kvm.accel, Accel::Tcg);
        assert!(no_kvm.reason.starts_with("cannot open"), "{no_kvm:?}");
    }

    #[test]
    fn probe_without_a_bootable_kernel_says_tcg() {
        // A file that is no kernel: QEMU refuses it and exits, or (no /dev/kvm) fails to start
        // KVM; either way the probe must answer TCG promptly.
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("bzImage");
        fs::write(&bogus, b"not a kernel").unwrap();
        let start = Instant::now();
        let decision = probe_kvm(Path::new("qemu-system-x86_64"), &bogus, Duration::from_secs(5));
        assert_eq!(decision.accel, Accel::Tcg, "{decision:?}");
        assert!(start.elapsed() < Duration::from_secs(5), "{decision:?}");
    }
}
