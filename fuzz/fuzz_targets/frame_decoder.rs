//! Feeds arbitrary bytes (and fds) to `FrameDecoder`, split where the input
//! says, and checks that it never panics, never leaks an fd, decodes the
//! same way whatever the split, and that every frame it yields re-encodes
//! to exactly the bytes it came from and decodes back to itself.
//!
//! Input layout:
//! - byte 0: low 4 bits = number `k` of split-size bytes that follow the
//!   header; high 4 bits pick the decoder's maximum frame length
//!   (0 = 4 KiB + header, 15 = the default 1 MiB + header, else
//!   8 + 16 n^2: small buffers fill, compact and refuse long frames);
//! - byte 1: low 7 bits = how many fds to send (above 64 overflows the
//!   queue); high bit = send them all before the first byte, else one
//!   before each chunk;
//! - `k` split-size bytes, cycled (0 reads as 1);
//! - the byte stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use uvring_cluster::proto::{DecodeError, Frame, FrameDecoder, DEFAULT_MAX_FRAME_LEN, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let before = lowest_free_fd();
    run(data);
    // POSIX hands out the lowest free fd: if any fd this run opened were
    // still open, the next open would get a different number.
    assert_eq!(lowest_free_fd(), before, "an fd leaked");
});

fn lowest_free_fd() -> i32 {
    File::open("/dev/null").unwrap().as_raw_fd()
}

fn dev_null() -> OwnedFd {
    OwnedFd::from(File::open("/dev/null").unwrap())
}

struct Plan<'a> {
    max_frame_len: usize,
    nfds: usize,
    fds_upfront: bool,
    splits: &'a [u8],
    stream: &'a [u8],
}

fn parse_plan(data: &[u8]) -> Option<Plan<'_>> {
    let (&[cfg, fd_plan], rest) = data.split_first_chunk::<2>()?;
    let k = usize::from(cfg & 0x0f);
    let max_sel = usize::from(cfg >> 4);
    let (splits, stream) = rest.split_at_checked(k)?;
    Some(Plan {
        max_frame_len: match max_sel {
            0 => HEADER_LEN + 4096,
            15 => DEFAULT_MAX_FRAME_LEN,
            n => HEADER_LEN + 16 * n * n,
        },
        nfds: usize::from(fd_plan & 0x7f),
        fds_upfront: fd_plan & 0x80 != 0,
        splits,
        stream,
    })
}

/// What one decoding pass saw: the length of each frame, then the error
/// that stopped it (from `next_frame`, `push_fd` or `finish`), if any.
#[derive(Debug, PartialEq)]
struct Outcome {
    frame_lens: Vec<usize>,
    error: Option<DecodeError>,
}

fn run(data: &[u8]) {
    let Some(plan) = parse_plan(data) else {
        return;
    };
    let split = decode(&plan, false);
    if plan.fds_upfront {
        // With the same fds queued up front, one big feed must see the
        // same frames and the same error as the fuzzer's splits.
        let whole = decode(&plan, true);
        assert_eq!(split, whole, "the split changed the decoding");
    }
}

fn decode(plan: &Plan<'_>, whole: bool) -> Outcome {
    let mut dec = FrameDecoder::with_max_frame_len(plan.max_frame_len);
    let mut outcome = Outcome { frame_lens: Vec::new(), error: None };
    let mut fds_left = plan.nfds;
    let push = |dec: &mut FrameDecoder, n: usize, outcome: &mut Outcome| {
        for _ in 0..n {
            if let Err(e) = dec.push_fd(dev_null()) {
                outcome.error.get_or_insert(e);
            }
        }
    };
    if plan.fds_upfront {
        push(&mut dec, fds_left, &mut outcome);
        fds_left = 0;
    }
    let mut pos = 0;
    let mut offset = 0; // stream offset of the next frame
    let mut split = 0;
    while pos < plan.stream.len() && outcome.error.is_none() {
        let len = if whole || plan.splits.is_empty() {
            plan.stream.len()
        } else {
            let s = plan.splits[split % plan.splits.len()];
            split += 1;
            usize::from(s).max(1)
        };
        if fds_left > 0 {
            push(&mut dec, 1, &mut outcome);
            fds_left -= 1;
        }
        let end = pos.saturating_add(len).min(plan.stream.len());
        while pos < end && outcome.error.is_none() {
            let taken = dec.feed(&plan.stream[pos..end]);
            pos += taken;
            loop {
                match dec.next_frame() {
                    Ok(Some(decoded)) => {
                        let frame_len = check_frame(decoded.frame, decoded.fds, &plan.stream[offset..]);
                        offset += frame_len;
                        outcome.frame_lens.push(frame_len);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        outcome.error = Some(e);
                        break;
                    }
                }
            }
            if taken == 0 && outcome.error.is_none() {
                assert!(dec.error().is_some(), "a full buffer yields a frame or an error");
            }
        }
    }
    if outcome.error.is_none() {
        push(&mut dec, fds_left, &mut outcome);
    }
    if outcome.error.is_none() {
        outcome.error = dec.finish().err();
    }
    // Poisoned: the error sticks, and no fd is left queued.
    if let Some(e) = outcome.error {
        assert_eq!(dec.next_frame().err(), Some(e));
        assert_eq!(dec.queued_fds(), 0);
    }
    outcome
}

/// Checks one decoded frame against the stream it came from and returns its
/// length on the wire.
fn check_frame(frame: Frame<'_>, fds: uvring_cluster::proto::FrameFds, rest: &[u8]) -> usize {
    assert_eq!(fds.len(), usize::from(frame.nfds()));
    assert_eq!(frame.validate(), Ok(()));
    let mut bytes = vec![0u8; frame.buffer_len()];
    let n = frame.emit(&mut bytes).expect("a decoded frame re-encodes");
    assert_eq!(n, bytes.len());
    // The encoding is canonical: the frame is exactly the bytes it came from.
    assert_eq!(&bytes[..], &rest[..n], "re-encoding differs from the input");
    assert_eq!(Frame::parse_prefix(&bytes), Ok((frame, n)));
    // And it decodes again, with its fds, in a decoder just big enough.
    let mut again = FrameDecoder::with_max_frame_len(n);
    for fd in fds {
        again.push_fd(fd).unwrap();
    }
    assert_eq!(again.feed(&bytes), n);
    let decoded = again.next_frame().unwrap().expect("a whole frame was fed");
    assert_eq!(decoded.frame, frame);
    assert_eq!(decoded.fds.len(), usize::from(frame.nfds()));
    drop(decoded);
    again.finish().unwrap();
    n
}
