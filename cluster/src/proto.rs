//! The IPC frame codec spoken between the primary and its workers.
//!
//! The primary and each worker share one Unix stream socket that carries
//! bytes and, through `SCM_RIGHTS`, file descriptors. This module turns
//! [`Frame`]s into bytes ([`Frame::emit`]) and bytes plus received fds back
//! into frames ([`FrameDecoder`]). It is pure Rust: it never calls the OS and
//! never allocates after [`FrameDecoder`] construction. Frames borrow their
//! byte fields from the buffer they were parsed from.
//!
//! # Wire format (version 1)
//!
//! Every frame is an 8-byte header followed by `payload_len` payload bytes.
//! All integers are little endian.
//!
//! | offset | size | field         | meaning                                       |
//! |--------|------|---------------|-----------------------------------------------|
//! | 0      | 1    | `version`     | [`VERSION`] (= 1)                              |
//! | 1      | 1    | `kind`        | [`FrameKind`] code, table below               |
//! | 2      | 1    | `nfds`        | fds attached to this frame (0..=16)           |
//! | 3      | 1    | `reserved`    | must be 0                                     |
//! | 4      | 4    | `payload_len` | header + payload must fit the decoder's max   |
//!
//! Payloads (offsets relative to the payload start; `..` means "the rest of
//! the payload"):
//!
//! | kind | name                    | nfds     | payload layout                                                                                                                  |
//! |------|-------------------------|----------|---------------------------------------------------------------------------------------------------------------------------------|
//! | 0x01 | `Online`                | 0        | empty                                                                                                                           |
//! | 0x02 | `QueryServer`           | 0        | `seq u32 @0, backlog u32 @4, flags u32 @8, index u32 @12, port u16 @16, family u8 @18, socket_type u8 @19, address @20..`        |
//! | 0x03 | `QueryServerReply`      | 0 or 1   | `seq u32 @0, errno i32 @4, listener_id u32 @8, port u16 @12` (14 bytes); nfds = 1 carries the listening fd (`shared` policy, errno 0 only) |
//! | 0x04 | `NewConnection`         | `count`  | `listener_id u32 @0, first_conn_seq u64 @4, count u8 @12` (13 bytes); fd *i* is connection `first_conn_seq + i`                 |
//! | 0x05 | `Ack`                   | 0        | `conn_seq u64 @0, count u32 @8, accepted u8 @12` (13 bytes); acks seqs `conn_seq .. conn_seq + count`                           |
//! | 0x06 | `Listening`             | 0        | `listener_id u32 @0, port u16 @4, family u8 @6, address @7..`                                                                   |
//! | 0x07 | `Close`                 | 0        | `listener_id u32 @0` (4 bytes)                                                                                                  |
//! | 0x08 | `Disconnect`            | 0        | empty                                                                                                                           |
//! | 0x09 | `ExitedAfterDisconnect` | 0        | empty                                                                                                                           |
//! | 0x0a | `Load`                  | 0        | `open_connections u32 @0` (4 bytes); under `shared`, worker to primary: open plus accepted connections; primary to worker: the most it may hold (the least-loaded worker: its own load + 2^30) |
//! | 0x0b | `Message`               | 0..=16   | user bytes `@0..`                                                                                                               |
//! | 0x0c | `StoreGet`              | 0        | `req_id u32 @0, key @4..`                                                                                                       |
//! | 0x0d | `StoreSet`              | 0        | `req_id u32 @0, key_len u32 @4, key @8..8+key_len, value @8+key_len..`                                                         |
//! | 0x0e | `StoreDelete`           | 0        | `req_id u32 @0, key @4..`                                                                                                       |
//! | 0x0f | `StoreReply`            | 0        | `req_id u32 @0, status u8 @4, value @5..`                                                                                       |
//! | 0x10 | `Heartbeat`             | 0        | `seq u32 @0` (4 bytes); the primary asks, the worker's loop echoes it, either as is or with its report (40 bytes): `seq u32 @0, open_connections u32 @4, idle_us u64 @8, uptime_us u64 @16, loop_count u64 @24, events u64 @32` ([`WorkerReport`]); any other length is an error |
//! | 0x11 | `StoreAdd`              | 0        | `req_id u32 @0, delta i64 @4, key @12..`; the value is a decimal integer (absent = 0); answered with the new value             |
//! | 0x12 | `StoreCas`              | 0        | `req_id u32 @0, key_len u32 @4, expected_len u32 @8, key @12..12+key_len, expected @12+key_len..+expected_len, value @..` (the rest); `expected_len` 0xffff_ffff = "key absent", no expected bytes |
//! | 0x13 | `StoreKeys`             | 0        | `req_id u32 @0, prefix_len u32 @4, prefix @8..8+prefix_len, after @8+prefix_len..`: keys that start with `prefix` and sort after `after` |
//!
//! Enumerations: `family` 4 = IPv4 (address is 4 bytes), 6 = IPv6 (16 bytes),
//! 1 = Unix (1..=108 path bytes, a leading NUL names an abstract socket),
//! 2 = fd (a `u32` fd number, at most `i32::MAX`, of a socket in the
//! primary's fd table: Node's `listen({fd})`; TCP only);
//! `socket_type` 1 = TCP (IPv4 / IPv6 only), 2 = pipe (Unix only), 3 = UDP
//! (IPv4 / IPv6 only; the reply carries the bound socket, whatever the
//! policy); `flags` bit 0 = IPv6-only, bit 1 = `SO_REUSEPORT`, bit 2 =
//! exclusive, bit 3 = `SO_REUSEADDR` (UDP), other bits must be 0; `accepted` 0 / 1; `status` 1 = found, 2 = not found, 3 = ok,
//! 4 = error, 5 = partial. Every accepted encoding is canonical: parsing then emitting a
//! frame gives back the same bytes.
//!
//! The store's atomic operations are answered by a `StoreReply` with the
//! request's `req_id`:
//!
//! - `StoreAdd`: status 3 (ok) with the new value as a decimal integer
//!   (ASCII, `-` for a negative one); status 4 (error), with the reason as
//!   text, if the old value is not a decimal `i64` or the sum overflows (the
//!   value is left as it was).
//! - `StoreCas`: status 3 (ok) if the value was swapped; otherwise status 1
//!   (found) with the current value, or 2 (not found) if the key is absent.
//! - `StoreKeys`: the keys in byte order, each as `key_len u32, key`;
//!   status 3 (ok) when the list is complete, 5 (partial) when more keys
//!   follow (ask again with `after` = the last key received), 4 (error) when
//!   not even one key fits a frame.
//!
//! # File descriptors
//!
//! A sender attaches a frame's fds to the `sendmsg` that carries the frame's
//! first byte (or to an earlier one), in frame order. The kernel hands them
//! to the receiver together with those bytes, so by the time a frame's last
//! byte has arrived its fds have too. The receiver pushes every fd it gets
//! into [`FrameDecoder::push_fd`] *before* it commits the bytes of the same
//! `recvmsg`; [`FrameDecoder::next_frame`] then gives each frame the next
//! `nfds` queued fds. Every fd is owned by exactly one frame or closed: fds
//! that nobody takes are closed when their [`FrameFds`] or the decoder drops,
//! or when the decoder is poisoned by an error.

#![forbid(unsafe_code)]

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::{BitOr, Range};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The protocol version this module speaks.
pub const VERSION: u8 = 1;
/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 8;
/// Most fds one frame may carry.
pub const MAX_FDS_PER_FRAME: usize = 16;

/// `shared`: the primary's `Load` to the least-loaded worker is its load
/// plus this, which marks it as the one that must not pause while its
/// reports are held back (see the worker's `Share`).
pub(crate) const LOAD_EXEMPT: u32 = 1 << 30;
/// How many received fds a [`FrameDecoder`] holds before their frames
/// complete; one more is a protocol error.
pub const FD_QUEUE_CAPACITY: usize = 64;
/// Default maximum frame length (header included): a 1 MiB payload.
pub const DEFAULT_MAX_FRAME_LEN: usize = HEADER_LEN + (1 << 20);
/// The largest maximum frame length a decoder accepts (`payload_len` is a
/// `u32`).
pub const MAX_FRAME_LEN_LIMIT: usize = {
    let limit = HEADER_LEN.saturating_add(u32::MAX as usize);
    if limit > isize::MAX as usize {
        isize::MAX as usize
    } else {
        limit
    }
};
/// Longest Unix socket path (`sizeof(sun_path)` on Linux).
pub const UNIX_PATH_MAX: usize = 108;

/// Address family code of an IPv4 [`ListenAddress`].
pub const FAMILY_IPV4: u8 = 4;
/// Address family code of an IPv6 [`ListenAddress`].
pub const FAMILY_IPV6: u8 = 6;
/// Address family code of a Unix-domain [`ListenAddress`].
pub const FAMILY_UNIX: u8 = 1;
/// Address family code of an fd [`ListenAddress`].
pub const FAMILY_FD: u8 = 2;

/// Byte offsets of every field, header and payloads.
pub mod field {
    use std::ops::Range;

    /// A byte range inside the header or a payload.
    pub type Field = Range<usize>;

    /// Header byte 0: the protocol version ([`VERSION`](super::VERSION)).
    pub const VERSION: usize = 0;
    /// Header byte 1: the [`FrameKind`](super::FrameKind) code.
    pub const KIND: usize = 1;
    /// Header byte 2: how many fds the frame carries.
    pub const NFDS: usize = 2;
    /// Header byte 3: reserved, always 0.
    pub const RESERVED: usize = 3;
    /// Header bytes 4..8: the payload length (`u32`, little endian).
    pub const PAYLOAD_LEN: Field = 4..8;
    /// The payload starts right after the header.
    pub const PAYLOAD: usize = 8;

    /// Payload of `QueryServer`.
    pub mod query_server {
        use super::Field;
        /// `seq` (`u32`): matches the reply to the query.
        pub const SEQ: Field = 0..4;
        /// `backlog` (`u32`): the `listen(2)` backlog asked for.
        pub const BACKLOG: Field = 4..8;
        /// `flags` (`u32`): [`ListenFlags`](super::super::ListenFlags) bits.
        pub const FLAGS: Field = 8..12;
        /// `index` (`u32`): the n-th listen on the same address by this worker.
        pub const INDEX: Field = 12..16;
        /// `port` (`u16`; 0 asks for a kernel-chosen port).
        pub const PORT: Field = 16..18;
        /// `family` (`u8`): 4, 6 or 1 (Unix).
        pub const FAMILY: usize = 18;
        /// `socket_type` (`u8`): 1 TCP, 2 pipe.
        pub const SOCKET_TYPE: usize = 19;
        /// Where the address bytes start (4, 16, or 1..=108 for a Unix path); they run to the end of the payload.
        pub const ADDRESS: usize = 20;
    }

    /// Payload of `QueryServerReply`.
    pub mod query_server_reply {
        use super::Field;
        /// `seq` (`u32`): the query answered.
        pub const SEQ: Field = 0..4;
        /// `errno` (`i32`): 0, or the positive OS error of the bind or listen.
        pub const ERRNO: Field = 4..8;
        /// `listener_id` (`u32`): the primary's id of the listener.
        pub const LISTENER_ID: Field = 8..12;
        /// `port` (`u16`): the real port (port 0 resolved).
        pub const PORT: Field = 12..14;
        /// The payload length: 14 bytes.
        pub const LEN: usize = 14;
    }

    /// Payload of `NewConnection`.
    pub mod new_connection {
        use super::Field;
        /// `listener_id` (`u32`): the listener the connections came in on.
        pub const LISTENER_ID: Field = 0..4;
        /// `first_conn_seq` (`u64`): the sequence number of the first connection.
        pub const FIRST_CONN_SEQ: Field = 4..12;
        /// `count` (`u8`): connections (and fds) in the frame, 1..=16.
        pub const COUNT: usize = 12;
        /// The payload length: 13 bytes.
        pub const LEN: usize = 13;
    }

    /// Payload of `Ack`.
    pub mod ack {
        use super::Field;
        /// `conn_seq` (`u64`): the first connection acknowledged.
        pub const CONN_SEQ: Field = 0..8;
        /// `count` (`u32`): how many consecutive connections, at least 1.
        pub const COUNT: Field = 8..12;
        /// `accepted` (`u8`): 1 taken, 0 refused (to be re-routed).
        pub const ACCEPTED: usize = 12;
        /// The payload length: 13 bytes.
        pub const LEN: usize = 13;
    }

    /// Payload of `Listening`.
    pub mod listening {
        use super::Field;
        /// `listener_id` (`u32`): the listener now serving.
        pub const LISTENER_ID: Field = 0..4;
        /// `port` (`u16`): the port listened on.
        pub const PORT: Field = 4..6;
        /// `family` (`u8`): 4, 6 or 1 (Unix).
        pub const FAMILY: usize = 6;
        /// Where the address bytes start; they run to the end of the payload.
        pub const ADDRESS: usize = 7;
    }

    /// Payload of `Close`.
    pub mod close {
        use super::Field;
        /// `listener_id` (`u32`): the listener the worker closed.
        pub const LISTENER_ID: Field = 0..4;
        /// The payload length: 4 bytes.
        pub const LEN: usize = 4;
    }

    /// Payload of `Load`.
    pub mod load {
        use super::Field;
        /// `open_connections` (`u32`): the worker's load, or the most a `shared` worker may hold.
        pub const OPEN_CONNECTIONS: Field = 0..4;
        /// The payload length: 4 bytes.
        pub const LEN: usize = 4;
    }

    /// Payload of `Heartbeat`: `LEN` bytes, or `REPORT_LEN` with the
    /// worker's report.
    pub mod heartbeat {
        use super::Field;
        /// `seq` (`u32`): the probe number the worker echoes.
        pub const SEQ: Field = 0..4;
        /// The payload length without a report (the primary's probe): 4 bytes.
        pub const LEN: usize = 4;
        /// `open_connections` (`u32`) of the worker's report.
        pub const OPEN_CONNECTIONS: Field = 4..8;
        /// `idle_us` (`u64`) of the worker's report.
        pub const IDLE_US: Field = 8..16;
        /// `uptime_us` (`u64`) of the worker's report.
        pub const UPTIME_US: Field = 16..24;
        /// `loop_count` (`u64`) of the worker's report.
        pub const LOOP_COUNT: Field = 24..32;
        /// `events` (`u64`) of the worker's report.
        pub const EVENTS: Field = 32..40;
        /// The payload length with a report: 40 bytes.
        pub const REPORT_LEN: usize = 40;
    }

    /// Payload of `StoreGet` and `StoreDelete`.
    pub mod store_key {
        use super::Field;
        /// `req_id` (`u32`): matches the reply to the request.
        pub const REQ_ID: Field = 0..4;
        /// Where the key starts; it runs to the end of the payload.
        pub const KEY: usize = 4;
    }

    /// Payload of `StoreSet`.
    pub mod store_set {
        use super::Field;
        /// `req_id` (`u32`): matches the reply to the request.
        pub const REQ_ID: Field = 0..4;
        /// `key_len` (`u32`): the key's length; the value follows it.
        pub const KEY_LEN: Field = 4..8;
        /// Where the key starts (`key_len` bytes, then the value to the end).
        pub const KEY: usize = 8;
    }

    /// Payload of `StoreAdd`.
    pub mod store_add {
        use super::Field;
        /// The request's id (`u32`), echoed by the `StoreReply`.
        pub const REQ_ID: Field = 0..4;
        /// The amount to add (`i64`).
        pub const DELTA: Field = 4..12;
        /// Where the key starts (it runs to the payload's end).
        pub const KEY: usize = 12;
    }

    /// Payload of `StoreCas`.
    pub mod store_cas {
        use super::Field;
        /// The request's id (`u32`), echoed by the `StoreReply`.
        pub const REQ_ID: Field = 0..4;
        /// The key's length (`u32`).
        pub const KEY_LEN: Field = 4..8;
        /// The expected value's length (`u32`), or [`EXPECT_ABSENT`].
        pub const EXPECTED_LEN: Field = 8..12;
        /// Where the key starts; the expected value follows it, then the
        /// new value runs to the payload's end.
        pub const KEY: usize = 12;
        /// `expected_len` saying the key must be absent.
        pub const EXPECT_ABSENT: u32 = u32::MAX;
    }

    /// Payload of `StoreKeys`.
    pub mod store_keys {
        use super::Field;
        /// The request's id (`u32`), echoed by the `StoreReply`.
        pub const REQ_ID: Field = 0..4;
        /// The prefix's length (`u32`).
        pub const PREFIX_LEN: Field = 4..8;
        /// Where the prefix starts; the `after` key follows it, to the
        /// payload's end.
        pub const PREFIX: usize = 8;
    }

    /// One entry of a `StoreKeys` answer (the value of its `StoreReply`).
    pub mod key_entry {
        use super::Field;
        /// The key's length (`u32`).
        pub const KEY_LEN: Field = 0..4;
        /// Where the key starts.
        pub const KEY: usize = 4;
    }

    /// Payload of `StoreReply`.
    pub mod store_reply {
        use super::Field;
        /// `req_id` (`u32`): the request answered.
        pub const REQ_ID: Field = 0..4;
        /// `status` (`u8`): a [`StoreStatus`](super::super::StoreStatus) code.
        pub const STATUS: usize = 4;
        /// Where the value starts (a `Found` read's value; empty otherwise); it runs to the end.
        pub const VALUE: usize = 5;
    }
}

// ---------------------------------------------------------------------------
// Enumerations
// ---------------------------------------------------------------------------

