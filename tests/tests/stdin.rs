//! Reading stdin, shell pipes and terminals (issue 11): `pipe_open` on fds
//! that are not sockets, as libuv's `uv_pipe_open` and `uv_tty_t` read side
//! take them: a pipe(2), a pseudo-terminal in line and in raw mode (with
//! `^D` as end of file), a regular file and `/dev/null` (which epoll refuses
//! with `EPERM`; they read as always ready, to their end), writes to a pipe
//! beyond its capacity and to a terminal, and a spawned child reading its
//! stdin and writing its stdout through its own loop over pipe(2)s.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;
use uvring::*;
use uvring_tests::{both_backends, run_until_with};

const LIMIT: Duration = Duration::from_secs(10);

/// What a reader saw: the bytes, the chunks, and how it ended.
#[derive(Default)]
struct Got {
    bytes: Vec<u8>,
    chunks: usize,
    end: Option<Error>,
    wrote: Option<Result<()>>,
}

/// A pipe(2): (read end, write end), close-on-exec, blocking.
fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0, "pipe2");
    // SAFETY: pipe2 returned two fresh fds that nobody else owns.
    unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) }
}

/// A pseudo-terminal: (master, slave), both close-on-exec, blocking.
fn pty() -> (std::fs::File, std::fs::File) {
    // SAFETY: plain libc calls on fds this function owns; `name` is a
    // buffer of the length given to ptsname_r.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(master >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let master = std::fs::File::from_raw_fd(master);
        assert_eq!(libc::grantpt(master.as_raw_fd()), 0, "grantpt");
        assert_eq!(libc::unlockpt(master.as_raw_fd()), 0, "unlockpt");
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()), 0, "ptsname_r");
        let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(slave >= 0, "open the pty slave: {}", std::io::Error::last_os_error());
        (master, std::fs::File::from_raw_fd(slave))
    }
}

/// Sets the terminal `fd` to raw mode (`cfmakeraw`) or keeps line mode
/// with echo off (so what the master writes is not echoed back to it).
fn set_tty_mode(fd: &impl AsRawFd, raw: bool) {
    // SAFETY: termios is plain data; tcgetattr fills it for a tty.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is valid for reads and writes for both calls.
    unsafe {
        assert_eq!(libc::tcgetattr(fd.as_raw_fd(), &mut t), 0, "tcgetattr");
        if raw {
            libc::cfmakeraw(&mut t);
        } else {
            t.c_lflag &= !(libc::ECHO | libc::ECHONL);
            t.c_lflag |= libc::ICANON;
        }
        assert_eq!(libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t), 0, "tcsetattr");
    }
}

/// Starts reading `s` into `Got`; at the end (EOF or error) records it and
/// closes the stream.
fn read_all(lp: &mut Loop<Got>, s: PipeStream) {
    lp.read_start(
        s,
        &OnRead::new(|lp, got: &mut Got, s, res| match res {
            Ok(data) => {
                got.bytes.extend_from_slice(data);
                got.chunks += 1;
            }
            Err(e) => {
                got.end = Some(e);
                lp.close(s, None).unwrap();
            }
        }),
    )
    .unwrap();
}

/// The bytes `0, 1, .. 250, 0, 1, ..` (no newline or control pattern that
/// matters to a pipe).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn temp_file(name: &str, contents: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("uvring-stdin-{}-{}", name, std::process::id()));
    std::fs::write(&p, contents).unwrap();
    p
}

