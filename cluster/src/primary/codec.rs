//! The codec of each worker's channel: uvring's binary frames, or Node's
//! JSON lines (see [`crate::node`]). Everything above this (routing,
//! hand-off, lifecycle, messaging) deals in [`Frame`]s for either kind of
//! worker: reads go through [`ChannelDecoder`], writes through
//! [`ChannelWriter`], which has the methods of the frame writer and picks
//! the encoding by channel.

use crate::channel::FrameWriter;
use crate::node::channel::{NodeChannel, NodeWriter};
use crate::node::LineDecoder;
use crate::primary::ChannelFault;
use crate::proto::{Frame, FrameDecoder};
use std::os::fd::RawFd;
use uvring::{FdBatch, Loop, PipeStream, Result};

/// A worker channel's decoder. (One per worker, in its table entry: the
/// frame decoder's size costs nothing, and boxing it would add a pointer
/// chase to every read of a uvring worker's channel.)
#[allow(clippy::large_enum_variant)]
pub(super) enum ChannelDecoder {
    Frames(FrameDecoder),
    Node(LineDecoder),
}

impl ChannelDecoder {
    /// The fds of the next chunk were lost (`MSG_CTRUNC`).
    pub(super) fn note_fds_lost(&mut self, len: usize) {
        match self {
            ChannelDecoder::Frames(d) => d.note_fds_lost(len),
            // The `NODE_HANDLE` message that finds no fd is answered
            // `NODE_HANDLE_NACK`, and Node sends the handle again.
            ChannelDecoder::Node(_) => {}
        }
    }

    /// At the end of the stream: a frame or message cut short, or fds no
    /// frame claimed, are bad input.
    pub(super) fn finish(&mut self) -> std::result::Result<(), ChannelFault> {
        match self {
            ChannelDecoder::Frames(d) => d.finish().map_err(ChannelFault::Decode),
            ChannelDecoder::Node(d) => d.finish().map_err(ChannelFault::Node),
        }
    }

    /// Closes the fds received ahead of their frames.
    pub(super) fn drain_fds(&mut self) {
        match self {
            ChannelDecoder::Frames(d) => {
                d.drain_fds();
            }
            ChannelDecoder::Node(d) => d.drain_fds(),
        }
    }
}

/// Writes frames to workers' channels, each in its worker's protocol.
pub(super) struct ChannelWriter {
    frames: FrameWriter,
    node: NodeWriter,
    /// The Node workers' channels (empty without Node workers).
    channels: Vec<(PipeStream, NodeChannel)>,
}

impl ChannelWriter {
    pub(super) fn new(max_payload: usize) -> ChannelWriter {
        ChannelWriter { frames: FrameWriter::new(max_payload), node: NodeWriter::new(), channels: Vec::new() }
    }

    /// `pipe` speaks Node's protocol from now on.
    pub(super) fn add_node(&mut self, pipe: PipeStream) {
        self.channels.push((pipe, NodeChannel::default()));
    }

    /// `pipe` is closed: its Node state goes.
    pub(super) fn remove(&mut self, pipe: PipeStream) {
        self.channels.retain(|(p, _)| *p != pipe);
    }

    /// The Node state of `pipe`, if it speaks Node's protocol.
    pub(super) fn node_mut(&mut self, pipe: PipeStream) -> Option<&mut NodeChannel> {
        self.channels.iter_mut().find(|(p, _)| *p == pipe).map(|(_, c)| c)
    }

    /// The Node state and writer of `pipe`.
    pub(super) fn node_parts(&mut self, pipe: PipeStream) -> Option<(&mut NodeWriter, &mut NodeChannel)> {
        let ch = self.channels.iter_mut().find(|(p, _)| *p == pipe).map(|(_, c)| c)?;
        Some((&mut self.node, ch))
    }

    pub(super) fn send<D>(&mut self, lp: &mut Loop<D>, pipe: PipeStream, frame: &Frame<'_>) -> Result<()> {
        match self.node_parts(pipe) {
            Some((w, ch)) => w.send(lp, pipe, ch, frame),
            None => self.frames.send(lp, pipe, frame),
        }
    }

    pub(super) fn send_fds<D>(
        &mut self,
        lp: &mut Loop<D>,
        pipe: PipeStream,
        frame: &Frame<'_>,
        fds: &mut FdBatch,
    ) -> Result<()> {
        match self.node_parts(pipe) {
            Some((w, ch)) => w.send_fds(lp, pipe, ch, frame, fds),
            None => self.frames.send_fds(lp, pipe, frame, fds),
        }
    }

    /// # Safety
    /// As for [`Loop::write_fds_borrowed`].
    pub(super) unsafe fn send_fds_borrowed<D>(
        &mut self,
        lp: &mut Loop<D>,
        pipe: PipeStream,
        frame: &Frame<'_>,
        fds: &[RawFd],
    ) -> Result<()> {
        // SAFETY: the caller's guarantee is forwarded unchanged.
        unsafe {
            match self.node_parts(pipe) {
                Some((w, ch)) => w.send_fds_borrowed(lp, pipe, ch, frame, fds),
                None => self.frames.send_fds_borrowed(lp, pipe, frame, fds),
            }
        }
    }
}
