//! File-system watchers (`uv_fs_event_t`), on inotify.
//!
//! [`fs_event_init`](Loop::fs_event_init) makes a stopped [`FsEvent`];
//! [`fs_event_start`](Loop::fs_event_start) watches a file or a directory
//! and calls back with a [`FsChange`] for each event: the name of the entry
//! that changed (in a watched directory) or of the watched file itself, and
//! [`FsEvents::RENAME`] (created, deleted, moved in or out, the watched
//! path itself moved or deleted) and/or [`FsEvents::CHANGE`] (contents or
//! metadata written), as libuv reports them on Linux.
//!
//! **Not recursive**: a directory watch sees its own entries, not those of
//! its subdirectories (inotify has no recursive watches; libuv does not
//! emulate them on Linux either). [`FsEventFlags::RECURSIVE`] is refused
//! with `ENOSYS`; watch each subdirectory that matters.
//!
//! The loop owns one inotify instance, made at the first start and closed
//! when the last watcher stops, so a loop without watchers holds no inotify
//! fd. Its readiness is polled like any fd (`POLL_ADD` on io_uring, epoll
//! otherwise) and the records are read and parsed on the loop thread, a
//! bounded amount per wakeup. Watchers of one inode share the kernel's watch
//! descriptor; it is removed when the last of them stops.

use crate::backend::{Driver, Op, Token};
use crate::error::{Error, Result};
use crate::event_loop::{Kind, Loop};
use crate::handle::*;
use crate::sys::{self, inotify};
use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

/// What happened to a watched path or entry (`uv_fs_event`): a bit set.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Default)]
pub struct FsEvents(u32);

impl FsEvents {
    /// Created, deleted, or moved (in, out, or the watched path itself)
    /// (`UV_RENAME`).
    pub const RENAME: FsEvents = FsEvents(1);
    /// Contents or metadata written (`UV_CHANGE`).
    pub const CHANGE: FsEvents = FsEvents(2);

    pub const fn empty() -> FsEvents {
        FsEvents(0)
    }
    /// Whether every event of `other` is in `self`.
    pub const fn contains(self, other: FsEvents) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for FsEvents {
    type Output = FsEvents;
    fn bitor(self, rhs: FsEvents) -> FsEvents {
        FsEvents(self.0 | rhs.0)
    }
}

impl std::fmt::Debug for FsEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.contains(FsEvents::RENAME), self.contains(FsEvents::CHANGE)) {
            (true, true) => f.write_str("FsEvents(RENAME | CHANGE)"),
            (true, false) => f.write_str("FsEvents(RENAME)"),
            (false, true) => f.write_str("FsEvents(CHANGE)"),
            (false, false) => f.write_str("FsEvents()"),
        }
    }
}

/// How [`fs_event_start`](Loop::fs_event_start) watches
/// (`uv_fs_event_flags`).
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct FsEventFlags(u32);

impl FsEventFlags {
    /// Watch subdirectories too (`UV_FS_EVENT_RECURSIVE`): not available
    /// on Linux (`ENOSYS`), see the module docs.
    pub const RECURSIVE: FsEventFlags = FsEventFlags(4);

    pub const fn empty() -> FsEventFlags {
        FsEventFlags(0)
    }
    pub const fn contains(self, other: FsEventFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// One event of a watcher, lent to its [`OnFsEvent`] callback for the call.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FsChange<'a> {
    /// The entry's name within the watched directory, or the watched
    /// file's own name (its last path component).
    pub filename: &'a OsStr,
    pub events: FsEvents,
}

pub(crate) struct FsEventState<D> {
    /// The watched path, while started.
    path: Option<Rc<Path>>,
    /// The kernel's watch descriptor, while started.
    wd: Option<i32>,
    cb: Option<Rc<FsEventFn<D>>>,
}

/// The loop's inotify instance (an internal handle).
pub(crate) struct InotifyState {
    fd: OwnedFd,
    /// The readiness poll in flight.
    op: Option<Token>,
}

/// A loop's watchers and its inotify handle.
#[derive(Default)]
pub(crate) struct InotifyRegistry {
    handle: Option<HandleId>,
    /// `(watch descriptor, watcher)` for every started watcher.
    watchers: Vec<(i32, HandleId)>,
    /// Records read, kept for reuse (no allocation per wakeup after warm-up).
    buf: Vec<u8>,
    scratch: Vec<HandleId>,
}

/// Bytes read per wakeup at most: a few reads of at least one page each
/// (a record is at most 16 + 256 bytes; the kernel refuses a smaller read).
const READ_SPACE: usize = 16 * 1024;
const READ_MIN: usize = 4096;

impl<D> Loop<D> {
    /// A stopped file-system watcher (`uv_fs_event_init`).
    pub fn fs_event_init(&mut self) -> Result<FsEvent> {
        Ok(FsEvent(self.insert(Kind::FsEvent(FsEventState { path: None, wd: None, cb: None }))?))
    }

