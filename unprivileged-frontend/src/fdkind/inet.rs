//! Open file descriptions of TCP and UDP sockets over IPv4 and IPv6 (see
//! tcp(7), udp(7), ip(7), ipv6(7)).
//!
//! Dump reads a socket through criu's duplicate of the task's descriptor:
//! addresses (getsockname(2), getpeername(2)), the TCP state (`TCP_INFO`),
//! the listen backlog and shutdown state (sock_diag(7)), and the socket
//! options a program sets. An established TCP connection is read in repair
//! mode (tcp(7), `TCP_REPAIR`): sequence numbers, window, negotiated options
//! and both queues (peeked with `MSG_PEEK`, so nothing is consumed).
//!
//! Restore creates the socket in criu itself: options, bind(2), listen(2)
//! or connect(2). An established connection is rebuilt in repair mode,
//! where connect(2) sends no SYN and the queued bytes are put back without
//! being sent; leaving repair mode then sends a window probe and the
//! connection carries on where it stopped.
//!
//! Not kept: datagrams waiting in a UDP receive queue and connections not
//! yet accepted from a listening socket (both dropped, as upstream criu
//! does), out-of-order TCP segments (the peer sends them again), urgent
//! data, `SO_BINDTODEVICE`, multicast memberships, IP options other than
//! those in [`SockOpts`].

use crate::error::{Error, Result};
use crate::sys::{getsockopt_raw, ioctl_get_int, setsockopt_raw};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{self as sk, MsgFlags, SockFlag, SockaddrStorage};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Address family (see address_families(7)).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `AF_INET`, see ip(7).
    Inet,
    /// `AF_INET6`, see ipv6(7); may carry IPv4 as v4-mapped addresses.
    Inet6,
}

/// Transport protocol.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// `SOCK_STREAM` / `IPPROTO_TCP`, see tcp(7).
    Tcp,
    /// `SOCK_DGRAM` / `IPPROTO_UDP`, see udp(7).
    Udp,
}

/// A socket address (`sockaddr_in` or `sockaddr_in6`, see ip(7), ipv6(7)).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    /// The IP address (an IPv4 address is `::ffff:a.b.c.d` on an `AF_INET6`
    /// socket).
    pub ip: IpAddr,
    /// Port, host byte order.
    pub port: u16,
    /// IPv6 flow information (`sin6_flowinfo`); 0 for IPv4.
    pub flowinfo: u32,
    /// IPv6 scope (interface index, `sin6_scope_id`); 0 for IPv4.
    pub scope_id: u32,
}

impl Addr {
    fn from_storage(s: &SockaddrStorage) -> Option<Addr> {
        if let Some(a) = s.as_sockaddr_in() {
            let a = SocketAddrV4::from(*a);
            return Some(Addr {
                ip: IpAddr::V4(*a.ip()),
                port: a.port(),
                flowinfo: 0,
                scope_id: 0,
            });
        }
        let a = SocketAddrV6::from(*s.as_sockaddr_in6()?);
        Some(Addr {
            ip: IpAddr::V6(*a.ip()),
            port: a.port(),
            flowinfo: a.flowinfo(),
            scope_id: a.scope_id(),
        })
    }

    fn to_storage(self) -> SockaddrStorage {
        let sa = match self.ip {
            IpAddr::V4(ip) => SocketAddr::V4(SocketAddrV4::new(ip, self.port)),
            IpAddr::V6(ip) => SocketAddr::V6(SocketAddrV6::new(
                ip,
                self.port,
                self.flowinfo,
                self.scope_id,
            )),
        };
        SockaddrStorage::from(sa)
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

/// What the socket was doing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum InetState {
    /// Not connected: new, only bound ([`InetEntry::local`]), or a TCP
    /// socket whose connection ended (`TCP_CLOSE`).
    Unconnected,
    /// A listening TCP socket (see listen(2)).
    Listen {
        /// The backlog: most connections waiting to be accepted.
        backlog: u32,
    },
    /// A UDP socket with a default destination ([`InetEntry::peer`], see
    /// connect(2)).
    Connected,
    /// An established TCP connection, saved with `--tcp-established`.
    Established(Box<TcpConn>),
    /// A TCP connection that was established (or half-closed) and was
    /// dumped with `--tcp-close`: restored as a new, unconnected socket, on
    /// which the program's reads and writes fail with `ENOTCONN`.
    Closed {
        /// The kernel's TCP state when dumped (`TCP_ESTABLISHED` = 1, ...).
        was: u8,
    },
}

/// An established TCP connection as TCP repair mode gives it (see tcp(7),
/// `TCP_REPAIR`, and linux/tcp.h). Sequence numbers are the kernel's,
/// modulo 2^32.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TcpConn {
    /// Sequence number after the last byte written by the program
    /// (`write_seq`, `TCP_QUEUE_SEQ` with `TCP_SEND_QUEUE`).
    pub snd_seq: u32,
    /// Sequence number of the next byte expected from the peer (`rcv_nxt`,
    /// `TCP_QUEUE_SEQ` with `TCP_RECV_QUEUE`).
    pub rcv_seq: u32,
    /// Bytes written but not yet acknowledged by the peer, sent or not; they
    /// end at `snd_seq`.
    pub sndq: Vec<u8>,
    /// Bytes received but not yet read by the program; they end at
    /// `rcv_seq`.
    pub rcvq: Vec<u8>,
    /// Maximum segment size the peer announced (`TCP_MAXSEG` in repair
    /// mode), bytes.
    pub mss: u32,
    /// Window scale shifts (sending, receiving) when window scaling was
    /// negotiated (RFC 7323).
    pub wscale: Option<(u8, u8)>,
    /// Selective acknowledgements were negotiated (RFC 2018).
    pub sack: bool,
    /// Timestamps were negotiated (RFC 7323).
    pub timestamps: bool,
    /// The connection's timestamp clock (`TCP_TIMESTAMP`), in its units
    /// (ms), so the peer sees no jump back.
    pub ts_val: u32,
    /// Window state (`TCP_REPAIR_WINDOW`); `None` if the kernel lacks it.
    pub window: Option<TcpWindow>,
}

