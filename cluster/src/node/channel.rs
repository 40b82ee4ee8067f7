//! One Node worker's channel, as the primary's writer sees it: what pairs
//! each of the primary's frames with the Node message it becomes (the
//! listen keys of the worker's servers, the `uuid` of each shared-memory
//! request, the `seq` and `data` of each `queryServer`), and the handles
//! sent and not yet acknowledged (`NODE_HANDLE_ACK` / `NODE_HANDLE_NACK`
//! answer them in order).

use super::codec::{self, QueryReply, HANDLE_TYPE_NATIVE};
use crate::proto::{Frame, ListenAddress, ListenFlags, ListenKey, SocketType, StoreStatus};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use uvring::{Error, FdBatch, Loop, PipeStream, Result};

/// A `queryServer` between its request and its reply (and, when the reply
/// carries the listening socket, until the worker acknowledges it).
#[derive(Debug, Clone)]
pub(crate) struct PendingQuery {
    /// Names it in the `QueryServer` frame (the worker's own `seq` is any
    /// JSON number).
    pub token: u32,
    /// The worker's `seq` (JSON text), echoed as `ack`.
    pub ack: String,
    /// Node's key of the server.
    pub key: String,
    /// The request's `data` (JSON text), echoed.
    pub data: String,
    /// Where to listen, for the listen routing (and a retry).
    pub listen: OwnedListen,
    /// Times the reply's socket was sent again after a `NODE_HANDLE_NACK`.
    pub retries: u8,
}

/// A [`ListenKey`] that owns its path.
#[derive(Debug, Clone)]
pub(crate) struct OwnedListen {
    pub ip: Option<IpAddr>,
    pub path: Vec<u8>,
    pub port: u16,
    pub socket_type: SocketType,
    pub backlog: u32,
    pub flags: ListenFlags,
    pub index: u32,
}

impl OwnedListen {
    pub(crate) fn key(&self) -> ListenKey<'_> {
        let address = match self.ip {
            Some(IpAddr::V4(ip)) => ListenAddress::V4(ip),
            Some(IpAddr::V6(ip)) => ListenAddress::V6(ip),
            None => ListenAddress::Unix(&self.path),
        };
        ListenKey {
            address,
            port: self.port,
            socket_type: self.socket_type,
            backlog: self.backlog,
            flags: self.flags,
            index: self.index,
        }
    }
}

/// A handle sent to the worker and not yet acknowledged.
#[derive(Debug)]
pub(crate) enum SentHandle {
    /// A round-robin connection, by its sequence number.
    Conn(u64),
    /// A `queryServer` reply with the listening socket.
    Query(PendingQuery),
    /// A user message with a handle.
    Message,
}

/// The per-channel state (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct NodeChannel {
    queries: Vec<PendingQuery>,
    /// (listener id, Node key) of each server the worker listens on.
    listeners: Vec<(u32, String)>,
    /// Shared-memory requests waiting for the store: (request id, uuid).
    store: VecDeque<(u32, String)>,
    /// Handles sent, oldest first.
    pub handles: VecDeque<SentHandle>,
    next_token: u32,
    next_req: u32,
}

impl NodeChannel {
    /// Keeps a `queryServer` until its reply; returns its token.
    pub(crate) fn push_query(&mut self, mut q: PendingQuery) -> u32 {
        self.next_token = self.next_token.wrapping_add(1);
        q.token = self.next_token;
        self.queries.push(q);
        self.next_token
    }

    /// Keeps a query again (a retry, under its token).
    pub(crate) fn requeue_query(&mut self, q: PendingQuery) {
        self.queries.push(q);
    }

    fn take_query(&mut self, token: u32) -> Option<PendingQuery> {
        let i = self.queries.iter().position(|q| q.token == token)?;
        Some(self.queries.swap_remove(i))
    }

    /// The listener the worker's server `key` is on (and forgets it: the
    /// worker closed it).
    pub(crate) fn close_listener(&mut self, key: &str) -> Option<u32> {
        let i = self.listeners.iter().position(|(_, k)| k == key)?;
        Some(self.listeners.swap_remove(i).0)
    }

    /// Keeps a shared-memory request's `uuid`; returns its request id.
    pub(crate) fn push_store(&mut self, uuid: &str) -> u32 {
        self.next_req = self.next_req.wrapping_add(1);
        self.store.push_back((self.next_req, uuid.to_owned()));
        self.next_req
    }
}

/// Encodes the frames the primary sends to Node workers as Node's
/// messages and writes them (see [`NodeChannel`]).
#[derive(Debug)]
pub(crate) struct NodeWriter {
    buf: Vec<u8>,
}

impl NodeWriter {
    pub(crate) fn new() -> NodeWriter {
        NodeWriter { buf: Vec::with_capacity(256) }
    }

    /// Writes what `emit` puts in the buffer (a message the Node read path
    /// answers with itself).
    pub(crate) fn write<D>(
        &mut self,
        lp: &mut Loop<D>,
        pipe: PipeStream,
        emit: impl FnOnce(&mut Vec<u8>),
    ) -> Result<()> {
        self.buf.clear();
        emit(&mut self.buf);
        lp.write(pipe, &self.buf, None)
    }