/// The kind byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Worker to primary: the worker is up ([`Frame::Online`]).
    Online = 0x01,
    /// Worker to primary: listen for me ([`Frame::QueryServer`]).
    QueryServer = 0x02,
    /// Primary to worker: the answer to a `QueryServer` ([`Frame::QueryServerReply`]).
    QueryServerReply = 0x03,
    /// Primary to worker: accepted connections, one fd each ([`Frame::NewConnection`]).
    NewConnection = 0x04,
    /// Worker to primary: connections taken or refused ([`Frame::Ack`]).
    Ack = 0x05,
    /// Worker to primary: a listen completed ([`Frame::Listening`]).
    Listening = 0x06,
    /// Worker to primary: a server was closed ([`Frame::Close`]).
    Close = 0x07,
    /// Either way: begin a graceful disconnect ([`Frame::Disconnect`]).
    Disconnect = 0x08,
    /// Worker to primary: exiting because disconnected ([`Frame::ExitedAfterDisconnect`]).
    ExitedAfterDisconnect = 0x09,
    /// Load report or limit ([`Frame::Load`]).
    Load = 0x0a,
    /// A user message, perhaps with fds ([`Frame::Message`]).
    Message = 0x0b,
    /// Worker to primary: read a store key ([`Frame::StoreGet`]).
    StoreGet = 0x0c,
    /// Worker to primary: write a store key ([`Frame::StoreSet`]).
    StoreSet = 0x0d,
    /// Worker to primary: remove a store key ([`Frame::StoreDelete`]).
    StoreDelete = 0x0e,
    /// Primary to worker: the answer to a store request ([`Frame::StoreReply`]).
    StoreReply = 0x0f,
    /// A liveness probe and its echo ([`Frame::Heartbeat`]).
    Heartbeat = 0x10,
    /// Worker to primary: an atomic add on a store value ([`Frame::StoreAdd`]).
    StoreAdd = 0x11,
    /// Worker to primary: an atomic compare-and-swap ([`Frame::StoreCas`]).
    StoreCas = 0x12,
    /// Worker to primary: the keys under a prefix ([`Frame::StoreKeys`]).
    StoreKeys = 0x13,
}

impl FrameKind {
    /// Every kind, in code order.
    pub const ALL: [FrameKind; 19] = [
        FrameKind::Online,
        FrameKind::QueryServer,
        FrameKind::QueryServerReply,
        FrameKind::NewConnection,
        FrameKind::Ack,
        FrameKind::Listening,
        FrameKind::Close,
        FrameKind::Disconnect,
        FrameKind::ExitedAfterDisconnect,
        FrameKind::Load,
        FrameKind::Message,
        FrameKind::StoreGet,
        FrameKind::StoreSet,
        FrameKind::StoreDelete,
        FrameKind::StoreReply,
        FrameKind::Heartbeat,
        FrameKind::StoreAdd,
        FrameKind::StoreCas,
        FrameKind::StoreKeys,
    ];

    /// The kind for a wire code, if there is one.
    pub const fn from_u8(code: u8) -> Option<FrameKind> {
        Some(match code {
            0x01 => FrameKind::Online,
            0x02 => FrameKind::QueryServer,
            0x03 => FrameKind::QueryServerReply,
            0x04 => FrameKind::NewConnection,
            0x05 => FrameKind::Ack,
            0x06 => FrameKind::Listening,
            0x07 => FrameKind::Close,
            0x08 => FrameKind::Disconnect,
            0x09 => FrameKind::ExitedAfterDisconnect,
            0x0a => FrameKind::Load,
            0x0b => FrameKind::Message,
            0x0c => FrameKind::StoreGet,
            0x0d => FrameKind::StoreSet,
            0x0e => FrameKind::StoreDelete,
            0x0f => FrameKind::StoreReply,
            0x10 => FrameKind::Heartbeat,
            0x11 => FrameKind::StoreAdd,
            0x12 => FrameKind::StoreCas,
            0x13 => FrameKind::StoreKeys,
            _ => return None,
        })
    }

    /// The wire code.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// Most fds a frame of this kind may carry.
    pub const fn max_fds(self) -> usize {
        match self {
            FrameKind::QueryServerReply => 1,
            FrameKind::NewConnection | FrameKind::Message => MAX_FDS_PER_FRAME,
            _ => 0,
        }
    }

    /// Smallest and largest payload length of this kind, before the fields
    /// themselves are looked at. Checked as soon as a header arrives, so a
    /// peer cannot make the decoder buffer a megabyte for an `Online`.
    pub const fn payload_len_bounds(self) -> (usize, usize) {
        use field::*;
        const ANY: usize = u32::MAX as usize;
        match self {
            FrameKind::Online | FrameKind::Disconnect | FrameKind::ExitedAfterDisconnect => (0, 0),
            FrameKind::QueryServer => (query_server::ADDRESS + 1, query_server::ADDRESS + UNIX_PATH_MAX),
            FrameKind::QueryServerReply => (query_server_reply::LEN, query_server_reply::LEN),
            FrameKind::NewConnection => (new_connection::LEN, new_connection::LEN),
            FrameKind::Ack => (ack::LEN, ack::LEN),
            FrameKind::Listening => (listening::ADDRESS + 1, listening::ADDRESS + UNIX_PATH_MAX),
            FrameKind::Close => (close::LEN, close::LEN),
            FrameKind::Load => (load::LEN, load::LEN),
            FrameKind::Heartbeat => (heartbeat::LEN, heartbeat::REPORT_LEN),
            FrameKind::Message => (0, ANY),
            FrameKind::StoreGet | FrameKind::StoreDelete => (store_key::KEY, ANY),
            FrameKind::StoreSet => (store_set::KEY, ANY),
            FrameKind::StoreReply => (store_reply::VALUE, ANY),
            FrameKind::StoreAdd => (store_add::KEY, ANY),
            FrameKind::StoreCas => (store_cas::KEY, ANY),
            FrameKind::StoreKeys => (store_keys::PREFIX, ANY),
        }
    }
}

/// The address a server listens on. Unix paths are raw bytes (`sun_path`
/// without a trailing NUL; a leading NUL names an abstract socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenAddress<'a> {
    /// An IPv4 address (family code 4, 4 bytes on the wire).
    V4(Ipv4Addr),
    /// An IPv6 address (family code 6, 16 bytes on the wire).
    V6(Ipv6Addr),
    /// A Unix socket path (family code 1, 1..=108 bytes).
    Unix(&'a [u8]),
    /// A socket the primary already has, by fd number (Node's
    /// `listen({fd})` in a worker).
    Fd(u32),
}

impl<'a> ListenAddress<'a> {
    /// The wire `family` code.
    pub const fn family(&self) -> u8 {
        match self {
            ListenAddress::V4(_) => FAMILY_IPV4,
            ListenAddress::V6(_) => FAMILY_IPV6,
            ListenAddress::Unix(_) => FAMILY_UNIX,
            ListenAddress::Fd(_) => FAMILY_FD,
        }
    }

    /// Length of the address bytes on the wire.
    pub const fn wire_len(&self) -> usize {
        match self {
            ListenAddress::V4(_) => 4,
            ListenAddress::V6(_) => 16,
            ListenAddress::Unix(path) => path.len(),
            ListenAddress::Fd(_) => 4,
        }
    }

    /// Whether the address can be encoded (a Unix path is 1..=108 bytes).
    pub const fn is_valid(&self) -> bool {
        match self {
            ListenAddress::Unix(path) => !path.is_empty() && path.len() <= UNIX_PATH_MAX,
            ListenAddress::Fd(fd) => *fd <= i32::MAX as u32,
            _ => true,
        }
    }

    /// Decodes a family code and its address bytes; the error names the
    /// offending field.
    fn from_wire(family: u8, bytes: &'a [u8]) -> Result<Self, &'static str> {
        let address = match family {
            FAMILY_IPV4 => ListenAddress::V4(<[u8; 4]>::try_from(bytes).map_err(|_| "address")?.into()),
            FAMILY_IPV6 => ListenAddress::V6(<[u8; 16]>::try_from(bytes).map_err(|_| "address")?.into()),
            FAMILY_UNIX => ListenAddress::Unix(bytes),
            FAMILY_FD => ListenAddress::Fd(u32::from_le_bytes(<[u8; 4]>::try_from(bytes).map_err(|_| "address")?)),
            _ => return Err("family"),
        };
        if address.is_valid() {
            Ok(address)
        } else {
            Err("address")
        }
    }

    fn write(&self, out: &mut [u8], at: usize) {
        match self {
            ListenAddress::V4(ip) => put(out, at, &ip.octets()),
            ListenAddress::V6(ip) => put(out, at, &ip.octets()),
            ListenAddress::Unix(path) => put(out, at, path),
            ListenAddress::Fd(fd) => put(out, at, &fd.to_le_bytes()),
        }
    }
}

/// The kind of listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SocketType {
    /// A TCP listener (wire code 1), on an IPv4 or IPv6 address.
    Tcp = 1,
    /// A Unix-domain stream listener (wire code 2), on a Unix path.
    Pipe = 2,
    /// A datagram socket (Node's `udp4` / `udp6`): the primary binds it
    /// once and every worker receives on a copy of it.
    Udp = 3,
}

impl SocketType {
    /// The type for a wire code, if there is one.
    pub const fn from_u8(code: u8) -> Option<SocketType> {
        match code {
            1 => Some(SocketType::Tcp),
            2 => Some(SocketType::Pipe),
            3 => Some(SocketType::Udp),
            _ => None,
        }
    }

    /// Whether this socket type can listen on `address` (TCP and UDP on IP,
    /// pipes on Unix paths).
    pub const fn fits(self, address: &ListenAddress<'_>) -> bool {
        matches!(
            (self, address),
            (SocketType::Tcp | SocketType::Udp, ListenAddress::V4(_) | ListenAddress::V6(_))
                | (SocketType::Pipe, ListenAddress::Unix(_))
                | (SocketType::Tcp, ListenAddress::Fd(_))
        )
    }
}

/// Listen options carried in a [`ListenKey`]. Only known bits can be set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ListenFlags(u32);

impl ListenFlags {
    /// `IPV6_V6ONLY` on an IPv6 listener.
    pub const IPV6_ONLY: ListenFlags = ListenFlags(1 << 0);
    /// `SO_REUSEPORT` on the listener.
    pub const REUSE_PORT: ListenFlags = ListenFlags(1 << 1);
    /// Node's `exclusive`: the worker wants a listener of its own.
    pub const EXCLUSIVE: ListenFlags = ListenFlags(1 << 2);
    /// `SO_REUSEADDR` on a UDP socket.
    pub const REUSE_ADDR: ListenFlags = ListenFlags(1 << 3);
    const KNOWN: u32 = 0b1111;

    /// No flag set.
    pub const fn empty() -> ListenFlags {
        ListenFlags(0)
    }

    /// Flags from wire bits; `None` if an unknown bit is set.
    pub const fn from_bits(bits: u32) -> Option<ListenFlags> {
        if bits & !Self::KNOWN == 0 {
            Some(ListenFlags(bits))
        } else {
            None
        }
    }

    /// The wire bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: ListenFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for ListenFlags {
    type Output = ListenFlags;
    fn bitor(self, rhs: ListenFlags) -> ListenFlags {
        ListenFlags(self.0 | rhs.0)
    }
}

impl fmt::Debug for ListenFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ListenFlags({:#x})", self.0)
    }
}

/// What a worker asks the primary to listen on (Node's `queryServer` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenKey<'a> {
    /// The address to listen on.
    pub address: ListenAddress<'a>,
    /// The port; 0 asks the kernel to choose (the reply names the port).
    pub port: u16,
    /// TCP or pipe; must fit the address ([`SocketType::fits`]).
    pub socket_type: SocketType,
    /// The `listen(2)` backlog.
    pub backlog: u32,
    /// Listen options (only known bits).
    pub flags: ListenFlags,
    /// Per-worker index: the n-th listen on the same address by one worker.
    pub index: u32,
}

/// Outcome of a shared-store request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StoreStatus {
    /// A `StoreGet` found the key; the reply carries its value (wire code 1).
    Found = 1,
    /// A `StoreGet` or `StoreDelete` found no such key (wire code 2).
    NotFound = 2,
    /// A `StoreSet` or `StoreDelete` was applied (wire code 3).
    Ok = 3,
    /// The request could not be served (wire code 4).
    Error = 4,
    /// A `StoreKeys` answer that more keys follow.
    Partial = 5,
}

impl StoreStatus {
    /// The status for a wire code, if there is one.
    pub const fn from_u8(code: u8) -> Option<StoreStatus> {
        match code {
            1 => Some(StoreStatus::Found),
            2 => Some(StoreStatus::NotFound),
            3 => Some(StoreStatus::Ok),
            4 => Some(StoreStatus::Error),
            5 => Some(StoreStatus::Partial),
            _ => None,
        }
    }
}

/// Appends one entry of a `StoreKeys` answer (`key_len u32, key`) to `out`.
/// `EmitError::TooLarge` (and `out` unchanged) for a key longer than a `u32`
/// can say.
///
/// # Errors
///
/// [`EmitError::TooLarge`] for a key longer than a `u32` can say (`out` is unchanged).
pub fn push_key_entry(out: &mut Vec<u8>, key: &[u8]) -> Result<(), EmitError> {
    let len = u32::try_from(key.len()).map_err(|_| EmitError::TooLarge { payload_len: key.len() })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(key);
    Ok(())
}

/// The keys of a `StoreKeys` answer (a [`Frame::StoreReply`]'s value), in
/// order. An entry that runs past the end yields one `Err` and ends the
/// iteration: hostile bytes never panic.
pub fn key_entries(value: &[u8]) -> KeyEntries<'_> {
    KeyEntries { rest: value }
}

/// Iterator returned by [`key_entries`].
#[derive(Debug, Clone)]
pub struct KeyEntries<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for KeyEntries<'a> {
    type Item = Result<&'a [u8], InvalidFrame>;

    fn next(&mut self) -> Option<Self::Item> {
        use field::key_entry::*;
        if self.rest.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.rest);
        let bad = InvalidFrame { kind: FrameKind::StoreReply, field: "key_len" };
        let Some(len) = rest.get(KEY_LEN).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_le_bytes) else {
            return Some(Err(bad));
        };
        let Some((key, tail)) =
            usize::try_from(len).ok().and_then(|n| rest.get(KEY..).and_then(|r| r.split_at_checked(n)))
        else {
            return Some(Err(bad));
        };
        self.rest = tail;
        Some(Ok(key))
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// A frame whose fields are individually well-formed but that breaks a rule
/// of its kind (a zero count, an fd on an error reply, a bad address, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidFrame {
    /// The kind of the frame that breaks the rule.
    pub kind: FrameKind,
    /// Name of the offending field.
    pub field: &'static str,
}

impl fmt::Display for InvalidFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} in {:?} frame", self.field, self.kind)
    }
}

impl std::error::Error for InvalidFrame {}

/// Why bytes (or fds) could not be decoded. A [`FrameDecoder`] that returned
/// one is poisoned: the channel should be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ends inside a frame (`buffered` bytes of it).
    Truncated {
        /// Bytes of the incomplete frame held.
        buffered: usize,
    },
    /// The header names a protocol version this code does not speak.
    BadVersion {
        /// The version byte received.
        version: u8,
    },
    /// The header names no known frame kind.
    UnknownKind {
        /// The kind byte received.
        kind: u8,
    },
    /// The header's reserved byte is not zero.
    ReservedNotZero {
        /// The reserved byte received.
        value: u8,
    },
    /// The header announces a frame longer than the decoder's maximum.
    FrameTooLong {
        /// The announced frame length, header included.
        len: usize,
        /// The decoder's maximum frame length.
        max: usize,
    },
    /// The payload is too short for its kind (or for a length it declares).
    PayloadTooShort {
        /// The frame's kind.
        kind: FrameKind,
        /// The payload length.
        len: usize,
    },
    /// The payload is too long for its kind.
    PayloadTooLong {
        /// The frame's kind.
        kind: FrameKind,
        /// The payload length.
        len: usize,
    },
    /// The header's `nfds` is not allowed for this frame.
    BadFdCount {
        /// The frame's kind.
        kind: FrameKind,
        /// The header's fd count.
        nfds: u8,
    },
    /// A complete frame announces more fds than have been received.
    MissingFds {
        /// The frame's kind.
        kind: FrameKind,
        /// The fds the frame announces.
        nfds: u8,
        /// The fds received and not yet claimed.
        queued: usize,
    },
    /// More fds were received than frames can have claimed.
    FdQueueOverflow {
        /// The decoder's fd queue capacity ([`FD_QUEUE_CAPACITY`]).
        capacity: usize,
    },
    /// The stream ended with fds that no frame claimed.
    UnclaimedFds {
        /// How many fds were left.
        count: usize,
    },
    /// A field value breaks a rule of its kind.
    Invalid(InvalidFrame),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { buffered } => {
                write!(f, "stream ends inside a frame ({buffered} bytes buffered)")
            }
            DecodeError::BadVersion { version } => write!(f, "unsupported frame version {version}"),
            DecodeError::UnknownKind { kind } => write!(f, "unknown frame kind {kind:#04x}"),
            DecodeError::ReservedNotZero { value } => {
                write!(f, "reserved header byte is {value:#04x}, not 0")
            }
            DecodeError::FrameTooLong { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max}")
            }
            DecodeError::PayloadTooShort { kind, len } => {
                write!(f, "{len}-byte payload too short for {kind:?}")
            }
            DecodeError::PayloadTooLong { kind, len } => {
                write!(f, "{len}-byte payload too long for {kind:?}")
            }
            DecodeError::BadFdCount { kind, nfds } => {
                write!(f, "{kind:?} frame cannot carry {nfds} fds")
            }
            DecodeError::MissingFds { kind, nfds, queued } => {
                write!(f, "{kind:?} frame carries {nfds} fds but only {queued} arrived")
            }
            DecodeError::FdQueueOverflow { capacity } => {
                write!(f, "more than {capacity} fds received ahead of their frames")
            }
            DecodeError::UnclaimedFds { count } => {
                write!(f, "stream ended with {count} fds that no frame claimed")
            }
            DecodeError::Invalid(invalid) => invalid.fmt(f),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<InvalidFrame> for DecodeError {
    fn from(invalid: InvalidFrame) -> DecodeError {
        DecodeError::Invalid(invalid)
    }
}