/// `struct tcp_repair_window` (linux/tcp.h): sequence numbers and windows
/// in bytes.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpWindow {
    /// Sequence number of the segment that last updated the send window.
    pub snd_wl1: u32,
    /// Send window (the peer's receive window).
    pub snd_wnd: u32,
    /// Largest window the peer ever offered.
    pub max_window: u32,
    /// Receive window we offered.
    pub rcv_wnd: u32,
    /// `rcv_nxt` when the receive window was last announced.
    pub rcv_wup: u32,
}

/// Socket options worth keeping (see socket(7), tcp(7), ip(7), ipv6(7)).
/// Values are what getsockopt(2) gives.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct SockOpts {
    /// `SO_REUSEADDR`.
    pub reuseaddr: bool,
    /// `SO_REUSEPORT`.
    pub reuseport: bool,
    /// `SO_KEEPALIVE`.
    pub keepalive: bool,
    /// `SO_LINGER`: `Some(seconds)` when lingering on close is on.
    pub linger: Option<i32>,
    /// `SO_SNDBUF`, bytes as the kernel reports them (twice what was set).
    pub sndbuf: i32,
    /// `SO_RCVBUF`, bytes as the kernel reports them (twice what was set).
    pub rcvbuf: i32,
    /// `SO_PRIORITY`.
    pub priority: i32,
    /// `SO_RCVLOWAT`, bytes.
    pub rcvlowat: i32,
    /// `SO_BROADCAST`.
    pub broadcast: bool,
    /// `SO_MARK` (setting a non-zero mark needs CAP_NET_ADMIN).
    pub mark: u32,
    /// `IP_TOS` (IPv4) or `IPV6_TCLASS` (IPv6).
    pub tos: i32,
    /// `IP_TTL` (IPv4) or `IPV6_UNICAST_HOPS` (IPv6).
    pub ttl: i32,
    /// `IP_FREEBIND` / `IPV6_FREEBIND`.
    pub freebind: bool,
    /// `IPV6_V6ONLY` (IPv6 only).
    pub v6only: bool,
    /// `TCP_NODELAY`.
    pub nodelay: bool,
    /// `TCP_CORK`.
    pub cork: bool,
    /// `TCP_KEEPIDLE`, seconds.
    pub keepidle: i32,
    /// `TCP_KEEPINTVL`, seconds.
    pub keepintvl: i32,
    /// `TCP_KEEPCNT`.
    pub keepcnt: i32,
    /// `TCP_USER_TIMEOUT`, ms.
    pub user_timeout: i32,
}

/// One TCP or UDP socket.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct InetEntry {
    /// `AF_INET` or `AF_INET6`.
    pub family: Family,
    /// TCP or UDP.
    pub proto: Proto,
    /// `O_NONBLOCK` was set on the open file description (see fcntl(2)).
    pub nonblock: bool,
    /// Bound address (getsockname(2)); `None` when unbound.
    pub local: Option<Addr>,
    /// Peer address (getpeername(2)); `None` when not connected.
    pub peer: Option<Addr>,
    /// State.
    pub state: InetState,
    /// Directions shut down (see shutdown(2)): bit 0 receive (`SHUT_RD`),
    /// bit 1 send (`SHUT_WR`), as sock_diag(7) `INET_DIAG_SHUTDOWN` gives.
    pub shutdown: u8,
    /// Options.
    pub opts: SockOpts,
}

impl InetEntry {
    /// A short description for messages, e.g. `TCP 127.0.0.1:80 listening`.
    pub fn describe(&self) -> String {
        let p = match self.proto {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        };
        let v = match self.family {
            Family::Inet => "",
            Family::Inet6 => "v6",
        };
        let local = self.local.map_or("unbound".to_string(), |a| a.to_string());
        match (&self.state, self.peer) {
            (InetState::Listen { backlog }, _) => {
                format!("{p}{v} {local} listening (backlog {backlog})")
            }
            (InetState::Established(_), Some(peer)) => {
                format!("{p}{v} {local} -> {peer} established")
            }
            (InetState::Closed { .. }, Some(peer)) => {
                format!("{p}{v} {local} -> {peer} (restored closed)")
            }
            (_, Some(peer)) => format!("{p}{v} {local} -> {peer}"),
            (_, None) => format!("{p}{v} {local}"),
        }
    }
}

