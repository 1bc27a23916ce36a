//! In-process tests: sockets are made, dumped, closed and restored in this
//! process, each test in a network namespace of its own (unshare(2)
//! `CLONE_NEWNET` affects only the calling thread, and every test runs on
//! its own thread). They need root (CAP_SYS_ADMIN for the namespace,
//! CAP_NET_ADMIN for TCP repair) and are skipped with a note otherwise.

use super::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

/// Move this thread into a new network namespace with `lo` up. `false`
/// (and the test returns) when we may not.
fn netns() -> bool {
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        eprintln!("skipped: unshare(CLONE_NEWNET): {e} (needs root)");
        return false;
    }
    let st = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("run ip");
    assert!(st.success(), "ip link set lo up");
    true
}

fn est() -> DumpOpts {
    DumpOpts {
        tcp_established: true,
        tcp_close: false,
    }
}

/// Byte `i` of a test stream; a lost or repeated byte shifts the pattern.
fn pat(seed: u8, i: usize) -> u8 {
    ((i % 251) as u8).wrapping_add(seed)
}

fn stream(seed: u8, from: usize, len: usize) -> Vec<u8> {
    (from..from + len).map(|i| pat(seed, i)).collect()
}

/// Read exactly `len` bytes and check them against the pattern.
fn expect(s: &mut TcpStream, seed: u8, from: usize, len: usize) {
    let mut got = vec![0u8; len];
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.read_exact(&mut got).expect("read the expected bytes");
    let want = stream(seed, from, len);
    if let Some(i) = (0..len).find(|&i| got[i] != want[i]) {
        panic!("byte {} differs: got {} want {}", from + i, got[i], want[i]);
    }
}

fn dump_close_restore(s: TcpStream, o: &DumpOpts) -> (InetEntry, TcpStream) {
    let e = dump(s.as_fd(), o).expect("dump");
    drop(s);
    let fd = restore(&e, &RestoreOpts::default()).expect("restore");
    (e, TcpStream::from(fd))
}

fn new_sock(v6: bool, ty: sk::SockType) -> OwnedFd {
    let af = if v6 {
        sk::AddressFamily::Inet6
    } else {
        sk::AddressFamily::Inet
    };
    sk::socket(af, ty, SockFlag::SOCK_CLOEXEC, None).unwrap()
}

#[test]
fn listening_socket_keeps_address_backlog_and_options() {
    if !netns() {
        return;
    }
    for (v6, ip) in [(false, "127.0.0.1"), (true, "::1")] {
        let s = new_sock(v6, sk::SockType::Stream);
        set_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).unwrap();
        set_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1).unwrap();
        set_int(s.as_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1).unwrap();
        set_int(s.as_fd(), libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 77).unwrap();
        set_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 32768).unwrap();
        let mut l = [0u8; 8];
        l[0..4].copy_from_slice(&1i32.to_ne_bytes());
        l[4..8].copy_from_slice(&5i32.to_ne_bytes());
        setsockopt_raw(s.as_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &l).unwrap();
        let addr: SocketAddr = format!("[{ip}]:0")
            .replace("[127.0.0.1]", "127.0.0.1")
            .parse()
            .unwrap();
        sk::bind(s.as_raw_fd(), &SockaddrStorage::from(addr)).unwrap();
        sk::listen(&s, sk::Backlog::new(7).unwrap()).unwrap();
        set_nonblock(s.as_fd(), true).unwrap();
        let e = dump(s.as_fd(), &DumpOpts::default()).unwrap();
        assert_eq!(e.state, InetState::Listen { backlog: 7 });
        assert_eq!(e.family, if v6 { Family::Inet6 } else { Family::Inet });
        assert!(e.nonblock && e.opts.reuseaddr && e.opts.keepalive && e.opts.nodelay);
        assert_eq!((e.opts.keepidle, e.opts.linger), (77, Some(5)));
        let port = e.local.unwrap().port;
        assert_ne!(port, 0);
        drop(s);
        let r = restore(&e, &RestoreOpts::default()).unwrap();
        // The restored socket reads back the same in every field.
        assert_eq!(dump(r.as_fd(), &DumpOpts::default()).unwrap(), e);
        let l = TcpListener::from(r);
        let mut c = TcpStream::connect((ip, port)).unwrap();
        l.set_nonblocking(false).unwrap();
        let (mut a, _) = l.accept().unwrap();
        c.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        a.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
    }
}