    fn fs_event_state(&mut self, w: FsEvent) -> Result<&mut FsEventState<D>> {
        match &mut self.open_slot_mut(w.0)?.kind {
            Kind::FsEvent(st) => Ok(st),
            _ => Err(Error::WRONG_TYPE),
        }
    }

    /// Watches `path`, a file or a directory (`uv_fs_event_start`); `cb`
    /// runs for each event until [`fs_event_stop`](Self::fs_event_stop) or
    /// `close`. Errors come back at once: `ENOENT` for a missing path,
    /// `EACCES`, `ENOSPC` past the user's inotify watch limit, `ENOSYS` for
    /// [`FsEventFlags::RECURSIVE`], `EINVAL` if already started.
    pub fn fs_event_start(
        &mut self,
        w: FsEvent,
        path: impl AsRef<Path>,
        flags: FsEventFlags,
        cb: &OnFsEvent<D>,
    ) -> Result<()> {
        if flags.contains(FsEventFlags::RECURSIVE) {
            return Err(Error::ENOSYS);
        }
        if self.fs_event_state(w)?.wd.is_some() {
            return Err(Error::EINVAL);
        }
        let path = path.as_ref();
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::EINVAL)?;
        let fd = self.inotify_ensure()?;
        let wd = match inotify::add_watch(fd, &c_path) {
            Ok(wd) => wd,
            Err(e) => {
                self.inotify_release_if_unused();
                return Err(e);
            }
        };
        self.inotify.watchers.push((wd, w.0));
        let st = self.fs_event_state(w)?;
        st.path = Some(Rc::from(path));
        st.wd = Some(wd);
        st.cb = Some(cb.f.clone());
        self.set_active(w.0, true);
        Ok(())
    }

    /// Stops watching (`uv_fs_event_stop`); it may be started again.
    /// Stopping a stopped watcher does nothing.
    pub fn fs_event_stop(&mut self, w: FsEvent) -> Result<()> {
        self.fs_event_state(w)?;
        self.fs_event_unwatch(w.0);
        self.set_active(w.0, false);
        Ok(())
    }

    /// The watched path (`uv_fs_event_getpath`); `EINVAL` when stopped.
    pub fn fs_event_path(&mut self, w: FsEvent) -> Result<std::path::PathBuf> {
        self.fs_event_state(w)?.path.as_deref().map(Path::to_path_buf).ok_or(Error::EINVAL)
    }

    pub(crate) fn fs_event_close(&mut self, h: HandleId) {
        self.fs_event_unwatch(h);
    }

    /// Forgets watcher `h`'s watch: the kernel's goes when no other watcher
    /// shares it, the inotify instance when no watcher is left.
    fn fs_event_unwatch(&mut self, h: HandleId) {
        let wd = match self.slot_mut(h).map(|s| &mut s.kind) {
            Ok(Kind::FsEvent(st)) => {
                st.path = None;
                st.cb = None;
                st.wd.take()
            }
            _ => None,
        };
        let Some(wd) = wd else { return };
        self.inotify.watchers.retain(|&(_, x)| x != h);
        if !self.inotify.watchers.iter().any(|&(w, _)| w == wd) {
            if let Some(fd) = self.inotify_fd() {
                inotify::rm_watch(fd, wd);
            }
        }
        self.inotify_release_if_unused();
    }

    fn inotify_fd(&self) -> Option<std::os::fd::RawFd> {
        match self.slot(self.inotify.handle?).map(|s| &s.kind) {
            Ok(Kind::Inotify(st)) => Some(st.fd.as_raw_fd()),
            _ => None,
        }
    }

    /// The loop's inotify fd, made (and its poll armed) on first use.
    fn inotify_ensure(&mut self) -> Result<std::os::fd::RawFd> {
        if let Some(fd) = self.inotify_fd() {
            return Ok(fd);
        }
        let fd = inotify::init()?;
        let raw = fd.as_raw_fd();
        let h = self.insert(Kind::Inotify(InotifyState { fd, op: None }))?;
        self.set_internal(h);
        self.inotify.handle = Some(h);
        if let Err(e) = self.inotify_arm(h) {
            self.inotify.handle = None;
            let _ = self.close(h, None);
            return Err(e);
        }
        Ok(raw)
    }

