//! inotify (file watching): the instance, watches, and the parsing of the
//! event records the kernel writes.

use crate::error::Result;
use crate::sys::{owned, syscall};
use std::ffi::CStr;
use std::os::fd::{OwnedFd, RawFd};

/// What a watch asks for: what libuv's `uv_fs_event_t` asks for on Linux.
pub const WATCH_MASK: u32 = libc::IN_ATTRIB
    | libc::IN_CREATE
    | libc::IN_MODIFY
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO;
/// Event bits that mean a change of contents or metadata (libuv's
/// `UV_CHANGE`); every other bit means a rename (`UV_RENAME`).
pub const CHANGE_MASK: u32 = libc::IN_ATTRIB | libc::IN_MODIFY;
/// Set on events about a directory (not an event of its own).
pub const IS_DIR: u32 = libc::IN_ISDIR;
/// The event that says the kernel dropped events (the queue overflowed).
pub const Q_OVERFLOW: u32 = libc::IN_Q_OVERFLOW;
/// Size of a record's fixed header (`struct inotify_event`).
const HEADER_LEN: usize = 16;

/// A new inotify instance, non-blocking and close-on-exec.
pub fn init() -> Result<OwnedFd> {
    let fd = syscall!(inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC))?;
    // SAFETY: inotify_init1 returned a fresh fd that nobody else owns.
    Ok(unsafe { owned(fd) })
}

/// Watches `path` with [`WATCH_MASK`]; the watch descriptor (the same one
/// for every watch of one inode on one instance).
pub fn add_watch(fd: RawFd, path: &CStr) -> Result<i32> {
    syscall!(inotify_add_watch(fd, path.as_ptr(), WATCH_MASK))
}

/// Removes watch `wd` (errors, e.g. for a watch the kernel already
/// removed when its file went away, are not actionable).
pub fn rm_watch(fd: RawFd, wd: i32) {
    let _ = syscall!(inotify_rm_watch(fd, wd));
}

/// Calls `f(wd, mask, name)` for each whole record in `buf` (what one or
/// more reads of the instance returned); `name` is the file's name within a
/// watched directory, without its NUL padding, or empty. A record cut short
/// ends the walk (the kernel never cuts one; nothing here panics).
pub fn for_each_event(buf: &[u8], mut f: impl FnMut(i32, u32, &[u8])) {
    let mut rest = buf;
    while rest.len() >= HEADER_LEN {
        let word = |i: usize| u32::from_ne_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
        let (wd, mask, len) = (word(0) as i32, word(4), word(12) as usize);
        let Some(name) = rest.get(HEADER_LEN..HEADER_LEN.saturating_add(len)) else { return };
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        f(wd, mask, &name[..end]);
        rest = &rest[HEADER_LEN + len..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(wd: i32, mask: u32, name: &[u8], padded: usize) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&wd.to_ne_bytes());
        r.extend_from_slice(&mask.to_ne_bytes());
        r.extend_from_slice(&0u32.to_ne_bytes());
        r.extend_from_slice(&(padded as u32).to_ne_bytes());
        r.extend_from_slice(name);
        r.resize(HEADER_LEN + padded, 0);
        r
    }

    #[test]
    fn records_are_split_and_names_lose_their_padding() {
        let mut buf = record(1, libc::IN_CREATE, b"new.txt", 16);
        buf.extend(record(2, libc::IN_MODIFY, b"", 0));
        let mut seen = Vec::new();
        for_each_event(&buf, |wd, mask, name| seen.push((wd, mask, name.to_vec())));
        assert_eq!(seen, vec![(1, libc::IN_CREATE, b"new.txt".to_vec()), (2, libc::IN_MODIFY, Vec::new())]);
    }

    #[test]
    fn a_cut_record_ends_the_walk_without_panicking() {
        let buf = record(1, libc::IN_CREATE, b"name", 16);
        for cut in 0..buf.len() {
            let mut n = 0;
            for_each_event(&buf[..cut], |_, _, _| n += 1);
            assert_eq!(n, 0, "cut at {cut}");
        }
        // A length field far past the buffer.
        let mut bad = record(1, libc::IN_CREATE, b"", 0);
        bad[12..16].copy_from_slice(&u32::MAX.to_ne_bytes());
        for_each_event(&bad, |_, _, _| panic!("no record"));
    }
}
