//! Zero heap allocation on the hot paths after warm-up, on both backends:
//! echo round trips over 64 connections (read, write, and the loop around
//! them), accept/close of connections, timer start/stop, and UDP datagram
//! round trips (send with and without an address, receive with the
//! sender's address, send callbacks).
//!
//! A counting global allocator counts, per thread, the allocations made
//! while the thread's measuring flag is on. Clients run in the same loop as
//! the server, so the whole path (connect side included) is measured.
//!
//! Written the engine-v2 way: all state lives in the loop's data `D`
//! (per-connection state in a table indexed by the handle's data word),
//! callbacks are plain functions or closures built once and shared by
//! every connection, and nothing is behind `Rc<RefCell<..>>`.

use std::net::SocketAddr;
use std::time::Duration;
use uvring::*;
use uvring_tests::alloc_count::{allocations_in, CountingAllocator};
use uvring_tests::{both_backends, listener_with_backlog, read_to_end_in_thread, run_until_with};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const LIMIT: Duration = Duration::from_secs(60);
const CONNECTIONS: usize = 64;
const MESSAGE: [u8; 100] = [0x42; 100];

/// One client connection's state.
struct Client {
    stream: TcpStream,
    /// Bytes of the current message's echo received so far.
    got: usize,
}

/// The loop's data for the TCP tests: the server's and the clients' state.
struct Echo {
    /// Server side: accepted connections, kept up to the vector's capacity
    /// (pre-sized, so pushes don't allocate after warm-up).
    accepted: Vec<TcpStream>,
    /// Client side, indexed by each client handle's data word.
    clients: Vec<Client>,
    /// Clients whose connect completed.
    connected: usize,
    /// Round trips: messages sent, echoes fully received, and how many
    /// messages to send at most.
    started: u64,
    done: u64,
    target: u64,
    /// Churn: client connections that got their echo (or ended) and closed.
    finished: u64,
}

impl Echo {
    fn new(accepted: usize, clients: usize) -> Echo {
        Echo {
            accepted: Vec::with_capacity(accepted),
            clients: Vec::with_capacity(clients),
            connected: 0,
            started: 0,
            done: 0,
            target: 0,
            finished: 0,
        }
    }
}

/// Server: echo what arrives; close at end of file or error.
fn echo_read(lp: &mut Loop<Echo>, _: &mut Echo, s: TcpStream, res: Result<&[u8]>) {
    match res {
        Ok(bytes) => {
            if lp.write(s, bytes, None).is_err() {
                let _ = lp.close(s, None);
            }
        }
        Err(_) => {
            let _ = lp.close(s, None);
        }
    }
}

/// Server: echo what arrives through an owned write (`write_buf`, then
/// `write_vec`); close at end of file or error.
fn echo_read_owned(lp: &mut Loop<Echo>, _: &mut Echo, s: TcpStream, res: Result<&[u8]>) {
    match res {
        Ok(bytes) => {
            let mut buf = lp.write_buf();
            buf.extend_from_slice(bytes);
            if lp.write_vec(s, buf, None).is_err() {
                let _ = lp.close(s, None);
            }
        }
        Err(_) => {
            let _ = lp.close(s, None);
        }
    }
}

/// An echo server on 127.0.0.1; accepted ids go to `d.accepted` while it
/// has room.
fn echo_server(lp: &mut Loop<Echo>) -> (TcpListener, SocketAddr) {
    echo_server_with(lp, OnRead::new(echo_read))
}

/// [`echo_server`] with its read callback.
fn echo_server_with(lp: &mut Loop<Echo>, on_read: OnRead<Echo, TcpStream>) -> (TcpListener, SocketAddr) {
    let on_connection = OnConnection::new(move |lp: &mut Loop<Echo>, d: &mut Echo, srv: TcpListener, st| {
        if st.is_err() {
            return;
        }
        while let Ok(c) = lp.accept(srv) {
            lp.read_start(c, &on_read).unwrap();
            if d.accepted.len() < d.accepted.capacity() {
                d.accepted.push(c);
            }
        }
    });
    listener_with_backlog(lp, 1024, &on_connection)
}