/// Choices that change how sockets are dumped.
#[derive(Debug, Clone, Copy, Default)]
pub struct DumpOpts {
    /// `--tcp-established`: save established connections in repair mode.
    pub tcp_established: bool,
    /// `--tcp-close`: save established and half-closed connections as
    /// closed sockets.
    pub tcp_close: bool,
}

/// Choices that change how sockets are restored.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOpts {
    /// `--tcp-close`: restore saved connections closed.
    pub tcp_close: bool,
}

// Constants of linux/tcp.h and linux/sockios.h that libc does not carry.
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCP_TIMESTAMP: i32 = 24;
const TCPOPT_MAXSEG: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
const SIOCINQ: u64 = libc::FIONREAD;
const SIOCOUTQ: u64 = libc::TIOCOUTQ;

/// TCP states (include/net/tcp_states.h).
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;

fn tcp_state_name(s: u8) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT (connect in progress)",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1 (this side shut down sending)",
        5 => "FIN_WAIT2 (this side shut down sending)",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT (the peer closed its side)",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "unknown",
    }
}

fn get_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> std::io::Result<i32> {
    let mut b = [0u8; 4];
    getsockopt_raw(fd, level, name, &mut b)?;
    Ok(i32::from_ne_bytes(b))
}

fn set_int(fd: BorrowedFd<'_>, level: i32, name: i32, v: i32) -> std::io::Result<()> {
    setsockopt_raw(fd, level, name, &v.to_ne_bytes())
}

fn io_err(what: &str, e: impl Into<std::io::Error>) -> Error {
    Error::Unsupported(format!("{what}: {}", e.into()))
}

/// Read what a TCP or UDP socket holds, through a descriptor of it.
///
/// An established connection needs `opts.tcp_established` (read in repair
/// mode, which needs CAP_NET_ADMIN, see tcp(7)) or `opts.tcp_close`. The
/// socket is left in repair mode on success, so that closing it when the
/// dumped task is killed sends nothing to the peer; call [`release`] if the
/// task keeps running.
///
/// Errors: not a TCP or UDP socket over IPv4 or IPv6; an established
/// connection without either option (`Refused`, saying which option to
/// use); a connection being set up or half closed without `--tcp-close`;
/// a failing socket call (naming it).
pub fn dump(fd: BorrowedFd<'_>, opts: &DumpOpts) -> Result<InetEntry> {
    let domain =
        get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(|e| io_err("SO_DOMAIN", e))?;
    let ty = get_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).map_err(|e| io_err("SO_TYPE", e))?;
    let protocol =
        get_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).map_err(|e| io_err("SO_PROTOCOL", e))?;
    let family = match domain {
        libc::AF_INET => Family::Inet,
        libc::AF_INET6 => Family::Inet6,
        d => {
            return Err(Error::Unsupported(format!(
                "a socket of address family {d} is not an IPv4 or IPv6 socket"
            )))
        }
    };
    let proto = match (ty, protocol) {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) => Proto::Tcp,
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => Proto::Udp,
        (libc::SOCK_RAW, _) => {
            return Err(Error::Unsupported(
                "raw IP sockets are not supported".into(),
            ))
        }
        (t, p) => {
            return Err(Error::Unsupported(format!(
                "IP sockets of type {t} and protocol {p} are not supported (only TCP and UDP)"
            )))
        }
    };
    let fl = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(|e| io_err("fcntl(F_GETFL)", e))?;
    let nonblock = OFlag::from_bits_truncate(fl).contains(OFlag::O_NONBLOCK);
    let local_raw =
        sk::getsockname::<SockaddrStorage>(fd.as_raw_fd()).map_err(|e| io_err("getsockname", e))?;
    let local = Addr::from_storage(&local_raw).filter(|a| a.port != 0 || !a.ip.is_unspecified());
    let peer = match sk::getpeername::<SockaddrStorage>(fd.as_raw_fd()) {
        Ok(p) => Addr::from_storage(&p),
        Err(Errno::ENOTCONN) => None,
        Err(e) => return Err(io_err("getpeername", e)),
    };
    let sockopts = read_opts(fd, family, proto)?;
    let diag = diag_lookup(fd, domain, protocol);
    let mut e = InetEntry {
        family,
        proto,
        nonblock,
        local,
        peer,
        state: InetState::Unconnected,
        shutdown: diag.map_or(0, |d| d.shutdown),
        opts: sockopts,
    };
    if proto == Proto::Udp {
        if e.peer.is_some() {
            e.state = InetState::Connected;
        }
        return Ok(e);
    }
    let state = tcp_state(fd)?;
    let conn = |e: &InetEntry| {
        format!(
            "TCP connection {} -> {}",
            e.local.map_or("?".into(), |a| a.to_string()),
            e.peer.map_or("?".into(), |a| a.to_string())
        )
    };
    match state {
        TCP_CLOSE => {}
        TCP_LISTEN => {
            let backlog = match diag {
                Some(d) => d.wqueue,
                None => {
                    crate::warn!(
                        "{}: listen backlog unknown (sock_diag does not show the socket: is criu in another network namespace?); restoring it with {}",
                        e.describe(),
                        libc::SOMAXCONN
                    );
                    libc::SOMAXCONN as u32
                }
            };
            e.state = InetState::Listen { backlog };
        }
        _ if opts.tcp_close => {
            e.state = InetState::Closed { was: state };
        }
        TCP_ESTABLISHED if opts.tcp_established => {
            e.state = InetState::Established(Box::new(dump_repair(fd, &conn(&e))?));
        }
        TCP_ESTABLISHED => {
            return Err(Error::Refused(format!(
                "{} is established: dump with --tcp-established to keep it (or --tcp-close to restore it closed)",
                conn(&e)
            )))
        }
        s => {
            return Err(Error::Unsupported(format!(
                "{} is in state {}, which cannot be saved; dump with --tcp-close to restore it closed",
                conn(&e),
                tcp_state_name(s)
            )))
        }
    }
    Ok(e)
}

