//! The guest console, bounded: what the guest writes on `ttyS0` costs the host at most
//! [`CONSOLE_CAP`] bytes, however much it writes.
//!
//! The VMM does not write a file the guest can grow without end (a tmpfs file is host RAM):
//! it writes into a FIFO in the VM's directory ([`VmPaths::console_fifo`]), opened O_WRONLY by
//! QEMU's `file:` chardev and StratoVirt's `file,path=`, and a [`ConsoleDrain`] thread of the
//! shim copies it into a [`Ring`] of two files, `console.log` and `console.log.1`, each at most
//! half the cap: when `console.log` is full it becomes `console.log.1` and a new one starts, so
//! the last half-cap to cap bytes are always on disk for `cat`, [`tail`] and the test harness.
//!
//! The drain reads as fast as the guest writes (a poll loop, one 64 KiB buffer, reads batched
//! every 5 ms while the guest streams: the pipe holds 64 KiB), so QEMU, whose chardev
//! descriptor is non-blocking, never waits on it; if the shim dies the FIFO has
//! no reader and QEMU's writes fail (EPIPE) instead of blocking. The shim's memory does not
//! grow with the guest's output: the buffer is the only allocation. [`tail`] reads at most
//! [`TAIL_MAX_BYTES`] from the end, so an error message quotes only the tail, however long
//! the log or its lines. The console's lines also reach the shim's debug log, at most 20 a
//! second (Kata logs them the same way), with a count of those left out.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;
use slog::{debug, warn, Logger};

use super::VmPaths;

/// The most bytes a guest console keeps on the host (both files of the [`Ring`]).
pub const CONSOLE_CAP: u64 = 1 << 20;
/// The most bytes [`tail`] reads from the end of a log.
pub const TAIL_MAX_BYTES: u64 = 16 << 10;
/// How long a reader waits for the drain to copy a dead VMM's last words.
pub const CONSOLE_SETTLE: Duration = Duration::from_millis(500);
/// At most this many guest console lines reach the shim's debug log per [`LOG_WINDOW`].
const LOG_LINES_PER_WINDOW: u32 = 20;
/// The window of [`LOG_LINES_PER_WINDOW`].
const LOG_WINDOW: Duration = Duration::from_secs(1);
/// Longer console lines are cut to this many bytes in the shim's log.
const LOG_LINE_MAX: usize = 240;
/// While the guest streams (a read came less than this ago), the drain waits this long before
/// the next read, so a read takes a batch, not a byte: a console line that follows a quiet
/// spell is copied at once, one in a stream at most this late.
const BATCH: Duration = Duration::from_millis(5);
/// The console pipe's capacity (the kernel's default is 64 KiB).
const PIPE_SIZE: i32 = 1 << 20;
/// The drain's read buffer.
const CHUNK: usize = 64 << 10;

