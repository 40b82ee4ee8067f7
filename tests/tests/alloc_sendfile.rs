//! Zero heap allocation for file-to-socket transfers after warm-up, on
//! both backends: a response head written with `write` and a 64 KiB body
//! sent with `sendfile` (a file in the page cache), 500 times over one
//! connection, the client reading it all in the same loop; and the same
//! with io_uring's read+send. The transfer's
//! entry, its write request and the callback's `Rc` are reused; only a
//! page-cache miss (read in on the work pool) would allocate.

use std::fs::File;
use std::time::Duration;
use uvring::*;
use uvring_tests::alloc_count::{allocations_in, CountingAllocator};
use uvring_tests::{both_backends, listener, run_until_with};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const LIMIT: Duration = Duration::from_secs(60);
const BODY: u64 = 64 * 1024;
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n";

struct State {
    file: File,
    server: Option<TcpStream>,
    client: Option<TcpStream>,
    /// Responses sent (transfer callbacks with the whole body) and bytes
    /// the client has read.
    sent: u64,
    read: u64,
}

/// Queues one response: its head, then its body's transfer.
fn respond(lp: &mut Loop<State>, d: &mut State, on_sent: &OnSendFile<State, TcpStream>) {
    let s = d.server.unwrap();
    lp.write(s, HEAD, None).unwrap();
    lp.sendfile(s, &d.file, 0, BODY, Some(on_sent)).unwrap();
}

both_backends! {
    fn sendfile_allocates_nothing(lp: State) {
        scenario(lp)
    }
}

/// io_uring's other way: ring reads into a chunk, ring sends.
#[test]
fn read_send_allocates_nothing() {
    let opts = LoopOptions::default().fs_io_uring(true).sendfile_read_send(true);
    uvring_tests::run_on_of(Backend::IoUring, opts, scenario)
}

fn scenario(lp: &mut Loop<State>) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("uvring-alloc-sendfile-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("body");
    std::fs::write(&path, vec![7u8; BODY as usize]).unwrap();
    let mut d = State { file: File::open(&path).unwrap(), server: None, client: None, sent: 0, read: 0 };
    let on_connection = OnConnection::new(|lp: &mut Loop<State>, d: &mut State, l, r: Result<()>| {
        r.unwrap();
        d.server = Some(lp.accept(l).unwrap());
    });
    let (listener, addr) = listener(lp, &on_connection);
    let on_read = OnRead::new(|_, d: &mut State, _, r: Result<&[u8]>| d.read += r.unwrap().len() as u64);
    let on_connect = OnConnect::new(move |lp: &mut Loop<State>, _: &mut State, s, r: Result<()>| {
        r.unwrap();
        lp.read_start(s, &on_read).unwrap();
    });
    let sock = lp.tcp_init().unwrap();
    d.client = Some(lp.tcp_connect(sock, addr, &on_connect).unwrap());
    run_until_with(lp, &mut d, LIMIT, |_, d| d.server.is_some());

    let on_sent = OnSendFile::new(|_, d: &mut State, _, r: Result<u64>| {
        assert_eq!(r, Ok(BODY));
        d.sent += 1;
    });
    let per = HEAD.len() as u64 + BODY;
    let rounds = |lp: &mut Loop<State>, d: &mut State, n: u64| {
        let target = d.sent + n;
        while d.sent < target {
            respond(lp, d, &on_sent);
            let want = d.sent + 1;
            run_until_with(lp, d, LIMIT, |_, d| d.sent == want && d.read == want * per);
        }
    };
    // Warm-up: the transfer table, write queues and buffers reach their
    // working sizes.
    rounds(lp, &mut d, 50);
    let allocations = allocations_in(|| rounds(lp, &mut d, 500));
    assert_eq!(d.read, 550 * per);
    assert_eq!(allocations, 0, "heap allocations during 500 sendfile responses");

    lp.close(d.client.unwrap(), None).unwrap();
    lp.close(d.server.unwrap(), None).unwrap();
    lp.close(listener, None).unwrap();
    assert!(!lp.run(RunMode::Default, &mut d).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}