    /// Closes the inotify instance once no watcher uses it.
    fn inotify_release_if_unused(&mut self) {
        if self.inotify.watchers.is_empty() {
            if let Some(h) = self.inotify.handle.take() {
                let _ = self.close(h, None);
            }
        }
    }

    fn inotify_arm(&mut self, h: HandleId) -> Result<()> {
        let Ok(Kind::Inotify(st)) = self.slot(h).map(|s| &s.kind) else { return Err(Error::WRONG_TYPE) };
        let fd = st.fd.as_raw_fd();
        // SAFETY: a readiness poll lends nothing.
        let token = unsafe { self.submit_op(h, Op::PollIn { fd })? };
        if let Ok(Kind::Inotify(st)) = self.slot_mut(h).map(|s| &mut s.kind) {
            st.op = Some(token);
        }
        Ok(())
    }

    pub(crate) fn inotify_close(&mut self, h: HandleId) {
        if let Ok(Kind::Inotify(st)) = self.slot_mut(h).map(|s| &mut s.kind) {
            if let Some(token) = st.op.take() {
                let fd = st.fd.as_raw_fd();
                self.driver.cancel(fd, token);
            }
        }
    }

    /// The inotify fd is readable: read a bounded batch of records, poll
    /// again, then run the watchers of each record.
    pub(crate) fn on_inotify_ready(&mut self, h: HandleId, token: Token, res: i32, d: &mut D) {
        let Ok(Kind::Inotify(st)) = self.slot_mut(h).map(|s| &mut s.kind) else { return };
        if st.op != Some(token) {
            return;
        }
        st.op = None;
        let fd = st.fd.as_raw_fd();
        let mut buf = std::mem::take(&mut self.inotify.buf);
        buf.resize(READ_SPACE, 0);
        let mut filled = 0;
        let mut failed = (res < 0).then(|| Error::from_neg(res));
        while failed.is_none() && READ_SPACE - filled >= READ_MIN {
            match sys::read(fd, &mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.is_would_block() || e.errno() == Some(libc::EINTR) => break,
                Err(e) => failed = Some(e),
            }
        }
        if failed.is_none() {
            if let Err(e) = self.inotify_arm(h) {
                failed = Some(e);
            }
        }
        inotify::for_each_event(&buf[..filled], |wd, mask, name| self.fs_event_dispatch(wd, mask, name, d));
        self.inotify.buf = buf;
        if let Some(e) = failed {
            // The instance is unusable: every watcher hears it and stops.
            let all: Vec<HandleId> = self.inotify.watchers.iter().map(|&(_, h)| h).collect();
            for w in all {
                let cb = match self.slot(w).map(|s| &s.kind) {
                    Ok(Kind::FsEvent(st)) => st.cb.clone(),
                    _ => None,
                };
                self.fs_event_unwatch(w);
                self.set_active(w, false);
                if let Some(cb) = cb {
                    cb(self, d, w, Err(e));
                }
            }
        }
    }

    /// Runs the watchers of watch `wd` for one record (every watcher for a
    /// queue overflow, as `ENOBUFS`).
    fn fs_event_dispatch(&mut self, wd: i32, mask: u32, name: &[u8], d: &mut D) {
        let overflow = mask & inotify::Q_OVERFLOW != 0;
        let mut list = std::mem::take(&mut self.inotify.scratch);
        list.clear();
        list.extend(self.inotify.watchers.iter().filter(|&&(w, _)| overflow || w == wd).map(|&(_, h)| h));
        let mut events = FsEvents::empty();
        if mask & inotify::CHANGE_MASK != 0 {
            events = events | FsEvents::CHANGE;
        }
        if mask & !(inotify::CHANGE_MASK | inotify::IS_DIR) != 0 {
            events = events | FsEvents::RENAME;
        }
        for &w in &list {
            // A callback may have stopped or closed this watcher, or
            // restarted it on another path.
            let (cb, path) = match self.slot(w).map(|s| &s.kind) {
                Ok(Kind::FsEvent(st)) if self.is_active(w) && (overflow || st.wd == Some(wd)) => {
                    (st.cb.clone(), st.path.clone())
                }
                _ => continue,
            };
            let (Some(cb), Some(path)) = (cb, path) else { continue };
            if overflow {
                cb(self, d, w, Err(Error::ENOBUFS));
                continue;
            }
            let filename =
                if name.is_empty() { path.file_name().unwrap_or(path.as_os_str()) } else { OsStr::from_bytes(name) };
            cb(self, d, w, Ok(FsChange { filename, events }));
        }
        self.inotify.scratch = list;
    }
}
