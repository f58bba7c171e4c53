//! A guest that floods its serial console costs the host a bounded amount: through the shim
//! under a private containerd, a container given the guest's `/dev/ttyS0` writes 100 MB
//! (`WISP_CONSOLE_FLOOD_MB` to change it) while the test watches the sandbox's state directory
//! and the shim's RSS; the sandbox works afterwards, a failed boot still quotes the console's
//! tail, and the side API (`api.sock`) refuses an oversized request and keeps serving.
//!
//! Needs what `tests/shim_ctr.rs` needs. Compiled with features `containerd-tests` and
//! `vm-tests` (`make test-shim`).
#![cfg(all(feature = "containerd-tests", feature = "vm-tests"))]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use wisp_shim::api::{self, ApiError, Request};
use wisp_shim::hypervisor::console::{self, CONSOLE_CAP};
use wisp_tests::shim_setup::{describe, s, text, Setup, RUNTIME};

/// What the flood may add to the state directory beyond the console's cap (the logs of QEMU
/// and its helpers, pid files).
const STATE_SLACK: u64 = 256 << 10;
/// How much the shim's anonymous memory (RssAnon: heap and stacks) may grow while the guest
/// floods its console.
const RSS_SLACK: u64 = 4 << 20;

/// The one sandbox directory under the state root.
fn sandbox_dir(t: &Setup) -> anyhow::Result<PathBuf> {
    let dirs: Vec<PathBuf> = std::fs::read_dir(t.state())?
        .flatten()
        .filter(|e| e.file_name() != "accel" && e.path().is_dir())
        .map(|e| e.path())
        .collect();
    match &dirs[..] {
        [dir] => Ok(dir.clone()),
        _ => bail!("one sandbox directory expected under {}: {dirs:?}", t.state().display()),
    }
}