/// Why a frame could not be emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitError {
    /// The output buffer holds `available` bytes; the frame needs `needed`.
    BufferTooSmall {
        /// Bytes the frame needs ([`Frame::buffer_len`]).
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// The payload does not fit the `u32` length field.
    TooLarge {
        /// The payload's length.
        payload_len: usize,
    },
    /// The frame breaks a rule of its kind and would not decode.
    Invalid(InvalidFrame),
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmitError::BufferTooSmall { needed, available } => {
                write!(f, "frame needs {needed} bytes, buffer has {available}")
            }
            EmitError::TooLarge { payload_len } => {
                write!(f, "{payload_len}-byte payload does not fit a frame")
            }
            EmitError::Invalid(invalid) => invalid.fmt(f),
        }
    }
}

impl std::error::Error for EmitError {}

impl From<InvalidFrame> for EmitError {
    fn from(invalid: InvalidFrame) -> EmitError {
        EmitError::Invalid(invalid)
    }
}

// ---------------------------------------------------------------------------
// Packet view
// ---------------------------------------------------------------------------

/// A read/write view of one frame's bytes, in the smoltcp manner: after
/// [`check_len`](FramePacket::check_len) succeeds the buffer holds the whole
/// frame. No accessor panics, checked or not: bytes past the end of the
/// buffer read as zero and writes past it are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> FramePacket<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> FramePacket<T> {
        FramePacket { buffer }
    }

    /// Wraps a buffer that must hold a complete frame.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] if the buffer is shorter than the header or than the frame its
    /// header announces.
    pub fn new_checked(buffer: T) -> Result<FramePacket<T>, DecodeError> {
        let packet = FramePacket::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Ok if the buffer holds the header and the whole payload it announces.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`], with the bytes held, if the buffer is shorter than the header or
    /// than header plus announced payload.
    pub fn check_len(&self) -> Result<(), DecodeError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || len < self.total_len() {
            Err(DecodeError::Truncated { buffered: len })
        } else {
            Ok(())
        }
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn byte(&self, at: usize) -> u8 {
        self.buffer.as_ref().get(at).copied().unwrap_or(0)
    }

    /// The version byte (header byte 0; 0 if the buffer is shorter).
    pub fn version(&self) -> u8 {
        self.byte(field::VERSION)
    }

    /// The raw kind byte (see [`FrameKind::from_u8`]).
    pub fn kind(&self) -> u8 {
        self.byte(field::KIND)
    }

    /// The fd count (header byte 2; 0 if the buffer is shorter).
    pub fn nfds(&self) -> u8 {
        self.byte(field::NFDS)
    }

    /// The reserved byte (header byte 3; 0 if the buffer is shorter).
    pub fn reserved(&self) -> u8 {
        self.byte(field::RESERVED)
    }

    /// The announced payload length (header bytes 4..8; missing bytes read as 0).
    pub fn payload_len(&self) -> u32 {
        let bytes = self.buffer.as_ref();
        let mut raw = [0u8; 4];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = bytes.get(field::PAYLOAD_LEN.start + i).copied().unwrap_or(0);
        }
        u32::from_le_bytes(raw)
    }

    /// Header plus announced payload, saturating on 32-bit targets.
    pub fn total_len(&self) -> usize {
        HEADER_LEN.saturating_add(usize::try_from(self.payload_len()).unwrap_or(usize::MAX))
    }

    /// Checks everything the header alone can tell (version, kind, reserved
    /// byte, length against `max_frame_len` and the kind's bounds, fd count
    /// against the kind's maximum) and returns the kind. The buffer need
    /// only hold the header.
    ///
    /// # Errors
    ///
    /// In this order: [`DecodeError::Truncated`] (no full header),
    /// [`BadVersion`](DecodeError::BadVersion), [`UnknownKind`](DecodeError::UnknownKind),
    /// [`ReservedNotZero`](DecodeError::ReservedNotZero),
    /// [`FrameTooLong`](DecodeError::FrameTooLong) (over `max_frame_len`),
    /// [`PayloadTooShort`](DecodeError::PayloadTooShort) or
    /// [`PayloadTooLong`](DecodeError::PayloadTooLong) (outside [`FrameKind::payload_len_bounds`]),
    /// [`BadFdCount`](DecodeError::BadFdCount) (over [`FrameKind::max_fds`]).
    pub fn check_header(&self, max_frame_len: usize) -> Result<FrameKind, DecodeError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(DecodeError::Truncated { buffered: len });
        }
        if self.version() != VERSION {
            return Err(DecodeError::BadVersion { version: self.version() });
        }
        let kind = FrameKind::from_u8(self.kind()).ok_or(DecodeError::UnknownKind { kind: self.kind() })?;
        if self.reserved() != 0 {
            return Err(DecodeError::ReservedNotZero { value: self.reserved() });
        }
        if self.total_len() > max_frame_len {
            return Err(DecodeError::FrameTooLong { len: self.total_len(), max: max_frame_len });
        }
        let payload_len = self.total_len() - HEADER_LEN;
        let (min, max) = kind.payload_len_bounds();
        if payload_len < min {
            return Err(DecodeError::PayloadTooShort { kind, len: payload_len });
        }
        if payload_len > max {
            return Err(DecodeError::PayloadTooLong { kind, len: payload_len });
        }
        if usize::from(self.nfds()) > kind.max_fds() {
            return Err(DecodeError::BadFdCount { kind, nfds: self.nfds() });
        }
        Ok(kind)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> FramePacket<&'a T> {
    /// The payload, cut to what the buffer holds.
    pub fn payload(&self) -> &'a [u8] {
        let bytes: &'a [u8] = self.buffer.as_ref();
        let end = self.total_len().min(bytes.len());
        bytes.get(HEADER_LEN..end).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> FramePacket<T> {
    fn set_byte(&mut self, at: usize, value: u8) {
        if let Some(b) = self.buffer.as_mut().get_mut(at) {
            *b = value;
        }
    }

    /// Sets the version byte (a buffer too short is left as it is).
    pub fn set_version(&mut self, value: u8) {
        self.set_byte(field::VERSION, value);
    }

    /// Sets the kind byte (a buffer too short is left as it is).
    pub fn set_kind(&mut self, value: u8) {
        self.set_byte(field::KIND, value);
    }

    /// Sets the fd count (a buffer too short is left as it is).
    pub fn set_nfds(&mut self, value: u8) {
        self.set_byte(field::NFDS, value);
    }

    /// Sets the reserved byte (a buffer too short is left as it is).
    pub fn set_reserved(&mut self, value: u8) {
        self.set_byte(field::RESERVED, value);
    }

    /// Sets the payload length (a buffer too short is left as it is).
    pub fn set_payload_len(&mut self, value: u32) {
        put_if_fits(self.buffer.as_mut(), field::PAYLOAD_LEN.start, &value.to_le_bytes());
    }

    /// The payload bytes the buffer holds, for writing.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.total_len();
        let bytes = self.buffer.as_mut();
        let end = end.min(bytes.len());
        bytes.get_mut(HEADER_LEN..end).unwrap_or(&mut [])
    }
}

/// Copies `bytes` to `out[at..]` for `emit`, which sizes `out` first, so
/// the bytes always fit.
fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    let fits = put_if_fits(out, at, bytes);
    debug_assert!(fits, "emit wrote past its own buffer_len");
}

/// Copies `bytes` to `out[at..]` if they fit; says whether they did.
fn put_if_fits(out: &mut [u8], at: usize, bytes: &[u8]) -> bool {
    match at.checked_add(bytes.len()).and_then(|end| out.get_mut(at..end)) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

/// Checked little-endian reads from one payload; a read past the end is
/// `PayloadTooShort`.
#[derive(Clone, Copy)]
struct Fields<'a> {
    kind: FrameKind,
    bytes: &'a [u8],
}

impl<'a> Fields<'a> {
    fn too_short(&self) -> DecodeError {
        DecodeError::PayloadTooShort { kind: self.kind, len: self.bytes.len() }
    }

    fn array<const N: usize>(&self, f: Range<usize>) -> Result<[u8; N], DecodeError> {
        debug_assert_eq!(f.len(), N);
        self.bytes.get(f).and_then(|s| <[u8; N]>::try_from(s).ok()).ok_or_else(|| self.too_short())
    }

    fn u8(&self, at: usize) -> Result<u8, DecodeError> {
        self.bytes.get(at).copied().ok_or_else(|| self.too_short())
    }

    fn u16(&self, f: Range<usize>) -> Result<u16, DecodeError> {
        self.array(f).map(u16::from_le_bytes)
    }

    fn u32(&self, f: Range<usize>) -> Result<u32, DecodeError> {
        self.array(f).map(u32::from_le_bytes)
    }

    fn i32(&self, f: Range<usize>) -> Result<i32, DecodeError> {
        self.array(f).map(i32::from_le_bytes)
    }

    fn u64(&self, f: Range<usize>) -> Result<u64, DecodeError> {
        self.array(f).map(u64::from_le_bytes)
    }

    fn i64(&self, f: Range<usize>) -> Result<i64, DecodeError> {
        self.array(f).map(i64::from_le_bytes)
    }

    fn tail(&self, at: usize) -> Result<&'a [u8], DecodeError> {
        self.bytes.get(at..).ok_or_else(|| self.too_short())
    }

    fn invalid(&self, field: &'static str) -> DecodeError {
        DecodeError::Invalid(InvalidFrame { kind: self.kind, field })
    }
}

// ---------------------------------------------------------------------------
// Frame (the Repr)
// ---------------------------------------------------------------------------

/// One decoded frame. Byte fields borrow from the buffer the frame was
/// parsed from. A frame's fds travel beside it ([`Decoded::fds`] on the
/// receiving side; the sender passes them to `sendmsg`), and
/// [`Frame::nfds`] says how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Frame<'a> {
    /// Worker to primary: the worker is up.
    Online,
    /// Worker to primary: please listen on `key` for me.
    QueryServer {
        /// Chosen by the worker; the reply carries it back.
        seq: u32,
        /// What to listen on.
        key: ListenKey<'a>,
    },
    /// Primary to worker: answer to the `QueryServer` with the same `seq`.
    /// `errno` is 0 on success, else the positive OS error of the bind or
    /// listen (`io::Error::raw_os_error`, e.g. `EADDRINUSE`); `port` is the
    /// real port (port 0 resolved).
    /// With `listener_fd` (the `shared` policy) the frame carries the
    /// listening socket.
    QueryServerReply {
        /// The query answered.
        seq: u32,
        /// 0 on success, else the positive OS error.
        errno: i32,
        /// The real port (port 0 resolved).
        port: u16,
        /// The primary's id of the listener, used by later frames.
        listener_id: u32,
        /// Whether the frame carries the listening socket (`shared` policy, success only).
        listener_fd: bool,
    },
    /// Primary to worker: `count` accepted connections (one fd each) for
    /// `listener_id`, numbered `first_conn_seq ..`.
    NewConnection {
        /// The listener the connections came in on.
        listener_id: u32,
        /// The sequence number of the first connection; the others follow.
        first_conn_seq: u64,
        /// Connections (and fds) in the frame, 1..=16.
        count: u8,
    },
    /// Worker to primary: connections `conn_seq .. conn_seq + count` were
    /// accepted (or refused, and should go to another worker).
    Ack {
        /// The first connection acknowledged.
        conn_seq: u64,
        /// How many consecutive connections, at least 1.
        count: u32,
        /// Taken (`true`) or refused (`false`).
        accepted: bool,
    },
    /// Worker to primary: the listen completed on `address`:`port`.
    Listening {
        /// The listener now serving.
        listener_id: u32,
        /// The address listened on.
        address: ListenAddress<'a>,
        /// The port listened on.
        port: u16,
    },
    /// Worker to primary: the worker closed its server on `listener_id`.
    Close {
        /// The listener the worker closed.
        listener_id: u32,
    },
    /// Either way: begin a graceful disconnect.
    Disconnect,
    /// Worker to primary: the worker is exiting because it was disconnected.
    ExitedAfterDisconnect,
    /// Worker to primary: current load, for least-loaded scheduling.
    Load {
        /// Worker to primary: open (under `shared`, plus accepted) connections; primary to worker (`shared`): the most it may hold.
        open_connections: u32,
    },
    /// A user message, with `nfds` handles sent alongside.
    Message {
        /// The user's bytes.
        bytes: &'a [u8],
        /// How many fds come with it (0..=16).
        nfds: u8,
    },
    /// Worker to primary: read `key` from the shared store.
    StoreGet {
        /// Chosen by the worker; the reply carries it back.
        req_id: u32,
        /// The key.
        key: &'a [u8],
    },
    /// Worker to primary: write `key` = `value` in the shared store.
    StoreSet {
        /// Chosen by the worker; the reply carries it back.
        req_id: u32,
        /// The key.
        key: &'a [u8],
        /// The new value.
        value: &'a [u8],
    },
    /// Worker to primary: remove `key` from the shared store.
    StoreDelete {
        /// Chosen by the worker; the reply carries it back.
        req_id: u32,
        /// The key.
        key: &'a [u8],
    },
    /// Primary to worker: answer to the store request `req_id`.
    StoreReply {
        /// The request answered.
        req_id: u32,
        /// What happened.
        status: StoreStatus,
        /// The value for [`StoreStatus::Found`]; empty otherwise.
        value: &'a [u8],
    },
    /// Primary to worker: are you alive? Worker to primary: the same `seq`
    /// back, from the worker's loop (a stuck loop does not answer), with
    /// the worker's figures in `report` (`None` from the primary).
    Heartbeat {
        /// The probe's number, echoed unchanged.
        seq: u32,
        /// The worker's figures, in its answer; `None` in the primary's probe.
        report: Option<WorkerReport>,
    },
    /// Worker to primary: add `delta` to the decimal integer at `key` (an
    /// absent key counts as 0), atomically.
    StoreAdd {
        /// The request's id, echoed by the answer.
        req_id: u32,
        /// The key whose value is a decimal integer.
        key: &'a [u8],
        /// The amount to add (may be negative).
        delta: i64,
    },
    /// Worker to primary: set `key` = `value` if its value is `expected`
    /// (`None`: if the key is absent), atomically.
    StoreCas {
        /// The request's id, echoed by the answer.
        req_id: u32,
        /// The key to swap.
        key: &'a [u8],
        /// The value the key must hold (`None`: the key must be absent).
        expected: Option<&'a [u8]>,
        /// The new value.
        value: &'a [u8],
    },
    /// Worker to primary: the keys that start with `prefix` and sort after
    /// `after` (empty: from the first), in byte order.
    StoreKeys {
        /// The request's id, echoed by the answer.
        req_id: u32,
        /// Only keys that start with these bytes.
        prefix: &'a [u8],
        /// Only keys that sort after this one (empty: from the first).
        after: &'a [u8],
    },
}

/// What a worker tells the primary about itself with each heartbeat
/// answer: figures only the worker's own loop can see. Counters are totals
/// since the worker's loop was made; the primary takes differences between
/// two reports (utilisation = 1 - Δ`idle_us` / Δ`uptime_us`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct WorkerReport {
    /// TCP connections open in the worker now.
    pub open_connections: u32,
    /// Time its loop spent blocked waiting for I/O (`Loop::metrics_idle_time`), µs.
    pub idle_us: u64,
    /// Age of its loop, µs.
    pub uptime_us: u64,
    /// Loop iterations (`LoopMetrics::loop_count`).
    pub loop_count: u64,
    /// Completions its loop took (`LoopMetrics::events`).
    pub events: u64,
}

impl<'a> Frame<'a> {
    /// This frame's kind.
    pub const fn kind(&self) -> FrameKind {
        match self {
            Frame::Online => FrameKind::Online,
            Frame::QueryServer { .. } => FrameKind::QueryServer,
            Frame::QueryServerReply { .. } => FrameKind::QueryServerReply,
            Frame::NewConnection { .. } => FrameKind::NewConnection,
            Frame::Ack { .. } => FrameKind::Ack,
            Frame::Listening { .. } => FrameKind::Listening,
            Frame::Close { .. } => FrameKind::Close,
            Frame::Disconnect => FrameKind::Disconnect,
            Frame::ExitedAfterDisconnect => FrameKind::ExitedAfterDisconnect,
            Frame::Load { .. } => FrameKind::Load,
            Frame::Heartbeat { .. } => FrameKind::Heartbeat,
            Frame::Message { .. } => FrameKind::Message,
            Frame::StoreGet { .. } => FrameKind::StoreGet,
            Frame::StoreSet { .. } => FrameKind::StoreSet,
            Frame::StoreDelete { .. } => FrameKind::StoreDelete,
            Frame::StoreReply { .. } => FrameKind::StoreReply,
            Frame::StoreAdd { .. } => FrameKind::StoreAdd,
            Frame::StoreCas { .. } => FrameKind::StoreCas,
            Frame::StoreKeys { .. } => FrameKind::StoreKeys,
        }
    }

    /// How many fds travel with this frame.
    pub const fn nfds(&self) -> u8 {
        match *self {
            Frame::QueryServerReply { listener_fd: true, .. } => 1,
            Frame::NewConnection { count, .. } => count,
            Frame::Message { nfds, .. } => nfds,
            _ => 0,
        }
    }

    /// Payload length on the wire (saturating; see [`EmitError::TooLarge`]).
    pub fn payload_len(&self) -> usize {
        use field::*;
        match self {
            Frame::Online | Frame::Disconnect | Frame::ExitedAfterDisconnect => 0,
            Frame::QueryServer { key, .. } => query_server::ADDRESS + key.address.wire_len(),
            Frame::QueryServerReply { .. } => query_server_reply::LEN,
            Frame::NewConnection { .. } => new_connection::LEN,
            Frame::Ack { .. } => ack::LEN,
            Frame::Listening { address, .. } => listening::ADDRESS + address.wire_len(),
            Frame::Close { .. } => close::LEN,
            Frame::Load { .. } => load::LEN,
            Frame::Heartbeat { report: None, .. } => heartbeat::LEN,
            Frame::Heartbeat { report: Some(_), .. } => heartbeat::REPORT_LEN,
            Frame::Message { bytes, .. } => bytes.len(),
            Frame::StoreGet { key, .. } | Frame::StoreDelete { key, .. } => store_key::KEY.saturating_add(key.len()),
            Frame::StoreSet { key, value, .. } => store_set::KEY.saturating_add(key.len()).saturating_add(value.len()),
            Frame::StoreReply { value, .. } => store_reply::VALUE.saturating_add(value.len()),
            Frame::StoreAdd { key, .. } => store_add::KEY.saturating_add(key.len()),
            Frame::StoreCas { key, expected, value, .. } => store_cas::KEY
                .saturating_add(key.len())
                .saturating_add(expected.map_or(0, <[u8]>::len))
                .saturating_add(value.len()),
            Frame::StoreKeys { prefix, after, .. } => {
                store_keys::PREFIX.saturating_add(prefix.len()).saturating_add(after.len())
            }
        }
    }

    /// Bytes [`emit`](Frame::emit) writes: header plus payload.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN.saturating_add(self.payload_len())
    }

    /// Checks the rules each kind puts on its fields; a frame that passes
    /// (and whose payload fits a `u32`) emits bytes that parse back to it.
    ///
    /// # Errors
    ///
    /// [`InvalidFrame`] naming the first field that breaks its kind's rule: `address` (a Unix path
    /// empty or over 108 bytes), `socket_type` (TCP on a Unix path or a pipe on an IP address),
    /// `listener_fd` (an fd on an error reply), `count` (a `NewConnection` of 0 or over 16
    /// connections, an `Ack` of 0), `first_conn_seq` or `conn_seq` (the range overflows `u64`),
    /// `nfds` (a `Message` with over 16 fds).
    pub fn validate(&self) -> Result<(), InvalidFrame> {
        let field = match *self {
            Frame::QueryServer { key, .. } if !key.address.is_valid() => "address",
            Frame::QueryServer { key, .. } if !key.socket_type.fits(&key.address) => "socket_type",
            Frame::QueryServerReply { errno, listener_fd: true, .. } if errno != 0 => "listener_fd",
            Frame::NewConnection { count, .. } if count == 0 || usize::from(count) > MAX_FDS_PER_FRAME => "count",
            Frame::NewConnection { first_conn_seq, count, .. }
                if first_conn_seq.checked_add(u64::from(count) - 1).is_none() =>
            {
                "first_conn_seq"
            }
            Frame::Ack { count: 0, .. } => "count",
            Frame::Ack { conn_seq, count, .. } if conn_seq.checked_add(u64::from(count) - 1).is_none() => "conn_seq",
            Frame::Listening { address, .. } if !address.is_valid() => "address",
            Frame::Message { nfds, .. } if usize::from(nfds) > MAX_FDS_PER_FRAME => "nfds",
            _ => return Ok(()),
        };
        Err(InvalidFrame { kind: self.kind(), field })
    }

    /// Parses the complete frame in `packet` (whose length is checked here).
    /// The decoder's maximum frame length is not applied; fds are not looked
    /// at beyond the header's count.
    ///
    /// # Errors
    ///
    /// Any error of [`FramePacket::check_header`] (without a length limit) or
    /// [`FramePacket::check_len`]; [`DecodeError::PayloadTooShort`] for a payload shorter than a
    /// length it declares (a `StoreSet`'s key); [`DecodeError::BadFdCount`] for a `NewConnection`
    /// whose `count` differs from `nfds`; [`DecodeError::Invalid`] naming the field for an unknown
    /// family, socket type, flag bit, store status or `accepted` byte, and for what
    /// [`validate`](Frame::validate) refuses. Never panics, whatever the bytes.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &FramePacket<&'a T>) -> Result<Frame<'a>, DecodeError> {
        let kind = packet.check_header(MAX_FRAME_LEN_LIMIT)?;
        packet.check_len()?;
        let nfds = packet.nfds();
        let p = Fields { kind, bytes: packet.payload() };
        let frame = match kind {
            FrameKind::Online => Frame::Online,
            FrameKind::QueryServer => {
                use field::query_server::*;
                let address =
                    ListenAddress::from_wire(p.u8(FAMILY)?, p.tail(ADDRESS)?).map_err(|field| p.invalid(field))?;
                let socket_type = SocketType::from_u8(p.u8(SOCKET_TYPE)?).ok_or_else(|| p.invalid("socket_type"))?;
                let flags = ListenFlags::from_bits(p.u32(FLAGS)?).ok_or_else(|| p.invalid("flags"))?;
                let key = ListenKey {
                    address,
                    port: p.u16(PORT)?,
                    socket_type,
                    backlog: p.u32(BACKLOG)?,
                    flags,
                    index: p.u32(INDEX)?,
                };
                Frame::QueryServer { seq: p.u32(SEQ)?, key }
            }
            FrameKind::QueryServerReply => {
                use field::query_server_reply::*;
                Frame::QueryServerReply {
                    seq: p.u32(SEQ)?,
                    errno: p.i32(ERRNO)?,
                    port: p.u16(PORT)?,
                    listener_id: p.u32(LISTENER_ID)?,
                    listener_fd: nfds == 1,
                }
            }
            FrameKind::NewConnection => {
                use field::new_connection::*;
                let count = p.u8(COUNT)?;
                if count != nfds {
                    return Err(DecodeError::BadFdCount { kind, nfds });
                }
                Frame::NewConnection { listener_id: p.u32(LISTENER_ID)?, first_conn_seq: p.u64(FIRST_CONN_SEQ)?, count }
            }
            FrameKind::Ack => {
                use field::ack::*;
                let accepted = match p.u8(ACCEPTED)? {
                    0 => false,
                    1 => true,
                    _ => return Err(p.invalid("accepted")),
                };
                Frame::Ack { conn_seq: p.u64(CONN_SEQ)?, count: p.u32(COUNT)?, accepted }
            }
            FrameKind::Listening => {
                use field::listening::*;
                let address =
                    ListenAddress::from_wire(p.u8(FAMILY)?, p.tail(ADDRESS)?).map_err(|field| p.invalid(field))?;
                Frame::Listening { listener_id: p.u32(LISTENER_ID)?, address, port: p.u16(PORT)? }
            }
            FrameKind::Close => Frame::Close { listener_id: p.u32(field::close::LISTENER_ID)? },
            FrameKind::Disconnect => Frame::Disconnect,
            FrameKind::ExitedAfterDisconnect => Frame::ExitedAfterDisconnect,
            FrameKind::Load => Frame::Load { open_connections: p.u32(field::load::OPEN_CONNECTIONS)? },
            FrameKind::Heartbeat => {
                use field::heartbeat::*;
                let report = match p.bytes.len() {
                    LEN => None,
                    // Longer than `REPORT_LEN` was refused with the header.
                    REPORT_LEN => Some(WorkerReport {
                        open_connections: p.u32(OPEN_CONNECTIONS)?,
                        idle_us: p.u64(IDLE_US)?,
                        uptime_us: p.u64(UPTIME_US)?,
                        loop_count: p.u64(LOOP_COUNT)?,
                        events: p.u64(EVENTS)?,
                    }),
                    _ => return Err(p.too_short()),
                };
                Frame::Heartbeat { seq: p.u32(SEQ)?, report }
            }
            FrameKind::Message => Frame::Message { bytes: p.bytes, nfds },
            FrameKind::StoreGet => {
                Frame::StoreGet { req_id: p.u32(field::store_key::REQ_ID)?, key: p.tail(field::store_key::KEY)? }
            }
            FrameKind::StoreSet => {
                use field::store_set::*;
                let key_len = usize::try_from(p.u32(KEY_LEN)?).map_err(|_| p.too_short())?;
                let rest = p.tail(KEY)?;
                let (key, value) = rest.split_at_checked(key_len).ok_or_else(|| p.too_short())?;
                Frame::StoreSet { req_id: p.u32(REQ_ID)?, key, value }
            }
            FrameKind::StoreDelete => {
                Frame::StoreDelete { req_id: p.u32(field::store_key::REQ_ID)?, key: p.tail(field::store_key::KEY)? }
            }
            FrameKind::StoreReply => {
                use field::store_reply::*;
                let status = StoreStatus::from_u8(p.u8(STATUS)?).ok_or_else(|| p.invalid("status"))?;
                Frame::StoreReply { req_id: p.u32(REQ_ID)?, status, value: p.tail(VALUE)? }
            }
            FrameKind::StoreAdd => {
                use field::store_add::*;
                Frame::StoreAdd { req_id: p.u32(REQ_ID)?, delta: p.i64(DELTA)?, key: p.tail(KEY)? }
            }
            FrameKind::StoreCas => {
                use field::store_cas::*;
                let key_len = usize::try_from(p.u32(KEY_LEN)?).map_err(|_| p.too_short())?;
                let (key, rest) = p.tail(KEY)?.split_at_checked(key_len).ok_or_else(|| p.too_short())?;
                let (expected, value) = match p.u32(EXPECTED_LEN)? {
                    EXPECT_ABSENT => (None, rest),
                    n => {
                        let n = usize::try_from(n).map_err(|_| p.too_short())?;
                        let (e, v) = rest.split_at_checked(n).ok_or_else(|| p.too_short())?;
                        (Some(e), v)
                    }
                };
                Frame::StoreCas { req_id: p.u32(REQ_ID)?, key, expected, value }
            }
            FrameKind::StoreKeys => {
                use field::store_keys::*;
                let prefix_len = usize::try_from(p.u32(PREFIX_LEN)?).map_err(|_| p.too_short())?;
                let (prefix, after) = p.tail(PREFIX)?.split_at_checked(prefix_len).ok_or_else(|| p.too_short())?;
                Frame::StoreKeys { req_id: p.u32(REQ_ID)?, prefix, after }
            }
        };
        frame.validate()?;
        Ok(frame)
    }

    /// Parses the frame at the front of `bytes` and returns it with its
    /// length; `Truncated` if `bytes` ends inside it.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] if `bytes` ends inside the frame; otherwise as
    /// [`parse`](Frame::parse).
    pub fn parse_prefix(bytes: &'a [u8]) -> Result<(Frame<'a>, usize), DecodeError> {
        let packet = FramePacket::new_unchecked(bytes);
        packet.check_header(MAX_FRAME_LEN_LIMIT)?;
        let total = packet.total_len();
        let frame_bytes = bytes.get(..total).ok_or(DecodeError::Truncated { buffered: bytes.len() })?;
        Ok((Frame::parse(&FramePacket::new_unchecked(frame_bytes))?, total))
    }

    /// Writes the frame to the front of `out` and returns the bytes written
    /// ([`buffer_len`](Frame::buffer_len)). Allocates nothing.
    ///
    /// # Errors
    ///
    /// [`EmitError::Invalid`] for a frame [`validate`](Frame::validate) refuses;
    /// [`EmitError::TooLarge`] for a payload over `u32::MAX` bytes; [`EmitError::BufferTooSmall`]
    /// if `out` is shorter than [`buffer_len`](Frame::buffer_len). Nothing is written on error.
    ///
    /// # Examples
    ///
    /// ```
    /// use uvring_cluster::proto::Frame;
    ///
    /// let frame = Frame::Message { bytes: b"hello", nfds: 0 };
    /// let mut buf = [0u8; 64];
    /// let n = frame.emit(&mut buf)?;
    /// assert_eq!(n, frame.buffer_len()); // 8-byte header + 5 bytes
    /// let (back, used) = Frame::parse_prefix(&buf[..n])?;
    /// assert_eq!((back, used), (frame, n));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, EmitError> {
        self.validate()?;
        let payload_len = self.payload_len();
        let wire_len = u32::try_from(payload_len).map_err(|_| EmitError::TooLarge { payload_len })?;
        let total = HEADER_LEN.saturating_add(payload_len);
        let available = out.len();
        let out = out.get_mut(..total).ok_or(EmitError::BufferTooSmall { needed: total, available })?;
        let (header, p) =
            out.split_at_mut_checked(HEADER_LEN).ok_or(EmitError::BufferTooSmall { needed: total, available })?;
        let mut packet = FramePacket::new_unchecked(header);
        packet.set_version(VERSION);
        packet.set_kind(self.kind().as_u8());
        packet.set_nfds(self.nfds());
        packet.set_reserved(0);
        packet.set_payload_len(wire_len);
        match *self {
            Frame::Online | Frame::Disconnect | Frame::ExitedAfterDisconnect => {}
            Frame::QueryServer { seq, key } => {
                use field::query_server::*;
                put(p, SEQ.start, &seq.to_le_bytes());
                put(p, BACKLOG.start, &key.backlog.to_le_bytes());
                put(p, FLAGS.start, &key.flags.bits().to_le_bytes());
                put(p, INDEX.start, &key.index.to_le_bytes());
                put(p, PORT.start, &key.port.to_le_bytes());
                put(p, FAMILY, &[key.address.family()]);
                put(p, SOCKET_TYPE, &[key.socket_type as u8]);
                key.address.write(p, ADDRESS);
            }
            Frame::QueryServerReply { seq, errno, port, listener_id, .. } => {
                use field::query_server_reply::*;
                put(p, SEQ.start, &seq.to_le_bytes());
                put(p, ERRNO.start, &errno.to_le_bytes());
                put(p, LISTENER_ID.start, &listener_id.to_le_bytes());
                put(p, PORT.start, &port.to_le_bytes());
            }
            Frame::NewConnection { listener_id, first_conn_seq, count } => {
                use field::new_connection::*;
                put(p, LISTENER_ID.start, &listener_id.to_le_bytes());
                put(p, FIRST_CONN_SEQ.start, &first_conn_seq.to_le_bytes());
                put(p, COUNT, &[count]);
            }
            Frame::Ack { conn_seq, count, accepted } => {
                use field::ack::*;
                put(p, CONN_SEQ.start, &conn_seq.to_le_bytes());
                put(p, COUNT.start, &count.to_le_bytes());
                put(p, ACCEPTED, &[u8::from(accepted)]);
            }
            Frame::Listening { listener_id, address, port } => {
                use field::listening::*;
                put(p, LISTENER_ID.start, &listener_id.to_le_bytes());
                put(p, PORT.start, &port.to_le_bytes());
                put(p, FAMILY, &[address.family()]);
                address.write(p, ADDRESS);
            }
            Frame::Close { listener_id } => {
                put(p, field::close::LISTENER_ID.start, &listener_id.to_le_bytes());
            }
            Frame::Load { open_connections } => {
                put(p, field::load::OPEN_CONNECTIONS.start, &open_connections.to_le_bytes());
            }
            Frame::Heartbeat { seq, report } => {
                use field::heartbeat::*;
                put(p, SEQ.start, &seq.to_le_bytes());
                if let Some(r) = report {
                    put(p, OPEN_CONNECTIONS.start, &r.open_connections.to_le_bytes());
                    put(p, IDLE_US.start, &r.idle_us.to_le_bytes());
                    put(p, UPTIME_US.start, &r.uptime_us.to_le_bytes());
                    put(p, LOOP_COUNT.start, &r.loop_count.to_le_bytes());
                    put(p, EVENTS.start, &r.events.to_le_bytes());
                }
            }
            Frame::Message { bytes, .. } => put(p, 0, bytes),
            Frame::StoreGet { req_id, key } | Frame::StoreDelete { req_id, key } => {
                put(p, field::store_key::REQ_ID.start, &req_id.to_le_bytes());
                put(p, field::store_key::KEY, key);
            }
            Frame::StoreSet { req_id, key, value } => {
                use field::store_set::*;
                // The key is shorter than the payload, whose length fits a u32.
                let key_len = u32::try_from(key.len()).unwrap_or(u32::MAX);
                put(p, REQ_ID.start, &req_id.to_le_bytes());
                put(p, KEY_LEN.start, &key_len.to_le_bytes());
                put(p, KEY, key);
                put(p, KEY + key.len(), value);
            }
            Frame::StoreReply { req_id, status, value } => {
                use field::store_reply::*;
                put(p, REQ_ID.start, &req_id.to_le_bytes());
                put(p, STATUS, &[status as u8]);
                put(p, VALUE, value);
            }
            Frame::StoreAdd { req_id, key, delta } => {
                use field::store_add::*;
                put(p, REQ_ID.start, &req_id.to_le_bytes());
                put(p, DELTA.start, &delta.to_le_bytes());
                put(p, KEY, key);
            }
            Frame::StoreCas { req_id, key, expected, value } => {
                use field::store_cas::*;
                // Each part is shorter than the payload, whose length fits a
                // u32 below EXPECT_ABSENT (the header takes 12 bytes of it).
                let key_len = u32::try_from(key.len()).unwrap_or(u32::MAX);
                let expected_len = expected.map_or(EXPECT_ABSENT, |e| u32::try_from(e.len()).unwrap_or(u32::MAX));
                let expected = expected.unwrap_or(&[]);
                put(p, REQ_ID.start, &req_id.to_le_bytes());
                put(p, KEY_LEN.start, &key_len.to_le_bytes());
                put(p, EXPECTED_LEN.start, &expected_len.to_le_bytes());
                put(p, KEY, key);
                put(p, KEY + key.len(), expected);
                put(p, KEY + key.len() + expected.len(), value);
            }
            Frame::StoreKeys { req_id, prefix, after } => {
                use field::store_keys::*;
                let prefix_len = u32::try_from(prefix.len()).unwrap_or(u32::MAX);
                put(p, REQ_ID.start, &req_id.to_le_bytes());
                put(p, PREFIX_LEN.start, &prefix_len.to_le_bytes());
                put(p, PREFIX, prefix);
                put(p, PREFIX + prefix.len(), after);
            }
        }
        Ok(total)
    }

    /// Appends the frame to `out` and returns the bytes appended. Allocates
    /// only when `out` lacks the capacity, so a reused `Vec` stops
    /// allocating once it has grown to the largest frame. On error `out` is
    /// left as it was.
    ///
    /// # Errors
    ///
    /// As [`emit`](Frame::emit), except `BufferTooSmall` (the `Vec` grows); `out` is left as it
    /// was.
    pub fn emit_to_vec(&self, out: &mut Vec<u8>) -> Result<usize, EmitError> {
        self.validate()?;
        let payload_len = self.payload_len();
        if u32::try_from(payload_len).is_err() {
            return Err(EmitError::TooLarge { payload_len });
        }
        let start = out.len();
        out.resize(start.saturating_add(self.buffer_len()), 0);
        let result = match out.get_mut(start..) {
            Some(tail) => self.emit(tail),
            None => Err(EmitError::BufferTooSmall { needed: self.buffer_len(), available: 0 }),
        };
        if result.is_err() {
            out.truncate(start);
        }
        result
    }
}

