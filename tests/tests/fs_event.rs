//! File-system watchers (issue 12; libuv's `uv_fs_event_t` on inotify):
//! create, modify, rename and delete in a watched directory; a watched
//! file; two watchers of one directory; stop, restart and close (from the
//! callback too); errors at start; the loop's inotify fd gone once no
//! watcher is left (the harness compares fds). Both backends.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use uvring::*;
use uvring_tests::{both_backends, run_until_with};

const LIMIT: Duration = Duration::from_secs(10);

/// Events seen, by watcher: `(watcher, name, events)`.
#[derive(Default)]
struct Seen {
    events: Vec<(FsEvent, OsString, FsEvents)>,
    errors: Vec<Error>,
    /// Close the watcher from its callback at its first event.
    close_in_callback: bool,
}

impl Seen {
    fn has(&self, w: FsEvent, name: &str, ev: FsEvents) -> bool {
        self.events.iter().any(|(x, n, e)| *x == w && n == name && e.contains(ev))
    }
}

fn record() -> OnFsEvent<Seen> {
    OnFsEvent::new(|lp, seen: &mut Seen, w, change| match change {
        Ok(c) => {
            seen.events.push((w, c.filename.to_owned(), c.events));
            if seen.close_in_callback {
                lp.close(w, None).unwrap();
            }
        }
        Err(e) => seen.errors.push(e),
    })
}

/// A directory of its own, removed with its contents when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("uvring-fsev-{test}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the loop until `seen` satisfies `done`.
fn wait_for(lp: &mut Loop<Seen>, seen: &mut Seen, done: impl Fn(&Seen) -> bool) {
    run_until_with(lp, seen, LIMIT, |_, s| done(s));
}

/// Lets the loop run a few turns without waiting (events already queued
/// in the kernel are read).
fn settle(lp: &mut Loop<Seen>, seen: &mut Seen) {
    for _ in 0..5 {
        lp.run(RunMode::NoWait, seen).unwrap();
    }
}