    /// A frame that carries no fd.
    pub(crate) fn send<D>(
        &mut self,
        lp: &mut Loop<D>,
        pipe: PipeStream,
        ch: &mut NodeChannel,
        frame: &Frame<'_>,
    ) -> Result<()> {
        self.buf.clear();
        match *frame {
            Frame::QueryServerReply { seq, errno, port, listener_id, listener_fd: false } => {
                let q = ch.take_query(seq).ok_or(Error::EINVAL)?;
                self.query_reply(ch, &q, errno, port, listener_id, None);
            }
            Frame::Disconnect => codec::emit_disconnect(&mut self.buf),
            Frame::Message { bytes, nfds: 0 } => {
                codec::emit_user(&mut self.buf, bytes, false).map_err(|_| Error::EINVAL)?
            }
            Frame::StoreReply { req_id, status, value } => {
                let i = ch.store.iter().position(|(r, _)| *r == req_id).ok_or(Error::EINVAL)?;
                let (_, uuid) = ch.store.remove(i).ok_or(Error::EINVAL)?;
                let value = match status {
                    StoreStatus::Ok => Some(&b"\"OK\""[..]),
                    // A `set` of `undefined` stored nothing to read back.
                    StoreStatus::Found if !value.is_empty() => Some(value),
                    _ => None,
                };
                codec::emit_store_reply(&mut self.buf, &uuid, value);
            }
            // Node's protocol has neither heartbeats nor load limits: the
            // worker is not asked.
            Frame::Heartbeat { .. } | Frame::Load { .. } => return Ok(()),
            _ => return Err(Error::EINVAL),
        }
        lp.write(pipe, &self.buf, None)
    }

    fn query_reply(
        &mut self,
        ch: &mut NodeChannel,
        q: &PendingQuery,
        errno: i32,
        port: u16,
        lid: u32,
        h: Option<&str>,
    ) {
        if errno == 0 {
            ch.listeners.retain(|(id, _)| *id != lid);
            ch.listeners.push((lid, q.key.clone()));
        }
        // Round robin: the worker's faux handle answers `getsockname` with
        // this (Node checks the port it asked for against it).
        let sockname = match (errno, h, q.listen.ip) {
            (0, None, Some(ip)) => Some(SocketAddr::new(ip, port)),
            _ => None,
        };
        let reply = QueryReply { key: &q.key, ack: &q.ack, data: &q.data };
        codec::emit_query_reply(&mut self.buf, &reply, errno, sockname, h);
    }

    /// Round-robin connections (`NewConnection`), each in its own
    /// `sendmsg` as a `newconn` message with its fd.
    ///
    /// # Safety
    /// As for [`Loop::write_fds_borrowed`].
    pub(crate) unsafe fn send_fds_borrowed<D>(
        &mut self,
        lp: &mut Loop<D>,
        pipe: PipeStream,
        ch: &mut NodeChannel,
        frame: &Frame<'_>,
        fds: &[RawFd],
    ) -> Result<()> {
        let Frame::NewConnection { listener_id, first_conn_seq, count } = *frame else {
            return Err(Error::EINVAL);
        };
        if usize::from(count) != fds.len() {
            return Err(Error::EINVAL);
        }
        let key = ch.listeners.iter().find(|(id, _)| *id == listener_id).map(|(_, k)| k).ok_or(Error::EINVAL)?;
        for (i, fd) in fds.iter().enumerate() {
            let seq = first_conn_seq + i as u64;
            self.buf.clear();
            codec::emit_newconn(&mut self.buf, key, seq);
            // SAFETY: the caller's guarantee, for each fd of the batch.
            unsafe { lp.write_fds_borrowed(pipe, &self.buf, std::slice::from_ref(fd), None)? };
            ch.handles.push_back(SentHandle::Conn(seq));
        }
        Ok(())
    }

    /// A frame with fds: a user message with one handle, or a
    /// `queryServer` reply with the listening socket (`shared`).
    pub(crate) fn send_fds<D>(
        &mut self,
        lp: &mut Loop<D>,
        pipe: PipeStream,
        ch: &mut NodeChannel,
        frame: &Frame<'_>,
        fds: &mut FdBatch,
    ) -> Result<()> {
        match *frame {
            // A `queryServer` reply with the listening socket (`shared`).
            Frame::QueryServerReply { seq, errno, port, listener_id, listener_fd: true } if fds.len() == 1 => {
                let q = ch.take_query(seq).ok_or(Error::EINVAL)?;
                self.buf.clear();
                self.query_reply(ch, &q, errno, port, listener_id, Some(HANDLE_TYPE_NATIVE));
                lp.write_fds(pipe, &self.buf, fds, None)?;
                ch.handles.push_back(SentHandle::Query(q));
                Ok(())
            }
            Frame::Message { bytes, nfds: 0 } if fds.is_empty() => {
                self.send(lp, pipe, ch, &Frame::Message { bytes, nfds: 0 })
            }
            // Node sends one handle per message.
            Frame::Message { bytes, nfds: 1 } if fds.len() == 1 => {
                self.buf.clear();
                codec::emit_user(&mut self.buf, bytes, true).map_err(|_| Error::EINVAL)?;
                lp.write_fds(pipe, &self.buf, fds, None)?;
                ch.handles.push_back(SentHandle::Message);
                Ok(())
            }
            _ => Err(Error::EINVAL),
        }
    }
}
