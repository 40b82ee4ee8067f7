//! Writes the checked-in seed corpus of the `frame_decoder` target:
//! `cargo run --manifest-path fuzz/Cargo.toml --example write_seeds`.
//!
//! Each seed is `[cfg, fd_plan, splits..., stream...]` as the target reads
//! it (see `fuzz_targets/frame_decoder.rs`).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use uvring_cluster::proto::{Frame, ListenAddress, ListenFlags, ListenKey, SocketType, StoreStatus, WorkerReport};

fn frames() -> Vec<(&'static str, Frame<'static>)> {
    let key = ListenKey {
        address: ListenAddress::V4(Ipv4Addr::new(127, 0, 0, 1)),
        port: 8080,
        socket_type: SocketType::Tcp,
        backlog: 511,
        flags: ListenFlags::REUSE_PORT,
        index: 0,
    };
    vec![
        ("online", Frame::Online),
        ("query-server-v4", Frame::QueryServer { seq: 1, key }),
        (
            "query-server-v6",
            Frame::QueryServer {
                seq: 2,
                key: ListenKey {
                    address: ListenAddress::V6(Ipv6Addr::LOCALHOST),
                    flags: ListenFlags::IPV6_ONLY | ListenFlags::EXCLUSIVE,
                    ..key
                },
            },
        ),
        (
            "query-server-unix",
            Frame::QueryServer {
                seq: 3,
                key: ListenKey {
                    address: ListenAddress::Unix(b"/tmp/uvring.sock"),
                    port: 0,
                    socket_type: SocketType::Pipe,
                    ..key
                },
            },
        ),
        (
            "query-server-reply",
            Frame::QueryServerReply { seq: 1, errno: 0, port: 8080, listener_id: 1, listener_fd: true },
        ),
        (
            "query-server-reply-error",
            Frame::QueryServerReply { seq: 2, errno: 98, port: 0, listener_id: 0, listener_fd: false },
        ),
        ("new-connection", Frame::NewConnection { listener_id: 1, first_conn_seq: 100, count: 3 }),
        ("ack", Frame::Ack { conn_seq: 100, count: 3, accepted: true }),
        (
            "listening",
            Frame::Listening { listener_id: 1, address: ListenAddress::V4(Ipv4Addr::UNSPECIFIED), port: 8080 },
        ),
        ("close", Frame::Close { listener_id: 1 }),
        ("disconnect", Frame::Disconnect),
        ("exited-after-disconnect", Frame::ExitedAfterDisconnect),
        ("load", Frame::Load { open_connections: 17 }),
        ("message", Frame::Message { bytes: b"{\"cmd\":\"hello\"}", nfds: 1 }),
        ("store-get", Frame::StoreGet { req_id: 1, key: b"counter" }),
        ("store-set", Frame::StoreSet { req_id: 2, key: b"counter", value: b"42" }),
        ("store-delete", Frame::StoreDelete { req_id: 3, key: b"counter" }),
        ("store-reply", Frame::StoreReply { req_id: 1, status: StoreStatus::Found, value: b"42" }),
        ("heartbeat", Frame::Heartbeat { seq: 1, report: None }),
        (
            "heartbeat-report",
            Frame::Heartbeat {
                seq: 2,
                report: Some(WorkerReport {
                    open_connections: 5,
                    idle_us: 900_000,
                    uptime_us: 1_000_000,
                    loop_count: 120,
                    events: 480,
                }),
            },
        ),
    ]
}

/// A seed: 4 KiB max frame length, `nfds` fds sent up front, the given
/// split sizes.
fn seed(nfds: u8, splits: &[u8], stream: &[u8]) -> Vec<u8> {
    assert!(splits.len() < 16 && nfds < 0x80);
    let mut out = vec![splits.len() as u8, 0x80 | nfds];
    out.extend_from_slice(splits);
    out.extend_from_slice(stream);
    out
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/frame_decoder");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, bytes: Vec<u8>| std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    let mut all = Vec::new();
    let mut all_fds = 0u8;
    for (name, frame) in frames() {
        let mut bytes = Vec::new();
        frame.emit_to_vec(&mut bytes).unwrap();
        write(name, seed(frame.nfds(), &[], &bytes));
        all.extend_from_slice(&bytes);
        all_fds += frame.nfds();
    }
    write("all-kinds", seed(all_fds, &[], &all));
    write("all-kinds-split", seed(all_fds, &[5, 1, 64, 13], &all));
    write("all-kinds-bytewise", seed(all_fds, &[1], &all));
    write("truncated", seed(all_fds, &[7], &all[..all.len() - 3]));
    write("missing-fds", seed(0, &[], &all));
    let mut bad = all.clone();
    bad[0] = 2; // version 2
    write("bad-version", seed(all_fds, &[], &bad));
    println!("wrote seeds to {}", dir.display());
}
