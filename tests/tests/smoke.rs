//! A first end-to-end check: a timer fires and an echo round trip works on
//! both backends.

use std::cell::Cell;
use std::io::{Read, Write};
use std::rc::Rc;
use std::time::Duration;
use uvring::*;
use uvring_tests::both_backends;

both_backends! {
    fn timer_fires_once(lp) {
        let fired = Rc::new(Cell::new(0));
        let f = fired.clone();
        let t = lp.timer_init().unwrap();
        lp.timer_start(t, Duration::from_millis(5), Duration::ZERO, &OnTimer::new(move |lp, _, t| {
            f.set(f.get() + 1);
            lp.close(t, None).unwrap();
        })).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
        assert_eq!(fired.get(), 1);
    }

    fn echo_round_trip(lp) {
        let on_read = OnRead::new(|lp, _, s: TcpStream, res| match res {
            Ok(b) => lp.write(s, b, None).unwrap(),
            Err(_) => lp.close(s, None).unwrap(),
        });
        let sock = lp.tcp_init().unwrap();
        lp.tcp_bind(sock, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let server = lp.listen(sock, 16, &OnConnection::new(move |lp, _, srv, st| {
            st.unwrap();
            let c = lp.accept(srv).unwrap();
            lp.read_start(c, &on_read).unwrap();
            lp.close(srv, None).unwrap();
        })).unwrap();
        let addr = lp.tcp_getsockname(server).unwrap();
        let client = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            for i in 0..100u32 {
                let msg = format!("ping {i}");
                s.write_all(msg.as_bytes()).unwrap();
                let mut buf = vec![0; msg.len()];
                s.read_exact(&mut buf).unwrap();
                assert_eq!(buf, msg.as_bytes());
            }
        });
        lp.run(RunMode::Default, &mut ()).unwrap();
        client.join().unwrap();
    }
}
