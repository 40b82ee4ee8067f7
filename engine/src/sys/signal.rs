//! Process-wide signal dispatch to loops.
//!
//! A `sigaction` handler cannot know about loops, so each loop that watches
//! signals registers a slot: the write end of a non-blocking pipe and a mask
//! of the signals it wants. The handler (async-signal-safe: only atomics and
//! `write`) writes the signal number as one byte into every interested slot's
//! pipe; the loop reads the pipe through its backend and runs callbacks.
//! This is libuv's design, and it works whichever thread the kernel picks.

use crate::error::{Error, Result};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

const SLOTS: usize = 64;
/// Signals 1..=64 fit the per-slot mask.
pub const MAX_SIGNAL: i32 = 64;

static SLOT_FD: [AtomicI32; SLOTS] = [const { AtomicI32::new(-1) }; SLOTS];
static SLOT_MASK: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
/// Number of watchers per signal; the handler is installed while non-zero.
static WATCHERS: [AtomicUsize; (MAX_SIGNAL + 1) as usize] = [const { AtomicUsize::new(0) }; (MAX_SIGNAL + 1) as usize];
/// Serialises slot allocation and sigaction changes (never taken by the handler).
static REGISTRY: Mutex<()> = Mutex::new(());

extern "C" fn on_signal(signum: libc::c_int) {
    // SAFETY: reading and restoring errno around `write` keeps the interrupted
    // code's errno intact; __errno_location is async-signal-safe.
    let errno = unsafe { *libc::__errno_location() };
    let bit = 1u64 << (signum - 1);
    let byte = signum as u8;
    for i in 0..SLOTS {
        if SLOT_MASK[i].load(Ordering::Acquire) & bit != 0 {
            let fd = SLOT_FD[i].load(Ordering::Acquire);
            if fd >= 0 {
                // SAFETY: write is async-signal-safe; a full pipe drops the byte,
                // and the reader still wakes for the bytes already queued.
                unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
            }
        }
    }
    // SAFETY: see above.
    unsafe { *libc::__errno_location() = errno };
}

/// Registers a loop's pipe write end; returns its slot.
pub fn register(write_fd: RawFd) -> Result<usize> {
    let _guard = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    for (i, slot) in SLOT_FD.iter().enumerate() {
        if slot.load(Ordering::Acquire) < 0 {
            SLOT_MASK[i].store(0, Ordering::Release);
            slot.store(write_fd, Ordering::Release);
            return Ok(i);
        }
    }
    Err(Error::from_errno(libc::ENOSPC))
}

/// Releases a slot and every signal it watched.
pub fn unregister(slot: usize) {
    let mask = SLOT_MASK[slot].load(Ordering::Acquire);
    for signum in 1..=MAX_SIGNAL {
        if mask & (1u64 << (signum - 1)) != 0 {
            unwatch(slot, signum);
        }
    }
    SLOT_FD[slot].store(-1, Ordering::Release);
}

/// Starts delivering `signum` to `slot`, installing the handler if needed.
pub fn watch(slot: usize, signum: i32) -> Result<()> {
    if !(1..=MAX_SIGNAL).contains(&signum) || signum == libc::SIGKILL || signum == libc::SIGSTOP {
        return Err(Error::EINVAL);
    }
    let _guard = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    let bit = 1u64 << (signum - 1);
    if SLOT_MASK[slot].fetch_or(bit, Ordering::AcqRel) & bit != 0 {
        return Ok(());
    }
    if WATCHERS[signum as usize].fetch_add(1, Ordering::AcqRel) == 0 {
        if let Err(e) = install(signum, on_signal as *const () as usize) {
            WATCHERS[signum as usize].fetch_sub(1, Ordering::AcqRel);
            SLOT_MASK[slot].fetch_and(!bit, Ordering::AcqRel);
            return Err(e);
        }
    }
    Ok(())
}

/// Stops delivering `signum` to `slot`; the default disposition returns when
/// no loop watches it any more.
pub fn unwatch(slot: usize, signum: i32) {
    if !(1..=MAX_SIGNAL).contains(&signum) {
        return;
    }
    let _guard = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    let bit = 1u64 << (signum - 1);
    if SLOT_MASK[slot].fetch_and(!bit, Ordering::AcqRel) & bit == 0 {
        return;
    }
    if WATCHERS[signum as usize].fetch_sub(1, Ordering::AcqRel) == 1 {
        let _ = install(signum, libc::SIG_DFL);
    }
}

fn install(signum: i32, handler: usize) -> Result<()> {
    // SAFETY: sigaction is plain data; we fill the fields we use.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: `sa.sa_mask` is a valid sigset to clear.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: `sa` is fully initialised; a null old-action pointer is allowed.
    let res = unsafe { libc::sigaction(signum, &sa, std::ptr::null_mut()) };
    if res != 0 {
        return Err(Error::last_os_error());
    }
    Ok(())
}

/// Blocks every signal in the calling thread (work-pool threads, so that
/// signals are delivered to the threads that run loops, as in libuv).
pub fn block_all_in_thread() {
    // SAFETY: sigset_t is plain data, filled by sigfillset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset to fill; a null old-set pointer is allowed.
    unsafe {
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}