/// The (local, peer) addresses of `fd` if it is an established TCP
/// connection, the kind [`dump`] puts in repair mode; `None` for anything
/// else (or when it cannot tell).
pub fn connection(fd: BorrowedFd<'_>) -> Option<(Addr, Addr)> {
    let ty = get_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).ok()?;
    if ty != libc::SOCK_STREAM || tcp_state(fd).ok()? != TCP_ESTABLISHED {
        return None;
    }
    let l = sk::getsockname::<SockaddrStorage>(fd.as_raw_fd()).ok()?;
    let p = sk::getpeername::<SockaddrStorage>(fd.as_raw_fd()).ok()?;
    Some((Addr::from_storage(&l)?, Addr::from_storage(&p)?))
}

/// Whether this process has CAP_NET_ADMIN in its effective set (`CapEff`
/// of /proc/self/status, see proc(5), capabilities(7)), which TCP repair
/// mode and the network lock need.
pub fn has_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// Take a socket that [`dump`] read as `e` out of repair mode again (when
/// the dumped task keeps running, or the dump failed). Other sockets are
/// left alone.
///
/// Errors: the setsockopt(2) error.
pub fn release(fd: BorrowedFd<'_>, e: &InetEntry) -> Result<()> {
    if !matches!(e.state, InetState::Established(_)) {
        return Ok(());
    }
    // TCP_REPAIR_OFF_NO_WP (-1): leave repair mode without a window probe;
    // nothing changed, the peer need not hear from us.
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, -1)
        .map_err(|er| io_err("leaving TCP repair mode", er))?;
    // Leaving repair mode clears SO_REUSEADDR (linux/net/ipv4/tcp.c).
    if e.opts.reuseaddr {
        set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
            .map_err(|er| io_err("SO_REUSEADDR", er))?;
    }
    Ok(())
}

fn tcp_state(fd: BorrowedFd<'_>) -> Result<u8> {
    // struct tcp_info starts with tcpi_state (linux/tcp.h).
    let mut info = [0u8; 8];
    getsockopt_raw(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info)
        .map_err(|e| io_err("TCP_INFO", e))?;
    Ok(info[0])
}

fn read_opts(fd: BorrowedFd<'_>, family: Family, proto: Proto) -> Result<SockOpts> {
    let int = |level, name, what: &str| get_int(fd, level, name).map_err(|e| io_err(what, e));
    let mut linger = [0u8; 8];
    getsockopt_raw(fd, libc::SOL_SOCKET, libc::SO_LINGER, &mut linger)
        .map_err(|e| io_err("SO_LINGER", e))?;
    let l_onoff = i32::from_ne_bytes(linger[0..4].try_into().expect("4 bytes"));
    let l_linger = i32::from_ne_bytes(linger[4..8].try_into().expect("4 bytes"));
    let s = libc::SOL_SOCKET;
    let mut o = SockOpts {
        reuseaddr: int(s, libc::SO_REUSEADDR, "SO_REUSEADDR")? != 0,
        reuseport: int(s, libc::SO_REUSEPORT, "SO_REUSEPORT")? != 0,
        keepalive: int(s, libc::SO_KEEPALIVE, "SO_KEEPALIVE")? != 0,
        linger: (l_onoff != 0).then_some(l_linger),
        sndbuf: int(s, libc::SO_SNDBUF, "SO_SNDBUF")?,
        rcvbuf: int(s, libc::SO_RCVBUF, "SO_RCVBUF")?,
        priority: int(s, libc::SO_PRIORITY, "SO_PRIORITY")?,
        rcvlowat: int(s, libc::SO_RCVLOWAT, "SO_RCVLOWAT")?,
        broadcast: int(s, libc::SO_BROADCAST, "SO_BROADCAST")? != 0,
        mark: int(s, libc::SO_MARK, "SO_MARK")? as u32,
        ..SockOpts::default()
    };
    match family {
        Family::Inet => {
            o.tos = int(libc::IPPROTO_IP, libc::IP_TOS, "IP_TOS")?;
            o.ttl = int(libc::IPPROTO_IP, libc::IP_TTL, "IP_TTL")?;
            o.freebind = int(libc::IPPROTO_IP, libc::IP_FREEBIND, "IP_FREEBIND")? != 0;
        }
        Family::Inet6 => {
            let v6 = libc::IPPROTO_IPV6;
            o.tos = int(v6, libc::IPV6_TCLASS, "IPV6_TCLASS")?;
            o.ttl = int(v6, libc::IPV6_UNICAST_HOPS, "IPV6_UNICAST_HOPS")?;
            o.freebind = int(v6, libc::IPV6_FREEBIND, "IPV6_FREEBIND")? != 0;
            o.v6only = int(v6, libc::IPV6_V6ONLY, "IPV6_V6ONLY")? != 0;
        }
    }
    if proto == Proto::Tcp {
        let t = libc::IPPROTO_TCP;
        o.nodelay = int(t, libc::TCP_NODELAY, "TCP_NODELAY")? != 0;
        o.cork = int(t, libc::TCP_CORK, "TCP_CORK")? != 0;
        o.keepidle = int(t, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE")?;
        o.keepintvl = int(t, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL")?;
        o.keepcnt = int(t, libc::TCP_KEEPCNT, "TCP_KEEPCNT")?;
        o.user_timeout = int(t, libc::TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT")?;
    }
    Ok(o)
}

/// Read an established connection in repair mode. On error the socket is
/// taken out of repair mode again.
fn dump_repair(fd: BorrowedFd<'_>, conn: &str) -> Result<TcpConn> {
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, 1).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EPERM) {
            " (TCP repair mode needs CAP_NET_ADMIN)"
        } else {
            ""
        };
        Error::Unsupported(format!("{conn}: entering TCP repair mode: {e}{hint}"))
    })?;
    let r = read_repair(fd).map_err(|e| Error::Unsupported(format!("{conn}: {e}")));
    if r.is_err() {
        let _ = set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, -1);
    }
    r
}

