//! Node's JSON-lines channel format: a bounded, incremental line decoder
//! that keeps the fds received with the bytes, the parser of one message
//! (what a Node worker sends), and the emitters of what a primary sends.
//!
//! Shapes, from Node's `lib/internal/cluster/{child,primary,utils}.js` and
//! `lib/internal/child_process.js` (Node 20):
//!
//! ```text
//! worker:  {"cmd":"NODE_CLUSTER","act":"online","seq":0}
//! worker:  {"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,
//!           "address":null,"port":8000,"addressType":4,"backlog":0,"seq":1}
//! primary: {"cmd":"NODE_CLUSTER","errno":null,"key":"null:8000:4:undefined:0",
//!           "ack":1,"data":null,"sockname":{"address":"::","family":"IPv6","port":8000}}
//! primary: {"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER",
//!           "act":"newconn","key":"null:8000:4:undefined:0","seq":7}}   + the fd
//! worker:  {"cmd":"NODE_HANDLE_ACK"}
//! worker:  {"cmd":"NODE_CLUSTER","ack":7,"accepted":true,"seq":3}
//! ```
//!
//! Every input gives a message or a [`NodeFault`]; nothing panics, and the
//! decoder never holds more than its line limit.

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

/// Most fds kept waiting for the `NODE_HANDLE` message that claims them.
pub const MAX_PENDING_FDS: usize = 16;

/// Why a Node worker's channel was rejected.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeFault {
    /// A line (one message) longer than the limit
    /// ([`Settings::max_message_len`](crate::Settings::max_message_len));
    /// `len` is what was buffered when it was cut.
    LineTooLong {
        /// Bytes buffered when the line was cut.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Message number `message` (counted from 1 on this channel) is not
    /// JSON: serde_json's verdict at `column` of the line.
    BadJson {
        /// The message's number on this channel, from 1.
        message: u64,
        /// Where in the line serde_json gave up.
        column: usize,
        /// serde_json's class of error.
        kind: JsonErrorKind,
    },
    /// The channel ended inside a message.
    Truncated {
        /// Bytes of the unfinished message.
        buffered: usize,
    },
    /// More fds arrived than messages claimed (at most [`MAX_PENDING_FDS`]
    /// wait).
    TooManyFds,
    /// A well-formed message that breaks the protocol (named).
    BadMessage(&'static str),
}

/// serde_json's class of a JSON error.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum JsonErrorKind {
    /// Not JSON at all.
    Syntax,
    /// JSON, but a field has a type the protocol does not allow (a
    /// duplicated field, say).
    Data,
    /// The line ends inside a value.
    Eof,
}

impl fmt::Display for NodeFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeFault::LineTooLong { len, max } => {
                write!(f, "a message of more than {max} bytes (cut at {len} bytes without a newline)")
            }
            NodeFault::BadJson { message, column, kind } => {
                let what = match kind {
                    JsonErrorKind::Syntax => "not JSON",
                    JsonErrorKind::Data => "JSON of a shape the protocol does not allow",
                    JsonErrorKind::Eof => "JSON that ends inside a value",
                };
                write!(f, "message {message} is {what} (column {column})")
            }
            NodeFault::Truncated { buffered } => write!(f, "the channel ended inside a message ({buffered} bytes)"),
            NodeFault::TooManyFds => write!(f, "more than {MAX_PENDING_FDS} fds without a NODE_HANDLE message"),
            NodeFault::BadMessage(why) => write!(f, "bad message: {why}"),
        }
    }
}

impl std::error::Error for NodeFault {}

fn json_fault(message: u64, e: &serde_json::Error) -> NodeFault {
    let kind = match e.classify() {
        serde_json::error::Category::Data => JsonErrorKind::Data,
        serde_json::error::Category::Eof => JsonErrorKind::Eof,
        _ => JsonErrorKind::Syntax,
    };
    NodeFault::BadJson { message, column: e.column(), kind }
}

/// The fds received and not yet claimed by a `NODE_HANDLE` message.
pub type PendingFds = VecDeque<OwnedFd>;

/// A line handler: `(line, its number, the pending fds)`.
pub type OnLine<'h> = dyn FnMut(&[u8], u64, &mut PendingFds) -> Result<LineFlow, NodeFault> + 'h;

/// What a line handler wants next.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LineFlow {
    /// Decode the next line.
    Continue,
    /// Stop decoding: the channel is closed (or closing).
    Stop,
}

/// Splits a channel's bytes into lines, incrementally (any split of the
/// stream gives the same lines), with at most `max` bytes per line. A line
/// wholly inside one chunk is handed out from the chunk itself; only a line
/// split across reads is copied (into a buffer kept for the next one).
#[derive(Debug)]
pub struct LineDecoder {
    buf: Vec<u8>,
    max: usize,
    fds: PendingFds,
    lines: u64,
}

