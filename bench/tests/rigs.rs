//! The benchmark rigs do what they claim, on both backends, in a few
//! milliseconds (so `cargo test` proves the benches measure real traffic).

use uvring::Backend;
use uvring_bench::{backend_available, ChurnRig, EchoRig, TimerRig, UdpRig};

fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Epoll];
    match backend_available(Backend::IoUring) {
        Ok(()) => v.push(Backend::IoUring),
        Err(e) if std::env::var_os("UVRING_REQUIRE_IO_URING").is_some() => panic!("io_uring required: {e}"),
        Err(e) => eprintln!("SKIP io_uring: {e}"),
    }
    v
}

#[test]
fn echo_rig_round_trips_small_and_large_messages() {
    for backend in backends() {
        for (conns, size) in [(1, 64), (64, 64), (1, 16 * 1024), (8, 16 * 1024), (2, 100_000)] {
            let mut rig = EchoRig::new(backend, conns, size).expect("echo rig");
            assert_eq!(rig.backend(), backend);
            // Twice: the rig is reusable across batches.
            rig.run(50).expect("first batch");
            rig.run(3).expect("second batch");
        }
    }
}

#[test]
fn churn_rig_completes_every_connection() {
    for backend in backends() {
        let mut rig = ChurnRig::new(backend, 8).expect("churn rig");
        rig.run(200).expect("first batch");
        rig.run(5).expect("second batch");
    }
}

#[test]
fn udp_rig_round_trips_on_one_and_many_sockets() {
    for backend in backends() {
        for (sockets, size) in [(1, 64), (64, 64), (4, 8 * 1024)] {
            let mut rig = UdpRig::new(backend, sockets, size).expect("udp rig");
            assert_eq!(rig.backend(), backend);
            rig.run(50).expect("first batch");
            rig.run(3).expect("second batch");
        }
    }
}

#[test]
fn timer_rig_leaves_no_timer_running() {
    let mut rig = TimerRig::new(Backend::Epoll, 1000).expect("timer rig");
    rig.start_stop().expect("start/stop");
    assert_eq!(rig.active(), 0);
}
