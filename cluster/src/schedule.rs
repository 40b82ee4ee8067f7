//! Scheduling state machines, free of I/O so they can be tested alone:
//! [`RoundRobin`] picks the worker for each connection of one listener, and
//! [`RestartGovernor`] decides when a crashed worker is replaced.

use crate::settings::RespawnSettings;
use std::collections::VecDeque;

/// A worker's id (Node's `worker.id`): 1, 2, 3, ... in fork order, never reused.
pub type WorkerId = u32;

/// The workers serving one round-robin listener, and the choice among them.
///
/// The choice is least-loaded with a tolerance: the caller supplies each
/// worker's load (for the primary, connections handed over and not yet
/// acknowledged plus the open connections the worker reported), and the
/// choice is the next worker in rotation whose load is within `slack` of
/// the least. Equal workers thus get a plain round robin (an even split,
/// whatever the noise in their load reports), while a worker that falls
/// behind by more than `slack` is passed over until it catches up.
/// Allocation-free once the member list has its capacity.
#[derive(Debug, Default, Clone)]
pub struct RoundRobin {
    members: Vec<WorkerId>,
    /// Index in `members` where the next scan starts.
    cursor: usize,
    slack: u32,
}

impl RoundRobin {
    /// A rotation with the default tolerance ([`DEFAULT_LOAD_SLACK`]).
    pub fn new() -> RoundRobin {
        RoundRobin::with_slack(DEFAULT_LOAD_SLACK)
    }

    /// A rotation that passes over workers more than `slack` above the least
    /// loaded (0: strictly least-loaded, ties in rotation).
    pub fn with_slack(slack: u32) -> RoundRobin {
        RoundRobin { members: Vec::with_capacity(16), cursor: 0, slack }
    }

    /// Adds a worker (no-op if it is already a member).
    pub fn add(&mut self, w: WorkerId) {
        if !self.members.contains(&w) {
            self.members.push(w);
        }
    }

    /// Removes a worker; returns whether it was a member.
    pub fn remove(&mut self, w: WorkerId) -> bool {
        let Some(i) = self.members.iter().position(|&m| m == w) else { return false };
        self.members.remove(i);
        if self.cursor > i {
            self.cursor -= 1;
        }
        if self.cursor >= self.members.len() {
            self.cursor = 0;
        }
        true
    }

    /// Whether `w` is a member.
    pub fn contains(&self, w: WorkerId) -> bool {
        self.members.contains(&w)
    }

    /// Whether the rotation has no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The members, in rotation order.
    pub fn members(&self) -> &[WorkerId] {
        &self.members
    }

    /// The next member in rotation, other than `exclude`, whose load is
    /// within the slack of the least; `None` if there is none. `load`
    /// returns `None` for a worker that cannot take connections now (it is
    /// skipped).
    pub fn choose(
        &mut self,
        mut load: impl FnMut(WorkerId) -> Option<u32>,
        exclude: Option<WorkerId>,
    ) -> Option<WorkerId> {
        let n = self.members.len();
        let mut least: Option<u32> = None;
        for &w in &self.members {
            if Some(w) == exclude {
                continue;
            }
            if let Some(l) = load(w) {
                least = Some(least.map_or(l, |m| m.min(l)));
            }
        }
        let limit = least?.saturating_add(self.slack);
        for k in 0..n {
            let i = (self.cursor + k) % n;
            let w = self.members[i];
            if Some(w) == exclude {
                continue;
            }
            if load(w).is_some_and(|l| l <= limit) {
                self.cursor = (i + 1) % n;
                return Some(w);
            }
        }
        None
    }
}

/// Default tolerance of [`RoundRobin`]: a worker is passed over when it has
/// more than this many connections above the least-loaded one.
pub const DEFAULT_LOAD_SLACK: u32 = 8;

/// What to do about a crashed worker.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RespawnDecision {
    /// Fork a replacement after this many milliseconds.
    After(u64),
    /// Too many crashes in the window: stop respawning.
    Storm,
}