// ---------------------------------------------------------------------------
// File descriptors
// ---------------------------------------------------------------------------

/// The fds that arrived with one frame, in order (at most
/// [`MAX_FDS_PER_FRAME`]). Fds not taken are closed on drop.
#[derive(Debug, Default)]
pub struct FrameFds {
    slots: [Option<OwnedFd>; MAX_FDS_PER_FRAME],
    len: usize,
}

impl FrameFds {
    /// An empty set.
    pub const fn new() -> FrameFds {
        FrameFds { slots: [const { None }; MAX_FDS_PER_FRAME], len: 0 }
    }

    /// Appends an fd; gives it back if the set is full.
    ///
    /// # Errors
    ///
    /// The fd itself, unchanged, when the set already holds [`MAX_FDS_PER_FRAME`] fds.
    pub fn push(&mut self, fd: OwnedFd) -> Result<(), OwnedFd> {
        match self.slots.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(fd);
                self.len += 1;
                Ok(())
            }
            None => Err(fd),
        }
    }

    /// How many fds the frame carried (taken ones included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the frame carried no fd.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Borrows fd `i`, if it is there and not taken.
    pub fn get(&self, i: usize) -> Option<BorrowedFd<'_>> {
        self.slots.get(i)?.as_ref().map(|fd| fd.as_fd())
    }

    /// Takes ownership of fd `i`; `None` if out of range or already taken.
    pub fn take(&mut self, i: usize) -> Option<OwnedFd> {
        self.slots.get_mut(i)?.take()
    }

    /// Takes the first fd not yet taken.
    pub fn take_next(&mut self) -> Option<OwnedFd> {
        self.slots.iter_mut().find_map(Option::take)
    }

    /// Closes every fd not taken; returns how many it closed.
    pub fn close_all(&mut self) -> usize {
        self.slots.iter_mut().filter_map(Option::take).count()
    }
}

