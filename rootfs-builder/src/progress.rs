//! Progress for long steps (layer extraction, compression, image writes): one `\r`-rewritten
//! line on stderr when stderr is a terminal, nothing at all otherwise, so logs and pipes stay
//! clean and tests see only the final report.

use std::io::{self, IsTerminal, Read, Write};
use std::time::{Duration, Instant};

/// How often the line is redrawn at most.
const REDRAW: Duration = Duration::from_millis(100);

/// A progress line; inert when stderr is not a terminal.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    label: String,
    done: u64,
    last: Option<Instant>,
}

impl Progress {
    /// A progress line for `label`, shown only if stderr is a terminal.
    pub fn new(label: impl Into<String>) -> Self {
        Self::with_output(label, io::stderr().is_terminal())
    }

    /// A progress line that draws only when `enabled` (tests pass `false`).
    pub fn with_output(label: impl Into<String>, enabled: bool) -> Self {
        Self { enabled, label: label.into(), done: 0, last: None }
    }

    /// Starts a new step, e.g. `layer 2/5`.
    pub fn step(&mut self, label: impl Into<String>) {
        self.label = label.into();
        self.done = 0;
        self.last = None;
        self.draw();
    }

    /// Counts `n` more bytes.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        if self.last.map_or(true, |t| t.elapsed() >= REDRAW) {
            self.draw();
        }
    }

    fn draw(&mut self) {
        if !self.enabled {
            return;
        }
        self.last = Some(Instant::now());
        let mib = self.done as f64 / (1024.0 * 1024.0);
        let mut err = io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{} {mib:.1} MiB", self.label);
        let _ = err.flush();
    }

    /// Clears the line.
    pub fn finish(&mut self) {
        if self.enabled && self.last.is_some() {
            let mut err = io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
        self.last = None;
    }

    /// Wraps `reader` so every byte read advances this line.
    pub fn reader<R: Read>(&mut self, reader: R) -> ProgressReader<'_, R> {
        ProgressReader { inner: reader, progress: self }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A reader counting into a [`Progress`].
#[derive(Debug)]
pub struct ProgressReader<'a, R> {
    inner: R,
    progress: &'a mut Progress,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes_and_stays_quiet_when_disabled() {
        let mut p = Progress::with_output("x", false);
        let mut out = Vec::new();
        p.reader(&b"hello"[..]).read_to_end(&mut out).unwrap();
        assert_eq!(p.done, 5);
        assert!(p.last.is_none(), "never drew");
    }
}