fn read_repair(fd: BorrowedFd<'_>) -> std::result::Result<TcpConn, String> {
    let t = libc::IPPROTO_TCP;
    let ctx = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
    let queue = |q: i32, size_req: u64| -> std::result::Result<(u32, Vec<u8>), String> {
        set_int(fd, t, libc::TCP_REPAIR_QUEUE, q).map_err(ctx("TCP_REPAIR_QUEUE"))?;
        let seq = get_int(fd, t, libc::TCP_QUEUE_SEQ).map_err(ctx("TCP_QUEUE_SEQ"))? as u32;
        let len = ioctl_get_int(fd, size_req).map_err(ctx("SIOCINQ/SIOCOUTQ"))? as usize;
        let mut data = vec![0u8; len];
        // Peek: the bytes stay queued, for the task if it keeps running.
        // One call copies the whole queue (a second peek would start over).
        let got = if len == 0 {
            0
        } else {
            sk::recv(
                fd.as_raw_fd(),
                &mut data,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
            )
            .map_err(|e| format!("peeking queue {q}: {e}"))?
        };
        if got != len {
            return Err(format!(
                "queue {q}: the kernel reported {len} bytes but {got} could be read"
            ));
        }
        Ok((seq, data))
    };
    let (rcv_seq, rcvq) = queue(TCP_RECV_QUEUE, SIOCINQ)?;
    let (snd_seq, sndq) = queue(TCP_SEND_QUEUE, SIOCOUTQ)?;
    set_int(fd, t, libc::TCP_REPAIR_QUEUE, 0).map_err(ctx("TCP_REPAIR_QUEUE"))?;
    let mut info = [0u8; 8];
    getsockopt_raw(fd, t, libc::TCP_INFO, &mut info).map_err(ctx("TCP_INFO"))?;
    // tcpi_options is byte 5; byte 6 holds tcpi_snd_wscale (low nibble)
    // and tcpi_rcv_wscale (high nibble).
    let options = info[5];
    let wscale = (options & TCPI_OPT_WSCALE != 0).then_some((info[6] & 0xf, info[6] >> 4));
    let mss = get_int(fd, t, libc::TCP_MAXSEG).map_err(ctx("TCP_MAXSEG"))? as u32;
    let ts_val = get_int(fd, t, TCP_TIMESTAMP).map_err(ctx("TCP_TIMESTAMP"))? as u32;
    let mut w = [0u8; 20];
    let window = match getsockopt_raw(fd, t, libc::TCP_REPAIR_WINDOW, &mut w) {
        Ok(20) => {
            let f = |i: usize| u32::from_ne_bytes(w[i * 4..i * 4 + 4].try_into().expect("4"));
            Some(TcpWindow {
                snd_wl1: f(0),
                snd_wnd: f(1),
                max_window: f(2),
                rcv_wnd: f(3),
                rcv_wup: f(4),
            })
        }
        Ok(_) | Err(_) => None,
    };
    Ok(TcpConn {
        snd_seq,
        rcv_seq,
        sndq,
        rcvq,
        mss,
        wscale,
        sack: options & TCPI_OPT_SACK != 0,
        timestamps: options & TCPI_OPT_TIMESTAMPS != 0,
        ts_val,
        window,
    })
}

/// What sock_diag(7) tells about one socket.
#[derive(Debug, Clone, Copy)]
struct Diag {
    /// `INET_DIAG_SHUTDOWN`.
    shutdown: u8,
    /// `idiag_wqueue`: for a listening socket, its backlog.
    wqueue: u32,
}

