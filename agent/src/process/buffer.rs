//! A bounded byte queue between a process's output pipe and ReadStdout/ReadStderr.
//!
//! The agent keeps reading a process's output whether or not the host reads
//! it, so a process that exits before anyone asked loses nothing. The queue
//! is bounded: when it is full the pump stops reading the pipe, the pipe
//! fills, and the process blocks in write(2) — the back-pressure a slow
//! reader should exert, instead of the agent's memory growing without end.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::Mutex;

use tokio::sync::Notify;

/// What a stream buffers at most before the process is made to wait.
pub const STREAM_CAPACITY: usize = 1 << 20;

#[derive(Debug, Default)]
struct State {
    data: VecDeque<u8>,
    /// The writer side is gone and nothing more will come.
    eof: bool,
}

#[derive(Debug)]
pub struct OutputBuffer {
    state: Mutex<State>,
    capacity: usize,
    /// Data or EOF arrived.
    readable: Notify,
    /// A reader made room.
    space: Notify,
}

impl OutputBuffer {
    pub fn new(capacity: usize) -> Self {
        OutputBuffer {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            readable: Notify::new(),
            space: Notify::new(),
        }
    }

    /// A buffer that is already at EOF (stderr of a terminal process).
    pub fn closed() -> Self {
        let b = OutputBuffer::new(1);
        b.close();
        b
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the queue consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until there is room and returns how many bytes fit.
    pub async fn room(&self) -> usize {
        loop {
            let mut notified = pin!(self.space.notified());
            notified.as_mut().enable();
            let free = self.capacity.saturating_sub(self.lock().data.len());
            if free > 0 {
                return free;
            }
            notified.await;
        }
    }

    /// Appends what the pump read; the pump asked [`room`](Self::room) first.
    pub fn push(&self, bytes: &[u8]) {
        self.lock().data.extend(bytes);
        self.readable.notify_waiters();
    }

    /// Marks the end of the stream; readers get what is left, then EOF.
    pub fn close(&self) {
        self.lock().eof = true;
        self.readable.notify_waiters();
    }

    /// Up to `max` bytes, waiting until there are some; `None` at EOF.
    pub async fn read(&self, max: usize) -> Option<Vec<u8>> {
        let max = max.max(1);
        loop {
            let mut notified = pin!(self.readable.notified());
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                if !s.data.is_empty() {
                    let n = max.min(s.data.len());
                    let out: Vec<u8> = s.data.drain(..n).collect();
                    drop(s);
                    self.space.notify_waiters();
                    return Some(out);
                }
                if s.eof {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Up to `max` bytes if there are some, without waiting.
    pub fn try_read(&self, max: usize) -> Option<Vec<u8>> {
        let mut s = self.lock();
        if s.data.is_empty() {
            return None;
        }
        let n = max.max(1).min(s.data.len());
        let out: Vec<u8> = s.data.drain(..n).collect();
        drop(s);
        self.space.notify_waiters();
        Some(out)
    }

    /// At EOF with nothing left to read.
    pub fn drained(&self) -> bool {
        let s = self.lock();
        s.eof && s.data.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn data_then_eof() {
        let b = OutputBuffer::new(16);
        b.push(b"hello world");
        b.close();
        assert!(!b.drained(), "closed but not read yet");
        assert_eq!(b.read(5).await.as_deref(), Some(&b"hello"[..]));
        assert_eq!(b.read(100).await.as_deref(), Some(&b" world"[..]));
        assert!(b.drained());
        assert_eq!(b.read(100).await, None);
        assert_eq!(b.read(100).await, None, "EOF stays EOF");
    }

    #[tokio::test]
    async fn a_reader_blocks_until_data_arrives() {
        let b = Arc::new(OutputBuffer::new(16));
        let reader = tokio::spawn({
            let b = b.clone();
            async move { b.read(10).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!reader.is_finished());
        b.push(b"x");
        assert_eq!(reader.await.unwrap().as_deref(), Some(&b"x"[..]));
    }

    #[tokio::test]
    async fn a_full_buffer_holds_the_writer_until_read() {
        let b = Arc::new(OutputBuffer::new(4));
        assert_eq!(b.room().await, 4);
        b.push(b"abcd");
        let writer = tokio::spawn({
            let b = b.clone();
            async move { b.room().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!writer.is_finished(), "no room while full");
        assert_eq!(b.read(3).await.as_deref(), Some(&b"abc"[..]));
        assert_eq!(writer.await.unwrap(), 3);
        assert_eq!(b.read(10).await.as_deref(), Some(&b"d"[..]));
    }

    #[test]
    fn try_read_takes_what_is_there() {
        let b = OutputBuffer::new(8);
        assert_eq!(b.try_read(4), None);
        b.push(b"abc");
        assert_eq!(b.try_read(2).as_deref(), Some(&b"ab"[..]));
        assert_eq!(b.try_read(9).as_deref(), Some(&b"c"[..]));
    }

    #[tokio::test]
    async fn closed_is_eof_at_once() {
        assert_eq!(OutputBuffer::closed().read(1).await, None);
    }
}