impl LineDecoder {
    /// A decoder for lines of at most `max` bytes (the newline excluded).
    pub fn new(max: usize) -> LineDecoder {
        LineDecoder { buf: Vec::new(), max, fds: VecDeque::new(), lines: 0 }
    }

    /// Lines handed out so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Queues an fd received with the bytes that follow; the next
    /// `NODE_HANDLE` message takes it.
    ///
    /// # Errors
    ///
    /// [`NodeFault::TooManyFds`] when [`MAX_PENDING_FDS`] fds already wait (`fd` is closed).
    pub fn push_fd(&mut self, fd: OwnedFd) -> Result<(), NodeFault> {
        if self.fds.len() >= MAX_PENDING_FDS {
            return Err(NodeFault::TooManyFds);
        }
        self.fds.push_back(fd);
        Ok(())
    }

    /// Feeds one chunk; each complete line goes to `on_line` (with the fd
    /// queue, from which a `NODE_HANDLE` message takes its fd). Once the
    /// chunk is used up with no line left incomplete, fds no message took
    /// are closed (Node drops a handle that came without its message too).
    ///
    /// # Errors
    ///
    /// [`NodeFault::LineTooLong`] for a line over the limit, or the fault `on_line` returns;
    /// the decoder should not be fed again after an error.
    pub fn feed(&mut self, mut chunk: &[u8], on_line: &mut OnLine<'_>) -> Result<LineFlow, NodeFault> {
        while let Some(nl) = chunk.iter().position(|&b| b == b'\n') {
            let (part, rest) = chunk.split_at(nl);
            chunk = rest.get(1..).unwrap_or(&[]);
            let len = self.buf.len().saturating_add(part.len());
            if len > self.max {
                return Err(NodeFault::LineTooLong { len, max: self.max });
            }
            self.lines += 1;
            let flow = if self.buf.is_empty() {
                on_line(part, self.lines, &mut self.fds)?
            } else {
                self.buf.extend_from_slice(part);
                let flow = on_line(&self.buf, self.lines, &mut self.fds);
                self.buf.clear();
                flow?
            };
            if flow == LineFlow::Stop {
                return Ok(LineFlow::Stop);
            }
        }
        if !chunk.is_empty() {
            let len = self.buf.len().saturating_add(chunk.len());
            if len > self.max {
                return Err(NodeFault::LineTooLong { len, max: self.max });
            }
            self.buf.extend_from_slice(chunk);
        }
        if self.buf.is_empty() {
            self.fds.clear();
        }
        Ok(LineFlow::Continue)
    }

    /// At the end of the stream: a message cut short is a fault.
    ///
    /// # Errors
    ///
    /// [`NodeFault::Truncated`] when the stream ended inside a message.
    pub fn finish(&self) -> Result<(), NodeFault> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(NodeFault::Truncated { buffered: self.buf.len() })
        }
    }

    /// Closes the fds still queued.
    pub fn drain_fds(&mut self) {
        self.fds.clear();
    }
}

// ---------------------------------------------------------------------------
// Parsing one message
// ---------------------------------------------------------------------------

/// A field's raw JSON, `null` included (`None`: the field is absent; an
/// `Option<&RawValue>` would take `null` for absent too, and Node's listen
/// key tells `null` from `undefined`).
#[derive(Default, Clone, Copy)]
struct Field<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<De: serde::Deserializer<'de>>(d: De) -> Result<Self, De::Error> {
        <&'a RawValue>::deserialize(d).map(|r| Field(Some(r)))
    }
}

/// Every field of a message that the protocol reads, each as raw JSON
/// (borrowed from the line: parsing allocates nothing), read again by type
/// where it is used. Unknown fields are passed over.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Fields<'a> {
    #[serde(borrow)]
    cmd: Field<'a>,
    #[serde(borrow)]
    act: Field<'a>,
    #[serde(borrow)]
    seq: Field<'a>,
    #[serde(borrow)]
    ack: Field<'a>,
    #[serde(borrow)]
    accepted: Field<'a>,
    #[serde(borrow)]
    key: Field<'a>,
    #[serde(borrow)]
    address: Field<'a>,
    #[serde(borrow)]
    port: Field<'a>,
    #[serde(borrow)]
    address_type: Field<'a>,
    #[serde(borrow)]
    fd: Field<'a>,
    #[serde(borrow)]
    index: Field<'a>,
    #[serde(borrow)]
    backlog: Field<'a>,
    #[serde(borrow)]
    flags: Field<'a>,
    #[serde(borrow)]
    data: Field<'a>,
    #[serde(borrow, rename = "type")]
    kind: Field<'a>,
    #[serde(borrow)]
    msg: Field<'a>,
    #[serde(borrow, rename = "isSharedMemoryMessage")]
    shared_memory: Field<'a>,
    #[serde(borrow)]
    method: Field<'a>,
    #[serde(borrow)]
    value: Field<'a>,
    #[serde(borrow)]
    uuid: Field<'a>,
}

