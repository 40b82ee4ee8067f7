//! The read side of a Node worker's channel: each Node message becomes the
//! frame it means and goes to the same handlers as a uvring worker's frames
//! (`handle_frame`); what only Node's protocol has (handle
//! acknowledgements, the answer to `exitedAfterDisconnect`, the pairing of
//! keys and uuids with their replies) is done here. See [`crate::node`].

use super::codec::ChannelDecoder;
use super::{handle_frame, ChannelFault, Primary, PrimaryData, PrimaryId};
use crate::channel::Flow;
use crate::node::channel::{OwnedListen, PendingQuery, SentHandle};
use crate::node::codec::{self, Cluster, LineFlow, Message, PendingFds, Query, QueryAddress};
use crate::node::{LineDecoder, ENV_NODE_CHANNEL_FD, ENV_NODE_SERIALIZATION, ENV_NODE_UNIQUE_ID};
use crate::proto::{Decoded, Frame, FrameFds, ListenAddress, ListenFlags, SocketType};
use crate::schedule::WorkerId;
use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use uvring::{Loop, PipeStream};

/// Node sends a handle this many times more after `NODE_HANDLE_NACK`s.
const MAX_HANDLE_RETRANSMISSIONS: u8 = 3;

/// Feeds one chunk of a Node worker's channel.
pub(super) fn feed_chunk<D: PrimaryData>(
    lp: &mut Loop<D>,
    d: &mut D,
    pid: PrimaryId,
    id: WorkerId,
    pipe: PipeStream,
    dec: &mut LineDecoder,
    bytes: &[u8],
) -> Result<(), ChannelFault> {
    while let Ok(fd) = lp.accept_pending_fd(pipe) {
        dec.push_fd(fd).map_err(ChannelFault::Node)?;
    }
    let mut on_line = |line: &[u8], n: u64, fds: &mut PendingFds| {
        let msg = codec::parse(line, n)?;
        Ok(on_message(lp, d, pid, id, pipe, msg, fds))
    };
    dec.feed(bytes, &mut on_line).map(|_| ()).map_err(ChannelFault::Node)
}

fn flow(f: Flow) -> LineFlow {
    match f {
        Flow::Continue => LineFlow::Continue,
        Flow::Stop => LineFlow::Stop,
    }
}

fn on_message<D: PrimaryData>(
    lp: &mut Loop<D>,
    d: &mut D,
    pid: PrimaryId,
    id: WorkerId,
    pipe: PipeStream,
    msg: Message<'_>,
    fds: &mut PendingFds,
) -> LineFlow {
    let Some(p) = d.primary_by_id(pid) else { return LineFlow::Stop };
    let mut frame_fds = FrameFds::new();
    let msg = match msg {
        Message::Handle(inner) => {
            // Node's receiver: no fd, `NODE_HANDLE_NACK` (and the sender
            // tries again); else `NODE_HANDLE_ACK`, then the message.
            let fd = fds.pop_front();
            if let Some((w, _)) = p.writer.node_parts(pipe) {
                let _ = w.write(lp, pipe, |out| codec::emit_handle_ack(out, fd.is_some()));
            }
            let Some(fd) = fd else { return LineFlow::Continue };
            let _ = frame_fds.push(fd);
            *inner
        }
        m => m,
    };
    let frame = match msg {
        Message::HandleAck => {
            if let Some(ch) = p.writer.node_mut(pipe) {
                ch.handles.pop_front();
            }
            return LineFlow::Continue;
        }
        Message::HandleNack => return handle_refused(lp, d, pid, id, pipe),
        Message::Handle(_) | Message::OtherInternal => return LineFlow::Continue,
        Message::User(text) => {
            let nfds = frame_fds.len() as u8;
            return deliver(lp, d, pid, id, pipe, Frame::Message { bytes: text.as_bytes(), nfds }, frame_fds);
        }
        Message::Store(req) => {
            let Some(ch) = p.writer.node_mut(pipe) else { return LineFlow::Stop };
            let req_id = ch.push_store(req.uuid);
            let key = req.key.as_bytes();
            let frame = if req.set {
                Frame::StoreSet { req_id, key, value: req.value.unwrap_or("").as_bytes() }
            } else {
                Frame::StoreGet { req_id, key }
            };
            return deliver(lp, d, pid, id, pipe, frame, frame_fds);
        }
        Message::Cluster(c) => c,
    };
    match frame {
        Cluster::Online => deliver(lp, d, pid, id, pipe, Frame::Online, frame_fds),
        Cluster::QueryServer(q) => query_server(lp, d, pid, id, pipe, q),
        Cluster::Listening { address, port } => {
            let ip = address.as_deref().and_then(|a| a.parse::<IpAddr>().ok()).unwrap_or_else(any_address);
            let address = match ip {
                IpAddr::V4(ip) => ListenAddress::V4(ip),
                IpAddr::V6(ip) => ListenAddress::V6(ip),
            };
            let port = u16::try_from(port).unwrap_or(0);
            deliver(lp, d, pid, id, pipe, Frame::Listening { listener_id: 0, address, port }, frame_fds)
        }
        Cluster::Close { key } => match p.writer.node_mut(pipe).and_then(|ch| ch.close_listener(&key)) {
            Some(listener_id) => deliver(lp, d, pid, id, pipe, Frame::Close { listener_id }, frame_fds),
            None => LineFlow::Continue,
        },
        Cluster::ExitedAfterDisconnect { seq } => {
            // Node's worker disconnects once this is acknowledged.
            if let Some((w, _)) = p.writer.node_parts(pipe) {
                let _ = w.write(lp, pipe, |out| codec::emit_ack(out, seq));
            }
            deliver(lp, d, pid, id, pipe, Frame::ExitedAfterDisconnect, frame_fds)
        }
        Cluster::Ack { seq, accepted } => {
            deliver(lp, d, pid, id, pipe, Frame::Ack { conn_seq: seq, count: 1, accepted }, frame_fds)
        }
        Cluster::Other => LineFlow::Continue,
    }
}