/// Exponential back-off with a restart-storm limit, fed with crash times.
#[derive(Debug, Clone)]
pub struct RestartGovernor {
    settings: RespawnSettings,
    crashes: VecDeque<u64>,
    stormed: bool,
    /// Failed starts in a row (see [`on_failed_start`](Self::on_failed_start)).
    failed_starts: u32,
}

impl RestartGovernor {
    /// A governor with no crash recorded, deciding by `settings`.
    pub fn new(settings: RespawnSettings) -> RestartGovernor {
        RestartGovernor { settings, crashes: VecDeque::new(), stormed: false, failed_starts: 0 }
    }

    /// Records a crash at `now_ms` and decides. The delay doubles with each
    /// crash inside the window (base, 2 base, 4 base, ... up to the maximum);
    /// once the window holds more than `storm_limit` crashes, respawning
    /// stops for good (a storm needs an operator, not more restarts).
    pub fn on_crash(&mut self, now_ms: u64) -> RespawnDecision {
        if self.stormed {
            return RespawnDecision::Storm;
        }
        let window = self.settings.window.as_millis() as u64;
        while self.crashes.front().is_some_and(|&t| now_ms.saturating_sub(t) >= window) {
            self.crashes.pop_front();
        }
        self.crashes.push_back(now_ms);
        let n = self.crashes.len() as u32;
        if n > self.settings.storm_limit {
            self.stormed = true;
            return RespawnDecision::Storm;
        }
        let shift = (n - 1).min(32);
        let (base, max) = (self.settings.base_delay.as_millis() as u64, self.settings.max_delay.as_millis() as u64);
        let delay = base.saturating_mul(1u64 << shift).min(max);
        RespawnDecision::After(delay)
    }

    /// A worker crashed before it started (it had not listened, within the
    /// startup timeout of its fork), or a replacement did not start in
    /// time: counts as a crash, and more than `storm_limit` failed starts
    /// in a row (with no start in between, however long they take) are a
    /// restart storm: a listen that can never succeed (`EADDRINUSE` on a
    /// fixed port) ends the respawn loop although the back-off spreads the
    /// crashes wider than the window.
    pub fn on_failed_start(&mut self, now_ms: u64) -> RespawnDecision {
        if self.stormed {
            return RespawnDecision::Storm;
        }
        self.failed_starts += 1;
        if self.failed_starts > self.settings.storm_limit {
            self.stormed = true;
            return RespawnDecision::Storm;
        }
        self.on_crash(now_ms)
    }

    /// A worker started (it listens): the run of failed starts ends.
    pub fn on_started(&mut self) {
        self.failed_starts = 0;
    }

    /// Whether a restart storm stopped respawning.
    pub fn stormed(&self) -> bool {
        self.stormed
    }

