//! Progress on stderr: on a terminal one bar line redrawn in place (`[#####.....] 12/30 run 2/5
//! q35 agent`), with notes and failures printed above it; elsewhere (CI logs, pipes) one line
//! per run with its summary, as before.

use std::io::{IsTerminal, Write};

/// The progress of `total` boots.
#[derive(Debug)]
pub struct Progress {
    total: usize,
    done: usize,
    tty: bool,
    label: String,
}

/// Width of the bar in characters.
const BAR: usize = 30;

impl Progress {
    pub fn new(total: usize) -> Self {
        Self { total, done: 0, tty: std::io::stderr().is_terminal(), label: String::new() }
    }

    /// A boot starts.
    pub fn start(&mut self, label: &str) {
        self.label = label.to_owned();
        if self.tty {
            self.draw();
        } else {
            eprint!("{label} ... ");
        }
    }

    /// The boot succeeded with `summary`.
    pub fn done(&mut self, summary: &str) {
        self.done += 1;
        if self.tty {
            self.draw();
        } else {
            eprintln!("{summary}");
        }
    }

    /// A note on the boot that just ended.
    pub fn note(&mut self, note: &str) {
        self.above(&format!("  note: {note}"));
    }

    /// The boot failed.
    pub fn failed(&mut self, error: &str) {
        self.done += 1;
        if self.tty {
            self.above(&format!("FAILED {error}"));
        } else {
            eprintln!("FAILED\n{error}");
        }
    }

    /// Ends the bar line.
    pub fn finish(&mut self) {
        if self.tty {
            eprintln!();
        }
    }

    fn above(&mut self, line: &str) {
        if self.tty {
            eprint!("\r\x1b[K{line}\n");
            self.draw();
        } else {
            eprintln!("{line}");
        }
    }

    fn draw(&self) {
        eprint!("\r\x1b[K{}", bar_line(self.done, self.total, &self.label));
        let _ = std::io::stderr().flush();
    }
}

/// `[####......] done/total label`.
pub fn bar_line(done: usize, total: usize, label: &str) -> String {
    let filled = (done * BAR).checked_div(total).unwrap_or(BAR).min(BAR);
    format!("[{}{}] {done}/{total} {label}", "#".repeat(filled), ".".repeat(BAR - filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_fills_with_the_boots_done() {
        assert_eq!(bar_line(0, 10, "x"), format!("[{}] 0/10 x", ".".repeat(30)));
        assert_eq!(bar_line(5, 10, "y"), format!("[{}{}] 5/10 y", "#".repeat(15), ".".repeat(15)));
        assert_eq!(bar_line(10, 10, ""), format!("[{}] 10/10 ", "#".repeat(30)));
    }
}
