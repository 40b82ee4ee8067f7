//! UDP sockets (`uv_udp_t`): libuv's UDP scenarios that apply to Linux, on
//! both backends: send and receive (IPv4, IPv6, IPv6-only and dual-stack),
//! connect and disconnect, an address on a connected socket (`EISCONN`),
//! ICMP refusal on a connected socket, multicast join on loopback (plain
//! and source-specific), multicast TTL and interface, the broadcast option,
//! `try_send`, send queue order, close with sends in flight, truncated and
//! empty datagrams, receive stop and restart, open from an fd, bind flags
//! and options. Multicast stays on loopback: the sending sockets set
//! `IP_MULTICAST_IF` to 127.0.0.1 (IPv6: the `lo` interface); where the
//! sandbox cannot carry it (Linux's `lo` has no IPv6 multicast route by
//! default) the test prints a SKIP line.
//!
//! Every test's state lives in the loop's data ([`Seen`]); each ends with
//! no handle and no fd left (the harness checks).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::Duration;
use uvring::*;
use uvring_tests::{both_backends, run_until_with};

const LIMIT: Duration = Duration::from_secs(10);

/// One received datagram, copied out of the callback.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Got {
    on: Udp,
    data: Vec<u8>,
    from: Option<SocketAddr>,
    flags: RecvFlags,
}

/// What the callbacks saw, in order.
#[derive(Default)]
struct Seen {
    got: Vec<Got>,
    recv_errors: Vec<(Udp, Error)>,
    /// Send callbacks: the tag the callback was made with, and the status.
    sent: Vec<(usize, Result<()>)>,
    closed: usize,
    /// Stop receiving after this many datagrams (0: never).
    stop_after: usize,
}

fn v4(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

/// Records every datagram and error; honours `stop_after`.
fn record() -> OnRecv<Seen> {
    OnRecv::new(|lp: &mut Loop<Seen>, seen: &mut Seen, u, res| match res {
        Ok(dg) => {
            seen.got.push(Got { on: u, data: dg.data.to_vec(), from: dg.addr, flags: dg.flags });
            if seen.stop_after != 0 && seen.got.len() == seen.stop_after {
                lp.udp_recv_stop(u).unwrap();
            }
        }
        Err(e) => seen.recv_errors.push((u, e)),
    })
}

/// A send callback that records its tag and status.
fn sent(tag: usize) -> OnSend<Seen> {
    OnSend::new(move |_: &mut Loop<Seen>, seen: &mut Seen, _, status| seen.sent.push((tag, status)))
}

/// A socket bound to `addr`, and the address it got.
fn bound(lp: &mut Loop<Seen>, addr: SocketAddr, flags: u32) -> (Udp, SocketAddr) {
    let u = lp.udp_init().unwrap();
    lp.udp_bind(u, addr, flags).unwrap();
    let at = lp.udp_getsockname(u).unwrap();
    (u, at)
}

/// Closes the handles, runs the loop to its end and checks every close
/// callback ran and nothing is left.
fn close_all(lp: &mut Loop<Seen>, seen: &mut Seen, handles: &[Udp]) {
    let on_close = OnClose::new(|_, seen: &mut Seen, _| seen.closed += 1);
    let before = seen.closed;
    for &u in handles {
        lp.close(u, Some(&on_close)).unwrap();
    }
    assert!(!lp.run(RunMode::Default, seen).unwrap(), "the loop ends once the sockets are closed");
    assert_eq!(seen.closed - before, handles.len());
    assert_eq!(lp.handle_count(), 0);
}

/// libuv's udp_send_and_recv: a client sends PING to a server, which
/// answers PONG to the sender's address; both send callbacks succeed.
fn ping_pong(lp: &mut Loop<Seen>, server_at: SocketAddr) {
    let mut seen = Seen::default();
    let (server, server_at) = bound(lp, server_at, 0);
    let answer = OnRecv::new(|lp: &mut Loop<Seen>, seen: &mut Seen, u, res: Result<Datagram<'_>>| {
        let dg = res.unwrap();
        seen.got.push(Got { on: u, data: dg.data.to_vec(), from: dg.addr, flags: dg.flags });
        lp.udp_send(u, b"PONG", dg.addr, Some(&sent(1))).unwrap();
    });
    lp.udp_recv_start(server, &answer).unwrap();
    let client = lp.udp_init().unwrap();
    // The send makes the client's socket, of the server's family.
    lp.udp_send(client, b"PING", Some(server_at), Some(&sent(0))).unwrap();
    lp.udp_recv_start(client, &record()).unwrap();
    run_until_with(lp, &mut seen, LIMIT, |_, seen| seen.got.len() == 2 && seen.sent.len() == 2);
    assert_eq!(seen.sent, [(0, Ok(())), (1, Ok(()))]);
    let client_at = lp.udp_getsockname(client).unwrap();
    assert_eq!(seen.got[0].on, server);
    assert_eq!(seen.got[0].data, b"PING");
    assert_eq!(seen.got[0].from.map(|a| a.port()), Some(client_at.port()));
    assert_eq!(
        seen.got[1],
        Got { on: client, data: b"PONG".to_vec(), from: Some(server_at), flags: RecvFlags::empty() }
    );
    close_all(lp, &mut seen, &[server, client]);
}

