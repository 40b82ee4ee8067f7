//! Timers: order, repeat, again, stop and start from inside callbacks.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;
use uvring::*;
use uvring_tests::{both_backends, run_until};

const LIMIT: Duration = Duration::from_secs(10);

/// Milliseconds.
fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

type Log = Rc<RefCell<Vec<u32>>>;

fn log() -> Log {
    Rc::new(RefCell::new(Vec::new()))
}

/// A timer callback that records the handle's data word.
fn recorder(log: &Log) -> OnTimer<()> {
    let log = log.clone();
    OnTimer::new(move |lp, _, t| log.borrow_mut().push(lp.data(t).unwrap() as u32))
}

fn close_all(lp: &mut Loop, timers: &[Timer]) {
    for &t in timers {
        lp.close(t, None).unwrap();
    }
    lp.run(RunMode::Default, &mut ()).unwrap();
}

both_backends! {
    /// Timers fire by due time; timers due at the same time fire in the
    /// order they were started.
    fn timers_fire_in_order(lp) {
        let fired = log();
        let cb = recorder(&fired);
        // (data, timeout): started out of due order, with ties.
        let plan = [(4, 40), (1, 10), (5, 40), (2, 10), (3, 25), (0, 0), (6, 40)];
        let mut timers = vec![];
        for (data, timeout) in plan {
            let t = lp.timer_init().unwrap();
            lp.set_data(t, data).unwrap();
            lp.timer_start(t, ms(timeout), Duration::ZERO, &cb).unwrap();
            timers.push(t);
        }
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(*fired.borrow(), [0, 1, 2, 3, 4, 5, 6]);
        close_all(lp, &timers);
    }

    /// A repeating timer fires again and again until stopped (here by its own
    /// callback); each firing is at least `repeat` ms after the previous one.
    fn timer_repeats(lp) {
        let times = Rc::new(RefCell::new(Vec::new()));
        let t = lp.timer_init().unwrap();
        let tm = times.clone();
        lp.timer_start(t, ms(5), ms(10), &OnTimer::new(move |lp, _, t| {
            tm.borrow_mut().push(lp.now());
            if tm.borrow().len() == 5 {
                lp.timer_stop(t).unwrap();
            }
        })).unwrap();
        assert_eq!(lp.timer_repeat(t), Ok(ms(10)));
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        let times = times.borrow();
        assert_eq!(times.len(), 5);
        for w in times.windows(2) {
            assert!(w[1] >= w[0] + 10, "repeat interval respected: {times:?}");
        }
        assert!(!lp.is_active(t));
        close_all(lp, &[t]);
    }

    /// timer_again: refused before the first start; restarts a repeating
    /// timer with its repeat as timeout; a timer without repeat is left
    /// alone; `set_repeat` takes effect at the next again/firing.
    fn timer_again(lp) {
        let t = lp.timer_init().unwrap();
        assert_eq!(lp.timer_again(t), Err(Error::EINVAL), "never started");

        let fired = Rc::new(Cell::new(0u32));
        let f = fired.clone();
        let cb = OnTimer::new(move |lp, _, t| {
            f.set(f.get() + 1);
            if f.get() == 3 {
                lp.timer_stop(t).unwrap();
            }
        });
        // Started with a long timeout, then `again` takes the short repeat.
        lp.timer_start(t, ms(60_000), ms(20), &cb).unwrap();
        assert!(lp.timer_due_in(t).unwrap() > ms(20));
        lp.timer_again(t).unwrap();
        assert!(lp.timer_due_in(t).unwrap() <= ms(20));
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(fired.get(), 3);

        // A stopped timer with repeat 0: again does nothing.
        lp.timer_set_repeat(t, Duration::ZERO).unwrap();
        assert_eq!(lp.timer_repeat(t), Ok(Duration::ZERO));
        lp.timer_again(t).unwrap();
        assert!(!lp.is_active(t));

        // Again from another timer's callback postpones a repeating timer:
        // a 30 ms "watchdog" kept from firing by 5 ms "activity" ticks.
        let watchdog = lp.timer_init().unwrap();
        lp.timer_start(watchdog, ms(30), ms(30), &OnTimer::new(|_, _, _| {})).unwrap();
        let ticks = Rc::new(Cell::new(0u32));
        let k = ticks.clone();
        let activity = lp.timer_init().unwrap();
        lp.timer_start(activity, ms(5), ms(5), &OnTimer::new(move |lp, _, me| {
            k.set(k.get() + 1);
            if k.get() < 20 {
                lp.timer_again(watchdog).unwrap();
                assert_eq!(lp.timer_due_in(watchdog), Ok(ms(30)), "pushed a full repeat into the future");
            } else {
                lp.timer_stop(me).unwrap();
                lp.timer_stop(watchdog).unwrap();
            }
        })).unwrap();
        run_until(lp, LIMIT, |lp| !lp.is_active(activity));
        assert_eq!(ticks.get(), 20);
        close_all(lp, &[t, watchdog, activity]);
    }

    /// Stopping from a callback: a timer stops a later timer due in the same
    /// iteration (it never fires) and a repeating timer stops itself.
    fn timer_stop_from_callback(lp) {
        let fired = log();
        let a = lp.timer_init().unwrap();
        let b = lp.timer_init().unwrap();
        lp.set_data(a, 1).unwrap();
        lp.set_data(b, 2).unwrap();
        let record = recorder(&fired);
        let f = fired.clone();
        lp.timer_start(a, ms(10), Duration::ZERO, &OnTimer::new(move |lp, _, _| {
            f.borrow_mut().push(1);
            lp.timer_stop(b).unwrap();
        })).unwrap();
        lp.timer_start(b, ms(10), Duration::ZERO, &record).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(*fired.borrow(), [1], "b was stopped before its turn");
        assert!(!lp.is_active(b));

        let n = Rc::new(Cell::new(0));
        let k = n.clone();
        lp.timer_start(a, ms(1), ms(1), &OnTimer::new(move |lp, _, me| {
            k.set(k.get() + 1);
            lp.timer_stop(me).unwrap();
        })).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(n.get(), 1);
        close_all(lp, &[a, b]);
    }

    /// Starting from a callback: a one-shot timer restarts itself three
    /// times, then starts another, idle timer.
    fn timer_start_from_callback(lp) {
        let fired = log();
        let other = lp.timer_init().unwrap();
        lp.set_data(other, 100).unwrap();
        let record = recorder(&fired);
        // The callback restarts its own timer with itself: keep it in a cell
        // it can read (the cycle is broken at the end of the test).
        let me_cb: Rc<RefCell<Option<OnTimer<()>>>> = Rc::new(RefCell::new(None));
        let f = fired.clone();
        let slot = me_cb.clone();
        let cb = OnTimer::new(move |lp, _, me| {
            let n = f.borrow().len() as u32;
            f.borrow_mut().push(n);
            if n < 3 {
                let again = slot.borrow().clone().unwrap();
                lp.timer_start(me, ms(1), Duration::ZERO, &again).unwrap();
            } else {
                lp.timer_start(other, ms(2), Duration::ZERO, &record).unwrap();
            }
        });
        *me_cb.borrow_mut() = Some(cb.clone());
        let t = lp.timer_init().unwrap();
        lp.timer_start(t, ms(1), Duration::ZERO, &cb).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(*fired.borrow(), [0, 1, 2, 3, 100]);
        *me_cb.borrow_mut() = None;
        close_all(lp, &[t, other]);
    }

    /// Starting a started timer replaces its due time and callback.
    fn timer_start_twice(lp) {
        let fired = log();
        let t = lp.timer_init().unwrap();
        lp.timer_start(t, ms(60_000), Duration::ZERO, &OnTimer::new(|_, _, _| panic!("replaced"))).unwrap();
        lp.set_data(t, 9).unwrap();
        lp.timer_start(t, ms(1), Duration::ZERO, &recorder(&fired)).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(*fired.borrow(), [9]);
        close_all(lp, &[t]);
    }

    /// Closing a started timer: it never fires, and the loop ends.
    fn timer_close_while_started(lp) {
        let t = lp.timer_init().unwrap();
        lp.timer_start(t, ms(1), ms(1), &OnTimer::new(|_, _, _| panic!("closed before due"))).unwrap();
        lp.close(t, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert!(!lp.is_live(t));
    }

    /// An unref'd repeating timer does not keep the loop alive, but fires
    /// while something else does.
    fn timer_unref(lp) {
        let ticks = Rc::new(Cell::new(0u32));
        let k = ticks.clone();
        let bg = lp.timer_init().unwrap();
        lp.timer_start(bg, ms(1), ms(1), &OnTimer::new(move |_, _, _| k.set(k.get() + 1))).unwrap();
        lp.unref_handle(bg).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap(), "only an unref'd timer: the loop ends");
        let fg = lp.timer_init().unwrap();
        lp.timer_start(fg, ms(30), Duration::ZERO, &OnTimer::new(|_, _, _| {})).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert!(ticks.get() >= 1, "the unref'd timer fired while the loop ran");
        close_all(lp, &[bg, fg]);
    }

    /// A timer restarted with timeout 0 from its own callback runs once per
    /// loop iteration, not again in the same timer phase (which would never
    /// end): libuv runs each due timer once per iteration.
    fn timer_zero_restart_runs_once_per_iteration(lp) {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let slot: Rc<RefCell<Option<OnTimer<()>>>> = Rc::new(RefCell::new(None));
        let cb = {
            let (seen, slot) = (seen.clone(), slot.clone());
            OnTimer::new(move |lp, _, me| {
                seen.borrow_mut().push(lp.iterations());
                if seen.borrow().len() < 5 {
                    let again = slot.borrow().clone().unwrap();
                    lp.timer_start(me, Duration::ZERO, Duration::ZERO, &again).unwrap();
                }
            })
        };
        *slot.borrow_mut() = Some(cb.clone());
        let t = lp.timer_init().unwrap();
        lp.timer_start(t, Duration::ZERO, Duration::ZERO, &cb).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        *slot.borrow_mut() = None;
        let seen = seen.borrow();
        assert_eq!(seen.len(), 5);
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "one run per iteration: {seen:?}");
        close_all(lp, &[t]);
    }
}