impl IntoIterator for FrameFds {
    type Item = OwnedFd;
    type IntoIter = FrameFdsIntoIter;

    /// Yields the fds not yet taken, in order.
    fn into_iter(self) -> FrameFdsIntoIter {
        FrameFdsIntoIter(self)
    }
}

/// Owning iterator over the fds of a [`FrameFds`] not yet taken.
#[derive(Debug)]
pub struct FrameFdsIntoIter(FrameFds);

impl Iterator for FrameFdsIntoIter {
    type Item = OwnedFd;

    fn next(&mut self) -> Option<OwnedFd> {
        self.0.take_next()
    }
}

/// Fds received ahead of the frames that claim them: a fixed ring.
#[derive(Debug)]
struct FdQueue {
    slots: [Option<OwnedFd>; FD_QUEUE_CAPACITY],
    head: usize,
    len: usize,
}

impl FdQueue {
    const fn new() -> FdQueue {
        FdQueue { slots: [const { None }; FD_QUEUE_CAPACITY], head: 0, len: 0 }
    }

    fn push(&mut self, fd: OwnedFd) -> Result<(), OwnedFd> {
        if self.len >= FD_QUEUE_CAPACITY {
            return Err(fd);
        }
        match self.slots.get_mut((self.head + self.len) % FD_QUEUE_CAPACITY) {
            Some(slot) => {
                *slot = Some(fd);
                self.len += 1;
                Ok(())
            }
            None => Err(fd),
        }
    }

    fn pop(&mut self) -> Option<OwnedFd> {
        if self.len == 0 {
            return None;
        }
        let fd = self.slots.get_mut(self.head)?.take();
        self.head = (self.head + 1) % FD_QUEUE_CAPACITY;
        self.len -= 1;
        fd
    }

    fn clear(&mut self) -> usize {
        self.head = 0;
        self.len = 0;
        self.slots.iter_mut().filter_map(Option::take).count()
    }
}

// ---------------------------------------------------------------------------
// Decoder
// ---------------------------------------------------------------------------

/// A frame taken from a [`FrameDecoder`], with the fds that came with it.
#[derive(Debug)]
pub struct Decoded<'a> {
    /// The frame; its byte fields borrow from the decoder's buffer.
    pub frame: Frame<'a>,
    /// Exactly `frame.nfds()` fds; those not taken close when this drops.
    pub fds: FrameFds,
}

/// Below this much free tail space, the decoder moves buffered bytes to
/// the front so reads stay large (and the move stays rare).
const MIN_READ_SPACE: usize = 4096;

/// Incremental, bounded, allocation-free frame decoder.
///
/// Bytes go in through [`buffer_mut`](FrameDecoder::buffer_mut) +
/// [`commit`](FrameDecoder::commit) (read straight into it) or
/// [`feed`](FrameDecoder::feed) (copy), fds through
/// [`push_fd`](FrameDecoder::push_fd), and frames come out of
/// [`next_frame`](FrameDecoder::next_frame). The buffer is allocated once,
/// at construction, with room for one maximal frame: drain `next_frame`
/// until it returns `Ok(None)` and `buffer_mut` always has space again.
///
/// Any split of the byte stream yields the same frames. The first error
/// poisons the decoder: every later call returns that error, and all queued
/// fds are closed.
///
/// # Examples
///
/// Two frames that arrive split at an arbitrary byte:
///
/// ```
/// use uvring_cluster::proto::{Frame, FrameDecoder};
///
/// let mut wire = Vec::new();
/// Frame::Heartbeat { seq: 7, report: None }.emit_to_vec(&mut wire)?;
/// Frame::Message { bytes: b"hello", nfds: 0 }.emit_to_vec(&mut wire)?;
///
/// let mut decoder = FrameDecoder::new();
/// let (a, b) = wire.split_at(5);
/// assert_eq!(decoder.feed(a), a.len());
/// assert!(decoder.next_frame()?.is_none()); // not a whole frame yet
/// decoder.feed(b);
/// let first = decoder.next_frame()?.expect("a frame");
/// assert_eq!(first.frame, Frame::Heartbeat { seq: 7, report: None });
/// drop(first); // a frame borrows the decoder's buffer
/// let second = decoder.next_frame()?.expect("a frame");
/// assert_eq!(second.frame, Frame::Message { bytes: b"hello", nfds: 0 });
/// assert!(second.fds.is_empty());
/// drop(second);
/// assert!(decoder.next_frame()?.is_none());
/// decoder.finish()?; // the stream may end here: between frames, no fd left
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct FrameDecoder {
    buf: Box<[u8]>,
    /// Buffered, undecoded bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    fds: FdQueue,
    error: Option<DecodeError>,
    /// Stream offset of `buf[start]`: bytes taken as frames so far.
    consumed: u64,
    /// Stream offsets of bytes whose fds the kernel dropped
    /// ([`note_fds_lost`](FrameDecoder::note_fds_lost)), and how many of
    /// the queued fds arrived before them (those still belong to frames).
    lost: Option<(Range<u64>, usize)>,
}

impl fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("max_frame_len", &self.buf.len())
            .field("buffered", &self.buffered_len())
            .field("queued_fds", &self.fds.len)
            .field("error", &self.error)
            .finish()
    }
}

impl Default for FrameDecoder {
    fn default() -> FrameDecoder {
        FrameDecoder::new()
    }
}

impl FrameDecoder {
    /// A decoder for frames up to [`DEFAULT_MAX_FRAME_LEN`] bytes.
    pub fn new() -> FrameDecoder {
        FrameDecoder::with_max_frame_len(DEFAULT_MAX_FRAME_LEN)
    }

    /// A decoder for frames up to `max_frame_len` bytes, header included
    /// (clamped to `HEADER_LEN..=MAX_FRAME_LEN_LIMIT`). Allocates
    /// `max_frame_len` bytes, once.
    pub fn with_max_frame_len(max_frame_len: usize) -> FrameDecoder {
        let cap = max_frame_len.clamp(HEADER_LEN, MAX_FRAME_LEN_LIMIT);
        FrameDecoder {
            buf: vec![0; cap].into_boxed_slice(),
            start: 0,
            end: 0,
            fds: FdQueue::new(),
            error: None,
            consumed: 0,
            lost: None,
        }
    }

    /// Says that the fds sent with the next `chunk_len` bytes to be fed were
    /// lost (the receiver's `recvmsg` reported `MSG_CTRUNC`: the receiving
    /// process is at its fd limit, or the control buffer was too small).
    /// Call before feeding those bytes. A frame that starts in them is then
    /// decoded with the fds that did arrive for it (none, usually): its
    /// [`FrameFds`] has empty slots where fds are missing, instead of the
    /// decoder failing with [`DecodeError::MissingFds`]. The receiver can
    /// refuse what it did not get rather than drop the channel.
    pub fn note_fds_lost(&mut self, chunk_len: usize) {
        if self.error.is_some() {
            return;
        }
        let from = self.consumed.saturating_add(self.buffered_len() as u64);
        let to = from.saturating_add(chunk_len as u64);
        // Frames starting in an earlier lost range may still be incomplete:
        // the range grows to cover both.
        let start = match &self.lost {
            Some((r, _)) if r.end >= self.consumed => r.start.min(from),
            _ => from,
        };
        self.lost = Some((start..to, self.fds.len));
    }

    /// The longest frame accepted, header included.
    pub fn max_frame_len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered_len(&self) -> usize {
        self.end - self.start
    }

    /// Fds received and not yet claimed by a frame.
    pub fn queued_fds(&self) -> usize {
        self.fds.len
    }

    /// The error that poisoned the decoder, if any.
    pub fn error(&self) -> Option<DecodeError> {
        self.error
    }

    /// Free space to read bytes into; report how many arrived with
    /// [`commit`](FrameDecoder::commit). Empty once the decoder is poisoned,
    /// or (only) while a complete frame waits in a full buffer.
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        if self.error.is_some() {
            return &mut [];
        }
        self.make_room();
        self.buf.get_mut(self.end..).unwrap_or(&mut [])
    }

    /// Marks `n` bytes of [`buffer_mut`](FrameDecoder::buffer_mut) as
    /// received (clamped to the space there was).
    pub fn commit(&mut self, n: usize) {
        if self.error.is_none() {
            self.end = self.end.saturating_add(n).min(self.buf.len());
        }
    }

    /// Copies as much of `bytes` as fits and returns how many it took. Less
    /// than `bytes.len()` means the buffer is full: take frames, then feed
    /// the rest. Returns 0 once poisoned.
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        let space = self.buffer_mut();
        let n = space.len().min(bytes.len());
        if let (Some(dst), Some(src)) = (space.get_mut(..n), bytes.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.commit(n);
        n
    }

    /// Queues an fd received with the bytes. Push a `recvmsg`'s fds before
    /// committing its bytes. A full queue is a protocol error: the fd is
    /// closed and the decoder poisoned. Once poisoned, the fd is closed and
    /// the error returned.
    ///
    /// # Errors
    ///
    /// [`DecodeError::FdQueueOverflow`] when [`FD_QUEUE_CAPACITY`] fds wait for their frames (the
    /// fd is closed and the decoder poisoned); the poisoning error again, with the fd closed, once
    /// the decoder is poisoned.
    pub fn push_fd(&mut self, fd: OwnedFd) -> Result<(), DecodeError> {
        if let Some(error) = self.error {
            drop(fd);
            return Err(error);
        }
        match self.fds.push(fd) {
            Ok(()) => Ok(()),
            Err(fd) => {
                drop(fd);
                Err(poison(
                    &mut self.error,
                    &mut self.fds,
                    DecodeError::FdQueueOverflow { capacity: FD_QUEUE_CAPACITY },
                ))
            }
        }
    }

    /// The next complete frame and its fds, `Ok(None)` if more bytes are
    /// needed, or the error that poisons the decoder. Allocates nothing.
    ///
    /// # Errors
    ///
    /// Any error of [`Frame::parse`], and [`DecodeError::FrameTooLong`] against the decoder's own
    /// maximum; [`DecodeError::MissingFds`] for a complete frame that announces more fds than were
    /// pushed. Each poisons the decoder (its queued fds are closed), and every later call returns
    /// the same error.
    pub fn next_frame(&mut self) -> Result<Option<Decoded<'_>>, DecodeError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        // Borrow `buf` alone, so that the frame it yields can outlive the
        // updates to `start`, `fds` and `error` below.
        let buffered: &[u8] = self.buf.get(self.start..self.end).unwrap_or(&[]);
        if buffered.len() < HEADER_LEN {
            return Ok(None);
        }
        let packet = FramePacket::new_unchecked(buffered);
        let kind = match packet.check_header(self.buf.len()) {
            Ok(kind) => kind,
            Err(e) => return Err(poison(&mut self.error, &mut self.fds, e)),
        };
        let total = packet.total_len();
        let Some(frame_bytes) = buffered.get(..total) else {
            return Ok(None);
        };
        let frame = match Frame::parse(&FramePacket::new_unchecked(frame_bytes)) {
            Ok(frame) => frame,
            Err(e) => return Err(poison(&mut self.error, &mut self.fds, e)),
        };
        let nfds = frame.nfds();
        // A frame starting where fds were lost takes only fds that arrived
        // before the loss (later ones belong to later frames).
        let lost = self.lost.as_ref().filter(|(r, _)| r.contains(&self.consumed)).map(|&(_, before)| before);
        let take = match lost {
            Some(before) => usize::from(nfds).min(before).min(self.fds.len),
            None if self.fds.len < usize::from(nfds) => {
                let e = DecodeError::MissingFds { kind, nfds, queued: self.fds.len };
                return Err(poison(&mut self.error, &mut self.fds, e));
            }
            None => usize::from(nfds),
        };
        let mut fds = FrameFds::new();
        for _ in 0..take {
            if let Some(fd) = self.fds.pop() {
                // `nfds` <= MAX_FDS_PER_FRAME was checked with the header.
                let _ = fds.push(fd);
            }
        }
        // Missing fds are empty slots: `len` is still the frame's count.
        fds.len = usize::from(nfds);
        if let Some((r, before)) = &mut self.lost {
            *before = before.saturating_sub(take);
            if self.consumed.saturating_add(total as u64) >= r.end {
                self.lost = None;
            }
        }
        self.start += total;
        self.consumed = self.consumed.saturating_add(total as u64);
        Ok(Some(Decoded { frame, fds }))
    }

    /// Says the stream has ended: `Ok` if it ended between frames with no
    /// fd left over (call after `next_frame` returned `Ok(None)`).
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] if the stream ended inside a frame; [`DecodeError::UnclaimedFds`]
    /// if fds are left that no frame took; the poisoning error if the decoder was already poisoned.
    pub fn finish(&mut self) -> Result<(), DecodeError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let buffered = self.buffered_len();
        let e = if buffered > 0 {
            DecodeError::Truncated { buffered }
        } else if self.fds.len > 0 {
            DecodeError::UnclaimedFds { count: self.fds.len }
        } else {
            return Ok(());
        };
        Err(poison(&mut self.error, &mut self.fds, e))
    }

    /// Closes every queued fd and returns how many it closed.
    pub fn drain_fds(&mut self) -> usize {
        self.fds.clear()
    }

    /// Moves the buffered bytes to the front when the current frame would
    /// not fit behind them, or the free tail gets too short for a good read.
    /// Each byte moves at most once: after a move `start` is 0 until a frame
    /// is consumed.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            return;
        }
        if self.start == 0 {
            return;
        }
        let cap = self.buf.len();
        let buffered = self.end - self.start;
        let frame_len = match self.buf.get(self.start..self.end) {
            Some(bytes) if bytes.len() >= HEADER_LEN => FramePacket::new_unchecked(bytes).total_len().min(cap),
            _ => HEADER_LEN,
        };
        let spare = cap - self.end;
        if spare < frame_len.saturating_sub(buffered) || spare < MIN_READ_SPACE.min(cap / 2) {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = buffered;
        }
    }
}