both_backends! {
    fn a_pipe_as_stdin_is_read_as_written_then_reports_eof(lp: Got) {
        let (r, mut w) = pipe();
        let s = lp.pipe_open(OwnedFd::from(r), false).unwrap();
        assert_eq!(lp.stream_type(s).unwrap(), StreamType::Pipe);
        read_all(lp, s);
        let mut got = Got::default();
        w.write_all(b"status\n").unwrap();
        run_until_with(lp, &mut got, LIMIT, |_, g| g.bytes.len() >= 7);
        assert_eq!(got.bytes, b"status\n");
        assert!(got.end.is_none(), "no end before the writer closes");
        // More commands, then the writer goes away: every byte, then EOF.
        w.write_all(b"reload\nquit\n").unwrap();
        drop(w);
        run_until_with(lp, &mut got, LIMIT, |_, g| g.end.is_some());
        assert_eq!(got.bytes, b"status\nreload\nquit\n");
        assert_eq!(got.end, Some(Error::EOF));
        lp.run(RunMode::Default, &mut got).unwrap();
    }

    fn writes_to_a_pipe_beyond_its_capacity_all_arrive(lp: Got) {
        let (mut r, w) = pipe();
        let s = lp.pipe_open(OwnedFd::from(w), false).unwrap();
        // 1 MiB: 16 times the default pipe capacity, so the writes wait for
        // the reader (EAGAIN, then readiness) more than once.
        let data = pattern(1 << 20);
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            r.read_to_end(&mut all).unwrap();
            all
        });
        for piece in data.chunks(100_000) {
            lp.write(s, piece, None).unwrap();
        }
        lp.write(s, b"", Some(&OnWrite::new(|lp, got: &mut Got, s, res| {
            got.wrote = Some(res);
            lp.close(s, None).unwrap();
        }))).unwrap();
        let mut got = Got::default();
        run_until_with(lp, &mut got, LIMIT, |_, g| g.wrote.is_some());
        assert_eq!(got.wrote, Some(Ok(())));
        lp.run(RunMode::Default, &mut got).unwrap();
        let all = reader.join().unwrap();
        assert!(all == data, "the reader got {} bytes, not the {} written, or not in order", all.len(), data.len());
    }

    fn try_write_to_a_pipe_writes_at_once(lp: Got) {
        let (mut r, w) = pipe();
        let s = lp.pipe_open(OwnedFd::from(w), false).unwrap();
        assert_eq!(lp.try_write(s, b"now").unwrap(), 3);
        let mut buf = [0u8; 3];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"now");
        lp.close(s, None).unwrap();
        lp.run(RunMode::Default, &mut Got::default()).unwrap();
    }

    fn a_terminal_in_line_mode_gives_lines_and_ctrl_d_is_eof(lp: Got) {
        let (mut master, slave) = pty();
        set_tty_mode(&slave, false);
        let s = lp.pipe_open(OwnedFd::from(slave), false).unwrap();
        read_all(lp, s);
        let mut got = Got::default();
        // Line discipline: nothing is readable until the line ends.
        master.write_all(b"sta").unwrap();
        master.write_all(b"tus\n").unwrap();
        run_until_with(lp, &mut got, LIMIT, |_, g| g.bytes.len() >= 7);
        assert_eq!(got.bytes, b"status\n");
        assert_eq!(got.chunks, 1, "one line, one read");
        // ^D at the start of a line: the reader's read(2) returns 0.
        master.write_all(&[4]).unwrap();
        run_until_with(lp, &mut got, LIMIT, |_, g| g.end.is_some());
        assert_eq!(got.end, Some(Error::EOF));
        lp.run(RunMode::Default, &mut got).unwrap();
    }

    fn a_terminal_in_raw_mode_gives_keys_as_typed_and_takes_writes(lp: Got) {
        let (mut master, slave) = pty();
        set_tty_mode(&slave, true);
        let s = lp.pipe_open(OwnedFd::from(slave), false).unwrap();
        read_all(lp, s);
        let mut got = Got::default();
        // Raw mode: bytes arrive without a newline, ^C and ^D included.
        master.write_all(b"q\x03\x04").unwrap();
        run_until_with(lp, &mut got, LIMIT, |_, g| g.bytes.len() >= 3);
        assert_eq!(got.bytes, b"q\x03\x04");
        assert!(got.end.is_none(), "^D is a byte in raw mode");
        // The same stream writes to the terminal: the master reads it.
        lp.write(s, b"prompt> ", Some(&OnWrite::new(|_, got: &mut Got, _, res| got.wrote = Some(res)))).unwrap();
        run_until_with(lp, &mut got, LIMIT, |_, g| g.wrote.is_some());
        assert_eq!(got.wrote, Some(Ok(())));
        let mut buf = [0u8; 8];
        master.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"prompt> ");
        lp.close(s, None).unwrap();
        lp.run(RunMode::Default, &mut got).unwrap();
        assert!(got.end.is_none(), "closed by us, not ended");
    }

    fn a_regular_file_as_stdin_is_read_to_its_end_not_refused(lp: Got) {
        // 200 KiB: more than one pool buffer per read and more than one
        // wakeup's worth of reads.
        let data = pattern(200 * 1024);
        let path = temp_file("regular", &data);
        let file = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let s = lp.pipe_open(OwnedFd::from(file), false).unwrap();
        read_all(lp, s);
        let mut got = Got::default();
        run_until_with(lp, &mut got, LIMIT, |_, g| g.end.is_some());
        assert_eq!(got.end, Some(Error::EOF));
        assert!(got.bytes == data, "read {} bytes, not the file's {}", got.bytes.len(), data.len());
        lp.run(RunMode::Default, &mut got).unwrap();
    }

    fn a_regular_file_is_read_from_its_position_and_reading_stops_and_resumes(lp: Got) {
        let path = temp_file("position", b"header\nbody\n");
        let mut file = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let mut head = [0u8; 7];
        file.read_exact(&mut head).unwrap();
        let s = lp.pipe_open(OwnedFd::from(file), false).unwrap();
        // Start and stop at once: nothing is lost, nothing read twice.
        read_all(lp, s);
        lp.read_stop(s).unwrap();
        read_all(lp, s);
        let mut got = Got::default();
        run_until_with(lp, &mut got, LIMIT, |_, g| g.end.is_some());
        assert_eq!(got.bytes, b"body\n");
        assert_eq!(got.end, Some(Error::EOF));
        lp.run(RunMode::Default, &mut got).unwrap();
    }

    fn dev_null_as_stdin_is_at_eof_at_once(lp: Got) {
        let null = std::fs::File::open("/dev/null").unwrap();
        let s = lp.pipe_open(OwnedFd::from(null), false).unwrap();
        read_all(lp, s);
        let mut got = Got::default();
        run_until_with(lp, &mut got, LIMIT, |_, g| g.end.is_some());
        assert_eq!((got.bytes.len(), got.end), (0, Some(Error::EOF)));
        lp.run(RunMode::Default, &mut got).unwrap();
    }

    fn a_non_socket_cannot_be_an_ipc_pipe_and_a_closed_stream_stops_reading(lp: Got) {
        let (r, mut w) = pipe();
        let (r2, _w2) = pipe();
        assert_eq!(lp.pipe_open(OwnedFd::from(r2), true).unwrap_err(), Error::from_errno(libc::ENOTSOCK));
        let s = lp.pipe_open(OwnedFd::from(r), false).unwrap();
        read_all(lp, s);
        // Closing while a read waits ends it (cancelled): no callback runs.
        lp.close(s, None).unwrap();
        let mut got = Got::default();
        lp.run(RunMode::Default, &mut got).unwrap();
        assert!(got.end.is_none() && got.bytes.is_empty());
        // The write end sees the reader gone.
        assert_eq!(w.write(b"x").unwrap_err().raw_os_error(), Some(libc::EPIPE));
    }

    fn a_child_reads_its_stdin_and_writes_its_stdout_through_its_loop(lp: Got) {
        // stdin and stdout are pipe(2)s, not socketpairs: the child's
        // `stdio` scenario pipe_opens fds 0 and 1 and echoes.
        let (child_in, to_child) = pipe();
        let (from_child, child_out) = pipe();
        let exe = std::path::Path::new(env!("CARGO_BIN_EXE_uvring-test-child"));
        let stdio = [Stdio::Fd(child_in.as_raw_fd()), Stdio::Fd(child_out.as_raw_fd()), Stdio::Inherit];
        let (_p, _guard, exit) = uvring_tests::child::spawn_child(lp, exe, &["stdio"], &stdio);
        drop((child_in, child_out));
        let to_child = lp.pipe_open(OwnedFd::from(to_child), false).unwrap();
        let from_child = lp.pipe_open(OwnedFd::from(from_child), false).unwrap();
        read_all(lp, from_child);
        lp.write(to_child, b"ping\n", Some(&OnWrite::new(|lp, _, s, res| {
            res.unwrap();
            lp.close(s, None).unwrap();
        }))).unwrap();
        let mut got = Got::default();
        run_until_with(lp, &mut got, LIMIT, |_, g| g.end.is_some());
        assert_eq!(got.end, Some(Error::EOF));
        assert_eq!(String::from_utf8_lossy(&got.bytes), "hello world\nping\n");
        run_until_with(lp, &mut got, LIMIT, |_, _| exit.get().is_some());
        assert_eq!(exit.get(), Some((0, 0)));
        lp.run(RunMode::Default, &mut got).unwrap();
    }
}