    /// Crashes currently inside the window.
    pub fn recent_crashes(&self) -> usize {
        self.crashes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn equal_loads_rotate() {
        let mut rr = RoundRobin::new();
        for w in 1..=3 {
            rr.add(w);
        }
        let picks: Vec<_> = (0..6).map(|_| rr.choose(|_| Some(0), None).unwrap()).collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn least_loaded_wins_and_ties_rotate() {
        let mut rr = RoundRobin::with_slack(0);
        for w in 1..=3 {
            rr.add(w);
        }
        let load = |w: WorkerId| Some(if w == 2 { 5 } else { 1 });
        let picks: Vec<_> = (0..4).map(|_| rr.choose(load, None).unwrap()).collect();
        assert_eq!(picks, [1, 3, 1, 3]);
    }

    #[test]
    fn exclusion_and_unavailable_workers_are_skipped() {
        let mut rr = RoundRobin::new();
        rr.add(1);
        rr.add(2);
        assert_eq!(rr.choose(|_| Some(0), Some(1)), Some(2));
        assert_eq!(rr.choose(|w| (w != 2).then_some(0), None), Some(1));
        assert_eq!(rr.choose(|_| None, None), None);
        assert_eq!(rr.choose(|_| Some(0), Some(1)).unwrap(), 2);
    }

    #[test]
    fn a_worker_behind_by_more_than_the_slack_is_passed_over() {
        let mut rr = RoundRobin::with_slack(2);
        for w in 1..=3 {
            rr.add(w);
        }
        // Within the slack: plain rotation.
        let near = |w: WorkerId| Some(w);
        let picks: Vec<_> = (0..3).map(|_| rr.choose(near, None).unwrap()).collect();
        assert_eq!(picks, [1, 2, 3]);
        // Worker 3 is 5 above the least: skipped.
        let far = |w: WorkerId| Some(if w == 3 { 6 } else { 1 });
        let picks: Vec<_> = (0..4).map(|_| rr.choose(far, None).unwrap()).collect();
        assert_eq!(picks, [1, 2, 1, 2]);
    }

    #[test]
    fn simulated_load_splits_evenly() {
        // Each choice adds one to the chosen worker's load; every 3 choices
        // each worker finishes one connection.
        let mut rr = RoundRobin::new();
        for w in 1..=4 {
            rr.add(w);
        }
        let mut load = [0u32; 5];
        let mut count = [0u32; 5];
        for i in 0..10_000 {
            let w = rr.choose(|w| Some(load[w as usize]), None).unwrap();
            load[w as usize] += 1;
            count[w as usize] += 1;
            if i % 3 == 0 {
                for l in load.iter_mut() {
                    *l = l.saturating_sub(1);
                }
            }
        }
        for &c in &count[1..] {
            assert!((2400..=2600).contains(&c), "{count:?}");
        }
    }

    #[test]
    fn removal_keeps_the_rotation_valid() {
        let mut rr = RoundRobin::new();
        for w in 1..=3 {
            rr.add(w);
        }
        assert_eq!(rr.choose(|_| Some(0), None), Some(1));
        assert_eq!(rr.choose(|_| Some(0), None), Some(2));
        assert!(rr.remove(3));
        assert!(!rr.remove(3));
        assert_eq!(rr.choose(|_| Some(0), None), Some(1));
        assert!(rr.remove(1));
        assert!(rr.remove(2));
        assert!(rr.is_empty());
        assert_eq!(rr.choose(|_| Some(0), None), None);
    }

    fn governor(limit: u32) -> RestartGovernor {
        RestartGovernor::new(
            RespawnSettings::default()
                .enabled(true)
                .base_delay(Duration::from_millis(100))
                .max_delay(Duration::from_secs(1))
                .storm_limit(limit)
                .window(Duration::from_secs(10)),
        )
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let mut g = governor(100);
        let delays: Vec<_> = (0..6).map(|i| g.on_crash(i * 10)).collect();
        use RespawnDecision::After;
        assert_eq!(delays, [After(100), After(200), After(400), After(800), After(1000), After(1000)]);
    }

    #[test]
    fn crashes_outside_the_window_are_forgotten() {
        let mut g = governor(100);
        assert_eq!(g.on_crash(0), RespawnDecision::After(100));
        assert_eq!(g.on_crash(1_000), RespawnDecision::After(200));
        assert_eq!(g.on_crash(20_000), RespawnDecision::After(100));
        assert_eq!(g.recent_crashes(), 1);
    }

    #[test]
    fn failed_starts_in_a_row_are_a_storm_however_slow() {
        let mut g = governor(3);
        // Spread far wider than the window: the window alone never fills.
        for t in 0..3 {
            assert!(matches!(g.on_failed_start(t * 60_000), RespawnDecision::After(_)));
        }
        assert_eq!(g.on_failed_start(240_000), RespawnDecision::Storm);
        assert!(g.stormed());
        // A start in between ends the run.
        let mut g = governor(3);
        for t in 0..3 {
            assert!(matches!(g.on_failed_start(t * 60_000), RespawnDecision::After(_)));
        }
        g.on_started();
        assert!(matches!(g.on_failed_start(240_000), RespawnDecision::After(_)));
    }

    #[test]
    fn a_storm_stops_respawning() {
        let mut g = governor(3);
        for t in 0..3 {
            assert!(matches!(g.on_crash(t), RespawnDecision::After(_)));
        }
        assert_eq!(g.on_crash(4), RespawnDecision::Storm);
        assert!(g.stormed());
        assert_eq!(g.on_crash(60_000), RespawnDecision::Storm);
    }
}