/// Client: count the echo's bytes in the client's entry; when a message's
/// echo is complete, send the next one (until `target` went out).
fn client_read(lp: &mut Loop<Echo>, d: &mut Echo, s: TcpStream, res: Result<&[u8]>) {
    let Ok(bytes) = res else {
        let _ = lp.close(s, None);
        return;
    };
    let client = &mut d.clients[lp.data(s).unwrap()];
    debug_assert_eq!(client.stream, s);
    client.got += bytes.len();
    while client.got >= MESSAGE.len() {
        client.got -= MESSAGE.len();
        d.done += 1;
        if d.started < d.target {
            d.started += 1;
            lp.write(s, &MESSAGE, None).unwrap();
        }
    }
}

/// One burst of round trips: every client sends, and they keep sending
/// until `more` messages went out; then all echoes come back.
fn burst(lp: &mut Loop<Echo>, d: &mut Echo, more: u64) {
    let target = d.started + more;
    d.target = target;
    for i in 0..d.clients.len() {
        if d.started < target {
            d.started += 1;
            lp.write(d.clients[i].stream, &MESSAGE, None).unwrap();
        }
    }
    run_until_with(lp, d, LIMIT, |_, d| d.done == target);
}

/// Opens `CONNECTIONS` clients to `addr` and runs until every one is
/// connected and accepted (`d.accepted` is empty before).
fn connect_clients(lp: &mut Loop<Echo>, d: &mut Echo, addr: SocketAddr, on_connect: &OnConnect<Echo, TcpStream>) {
    d.connected = 0;
    for i in 0..CONNECTIONS {
        let sock = lp.tcp_init().unwrap();
        let c = lp.tcp_connect(sock, addr, on_connect).unwrap();
        lp.set_data(c, i).unwrap();
        d.clients.push(Client { stream: c, got: 0 });
    }
    run_until_with(lp, d, LIMIT, |_, d| d.connected == CONNECTIONS && d.accepted.len() == CONNECTIONS);
}

/// Closes every client and runs until the server's end of each is gone.
fn close_clients(lp: &mut Loop<Echo>, d: &mut Echo) {
    for c in &d.clients {
        lp.close(c.stream, None).unwrap();
    }
    run_until_with(lp, d, LIMIT, |lp, d| d.accepted.iter().all(|c| !lp.is_live(*c)));
}

/// Churn: `n` more client connections, at most 8 at a time: connect,
/// one byte each way, close on both sides.
fn churn(lp: &mut Loop<Echo>, d: &mut Echo, addr: SocketAddr, on_connect: &OnConnect<Echo, TcpStream>, n: u64) {
    let target = d.finished + n;
    let mut started = d.finished;
    run_until_with(lp, d, LIMIT, |lp, d| {
        while started < target && started - d.finished < 8 {
            let sock = lp.tcp_init().unwrap();
            lp.tcp_connect(sock, addr, on_connect).unwrap();
            started += 1;
        }
        d.finished == target && lp.handle_count() == 1
    });
}

/// The loop's data for the UDP test.
struct Dgrams {
    /// Round trips: datagrams sent by clients, echoes received, the most
    /// to send, and send callbacks run.
    started: u64,
    done: u64,
    target: u64,
    sent: u64,
}

/// One UDP burst: every client sends a datagram to the echo server and
/// sends the next when the echo is back, until `more` went out.
fn udp_burst(lp: &mut Loop<Dgrams>, d: &mut Dgrams, clients: &[Udp], on_sent: &OnSend<Dgrams>, more: u64) {
    let target = d.started + more;
    d.target = target;
    for &c in clients {
        if d.started < target {
            d.started += 1;
            lp.udp_send(c, &MESSAGE[..64], None, Some(on_sent)).unwrap();
        }
    }
    run_until_with(lp, d, LIMIT, |_, d| d.done == target && d.sent == target);
}