/// Whether this host has an IPv6 loopback; prints a SKIP line if not.
fn have_ipv6() -> bool {
    match UdpSocket::bind("[::1]:0") {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIP: no IPv6 loopback ({e})");
            false
        }
    }
}

both_backends! {
    /// udp_send_and_recv over IPv4; the unbound client gets a socket at
    /// its first send.
    fn send_and_recv_v4(lp: Seen) {
        ping_pong(lp, v4(0));
    }

    /// udp_send_and_recv over IPv6.
    fn send_and_recv_v6(lp: Seen) {
        if have_ipv6() {
            ping_pong(lp, "[::1]:0".parse().unwrap());
        }
    }

    /// udp_dual_stack: an IPv6 socket bound to `::` without UDP_IPV6ONLY
    /// receives IPv4 datagrams, from an IPv4-mapped address.
    fn dual_stack_receives_ipv4_mapped(lp: Seen) {
        if !have_ipv6() {
            return;
        }
        let mut seen = Seen::default();
        let (server, at) = bound(lp, "[::]:0".parse().unwrap(), 0);
        lp.udp_recv_start(server, &record()).unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.send_to(b"v4", v4(at.port())).unwrap();
        run_until_with(lp, &mut seen, LIMIT, |_, seen| !seen.got.is_empty());
        let mapped = Ipv4Addr::LOCALHOST.to_ipv6_mapped();
        let from = seen.got[0].from.unwrap();
        assert_eq!((from.ip(), from.port()), (IpAddr::V6(mapped), peer.local_addr().unwrap().port()));
        close_all(lp, &mut seen, &[server]);
    }

    /// udp_ipv6_only: a socket bound to `::` with UDP_IPV6ONLY leaves the
    /// port's IPv4 side free and receives no IPv4 datagram; the flag with
    /// an IPv4 address is EINVAL.
    fn ipv6_only(lp: Seen) {
        if !have_ipv6() {
            return;
        }
        let mut seen = Seen::default();
        let u = lp.udp_init().unwrap();
        assert_eq!(lp.udp_bind(u, v4(0), UDP_IPV6ONLY), Err(Error::EINVAL));
        let (server, at) = bound(lp, "[::]:0".parse().unwrap(), UDP_IPV6ONLY);
        // The IPv4 side of the port is free.
        let v4_side = UdpSocket::bind(("0.0.0.0", at.port())).expect("IPv4 side of an IPv6-only port");
        drop(v4_side);
        lp.udp_recv_start(server, &record()).unwrap();
        let peer4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer4.send_to(b"v4", v4(at.port())).unwrap();
        let peer6 = UdpSocket::bind("[::1]:0").unwrap();
        peer6.send_to(b"v6", ("::1", at.port())).unwrap();
        run_until_with(lp, &mut seen, LIMIT, |_, seen| !seen.got.is_empty());
        // The IPv4 datagram went first; the first to arrive is the IPv6 one.
        assert_eq!(seen.got[0].data, b"v6");
        assert_eq!(seen.got[0].from, Some(peer6.local_addr().unwrap()));
        close_all(lp, &mut seen, &[u, server]);
    }

    /// udp_connect: a connected socket sends without an address and has a
    /// peer name; connecting twice is EISCONN; after disconnecting, sends
    /// need an address again and there is no peer.
    fn connect_and_disconnect(lp: Seen) {
        let mut seen = Seen::default();
        let (server, server_at) = bound(lp, v4(0), 0);
        lp.udp_recv_start(server, &record()).unwrap();
        let client = lp.udp_init().unwrap();
        assert_eq!(lp.udp_getpeername(client), Err(Error::ENOTCONN));
        assert_eq!(lp.udp_connect(client, None), Err(Error::ENOTCONN));
        lp.udp_connect(client, Some(server_at)).unwrap();
        assert_eq!(lp.udp_getpeername(client), Ok(server_at));
        assert_eq!(lp.udp_connect(client, Some(server_at)).unwrap_err().errno(), Some(libc::EISCONN));
        lp.udp_send(client, b"connected", None, Some(&sent(0))).unwrap();
        run_until_with(lp, &mut seen, LIMIT, |_, seen| seen.got.len() == 1 && seen.sent.len() == 1);
        assert_eq!(seen.got[0].data, b"connected");
        assert_eq!(seen.got[0].from, Some(lp.udp_getsockname(client).unwrap()));

        lp.udp_connect(client, None).unwrap();
        assert_eq!(lp.udp_getpeername(client), Err(Error::ENOTCONN));
        assert_eq!(lp.udp_send(client, b"x", None, None).unwrap_err().errno(), Some(libc::EDESTADDRREQ));
        assert_eq!(lp.udp_try_send(client, b"x", None).unwrap_err().errno(), Some(libc::EDESTADDRREQ));
        lp.udp_send(client, b"disconnected", Some(server_at), Some(&sent(1))).unwrap();
        run_until_with(lp, &mut seen, LIMIT, |_, seen| seen.got.len() == 2 && seen.sent.len() == 2);
        assert_eq!(seen.got[1].data, b"disconnected");
        assert_eq!(seen.sent, [(0, Ok(())), (1, Ok(()))]);
        close_all(lp, &mut seen, &[server, client]);
    }

    /// udp_connect's EISCONN case: a send with an address on a connected
    /// socket fails at once and queues nothing (no callback runs).
    fn send_with_address_on_connected_socket_is_eisconn(lp: Seen) {
        let mut seen = Seen::default();
        let (server, server_at) = bound(lp, v4(0), 0);
        let client = lp.udp_init().unwrap();
        lp.udp_connect(client, Some(server_at)).unwrap();
        let e = lp.udp_send(client, b"x", Some(server_at), Some(&sent(0))).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EISCONN));
        assert_eq!(lp.udp_try_send(client, b"x", Some(server_at)).unwrap_err().errno(), Some(libc::EISCONN));
        assert_eq!((lp.udp_send_queue_count(client), lp.udp_send_queue_size(client)), (Ok(0), Ok(0)));
        close_all(lp, &mut seen, &[server, client]);
        assert!(seen.sent.is_empty(), "no callback for a send that was refused: {:?}", seen.sent);
    }

    /// A connected socket whose peer port is closed gets ECONNREFUSED (the
    /// ICMP port unreachable) in its receive callback, and keeps receiving.
    fn icmp_refusal_is_reported_and_receiving_goes_on(lp: Seen) {
        let mut seen = Seen::default();
        let gone = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let client = lp.udp_init().unwrap();
        lp.udp_connect(client, Some(gone)).unwrap();
        lp.udp_recv_start(client, &record()).unwrap();
        lp.udp_send(client, b"anyone?", None, Some(&sent(0))).unwrap();
        run_until_with(lp, &mut seen, LIMIT, |_, seen| !seen.recv_errors.is_empty() && !seen.sent.is_empty());
        assert_eq!(seen.recv_errors, [(client, Error::ECONNREFUSED)]);
        assert!(lp.is_active(client), "still receiving after an ICMP error");
        // Still receiving: the peer comes back on its port and is heard.
        let peer = UdpSocket::bind(gone).unwrap();
        peer.send_to(b"still here", lp.udp_getsockname(client).unwrap()).unwrap();
        run_until_with(lp, &mut seen, LIMIT, |_, seen| !seen.got.is_empty());
        assert_eq!(seen.got[0].data, b"still here");
        close_all(lp, &mut seen, &[client]);
    }

    /// udp_multicast_join: a socket joined to 239.255.0.1 on the loopback
    /// interface receives what another socket sends there with loop on;
    /// leaving works once, then EADDRNOTAVAIL.
    fn multicast_join_on_loopback(lp: Seen) {
        let mut seen = Seen::default();
        let group: IpAddr = "239.255.0.1".parse().unwrap();
        let lo = MulticastInterface::Addr(Ipv4Addr::LOCALHOST);
        let (member, at) = bound(lp, "0.0.0.0:0".parse().unwrap(), UDP_REUSEADDR);
        if let Err(e) = lp.udp_set_membership(member, group, lo, Membership::Join) {
            eprintln!("SKIP: cannot join a multicast group on loopback here ({e})");
            return close_all(lp, &mut seen, &[member]);
        }
        lp.udp_recv_start(member, &record()).unwrap();
        let (sender, sender_at) = bound(lp, v4(0), 0);
        lp.udp_set_multicast_interface(sender, lo).unwrap();
        lp.udp_set_multicast_loop(sender, true).unwrap();
        lp.udp_set_multicast_ttl(sender, 1).unwrap();
        lp.udp_send(sender, b"to the group", Some((group, at.port()).into()), Some(&sent(0))).unwrap();
        run_until_with(lp, &mut seen, LIMIT, |_, seen| !seen.sent.is_empty());
        if let (_, Err(e)) = seen.sent[0] {
            eprintln!("SKIP: multicast cannot leave by loopback here ({e})");
            return close_all(lp, &mut seen, &[member, sender]);
        }
        run_until_with(lp, &mut seen, LIMIT, |_, seen| !seen.got.is_empty());
        assert_eq!(seen.got[0], Got { on: member, data: b"to the group".to_vec(), from: Some(sender_at), flags: RecvFlags::empty() });
        lp.udp_set_membership(member, group, lo, Membership::Leave).unwrap();
        let again = lp.udp_set_membership(member, group, lo, Membership::Leave).unwrap_err();
        assert_eq!(again.errno(), Some(libc::EADDRNOTAVAIL));
        close_all(lp, &mut seen, &[member, sender]);
    }

    /// udp_multicast_join6: a socket joined to ff02::1:3 on `lo` receives
    /// what another socket sends there. Linux's `lo` has no IPv6 multicast
    /// route by default: then the send fails (ENETUNREACH) and the test
    /// prints a SKIP line after checking join and leave.
    fn multicast_join_v6_on_loopback(lp: Seen) {
        if !have_ipv6() {
            return;
        }
        let mut seen = Seen::default();
        let group: IpAddr = "ff02::1:3".parse().unwrap();
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let lo = MulticastInterface::Index(unsafe { libc::if_nametoindex(c"lo".as_ptr()) });
        let (member, at) = bound(lp, "[::]:0".parse().unwrap(), UDP_REUSEADDR);
        assert_eq!(
            lp.udp_set_membership(member, group, MulticastInterface::Addr(Ipv4Addr::LOCALHOST), Membership::Join),
            Err(Error::EINVAL),
            "an IPv6 group takes an interface index"
        );
        if let Err(e) = lp.udp_set_membership(member, group, lo, Membership::Join) {
            eprintln!("SKIP: cannot join an IPv6 multicast group on lo here ({e})");
            return close_all(lp, &mut seen, &[member]);
        }
        lp.udp_recv_start(member, &record()).unwrap();
        let (sender, _) = bound(lp, "[::1]:0".parse().unwrap(), 0);
        lp.udp_set_multicast_interface(sender, lo).unwrap();
        lp.udp_set_multicast_loop(sender, true).unwrap();
        lp.udp_send(sender, b"six", Some((group, at.port()).into()), Some(&sent(0))).unwrap();
        run_until_with(lp, &mut seen, LIMIT, |_, seen| !seen.sent.is_empty());
        match &seen.sent[0].1 {
            Ok(()) => {
                run_until_with(lp, &mut seen, LIMIT, |_, seen| !seen.got.is_empty());
                assert_eq!(seen.got[0].data, b"six");
            }
            Err(e) => eprintln!("SKIP part: IPv6 multicast cannot leave by lo here ({e})"),
        }
        lp.udp_set_membership(member, group, lo, Membership::Leave).unwrap();
        close_all(lp, &mut seen, &[member, sender]);
    }

    /// udp_multicast_join (source-specific): a member of (232.1.1.1,
    /// 127.0.0.1) receives from 127.0.0.1 only: a datagram sent earlier from
    /// 127.0.0.2 never arrives.
    fn multicast_source_specific_join_on_loopback(lp: Seen) {
        let mut seen = Seen::default();
        let group: IpAddr = "232.1.1.1".parse().unwrap();
        let lo = MulticastInterface::Addr(Ipv4Addr::LOCALHOST);
        let source = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (member, at) = bound(lp, "0.0.0.0:0".parse().unwrap(), UDP_REUSEADDR);
        assert_eq!(
            lp.udp_set_source_membership(member, group, lo, "::1".parse().unwrap(), Membership::Join),
            Err(Error::EINVAL),
            "group and source of different families"
        );
        if let Err(e) = lp.udp_set_source_membership(member, group, lo, source, Membership::Join) {
            eprintln!("SKIP: cannot join a source-specific group on loopback here ({e})");
            return close_all(lp, &mut seen, &[member]);
        }
        lp.udp_recv_start(member, &record()).unwrap();
        let (other, _) = bound(lp, "127.0.0.2:0".parse().unwrap(), 0);
        let (sender, sender_at) = bound(lp, v4(0), 0);
        for (i, &u) in [other, sender].iter().enumerate() {
            lp.udp_set_multicast_interface(u, lo).unwrap();
            lp.udp_send(u, &[i as u8], Some((group, at.port()).into()), Some(&sent(i))).unwrap();
            // One at a time, so the filtered one surely went first.
            run_until_with(lp, &mut seen, LIMIT, |_, seen| seen.sent.len() == i + 1);
        }
        if let Some((_, Err(e))) = seen.sent.iter().find(|s| s.1.is_err()) {
            eprintln!("SKIP: multicast cannot leave by loopback here ({e})");
            return close_all(lp, &mut seen, &[member, other, sender]);
        }
        run_until_with(lp, &mut seen, LIMIT, |_, seen| !seen.got.is_empty());
        assert_eq!(seen.got[0].data, [1], "only the source's datagram: {:?}", seen.got);
        assert_eq!(seen.got[0].from, Some(sender_at));
        lp.udp_set_source_membership(member, group, lo, source, Membership::Leave).unwrap();
        close_all(lp, &mut seen, &[member, other, sender]);
    }

    /// udp_multicast_ttl and udp_multicast_interface: TTL 0..=255, the
    /// interface by address, by index or the default; an IPv6 socket takes
    /// no IPv4 address; a send with them set completes.
    fn multicast_ttl_and_interface(lp: Seen) {
        let mut seen = Seen::default();
        let u = lp.udp_init().unwrap();
        assert_eq!(lp.udp_set_multicast_ttl(u, 1), Err(Error::EBADF), "no socket yet");
        lp.udp_bind(u, v4(0), 0).unwrap();
        for ttl in [0, 1, 32, 255] {
            lp.udp_set_multicast_ttl(u, ttl).unwrap();
        }
        assert_eq!(lp.udp_set_multicast_ttl(u, 256), Err(Error::EINVAL));
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let lo_index = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        assert!(lo_index > 0);
        lp.udp_set_multicast_interface(u, MulticastInterface::Any).unwrap();
        lp.udp_set_multicast_interface(u, MulticastInterface::Index(lo_index)).unwrap();
        let e = lp.udp_set_multicast_interface(u, MulticastInterface::Addr("192.0.2.123".parse().unwrap())).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EADDRNOTAVAIL), "not an address of this host");
        lp.udp_set_multicast_interface(u, MulticastInterface::Addr(Ipv4Addr::LOCALHOST)).unwrap();
        lp.udp_set_multicast_ttl(u, 32).unwrap();
        lp.udp_send(u, b"ttl", Some("239.255.0.1:9123".parse().unwrap()), Some(&sent(0))).unwrap();
        run_until_with(lp, &mut seen, LIMIT, |_, seen| !seen.sent.is_empty());
        match &seen.sent[0].1 {
            Ok(()) => {}
            Err(e) => eprintln!("SKIP part: multicast cannot leave by loopback here ({e})"),
        }
        let mut handles = vec![u];
        if have_ipv6() {
            let (v6, _) = bound(lp, "[::1]:0".parse().unwrap(), 0);
            handles.push(v6);
            assert_eq!(lp.udp_set_multicast_interface(v6, MulticastInterface::Addr(Ipv4Addr::LOCALHOST)), Err(Error::EINVAL));
            lp.udp_set_multicast_interface(v6, MulticastInterface::Index(lo_index)).unwrap();
            lp.udp_set_multicast_interface(v6, MulticastInterface::Any).unwrap();
            lp.udp_set_multicast_ttl(v6, 5).unwrap();
            lp.udp_set_multicast_loop(v6, false).unwrap();
        }
        close_all(lp, &mut seen, &handles);
    }

    /// udp_options (broadcast): a send to the loopback broadcast address is
    /// refused (EACCES) without SO_BROADCAST and delivered with it.
    fn broadcast_option(lp: Seen) {
        let mut seen = Seen::default();
        let (listener, at) = bound(lp, "0.0.0.0:0".parse().unwrap(), 0);
        lp.udp_recv_start(listener, &record()).unwrap();
        let (sender, sender_at) = bound(lp, v4(0), 0);
        let broadcast: SocketAddr = ("127.255.255.255".parse::<Ipv4Addr>().unwrap(), at.port()).into();
        lp.udp_send(sender, b"no", Some(broadcast), Some(&sent(0))).unwrap();
        run_until_with(lp, &mut seen, LIMIT, |_, seen| seen.sent.len() == 1);
        assert_eq!(seen.sent[0], (0, Err(Error::EACCES)), "broadcast without SO_BROADCAST");
        lp.udp_set_broadcast(sender, true).unwrap();
        lp.udp_send(sender, b"yes", Some(broadcast), Some(&sent(1))).unwrap();
        run_until_with(lp, &mut seen, LIMIT, |_, seen| seen.sent.len() == 2);
        match &seen.sent[1] {
            (1, Ok(())) => {
                run_until_with(lp, &mut seen, LIMIT, |_, seen| !seen.got.is_empty());
                assert_eq!((seen.got[0].data.as_slice(), seen.got[0].from), (&b"yes"[..], Some(sender_at)));
            }
            (_, status) => eprintln!("SKIP part: no loopback broadcast route here ({status:?})"),
        }
        lp.udp_set_broadcast(sender, false).unwrap();
        close_all(lp, &mut seen, &[listener, sender]);
    }

    /// udp_options: TTL 1..=255, multicast loop, buffer sizes; options
    /// before the socket exists are EBADF.
    fn options(lp: Seen) {
        let mut seen = Seen::default();
        let u = lp.udp_init().unwrap();
        assert_eq!(lp.udp_set_broadcast(u, true), Err(Error::EBADF));
        assert_eq!(lp.udp_set_ttl(u, 1), Err(Error::EBADF));
        assert_eq!(lp.udp_getsockname(u), Err(Error::EBADF));
        lp.udp_bind(u, v4(0), 0).unwrap();
        for ttl in [1, 64, 255] {
            lp.udp_set_ttl(u, ttl).unwrap();
        }
        assert_eq!(lp.udp_set_ttl(u, 0), Err(Error::EINVAL));
        assert_eq!(lp.udp_set_ttl(u, 256), Err(Error::EINVAL));
        lp.udp_set_multicast_loop(u, false).unwrap();
        lp.udp_set_multicast_loop(u, true).unwrap();
        lp.udp_set_send_buffer_size(u, 32 * 1024).unwrap();
        lp.udp_set_recv_buffer_size(u, 48 * 1024).unwrap();
        // Linux reports twice what was set.
        assert_eq!(lp.udp_send_buffer_size(u), Ok(64 * 1024));
        assert_eq!(lp.udp_recv_buffer_size(u), Ok(96 * 1024));
        assert_eq!(lp.handle_type(u), Ok(HandleType::Udp));
        close_all(lp, &mut seen, &[u]);
    }

    /// udp_try_send: sends at once and returns the length; EAGAIN while
    /// queued sends are in flight, so datagrams keep their order.
    fn try_send(lp: Seen) {
        let mut seen = Seen::default();
        let (server, server_at) = bound(lp, v4(0), 0);
        lp.udp_recv_start(server, &record()).unwrap();
        let client = lp.udp_init().unwrap();
        assert_eq!(lp.udp_try_send(client, b"EXIT", Some(server_at)), Ok(4));
        lp.udp_send(client, b"queued", Some(server_at), Some(&sent(0))).unwrap();
        assert_eq!(lp.udp_try_send(client, b"too soon", Some(server_at)), Err(Error::EAGAIN));
        run_until_with(lp, &mut seen, LIMIT, |_, seen| seen.got.len() == 2 && seen.sent.len() == 1);
        assert_eq!(lp.udp_try_send(client, b"", Some(server_at)), Ok(0));
        run_until_with(lp, &mut seen, LIMIT, |_, seen| seen.got.len() == 3);
        let data: Vec<&[u8]> = seen.got.iter().map(|g| g.data.as_slice()).collect();
        assert_eq!(data, [&b"EXIT"[..], b"queued", b""]);
        close_all(lp, &mut seen, &[server, client]);
    }

    /// Send queue order: 128 sends in flight on one socket at once (the
    /// queue counts them all), each with its own callback; the callbacks
    /// run in the order of the sends and the datagrams arrive in it.
    fn send_queue_order(lp: Seen) {
        const N: usize = 128;
        let mut seen = Seen::default();
        let (server, server_at) = bound(lp, v4(0), 0);
        lp.udp_recv_start(server, &record()).unwrap();
        let client = lp.udp_init().unwrap();
        let callbacks: Vec<OnSend<Seen>> = (0..N).map(sent).collect();
        for (i, cb) in callbacks.iter().enumerate() {
            lp.udp_send(client, &(i as u64).to_le_bytes(), Some(server_at), Some(cb)).unwrap();
        }
        assert_eq!(lp.udp_send_queue_count(client), Ok(N));
        assert_eq!(lp.udp_send_queue_size(client), Ok(N * 8));
        run_until_with(lp, &mut seen, LIMIT, |_, seen| seen.sent.len() == N && seen.got.len() == N);
        let order: Vec<usize> = seen.sent.iter().map(|(tag, status)| {
            assert_eq!(*status, Ok(()));
            *tag
        }).collect();
        assert_eq!(order, (0..N).collect::<Vec<_>>(), "send callbacks in send order");
        let arrived: Vec<u64> = seen.got.iter().map(|g| u64::from_le_bytes(g.data[..].try_into().unwrap())).collect();
        assert_eq!(arrived, (0..N as u64).collect::<Vec<_>>(), "datagrams in send order");
        assert_eq!((lp.udp_send_queue_count(client), lp.udp_send_queue_size(client)), (Ok(0), Ok(0)));
        close_all(lp, &mut seen, &[server, client]);
    }

    /// Close with sends in flight: every send callback runs, in order,
    /// before the close callback, with Ok (it went out before the cancel)
    /// or ECANCELED; nothing is left in flight. Half the sends have had a
    /// loop iteration to go out before the close.
    fn close_with_sends_in_flight(lp: Seen) {
        const N: usize = 50;
        let mut seen = Seen::default();
        let (server, server_at) = bound(lp, v4(0), 0);
        let client = lp.udp_init().unwrap();
        let callbacks: Vec<OnSend<Seen>> = (0..N).map(sent).collect();
        for (i, cb) in callbacks.iter().enumerate() {
            lp.udp_send(client, &[0x55; 200], Some(server_at), Some(cb)).unwrap();
            if i == N / 2 - 1 {
                lp.run(RunMode::NoWait, &mut seen).unwrap();
            }
        }
        let on_close = OnClose::new(|_, seen: &mut Seen, _| {
            assert_eq!(seen.sent.len(), N, "every send callback before the close callback");
            seen.closed += 1;
        });
        lp.close(client, Some(&on_close)).unwrap();
        assert_eq!(lp.udp_send(client, b"late", Some(server_at), None), Err(Error::STALE_HANDLE));
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut seen).unwrap());
        assert_eq!(seen.closed, 1);
        let order: Vec<usize> = seen.sent.iter().map(|s| s.0).collect();
        assert_eq!(order, (0..N).collect::<Vec<_>>());
        for (tag, status) in &seen.sent {
            assert!(matches!(status, Ok(()) | Err(Error::ECANCELED)), "send {tag}: {status:?}");
        }
        assert!(seen.sent[..N / 2].iter().all(|s| s.1.is_ok()), "the first half had an iteration to go out");
        eprintln!(
            "{}: {} of {N} sends went out before the close",
            lp.backend(),
            seen.sent.iter().filter(|s| s.1.is_ok()).count()
        );
    }

    /// A datagram longer than a receive buffer's payload space arrives cut,
    /// flagged TRUNCATED; one that fits does not; an empty datagram is a
    /// datagram, and receiving goes on after it.
    fn truncated_and_empty_datagrams(lp: Seen) {
        let room = PoolConfig::default().size as usize - 44;
        let mut seen = Seen::default();
        let (server, server_at) = bound(lp, v4(0), 0);
        lp.udp_recv_start(server, &record()).unwrap();
        let big: Vec<u8> = (0..20_000u32).map(|i| (i * 7) as u8).collect();
        let client = lp.udp_init().unwrap();
        for data in [&big[..], &big[..room], b"", b"after"] {
            lp.udp_send(client, data, Some(server_at), None).unwrap();
        }
        run_until_with(lp, &mut seen, LIMIT, |_, seen| seen.got.len() == 4);
        let got: Vec<(usize, bool)> = seen.got.iter().map(|g| (g.data.len(), g.flags.is_truncated())).collect();
        assert_eq!(got, [(room, true), (room, false), (0, false), (5, false)]);
        assert_eq!(seen.got[0].data, &big[..room], "the first part of the cut datagram");
        assert_eq!(seen.got[0].flags, RecvFlags::TRUNCATED);
        close_all(lp, &mut seen, &[server, client]);
    }

    /// Receive stop and start: datagrams the backend had already taken
    /// when receiving stopped are delivered, in order, after the restart.
    fn recv_stop_and_start_lose_nothing(lp: Seen) {
        let mut seen = Seen { stop_after: 1, ..Seen::default() };
        let (server, server_at) = bound(lp, v4(0), 0);
        lp.udp_recv_start(server, &record()).unwrap();
        assert_eq!(lp.udp_recv_start(server, &record()).unwrap_err().errno(), Some(libc::EALREADY));
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..5u8 {
            peer.send_to(&[i], server_at).unwrap();
        }
        run_until_with(lp, &mut seen, LIMIT, |_, seen| seen.got.len() == 1);
        assert!(!lp.is_active(server));
        // Let any cancelled receive come back with what it held.
        for _ in 0..3 {
            lp.run(RunMode::NoWait, &mut seen).unwrap();
        }
        assert_eq!(seen.got.len(), 1, "nothing delivered while stopped");
        seen.stop_after = 0;
        lp.udp_recv_start(server, &record()).unwrap();
        run_until_with(lp, &mut seen, LIMIT, |_, seen| seen.got.len() == 5);
        let data: Vec<u8> = seen.got.iter().map(|g| g.data[0]).collect();
        assert_eq!(data, [0, 1, 2, 3, 4]);
        close_all(lp, &mut seen, &[server]);
    }

    /// udp_open: a bound std socket's fd is adopted and receives; a
    /// connected one sends without an address; a TCP socket is refused
    /// (and closed: the harness sees no leak).
    fn open_from_fd(lp: Seen) {
        let mut seen = Seen::default();
        let std_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = std_sock.local_addr().unwrap();
        let u = lp.udp_open(OwnedFd::from(std_sock)).unwrap();
        assert_eq!(lp.udp_getsockname(u), Ok(at));
        assert_eq!(lp.udp_bind(u, v4(0), 0), Err(Error::EINVAL), "already bound");
        lp.udp_recv_start(u, &record()).unwrap();

        let connected = UdpSocket::bind("127.0.0.1:0").unwrap();
        connected.connect(at).unwrap();
        let c = lp.udp_open(OwnedFd::from(connected)).unwrap();
        assert_eq!(lp.udp_getpeername(c), Ok(at));
        lp.udp_send(c, b"adopted", None, Some(&sent(0))).unwrap();
        run_until_with(lp, &mut seen, LIMIT, |_, seen| !seen.got.is_empty() && !seen.sent.is_empty());
        assert_eq!(seen.got[0].data, b"adopted");

        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(lp.udp_open(OwnedFd::from(tcp)), Err(Error::EINVAL));
        close_all(lp, &mut seen, &[u, c]);
    }

    /// Bind flags: without them a second bind of a port is EADDRINUSE;
    /// with UDP_REUSEPORT (or UDP_REUSEADDR) on both it succeeds; unknown
    /// flags are EINVAL.
    fn bind_flags(lp: Seen) {
        let mut seen = Seen::default();
        let (a, at) = bound(lp, v4(0), 0);
        let b = lp.udp_init().unwrap();
        assert_eq!(lp.udp_bind(b, at, 0), Err(Error::EADDRINUSE));
        assert_eq!(lp.udp_bind(b, at, 0x100), Err(Error::EINVAL));
        let (c, port) = bound(lp, v4(0), UDP_REUSEPORT);
        let d = lp.udp_init().unwrap();
        lp.udp_bind(d, port, UDP_REUSEPORT).unwrap();
        let (e, shared) = bound(lp, v4(0), UDP_REUSEADDR);
        let f = lp.udp_init().unwrap();
        lp.udp_bind(f, shared, UDP_REUSEADDR).unwrap();
        close_all(lp, &mut seen, &[a, b, c, d, e, f]);
    }
}
