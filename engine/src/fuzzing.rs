//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`).
//!
//! Not part of the API and outside semver: the parsers below are private to
//! the engine, and this module only lets a fuzzer reach them with arbitrary
//! bytes. They are the exact functions the loop runs on what `recvmsg`
//! returns for an IPC pipe.

use std::os::fd::RawFd;

/// Size of a receive record's header (`namelen`, `controllen`,
/// `payloadlen`, `flags`, native-endian `u32` each).
pub const RECORD_HEADER_LEN: usize = crate::backend::RECVMSG_HEADER_LEN;

/// Size of an IPC record's control space (room for the most fds one
/// message may carry).
pub const RECORD_CONTROL_LEN: usize = crate::backend::RECVMSG_CONTROL_LEN;

/// What the loop takes from one IPC receive record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpcRecord {
    /// Payload bytes handed to the read callback.
    pub payload_len: usize,
    /// The control message was cut (`MSG_CTRUNC`): the loop closes the fds
    /// that did arrive and reports `Error::CONTROL_TRUNCATED`.
    pub truncated: bool,
}

/// Splits `record` as the loop splits an IPC pipe's receive record and
/// calls `fd` with each fd number its `SCM_RIGHTS` messages carry (the
/// numbers are only reported, never closed or used). `None` when the
/// header is inconsistent with the buffer (the loop reports `EINVAL`).
pub fn ipc_record(record: &[u8], mut fd: impl FnMut(RawFd)) -> Option<IpcRecord> {
    let rec = crate::backend::parse_ipc_record(record, |f, _| fd(f))?;
    Some(IpcRecord { payload_len: rec.payload.len(), truncated: rec.truncated })
}

/// Walks `control` (a `msg_control` buffer as `recvmsg` leaves it) and calls
/// `fd` for each fd carried by an `SCM_RIGHTS` message, as the loop does.
/// Never reads past `control`; a malformed header ends the walk.
pub fn rights_fds(control: &[u8], fd: impl FnMut(RawFd)) {
    crate::sys::socket::for_each_rights_fd(control, fd);
}
