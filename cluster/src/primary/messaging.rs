//! User messages between the primary and its workers, and the shared
//! key/value store the primary holds for them (workers reach it with
//! request ids; each request is answered in order, so a worker always reads
//! its own writes).

use super::Primary;
use crate::proto::{field, Frame, StoreStatus, MAX_FDS_PER_FRAME};
use crate::schedule::WorkerId;
use crate::store::{format_i64, StoreError};
use std::os::fd::BorrowedFd;
use uvring::{Error, FdBatch, Loop, Result};

impl<D> Primary<D> {
    /// Sends a user message to worker `id`. `EMSGSIZE`, and nothing sent,
    /// when `bytes` is longer than [`Settings::max_message_len`](crate::Settings::max_message_len).
    ///
    /// # Errors
    ///
    /// `ENOTCONN` if worker `id` is not connected (exited, disconnected, or never forked);
    /// `EMSGSIZE` for a message over the limit; the error of the channel's write (`EPIPE`,
    /// `ECONNRESET` once the worker is gone). Nothing is sent on error.
    pub fn send(&mut self, lp: &mut Loop<D>, id: WorkerId, bytes: &[u8]) -> Result<()> {
        self.send_to(lp, id, &Frame::Message { bytes, nfds: 0 })?;
        self.count_message_out(id);
        Ok(())
    }

    /// One more message sent to worker `id` (its figures).
    fn count_message_out(&mut self, id: WorkerId) {
        if let Some(w) = self.entry_mut(id) {
            w.figures.messages_out += 1;
        }
    }

    /// Sends a user message with fds attached to worker `id` (each is
    /// duplicated; the caller keeps its own). At most 16 fds.
    ///
    /// # Errors
    ///
    /// `EINVAL` for more than 16 fds; the errno of duplicating an fd (`EMFILE`, `EBADF`); otherwise
    /// as [`send`](Self::send). Nothing is sent on error; the duplicates are closed.
    pub fn send_with_fds(
        &mut self,
        lp: &mut Loop<D>,
        id: WorkerId,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<()> {
        if fds.len() > MAX_FDS_PER_FRAME {
            return Err(Error::EINVAL);
        }
        let mut batch = FdBatch::new();
        for fd in fds {
            batch.push(fd.try_clone_to_owned().map_err(Error::from)?).map_err(|_| Error::EINVAL)?;
        }
        let ch = self.entry(id).and_then(|w| w.channel).ok_or(Error::ENOTCONN)?;
        let frame = Frame::Message { bytes, nfds: fds.len() as u8 };
        self.writer.send_fds(lp, ch, &frame, &mut batch)?;
        self.count_message_out(id);
        Ok(())
    }

    /// Reads the shared store.
    pub fn store_get(&self, key: &[u8]) -> Option<&[u8]> {
        self.store.get(key)
    }

    /// Writes the shared store.
    pub fn store_set(&mut self, key: &[u8], value: &[u8]) {
        self.store.set(key, value);
    }

    /// Removes a key from the shared store; returns whether it was there.
    pub fn store_delete(&mut self, key: &[u8]) -> bool {
        self.store.delete(key)
    }

    /// Number of keys in the shared store.
    pub fn store_len(&self) -> usize {
        self.store.len()
    }

    /// Adds `delta` to the decimal integer at `key` (absent: 0) and returns
    /// the new value (see [`SharedStore::add`](crate::SharedStore::add)).
    ///
    /// # Errors
    ///
    /// As [`SharedStore::add`](crate::SharedStore::add).
    pub fn store_add(&mut self, key: &[u8], delta: i64) -> std::result::Result<i64, StoreError> {
        self.store.add(key, delta)
    }

    /// Sets `key` to `value` if its value is `expected` (`None`: absent);
    /// `Err` with the current value otherwise.
    ///
    /// # Errors
    ///
    /// The current value (`None`: absent) when it is not `expected`.
    pub fn store_compare_and_swap(
        &mut self,
        key: &[u8],
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> std::result::Result<(), Option<&[u8]>> {
        self.store.compare_and_swap(key, expected, value)
    }

    /// The shared store's keys that start with `prefix`, in byte order.
    pub fn store_keys(&self, prefix: &[u8]) -> Vec<&[u8]> {
        self.store.keys(prefix)
    }

    /// Answers a worker's store request (`StoreGet`, `StoreSet`,
    /// `StoreDelete`, `StoreAdd`, `StoreCas`, `StoreKeys`; the answers are
    /// described in [`proto`](crate::proto)).
    pub(super) fn store_request(&mut self, lp: &mut Loop<D>, id: WorkerId, frame: &Frame<'_>) {
        let Some(ch) = self.entry(id).and_then(|w| w.channel) else { return };
        let (store, writer) = (&mut self.store, &mut self.writer);
        // A keys page must fit the worker's frame limit.
        let page_max = self.settings.max_message_len.saturating_sub(field::store_reply::VALUE);
        let reply = |req_id, status, value| Frame::StoreReply { req_id, status, value };
        let _ = match *frame {
            Frame::StoreGet { req_id, key } => match store.get(key) {
                Some(v) => writer.send(lp, ch, &reply(req_id, StoreStatus::Found, v)),
                None => writer.send(lp, ch, &reply(req_id, StoreStatus::NotFound, &[])),
            },
            Frame::StoreSet { req_id, key, value } => {
                store.set(key, value);
                writer.send(lp, ch, &reply(req_id, StoreStatus::Ok, &[]))
            }
            Frame::StoreDelete { req_id, key } => {
                let status = if store.delete(key) { StoreStatus::Found } else { StoreStatus::NotFound };
                writer.send(lp, ch, &reply(req_id, status, &[]))
            }
            Frame::StoreAdd { req_id, key, delta } => match store.add(key, delta) {
                Ok(n) => {
                    let mut buf = [0u8; 20];
                    writer.send(lp, ch, &reply(req_id, StoreStatus::Ok, format_i64(n, &mut buf)))
                }
                Err(e) => writer.send(lp, ch, &reply(req_id, StoreStatus::Error, e.to_string().as_bytes())),
            },
            Frame::StoreCas { req_id, key, expected, value } => match store.compare_and_swap(key, expected, value) {
                Ok(()) => writer.send(lp, ch, &reply(req_id, StoreStatus::Ok, &[])),
                Err(Some(current)) => writer.send(lp, ch, &reply(req_id, StoreStatus::Found, current)),
                Err(None) => writer.send(lp, ch, &reply(req_id, StoreStatus::NotFound, &[])),
            },
            Frame::StoreKeys { req_id, prefix, after } => match store.keys_page(prefix, after, page_max) {
                Some((page, true)) => writer.send(lp, ch, &reply(req_id, StoreStatus::Ok, page)),
                Some((page, false)) => writer.send(lp, ch, &reply(req_id, StoreStatus::Partial, page)),
                None => writer.send(lp, ch, &reply(req_id, StoreStatus::Error, &[])),
            },
            _ => Ok(()),
        };
    }
}