/// Find the socket `fd` in sock_diag(7) by inode number (in criu's own
/// network namespace). `None` when it is not there or the query fails.
fn diag_lookup(fd: BorrowedFd<'_>, domain: i32, protocol: i32) -> Option<Diag> {
    let ino = nix::sys::stat::fstat(fd.as_raw_fd()).ok()?.st_ino;
    let nl = sk::socket(
        sk::AddressFamily::Netlink,
        sk::SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        sk::SockProtocol::NetlinkSockDiag,
    )
    .ok()?;
    // struct nlmsghdr (16 bytes) + struct inet_diag_req_v2 (56 bytes), see
    // sock_diag(7): all states, no extensions, a dump of the family.
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    let mut req = Vec::with_capacity(72);
    req.extend_from_slice(&72u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.push(domain as u8);
    req.push(protocol as u8);
    req.push(0); // idiag_ext
    req.push(0); // pad
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // idiag_states
    req.resize(72, 0); // struct inet_diag_sockid: any
    sk::send(nl.as_raw_fd(), &req, MsgFlags::empty()).ok()?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut found = None;
    loop {
        let n = sk::recv(nl.as_raw_fd(), &mut buf, MsgFlags::empty()).ok()?;
        if n == 0 {
            return found;
        }
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().ok()?) as usize;
            let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().ok()?);
            if len < 16 || off + len > n {
                return found;
            }
            if ty == libc::NLMSG_DONE as u16 || ty == libc::NLMSG_ERROR as u16 {
                return found;
            }
            // struct inet_diag_msg: family, state, timer, retrans (4),
            // inet_diag_sockid (48), expires, rqueue, wqueue, uid, inode.
            let m = &buf[off + 16..off + len];
            if m.len() >= 72 {
                let word = |i: usize| u32::from_ne_bytes(m[i..i + 4].try_into().expect("4"));
                if u64::from(word(68)) == ino {
                    let mut d = Diag {
                        shutdown: 0,
                        wqueue: word(60),
                    };
                    // Attributes: struct nlattr (len u16, type u16), 4-aligned.
                    let mut a = 72;
                    while a + 4 <= m.len() {
                        let alen = u16::from_ne_bytes([m[a], m[a + 1]]) as usize;
                        let aty = u16::from_ne_bytes([m[a + 2], m[a + 3]]);
                        if alen < 4 || a + alen > m.len() {
                            break;
                        }
                        const INET_DIAG_SHUTDOWN: u16 = 8;
                        if aty == INET_DIAG_SHUTDOWN && alen >= 5 {
                            d.shutdown = m[a + 4];
                        }
                        a += (alen + 3) & !3;
                    }
                    found = Some(d);
                }
            }
            off += (len + 3) & !3;
        }
    }
}

/// Create the socket `e` describes, in this process: options, address,
/// listening or connection state, queued bytes. The descriptor is
/// close-on-exec; pass it on with `SCM_RIGHTS`.
///
/// An established connection is rebuilt in TCP repair mode (needs
/// CAP_NET_ADMIN); with `opts.tcp_close` it becomes a new unconnected
/// socket instead.
///
/// Errors: a failing socket call, naming the socket and the call
/// (`EADDRINUSE` when something else holds the address).
pub fn restore(e: &InetEntry, opts: &RestoreOpts) -> Result<OwnedFd> {
    let what = e.describe();
    let fail = |op: &str, err: std::io::Error| {
        let hint = match err.raw_os_error() {
            Some(libc::EADDRINUSE) => {
                " (the address is in use: is the dumped process, or another one, still using it?)"
            }
            Some(libc::EPERM) if op.contains("repair") => " (TCP repair mode needs CAP_NET_ADMIN)",
            _ => "",
        };
        Error::Unsupported(format!("restoring {what}: {op}: {err}{hint}"))
    };
    let af = match e.family {
        Family::Inet => sk::AddressFamily::Inet,
        Family::Inet6 => sk::AddressFamily::Inet6,
    };
    let (sty, sproto) = match e.proto {
        Proto::Tcp => (sk::SockType::Stream, sk::SockProtocol::Tcp),
        Proto::Udp => (sk::SockType::Datagram, sk::SockProtocol::Udp),
    };
    let sock = sk::socket(af, sty, SockFlag::SOCK_CLOEXEC, sproto)
        .map_err(|er| fail("socket", er.into()))?;
    let fd = sock.as_fd();
    let closed = matches!(e.state, InetState::Closed { .. })
        || (opts.tcp_close && matches!(e.state, InetState::Established(_)));
    if closed {
        set_nonblock(fd, e.nonblock).map_err(|er| fail("fcntl(F_SETFL)", er))?;
        return Ok(sock);
    }
    let conn = match &e.state {
        InetState::Established(c) => Some(c),
        _ => None,
    };
    // Options first: entering repair mode sets the address reuse that
    // binding next to the listener needs, SO_REUSEADDR would undo it.
    write_opts(fd, e).map_err(|(op, er)| fail(op, er))?;
    let t = libc::IPPROTO_TCP;
    if let Some(c) = conn {
        set_int(fd, t, libc::TCP_REPAIR, 1).map_err(|er| fail("entering TCP repair mode", er))?;
        // Where the queues start: the first unacknowledged byte we sent and
        // the first unread byte we received. Only settable before connect.
        let snd_una = c.snd_seq.wrapping_sub(c.sndq.len() as u32);
        let copied = c.rcv_seq.wrapping_sub(c.rcvq.len() as u32);
        for (q, seq) in [(TCP_SEND_QUEUE, snd_una), (TCP_RECV_QUEUE, copied)] {
            set_int(fd, t, libc::TCP_REPAIR_QUEUE, q)
                .map_err(|er| fail("repair: TCP_REPAIR_QUEUE", er))?;
            set_int(fd, t, libc::TCP_QUEUE_SEQ, seq as i32)
                .map_err(|er| fail("repair: TCP_QUEUE_SEQ", er))?;
        }
        if c.timestamps {
            set_int(fd, t, TCP_TIMESTAMP, c.ts_val as i32)
                .map_err(|er| fail("repair: TCP_TIMESTAMP", er))?;
        }
    }
    if let Some(local) = e.local {
        sk::bind(fd.as_raw_fd(), &local.to_storage()).map_err(|er| fail("bind", er.into()))?;
    }
    match &e.state {
        InetState::Listen { backlog } => {
            let b = i32::try_from(*backlog)
                .ok()
                .and_then(|b| sk::Backlog::new(b).ok())
                .unwrap_or(sk::Backlog::MAXCONN);
            sk::listen(&fd, b).map_err(|er| fail("listen", er.into()))?;
        }
        InetState::Connected | InetState::Established(_) => {
            let peer = e.peer.ok_or_else(|| {
                Error::Unsupported(format!("restoring {what}: the image has no peer address"))
            })?;
            // EADDRNOTAVAIL: the kernel still holds a socket with this
            // address pair (the dumped one, closing); wait for it a while.
            let mut tries = 0;
            loop {
                match sk::connect(fd.as_raw_fd(), &peer.to_storage()) {
                    Err(Errno::EADDRNOTAVAIL) if conn.is_some() && tries < 100 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    r => break r.map_err(|er| fail("connect", er.into()))?,
                }
            }
        }
        InetState::Unconnected | InetState::Closed { .. } => {}
    }
    if let Some(c) = conn {
        restore_repair(fd, c).map_err(|(op, er)| fail(op, er))?;
        if e.opts.reuseaddr {
            set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
                .map_err(|er| fail("SO_REUSEADDR", er))?;
        }
    }
    let how = match e.shutdown & 3 {
        1 => Some(sk::Shutdown::Read),
        2 => Some(sk::Shutdown::Write),
        3 => Some(sk::Shutdown::Both),
        _ => None,
    };
    if let (Some(how), false) = (how, matches!(e.state, InetState::Listen { .. })) {
        match sk::shutdown(fd.as_raw_fd(), how) {
            Ok(()) | Err(Errno::ENOTCONN) => {}
            Err(er) => return Err(fail("shutdown", er.into())),
        }
    }
    set_nonblock(fd, e.nonblock).map_err(|er| fail("fcntl(F_SETFL)", er))?;
    Ok(sock)
}

