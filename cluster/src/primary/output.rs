//! Per-worker output capture (PM2's and egg's prefixed logs): with
//! [`ChildOutput::Capture`](crate::ChildOutput::Capture), a worker's stdout
//! and stderr are each one end of a Unix socketpair (a normal, blocking fd
//! for the worker); the primary reads the other end from its loop, cuts the
//! bytes into lines and writes each line, prefixed with
//! `[worker ID pid PID] `, to its own output (its stderr, or the writer
//! given to [`Primary::capture_into`]).
//!
//! The primary's loop never blocks on that output: complete lines go into a
//! bounded buffer ([`Settings::capture_buffer`](crate::Settings::capture_buffer))
//! that a writer thread empties with blocking writes. A line that does not
//! fit (the output is slower than the workers) is dropped whole and
//! counted ([`Primary::captured_lines_dropped`]). A partial line waits for
//! its end (or the stream's); a line longer than [`MAX_LINE`] is cut into
//! pieces of that size, each written as a line of its own.

use super::{Primary, PrimaryData, PrimaryId};
use crate::schedule::WorkerId;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use uvring::{Loop, OnRead, PipeStream};

/// The longest captured line written whole; a longer one is cut.
pub const MAX_LINE: usize = 4096;

/// How long dropping the primary waits for its writer thread to write the
/// lines still buffered.
const FLUSH_ON_DROP: Duration = Duration::from_secs(2);

/// The buffer the loop fills and the writer thread empties.
struct Shared {
    state: Mutex<SinkState>,
    /// The writer waits on it for bytes; `Drop` waits on it for the flush.
    cond: Condvar,
    dropped: AtomicU64,
}

struct SinkState {
    buf: Vec<u8>,
    /// The writer is writing a batch it took out.
    busy: bool,
    closed: bool,
    /// A writer to use from the next batch on.
    target: Option<Box<dyn Write + Send>>,
}

/// One captured stream (a worker's stdout or stderr).
struct Capture {
    stream: PipeStream,
    /// `[worker ID pid PID] `.
    prefix: Vec<u8>,
    /// The line so far (no newline yet).
    line: Vec<u8>,
}

/// The primary's capture state.
pub(super) struct Output<D> {
    captures: Vec<Capture>,
    shared: Option<Arc<Shared>>,
    capacity: usize,
    /// A writer given before the thread started.
    target: Option<Box<dyn Write + Send>>,
    on_read: OnRead<D, PipeStream>,
}

impl<D> Drop for Output<D> {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else { return };
        let Ok(mut st) = shared.state.lock() else { return };
        st.closed = true;
        shared.cond.notify_all();
        // A bounded wait for the last lines to be written.
        let deadline = std::time::Instant::now() + FLUSH_ON_DROP;
        while !st.buf.is_empty() || st.busy {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match shared.cond.wait_timeout(st, left) {
                Ok((s, _)) => st = s,
                Err(_) => return,
            }
        }
    }
}

impl<D: PrimaryData> Output<D> {
    pub(super) fn new(id: PrimaryId, capacity: usize) -> Output<D> {
        Output { captures: Vec::new(), shared: None, capacity, target: None, on_read: on_capture_read(id) }
    }
}

impl<D> Output<D> {
    /// The writer thread's buffer, started at the first capture.
    fn shared(&mut self) -> &Arc<Shared> {
        let target = &mut self.target;
        let capacity = self.capacity;
        self.shared.get_or_insert_with(|| {
            let shared = Arc::new(Shared {
                state: Mutex::new(SinkState {
                    buf: Vec::with_capacity(capacity.min(1 << 16)),
                    busy: false,
                    closed: false,
                    target: target.take(),
                }),
                cond: Condvar::new(),
                dropped: AtomicU64::new(0),
            });
            let for_thread = shared.clone();
            let spawned = std::thread::Builder::new().name("uvring-capture".into()).spawn(move || writer(&for_thread));
            if spawned.is_err() {
                // No thread: lines are dropped (and counted) rather than
                // blocking the loop.
                if let Ok(mut st) = shared.state.lock() {
                    st.closed = true;
                }
            }
            shared
        })
    }

