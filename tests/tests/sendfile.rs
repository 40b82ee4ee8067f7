//! File-to-socket transfer (`Loop::sendfile`): a multi-MiB file arrives
//! intact, ranges (offset and length, a length past the end), ordering with
//! the writes queued around a transfer, a peer reset mid-transfer (an error
//! value, no fd leaked), close with a transfer in flight, and a file read
//! from disk rather than the page cache. Each scenario runs four ways: on
//! epoll (`sendfile` after a page-cache probe, misses read in on the work
//! pool), on io_uring the same way (`POLLOUT` through the ring), on
//! io_uring with read+send through the ring, and on io_uring with file
//! operations on the pool (`sendfile`).

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;
use uvring::*;
use uvring_tests::{listener, read_to_end_in_thread, run_until_with, with_timeout};

macro_rules! sendfile_cases {
    ($($(#[$meta:meta])* fn $name:ident($lp:ident: $d:ty) $body:block)*) => {
        $(
            $(#[$meta])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                fn body($lp: &mut Loop<$d>) $body
                #[test]
                fn epoll() {
                    uvring_tests::run_on_of(Backend::Epoll, LoopOptions::default(), body)
                }
                #[test]
                fn io_uring() {
                    let opts = LoopOptions::default().fs_io_uring(true).sendfile_read_send(false);
                    uvring_tests::run_on_of(Backend::IoUring, opts, body)
                }
                #[test]
                fn io_uring_read_send() {
                    let opts = LoopOptions::default().fs_io_uring(true).sendfile_read_send(true);
                    uvring_tests::run_on_of(Backend::IoUring, opts, body)
                }
                #[test]
                fn io_uring_pool() {
                    uvring_tests::run_on_of(Backend::IoUring, LoopOptions::default().fs_io_uring(false), body)
                }
            }
        )*
    };
}

const LIMIT: Duration = Duration::from_secs(30);

/// A file of `len` pseudo-random bytes in a directory of its own, removed
/// when dropped.
struct TempFile {
    dir: PathBuf,
    path: PathBuf,
    bytes: Vec<u8>,
}

impl TempFile {
    fn new(tag: &str, len: usize) -> TempFile {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("uvring-sendfile-{}-{tag}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ len as u64;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(&path, &bytes).unwrap();
        TempFile { dir, path, bytes }
    }

    fn open(&self) -> File {
        File::open(&self.path).unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// FNV-1a, to compare megabytes by a short value in assertion messages.
fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| (h ^ x as u64).wrapping_mul(0x100_0000_01b3))
}

/// The server side: the file being sent, what the callbacks got, in order.
#[derive(Default)]
struct Server {
    file: Option<File>,
    /// ("w", bytes) for write callbacks, ("f", bytes) for transfers, the
    /// error otherwise.
    events: Vec<(char, std::result::Result<u64, Error>)>,
    closed: bool,
    stream: Option<TcpStream>,
}

fn on_write() -> OnWrite<Server, TcpStream> {
    OnWrite::new(|_, d: &mut Server, _, r: Result<()>| d.events.push(('w', r.map(|()| 0))))
}

fn on_sent() -> OnSendFile<Server, TcpStream> {
    OnSendFile::new(|_, d: &mut Server, _, r: Result<u64>| d.events.push(('f', r)))
}

fn on_close() -> OnClose<Server> {
    OnClose::new(|_, d: &mut Server, _| d.closed = true)
}

/// Accepts one connection into `d.stream`, closing the listener.
fn accept_one() -> OnConnection<Server, TcpListener> {
    OnConnection::new(|lp: &mut Loop<Server>, d: &mut Server, l, r: Result<()>| {
        r.unwrap();
        d.stream = Some(lp.accept(l).unwrap());
        lp.close(l, None).unwrap();
    })
}

/// Runs until the server has accepted.
fn accepted(lp: &mut Loop<Server>, d: &mut Server) -> TcpStream {
    run_until_with(lp, d, LIMIT, |_, d| d.stream.is_some());
    d.stream.unwrap()
}

/// Runs until `n` callbacks have run, then closes the stream and runs until
/// its close callback has.
fn finish(lp: &mut Loop<Server>, d: &mut Server, s: TcpStream, n: usize) {
    run_until_with(lp, d, LIMIT, |_, d| d.events.len() >= n);
    lp.close(s, Some(&on_close())).unwrap();
    run_until_with(lp, d, LIMIT, |_, d| d.closed);
}

sendfile_cases! {
    /// A 6 MiB file between two writes arrives intact and in order.
    fn a_multi_mib_file_arrives_intact_between_writes(lp: Server) {
        let f = TempFile::new("whole", 6 * 1024 * 1024 + 123);
        let mut d = Server { file: Some(f.open()), ..Default::default() };
        let (_l, addr) = listener(lp, &accept_one());
        let client = read_to_end_in_thread(addr, LIMIT);
        let s = accepted(lp, &mut d);
        lp.write(s, b"head:", Some(&on_write())).unwrap();
        let len = f.bytes.len() as u64;
        lp.sendfile(s, d.file.as_ref().unwrap(), 0, len, Some(&on_sent())).unwrap();
        lp.write(s, b":tail", Some(&on_write())).unwrap();
        finish(lp, &mut d, s, 3);
        assert_eq!(d.events, vec![('w', Ok(0)), ('f', Ok(len)), ('w', Ok(0))]);
        let got = with_timeout(LIMIT, move || client.join().unwrap());
        let mut want = b"head:".to_vec();
        want.extend_from_slice(&f.bytes);
        want.extend_from_slice(b":tail");
        assert_eq!(got.len(), want.len());
        assert_eq!(checksum(&got), checksum(&want), "the bytes differ");
    }

    /// Ranges: one byte, across a page boundary, a megabyte-scale middle
    /// part, an empty one, and one that runs past the end of the file (the
    /// callback gets the bytes that exist).
    fn offset_and_length_ranges(lp: Server) {
        let f = TempFile::new("ranges", 3 * 1024 * 1024 + 7);
        let size = f.bytes.len() as u64;
        let mut d = Server { file: Some(f.open()), ..Default::default() };
        let (_l, addr) = listener(lp, &accept_one());
        let client = read_to_end_in_thread(addr, LIMIT);
        let s = accepted(lp, &mut d);
        let ranges: [(u64, u64); 5] = [(0, 1), (4095, 2), (1_000_003, 1_500_000), (17, 0), (size - 10, 100)];
        for &(off, len) in &ranges {
            lp.sendfile(s, d.file.as_ref().unwrap(), off, len, Some(&on_sent())).unwrap();
        }
        finish(lp, &mut d, s, ranges.len());
        let want_counts: Vec<_> = ranges.iter().map(|&(o, l)| ('f', Ok(l.min(size - o)))).collect();
        assert_eq!(d.events, want_counts);
        let got = with_timeout(LIMIT, move || client.join().unwrap());
        let mut want = Vec::new();
        for &(off, len) in &ranges {
            let end = (off + len).min(size) as usize;
            want.extend_from_slice(&f.bytes[off as usize..end]);
        }
        assert_eq!(got.len(), want.len());
        assert_eq!(checksum(&got), checksum(&want), "the bytes differ");
    }

    /// The peer resets the connection while a 32 MiB transfer (more than
    /// the socket buffers hold) is under way: the transfer and the write
    /// queued after it fail with an error value; closing leaks nothing.
    fn a_peer_reset_mid_transfer_is_an_error(lp: Server) {
        let f = TempFile::new("reset", 32 * 1024 * 1024);
        let mut d = Server { file: Some(f.open()), ..Default::default() };
        let (_l, addr) = listener(lp, &accept_one());
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let client = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(LIMIT)).unwrap();
            // Read only once both requests are queued.
            wait.recv_timeout(LIMIT).unwrap();
            let mut buf = vec![0; 64 * 1024];
            c.read_exact(&mut buf).unwrap();
            // SO_LINGER 0: close sends a reset.
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: `linger` is a valid option value for the call.
            let r = unsafe {
                libc::setsockopt(
                    c.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &linger as *const libc::linger as *const libc::c_void,
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0);
            buf
        });
        let s = accepted(lp, &mut d);
        lp.sendfile(s, d.file.as_ref().unwrap(), 0, f.bytes.len() as u64, Some(&on_sent())).unwrap();
        lp.write(s, b"after", Some(&on_write())).unwrap();
        go.send(()).unwrap();
        run_until_with(lp, &mut d, LIMIT, |_, _| client.is_finished());
        let first = client.join().unwrap();
        assert_eq!(first, f.bytes[..first.len()], "the first bytes are the file's");
        finish(lp, &mut d, s, 2);
        let (kind, res) = d.events[0];
        assert_eq!(kind, 'f');
        let err = res.expect_err("a reset peer fails the transfer");
        assert!(err == Error::ECONNRESET || err == Error::EPIPE, "{err}");
        assert_eq!(d.events[1], ('w', Err(err)), "the write behind it fails with it");
    }

    /// Close while a transfer to a peer that does not read is in flight:
    /// the transfer and the write behind it are cancelled, the close
    /// completes, nothing leaks.
    fn close_with_a_transfer_in_flight(lp: Server) {
        let f = TempFile::new("close", 16 * 1024 * 1024);
        let mut d = Server { file: Some(f.open()), ..Default::default() };
        let (_l, addr) = listener(lp, &accept_one());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let client = std::thread::spawn(move || {
            let c = std::net::TcpStream::connect(addr).unwrap();
            // Hold the connection without reading until the server closed.
            let _ = rx.recv_timeout(LIMIT);
            drop(c);
        });
        let s = accepted(lp, &mut d);
        lp.sendfile(s, d.file.as_ref().unwrap(), 0, f.bytes.len() as u64, Some(&on_sent())).unwrap();
        lp.write(s, b"after", Some(&on_write())).unwrap();
        // Let the transfer fill the socket buffers and wait for room.
        for _ in 0..20 {
            lp.run(RunMode::NoWait, &mut d).unwrap();
        }
        assert!(d.events.is_empty(), "nothing ended yet: {:?}", d.events);
        lp.close(s, Some(&on_close())).unwrap();
        run_until_with(lp, &mut d, LIMIT, |_, d| d.closed);
        assert_eq!(d.events, vec![('f', Err(Error::ECANCELED)), ('w', Err(Error::ECANCELED))]);
        tx.send(()).unwrap();
        with_timeout(LIMIT, move || client.join().unwrap());
        lp.run(RunMode::Default, &mut d).unwrap();
    }

    /// A file written and then dropped from the page cache (where the file
    /// system allows it) is read back from disk: on the sendfile path the
    /// work pool reads it in; on the ring path the kernel does.
    fn a_file_not_in_the_page_cache_arrives_intact(lp: Server) {
        let f = TempFile::new("cold", 2 * 1024 * 1024 + 5);
        let file = f.open();
        let w = std::fs::OpenOptions::new().write(true).open(&f.path).unwrap();
        w.sync_all().unwrap();
        // SAFETY: plain advice on an open fd.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let mut d = Server { file: Some(file), ..Default::default() };
        let (_l, addr) = listener(lp, &accept_one());
        let client = read_to_end_in_thread(addr, LIMIT);
        let s = accepted(lp, &mut d);
        let len = f.bytes.len() as u64;
        lp.sendfile(s, d.file.as_ref().unwrap(), 0, len, Some(&on_sent())).unwrap();
        finish(lp, &mut d, s, 1);
        assert_eq!(d.events, vec![('f', Ok(len))]);
        let got = with_timeout(LIMIT, move || client.join().unwrap());
        assert_eq!(checksum(&got), checksum(&f.bytes), "the bytes differ");
    }

    /// A file that cannot be read (a directory) fails the transfer with
    /// an error value, and the write queued behind it with the same error;
    /// the stream still closes cleanly.
    fn an_unreadable_file_is_an_error_value(lp: Server) {
        let f = TempFile::new("dir", 1);
        let mut d = Server { file: Some(File::open(&f.dir).unwrap()), ..Default::default() };
        let (_l, addr) = listener(lp, &accept_one());
        let client = read_to_end_in_thread(addr, LIMIT);
        let s = accepted(lp, &mut d);
        lp.sendfile(s, d.file.as_ref().unwrap(), 0, 100, Some(&on_sent())).unwrap();
        lp.write(s, b"after", Some(&on_write())).unwrap();
        finish(lp, &mut d, s, 2);
        let err = d.events[0].1.expect_err("a directory cannot be sent");
        assert_eq!(d.events, vec![('f', Err(err)), ('w', Err(err))]);
        assert_eq!(with_timeout(LIMIT, move || client.join().unwrap()), b"");
    }

    /// Refused at once: a closed stream, and a stream after shutdown.
    fn refused_without_a_callback(lp: Server) {
        let f = TempFile::new("refused", 10);
        let mut d = Server { file: Some(f.open()), ..Default::default() };
        let (_l, addr) = listener(lp, &accept_one());
        let client = read_to_end_in_thread(addr, LIMIT);
        let s = accepted(lp, &mut d);
        lp.shutdown(s, None).unwrap();
        assert_eq!(lp.sendfile(s, d.file.as_ref().unwrap(), 0, 10, Some(&on_sent())), Err(Error::EPIPE));
        lp.close(s, Some(&on_close())).unwrap();
        assert!(lp.sendfile(s, d.file.as_ref().unwrap(), 0, 10, Some(&on_sent())).is_err());
        run_until_with(lp, &mut d, LIMIT, |_, d| d.closed);
        assert!(d.events.is_empty());
        assert_eq!(with_timeout(LIMIT, move || client.join().unwrap()), b"");
    }
}