#[test]
fn udp_bound_and_connected_sockets_come_back() {
    if !netns() {
        return;
    }
    let peer = UdpSocket::bind("[::1]:0").unwrap();
    let s = new_sock(true, sk::SockType::Datagram);
    set_int(s.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_TCLASS, 0x20).unwrap();
    set_int(s.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 9).unwrap();
    set_int(s.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1).unwrap();
    let me: SocketAddr = "[::1]:0".parse().unwrap();
    sk::bind(s.as_raw_fd(), &SockaddrStorage::from(me)).unwrap();
    sk::connect(
        s.as_raw_fd(),
        &SockaddrStorage::from(peer.local_addr().unwrap()),
    )
    .unwrap();
    sk::shutdown(s.as_raw_fd(), sk::Shutdown::Write).unwrap();
    let e = dump(s.as_fd(), &DumpOpts::default()).unwrap();
    assert_eq!(e.state, InetState::Connected);
    assert_eq!(e.proto, Proto::Udp);
    assert_eq!((e.opts.tos, e.opts.ttl, e.opts.v6only), (0x20, 9, true));
    assert_eq!(e.shutdown, 2, "SHUT_WR seen through sock_diag");
    let unbound = UdpSocket::from(new_sock(false, sk::SockType::Datagram));
    let eu = dump(unbound.as_fd(), &DumpOpts::default()).unwrap();
    assert_eq!((eu.local, eu.state.clone()), (None, InetState::Unconnected));
    drop(s);
    let r = UdpSocket::from(restore(&e, &RestoreOpts::default()).unwrap());
    assert_eq!(dump(r.as_fd(), &DumpOpts::default()).unwrap(), e);
    // Shut down for sending, as before; receiving from the peer works.
    assert!(r.send(b"x").is_err());
    peer.send_to(b"hello", r.local_addr().unwrap()).unwrap();
    let mut b = [0u8; 16];
    r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(r.recv(&mut b).unwrap(), 5);
    assert_eq!(&b[..5], b"hello");
}

/// A connected pair through a listener at `ip`; the client's receive
/// buffer is small so that the server's writes stay queued.
fn pair(
    v6_listener: bool,
    listen_at: &str,
    connect_to: &str,
) -> (TcpListener, TcpStream, TcpStream) {
    let l = TcpListener::from(new_sock(v6_listener, sk::SockType::Stream));
    let a: SocketAddr = listen_at.parse().unwrap();
    if v6_listener {
        set_int(l.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0).unwrap();
    }
    sk::bind(l.as_raw_fd(), &SockaddrStorage::from(a)).unwrap();
    sk::listen(&l, sk::Backlog::new(4).unwrap()).unwrap();
    let port = l.local_addr().unwrap().port();
    let mut to: SocketAddr = connect_to.parse().unwrap();
    to.set_port(port);
    let c = new_sock(to.is_ipv6(), sk::SockType::Stream);
    set_int(c.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 4096).unwrap();
    sk::connect(c.as_raw_fd(), &SockaddrStorage::from(to)).unwrap();
    let (s, _) = l.accept().unwrap();
    (l, TcpStream::from(c), s)
}

/// Fill `s` until the kernel takes no more; returns how many bytes.
fn fill(s: &mut TcpStream, seed: u8, from: usize) -> usize {
    s.set_nonblocking(true).unwrap();
    let mut n = 0;
    loop {
        match s.write(&stream(seed, from + n, 8192)) {
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("write: {e}"),
        }
    }
    s.set_nonblocking(false).unwrap();
    n
}