both_backends! {
    fn a_watched_directory_reports_create_modify_rename_and_delete(lp: Seen) {
        let dir = TempDir::new("dir");
        let w = lp.fs_event_init().unwrap();
        lp.fs_event_start(w, &dir.0, FsEventFlags::empty(), &record()).unwrap();
        assert!(lp.is_active(w));
        assert_eq!(lp.fs_event_path(w).unwrap(), dir.0);
        assert_eq!(lp.handle_type(w), Ok(HandleType::FsEvent));
        let mut seen = Seen::default();
        let a = dir.0.join("a");
        std::fs::write(&a, b"one").unwrap();
        wait_for(lp, &mut seen, |s| s.has(w, "a", FsEvents::RENAME) && s.has(w, "a", FsEvents::CHANGE));
        seen.events.clear();
        std::fs::write(&a, b"two").unwrap();
        wait_for(lp, &mut seen, |s| s.has(w, "a", FsEvents::CHANGE));
        std::fs::rename(&a, dir.0.join("b")).unwrap();
        wait_for(lp, &mut seen, |s| s.has(w, "a", FsEvents::RENAME) && s.has(w, "b", FsEvents::RENAME));
        seen.events.clear();
        std::fs::remove_file(dir.0.join("b")).unwrap();
        wait_for(lp, &mut seen, |s| s.has(w, "b", FsEvents::RENAME));
        assert!(seen.errors.is_empty());
        // Stopped: no more events, the path is gone, and it can restart.
        lp.fs_event_stop(w).unwrap();
        assert!(!lp.is_active(w));
        assert_eq!(lp.fs_event_path(w), Err(Error::EINVAL));
        seen.events.clear();
        std::fs::write(dir.0.join("c"), b"").unwrap();
        settle(lp, &mut seen);
        assert!(seen.events.is_empty(), "a stopped watcher hears nothing: {:?}", seen.events);
        lp.fs_event_start(w, &dir.0, FsEventFlags::empty(), &record()).unwrap();
        std::fs::remove_file(dir.0.join("c")).unwrap();
        wait_for(lp, &mut seen, |s| s.has(w, "c", FsEvents::RENAME));
        lp.close(w, None).unwrap();
        lp.run(RunMode::Default, &mut seen).unwrap();
    }

    fn a_watched_file_reports_under_its_own_name(lp: Seen) {
        let dir = TempDir::new("file");
        let f = dir.0.join("watched.txt");
        std::fs::write(&f, b"x").unwrap();
        let w = lp.fs_event_init().unwrap();
        lp.fs_event_start(w, &f, FsEventFlags::empty(), &record()).unwrap();
        let mut seen = Seen::default();
        std::fs::write(&f, b"more").unwrap();
        wait_for(lp, &mut seen, |s| s.has(w, "watched.txt", FsEvents::CHANGE));
        // The file itself renamed: a rename, under the watched name.
        std::fs::rename(&f, dir.0.join("moved.txt")).unwrap();
        wait_for(lp, &mut seen, |s| s.has(w, "watched.txt", FsEvents::RENAME));
        lp.close(w, None).unwrap();
        lp.run(RunMode::Default, &mut seen).unwrap();
    }

    fn two_watchers_of_one_directory_both_hear_and_stop_apart(lp: Seen) {
        let dir = TempDir::new("two");
        let (w1, w2) = (lp.fs_event_init().unwrap(), lp.fs_event_init().unwrap());
        let cb = record();
        lp.fs_event_start(w1, &dir.0, FsEventFlags::empty(), &cb).unwrap();
        lp.fs_event_start(w2, &dir.0, FsEventFlags::empty(), &cb).unwrap();
        let mut seen = Seen::default();
        std::fs::write(dir.0.join("x"), b"").unwrap();
        wait_for(lp, &mut seen, |s| s.has(w1, "x", FsEvents::RENAME) && s.has(w2, "x", FsEvents::RENAME));
        // Stopping one keeps the shared kernel watch for the other.
        lp.fs_event_stop(w1).unwrap();
        settle(lp, &mut seen);
        seen.events.clear();
        std::fs::write(dir.0.join("y"), b"").unwrap();
        wait_for(lp, &mut seen, |s| s.has(w2, "y", FsEvents::RENAME));
        assert!(seen.events.iter().all(|(w, _, _)| *w == w2), "only the started watcher hears: {:?}", seen.events);
        lp.close(w1, None).unwrap();
        lp.close(w2, None).unwrap();
        lp.run(RunMode::Default, &mut seen).unwrap();
    }

    fn a_watcher_closed_in_its_callback_hears_no_more(lp: Seen) {
        let dir = TempDir::new("close-in-cb");
        let w = lp.fs_event_init().unwrap();
        lp.fs_event_start(w, &dir.0, FsEventFlags::empty(), &record()).unwrap();
        let mut seen = Seen { close_in_callback: true, ..Seen::default() };
        // Several events queued at once: the first closes the watcher.
        for name in ["p", "q", "r"] {
            std::fs::write(dir.0.join(name), b"").unwrap();
        }
        lp.run(RunMode::Default, &mut seen).unwrap();
        assert_eq!(seen.events.len(), 1, "{:?}", seen.events);
        assert!(!lp.is_live(w));
    }

    fn start_errors_come_back_at_once_and_leave_no_fd(lp: Seen) {
        let dir = TempDir::new("errors");
        let w = lp.fs_event_init().unwrap();
        let cb = record();
        assert_eq!(lp.fs_event_start(w, dir.0.join("missing"), FsEventFlags::empty(), &cb), Err(Error::ENOENT));
        assert_eq!(lp.fs_event_start(w, &dir.0, FsEventFlags::RECURSIVE, &cb), Err(Error::ENOSYS));
        assert_eq!(lp.fs_event_start(w, "bad\0path", FsEventFlags::empty(), &cb), Err(Error::EINVAL));
        assert!(!lp.is_active(w));
        lp.fs_event_start(w, &dir.0, FsEventFlags::empty(), &cb).unwrap();
        assert_eq!(lp.fs_event_start(w, &dir.0, FsEventFlags::empty(), &cb), Err(Error::EINVAL), "already started");
        // A stopped watcher may stop again.
        lp.fs_event_stop(w).unwrap();
        lp.fs_event_stop(w).unwrap();
        lp.close(w, None).unwrap();
        let mut seen = Seen::default();
        lp.run(RunMode::Default, &mut seen).unwrap();
        assert!(seen.events.is_empty() && seen.errors.is_empty());
    }
}