/// One message from a worker.
#[derive(Debug, PartialEq)]
pub enum Message<'a> {
    /// `NODE_HANDLE_ACK`: the oldest handle sent was received.
    HandleAck,
    /// `NODE_HANDLE_NACK`: the oldest handle sent did not arrive (send it
    /// again).
    HandleNack,
    /// `{cmd: 'NODE_HANDLE', msg}`: `msg` came with a handle (its fd is the
    /// next queued one).
    Handle(Box<Message<'a>>),
    /// A `NODE_CLUSTER` message.
    Cluster(Cluster<'a>),
    /// The seed's shared memory (`{isSharedMemoryMessage: true, method:
    /// 'set' | 'get', key, value, uuid}`), answered by the primary's store.
    Store(StoreRequest<'a>),
    /// Another `NODE_` command (Node's primary ignores what it does not
    /// know; so does this one).
    OtherInternal,
    /// A user message (`process.send`): its JSON text.
    User(&'a str),
}

/// A `NODE_CLUSTER` message from a worker.
#[derive(Debug, PartialEq)]
pub enum Cluster<'a> {
    /// The worker's cluster module is up (`online`).
    Online,
    /// The worker wants to listen (`queryServer`).
    QueryServer(Query<'a>),
    /// A server listens: the query's fields again, `port` the real one.
    Listening {
        /// The address it listens on (`null`: every address).
        address: Option<Cow<'a, str>>,
        /// The real port (Node's -1 for a UNIX path).
        port: i64,
    },
    /// The worker closed its server on `key`.
    Close {
        /// Node's key of the server.
        key: Cow<'a, str>,
    },
    /// The worker leaves by itself; answer `{ack: seq}`.
    ExitedAfterDisconnect {
        /// The message's `seq` (JSON text), echoed as `ack`.
        seq: &'a str,
    },
    /// The answer to a `newconn` with this `seq`.
    Ack {
        /// The `newconn`'s sequence number.
        seq: u64,
        /// Whether the worker took the connection.
        accepted: bool,
    },
    /// An act this primary does not know.
    Other,
}

/// Where a `queryServer` asks to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryAddress<'a> {
    /// TCP on this host (`null`: every address) and port.
    Tcp {
        /// The host (`None`: every address).
        host: Option<Cow<'a, str>>,
        /// The port (0: any).
        port: u16,
        /// An IPv6 address type (`addressType` 6).
        ipv6: bool,
    },
    /// A UNIX socket path (Node's port -1).
    Path(Cow<'a, str>),
    /// UDP (`udp4` / `udp6`).
    Udp {
        /// The host (`None`: every address).
        host: Option<Cow<'a, str>>,
        /// The port (0: any).
        port: u16,
        /// `udp6` rather than `udp4`.
        ipv6: bool,
    },
    /// An fd of the primary's (`listen({fd})`).
    Fd(i64),
}

/// A `queryServer` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<'a> {
    /// The request's `seq`, as sent (echoed as the reply's `ack`).
    pub seq: &'a str,
    /// Node's key, `${address}:${port}:${addressType}:${fd}:${index}`.
    pub key: String,
    /// Where to listen.
    pub address: QueryAddress<'a>,
    /// Node's server index (several servers on one address).
    pub index: u32,
    /// The listen backlog asked for.
    pub backlog: u32,
    /// Node's `flags` (`UV_TCP_IPV6ONLY` = 1).
    pub flags: u32,
    /// The request's `data` (JSON text), echoed in the reply.
    pub data: &'a str,
}

/// A shared-memory request (the seed's `User` client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRequest<'a> {
    /// `set` (else `get`).
    pub set: bool,
    /// The key as JavaScript turns it into a property name.
    pub key: Cow<'a, str>,
    /// `set`'s value (JSON text); `None` for `undefined`.
    pub value: Option<&'a str>,
    /// The request's `uuid` (JSON text), echoed in the reply.
    pub uuid: &'a str,
}

/// A raw value as a string, if it is one.
fn string<'a>(raw: Option<&'a RawValue>) -> Option<Cow<'a, str>> {
    let text = raw?.get();
    if !text.starts_with('"') {
        return None;
    }
    match serde_json::from_str::<&'a str>(text) {
        Ok(s) => Some(Cow::Borrowed(s)),
        // Escapes: the string is decoded into an owned one.
        Err(_) => serde_json::from_str::<String>(text).ok().map(Cow::Owned),
    }
}

/// A raw value as a number, if it is one.
fn number(raw: Option<&RawValue>) -> Option<f64> {
    serde_json::from_str::<f64>(raw?.get()).ok()
}