/// Loop state for the test below: what the callbacks change lives here.
#[derive(Default)]
struct Ticks {
    fired: Vec<(usize, u64)>,
    repeats_left: u32,
}

both_backends! {
    /// State in the loop's data `D` instead of captured cells: each callback
    /// gets the value passed to `run`, and what it changed is there after
    /// `run` returns. A repeating timer counts down in the state and stops
    /// itself; a one-shot timer fires once.
    fn timer_state_in_loop_data(lp: Ticks) {
        let on_timer = OnTimer::new(|lp: &mut Loop<Ticks>, d: &mut Ticks, t| {
            d.fired.push((lp.data(t).unwrap(), lp.now()));
            if lp.timer_repeat(t).unwrap() > Duration::ZERO {
                d.repeats_left -= 1;
                if d.repeats_left == 0 {
                    lp.timer_stop(t).unwrap();
                }
            }
        });
        let (rep, once) = (lp.timer_init().unwrap(), lp.timer_init().unwrap());
        lp.set_data(rep, 1).unwrap();
        lp.set_data(once, 2).unwrap();
        lp.timer_start(rep, ms(1), ms(2), &on_timer).unwrap();
        lp.timer_start(once, ms(4), Duration::ZERO, &on_timer).unwrap();
        let mut state = Ticks { repeats_left: 4, ..Ticks::default() };
        assert!(!lp.run(RunMode::Default, &mut state).unwrap());
        assert_eq!(state.repeats_left, 0);
        assert_eq!(state.fired.iter().filter(|(h, _)| *h == 1).count(), 4);
        assert_eq!(state.fired.iter().filter(|(h, _)| *h == 2).count(), 1);
        assert!(state.fired.windows(2).all(|w| w[0].1 <= w[1].1), "in time order: {:?}", state.fired);
        // The same loop runs again with another state value.
        let mut second = Ticks { repeats_left: 1, ..Ticks::default() };
        lp.timer_start(rep, ms(1), ms(1), &on_timer).unwrap();
        assert!(!lp.run(RunMode::Default, &mut second).unwrap());
        assert_eq!(second.fired.len(), 1);
        assert_eq!(state.fired.len(), 5, "the first state is untouched");
        lp.close(rep, None).unwrap();
        lp.close(once, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut state).unwrap());
    }
}
