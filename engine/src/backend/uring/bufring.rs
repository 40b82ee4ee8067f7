//! The provided-buffer ring: the kernel's view of which pool buffers it may
//! receive into.
//!
//! The ring is an array of `count` 16-byte entries (`io_uring_buf`) in
//! page-aligned memory that we own and the kernel reads. We write entries at
//! the tail and publish the new tail with a release store; the kernel takes
//! entries at its private head and names the buffer it used in each
//! completion (`IORING_CQE_F_BUFFER`). The tail lives in the `resv` field of
//! entry 0, so entry 0's own fields are written one by one, never as a whole.
//!
//! Alongside the ring we keep a bitmap of buffers lent to the loop, so that a
//! buffer given back twice cannot enter the ring twice (which would let the
//! kernel write into memory the loop is still reading).

use super::super::BufPool;
use crate::error::{Error, Result};
use std::alloc::{self, Layout};
use std::ptr::{addr_of, addr_of_mut, NonNull};
use std::sync::atomic::{AtomicU16, Ordering};

/// `struct io_uring_buf` from the kernel's uapi header.
#[repr(C)]
struct RingEntry {
    addr: u64,
    len: u32,
    bid: u16,
    /// In entry 0: the ring's tail. Elsewhere: unused.
    resv: u16,
}

const PAGE: usize = 4096;

pub(super) struct BufRing {
    base: NonNull<RingEntry>,
    mask: u16,
    /// Our copy of the tail; published with [`BufRing::publish`].
    tail: u16,
    /// Buffers the kernel handed to the loop and the loop has not given back,
    /// one bit per buffer id.
    lent: Vec<u64>,
    lent_count: usize,
}

impl BufRing {
    /// An empty ring of `entries` slots (a power of two, at most 32768).
    pub fn new(entries: u16) -> Result<BufRing> {
        if entries == 0 || !entries.is_power_of_two() || entries > 32768 {
            return Err(Error::EINVAL);
        }
        let layout = Self::layout(entries).ok_or(Error::EINVAL)?;
        // SAFETY: `layout` has a non-zero size (at least one page).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let base = NonNull::new(raw.cast::<RingEntry>()).ok_or(Error::from_errno(libc::ENOMEM))?;
        Ok(BufRing { base, mask: entries - 1, tail: 0, lent: vec![0; (entries as usize).div_ceil(64)], lent_count: 0 })
    }

    /// Page-aligned memory for `entries` ring entries.
    fn layout(entries: u16) -> Option<Layout> {
        let bytes = (entries as usize * std::mem::size_of::<RingEntry>()).next_multiple_of(PAGE);
        Layout::from_size_align(bytes, PAGE).ok()
    }

    /// The ring's address, for `IORING_REGISTER_PBUF_RING`.
    pub fn addr(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    /// Number of ring slots.
    pub fn entries(&self) -> u16 {
        self.mask.wrapping_add(1)
    }

    /// Writes buffer `id` into the next ring slot without publishing it.
    /// Used to fill the ring before registration and by [`BufRing::give_back`].
    pub fn add(&mut self, pool: &BufPool, id: u16) {
        let slot = (self.tail & self.mask) as usize;
        let addr = pool.ptr(id) as u64;
        let len = u32::try_from(pool.size()).unwrap_or(u32::MAX);
        // SAFETY: `slot <= mask < entries`, so the entry lies inside the
        // allocation. The kernel only reads slots between its head and the
        // published tail; this slot is past the published tail (at most
        // `entries` buffers exist, and every one not in the ring is lent), so
        // nobody reads it while we write. Fields are written separately so
        // entry 0's `resv` (the tail) is never touched here.
        unsafe {
            let e = self.base.as_ptr().add(slot);
            addr_of_mut!((*e).addr).write(addr);
            addr_of_mut!((*e).len).write(len);
            addr_of_mut!((*e).bid).write(id);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every added entry visible to the kernel.
    pub fn publish(&self) {
        // SAFETY: entry 0 lies inside our allocation; its `resv` field is the
        // ring tail, which the kernel reads concurrently, so it is accessed
        // only atomically (u16 is naturally aligned at offset 14).
        let tail = unsafe { &*addr_of!((*self.base.as_ptr()).resv).cast::<AtomicU16>() };
        // Release: the entry writes above happen-before the kernel sees the tail.
        tail.store(self.tail, Ordering::Release);
    }

    /// Records that the kernel lent buffer `id` to the loop (a completion
    /// carried it).
    pub fn mark_lent(&mut self, id: u16) {
        let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
        if let Some(w) = self.lent.get_mut(word) {
            if *w & bit == 0 {
                *w |= bit;
                self.lent_count += 1;
            }
        }
    }

    /// Returns buffer `id` to the ring and publishes it. A buffer that is not
    /// lent (a double recycle, or an id out of range) is ignored: adding it
    /// twice would let the kernel fill memory somebody still reads.
    pub fn give_back(&mut self, pool: &BufPool, id: u16) -> bool {
        let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
        match self.lent.get_mut(word) {
            Some(w) if *w & bit != 0 => {
                *w &= !bit;
                self.lent_count -= 1;
                self.add(pool, id);
                self.publish();
                true
            }
            _ => false,
        }
    }

    /// Buffers the kernel may still take (an upper bound: the kernel may have
    /// taken some whose completions we have not reaped yet).
    pub fn available(&self) -> usize {
        self.entries() as usize - self.lent_count
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        let Some(layout) = Self::layout(self.entries()) else {
            return;
        };
        // SAFETY: allocated in `new` with this very layout (same entry count).
        // The owner (`Uring`) tears the io_uring instance down before
        // dropping us, so the kernel no longer reads the ring.
        unsafe { alloc::dealloc(self.base.as_ptr().cast(), layout) }
    }
}