/// Bytes the host holds for the files of `dir` (allocated blocks), not counting what is
/// mounted below it (the container's rootfs, shared with the guest).
fn state_bytes(dir: &Path) -> u64 {
    let mounts = wisp_shim::sandbox::mounts_under(dir);
    let mut total = 0;
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if meta.is_dir() {
                if !mounts.contains(&path) {
                    todo.push(path);
                }
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

/// `VmRSS` and `RssAnon` of `pid`, in bytes.
fn rss(pid: u32) -> anyhow::Result<[u64; 2]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok([field("VmRSS:")?, field("RssAnon:")?])
}

#[test]
fn a_guest_flooding_its_console_costs_the_host_at_most_the_cap() -> anyhow::Result<()> {
    let megabytes: u64 = std::env::var("WISP_CONSOLE_FLOOD_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let t = Setup::new()?;
    let config = t.bundle("flood", &["sleep", "3600"])?;
    // (The writer ends first: `yes | head` leaves `yes` spinning, SIGPIPE being ignored in
    // the guest's processes.)
    // The guest's serial port inside the container: what a guest owned by its tenant can do.
    let mut spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config)?)?;
    spec["linux"]["devices"] =
        serde_json::json!([{"path": "/dev/ttyS0", "type": "c", "major": 4, "minor": 64, "fileMode": 0o620}]);
    std::fs::write(&config, serde_json::to_string_pretty(&spec)?)?;
    let out = t.ctr(&["run", "-d", "--runtime", RUNTIME, "--config", s(&config), "wisp-flood"])?;
    ensure!(out.status.success(), "ctr run -d: {}", describe(&out));

    let shims = t.shims();
    let [shim] = shims[..] else { bail!("one shim expected: {shims:?}") };
    let dir = sandbox_dir(&t)?;
    let (rss_before, state_before) = (rss(shim)?, state_bytes(&dir));

    let flood = format!(
        "dd if=/dev/zero bs=65536 count={} 2>/dev/null | tr '\\0' w > /dev/ttyS0 && echo flooded",
        megabytes * 16
    );
    let started = Instant::now();
    let mut exec = t
        .ctd
        .ctr_command()
        .args(["tasks", "exec", "--exec-id", "flood", "wisp-flood", "sh", "-c", &flood])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (mut rss_max, mut state_max) = (rss_before, state_before);
    while exec.try_wait()?.is_none() {
        if started.elapsed() > Duration::from_secs(120 + 20 * megabytes) {
            let _ = exec.kill();
            bail!(
                "{megabytes} MB on the console took over {:?} (a loaded host?); meanwhile the state dir went \
                 {state_before} -> max {state_max} bytes, the shim's RSS {rss_before:?} -> max {rss_max:?}",
                started.elapsed()
            );
        }
        let now = rss(shim)?;
        rss_max = [rss_max[0].max(now[0]), rss_max[1].max(now[1])];
        state_max = state_max.max(state_bytes(&dir));
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = exec.wait_with_output()?;
    let took = started.elapsed();
    let now = rss(shim)?;
    rss_max = [rss_max[0].max(now[0]), rss_max[1].max(now[1])];
    state_max = state_max.max(state_bytes(&dir));
    let log = dir.join("console.log");
    let kept = std::fs::metadata(&log).map_or(0, |m| m.len())
        + std::fs::metadata(console::previous(&log)).map_or(0, |m| m.len());
    eprintln!(
        "{megabytes} MB on the guest console in {took:?}: state dir {state_before} -> max {state_max} bytes \
         (console kept: {kept} bytes); shim VmRSS {} -> max {}, RssAnon {} -> max {} bytes",
        rss_before[0], rss_max[0], rss_before[1], rss_max[1]
    );
    ensure!(out.status.success() && text(&out.stdout).trim() == "flooded", "the flood: {}", describe(&out));
    assert!(
        state_max <= state_before + CONSOLE_CAP + STATE_SLACK,
        "the state dir grew by {} bytes for {megabytes} MB of console (cap {CONSOLE_CAP})",
        state_max - state_before
    );
    assert!(kept <= CONSOLE_CAP, "console.log and console.log.1 hold {kept} bytes, over the cap {CONSOLE_CAP}");
    assert!(
        rss_max[1] <= rss_before[1] + RSS_SLACK,
        "the shim's RssAnon grew from {} to {} bytes while the guest wrote {megabytes} MB",
        rss_before[1],
        rss_max[1]
    );
    let end = console::tail(&log, 3);
    assert!(end.contains(&"w".repeat(1000)), "the log holds the end of the flood: {end:?}");

    // The sandbox still works.
    let out = t.ctr(&["tasks", "exec", "--exec-id", "after", "wisp-flood", "echo", "alive"])?;
    assert_eq!(text(&out.stdout).trim(), "alive", "an exec after the flood: {}", describe(&out));

    // The side API refuses an oversized request, then keeps serving.
    let socket = api::socket_path(&dir);
    let mut stream = UnixStream::connect(&socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let junk = vec![b'{'; 1 << 20];
    // The shim stops reading after its bound: the rest of the write may fail, the answer is there.
    let _ = stream.write_all(&junk);
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    assert!(answer.contains("request refused: longer than"), "the shim's answer: {answer:?}");
    drop(stream);
    match api::call(&socket, &Request::VolumeStats { volume: "/no/such/volume".into() }) {
        Err(ApiError::Failed(why)) => eprintln!("the side API still answers: {why}"),
        other => bail!("the side API should answer a normal request with its error: {other:?}"),
    }

    t.kill_and_delete("wisp-flood")?;
    let left = t.wait_no_leftovers(Duration::from_secs(5));
    assert!(left.is_empty(), "after delete nothing of the sandbox remains: {left:#?}");
    Ok(())
}

#[test]
fn a_guest_that_panics_at_boot_is_reported_with_its_console_tail() -> anyhow::Result<()> {
    // No init in the initrd: the kernel looks for a root device, finds none, panics, and QEMU
    // exits (panic=-1, -no-reboot); the console went through the FIFO and the drain.
    let t = Setup::with_config("kernel_params = \"rdinit=/wisp-no-such-init\"", "")?;
    let config = t.bundle("panic", &["true"])?;
    let out = t.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", s(&config), "wisp-panic"])?;
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("last guest console lines"), "the error quotes the console: {}", describe(&out));
    assert!(stderr.contains("Kernel panic"), "the console's tail reaches ctr: {}", describe(&out));
    assert!(stderr.len() < 64 << 10, "only the tail is quoted: {} bytes", stderr.len());
    let _ = t.ctr(&["tasks", "delete", "wisp-panic"]);
    let _ = t.ctr(&["containers", "delete", "wisp-panic"]);
    let left = t.wait_no_leftovers(Duration::from_secs(10));
    assert!(left.is_empty(), "{left:#?}");
    Ok(())
}