fn deliver<D: PrimaryData>(
    lp: &mut Loop<D>,
    d: &mut D,
    pid: PrimaryId,
    id: WorkerId,
    pipe: PipeStream,
    frame: Frame<'_>,
    fds: FrameFds,
) -> LineFlow {
    flow(handle_frame(lp, d, pid, id, pipe, Decoded { frame, fds }))
}

/// `NODE_HANDLE_NACK`: the oldest handle sent did not arrive. A connection
/// is refused (it goes to another worker); a listening socket is sent
/// again, up to Node's three retransmissions.
fn handle_refused<D: PrimaryData>(
    lp: &mut Loop<D>,
    d: &mut D,
    pid: PrimaryId,
    id: WorkerId,
    pipe: PipeStream,
) -> LineFlow {
    let Some(p) = d.primary_by_id(pid) else { return LineFlow::Stop };
    let Some(sent) = p.writer.node_mut(pipe).and_then(|ch| ch.handles.pop_front()) else {
        return LineFlow::Continue;
    };
    match sent {
        SentHandle::Conn(seq) => {
            p.on_ack(lp, id, seq, 1, false);
            LineFlow::Continue
        }
        SentHandle::Query(mut q) if q.retries < MAX_HANDLE_RETRANSMISSIONS => {
            q.retries += 1;
            let listen = q.listen.clone();
            let token = q.token;
            if let Some(ch) = p.writer.node_mut(pipe) {
                ch.requeue_query(q);
            }
            deliver(lp, d, pid, id, pipe, Frame::QueryServer { seq: token, key: listen.key() }, FrameFds::new())
        }
        SentHandle::Query(_) | SentHandle::Message => LineFlow::Continue,
    }
}