/// Records `error`, closes every queued fd, and returns the error.
fn poison(slot: &mut Option<DecodeError>, fds: &mut FdQueue, error: DecodeError) -> DecodeError {
    *slot = Some(error);
    fds.clear();
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{ErrorKind, Read};
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixStream;

    // -- helpers ------------------------------------------------------------

    /// Deterministic xorshift64* generator, so every failure replays.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// Uniform-ish in `0..n` (n > 0).
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn u8(&mut self) -> u8 {
            self.next() as u8
        }
        fn u16(&mut self) -> u16 {
            self.next() as u16
        }
        fn u32(&mut self) -> u32 {
            self.next() as u32
        }
    }

    /// The read end of a socket pair whose other end is the tracked fd:
    /// it reads EOF once every copy of the tracked fd is closed.
    struct Probe {
        peer: UnixStream,
        ino: u64,
    }

    impl Probe {
        fn is_closed(&self) -> bool {
            match (&self.peer).read(&mut [0u8; 1]) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                Err(e) => panic!("probe read: {e}"),
            }
        }
    }

    fn ino(fd: &OwnedFd) -> u64 {
        File::from(fd.try_clone().unwrap()).metadata().unwrap().ino()
    }

    /// A fresh fd (one end of a socket pair, unique inode) and its probe.
    fn tracked_fd() -> (OwnedFd, Probe) {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let fd = OwnedFd::from(a);
        let ino = ino(&fd);
        (fd, Probe { peer: b, ino })
    }

    /// How many of this process's open fds are sockets with one of `inos`.
    /// Other test threads open fds too, but never these sockets.
    fn open_fds_with_ino(inos: &[u64]) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| inos.iter().any(|i| target.to_str() == Some(format!("socket:[{i}]").as_str())))
            .count()
    }

    fn emit_vec(frame: &Frame<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        frame.emit_to_vec(&mut out).unwrap();
        out
    }

    /// Feeds all of `bytes` to a fresh decoder (with `nfds` throwaway fds
    /// queued first) and returns the first error.
    fn decode_err(bytes: &[u8], nfds: usize) -> DecodeError {
        let mut dec = FrameDecoder::new();
        for _ in 0..nfds {
            dec.push_fd(tracked_fd().0).unwrap();
        }
        assert_eq!(dec.feed(bytes), bytes.len());
        loop {
            match dec.next_frame() {
                Ok(Some(_)) => continue,
                Ok(None) => return dec.finish().unwrap_err(),
                Err(e) => return e,
            }
        }
    }

    /// Issue 11's listen forms: an fd number (TCP only, at most
    /// `i32::MAX`) and UDP on IP addresses.
    #[test]
    fn query_server_fd_and_udp() {
        let key = ListenKey {
            address: ListenAddress::Fd(7),
            port: 0,
            socket_type: SocketType::Tcp,
            backlog: 0,
            flags: ListenFlags::empty(),
            index: 0,
        };
        let frame = Frame::QueryServer { seq: 5, key };
        let bytes = emit_vec(&frame);
        assert_eq!(
            bytes,
            [
                1, 0x02, 0, 0, 24, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, FAMILY_FD, 1, 7, 0,
                0, 0
            ]
        );
        assert_eq!(Frame::parse_prefix(&bytes), Ok((frame, bytes.len())));
        let udp = ListenKey {
            address: ListenAddress::V6(Ipv6Addr::LOCALHOST),
            socket_type: SocketType::Udp,
            flags: ListenFlags::REUSE_ADDR,
            ..key
        };
        let frame = Frame::QueryServer { seq: 6, key: udp };
        let bytes = emit_vec(&frame);
        assert_eq!(Frame::parse_prefix(&bytes), Ok((frame, bytes.len())));
        // Not encodable: an fd above i32::MAX, a pipe or UDP on an fd.
        let qs = FrameKind::QueryServer;
        let big = Frame::QueryServer { seq: 0, key: ListenKey { address: ListenAddress::Fd(u32::MAX), ..key } };
        assert_eq!(big.validate(), Err(InvalidFrame { kind: qs, field: "address" }));
        for socket_type in [SocketType::Pipe, SocketType::Udp] {
            let f = Frame::QueryServer { seq: 0, key: ListenKey { socket_type, ..key } };
            assert_eq!(f.validate(), Err(InvalidFrame { kind: qs, field: "socket_type" }));
        }
        let mut b = emit_vec(&Frame::QueryServer { seq: 5, key });
        b[HEADER_LEN + field::query_server::ADDRESS + 3] = 0x80;
        assert_eq!(decode_err(&b, 0), DecodeError::Invalid(InvalidFrame { kind: qs, field: "address" }));
    }

    // -- golden bytes --------------------------------------------------------

    macro_rules! golden {
        ($($parse:ident, $emit:ident: $frame:expr => $bytes:expr;)*) => {
            $(
                #[test]
                fn $parse() {
                    let bytes: &[u8] = &$bytes;
                    let packet = FramePacket::new_checked(bytes).unwrap();
                    assert_eq!(packet.version(), VERSION);
                    assert_eq!(usize::try_from(packet.payload_len()).unwrap() + HEADER_LEN, bytes.len());
                    assert_eq!(Frame::parse(&packet), Ok($frame));
                    assert_eq!(Frame::parse_prefix(bytes), Ok(($frame, bytes.len())));
                }

                #[test]
                fn $emit() {
                    let frame: Frame<'_> = $frame;
                    let mut buf = [0xaau8; 64];
                    let n = frame.emit(&mut buf).unwrap();
                    assert_eq!(&buf[..n], &$bytes[..]);
                    assert_eq!(frame.buffer_len(), n);
                    assert!(buf[n..].iter().all(|&b| b == 0xaa), "emit wrote past its frame");
                }
            )*

            const GOLDEN: &[(Frame<'static>, &[u8])] = &[$(($frame, &$bytes)),*];
        };
    }

    golden! {
        test_parse_online, test_emit_online:
            Frame::Online => [1, 0x01, 0, 0, 0, 0, 0, 0];
        test_parse_query_server_v4, test_emit_query_server_v4:
            Frame::QueryServer {
                seq: 7,
                key: ListenKey {
                    address: ListenAddress::V4(Ipv4Addr::new(127, 0, 0, 1)),
                    port: 8080,
                    socket_type: SocketType::Tcp,
                    backlog: 511,
                    flags: ListenFlags::REUSE_PORT,
                    index: 3,
                },
            } => [1, 0x02, 0, 0, 24, 0, 0, 0,
                  7, 0, 0, 0, 0xff, 0x01, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0,
                  0x90, 0x1f, 4, 1, 127, 0, 0, 1];
        test_parse_query_server_unix, test_emit_query_server_unix:
            Frame::QueryServer {
                seq: 8,
                key: ListenKey {
                    address: ListenAddress::Unix(b"/tmp/s"),
                    port: 0,
                    socket_type: SocketType::Pipe,
                    backlog: 128,
                    flags: ListenFlags::EXCLUSIVE,
                    index: 0,
                },
            } => [1, 0x02, 0, 0, 26, 0, 0, 0,
                  8, 0, 0, 0, 128, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0,
                  0, 0, 1, 2, b'/', b't', b'm', b'p', b'/', b's'];
        test_parse_query_server_reply_fd, test_emit_query_server_reply_fd:
            Frame::QueryServerReply { seq: 7, errno: 0, port: 8080, listener_id: 42, listener_fd: true }
            => [1, 0x03, 1, 0, 14, 0, 0, 0,
                7, 0, 0, 0, 0, 0, 0, 0, 42, 0, 0, 0, 0x90, 0x1f];
        test_parse_query_server_reply_error, test_emit_query_server_reply_error:
            Frame::QueryServerReply { seq: 9, errno: 98, port: 0, listener_id: 0, listener_fd: false }
            => [1, 0x03, 0, 0, 14, 0, 0, 0,
                9, 0, 0, 0, 98, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        test_parse_new_connection, test_emit_new_connection:
            Frame::NewConnection { listener_id: 42, first_conn_seq: 0x0102_0304_0506_0708, count: 2 }
            => [1, 0x04, 2, 0, 13, 0, 0, 0,
                42, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1, 2];
        test_parse_ack, test_emit_ack:
            Frame::Ack { conn_seq: 1000, count: 2, accepted: true }
            => [1, 0x05, 0, 0, 13, 0, 0, 0,
                0xe8, 0x03, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1];
        test_parse_listening_v6, test_emit_listening_v6:
            Frame::Listening { listener_id: 42, address: ListenAddress::V6(Ipv6Addr::LOCALHOST), port: 443 }
            => [1, 0x06, 0, 0, 23, 0, 0, 0,
                42, 0, 0, 0, 0xbb, 0x01, 6,
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        test_parse_close, test_emit_close:
            Frame::Close { listener_id: 42 } => [1, 0x07, 0, 0, 4, 0, 0, 0, 42, 0, 0, 0];
        test_parse_disconnect, test_emit_disconnect:
            Frame::Disconnect => [1, 0x08, 0, 0, 0, 0, 0, 0];
        test_parse_exited_after_disconnect, test_emit_exited_after_disconnect:
            Frame::ExitedAfterDisconnect => [1, 0x09, 0, 0, 0, 0, 0, 0];
        test_parse_load, test_emit_load:
            Frame::Load { open_connections: 1234 } => [1, 0x0a, 0, 0, 4, 0, 0, 0, 0xd2, 0x04, 0, 0];
        test_parse_message, test_emit_message:
            Frame::Message { bytes: b"hi", nfds: 1 } => [1, 0x0b, 1, 0, 2, 0, 0, 0, b'h', b'i'];
        test_parse_store_get, test_emit_store_get:
            Frame::StoreGet { req_id: 5, key: b"k" } => [1, 0x0c, 0, 0, 5, 0, 0, 0, 5, 0, 0, 0, b'k'];
        test_parse_store_set, test_emit_store_set:
            Frame::StoreSet { req_id: 6, key: b"k", value: b"vv" }
            => [1, 0x0d, 0, 0, 11, 0, 0, 0, 6, 0, 0, 0, 1, 0, 0, 0, b'k', b'v', b'v'];
        test_parse_store_delete, test_emit_store_delete:
            Frame::StoreDelete { req_id: 7, key: b"k" } => [1, 0x0e, 0, 0, 5, 0, 0, 0, 7, 0, 0, 0, b'k'];
        test_parse_store_reply, test_emit_store_reply:
            Frame::StoreReply { req_id: 8, status: StoreStatus::Found, value: b"vv" }
            => [1, 0x0f, 0, 0, 7, 0, 0, 0, 8, 0, 0, 0, 1, b'v', b'v'];
        test_parse_heartbeat, test_emit_heartbeat:
            Frame::Heartbeat { seq: 0x0102_0304, report: None } => [1, 0x10, 0, 0, 4, 0, 0, 0, 4, 3, 2, 1];
        test_parse_heartbeat_report, test_emit_heartbeat_report:
            Frame::Heartbeat {
                seq: 7,
                report: Some(WorkerReport {
                    open_connections: 3,
                    idle_us: 0x0102,
                    uptime_us: 0x0304_0506,
                    loop_count: 9,
                    events: 0x01_0000_0000,
                }),
            }
            => [1, 0x10, 0, 0, 40, 0, 0, 0,
                7, 0, 0, 0, 3, 0, 0, 0,
                2, 1, 0, 0, 0, 0, 0, 0,
                6, 5, 4, 3, 0, 0, 0, 0,
                9, 0, 0, 0, 0, 0, 0, 0,
                0, 0, 0, 0, 1, 0, 0, 0];
        test_parse_store_add, test_emit_store_add:
            Frame::StoreAdd { req_id: 9, key: b"n", delta: -2 }
            => [1, 0x11, 0, 0, 13, 0, 0, 0, 9, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, b'n'];
        test_parse_store_cas, test_emit_store_cas:
            Frame::StoreCas { req_id: 10, key: b"k", expected: Some(b"a"), value: b"bc" }
            => [1, 0x12, 0, 0, 16, 0, 0, 0, 10, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, b'k', b'a', b'b', b'c'];
        test_parse_store_cas_absent, test_emit_store_cas_absent:
            Frame::StoreCas { req_id: 11, key: b"k", expected: None, value: b"v" }
            => [1, 0x12, 0, 0, 14, 0, 0, 0, 11, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, b'k', b'v'];
        test_parse_store_keys, test_emit_store_keys:
            Frame::StoreKeys { req_id: 12, prefix: b"w:", after: b"w:3" }
            => [1, 0x13, 0, 0, 13, 0, 0, 0, 12, 0, 0, 0, 2, 0, 0, 0, b'w', b':', b'w', b':', b'3'];
        test_parse_store_reply_partial, test_emit_store_reply_partial:
            Frame::StoreReply { req_id: 12, status: StoreStatus::Partial, value: &[1, 0, 0, 0, b'x'] }
            => [1, 0x0f, 0, 0, 10, 0, 0, 0, 12, 0, 0, 0, 5, 1, 0, 0, 0, b'x'];
    }

    #[test]
    fn golden_covers_every_kind() {
        for kind in FrameKind::ALL {
            assert!(GOLDEN.iter().any(|(f, _)| f.kind() == kind), "{kind:?} has no golden bytes");
            assert_eq!(FrameKind::from_u8(kind.as_u8()), Some(kind));
        }
    }

    #[test]
    fn test_impossible_len() {
        // Shorter than a header: every accessor still answers, nothing panics.
        for len in 0..HEADER_LEN {
            let bytes = &[1u8, 1, 0, 0, 0, 0, 0][..len.min(7)];
            let packet = FramePacket::new_unchecked(bytes);
            assert_eq!(packet.check_len(), Err(DecodeError::Truncated { buffered: bytes.len() }));
            let _ = (packet.version(), packet.kind(), packet.nfds(), packet.payload_len());
            assert_eq!(packet.payload(), b"");
            assert!(Frame::parse(&packet).is_err());
        }
        // The header announces more payload than the buffer holds.
        let bytes = [1u8, 0x07, 0, 0, 4, 0, 0, 0, 42, 0];
        assert_eq!(FramePacket::new_checked(&bytes[..]), Err(DecodeError::Truncated { buffered: 10 }));
        assert_eq!(FramePacket::new_unchecked(&bytes[..]).payload(), &[42, 0]);
        assert_eq!(Frame::parse_prefix(&bytes), Err(DecodeError::Truncated { buffered: 10 }));
        // A u32::MAX payload length announces a frame no buffer holds.
        let bytes = [1u8, 0x0b, 0, 0, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(FramePacket::new_unchecked(&bytes[..]).total_len(), HEADER_LEN + u32::MAX as usize);
        assert!(FramePacket::new_checked(&bytes[..]).is_err());
        // Fixed-size payloads one byte off either way.
        for (kind, len) in [
            (FrameKind::Close, 3),
            (FrameKind::Load, 5),
            (FrameKind::Heartbeat, 3),
            (FrameKind::Heartbeat, 5),
            (FrameKind::Heartbeat, 39),
            (FrameKind::Heartbeat, 41),
            (FrameKind::Ack, 12),
            (FrameKind::NewConnection, 14),
            (FrameKind::QueryServerReply, 13),
            (FrameKind::QueryServer, 20),
            (FrameKind::Listening, 7),
            (FrameKind::StoreSet, 7),
            (FrameKind::StoreReply, 4),
            (FrameKind::StoreAdd, 11),
            (FrameKind::StoreCas, 11),
            (FrameKind::StoreKeys, 7),
        ] {
            let mut bytes = vec![1u8, kind.as_u8(), 0, 0, len as u8, 0, 0, 0];
            bytes.resize(HEADER_LEN + len, 0);
            let err = Frame::parse_prefix(&bytes).unwrap_err();
            assert!(
                matches!(err, DecodeError::PayloadTooShort { .. } | DecodeError::PayloadTooLong { .. }),
                "{kind:?} with {len} bytes: {err:?}"
            );
        }
    }

    #[test]
    fn packet_setters_write_the_header() {
        let mut buf = [0u8; 10];
        let mut packet = FramePacket::new_unchecked(&mut buf[..]);
        packet.set_version(VERSION);
        packet.set_kind(FrameKind::Message.as_u8());
        packet.set_nfds(0);
        packet.set_reserved(0);
        packet.set_payload_len(2);
        packet.payload_mut().copy_from_slice(b"ok");
        assert_eq!(packet.check_len(), Ok(()));
        assert_eq!(buf, [1, 0x0b, 0, 0, 2, 0, 0, 0, b'o', b'k']);
        // Setters on a short buffer drop what does not fit.
        let mut short = [0u8; 3];
        let mut packet = FramePacket::new_unchecked(&mut short[..]);
        packet.set_payload_len(7);
        packet.set_nfds(9);
        assert_eq!(packet.payload_mut(), b"");
        assert_eq!(short, [0, 0, 9]);
    }

    // -- round trips and streams --------------------------------------------

    fn slice<'p>(rng: &mut Rng, pool: &'p [u8], max: usize) -> &'p [u8] {
        let len = rng.below(max.min(pool.len()) + 1);
        let start = rng.below(pool.len() - len + 1);
        &pool[start..start + len]
    }

    fn random_address<'p>(rng: &mut Rng, pool: &'p [u8]) -> ListenAddress<'p> {
        match rng.below(3) {
            0 => ListenAddress::V4(Ipv4Addr::from(rng.u32())),
            1 => ListenAddress::V6(Ipv6Addr::from(u128::from(rng.next()) << 64 | u128::from(rng.next()))),
            _ => {
                let len = 1 + rng.below(UNIX_PATH_MAX);
                let start = rng.below(pool.len() - len + 1);
                ListenAddress::Unix(&pool[start..start + len])
            }
        }
    }

    /// A valid frame of a random kind with random fields (at most
    /// `max_fds` fds, byte fields up to `max_bytes` long).
    fn random_frame<'p>(rng: &mut Rng, pool: &'p [u8], max_fds: u8, max_bytes: usize) -> Frame<'p> {
        let frame = match rng.below(19) {
            0 => Frame::Online,
            1 => {
                let address = random_address(rng, pool);
                let socket_type = match address {
                    ListenAddress::Unix(_) => SocketType::Pipe,
                    _ if rng.below(2) == 0 => SocketType::Udp,
                    _ => SocketType::Tcp,
                };
                Frame::QueryServer {
                    seq: rng.u32(),
                    key: ListenKey {
                        address,
                        port: rng.u16(),
                        socket_type,
                        backlog: rng.u32(),
                        flags: ListenFlags::from_bits(rng.u32() & 15).unwrap(),
                        index: rng.u32(),
                    },
                }
            }
            2 => {
                let listener_fd = max_fds > 0 && rng.below(2) == 0;
                Frame::QueryServerReply {
                    seq: rng.u32(),
                    errno: if listener_fd { 0 } else { rng.u32() as i32 },
                    port: rng.u16(),
                    listener_id: rng.u32(),
                    listener_fd,
                }
            }
            3 if max_fds > 0 => Frame::NewConnection {
                listener_id: rng.u32(),
                first_conn_seq: rng.next() >> 1,
                count: 1 + rng.below(usize::from(max_fds)) as u8,
            },
            4 => Frame::Ack { conn_seq: rng.next() >> 1, count: 1 + (rng.u32() >> 1), accepted: rng.below(2) == 0 },
            5 => Frame::Listening { listener_id: rng.u32(), address: random_address(rng, pool), port: rng.u16() },
            6 => Frame::Close { listener_id: rng.u32() },
            7 => Frame::Disconnect,
            8 => Frame::ExitedAfterDisconnect,
            9 => Frame::Load { open_connections: rng.u32() },
            10 => {
                Frame::Message { bytes: slice(rng, pool, max_bytes), nfds: rng.below(usize::from(max_fds) + 1) as u8 }
            }
            11 => Frame::StoreGet { req_id: rng.u32(), key: slice(rng, pool, max_bytes) },
            12 => Frame::StoreSet {
                req_id: rng.u32(),
                key: slice(rng, pool, max_bytes / 2),
                value: slice(rng, pool, max_bytes / 2),
            },
            13 => Frame::StoreDelete { req_id: rng.u32(), key: slice(rng, pool, max_bytes) },
            14 => Frame::Heartbeat {
                seq: rng.u32(),
                report: (rng.below(2) == 0).then(|| WorkerReport {
                    open_connections: rng.u32(),
                    idle_us: rng.next(),
                    uptime_us: rng.next(),
                    loop_count: rng.next(),
                    events: rng.next(),
                }),
            },
            15 => Frame::StoreAdd { req_id: rng.u32(), key: slice(rng, pool, max_bytes), delta: rng.next() as i64 },
            16 => Frame::StoreCas {
                req_id: rng.u32(),
                key: slice(rng, pool, max_bytes / 3),
                expected: (rng.below(3) != 0).then(|| slice(rng, pool, max_bytes / 3)),
                value: slice(rng, pool, max_bytes / 3),
            },
            17 => Frame::StoreKeys {
                req_id: rng.u32(),
                prefix: slice(rng, pool, max_bytes / 2),
                after: slice(rng, pool, max_bytes / 2),
            },
            _ => Frame::StoreReply {
                req_id: rng.u32(),
                status: StoreStatus::from_u8(1 + rng.below(5) as u8).unwrap(),
                value: slice(rng, pool, max_bytes),
            },
        };
        assert_eq!(frame.validate(), Ok(()), "{frame:?}");
        frame
    }

    /// A long stream mixing every kind, with a fresh fd for each fd a frame
    /// carries.
    struct Stream {
        bytes: Vec<u8>,
        /// (start offset, end offset, inodes of the frame's fds)
        frames: Vec<(usize, usize, Vec<u64>)>,
    }

    fn make_stream(seed: u64, count: usize, pool: &[u8]) -> Stream {
        let mut rng = Rng(seed);
        let mut bytes = Vec::new();
        let mut frames = Vec::new();
        let mut seen = [false; FrameKind::ALL.len()];
        for i in 0..count {
            // Walk every kind once first, then pick at random.
            let frame = loop {
                let f = random_frame(&mut rng, pool, 6, 700);
                if i >= FrameKind::ALL.len() || !seen[usize::from(f.kind().as_u8() - 1)] {
                    break f;
                }
            };
            seen[usize::from(frame.kind().as_u8() - 1)] = true;
            let start = bytes.len();
            frame.emit_to_vec(&mut bytes).unwrap();
            frames.push((start, bytes.len(), Vec::new()));
        }
        assert!(seen.iter().all(|&s| s), "stream lacks a kind");
        Stream { bytes, frames }
    }

    /// Decodes `stream` through `dec`, cutting it where `chunk` says, and
    /// pushing each frame's fds right before the chunk holding its first
    /// byte (as `recvmsg` delivers them). Returns, per frame, its re-emitted
    /// bytes and the inodes of the fds it came with.
    fn decode_stream(
        stream: &Stream,
        dec: &mut FrameDecoder,
        mut chunk: impl FnMut() -> usize,
    ) -> Vec<(Vec<u8>, Vec<u64>)> {
        let mut out = Vec::new();
        let mut sent_fds: Vec<Vec<u64>> = Vec::new();
        let mut pos = 0;
        let mut next_push = 0;
        while pos < stream.bytes.len() {
            let mut end = pos.saturating_add(chunk().max(1)).min(stream.bytes.len());
            while let Some(&(start, stop, _)) = stream.frames.get(next_push) {
                if start >= end {
                    break;
                }
                let (frame, _) = Frame::parse_prefix(&stream.bytes[start..stop]).unwrap();
                let n = usize::from(frame.nfds());
                if start > pos && dec.queued_fds() + n > FD_QUEUE_CAPACITY {
                    end = start; // leave this frame's fds for the next recvmsg
                    break;
                }
                let mut inos = Vec::new();
                for _ in 0..n {
                    let (fd, probe) = tracked_fd();
                    inos.push(probe.ino);
                    dec.push_fd(fd).unwrap();
                }
                sent_fds.push(inos);
                next_push += 1;
            }
            while pos < end {
                let n = dec.feed(&stream.bytes[pos..end]);
                pos += n;
                while let Some(decoded) = dec.next_frame().unwrap() {
                    let inos: Vec<u64> = decoded.fds.into_iter().map(|fd| ino(&fd)).collect();
                    assert_eq!(inos.len(), usize::from(decoded.frame.nfds()));
                    out.push((emit_vec(&decoded.frame), inos));
                }
                assert!(n > 0 || pos == end, "decoder took no bytes and yielded no frame");
            }
        }
        dec.finish().unwrap();
        assert_eq!(out.len(), stream.frames.len());
        for (i, ((bytes, inos), &(start, stop, _))) in out.iter().zip(&stream.frames).enumerate() {
            assert_eq!(&bytes[..], &stream.bytes[start..stop], "frame {i} re-encodes differently");
            assert_eq!(inos, &sent_fds[i], "frame {i} got the wrong fds");
        }
        out
    }

    fn pool() -> Vec<u8> {
        let mut rng = Rng(0x5eed);
        (0..4096).map(|_| rng.u8()).collect()
    }

    #[test]
    fn every_kind_round_trips_through_the_decoder() {
        let mut dec = FrameDecoder::new();
        for (frame, _) in GOLDEN {
            let mut probes = Vec::new();
            for _ in 0..frame.nfds() {
                let (fd, probe) = tracked_fd();
                dec.push_fd(fd).unwrap();
                probes.push(probe);
            }
            let mut buf = [0u8; 64];
            let n = frame.emit(&mut buf).unwrap();
            assert_eq!(dec.feed(&buf[..n]), n);
            let decoded = dec.next_frame().unwrap().unwrap();
            assert_eq!(decoded.frame, *frame);
            assert_eq!(decoded.fds.len(), probes.len());
            for (i, probe) in probes.iter().enumerate() {
                assert_eq!(ino(&decoded.fds.get(i).map(|fd| fd.try_clone_to_owned().unwrap()).unwrap()), probe.ino);
            }
            drop(decoded);
            assert!(probes.iter().all(Probe::is_closed), "untaken fds must close with Decoded");
            assert!(dec.next_frame().unwrap().is_none());
        }
        dec.finish().unwrap();
    }

    #[test]
    fn random_frames_round_trip() {
        let pool = pool();
        let mut rng = Rng(42);
        let mut buf = vec![0u8; 2048];
        for _ in 0..20_000 {
            let frame = random_frame(&mut rng, &pool, MAX_FDS_PER_FRAME as u8, 1000);
            let n = frame.emit(&mut buf).unwrap();
            assert_eq!(n, frame.buffer_len());
            assert_eq!(Frame::parse_prefix(&buf[..n]), Ok((frame, n)));
        }
    }

    #[test]
    fn any_split_decodes_the_same() {
        let pool = pool();
        let stream = make_stream(7, 600, &pool);
        let whole = decode_stream(&stream, &mut FrameDecoder::new(), || usize::MAX);
        let bytewise = decode_stream(&stream, &mut FrameDecoder::new(), || 1);
        assert_eq!(whole.iter().map(|f| &f.0).collect::<Vec<_>>(), bytewise.iter().map(|f| &f.0).collect::<Vec<_>>());
        for seed in 1..=8u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let max = 1 + rng.below(if seed % 2 == 0 { 64 } else { 3000 });
            decode_stream(&stream, &mut FrameDecoder::new(), || 1 + rng.below(max));
        }
    }

    #[test]
    fn small_decoder_buffer_compacts_without_losing_bytes() {
        // The largest frame in the stream is under 1 KiB; a 1 KiB decoder
        // fills up, compacts and refills many times.
        let pool = pool();
        let stream = make_stream(11, 400, &pool);
        let mut rng = Rng(3);
        let mut dec = FrameDecoder::with_max_frame_len(1024);
        decode_stream(&stream, &mut dec, || 1 + rng.below(2500));
        let mut dec = FrameDecoder::with_max_frame_len(1024);
        decode_stream(&stream, &mut dec, || usize::MAX);
    }

    #[test]
    fn read_into_buffer_mut_and_commit() {
        let frames = [Frame::Online, Frame::Load { open_connections: 3 }, Frame::Disconnect];
        let mut bytes = Vec::new();
        for f in &frames {
            f.emit_to_vec(&mut bytes).unwrap();
        }
        let mut dec = FrameDecoder::with_max_frame_len(16);
        let mut got = Vec::new();
        let mut src = &bytes[..];
        while !src.is_empty() {
            let space = dec.buffer_mut();
            assert!(!space.is_empty());
            let n = space.len().min(src.len()).min(5);
            space[..n].copy_from_slice(&src[..n]);
            dec.commit(n);
            src = &src[n..];
            while let Some(d) = dec.next_frame().unwrap() {
                got.push(d.frame.kind());
            }
        }
        assert_eq!(got, [FrameKind::Online, FrameKind::Load, FrameKind::Disconnect]);
        dec.commit(1000); // clamped: nothing was read, nothing is committed
        assert_eq!(dec.buffered_len(), 1000.min(dec.buffered_len()));
    }

    #[test]
    fn large_message_round_trips() {
        let pool = pool();
        let big: Vec<u8> = pool.iter().cycle().take(800_004).copied().collect();
        let frame = Frame::Message { bytes: &big, nfds: 0 };
        let mut wire = Vec::new();
        assert_eq!(frame.emit_to_vec(&mut wire), Ok(800_004 + HEADER_LEN));
        let mut dec = FrameDecoder::new();
        let mut got = 0;
        for chunk in wire.chunks(65536) {
            assert_eq!(dec.feed(chunk), chunk.len());
            while let Some(d) = dec.next_frame().unwrap() {
                assert_eq!(d.frame, frame);
                got += 1;
            }
        }
        assert_eq!(got, 1);
        dec.finish().unwrap();
    }

    #[test]
    fn max_frame_len_is_enforced_exactly() {
        let payload = [7u8; 57];
        let mut dec = FrameDecoder::with_max_frame_len(64);
        let fits = Frame::Message { bytes: &payload[..56], nfds: 0 };
        assert_eq!(dec.feed(&emit_vec(&fits)), 64);
        assert_eq!(dec.next_frame().unwrap().unwrap().frame, fits);
        // One byte over: refused as soon as the header is in.
        let over = emit_vec(&Frame::Message { bytes: &payload, nfds: 0 });
        dec.feed(&over[..HEADER_LEN]);
        assert_eq!(dec.next_frame().unwrap_err(), DecodeError::FrameTooLong { len: 65, max: 64 });
        // Clamping of silly maxima.
        assert_eq!(FrameDecoder::with_max_frame_len(0).max_frame_len(), HEADER_LEN);
        assert_eq!(FrameDecoder::new().max_frame_len(), DEFAULT_MAX_FRAME_LEN);
    }

    // -- emit ------------------------------------------------------------------

    #[test]
    fn emit_refuses_a_short_buffer() {
        let frame = Frame::Close { listener_id: 1 };
        let mut buf = [0u8; 11];
        assert_eq!(frame.emit(&mut buf), Err(EmitError::BufferTooSmall { needed: 12, available: 11 }));
        assert_eq!(frame.emit(&mut []), Err(EmitError::BufferTooSmall { needed: 12, available: 0 }));
    }

    #[test]
    fn emit_to_vec_appends_and_keeps_capacity() {
        let mut out = Vec::with_capacity(256);
        let ptr = out.as_ptr();
        out.push(0xee);
        assert_eq!(Frame::Online.emit_to_vec(&mut out), Ok(8));
        assert_eq!(Frame::Load { open_connections: 1 }.emit_to_vec(&mut out), Ok(12));
        assert_eq!(out.len(), 21);
        assert_eq!(out[0], 0xee);
        out.clear();
        Frame::Disconnect.emit_to_vec(&mut out).unwrap();
        assert_eq!((out.as_ptr(), out.capacity()), (ptr, 256));
        // A refused frame leaves the Vec as it was.
        let bad = Frame::Ack { conn_seq: 0, count: 0, accepted: true };
        assert!(bad.emit_to_vec(&mut out).is_err());
        assert_eq!(out.len(), 8);
    }

    #[test]
    fn emit_refuses_frames_that_would_not_decode() {
        let invalid = |frame: Frame<'_>, field| {
            assert_eq!(
                frame.emit(&mut [0u8; 256]),
                Err(EmitError::Invalid(InvalidFrame { kind: frame.kind(), field })),
                "{frame:?}"
            );
        };
        let key = ListenKey {
            address: ListenAddress::Unix(b""),
            port: 0,
            socket_type: SocketType::Pipe,
            backlog: 0,
            flags: ListenFlags::empty(),
            index: 0,
        };
        invalid(Frame::QueryServer { seq: 0, key }, "address");
        let long_path = [b'x'; UNIX_PATH_MAX + 1];
        invalid(
            Frame::QueryServer { seq: 0, key: ListenKey { address: ListenAddress::Unix(&long_path), ..key } },
            "address",
        );
        invalid(
            Frame::QueryServer { seq: 0, key: ListenKey { address: ListenAddress::V4(Ipv4Addr::LOCALHOST), ..key } },
            "socket_type",
        );
        invalid(
            Frame::QueryServer {
                seq: 0,
                key: ListenKey { address: ListenAddress::Unix(b"/s"), socket_type: SocketType::Tcp, ..key },
            },
            "socket_type",
        );
        invalid(
            Frame::QueryServerReply { seq: 0, errno: 13, port: 0, listener_id: 0, listener_fd: true },
            "listener_fd",
        );
        invalid(Frame::NewConnection { listener_id: 0, first_conn_seq: 0, count: 0 }, "count");
        invalid(Frame::NewConnection { listener_id: 0, first_conn_seq: 0, count: 17 }, "count");
        invalid(Frame::NewConnection { listener_id: 0, first_conn_seq: u64::MAX, count: 2 }, "first_conn_seq");
        invalid(Frame::Ack { conn_seq: 0, count: 0, accepted: false }, "count");
        invalid(Frame::Ack { conn_seq: u64::MAX - 1, count: 3, accepted: false }, "conn_seq");
        invalid(Frame::Listening { listener_id: 0, address: ListenAddress::Unix(b""), port: 0 }, "address");
        invalid(Frame::Message { bytes: b"", nfds: 17 }, "nfds");
        // The edges that are still fine.
        let ok = |frame: Frame<'_>| assert!(frame.emit(&mut [0u8; 256]).is_ok(), "{frame:?}");
        ok(Frame::NewConnection { listener_id: 0, first_conn_seq: u64::MAX, count: 1 });
        ok(Frame::Ack { conn_seq: u64::MAX - 2, count: 3, accepted: false });
        ok(Frame::QueryServer { seq: 0, key: ListenKey { address: ListenAddress::Unix(&long_path[1..]), ..key } });
        ok(Frame::Message { bytes: b"", nfds: 16 });
    }

    // -- every DecodeError variant ---------------------------------------------

    #[test]
    fn error_truncated() {
        let bytes = emit_vec(&Frame::Close { listener_id: 1 });
        for cut in 1..bytes.len() {
            assert_eq!(decode_err(&bytes[..cut], 0), DecodeError::Truncated { buffered: cut });
        }
    }

    #[test]
    fn error_bad_version() {
        assert_eq!(decode_err(&[0, 1, 0, 0, 0, 0, 0, 0], 0), DecodeError::BadVersion { version: 0 });
        assert_eq!(decode_err(&[2, 1, 0, 0, 0, 0, 0, 0], 0), DecodeError::BadVersion { version: 2 });
    }

    #[test]
    fn error_unknown_kind() {
        assert_eq!(decode_err(&[1, 0, 0, 0, 0, 0, 0, 0], 0), DecodeError::UnknownKind { kind: 0 });
        assert_eq!(decode_err(&[1, 0x14, 0, 0, 0, 0, 0, 0], 0), DecodeError::UnknownKind { kind: 0x14 });
        assert_eq!(decode_err(&[1, 0xff, 0, 0, 0, 0, 0, 0], 0), DecodeError::UnknownKind { kind: 0xff });
    }

    #[test]
    fn error_reserved_not_zero() {
        assert_eq!(decode_err(&[1, 1, 0, 0x80, 0, 0, 0, 0], 0), DecodeError::ReservedNotZero { value: 0x80 });
    }

    #[test]
    fn error_frame_too_long() {
        let header = [1u8, 0x0b, 0, 0, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            decode_err(&header, 0),
            DecodeError::FrameTooLong { len: HEADER_LEN + u32::MAX as usize, max: DEFAULT_MAX_FRAME_LEN }
        );
    }

    #[test]
    fn error_payload_too_short() {
        let k = FrameKind::Close;
        assert_eq!(
            decode_err(&[1, 0x07, 0, 0, 3, 0, 0, 0, 1, 2, 3], 0),
            DecodeError::PayloadTooShort { kind: k, len: 3 }
        );
        // A StoreSet whose key_len runs past the payload.
        let bytes = [1, 0x0d, 0, 0, 9, 0, 0, 0, 6, 0, 0, 0, 2, 0, 0, 0, b'k'];
        assert_eq!(decode_err(&bytes, 0), DecodeError::PayloadTooShort { kind: FrameKind::StoreSet, len: 9 });
        // Refused from the header alone, before the payload arrives.
        assert_eq!(
            decode_err(&[1, 0x02, 0, 0, 20, 0, 0, 0], 0),
            DecodeError::PayloadTooShort { kind: FrameKind::QueryServer, len: 20 }
        );
    }

    #[test]
    fn error_payload_too_long() {
        // A 1 MiB "Online" is refused at its header, not buffered.
        assert_eq!(
            decode_err(&[1, 0x01, 0, 0, 0, 0, 0x10, 0], 0),
            DecodeError::PayloadTooLong { kind: FrameKind::Online, len: 1 << 20 }
        );
        let mut bytes = emit_vec(&Frame::Load { open_connections: 1 });
        bytes[4] = 5;
        bytes.push(0);
        assert_eq!(decode_err(&bytes, 0), DecodeError::PayloadTooLong { kind: FrameKind::Load, len: 5 });
    }

    #[test]
    fn error_bad_fd_count() {
        let mut online = emit_vec(&Frame::Online);
        online[field::NFDS] = 1;
        assert_eq!(decode_err(&online, 1), DecodeError::BadFdCount { kind: FrameKind::Online, nfds: 1 });
        let mut message = emit_vec(&Frame::Message { bytes: b"x", nfds: 0 });
        message[field::NFDS] = 17;
        assert_eq!(decode_err(&message, 17), DecodeError::BadFdCount { kind: FrameKind::Message, nfds: 17 });
        let mut reply = emit_vec(&GOLDEN[3].0);
        reply[field::NFDS] = 2;
        assert_eq!(decode_err(&reply, 2), DecodeError::BadFdCount { kind: FrameKind::QueryServerReply, nfds: 2 });
        // NewConnection's count must equal the header's nfds.
        let mut conn = emit_vec(&Frame::NewConnection { listener_id: 1, first_conn_seq: 0, count: 2 });
        conn[field::NFDS] = 3;
        assert_eq!(decode_err(&conn, 3), DecodeError::BadFdCount { kind: FrameKind::NewConnection, nfds: 3 });
    }

    #[test]
    fn error_missing_fds() {
        let bytes = emit_vec(&Frame::NewConnection { listener_id: 1, first_conn_seq: 0, count: 3 });
        assert_eq!(
            decode_err(&bytes, 2),
            DecodeError::MissingFds { kind: FrameKind::NewConnection, nfds: 3, queued: 2 }
        );
    }

    #[test]
    fn error_fd_queue_overflow() {
        let mut dec = FrameDecoder::new();
        let mut probes = Vec::new();
        for _ in 0..FD_QUEUE_CAPACITY {
            let (fd, probe) = tracked_fd();
            dec.push_fd(fd).unwrap();
            probes.push(probe);
        }
        assert!(probes.iter().all(|p| !p.is_closed()));
        let (fd, extra) = tracked_fd();
        let overflow = DecodeError::FdQueueOverflow { capacity: FD_QUEUE_CAPACITY };
        assert_eq!(dec.push_fd(fd), Err(overflow));
        assert!(extra.is_closed(), "the fd that did not fit must be closed");
        assert!(probes.iter().all(Probe::is_closed), "poisoning closes every queued fd");
        assert_eq!(dec.queued_fds(), 0);
        assert_eq!(dec.next_frame().unwrap_err(), overflow);
    }

    #[test]
    fn error_unclaimed_fds() {
        let bytes = emit_vec(&Frame::Online);
        assert_eq!(decode_err(&bytes, 2), DecodeError::UnclaimedFds { count: 2 });
    }

    #[test]
    fn error_invalid_fields() {
        let invalid = |kind, field| DecodeError::Invalid(InvalidFrame { kind, field });
        let golden = |i: usize| GOLDEN[i].1.to_vec();
        // QueryServer (GOLDEN[1]): unknown family, wrong address length,
        // unknown socket type, mismatched type, unknown flag bit.
        let qs = FrameKind::QueryServer;
        let mut b = golden(1);
        b[HEADER_LEN + field::query_server::FAMILY] = 5;
        assert_eq!(decode_err(&b, 0), invalid(qs, "family"));
        let mut b = golden(1);
        b[HEADER_LEN + field::query_server::FAMILY] = FAMILY_IPV6;
        assert_eq!(decode_err(&b, 0), invalid(qs, "address"));
        let mut b = golden(1);
        b[HEADER_LEN + field::query_server::SOCKET_TYPE] = 4;
        assert_eq!(decode_err(&b, 0), invalid(qs, "socket_type"));
        let mut b = golden(1);
        b[HEADER_LEN + field::query_server::SOCKET_TYPE] = SocketType::Pipe as u8;
        assert_eq!(decode_err(&b, 0), invalid(qs, "socket_type"));
        let mut b = golden(1);
        b[HEADER_LEN + field::query_server::FLAGS.start] = 0x10;
        assert_eq!(decode_err(&b, 0), invalid(qs, "flags"));
        // QueryServerReply carrying an fd with an error.
        let mut b = golden(3);
        b[HEADER_LEN + field::query_server_reply::ERRNO.start] = 98;
        assert_eq!(decode_err(&b, 1), invalid(FrameKind::QueryServerReply, "listener_fd"));
        // NewConnection with count 0 (and nfds 0), or a seq run that wraps.
        let mut b = golden(5);
        b[field::NFDS] = 0;
        b[HEADER_LEN + field::new_connection::COUNT] = 0;
        assert_eq!(decode_err(&b, 0), invalid(FrameKind::NewConnection, "count"));
        let mut b = golden(5);
        b[HEADER_LEN + 4..HEADER_LEN + 12].fill(0xff);
        assert_eq!(decode_err(&b, 2), invalid(FrameKind::NewConnection, "first_conn_seq"));
        // Ack: accepted must be 0 or 1; count at least 1.
        let mut b = golden(6);
        b[HEADER_LEN + field::ack::ACCEPTED] = 2;
        assert_eq!(decode_err(&b, 0), invalid(FrameKind::Ack, "accepted"));
        let mut b = golden(6);
        b[HEADER_LEN + field::ack::COUNT.start] = 0;
        assert_eq!(decode_err(&b, 0), invalid(FrameKind::Ack, "count"));
        // Listening: IPv4 family with 16 address bytes.
        let mut b = golden(7);
        b[HEADER_LEN + field::listening::FAMILY] = FAMILY_IPV4;
        assert_eq!(decode_err(&b, 0), invalid(FrameKind::Listening, "address"));
        // StoreReply: unknown status.
        let mut b = golden(16);
        b[HEADER_LEN + field::store_reply::STATUS] = 0;
        assert_eq!(decode_err(&b, 0), invalid(FrameKind::StoreReply, "status"));
    }

    #[test]
    fn store_lengths_that_run_past_the_payload() {
        let golden = |f: &Frame<'_>| GOLDEN.iter().find(|(g, _)| g == f).unwrap().1.to_vec();
        let too_short = |kind, b: &[u8]| {
            let len = b.len() - HEADER_LEN;
            assert_eq!(decode_err(b, 0), DecodeError::PayloadTooShort { kind, len });
        };
        // StoreCas: key_len, then expected_len, past the end (not the
        // "absent" marker).
        let cas = golden(&Frame::StoreCas { req_id: 10, key: b"k", expected: Some(b"a"), value: b"bc" });
        let mut b = cas.clone();
        b[HEADER_LEN + field::store_cas::KEY_LEN.start] = 5;
        too_short(FrameKind::StoreCas, &b);
        let mut b = cas.clone();
        b[HEADER_LEN + field::store_cas::EXPECTED_LEN.start] = 4;
        too_short(FrameKind::StoreCas, &b);
        let mut b = cas;
        let at = HEADER_LEN + field::store_cas::EXPECTED_LEN.start;
        b[at..at + 4].copy_from_slice(&0xffff_fffeu32.to_le_bytes());
        too_short(FrameKind::StoreCas, &b);
        // StoreKeys: prefix_len past the end.
        let mut b = golden(&Frame::StoreKeys { req_id: 12, prefix: b"w:", after: b"w:3" });
        b[HEADER_LEN + field::store_keys::PREFIX_LEN.start] = 6;
        too_short(FrameKind::StoreKeys, &b);
        // The "absent" marker with no key or value.
        let f = Frame::StoreCas { req_id: 1, key: b"", expected: None, value: b"" };
        let bytes = emit_vec(&f);
        assert_eq!(Frame::parse_prefix(&bytes), Ok((f, bytes.len())));
    }

    #[test]
    fn key_entries_round_trip_and_stop_at_garbage() {
        let mut value = Vec::new();
        for key in [&b"a"[..], b"", b"w:17"] {
            push_key_entry(&mut value, key).unwrap();
        }
        let keys: Vec<&[u8]> = key_entries(&value).map(Result::unwrap).collect();
        assert_eq!(keys, [&b"a"[..], b"", b"w:17"]);
        // Cut anywhere inside the last entry: the good ones, then one error.
        for cut in value.len() - 7..value.len() {
            let got: Vec<_> = key_entries(&value[..cut]).collect();
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert!(got[..2].iter().all(Result::is_ok) && got[2].is_err(), "cut at {cut}");
        }
        // A huge length never panics.
        let huge = [0xff, 0xff, 0xff, 0xff, b'x'];
        assert_eq!(key_entries(&huge).count(), 1);
        assert!(key_entries(&[]).next().is_none());
    }

    #[test]
    fn errors_display_without_panicking() {
        let errors = [
            DecodeError::Truncated { buffered: 1 },
            DecodeError::BadVersion { version: 2 },
            DecodeError::UnknownKind { kind: 0 },
            DecodeError::ReservedNotZero { value: 1 },
            DecodeError::FrameTooLong { len: 9, max: 8 },
            DecodeError::PayloadTooShort { kind: FrameKind::Ack, len: 1 },
            DecodeError::PayloadTooLong { kind: FrameKind::Ack, len: 99 },
            DecodeError::BadFdCount { kind: FrameKind::Online, nfds: 1 },
            DecodeError::MissingFds { kind: FrameKind::Message, nfds: 2, queued: 1 },
            DecodeError::FdQueueOverflow { capacity: 64 },
            DecodeError::UnclaimedFds { count: 1 },
            DecodeError::Invalid(InvalidFrame { kind: FrameKind::Ack, field: "count" }),
        ];
        for e in errors {
            assert!(!e.to_string().is_empty());
        }
        assert!(!EmitError::TooLarge { payload_len: 1 }.to_string().is_empty());
    }

    // -- poisoning and fd ownership ---------------------------------------------

    #[test]
    fn lost_fds_leave_empty_slots_instead_of_failing() {
        let mut dec = FrameDecoder::new();
        // An fd of an earlier message, claimed by the first frame.
        let (early, _early_probe) = tracked_fd();
        dec.push_fd(early).unwrap();
        let a = emit_vec(&Frame::NewConnection { listener_id: 1, first_conn_seq: 1, count: 3 });
        // The chunk carrying frame `a` lost its fds (MSG_CTRUNC).
        dec.note_fds_lost(a.len());
        dec.feed(&a);
        let d = dec.next_frame().unwrap().unwrap();
        let mut fds = d.fds;
        assert_eq!(fds.len(), 3);
        assert!(fds.take(0).is_some(), "the fd that arrived before the loss");
        assert!(fds.take(1).is_none() && fds.take(2).is_none());
        drop(fds);
        // A later frame, split across chunks, gets its own fd; the
        // decoder is not poisoned.
        let (late, _late_probe) = tracked_fd();
        dec.push_fd(late).unwrap();
        let b = emit_vec(&Frame::NewConnection { listener_id: 1, first_conn_seq: 4, count: 1 });
        dec.feed(&b[..5]);
        assert!(dec.next_frame().unwrap().is_none());
        dec.feed(&b[5..]);
        let mut d = dec.next_frame().unwrap().unwrap();
        assert!(d.fds.take(0).is_some());
        // Without a loss noted, missing fds still poison the decoder.
        dec.feed(&b);
        assert!(matches!(dec.next_frame(), Err(DecodeError::MissingFds { .. })));
    }

    #[test]
    fn lost_fds_do_not_steal_a_later_frames_fd() {
        let mut dec = FrameDecoder::new();
        let a = emit_vec(&Frame::NewConnection { listener_id: 1, first_conn_seq: 1, count: 1 });
        let b = emit_vec(&Frame::NewConnection { listener_id: 1, first_conn_seq: 2, count: 1 });
        // `a`'s first bytes come with lost fds; its tail arrives with `b`
        // and `b`'s fd.
        dec.note_fds_lost(4);
        dec.feed(&a[..4]);
        assert!(dec.next_frame().unwrap().is_none());
        let (fd_b, _probe) = tracked_fd();
        dec.push_fd(fd_b).unwrap();
        dec.feed(&a[4..]);
        dec.feed(&b);
        let mut da = dec.next_frame().unwrap().unwrap();
        assert!(da.fds.take(0).is_none(), "a's fd was lost");
        drop(da);
        let mut db = dec.next_frame().unwrap().unwrap();
        assert!(db.fds.take(0).is_some(), "b keeps its own fd");
    }

    #[test]
    fn poisoned_decoder_repeats_its_error_and_closes_fds() {
        let mut dec = FrameDecoder::new();
        let (queued, queued_probe) = tracked_fd();
        dec.push_fd(queued).unwrap();
        // A good frame, then garbage, then another good frame.
        let mut bytes = emit_vec(&Frame::Online);
        bytes.extend_from_slice(&[9, 9, 9, 9, 9, 9, 9, 9]);
        bytes.extend(emit_vec(&Frame::Online));
        dec.feed(&bytes);
        assert_eq!(dec.next_frame().unwrap().unwrap().frame, Frame::Online);
        let err = DecodeError::BadVersion { version: 9 };
        assert_eq!(dec.next_frame().unwrap_err(), err);
        assert!(queued_probe.is_closed(), "poisoning closes queued fds");
        assert_eq!(dec.error(), Some(err));
        assert_eq!(dec.next_frame().unwrap_err(), err);
        assert_eq!(dec.finish(), Err(err));
        assert!(dec.buffer_mut().is_empty());
        assert_eq!(dec.feed(b"more"), 0);
        let (late, late_probe) = tracked_fd();
        assert_eq!(dec.push_fd(late), Err(err));
        assert!(late_probe.is_closed(), "an fd pushed into a poisoned decoder is closed");
    }

    #[test]
    fn fds_are_delivered_in_order_and_owned_once() {
        let mut dec = FrameDecoder::new();
        let (fds, probes): (Vec<_>, Vec<_>) = (0..5).map(|_| tracked_fd()).unzip();
        let inos: Vec<u64> = probes.iter().map(|p| p.ino).collect();
        for fd in fds {
            dec.push_fd(fd).unwrap();
        }
        assert_eq!(open_fds_with_ino(&inos), 5);
        dec.feed(&emit_vec(&Frame::NewConnection { listener_id: 1, first_conn_seq: 10, count: 3 }));
        dec.feed(&emit_vec(&Frame::Message { bytes: b"handle", nfds: 2 }));

        let mut first = dec.next_frame().unwrap().unwrap();
        assert_eq!(first.fds.len(), 3);
        let kept = first.fds.take(1).unwrap();
        assert!(first.fds.take(1).is_none(), "an fd is taken once");
        assert!(first.fds.get(1).is_none());
        assert!(first.fds.take(3).is_none());
        assert_eq!(ino(&kept), inos[1]);
        drop(first);
        assert!(probes[0].is_closed() && probes[2].is_closed());
        assert!(!probes[1].is_closed(), "a taken fd belongs to the caller");

        let second = dec.next_frame().unwrap().unwrap();
        assert_eq!(second.frame, Frame::Message { bytes: b"handle", nfds: 2 });
        let got: Vec<u64> = second.fds.into_iter().map(|fd| ino(&fd)).collect();
        assert_eq!(got, inos[3..]);
        assert!(probes[3].is_closed() && probes[4].is_closed());
        assert_eq!(dec.queued_fds(), 0);
        dec.finish().unwrap();
        drop(kept);
        assert_eq!(open_fds_with_ino(&inos), 0);
    }

    #[test]
    fn dropping_or_draining_the_decoder_closes_queued_fds() {
        let mut dec = FrameDecoder::new();
        let (a, pa) = tracked_fd();
        let (b, pb) = tracked_fd();
        dec.push_fd(a).unwrap();
        dec.push_fd(b).unwrap();
        assert_eq!(dec.drain_fds(), 2);
        assert!(pa.is_closed() && pb.is_closed());
        let (c, pc) = tracked_fd();
        dec.push_fd(c).unwrap();
        drop(dec);
        assert!(pc.is_closed());
        assert_eq!(open_fds_with_ino(&[pa.ino, pb.ino, pc.ino]), 0);
    }

    #[test]
    fn fds_of_a_later_frame_may_arrive_early() {
        // One sendmsg carrying two frames attaches both frames' fds to the
        // first byte: they queue until their frame completes.
        let mut dec = FrameDecoder::new();
        let (a, pa) = tracked_fd();
        dec.push_fd(a).unwrap();
        let mut bytes = emit_vec(&Frame::Online);
        bytes.extend(emit_vec(&Frame::Message { bytes: b"m", nfds: 1 }));
        dec.feed(&bytes);
        let online = dec.next_frame().unwrap().unwrap();
        assert!(online.fds.is_empty());
        drop(online);
        assert!(!pa.is_closed());
        let mut msg = dec.next_frame().unwrap().unwrap();
        assert_eq!(msg.fds.take_next().map(|fd| ino(&fd)), Some(pa.ino));
    }

    #[test]
    fn garbage_never_panics_or_hangs() {
        let pool = pool();
        let stream = make_stream(5, 100, &pool);
        let mut rng = Rng(99);
        for round in 0..3000 {
            let mut bytes: Vec<u8> = if round % 2 == 0 {
                let len = rng.below(300);
                (0..len).map(|_| rng.u8()).collect()
            } else {
                // A valid stream with a few bytes flipped.
                let mut b = stream.bytes[..rng.below(stream.bytes.len())].to_vec();
                for _ in 0..1 + rng.below(4) {
                    if !b.is_empty() {
                        let i = rng.below(b.len());
                        b[i] ^= 1 << rng.below(8);
                    }
                }
                b
            };
            if round % 3 == 0 && bytes.len() >= 2 {
                bytes[0] = VERSION; // get past the version check more often
            }
            let mut dec = FrameDecoder::with_max_frame_len(if round % 4 == 0 { 256 } else { DEFAULT_MAX_FRAME_LEN });
            for _ in 0..rng.below(4) {
                let _ = dec.push_fd(tracked_fd().0);
            }
            let mut pos = 0;
            let mut steps = 0;
            'feed: while pos < bytes.len() {
                let end = (pos + 1 + rng.below(64)).min(bytes.len());
                let n = dec.feed(&bytes[pos..end]);
                pos += n;
                loop {
                    steps += 1;
                    assert!(steps < 100_000, "decoder does not make progress");
                    match dec.next_frame() {
                        Ok(Some(d)) => {
                            let re = emit_vec(&d.frame);
                            assert_eq!(Frame::parse_prefix(&re), Ok((d.frame, re.len())));
                            assert_eq!(d.fds.len(), usize::from(d.frame.nfds()));
                        }
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
                if n == 0 {
                    assert!(dec.error().is_some(), "full buffer without a frame or an error");
                    break;
                }
            }
            let _ = dec.finish();
            assert_eq!(dec.queued_fds(), 0);
        }
    }
}