/// The loop's data for the timer test.
struct Timers {
    timers: Vec<Timer>,
    fired: u64,
}

/// One round over every timer: start with a far timeout, stop, start
/// repeating, `again`, restart due now; then wait until each fired once
/// (its callback starts and stops it again).
fn timer_round(lp: &mut Loop<Timers>, d: &mut Timers, on_timer: &OnTimer<Timers>) {
    for (i, &t) in d.timers.iter().enumerate() {
        lp.timer_start(t, Duration::from_millis(10_000 + i as u64), Duration::ZERO, on_timer).unwrap();
    }
    for &t in &d.timers {
        lp.timer_stop(t).unwrap();
        lp.timer_start(t, Duration::ZERO, Duration::from_millis(5), on_timer).unwrap();
        lp.timer_again(t).unwrap();
        lp.timer_start(t, Duration::ZERO, Duration::ZERO, on_timer).unwrap();
    }
    let want = d.fired + d.timers.len() as u64;
    run_until_with(lp, d, LIMIT, |_, d| d.fired == want);
}

/// 3,000 round trips of warm-up, then 10,000 measured, over 64 client
/// connections to an echo server reading with `on_read`: asserts that the
/// measured ones allocated nothing.
fn echo_round_trips(lp: &mut Loop<Echo>, on_read: OnRead<Echo, TcpStream>, what: &str) {
    let mut d = Echo::new(CONNECTIONS, CONNECTIONS);
    let (server, addr) = echo_server_with(lp, on_read);
    let on_client_read = OnRead::new(client_read);
    let on_connect = OnConnect::new(move |lp: &mut Loop<Echo>, d: &mut Echo, s, st| {
        st.unwrap();
        lp.tcp_nodelay(s, true).unwrap();
        lp.read_start(s, &on_client_read).unwrap();
        d.connected += 1;
    });
    connect_clients(lp, &mut d, addr, &on_connect);

    // Warm-up: buffers, queues and tables reach their working sizes.
    burst(lp, &mut d, 3_000);
    let allocations = allocations_in(|| burst(lp, &mut d, 10_000));
    assert_eq!(d.done, 13_000);
    assert!(d.clients.iter().all(|c| c.got == 0), "every echo complete");
    assert_eq!(allocations, 0, "heap allocations during 10,000 {what} over {CONNECTIONS} connections");

    close_clients(lp, &mut d);
    lp.close(server, None).unwrap();
    assert!(!lp.run(RunMode::Default, &mut d).unwrap());
}