/// A raw value as an integer in `range`, if it is one.
fn integer(raw: Option<&RawValue>, min: i64, max: i64) -> Option<i64> {
    let n = number(raw)?;
    (n.fract() == 0.0 && n >= min as f64 && n <= max as f64).then_some(n as i64)
}

/// A raw value as JavaScript's `${value}` prints it (`undefined` when absent).
fn js_text<'a>(raw: Option<&'a RawValue>) -> Cow<'a, str> {
    match raw {
        None => Cow::Borrowed("undefined"),
        Some(r) => string(Some(r)).unwrap_or(Cow::Borrowed(r.get())),
    }
}

/// Parses message number `n` (for error reports) of a channel.
///
/// # Errors
///
/// [`NodeFault::BadJson`] for a line that is not JSON; [`NodeFault::BadMessage`] for one that is
/// not UTF-8 or breaks Node's protocol (a `NODE_HANDLE` without its `msg`, or inside another).
pub fn parse(line: &[u8], n: u64) -> Result<Message<'_>, NodeFault> {
    parse_at(line, n, true)
}

fn parse_at(line: &[u8], n: u64, outer: bool) -> Result<Message<'_>, NodeFault> {
    let first = line.iter().copied().find(|b| !b.is_ascii_whitespace());
    if first != Some(b'{') {
        // Not an object: a user message (a string, a number, an array),
        // if it is JSON at all.
        serde_json::from_slice::<IgnoredAny>(line).map_err(|e| json_fault(n, &e))?;
        let text = std::str::from_utf8(line).map_err(|_| NodeFault::BadMessage("not UTF-8"))?;
        return Ok(Message::User(text.trim()));
    }
    let f: Fields<'_> = serde_json::from_slice(line).map_err(|e| json_fault(n, &e))?;
    let text = || std::str::from_utf8(line).map(str::trim).map_err(|_| NodeFault::BadMessage("not UTF-8"));
    let cmd = string(f.cmd.0);
    let Some(cmd) = cmd.filter(|c| c.len() > 5 && c.starts_with("NODE_")) else {
        if f.shared_memory.0.map(RawValue::get) == Some("true") {
            if let Some(req) = store_request(&f) {
                return Ok(Message::Store(req));
            }
        }
        return Ok(Message::User(text()?));
    };
    match &*cmd {
        "NODE_HANDLE_ACK" => Ok(Message::HandleAck),
        "NODE_HANDLE_NACK" => Ok(Message::HandleNack),
        "NODE_HANDLE" if outer => {
            let msg = f.msg.0.ok_or(NodeFault::BadMessage("NODE_HANDLE without msg"))?;
            let inner = parse_at(msg.get().as_bytes(), n, false)?;
            Ok(Message::Handle(Box::new(inner)))
        }
        "NODE_HANDLE" => Err(NodeFault::BadMessage("NODE_HANDLE inside NODE_HANDLE")),
        "NODE_CLUSTER" => cluster(&f).map(Message::Cluster),
        _ => Ok(Message::OtherInternal),
    }
}

fn store_request<'a>(f: &Fields<'a>) -> Option<StoreRequest<'a>> {
    let set = match &*string(f.method.0)? {
        "set" => true,
        "get" => false,
        _ => return None,
    };
    let uuid = f.uuid.0?.get();
    // `undefined` never reaches the wire; `null` is a value.
    Some(StoreRequest { set, key: js_text(f.key.0), value: f.value.0.map(RawValue::get), uuid })
}

fn cluster<'a>(f: &Fields<'a>) -> Result<Cluster<'a>, NodeFault> {
    if let Some(ack) = f.ack.0 {
        // The only answer a worker sends: to a `newconn`.
        let seq = integer(Some(ack), 0, 1 << 53).ok_or(NodeFault::BadMessage("ack is not a sequence number"))?;
        let accepted = f.accepted.0.map(RawValue::get) == Some("true");
        return Ok(Cluster::Ack { seq: seq as u64, accepted });
    }
    let Some(act) = string(f.act.0) else { return Ok(Cluster::Other) };
    Ok(match &*act {
        "online" => Cluster::Online,
        "queryServer" => Cluster::QueryServer(query(f)?),
        "listening" => Cluster::Listening {
            address: string(f.address.0),
            port: integer(f.port.0, -1, 65535).ok_or(NodeFault::BadMessage("listening without a port"))?,
        },
        "close" => Cluster::Close { key: string(f.key.0).ok_or(NodeFault::BadMessage("close without a key"))? },
        "exitedAfterDisconnect" => Cluster::ExitedAfterDisconnect {
            seq: f.seq.0.map(RawValue::get).ok_or(NodeFault::BadMessage("exitedAfterDisconnect without seq"))?,
        },
        _ => Cluster::Other,
    })
}

