//! Book-keeping for operations the kernel holds: the table of persistent
//! (multishot) ops and of ops that own a storage slot, and the slots
//! themselves.
//!
//! Every SQE for a loop operation carries the loop's [`Token`] as its
//! `user_data`, so a completion names its op directly and a cancel needs no
//! lookup. The table is consulted only when a multishot op ends or a slot is
//! to be freed; it is indexed by the token's op-slot index (the loop's op
//! table is dense, so this one is too), and each entry keeps the whole
//! token, so a stale token never finds a newer op's entry. Any number of
//! ops, of any kinds, may be in flight on one fd.
//!
//! [`Token`]: super::super::Token

use super::super::MAX_IOV;
use crate::sys::socket::{SockAddr, CONTROL_LEN};
use std::os::fd::RawFd;

/// What the kernel holds, by token: an entry for each op-table index in
/// use, the token beside it. A dense vector rather than a hash map: an
/// idle connection's recv costs one 32-byte entry (a hash map, at its load
/// factor and power-of-two growth, cost 38 to 75 bytes, and scattered its
/// entries over every page of the table). It grows in steps of 256 entries
/// up to the highest index (the vector's capacity still doubles, untouched
/// past the end), so only pages up to the highest index are written.
pub(super) struct OpTable {
    entries: Vec<Option<(u64, Tracked)>>,
}

impl OpTable {
    pub fn with_capacity(n: usize) -> OpTable {
        OpTable { entries: Vec::with_capacity(n) }
    }

    fn index(key: u64) -> usize {
        super::super::Token(key).index()
    }

    pub fn get(&self, key: &u64) -> Option<&Tracked> {
        match self.entries.get(Self::index(*key)) {
            Some(Some((k, v))) if k == key => Some(v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &u64) -> Option<&mut Tracked> {
        match self.entries.get_mut(Self::index(*key)) {
            Some(Some((k, v))) if k == key => Some(v),
            _ => None,
        }
    }

    pub fn contains_key(&self, key: &u64) -> bool {
        self.get(key).is_some()
    }

    /// Puts `v` under `key`; the previous entry under the same token, if
    /// any. An entry of another token at the same index (one whose final
    /// completion never came back) is replaced too: the loop reuses an
    /// index only once its op has ended.
    pub fn insert(&mut self, key: u64, v: Tracked) -> Option<Tracked> {
        let i = Self::index(key);
        if i >= self.entries.len() {
            self.entries.resize((i + 1).next_multiple_of(256), None);
        }
        match self.entries[i].replace((key, v)) {
            Some((k, old)) if k == key => Some(old),
            _ => None,
        }
    }

    pub fn remove(&mut self, key: &u64) -> Option<Tracked> {
        let e = self.entries.get_mut(Self::index(*key))?;
        match e {
            Some((k, _)) if *k == *key => e.take().map(|(_, v)| v),
            _ => None,
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{OpKind, Token};

    fn multi(fd: RawFd) -> Tracked {
        Tracked::Multi(MultiOp { fd, kind: MultiKind::Recv, state: MultiState::InKernel, cancelled: false })
    }

    /// An idle connection's recv costs one 32-byte entry.
    #[test]
    fn op_table_entry_is_32_bytes() {
        assert!(std::mem::size_of::<Option<(u64, Tracked)>>() <= 32);
    }

    /// Entries are found by their whole token: another generation or kind
    /// at the same index is not the entry.
    #[test]
    fn op_table_matches_whole_tokens() {
        let mut t = OpTable::with_capacity(0);
        let a = Token::new(3, 1, OpKind::Recv).0;
        let stale = Token::new(3, 2, OpKind::Recv).0;
        let other_kind = Token::new(3, 1, OpKind::Send).0;
        let far = Token::new(5000, 1, OpKind::Recv).0;
        assert!(t.insert(a, multi(7)).is_none());
        assert!(t.contains_key(&a));
        assert!(t.get(&stale).is_none() && t.get(&other_kind).is_none() && t.get(&far).is_none());
        assert!(t.remove(&stale).is_none());
        assert!(matches!(t.get(&a), Some(Tracked::Multi(op)) if op.fd == 7));
        assert!(matches!(t.insert(a, Tracked::Slot(4)), Some(Tracked::Multi(_))));
        if let Some(Tracked::Slot(i)) = t.get_mut(&a) {
            *i = 5;
        }
        assert!(t.insert(far, multi(9)).is_none());
        assert!(matches!(t.remove(&a), Some(Tracked::Slot(5))));
        assert!(!t.contains_key(&a));
        assert!(matches!(t.remove(&far), Some(Tracked::Multi(op)) if op.fd == 9));
        assert!(t.remove(&far).is_none());
    }
}
