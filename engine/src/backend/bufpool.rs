//! The receive-buffer pool: one allocation of `count * size` bytes, carved
//! into buffers identified by `u16` ids. The pool owns memory only; which
//! buffers are free is the backend's business (a free list for epoll, the
//! provided-buffer ring for io_uring).

use super::PoolConfig;
use crate::error::{Error, Result};
use std::alloc::{self, Layout};
use std::ptr::NonNull;

pub(crate) struct BufPool {
    base: NonNull<u8>,
    layout: Layout,
    count: u16,
    size: u32,
}

impl BufPool {
    pub fn new(cfg: PoolConfig) -> Result<BufPool> {
        if cfg.count == 0 || !cfg.count.is_power_of_two() || cfg.count > 32768 || cfg.size == 0 {
            return Err(Error::EINVAL);
        }
        let total = cfg.count as usize * cfg.size as usize;
        let layout = Layout::from_size_align(total, 4096).map_err(|_| Error::EINVAL)?;
        // SAFETY: `layout` has a non-zero size (count and size are non-zero).
        let base = NonNull::new(unsafe { alloc::alloc_zeroed(layout) }).ok_or(Error::from_errno(libc::ENOMEM))?;
        Ok(BufPool { base, layout, count: cfg.count, size: cfg.size })
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    pub fn size(&self) -> usize {
        self.size as usize
    }

    /// Start of buffer `id`. Out-of-range ids are a bug in the backend.
    pub fn ptr(&self, id: u16) -> *mut u8 {
        assert!(id < self.count, "buffer id {id} out of range");
        // SAFETY: id < count, so the offset stays inside the allocation.
        unsafe { self.base.as_ptr().add(id as usize * self.size as usize) }
    }

    /// Buffer `id`'s first `len` bytes as a slice.
    ///
    /// # Safety
    /// Nobody may write buffer `id` while the slice lives: it must be lent to
    /// the caller (completed, not yet recycled).
    pub unsafe fn slice(&self, id: u16, len: usize) -> &[u8] {
        let len = len.min(self.size as usize);
        // SAFETY: in bounds per `ptr`; exclusive use per the caller's contract.
        unsafe { std::slice::from_raw_parts(self.ptr(id), len) }
    }

    /// Buffer `id` as a mutable slice.
    ///
    /// # Safety
    /// The caller must hold buffer `id` exclusively (free-listed and taken).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, id: u16) -> &mut [u8] {
        // SAFETY: in bounds per `ptr`; exclusive use per the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(id), self.size as usize) }
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}