    /// Appends one line (`prefix`, `parts`, a newline) to the buffer, or
    /// counts it dropped if it does not fit.
    fn push_line(shared: &Shared, capacity: usize, prefix: &[u8], parts: &[&[u8]]) {
        let len = prefix.len() + parts.iter().map(|p| p.len()).sum::<usize>() + 1;
        let Ok(mut st) = shared.state.lock() else { return };
        if st.closed || st.buf.len() + len > capacity {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        st.buf.extend_from_slice(prefix);
        for p in parts {
            st.buf.extend_from_slice(p);
        }
        st.buf.push(b'\n');
        shared.cond.notify_all();
    }

    /// Feeds bytes read from capture `i`: complete lines go out, the rest
    /// waits (cut at [`MAX_LINE`]).
    fn feed(&mut self, i: usize, bytes: &[u8]) {
        let capacity = self.capacity;
        let shared = self.shared().clone();
        let c = &mut self.captures[i];
        let prefix = &c.prefix;
        split_lines(&mut c.line, bytes, |parts| Self::push_line(&shared, capacity, prefix, parts));
    }

    /// The stream of capture `i` ended: its partial line goes out, and the
    /// stream is closed.
    fn finish(&mut self, lp: &mut Loop<D>, i: usize) {
        let capacity = self.capacity;
        let shared = self.shared().clone();
        let c = self.captures.swap_remove(i);
        if !c.line.is_empty() {
            Self::push_line(&shared, capacity, &c.prefix, &[&c.line]);
        }
        let _ = lp.close(c.stream, None);
    }
}

/// Cuts `bytes` (what follows `line`, the partial line so far) into lines:
/// `emit` gets each complete line's parts (without the newline); a line
/// longer than [`MAX_LINE`] goes out in pieces of that size; what is left
/// stays in `line`.
fn split_lines(line: &mut Vec<u8>, mut bytes: &[u8], mut emit: impl FnMut(&[&[u8]])) {
    loop {
        let end = bytes.iter().position(|&b| b == b'\n');
        let head = &bytes[..end.unwrap_or(bytes.len())];
        let mut head = head;
        while line.len() + head.len() > MAX_LINE {
            let take = MAX_LINE - line.len();
            emit(&[line, &head[..take]]);
            line.clear();
            head = &head[take..];
        }
        match end {
            Some(nl) => {
                emit(&[line, head]);
                line.clear();
                bytes = &bytes[nl + 1..];
            }
            None => {
                line.extend_from_slice(head);
                return;
            }
        }
    }
}

/// The writer thread: writes the buffered lines, a batch at a time, with
/// blocking writes (to stderr unless a writer was given).
fn writer(shared: &Shared) {
    let mut batch = Vec::new();
    let mut target: Option<Box<dyn Write + Send>> = None;
    loop {
        {
            let Ok(mut st) = shared.state.lock() else { return };
            st.busy = false;
            shared.cond.notify_all();
            while st.buf.is_empty() && !st.closed {
                st = match shared.cond.wait(st) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
            if st.buf.is_empty() {
                return;
            }
            if let Some(t) = st.target.take() {
                target = Some(t);
            }
            std::mem::swap(&mut st.buf, &mut batch);
            st.busy = true;
        }
        let _ = match target.as_mut() {
            Some(t) => t.write_all(&batch).and_then(|()| t.flush()),
            None => std::io::stderr().lock().write_all(&batch),
        };
        batch.clear();
    }
}

impl<D> Primary<D> {
    /// Lines of captured worker output dropped because the primary's own
    /// output did not keep up (its buffer, `Settings::capture_buffer`, was
    /// full).
    pub fn captured_lines_dropped(&self) -> u64 {
        self.output.shared.as_ref().map_or(0, |s| s.dropped.load(Ordering::Relaxed))
    }

    /// Sends captured worker output to `w` instead of the primary's stderr
    /// (from the next batch of lines on). `w` is written from a thread of
    /// the primary's with blocking writes.
    pub fn capture_into(&mut self, w: impl Write + Send + 'static) {
        match &self.output.shared {
            Some(shared) => {
                if let Ok(mut st) = shared.state.lock() {
                    st.target = Some(Box::new(w));
                }
            }
            None => self.output.target = Some(Box::new(w)),
        }
    }

    /// Starts capturing `stream` (a worker's stdout or stderr).
    pub(super) fn capture(&mut self, lp: &mut Loop<D>, stream: PipeStream, id: WorkerId, pid: i32) {
        let prefix = format!("[worker {id} pid {pid}] ").into_bytes();
        if lp.read_start(stream, &self.output.on_read).is_err() {
            let _ = lp.close(stream, None);
            return;
        }
        self.output.captures.push(Capture { stream, prefix, line: Vec::new() });
    }
}

/// The read callback of every captured stream.
fn on_capture_read<D: PrimaryData>(pid: PrimaryId) -> OnRead<D, PipeStream> {
    OnRead::new(move |lp, d: &mut D, stream, res| {
        let Some(p) = d.primary_by_id(pid) else { return };
        let out = &mut p.output;
        let Some(i) = out.captures.iter().position(|c| c.stream == stream) else { return };
        match res {
            Ok(bytes) => out.feed(i, bytes),
            // EOF (the worker exited or closed it), or an error.
            Err(_) => out.finish(lp, i),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<u8>) {
        let (mut out, mut line) = (Vec::new(), Vec::new());
        for c in chunks {
            split_lines(&mut line, c, |parts| out.push(parts.concat()));
        }
        (out, line)
    }

    #[test]
    fn partial_lines_are_joined() {
        let (out, rest) = split(&[b"one\ntw", b"o\n", b"thr", b"ee\nfour"]);
        assert_eq!(out, [&b"one"[..], b"two", b"three"]);
        assert_eq!(rest, b"four");
        let (out, rest) = split(&[b"\n\n"]);
        assert_eq!((out.len(), rest.len()), (2, 0));
    }

    #[test]
    fn long_lines_are_cut() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let (out, rest) = split(&[&long[..100], &long[100..], b"\nend\n", &long[..MAX_LINE + 1]]);
        let lens: Vec<usize> = out.iter().map(Vec::len).collect();
        assert_eq!(lens, [MAX_LINE, MAX_LINE, 10, 3, MAX_LINE]);
        assert_eq!(rest, b"x");
    }

    #[test]
    fn a_full_buffer_drops_whole_lines_and_counts_them() {
        let shared = Shared {
            state: Mutex::new(SinkState { buf: Vec::new(), busy: false, closed: false, target: None }),
            cond: Condvar::new(),
            dropped: AtomicU64::new(0),
        };
        for _ in 0..3 {
            Output::<()>::push_line(&shared, 15, b"[w] ", &[b"123", b"45"]);
        }
        assert_eq!(shared.state.lock().unwrap().buf, b"[w] 12345\n");
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 2);
    }
}