/// The older file of the ring whose current file is `path` (`console.log.1`).
pub fn previous(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// The last bytes of a log written in a bounded way: `path`, and before it [`previous`]
/// (`path.1`) when it exists and is needed.
#[derive(Debug)]
pub struct Ring {
    path: PathBuf,
    file: File,
    len: u64,
    segment: u64,
}

impl Ring {
    /// A new, empty ring at `path` (an older one is truncated) keeping at most `cap` bytes
    /// (at least 2).
    pub fn create(path: &Path, cap: u64) -> io::Result<Self> {
        let _ = fs::remove_file(previous(path));
        // O_NOFOLLOW: a rootless helper shares the directory (see process::create_nofollow).
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        Ok(Self { path: path.to_owned(), file, len: 0, segment: (cap / 2).max(1) })
    }

    /// Appends `bytes`, turning the current file into the older one whenever it is full.
    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.len >= self.segment {
                self.rotate()?;
            }
            let room = usize::try_from(self.segment - self.len).unwrap_or(usize::MAX);
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.file.write_all(now)?;
            self.len += now.len() as u64;
            bytes = rest;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        fs::rename(&self.path, previous(&self.path))?;
        self.file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

/// The last `max` bytes of the log at `path` (with [`previous`] before it), and whether
/// that is all it holds.
pub fn read_last(path: &Path, max: u64) -> (Vec<u8>, bool) {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut want = max;
    let mut whole = true;
    let mut newer_inode = None;
    // Newest first, each file's end put before what was read.
    for file in [path.to_owned(), previous(path)] {
        let Ok(mut f) = File::open(&file) else { continue };
        let Ok(meta) = f.metadata() else { continue };
        // A rotation between the two opens shows the same file twice: read it once.
        if newer_inode == Some(meta.ino()) {
            break;
        }
        newer_inode = Some(meta.ino());
        let take = meta.len().min(want);
        whole &= take == meta.len();
        let mut part = Vec::with_capacity(usize::try_from(take).unwrap_or(0));
        if take > 0 && f.seek(SeekFrom::Start(meta.len() - take)).is_ok() {
            let _ = f.take(take).read_to_end(&mut part);
        }
        want -= part.len() as u64;
        part.extend_from_slice(&out);
        out = part;
    }
    (out, whole)
}

/// Everything a bounded log holds (at most [`CONSOLE_CAP`] of it), lossy UTF-8.
pub fn read_all(path: &Path) -> String {
    String::from_utf8_lossy(&read_last(path, CONSOLE_CAP).0).into_owned()
}

/// The last `lines` lines of the log at `path` (lossy UTF-8), from at most [`TAIL_MAX_BYTES`]
/// of its end; a line cut by that bound is left out.
pub fn tail(path: &Path, lines: usize) -> String {
    let (bytes, whole) = read_last(path, TAIL_MAX_BYTES);
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if !whole && all.len() > 1 {
        all.remove(0);
    }
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Copies what the VMM writes into the console FIFO to a [`Ring`], in a thread, until the
/// VMM closes it or the drain is dropped.
#[derive(Debug)]
pub struct ConsoleDrain {
    /// Dropping it wakes the thread, which drains what is buffered and ends.
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl ConsoleDrain {
    /// Makes the FIFO [`VmPaths::console_fifo`] (0600; a stale one is replaced) and starts
    /// copying it into a [`Ring`] of [`CONSOLE_CAP`] at [`VmPaths::console`]. Start it before
    /// the VMM, which blocks opening the FIFO until a reader holds it.
    pub fn start(paths: &VmPaths, log: &Logger) -> io::Result<Self> {
        Self::start_at(&paths.console_fifo(), &paths.console(), CONSOLE_CAP, log)
    }

    /// [`ConsoleDrain::start`] with explicit paths and cap.
    pub fn start_at(fifo: &Path, out: &Path, cap: u64, log: &Logger) -> io::Result<Self> {
        match fs::remove_file(fifo) {
            Err(err) if err.kind() != ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        nix::unistd::mkfifo(fifo, Mode::from_bits_truncate(0o600)).map_err(io::Error::from)?;
        fs::set_permissions(fifo, fs::Permissions::from_mode(0o600))?;
        // Non-blocking: the open does not wait for a writer, nor does a read.
        let input = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(fifo)?;
        // A roomy pipe: a drain that waits for the CPU on a loaded host does not make QEMU's
        // UART wait (a full pipe slows the guest's console, never the host).
        if let Err(err) = nix::fcntl::fcntl(&input, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE)) {
            warn!(log, "cannot grow the console pipe"; "error" => %err);
        }
        let ring = Ring::create(out, cap)?;
        let (stop_rx, stop_tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let log = log.clone();
        let thread =
            thread::Builder::new().name("console-drain".to_owned()).spawn(move || drain(input, ring, stop_rx, &log))?;
        Ok(Self { stop: Some(stop_tx), thread: Some(thread) })
    }

    /// Waits up to `within` for the drain to end by itself, which it does once every writer
    /// closed the FIFO and all it held is in the log: after the VMM exited, its last words.
    /// Whether it ended.
    pub fn wait_ended(&self, within: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.thread.as_ref().map_or(true, JoinHandle::is_finished) {
                return true;
            }
            if start.elapsed() >= within {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stops the drain after it copied what the FIFO holds; waits for it.
    pub fn stop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ConsoleDrain {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The drain thread: waits for data (or the end of every writer, or the stop pipe) and
/// copies it. A FIFO that no writer has opened yet does not report a hang-up, so the loop
/// waits for the VMM without spinning.
fn drain(mut input: File, mut ring: Ring, stop: OwnedFd, log: &Logger) {
    let mut buf = vec![0u8; CHUNK];
    let mut lines = LineLog::new(log.clone(), LOG_LINES_PER_WINDOW, LOG_WINDOW);
    let mut last_read: Option<Instant> = None;
    let mut failed = false;
    loop {
        let mut fds = [PollFd::new(input.as_fd(), PollFlags::POLLIN), PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => {
                warn!(log, "cannot wait on the guest console"; "error" => %err);
                return;
            }
        }
        let stopping = fds[1].revents().is_some_and(|r| !r.is_empty());
        let ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        // The UART hands QEMU one byte at a time: while the guest streams, let the pipe gather
        // a batch instead of waking up (poll, read, write) for every byte.
        if ready && !stopping && last_read.is_some_and(|at| at.elapsed() < BATCH) {
            thread::sleep(BATCH);
        }
        if ready {
            last_read = Some(Instant::now());
        }
        if ready || stopping {
            let ended = loop {
                match input.read(&mut buf) {
                    // Every writer closed (only reported once one has opened: see above).
                    Ok(0) => break ready,
                    Ok(n) => {
                        lines.feed(&buf[..n]);
                        if let Err(err) = ring.write(&buf[..n]) {
                            if !failed {
                                warn!(log, "cannot write the guest console; its output is dropped";
                                      "path" => %ring.path.display(), "error" => %err);
                                failed = true;
                            }
                        }
                    }
                    Err(err) if err.kind() == ErrorKind::Interrupted => {}
                    Err(err) if err.kind() == ErrorKind::WouldBlock => break false,
                    Err(err) => {
                        warn!(log, "cannot read the guest console"; "error" => %err);
                        break true;
                    }
                }
            };
            if ended || stopping {
                return;
            }
        }
    }
}

/// The guest console in the shim's debug log, at a bounded rate: at most `budget` lines per
/// `window`, each cut to [`LOG_LINE_MAX`] bytes, and one line saying how many were left out.
/// Holds one line at most, whatever the guest writes.
#[derive(Debug)]
struct LineLog {
    log: Logger,
    line: Vec<u8>,
    budget: u32,
    left: u32,
    window: Duration,
    since: Instant,
    skipped: u64,
}

impl LineLog {
    fn new(log: Logger, budget: u32, window: Duration) -> Self {
        Self { log, line: Vec::new(), budget, left: budget, window, since: Instant::now(), skipped: 0 }
    }

    /// Takes the next bytes of the console.
    fn feed(&mut self, bytes: &[u8]) {
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            let (text, ended) = match piece.strip_suffix(b"\n") {
                Some(text) => (text, true),
                None => (piece, false),
            };
            let room = LOG_LINE_MAX.saturating_sub(self.line.len());
            self.line.extend_from_slice(&text[..room.min(text.len())]);
            if ended {
                self.emit();
            }
        }
    }

    fn emit(&mut self) {
        if self.since.elapsed() >= self.window {
            if self.skipped > 0 {
                debug!(self.log, "guest console lines left out of this log (rate bound)"; "lines" => self.skipped);
            }
            (self.since, self.left, self.skipped) = (Instant::now(), self.budget, 0);
        }
        if self.left > 0 {
            self.left -= 1;
            let text = String::from_utf8_lossy(&self.line);
            debug!(self.log, "guest console"; "line" => text.trim_end_matches('\r'));
        } else {
            self.skipped += 1;
        }
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discard() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    fn size(path: &Path) -> u64 {
        fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    #[test]
    fn the_ring_wraps_and_keeps_the_last_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut ring = Ring::create(&path, 100).unwrap();
        let mut written = Vec::new();
        for i in 0..40u32 {
            let line = format!("line {i}\n");
            ring.write(line.as_bytes()).unwrap();
            written.extend_from_slice(line.as_bytes());
            assert!(size(&path) <= 50 && size(&previous(&path)) <= 50, "each file stays under half the cap");
        }
        assert!(previous(&path).exists(), "the ring wrapped");
        let (kept, _) = read_last(&path, u64::MAX);
        assert!(kept.len() >= 50 && kept.len() <= 100, "between half the cap and the cap: {}", kept.len());
        assert!(written.ends_with(&kept), "what is kept is the end of what was written, in order");
    }

    #[test]
    fn a_write_larger_than_the_cap_keeps_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut ring = Ring::create(&path, 64).unwrap();
        let big: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        ring.write(&big).unwrap();
        assert!(size(&path) + size(&previous(&path)) <= 64);
        let (kept, _) = read_last(&path, u64::MAX);
        assert!(big.ends_with(&kept) && kept.len() >= 32, "{}", kept.len());
    }

    #[test]
    fn tail_reads_across_the_wrap_and_only_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut ring = Ring::create(&path, 64).unwrap();
        ring.write(b"one\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\nten-is-longer-than\n").unwrap();
        ring.write(b"x\ny\n").unwrap();
        // The last lines span both files.
        let current = fs::read_to_string(&path).unwrap();
        assert!(!current.contains("nine"), "the wrap falls inside the tail: {current:?}");
        assert_eq!(tail(&path, 3), "ten-is-longer-than\nx\ny");
        assert_eq!(tail(&dir.path().join("missing"), 3), "");

        // A huge log: the tail reads a bounded end, and drops the line the bound cut.
        let plain = dir.path().join("plain.log");
        let mut text = "A".repeat(3 * TAIL_MAX_BYTES as usize);
        text.push_str("\nlast words\n");
        fs::write(&plain, &text).unwrap();
        assert_eq!(tail(&plain, 20), "last words");
        let long = "B".repeat(2 * TAIL_MAX_BYTES as usize);
        fs::write(&plain, &long).unwrap();
        assert!(tail(&plain, 1).len() as u64 <= TAIL_MAX_BYTES, "a single endless line is bounded too");
    }

    #[test]
    fn the_drain_copies_a_fifo_into_a_bounded_ring_and_ends_with_its_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (fifo, out) = (dir.path().join("console.fifo"), dir.path().join("console.log"));
        let mut drain = ConsoleDrain::start_at(&fifo, &out, 64 << 10, &discard()).unwrap();
        let mode = fs::metadata(&fifo).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only the owner may open the FIFO");
        // What a VMM does: open for writing (not blocking: the drain holds the read end).
        let mut writer = OpenOptions::new().write(true).open(&fifo).unwrap();
        let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\n";
        let mut total = 0u64;
        while total < 8 << 20 {
            writer.write_all(line).unwrap();
            total += line.len() as u64;
        }
        writer.write_all(b"the end\n").unwrap();
        drop(writer);
        let start = Instant::now();
        while !tail(&out, 1).contains("the end") {
            assert!(start.elapsed() < Duration::from_secs(10), "the drain copies everything: {:?}", tail(&out, 2));
            thread::sleep(Duration::from_millis(10));
        }
        assert!(size(&out) + size(&previous(&out)) <= 64 << 10, "8 MiB written, at most the cap kept");
        assert_eq!(tail(&out, 2), format!("{}\nthe end", String::from_utf8_lossy(&line[..line.len() - 1])));
        assert!(drain.wait_ended(Duration::from_secs(5)), "the writer's close ends the drain");
        drain.stop();
    }

    #[test]
    fn a_drain_whose_vmm_never_came_stops_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (fifo, out) = (dir.path().join("console.fifo"), dir.path().join("console.log"));
        fs::write(&fifo, b"stale").unwrap();
        let drain = ConsoleDrain::start_at(&fifo, &out, 1024, &discard()).unwrap();
        assert!(!drain.wait_ended(Duration::from_millis(50)), "no writer yet is not an end");
        let start = Instant::now();
        drop(drain);
        assert!(start.elapsed() < Duration::from_secs(1));
        use std::os::unix::fs::FileTypeExt;
        assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo(), "a stale file was replaced by the FIFO");
        assert_eq!(fs::read(&out).unwrap(), b"");
    }

    /// A slog drain that keeps each record's message and key-values as one line.
    #[derive(Debug, Clone, Default)]
    struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl slog::Drain for Recorder {
        type Ok = ();
        type Err = slog::Never;
        fn log(&self, record: &slog::Record<'_>, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
            struct Line(String);
            impl slog::Serializer for Line {
                fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
                    self.0.push_str(&format!(" {key}={val}"));
                    Ok(())
                }
            }
            let mut line = Line(record.msg().to_string());
            let _ = slog::KV::serialize(&record.kv(), record, &mut line);
            let _ = slog::KV::serialize(values, record, &mut line);
            self.0.lock().unwrap().push(line.0);
            Ok(())
        }
    }

    #[test]
    fn console_lines_reach_the_debug_log_at_a_bounded_rate() {
        let recorder = Recorder::default();
        let mut lines = LineLog::new(Logger::root(recorder.clone(), slog::o!()), 3, Duration::from_millis(200));
        let long = "z".repeat(10 * LOG_LINE_MAX);
        lines.feed(b"first\r\nsec");
        lines.feed(b"ond\n");
        lines.feed(format!("{long}\n").as_bytes());
        for i in 0..1000 {
            lines.feed(format!("flood {i}\n").as_bytes());
        }
        thread::sleep(Duration::from_millis(250));
        lines.feed(b"after the window\n");
        let seen = recorder.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 5, "{seen:?}");
        assert_eq!(seen[0], "guest console line=first");
        assert_eq!(seen[1], "guest console line=second", "a line split across reads is one line");
        assert_eq!(seen[2], format!("guest console line={}", &long[..LOG_LINE_MAX]), "a long line is cut");
        assert_eq!(seen[3], "guest console lines left out of this log (rate bound) lines=1000");
        assert_eq!(seen[4], "guest console line=after the window");
        assert!(lines.line.capacity() <= 2 * LOG_LINE_MAX, "one cut line is all it holds");
    }

    /// The drain's memory, measured alone in a child process (other tests of this binary
    /// allocate in parallel): see [`drain_rss_probe`].
    #[test]
    fn the_drain_memory_does_not_grow_with_the_output() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args(["--exact", "hypervisor::console::tests::drain_rss_probe", "--include-ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .output()
            .unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{said}");
        assert!(said.contains("1 passed"), "the probe ran: {said}");
    }

    /// The anonymous memory of this process (RssAnon: the heap and stacks, not the code pages
    /// the test binary touches as it goes) after 16 MiB and after 128 MiB through a drain: the
    /// drain keeps one 64 KiB buffer, whatever the guest writes. Run alone by the test above.
    #[test]
    #[ignore = "run in its own process by the_drain_memory_does_not_grow_with_the_output"]
    fn drain_rss_probe() {
        let rss = || {
            let status = fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap().to_owned();
            line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
        };
        let dir = tempfile::tempdir().unwrap();
        let (fifo, out) = (dir.path().join("console.fifo"), dir.path().join("console.log"));
        let drain = ConsoleDrain::start_at(&fifo, &out, CONSOLE_CAP, &discard()).unwrap();
        let mut writer = OpenOptions::new().write(true).open(&fifo).unwrap();
        let block = vec![b'x'; 1 << 20];
        let mut write = |mib: usize| (0..mib).for_each(|_| writer.write_all(&block).unwrap());
        // The first megabytes touch the drain's buffer, its thread's stack and malloc arena.
        write(16);
        let early = rss();
        write(112);
        let late = rss();
        drop(writer);
        assert!(drain.wait_ended(Duration::from_secs(10)));
        drop(drain);
        eprintln!("RssAnon after 16 MiB {early}, after 128 MiB {late} bytes");
        assert!(late < early + (128 << 10), "RssAnon grew from {early} to {late} bytes over 112 MiB of console");
        assert!(size(&out) + size(&previous(&out)) <= CONSOLE_CAP);
    }
}