both_backends! {
    /// 10,000 echo round trips over 64 connections after warm-up: zero heap
    /// allocations on the loop's thread (server and clients both in it).
    fn echo_round_trips_allocate_nothing(lp: Echo) {
        echo_round_trips(lp, OnRead::new(echo_read), "echo round trips");
    }

    /// The same 10,000 round trips with the server answering through owned
    /// writes (`write_buf` + `write_vec`): the buffers circulate between
    /// the loop's pool and the streams, and nothing is allocated.
    fn owned_write_round_trips_allocate_nothing(lp: Echo) {
        echo_round_trips(lp, OnRead::new(echo_read_owned), "owned-write echoes");
    }

    /// A megabyte written with `write_vec` is sent from the caller's own
    /// buffer: queueing and sending it allocates nothing (a copy would need
    /// a megabyte write buffer), the peer gets every byte in order after
    /// what was queued before, and the very same allocation comes back from
    /// `write_buf` once it is sent.
    fn a_large_owned_write_is_sent_without_a_copy(lp: Echo) {
        const BIG: usize = 1 << 20;
        let mut d = Echo::new(1, 0);
        let (server, addr) = echo_server(lp);
        let reader = read_to_end_in_thread(addr, LIMIT);
        run_until_with(lp, &mut d, LIMIT, |_, d| d.accepted.len() == 1);
        let s = d.accepted[0];
        let on_written = OnWrite::new(|_: &mut Loop<Echo>, d: &mut Echo, _: TcpStream, st: Result<()>| {
            st.unwrap();
            d.done += 1;
        });
        // Warm-up: the stream's write side and a small buffer exist.
        lp.write(s, b"head", Some(&on_written)).unwrap();
        run_until_with(lp, &mut d, LIMIT, |_, d| d.done == 1);
        let big: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
        let ptr = big.as_ptr();
        let allocations = allocations_in(|| {
            lp.write_vec(s, big, Some(&on_written)).unwrap();
            run_until_with(lp, &mut d, LIMIT, |_, d| d.done == 2);
        });
        assert_eq!(allocations, 0, "heap allocations while a 1 MiB owned write was queued and sent");
        let back = lp.write_buf();
        assert_eq!(back.as_ptr(), ptr, "the pool holds the caller's buffer, not a copy");
        assert!(back.capacity() >= BIG && back.is_empty());
        lp.close(s, None).unwrap();
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut d).unwrap());
        let got = reader.join().unwrap();
        assert_eq!(got.len(), 4 + BIG);
        assert_eq!(&got[..4], b"head");
        assert!(got[4..].iter().enumerate().all(|(i, &b)| b == (i % 251) as u8), "the megabyte arrived intact");
    }

    /// Connections that made one round trip and went idle hold no heap
    /// allocation of their own (issue 13's memory bar): after a warm-up in
    /// which 64 such connections (both ends in this loop) were opened and
    /// closed, opening 64 more, one echo on each, and leaving them open
    /// allocates nothing. What they hold is their slot in the loop's
    /// pre-grown tables (no write buffer, queue or listener state).
    fn idle_connections_allocate_nothing(lp: Echo) {
        let mut d = Echo::new(CONNECTIONS, CONNECTIONS);
        let (server, addr) = echo_server(lp);
        let on_client_read = OnRead::new(client_read);
        let on_connect = OnConnect::new(move |lp: &mut Loop<Echo>, d: &mut Echo, s, st| {
            st.unwrap();
            lp.read_start(s, &on_client_read).unwrap();
            d.connected += 1;
        });
        let open_idle = |lp: &mut Loop<Echo>, d: &mut Echo| {
            connect_clients(lp, d, addr, &on_connect);
            burst(lp, d, CONNECTIONS as u64);
        };
        open_idle(lp, &mut d);
        close_clients(lp, &mut d);
        d.clients.clear();
        d.accepted.clear();
        let allocations = allocations_in(|| open_idle(lp, &mut d));
        assert_eq!(d.done, 2 * CONNECTIONS as u64);
        assert!(d.accepted.iter().all(|c| lp.is_live(*c)), "the idle connections stay open");
        assert_eq!(allocations, 0, "heap allocations while {CONNECTIONS} connections opened, echoed once and went idle");
        close_clients(lp, &mut d);
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut d).unwrap());
    }

    /// Connection churn after warm-up: connect, accept, one byte each way,
    /// close on both sides; zero heap allocations.
    fn accept_and_close_allocate_nothing(lp: Echo) {
        let mut d = Echo::new(0, 0);
        let (server, addr) = echo_server(lp);
        let on_client_read = OnRead::new(|lp: &mut Loop<Echo>, d: &mut Echo, s: TcpStream, res| {
            // The echo arrived (or the connection ended): close.
            let _ = res;
            d.finished += 1;
            let _ = lp.close(s, None);
        });
        let on_connect = OnConnect::new(move |lp: &mut Loop<Echo>, _: &mut Echo, s, st| {
            st.unwrap();
            lp.read_start(s, &on_client_read).unwrap();
            lp.write(s, b"x", None).unwrap();
        });
        churn(lp, &mut d, addr, &on_connect, 300);
        let allocations = allocations_in(|| churn(lp, &mut d, addr, &on_connect, 1_000));
        assert_eq!(d.finished, 1_300);
        assert_eq!(allocations, 0, "heap allocations during 1,000 connect/accept/close cycles");
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut d).unwrap());
    }

    /// 10,000 UDP round trips between 16 connected client sockets and an
    /// echo server (which answers to each datagram's sender address) after
    /// warm-up: zero heap allocations.
    fn udp_round_trips_allocate_nothing(lp: Dgrams) {
        const CLIENTS: usize = 16;
        let mut d = Dgrams { started: 0, done: 0, target: 0, sent: 0 };
        let server = lp.udp_init().unwrap();
        lp.udp_bind(server, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let at = lp.udp_getsockname(server).unwrap();
        let echo = OnRecv::new(|lp: &mut Loop<Dgrams>, _: &mut Dgrams, u, res: Result<Datagram<'_>>| {
            let dg = res.unwrap();
            lp.udp_send(u, dg.data, dg.addr, None).unwrap();
        });
        lp.udp_recv_start(server, &echo).unwrap();
        let on_sent = OnSend::new(|_: &mut Loop<Dgrams>, d: &mut Dgrams, _, status| {
            status.unwrap();
            d.sent += 1;
        });
        let on_sent_again = on_sent.clone();
        let on_echo = OnRecv::new(move |lp: &mut Loop<Dgrams>, d: &mut Dgrams, u, res: Result<Datagram<'_>>| {
            assert_eq!(res.unwrap().data.len(), 64);
            d.done += 1;
            if d.started < d.target {
                d.started += 1;
                lp.udp_send(u, &MESSAGE[..64], None, Some(&on_sent_again)).unwrap();
            }
        });
        let clients: Vec<Udp> = (0..CLIENTS)
            .map(|_| {
                let c = lp.udp_init().unwrap();
                lp.udp_connect(c, Some(at)).unwrap();
                lp.udp_recv_start(c, &on_echo).unwrap();
                c
            })
            .collect();

        udp_burst(lp, &mut d, &clients, &on_sent, 3_000);
        let allocations = allocations_in(|| udp_burst(lp, &mut d, &clients, &on_sent, 10_000));
        assert_eq!((d.done, d.sent), (13_000, 13_000));
        assert_eq!(allocations, 0, "heap allocations during 10,000 UDP round trips over {CLIENTS} sockets");
        for &c in clients.iter().chain([&server]) {
            lp.close(c, None).unwrap();
        }
        assert!(!lp.run(RunMode::Default, &mut d).unwrap());
    }

    /// Timer start, stop, again and firing after warm-up: zero heap
    /// allocations.
    fn timers_allocate_nothing(lp: Timers) {
        let noop = OnTimer::new(|_: &mut Loop<Timers>, _: &mut Timers, _| {});
        let on_timer = OnTimer::new(move |lp: &mut Loop<Timers>, d: &mut Timers, t| {
            d.fired += 1;
            // Start and stop from inside the callback.
            lp.timer_start(t, Duration::from_millis(d.fired % 3), Duration::ZERO, &noop).unwrap();
            lp.timer_stop(t).unwrap();
        });
        let mut d = Timers { timers: (0..32).map(|_| lp.timer_init().unwrap()).collect(), fired: 0 };
        for _ in 0..10 {
            timer_round(lp, &mut d, &on_timer);
        }
        let allocations = allocations_in(|| {
            for _ in 0..300 {
                timer_round(lp, &mut d, &on_timer);
            }
        });
        assert_eq!(d.fired, 310 * 32);
        assert_eq!(allocations, 0, "heap allocations during timer start/stop/fire");
        for &t in &d.timers {
            lp.close(t, None).unwrap();
        }
        assert!(!lp.run(RunMode::Default, &mut d).unwrap());
    }
}

/// The counter itself: it sees an allocation made inside the window and
/// none outside it.
#[test]
fn counting_allocator_counts() {
    let outside = vec![1u8; 16];
    let n = allocations_in(|| {
        let v: Vec<u8> = std::hint::black_box(vec![2u8; 32]);
        drop(v);
    });
    assert_eq!(n, 1);
    drop(outside);
    assert_eq!(allocations_in(|| {}), 0);
}