fn set_nonblock(fd: BorrowedFd<'_>, on: bool) -> std::io::Result<()> {
    if on {
        let fl = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?;
        let fl = OFlag::from_bits_truncate(fl) | OFlag::O_NONBLOCK;
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(fl))?;
    }
    Ok(())
}

type OpResult = std::result::Result<(), (&'static str, std::io::Error)>;

/// Set the options of `e` that differ from a new socket's.
fn write_opts(fd: BorrowedFd<'_>, e: &InetEntry) -> OpResult {
    let o = &e.opts;
    let fresh = read_opts(fd, e.family, e.proto).map_err(|er| {
        (
            "reading the defaults",
            std::io::Error::other(er.to_string()),
        )
    })?;
    let set = |level, name, v: i32, what: &'static str| -> OpResult {
        set_int(fd, level, name, v).map_err(|er| (what, er))
    };
    let s = libc::SOL_SOCKET;
    if e.family == Family::Inet6 && o.v6only != fresh.v6only {
        set(
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            o.v6only as i32,
            "IPV6_V6ONLY",
        )?;
    }
    for (mine, new, name, what) in [
        (
            o.reuseaddr,
            fresh.reuseaddr,
            libc::SO_REUSEADDR,
            "SO_REUSEADDR",
        ),
        (
            o.reuseport,
            fresh.reuseport,
            libc::SO_REUSEPORT,
            "SO_REUSEPORT",
        ),
        (
            o.keepalive,
            fresh.keepalive,
            libc::SO_KEEPALIVE,
            "SO_KEEPALIVE",
        ),
        (
            o.broadcast,
            fresh.broadcast,
            libc::SO_BROADCAST,
            "SO_BROADCAST",
        ),
    ] {
        if mine != new {
            set(s, name, mine as i32, what)?;
        }
    }
    if let Some(secs) = o.linger {
        let mut l = [0u8; 8];
        l[0..4].copy_from_slice(&1i32.to_ne_bytes());
        l[4..8].copy_from_slice(&secs.to_ne_bytes());
        setsockopt_raw(fd, s, libc::SO_LINGER, &l).map_err(|er| ("SO_LINGER", er))?;
    }
    // Buffer sizes: the kernel doubles what is set; the FORCE variants pass
    // the system limits (with CAP_NET_ADMIN), so queued bytes fit again.
    for (mine, new, force, plain, what) in [
        (
            o.sndbuf,
            fresh.sndbuf,
            libc::SO_SNDBUFFORCE,
            libc::SO_SNDBUF,
            "SO_SNDBUF",
        ),
        (
            o.rcvbuf,
            fresh.rcvbuf,
            libc::SO_RCVBUFFORCE,
            libc::SO_RCVBUF,
            "SO_RCVBUF",
        ),
    ] {
        if mine != new && set_int(fd, s, force, mine / 2).is_err() {
            set(s, plain, mine / 2, what)?;
        }
    }
    for (mine, new, name, what) in [
        (o.priority, fresh.priority, libc::SO_PRIORITY, "SO_PRIORITY"),
        (o.rcvlowat, fresh.rcvlowat, libc::SO_RCVLOWAT, "SO_RCVLOWAT"),
        (o.mark as i32, fresh.mark as i32, libc::SO_MARK, "SO_MARK"),
    ] {
        if mine != new {
            set(s, name, mine, what)?;
        }
    }
    let (lvl, tos, ttl, fb) = match e.family {
        Family::Inet => (
            libc::IPPROTO_IP,
            libc::IP_TOS,
            libc::IP_TTL,
            libc::IP_FREEBIND,
        ),
        Family::Inet6 => (
            libc::IPPROTO_IPV6,
            libc::IPV6_TCLASS,
            libc::IPV6_UNICAST_HOPS,
            libc::IPV6_FREEBIND,
        ),
    };
    if o.tos != fresh.tos {
        set(lvl, tos, o.tos, "IP_TOS/IPV6_TCLASS")?;
    }
    if o.ttl != fresh.ttl {
        set(lvl, ttl, o.ttl, "IP_TTL/IPV6_UNICAST_HOPS")?;
    }
    if o.freebind != fresh.freebind {
        set(lvl, fb, o.freebind as i32, "IP_FREEBIND")?;
    }
    if e.proto == Proto::Tcp {
        let t = libc::IPPROTO_TCP;
        for (mine, new, name, what) in [
            (
                o.nodelay as i32,
                fresh.nodelay as i32,
                libc::TCP_NODELAY,
                "TCP_NODELAY",
            ),
            (o.cork as i32, fresh.cork as i32, libc::TCP_CORK, "TCP_CORK"),
            (
                o.keepidle,
                fresh.keepidle,
                libc::TCP_KEEPIDLE,
                "TCP_KEEPIDLE",
            ),
            (
                o.keepintvl,
                fresh.keepintvl,
                libc::TCP_KEEPINTVL,
                "TCP_KEEPINTVL",
            ),
            (o.keepcnt, fresh.keepcnt, libc::TCP_KEEPCNT, "TCP_KEEPCNT"),
            (
                o.user_timeout,
                fresh.user_timeout,
                libc::TCP_USER_TIMEOUT,
                "TCP_USER_TIMEOUT",
            ),
        ] {
            if mine != new {
                set(t, name, mine, what)?;
            }
        }
    }
    Ok(())
}

