//! The IPC channel between the primary and one worker: an engine IPC pipe,
//! a [`FrameDecoder`] on the receiving side and a reused emit buffer on the
//! sending side. Both directions allocate nothing once the buffers have
//! grown to the largest frame sent.

use crate::proto::{DecodeError, Decoded, Frame, FrameDecoder};
use std::os::fd::RawFd;
use uvring::{Error, FdBatch, Loop, PipeStream, Result};

/// What a frame handler wants after one frame.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Keep decoding.
    Continue,
    /// Stop: the channel was closed (or is being closed) by the handler.
    Stop,
}

/// Why a channel's byte stream was rejected.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum ChannelError {
    /// The peer sent something that is not a valid frame stream.
    Decode(DecodeError),
    /// The decoder took no bytes although it had no frame to give (cannot
    /// happen with a drained decoder; guarded so a bug cannot spin).
    Stalled,
}

/// Feeds one chunk read from an IPC pipe to `dec` and hands each complete
/// frame, with its fds, to `on_frame`. The fds that came with the chunk are
/// queued first (the engine queues them as pending handles before the
/// chunk's bytes reach the read callback), so fds pair with their frames.
pub(crate) fn feed_chunk<D>(
    lp: &mut Loop<D>,
    pipe: PipeStream,
    dec: &mut FrameDecoder,
    mut bytes: &[u8],
    on_frame: &mut dyn FnMut(&mut Loop<D>, Decoded<'_>) -> Flow,
) -> std::result::Result<Flow, ChannelError> {
    while let Ok(fd) = lp.accept_pending_fd(pipe) {
        dec.push_fd(fd).map_err(ChannelError::Decode)?;
    }
    loop {
        let n = dec.feed(bytes);
        bytes = bytes.get(n..).unwrap_or(&[]);
        while let Some(d) = dec.next_frame().map_err(ChannelError::Decode)? {
            if on_frame(lp, d) == Flow::Stop {
                return Ok(Flow::Stop);
            }
        }
        if bytes.is_empty() {
            return Ok(Flow::Continue);
        }
        if n == 0 {
            return Err(ChannelError::Stalled);
        }
    }
}

/// The decoder for a channel whose frames carry at most `max_payload`
/// bytes of payload ([`Settings::max_message_len`](crate::Settings)).
pub(crate) fn decoder(max_payload: usize) -> FrameDecoder {
    FrameDecoder::with_max_frame_len(crate::proto::HEADER_LEN.saturating_add(max_payload))
}

/// Encodes frames into a reused buffer and writes them to a pipe. A frame
/// whose payload is above the channel's limit is refused with `EMSGSIZE`
/// (the peer's decoder would cut the channel for it).
#[derive(Debug)]
pub(crate) struct FrameWriter {
    buf: Vec<u8>,
    max_payload: usize,
}

impl FrameWriter {
    pub(crate) fn new(max_payload: usize) -> FrameWriter {
        FrameWriter { buf: Vec::with_capacity(256), max_payload }
    }

    fn check_len(&self, frame: &Frame<'_>) -> Result<()> {
        if frame.payload_len() > self.max_payload {
            return Err(Error::EMSGSIZE);
        }
        Ok(())
    }

    /// Writes one frame that carries no fds (after any queued ones, in
    /// one write).
    pub(crate) fn send<D>(&mut self, lp: &mut Loop<D>, pipe: PipeStream, frame: &Frame<'_>) -> Result<()> {
        self.queue(frame)?;
        self.flush(lp, pipe)
    }

    /// Encodes a frame (without fds) to be written by the next `send` or
    /// `flush`, so that a burst of small frames goes out as one write.
    pub(crate) fn queue(&mut self, frame: &Frame<'_>) -> Result<()> {
        if frame.nfds() != 0 {
            return Err(Error::EINVAL);
        }
        self.check_len(frame)?;
        frame.emit_to_vec(&mut self.buf).map_err(|_| Error::EINVAL)?;
        Ok(())
    }

    /// Writes the queued frames, if any.
    pub(crate) fn flush<D>(&mut self, lp: &mut Loop<D>, pipe: PipeStream) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let res = lp.write(pipe, &self.buf, None);
        self.buf.clear();
        res
    }

    /// Writes one frame with `fds` attached to its first byte. On success
    /// the batch is empty (the loop owns the fds until they are sent); on
    /// error it still holds them.
    pub(crate) fn send_fds<D>(
        &mut self,
        lp: &mut Loop<D>,
        pipe: PipeStream,
        frame: &Frame<'_>,
        fds: &mut FdBatch,
    ) -> Result<()> {
        if usize::from(frame.nfds()) != fds.len() {
            return Err(Error::EINVAL);
        }
        self.flush(lp, pipe)?;
        self.encode(frame)?;
        let res =
            if fds.is_empty() { lp.write(pipe, &self.buf, None) } else { lp.write_fds(pipe, &self.buf, fds, None) };
        self.buf.clear();
        res
    }

    /// Writes one frame with `fds` attached to its first byte, without giving
    /// them to the loop ([`Loop::write_fds_borrowed`]).
    ///
    /// # Safety
    /// As for [`Loop::write_fds_borrowed`]: each fd stays open until the
    /// peer has received it or `pipe` is closed and freed.
    pub(crate) unsafe fn send_fds_borrowed<D>(
        &mut self,
        lp: &mut Loop<D>,
        pipe: PipeStream,
        frame: &Frame<'_>,
        fds: &[RawFd],
    ) -> Result<()> {
        if usize::from(frame.nfds()) != fds.len() {
            return Err(Error::EINVAL);
        }
        self.flush(lp, pipe)?;
        self.encode(frame)?;
        // SAFETY: the caller's guarantee is forwarded unchanged.
        let res = unsafe { lp.write_fds_borrowed(pipe, &self.buf, fds, None) };
        self.buf.clear();
        res
    }

    fn encode(&mut self, frame: &Frame<'_>) -> Result<()> {
        self.check_len(frame)?;
        self.buf.clear();
        frame.emit_to_vec(&mut self.buf).map_err(|_| Error::EINVAL)?;
        Ok(())
    }
}