/// Node's primary listens on `null` as on `::` when the host has IPv6,
/// else on `0.0.0.0`.
fn any_address() -> IpAddr {
    if std::path::Path::new("/proc/net/if_inet6").exists() {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

/// A `queryServer`: routed as a uvring worker's listen; a form the routing
/// does not take is answered with Node's error at once.
fn query_server<D: PrimaryData>(
    lp: &mut Loop<D>,
    d: &mut D,
    pid: PrimaryId,
    id: WorkerId,
    pipe: PipeStream,
    q: Query<'_>,
) -> LineFlow {
    let Some(p) = d.primary_by_id(pid) else { return LineFlow::Stop };
    let mut listen = OwnedListen {
        ip: None,
        path: Vec::new(),
        port: 0,
        socket_type: SocketType::Tcp,
        backlog: if q.backlog == 0 { 511 } else { q.backlog },
        flags: if q.flags & 1 != 0 { ListenFlags::IPV6_ONLY } else { ListenFlags::empty() },
        index: q.index,
    };
    let mut errno = 0;
    match &q.address {
        QueryAddress::Tcp { host, port, .. } => {
            listen.port = *port;
            match host.as_deref().map(str::parse::<IpAddr>) {
                None => listen.ip = Some(any_address()),
                Some(Ok(ip)) => listen.ip = Some(ip),
                // Node's worker resolves names before it asks.
                Some(Err(_)) => errno = libc::EINVAL,
            }
        }
        QueryAddress::Path(path) => {
            listen.path = path.as_bytes().to_vec();
            listen.socket_type = SocketType::Pipe;
        }
        // Not (yet) routed for Node workers: UDP, and a listen on one of
        // the primary's own fds.
        QueryAddress::Udp { .. } => errno = libc::EAFNOSUPPORT,
        QueryAddress::Fd(_) => errno = libc::ENOTSUP,
    }
    // Under `reuseport` each worker binds its own socket, which Node's
    // protocol cannot ask a worker to do.
    if p.settings.policy == crate::settings::SchedPolicy::ReusePort {
        errno = libc::ENOTSUP;
    }
    let pending = PendingQuery {
        token: 0,
        ack: q.seq.to_owned(),
        key: q.key,
        data: q.data.to_owned(),
        listen: listen.clone(),
        retries: 0,
    };
    let Some(ch) = p.writer.node_mut(pipe) else { return LineFlow::Stop };
    let token = ch.push_query(pending);
    if errno != 0 {
        let reply = Frame::QueryServerReply { seq: token, errno, port: 0, listener_id: 0, listener_fd: false };
        let _ = p.writer.send(lp, pipe, &reply);
        return LineFlow::Continue;
    }
    deliver(lp, d, pid, id, pipe, Frame::QueryServer { seq: token, key: listen.key() }, FrameFds::new())
}

impl<D> Primary<D> {
    /// Whether worker channels speak Node's protocol.
    pub(super) fn speaks_node(&self) -> bool {
        self.settings.protocol == crate::node::WorkerProtocol::Node
    }
}

impl<D> Primary<D> {
    /// The decoder of a new worker's channel, in the workers' protocol (a
    /// Node channel is registered with the writer too).
    pub(super) fn channel_decoder(&mut self, channel: Option<PipeStream>) -> ChannelDecoder {
        let max = self.settings.max_message_len;
        if !self.speaks_node() {
            return ChannelDecoder::Frames(crate::channel::decoder(max));
        }
        if let Some(ch) = channel {
            self.writer.add_node(ch);
        }
        ChannelDecoder::Node(LineDecoder::new(max))
    }
}

/// A Node worker's environment: Node's variables instead of uvring's (a
/// Node worker's own children must not take themselves for uvring workers).
pub(super) fn node_env(env: &mut Vec<(OsString, OsString)>, id: WorkerId, uvring_vars: &[&str]) {
    let node_vars = [ENV_NODE_UNIQUE_ID, ENV_NODE_CHANNEL_FD, ENV_NODE_SERIALIZATION];
    env.retain(|(k, _)| !uvring_vars.iter().chain(&node_vars).any(|v| OsStr::new(v) == k));
    env.push((ENV_NODE_UNIQUE_ID.into(), id.to_string().into()));
    env.push((ENV_NODE_CHANNEL_FD.into(), super::lifecycle::CHANNEL_FD.to_string().into()));
    env.push((ENV_NODE_SERIALIZATION.into(), "json".into()));
}

/// Moves every thread of a just-spawned Node worker back to the normal
/// scheduling policy (it inherited the primary's `SCHED_BATCH`); threads
/// it starts later inherit the normal policy from them. Best effort: a
/// worker left under `SCHED_BATCH` still works.
pub(super) fn normal_sched(pid: i32) {
    let _ = uvring::os::set_sched_batch_of(pid, false);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return };
    for t in tasks.flatten() {
        if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
            let _ = uvring::os::set_sched_batch_of(tid, false);
        }
    }
}