/// After connect(2) in repair mode: negotiated options, queued bytes,
/// window, then out of repair mode.
fn restore_repair(fd: BorrowedFd<'_>, c: &TcpConn) -> OpResult {
    let t = libc::IPPROTO_TCP;
    // struct tcp_repair_opt { u32 opt_code; u32 opt_val; } (linux/tcp.h).
    let mut ropts = Vec::new();
    let mut push = |code: u32, val: u32| {
        ropts.extend_from_slice(&code.to_ne_bytes());
        ropts.extend_from_slice(&val.to_ne_bytes());
    };
    push(TCPOPT_MAXSEG, c.mss);
    if let Some((snd, rcv)) = c.wscale {
        push(TCPOPT_WINDOW, u32::from(snd) | (u32::from(rcv) << 16));
    }
    if c.sack {
        push(TCPOPT_SACK_PERM, 0);
    }
    if c.timestamps {
        push(TCPOPT_TIMESTAMP, 0);
    }
    setsockopt_raw(fd, t, libc::TCP_REPAIR_OPTIONS, &ropts)
        .map_err(|er| ("repair: TCP_REPAIR_OPTIONS", er))?;
    // Bytes the program had not read go back on the receive queue; bytes it
    // had written go on the send queue, counted as sent (repair mode sends
    // nothing): what the peer lacks is retransmitted.
    for (q, data, what) in [
        (
            TCP_RECV_QUEUE,
            &c.rcvq,
            "repair: restoring the receive queue",
        ),
        (TCP_SEND_QUEUE, &c.sndq, "repair: restoring the send queue"),
    ] {
        set_int(fd, t, libc::TCP_REPAIR_QUEUE, q).map_err(|er| (what, er))?;
        let mut off = 0;
        while off < data.len() {
            let end = (off + 64 * 1024).min(data.len());
            let n = sk::send(fd.as_raw_fd(), &data[off..end], MsgFlags::MSG_DONTWAIT)
                .map_err(|er| (what, std::io::Error::from(er)))?;
            if n == 0 {
                return Err((what, std::io::Error::from(std::io::ErrorKind::WriteZero)));
            }
            off += n;
        }
    }
    if let Some(w) = c.window {
        let mut b = Vec::with_capacity(20);
        for v in [w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        setsockopt_raw(fd, t, libc::TCP_REPAIR_WINDOW, &b)
            .map_err(|er| ("repair: TCP_REPAIR_WINDOW", er))?;
    }
    // TCP_REPAIR_OFF (0): leave repair mode and send a window probe, so the
    // peer answers with its current state at once.
    set_int(fd, t, libc::TCP_REPAIR, 0).map_err(|er| ("leaving TCP repair mode", er))?;
    Ok(())
}

#[cfg(test)]
mod tests;
