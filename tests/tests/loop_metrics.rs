//! Loop metrics (libuv's `uv_metrics_idle_time` and `uv_metrics_info`):
//! time blocked in the backend's wait is idle, time in callbacks is not.

use std::time::{Duration, Instant};
use uvring::*;
use uvring_tests::both_backends;

/// What the timer callbacks saw.
#[derive(Default)]
struct Seen {
    /// Idle time when the callback began and when it ended.
    idle_at_entry: Option<Duration>,
    idle_at_exit: Option<Duration>,
    /// Loop counters at the callback's entry.
    info_at_entry: Option<LoopMetrics>,
}

/// How long the busy callback spins.
const BUSY: Duration = Duration::from_millis(150);
/// How long the timer waits before firing.
const WAIT: Duration = Duration::from_millis(200);

/// Spins (no syscall that blocks) for `d`.
fn spin(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

both_backends! {
    /// A loop waiting for a timer is idle for (at least) the time it waits:
    /// the wait blocks in `epoll_wait` / `io_uring_enter` for the timer's
    /// delay, whatever the machine's load (a wait may last longer, never
    /// shorter).
    fn idle_time_grows_while_a_timer_waits(lp: Seen) {
        assert_eq!(lp.metrics_idle_time(), Duration::ZERO, "a new loop has not waited");
        let t = lp.timer_init().unwrap();
        let on_timer = OnTimer::new(|lp: &mut Loop<Seen>, seen: &mut Seen, _| {
            seen.idle_at_entry = Some(lp.metrics_idle_time());
            seen.info_at_entry = Some(lp.metrics_info());
        });
        lp.timer_start(t, WAIT, Duration::ZERO, &on_timer).unwrap();
        let mut seen = Seen::default();
        lp.run(RunMode::Default, &mut seen).unwrap();
        let idle = seen.idle_at_entry.expect("the timer fired");
        // The poll timeout is rounded to whole milliseconds below the
        // timer's due time at worst by one millisecond per wake-up.
        assert!(idle >= WAIT - Duration::from_millis(20), "{}: idle {idle:?} after a {WAIT:?} wait", lp.backend());
        let info = seen.info_at_entry.unwrap();
        assert!(info.loop_count >= 1, "{}: {info:?}", lp.backend());
        lp.close(t, None).unwrap();
        lp.run(RunMode::Default, &mut seen).unwrap();
        assert_eq!(lp.handle_count(), 0);
    }

    /// Work inside a callback is busy time: the idle total does not move
    /// while a callback spins, and a loop that never had to wait (a
    /// zero-delay timer whose callback spins) has no idle time at all.
    fn busy_work_does_not_count_as_idle(lp: Seen) {
        let t = lp.timer_init().unwrap();
        let on_timer = OnTimer::new(|lp: &mut Loop<Seen>, seen: &mut Seen, _| {
            seen.idle_at_entry = Some(lp.metrics_idle_time());
            spin(BUSY);
            seen.idle_at_exit = Some(lp.metrics_idle_time());
        });
        lp.timer_start(t, Duration::ZERO, Duration::ZERO, &on_timer).unwrap();
        let mut seen = Seen::default();
        lp.run(RunMode::Default, &mut seen).unwrap();
        let (entry, exit) = (seen.idle_at_entry.unwrap(), seen.idle_at_exit.unwrap());
        assert_eq!(entry, exit, "{}: idle time grew during a callback", lp.backend());
        // Nothing was left to wait for after the callback: no poll blocked.
        assert!(lp.metrics_idle_time() < BUSY, "{}: idle {:?}", lp.backend(), lp.metrics_idle_time());
        lp.close(t, None).unwrap();
        lp.run(RunMode::Default, &mut seen).unwrap();
        assert_eq!(lp.handle_count(), 0);
    }

    /// `events` counts completions the poll phase took; a completion that
    /// was ready before the loop polled without blocking (`NoWait`) is
    /// `events_waiting` too.
    fn events_and_events_waiting_count_completions(lp: Seen) {
        let before = lp.metrics_info();
        assert_eq!((before.events, before.events_waiting), (0, 0));
        let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        let p = lp.poll_init(std::os::fd::AsRawFd::as_raw_fd(&r)).unwrap();
        let on_poll = OnPoll::new(|lp: &mut Loop<Seen>, _: &mut Seen, p, _| {
            lp.close(p, None).unwrap();
        });
        lp.poll_start(p, PollEvents::READABLE, &on_poll).unwrap();
        std::io::Write::write_all(&mut &w, b"!").unwrap();
        // The readiness is there before the poll: it was waiting.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Seen::default();
        while lp.handle_count() > 0 {
            assert!(Instant::now() < deadline, "{}: the poll watcher never fired", lp.backend());
            lp.run(RunMode::NoWait, &mut seen).unwrap();
        }
        let after = lp.metrics_info();
        assert!(after.events >= 1, "{}: {after:?}", lp.backend());
        assert!(after.events_waiting >= 1, "{}: {after:?}", lp.backend());
        assert!(after.events_waiting <= after.events, "{}: {after:?}", lp.backend());
        assert!(after.loop_count > before.loop_count);
        drop((r, w));
    }
}
