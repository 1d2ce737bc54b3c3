//! A bounded in-memory log for the inline UI of `tapwire collect`: a `tracing` writer that keeps
//! the newest lines for the log pane, so that nothing is ever written over the screen.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing_subscriber::fmt::MakeWriter;

/// The newest `capacity` log lines, shared between the logger and the UI.
#[derive(Clone)]
pub struct LogBuffer {
    inner: Arc<Mutex<Lines>>,
}

struct Lines {
    lines: VecDeque<String>,
    capacity: usize,
    /// Lines ever pushed: the UI redraws when it changes.
    n_pushed: u64,
}

impl LogBuffer {
    pub fn new(capacity: usize) -> LogBuffer {
        LogBuffer {
            inner: Arc::new(Mutex::new(Lines {
                lines: VecDeque::with_capacity(capacity.min(1024)),
                capacity: capacity.max(1),
                n_pushed: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lines> {
        // A logger that panicked mid-push leaves whole lines behind: the data is still good.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, line: &str) {
        let mut l = self.lock();
        if l.lines.len() == l.capacity {
            l.lines.pop_front();
        }
        l.lines.push_back(line.to_string());
        l.n_pushed += 1;
    }

    /// The newest `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let l = self.lock();
        l.lines
            .iter()
            .skip(l.lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    pub fn n_pushed(&self) -> u64 {
        self.lock().n_pushed
    }
}

/// Collects one event's output and pushes it line by line when dropped (the fmt layer writes
/// each event through one writer).
pub struct LineWriter {
    buf: LogBuffer,
    pending: Vec<u8>,
}

impl io::Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.pending);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            self.buf.push(line);
        }
    }
}

impl<'a> MakeWriter<'a> for LogBuffer {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            buf: self.clone(),
            pending: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn keeps_the_newest_lines_and_counts_all() {
        let b = LogBuffer::new(3);
        for i in 0..5 {
            b.push(&format!("line {i}"));
        }
        assert_eq!(b.tail(10), ["line 2", "line 3", "line 4"]);
        assert_eq!(b.tail(1), ["line 4"]);
        assert_eq!(b.n_pushed(), 5);
    }

    #[test]
    fn a_writer_splits_lines_and_skips_blank_ones() {
        let b = LogBuffer::new(10);
        {
            let mut w = b.make_writer();
            w.write_all(b"first\nsec").unwrap();
            w.write_all(b"ond\n\n").unwrap();
        }
        assert_eq!(b.tail(10), ["first", "second"]);
    }
}
