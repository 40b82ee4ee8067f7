//! Name resolution on the work pool (getaddrinfo, getnameinfo) and
//! connecting by host name or to a list of addresses, on both backends.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use uvring::*;
use uvring_tests::{both_backends, listener, run_until_with};

/// Generous: a sandbox without DNS may wait for the resolver's timeouts.
const RESOLVER_LIMIT: Duration = Duration::from_secs(60);
const LIMIT: Duration = Duration::from_secs(20);

/// What the callbacks saw.
#[derive(Default)]
struct Seen {
    addrs: Option<Result<Vec<SocketAddr>>>,
    names: Option<Result<(String, String)>>,
    connects: Vec<Result<()>>,
    accepted: Vec<TcpStream>,
    read: Vec<u8>,
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// Accepts every connection, reads what arrives into `Seen::read`.
fn accepting() -> OnConnection<Seen, TcpListener> {
    let on_read = OnRead::new(|lp: &mut Loop<Seen>, seen: &mut Seen, s, r| match r {
        Ok(bytes) => seen.read.extend_from_slice(bytes),
        Err(_) => lp.close(s, None).unwrap(),
    });
    OnConnection::new(move |lp, seen: &mut Seen, server, st| {
        st.unwrap();
        while let Ok(c) = lp.accept(server) {
            lp.read_start(c, &on_read).unwrap();
            seen.accepted.push(c);
        }
    })
}

fn record_connect() -> OnConnect<Seen, TcpStream> {
    OnConnect::new(|_, seen: &mut Seen, _, r| seen.connects.push(r))
}

both_backends! {
    /// `localhost` resolves to loopback addresses carrying the service's port.
    fn getaddrinfo_localhost(lp: Seen) {
        let hints = AddrInfoHints::default().socket(SocketKind::Stream);
        lp.getaddrinfo("localhost", Some("8080"), hints, |_, seen: &mut Seen, r| seen.addrs = Some(r)).unwrap();
        let mut seen = Seen::default();
        lp.run(RunMode::Default, &mut seen).unwrap();
        let addrs = seen.addrs.take().unwrap().expect("localhost resolves");
        assert!(!addrs.is_empty());
        for a in &addrs {
            assert!(a.ip().is_loopback() && a.port() == 8080, "{addrs:?}");
        }
        // Each address once, even without a socket type in the hints.
        lp.getaddrinfo("localhost", None, AddrInfoHints::default(), |_, seen: &mut Seen, r| seen.addrs = Some(r)).unwrap();
        lp.run(RunMode::Default, &mut seen).unwrap();
        let all = seen.addrs.take().unwrap().unwrap();
        let mut dedup = all.clone();
        dedup.dedup();
        assert_eq!(all, dedup);
        assert!(all.iter().all(|a| a.port() == 0));
    }

    /// A name under `.invalid` (RFC 6761: never resolves) is an error
    /// value: EAI_NONAME, or EAI_AGAIN/EAI_FAIL where no name server
    /// answers; never a panic, and within a bounded wait.
    fn getaddrinfo_invalid_name(lp: Seen) {
        let hints = AddrInfoHints::default();
        lp.getaddrinfo("no-such-host.uvring.invalid", Some("80"), hints, |_, seen: &mut Seen, r| seen.addrs = Some(r)).unwrap();
        let mut seen = Seen::default();
        run_until_with(lp, &mut seen, RESOLVER_LIMIT, |_, seen| seen.addrs.is_some());
        let err = seen.addrs.unwrap().expect_err("an .invalid name never resolves");
        assert!(
            [Error::EAI_NONAME, Error::EAI_AGAIN, Error::EAI_FAIL, Error::EAI_NODATA].contains(&err) || err.errno().is_some(),
            "{err:?}"
        );
        assert!(!err.to_string().is_empty());
        eprintln!("resolving an .invalid name: {err}");
    }

    /// Numeric-only hints, family filters and bad arguments.
    fn getaddrinfo_hints_and_errors(lp: Seen) {
        let numeric = AddrInfoHints::default().flags(AddrInfoFlags::NUMERIC_HOST | AddrInfoFlags::NUMERIC_SERVICE);
        lp.getaddrinfo("::1", Some("443"), numeric, |_, seen: &mut Seen, r| seen.addrs = Some(r)).unwrap();
        let mut seen = Seen::default();
        lp.run(RunMode::Default, &mut seen).unwrap();
        assert_eq!(seen.addrs.take().unwrap(), Ok(vec!["[::1]:443".parse().unwrap()]));

        lp.getaddrinfo("localhost", None, numeric, |_, seen: &mut Seen, r| seen.addrs = Some(r)).unwrap();
        lp.run(RunMode::Default, &mut seen).unwrap();
        assert_eq!(seen.addrs.take().unwrap(), Err(Error::EAI_NONAME), "NUMERIC_HOST refuses names");

        let v4 = numeric.family(AddressFamily::Ipv4);
        lp.getaddrinfo("::1", None, v4, |_, seen: &mut Seen, r| seen.addrs = Some(r)).unwrap();
        lp.run(RunMode::Default, &mut seen).unwrap();
        let err = seen.addrs.take().unwrap().unwrap_err();
        assert!([Error::EAI_ADDRFAMILY, Error::EAI_NONAME, Error::EAI_FAMILY].contains(&err), "{err:?}");

        lp.getaddrinfo("127.0.0.1", Some("no-such-service-uvring"), AddrInfoHints::default(), |_, seen: &mut Seen, r| {
            seen.addrs = Some(r)
        })
        .unwrap();
        lp.run(RunMode::Default, &mut seen).unwrap();
        let err = seen.addrs.take().unwrap().unwrap_err();
        assert!([Error::EAI_SERVICE, Error::EAI_NONAME].contains(&err), "{err:?}");

        assert_eq!(lp.getaddrinfo("a\0b", None, numeric, |_, _, _| panic!("not queued")), Err(Error::EINVAL));
        assert_eq!(lp.work_in_flight(), 0);
    }

    /// getnameinfo: numeric, and the name of 127.0.0.1 from /etc/hosts.
    fn getnameinfo_numeric_and_named(lp: Seen) {
        let addr: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let flags = NameInfoFlags::NUMERIC_HOST | NameInfoFlags::NUMERIC_SERVICE;
        lp.getnameinfo(addr, flags, |_, seen: &mut Seen, r| seen.names = Some(r)).unwrap();
        let mut seen = Seen::default();
        lp.run(RunMode::Default, &mut seen).unwrap();
        assert_eq!(seen.names.take().unwrap(), Ok(("127.0.0.1".to_string(), "80".to_string())));
        lp.getnameinfo(addr, NameInfoFlags::empty(), |_, seen: &mut Seen, r| seen.names = Some(r)).unwrap();
        run_until_with(lp, &mut seen, RESOLVER_LIMIT, |_, seen| seen.names.is_some());
        // Whatever the host's files say, it is a name or the number, never a panic.
        let (host, service) = seen.names.take().unwrap().unwrap();
        assert!(!host.is_empty() && !service.is_empty(), "{host:?} {service:?}");
    }

    /// Connect by host name to a local listener; a write queued before the
    /// name is resolved goes out after the connect.
    fn tcp_connect_host_localhost(lp: Seen) {
        let (server, addr) = listener(lp, &accepting());
        let sock = lp.tcp_init().unwrap();
        let c = lp.tcp_connect_host(sock, &format!("localhost:{}", addr.port()), &record_connect()).unwrap();
        lp.write(c, b"by name", None).unwrap();
        let mut seen = Seen::default();
        run_until_with(lp, &mut seen, LIMIT, |_, seen| seen.read.len() == 7);
        assert_eq!(seen.connects, [Ok(())]);
        assert_eq!(seen.read, b"by name");
        let peer = lp.tcp_getpeername(c).unwrap();
        assert!(peer.ip().is_loopback() && peer.port() == addr.port());
        lp.close(c, None).unwrap();
        lp.close(server, None).unwrap();
        for s in seen.accepted.clone() {
            if lp.is_live(s) && !lp.is_closing(s) {
                lp.close(s, None).unwrap();
            }
        }
        lp.run(RunMode::Default, &mut seen).unwrap();
    }

    /// An IPv6 literal target is not resolved; a refused one reports its error.
    fn tcp_connect_host_numeric_and_malformed(lp: Seen) {
        let port = closed_port().port();
        let sock = lp.tcp_init().unwrap();
        assert_eq!(lp.tcp_connect_host(sock, "localhost", &record_connect()).map(|_| ()), Err(Error::EINVAL));
        let c = lp.tcp_connect_host(sock, &format!("127.0.0.1:{port}"), &record_connect()).unwrap();
        let mut seen = Seen::default();
        lp.run(RunMode::Default, &mut seen).unwrap();
        assert_eq!(seen.connects, [Err(Error::ECONNREFUSED)]);
        lp.close(c, None).unwrap();
        lp.run(RunMode::Default, &mut seen).unwrap();
    }

    /// An unknown host fails the connect with the resolver's error.
    fn tcp_connect_host_unknown(lp: Seen) {
        let sock = lp.tcp_init().unwrap();
        let c = lp.tcp_connect_host(sock, "no-such-host.uvring.invalid:80", &record_connect()).unwrap();
        let mut seen = Seen::default();
        run_until_with(lp, &mut seen, RESOLVER_LIMIT, |_, seen| !seen.connects.is_empty());
        let err = seen.connects[0].unwrap_err();
        assert!(err.code() <= -3000 || err.errno().is_some(), "{err:?}");
        lp.close(c, None).unwrap();
        lp.run(RunMode::Default, &mut seen).unwrap();
        assert_eq!(seen.connects.len(), 1);
    }

    /// Closing a stream whose name is being resolved ends the connect with
    /// ECANCELED, once.
    fn tcp_connect_host_close_while_resolving(lp: Seen) {
        let sock = lp.tcp_init().unwrap();
        let c = lp.tcp_connect_host(sock, "localhost:9", &record_connect()).unwrap();
        lp.close(c, None).unwrap();
        let mut seen = Seen::default();
        lp.run(RunMode::Default, &mut seen).unwrap();
        assert_eq!(seen.connects, [Err(Error::ECANCELED)]);
        assert_eq!(lp.work_in_flight(), 0);
    }

    /// Each address is tried in turn: refused ones (and, where IPv6 is off,
    /// one that cannot even start) give way to the one that listens; when
    /// all fail, the last error is reported.
    fn tcp_connect_addrs_tries_each_in_turn(lp: Seen) {
        let (server, addr) = listener(lp, &accepting());
        let refused = closed_port();
        let v6_refused = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), refused.port());
        let sock = lp.tcp_init().unwrap();
        let c = lp.tcp_connect_addrs(sock, &[refused, v6_refused, addr], &record_connect()).unwrap();
        let mut seen = Seen::default();
        run_until_with(lp, &mut seen, LIMIT, |_, seen| !seen.connects.is_empty() && !seen.accepted.is_empty());
        assert_eq!(seen.connects, [Ok(())]);
        assert_eq!(lp.tcp_getpeername(c).unwrap(), addr);

        let sock = lp.tcp_init().unwrap();
        let failing = lp.tcp_connect_addrs(sock, &[v6_refused, refused], &record_connect()).unwrap();
        run_until_with(lp, &mut seen, LIMIT, |_, seen| seen.connects.len() == 2);
        assert_eq!(seen.connects[1], Err(Error::ECONNREFUSED), "the last address's error");
        let sock = lp.tcp_init().unwrap();
        assert_eq!(lp.tcp_connect_addrs(sock, &[], &record_connect()).map(|_| ()), Err(Error::EINVAL));
        for h in [c.id(), failing.id(), sock.id(), server.id()] {
            lp.close(h, None).unwrap();
        }
        for s in seen.accepted.clone() {
            if lp.is_live(s) && !lp.is_closing(s) {
                lp.close(s, None).unwrap();
            }
        }
        lp.run(RunMode::Default, &mut seen).unwrap();
    }
}
