//! Zero heap allocation on the hot paths after warm-up, on both backends:
//! echo round trips over 64 connections (read, write, and the loop around
//! them), accept/close of connections, and timer start/stop.
//!
//! A counting global allocator counts, per thread, the allocations made
//! while the thread's measuring flag is on. Clients run in the same loop as
//! the server, so the whole path (connect side included) is measured.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use uvring::*;
use uvring_tests::alloc_count::{allocations_in, CountingAllocator};
use uvring_tests::{both_backends, run_until};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const LIMIT: Duration = Duration::from_secs(60);
const CONNECTIONS: usize = 64;
const MESSAGE: [u8; 100] = [0x42; 100];

/// An echo server on 127.0.0.1 that closes a connection at EOF or error;
/// accepted ids go to `accepted` (pre-sized, so pushes don't allocate after
/// warm-up).
fn echo_server(lp: &mut Loop, accepted: Rc<RefCell<Vec<Stream>>>) -> (Stream, SocketAddr) {
    let on_read = OnRead::new(|lp, s, res| match res {
        Ok(bytes) => {
            if lp.write(s, bytes, None).is_err() {
                let _ = lp.close(s, None);
            }
        }
        Err(_) => {
            let _ = lp.close(s, None);
        }
    });
    let on_connection = OnConnection::new(move |lp, srv, st| {
        if st.is_err() {
            return;
        }
        while let Ok(c) = lp.accept(srv) {
            lp.read_start(c, &on_read).unwrap();
            let mut acc = accepted.borrow_mut();
            if acc.len() < acc.capacity() {
                acc.push(c);
            }
        }
    });
    let server = lp.tcp_init().unwrap();
    lp.tcp_bind(server, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
    lp.listen(server, 1024, &on_connection).unwrap();
    let addr = lp.tcp_getsockname(server).unwrap();
    (server, addr)
}

/// Round-trip book-keeping shared by the clients' callbacks.
#[derive(Default)]
struct Trips {
    /// Messages sent.
    started: Cell<u64>,
    /// Echoes fully received.
    done: Cell<u64>,
    /// Send no more once `started` reaches this.
    target: Cell<u64>,
}

both_backends! {
    /// 10,000 echo round trips over 64 connections after warm-up: zero heap
    /// allocations on the loop's thread (server and clients both in it).
    fn echo_round_trips_allocate_nothing(lp) {
        let accepted = Rc::new(RefCell::new(Vec::with_capacity(CONNECTIONS)));
        let (server, addr) = echo_server(lp, accepted.clone());
        let trips = Rc::new(Trips::default());
        // Each client counts received bytes of the current message in its
        // data word, and sends the next message when the echo is complete.
        let on_client_read = {
            let trips = trips.clone();
            OnRead::new(move |lp, s, res| {
                let Ok(bytes) = res else {
                    let _ = lp.close(s, None);
                    return;
                };
                let mut got = lp.data(s).unwrap() + bytes.len();
                while got >= MESSAGE.len() {
                    got -= MESSAGE.len();
                    trips.done.set(trips.done.get() + 1);
                    if trips.started.get() < trips.target.get() {
                        trips.started.set(trips.started.get() + 1);
                        lp.write(s, &MESSAGE, None).unwrap();
                    }
                }
                lp.set_data(s, got).unwrap();
            })
        };
        let connected = Rc::new(Cell::new(0usize));
        let on_connect = {
            let connected = connected.clone();
            OnConnect::new(move |lp, s, st| {
                st.unwrap();
                lp.tcp_nodelay(s, true).unwrap();
                lp.read_start(s, &on_client_read).unwrap();
                connected.set(connected.get() + 1);
            })
        };
        let clients: Vec<Stream> = (0..CONNECTIONS)
            .map(|_| {
                let c = lp.tcp_init().unwrap();
                lp.tcp_connect(c, addr, &on_connect).unwrap();
                c
            })
            .collect();
        run_until(lp, LIMIT, |_| connected.get() == CONNECTIONS && accepted.borrow().len() == CONNECTIONS);

        // One burst of round trips: every client sends, and keeps sending
        // until `more` messages went out; then all echoes come back.
        let burst = |lp: &mut Loop, more: u64| {
            let target = trips.started.get() + more;
            trips.target.set(target);
            for &c in &clients {
                if trips.started.get() < target {
                    trips.started.set(trips.started.get() + 1);
                    lp.write(c, &MESSAGE, None).unwrap();
                }
            }
            run_until(lp, LIMIT, |_| trips.done.get() == target);
        };
        // Warm-up: buffers, queues and tables reach their working sizes.
        burst(lp, 3_000);
        let allocations = allocations_in(|| burst(lp, 10_000));
        assert_eq!(trips.done.get(), 13_000);
        assert_eq!(allocations, 0, "heap allocations during 10,000 echo round trips over {CONNECTIONS} connections");

        for &c in &clients {
            lp.close(c, None).unwrap();
        }
        run_until(lp, LIMIT, |lp| accepted.borrow().iter().all(|c| !lp.is_live(*c)));
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default).unwrap());
    }

    /// Connection churn after warm-up: connect, accept, one byte each way,
    /// close on both sides; zero heap allocations.
    fn accept_and_close_allocate_nothing(lp) {
        let accepted = Rc::new(RefCell::new(Vec::with_capacity(0)));
        let (server, addr) = echo_server(lp, accepted);
        let finished = Rc::new(Cell::new(0u64));
        let on_client_read = {
            let finished = finished.clone();
            OnRead::new(move |lp, s, res| {
                // The echo arrived (or the connection ended): close.
                let _ = res;
                finished.set(finished.get() + 1);
                let _ = lp.close(s, None);
            })
        };
        let on_connect = OnConnect::new(move |lp, s, st| {
            st.unwrap();
            lp.read_start(s, &on_client_read).unwrap();
            lp.write(s, b"x", None).unwrap();
        });
        // `parallel` connections at a time until `n` have finished.
        let churn = |lp: &mut Loop, n: u64| {
            let target = finished.get() + n;
            let mut started = finished.get();
            run_until(lp, LIMIT, |lp| {
                while started < target && started - finished.get() < 8 {
                    let c = lp.tcp_init().unwrap();
                    lp.tcp_connect(c, addr, &on_connect).unwrap();
                    started += 1;
                }
                finished.get() == target && lp.handle_count() == 1
            });
        };
        churn(lp, 300);
        let allocations = allocations_in(|| churn(lp, 1_000));
        assert_eq!(allocations, 0, "heap allocations during 1,000 connect/accept/close cycles");
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default).unwrap());
    }

    /// Timer start, stop, again and firing after warm-up: zero heap
    /// allocations.
    fn timers_allocate_nothing(lp) {
        let fired = Rc::new(Cell::new(0u64));
        let noop = OnTimer::new(|_, _| {});
        let on_timer = {
            let fired = fired.clone();
            OnTimer::new(move |lp, t| {
                fired.set(fired.get() + 1);
                // Start and stop from inside the callback.
                lp.timer_start(t, fired.get() % 3, 0, &noop).unwrap();
                lp.timer_stop(t).unwrap();
            })
        };
        let timers: Vec<Timer> = (0..32).map(|_| lp.timer_init().unwrap()).collect();
        let round = |lp: &mut Loop| {
            for (i, &t) in timers.iter().enumerate() {
                lp.timer_start(t, 10_000 + i as u64, 0, &on_timer).unwrap();
            }
            for &t in &timers {
                lp.timer_stop(t).unwrap();
                lp.timer_start(t, 0, 5, &on_timer).unwrap();
                lp.timer_again(t).unwrap();
                lp.timer_start(t, 0, 0, &on_timer).unwrap();
            }
            let want = fired.get() + timers.len() as u64;
            run_until(lp, LIMIT, |_| fired.get() == want);
        };
        for _ in 0..10 {
            round(lp);
        }
        let allocations = allocations_in(|| {
            for _ in 0..300 {
                round(lp);
            }
        });
        assert_eq!(allocations, 0, "heap allocations during timer start/stop/fire");
        for &t in &timers {
            lp.close(t, None).unwrap();
        }
        assert!(!lp.run(RunMode::Default).unwrap());
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
