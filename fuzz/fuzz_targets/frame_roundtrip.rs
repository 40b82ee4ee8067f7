//! Structure-aware: builds a `Frame` from the input (valid or not), and
//! checks that `emit` refuses exactly the frames `validate` refuses, and
//! that every frame it accepts parses back, and decodes back with its fds,
//! unchanged.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use uvring_cluster::proto::{
    EmitError, Frame, FrameDecoder, ListenAddress, ListenFlags, ListenKey, SocketType, StoreStatus, WorkerReport,
    HEADER_LEN,
};

fuzz_target!(|data: &[u8]| {
    let before = lowest_free_fd();
    if let Ok(frame) = frame(&mut Unstructured::new(data)) {
        check(frame);
    }
    assert_eq!(lowest_free_fd(), before, "an fd leaked");
});

fn lowest_free_fd() -> i32 {
    File::open("/dev/null").unwrap().as_raw_fd()
}

fn address<'a>(u: &mut Unstructured<'a>) -> Result<ListenAddress<'a>> {
    Ok(match u.int_in_range(0..=2u8)? {
        0 => ListenAddress::V4(Ipv4Addr::from(u.arbitrary::<u32>()?)),
        1 => ListenAddress::V6(Ipv6Addr::from(u.arbitrary::<u128>()?)),
        _ => {
            // 0 and 109 bytes are invalid on purpose.
            let len = u.int_in_range(0..=120usize)?;
            ListenAddress::Unix(u.bytes(len)?)
        }
    })
}

fn bytes<'a>(u: &mut Unstructured<'a>) -> Result<&'a [u8]> {
    let len = u.arbitrary_len::<u8>()?;
    u.bytes(len)
}

fn frame<'a>(u: &mut Unstructured<'a>) -> Result<Frame<'a>> {
    Ok(match u.int_in_range(0..=15u8)? {
        0 => Frame::Online,
        1 => Frame::QueryServer {
            seq: u.arbitrary()?,
            key: ListenKey {
                address: address(u)?,
                port: u.arbitrary()?,
                socket_type: if u.arbitrary()? { SocketType::Tcp } else { SocketType::Pipe },
                backlog: u.arbitrary()?,
                flags: ListenFlags::from_bits(u.arbitrary::<u32>()? & 7).unwrap_or_default(),
                index: u.arbitrary()?,
            },
        },
        2 => Frame::QueryServerReply {
            seq: u.arbitrary()?,
            errno: u.arbitrary()?,
            port: u.arbitrary()?,
            listener_id: u.arbitrary()?,
            listener_fd: u.arbitrary()?,
        },
        3 => Frame::NewConnection {
            listener_id: u.arbitrary()?,
            first_conn_seq: u.arbitrary()?,
            count: u.int_in_range(0..=17)?,
        },
        4 => Frame::Ack { conn_seq: u.arbitrary()?, count: u.arbitrary()?, accepted: u.arbitrary()? },
        5 => Frame::Listening { listener_id: u.arbitrary()?, address: address(u)?, port: u.arbitrary()? },
        6 => Frame::Close { listener_id: u.arbitrary()? },
        7 => Frame::Disconnect,
        8 => Frame::ExitedAfterDisconnect,
        9 => Frame::Load { open_connections: u.arbitrary()? },
        10 => Frame::Message { nfds: u.int_in_range(0..=17)?, bytes: bytes(u)? },
        11 => Frame::StoreGet { req_id: u.arbitrary()?, key: bytes(u)? },
        12 => Frame::StoreSet { req_id: u.arbitrary()?, key: bytes(u)?, value: bytes(u)? },
        13 => Frame::StoreDelete { req_id: u.arbitrary()?, key: bytes(u)? },
        14 => Frame::Heartbeat {
            seq: u.arbitrary()?,
            report: if u.arbitrary()? {
                Some(WorkerReport {
                    open_connections: u.arbitrary()?,
                    idle_us: u.arbitrary()?,
                    uptime_us: u.arbitrary()?,
                    loop_count: u.arbitrary()?,
                    events: u.arbitrary()?,
                })
            } else {
                None
            },
        },
        _ => Frame::StoreReply {
            req_id: u.arbitrary()?,
            status: match u.int_in_range(0..=3u8)? {
                0 => StoreStatus::Found,
                1 => StoreStatus::NotFound,
                2 => StoreStatus::Ok,
                _ => StoreStatus::Error,
            },
            value: bytes(u)?,
        },
    })
}

fn check(frame: Frame<'_>) {
    let mut buf = vec![0u8; frame.buffer_len()];
    let emitted = frame.emit(&mut buf);
    let mut vec = Vec::new();
    assert_eq!(frame.emit_to_vec(&mut vec), emitted);
    match frame.validate() {
        Err(invalid) => {
            assert_eq!(emitted, Err(EmitError::Invalid(invalid)));
            assert!(vec.is_empty());
            return;
        }
        Ok(()) => assert_eq!(emitted, Ok(buf.len())),
    }
    assert_eq!(vec, buf);
    assert_eq!(buf.len(), HEADER_LEN + frame.payload_len());
    // One byte short is refused, not truncated.
    let short = buf.len() - 1;
    assert_eq!(frame.emit(&mut buf[..short]), Err(EmitError::BufferTooSmall { needed: short + 1, available: short }));
    frame.emit(&mut buf).unwrap();
    assert_eq!(Frame::parse_prefix(&buf), Ok((frame, buf.len())));
    // Through the decoder, with real fds, in a buffer exactly one frame long.
    let mut dec = FrameDecoder::with_max_frame_len(buf.len());
    for _ in 0..frame.nfds() {
        dec.push_fd(OwnedFd::from(File::open("/dev/null").unwrap())).unwrap();
    }
    assert_eq!(dec.feed(&buf), buf.len());
    let decoded = dec.next_frame().unwrap().expect("a whole frame was fed");
    assert_eq!(decoded.frame, frame);
    assert_eq!(decoded.fds.len(), usize::from(frame.nfds()));
    drop(decoded);
    dec.finish().unwrap();
    // A decoder one byte too small refuses it.
    if buf.len() > HEADER_LEN {
        let mut small = FrameDecoder::with_max_frame_len(buf.len() - 1);
        small.feed(&buf);
        assert!(small.next_frame().is_err());
    }
}