fn query<'a>(f: &Fields<'a>) -> Result<Query<'a>, NodeFault> {
    let seq = f.seq.0.map(RawValue::get).ok_or(NodeFault::BadMessage("queryServer without seq"))?;
    let port = integer(f.port.0, -1, 65535).ok_or(NodeFault::BadMessage("queryServer port is not a port"))?;
    let index = integer(f.index.0, 0, u32::MAX as i64).ok_or(NodeFault::BadMessage("queryServer without index"))?;
    let host = string(f.address.0);
    let address_type = js_text(f.address_type.0);
    let fd = integer(f.fd.0, i64::MIN, i64::MAX);
    let address = match (&*address_type, fd) {
        (_, Some(fd)) if fd >= 0 => QueryAddress::Fd(fd),
        ("udp4" | "udp6", _) => {
            QueryAddress::Udp { host, port: port.max(0) as u16, ipv6: address_type.as_ref() == "udp6" }
        }
        ("-1", _) => QueryAddress::Path(host.ok_or(NodeFault::BadMessage("queryServer for a path without one"))?),
        ("4" | "6", _) if port >= 0 => {
            QueryAddress::Tcp { host, port: port as u16, ipv6: address_type.as_ref() == "6" }
        }
        _ => return Err(NodeFault::BadMessage("queryServer for an unknown address type")),
    };
    let key = format!("{}:{}:{}:{}:{}", js_text(f.address.0), js_text(f.port.0), address_type, js_text(f.fd.0), index);
    Ok(Query {
        seq,
        key,
        address,
        index: index as u32,
        backlog: integer(f.backlog.0, 0, u32::MAX as i64).unwrap_or(0) as u32,
        flags: integer(f.flags.0, 0, u32::MAX as i64).unwrap_or(0) as u32,
        data: f.data.0.map(RawValue::get).unwrap_or("null"),
    })
}

// ---------------------------------------------------------------------------
// Emitting the primary's messages
// ---------------------------------------------------------------------------

/// The `type` of a handle Node turns back into a native handle
/// (`handleConversion['net.Native']`): a TCP or pipe socket, listening or
/// connected.
pub const HANDLE_TYPE_NATIVE: &str = "net.Native";
/// The `type` of a UDP socket.
pub const HANDLE_TYPE_UDP: &str = "dgram.Native";

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa_u64(n, &mut [0u8; 20]));
}

fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Opens a `NODE_HANDLE` wrapper of `kind` around the message that follows
/// (close it with [`close_handle`]).
fn open_handle(out: &mut Vec<u8>, kind: &str) {
    out.extend_from_slice(br#"{"cmd":"NODE_HANDLE","type":"#);
    push_str(out, kind);
    out.extend_from_slice(br#","msg":"#);
}

fn close_handle(out: &mut Vec<u8>) {
    out.push(b'}');
}

/// A round-robin connection for the server `key`, numbered `seq` (the
/// worker's `{ack: seq, accepted}` answers it). Its fd goes with it.
pub fn emit_newconn(out: &mut Vec<u8>, key: &str, seq: u64) {
    open_handle(out, HANDLE_TYPE_NATIVE);
    out.extend_from_slice(br#"{"cmd":"NODE_CLUSTER","act":"newconn","key":"#);
    push_str(out, key);
    out.extend_from_slice(br#","seq":"#);
    push_u64(out, seq);
    out.push(b'}');
    close_handle(out);
    out.push(b'\n');
}

/// The answer to a `queryServer`: `errno` (positive; 0 for success)
/// becomes Node's negative one; `sockname` is the listener's address
/// (round robin); `handle` wraps it for a socket sent along (`shared`, of
/// that handle type).
pub fn emit_query_reply(
    out: &mut Vec<u8>,
    q: &QueryReply<'_>,
    errno: i32,
    sockname: Option<SocketAddr>,
    handle: Option<&str>,
) {
    if let Some(kind) = handle {
        open_handle(out, kind);
    }
    out.extend_from_slice(br#"{"cmd":"NODE_CLUSTER","errno":"#);
    if errno == 0 {
        out.extend_from_slice(if handle.is_some() { b"0" } else { b"null" });
    } else {
        out.push(b'-');
        push_u64(out, errno.unsigned_abs().into());
    }
    out.extend_from_slice(br#","key":"#);
    push_str(out, q.key);
    out.extend_from_slice(br#","ack":"#);
    out.extend_from_slice(q.ack.as_bytes());
    out.extend_from_slice(br#","data":"#);
    out.extend_from_slice(q.data.as_bytes());
    if let Some(a) = sockname {
        out.extend_from_slice(br#","sockname":{"address":"#);
        push_str(out, &a.ip().to_string());
        out.extend_from_slice(if a.is_ipv4() {
            br#","family":"IPv4","port":"#
        } else {
            br#","family":"IPv6","port":"#
        });
        push_u64(out, a.port().into());
        out.push(b'}');
    }
    out.push(b'}');
    if handle.is_some() {
        close_handle(out);
    }
    out.push(b'\n');
}

/// What a `queryServer` reply echoes of its request.
#[derive(Debug, Clone, Copy)]
pub struct QueryReply<'a> {
    /// Node's key of the server.
    pub key: &'a str,
    /// The request's `seq` (JSON text).
    pub ack: &'a str,
    /// The request's `data` (JSON text).
    pub data: &'a str,
}

/// `{act: 'disconnect'}`: the worker closes its servers and disconnects.
pub fn emit_disconnect(out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"cmd\":\"NODE_CLUSTER\",\"act\":\"disconnect\"}\n");
}

/// `{ack: seq}`: the answer to `exitedAfterDisconnect` (`seq` is JSON text).
pub fn emit_ack(out: &mut Vec<u8>, seq: &str) {
    out.extend_from_slice(br#"{"cmd":"NODE_CLUSTER","ack":"#);
    out.extend_from_slice(seq.as_bytes());
    out.extend_from_slice(b"}\n");
}

/// `NODE_HANDLE_ACK` (received) or `NODE_HANDLE_NACK` (the fd did not come).
pub fn emit_handle_ack(out: &mut Vec<u8>, received: bool) {
    out.extend_from_slice(if received {
        b"{\"cmd\":\"NODE_HANDLE_ACK\"}\n"
    } else {
        b"{\"cmd\":\"NODE_HANDLE_NACK\"}\n"
    });
}

/// A user message (`json` must be one JSON value), wrapped for a handle
/// sent along when `handle`.
///
/// # Errors
///
/// [`NodeFault::BadJson`] if `json` is not one JSON value; `out` is unchanged then.
pub fn emit_user(out: &mut Vec<u8>, json: &[u8], handle: bool) -> Result<(), NodeFault> {
    serde_json::from_slice::<IgnoredAny>(json).map_err(|e| json_fault(0, &e))?;
    if json.contains(&b'\n') {
        // Whitespace between tokens is allowed in JSON, but a newline
        // would end the line early.
        return Err(NodeFault::BadMessage("a message to a Node worker holds a newline"));
    }
    if handle {
        open_handle(out, HANDLE_TYPE_NATIVE);
    }
    out.extend_from_slice(json);
    if handle {
        close_handle(out);
    }
    out.push(b'\n');
    Ok(())
}

/// The answer to a shared-memory request: `{isSharedMemoryMessage: true,
/// uuid, value}` (the seed's `Manager`); `value` is JSON text, or `None`
/// for `undefined` (left out, as `JSON.stringify` leaves it out). Bytes
/// that are not JSON (stored by a uvring worker) are sent as a string.
pub fn emit_store_reply(out: &mut Vec<u8>, uuid: &str, value: Option<&[u8]>) {
    out.extend_from_slice(br#"{"isSharedMemoryMessage":true,"uuid":"#);
    out.extend_from_slice(uuid.as_bytes());
    if let Some(v) = value {
        out.extend_from_slice(br#","value":"#);
        let json = serde_json::from_slice::<IgnoredAny>(v).is_ok() && !v.contains(&b'\n');
        if json {
            out.extend_from_slice(v);
        } else {
            push_str(out, &String::from_utf8_lossy(v));
        }
    }
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(dec: &mut LineDecoder, chunks: &[&[u8]]) -> Result<Vec<String>, NodeFault> {
        let mut out = Vec::new();
        for c in chunks {
            dec.feed(c, &mut |l, _, _| {
                out.push(String::from_utf8_lossy(l).into_owned());
                Ok(LineFlow::Continue)
            })?;
        }
        Ok(out)
    }

    #[test]
    fn any_split_gives_the_same_lines() {
        let stream = b"{\"a\":1}\n{\"b\":[1,2]}\n\"x\"\n";
        for cut in 0..stream.len() {
            let mut dec = LineDecoder::new(64);
            let (a, b) = stream.split_at(cut);
            let got = lines_of(&mut dec, &[a, b]).unwrap();
            assert_eq!(got, ["{\"a\":1}", "{\"b\":[1,2]}", "\"x\""], "cut at {cut}");
            dec.finish().unwrap();
        }
    }

    #[test]
    fn a_line_over_the_limit_is_a_fault_even_without_its_newline() {
        let mut dec = LineDecoder::new(8);
        assert_eq!(lines_of(&mut dec, &[b"12345678\n"]).unwrap(), ["12345678"]);
        assert_eq!(lines_of(&mut dec, &[b"12345", b"6789"]), Err(NodeFault::LineTooLong { len: 9, max: 8 }));
        let mut dec = LineDecoder::new(8);
        assert_eq!(lines_of(&mut dec, &[b"123456789\n"]), Err(NodeFault::LineTooLong { len: 9, max: 8 }));
    }

    #[test]
    fn a_message_cut_by_the_end_is_truncated() {
        let mut dec = LineDecoder::new(64);
        lines_of(&mut dec, &[b"{\"a\""]).unwrap();
        assert_eq!(dec.finish(), Err(NodeFault::Truncated { buffered: 4 }));
    }

    #[test]
    fn parses_what_a_node_20_worker_sends() {
        let online = br#"{"cmd":"NODE_CLUSTER","act":"online","seq":0}"#;
        assert_eq!(parse(online, 1), Ok(Message::Cluster(Cluster::Online)));
        let q = br#"{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"port":8000,"addressType":4,"backlog":0,"seq":1}"#;
        let Ok(Message::Cluster(Cluster::QueryServer(q))) = parse(q, 2) else { panic!() };
        assert_eq!(q.key, "null:8000:4:undefined:0");
        assert_eq!(q.address, QueryAddress::Tcp { host: None, port: 8000, ipv6: false });
        assert_eq!((q.seq, q.data, q.index, q.backlog), ("1", "null", 0, 0));
        let q = br#"{"cmd":"NODE_CLUSTER","act":"queryServer","index":1,"data":{"t":"k"},"address":"127.0.0.1","port":0,"addressType":4,"flags":0,"backlog":511,"seq":9}"#;
        let Ok(Message::Cluster(Cluster::QueryServer(q))) = parse(q, 3) else { panic!() };
        assert_eq!(q.key, "127.0.0.1:0:4:undefined:1");
        assert_eq!(q.data, r#"{"t":"k"}"#);
        let ack = br#"{"cmd":"NODE_CLUSTER","ack":7,"accepted":true,"seq":3}"#;
        assert_eq!(parse(ack, 4), Ok(Message::Cluster(Cluster::Ack { seq: 7, accepted: true })));
        assert_eq!(parse(br#"{"cmd":"NODE_HANDLE_ACK"}"#, 5), Ok(Message::HandleAck));
        let bye = br#"{"cmd":"NODE_CLUSTER","act":"exitedAfterDisconnect","seq":12}"#;
        assert_eq!(parse(bye, 6), Ok(Message::Cluster(Cluster::ExitedAfterDisconnect { seq: "12" })));
        let close = br#"{"cmd":"NODE_CLUSTER","act":"close","key":"null:8000:4:undefined:0","seq":13}"#;
        assert_eq!(parse(close, 7), Ok(Message::Cluster(Cluster::Close { key: "null:8000:4:undefined:0".into() })));
    }

    #[test]
    fn user_and_shared_memory_messages() {
        assert_eq!(parse(br#"{"hello":"w\"x"}"#, 1), Ok(Message::User(r#"{"hello":"w\"x"}"#)));
        assert_eq!(parse(b"[1,2]", 1), Ok(Message::User("[1,2]")));
        assert_eq!(parse(br#"{"cmd":5}"#, 1), Ok(Message::User(r#"{"cmd":5}"#)));
        let set = br#"{"isSharedMemoryMessage":true,"method":"set","id":1,"uuid":0,"key":"k","value":{"n":[1]}}"#;
        let want = StoreRequest { set: true, key: "k".into(), value: Some(r#"{"n":[1]}"#), uuid: "0" };
        assert_eq!(parse(set, 1), Ok(Message::Store(want)));
        let get = br#"{"isSharedMemoryMessage":true,"method":"get","id":1,"uuid":"u-1","key":7,"value":null}"#;
        let want = StoreRequest { set: false, key: "7".into(), value: Some("null"), uuid: r#""u-1""# };
        assert_eq!(parse(get, 1), Ok(Message::Store(want)));
        // Another shared-memory library's request is the user's business.
        let other = br#"{"isSharedMemoryMessage":true,"method":"lock","uuid":1}"#;
        assert!(matches!(parse(other, 1), Ok(Message::User(_))));
    }

    #[test]
    fn a_handle_wraps_its_message() {
        let m = br#"{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"hi":1}}"#;
        assert_eq!(parse(m, 1), Ok(Message::Handle(Box::new(Message::User(r#"{"hi":1}"#)))));
        let m = br#"{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_HANDLE","msg":1}}"#;
        assert!(matches!(parse(m, 1), Err(NodeFault::BadMessage(_))));
    }

    #[test]
    fn bad_json_is_a_fault_with_where() {
        assert!(matches!(parse(b"{not json", 3), Err(NodeFault::BadJson { message: 3, .. })));
        assert!(matches!(parse(b"", 1), Err(NodeFault::BadJson { kind: JsonErrorKind::Eof, .. })));
        assert!(matches!(parse(b"\xff", 1), Err(NodeFault::BadJson { .. })));
        assert!(matches!(parse(b"{\"a\":1} x", 1), Err(NodeFault::BadJson { .. })));
        // A cluster message with a field of the wrong type breaks the protocol.
        assert!(matches!(parse(br#"{"cmd":"NODE_CLUSTER","ack":"x"}"#, 1), Err(NodeFault::BadMessage(_))));
    }

    #[test]
    fn golden_emits() {
        let mut out = Vec::new();
        emit_newconn(&mut out, "null:8000:4:undefined:0", 7);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":{\"cmd\":\"NODE_CLUSTER\",\"act\":\"newconn\",\"key\":\"null:8000:4:undefined:0\",\"seq\":7}}\n"
        );
        let q = QueryReply { key: "null:0:4:undefined:0", ack: "1", data: "null" };
        let mut out = Vec::new();
        emit_query_reply(&mut out, &q, 0, Some("[::]:4321".parse().unwrap()), None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"cmd\":\"NODE_CLUSTER\",\"errno\":null,\"key\":\"null:0:4:undefined:0\",\"ack\":1,\"data\":null,\"sockname\":{\"address\":\"::\",\"family\":\"IPv6\",\"port\":4321}}\n"
        );
        let mut out = Vec::new();
        emit_query_reply(&mut out, &q, libc_eaddrinuse(), None, None);
        assert!(String::from_utf8(out).unwrap().contains("\"errno\":-98,"));
        let mut out = Vec::new();
        emit_query_reply(&mut out, &q, 0, None, Some(HANDLE_TYPE_NATIVE));
        assert!(String::from_utf8(out).unwrap().starts_with(
            "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":{\"cmd\":\"NODE_CLUSTER\",\"errno\":0,"
        ));
        let mut out = Vec::new();
        emit_store_reply(&mut out, "3", Some(b"\"OK\""));
        emit_store_reply(&mut out, "4", None);
        emit_store_reply(&mut out, "5", Some(b"raw bytes"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"isSharedMemoryMessage\":true,\"uuid\":3,\"value\":\"OK\"}\n{\"isSharedMemoryMessage\":true,\"uuid\":4}\n{\"isSharedMemoryMessage\":true,\"uuid\":5,\"value\":\"raw bytes\"}\n"
        );
        let mut out = Vec::new();
        assert!(emit_user(&mut out, b"{\"a\":\n1}", false).is_err());
        assert!(emit_user(&mut out, b"{\"a\"", false).is_err());
        emit_user(&mut out, b"{\"a\":1}", false).unwrap();
        assert_eq!(out, b"{\"a\":1}\n");
    }

    fn libc_eaddrinuse() -> i32 {
        98
    }

    /// Every input gives a message or a fault: mutations of real messages
    /// (bytes flipped, cut, duplicated) and any split of the stream.
    #[test]
    fn total_on_mutated_input() {
        let seeds: [&[u8]; 5] = [
            br#"{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"port":8000,"addressType":4,"backlog":0,"seq":1}"#,
            br#"{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"newconn","key":"k","seq":7}}"#,
            br#"{"isSharedMemoryMessage":true,"method":"set","id":1,"uuid":0,"key":"k","value":{"n":[1,"\u00e9"]}}"#,
            br#"{"cmd":"NODE_CLUSTER","ack":7,"accepted":true,"seq":3}"#,
            br#"{"cmd":"NODE_CLUSTER","act":"listening","address":"::1","port":-1,"addressType":"udp6","fd":3}"#,
        ];
        const PUNCT: &[u8] = b"{}[]\":,0-e\n";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for seed in seeds {
            for _ in 0..2000 {
                let mut m = seed.to_vec();
                for _ in 0..(next() % 4 + 1) {
                    let i = (next() as usize) % m.len().max(1);
                    match next() % 4 {
                        0 if !m.is_empty() => m[i] = next() as u8,
                        1 => m.truncate(i),
                        2 => m.insert(i.min(m.len()), PUNCT[(next() as usize) % PUNCT.len()]),
                        _ => m.extend_from_slice(&seed[..i.min(seed.len())]),
                    }
                }
                let _ = parse(&m, 1);
                let mut dec = LineDecoder::new(64);
                let cut = (next() as usize) % (m.len() + 1);
                for part in [&m[..cut], &m[cut..], b"\n"] {
                    let r = dec.feed(part, &mut |l, n, _| {
                        let _ = parse(l, n);
                        Ok(LineFlow::Continue)
                    });
                    if r.is_err() {
                        break;
                    }
                }
                let _ = dec.finish();
            }
        }
    }

    #[test]
    fn emitted_messages_parse_back() {
        let mut out = Vec::new();
        emit_newconn(&mut out, "a\"b", u64::from(u32::MAX) + 1);
        let line = out.strip_suffix(b"\n").unwrap();
        let Ok(Message::Handle(inner)) = parse(line, 1) else { panic!() };
        // A worker would not send this, but it is a valid message.
        assert_eq!(*inner, Message::Cluster(Cluster::Other));
    }
}
