//! The path of a pipe server (issue 11), as libuv has it: the close of a
//! pipe bound with `pipe_bind` removes its path, so the same server can bind
//! it again (no `EADDRINUSE` on restart); an abstract name (a leading NUL)
//! is exactly the bytes given, without a trailing NUL, so other programs
//! reach it by that name.

use std::io::Read;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;
use uvring::*;
use uvring_tests::{both_backends, run_until};

const LIMIT: Duration = Duration::from_secs(10);

fn temp_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("uvring-{}-{}-{}", name, std::process::id(), uvring_tests::fd_count()));
    let _ = std::fs::remove_file(&p);
    p
}

/// A server on `path` that answers each connection with "hi" and closes it.
fn serve(lp: &mut Loop, path: &Path) -> PipeListener {
    let s = lp.pipe_init(false).unwrap();
    lp.pipe_bind(s, path).unwrap();
    lp.listen(
        s,
        16,
        &OnConnection::new(|lp, _, l: PipeListener, res| {
            res.unwrap();
            let c = lp.accept(l).unwrap();
            lp.write(c, b"hi", None).unwrap();
            lp.shutdown(c, Some(&OnShutdown::new(|lp, _, c: PipeStream, _| lp.close(c, None).unwrap()))).unwrap();
        }),
    )
    .unwrap()
}

/// Connects from a helper thread with std and reads the answer, while the
/// loop runs.
fn ask(lp: &mut Loop, connect: impl FnOnce() -> std::io::Result<UnixStream> + Send + 'static) -> String {
    let t = std::thread::spawn(move || {
        let mut c = connect().unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    });
    // A ticking timer ends each blocking poll, so the thread's end is seen.
    let tick = lp.timer_init().unwrap();
    let every = Duration::from_millis(5);
    lp.timer_start(tick, every, every, &OnTimer::new(|_, _, _| {})).unwrap();
    run_until(lp, LIMIT, |_| t.is_finished());
    lp.close(tick, None).unwrap();
    t.join().unwrap()
}

both_backends! {
    fn pipe_close_removes_its_path_and_rebinds(lp) {
        let path = temp_path("rebind");
        for _ in 0..2 {
            let server = serve(lp, &path);
            assert!(path.exists());
            let p = path.clone();
            assert_eq!(ask(lp, move || UnixStream::connect(p)), "hi");
            lp.close(server, None).unwrap();
            lp.run(RunMode::Default, &mut ()).unwrap();
            assert!(!path.exists(), "the close removed the path");
        }
    }

    fn pipe_abstract_name_has_no_trailing_nul(lp) {
        let name = format!("uvring-abstract-{}-{}", std::process::id(), uvring_tests::fd_count());
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(name.as_bytes());
        let path = PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(bytes));
        let server = serve(lp, &path);
        // std spells the name without a trailing NUL: it must reach it.
        let n = name.clone();
        let answer = ask(lp, move || UnixStream::connect_addr(&SocketAddr::from_abstract_name(n.as_bytes())?));
        assert_eq!(answer, "hi");
        lp.close(server, None).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
    }
}
