//! Book-keeping for operations the kernel holds: the table of persistent
//! (multishot) ops and of ops that own a storage slot, and the slots
//! themselves.
//!
//! Every SQE for a loop operation carries the loop's [`Token`] as its
//! `user_data`, so a completion names its op directly and a cancel needs no
//! lookup. The table is consulted only when a multishot op ends or a slot is
//! to be freed; it is a hash map keyed by the whole token (the loop's op
//! slot, generation and kind), and the loop gives every op its own token, so
//! any number of ops, of any kinds, may be in flight on one fd.
//!
//! [`Token`]: super::super::Token

use super::super::MAX_IOV;
use crate::sys::socket::{SockAddr, CONTROL_LEN};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::RawFd;

/// Hashes a token (a `u64`) with one multiply; tokens are not attacker-chosen.
#[derive(Default)]
pub(super) struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 ^ b as u64);
        }
    }
    fn write_u64(&mut self, v: u64) {
        // Fold the 128-bit product so both the low bits (bucket index) and
        // the high bits (control byte) depend on every input bit.
        let m = (v as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

pub(super) type OpTable = HashMap<u64, Tracked, BuildHasherDefault<TokenHasher>>;

/// The persistent (multishot) op kinds. A type of their own, so that the
/// SQE builder matches exactly these, exhaustively: a new multishot op
/// cannot fall into another's arm.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum MultiKind {
    Accept,
    Recv,
    RecvMsg,
    RecvFrom,
    /// A non-socket stream: one-shot `READ` into a provided buffer, re-armed
    /// after each chunk (the kernel has no multishot read for every file).
    ReadStream,
}

/// Where a persistent op stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum MultiState {
    /// An SQE for it is queued or in the kernel; completions will come.
    InKernel,
    /// The kernel ended it without error; re-submit at the next `poll`.
    Rearm,
    /// The kernel ended it with `ENOBUFS`; re-submit once a buffer is free.
    Starved,
    /// A `ReadStream` whose file answered `EAGAIN` (a non-blocking tty):
    /// a `POLL_ADD` under its token is in the kernel; re-arm when it fires.
    Polling,
}

impl MultiState {
    /// Whether an SQE of the op is queued or in the kernel.
    pub fn in_kernel(self) -> bool {
        matches!(self, MultiState::InKernel | MultiState::Polling)
    }
}

/// A persistent (multishot) op: accept, recv, recvmsg or recvfrom.
#[derive(Copy, Clone, Debug)]
pub(super) struct MultiOp {
    pub fd: RawFd,
    pub kind: MultiKind,
    pub state: MultiState,
    /// The loop asked to cancel it: never re-arm, end it with `-ECANCELED`.
    pub cancelled: bool,
}

/// What the table keeps for an op in flight.
#[derive(Copy, Clone, Debug)]
pub(super) enum Tracked {
    Multi(MultiOp),
    /// A one-shot op (sendmsg for `Send` or `SendTo`, connect) whose
    /// kernel-visible memory is slot `n`.
    Slot(u32),
    /// A `WriteStream`: `WRITEV` from slot `slot`'s iovec copy; `polling`
    /// while a `POLL_ADD` (the file answered `EAGAIN`) waits under its
    /// token before the write is retried.
    StreamWrite {
        slot: u32,
        fd: RawFd,
        polling: bool,
        cancelled: bool,
    },
    /// A `SEND_ZC` of `len` bytes at `ptr` (kept to resend it plainly if
    /// the socket cannot send zero-copy); `sent`: its result, once its
    /// first CQE came (the notification is the last).
    ZcSend {
        fd: RawFd,
        ptr: usize,
        len: u32,
        sent: Option<i32>,
    },
}

/// Stable per-op storage for what the kernel reads after the submit call
/// returns: a sendmsg's header, iovec copy and control message (or, for a
/// datagram, destination address), or a connect's address.
#[repr(C)]
pub(super) struct OpSlot {
    pub msg: libc::msghdr,
    pub iov: [libc::iovec; MAX_IOV],
    /// `u64` words keep the control buffer aligned for `cmsghdr`.
    pub control: [u64; CONTROL_LEN / 8 + 1],
    pub addr: SockAddr,
}

impl OpSlot {
    fn new() -> OpSlot {
        OpSlot {
            // SAFETY: msghdr is plain data; all-zero is a valid value.
            msg: unsafe { std::mem::zeroed() },
            iov: [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_IOV],
            control: [0; CONTROL_LEN / 8 + 1],
            addr: SockAddr::empty(),
        }
    }
}

/// Boxed slots (stable addresses) with a free list; slots are reused, so
/// after warm-up taking one does not allocate.
pub(super) struct SlotPool {
    /// Boxed on purpose: the kernel holds pointers into a slot while its op
    /// is in flight, and growing the `Vec` must not move it.
    #[allow(clippy::vec_box)]
    slots: Vec<Box<OpSlot>>,
    free: Vec<u32>,
}

impl SlotPool {
    pub fn with_capacity(n: usize) -> SlotPool {
        let mut pool = SlotPool { slots: Vec::with_capacity(n), free: Vec::with_capacity(n) };
        for i in 0..n {
            pool.slots.push(Box::new(OpSlot::new()));
            pool.free.push((n - 1 - i) as u32);
        }
        pool
    }

    /// A free slot's index (allocating a new slot only if all are in use).
    pub fn take(&mut self) -> u32 {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Box::new(OpSlot::new()));
                (self.slots.len() - 1) as u32
            }
        }
    }

    pub fn give(&mut self, i: u32) {
        debug_assert!((i as usize) < self.slots.len() && !self.free.contains(&i));
        self.free.push(i);
    }

    pub fn get(&mut self, i: u32) -> &mut OpSlot {
        &mut self.slots[i as usize]
    }

    pub fn in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}