/// Dump and restore both ends (`both`) or the server end alone of a
/// connection with bytes queued in every queue, then check every byte in
/// both directions and a clean end of stream (no reset).
fn established_roundtrip(v6_listener: bool, listen_at: &str, connect_to: &str, both: bool) {
    let (l, mut c, mut s) = pair(v6_listener, listen_at, connect_to);
    // Client -> server: 1000 bytes the server has not read.
    c.write_all(&stream(1, 0, 1000)).unwrap();
    // Server -> client: more than the client's window, so bytes wait in
    // the server's send queue and in the client's receive queue.
    let sent = fill(&mut s, 2, 0);
    std::thread::sleep(Duration::from_millis(200));
    let (es, mut s) = dump_close_restore(s, &est());
    let InetState::Established(conn) = &es.state else {
        panic!("server not established: {es:?}")
    };
    assert_eq!(conn.rcvq, stream(1, 0, 1000), "server receive queue");
    assert!(!conn.sndq.is_empty(), "server send queue is empty");
    assert!(conn.mss > 0);
    if both {
        let (ec, c2) = dump_close_restore(c, &est());
        let InetState::Established(cc) = &ec.state else {
            panic!()
        };
        assert!(!cc.rcvq.is_empty(), "client receive queue is empty");
        // What one side sent and the other has not acknowledged is
        // exactly what the other has not received.
        assert_eq!(
            cc.rcv_seq,
            conn.snd_seq.wrapping_sub(conn.sndq.len() as u32)
        );
        c = c2;
    }
    drop(l);
    expect(&mut s, 1, 0, 1000);
    expect(&mut c, 2, 0, sent);
    // Both ways again after restore.
    c.write_all(&stream(1, 1000, 300_000))
        .unwrap_or_else(|e| panic!("client write: {e}"));
    let t = std::thread::spawn(move || {
        expect(&mut s, 1, 1000, 300_000);
        s.write_all(&stream(2, sent, 5000)).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        s
    });
    expect(&mut c, 2, sent, 5000);
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("clean end of stream, no reset");
    assert!(rest.is_empty());
    t.join().unwrap();
}

#[test]
fn established_ipv4_both_ends() {
    if netns() {
        established_roundtrip(false, "127.0.0.1:0", "127.0.0.1:0", true);
    }
}

#[test]
fn established_ipv6_server_alone() {
    if netns() {
        established_roundtrip(true, "[::1]:0", "[::1]:0", false);
    }
}

#[test]
fn established_v4_mapped_both_ends() {
    if netns() {
        established_roundtrip(true, "[::]:0", "127.0.0.1:0", true);
    }
}

#[test]
fn established_refused_without_option_and_left_working() {
    if !netns() {
        return;
    }
    let (_l, mut c, mut s) = pair(false, "127.0.0.1:0", "127.0.0.1:0");
    let err = dump(s.as_fd(), &DumpOpts::default()).unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("is established") && msg.contains("--tcp-established"),
        "{msg}"
    );
    c.write_all(b"still").unwrap();
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"still");
    // A dump that is not followed by a kill: release leaves repair mode.
    let e = dump(s.as_fd(), &est()).unwrap();
    assert!(matches!(e.state, InetState::Established(_)));
    release(s.as_fd(), &e).unwrap();
    s.write_all(b"again").unwrap();
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"again");
}

#[test]
fn tcp_close_restores_closed_and_half_closed_is_refused() {
    if !netns() {
        return;
    }
    let (_l, c, s) = pair(false, "127.0.0.1:0", "127.0.0.1:0");
    c.shutdown(std::net::Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let err = dump(s.as_fd(), &est()).unwrap_err().to_string();
    assert!(
        err.contains("CLOSE_WAIT") && err.contains("--tcp-close"),
        "{err}"
    );
    let close = DumpOpts {
        tcp_established: true,
        tcp_close: true,
    };
    let e = dump(s.as_fd(), &close).unwrap();
    assert_eq!(e.state, InetState::Closed { was: 8 });
    let r = TcpStream::from(restore(&e, &RestoreOpts::default()).unwrap());
    assert_eq!(
        r.peer_addr().unwrap_err().raw_os_error(),
        Some(libc::ENOTCONN)
    );
    // An established connection saved in repair mode, restored with
    // --tcp-close, is closed too.
    let (_l2, _c2, s2) = pair(false, "127.0.0.1:0", "127.0.0.1:0");
    let e2 = dump(s2.as_fd(), &est()).unwrap();
    let r2 = restore(&e2, &RestoreOpts { tcp_close: true }).unwrap();
    assert!(sk::getpeername::<SockaddrStorage>(r2.as_raw_fd()).is_err());
    release(s2.as_fd(), &e2).unwrap();
}

#[test]
fn established_shut_down_for_reading_stays_so() {
    if !netns() {
        return;
    }
    let (_l, mut c, s) = pair(false, "127.0.0.1:0", "127.0.0.1:0");
    s.shutdown(std::net::Shutdown::Read).unwrap();
    let (e, mut s) = dump_close_restore(s, &est());
    assert_eq!(e.shutdown, 1, "SHUT_RD seen through sock_diag");
    let again = dump(s.as_fd(), &est()).unwrap();
    assert_eq!(
        again.shutdown, 1,
        "restored socket is shut down for reading"
    );
    release(s.as_fd(), &again).unwrap();
    s.write_all(b"out").unwrap();
    let mut b = [0u8; 3];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"out");
}
