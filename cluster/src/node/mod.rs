//! Node.js's own cluster protocol, so that a uvring [`Primary`](crate::Primary)
//! drives unchanged Node.js workers (`node app.js` whose
//! `lib/internal/cluster/child.js` talks to us as it would to Node's primary).
//!
//! The wire: the channel is a Unix socket at the worker's fd
//! `NODE_CHANNEL_FD`, carrying newline-delimited JSON
//! (`NODE_CHANNEL_SERIALIZATION_MODE=json`; Node's `advanced` serialization
//! is not spoken). Internal messages have a `cmd` starting with `NODE_`;
//! the cluster's are `{cmd: 'NODE_CLUSTER', act, seq, ..}` and answers carry
//! `ack: <the request's seq>`. A handle (a socket) travels as
//! `{cmd: 'NODE_HANDLE', type: 'net.Native', msg: <the message>}` with its
//! fd in the same `sendmsg`; the receiver answers `NODE_HANDLE_ACK`, or
//! `NODE_HANDLE_NACK` when the fd did not come (then it is sent again).
//!
//! How it fits the primary: a Node worker's channel has a [`LineDecoder`]
//! instead of a frame decoder, and the primary's writer encodes the frames
//! it sends to that channel as Node's messages (`channel::NodeChannel`); each Node
//! message from the worker becomes the frame it means (`queryServer` is a
//! `QueryServer`, `{ack, accepted}` an `Ack`, the seed's shared-memory
//! requests are store requests), so listen routing, the round-robin
//! hand-off (several connections in flight per worker, each in its own
//! `sendmsg`), respawn, drains and rolling restarts are the same code for
//! both kinds of worker.
//!
//! - [`codec`]: the bounded line decoder, the parser of one message and
//!   the emitters of the primary's messages. Pure: no OS calls.
//! - `channel`: the per-channel state that pairs requests with their
//!   replies (listen keys, store request ids, handles awaiting their
//!   acknowledgement), and the writer.

pub(crate) mod channel;
pub mod codec;

pub use codec::{LineDecoder, NodeFault};

/// Environment variable naming a Node worker's id (Node's own).
pub const ENV_NODE_UNIQUE_ID: &str = "NODE_UNIQUE_ID";
/// Environment variable naming a Node worker's channel fd (Node's own).
pub const ENV_NODE_CHANNEL_FD: &str = "NODE_CHANNEL_FD";
/// Environment variable choosing the channel's serialization (Node's own).
pub const ENV_NODE_SERIALIZATION: &str = "NODE_CHANNEL_SERIALIZATION_MODE";

/// What the workers of a [`Primary`](crate::Primary) speak on their channel
/// ([`Settings::protocol`](crate::Settings::protocol)).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WorkerProtocol {
    /// uvring's binary frames: the workers are uvring programs
    /// ([`Worker`](crate::Worker)).
    #[default]
    Uvring,
    /// Node's own cluster protocol (JSON lines): the workers are unchanged
    /// Node.js programs, forked with `NODE_UNIQUE_ID`, `NODE_CHANNEL_FD` and
    /// `NODE_CHANNEL_SERIALIZATION_MODE=json`, so that `cluster.isPrimary`
    /// is false in them. Settings `exec` is `node`, `args` the script and
    /// its arguments. Node's protocol has no heartbeat: heartbeats are not
    /// sent, and a worker is judged alive while its process runs and its
    /// channel is open (as Node's own primary judges it). Under
    /// [`Settings::batch_scheduling`](crate::Settings::batch_scheduling) the
    /// primary moves each Node worker's threads back to the normal policy
    /// right after the spawn (a Node worker cannot do it itself). The policies
    /// are `rr` and `shared` (Node's own two); under `reuseport` a Node
    /// worker's listen fails with `ENOTSUP`.
    Node,
}
